//! `cargo xtask bench server` runs this: a measured run (not a test) against the testbed's real
//! PostgreSQL, its data directory on a disk with fsync and synchronous_commit on (as deployed).
//! First the raw ceiling with pgbench (single-row insert commits, and 100-row insert
//! transactions), then the server in-process: single events on 1, 100 and 1000 tenants, and batches
//! of 100, each a closed loop of concurrent clients for a fixed duration after a warm-up. Prints
//! each figure, its ratio to the matching ceiling of the same run, the load average when it was
//! taken, and where the append transactions' time went (the server's phase counters). Then a soak:
//! the server in a process of its own, single events over 100 tenants, its RSS sampled throughout.
//!
//!     cargo run --release -p audit-server --example bench -- [--seconds 10] [--clients 64]
//!         [--batch-clients 16] [--pool N] [--storage disk|tmpfs|both] [--soak SECONDS] [--no-outbox] [--outbox-split] [--outbox-each] [--pg-stats] [--hold-snapshot]

// The allocator of the audit-server binary (src/main.rs), so the in-process server measures the same.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "bench_support/cpu.rs"]
mod cpu;
#[path = "bench_support/kafka.rs"]
mod kafka;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use audit_server::metrics::APPEND_PHASES;
use audit_server::{ApiKeyConfig, Config};
use hdrhistogram::Histogram;
use serde_json::json;

const KEY: &str = "bench-key";

#[derive(Clone, Copy, PartialEq)]
enum Storage {
    Disk,
    Tmpfs,
}

pub struct Args {
    seconds: u64,
    clients: usize,
    batch_clients: usize,
    pool: u32,
    /// The server's append lanes (`AUDIT_APPEND_LANES`); 0: the server's default.
    lanes: usize,
    storages: Vec<Storage>,
    soak: u64,
    /// Run the with/without Kafka outbox comparison after the suite (`--no-outbox` skips it: it
    /// starts three brokers, which a profiling run does not need).
    outbox: bool,
    /// Add a third server to the outbox comparison whose consumers cannot reach Kafka or search
    /// (`--outbox-split`): its appends write the outbox rows and nothing reads them, which splits
    /// the outbox's cost between the append side and the relay/indexer side.
    outbox_split: bool,
    /// Add two servers to the outbox comparison, one with only Kafka configured and one with only
    /// search (`--outbox-each`): what each consumer costs on its own.
    outbox_each: bool,
    /// Add a server without the outbox whose acknowledged events this process publishes to the
    /// topic and indexes itself, as the relay and indexer would (`--outbox-ceiling`): the brokers'
    /// and the search node's work with nothing in PostgreSQL, the best any outbox could do here.
    outbox_ceiling: bool,
    /// Print the outbox comparison's top statements per database from pg_stat_statements
    /// (`--pg-stats`; needs `AUDCTL_TESTBED_PG_CONF="shared_preload_libraries = 'pg_stat_statements'"`).
    pg_stats: bool,
    /// Hold a repeatable-read snapshot on the outbox server's database during the measured runs
    /// (`--hold-snapshot`), as a backup (pg_dump) does: vacuum can then remove none of the rows
    /// the consumers delete.
    hold_snapshot: bool,
    /// PostgreSQL with the production guide's tuning (the default) or the testbed's small
    /// footprint (`--pg testbed`: 32 MB of shared buffers).
    production_tuning: bool,
    /// Run only the server scenarios whose names contain one of these (`--only 1000,batches`).
    only: Vec<String>,
    /// The brokers' and the search node's JVMs: the tests' fast start (the default) or steady state.
    jvm: testbed::Jvm,
    /// Internal: serve on this database URL until stdin closes (the soak's server process).
    serve: Option<String>,
}

fn args() -> Result<Args> {
    // The server's pool defaults to as many connections as pgbench's clients: a like-for-like ceiling.
    let mut a = Args {
        seconds: 10,
        clients: 64,
        batch_clients: 16,
        pool: 0,
        lanes: 0,
        storages: vec![Storage::Disk],
        soak: 60,
        outbox: true,
        outbox_split: false,
        outbox_each: false,
        outbox_ceiling: false,
        pg_stats: false,
        hold_snapshot: false,
        production_tuning: true,
        only: Vec::new(),
        // Steady-state JVMs did worse here: on 2 cores their C2 compiles and G1 threads took
        // 0.5-0.75 cores even before any event was published (see the README's Benchmark).
        jvm: testbed::Jvm::FastStart,
        serve: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut text = || it.next().with_context(|| format!("{flag} needs a value"));
        let number = |v: String| -> Result<u64> { v.parse().with_context(|| format!("{v}: expected a number")) };
        match flag.as_str() {
            "--seconds" => a.seconds = number(text()?)?,
            "--clients" => a.clients = number(text()?)? as usize,
            "--batch-clients" => a.batch_clients = number(text()?)? as usize,
            "--pool" => a.pool = number(text()?)? as u32,
            "--lanes" => a.lanes = number(text()?)? as usize,
            "--soak" => a.soak = number(text()?)?,
            "--storage" => {
                a.storages = match text()?.as_str() {
                    "disk" => vec![Storage::Disk],
                    "tmpfs" => vec![Storage::Tmpfs],
                    "both" => vec![Storage::Disk, Storage::Tmpfs],
                    other => bail!("--storage {other}: expected disk, tmpfs or both"),
                }
            }
            "--no-outbox" => a.outbox = false,
            "--outbox-split" => a.outbox_split = true,
            "--outbox-each" => a.outbox_each = true,
            "--outbox-ceiling" => a.outbox_ceiling = true,
            "--pg-stats" => a.pg_stats = true,
            "--hold-snapshot" => a.hold_snapshot = true,
            "--pg" => {
                a.production_tuning = match text()?.as_str() {
                    "production" => true,
                    "testbed" => false,
                    other => bail!("--pg {other}: expected production or testbed"),
                }
            }
            "--jvm" => {
                a.jvm = match text()?.as_str() {
                    "steady" => testbed::Jvm::Steady,
                    "fast-start" => testbed::Jvm::FastStart,
                    other => bail!("--jvm {other}: expected steady or fast-start"),
                }
            }
            "--only" => a.only = text()?.split(',').map(str::to_owned).collect(),
            "--serve" => a.serve = Some(text()?),
            other => bail!(
                "unknown argument {other}; expected --seconds N, --clients N, --batch-clients N, --pool N, --lanes N, \
                 --storage disk|tmpfs|both, --soak SECONDS, --no-outbox, --outbox-split, --outbox-each, --outbox-ceiling, --pg-stats, --hold-snapshot, --pg production|testbed, --jvm steady|fast-start, --only LIST"
            ),
        }
    }
    if a.pool == 0 {
        a.pool = a.clients as u32;
    }
    Ok(a)
}

/// name, route, request bodies (cycled), clients, events per request.
type Scenario = (String, String, Arc<Vec<Vec<u8>>>, usize, u64);

/// One measured scenario.
struct Figure {
    name: String,
    events_per_sec: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
    /// 1-minute load average at the end of the measurement.
    load: f64,
    /// Where the server's append time went (server scenarios).
    phases: Option<String>,
}

impl Figure {
    fn ceiling(name: String, events_per_sec: f64) -> Figure {
        Figure { name, events_per_sec, p50_ms: None, p99_ms: None, errors: 0, load: load(), phases: None }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    // The servers' logs, only when asked (RUST_LOG=audit_server=debug): a bench run is quiet.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    if let Some(url) = &args.serve {
        return serve(url, &args).await;
    }
    for storage in args.storages.clone() {
        let (label, disk) = match storage {
            Storage::Disk => ("a disk directory (ext4 here), fsync and synchronous_commit on", true),
            Storage::Tmpfs => ("tmpfs (/dev/shm: fsync costs nothing), fsync and synchronous_commit on", false),
        };
        let tuning = if args.production_tuning {
            "the production guide's postgresql.conf tuning (shared_buffers 4GB, max_wal_size 4GB, ...)"
        } else {
            "the testbed's small footprint (shared_buffers 32MB)"
        };
        let label = format!("{label}; {tuning}");
        eprintln!("starting PostgreSQL (testbed) on {label}...");
        let options = testbed::PgOptions { disk, production_tuning: args.production_tuning, ..Default::default() };
        let pg = testbed::postgres::postgres_with(options).await?;
        let mut figures = suite(&pg, &args).await?;
        let mut outbox_summary = None;
        if storage == Storage::Disk && args.outbox {
            // The Kafka outbox's cost (issue 22): the same ingest with and without it, alternating.
            let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
            let (outbox, summary) = kafka::outbox_cost(&pg, &http, &args, Duration::from_secs(args.seconds)).await?;
            figures.extend(outbox);
            outbox_summary = Some(summary);
        }
        print_table(&figures, &args, &label);
        if let Some(summary) = outbox_summary {
            println!("{summary}");
        }
        if storage == Storage::Disk && args.soak > 0 {
            soak(&pg, &args).await?;
        }
    }
    Ok(())
}

/// The ceilings, then the server's scenarios, on one PostgreSQL.
async fn suite(pg: &testbed::postgres::Postgres, args: &Args) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    // The ceiling: what PostgreSQL itself commits on this machine, through pgbench.
    let raw_url = pg.create_database("bench_raw").await?;
    raw_setup(&raw_url).await?;
    let single = pgbench(
        pg,
        "bench_raw",
        args.clients,
        args.seconds,
        "INSERT INTO raw_events (tenant_id, body) VALUES ('t', repeat('x', 600));\n",
    )?;
    figures.push(Figure::ceiling(format!("pgbench single-row insert, {} clients", args.clients), single));
    let batch_tps = pgbench(
        pg,
        "bench_raw",
        args.clients,
        args.seconds,
        "INSERT INTO raw_events (tenant_id, body) SELECT 't', repeat('x', 600) FROM generate_series(1, 100);\n",
    )?;
    figures.push(Figure::ceiling(format!("pgbench 100-row transactions, {} clients", args.clients), batch_tps * 100.0));

    // The server, in this process, on its own database.
    let url = pg.create_database("bench_server").await?;
    let dir = tempfile::tempdir()?;
    let server = audit_server::spawn(server_config(dir.path(), &url, args)?).await?;
    let base = server.base_url();
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let singles = |prefix: &str, n: usize| {
        Arc::new((0..n).map(|t| body_bytes(&event(&format!("{prefix}-{t}")))).collect::<Vec<_>>())
    };
    let batches = Arc::new(
        (0..100)
            .map(|t| body_bytes(&json!({"events": (0..100).map(|_| event(&format!("batch-{t}"))).collect::<Vec<_>>()})))
            .collect::<Vec<_>>(),
    );
    let scenarios: [Scenario; 4] = [
        (
            format!("server single events, 1 tenant, {} clients", args.clients),
            "/api/v1/events".into(),
            singles("one", 1),
            args.clients,
            1,
        ),
        (
            format!("server single events, 100 tenants, {} clients", args.clients),
            "/api/v1/events".into(),
            singles("tenant", 100),
            args.clients,
            1,
        ),
        (
            format!("server single events, 1000 tenants, {} clients", args.clients),
            "/api/v1/events".into(),
            singles("many", 1000),
            args.clients,
            1,
        ),
        (
            format!("server batches of 100, 100 tenants, {} clients", args.batch_clients),
            "/api/v1/events/batch".into(),
            batches,
            args.batch_clients,
            100,
        ),
    ];
    // A tenant of each scenario, in the scenarios' order: their chains are verified after the run.
    let samples = ["one-0", "tenant-57", "many-999", "batch-3"];
    let mut written = Vec::new();
    for ((name, path, bodies, clients, per_request), sample) in scenarios.into_iter().zip(samples) {
        if !args.only.is_empty() && !args.only.iter().any(|o| name.contains(&format!(" {o} "))) {
            continue;
        }
        eprintln!("running: {name}");
        written.push(sample);
        let before = scrape(&http, &base).await?;
        let cpu_before = cpu::sample();
        let f = drive(
            &http,
            &format!("{base}{path}"),
            bodies,
            clients,
            per_request,
            Duration::from_secs(args.seconds),
            None,
        )
        .await?;
        let after = scrape(&http, &base).await?;
        let phases = format!("{}; {}", after.since(&before), cpu::sample().since(&cpu_before));
        eprintln!("  {phases}");
        figures.push(Figure { name, phases: Some(phases), ..f });
    }
    // Every chain the run wrote must verify.
    for tenant in written {
        verify(&http, &base, tenant).await?;
    }
    server.shutdown().await?;
    Ok(figures)
}

fn server_config(dir: &std::path::Path, url: &str, args: &Args) -> Result<Config> {
    let mut config = Config::local(dir.join("data"));
    config.listen = "127.0.0.1:0".parse()?;
    config.database_url = Some(url.to_owned());
    config.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
    config.db_max_connections = args.pool;
    if args.lanes > 0 {
        config.append_lanes = args.lanes;
    }
    Ok(config)
}

async fn verify(http: &reqwest::Client, base: &str, tenant: &str) -> Result<()> {
    let report: serde_json::Value = http
        .get(format!("{base}/api/v1/integrity/verify?tenantId={tenant}"))
        .header("x-api-key", KEY)
        .send()
        .await?
        .json()
        .await?;
    if report["verified"] != true || report["checked"].as_u64().unwrap_or(0) == 0 {
        bail!("chain of {tenant} does not verify after the bench: {report}");
    }
    Ok(())
}

fn print_table(figures: &[Figure], args: &Args, storage: &str) {
    println!(
        "\naudit-server benchmark, PostgreSQL on {storage} ({} s per scenario, server pool {}, this machine: {} cores)",
        args.seconds,
        args.pool,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:<52} {:>10} {:>8} {:>8} {:>7} {:>6} {:>6}",
        "scenario", "events/s", "p50 ms", "p99 ms", "errors", "ratio", "load"
    );
    let ceiling =
        |name: &str| if name.contains("batches") { figures[1].events_per_sec } else { figures[0].events_per_sec };
    for f in figures {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        let ratio = if f.name.starts_with("server") { f.events_per_sec / ceiling(&f.name) } else { 1.0 };
        println!(
            "{:<52} {:>10.0} {:>8} {:>8} {:>7} {:>6.2} {:>6.2}",
            f.name,
            f.events_per_sec,
            ms(f.p50_ms),
            ms(f.p99_ms),
            f.errors,
            ratio,
            f.load
        );
    }
    println!("\nwhere the append time went and the cores each component used, per scenario:");
    for f in figures {
        if let Some(p) = &f.phases {
            println!("  {}: {p}", f.name);
        }
    }
    println!(
        "\nratio: server events/s divided by the pgbench figure of the same shape, same run (single rows or 100-row \
         transactions); load: 1-minute load average at the end of the figure."
    );
    println!(
        "aims (issue 23): single events >= 0.5 x pgbench single-row with p99 < 20 ms on 100 tenants (aim past: 1.0) \
         and on one tenant; batches >= 20000 events/s and >= 0.25 x pgbench 100-row; 1000 tenants like 100."
    );
}

/// The server in a process of its own (so its RSS is its own), single events over 100 tenants for
/// `--soak` seconds: RSS after the warm-up and at the end, and in between.
async fn soak(pg: &testbed::postgres::Postgres, args: &Args) -> Result<()> {
    let url = pg.create_database("bench_soak").await?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["--serve", &url, "--pool", &args.pool.to_string(), "--lanes", &args.lanes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the soak's server process")?;
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().context("server stdout")?).lines();
    let base = lines.next().context("the server process exited before listening")??;
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let bodies = Arc::new((0..100).map(|t| body_bytes(&event(&format!("soak-{t}")))).collect::<Vec<_>>());
    eprintln!("soak: {} s, server pid {pid}", args.soak);
    let url_events = format!("{base}/api/v1/events");
    let driving = tokio::spawn({
        let http = http.clone();
        let clients = args.clients;
        let seconds = args.soak;
        async move { drive(&http, &url_events, bodies, clients, 1, Duration::from_secs(seconds), None).await }
    });
    // drive() warms up for 2 s: the first sample is taken once it measures.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let mut samples = vec![(0u64, rss_kib(pid)?)];
    let every = Duration::from_secs((args.soak / 10).max(1));
    while !driving.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() >= every * samples.len() as u32 {
            samples.push((started.elapsed().as_secs(), rss_kib(pid)?));
        }
    }
    let f = driving.await??;
    samples.push((started.elapsed().as_secs(), rss_kib(pid)?));
    verify(&http, &base, "soak-42").await?;
    drop(child.stdin.take()); // the server process shuts down when its stdin closes
    let status = child.wait()?;
    let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
    println!(
        "\nsoak: server process, single events over 100 tenants, {} clients, {} s: {:.0} events/s, p99 {:.1} ms, \
         {} errors, load {:.2}",
        args.clients,
        args.soak,
        f.events_per_sec,
        f.p99_ms.unwrap_or(0.0),
        f.errors,
        load()
    );
    println!(
        "  RSS start {:.1} MiB, end {:.1} MiB ({:+.1} %); samples (s: MiB): {}",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        (last as f64 / first as f64 - 1.0) * 100.0,
        samples.iter().map(|(s, k)| format!("{s}: {:.1}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(", ")
    );
    if !status.success() {
        bail!("the soak's server process exited with {status}");
    }
    Ok(())
}

/// The soak's server process: print the base URL, serve until stdin closes, shut down.
async fn serve(url: &str, args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = audit_server::spawn(server_config(dir.path(), url, args)?).await?;
    println!("{}", server.base_url());
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    })
    .await?;
    server.shutdown().await
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

fn load() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

async fn raw_setup(url: &str) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    // Same shape as the server's events table: a primary key and as many secondary indexes.
    sqlx::raw_sql(
        "CREATE TABLE raw_events (id BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, ts TIMESTAMPTZ NOT NULL DEFAULT now(), body TEXT NOT NULL);
         CREATE INDEX ON raw_events (tenant_id, id); CREATE INDEX ON raw_events (tenant_id, ts);",
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Run pgbench with one script; returns its transactions per second.
fn pgbench(pg: &testbed::postgres::Postgres, db: &str, clients: usize, seconds: u64, script: &str) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script)?;
    let out = Command::new(pg.bin("pgbench"))
        .args(["-n", "-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", testbed::postgres::SUPERUSER])
        .args(["-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg(db)
        .env("PGPASSWORD", pg.password())
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps line in pgbench output:\n{text}"))
}

fn event(tenant: &str) -> serde_json::Value {
    json!({
        "actor": {"id": "user-42", "type": "USER", "name": "Bench User", "ip": "10.1.2.3", "userAgent": "bench/1.0"},
        "action": {"type": "DOCUMENT_UPDATED", "description": "bench event", "category": "DATA"},
        "resource": {"id": "doc-1234", "type": "DOCUMENT", "name": "Quarterly report", "before": {"status": "draft"}, "after": {"status": "final"}},
        "metadata": {"source": "bench", "tenantId": tenant, "correlationId": "corr-1", "tags": {"env": "bench"}}
    })
}

fn body_bytes(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Where a mirror gets each acknowledged request as the stored event (the body posted and the
/// server's answer make it), counted until the mirror has handled it. The conversion runs on the
/// caller's (load client) threads: a relay has the stored event in memory and does not pay it.
#[derive(Clone)]
struct Acked {
    tx: tokio::sync::mpsc::UnboundedSender<audit_api::StoredEvent>,
    pending: Arc<std::sync::atomic::AtomicU64>,
}

impl Acked {
    fn send(&self, posted: &[u8], receipt: &[u8]) {
        let Some(event) = stored(posted, receipt) else { return };
        self.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.tx.send(event).is_err() {
            self.pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The stored event from what was posted and the receipt's id, sequence, timestamp and hashes.
fn stored(posted: &[u8], receipt: &[u8]) -> Option<audit_api::StoredEvent> {
    let mut event: serde_json::Value = serde_json::from_slice(posted).ok()?;
    let receipt: serde_json::Value = serde_json::from_slice(receipt).ok()?;
    for k in ["id", "sequence", "timestamp", "hash", "previousHash"] {
        event[k] = receipt.get(k)?.clone();
    }
    serde_json::from_value(event).ok()
}

/// A closed loop: `clients` tasks each POST back to back, a 2 s warm-up then `duration` measured;
/// every acknowledged request goes to `mirror` when there is one (see `--outbox-ceiling`).
async fn drive(
    http: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
    per_request: u64,
    duration: Duration,
    mirror: Option<Acked>,
) -> Result<Figure> {
    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, bodies, mirror) = (http.clone(), url.to_owned(), bodies.clone(), mirror.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut ok, mut errors, mut i) = (0u64, 0u64, c);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let body = bodies[i % bodies.len()].clone();
                i += clients;
                let posted = mirror.as_ref().map(|_| body.clone());
                let r = http
                    .post(&url)
                    .header("x-api-key", KEY)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let good = matches!(&r, Ok(r) if r.status().as_u16() == 201);
                if let Ok(r) = r {
                    let answer = r.bytes().await;
                    if let (true, Some(m), Some(posted), Ok(answer)) = (good, &mirror, posted, answer) {
                        m.send(&posted, &answer);
                    }
                }
                if now >= measure_from {
                    if good {
                        ok += 1;
                        let _ = hist.record(now.elapsed().as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await?;
        hist.add(h)?;
        ok += o;
        errors += e;
    }
    Ok(Figure {
        name: String::new(),
        events_per_sec: (ok * per_request) as f64 / duration.as_secs_f64(),
        p50_ms: Some(hist.value_at_quantile(0.5) as f64 / 1000.0),
        p99_ms: Some(hist.value_at_quantile(0.99) as f64 / 1000.0),
        errors,
        load: load(),
        phases: None,
    })
}

/// The server's group-commit counters at one instant.
struct Counters {
    runs: f64,
    jobs: f64,
    /// Seconds per phase, in the order of [`APPEND_PHASES`].
    phases: Vec<f64>,
}

impl Counters {
    /// Requests per transaction, queue wait per request, then each phase per transaction.
    fn since(&self, before: &Counters) -> String {
        let runs = (self.runs - before.runs).max(1.0);
        let jobs = (self.jobs - before.jobs).max(1.0);
        let ms: Vec<f64> = self.phases.iter().zip(&before.phases).map(|(a, b)| (a - b) * 1000.0).collect();
        let mut text = format!(
            "{jobs:.0} requests in {runs:.0} transactions ({:.1} per transaction); queue wait {:.2} ms per request; \
             per transaction (ms):",
            jobs / runs,
            ms[0] / jobs
        );
        for (phase, v) in APPEND_PHASES.iter().zip(&ms).skip(1) {
            text.push_str(&format!(" {phase} {:.2}", v / runs));
        }
        text
    }
}

async fn scrape(http: &reqwest::Client, base: &str) -> Result<Counters> {
    let text = http.get(format!("{base}/actuator/prometheus")).send().await?.text().await?;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    Ok(Counters {
        runs: value("audit_group_commit_runs_total"),
        jobs: value("audit_group_commit_jobs_total"),
        phases: APPEND_PHASES
            .iter()
            .map(|p| value(&format!("audit_append_phase_seconds_total{{phase=\"{p}\"}}")))
            .collect(),
    })
}
