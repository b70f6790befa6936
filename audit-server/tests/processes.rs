//! The real binary under concurrency and crashes: several server processes on one database keep one
//! unbroken chain per tenant; `kill -9` during ingest loses no event that got a 201; so does a
//! PostgreSQL crash.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event, wait_ready};
use serde_json::json;
use testbed::Process;

on_both!(three_processes_one_chain, kill_9_during_ingest, tenants_across_processes_without_deadlock);

/// Start the audit-server binary on `db`; returns the process and a client. The port from
/// free_port() can be taken before the server binds it: then again on another one.
async fn start_process(db: &Db, name: &str) -> Result<(Process, Api)> {
    let mut attempt = 1;
    loop {
        match try_start_process(db, name).await {
            Err(e) if attempt < 3 && testbed::process::is_port_clash(&e) => attempt += 1,
            other => return other,
        }
    }
}

async fn try_start_process(db: &Db, name: &str) -> Result<(Process, Api)> {
    let port = testbed::free_port()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audit-server"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AUDIT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AUDIT_DATA_DIR", db.dir.path().join("data"))
        .env("AUDIT_API_KEYS", format!("*={ADMIN_KEY}"))
        .env("AUDIT_LOG", "warn")
        // Inside the test's instance dir, which identifies a server left behind by a killed run.
        .current_dir(db.dir.path());
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
    // A killed test run's server would be found and swept by the next start.
    testbed::scratch::check_swept_if_abandoned(&[process.pid()])?;
    Ok((process, api))
}

/// Clients that post single events (and every 10th a batch of 5) until `stop`, recording the ids
/// of every event that got a 201.
fn ingest(
    api: Api,
    tenants: &'static [&'static str],
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
            // Each client walks the tenants from its own starting point.
            let tenant = tenants[(client + i) % tenants.len()];
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

/// Wait until at least `count` events are acknowledged; an error after `timeout` (a deadline for a
/// stalled ingest, not a throughput target: a loaded machine may take most of it).
async fn wait_for_acks(acked: &Mutex<Vec<String>>, count: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let n = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
        if n >= count {
            return Ok(());
        }
        ensure!(start.elapsed() < timeout, "only {n} of {count} events acknowledged after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
            clients.push(ingest(api.clone(), &["shared"], s * 10 + c, stop.clone(), acked.clone()));
        }
    }
    // Enough traffic to interleave the three processes many times, however slow the machine.
    let reached = wait_for_acks(&acked, 300, Duration::from_secs(300)).await;
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    let mut errors = 0;
    for c in clients {
        errors += c.await?;
    }
    reached?;
    ensure!(errors == 0, "{errors} requests failed while three servers appended concurrently");
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();

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

/// Two processes whose group-commit transactions each hold several tenants' chain heads: the heads
/// are locked in tenant order, so the processes cannot deadlock (PostgreSQL would abort one
/// transaction, failing its requests with 503), and every chain stays whole.
async fn tenants_across_processes_without_deadlock(backend: Backend) -> Result<()> {
    const TENANTS: &[&str] = &["t-1", "t-2", "t-3", "t-4", "t-5"];
    let db = Db::new(backend, "lock_order").await?;
    let mut servers = Vec::new();
    for i in 0..2 {
        servers.push(start_process(&db, &format!("server-{i}")).await?);
    }
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for (s, (_, api)) in servers.iter().enumerate() {
        for c in 0..10 {
            clients.push(ingest(api.clone(), TENANTS, s * 10 + c, stop.clone(), acked.clone()));
        }
    }
    let reached = wait_for_acks(&acked, 500, Duration::from_secs(300)).await;
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    let mut errors = 0;
    for c in clients {
        errors += c.await?;
    }
    reached?;
    ensure!(errors == 0, "{errors} requests failed while two servers appended to {} tenants", TENANTS.len());
    let acked: HashSet<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
    let api = &servers[0].1;
    let mut stored = HashSet::new();
    for tenant in TENANTS {
        let report = api.verify(tenant).await?;
        ensure!(report["verified"] == true, "{tenant}: {report}");
        stored.extend(api.all_events(tenant).await?.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)));
    }
    ensure!(acked.is_subset(&stored), "an acknowledged event is missing");
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
    let clients: Vec<_> = (0..16).map(|c| ingest(api.clone(), &["crash"], c, stop.clone(), acked.clone())).collect();
    // Kill once ingest is well under way, while requests are in flight; the requests in flight
    // then fail and each client stops after its current one.
    let reached = wait_for_acks(&acked, 300, Duration::from_secs(300)).await;
    server.kill_hard();
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    for c in clients {
        c.await?;
    }
    reached?;
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();

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
    let clients: Vec<_> = (0..16).map(|c| ingest(api.clone(), &["pgcrash"], c, stop.clone(), acked.clone())).collect();
    let reached = wait_for_acks(&acked, 300, Duration::from_secs(300)).await;
    let pg = db.pg.as_mut().ok_or_else(|| anyhow::anyhow!("no PostgreSQL"))?;
    pg.kill_primary_hard();
    let before_restart = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    // Readiness turns 503 once the server notices the database is gone.
    let down = Instant::now();
    loop {
        let r = api.http.get(api.url("/actuator/health/readiness")).send().await?;
        if r.status() == 503 {
            break;
        }
        ensure!(down.elapsed() < Duration::from_secs(60), "readiness still {} 60 s after the crash", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg.restart_primary().await?;
    // Ingest resumes on the same pool.
    let resumed = wait_for_acks(&acked, before_restart + 100, Duration::from_secs(300)).await;
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    for c in clients {
        c.await?;
    }
    reached?;
    resumed.context("ingest did not resume after PostgreSQL restarted")?;
    let acked: Vec<String> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let stored: HashSet<String> =
        api.all_events("pgcrash").await?.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect();
    let lost = acked.iter().filter(|id| !stored.contains(*id)).count();
    ensure!(lost == 0, "{lost} of {} acknowledged events lost in the PostgreSQL crash", acked.len());
    let report = api.verify("pgcrash").await?;
    ensure!(report["verified"] == true, "{report}");
    server.shutdown().await
}
