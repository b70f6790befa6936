//! `cargo xtask bench server` runs this: a measured run (not a test) against the testbed's real
//! PostgreSQL. First the raw ceiling with pgbench (single-row insert commits, and 100-row insert
//! transactions), then the server in-process: single events on one tenant and on 100 tenants, and
//! batches of 100, each a closed loop of concurrent clients for a fixed duration after a warm-up.
//! Prints each figure and its ratio to the matching ceiling.
//!
//!     cargo run --release -p audit-server --example bench -- [--seconds 10] [--clients 64] [--batch-clients 16] [--pool N]

#[path = "bench_support/kafka.rs"]
mod kafka;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use audit_server::{ApiKeyConfig, Config};
use hdrhistogram::Histogram;
use serde_json::json;

const KEY: &str = "bench-key";

struct Args {
    seconds: u64,
    clients: usize,
    batch_clients: usize,
    pool: u32,
}

fn args() -> Result<Args> {
    // The server's pool defaults to as many connections as pgbench's clients: a like-for-like ceiling.
    let mut a = Args { seconds: 10, clients: 64, batch_clients: 16, pool: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64> {
            let v = it.next().with_context(|| format!("{flag} needs a value"))?;
            v.parse().with_context(|| format!("{flag} {v}: expected a number"))
        };
        match flag.as_str() {
            "--seconds" => a.seconds = value()?,
            "--clients" => a.clients = value()? as usize,
            "--batch-clients" => a.batch_clients = value()? as usize,
            "--pool" => a.pool = value()? as u32,
            other => bail!("unknown argument {other}; expected --seconds N, --clients N, --batch-clients N"),
        }
    }
    if a.pool == 0 {
        a.pool = a.clients as u32;
    }
    Ok(a)
}

/// name, route, request bodies (cycled), clients, events per request.
type Scenario = (String, String, Arc<Vec<Vec<u8>>>, usize, u64);

/// One measured scenario.
struct Figure {
    name: String,
    events_per_sec: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    eprintln!("starting PostgreSQL (testbed)...");
    let pg = testbed::postgres::postgres().await?;
    let mut figures = Vec::new();

    // The ceiling: what PostgreSQL itself commits on this machine, through pgbench.
    let raw_url = pg.create_database("bench_raw").await?;
    raw_setup(&raw_url).await?;
    let single = pgbench(
        &pg,
        "bench_raw",
        args.clients,
        args.seconds,
        "INSERT INTO raw_events (tenant_id, body) VALUES ('t', repeat('x', 600));\n",
    )?;
    figures.push(Figure {
        name: format!("pgbench single-row insert, {} clients", args.clients),
        events_per_sec: single,
        p50_ms: None,
        p99_ms: None,
        errors: 0,
    });
    let batch_tps = pgbench(
        &pg,
        "bench_raw",
        args.clients,
        args.seconds,
        "INSERT INTO raw_events (tenant_id, body) SELECT 't', repeat('x', 600) FROM generate_series(1, 100);\n",
    )?;
    figures.push(Figure {
        name: format!("pgbench 100-row transactions, {} clients", args.clients),
        events_per_sec: batch_tps * 100.0,
        p50_ms: None,
        p99_ms: None,
        errors: 0,
    });

    // The server, in this process, on its own database.
    let url = pg.create_database("bench_server").await?;
    let dir = tempfile::tempdir()?;
    let mut config = Config::local(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse()?;
    config.database_url = Some(url);
    config.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
    config.db_max_connections = args.pool;
    let server = audit_server::spawn(config).await?;
    let base = server.base_url();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let single_body = |tenant: usize| body_bytes(&event(&format!("tenant-{tenant}")));
    let one_tenant = Arc::new(vec![single_body(0)]);
    let hundred = Arc::new((0..100).map(single_body).collect::<Vec<_>>());
    let batches = Arc::new(
        (0..100)
            .map(|t| body_bytes(&json!({"events": (0..100).map(|_| event(&format!("batch-{t}"))).collect::<Vec<_>>()})))
            .collect::<Vec<_>>(),
    );
    let scenarios: [Scenario; 3] = [
        (
            format!("server single events, 1 tenant, {} clients", args.clients),
            "/api/v1/events".into(),
            one_tenant,
            args.clients,
            1,
        ),
        (
            format!("server single events, 100 tenants, {} clients", args.clients),
            "/api/v1/events".into(),
            hundred,
            args.clients,
            1,
        ),
        (
            format!("server batches of 100, 100 tenants, {} clients", args.batch_clients),
            "/api/v1/events/batch".into(),
            batches,
            args.batch_clients,
            100,
        ),
    ];
    for (name, path, bodies, clients, per_request) in scenarios {
        eprintln!("running: {name}");
        let before = scrape(&http, &base).await?;
        let f = drive(&http, &format!("{base}{path}"), bodies, clients, per_request, Duration::from_secs(args.seconds))
            .await?;
        let after = scrape(&http, &base).await?;
        let runs = after.0 - before.0;
        let jobs = after.1 - before.1;
        eprintln!(
            "  group commit: {jobs} requests in {runs} transactions ({:.1} per transaction)",
            jobs as f64 / runs.max(1.0)
        );
        figures.push(Figure { name, ..f });
    }
    // Every chain the run wrote must verify.
    for tenant in ["tenant-0", "tenant-57", "batch-3"] {
        let report: serde_json::Value = http
            .get(format!("{base}/api/v1/integrity/verify?tenantId={tenant}"))
            .header("x-api-key", KEY)
            .send()
            .await?
            .json()
            .await?;
        if report["verified"] != true {
            bail!("chain of {tenant} does not verify after the bench: {report}");
        }
    }
    server.shutdown().await?;
    let (outbox, outbox_summary) =
        kafka::outbox_cost(&pg, &http, args.clients, args.pool, Duration::from_secs(args.seconds)).await?;
    figures.extend(outbox);

    println!(
        "\naudit-server benchmark against PostgreSQL ({} s per scenario, server pool {}, this machine: {} cores)",
        args.seconds,
        args.pool,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("{:<52} {:>12} {:>9} {:>9} {:>7} {:>9}", "scenario", "events/s", "p50 ms", "p99 ms", "errors", "ratio");
    let ceiling =
        |name: &str| if name.contains("batches") { figures[1].events_per_sec } else { figures[0].events_per_sec };
    for f in &figures {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let ratio = if f.name.starts_with("server") {
            format!("{:.2}", f.events_per_sec / ceiling(&f.name))
        } else {
            "1.00".into()
        };
        println!(
            "{:<52} {:>12.0} {:>9} {:>9} {:>7} {:>9}",
            f.name,
            f.events_per_sec,
            ms(f.p50_ms),
            ms(f.p99_ms),
            f.errors,
            ratio
        );
    }
    println!(
        "\nratio: server events/s divided by the pgbench figure of the same shape (single rows or 100-row transactions)."
    );
    println!("{outbox_summary}");
    println!(
        "aims (issue 14): single events >= 0.5 x pgbench single-row with p99 < 20 ms, on one tenant too; batches >= 20000 events/s."
    );
    Ok(())
}

async fn raw_setup(url: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    // Same shape as the server's events table: a primary key and as many secondary indexes.
    sqlx::raw_sql(
        "CREATE TABLE raw_events (id BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, ts TIMESTAMPTZ NOT NULL DEFAULT now(), body TEXT NOT NULL);
         CREATE INDEX ON raw_events (tenant_id, id); CREATE INDEX ON raw_events (tenant_id, ts);",
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Run pgbench with one script; returns its transactions per second.
fn pgbench(pg: &testbed::postgres::Postgres, db: &str, clients: usize, seconds: u64, script: &str) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script)?;
    let out = Command::new(pg.bin("pgbench"))
        .args(["-n", "-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", testbed::postgres::SUPERUSER])
        .args(["-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg(db)
        .env("PGPASSWORD", pg.password())
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps line in pgbench output:\n{text}"))
}

fn event(tenant: &str) -> serde_json::Value {
    json!({
        "actor": {"id": "user-42", "type": "USER", "name": "Bench User", "ip": "10.1.2.3", "userAgent": "bench/1.0"},
        "action": {"type": "DOCUMENT_UPDATED", "description": "bench event", "category": "DATA"},
        "resource": {"id": "doc-1234", "type": "DOCUMENT", "name": "Quarterly report", "before": {"status": "draft"}, "after": {"status": "final"}},
        "metadata": {"source": "bench", "tenantId": tenant, "correlationId": "corr-1", "tags": {"env": "bench"}}
    })
}

fn body_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A closed loop: `clients` tasks each POST back to back, a 2 s warm-up then `duration` measured.
async fn drive(
    http: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
    per_request: u64,
    duration: Duration,
) -> Result<Figure> {
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, bodies) = (http.clone(), url.to_owned(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut ok, mut errors, mut i) = (0u64, 0u64, c);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                i += clients;
                let r = http
                    .post(&url)
                    .header("x-api-key", KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let good = matches!(&r, Ok(r) if r.status().as_u16() == 201);
                if let Ok(r) = r {
                    let _ = r.bytes().await;
                }
                if now >= measure_from {
                    if good {
                        ok += 1;
                        let _ = hist.record(now.elapsed().as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await?;
        hist.add(h)?;
        ok += o;
        errors += e;
    }
    Ok(Figure {
        name: String::new(),
        events_per_sec: (ok * per_request) as f64 / duration.as_secs_f64(),
        p50_ms: Some(hist.value_at_quantile(0.5) as f64 / 1000.0),
        p99_ms: Some(hist.value_at_quantile(0.99) as f64 / 1000.0),
        errors,
    })
}

/// (group-commit runs, jobs) counters from the server's metrics.
async fn scrape(http: &reqwest::Client, base: &str) -> Result<(f64, f64)> {
    let text = http.get(format!("{base}/actuator/prometheus")).send().await?.text().await?;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    Ok((value("audit_group_commit_runs_total"), value("audit_group_commit_jobs_total")))
}
