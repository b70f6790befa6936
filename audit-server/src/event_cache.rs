//! A short cache in Redis for `GET /api/v1/events/{id}`, shared by every replica. Events are
//! immutable once committed (append-only; a correction is a new event), so an entry can never be
//! stale: the TTL only bounds memory. What is cached is the stored event itself, tenant included,
//! and the handler applies the caller's tenant scope to it exactly as to a database row, so the
//! cache cannot widen what a key may read. Redis down or slow: the database answers (counted).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use audit_api::StoredEvent;
use redis::AsyncCommands;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::redis_conn::RedisConn;

/// Every key of the cache starts with this (namespaced: the Redis may be shared).
pub const KEY_PREFIX: &str = "audit-server:event:";

pub struct EventCache {
    redis: Arc<RedisConn>,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl EventCache {
    pub fn new(redis: Arc<RedisConn>, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        EventCache { redis, ttl, metrics }
    }

    /// The cached event, or None (not cached, Redis unavailable, or an entry that does not parse,
    /// which a newer or older server version may have written: the database answers instead).
    pub async fn get(&self, id: Uuid) -> Option<StoredEvent> {
        let key = format!("{KEY_PREFIX}{id}");
        match self.redis.call(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await }).await {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(event) => {
                    self.metrics.cache.hits.fetch_add(1, Ordering::Relaxed);
                    Some(event)
                }
                Err(_) => {
                    self.metrics.cache.misses.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            Ok(None) => {
                self.metrics.cache.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.metrics.cache.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "event cache: Redis unavailable, reading the database");
                None
            }
        }
    }

    /// Remember an event read from the database, in the background (the answer does not wait).
    pub fn put(self: &Arc<Self>, event: &StoredEvent) {
        let Ok(bytes) = serde_json::to_vec(event) else { return };
        let key = format!("{KEY_PREFIX}{}", event.id);
        let (this, ttl) = (self.clone(), self.ttl.as_secs().max(1));
        tokio::spawn(async move {
            let r = this.redis.call(|mut c| async move { c.set_ex::<_, _, ()>(key, bytes, ttl).await }).await;
            if r.is_err() {
                this.metrics.cache.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
