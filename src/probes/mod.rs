//! Probes: the live checks behind the go-live checklist.
//!
//! Every probe implements one trait and is found by id in one registry; checklist items (data in
//! checklists/) name the probes that prove them. Probes know nothing of the CLI: they get a
//! [`Context`] (cluster client, targets, values, rendered objects) and return a [`Finding`]. The check
//! engine (src/check/) runs them concurrently, each under its own timeout, and turns findings into
//! item statuses. One file per target; each exposes `probes()` and the registry concatenates them.

pub mod cluster;
pub mod conns;
pub mod kafka;
pub mod manifests;
pub mod postgres;
pub mod redis;
pub mod search;
pub mod service;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::render::Object;
use crate::values::Values;

/// What a probe talks to; the engine uses it to group output and to explain ERRORs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Kubernetes API server.
    Cluster,
    /// The render of the given values (static, no cluster needed).
    Manifests,
    Postgres,
    Search,
    Redis,
    Kafka,
    /// The Audit Trail service's HTTP API.
    Service,
    /// Evidence records written by other verbs (read from the cluster).
    Evidence,
}

/// Outcome of one probe (and, after attestations, waivers and evidence, of one checklist item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum Status {
    Pass,
    Fail,
    Warn,
    /// Could not evaluate (unreachable, forbidden, timed out): never a pass.
    Error,
    Attested,
    NeedsAttestation,
    /// The item is proven by another verb's evidence record, and there is none recent enough.
    NeedsEvidence,
    Waived,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
            Status::Error => "ERROR",
            Status::Attested => "ATTESTED",
            Status::NeedsAttestation => "NEEDS-ATTESTATION",
            Status::NeedsEvidence => "NEEDS-EVIDENCE",
            Status::Waived => "WAIVED",
        }
    }
}

/// Why a probe could not evaluate; `Unreachable` drives exit code 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorCause {
    Unreachable,
    Forbidden,
    Timeout,
    /// Missing configuration (no targets entry, no cluster): the probe was not attempted.
    NotConfigured,
    Other,
}

/// One expected-vs-actual line (a tuning parameter, a replica count...), with units normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub status: Status,
    /// The actual finding, one line: "3 Ready nodes in 1 zone (eu-west-1a)".
    pub message: String,
    /// What to do about it, for FAIL/WARN/ERROR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<ErrorCause>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<Comparison>,
}

impl Finding {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Finding { status, message: message.into(), hint: None, cause: None, comparisons: Vec::new() }
    }
    pub fn pass(message: impl Into<String>) -> Self {
        Self::new(Status::Pass, message)
    }
    pub fn fail(message: impl Into<String>) -> Self {
        Self::new(Status::Fail, message)
    }
    pub fn warn(message: impl Into<String>) -> Self {
        Self::new(Status::Warn, message)
    }
    pub fn error(cause: ErrorCause, message: impl Into<String>) -> Self {
        Finding { cause: Some(cause), ..Self::new(Status::Error, message) }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn comparisons(mut self, rows: Vec<Comparison>) -> Self {
        self.comparisons = rows;
        self
    }
    /// PASS when every comparison holds, else FAIL naming the ones that do not.
    pub fn from_comparisons(what: &str, rows: Vec<Comparison>) -> Self {
        let bad: Vec<String> = rows
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{} = {} (expected {})", r.name, r.actual, r.expected))
            .collect();
        let finding = if bad.is_empty() {
            Finding::pass(format!("{what}: {} settings as expected", rows.len()))
        } else {
            Finding::fail(format!("{what}: {}", bad.join(", ")))
        };
        finding.comparisons(rows)
    }
}

/// Everything a probe may read. Built once per `audctl check` run and shared by all probes.
pub struct Context {
    /// The release namespace.
    pub namespace: String,
    /// The cluster, when one is configured.
    pub kube: Option<kube::Client>,
    /// Its API server's address, named when it does not answer (the client does not say).
    pub kube_url: Option<String>,
    /// Connection settings of datastores and the service (empty when no targets file is given).
    pub targets: audctl_targets::Targets,
    /// The merged values the manifests were rendered from.
    pub values: Values,
    /// The render of `values`, in apply order.
    pub objects: Vec<Object>,
    /// Connections shared by the probes of one target (opened once per run, lazily).
    pub conns: conns::Connections,
    /// "Now" for the whole run, so ages are consistent across probes.
    pub now: DateTime<Utc>,
}

pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Finding> + Send + 'a>>;

/// A live check. Implementations return a [`Finding`] and never panic; a probe that cannot reach
/// its target returns `Finding::error(ErrorCause::Unreachable, ...)`, never a pass.
pub trait Probe: Send + Sync {
    /// Stable id, named by checklist items: "cluster.nodes", "manifests.resources", "postgres.replication".
    fn id(&self) -> &'static str;
    fn target(&self) -> Target;
    /// One line: what the probe verifies (shown by `audctl check --list-probes` and the README).
    fn describe(&self) -> &'static str;
    /// Each probe's own deadline; the engine turns an overrun into ERROR (timeout).
    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> ProbeFuture<'a>;
}

/// All probes, by id.
pub struct Registry {
    probes: Vec<Box<dyn Probe>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<&dyn Probe> {
        self.probes.iter().find(|p| p.id() == id).map(|p| p.as_ref())
    }
    pub fn all(&self) -> impl Iterator<Item = &dyn Probe> {
        self.probes.iter().map(|p| p.as_ref())
    }
    pub fn ids(&self) -> Vec<&'static str> {
        self.probes.iter().map(|p| p.id()).collect()
    }
}

/// The registry of every probe audctl has.
pub fn registry() -> Registry {
    let mut probes: Vec<Box<dyn Probe>> = Vec::new();
    probes.extend(cluster::probes());
    probes.extend(manifests::probes());
    probes.extend(postgres::probes());
    probes.extend(search::probes());
    probes.extend(redis::probes());
    probes.extend(kafka::probes());
    probes.extend(service::probes());
    Registry { probes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_are_unique() {
        let ids = registry().ids();
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate probe ids in {ids:?}");
    }

    #[test]
    fn comparisons_decide_the_status() {
        let ok = Comparison { name: "a".into(), expected: "1".into(), actual: "1".into(), ok: true };
        let bad = Comparison { name: "work_mem".into(), expected: "4MB".into(), actual: "1MB".into(), ok: false };
        assert_eq!(Finding::from_comparisons("pg", vec![ok.clone()]).status, Status::Pass);
        let f = Finding::from_comparisons("pg", vec![ok, bad]);
        assert_eq!(f.status, Status::Fail);
        assert!(f.message.contains("work_mem = 1MB (expected 4MB)"), "{}", f.message);
    }
}
