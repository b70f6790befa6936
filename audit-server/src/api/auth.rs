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

/// Token buckets per key name.
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

    fn allow(&self, key: &str) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
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
        if !state.limiter.allow(&scope.name) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests for this API key; retry after the Retry-After delay",
            ));
        }
        Ok(Caller(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
