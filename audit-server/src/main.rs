//! `audit-server`: configuration from the environment (see README), JSON logs, SIGTERM drain.

// mimalloc: the server allocates per request (JSON trees, canonical bodies); glibc malloc/free
// were 25-40 % of the process under load (docs/profile.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use audit_server::search::reindex::Reindex;
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

       audit-server search-reindex [--tenant ID]... [--since TIME] [--batch N]

Indexes events from the database into the search cluster (same configuration, AUDIT_SEARCH_URL
required): those stored before search was configured, or newer than a restored snapshot. Safe
while servers run (documents are keyed by event id). Exit 0 when every event was indexed, 1 when
the cluster refused some or did not answer, 2 for bad arguments or configuration.
";

const REINDEX_USAGE: &str = "\
Usage: audit-server search-reindex [--tenant ID]... [--since TIME] [--batch N]
  --tenant ID   only this tenant (repeatable; default: every tenant with events)
  --since TIME  only events stored at or after TIME (RFC 3339, e.g. 2026-12-01T00:00:00Z)
  --batch N     events per bulk request (default 1000)
";

/// What the command line asks for.
enum Mode {
    Serve,
    Reindex(Reindex),
}

/// Parse the command line. Anything unknown is refused before anything starts (a mistyped flag
/// must not start a server on 0.0.0.0:8080 and create a data directory).
fn command_line() -> Result<Mode, std::process::ExitCode> {
    let args: Vec<String> = match std::env::args_os().skip(1).map(|a| a.into_string()).collect() {
        Ok(a) => a,
        Err(a) => return Err(usage_error(&format!("argument {a:?} is not UTF-8"))),
    };
    match args.first().map(String::as_str) {
        None => Ok(Mode::Serve),
        Some("-h" | "--help") if args.len() == 1 => {
            print!("{USAGE}");
            Err(std::process::ExitCode::SUCCESS)
        }
        Some("-V" | "--version") if args.len() == 1 => {
            println!("audit-server {}", env!("CARGO_PKG_VERSION"));
            Err(std::process::ExitCode::SUCCESS)
        }
        Some("search-reindex") => reindex_args(&args[1..]).map(Mode::Reindex),
        _ => Err(usage_error(&format!(
            "unexpected arguments {args:?}: it takes none to serve (configured by environment variables), or \
             `search-reindex`; see audit-server --help"
        ))),
    }
}

fn usage_error(message: &str) -> std::process::ExitCode {
    eprintln!("audit-server: {message}");
    std::process::ExitCode::from(2)
}

fn reindex_args(args: &[String]) -> Result<Reindex, std::process::ExitCode> {
    let mut r = Reindex { batch: 1000, ..Reindex::default() };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{REINDEX_USAGE}");
            return Err(std::process::ExitCode::SUCCESS);
        }
        if !["--tenant", "--since", "--batch"].contains(&flag.as_str()) {
            return Err(usage_error(&format!("search-reindex: unknown argument {flag:?}\n{REINDEX_USAGE}")));
        }
        let Some(value) = it.next() else {
            return Err(usage_error(&format!("search-reindex {flag}: expected a value after it\n{REINDEX_USAGE}")));
        };
        match flag.as_str() {
            "--tenant" if value.is_empty() => return Err(usage_error("search-reindex --tenant: expected a tenant id")),
            "--tenant" => r.tenants.push(value.clone()),
            "--since" => match chrono::DateTime::parse_from_rfc3339(value) {
                Ok(t) => r.since = Some(t.with_timezone(&chrono::Utc)),
                Err(e) => {
                    return Err(usage_error(&format!(
                        "search-reindex --since {value:?}: {e}: expected an RFC 3339 time such as 2026-12-01T00:00:00Z"
                    )));
                }
            },
            // --batch, the last of the flags checked above.
            _ => match value.parse::<u32>() {
                Ok(n) if (1..=10_000).contains(&n) => r.batch = n,
                _ => return Err(usage_error(&format!("search-reindex --batch {value:?}: expected 1 to 10000"))),
            },
        }
    }
    Ok(r)
}

fn main() -> std::process::ExitCode {
    let mode = match command_line() {
        Ok(m) => m,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit-server: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match mode {
        Mode::Serve => runtime.block_on(serve()),
        Mode::Reindex(r) => return runtime.block_on(search_reindex(r)),
    };
    match result {
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

/// `search-reindex`: the summary on stdout (JSON), progress and errors on stderr.
async fn search_reindex(what: Reindex) -> std::process::ExitCode {
    if let Err(e) = audit_server::logging::init(|name| std::env::var(name).ok()) {
        return usage_error(&format!("{e:#}"));
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return usage_error(&format!("{e:#}")),
    };
    let Some(search) = config.search.clone() else {
        return usage_error("search-reindex: no search cluster configured: set AUDIT_SEARCH_URL (and its credentials)");
    };
    let started = std::time::Instant::now();
    let work = async {
        let store = audit_server::open_store(&config).await?;
        let client = audit_server::search::client::SearchClient::new(&search)?;
        let mut last = std::time::Instant::now();
        let mut progress = |tenant: &str, indexed: u64| {
            if last.elapsed() >= std::time::Duration::from_secs(2) {
                eprintln!("audit-server search-reindex: {indexed} events indexed (tenant {tenant})");
                last = std::time::Instant::now();
            }
        };
        let done = audit_server::search::reindex::reindex(&store, &client, &what, &mut progress).await;
        store.close().await;
        done
    };
    match work.await {
        Ok(done) => {
            let seconds = started.elapsed().as_secs_f64();
            let mut summary = serde_json::to_value(&done).unwrap_or_default();
            summary["seconds"] = serde_json::json!((seconds * 10.0).round() / 10.0);
            println!("{summary}");
            eprintln!(
                "audit-server search-reindex: {} events of {} tenants indexed in {seconds:.1} s{}",
                done.indexed,
                done.tenants,
                match &done.first_refusal {
                    Some(why) => format!("; {} refused by the cluster, first: {why}", done.refused),
                    None => String::new(),
                }
            );
            if done.refused > 0 { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
        }
        Err(e) if e.downcast_ref::<audit_server::search::reindex::UnknownTenant>().is_some() => {
            usage_error(&format!("search-reindex: {e:#}"))
        }
        Err(e) => {
            eprintln!("audit-server search-reindex: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
