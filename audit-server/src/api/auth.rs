//! `X-API-Key` authentication: keys are kept as SHA-256 digests only, each scoped to tenants, with
//! an optional per-key token bucket (429).

use std::collections::{HashMap, HashSet};
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
/// token per other request. One call, [`RateLimiter::acquire`], so that a shared store (Redis,
/// for limits across replicas) can replace the map without touching the callers.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = if burst == 0 { per_second.max(1.0) } else { f64::from(burst) };
        RateLimiter { per_second, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Take `cost` tokens from `key`'s bucket, or refuse (nothing taken). A cost above the burst
    /// is let through with a full bucket and leaves a debt that later requests wait out, so the
    /// long-run rate holds without refusing large batches forever.
    pub fn acquire(&self, key: &str, cost: u32) -> bool {
        if self.per_second <= 0.0 || cost == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        let cost = f64::from(cost);
        if *tokens >= cost.min(self.burst) {
            *tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Charge an append to the key's bucket: one token per event of a valid body, one for a body
/// refused as invalid.
pub fn charge_events(state: &AppState, scope: &Scope, events: usize) -> Result<(), ApiError> {
    let cost = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
    if state.limiter.acquire(&scope.name, cost) { Ok(()) } else { Err(rate_limited()) }
}

/// The 429 of a refused [`RateLimiter::acquire`].
pub fn rate_limited() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests or events for this API key; retry after the Retry-After delay",
    )
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
        let append = parts.method == axum::http::Method::POST
            && matches!(parts.uri.path(), "/api/v1/events" | "/api/v1/events/batch");
        if !append && !state.limiter.acquire(&scope.name, 1) {
            return Err(rate_limited());
        }
        Ok(Caller(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_charged_by_cost() {
        let limiter = RateLimiter::new(0.001, 10);
        assert!(limiter.acquire("k", 7));
        assert!(!limiter.acquire("k", 4), "3 tokens left, 4 taken");
        assert!(limiter.acquire("k", 3));
        assert!(!limiter.acquire("k", 1));
        assert!(limiter.acquire("other", 10), "buckets are per key");
        // Above the burst: through with a full bucket, then a debt.
        let big = RateLimiter::new(0.001, 10);
        assert!(big.acquire("k", 25));
        assert!(!big.acquire("k", 1));
        assert!(RateLimiter::new(0.0, 0).acquire("k", 1_000_000), "off");
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
