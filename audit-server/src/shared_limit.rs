//! Token buckets in Redis, shared by every replica: one Lua script takes the tokens atomically on
//! the master (Redis runs scripts one at a time), so concurrent replicas cannot overspend. Failover
//! and backoff: [`crate::redis_conn`].

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::redis_conn::RedisConn;

/// Every key this server writes starts with this (namespaced: the Redis may be shared).
pub const KEY_PREFIX: &str = "audit-server:ratelimit:";

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

pub struct SharedBuckets {
    redis: Arc<RedisConn>,
    script: Script,
}

impl SharedBuckets {
    pub fn new(redis: Arc<RedisConn>) -> Self {
        SharedBuckets { redis, script: Script::new(TAKE) }
    }

    /// Take `cost` tokens from `key`'s bucket (rate tokens/s, burst), within the timeout.
    pub async fn take(&self, key: &str, rate: f64, burst: f64, cost: u32) -> Result<Taken, String> {
        let key = format!("{KEY_PREFIX}{key}");
        let (allowed, wait, remaining): (i64, i64, i64) = self
            .redis
            .call(|mut conn| async move {
                self.script.key(key).arg(rate).arg(burst).arg(cost).invoke_async(&mut conn).await
            })
            .await?;
        Ok(Taken {
            allowed: allowed == 1,
            wait: Duration::from_millis(wait.max(0) as u64),
            remaining: remaining.max(0) as u64,
        })
    }
}
