//! What each request is: realistic generated events across tenants, reads of seeded events, list
//! queries, chain verifications or a plain GET; and how each answer is checked (status and body shape).

use std::collections::BTreeMap;

use audit_api::{
    API_PREFIX, Action, Actor, BatchRequest, BatchResponse, EventPage, EventReceipt, Metadata, NewEvent, Resource,
    StoredEvent, VerifyReport,
};
use bytes::Bytes;
use hyper::{Method, StatusCode};

use super::http::Call;
use crate::cli::Scenario;

/// A small fast PRNG (splitmix64); load generation needs spread, not cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const ACTIONS: &[&str] = &["LOGIN", "LOGOUT", "CREATE", "UPDATE", "DELETE", "READ", "EXPORT", "PERMISSION_CHANGE"];
const CATEGORIES: &[&str] = &["SECURITY", "DATA", "ADMIN"];
const RESOURCES: &[&str] = &["DOCUMENT", "INVOICE", "USER", "APPLICATION", "REPORT"];
const SOURCES: &[&str] = &["web", "mobile", "batch", "api-gateway"];
const AGENTS: &[&str] = &["Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (iPhone)", "okhttp/4.12", "curl/8.5"];

/// Everything requests are made from.
pub struct Workload {
    /// Scenarios and their weights (one entry with weight 1 for a single scenario).
    pub mix: Vec<(Scenario, u32)>,
    total_weight: u32,
    pub tenants: Vec<String>,
    pub batch_size: usize,
    /// Events written before the run, read back by the read scenario: (tenant, id, actor id).
    pub seeded: Vec<(String, String, String)>,
    base: String,
    exact: String,
}

impl Workload {
    pub fn new(
        mix: Vec<(Scenario, u32)>,
        tenants: Vec<String>,
        batch_size: usize,
        base_path: &str,
        exact: &str,
    ) -> Workload {
        let total_weight = mix.iter().map(|(_, w)| w).sum();
        Workload {
            mix,
            total_weight,
            tenants,
            batch_size,
            seeded: Vec::new(),
            base: format!("{base_path}{API_PREFIX}"),
            exact: exact.to_owned(),
        }
    }

    /// Whether the run needs events to exist first.
    pub fn needs_seed(&self) -> bool {
        self.mix.iter().any(|(s, _)| matches!(s, Scenario::Read | Scenario::List | Scenario::Verify))
    }

    pub fn label(&self) -> String {
        if self.mix.len() == 1 {
            return scenario_name(self.mix[0].0).to_owned();
        }
        self.mix.iter().map(|(s, w)| format!("{}={w}", scenario_name(*s))).collect::<Vec<_>>().join(",")
    }

    pub fn pick(&self, rng: &mut Rng) -> Scenario {
        if self.mix.len() == 1 {
            return self.mix[0].0;
        }
        let mut r = (rng.next_u64() % u64::from(self.total_weight.max(1))) as u32;
        for (s, w) in &self.mix {
            if r < *w {
                return *s;
            }
            r -= w;
        }
        self.mix[0].0
    }

    pub fn event(&self, rng: &mut Rng, tenant: &str) -> NewEvent {
        let user = rng.below(5000);
        let action = rng.pick(ACTIONS);
        let kind = rng.pick(RESOURCES);
        let doc = rng.below(100_000);
        let mut tags = BTreeMap::new();
        tags.insert("generator".to_owned(), "audctl-load".to_owned());
        tags.insert("env".to_owned(), "load-test".to_owned());
        NewEvent {
            occurred_at: None,
            actor: Actor {
                id: format!("user-{user}"),
                kind: "USER".into(),
                name: Some(format!("Load User {user}")),
                ip: Some(format!("10.{}.{}.{}", rng.below(256), rng.below(256), 1 + rng.below(254))),
                user_agent: Some(rng.pick(AGENTS).to_owned()),
                attributes: None,
            },
            action: Action {
                kind: action.to_owned(),
                description: Some(format!("{} {}", action.to_lowercase(), kind.to_lowercase())),
                category: Some(rng.pick(CATEGORIES).to_owned()),
            },
            resource: Resource {
                id: format!("{}-{doc}", kind.to_lowercase()),
                kind: kind.to_owned(),
                name: None,
                before: (action == "UPDATE").then(|| serde_json::json!({"version": doc % 7, "status": "draft"})),
                after: (action == "UPDATE").then(|| serde_json::json!({"version": doc % 7 + 1, "status": "final"})),
            },
            metadata: Metadata {
                source: rng.pick(SOURCES).to_owned(),
                tenant_id: tenant.to_owned(),
                correlation_id: Some(format!("corr-{:016x}", rng.next_u64())),
                session_id: None,
                tags: Some(tags),
            },
        }
    }

    /// The request of one arrival.
    pub fn call(&self, scenario: Scenario, rng: &mut Rng) -> Call {
        let tenant = &self.tenants[rng.below(self.tenants.len())];
        match scenario {
            Scenario::Ingest => post(format!("{}/events", self.base), &self.event(rng, tenant)),
            Scenario::Batch => {
                let events = (0..self.batch_size.max(1)).map(|_| self.event(rng, tenant)).collect();
                post(format!("{}/events/batch", self.base), &BatchRequest { events })
            }
            Scenario::Read => {
                let (_, id, _) = &self.seeded[rng.below(self.seeded.len())];
                get(format!("{}/events/{id}", self.base))
            }
            Scenario::List => {
                let (tenant, _, actor) = &self.seeded[rng.below(self.seeded.len())];
                get(format!("{}/events?tenantId={tenant}&actorId={actor}&limit=20&order=desc", self.base))
            }
            Scenario::Verify => get(format!("{}/integrity/verify?tenantId={tenant}", self.base)),
            Scenario::Get => get(self.exact.clone()),
        }
    }

    /// Judge an answer: `None` when it is what the scenario expects, else the error class.
    pub fn check(&self, scenario: Scenario, status: StatusCode, body: &[u8]) -> Option<String> {
        let expected = match scenario {
            Scenario::Ingest | Scenario::Batch => StatusCode::CREATED,
            Scenario::Get if status.is_success() => return None,
            _ => StatusCode::OK,
        };
        if status != expected {
            return Some(format!("HTTP {}", status.as_u16()));
        }
        let shape_ok = match scenario {
            Scenario::Ingest => serde_json::from_slice::<EventReceipt>(body).is_ok_and(|r| r.status == "STORED"),
            Scenario::Batch => serde_json::from_slice::<BatchResponse>(body)
                .is_ok_and(|b| b.count == self.batch_size.max(1) && b.results.len() == b.count),
            Scenario::Read => serde_json::from_slice::<StoredEvent>(body).is_ok(),
            Scenario::List => serde_json::from_slice::<EventPage>(body).is_ok(),
            Scenario::Verify => serde_json::from_slice::<VerifyReport>(body).is_ok_and(|v| v.verified),
            Scenario::Get => true,
        };
        (!shape_ok).then(|| "invalid body".to_owned())
    }
}

pub fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Ingest => "ingest",
        Scenario::Batch => "batch",
        Scenario::Read => "read",
        Scenario::List => "list",
        Scenario::Verify => "verify",
        Scenario::Get => "get",
    }
}

fn post<T: serde::Serialize>(path: String, body: &T) -> Call {
    // Serializing our own wire types cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Call { method: Method::POST, path, body: Some(Bytes::from(bytes)) }
}

fn get(path: String) -> Call {
    Call { method: Method::GET, path, body: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_mix_and_checks() {
        let w = Workload::new(
            vec![(Scenario::Ingest, 70), (Scenario::Read, 30)],
            vec!["t0".into()],
            10,
            "/prefix",
            "/prefix/x?y",
        );
        let mut rng = Rng::new(7);
        let reads = (0..10_000).filter(|_| w.pick(&mut rng) == Scenario::Read).count();
        assert!((2700..3300).contains(&reads), "{reads}");
        let call = w.call(Scenario::Ingest, &mut rng);
        assert_eq!(call.path, "/prefix/api/v1/events");
        let ev: NewEvent = serde_json::from_slice(call.body.as_deref().unwrap()).unwrap();
        assert_eq!(ev.metadata.tenant_id, "t0");
        assert_eq!(w.call(Scenario::Get, &mut rng).path, "/prefix/x?y");
        assert_eq!(w.check(Scenario::Ingest, StatusCode::SERVICE_UNAVAILABLE, b"{}").as_deref(), Some("HTTP 503"));
        assert_eq!(w.check(Scenario::Ingest, StatusCode::CREATED, b"{}").as_deref(), Some("invalid body"));
        assert_eq!(w.label(), "ingest=70,read=30");
    }
}
