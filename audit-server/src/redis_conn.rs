//! One Redis connection shared by the server's Redis users (the shared rate limit, the event
//! cache): the master is found through Sentinel on connect and again after any error, which is
//! what carries them across a failover; a failed connect backs off briefly so that requests get
//! their failure decision at once instead of each waiting for a dead server.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, RedisTarget};

/// After a failed connection attempt, requests do not try again for this long.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

enum Source {
    Url(redis::Client),
    Sentinel(Mutex<SentinelClient>),
}

pub struct RedisConn {
    source: Source,
    conn: Mutex<Option<MultiplexedConnection>>,
    down_until: std::sync::Mutex<Option<Instant>>,
    timeout: Duration,
}

impl RedisConn {
    /// Build the client (no connection yet: the server starts even with Redis down).
    pub fn new(config: &RedisConfig) -> anyhow::Result<Self> {
        let password = config.password.as_ref().map(|p| p.expose().to_owned());
        let source = match &config.target {
            RedisTarget::Url(url) => {
                let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| anyhow::anyhow!("AUDIT_REDIS_URL {}: {e}", crate::config::redact_url(url)))?;
                if let Some(p) = &password {
                    let settings = info.redis_settings().clone().set_password(p);
                    info = info.set_redis_settings(settings);
                }
                Source::Url(redis::Client::open(info)?)
            }
            RedisTarget::Sentinel { sentinels, master_set } => {
                let addrs = sentinels
                    .iter()
                    .map(|s| {
                        let (host, port) = s.rsplit_once(':').unwrap_or((s.as_str(), "26379"));
                        let port: u16 = port
                            .parse()
                            .map_err(|_| anyhow::anyhow!("AUDIT_REDIS_SENTINELS entry {s:?}: expected HOST:PORT"))?;
                        Ok(ConnectionAddr::Tcp(host.to_owned(), port))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut b = SentinelClientBuilder::new(addrs, master_set, SentinelServerType::Master)?;
                if let Some(p) = &password {
                    // The chart's sentinels require the same password as the data nodes.
                    b = b.set_client_to_redis_password(p).set_client_to_sentinel_password(p);
                }
                Source::Sentinel(Mutex::new(b.build()?))
            }
        };
        Ok(RedisConn {
            source,
            conn: Mutex::new(None),
            down_until: std::sync::Mutex::new(None),
            timeout: config.timeout,
        })
    }

    /// Run `f` on the connection within the configured timeout. On any error or timeout the
    /// connection is dropped (a closed socket, `READONLY` from a demoted master, a partitioned
    /// master): the next call asks the sentinels again.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.connection().await?;
            f(conn).await.map_err(|e| e.to_string())
        };
        let r = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from Redis within {:?}", self.timeout)),
        };
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        {
            let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
            if down.is_some_and(|t| Instant::now() < t) {
                return Err("Redis unreachable at the last attempt (retrying shortly)".into());
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let r = match &self.source {
            Source::Url(client) => client.get_multiplexed_async_connection_with_config(&config).await,
            Source::Sentinel(client) => client.lock().await.get_async_connection_with_config(&config).await,
        };
        match r {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + RECONNECT_BACKOFF);
                Err(e.to_string())
            }
        }
    }
}
