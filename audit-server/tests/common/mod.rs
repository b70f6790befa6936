//! Shared test support: a server in-process on SQLite or on the testbed's real PostgreSQL, keys for
//! two tenants and an admin, event builders, raw SQL access for tamper tests.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context;
use audit_server::{ApiKeyConfig, Config, RunningServer};
use serde_json::{Value, json};

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
