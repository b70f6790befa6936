//! Connections shared by the probes of one target during one run, opened lazily on first use, so
//! ten PostgreSQL probes cost one connection and a target nobody probes is never contacted.
//!
//! A target that cannot be opened is remembered as a [`ConnError`] and every probe of that target
//! reports the same ERROR (unreachable within [`CONNECT_TIMEOUT`], refused credentials, or absent
//! from the targets file). Secrets are read at the point of use and never appear in messages: URLs
//! are shown through [`audctl_targets::redact_url`], passwords travel in client options only.
//!
//! TLS is verified by default: PostgreSQL gets `sslmode=verify-full` unless its URL says otherwise
//! or the host is loopback (a port-forward); Elasticsearch and the audit service use https URLs
//! with verified certificates (rustls, webpki roots).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use audctl_targets::{Secret, Targets};
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use tokio::sync::OnceCell;

use super::{Comparison, ErrorCause, Finding};

/// Opened on first use, shared by the probes of one run.
#[derive(Default)]
pub struct Connections {
    /// `--write-probe`: the service probe may append an event to its dedicated tenant. Off by
    /// default (production); the check engine sets it from the flag.
    pub write_probe: bool,
    postgres: OnceCell<Result<PgConn, ConnError>>,
    search: OnceCell<Result<SearchConn, ConnError>>,
    sentinels: OnceCell<Result<Vec<SentinelView>, ConnError>>,
    redis_master: OnceCell<Result<RedisMaster, ConnError>>,
    kafka: OnceCell<Result<KafkaConn, ConnError>>,
    service: OnceCell<Result<HttpConn, ConnError>>,
}

impl Connections {
    /// Connections for a run that may (or may not) write with the service write probe.
    pub fn with_write_probe(write_probe: bool) -> Self {
        Connections { write_probe, ..Default::default() }
    }

    /// A pool on the PostgreSQL primary of the targets file.
    pub async fn postgres(&self, targets: &Targets) -> Result<&PgConn, Finding> {
        let opened = self
            .postgres
            .get_or_init(|| async {
                let t = targets.postgres.as_ref().ok_or_else(|| ConnError::not_configured("postgres"))?;
                let password = secret("postgres.password", &t.password)?;
                pg_connect(&t.url, password.as_deref()).await
            })
            .await;
        opened.as_ref().map_err(ConnError::finding)
    }

    pub async fn search(&self, targets: &Targets) -> Result<&SearchConn, Finding> {
        let opened = self
            .search
            .get_or_init(|| async {
                let t = targets.search.as_ref().ok_or_else(|| ConnError::not_configured("search"))?;
                SearchConn::open(t).await
            })
            .await;
        opened.as_ref().map_err(ConnError::finding)
    }

    /// What every sentinel of the targets file says (empty when Redis is reached by URL).
    pub async fn redis_sentinels(&self, targets: &Targets) -> Result<&[SentinelView], Finding> {
        let opened = self
            .sentinels
            .get_or_init(|| async {
                let t = targets.redis.as_ref().ok_or_else(|| ConnError::not_configured("redis"))?;
                open_sentinels(t).await
            })
            .await;
        opened.as_ref().map(Vec::as_slice).map_err(ConnError::finding)
    }

    /// The master the sentinels agree on (or `redis.url`), authenticated.
    pub async fn redis_master(&self, targets: &Targets) -> Result<&RedisMaster, Finding> {
        let views = self.redis_sentinels(targets).await?;
        let opened = self
            .redis_master
            .get_or_init(|| async {
                let t = targets.redis.as_ref().ok_or_else(|| ConnError::not_configured("redis"))?;
                open_master(t, views).await
            })
            .await;
        opened.as_ref().map_err(ConnError::finding)
    }

    pub async fn kafka(&self, targets: &Targets) -> Result<&KafkaConn, Finding> {
        let opened = self
            .kafka
            .get_or_init(|| async {
                let t = targets.kafka.as_ref().ok_or_else(|| ConnError::not_configured("kafka"))?;
                KafkaConn::open(t).await
            })
            .await;
        opened.as_ref().map_err(ConnError::finding)
    }

    /// The audit service's HTTP endpoint (`audit` in the targets file).
    pub async fn service(&self, targets: &Targets) -> Result<&HttpConn, Finding> {
        let opened = self
            .service
            .get_or_init(|| async {
                let t = targets.audit.as_ref().ok_or_else(|| ConnError::not_configured("audit"))?;
                HttpConn::open(t).await
            })
            .await;
        opened.as_ref().map_err(ConnError::finding)
    }
}

/// One expected-vs-actual row.
pub fn row(name: impl Into<String>, expected: impl Into<String>, actual: impl Into<String>, ok: bool) -> Comparison {
    Comparison { name: name.into(), expected: expected.into(), actual: actual.into(), ok }
}

/// A unit struct implementing [`super::Probe`] by calling `async fn $run(&Context) -> Result<Finding, Finding>`
/// (the error side carries the ERROR finding of a connection or query that failed).
macro_rules! probe {
    ($ty:ident, $target:expr, $id:literal, $describe:literal, $run:path) => {
        pub struct $ty;
        impl $crate::probes::Probe for $ty {
            fn id(&self) -> &'static str {
                $id
            }
            fn target(&self) -> $crate::probes::Target {
                $target
            }
            fn describe(&self) -> &'static str {
                $describe
            }
            fn run<'a>(&'a self, ctx: &'a $crate::probes::Context) -> $crate::probes::ProbeFuture<'a> {
                Box::pin(async move { $run(ctx).await.unwrap_or_else(|f| f) })
            }
        }
    };
}
pub(crate) use probe;

// ---- issue 18: datastore and service connections ----------------------------------------------

/// How long opening a connection may take before the target counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection could not be opened; shared by every probe of the target (Clone).
#[derive(Debug, Clone)]
pub struct ConnError {
    pub cause: ErrorCause,
    pub message: String,
    pub hint: Option<String>,
}

impl ConnError {
    fn new(cause: ErrorCause, message: impl Into<String>) -> Self {
        Self { cause, message: message.into(), hint: None }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn not_configured(what: &str) -> Self {
        Self::new(ErrorCause::NotConfigured, format!("no `{what}` entry in the targets file"))
            .hint(format!("add `{what}:` to the file given with --targets (see README, targets file)"))
    }

    pub fn finding(&self) -> Finding {
        let f = Finding::error(self.cause, &self.message);
        match &self.hint {
            Some(h) => f.hint(h),
            None => f,
        }
    }
}

impl From<ConnError> for Finding {
    fn from(e: ConnError) -> Finding {
        e.finding()
    }
}

/// Loopback needs no TLS (a port-forward tunnels it); anything else is verified unless the target
/// says otherwise.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || h.starts_with('/')
}

/// The SSL mode audctl imposes on a PostgreSQL connection to `host` given as `url`: TLS verified
/// by default; the URL's own sslmode wins; loopback needs none (`None`: the client's default).
/// One policy for `check` and for backup/restore.
pub fn pg_default_ssl_mode(url: &str, host: &str) -> Option<PgSslMode> {
    if url.contains("sslmode=") || is_loopback(host) { None } else { Some(PgSslMode::VerifyFull) }
}

fn secret(what: &str, s: &Option<Secret>) -> Result<Option<String>, ConnError> {
    match s {
        None => Ok(None),
        Some(s) => s.expose().map(Some).map_err(|e| {
            ConnError::new(ErrorCause::NotConfigured, format!("{what}: {e}"))
                .hint("the secret is read from env or a file at run time")
        }),
    }
}

// -- PostgreSQL --

/// A pool on the primary, and how to name it in messages (no password).
pub struct PgConn {
    pub pool: sqlx::PgPool,
    pub display: String,
}

fn pg_options(url: &str, password: Option<&str>) -> Result<(PgConnectOptions, String), ConnError> {
    let display = audctl_targets::redact_url(url);
    let mut opts = PgConnectOptions::from_str(url)
        .map_err(|e| ConnError::new(ErrorCause::NotConfigured, format!("postgres url {display}: {e}")))?;
    if let Some(p) = password {
        opts = opts.password(p);
    }
    if let Some(mode) = pg_default_ssl_mode(url, opts.get_host()) {
        opts = opts.ssl_mode(mode);
    }
    opts = opts.application_name("audctl-check");
    let display = format!("{}:{}/{}", opts.get_host(), opts.get_port(), opts.get_database().unwrap_or("postgres"));
    Ok((opts, display))
}

/// Open one connection (to classify errors exactly), then a small lazy pool for the probes.
pub async fn pg_connect(url: &str, password: Option<&str>) -> Result<PgConn, ConnError> {
    use sqlx::Connection;
    let (opts, display) = pg_options(url, password)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&opts)).await {
        Err(_) => {
            return Err(ConnError::new(
                ErrorCause::Unreachable,
                format!("PostgreSQL {display}: no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            ));
        }
        Ok(Err(e)) => return Err(pg_connect_error(&display, &e)),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    let pool = PgPoolOptions::new().max_connections(4).acquire_timeout(CONNECT_TIMEOUT).connect_lazy_with(opts);
    Ok(PgConn { pool, display })
}

/// SQLSTATE of a database error.
pub fn pg_code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

fn pg_connect_error(display: &str, e: &sqlx::Error) -> ConnError {
    match e {
        sqlx::Error::Io(io) => ConnError::new(ErrorCause::Unreachable, format!("PostgreSQL {display}: {io}")),
        sqlx::Error::Tls(t) => ConnError::new(ErrorCause::Unreachable, format!("PostgreSQL {display}: TLS: {t}"))
            .hint("TLS is verified by default: trust the server's CA, or set sslmode in postgres.url"),
        sqlx::Error::PoolTimedOut => {
            ConnError::new(ErrorCause::Unreachable, format!("PostgreSQL {display}: timed out"))
        }
        _ => match pg_code(e).as_deref() {
            Some("28P01") | Some("28000") => ConnError::new(
                ErrorCause::Forbidden,
                format!("PostgreSQL {display}: authentication failed ({})", db_message(e)),
            )
            .hint("check the user in postgres.url and postgres.password"),
            Some("3D000") => {
                ConnError::new(ErrorCause::NotConfigured, format!("PostgreSQL {display}: {}", db_message(e)))
            }
            _ => ConnError::new(ErrorCause::Other, format!("PostgreSQL {display}: {e}")),
        },
    }
}

fn db_message(e: &sqlx::Error) -> String {
    e.as_database_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string())
}

/// A query on an open pool failed: the server went away, or a real error.
pub fn pg_query_error(display: &str, e: &sqlx::Error) -> Finding {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            Finding::error(ErrorCause::Unreachable, format!("PostgreSQL {display}: {e}"))
        }
        _ if pg_code(e).as_deref() == Some("42501") => {
            Finding::error(ErrorCause::Forbidden, format!("PostgreSQL {display}: {}", db_message(e)))
                .hint("the probes read pg_stat_* and pg_settings: connect as a member of pg_monitor")
        }
        _ => Finding::error(ErrorCause::Other, format!("PostgreSQL {display}: {e}")),
    }
}

// -- Elasticsearch / OpenSearch --

pub struct SearchConn {
    client: Elasticsearch,
    anonymous: Elasticsearch,
    pub url: String,
    pub product: &'static str,
}

fn es_client(url: &Url, credentials: Option<Credentials>) -> Result<Elasticsearch, ConnError> {
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone())).timeout(CONNECT_TIMEOUT);
    if let Some(c) = credentials {
        builder = builder.auth(c);
    }
    let transport =
        builder.build().map_err(|e| ConnError::new(ErrorCause::Other, format!("search client for {url}: {e}")))?;
    Ok(Elasticsearch::new(transport))
}

fn es_error(what: &str, e: &elasticsearch::Error) -> ConnError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<reqwest::Error>()
            && (r.is_connect() || r.is_timeout())
        {
            return ConnError::new(ErrorCause::Unreachable, format!("{what}: {}", error_chain(e)));
        }
        source = s.source();
    }
    if e.is_timeout() {
        return ConnError::new(ErrorCause::Unreachable, format!("{what}: timed out"));
    }
    ConnError::new(ErrorCause::Other, format!("{what}: {}", error_chain(e)))
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`, wherever URLs appear in `text` (client
/// errors print the URL they failed on).
pub fn scrub_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', ' ', ')', '?', '#']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(userinfo),
                }
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// "a: b: c" from an error and its sources, URLs' passwords masked.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    scrub_userinfo(&parts.join(": "))
}

impl SearchConn {
    async fn open(t: &audctl_targets::SearchTarget) -> Result<SearchConn, ConnError> {
        let url = Url::parse(&t.url).map_err(|e| {
            ConnError::new(ErrorCause::NotConfigured, format!("search url {}: {e}", audctl_targets::redact_url(&t.url)))
        })?;
        let credentials = match (&t.username, secret("search.password", &t.password)?) {
            (Some(u), Some(p)) => Some(Credentials::Basic(u.clone(), p)),
            (None, None) => None,
            _ => {
                return Err(ConnError::new(ErrorCause::NotConfigured, "search: username and password go together"));
            }
        };
        let product = match t.product {
            audctl_targets::SearchProduct::Elasticsearch => "Elasticsearch",
            audctl_targets::SearchProduct::Opensearch => "OpenSearch",
        };
        let conn = SearchConn {
            client: es_client(&url, credentials)?,
            anonymous: es_client(&url, None)?,
            url: audctl_targets::redact_url(&t.url),
            product,
        };
        // One request now, so every probe reports the same reachability or credential error.
        let what = format!("{product} {}", conn.url);
        let response = conn
            .client
            .send(Method::Get, "/_cluster/health", HeaderMap::new(), None::<&()>, None::<()>, None)
            .await
            .map_err(|e| es_error(&what, &e))?;
        match response.status_code().as_u16() {
            401 | 403 => Err(ConnError::new(
                ErrorCause::Forbidden,
                format!("{what}: {} on GET /_cluster/health", response.status_code()),
            )
            .hint("set search.username and search.password (a user with the monitor and manage cluster privileges)")),
            _ => Ok(conn),
        }
    }

    async fn request(&self, client: &Elasticsearch, path: &str) -> Result<(u16, Value), Finding> {
        let what = format!("{} {}", self.product, self.url);
        let response = client
            .send(Method::Get, path, HeaderMap::new(), None::<&()>, None::<()>, None)
            .await
            .map_err(|e| es_error(&what, &e).finding())?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| es_error(&what, &e).finding())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// GET `path`: the JSON body of a 2xx answer; anything else is an ERROR finding.
    pub async fn get(&self, path: &str) -> Result<Value, Finding> {
        match self.get_optional(path).await? {
            Some(v) => Ok(v),
            None => Err(Finding::error(ErrorCause::Other, format!("{} {}: GET {path}: 404", self.product, self.url))),
        }
    }

    /// Like [`Self::get`], with 404 as `None`.
    pub async fn get_optional(&self, path: &str) -> Result<Option<Value>, Finding> {
        let (status, body) = self.request(&self.client, path).await?;
        match status {
            200..=299 => Ok(Some(body)),
            404 => Ok(None),
            401 | 403 => Err(Finding::error(
                ErrorCause::Forbidden,
                format!("{} {}: GET {path}: {status} {}", self.product, self.url, reason(&body)),
            )),
            _ => Err(Finding::error(
                ErrorCause::Other,
                format!("{} {}: GET {path}: {status} {}", self.product, self.url, reason(&body)),
            )),
        }
    }

    /// Status of GET `path` without credentials.
    pub async fn anonymous_status(&self, path: &str) -> Result<u16, Finding> {
        Ok(self.request(&self.anonymous, path).await?.0)
    }
}

fn reason(body: &Value) -> String {
    body["error"]["reason"].as_str().map(str::to_owned).unwrap_or_else(|| {
        let s = body.to_string();
        s.chars().take(200).collect()
    })
}

// -- Redis (Sentinel) --

/// What one sentinel says about the master set.
#[derive(Debug, Clone)]
pub struct SentinelInfo {
    /// `host:port` of the master.
    pub master: String,
    pub quorum: u32,
    pub flags: String,
}

#[derive(Debug, Clone)]
pub struct SentinelView {
    pub addr: String,
    /// Err: unreachable or refused; Ok(None): the sentinel does not know the master set.
    pub info: Result<Option<SentinelInfo>, ConnError>,
    /// `SENTINEL CKQUORUM` answer ("OK 3 usable Sentinels..." or the error).
    pub ckquorum: Option<String>,
}

/// A connection to the current master.
pub struct RedisMaster {
    pub addr: String,
    conn: MultiplexedConnection,
}

impl RedisMaster {
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Finding> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(|e| redis_error(&format!("Redis {}", self.addr), &e).finding())
    }
}

fn redis_error(what: &str, e: &redis::RedisError) -> ConnError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code().is_some_and(|c| c == "NOAUTH" || c == "WRONGPASS" || c == "NOPERM")
    {
        return ConnError::new(ErrorCause::Forbidden, format!("{what}: authentication failed ({e})"))
            .hint("check redis.password in the targets file");
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        return ConnError::new(ErrorCause::Unreachable, format!("{what}: {e}"));
    }
    ConnError::new(ErrorCause::Other, format!("{what}: {e}"))
}

fn split_host_port(addr: &str) -> Result<(String, u16), ConnError> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        ConnError::new(ErrorCause::NotConfigured, format!("redis address {addr:?}: expected host:port"))
    })?;
    let port = port
        .parse()
        .map_err(|_| ConnError::new(ErrorCause::NotConfigured, format!("redis address {addr:?}: bad port")))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

async fn redis_connect(
    info: redis::ConnectionInfo,
    password: Option<&str>,
    what: &str,
) -> Result<MultiplexedConnection, ConnError> {
    let info = match password {
        Some(p) => {
            let settings = info.redis_settings().clone().set_password(p);
            info.set_redis_settings(settings)
        }
        None => info,
    };
    let client = redis::Client::open(info).map_err(|e| redis_error(what, &e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection_with_config(&config)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(redis_error(what, &e)),
        Err(_) => Err(ConnError::new(
            ErrorCause::Unreachable,
            format!("{what}: no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

async fn sentinel_view(addr: String, set: String, password: Option<String>) -> SentinelView {
    let what = format!("sentinel {addr}");
    let conn = match split_host_port(&addr) {
        Ok((host, port)) => {
            let info = match redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(host, port)) {
                Ok(i) => i,
                Err(e) => {
                    return SentinelView {
                        addr,
                        info: Err(ConnError::new(ErrorCause::NotConfigured, e.to_string())),
                        ckquorum: None,
                    };
                }
            };
            redis_connect(info, password.as_deref(), &what).await
        }
        Err(e) => Err(e),
    };
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => return SentinelView { addr, info: Err(e), ckquorum: None },
    };
    let fields: redis::RedisResult<Vec<String>> =
        redis::cmd("SENTINEL").arg("master").arg(&set).query_async(&mut conn).await;
    let info = match fields {
        Ok(list) => {
            let map: BTreeMap<&str, &str> = list.chunks_exact(2).map(|p| (p[0].as_str(), p[1].as_str())).collect();
            let ip = map.get("ip").copied().unwrap_or("?");
            let port = map.get("port").copied().unwrap_or("?");
            Ok(Some(SentinelInfo {
                master: format!("{ip}:{port}"),
                quorum: map.get("quorum").and_then(|q| q.parse().ok()).unwrap_or(0),
                flags: map.get("flags").copied().unwrap_or("").to_owned(),
            }))
        }
        Err(e) if e.to_string().contains("No such master") => Ok(None),
        Err(e) => Err(redis_error(&what, &e)),
    };
    let ckquorum = if matches!(info, Ok(Some(_))) {
        let r: redis::RedisResult<String> =
            redis::cmd("SENTINEL").arg("ckquorum").arg(&set).query_async(&mut conn).await;
        Some(match r {
            Ok(s) => s,
            Err(e) => e.to_string(),
        })
    } else {
        None
    };
    SentinelView { addr, info, ckquorum }
}

async fn open_sentinels(t: &audctl_targets::RedisTarget) -> Result<Vec<SentinelView>, ConnError> {
    let password = secret("redis.password", &t.password)?;
    let mut set = tokio::task::JoinSet::new();
    for (i, addr) in t.sentinels.iter().enumerate() {
        let (addr, name, pw) = (addr.clone(), t.master_set.clone(), password.clone());
        set.spawn(async move { (i, sentinel_view(addr, name, pw).await) });
    }
    let mut views: Vec<(usize, SentinelView)> = set.join_all().await;
    views.sort_by_key(|(i, _)| *i);
    let views: Vec<SentinelView> = views.into_iter().map(|(_, v)| v).collect();
    // No sentinel answered: the target itself is unreachable (or refuses the credentials).
    let errors: Vec<&ConnError> = views.iter().filter_map(|v| v.info.as_ref().err()).collect();
    if !views.is_empty() && errors.len() == views.len() {
        let cause =
            errors.iter().map(|e| e.cause).find(|c| *c != ErrorCause::Unreachable).unwrap_or(ErrorCause::Unreachable);
        let mut err = ConnError::new(
            cause,
            format!(
                "no sentinel of {} answered: {}",
                t.master_set,
                errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ")
            ),
        );
        err.hint = errors.iter().find_map(|e| e.hint.clone());
        return Err(err);
    }
    Ok(views)
}

async fn open_master(t: &audctl_targets::RedisTarget, views: &[SentinelView]) -> Result<RedisMaster, ConnError> {
    let password = secret("redis.password", &t.password)?;
    if t.sentinels.is_empty() {
        let url = t.url.as_deref().ok_or_else(|| {
            ConnError::new(ErrorCause::NotConfigured, "redis: neither sentinels nor url in the targets file")
        })?;
        let shown = audctl_targets::redact_url(url);
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| ConnError::new(ErrorCause::NotConfigured, format!("redis url {shown}: {e}")))?;
        let addr = info.addr().to_string();
        let conn = redis_connect(info, password.as_deref(), &format!("Redis {shown}")).await?;
        return Ok(RedisMaster { addr, conn });
    }
    // The master most reachable sentinels name.
    let mut votes: BTreeMap<String, usize> = BTreeMap::new();
    for v in views {
        if let Ok(Some(i)) = &v.info {
            *votes.entry(i.master.clone()).or_default() += 1;
        }
    }
    let Some((master, _)) = votes.into_iter().max_by_key(|(_, n)| *n) else {
        let why: Vec<String> = views
            .iter()
            .map(|v| match &v.info {
                Err(e) => e.message.clone(),
                Ok(_) => format!("sentinel {} does not know {}", v.addr, t.master_set),
            })
            .collect();
        let cause = if views.iter().all(|v| v.info.is_err()) { ErrorCause::Unreachable } else { ErrorCause::Other };
        return Err(ConnError::new(
            cause,
            format!("no sentinel names the master of {}: {}", t.master_set, why.join("; ")),
        ));
    };
    let (host, port) = split_host_port(&master)?;
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(host, port))
        .map_err(|e| ConnError::new(ErrorCause::Other, e.to_string()))?;
    let conn = redis_connect(info, password.as_deref(), &format!("Redis master {master}")).await?;
    Ok(RedisMaster { addr: master, conn })
}

// -- Kafka --

pub struct KafkaConn {
    admin: Arc<AdminClient<DefaultClientContext>>,
    pub display: String,
}

#[derive(Debug, Clone)]
pub struct PartitionInfo {
    pub id: i32,
    /// -1 when the partition has no leader (offline).
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, Default)]
pub struct KafkaMetadata {
    /// (node id, host:port)
    pub brokers: Vec<(i32, String)>,
    pub topics: BTreeMap<String, Vec<PartitionInfo>>,
}

fn kafka_error(what: &str, e: &KafkaError) -> ConnError {
    use rdkafka::types::RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    match code {
        Some(
            C::BrokerTransportFailure | C::AllBrokersDown | C::OperationTimedOut | C::RequestTimedOut | C::Resolve,
        ) => ConnError::new(ErrorCause::Unreachable, format!("{what}: {e}")),
        Some(C::Authentication | C::SaslAuthenticationFailed) => {
            ConnError::new(ErrorCause::Forbidden, format!("{what}: {e}"))
        }
        Some(C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed) => {
            ConnError::new(ErrorCause::Forbidden, format!("{what}: {e}"))
        }
        _ => ConnError::new(ErrorCause::Other, format!("{what}: {e}")),
    }
}

impl KafkaConn {
    async fn open(t: &audctl_targets::KafkaTarget) -> Result<KafkaConn, ConnError> {
        if t.bootstrap_servers.is_empty() {
            return Err(ConnError::new(ErrorCause::NotConfigured, "kafka.bootstrapServers is empty"));
        }
        let servers = t.bootstrap_servers.join(",");
        let timeout_ms = CONNECT_TIMEOUT.as_millis().to_string();
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("socket.timeout.ms", &timeout_ms)
            .set("socket.connection.setup.timeout.ms", &timeout_ms)
            .set("client.id", "audctl-check")
            // librdkafka logs broker connection failures itself; the finding says it once.
            .set("log_level", "0")
            .create()
            .map_err(|e| ConnError::new(ErrorCause::NotConfigured, format!("kafka client for {servers}: {e}")))?;
        let conn = KafkaConn { admin: Arc::new(admin), display: servers };
        conn.fetch().await?;
        Ok(conn)
    }

    async fn fetch(&self) -> Result<KafkaMetadata, ConnError> {
        let admin = self.admin.clone();
        let what = format!("Kafka {}", self.display);
        let md = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, CONNECT_TIMEOUT))
            .await
            .map_err(|e| ConnError::new(ErrorCause::Other, format!("{what}: metadata task: {e}")))?
            .map_err(|e| kafka_error(&what, &e))?;
        let brokers = md.brokers().iter().map(|b| (b.id(), format!("{}:{}", b.host(), b.port()))).collect();
        let topics = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let parts = t
                    .partitions()
                    .iter()
                    .map(|p| PartitionInfo {
                        id: p.id(),
                        leader: p.leader(),
                        replicas: p.replicas().to_vec(),
                        isr: p.isr().to_vec(),
                    })
                    .collect();
                (t.name().to_owned(), parts)
            })
            .collect();
        Ok(KafkaMetadata { brokers, topics })
    }

    /// Cluster metadata, fresh: brokers and every topic's partitions (all topics, so that asking
    /// never auto-creates the audit topic on a broker with `auto.create.topics.enable`).
    pub async fn metadata(&self) -> Result<KafkaMetadata, Finding> {
        self.fetch().await.map_err(|e| e.finding())
    }

    /// The effective configuration of `topic` (topic overrides and inherited broker defaults).
    pub async fn topic_config(&self, topic: &str) -> Result<BTreeMap<String, String>, Finding> {
        let what = format!("Kafka {}", self.display);
        let opts = AdminOptions::new().request_timeout(Some(CONNECT_TIMEOUT));
        let results = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
            .await
            .map_err(|e| kafka_error(&what, &e).finding())?;
        let mut out = BTreeMap::new();
        for r in results {
            let resource = r.map_err(|code| {
                Finding::error(ErrorCause::Other, format!("{what}: describing topic {topic}: {code}"))
            })?;
            for entry in resource.entries {
                if let Some(v) = entry.value {
                    out.insert(entry.name, v);
                }
            }
        }
        Ok(out)
    }
}

// -- The audit service (HTTP) --

pub struct HttpConn {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
    pub display: String,
}

fn http_error(what: &str, e: &reqwest::Error) -> ConnError {
    if e.is_builder() {
        return ConnError::new(ErrorCause::NotConfigured, format!("{what}: {}", error_chain(e)))
            .hint("audit.url must be an http(s) URL");
    }
    if e.is_connect() || e.is_timeout() {
        ConnError::new(ErrorCause::Unreachable, format!("{what}: {}", error_chain(e)))
    } else {
        ConnError::new(ErrorCause::Other, format!("{what}: {}", error_chain(e)))
    }
}

impl HttpConn {
    async fn open(t: &audctl_targets::AuditTarget) -> Result<HttpConn, ConnError> {
        let api_key = secret("audit.apiKey", &t.api_key)?;
        let display = audctl_targets::redact_url(&t.url).trim_end_matches('/').to_owned();
        // rustls with the webpki roots: certificates are verified.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ConnError::new(ErrorCause::Other, format!("HTTP client: {e}")))?;
        let conn = HttpConn { client, base: t.url.trim_end_matches('/').to_owned(), api_key, display };
        // Reachability once for every service probe.
        conn.client
            .get(format!("{}/actuator/health/liveness", conn.base))
            .send()
            .await
            .map_err(|e| http_error(&format!("audit service {}", conn.display), &e))?;
        Ok(conn)
    }

    pub fn has_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// GET `path` (with the API key when `with_key`): status and body text.
    pub async fn get(&self, path: &str, with_key: bool) -> Result<(u16, String), Finding> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if with_key && let Some(k) = &self.api_key {
            req = req.header(audit_api::API_KEY_HEADER, k);
        }
        self.send(req, path).await
    }

    /// POST `body` as JSON with the API key.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, String), Finding> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = &self.api_key {
            req = req.header(audit_api::API_KEY_HEADER, k);
        }
        self.send(req, path).await
    }

    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> Result<(u16, String), Finding> {
        let what = format!("audit service {}{path}", self.display);
        let resp = req.send().await.map_err(|e| http_error(&what, &e).finding())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| http_error(&what, &e).finding())?;
        Ok((status, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_tls_is_verified_unless_loopback_or_the_url_says() {
        let (remote, shown) = pg_options("postgres://audit@db.example:5432/audittrail", Some("pw")).expect("url");
        assert!(matches!(remote.get_ssl_mode(), PgSslMode::VerifyFull));
        assert_eq!(shown, "db.example:5432/audittrail");
        let (local, _) = pg_options("postgres://audit@127.0.0.1:5432/audittrail", None).expect("url");
        assert!(matches!(local.get_ssl_mode(), PgSslMode::Prefer));
        let (explicit, _) = pg_options("postgres://audit@db.example/a?sslmode=require", None).expect("url");
        assert!(matches!(explicit.get_ssl_mode(), PgSslMode::Require));
    }

    #[test]
    fn userinfo_is_scrubbed_from_error_text() {
        assert_eq!(
            scrub_userinfo("error sending request for url (https://elastic:pa55@es:9200/_cluster/health)"),
            "error sending request for url (https://elastic:***@es:9200/_cluster/health)"
        );
        assert_eq!(scrub_userinfo("http://h:1/a@b and x://u@h"), "http://h:1/a@b and x://u@h");
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        let (_, shown) = pg_options("postgres://audit:hunter2@db.example:5432/a", None).expect("url");
        assert!(!shown.contains("hunter2"), "{shown}");
        let err = match pg_options("postgres://audit:hunter2@db.example:notaport/a", None) {
            Err(e) => e,
            Ok(_) => panic!("a bad port must be refused"),
        };
        assert!(!err.message.contains("hunter2"), "{}", err.message);
        assert_eq!(err.cause, ErrorCause::NotConfigured);
    }
}
