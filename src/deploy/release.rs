//! Release records: one Secret per revision in the release namespace (a Secret, not a ConfigMap,
//! because the recorded manifests are what was applied and may one day carry secret material).
//! Each holds the inventory of applied objects, the applied bodies (for rollback), values digest,
//! image, who, when and outcome; labels make them listable without reading them.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::{MANAGED_BY, ObjectRef, RELEASE_LABEL};

pub const KIND_LABEL: &str = "audctl.io/kind";
pub const REVISION_LABEL: &str = "audctl.io/revision";
pub const STATUS_LABEL: &str = "audctl.io/status";
pub const SECRET_TYPE: &str = "audctl.io/release";
/// Revisions kept per release (older ones are deleted, never the last good one).
pub const KEEP: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Being applied right now (or its deploy died: see `Interrupted`).
    Pending,
    /// Applied and ready; the release's current revision.
    Deployed,
    /// Was deployed, replaced by a later one.
    Superseded,
    /// Applied, did not become ready (or could not be applied).
    Failed,
    /// Its deploy stopped without finishing (killed); found pending by the next deploy.
    Interrupted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Deployed => "deployed",
            State::Superseded => "superseded",
            State::Failed => "failed",
            State::Interrupted => "interrupted",
        }
    }

    /// A revision that was ready once: a rollback target.
    pub fn good(self) -> bool {
        matches!(self, State::Deployed | State::Superseded)
    }
}

/// One revision, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub release: String,
    pub namespace: String,
    pub revision: u32,
    pub state: State,
    /// "deploy", "rollback to 3", "automatic rollback to 3 (revision 5 failed)".
    pub action: String,
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What happened: "ready in 4.2s", or what failed.
    #[serde(default)]
    pub outcome: String,
    pub audctl_version: String,
    pub inventory: Vec<ObjectRef>,
    /// The applied bodies, in apply order (not shown by `history`).
    #[serde(default, skip_serializing)]
    pub manifests: Vec<Value>,
    /// The cluster the deploy's values named (`cluster.context` / `cluster.server`): a rollback to
    /// this revision is refused elsewhere, as its deploy was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::values::model::ClusterValues>,
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

pub fn secret_name(release: &str, revision: u32) -> String {
    format!("audctl-release-{release}-v{revision}")
}

fn selector(release: &str) -> String {
    format!("{KIND_LABEL}=release,{RELEASE_LABEL}={release}")
}

fn to_secret(rev: &Revision) -> anyhow::Result<Secret> {
    let labels = BTreeMap::from([
        (MANAGED_BY.to_owned(), "audctl".to_owned()),
        (KIND_LABEL.to_owned(), "release".to_owned()),
        (RELEASE_LABEL.to_owned(), rev.release.clone()),
        (REVISION_LABEL.to_owned(), rev.revision.to_string()),
        (STATUS_LABEL.to_owned(), rev.state.as_str().to_owned()),
    ]);
    let data = BTreeMap::from([
        ("release.json".to_owned(), ByteString(serde_json::to_vec(rev)?)),
        ("manifests.json".to_owned(), ByteString(serde_json::to_vec(&rev.manifests)?)),
    ]);
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&rev.release, rev.revision)),
            namespace: Some(rev.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Default::default()
    })
}

fn from_secret(s: &Secret) -> anyhow::Result<Revision> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let data = s.data.as_ref().with_context(|| format!("release record {name} has no data"))?;
    let meta = data.get("release.json").with_context(|| format!("release record {name} has no release.json"))?;
    let mut rev: Revision =
        serde_json::from_slice(&meta.0).with_context(|| format!("release record {name}: release.json"))?;
    if let Some(m) = data.get("manifests.json") {
        rev.manifests =
            serde_json::from_slice(&m.0).with_context(|| format!("release record {name}: manifests.json"))?;
    }
    Ok(rev)
}

/// Every revision of `release` in `ns`, newest first.
pub async fn list(client: &kube::Client, ns: &str, release: &str) -> anyhow::Result<Vec<Revision>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secrets = match api.list(&ListParams::default().labels(&selector(release))).await {
        Ok(l) => l.items,
        Err(e) if crate::kube::api_status(&e) == Some(404) => Vec::new(),
        Err(e) => return Err(crate::kube::transport_error(e, "listing release records")),
    };
    let mut revs = secrets.iter().map(from_secret).collect::<anyhow::Result<Vec<_>>>()?;
    revs.sort_by_key(|r| std::cmp::Reverse(r.revision));
    Ok(revs)
}

/// Releases recorded in `ns` (names), for `history`/`rollback` without a release name.
pub async fn releases(client: &kube::Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let list = api
        .list_metadata(&ListParams::default().labels(&format!("{KIND_LABEL}=release")))
        .await
        .map_err(|e| crate::kube::transport_error(e, "listing release records"))?;
    let mut names: Vec<String> =
        list.items.iter().filter_map(|s| s.metadata.labels.as_ref()?.get(RELEASE_LABEL).cloned()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

pub async fn create(client: &kube::Client, rev: &Revision) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &rev.namespace);
    api.create(&PostParams::default(), &to_secret(rev)?)
        .await
        .map_err(|e| crate::kube::transport_error(e, &format!("recording revision {}", rev.revision)))?;
    Ok(())
}

/// Rewrite a revision's record (its state, outcome, finish time).
pub async fn update(client: &kube::Client, rev: &Revision) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &rev.namespace);
    let name = secret_name(&rev.release, rev.revision);
    let mut secret = to_secret(rev)?;
    let current =
        api.get(&name).await.map_err(|e| crate::kube::transport_error(e, &format!("reading release record {name}")))?;
    secret.metadata.resource_version = current.metadata.resource_version;
    api.replace(&name, &PostParams::default(), &secret)
        .await
        .map_err(|e| crate::kube::transport_error(e, &format!("updating release record {name}")))?;
    Ok(())
}

/// Drop records beyond [`KEEP`], never the newest good one.
pub async fn trim(client: &kube::Client, ns: &str, release: &str, revs: &[Revision]) -> anyhow::Result<()> {
    let last_good = revs.iter().find(|r| r.state.good()).map(|r| r.revision);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for old in revs.iter().skip(KEEP).filter(|r| Some(r.revision) != last_good) {
        let name = secret_name(release, old.revision);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if crate::kube::api_status(&e) == Some(404) => {}
            Err(e) => return Err(crate::kube::transport_error(e, &format!("deleting old release record {name}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_a_secret() {
        let rev = Revision {
            release: "audit-trail".into(),
            namespace: "ns".into(),
            revision: 3,
            state: State::Deployed,
            action: "deploy".into(),
            started: now(),
            finished: None,
            who: "me".into(),
            values_digest: Some("sha256:00".into()),
            image: Some("img:1".into()),
            outcome: "ready".into(),
            audctl_version: "0.1.0".into(),
            inventory: vec![],
            manifests: vec![serde_json::json!({"kind": "ConfigMap"})],
            cluster: None,
        };
        let secret = to_secret(&rev).expect("secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("audctl-release-audit-trail-v3"));
        assert_eq!(
            secret.metadata.labels.as_ref().and_then(|l| l.get(STATUS_LABEL)).map(String::as_str),
            Some("deployed")
        );
        let back = from_secret(&secret).expect("parse");
        assert_eq!(back.revision, 3);
        assert_eq!(back.manifests, rev.manifests);
    }
}
