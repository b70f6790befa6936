//! A 503 means "not stored": the outcome of every write is unambiguous under a slow or locked
//! database, the append queue is bounded, one locked tenant does not stall the others, and
//! readiness says when appends cannot commit. Locks are held by a real second session.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, event};
use serde_json::Value;
use sqlx::Connection;

on_both!(lock_timeout_means_not_stored, abandoned_job_is_dropped_begun_job_waits, full_queue_sheds_load);

/// A second session holding the lock a tenant's append needs: its chain head row on PostgreSQL,
/// the database write lock on SQLite. Released by `release` (or on drop, by closing).
enum Holder {
    Pg(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

async fn hold_lock(db: &Db, tenant: &str) -> Result<Holder> {
    match &db.url {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT 1 FROM chain_heads WHERE tenant_id = '{tenant}' FOR UPDATE"
            )))
            .execute(&mut c)
            .await?;
            Ok(Holder::Pg(c))
        }
        None => {
            let path = db.dir.path().join("data/audit.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut c).await?;
            Ok(Holder::Sqlite(c))
        }
    }
}

impl Holder {
    async fn release(self) -> Result<()> {
        match self {
            Holder::Pg(mut c) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await?;
                c.close().await?;
            }
            Holder::Sqlite(mut c) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await?;
                c.close().await?;
            }
        }
        Ok(())
    }
}

/// POST one event with the admin key: (status, Retry-After present, body).
async fn post(api: &Api, tenant: &str, actor: &str) -> Result<(u16, bool, Value)> {
    let r = api
        .http
        .post(api.url("/api/v1/events"))
        .header("x-api-key", ADMIN_KEY)
        .json(&event(tenant, actor, "WRITE"))
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    Ok((status, retry, r.json().await.unwrap_or(Value::Null)))
}

/// A gauge of /actuator/prometheus.
async fn gauge(api: &Api, name: &str) -> Result<f64> {
    let text = api.http.get(api.url("/actuator/prometheus")).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("{name} missing from the metrics"))
}

/// Wait (generously) until a condition on the server holds.
async fn wait_for<F, Fut>(what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    while !cond().await? {
        ensure!(start.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The actor ids stored for a tenant, in chain order.
async fn actors(api: &Api, tenant: &str) -> Result<Vec<String>> {
    Ok(api.all_events(tenant).await?.iter().map(|e| e["actor"]["id"].as_str().unwrap_or_default().to_owned()).collect())
}

/// The append waits on a held lock past its lock timeout: 503, and once the lock is released the
/// event is not committed after all (the next append takes its place in the chain).
async fn lock_timeout_means_not_stored(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "lock_timeout").await?;
    let mut config = db.config();
    config.append_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(120);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let (s, _, b) = post(&api, "t", "first").await?;
    ensure!(s == 201, "{b}");

    let holder = hold_lock(&db, "t").await?;
    let (s, retry, b) = post(&api, "t", "refused").await?;
    ensure!(s == 503 && retry, "an append past its lock timeout must be a 503 with Retry-After: {s} {b}");
    holder.release().await?;

    let (s, _, b) = post(&api, "t", "after").await?;
    ensure!(s == 201, "{b}");
    ensure!(b["sequence"] == 2, "the refused event took a place in the chain: {b}");
    assert_eq!(actors(&api, "t").await?, ["first", "after"], "a 503 event was stored");
    ensure!(api.verify("t").await?["verified"] == true);
    server.shutdown().await
}

/// Request timeout shorter than the lock: the request whose transaction began waits and reports
/// the commit (201, not a 503 that later commits); the one still queued behind it is dropped
/// (503) and never written.
async fn abandoned_job_is_dropped_begun_job_waits(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "abandoned").await?;
    let mut config = db.config();
    config.append_timeout = Duration::from_secs(300);
    config.request_timeout = Duration::from_secs(2);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let (s, _, b) = post(&api, "t", "first").await?;
    ensure!(s == 201, "{b}");

    let holder = hold_lock(&db, "t").await?;
    let begun = tokio::spawn({
        let api = api.clone();
        async move { post(&api, "t", "begun").await }
    });
    // Its transaction has begun (the tenant is inside one) and waits for the lock.
    wait_for("the first request's transaction began", || async {
        Ok(gauge(&api, "audit_append_tenants_in_flight").await? == 1.0)
    })
    .await?;
    let (s, retry, b) = post(&api, "t", "queued").await?;
    ensure!(s == 503 && retry && b["error"] == "timeout", "the queued request: {s} {b}");
    ensure!(gauge(&api, "audit_append_queue_events").await? == 0.0, "the dropped job is still queued");
    ensure!(!begun.is_finished(), "the begun request answered before its transaction ended");
    holder.release().await?;
    let (s, _, b) = begun.await??;
    ensure!(s == 201, "a request whose transaction began must report its commit: {s} {b}");

    let (s, _, b) = post(&api, "t", "after").await?;
    ensure!(s == 201 && b["sequence"] == 3, "{b}");
    assert_eq!(actors(&api, "t").await?, ["first", "begun", "after"], "the timed-out request was stored");
    ensure!(api.verify("t").await?["verified"] == true);
    server.shutdown().await
}

/// A bounded queue: beyond it, appends are refused at once with 503 + Retry-After and not stored.
async fn full_queue_sheds_load(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "shed").await?;
    let mut config = db.config();
    config.append_timeout = Duration::from_secs(300);
    config.append_queue_max_events = 1;
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let (s, _, b) = post(&api, "t", "first").await?;
    ensure!(s == 201, "{b}");

    let holder = hold_lock(&db, "t").await?;
    let spawn_post = |actor: &'static str| {
        let api = api.clone();
        tokio::spawn(async move { post(&api, "t", actor).await })
    };
    let begun = spawn_post("begun");
    wait_for("the first request's transaction began", || async {
        Ok(gauge(&api, "audit_append_tenants_in_flight").await? == 1.0)
    })
    .await?;
    let queued = spawn_post("queued");
    wait_for("one event queued", || async { Ok(gauge(&api, "audit_append_queue_events").await? == 1.0) }).await?;
    let (s, retry, b) = post(&api, "t", "shed").await?;
    ensure!(s == 503 && retry && b["error"] == "overloaded", "beyond the queue bound: {s} {b}");
    holder.release().await?;
    for (task, name) in [(begun, "begun"), (queued, "queued")] {
        let (s, _, b) = task.await??;
        ensure!(s == 201, "{name}: {s} {b}");
    }
    assert_eq!(actors(&api, "t").await?, ["first", "begun", "queued"]);
    server.shutdown().await
}

/// PostgreSQL: appends of one tenant wait on its locked chain head while another tenant's appends
/// commit, and readiness stays true (other appends can commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_tenant_does_not_stall_others() -> Result<()> {
    let db = Db::new(Backend::Postgres, "locked_tenant").await?;
    let mut config = db.config();
    config.append_timeout = Duration::from_secs(300);
    config.request_timeout = Duration::from_secs(300);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    for t in ["a", "b"] {
        let (s, _, b) = post(&api, t, "first").await?;
        ensure!(s == 201, "{b}");
    }
    let holder = hold_lock(&db, "a").await?;
    let stuck = tokio::spawn({
        let api = api.clone();
        async move { post(&api, "a", "stuck").await }
    });
    let pg = db.pg.as_ref().context("PostgreSQL")?;
    wait_for("the append of tenant a waits for its lock", || async {
        let waiting = pg
            .sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'audit-server' AND wait_event_type = 'Lock' AND datname = 'locked_tenant'")
            .await?;
        Ok(waiting.trim() == "1")
    })
    .await?;
    for i in 0..5 {
        let (s, _, b) = tokio::time::timeout(Duration::from_secs(60), post(&api, "b", &format!("b{i}")))
            .await
            .context("tenant b stalled behind tenant a's lock")??;
        ensure!(s == 201, "tenant b: {s} {b}");
    }
    let r = api.http.get(api.url("/actuator/health/readiness")).send().await?;
    ensure!(r.status() == 200, "readiness while one tenant is locked: {}", r.status());
    ensure!(!stuck.is_finished(), "tenant a's append finished while its lock was held");
    holder.release().await?;
    let (s, _, b) = stuck.await??;
    ensure!(s == 201, "{b}");
    assert_eq!(actors(&api, "b").await?.len(), 6);
    ensure!(api.verify("a").await?["verified"] == true && api.verify("b").await?["verified"] == true);
    server.shutdown().await
}

/// PostgreSQL, one append lane kept busy by a steady stream of appends: readiness stays true (the
/// appends commit). It must not wait for an append connection behind the queue: a pod serving
/// well under load would otherwise be taken out of its Service (seen in CI with a Kafka broker
/// down and three test binaries at once), and while it waited it took the lane's connection slot,
/// so appends failed with 503 (seen here before the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_true_while_every_lane_is_busy() -> Result<()> {
    let db = Db::new(Backend::Postgres, "busy_lanes").await?;
    let mut config = db.config();
    config.append_lanes = 1;
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (api, stop) = (api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut stored = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let (s, _, b) = post(&api, &format!("t{}", c % 4), &format!("c{c}-{stored}")).await?;
                    ensure!(s == 201, "append under load: {s} {b}");
                    stored += 1;
                }
                anyhow::Ok(stored)
            })
        })
        .collect();
    wait_for("appends flow", || async { Ok(gauge(&api, "audit_events_ingested_total").await.unwrap_or(0.0) >= 200.0) })
        .await?;
    let mut refused = Vec::new();
    for _ in 0..20 {
        let r = api.http.get(api.url("/actuator/health/readiness")).send().await?;
        if r.status() != 200 {
            refused.push(r.status().as_u16());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut stored = 0;
    for c in clients {
        stored += c.await??;
    }
    ensure!(refused.is_empty(), "readiness refused {} of 20 times under load: {refused:?}", refused.len());
    eprintln!("{stored} events stored during 20 readiness checks, all 200");
    server.shutdown().await
}

/// PostgreSQL turns read-only (as a replica or a read-only failover target would be): readiness
/// turns false without echoing the database's error, appends answer 503; then back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_false_when_appends_cannot_commit() -> Result<()> {
    let db = Db::new(Backend::Postgres, "read_only").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let pg = db.pg.as_ref().context("PostgreSQL")?;
    let set = |on: bool| {
        let sql = format!(
            "ALTER DATABASE read_only SET default_transaction_read_only = {};
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'audit-server' AND datname = 'read_only'",
            if on { "on" } else { "off" }
        );
        async move { pg.sql(&sql).await }
    };
    let readiness = || async {
        let r = api.http.get(api.url("/actuator/health/readiness")).send().await?;
        anyhow::Ok((r.status().as_u16(), r.text().await?))
    };
    set(true).await?;
    wait_for("readiness turns false", || async { Ok(readiness().await?.0 == 503) }).await?;
    let (_, text) = readiness().await?;
    ensure!(!text.to_lowercase().contains("read-only") && !text.contains("error"), "health echoes details: {text}");
    let (s, retry, b) = post(&api, "t", "refused").await?;
    ensure!(s == 503 && retry, "append on a read-only database: {s} {b}");
    set(false).await?;
    wait_for("readiness turns true", || async { Ok(readiness().await?.0 == 200) }).await?;
    let (s, _, b) = post(&api, "t", "accepted").await?;
    ensure!(s == 201 && b["sequence"] == 1, "{s} {b}");
    server.shutdown().await
}
