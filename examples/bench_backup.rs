//! `cargo xtask bench backup`: `audctl backup postgres --method dump` against plain `pg_dump -Fc`
//! on the same database (at least 1 GB of audit events with valid hash chains: the events table with
//! its indexes) in one run, and
//! `audctl restore postgres` (checksums, pg_restore, row counts and every chain re-verified) against
//! the guide's RTO. Each measurement runs twice, alternating, and the faster run counts.
//!
//! `cargo run --release -p audctl --example bench_backup -- [--gigabytes 1.0]` after
//! `cargo build --release -p audctl` (the audctl binary is taken next to this example's directory).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use audctl::backup::chain::{GENESIS, canonical_json, link_hash};
use audit_server::{ApiKeyConfig, Config};
use serde_json::json;
use sqlx::Connection;

const TENANTS: usize = 50;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let gigabytes: f64 = args
        .iter()
        .position(|a| a == "--gigabytes")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()
        .context("--gigabytes: a number")?
        .unwrap_or(1.0);
    let exe = std::env::current_exe()?;
    let audctl = exe.parent().and_then(Path::parent).map(|d| d.join("audctl")).context("audctl path")?;
    ensure!(audctl.exists(), "{} missing: cargo build --release -p audctl first", audctl.display());

    let pg = testbed::postgres().await?;
    let url = pg.create_database("bench").await?;
    create_schema(&url).await?;
    let t0 = Instant::now();
    let events = load(&url, gigabytes).await?;
    let size: String = scalar(&url, "SELECT pg_size_pretty(pg_database_size(current_database()))").await?;
    let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')")
        .fetch_one(&mut sqlx::PgConnection::connect(&url).await?)
        .await?;
    eprintln!(
        "loaded {events} events ({size}, events table {:.2} GB) in {:.0} s",
        bytes as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let targets = dir.path().join("targets.yaml");
    std::fs::write(
        &targets,
        format!(
            "postgres:\n  url: postgres://{}@127.0.0.1:{}/bench\n  password: {}\n",
            testbed::postgres::SUPERUSER,
            pg.port(),
            pg.password()
        ),
    )?;
    let pg_dump = pg.bin("pg_dump");
    let mut plain = Vec::new();
    let mut ours = Vec::new();
    let mut last_id = String::new();
    for round in 0..2 {
        let out = dir.path().join(format!("plain-{round}.dump"));
        let t = Instant::now();
        run(Command::new(&pg_dump).args(["-Fc", "-w", "-f"]).arg(&out).arg("-d").arg(&url))?;
        plain.push(t.elapsed());
        std::fs::remove_file(&out)?;

        let repo = dir.path().join(format!("repo-{round}"));
        let t = Instant::now();
        let o = run(Command::new(&audctl)
            .arg("--targets")
            .arg(&targets)
            .args(["-o", "json", "backup", "postgres", "--method", "dump", "--repo"])
            .arg(&repo))?;
        ours.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&o)?;
        last_id = v["id"].as_str().context("backup id")?.to_owned();
        if round == 0 {
            std::fs::remove_dir_all(&repo)?;
        }
    }
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (p, a) = (best(&plain), best(&ours));
    let overhead = a.as_secs_f64() / p.as_secs_f64() - 1.0;

    let target = pg.create_database("restored").await?;
    let t = Instant::now();
    let o = run(Command::new(&audctl)
        .args(["-o", "json", "restore", "postgres", &last_id, "--repo"])
        .arg(dir.path().join("repo-1"))
        .args(["--target", &target, "--yes"]))?;
    let restore = t.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&o)?;
    let all_ok = v["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true));

    println!("| measurement | time | |");
    println!("|---|---:|---|");
    println!("| plain `pg_dump -Fc` ({events} events, {size}) | {:.1} s | runs: {:?} |", p.as_secs_f64(), secs(&plain));
    println!("| `audctl backup postgres --method dump` | {:.1} s | runs: {:?} |", a.as_secs_f64(), secs(&ours));
    println!(
        "| overhead | {:+.1} % | target < 10 %: {} |",
        overhead * 100.0,
        if overhead < 0.10 { "met" } else { "MISSED" }
    );
    println!(
        "| `audctl restore postgres` (checksums, pg_restore, counts, chains) | {:.1} s | RTO 1 h: {}; all checks ok: {all_ok} |",
        restore.as_secs_f64(),
        if restore < Duration::from_secs(3600) { "met" } else { "MISSED" }
    );
    Ok(())
}

fn secs(v: &[Duration]) -> Vec<String> {
    v.iter().map(|d| format!("{:.1}", d.as_secs_f64())).collect()
}

fn run(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

async fn scalar(url: &str, sql: &'static str) -> anyhow::Result<String> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    Ok(sqlx::query_scalar(sql).fetch_one(&mut c).await?)
}

/// The audit server creates its schema (migrations) on start.
async fn create_schema(url: &str) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut c = Config::local(data.path().join("data"));
    c.listen = "127.0.0.1:0".parse()?;
    c.database_url = Some(url.to_owned());
    c.api_keys = vec![ApiKeyConfig::plain("bench", &["*"])];
    audit_server::spawn(c).await?.shutdown().await
}

/// Valid chains written with COPY (CSV), until the events table holds `gigabytes`.
async fn load(url: &str, gigabytes: f64) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let target = (gigabytes * 1e9) as u64;
    let pad: String = "lorem ipsum dolor sit amet ".repeat(24);
    let per_tenant_batch = 2000;
    let mut heads: Vec<(i64, String)> = vec![(0, GENESIS.to_owned()); TENANTS];
    let mut written = 0u64;
    let mut events = 0u64;
    let start = chrono::Utc::now() - chrono::Duration::days(1);
    while written < target {
        let mut csv = String::with_capacity(per_tenant_batch * TENANTS * 1200);
        for (t, head) in heads.iter_mut().enumerate() {
            let tenant = format!("tenant-{t:03}");
            for _ in 0..per_tenant_batch {
                let seq = head.0 + 1;
                let id = uuid::Uuid::new_v4().to_string();
                let ts = (start + chrono::Duration::milliseconds(events as i64))
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                let body = canonical_json(&json!({
                    "id": id, "sequence": seq, "timestamp": ts,
                    "actor": {"id": format!("user-{}", seq % 97), "type": "USER"},
                    "action": {"type": "UPDATE", "description": pad},
                    "resource": {"id": format!("doc-{seq}"), "type": "DOCUMENT", "after": {"n": seq}},
                    "metadata": {"source": "bench", "tenantId": tenant},
                }));
                let hash = link_hash(&body, &head.1);
                let quoted = body.replace('"', "\"\"");
                csv.push_str(&format!(
                    "{tenant},{seq},{id},{ts},user-{},doc-{seq},UPDATE,\"{quoted}\",{hash},{}\n",
                    seq % 97,
                    head.1
                ));
                events += 1;
                *head = (seq, hash);
            }
        }
        let mut copy = conn
            .copy_in_raw(
                "COPY events (tenant_id, sequence, id, ts, actor_id, resource_id, action_type, body, hash, previous_hash) FROM STDIN (FORMAT csv)",
            )
            .await?;
        copy.send(csv.into_bytes()).await?;
        copy.finish().await?;
        let size: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('events')").fetch_one(&mut conn).await?;
        written = size as u64;
    }
    for (t, (seq, hash)) in heads.iter().enumerate() {
        sqlx::query("INSERT INTO chain_heads (tenant_id, last_sequence, last_hash) VALUES ($1, $2, $3)")
            .bind(format!("tenant-{t:03}"))
            .bind(seq)
            .bind(hash)
            .execute(&mut conn)
            .await?;
    }
    sqlx::query("VACUUM ANALYZE events").execute(&mut conn).await?;
    Ok(events)
}
