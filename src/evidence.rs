//! Evidence: the record every verb leaves in the cluster, so the whole team sees what was proven.
//!
//! One format for all verbs (check, deploy, smoke, load, backup, restore, rollback, attest...). Each
//! record is a labelled ConfigMap in the release namespace holding the record as JSON; only the last
//! [`KEEP_PER_VERB`] records of each verb are kept. Checklist items such as "Load testing complete"
//! pass only on a successful record younger than a limit, and name the record they relied on.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::kube::{KubeSettings, transport_error};

/// The verbs that write evidence records (what a checklist's `evidence.verb` may name).
pub const VERBS: [&str; 7] = ["check", "deploy", "rollback", "smoke", "load", "backup", "restore"];

/// Records kept per verb; older ones are deleted when a new one is written.
pub const KEEP_PER_VERB: usize = 20;
/// Label keys (and the data key) of evidence ConfigMaps.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_KIND: &str = "audctl.io/kind";
pub const LABEL_VERB: &str = "audctl.io/verb";
pub const LABEL_OUTCOME: &str = "audctl.io/outcome";
pub const LABEL_SUBJECT: &str = "audctl.io/subject";
pub const DATA_KEY: &str = "record.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The verb did what it was asked and everything it verified passed.
    Success,
    /// The verb ran and something it verified failed (a check, a threshold, a rollout).
    Failure,
    /// The verb could not complete (a dependency unreachable, bad input).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
        }
    }
}

/// One run of one verb.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// The verb that ran: "check", "deploy", "smoke", "load", "backup", "restore", "rollback", ...
    pub verb: String,
    pub outcome: Outcome,
    /// What the run was about, when a verb distinguishes: an environment ("staging", "production"),
    /// a component ("postgres"), a revision. Stored as a label too (sanitised), so lookups can filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// One line for people: "42 items: 40 PASS, 2 ATTESTED", "p99 180 ms at 500 req/s, 0.0% errors".
    pub summary: String,
    /// The run's figures for machines (counts, latencies, sizes, revision numbers...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, serde_json::Value>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub audctl_version: String,
    /// sha256 of the merged values the run used (see [`digest`]), when values were involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_digest: Option<String>,
    /// Who ran it (see [`who`]).
    pub who: String,
}

impl Evidence {
    /// A record of `verb` started at `started`, finished now; fill the rest with the setters.
    pub fn new(verb: &str, outcome: Outcome, summary: impl Into<String>, started: DateTime<Utc>) -> Self {
        Evidence {
            verb: verb.to_owned(),
            outcome,
            subject: None,
            summary: summary.into(),
            figures: BTreeMap::new(),
            started,
            finished: Utc::now(),
            audctl_version: env!("CARGO_PKG_VERSION").to_owned(),
            values_digest: None,
            who: who(),
        }
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn figure(mut self, key: &str, value: impl Serialize) -> Self {
        self.figures.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(serde_json::Value::Null));
        self
    }

    pub fn values_digest(mut self, digest: impl Into<String>) -> Self {
        self.values_digest = Some(digest.into());
        self
    }

    /// Age of the record at `now`.
    pub fn age(&self, now: DateTime<Utc>) -> chrono::Duration {
        now - self.finished
    }
}

/// A record as stored: the ConfigMap's name (to cite it) and its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    pub name: String,
    #[serde(flatten)]
    pub evidence: Evidence,
}

/// `sha256:<hex>` of some bytes, e.g. the merged values serialised as JSON.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Digest of a serialisable value (the merged values), stable across runs (serde_json keeps field order).
pub fn digest_of<T: Serialize>(value: &T) -> String {
    digest(&serde_json::to_vec(value).unwrap_or_default())
}

/// Who is running audctl: $AUDCTL_ACTOR, else the CI system's user, else $USER@host.
pub fn who() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(actor) = env("AUDCTL_ACTOR") {
        return actor;
    }
    for (var, system) in [("GITHUB_ACTOR", "github"), ("GITLAB_USER_LOGIN", "gitlab"), ("BUILD_USER_ID", "jenkins")] {
        if let Some(user) = env(var) {
            return format!("{user} ({system})");
        }
    }
    let user = env("USER").or_else(|| env("LOGNAME")).unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() { user } else { format!("{user}@{host}") }
}

/// A Kubernetes label value from free text: [a-z0-9.-_], at most 63 characters, alphanumeric ends.
pub fn label_value(text: &str) -> String {
    let mut v: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c.to_ascii_lowercase() } else { '-' })
        .take(63)
        .collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    v.trim_start_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned()
}

fn api(client: &kube::Client, namespace: &str) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), namespace)
}

/// Store `evidence` in `namespace` and prune that verb's records beyond [`KEEP_PER_VERB`].
/// Returns the ConfigMap's name.
pub async fn record(client: &kube::Client, namespace: &str, evidence: &Evidence) -> anyhow::Result<String> {
    let verb = label_value(&evidence.verb);
    // Time first so names sort by age; a random suffix keeps two runs in the same second apart.
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let name = format!("audctl-{verb}-{}-{suffix}", evidence.finished.format("%Y%m%d-%H%M%S"));
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), "audctl".to_owned()),
        (LABEL_KIND.to_owned(), "evidence".to_owned()),
        (LABEL_VERB.to_owned(), verb.clone()),
        (LABEL_OUTCOME.to_owned(), evidence.outcome.as_str().to_owned()),
    ]);
    if let Some(subject) = evidence.subject.as_deref().map(label_value).filter(|s| !s.is_empty()) {
        labels.insert(LABEL_SUBJECT.to_owned(), subject);
    }
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some(name.clone()), labels: Some(labels), ..Default::default() },
        data: Some(BTreeMap::from([(DATA_KEY.to_owned(), serde_json::to_string_pretty(evidence)?)])),
        ..Default::default()
    };
    api(client, namespace)
        .create(&PostParams::default(), &cm)
        .await
        .map_err(|e| transport_error(e, &format!("writing evidence {name} in namespace {namespace}")))?;
    prune(client, namespace, &verb).await?;
    Ok(name)
}

/// Records of `verb` (all verbs when `None`), newest first. ConfigMaps that do not parse are skipped
/// with a warning: someone else's edit must not break every later check.
pub async fn list(client: &kube::Client, namespace: &str, verb: Option<&str>) -> anyhow::Result<Vec<Stored>> {
    let mut selector = format!("{LABEL_KIND}=evidence,{LABEL_MANAGED_BY}=audctl");
    if let Some(verb) = verb {
        selector.push_str(&format!(",{LABEL_VERB}={}", label_value(verb)));
    }
    let maps = api(client, namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| transport_error(e, &format!("listing evidence in namespace {namespace}")))?;
    let mut out: Vec<Stored> = maps
        .items
        .into_iter()
        .filter_map(|cm| {
            let name = cm.metadata.name.clone().unwrap_or_default();
            let text = cm.data.as_ref()?.get(DATA_KEY)?;
            match serde_json::from_str::<Evidence>(text) {
                Ok(evidence) => Some(Stored { name, evidence }),
                Err(e) => {
                    tracing::warn!("evidence {name} in {namespace} does not parse, ignored: {e}");
                    None
                }
            }
        })
        .collect();
    out.sort_by(|a, b| b.evidence.finished.cmp(&a.evidence.finished).then(b.name.cmp(&a.name)));
    Ok(out)
}

/// The newest successful record of `verb` (for `subject` when given).
pub async fn latest_success(
    client: &kube::Client,
    namespace: &str,
    verb: &str,
    subject: Option<&str>,
) -> anyhow::Result<Option<Stored>> {
    Ok(list(client, namespace, Some(verb)).await?.into_iter().find(|s| {
        s.evidence.outcome == Outcome::Success
            && subject.is_none_or(|want| s.evidence.subject.as_deref().is_some_and(|got| got == want))
    }))
}

async fn prune(client: &kube::Client, namespace: &str, verb: &str) -> anyhow::Result<()> {
    let records = list(client, namespace, Some(verb)).await?;
    for old in records.iter().skip(KEEP_PER_VERB) {
        api(client, namespace)
            .delete(&old.name, &DeleteParams::default())
            .await
            .map_err(|e| transport_error(e, &format!("pruning evidence {}", old.name)))?;
    }
    Ok(())
}

/// For verbs whose main job is elsewhere (smoke, load, backup...): write the record when a cluster is
/// configured, and say on stderr what happened. Never fails the verb: the verb's own result stands,
/// but a record that could not be written is reported, never silently dropped.
/// How long writing an evidence record may take once the API server answered.
const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn record_best_effort(settings: &KubeSettings, namespace: &str, evidence: &Evidence) -> Option<String> {
    if !settings.configured() {
        eprintln!("evidence: no cluster configured (--kubeconfig/--context/targets), record not written");
        return None;
    }
    // Bounded: the record comes after the verb's own work and its report, and a server that
    // accepts connections but never answers would otherwise hold the verb for kube's read timeout
    // (minutes) after its result is known. api_client asks /version within 30 s first.
    let result = async {
        let client = settings.api_client().await?;
        match tokio::time::timeout(RECORD_TIMEOUT, record(&client, namespace, evidence)).await {
            Ok(recorded) => recorded,
            Err(_) => anyhow::bail!("the API server did not answer within {} s", RECORD_TIMEOUT.as_secs()),
        }
    }
    .await
    .context("evidence record not written");
    match result {
        Ok(name) => {
            eprintln!("evidence: recorded as configmap/{name} in namespace {namespace}");
            Some(name)
        }
        Err(e) => {
            eprintln!("warning: {}", crate::error::chain(&e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("Staging EU/1"), "staging-eu-1");
        assert_eq!(label_value("--x--"), "x");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
        assert_eq!(label_value("é"), "");
    }

    #[test]
    fn records_round_trip_as_json() {
        let e =
            Evidence::new("load", Outcome::Success, "p99 12 ms", Utc::now()).subject("staging").figure("p99Ms", 12.5);
        let text = serde_json::to_string(&e).expect("serialise");
        assert!(text.contains("\"audctlVersion\""), "{text}");
        assert_eq!(serde_json::from_str::<Evidence>(&text).expect("parse"), e);
    }

    #[test]
    fn digest_is_sha256() {
        // sha256("abc"), from FIPS 180-2's example.
        assert_eq!(digest(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
