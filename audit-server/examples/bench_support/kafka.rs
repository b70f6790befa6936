//! Issue 22's bench: the ingest rate with the outbox on (Kafka and search), against the rate
//! without it, in the same run (aim: within 10 %). Two servers in this process, each on its own
//! database, one with `kafka` (3 testbed brokers, topic of 3 partitions replicated 3 times) and
//! `search` (the testbed's Elasticsearch) configured; the same
//! scenario (single events over 100 tenants) alternates between them in the order A B B A, so that
//! the machine's changing load and any drift over the run hit both alike. Then the relay and the
//! indexer must drain: both lags back to 0. `--outbox-split` adds a server whose consumers cannot
//! reach Kafka or search (rows written, never read), `--outbox-each` one with only Kafka and one
//! with only search configured. `--outbox-ceiling` one without the outbox whose acknowledged events
//! this process publishes and indexes itself ([`Mirror`]): the brokers' and the search node's
//! share of the cost alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use audit_server::{ApiKeyConfig, Config};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{Acked, Figure, KEY, body_bytes, cpu, drive, event};

/// The figures of both servers and a summary line.
pub async fn outbox_cost(
    pg: &testbed::postgres::Postgres,
    http: &reqwest::Client,
    args: &super::Args,
    duration: Duration,
) -> Result<(Vec<Figure>, String)> {
    let (clients, pool) = (args.clients, args.pool);
    eprintln!("starting Kafka (testbed, 3 brokers, {:?} JVMs)...", args.jvm);
    let kafka = testbed::kafka_with(3, args.jvm).await?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    // The ceiling mirror's topic is its own: the relay reads the audit topic's last records back.
    let topics: Vec<NewTopic> = ["audit-events", CEILING_TOPIC]
        .into_iter()
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(3)).set("min.insync.replicas", "2"))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    eprintln!("starting Elasticsearch (testbed, {:?} JVM)...", args.jvm);
    let search = testbed::search_jvm(testbed::Product::Elasticsearch, args.jvm).await?;
    let index_settings = production_index_settings()?;
    // The relay's and the indexer's settings come through the server's own loader, from this
    // environment's AUDIT_KAFKA_* and AUDIT_SEARCH_* (e.g. AUDIT_KAFKA_PROPERTIES): a bench run
    // tries exactly what a deployment would set, refused where the server would refuse it.
    let (bootstrap, search_url) = (kafka.bootstrap_servers().to_string(), search.url().to_string());
    let tuned = Config::from_lookup(|name| match name {
        "AUDIT_KAFKA_BOOTSTRAP_SERVERS" => Some(bootstrap.clone()),
        "AUDIT_SEARCH_URL" => Some(search_url.clone()),
        n if n.starts_with("AUDIT_KAFKA_") || n.starts_with("AUDIT_SEARCH_") => std::env::var(n).ok(),
        _ => None,
    })?;
    // Server 0 without the outbox, 1 with it; with --outbox-split, 2 with consumers pointed at
    // closed ports: it writes every outbox row and nothing reads or purges them.
    let mut kinds = vec![("bench_plain", Kind::Plain), ("bench_outbox", Kind::Outbox)];
    if args.outbox_split {
        kinds.push(("bench_rows_only", Kind::RowsOnly));
    }
    if args.outbox_each {
        kinds.push(("bench_kafka_only", Kind::KafkaOnly));
        kinds.push(("bench_search_only", Kind::SearchOnly));
    }
    if args.outbox_ceiling {
        kinds.push(("bench_ceiling", Kind::Ceiling));
    }
    let unreachable = unreachable_port()?;
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    let mut rows_only_url = None;
    for (name, kind) in &kinds {
        let dir = tempfile::tempdir()?;
        let mut config = Config::local(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse()?;
        config.database_url = Some(pg.create_database(name).await?);
        if *kind == Kind::RowsOnly {
            rows_only_url = config.database_url.clone();
        }
        urls.push((*name, config.database_url.clone().unwrap_or_default()));
        config.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
        config.db_max_connections = pool;
        let (kafka_on, search_on) = kind.consumers();
        config.kafka = kafka_on.then(|| tuned.kafka.clone()).flatten().map(|mut k| {
            if *kind == Kind::RowsOnly {
                k.bootstrap_servers = format!("127.0.0.1:{unreachable}");
            }
            k
        });
        config.search = search_on.then(|| tuned.search.clone()).flatten().map(|mut s| {
            s.index_settings = index_settings.clone();
            if *kind == Kind::RowsOnly {
                s.url = format!("http://127.0.0.1:{unreachable}");
            }
            s
        });
        servers.push((audit_server::spawn(config).await?, dir));
    }
    let bodies = Arc::new((0..100).map(|t| body_bytes(&event(&format!("tenant-{t}")))).collect::<Vec<_>>());
    // The clients run on a runtime of their own (named threads), so that the cores of the servers
    // and PostgreSQL can be counted apart from theirs and from the JVMs'.
    let client_rt = cpu::client_runtime()?;
    let client_http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    // The mirror does what the relay and the indexer do inside a server (encode, publish, bulk
    // index), so it runs on threads of its own that count as the servers' (and the producer's
    // librdkafka threads are this process's, as the relay's are): the ceiling's cores per event
    // then hold that client-side work and leave out only the database's share of the outbox.
    let mirror_rt = cpu::runtime("bench-mirror", 1)?;
    let mirror = match args.outbox_ceiling {
        true => {
            let mut s = tuned.search.clone().ok_or_else(|| anyhow::anyhow!("no search settings"))?;
            s.index_settings = index_settings.clone();
            s.index_prefix = "ceiling-events".into();
            let bootstrap = kafka.bootstrap_servers().to_string();
            Some(mirror_rt.spawn(async move { Mirror::start(&bootstrap, &s).await }).await??)
        }
        false => None,
    };
    // Warm the JVMs up first (fast-start brokers compile for a minute after their start), and
    // every server with consumers (a fresh database's first run, statistics not yet gathered,
    // was seen far slower): these runs are not measured.
    for (i, (_, kind)) in kinds.iter().enumerate().filter(|(_, (_, k))| k.consumes()) {
        eprintln!("running: outbox comparison, warm-up {} (not measured)", kind.label());
        let url = format!("{}/api/v1/events", servers[i].0.base_url());
        let (h, b) = (client_http.clone(), bodies.clone());
        let warm = if *kind == Kind::Outbox { duration } else { duration / 2 };
        client_rt.spawn(async move { drive(&h, &url, b, clients, 1, warm, None).await }).await??;
    }
    let stats_from = match args.pg_stats {
        true => Some(pg_stats_reset(pg, &urls).await?),
        false => None,
    };
    // A backup's snapshot: a read-only repeatable-read transaction open across the measured runs.
    let mut backup = None;
    if args.hold_snapshot {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&urls[1].1).await?;
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT count(*) FROM events")
            .execute(&mut conn)
            .await?;
        backup = Some(conn);
    }
    let n = servers.len();
    let mut rates: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
    let mut cores = vec![Vec::new(); n];
    let mut per_core = vec![Vec::new(); n];
    let mut drains = Vec::new();
    let forward: Vec<usize> = (0..n).collect();
    let backward: Vec<usize> = (0..n).rev().collect();
    for (round, order) in [forward, backward].into_iter().enumerate() {
        for i in order {
            // Every run starts with the outbox drained: the relay and the indexer catching up
            // after a run with the outbox must not run during the next one (it would be counted
            // against the run without it).
            drains.push(drain_all(http, &servers, &kinds).await?);
            if let Some(m) = &mirror {
                m.drain().await?;
            }
            let server = &servers[i].0;
            let label = kinds[i].1.label();
            eprintln!("running: outbox comparison, round {}, {label}", round + 1);
            let url = format!("{}/api/v1/events", server.base_url());
            let before = cpu::sample();
            let (h, b) = (client_http.clone(), bodies.clone());
            let acked = if kinds[i].1 == Kind::Ceiling { mirror.as_ref().map(|m| m.tx.clone()) } else { None };
            let f = client_rt.spawn(async move { drive(&h, &url, b, clients, 1, duration, acked).await }).await??;
            let after = cpu::sample();
            let used = after.since(&before);
            let server_cores = after.cores(&before, &[cpu::SERVERS, cpu::POSTGRES]);
            let efficiency = f.events_per_sec / server_cores.max(1e-9);
            eprintln!("  {:.0} events/s, {efficiency:.0} per core of server + PostgreSQL; {used}", f.events_per_sec);
            cores[i].push(used);
            per_core[i].push(efficiency);
            rates[i].push(f);
            // Nothing reads the rows-only server's outbox, so it would grow by every run, and
            // its upkeep (the outbox count, the periodic purge scan) would work on hundreds of
            // thousands of rows during the other servers' runs: seen as PostgreSQL at 1.3 cores
            // and every rate of the second round down. Empty it after each of its runs.
            if let (Kind::RowsOnly, Some(url)) = (kinds[i].1, &rows_only_url) {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
                sqlx::raw_sql("TRUNCATE outbox").execute(&mut conn).await?;
                sqlx::raw_sql("VACUUM ANALYZE outbox").execute(&mut conn).await?;
            }
        }
    }
    if let Some(mut conn) = backup {
        sqlx::raw_sql("COMMIT").execute(&mut conn).await?;
    }
    // Its worker threads must not outlive this comparison.
    drop(client_rt);
    // Everything the outbox servers stored must reach the topic and the index.
    drains.push(drain_all(http, &servers, &kinds).await?);
    if let Some(m) = mirror {
        m.drain().await?;
    }
    drop(mirror_rt);
    let drains: Vec<String> = drains.iter().map(|[k, s]| format!("{k:.1}/{s:.1}")).collect();
    if let Some(from) = stats_from {
        pg_stats_print(pg, &urls, &from).await?;
    }
    for (server, _) in servers {
        server.shutdown().await?;
    }
    let mut figures = Vec::new();
    let mut means = vec![0.0; n];
    let efficiency: Vec<f64> = per_core.iter().map(|runs| runs.iter().sum::<f64>() / runs.len() as f64).collect();
    for (i, runs) in rates.into_iter().enumerate() {
        let n = runs.len() as f64;
        means[i] = runs.iter().map(|f| f.events_per_sec).sum::<f64>() / n;
        figures.push(Figure {
            name: format!("server single events, 100 tenants, {}", kinds[i].1.short()),
            events_per_sec: means[i],
            p50_ms: runs.iter().filter_map(|f| f.p50_ms).reduce(f64::max),
            p99_ms: runs.iter().filter_map(|f| f.p99_ms).reduce(f64::max),
            errors: runs.iter().map(|f| f.errors).sum(),
            load: runs.iter().map(|f| f.load).fold(0.0, f64::max),
            phases: Some(cores[i].join("; ")),
        });
    }
    let mut summary = format!(
        "outbox cost (issue 22): with the outbox (Kafka relay and search indexer) {:.0} events/s, without {:.0} \
         events/s: ratio {:.3} (aim >= 0.90), the brokers and the search node sharing this machine's cores; \
         events per core of the server and PostgreSQL (what the outbox costs a deployment whose brokers and \
         search nodes have cores of their own): with {:.0}, without {:.0}, ratio {:.3}; mean of 2 runs each, in the \
         order A B B A after a warm-up, p50/p99 the worse run's; each run started with the outbox drained, the \
         Kafka/search lags took (s) to reach 0 before each run and after the last: {}.",
        means[1],
        means[0],
        means[1] / means[0].max(1.0),
        efficiency[1],
        efficiency[0],
        efficiency[1] / efficiency[0].max(1e-9),
        drains.join(", "),
    );
    if let Some(i) = kinds.iter().position(|(_, k)| *k == Kind::RowsOnly) {
        let (rate, eff) = (means[i], efficiency[i]);
        summary.push_str(&format!(
            " Split (--outbox-split): outbox rows written but never read (consumers unreachable) {rate:.0} events/s \
             (ratio {:.3}), {eff:.0} per core of server + PostgreSQL (ratio {:.3}): the append side's share of \
             the outbox's cost; the rest is the relay's and the indexer's.",
            rate / means[0].max(1.0),
            eff / efficiency[0].max(1e-9),
        ));
    }
    if let Some(i) = kinds.iter().position(|(_, k)| *k == Kind::Ceiling) {
        summary.push_str(&format!(
            " Ceiling (--outbox-ceiling): no outbox, this process publishing and indexing every acknowledged event \
             itself {:.0} events/s (ratio {:.3}): the brokers' and the search node's share alone, the best any \
             outbox can reach on this machine.",
            means[i],
            means[i] / means[0].max(1.0),
        ));
    }
    for (i, (_, kind)) in kinds.iter().enumerate().filter(|(_, (_, k))| matches!(k, Kind::KafkaOnly | Kind::SearchOnly))
    {
        summary.push_str(&format!(
            " Each (--outbox-each): {} {:.0} events/s (ratio {:.3}), {:.0} per core of server + PostgreSQL (ratio {:.3}).",
            kind.label(),
            means[i],
            means[i] / means[0].max(1.0),
            efficiency[i],
            efficiency[i] / efficiency[0].max(1e-9),
        ));
    }
    Ok((figures, summary))
}

/// [`drain`] every server with a consumer (the others have nothing to drain): the slowest's
/// seconds for each lag.
async fn drain_all(
    http: &reqwest::Client,
    servers: &[(audit_server::RunningServer, tempfile::TempDir)],
    kinds: &[(&str, Kind)],
) -> Result<[f64; 2]> {
    let mut took = [0.0f64; 2];
    for ((server, _), (_, kind)) in servers.iter().zip(kinds) {
        if !kind.consumes() {
            continue;
        }
        let (kafka, search) = kind.consumers();
        let t = drain(http, &server.base_url(), [kafka, search]).await?;
        took = [took[0].max(t[0]), took[1].max(t[1])];
    }
    Ok(took)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Outbox,
    RowsOnly,
    KafkaOnly,
    SearchOnly,
    /// No outbox; the bench mirrors its acknowledged events to Kafka and search.
    Ceiling,
}

impl Kind {
    /// Whether the server has Kafka and search configured.
    fn consumers(self) -> (bool, bool) {
        match self {
            Kind::Plain | Kind::Ceiling => (false, false),
            Kind::Outbox | Kind::RowsOnly => (true, true),
            Kind::KafkaOnly => (true, false),
            Kind::SearchOnly => (false, true),
        }
    }

    /// Whether its consumers run (read and purge the outbox): the servers to warm up and drain.
    fn consumes(self) -> bool {
        matches!(self, Kind::Outbox | Kind::KafkaOnly | Kind::SearchOnly)
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Plain => "without the outbox",
            Kind::Outbox => "with the outbox (Kafka and search)",
            Kind::RowsOnly => "with outbox rows only (consumers unreachable)",
            Kind::KafkaOnly => "with the outbox, Kafka only",
            Kind::SearchOnly => "with the outbox, search only",
            Kind::Ceiling => "without the outbox, its events published and indexed by the bench",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Plain => "no outbox",
            Kind::Outbox => "outbox: Kafka + search",
            Kind::RowsOnly => "outbox rows only, unread",
            Kind::KafkaOnly => "outbox: Kafka only",
            Kind::SearchOnly => "outbox: search only",
            Kind::Ceiling => "no outbox, mirrored by the bench",
        }
    }
}

/// A loopback port nothing listens on: bound, then released.
fn unreachable_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait until the server's Kafka publish lag and search index lag (those `configured`) are both
/// 0: the seconds each took (0.0 when nothing was pending or it is not configured).
async fn drain(http: &reqwest::Client, base: &str, configured: [bool; 2]) -> Result<[f64; 2]> {
    let start = Instant::now();
    let mut drained = configured.map(|on| (!on).then_some(Duration::ZERO));
    while drained.iter().any(Option::is_none) {
        let text = http.get(format!("{base}/actuator/prometheus")).send().await?.text().await?;
        let gauges = ["audit_kafka_publish_lag_events ", "audit_search_index_lag_events "];
        for (i, name) in gauges.iter().enumerate() {
            let lag = text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
            if drained[i].is_none() && lag == Some(0.0) {
                drained[i] = Some(start.elapsed());
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("the outbox was not drained within 300 s (Kafka, search: {drained:?})");
        }
        if drained.iter().any(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(drained.map(|d| d.unwrap_or_default().as_secs_f64()))
}

/// The index settings a deployment gives the audit indices: values/defaults.yaml's
/// `elasticsearch.indexSettings` (refresh every 5 s, asynchronous translog), read from the file.
fn production_index_settings() -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../values/defaults.yaml");
    let values: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    match &values["elasticsearch"]["indexSettings"] {
        serde_json::Value::Object(settings) => Ok(settings.clone()),
        other => bail!("{path}: elasticsearch.indexSettings is not a mapping: {other}"),
    }
}

/// `--pg-stats`: forget the statements so far (the warm-up) and count each database's events.
async fn pg_stats_reset(pg: &testbed::postgres::Postgres, urls: &[(&str, String)]) -> Result<Vec<i64>> {
    pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .map_err(|e| anyhow::anyhow!("--pg-stats needs pg_stat_statements preloaded (AUDCTL_TESTBED_PG_CONF): {e}"))?;
    pg.sql("SELECT pg_stat_statements_reset()").await?;
    events_per_database(urls).await
}

async fn events_per_database(urls: &[(&str, String)]) -> Result<Vec<i64>> {
    let mut counts = Vec::new();
    for (_, url) in urls {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
        counts.push(sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?);
    }
    Ok(counts)
}

/// `--pg-stats`: each database's statements since the reset, the costliest first, with their
/// execution time per event stored meanwhile (drains included: they are the consumers' work).
async fn pg_stats_print(pg: &testbed::postgres::Postgres, urls: &[(&str, String)], from: &[i64]) -> Result<()> {
    let now = events_per_database(urls).await?;
    for (((name, _), before), after) in urls.iter().zip(from).zip(&now) {
        let events = (after - before).max(1);
        let rows = pg
            .sql(&format!(
                "SELECT s.calls, round(s.total_exec_time::numeric, 0), round((s.total_exec_time * 1000 / {events})::numeric, 1), \
                 s.rows, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 120) \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = '{name}' ORDER BY s.total_exec_time DESC LIMIT 12"
            ))
            .await?;
        let total = pg
            .sql(&format!(
                "SELECT round(sum(s.total_exec_time)::numeric, 0), round((sum(s.total_exec_time) * 1000 / {events})::numeric, 1) \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{name}'"
            ))
            .await?;
        eprintln!("\npg_stat_statements, {name}: {events} events; total ms|us per event: {total}");
        eprintln!("calls|total ms|us per event|rows|statement");
        eprintln!("{rows}");
    }
    Ok(())
}

const CEILING_TOPIC: &str = "ceiling-events";

/// `--outbox-ceiling`: the brokers' and the search node's work without the outbox. Every event
/// the ceiling server acknowledged (the posted event and its receipt make the stored event) is
/// published as the relay publishes it (key tenant, value the stored event, `sequence` header;
/// idempotent producer, acks=all, linger 20 ms) and bulk-indexed with the server's own search
/// client (template, documents) in batches of up to 1000 every 200 ms, as the indexer does. The
/// database does nothing for it: what is left of the outbox's cost is the JVMs' and the encoding.
struct Mirror {
    tx: Acked,
    pending: Arc<std::sync::atomic::AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Mirror {
    async fn start(bootstrap: &str, search: &audit_server::config::SearchConfig) -> Result<Mirror> {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        use std::sync::atomic::Ordering;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .create()?;
        let client = audit_server::search::client::SearchClient::new(search)?;
        client.install_template().await.map_err(|e| anyhow::anyhow!("template: {e}"))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<audit_api::StoredEvent>();
        let pending = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = pending.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(1000);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                let until = tokio::time::Instant::now() + Duration::from_millis(200);
                while batch.len() < 1000 {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(x)) => batch.push(x),
                        _ => break,
                    }
                }
                let n = batch.len() as u64;
                let events: Vec<audit_api::StoredEvent> = std::mem::take(&mut batch);
                let mut deliveries = Vec::with_capacity(events.len());
                for e in &events {
                    let value = serde_json::to_vec(e).unwrap_or_default();
                    let sequence = e.sequence.to_string();
                    let headers =
                        OwnedHeaders::new().insert(Header { key: "sequence", value: Some(sequence.as_bytes()) });
                    let record =
                        FutureRecord::to(CEILING_TOPIC).key(&e.metadata.tenant_id).payload(&value).headers(headers);
                    if let Ok(d) = producer.send_result(record) {
                        deliveries.push(d);
                    }
                }
                if let Err(e) = client.bulk(&events).await {
                    eprintln!("ceiling mirror: bulk failed: {e}");
                }
                for d in deliveries {
                    let _ = d.await;
                }
                counted.fetch_sub(n, Ordering::Relaxed);
            }
        });
        Ok(Mirror { tx: Acked { tx, pending: pending.clone() }, pending, _task: task })
    }

    /// Wait until every event handed to the mirror is published and indexed.
    async fn drain(&self) -> Result<()> {
        let start = Instant::now();
        while self.pending.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            if start.elapsed() > Duration::from_secs(300) {
                bail!("the ceiling mirror did not drain within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}
