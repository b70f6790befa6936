//! The real binary under concurrency and crashes: several server processes on one database keep one
//! unbroken chain per tenant; `kill -9` during ingest loses no event that got a 201; so does a
//! PostgreSQL crash.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event, wait_ready};
use serde_json::json;
use testbed::Process;

on_both!(three_processes_one_chain, kill_9_during_ingest);

/// Start the audit-server binary on `db`; returns the process and a client.
async fn start_process(db: &Db, name: &str) -> Result<(Process, Api)> {
    let port = testbed::free_port()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-server"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AUDIT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AUDIT_DATA_DIR", db.dir.path().join("data"))
        .env("AUDIT_API_KEYS", format!("*={ADMIN_KEY}"))
        .env("AUDIT_LOG", "warn");
    if let Some(url) = &db.url {
        cmd.env("DATABASE_URL", url);
    }
    let mut process = Process::spawn(name, cmd, db.dir.path().join(format!("{name}.log")))?;
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    let probe = api.clone();
    testbed::wait_until(&mut process, Duration::from_secs(60), move || {
        let probe = probe.clone();
        async move { Ok(wait_ready(&probe, Duration::from_millis(1)).await.is_ok()) }
    })
    .await?;
    Ok((process, api))
}

/// Clients that post single events (and every 10th a batch of 5) until `stop`, recording the ids
/// of every event that got a 201.
fn ingest(
    api: Api,
    tenant: &'static str,
    client: usize,
    stop: Arc<Mutex<bool>>,
    acked: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut errors = 0;
        for i in 0.. {
            if *stop.lock().unwrap_or_else(|p| p.into_inner()) {
                break;
            }
            let actor = format!("c{client}-{i}");
            let result = if i % 10 == 9 {
                let batch = json!({"events": (0..5).map(|j| event(tenant, &format!("{actor}-{j}"), "BATCH")).collect::<Vec<_>>()});
                api.post(ADMIN_KEY, "/api/v1/events/batch", &batch).await.map(|(s, b)| {
                    let ids = b["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["id"].as_str().map(str::to_owned))
                        .collect::<Vec<_>>();
                    (s, ids)
                })
            } else {
                api.post(ADMIN_KEY, "/api/v1/events", &event(tenant, &actor, "SINGLE"))
                    .await
                    .map(|(s, b)| (s, b["id"].as_str().map(str::to_owned).into_iter().collect()))
            };
            match result {
                Ok((201, ids)) => acked.lock().unwrap_or_else(|p| p.into_inner()).extend(ids),
                _ => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        errors
    })
}

async fn three_processes_one_chain(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "three_processes").await?;
    let mut servers = Vec::new();
    for i in 0..3 {
        servers.push(start_process(&db, &format!("server-{i}")).await?);
    }
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for (s, (_, api)) in servers.iter().enumerate() {
        for c in 0..6 {
            clients.push(ingest(api.clone(), "shared", s * 10 + c, stop.clone(), acked.clone()));
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    let mut errors = 0;
    for c in clients {
        errors += c.await?;
    }
    ensure!(errors == 0, "{errors} requests failed while three servers appended concurrently");
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(acked.len() > 100, "too little traffic to prove anything: {}", acked.len());

    let api = &servers[0].1;
    let report = api.verify("shared").await?;
    ensure!(report["verified"] == true, "the chain forked or broke: {report}");
    ensure!(report["checked"] == acked.len() as u64, "{} acknowledged, verify checked {report}", acked.len());
    let stored: HashSet<String> =
        api.all_events("shared").await?.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect();
    ensure!(acked.iter().all(|id| stored.contains(id)), "an acknowledged event is missing");
    eprintln!("{backend:?}: 3 processes, {} events, one chain", acked.len());
    for (mut p, _) in servers {
        p.stop();
    }
    Ok(())
}

async fn kill_9_during_ingest(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "kill_9").await?;
    let (mut server, api) = start_process(&db, "victim").await?;
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..16).map(|c| ingest(api.clone(), "crash", c, stop.clone(), acked.clone())).collect();
    // Kill once ingest is well under way, while requests are in flight.
    let start = Instant::now();
    while acked.lock().unwrap_or_else(|p| p.into_inner()).len() < 300 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill_hard();
    tokio::time::sleep(Duration::from_millis(300)).await;
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    for c in clients {
        c.await?;
    }
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(acked.len() >= 300, "ingest too slow before the kill: {}", acked.len());

    let (mut restarted, api) = start_process(&db, "restarted").await?;
    let stored: HashSet<String> =
        api.all_events("crash").await?.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged events lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let report = api.verify("crash").await?;
    ensure!(report["verified"] == true, "chain broken after kill -9: {report}");
    // Appends continue on the same chain.
    let (s, r) = api.post(ADMIN_KEY, "/api/v1/events", &event("crash", "after", "RESTART")).await?;
    ensure!(s == 201, "{r}");
    ensure!(api.verify("crash").await?["verified"] == true);
    eprintln!("{backend:?}: killed with {} acknowledged events, {} stored, none lost", acked.len(), stored.len());
    restarted.stop();
    Ok(())
}

/// PostgreSQL itself crashes during ingest: requests fail with 503 meanwhile, every 201 survives,
/// the server recovers without a restart and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_during_ingest() -> Result<()> {
    let mut db = Db::new(Backend::Postgres, "pg_crash").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..16).map(|c| ingest(api.clone(), "pgcrash", c, stop.clone(), acked.clone())).collect();
    let start = Instant::now();
    while acked.lock().unwrap_or_else(|p| p.into_inner()).len() < 300 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pg = db.pg.as_mut().ok_or_else(|| anyhow::anyhow!("no PostgreSQL"))?;
    pg.kill_primary_hard();
    let before_restart = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = api.http.get(api.url("/actuator/health/readiness")).send().await?;
    ensure!(r.status() == 503, "readiness with the database down: {}", r.status());
    pg.restart_primary().await?;
    // Ingest resumes on the same pool.
    let resumed = Instant::now();
    while acked.lock().unwrap_or_else(|p| p.into_inner()).len() < before_restart + 100 {
        ensure!(resumed.elapsed() < Duration::from_secs(60), "ingest did not resume after PostgreSQL restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    for c in clients {
        c.await?;
    }
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let stored: HashSet<String> =
        api.all_events("pgcrash").await?.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect();
    let lost = acked.iter().filter(|id| !stored.contains(*id)).count();
    ensure!(lost == 0, "{lost} of {} acknowledged events lost in the PostgreSQL crash", acked.len());
    let report = api.verify("pgcrash").await?;
    ensure!(report["verified"] == true, "{report}");
    server.shutdown().await
}
