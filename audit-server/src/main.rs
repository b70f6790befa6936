//! `audit-server`: configuration from the environment (see README), JSON logs, SIGTERM drain.

// mimalloc: the server allocates per request (JSON trees, canonical bodies); glibc malloc/free
// were 25-40 % of the process under load (docs/profile.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use audit_server::{Config, spawn};
use tokio::signal::unix::{SignalKind, signal};

/// Printed for `--help`: the server is configured by environment variables only.
const USAGE: &str = "\
audit-server: the Audit Trail service (append-only, hash-chained audit event API).

Usage: audit-server [--help | --version]

Takes no arguments: it is configured by environment variables (full list: audit-server/README.md,
Configuration), among them:
  AUDIT_LISTEN_ADDR     listen address (default 0.0.0.0:8080)
  DATABASE_URL          PostgreSQL; unset: SQLite in AUDIT_DATA_DIR
  AUDIT_DATA_DIR        data directory of the SQLite mode (default ~/.local/share/audit-server)
  AUDIT_API_KEYS        API keys and the tenants they may use
  AUDIT_LOG             log filter (default info); AUDIT_LOG_FORMAT=text for plain text logs
  AUDIT_LOG_FIELDS      fixed fields on every JSON log line (a JSON object of strings: app, env, ...)
SIGTERM or SIGINT drains and stops it.
";

/// What the command line asks for. Anything but the two flags is refused before anything starts
/// (a mistyped flag must not start a server on 0.0.0.0:8080 and create a data directory).
fn command_line() -> Result<(), std::process::ExitCode> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        None => Ok(()),
        Some("-h" | "--help") if args.len() == 1 => {
            print!("{USAGE}");
            Err(std::process::ExitCode::SUCCESS)
        }
        Some("-V" | "--version") if args.len() == 1 => {
            println!("audit-server {}", env!("CARGO_PKG_VERSION"));
            Err(std::process::ExitCode::SUCCESS)
        }
        _ => {
            let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            eprintln!(
                "audit-server: unexpected arguments {shown:?}: it takes none (configured by environment \
                 variables; see audit-server --help)"
            );
            Err(std::process::ExitCode::from(2))
        }
    }
}

fn main() -> std::process::ExitCode {
    if let Err(code) = command_line() {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit-server: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // What `main() -> anyhow::Result` printed before.
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
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
