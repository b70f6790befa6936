//! `audit-server`: configuration from the environment (see README), JSON logs, SIGTERM drain.

// mimalloc: the server allocates per request (JSON trees, canonical bodies); glibc malloc/free
// were 25-40 % of the process under load (docs/profile.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use audit_server::{Config, spawn};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    audit_server::logging::init(|name| std::env::var(name).ok())?;
    let config = Config::from_env()?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let server = spawn(config).await?;
    if let Some(path) = &server.local_key_file {
        // Local runs only (SQLite, no key configured): say how to authenticate, without printing the key.
        eprintln!(
            "\naudit-server: no API key configured, generated a local key for all tenants in {path}\n  \
             export AUDIT_API_KEY=$(cat {path})\n  \
             curl -H \"X-API-Key: $AUDIT_API_KEY\" '{url}/api/v1/events?tenantId=demo'\n  \
             OpenAPI document: {url}/api/v1/openapi.json\n",
            path = path.display(),
            url = server.base_url(),
        );
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
