//! Token buckets in Redis, shared by every replica: one Lua script takes the tokens atomically on
//! the master (Redis runs scripts one at a time), so concurrent replicas cannot overspend. The
//! master is found through Sentinel and looked up again after any error, which is what carries the
//! limiter across a failover.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, Script};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, RedisTarget};

/// Every key this server writes starts with this (namespaced: the Redis may be shared).
pub const KEY_PREFIX: &str = "audit-server:ratelimit:";

/// After a failed connection attempt, requests do not try again for this long: they get the
/// configured failure decision at once instead of each waiting for a dead server.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

/// KEYS[1] the bucket; ARGV rate (tokens/s), burst, cost. Time is the master's (`TIME`), the same
/// clock for every replica. Returns {allowed 0|1, milliseconds until `cost` fits, tokens left}.
/// The key expires once the bucket would be full again, which is the same as no key.
const TAKE: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
-- Milliseconds: 13 digits, kept exactly by tostring (%.14g); microseconds would be rounded.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) / 1000 * rate)
  ts = now
end
local need = math.min(cost, burst)
local allowed = 0
local wait = 0
if tokens >= need then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((need - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, wait, math.max(0, math.floor(tokens))}
";

/// The answer of one [`SharedBuckets::take`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    pub allowed: bool,
    pub wait: Duration,
    pub remaining: u64,
}

enum Source {
    Url(redis::Client),
    Sentinel(Mutex<SentinelClient>),
}

pub struct SharedBuckets {
    source: Source,
    conn: Mutex<Option<MultiplexedConnection>>,
    down_until: std::sync::Mutex<Option<Instant>>,
    timeout: Duration,
    script: Script,
}

impl SharedBuckets {
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
        Ok(SharedBuckets {
            source,
            conn: Mutex::new(None),
            down_until: std::sync::Mutex::new(None),
            timeout: config.timeout,
            script: Script::new(TAKE),
        })
    }

    /// Take `cost` tokens from `key`'s bucket (rate tokens/s, burst), within the timeout.
    pub async fn take(&self, key: &str, rate: f64, burst: f64, cost: u32) -> Result<Taken, String> {
        match tokio::time::timeout(self.timeout, self.try_take(key, rate, burst, cost)).await {
            Ok(r) => r,
            Err(_) => {
                // A connection that stopped answering (a partitioned master) is not reused.
                *self.conn.lock().await = None;
                Err(format!("no answer from Redis within {:?}", self.timeout))
            }
        }
    }

    async fn try_take(&self, key: &str, rate: f64, burst: f64, cost: u32) -> Result<Taken, String> {
        let mut conn = self.connection().await?;
        let r: redis::RedisResult<(i64, i64, i64)> =
            self.script.key(format!("{KEY_PREFIX}{key}")).arg(rate).arg(burst).arg(cost).invoke_async(&mut conn).await;
        match r {
            Ok((allowed, wait, remaining)) => Ok(Taken {
                allowed: allowed == 1,
                wait: Duration::from_millis(wait.max(0) as u64),
                remaining: remaining.max(0) as u64,
            }),
            Err(e) => {
                // Closed socket, READONLY from a demoted master...: find the master again next time.
                *self.conn.lock().await = None;
                Err(e.to_string())
            }
        }
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
