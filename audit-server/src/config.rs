//! Configuration: an optional YAML file (`AUDIT_CONFIG_FILE`) overridden by environment variables.
//! Every variable is documented in the crate README.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One API key: who may use it for which tenants. Give `sha256` (hex of the key) in configuration;
/// `key` (the plain key, e.g. from a mounted Secret) is hashed on load and never kept.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Tenant ids this key may read and write; `*` allows every tenant.
    pub tenants: Vec<String>,
}

impl ApiKeyConfig {
    /// A key with its plain value (hashed when the server starts).
    pub fn plain(key: &str, tenants: &[&str]) -> Self {
        ApiKeyConfig {
            name: None,
            key: Some(key.to_owned()),
            sha256: None,
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    /// The SHA-256 digest the server matches `X-API-Key` against.
    pub fn digest(&self) -> anyhow::Result<[u8; 32]> {
        match (&self.key, &self.sha256) {
            (Some(key), None) => Ok(Sha256::digest(key.as_bytes()).into()),
            (None, Some(hex_digest)) => {
                let bytes = hex::decode(hex_digest.trim())
                    .ok()
                    .filter(|b| b.len() == 32)
                    .with_context(|| format!("API key {:?}: sha256 must be 64 hex digits", self.label()))?;
                let mut out = [0u8; 32];
                out.copy_from_slice(&bytes);
                Ok(out)
            }
            _ => bail!("API key {:?}: give exactly one of `key` and `sha256`", self.label()),
        }
    }

    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("for {}", self.tenants.join("|")))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `AUDIT_LISTEN_ADDR`, default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// `DATABASE_URL`: PostgreSQL. Unset: SQLite in the data directory.
    pub database_url: Option<String>,
    /// `AUDIT_DATA_DIR`: the only place the server writes (SQLite file, generated local key).
    pub data_dir: PathBuf,
    /// `AUDIT_API_KEYS` / `AUDIT_API_KEYS_FILE` / `apiKeys` in the file.
    pub api_keys: Vec<ApiKeyConfig>,
    /// `AUDIT_DB_MAX_CONNECTIONS`, default 10.
    pub db_max_connections: u32,
    /// `AUDIT_RATE_LIMIT_PER_SECOND` per API key, 0 (default) disables; `AUDIT_RATE_LIMIT_BURST`.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    /// `AUDIT_SHUTDOWN_DELAY_SECONDS`: after SIGTERM, report not-ready this long before closing the
    /// listener, so load balancers stop sending traffic first. Default 0.
    pub shutdown_delay: Duration,
    /// `AUDIT_REQUEST_TIMEOUT_SECONDS`, default 30 (503 after that).
    pub request_timeout: Duration,
    /// `AUDIT_GROUP_COMMIT_MAX_EVENTS`: most events in one append transaction, default 5000.
    pub group_commit_max_events: usize,
    /// `AUDIT_APPEND_LANES`: append transactions in flight at once for disjoint tenants, each on a
    /// connection reserved for appends (PostgreSQL; SQLite has one writer), default 4.
    pub append_lanes: usize,
    /// `AUDIT_APPEND_TIMEOUT_SECONDS`: lock_timeout and statement_timeout of append transactions
    /// (SQLite: its busy timeout), default 10. Beyond it the append fails with 503, nothing stored.
    pub append_timeout: Duration,
    /// `AUDIT_APPEND_QUEUE_MAX_EVENTS` / `AUDIT_APPEND_QUEUE_MAX_BYTES`: events and request bytes
    /// waiting for a transaction beyond which appends are shed with 503, default 50000 / 64 MiB.
    pub append_queue_max_events: usize,
    pub append_queue_max_bytes: usize,
    /// `AUDIT_HEADER_READ_TIMEOUT_SECONDS`: time to receive a request's headers, default 10; a
    /// slower client (slowloris) has its connection closed.
    pub header_read_timeout: Duration,
    /// `AUDIT_MAX_CONNECTIONS`: open HTTP connections at most, default 1024.
    pub max_connections: usize,
    /// `AUDIT_IDEMPOTENCY_RETENTION_SECONDS`: how long an Idempotency-Key is remembered, default
    /// 86400 (24 h); older records are purged in the background.
    pub idempotency_retention: Duration,
    /// `AUDIT_ALLOW_ASYNC_COMMIT`: start even when PostgreSQL's `synchronous_commit` is `off`
    /// (a 201 could then be lost in a crash), with a warning. Default false: refuse to start.
    pub allow_async_commit: bool,
    /// `AUDIT_SIGNING_KEY_FILE`: PEM PKCS#8 Ed25519 key that signs checkpoints (`openssl genpkey
    /// -algorithm ed25519`). Unset: generated in the data directory on SQLite, off on PostgreSQL.
    pub signing_key_file: Option<PathBuf>,
    /// `AUDIT_CHECKPOINT_DIR`: where checkpoints are published (outside the database).
    pub checkpoint_dir: Option<PathBuf>,
    /// `AUDIT_CHECKPOINT_INTERVAL_SECONDS`: publish moved heads this often, default 300; 0 = only on demand.
    pub checkpoint_interval: Option<Duration>,
    /// `AUDIT_VERIFY_INTERVAL_SECONDS`: the background verifier walks every tenant's chain this
    /// often (result in the `audit_integrity_*` metrics); 0 or unset (default): off.
    pub verify_interval: Option<Duration>,
    /// `AUDIT_VERIFY_FULL_INTERVAL_SECONDS`: a background pass walks every chain from its first
    /// event when the last full one is older than this (default 86400); the others start at the
    /// last verified position.
    pub verify_full_interval: Duration,
    /// `AUDIT_KAFKA_BOOTSTRAP_SERVERS` and the other `AUDIT_KAFKA_*`: publish every stored event to
    /// Kafka through the outbox (src/outbox). Unset: off, no outbox rows are written.
    pub kafka: Option<KafkaConfig>,
    /// `AUDIT_SEARCH_*` (`search*` in the file): index events into Elasticsearch/OpenSearch and
    /// answer `POST /api/v1/search` from it. Unset: search answers from the database.
    pub search: Option<SearchConfig>,
    /// `AUDIT_REDIS_*` / `redis` in the file: rate limits shared by every replica. Unset: in-process.
    pub redis: Option<RedisConfig>,
}

/// Where the shared rate limits live and what to do when Redis does not answer.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// `AUDIT_REDIS_PASSWORD` or `AUDIT_REDIS_PASSWORD_FILE` (`passwordFile`): of the data nodes and
    /// the sentinels (the chart uses one).
    pub password: Option<Password>,
    /// `AUDIT_REDIS_FAILURE_MODE`: `open` (default: requests go through unlimited) or `closed` (503).
    pub fail_open: bool,
    /// `AUDIT_REDIS_TIMEOUT_SECONDS`: longest wait for Redis per request, default 0.5.
    pub timeout: Duration,
    /// `AUDIT_REDIS_EVENT_CACHE_SECONDS` (`eventCacheSeconds`): how long GET by id keeps an event
    /// in Redis, default 60; 0 turns the cache off.
    pub event_cache: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// `AUDIT_REDIS_URL` (`url`): one server, `redis://[:password@]host:port[/db]`.
    Url(String),
    /// `AUDIT_REDIS_SENTINELS` (`sentinels`, comma-separated HOST:PORT) and `AUDIT_REDIS_MASTER_SET`
    /// (`masterSet`, default `mymaster`).
    Sentinel { sentinels: Vec<String>, master_set: String },
}

/// A secret that `{:?}` does not print.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Password(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The `redis` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
    sentinels: Option<Vec<String>>,
    master_set: Option<String>,
    password_file: Option<PathBuf>,
    failure_mode: Option<String>,
    timeout_seconds: Option<f64>,
    event_cache_seconds: Option<u64>,
}

/// The Kafka event stream (see the README's Kafka section).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `AUDIT_KAFKA_BOOTSTRAP_SERVERS` (`kafkaBootstrapServers`): `host:port,host:port`.
    pub bootstrap_servers: String,
    /// `AUDIT_KAFKA_TOPIC` (`kafkaTopic`), default `audit-events`.
    pub topic: String,
    /// `AUDIT_KAFKA_LEASE_SECONDS` (`kafkaLeaseSeconds`), default 30: the relay lease; after a
    /// crash another replica takes over within it.
    pub lease: Duration,
    /// `AUDIT_KAFKA_BATCH_MAX_EVENTS` (`kafkaBatchMaxEvents`), default 1000: events per relay batch.
    pub batch_max_events: usize,
    /// `AUDIT_KAFKA_POLL_INTERVAL_SECONDS` (`kafkaPollIntervalSeconds`), default 0.05: how often an
    /// idle relay looks for new outbox rows.
    pub poll_interval: Duration,
    /// `AUDIT_KAFKA_PROPERTIES` (`kafkaProperties`): more librdkafka properties (TLS, SASL, ...),
    /// `;`-separated `key=value` (file: a map). Values are never logged.
    pub properties: Vec<(String, String)>,
}

/// The search index (see the README's Search section).
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// `AUDIT_SEARCH_URL` (`searchUrl`): `https://host:9200` (credentials go in the settings below).
    pub url: String,
    /// `AUDIT_SEARCH_INDEX_PREFIX` (`searchIndexPrefix`), default `audit-events`: monthly indices
    /// `<prefix>-YYYY.MM` and the index template `<prefix>`.
    pub index_prefix: String,
    /// `AUDIT_SEARCH_USERNAME` (`searchUsername`) and `AUDIT_SEARCH_PASSWORD` or
    /// `AUDIT_SEARCH_PASSWORD_FILE` (`searchPasswordFile`): basic authentication.
    pub username: Option<String>,
    pub password: Option<Password>,
    /// `AUDIT_SEARCH_CA_FILE` (`searchCaFile`): PEM CA the server's certificate must chain to
    /// (default: the system's roots; the certificate is always verified).
    pub ca_file: Option<PathBuf>,
    /// `AUDIT_SEARCH_TIMEOUT_SECONDS` (`searchTimeoutSeconds`), default 5: per request to the
    /// cluster; a search that takes longer is answered from the database.
    pub timeout: Duration,
    /// `AUDIT_SEARCH_BATCH_MAX_EVENTS`, default 1000: events per bulk request.
    pub batch_max_events: usize,
    /// `searchIndexSettings` (file only): index settings of the template (shards, replicas,
    /// refresh interval...), e.g. `{"index.number_of_shards": "3"}`.
    pub index_settings: serde_json::Map<String, serde_json::Value>,
    /// The indexer's lease (as the Kafka relay's) and how often an idle indexer looks for rows.
    pub lease: Duration,
    pub poll_interval: Duration,
}

impl SearchConfig {
    pub fn new(url: impl Into<String>) -> Self {
        SearchConfig {
            url: url.into(),
            index_prefix: "audit-events".into(),
            username: None,
            password: None,
            ca_file: None,
            timeout: Duration::from_secs(5),
            batch_max_events: 1000,
            index_settings: serde_json::Map::new(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// librdkafka properties the relay's guarantees depend on (src/outbox/kafka.rs): not overridable.
const KAFKA_FIXED: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "partitioner",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "retries",
    "message.send.max.retries",
    "transactional.id",
];

impl KafkaConfig {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic: "audit-events".into(),
            lease: Duration::from_secs(30),
            batch_max_events: 1000,
            poll_interval: Duration::from_millis(50),
            properties: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    api_keys: Option<Vec<ApiKeyConfig>>,
    db_max_connections: Option<u32>,
    rate_limit_per_second: Option<f64>,
    rate_limit_burst: Option<u32>,
    shutdown_delay_seconds: Option<f64>,
    request_timeout_seconds: Option<f64>,
    group_commit_max_events: Option<usize>,
    append_lanes: Option<usize>,
    append_timeout_seconds: Option<f64>,
    append_queue_max_events: Option<usize>,
    append_queue_max_bytes: Option<usize>,
    header_read_timeout_seconds: Option<f64>,
    max_connections: Option<usize>,
    idempotency_retention_seconds: Option<f64>,
    allow_async_commit: Option<bool>,
    signing_key_file: Option<PathBuf>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_interval_seconds: Option<f64>,
    verify_interval_seconds: Option<f64>,
    verify_full_interval_seconds: Option<f64>,
    kafka_bootstrap_servers: Option<String>,
    kafka_topic: Option<String>,
    kafka_lease_seconds: Option<f64>,
    kafka_batch_max_events: Option<usize>,
    kafka_poll_interval_seconds: Option<f64>,
    kafka_properties: Option<std::collections::BTreeMap<String, String>>,
    search_url: Option<String>,
    search_index_prefix: Option<String>,
    search_username: Option<String>,
    search_password_file: Option<PathBuf>,
    search_ca_file: Option<PathBuf>,
    search_timeout_seconds: Option<f64>,
    search_index_settings: Option<serde_json::Map<String, serde_json::Value>>,
    redis: Option<FileRedis>,
}

impl Config {
    /// Defaults for a local run: SQLite under `data_dir`, no keys (a local key gets generated).
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            database_url: None,
            data_dir: data_dir.into(),
            api_keys: Vec::new(),
            db_max_connections: 10,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 0,
            shutdown_delay: Duration::ZERO,
            request_timeout: Duration::from_secs(30),
            group_commit_max_events: 5000,
            append_lanes: 4,
            append_timeout: Duration::from_secs(10),
            append_queue_max_events: 50_000,
            append_queue_max_bytes: 64 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            idempotency_retention: Duration::from_secs(24 * 3600),
            allow_async_commit: false,
            signing_key_file: None,
            checkpoint_dir: None,
            checkpoint_interval: Some(Duration::from_secs(300)),
            verify_interval: None,
            verify_full_interval: Duration::from_secs(24 * 3600),
            kafka: None,
            search: None,
            redis: None,
        }
    }

    /// Read the optional file, then the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let file = match env("AUDIT_CONFIG_FILE") {
            Some(path) => {
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading AUDIT_CONFIG_FILE {path}"))?;
                serde_yaml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing AUDIT_CONFIG_FILE {path}"))?
            }
            None => FileConfig::default(),
        };
        let kafka = kafka_config(&file, &env)?;
        let mut c = Config::local(file.data_dir.clone().unwrap_or_else(default_data_dir));
        c.kafka = kafka;
        c.search = search_config(&file, &env)?;
        c.listen = file.listen.unwrap_or(c.listen);
        c.database_url = file.database_url;
        c.api_keys = file.api_keys.unwrap_or_default();
        c.db_max_connections = file.db_max_connections.unwrap_or(c.db_max_connections);
        c.rate_limit_per_second = file.rate_limit_per_second.unwrap_or(0.0);
        c.rate_limit_burst = file.rate_limit_burst.unwrap_or(0);
        c.shutdown_delay = file.shutdown_delay_seconds.map(secs).transpose()?.unwrap_or(c.shutdown_delay);
        c.request_timeout = file.request_timeout_seconds.map(secs).transpose()?.unwrap_or(c.request_timeout);
        c.group_commit_max_events = file.group_commit_max_events.unwrap_or(c.group_commit_max_events);
        c.append_lanes = file.append_lanes.unwrap_or(c.append_lanes);
        c.append_timeout = file.append_timeout_seconds.map(secs).transpose()?.unwrap_or(c.append_timeout);
        c.append_queue_max_events = file.append_queue_max_events.unwrap_or(c.append_queue_max_events);
        c.append_queue_max_bytes = file.append_queue_max_bytes.unwrap_or(c.append_queue_max_bytes);
        c.header_read_timeout =
            file.header_read_timeout_seconds.map(secs).transpose()?.unwrap_or(c.header_read_timeout);
        c.max_connections = file.max_connections.unwrap_or(c.max_connections);
        c.idempotency_retention =
            file.idempotency_retention_seconds.map(secs).transpose()?.unwrap_or(c.idempotency_retention);
        c.allow_async_commit = file.allow_async_commit.unwrap_or(c.allow_async_commit);
        c.signing_key_file = file.signing_key_file;
        c.checkpoint_dir = file.checkpoint_dir;
        if let Some(s) = file.checkpoint_interval_seconds {
            c.checkpoint_interval = (s > 0.0).then(|| secs(s)).transpose()?;
        }
        if let Some(s) = file.verify_interval_seconds {
            c.verify_interval = (s > 0.0).then(|| secs(s)).transpose()?;
        }
        if let Some(s) = file.verify_full_interval_seconds {
            c.verify_full_interval = secs(s)?;
        }
        let file_redis = file.redis.unwrap_or_default();

        if let Some(v) = env("AUDIT_LISTEN_ADDR") {
            c.listen = v
                .parse()
                .with_context(|| format!("AUDIT_LISTEN_ADDR={v:?}: expected HOST:PORT such as 0.0.0.0:8080"))?;
        }
        if let Some(v) = env("DATABASE_URL").filter(|v| !v.is_empty()) {
            c.database_url = Some(v);
        }
        if let Some(v) = env("AUDIT_DATA_DIR") {
            c.data_dir = PathBuf::from(v);
        }
        if let Some(path) = env("AUDIT_API_KEYS_FILE") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading AUDIT_API_KEYS_FILE {path}"))?;
            let keys: Vec<ApiKeyConfig> = serde_yaml::from_str(&text).with_context(|| {
                format!("parsing AUDIT_API_KEYS_FILE {path}: expected a list of {{name, sha256|key, tenants}}")
            })?;
            c.api_keys.extend(keys);
        }
        if let Some(v) = env("AUDIT_API_KEYS") {
            c.api_keys.extend(parse_inline_keys(&v)?);
        }
        c.db_max_connections = number(&env, "AUDIT_DB_MAX_CONNECTIONS")?.unwrap_or(c.db_max_connections);
        c.rate_limit_per_second = number(&env, "AUDIT_RATE_LIMIT_PER_SECOND")?.unwrap_or(c.rate_limit_per_second);
        c.rate_limit_burst = number(&env, "AUDIT_RATE_LIMIT_BURST")?.unwrap_or(c.rate_limit_burst);
        if let Some(s) = number::<f64>(&env, "AUDIT_SHUTDOWN_DELAY_SECONDS")? {
            c.shutdown_delay = secs(s)?;
        }
        if let Some(s) = number::<f64>(&env, "AUDIT_REQUEST_TIMEOUT_SECONDS")? {
            c.request_timeout = secs(s)?;
        }
        c.group_commit_max_events = number(&env, "AUDIT_GROUP_COMMIT_MAX_EVENTS")?.unwrap_or(c.group_commit_max_events);
        c.append_lanes = number(&env, "AUDIT_APPEND_LANES")?.unwrap_or(c.append_lanes);
        if let Some(s) = number::<f64>(&env, "AUDIT_APPEND_TIMEOUT_SECONDS")? {
            c.append_timeout = secs(s)?;
        }
        c.append_queue_max_events = number(&env, "AUDIT_APPEND_QUEUE_MAX_EVENTS")?.unwrap_or(c.append_queue_max_events);
        c.append_queue_max_bytes = number(&env, "AUDIT_APPEND_QUEUE_MAX_BYTES")?.unwrap_or(c.append_queue_max_bytes);
        if let Some(s) = number::<f64>(&env, "AUDIT_HEADER_READ_TIMEOUT_SECONDS")? {
            c.header_read_timeout = secs(s)?;
        }
        c.max_connections = number(&env, "AUDIT_MAX_CONNECTIONS")?.unwrap_or(c.max_connections);
        if let Some(s) = number::<f64>(&env, "AUDIT_IDEMPOTENCY_RETENTION_SECONDS")? {
            c.idempotency_retention = secs(s)?;
        }
        if let Some(v) = env("AUDIT_ALLOW_ASYNC_COMMIT") {
            c.allow_async_commit = match v.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" | "" => false,
                _ => bail!("AUDIT_ALLOW_ASYNC_COMMIT={v:?}: expected true or false"),
            };
        }
        if let Some(v) = env("AUDIT_SIGNING_KEY_FILE").filter(|v| !v.is_empty()) {
            c.signing_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("AUDIT_CHECKPOINT_DIR").filter(|v| !v.is_empty()) {
            c.checkpoint_dir = Some(PathBuf::from(v));
        }
        if let Some(s) = number::<f64>(&env, "AUDIT_CHECKPOINT_INTERVAL_SECONDS")? {
            c.checkpoint_interval = (s > 0.0).then(|| secs(s)).transpose()?;
        }
        if let Some(s) = number::<f64>(&env, "AUDIT_VERIFY_INTERVAL_SECONDS")? {
            c.verify_interval = (s > 0.0).then(|| secs(s)).transpose()?;
        }
        if let Some(s) = number::<f64>(&env, "AUDIT_VERIFY_FULL_INTERVAL_SECONDS")? {
            c.verify_full_interval = secs(s)?;
        }
        c.redis = redis_config(&env, file_redis)?;
        if c.idempotency_retention.is_zero() {
            bail!("AUDIT_IDEMPOTENCY_RETENTION_SECONDS must be above 0");
        }
        if c.header_read_timeout.is_zero() || c.max_connections == 0 {
            bail!("AUDIT_HEADER_READ_TIMEOUT_SECONDS and AUDIT_MAX_CONNECTIONS must be above 0");
        }
        if c.append_lanes == 0 {
            bail!("AUDIT_APPEND_LANES must be at least 1");
        }
        if c.append_timeout.is_zero() {
            bail!("AUDIT_APPEND_TIMEOUT_SECONDS must be above 0");
        }
        if c.db_max_connections == 0 {
            bail!("AUDIT_DB_MAX_CONNECTIONS must be at least 1");
        }
        Ok(c)
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("audit.db")
    }

    pub fn local_key_path(&self) -> PathBuf {
        self.data_dir.join("local-api-key")
    }
}

/// The search settings of the file, overridden by `AUDIT_SEARCH_*`; None without a URL.
fn search_config(file: &FileConfig, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<SearchConfig>> {
    let nonempty = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let Some(url) = nonempty("AUDIT_SEARCH_URL").or_else(|| file.search_url.clone()) else {
        return Ok(None);
    };
    let parsed =
        reqwest::Url::parse(&url).map_err(|e| anyhow::anyhow!("AUDIT_SEARCH_URL {}: {e}", redact_url(&url)))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() || parsed.password().is_some() {
        bail!(
            "AUDIT_SEARCH_URL {}: expected http(s)://host:port without credentials (use AUDIT_SEARCH_USERNAME and \
             AUDIT_SEARCH_PASSWORD_FILE)",
            redact_url(&url)
        );
    }
    let mut s = SearchConfig::new(url);
    if let Some(p) = nonempty("AUDIT_SEARCH_INDEX_PREFIX").or_else(|| file.search_index_prefix.clone()) {
        let ok = !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !ok || p.starts_with(['-', '_', '.']) {
            bail!(
                "AUDIT_SEARCH_INDEX_PREFIX={p:?}: expected lowercase letters, digits, '-', '_' or '.' (an index name)"
            );
        }
        s.index_prefix = p;
    }
    s.username = nonempty("AUDIT_SEARCH_USERNAME").or_else(|| file.search_username.clone());
    let password_file =
        nonempty("AUDIT_SEARCH_PASSWORD_FILE").map(PathBuf::from).or_else(|| file.search_password_file.clone());
    s.password = match (env("AUDIT_SEARCH_PASSWORD").filter(|p| !p.is_empty()), password_file) {
        (Some(p), _) => Some(Password(p)),
        (None, Some(path)) => Some(Password(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading AUDIT_SEARCH_PASSWORD_FILE {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        )),
        (None, None) => None,
    };
    if s.password.is_some() != s.username.is_some() {
        bail!("AUDIT_SEARCH_USERNAME and AUDIT_SEARCH_PASSWORD(_FILE) go together");
    }
    s.ca_file = nonempty("AUDIT_SEARCH_CA_FILE").map(PathBuf::from).or_else(|| file.search_ca_file.clone());
    if let Some(t) = number::<f64>(env, "AUDIT_SEARCH_TIMEOUT_SECONDS")?.or(file.search_timeout_seconds) {
        if t <= 0.0 {
            bail!("AUDIT_SEARCH_TIMEOUT_SECONDS must be above 0");
        }
        s.timeout = secs(t)?;
    }
    s.batch_max_events = number(env, "AUDIT_SEARCH_BATCH_MAX_EVENTS")?.unwrap_or(s.batch_max_events);
    s.index_settings = file.search_index_settings.clone().unwrap_or_default();
    if s.batch_max_events == 0 {
        bail!("AUDIT_SEARCH_BATCH_MAX_EVENTS must be above 0");
    }
    Ok(Some(s))
}

/// The Kafka settings of the file, overridden by `AUDIT_KAFKA_*`; None without bootstrap servers.
fn kafka_config(file: &FileConfig, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<KafkaConfig>> {
    let servers = env("AUDIT_KAFKA_BOOTSTRAP_SERVERS").or_else(|| file.kafka_bootstrap_servers.clone());
    let Some(servers) = servers.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let mut k = KafkaConfig::new(servers);
    if let Some(t) = env("AUDIT_KAFKA_TOPIC").or_else(|| file.kafka_topic.clone()) {
        k.topic = t.trim().to_owned();
    }
    let lease = number::<f64>(env, "AUDIT_KAFKA_LEASE_SECONDS")?.or(file.kafka_lease_seconds);
    if let Some(s) = lease {
        k.lease = secs(s)?;
    }
    k.batch_max_events =
        number(env, "AUDIT_KAFKA_BATCH_MAX_EVENTS")?.or(file.kafka_batch_max_events).unwrap_or(k.batch_max_events);
    if let Some(s) = number::<f64>(env, "AUDIT_KAFKA_POLL_INTERVAL_SECONDS")?.or(file.kafka_poll_interval_seconds) {
        k.poll_interval = secs(s)?;
    }
    k.properties = file.kafka_properties.clone().unwrap_or_default().into_iter().collect();
    if let Some(v) = env("AUDIT_KAFKA_PROPERTIES") {
        for (i, entry) in v.split(';').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let Some((key, value)) = entry.split_once('=') else {
                bail!("AUDIT_KAFKA_PROPERTIES entry {}: expected key=value (e.g. security.protocol=SSL)", i + 1);
            };
            k.properties.retain(|(existing, _)| existing != key.trim());
            k.properties.push((key.trim().to_owned(), value.to_owned()));
        }
    }
    if let Some((key, _)) = k.properties.iter().find(|(key, _)| KAFKA_FIXED.contains(&key.as_str())) {
        bail!(
            "Kafka property {key} cannot be configured: the relay sets it (idempotent producer, acks=all, no message \
             timeout; see the audit-server README)"
        );
    }
    if k.topic.is_empty() {
        bail!("AUDIT_KAFKA_TOPIC must not be empty");
    }
    if k.lease < Duration::from_secs(2) {
        bail!("AUDIT_KAFKA_LEASE_SECONDS must be at least 2");
    }
    if k.batch_max_events == 0 || k.poll_interval.is_zero() {
        bail!("AUDIT_KAFKA_BATCH_MAX_EVENTS and AUDIT_KAFKA_POLL_INTERVAL_SECONDS must be above 0");
    }
    Ok(Some(k))
}

/// The `redis` file section overridden by `AUDIT_REDIS_*`; None when neither names a server.
fn redis_config(env: &impl Fn(&str) -> Option<String>, file: FileRedis) -> anyhow::Result<Option<RedisConfig>> {
    let nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let url = nonempty("AUDIT_REDIS_URL").or(file.url);
    let sentinels = match nonempty("AUDIT_REDIS_SENTINELS") {
        Some(v) => Some(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()),
        None => file.sentinels,
    };
    let master_set = nonempty("AUDIT_REDIS_MASTER_SET").or(file.master_set).unwrap_or_else(|| "mymaster".into());
    let target = match (url, sentinels) {
        (Some(_), Some(_)) => bail!("AUDIT_REDIS_URL and AUDIT_REDIS_SENTINELS are exclusive: give one"),
        (Some(url), None) => RedisTarget::Url(url),
        (None, Some(sentinels)) if sentinels.is_empty() => bail!("AUDIT_REDIS_SENTINELS is empty"),
        (None, Some(sentinels)) => RedisTarget::Sentinel { sentinels, master_set },
        (None, None) => {
            if nonempty("AUDIT_REDIS_FAILURE_MODE").is_some() || nonempty("AUDIT_REDIS_PASSWORD_FILE").is_some() {
                bail!("AUDIT_REDIS_* settings given without AUDIT_REDIS_URL or AUDIT_REDIS_SENTINELS");
            }
            return Ok(None);
        }
    };
    let password_file = nonempty("AUDIT_REDIS_PASSWORD_FILE").map(PathBuf::from).or(file.password_file);
    let password = match (nonempty("AUDIT_REDIS_PASSWORD"), password_file) {
        (Some(p), _) => Some(p),
        (None, Some(path)) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading AUDIT_REDIS_PASSWORD_FILE {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        (None, None) => None,
    };
    let fail_open = match nonempty("AUDIT_REDIS_FAILURE_MODE").or(file.failure_mode).as_deref().map(str::trim) {
        None | Some("open") => true,
        Some("closed") => false,
        Some(v) => bail!("AUDIT_REDIS_FAILURE_MODE={v:?}: expected open or closed"),
    };
    let timeout = match number::<f64>(env, "AUDIT_REDIS_TIMEOUT_SECONDS")?.or(file.timeout_seconds) {
        Some(s) if s > 0.0 => secs(s)?,
        Some(_) => bail!("AUDIT_REDIS_TIMEOUT_SECONDS must be above 0"),
        None => Duration::from_millis(500),
    };
    let event_cache = Duration::from_secs(
        number::<u64>(env, "AUDIT_REDIS_EVENT_CACHE_SECONDS")?.or(file.event_cache_seconds).unwrap_or(60),
    );
    Ok(Some(RedisConfig { target, password: password.map(Password), fail_open, timeout, event_cache }))
}

/// `$XDG_DATA_HOME/audit-server`, else `~/.local/share/audit-server`, else `./audit-data`.
fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&d).join("audit-server");
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".local/share/audit-server"),
        None => PathBuf::from("audit-data"),
    }
}

/// `AUDIT_API_KEYS`: entries separated by `;`, each `TENANTS=KEY` where TENANTS is `|`-separated
/// (`*` for all) and KEY is `sha256:<64 hex>` or the plain key.
pub fn parse_inline_keys(text: &str) -> anyhow::Result<Vec<ApiKeyConfig>> {
    let mut out = Vec::new();
    for (i, entry) in text.split(';').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
        let Some((tenants, key)) = entry.split_once('=') else {
            bail!("AUDIT_API_KEYS entry {}: expected TENANTS=KEY (e.g. acme|globex=sha256:<hex>)", i + 1);
        };
        let tenants: Vec<String> =
            tenants.split('|').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        if tenants.is_empty() || key.is_empty() {
            bail!("AUDIT_API_KEYS entry {}: tenants and key must not be empty", i + 1);
        }
        let mut k = ApiKeyConfig { name: Some(format!("AUDIT_API_KEYS#{}", i + 1)), tenants, ..Default::default() };
        match key.strip_prefix("sha256:") {
            Some(hex_digest) => k.sha256 = Some(hex_digest.to_owned()),
            None => k.key = Some(key.to_owned()),
        }
        k.digest()?;
        out.push(k);
    }
    Ok(out)
}

fn number<T: std::str::FromStr>(env: &impl Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<Option<T>> {
    env(name)
        .map(|v| v.trim().parse::<T>().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number")))
        .transpose()
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("{s} is not a valid number of seconds"))
}

/// `postgres://user:secret@host/db?password=x` -> `postgres://user:***@host/db?password=***`, for
/// logs: the userinfo password and the `password` / `sslpassword` query parameters.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_inline_keys() {
        let env = |k: &str| match k {
            "AUDIT_LISTEN_ADDR" => Some("127.0.0.1:9000".to_owned()),
            "AUDIT_API_KEYS" => Some(format!("acme|globex=s3cret; *=sha256:{}", "ab".repeat(32))),
            "AUDIT_DB_MAX_CONNECTIONS" => Some("4".to_owned()),
            _ => None,
        };
        let c = Config::from_lookup(env).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.db_max_connections, 4);
        assert_eq!(c.api_keys.len(), 2);
        assert_eq!(c.api_keys[0].tenants, ["acme", "globex"]);
        assert_eq!(c.api_keys[1].digest().unwrap(), [0xab; 32]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_lookup(|k| (k == "AUDIT_DB_MAX_CONNECTIONS").then(|| "many".to_owned())).unwrap_err();
        assert!(err.to_string().contains("AUDIT_DB_MAX_CONNECTIONS"), "{err}");
        let err = parse_inline_keys("nokey").unwrap_err();
        assert!(err.to_string().contains("TENANTS=KEY"), "{err}");
    }

    #[test]
    fn search_settings_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        let secret = dir.path().join("password");
        std::fs::write(&secret, "pw-not-printed\n").unwrap();
        let yaml = format!(
            "searchUrl: https://es:9200\nsearchUsername: elastic\nsearchPasswordFile: {}\nsearchIndexSettings:\n  index.number_of_shards: '3'\n",
            secret.display()
        );
        std::fs::write(&file, yaml).unwrap();
        let path = file.display().to_string();
        let env = |k: &str| match k {
            "AUDIT_CONFIG_FILE" => Some(path.clone()),
            "AUDIT_SEARCH_INDEX_PREFIX" => Some("audit-x".to_owned()),
            _ => None,
        };
        let s = Config::from_lookup(env).unwrap().search.expect("search configured");
        assert_eq!((s.url.as_str(), s.index_prefix.as_str()), ("https://es:9200", "audit-x"));
        assert_eq!(s.password.as_ref().map(Password::expose), Some("pw-not-printed"));
        assert_eq!(s.index_settings["index.number_of_shards"], "3");
        assert!(!format!("{s:?}").contains("pw-not-printed"), "password in Debug output");
        assert!(Config::from_lookup(|_| None).unwrap().search.is_none(), "search is off by default");
        let with = |extra: &'static str, value: &'static str| {
            move |k: &str| match k {
                "AUDIT_SEARCH_URL" => Some("http://es:9200".to_owned()),
                k if k == extra => Some(value.to_owned()),
                _ => None,
            }
        };
        let err = |e: anyhow::Error| e.to_string();
        assert!(err(Config::from_lookup(with("AUDIT_SEARCH_INDEX_PREFIX", "Bad*")).unwrap_err()).contains("PREFIX"));
        assert!(err(Config::from_lookup(with("AUDIT_SEARCH_USERNAME", "u")).unwrap_err()).contains("go together"));
        let creds = |k: &str| (k == "AUDIT_SEARCH_URL").then(|| "https://u:pw-not-printed@es:9200".to_owned());
        let e = err(Config::from_lookup(creds).unwrap_err());
        assert!(e.contains("without credentials") && !e.contains("pw-not-printed"), "{e}");
    }

    #[test]
    fn kafka_settings_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "kafkaBootstrapServers: k1:9092,k2:9092\nkafkaTopic: t\nkafkaProperties:\n  security.protocol: SSL\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let env = |k: &str| match k {
            "AUDIT_CONFIG_FILE" => Some(path.clone()),
            "AUDIT_KAFKA_LEASE_SECONDS" => Some("12".to_owned()),
            "AUDIT_KAFKA_PROPERTIES" => Some("client.rack=a; security.protocol=SASL_SSL".to_owned()),
            _ => None,
        };
        let k = Config::from_lookup(env).unwrap().kafka.unwrap();
        assert_eq!((k.bootstrap_servers.as_str(), k.topic.as_str()), ("k1:9092,k2:9092", "t"));
        assert_eq!(k.lease, Duration::from_secs(12));
        assert_eq!(
            k.properties,
            [("client.rack".to_owned(), "a".to_owned()), ("security.protocol".to_owned(), "SASL_SSL".to_owned())]
        );
        assert!(Config::from_lookup(|_| None).unwrap().kafka.is_none(), "Kafka is off by default");
        let err = Config::from_lookup(|k| match k {
            "AUDIT_KAFKA_BOOTSTRAP_SERVERS" => Some("k:9092".to_owned()),
            "AUDIT_KAFKA_PROPERTIES" => Some("acks=1".to_owned()),
            _ => None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("acks"), "{err}");
    }

    #[test]
    fn redis_settings() {
        let env = |k: &str| match k {
            "AUDIT_REDIS_SENTINELS" => Some("s1:26379, s2:26379".to_owned()),
            "AUDIT_REDIS_PASSWORD" => Some("pw-not-printed".to_owned()),
            "AUDIT_REDIS_FAILURE_MODE" => Some("closed".to_owned()),
            _ => None,
        };
        let r = Config::from_lookup(env).unwrap().redis.expect("redis configured");
        let sentinels = vec!["s1:26379".to_owned(), "s2:26379".to_owned()];
        assert_eq!(r.target, RedisTarget::Sentinel { sentinels, master_set: "mymaster".into() });
        assert!(!r.fail_open);
        assert_eq!(r.timeout, Duration::from_millis(500));
        assert_eq!(r.event_cache, Duration::from_secs(60));
        assert!(!format!("{r:?}").contains("pw-not-printed"), "password in Debug output");
        let off = |k: &str| match k {
            "AUDIT_REDIS_URL" => Some("redis://h:6379".to_owned()),
            "AUDIT_REDIS_EVENT_CACHE_SECONDS" => Some("0".to_owned()),
            _ => None,
        };
        assert_eq!(Config::from_lookup(off).unwrap().redis.expect("redis").event_cache, Duration::ZERO);
        assert!(Config::from_lookup(|_| None).unwrap().redis.is_none());
        let both = |k: &str| matches!(k, "AUDIT_REDIS_URL" | "AUDIT_REDIS_SENTINELS").then(|| "h:1".to_owned());
        assert!(Config::from_lookup(both).unwrap_err().to_string().contains("exclusive"));
        let bad = |k: &str| match k {
            "AUDIT_REDIS_URL" => Some("redis://h:6379".to_owned()),
            "AUDIT_REDIS_FAILURE_MODE" => Some("sideways".to_owned()),
            _ => None,
        };
        assert!(Config::from_lookup(bad).unwrap_err().to_string().contains("AUDIT_REDIS_FAILURE_MODE"));
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:p%40ss@h:5432/d"), "postgres://u:***@h:5432/d");
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
        assert_eq!(
            redact_url("postgres://u@h/d?sslmode=verify-full&password=s3cret&PASSWORD=x&sslpassword=k"),
            "postgres://u@h/d?sslmode=verify-full&password=***&PASSWORD=***&sslpassword=***"
        );
        assert_eq!(redact_url("postgres://u:p@h/d?password=s"), "postgres://u:***@h/d?password=***");
    }
}
