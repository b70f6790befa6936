//! Shared test support: a server in-process on SQLite or on the testbed's real PostgreSQL, keys for
//! two tenants and an admin, event builders, raw SQL access for tamper tests.
#![allow(dead_code)]

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use audit_server::{ApiKeyConfig, Config, RunningServer};
use serde_json::{Value, json};
use testbed::Process;

/// Each scenario as `<name>::sqlite` and `<name>::postgres` (the caller imports `Backend`).
#[allow(unused_macros)] // fuzz.rs shares this module without using the macro
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

pub const ADMIN_KEY: &str = "admin-key-for-tests";
pub const KEY_A: &str = "key-for-tenant-a";
pub const KEY_B: &str = "key-for-tenant-b";

pub fn keys() -> Vec<ApiKeyConfig> {
    vec![
        ApiKeyConfig::plain(ADMIN_KEY, &["*"]),
        ApiKeyConfig::plain(KEY_A, &["tenant-a"]),
        ApiKeyConfig::plain(KEY_B, &["tenant-b"]),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the data lives; keeps the temp dir / PostgreSQL alive for the test.
pub struct Db {
    pub url: Option<String>,
    pub dir: tempfile::TempDir,
    pub pg: Option<testbed::postgres::Postgres>,
}

impl Db {
    pub async fn new(backend: Backend, name: &str) -> anyhow::Result<Db> {
        // With an owner file: server processes of a killed run are swept by the next one.
        let dir = testbed::scratch::instance_dir_on_disk("audit-server-test-")?;
        match backend {
            Backend::Sqlite => Ok(Db { url: None, dir, pg: None }),
            Backend::Postgres => {
                let pg = testbed::postgres::postgres().await.context("starting the testbed PostgreSQL")?;
                let url = pg.create_database(name).await?;
                Ok(Db { url: Some(url), dir, pg: Some(pg) })
            }
        }
    }

    pub fn config(&self) -> Config {
        let mut c = Config::local(self.dir.path().join("data"));
        c.listen = "127.0.0.1:0".parse().expect("loopback address");
        c.database_url = self.url.clone();
        c.api_keys = keys();
        c
    }

    /// One count from the database, asked directly (not through the server).
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        Ok(match &self.url {
            Some(url) => {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
                sqlx::query_scalar(sql).fetch_one(&mut conn).await?
            }
            None => {
                let url = format!("sqlite://{}", self.dir.path().join("data/audit.db").display());
                let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await?;
                sqlx::query_scalar(sql).fetch_one(&mut conn).await?
            }
        })
    }

    /// Outbox rows whose consumer's cursors have passed them (PostgreSQL: every event the row
    /// lists; SQLite: its one event). A consumer deletes the rows it handled in the transaction
    /// that moves its cursors, so this is 0 at every instant; rows left behind would only go with
    /// the periodic purge, 10 s later.
    pub async fn passed_outbox_rows(&self) -> anyhow::Result<i64> {
        match &self.url {
            Some(_) => {
                self.count(
                    "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 \
                     FROM unnest(o.tenants, o.sequences) AS k (tenant_id, sequence) \
                     LEFT JOIN outbox_cursors c ON c.consumer = o.consumer AND c.tenant_id = k.tenant_id \
                     WHERE k.sequence > COALESCE(c.sequence, 0))",
                )
                .await
            }
            None => {
                self.count(
                    "SELECT count(*) FROM outbox o JOIN outbox_cursors c \
                     ON c.consumer = o.consumer AND c.tenant_id = o.tenant_id WHERE o.sequence <= c.sequence",
                )
                .await
            }
        }
    }

    /// Events the outbox holds, over all consumers (PostgreSQL lists a transaction's events in
    /// one row per consumer; SQLite has one row per event), of the rows `filter` selects.
    pub async fn outbox_events(&self, filter: &str) -> anyhow::Result<i64> {
        let sql = match &self.url {
            Some(_) => format!("SELECT COALESCE(sum(cardinality(sequences)), 0)::bigint FROM outbox WHERE {filter}"),
            None => format!("SELECT count(*) FROM outbox WHERE {filter}"),
        };
        self.count(&sql).await
    }

    /// Sample [`Db::passed_outbox_rows`] every 50 ms until `stop` is set and at least 5 samples
    /// were taken while some cursor existed: (those samples, the largest count seen). Rows left
    /// behind would stay until the periodic purge, seconds later, so the samples after the last
    /// progress catch them too.
    pub fn sample_passed_rows(
        self: &std::sync::Arc<Self>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<anyhow::Result<(u32, i64)>> {
        let db = self.clone();
        tokio::spawn(async move {
            let (mut samples, mut worst) = (0u32, 0i64);
            let mut after_stop = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || samples < 5 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    after_stop += 1;
                    anyhow::ensure!(after_stop < 200, "no consumer cursor in the database to sample against");
                }
                if db.count("SELECT count(*) FROM outbox_cursors").await? > 0 {
                    samples += 1;
                    worst = worst.max(db.passed_outbox_rows().await?);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok((samples, worst))
        })
    }

    /// Run SQL statements directly on the database (tamper tests).
    pub async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        match &self.url {
            Some(url) => {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await?;
            }
            None => {
                let path = self.dir.path().join("data/audit.db");
                let url = format!("sqlite://{}", path.display());
                let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await?;
            }
        }
        Ok(())
    }
}

/// A client bound to one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: impl Into<String>) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("reqwest client");
        Api { base: base.into(), http }
    }

    pub fn of(server: &RunningServer) -> Api {
        Api::new(server.base_url())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self.http.post(self.url(path)).header("x-api-key", key).json(body).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, key: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self.http.get(self.url(path)).header("x-api-key", key).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// A metric's value from /actuator/prometheus (an unlabelled line `name value`).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.http.get(self.url("/actuator/prometheus")).send().await?.text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("{name} missing from the scrape"))
    }

    /// Poll [`Api::metric`] every 200 ms until it reads `want`; fails after `timeout` with the
    /// last value.
    pub async fn metric_reaches(&self, name: &str, want: f64, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let value = self.metric(name).await?;
            if value == want {
                return Ok(());
            }
            ensure!(start.elapsed() < timeout, "{name} stays at {value}, expected {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn verify(&self, tenant: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(ADMIN_KEY, &format!("/api/v1/integrity/verify?tenantId={tenant}")).await?;
        anyhow::ensure!(status == 200, "verify answered {status}: {body}");
        Ok(body)
    }

    /// Every event of a tenant in chain order, following cursors.
    pub async fn all_events(&self, tenant: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/events?tenantId={tenant}&limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get(ADMIN_KEY, &path).await?;
            anyhow::ensure!(status == 200, "list answered {status}: {page}");
            out.extend(page["events"].as_array().cloned().unwrap_or_default());
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(out),
            }
        }
    }
}

pub fn event(tenant: &str, actor: &str, action: &str) -> Value {
    json!({
        "actor": {"id": actor, "type": "USER", "name": "Test User", "ip": "10.0.0.1"},
        "action": {"type": action, "description": "test", "category": "SECURITY"},
        "resource": {"id": format!("doc-{actor}"), "type": "DOCUMENT", "before": {"v": 1}, "after": {"v": 2}},
        "metadata": {"source": "tests", "tenantId": tenant, "correlationId": "c-1", "tags": {"env": "test"}}
    })
}

/// Wait until `GET url` answers 200 (a freshly spawned process).
pub async fn wait_ready(api: &Api, timeout: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = api.http.get(api.url("/actuator/health/readiness")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < timeout, "{} not ready after {timeout:?}", api.base);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start the audit-server binary on `db`; returns the process and a client. The port from
/// free_port() can be taken before the server binds it: then again on another one.
pub async fn start_process(db: &Db, name: &str) -> Result<(Process, Api)> {
    start_process_with(db, name, &[]).await
}

/// [`start_process`] with more environment variables (e.g. `AUDIT_KAFKA_*`).
pub async fn start_process_with(db: &Db, name: &str, env: &[(String, String)]) -> Result<(Process, Api)> {
    let mut attempt = 1;
    loop {
        match try_start_process(db, name, env).await {
            Err(e) if attempt < 3 && testbed::process::is_port_clash(&e) => attempt += 1,
            other => return other,
        }
    }
}

async fn try_start_process(db: &Db, name: &str, env: &[(String, String)]) -> Result<(Process, Api)> {
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
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
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
pub fn ingest(
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
pub async fn wait_for_acks(acked: &Mutex<Vec<String>>, count: usize, timeout: Duration) -> Result<()> {
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
