//! The real binary under concurrency and crashes: several server processes on one database keep one
//! unbroken chain per tenant; `kill -9` during ingest loses no event that got a 201; so does a
//! PostgreSQL crash.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event, ingest, start_process, start_process_with, wait_for_acks};

on_both!(three_processes_one_chain, kill_9_during_ingest, tenants_across_processes_without_deadlock);

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
/// transaction, failing its requests with 503), and every chain stays whole. Made to catch a
/// wrong lock order (checked: `ORDER BY random()` in `lock_heads` fails it with 503s, which the
/// earlier version of this test did not notice): half the clients send an Idempotency-Key with
/// every request, so their jobs take the shared transaction where `lock_heads` decides the order
/// (the others mostly take the one statement on remembered heads); one lane per process, so a
/// transaction holds several heads; and on PostgreSQL another session keeps taking a head in the
/// middle, so both processes stop half-way through their heads at the same time.
async fn tenants_across_processes_without_deadlock(backend: Backend) -> Result<()> {
    const TENANTS: &[&str] = &["t-1", "t-2", "t-3", "t-4", "t-5"];
    let db = Db::new(backend, "lock_order").await?;
    let mut servers = Vec::new();
    // One lane per process: each transaction takes every pending tenant (up to all five), so the
    // two processes' transactions overlap on several heads at once.
    let one_lane = [("AUDIT_APPEND_LANES".to_owned(), "1".to_owned())];
    for i in 0..2 {
        servers.push(start_process_with(&db, &format!("server-{i}"), &one_lane).await?);
    }
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for (s, (_, api)) in servers.iter().enumerate() {
        for c in 0..10 {
            clients.push(ingest(api.clone(), TENANTS, s * 10 + c, stop.clone(), acked.clone()));
            clients.push(ingest_keyed(api.clone(), TENANTS, s * 10 + c, stop.clone(), acked.clone()));
        }
    }
    // PostgreSQL: another session keeps taking the middle tenant's head for a while, so both
    // processes' lock statements stop half-way through their heads and resume together: with a
    // wrong lock order their transactions then wait on each other in a cycle.
    let holder = db.url.clone().map(|url| {
        let stop = stop.clone();
        tokio::spawn(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            while !*stop.lock().unwrap_or_else(|p| p.into_inner()) {
                let mut tx = conn.begin().await?;
                sqlx::query("SELECT 1 FROM chain_heads WHERE tenant_id = 't-3' FOR UPDATE").execute(&mut *tx).await?;
                tokio::time::sleep(Duration::from_millis(50)).await; // how long the head stays taken
                tx.commit().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    });
    let reached = wait_for_acks(&acked, 1000, Duration::from_secs(300)).await;
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    if let Some(h) = holder {
        h.await??;
    }
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

/// A client posting single events, each with an Idempotency-Key of its own, until `stop`; records
/// the ids that got a 201 and counts the other answers.
fn ingest_keyed(
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
            let actor = format!("k{client}-{i}");
            let tenant = tenants[(client + i) % tenants.len()];
            let sent = api
                .http
                .post(api.url("/api/v1/events"))
                .header("x-api-key", ADMIN_KEY)
                .header("idempotency-key", format!("lock-order-{actor}"))
                .json(&event(tenant, &actor, "KEYED"))
                .send()
                .await;
            let id = match sent {
                Ok(r) if r.status().as_u16() == 201 => {
                    r.json::<serde_json::Value>().await.ok().and_then(|b| b["id"].as_str().map(str::to_owned))
                }
                _ => None,
            };
            match id {
                Some(id) => acked.lock().unwrap_or_else(|p| p.into_inner()).push(id),
                None => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        errors
    })
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

/// The guide's JSON logs with `customFields {"app":"audit-trail","env":"production"}`: every line
/// the real binary writes is a JSON object (parsed by serde_json, not by our formatter) carrying
/// the fixed fields of `AUDIT_LOG_FIELDS`; a value that is not an object of strings stops the
/// server before it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_fixed_fields() -> Result<()> {
    let db = Db::new(Backend::Sqlite, "log_fields").await?;
    let env = [
        ("AUDIT_LOG".to_owned(), "info".to_owned()),
        ("AUDIT_LOG_FIELDS".to_owned(), r#"{"app":"audit-trail","env":"production"}"#.to_owned()),
    ];
    let (mut process, api) = start_process_with(&db, "fields", &env).await?;
    let (status, _) = api.post(ADMIN_KEY, "/api/v1/events", &event("logs", "a1", "LOGIN")).await?;
    ensure!(status == 201, "post: {status}");
    process.stop();
    let text = std::fs::read_to_string(process.log_path())?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() >= 2, "expected the start-up and shutdown lines, got:\n{text}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(v["app"] == "audit-trail" && v["env"] == "production", "fixed fields missing: {line}");
        ensure!(v["level"].is_string() && v["timestamp"].is_string(), "formatter fields missing: {line}");
    }

    let bad = [("AUDIT_LOG_FIELDS".to_owned(), r#"{"env":3}"#.to_owned())];
    let err =
        start_process_with(&db, "bad-fields", &bad).await.err().context("started with AUDIT_LOG_FIELDS {\"env\":3}")?;
    ensure!(format!("{err:#}").contains("\"env\" is 3, expected a string"), "{err:#}");
    Ok(())
}
