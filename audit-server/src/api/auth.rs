//! `X-API-Key` authentication: keys are kept as SHA-256 digests only, each scoped to tenants, with
//! an optional per-key token bucket (429).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::config::ApiKeyConfig;

/// What an authenticated key may do.
#[derive(Debug)]
pub struct Scope {
    pub name: String,
    all_tenants: bool,
    tenants: HashSet<String>,
}

impl Scope {
    pub fn allows(&self, tenant: &str) -> bool {
        self.all_tenants || self.tenants.contains(tenant)
    }

    pub fn require(&self, tenant: &str) -> Result<(), ApiError> {
        if self.allows(tenant) { Ok(()) } else { Err(ApiError::forbidden_tenant(tenant)) }
    }
}

pub struct KeyRing {
    by_digest: HashMap<[u8; 32], Arc<Scope>>,
}

impl KeyRing {
    pub fn new(keys: &[ApiKeyConfig]) -> anyhow::Result<Self> {
        let mut by_digest = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if k.tenants.is_empty() {
                anyhow::bail!("API key {:?}: `tenants` is empty (use [\"*\"] for every tenant)", k.label());
            }
            // A tenant no request can name (a space, a slash, 129 characters) would be a key that
            // silently grants nothing for it: refuse at startup, saying what a tenant id may be.
            if let Some(bad) = k.tenants.iter().find(|t| *t != "*" && !super::input::valid_tenant(t)) {
                anyhow::bail!(
                    "API key {:?}: tenant {bad:?} is not a tenant id (expected 1 to 128 of A-Z a-z 0-9 . _ : @ -, \
                     or * for every tenant)",
                    k.label()
                );
            }
            let scope = Scope {
                name: k.name.clone().unwrap_or_else(|| format!("key#{}", i + 1)),
                all_tenants: k.tenants.iter().any(|t| t == "*"),
                tenants: k.tenants.iter().cloned().collect(),
            };
            // Two entries for one key would grant the union or the last one's scope, depending on
            // order: a configuration mistake to fix, not to guess at.
            if let Some(first) = by_digest.insert(k.digest()?, Arc::new(scope)) {
                anyhow::bail!(
                    "API key {:?} has the same digest as {:?}: each key must appear once (merge their tenants)",
                    k.label(),
                    first.name
                );
            }
        }
        Ok(KeyRing { by_digest })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    fn lookup(&self, key: &[u8]) -> Option<Arc<Scope>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.by_digest.get(&digest).cloned()
    }
}

/// Token buckets per key name, charged per event appended (a batch of 100 costs 100) and one
/// token per other request. One call, [`RateLimiter::acquire`]: the buckets are in this process,
/// or in Redis when configured ([`crate::shared_limit`]), so that every replica shares them.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    shared: Option<Shared>,
}

struct Shared {
    buckets: crate::shared_limit::SharedBuckets,
    fail_open: bool,
    metrics: Arc<crate::metrics::Metrics>,
    /// When the last "Redis unavailable" warning was logged (one per LOG_EVERY, not per request).
    last_warning: Mutex<Option<Instant>>,
}

const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The answer of [`RateLimiter::acquire`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Allowed,
    /// Refused, nothing taken: `cost` fits after `retry_after`.
    Limited {
        retry_after: std::time::Duration,
        remaining: u64,
    },
    /// The shared store did not answer and the configuration says fail closed.
    Unavailable,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = if burst == 0 { per_second.max(1.0) } else { f64::from(burst) };
        RateLimiter { per_second, burst, buckets: Mutex::new(HashMap::new()), shared: None }
    }

    /// The same limits kept in Redis: every replica configured alike shares one bucket per key.
    pub fn shared(
        per_second: f64,
        burst: u32,
        redis: Arc<crate::redis_conn::RedisConn>,
        fail_open: bool,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let buckets = crate::shared_limit::SharedBuckets::new(redis);
        let shared = Shared { buckets, fail_open, metrics, last_warning: Mutex::new(None) };
        RateLimiter { shared: Some(shared), ..Self::new(per_second, burst) }
    }

    /// The bucket size (the `RateLimit-Limit` header).
    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Take `cost` tokens from `key`'s bucket, or refuse (nothing taken). A cost above the burst
    /// is let through with a full bucket and leaves a debt that later requests wait out, so the
    /// long-run rate holds without refusing large batches forever.
    pub async fn acquire(&self, key: &str, cost: u32) -> Decision {
        if self.per_second <= 0.0 || cost == 0 {
            return Decision::Allowed;
        }
        let Some(shared) = &self.shared else { return self.acquire_local(key, cost) };
        let metrics = &shared.metrics.redis;
        match shared.buckets.take(key, self.per_second, self.burst, cost).await {
            Ok(t) if t.allowed => Decision::Allowed,
            Ok(t) => Decision::Limited { retry_after: t.wait, remaining: t.remaining },
            Err(error) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                let counter = if shared.fail_open { &metrics.fail_open } else { &metrics.fail_closed };
                counter.fetch_add(1, Ordering::Relaxed);
                let mut last = shared.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    *last = Some(Instant::now());
                    let mode = if shared.fail_open { "open: requests pass unlimited" } else { "closed: 503" };
                    tracing::warn!(%error, mode, "Redis rate limiter unavailable (logged once per 10 s)");
                }
                if shared.fail_open { Decision::Allowed } else { Decision::Unavailable }
            }
        }
    }

    fn acquire_local(&self, key: &str, cost: u32) -> Decision {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        let need = f64::from(cost).min(self.burst);
        if *tokens >= need {
            *tokens -= f64::from(cost);
            Decision::Allowed
        } else {
            let retry_after = std::time::Duration::from_secs_f64((need - *tokens) / self.per_second);
            Decision::Limited { retry_after, remaining: tokens.max(0.0) as u64 }
        }
    }
}

/// Charge an append to the key's bucket: one token per event of a valid body, one for a body
/// refused as invalid.
pub async fn charge_events(state: &AppState, scope: &Scope, events: usize) -> Result<(), ApiError> {
    let cost = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
    decide(state, state.limiter.acquire(&scope.name, cost).await)
}

/// A refused [`RateLimiter::acquire`] as its answer: 429 with Retry-After and the RateLimit
/// headers, or 503 when the shared limiter is down and configured to fail closed.
fn decide(state: &AppState, decision: Decision) -> Result<(), ApiError> {
    match decision {
        Decision::Allowed => Ok(()),
        Decision::Limited { retry_after, remaining } => {
            state.metrics.redis.limited.fetch_add(1, Ordering::Relaxed);
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests or events for this API key; retry after the Retry-After delay",
            );
            e.headers = vec![
                ("retry-after", secs.to_string()),
                ("ratelimit-limit", state.limiter.burst().to_string()),
                ("ratelimit-remaining", remaining.to_string()),
                ("ratelimit-reset", secs.to_string()),
            ];
            Err(e)
        }
        Decision::Unavailable => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limiter_unavailable",
            "the shared rate limiter (Redis) is unavailable and configured to fail closed; retry later",
        )),
    }
}

/// The authenticated caller of an API route.
pub struct Caller(pub Arc<Scope>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(key) = parts.headers.get(audit_api::API_KEY_HEADER) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing X-API-Key header"));
        };
        let Some(scope) = state.keys.lookup(key.as_bytes()) else {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key"));
        };
        // One token per request, except appends: they are charged one per event once their body
        // is parsed ([`charge_events`]).
        // The full path: inside the nested `/api/v1` router `parts.uri` has the prefix stripped,
        // which made every append pay one token more than its events.
        let path = parts.extensions.get::<axum::extract::OriginalUri>().map_or(parts.uri.path(), |u| u.path());
        let append =
            parts.method == axum::http::Method::POST && matches!(path, "/api/v1/events" | "/api/v1/events/batch");
        if !append {
            decide(state, state.limiter.acquire(&scope.name, 1).await)?;
        }
        Ok(Caller(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buckets_are_charged_by_cost() {
        let ok = |d: Decision| d == Decision::Allowed;
        let limiter = RateLimiter::new(0.001, 10);
        assert!(ok(limiter.acquire("k", 7).await));
        assert!(!ok(limiter.acquire("k", 4).await), "3 tokens left, 4 taken");
        assert!(ok(limiter.acquire("k", 3).await));
        assert!(!ok(limiter.acquire("k", 1).await));
        assert!(ok(limiter.acquire("other", 10).await), "buckets are per key");
        // Above the burst: through with a full bucket, then a debt.
        let big = RateLimiter::new(0.001, 10);
        assert!(ok(big.acquire("k", 25).await));
        assert!(!ok(big.acquire("k", 1).await));
        assert!(ok(RateLimiter::new(0.0, 0).acquire("k", 1_000_000).await), "off");
    }

    #[test]
    fn tenants_no_request_can_name_are_a_configuration_error() {
        for bad in ["ac me", "", "a/b", &"t".repeat(129)] {
            let err = KeyRing::new(&[ApiKeyConfig::plain("k1", &["acme", bad])]).err().expect("accepted");
            let text = err.to_string();
            assert!(text.contains(&format!("tenant {bad:?} is not a tenant id")), "{text}");
            assert!(!text.contains("k1"), "the key itself is printed: {text}");
        }
        assert!(KeyRing::new(&[ApiKeyConfig::plain("k1", &["*", "acme", "a.b_c:d@e-f"])]).is_ok());
    }

    #[test]
    fn duplicate_digests_are_a_configuration_error() {
        let digest = hex::encode(Sha256::digest(b"k1"));
        let keys = [
            ApiKeyConfig::plain("k1", &["a"]),
            ApiKeyConfig { sha256: Some(digest), name: Some("again".into()), ..ApiKeyConfig::plain("", &["b"]) },
        ];
        let mut keys = keys.to_vec();
        keys[1].key = None;
        let err = KeyRing::new(&keys).err().expect("duplicate digests accepted");
        assert!(err.to_string().contains("same digest"), "{err}");
        assert!(KeyRing::new(&[ApiKeyConfig::plain("k1", &["a"]), ApiKeyConfig::plain("k2", &["a"])]).is_ok());
    }
}
