//! `audctl backup postgres` / `audctl restore postgres` against the testbed's real PostgreSQL (WAL
//! archive on), with events written by the real audit server; the restored chains are checked again
//! by the audit server's own /integrity/verify, an independent reference.

mod backup_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use audctl_targets::{PostgresTarget, Secret, Targets};
use audit_server::{ApiKeyConfig, Config};
use backup_support::{audctl, sha256sum, targets_file};
use serde_json::{Value, json};
use testbed::{PgOptions, Postgres};

const KEY: &str = "backup-test-key";
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

struct Setup {
    pg: Postgres,
    _dir: tempfile::TempDir,
    targets: PathBuf,
    repo: PathBuf,
    url: String,
}

impl Setup {
    fn t(&self) -> &str {
        self.targets.to_str().expect("utf-8 path")
    }
    fn r(&self) -> &str {
        self.repo.to_str().expect("utf-8 path")
    }
}

/// A PostgreSQL with WAL archiving, a database `db` and a targets file naming it.
async fn setup(db: &str) -> anyhow::Result<Setup> {
    let pg = testbed::postgres_with(PgOptions { archive: true, ..Default::default() }).await?;
    let url = pg.create_database(db).await?;
    let dir = tempfile::tempdir()?;
    let base = pg.target();
    let targets = Targets {
        postgres: Some(PostgresTarget {
            url: format!("postgres://{}@127.0.0.1:{}/{db}", testbed::postgres::SUPERUSER, pg.port()),
            password: Some(Secret::Inline(pg.password().to_owned())),
            replicas: Vec::new(),
            wal_archive: base.wal_archive,
        }),
        ..Default::default()
    };
    let targets = targets_file(dir.path(), &targets);
    let repo = dir.path().join("repo");
    Ok(Setup { pg, targets, repo, url, _dir: dir })
}

struct Server {
    server: audit_server::RunningServer,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

async fn server(url: &str) -> anyhow::Result<Server> {
    let data = tempfile::tempdir()?;
    let mut c = Config::local(data.path().join("data"));
    c.listen = "127.0.0.1:0".parse()?;
    c.database_url = Some(url.to_owned());
    c.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
    c.db_max_connections = 4;
    let server = audit_server::spawn(c).await?;
    Ok(Server { server, http: reqwest::Client::new(), _data: data })
}

fn event(tenant: &str, n: usize) -> Value {
    json!({
        "actor": {"id": format!("user-{}", n % 7), "type": "USER", "attributes": {"n": n, "ratio": 0.5}},
        "action": {"type": if n.is_multiple_of(2) { "LOGIN" } else { "UPDATE" }, "description": "naïve \"quoted\" / line\nbreak"},
        "resource": {"id": format!("doc-{n}"), "type": "DOCUMENT", "after": {"k": [1, 2, {"z": null}]}},
        "metadata": {"source": "backup-test", "tenantId": tenant, "tags": {"b": "2", "a": "1"}}
    })
}

impl Server {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.server.base_url()))
            .header("x-api-key", KEY)
            .json(body)
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        ensure!(status.as_u16() == 201, "POST {path}: {status} {body}");
        Ok(body)
    }

    async fn batch(&self, tenant: &str, from: usize, n: usize) -> anyhow::Result<()> {
        let events: Vec<Value> = (from..from + n).map(|i| event(tenant, i)).collect();
        self.post("/api/v1/events/batch", &json!({ "events": events })).await?;
        Ok(())
    }

    /// Append one event; its id.
    async fn one(&self, tenant: &str, n: usize) -> anyhow::Result<String> {
        let r = self.post("/api/v1/events", &event(tenant, n)).await?;
        Ok(r["id"].as_str().context("id in the receipt")?.to_owned())
    }

    async fn verify(&self, tenant: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/api/v1/integrity/verify?tenantId={tenant}", self.server.base_url()))
            .header("x-api-key", KEY)
            .send()
            .await?;
        Ok(r.json().await?)
    }
}

async fn scalar(url: &str, sql: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await?;
    let v: Option<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT ({sql})::text"))).fetch_one(&mut c).await?;
    Ok(v.unwrap_or_default())
}

/// A fingerprint of all events, for "identical data" between source and restored database.
const FINGERPRINT: &str =
    "SELECT md5(string_agg(tenant_id || sequence || hash || body, ',' ORDER BY tenant_id, sequence)) FROM events";

async fn fill(url: &str, per_tenant: usize) -> anyhow::Result<()> {
    let s = server(url).await?;
    for t in TENANTS {
        let mut done = 0;
        while done < per_tenant {
            let n = (per_tenant - done).min(500);
            s.batch(t, done, n).await?;
            done += n;
        }
    }
    s.server.shutdown().await
}

/// Target database URL on the same server.
async fn new_db(pg: &Postgres, name: &str) -> anyhow::Result<String> {
    pg.create_database(name).await
}

fn id_of(backup: &Value) -> String {
    backup["id"].as_str().unwrap_or_else(|| panic!("no id in {backup}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_wipe_restore_gives_identical_data_and_intact_chains() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 300).await?;
    let before = scalar(&s.url, FINGERPRINT).await?;

    let b = audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--repo", s.r()]).await.ok().json();
    let id = id_of(&b);
    // The manifest lists every file with the sha256 that `sha256sum` computes.
    let dir = s.repo.join("postgres").join(&id);
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let files = manifest["files"].as_array().context("files")?;
    assert!(files.iter().any(|f| f["path"] == "dump/audit.dump"), "{manifest}");
    assert!(files.iter().any(|f| f["path"] == "base/base.tar"), "{manifest}");
    assert!(files.iter().any(|f| f["path"].as_str().is_some_and(|p| p.starts_with("wal/"))), "{manifest}");
    for f in files {
        let path = dir.join(f["path"].as_str().context("path")?);
        assert_eq!(f["sha256"].as_str(), Some(sha256sum(&path).as_str()), "{}", path.display());
        assert_eq!(f["size"].as_u64(), Some(std::fs::metadata(&path)?.len()));
    }
    let c = &manifest["consistency"];
    assert_eq!(c["dump"]["tables"]["public.events"], 900, "{c}");
    assert_eq!(c["dump"]["tenants"].as_object().map(|o| o.len()), Some(3), "{c}");
    assert!(c["dump"]["lsn"].as_str().is_some_and(|l| l.contains('/')), "{c}");
    assert!(c["base"]["endLsn"].as_str().is_some(), "{c}");
    assert_eq!(c["timeline"], 1);
    assert!(manifest["serverVersion"].as_str().is_some_and(|v| v.starts_with("15")), "{manifest}");

    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    assert_eq!(list["backups"][0]["id"], id.as_str());

    // Wipe: the source database is dropped; restore into a fresh one.
    s.pg.sql("DROP DATABASE audit WITH (FORCE)").await?;
    let target = new_db(&s.pg, "audit").await?;
    let r = audctl(&["-o", "json", "restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    let report = r.ok().json();
    assert!(report["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{report}");
    assert!(report["durationSeconds"].as_f64().is_some());
    assert_eq!(scalar(&target, FINGERPRINT).await?, before, "restored events differ from the source");

    // The audit server itself agrees the chains are intact.
    let srv = server(&target).await?;
    for t in TENANTS {
        let v = srv.verify(t).await?;
        assert_eq!(v["verified"], true, "{t}: {v}");
        assert_eq!(v["checked"], 300, "{t}: {v}");
    }
    srv.server.shutdown().await?;

    // Non-empty target: refused without --force, nothing changed; replaced with --force.
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not empty") && r.stderr.contains("--force"), "{}", r.stderr);
    let r = audctl(&["restore", "postgres", "latest", "--repo", s.r(), "--target", &target, "--yes", "--force"]).await;
    r.ok();
    assert_eq!(scalar(&target, FINGERPRINT).await?, before);

    // No confirmation and no terminal: refused.
    let empty = new_db(&s.pg, "empty_one").await?;
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &empty]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(scalar(&empty, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").await?, "0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_targets_are_refused_with_a_clear_error() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 20).await?;
    let id = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );

    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", "mysql://root@127.0.0.1/audit", "--yes"])
        .await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("postgres://"), "{}", r.stderr);

    let missing =
        format!("postgres://{}:{}@127.0.0.1:{}/nosuchdb", testbed::postgres::SUPERUSER, s.pg.password(), s.pg.port());
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &missing, "--yes"]).await;
    assert_eq!(r.code, Some(2), "a refusal: {}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(!r.stderr.contains(s.pg.password()), "password leaked: {}", r.stderr);

    let port = testbed::free_port()?;
    let down = format!("postgres://audctl@127.0.0.1:{port}/audit");
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &down, "--yes"]).await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("unreachable"), "{}", r.stderr);

    let r = audctl(&["restore", "postgres", "postgres-19990101T000000Z", "--repo", s.r(), "--target", &s.url, "--yes"])
        .await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("no backup postgres-19990101T000000Z"), "{}", r.stderr);

    // A WAL archive that does not exist is refused before the dump runs (exit 2, no backup).
    let before = std::fs::read_dir(s.repo.join("postgres"))?.count();
    let r = audctl(&["--targets", s.t(), "backup", "postgres", "--repo", s.r(), "--wal-archive", "/nonexistent"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent") && !r.stderr.contains("pg_dump"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(s.repo.join("postgres"))?.count(), before);

    // A dump-only backup cannot serve a point in time.
    let target = new_db(&s.pg, "pitr_target").await?;
    let r =
        audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes", "--to-lsn", "0/0"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("no base backup"), "{}", r.stderr);

    // A password as query parameter is used, and shown nowhere (here in the "not empty" refusal).
    let nonempty = format!(
        "postgres://{}@127.0.0.1:{}/audit?password={}",
        testbed::postgres::SUPERUSER,
        s.pg.port(),
        s.pg.password()
    );
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &nonempty, "--yes"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert!(!r.stderr.contains(s.pg.password()) && !r.stdout.contains(s.pg.password()), "leaked: {}", r.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_truncated_files_are_refused_before_touching_the_target() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 50).await?;
    let id = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );
    let dump = s.repo.join("postgres").join(&id).join("dump/audit.dump");
    let original = std::fs::read(&dump)?;
    let target = new_db(&s.pg, "target").await?;

    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&dump, &flipped)?;
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("dump/audit.dump") && r.stderr.contains("corrupted"), "{}", r.stderr);
    // With -o json the report is there, its failed row naming the file.
    let r = audctl(&["-o", "json", "restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let failed = r.json()["checks"][0].clone();
    assert_eq!(failed["ok"], false, "{failed}");
    assert!(failed["actual"].as_str().is_some_and(|a| a.contains("dump/audit.dump")), "{failed}");
    // backup verify: the same failed row, exit 1, and the backup is not marked verified.
    let r = audctl(&["-o", "json", "backup", "--repo", s.r(), "verify", &id]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let checks = r.json()["checks"].clone();
    assert!(
        checks.as_array().is_some_and(|c| c.iter().any(|c| c["name"] == "checksums" && c["ok"] == false)),
        "{checks}"
    );
    assert!(!s.repo.join("postgres").join(&id).join("verified.json").exists());
    assert_eq!(scalar(&target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").await?, "0");

    std::fs::write(&dump, &original[..original.len() - 100])?;
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("dump/audit.dump") && r.stderr.contains("truncated"), "{}", r.stderr);
    assert_eq!(scalar(&target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").await?, "0");

    // Put back, it restores.
    std::fs::write(&dump, &original)?;
    audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await.ok();
    assert_eq!(scalar(&target, "SELECT count(*) FROM events").await?, "150");
    Ok(())
}

/// Wait until the archive holds the WAL segment containing `lsn`'s predecessor segment switch.
async fn archive_past(pg: &Postgres) -> anyhow::Result<()> {
    let seg = pg.sql("SELECT pg_walfile_name(pg_switch_wal())").await?;
    let archive = pg.wal_archive_dir().context("archive dir")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !archive.join(&seg).exists() {
        ensure!(Instant::now() < deadline, "segment {seg} never archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn has_event(url: &str, id: &str) -> anyhow::Result<bool> {
    Ok(scalar(url, &format!("SELECT count(*) FROM events WHERE id = '{id}'")).await? == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_lands_between_two_known_writes() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 40).await?;
    let id = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "base", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );

    let srv = server(&s.url).await?;
    let a = srv.one("acme", 1000).await?;
    // Between A and B: a time, a WAL position and a named restore point.
    let t = scalar(&s.url, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        .await?;
    let lsn = scalar(&s.url, "SELECT pg_current_wal_insert_lsn()").await?;
    s.pg.sql("SELECT pg_create_restore_point('between-a-and-b')").await?;
    let b = srv.one("acme", 1001).await?;
    srv.server.shutdown().await?;
    // The transaction that wrote A.
    let xid = scalar(&s.url, &format!("SELECT xmin FROM events WHERE id = '{a}'")).await?;
    archive_past(&s.pg).await?;
    assert!(has_event(&s.url, &a).await? && has_event(&s.url, &b).await?);

    for (n, flag, value) in [
        (1, "--to-time", t.as_str()),
        (2, "--to-lsn", lsn.as_str()),
        (3, "--to-name", "between-a-and-b"),
        (4, "--to-xid", xid.as_str()),
    ] {
        let target = new_db(&s.pg, &format!("pitr_{n}")).await?;
        let r = audctl(&[
            "--targets",
            s.t(),
            "-o",
            "json",
            "restore",
            "postgres",
            &id,
            "--repo",
            s.r(),
            "--target",
            &target,
            "--yes",
            flag,
            value,
        ])
        .await;
        let report = r.ok().json();
        assert!(report["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{report}");
        assert!(has_event(&target, &a).await?, "{flag} {value}: A (written before) is missing");
        assert!(!has_event(&target, &b).await?, "{flag} {value}: B (written after) is present");
        assert_eq!(scalar(&target, "SELECT count(*) FROM events").await?, "121", "{flag}");
        let srv = server(&target).await?;
        let v = srv.verify("acme").await?;
        assert_eq!(v["verified"], true, "{v}");
        assert_eq!(v["checked"], 41, "{v}");
        srv.server.shutdown().await?;
    }

    // Targets no recovery from this backup reaches, refused (exit 2) with what to do instead:
    // one before the base backup, and one past the archived WAL, where the answer says where the
    // WAL ends and that the target database was left as it was (no table created in it).
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";
    let unreachable: [(&str, &str, &[&str]); 2] = [
        ("pitr_early", "2020-01-01T00:00:00Z", &["earlier backup"]),
        (
            "pitr_late",
            "2099-01-01T00:00:00Z",
            &[
                "the WAL of this backup and archive ends before it",
                "last transaction replayed at ",
                "the target database is untouched",
            ],
        ),
    ];
    for (db, time, expected) in unreachable {
        let target = new_db(&s.pg, db).await?;
        let r = audctl(&[
            "--targets",
            s.t(),
            "restore",
            "postgres",
            &id,
            "--repo",
            s.r(),
            "--target",
            &target,
            "--yes",
            "--to-time",
            time,
        ])
        .await;
        assert_eq!(r.code, Some(2), "{time}: {}", r.stderr);
        for e in expected {
            assert!(r.stderr.contains(e), "{time}: {e:?} missing in {}", r.stderr);
        }
        assert_eq!(scalar(&target, tables).await?, "0", "{time}: the target was touched");
    }
    Ok(())
}

fn partial_dirs(repo: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join(".partial")).map(|es| es.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_never_appears_complete() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 20).await?;
    // Enough data that the backup is still running when it is killed.
    s.pg.sql("\\c audit\nCREATE TABLE filler AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 1500000) g").await?;

    let mut child = backup_support::command(&["--targets", s.t(), "backup", "postgres", "--repo", s.r()]).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kill it once it has written something.
    loop {
        let started = partial_dirs(&s.repo).iter().any(|d| dir_bytes(d) > 0);
        if started {
            break;
        }
        ensure!(child.try_wait()?.is_none(), "the backup finished before it could be interrupted");
        ensure!(Instant::now() < deadline, "the backup never started writing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill()?;
    child.wait()?;
    // Its tools die with it (pg_dump on a broken pipe, pg_basebackup by its parent-death signal).
    let marker = format!("127.0.0.1:{}/audit", s.pg.port());
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(left) = tool_running(&marker) {
        ensure!(Instant::now() < deadline, "{left} still running after audctl was killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(0), "{list}");
    let incomplete = list["incomplete"].as_array().context("incomplete")?;
    assert_eq!(incomplete.len(), 1, "{list}");
    let partial_id = incomplete[0].as_str().context("id")?;
    let target = new_db(&s.pg, "target").await?;
    let r = audctl(&["restore", "postgres", partial_id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("incomplete"), "{}", r.stderr);

    // The next backup is complete and restorable.
    let id = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );
    audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await.ok();
    assert_eq!(scalar(&target, "SELECT count(*) FROM filler").await?, "1500000");
    Ok(())
}

/// A pg_dump or pg_basebackup whose command line mentions `marker`.
fn tool_running(marker: &str) -> Option<String> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let tool = text.contains("pg_dump") || text.contains("pg_basebackup");
        (tool && text.contains(marker)).then_some(text)
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { dir_bytes(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }
        })
        .sum()
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()?;
        ensure!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_cleanly_and_keeps_earlier_backups() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 20).await?;
    let _fs = Tmpfs::mount(&s.repo, "3m")?;
    let first = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );

    // Random text compresses poorly: the next dump cannot fit.
    s.pg.sql("\\c audit\nCREATE TABLE filler AS SELECT g, md5(random()::text) || md5(random()::text) AS pad FROM generate_series(1, 200000) g").await?;
    let r = audctl(&["--targets", s.t(), "backup", "postgres", "--method", "dump", "--repo", s.r()]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(partial_dirs(&s.repo).is_empty(), "a failed backup left files: {:?}", partial_dirs(&s.repo));
    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    let ids: Vec<&str> =
        list["backups"].as_array().context("backups")?.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, vec![first.as_str()]);

    // The earlier backup is intact and restores.
    let target = new_db(&s.pg, "target").await?;
    audctl(&["restore", "postgres", &first, "--repo", s.r(), "--target", &target, "--yes"]).await.ok();
    assert_eq!(scalar(&target, "SELECT count(*) FROM events").await?, "60");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_in_the_backup_fails_the_restore_verification() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 10).await?;
    // Tamper with one event at the source (an edit the checksums cannot see: it is in the backup).
    s.pg.sql("\\c audit\nUPDATE events SET body = replace(body, 'doc-3', 'doc-X') WHERE tenant_id = 'globex' AND sequence = 4").await?;
    let id = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );
    let target = new_db(&s.pg, "target").await?;
    let r = audctl(&["-o", "json", "restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let report = r.json();
    let chains = report["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .find(|c| c["name"] == "hash chains")
        .context("chain check")?;
    assert_eq!(chains["ok"], false, "{report}");
    assert!(chains["actual"].as_str().is_some_and(|a| a.contains("globex") && a.contains("sequence 4")), "{report}");
    Ok(())
}

/// Rewrite a backup's times (as if taken `hours` ago) in its manifest.
fn age_backup(dir: &Path, hours: i64) -> anyhow::Result<()> {
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let at = chrono::Utc::now() - chrono::Duration::hours(hours);
    m["started"] = json!(at);
    m["finished"] = json!(at);
    std::fs::write(&path, serde_json::to_vec_pretty(&m)?)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_status_and_prune_follow_the_guide() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 30).await?;
    let id =
        id_of(&audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--repo", s.r()]).await.ok().json());

    // A test-restore into scratch instances: dump restored and counted, base backup recovered.
    let v = audctl(&["-o", "json", "backup", "--repo", s.r(), "verify", &id]).await.ok().json();
    let checks = v["checks"].as_array().context("checks")?;
    assert!(checks.iter().all(|c| c["ok"] == true), "{v}");
    assert!(checks.iter().any(|c| c["name"] == "base backup recovers"), "{v}");
    assert!(checks.iter().any(|c| c["name"] == "dump: rows public.events" && c["actual"] == "90"), "{v}");
    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    assert!(list["backups"][0]["verified"].is_string(), "{list}");

    // Fresh: status passes. Two hours old: PostgreSQL's hourly cadence is missed, exit 1.
    let st = audctl(&["--targets", s.t(), "-o", "json", "backup", "--repo", s.r(), "status"]).await.ok().json();
    assert_eq!(st["components"][0]["overdue"], false, "{st}");
    let dir = s.repo.join("postgres").join(&id);
    age_backup(&dir, 2)?;
    let st = audctl(&["--targets", s.t(), "-o", "json", "backup", "--repo", s.r(), "status"]).await;
    assert_eq!(st.code, Some(1), "{}", st.stderr);
    assert_eq!(st.json()["components"][0]["overdue"], true);

    // Retention: 7 days for PostgreSQL. A fresh backup and a 9-day-old one: dry run deletes nothing.
    let fresh = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );
    age_backup(&dir, 9 * 24)?;
    let p = audctl(&["-o", "json", "backup", "--repo", s.r(), "prune"]).await.ok().json();
    let row = |p: &Value, id: &str| {
        p["rows"].as_array().and_then(|r| r.iter().find(|x| x["id"] == id).cloned()).unwrap_or_default()
    };
    assert_eq!(row(&p, &id)["action"], "delete", "{p}");
    assert_eq!(row(&p, &fresh)["action"], "keep", "{p}");
    assert!(dir.exists(), "a dry run deleted something");
    audctl(&["backup", "--repo", s.r(), "prune", "--confirm"]).await.ok();
    assert!(!dir.exists());
    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["backups"][0]["id"], fresh.as_str());
    Ok(())
}

/// `--method dump` against a streaming replica (the README's advice for a busy primary): the
/// dump and its manifest come from the standby, at its replay position, and restore to exactly
/// the primary's data; a base backup from the standby is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dump_from_a_replica_restores_the_primarys_data() -> anyhow::Result<()> {
    let pg = testbed::postgres_with(PgOptions { replica: true, ..Default::default() }).await?;
    let url = pg.create_database("audit").await?;
    fill(&url, 200).await?;
    let before = scalar(&url, FINGERPRINT).await?;
    let replica = pg.replica_url().context("the testbed replica")?;
    let port: u16 = replica.rsplit(':').next().and_then(|p| p.split('/').next()).context("replica port")?.parse()?;
    let on_replica = replica.replace("/postgres", "/audit");
    // Wait until the replica replayed the primary's writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(&on_replica, FINGERPRINT).await.unwrap_or_default() != before {
        ensure!(Instant::now() < deadline, "the replica did not catch up with the primary");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = tempfile::tempdir()?;
    let targets = Targets {
        postgres: Some(PostgresTarget {
            url: format!("postgres://{}@127.0.0.1:{port}/audit", testbed::postgres::SUPERUSER),
            password: Some(Secret::Inline(pg.password().to_owned())),
            replicas: Vec::new(),
            wal_archive: None,
        }),
        ..Default::default()
    };
    let targets = targets_file(dir.path(), &targets);
    let (t, repo) = (targets.to_str().context("path")?, dir.path().join("repo"));
    let r = repo.to_str().context("path")?;
    let b = audctl(&["--targets", t, "-o", "json", "backup", "postgres", "--method", "dump", "--repo", r])
        .await
        .ok()
        .json();
    let id = id_of(&b);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(repo.join("postgres").join(&id).join("manifest.json"))?)?;
    let c = &manifest["consistency"];
    assert_eq!(c["dump"]["tables"]["public.events"], 600, "{c}");
    assert!(c["dump"]["lsn"].as_str().is_some_and(|l| l.contains('/')), "{c}");
    let all = audctl(&["--targets", t, "backup", "postgres", "--repo", r]).await;
    assert_eq!(all.code, Some(2), "a base backup from a standby must be refused: {}", all.stderr);
    assert!(
        all.stderr.contains("standby") && !all.stderr.contains("pg_dump"),
        "refused after the dump: {}",
        all.stderr
    );
    // Restoring into the standby is a refusal too (exit 2).
    let into_standby = format!("postgres://{}:{}@127.0.0.1:{port}/audit", testbed::postgres::SUPERUSER, pg.password());
    let st = audctl(&["restore", "postgres", &id, "--repo", r, "--target", &into_standby, "--yes"]).await;
    assert_eq!(st.code, Some(2), "{}", st.stderr);
    assert!(st.stderr.contains("standby"), "{}", st.stderr);

    let target = new_db(&pg, "restored").await?;
    let report = audctl(&["-o", "json", "restore", "postgres", &id, "--repo", r, "--target", &target, "--yes"])
        .await
        .ok()
        .json();
    assert!(report["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{report}");
    assert_eq!(scalar(&target, FINGERPRINT).await?, before, "the replica's dump differs from the primary's data");
    Ok(())
}

/// One damaged manifest (truncated, as a full disk or a bad copy leaves it) must not block the
/// other backups: backup, restore, list, status and prune carry on, and show it as damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_does_not_block_the_other_backups() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 20).await?;
    let good = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );
    // Newer than the good one by its name, so it would be "latest" were it trusted.
    let bad = "postgres-29991231T000000Z";
    let bad_dir = s.repo.join("postgres").join(bad);
    std::fs::create_dir_all(&bad_dir)?;
    std::fs::write(bad_dir.join("manifest.json"), r#"{"format":1,"id":"x""#)?;

    let b = audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
        .await
        .ok();
    assert!(b.stderr.contains("damaged backup") && b.stderr.contains(bad), "{}", b.stderr);
    let newest = id_of(&b.json());

    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    let ids: Vec<&str> =
        list["backups"].as_array().context("backups")?.iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(ids, vec![newest.as_str(), good.as_str()], "{list}");
    assert_eq!(list["damaged"][0]["id"], bad, "{list}");
    assert!(list["damaged"][0]["reason"].as_str().is_some_and(|r| r.contains("not a valid backup manifest")), "{list}");
    let table = audctl(&["backup", "--repo", s.r(), "list"]).await.ok();
    assert!(table.stdout.contains("DAMAGED"), "{}", table.stdout);

    let st = audctl(&["--targets", s.t(), "-o", "json", "backup", "--repo", s.r(), "status"]).await.ok().json();
    assert_eq!(st["components"][0]["newest"], newest.as_str(), "{st}");
    assert_eq!(st["components"][0]["damaged"][0], bad, "{st}");

    // Prune never deletes it (documented): it is kept, with the reason.
    let p = audctl(&["-o", "json", "backup", "--repo", s.r(), "prune", "--confirm"]).await.ok().json();
    let row = p["rows"].as_array().and_then(|r| r.iter().find(|x| x["id"] == bad).cloned()).unwrap_or_default();
    assert_eq!(row["action"], "keep", "{p}");
    assert!(bad_dir.exists());

    // `latest` is the newest good one; the damaged one by name is refused (exit 2), target untouched.
    let target = new_db(&s.pg, "target").await?;
    let r = audctl(&["restore", "postgres", bad, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    let r = audctl(&["-o", "json", "restore", "postgres", "latest", "--repo", s.r(), "--target", &target, "--yes"])
        .await
        .ok();
    assert_eq!(r.json()["backup"], newest.as_str());
    assert_eq!(scalar(&target, "SELECT count(*) FROM events").await?, "60");

    // A repository that does not exist is an input error for the verbs that read it.
    let typo = s.repo.join("typo");
    let typo = typo.to_str().context("utf-8")?;
    for args in [
        vec!["backup", "--repo", typo, "list"],
        vec!["backup", "--repo", typo, "status", "--component", "postgres"],
        vec!["backup", "--repo", typo, "prune"],
        vec!["restore", "postgres", "latest", "--repo", typo, "--target", &target, "--yes"],
    ] {
        let r = audctl(&args).await;
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("does not exist"), "{args:?}: {}", r.stderr);
    }
    Ok(())
}

/// `-o junit` is refused before any work: no backup is committed, the target is not restored into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_output_format_is_refused_before_any_work() -> anyhow::Result<()> {
    let s = setup("audit").await?;
    fill(&s.url, 5).await?;
    let id = id_of(
        &audctl(&["--targets", s.t(), "-o", "json", "backup", "postgres", "--method", "dump", "--repo", s.r()])
            .await
            .ok()
            .json(),
    );
    let r =
        audctl(&["--targets", s.t(), "-o", "junit", "backup", "postgres", "--method", "dump", "--repo", s.r()]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("-o junit is only available"), "{}", r.stderr);
    let list = audctl(&["-o", "json", "backup", "--repo", s.r(), "list"]).await.ok().json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(1), "a backup was committed: {list}");

    let target = new_db(&s.pg, "target").await?;
    let r = audctl(&["-o", "junit", "restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert_eq!(scalar(&target, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").await?, "0");
    Ok(())
}

/// The first non-loopback IPv4 address of this machine, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the interface that routes there.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("198.51.100.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// The testbed's PostgreSQL (no TLS) reached through a TCP forwarder on a non-loopback address:
/// backup and restore must refuse it (TLS verify-full by default), not fall back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_postgresql_off_loopback_is_refused() -> anyhow::Result<()> {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: this machine has no non-loopback address");
        return Ok(());
    };
    let s = setup("audit").await?;
    let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
    let addr = listener.local_addr()?;
    let upstream = format!("127.0.0.1:{}", s.pg.port());
    let forwarder = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let dir = tempfile::tempdir()?;
    let remote = |db: &str| format!("postgres://{}@{}/{db}", testbed::postgres::SUPERUSER, addr);
    let targets = Targets {
        postgres: Some(PostgresTarget {
            url: remote("audit"),
            password: Some(Secret::Inline(s.pg.password().to_owned())),
            replicas: Vec::new(),
            wal_archive: None,
        }),
        ..Default::default()
    };
    let t = targets_file(dir.path(), &targets);
    let t = t.to_str().context("utf-8")?;
    let r = audctl(&["--targets", t, "backup", "postgres", "--method", "dump", "--repo", s.r()]).await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("TLS"), "{}", r.stderr);

    // The same server, asked for plaintext explicitly in the URL, is the operator's choice.
    let mut explicit = targets.clone();
    if let Some(pg) = explicit.postgres.as_mut() {
        pg.url = format!("{}?sslmode=disable", remote("audit"));
    }
    let t2 = dir.path().join("explicit");
    std::fs::create_dir_all(&t2)?;
    let t2 = targets_file(&t2, &explicit);
    let id = id_of(
        &audctl(&[
            "--targets",
            t2.to_str().context("utf-8")?,
            "-o",
            "json",
            "backup",
            "postgres",
            "--method",
            "dump",
            "--repo",
            s.r(),
        ])
        .await
        .ok()
        .json(),
    );
    new_db(&s.pg, "target").await?;
    let target = format!("postgres://{}:{}@{}/target", testbed::postgres::SUPERUSER, s.pg.password(), addr);
    let r = audctl(&["restore", "postgres", &id, "--repo", s.r(), "--target", &target, "--yes"]).await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("TLS"), "{}", r.stderr);
    forwarder.abort();
    Ok(())
}
