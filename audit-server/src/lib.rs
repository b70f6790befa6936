//! The Audit Trail service as a library: [`spawn`] starts it in-process (tests, audctl's tests);
//! `main.rs` adds configuration from the environment, JSON logs and signal handling.

pub mod api;
pub mod appender;
pub mod chain;
pub mod checkpoint;
pub mod config;
pub mod event_cache;
pub mod integrity;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod redis_conn;
pub mod search;
pub mod serve;
pub mod shared_limit;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{ApiKeyConfig, Config};

use api::auth::{KeyRing, RateLimiter};
use api::{AppState, Inner};
use store::{Store, postgres::PgStore, sqlite::SqliteStore};

/// A started server.
pub struct RunningServer {
    addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    purger: JoinHandle<()>,
    outbox_upkeep: Option<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
    verifier: Option<JoinHandle<()>>,
    kafka: Option<ConsumerTasks>,
    search: Option<ConsumerTasks>,
    shutdown_delay: std::time::Duration,
    /// Set when no key was configured and a local one was generated (SQLite only).
    pub local_key_file: Option<PathBuf>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (loopback even when bound to 0.0.0.0).
    pub fn base_url(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { self.addr.ip().to_string() };
        format!("http://{ip}:{}", self.addr.port())
    }

    pub fn store_kind(&self) -> &'static str {
        self.state.store.kind()
    }

    /// The store's durability settings in force (see [`store::Store::durability`]).
    pub async fn durability(&self) -> Result<Vec<(String, String)>, store::StoreError> {
        self.state.store.durability().await
    }

    /// Graceful shutdown: readiness turns false, then (after the configured delay) the listener
    /// closes and in-flight requests, including their group-commit runs, finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(self.shutdown_delay).await;
        let _ = self.stop.send(true);
        let served = self.task.await.context("server task panicked")?;
        self.purger.abort();
        if let Some(u) = &self.outbox_upkeep {
            u.abort();
        }
        if let Some(p) = &self.publisher {
            p.abort();
        }
        if let Some(v) = &self.verifier {
            v.abort();
        }
        for c in [self.kafka, self.search].into_iter().flatten() {
            c.stop().await;
        }
        self.state.store.close().await;
        served.context("serving HTTP")
    }
}

/// An outbox consumer (the Kafka relay, the search indexer) and its lag sampler.
struct ConsumerTasks {
    /// This database's stream id (Kafka message header `stream`).
    stream: String,
    stop: watch::Sender<bool>,
    relay: JoinHandle<()>,
    lag: JoinHandle<()>,
}

impl ConsumerTasks {
    /// Stop the consumer (it gives its lease up, so another replica leads at once).
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.lag.abort();
        let mut relay = self.relay;
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut relay).await.is_err() {
            relay.abort();
        }
    }
}

/// Open the store of `config` (PostgreSQL, else SQLite in its data directory), migrating it.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    Ok(match &config.database_url {
        Some(url) => Store::Postgres(
            PgStore::connect(
                url,
                config.db_max_connections,
                config.append_lanes as u32,
                config.append_timeout,
                config.allow_async_commit,
            )
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", config::redact_url(url)))?,
        ),
        None => {
            create_private_dir(&config.data_dir)?;
            let path = config.sqlite_path();
            Store::Sqlite(
                SqliteStore::open(&path, config.db_max_connections, config.append_timeout)
                    .await
                    .with_context(|| format!("opening SQLite database {}", path.display()))?,
            )
        }
    })
}

/// Open the store (migrating it), bind the listener and start serving.
pub async fn spawn(config: Config) -> anyhow::Result<RunningServer> {
    let mut store = open_store(&config).await?;
    let mut key_configs = config.api_keys.clone();
    let mut local_key_file = None;
    if key_configs.is_empty() {
        if config.database_url.is_some() {
            anyhow::bail!(
                "no API keys configured: set AUDIT_API_KEYS or AUDIT_API_KEYS_FILE (see the audit-server README)"
            );
        }
        let (path, key) = local_key(&config)?;
        key_configs.push(ApiKeyConfig { name: Some("local".into()), ..ApiKeyConfig::plain(&key, &["*"]) });
        local_key_file = Some(path);
    }
    let keys = KeyRing::new(&key_configs)?;
    let consumers = u8::from(config.kafka.is_some()) + u8::from(config.search.is_some());
    if consumers > 0 {
        store.enable_outbox(consumers);
    }
    let store = Arc::new(store);
    let metrics = Arc::new(metrics::Metrics::default());
    let kafka = match &config.kafka {
        Some(k) => Some(start_kafka(k, &store, &metrics).await?),
        None => None,
    };
    let (search, search_client) = match &config.search {
        Some(c) => {
            let (tasks, client) = start_search(c, &store, &metrics).await?;
            (Some(tasks), Some(client))
        }
        None => (None, None),
    };
    let mut running = Vec::new();
    if config.kafka.is_some() {
        running.push(outbox::KAFKA);
    }
    if config.search.is_some() {
        running.push(search::SEARCH);
    }
    let outbox_upkeep =
        (!running.is_empty()).then(|| tokio::spawn(outbox_upkeep(store.clone(), metrics.clone(), running)));
    let limits = appender::Limits {
        max_run_events: config.group_commit_max_events,
        // SQLite has one writer: a second lane would only wait for the first one's lock.
        lanes: if config.database_url.is_some() { config.append_lanes } else { 1 },
        max_queued_events: config.append_queue_max_events,
        max_queued_bytes: config.append_queue_max_bytes,
    };
    let appender = appender::Appender::new(store.clone(), metrics.clone(), limits);
    let signer = match &config.signing_key_file {
        Some(path) => Some(checkpoint::Signer::from_pem_file(path, config.checkpoint_dir.clone())?),
        None if config.database_url.is_none() => {
            // Local runs: a generated key and checkpoints next to the database (see the README).
            let path = config.data_dir.join("checkpoint-key.pem");
            if !path.exists() {
                write_private(&path, &checkpoint::Signer::generate_pem()?)?;
            }
            let dir = config.checkpoint_dir.clone().unwrap_or_else(|| config.data_dir.join("checkpoints"));
            Some(checkpoint::Signer::from_pem_file(&path, Some(dir))?)
        }
        None => {
            tracing::warn!("no AUDIT_SIGNING_KEY_FILE: signed checkpoints are off (see the audit-server README)");
            None
        }
    };
    // Issue 25: checkpoints also go to the audit topic, beside the events, when Kafka is configured.
    let signer = match (signer, &config.kafka, &kafka) {
        (Some(s), Some(k), Some(tasks)) => Some(s.with_kafka(k, &tasks.stream)?),
        (s, _, _) => s,
    }
    .map(Arc::new);
    let redis = config.redis.as_ref().map(|r| anyhow::Ok((r, Arc::new(redis_conn::RedisConn::new(r)?)))).transpose()?;
    let limiter = match &redis {
        Some((settings, conn)) => {
            let where_ = match &settings.target {
                config::RedisTarget::Url(url) => config::redact_url(url),
                config::RedisTarget::Sentinel { sentinels, master_set } => {
                    format!("sentinels {} master set {master_set}", sentinels.join(","))
                }
            };
            tracing::info!(
                redis = %where_,
                rate_limit = config.rate_limit_per_second > 0.0,
                fail_open = settings.fail_open,
                event_cache_seconds = settings.event_cache.as_secs(),
                "Redis: shared rate limits (when a rate is set) and the GET-by-id cache"
            );
            RateLimiter::shared(
                config.rate_limit_per_second,
                config.rate_limit_burst,
                conn.clone(),
                settings.fail_open,
                metrics.clone(),
            )
        }
        None => RateLimiter::new(config.rate_limit_per_second, config.rate_limit_burst),
    };
    let event_cache = redis.as_ref().filter(|(settings, _)| !settings.event_cache.is_zero()).map(|(settings, conn)| {
        Arc::new(event_cache::EventCache::new(conn.clone(), settings.event_cache, metrics.clone()))
    });
    let state = AppState(Arc::new(Inner {
        store,
        appender,
        keys,
        limiter,
        metrics,
        draining: AtomicBool::new(false),
        request_timeout: config.request_timeout,
        signer: signer.clone(),
        event_cache,
        search: search_client,
    }));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (set AUDIT_LISTEN_ADDR)", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let app = api::router(state.clone());
    let limits =
        serve::Limits { header_read_timeout: config.header_read_timeout, max_connections: config.max_connections };
    let task = tokio::spawn(serve::serve(listener, app, limits, stopped));
    let purger = tokio::spawn(purge_idempotency(state.store.clone(), config.idempotency_retention));
    let publisher = match (&signer, config.checkpoint_interval) {
        (Some(signer), Some(every)) => {
            Some(tokio::spawn(checkpoint::publish_periodically(signer.clone(), state.store.clone(), every)))
        }
        _ => None,
    };
    let verifier = config.verify_interval.map(|every| {
        let schedule = integrity::Schedule { every, full_every: config.verify_full_interval };
        tokio::spawn(integrity::verify_periodically(
            state.store.clone(),
            signer.clone(),
            state.metrics.clone(),
            schedule,
        ))
    });
    tracing::info!(%addr, store = state.store.kind(), keys = state.keys.len(), "audit-server listening");
    Ok(RunningServer {
        addr,
        state,
        stop,
        task,
        purger,
        outbox_upkeep,
        publisher,
        verifier,
        kafka,
        search,
        shutdown_delay: config.shutdown_delay,
        local_key_file,
    })
}

/// Register the Kafka consumer of the outbox and start its relay and lag sampler.
async fn start_kafka(
    k: &config::KafkaConfig,
    store: &Arc<Store>,
    metrics: &Arc<metrics::Metrics>,
) -> anyhow::Result<ConsumerTasks> {
    let stream = store.outbox_register(outbox::KAFKA).await.context("registering the Kafka outbox consumer")?;
    let (stop, stopped) = watch::channel(false);
    let relay = outbox::kafka::Relay {
        store: store.clone(),
        metrics: metrics.clone(),
        config: k.clone(),
        stream: stream.clone(),
        holder: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4()),
    };
    let relay = tokio::spawn(relay.run(stopped));
    let lag = tokio::spawn(sample_lag(store.clone(), metrics.clone(), outbox::KAFKA, |m| {
        (&m.kafka.lag_events, &m.kafka.lag_seconds)
    }));
    tracing::info!(servers = %k.bootstrap_servers, topic = %k.topic, "publishing events to Kafka through the outbox");
    Ok(ConsumerTasks { stream, stop, relay, lag })
}

/// Register the search consumer of the outbox and start its indexer and lag sampler.
async fn start_search(
    c: &config::SearchConfig,
    store: &Arc<Store>,
    metrics: &Arc<metrics::Metrics>,
) -> anyhow::Result<(ConsumerTasks, Arc<search::client::SearchClient>)> {
    let client = Arc::new(search::client::SearchClient::new(c)?);
    let stream = store.outbox_register(search::SEARCH).await.context("registering the search outbox consumer")?;
    let (stop, stopped) = watch::channel(false);
    let indexer = search::indexer::Indexer {
        store: store.clone(),
        metrics: metrics.clone(),
        client: client.clone(),
        config: c.clone(),
        holder: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4()),
    };
    let relay = tokio::spawn(indexer.run(stopped));
    let lag = tokio::spawn(sample_lag(store.clone(), metrics.clone(), search::SEARCH, |m| {
        (&m.search.lag_events, &m.search.lag_seconds)
    }));
    tracing::info!(url = %config::redact_url(&c.url), prefix = %c.index_prefix, "indexing events for search through the outbox");
    Ok((ConsumerTasks { stream, stop, relay, lag }, client))
}

/// Every replica samples a consumer's lag from the database (not only its leader), every 2 s or
/// less often when counting is slow ([`next_sample`]): (events, age as f64 bits) into the gauges
/// `gauges` picks.
async fn sample_lag(
    store: Arc<Store>,
    metrics: Arc<metrics::Metrics>,
    consumer: &'static str,
    gauges: fn(&metrics::Metrics) -> (&std::sync::atomic::AtomicU64, &std::sync::atomic::AtomicU64),
) {
    loop {
        let started = std::time::Instant::now();
        let took = match store.outbox_lag(consumer).await {
            Ok((events, age, took)) => {
                let (count, seconds) = gauges(&metrics);
                count.store(events, Ordering::Relaxed);
                seconds.store(age.as_secs_f64().to_bits(), Ordering::Relaxed);
                took
            }
            Err(e) => {
                tracing::debug!(error = %e, consumer, "sampling the outbox lag failed");
                started.elapsed()
            }
        };
        tracing::debug!(consumer, took_ms = took.as_millis() as u64, "outbox lag sampled");
        tokio::time::sleep(next_sample(took)).await;
    }
}

/// When to sample the outbox again, after a sample that took `took`: every 2 s, but never more
/// than 5% of the time. The count grows with the backlog, so during a long Kafka or search
/// outage (millions of rows) every replica counting every 2 s would load the database most
/// exactly when it already holds the most rows; the gauges then update less often instead.
///
/// At most every 30 s though: the gauges are what the lag alerts read, and a count slowed once
/// (a CPU-starved host) must not leave them stale for minutes. It did: a search lag gauge stayed
/// at 60,201 for over five minutes after the indexer had drained, and a CI run saw the Kafka lag
/// gauge still above 0 a minute after every event was on the topic.
pub(crate) fn next_sample(took: std::time::Duration) -> std::time::Duration {
    (took * 19).clamp(std::time::Duration::from_secs(2), std::time::Duration::from_secs(30))
}

/// Every replica with the outbox on: warn at start about consumers registered in the database
/// that this replica does not run (their cursors hold rows back), then sample the outbox's size
/// every 2 s (less often when counting is slow, see [`next_sample`]) and purge every passed row
/// every 10 s or so (see [`Store::outbox_purge_passed`]).
async fn outbox_upkeep(store: Arc<Store>, metrics: Arc<metrics::Metrics>, running: Vec<&'static str>) {
    match store.outbox_consumers().await {
        Ok(registered) => {
            for c in registered.iter().filter(|c| !running.contains(&c.as_str())) {
                tracing::warn!(
                    consumer = %c,
                    unregister = %format!(
                        "DELETE FROM outbox_cursors WHERE consumer = '{c}'; DELETE FROM outbox_consumers WHERE consumer = '{c}'; \
                         DELETE FROM outbox WHERE consumer = '{c}'"
                    ),
                    "an outbox consumer is registered in the database but not configured on this replica: its outbox \
                     rows are kept until it passes them (audit_outbox_rows grows); if it was removed for good, unregister it"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing the outbox consumers failed"),
    }
    let mut last_purge = std::time::Instant::now();
    loop {
        let started = std::time::Instant::now();
        if last_purge.elapsed() >= std::time::Duration::from_secs(10) {
            last_purge = started;
            if let Err(e) = store.outbox_purge_passed().await {
                tracing::debug!(error = %e, "purging passed outbox rows failed");
            }
        }
        match store.outbox_rows().await {
            Ok(rows) => metrics.outbox_rows.store(rows, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "sampling the outbox size failed"),
        }
        tokio::time::sleep(next_sample(started.elapsed())).await;
    }
}

/// Forget Idempotency-Keys older than their retention, every quarter of it (at most hourly).
async fn purge_idempotency(store: Arc<Store>, retention: std::time::Duration) {
    let every = (retention / 4).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(3600));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(retention) = chrono::Duration::from_std(retention) else { return };
        match store.purge_idempotency(chain::now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired idempotency records deleted"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency records failed"),
        }
    }
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data directory {} (set AUDIT_DATA_DIR)", dir.display()))
}

/// Write a file readable by the owner only.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The generated local key (kept across restarts in the data directory, readable by the owner only).
fn local_key(config: &Config) -> anyhow::Result<(PathBuf, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config.local_key_path();
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let key = existing.trim().to_owned();
        if !key.is_empty() {
            return Ok((path, key));
        }
    }
    // Two v4 UUIDs: 244 random bits from the OS generator.
    let key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing the local API key to {}", path.display()))?;
    writeln!(file, "{key}")?;
    Ok((path, key))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::next_sample;

    #[test]
    fn slow_outbox_counts_are_sampled_at_most_5_percent_of_the_time() {
        assert_eq!(next_sample(Duration::from_millis(3)), Duration::from_secs(2));
        assert_eq!(next_sample(Duration::from_millis(105)), Duration::from_secs(2));
        // A 1 s count (a backlog of millions) waits 19 s: 1 s counting in every 20.
        assert_eq!(next_sample(Duration::from_secs(1)), Duration::from_secs(19));
        // Never less often than every 30 s: the alerts read these gauges.
        assert_eq!(next_sample(Duration::from_millis(1500)), Duration::from_millis(28_500));
        assert_eq!(next_sample(Duration::from_millis(2500)), Duration::from_secs(30));
        assert_eq!(next_sample(Duration::from_secs(60)), Duration::from_secs(30));
    }
}
