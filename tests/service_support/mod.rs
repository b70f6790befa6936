//! Shared by tests/smoke.rs and tests/load.rs: the real audit server in-process (SQLite or the
//! testbed's PostgreSQL), the audctl binary run as an operator would, raw HTTP for independent checks.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use audit_server::{ApiKeyConfig, Config, RunningServer};

pub const KEY: &str = "smoke-and-load-test-key-0123456789";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A started server and what keeps its data alive.
pub struct Server {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub pg: Option<testbed::postgres::Postgres>,
}

impl Server {
    pub async fn start(backend: Backend, db: &str) -> anyhow::Result<Server> {
        Self::start_with(backend, db, |_| {}).await
    }

    /// Start with `tweak` applied to the configuration last (e.g. a short append timeout).
    pub async fn start_with(backend: Backend, db: &str, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new().prefix("audctl-service-test-").tempdir()?;
        let mut config = Config::local(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse()?;
        config.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
        let mut pg = None;
        if backend == Backend::Postgres {
            let p = testbed::postgres::postgres().await.context("starting the testbed PostgreSQL")?;
            config.database_url = Some(p.create_database(db).await?);
            // Fail fast when the database goes away (the 5xx test).
            config.request_timeout = Duration::from_secs(5);
            pg = Some(p);
        }
        tweak(&mut config);
        let server = audit_server::spawn(config).await.context("starting the audit server")?;
        Ok(Server { server, dir, pg })
    }

    pub fn url(&self) -> String {
        self.server.base_url()
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }
}

/// Run the audctl binary with `args`; `key` goes to AUDIT_API_KEY as an operator would export it.
pub async fn audctl(args: &[&str], key: Option<&str>) -> anyhow::Result<Output> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"));
    cmd.args(args)
        .env_remove("AUDIT_API_KEY")
        .env_remove("AUDCTL_TARGETS")
        .env_remove("KUBECONFIG")
        .env_remove("NO_COLOR");
    if let Some(k) = key {
        cmd.env("AUDIT_API_KEY", k);
    }
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .context("audctl did not finish within 300 s")?
        .context("running audctl")?;
    Ok(out)
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn json(out: &Output) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("stdout is not JSON:\n{}\nstderr:\n{}", stdout(out), stderr(out)))
}

/// `GET path` over a raw HTTP/1.0 connection (independent of audctl's clients): (status, body).
pub async fn raw_get(base: &str, path: &str, key: Option<&str>) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await?;
    let auth = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes()).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The value of a counter without labels in the server's Prometheus scrape.
pub async fn counter(base: &str, name: &str) -> anyhow::Result<f64> {
    let (_, text) = raw_get(base, "/actuator/prometheus", None).await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0))
}

pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
