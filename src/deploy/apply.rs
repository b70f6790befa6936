//! The cluster side of a deploy: resolve every object's resource type (and report every missing CRD
//! at once), server-side apply with field manager `audctl`, read and delete by identity.

use std::collections::{BTreeMap, BTreeSet};

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

use super::plan::{MANAGER, Manifest, ObjectRef};
use crate::kube::{api_status, transport_error};

/// Resource types of the objects of a release, by (apiVersion, kind).
pub struct Resources {
    found: BTreeMap<(String, String), (ApiResource, bool)>,
}

/// Look up every apiVersion the objects use. Kinds the cluster does not serve (a CRD not installed)
/// are all reported together, as a usage error (exit 2), before anything is applied.
pub async fn resolve(client: &kube::Client, ids: &[&ObjectRef]) -> anyhow::Result<Resources> {
    let versions: BTreeSet<String> = ids.iter().map(|r| r.api_version.clone()).collect();
    // One discovery request per apiVersion, all at once.
    let mut tasks = tokio::task::JoinSet::new();
    for av in versions {
        let client = client.clone();
        tasks.spawn(async move {
            let list = if av.contains('/') {
                client.list_api_group_resources(&av).await
            } else {
                client.list_core_api_resources(&av).await
            };
            (av, list)
        });
    }
    let mut served: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (av, list) = joined?;
        let kinds = match list {
            Ok(l) => l
                .resources
                .into_iter()
                .filter(|r| !r.name.contains('/'))
                .map(|r| (r.kind, (r.name, r.namespaced)))
                .collect(),
            Err(e) if api_status(&e) == Some(404) => BTreeMap::new(),
            Err(e) => return Err(transport_error(e, &format!("discovering {av}"))),
        };
        served.insert(av, kinds);
    }
    let mut found = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for r in ids {
        match served.get(r.api_version.as_str()).and_then(|k| k.get(&r.kind)) {
            Some((plural, namespaced)) => {
                let (group, version) = r.api_version.rsplit_once('/').unwrap_or(("", &r.api_version));
                let gvk = GroupVersionKind::gvk(group, version, &r.kind);
                found.insert(
                    (r.api_version.clone(), r.kind.clone()),
                    (ApiResource::from_gvk_with_plural(&gvk, plural), *namespaced),
                );
            }
            None => {
                missing.insert(format!(
                    "{} ({}): the cluster does not serve this kind; install the CRD that defines it (e.g. {}.{}) and its operator",
                    r.kind,
                    r.api_version,
                    plural(&r.kind),
                    r.group()
                ));
            }
        }
    }
    if !missing.is_empty() {
        let n = missing.len();
        return Err(crate::error::usage(format!(
            "{n} resource type{} missing from the cluster; nothing was applied:\n  {}",
            if n == 1 { " is" } else { "s are" },
            missing.into_iter().collect::<Vec<_>>().join("\n  ")
        )));
    }
    Ok(Resources { found })
}

/// The plural resource name Kubernetes derives from a kind (as apiextensions' defaulting and
/// `kubectl` do): `Kafka` -> `kafkas`, `Elasticsearch` -> `elasticsearches`, `NetworkPolicy` ->
/// `networkpolicies`. A guess for the hint only; discovery gives the real one.
fn plural(kind: &str) -> String {
    let k = kind.to_lowercase();
    if k.ends_with('s') || k.ends_with('x') || k.ends_with("ch") || k.ends_with("sh") {
        format!("{k}es")
    } else if let Some(stem) = k.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

/// Why one apply failed.
#[derive(Debug)]
pub enum ApplyError {
    /// Fields owned by another field manager; each entry names the manager and the field.
    Conflict(Vec<String>),
    /// The namespace of a namespaced object does not exist (dry runs before the first install).
    NoNamespace,
    Other(anyhow::Error),
}

impl Resources {
    pub fn api(&self, client: &kube::Client, r: &ObjectRef) -> anyhow::Result<Api<DynamicObject>> {
        let (ar, namespaced) = self
            .found
            .get(&(r.api_version.clone(), r.kind.clone()))
            .ok_or_else(|| anyhow::anyhow!("{r}: resource type {} {} was not resolved", r.api_version, r.kind))?;
        Ok(match (namespaced, &r.namespace) {
            (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
            (true, None) => Api::default_namespaced_with(client.clone(), ar),
            (false, _) => Api::all_with(client.clone(), ar),
        })
    }

    pub fn knows(&self, r: &ObjectRef) -> bool {
        self.found.contains_key(&(r.api_version.clone(), r.kind.clone()))
    }

    pub fn namespaced(&self, r: &ObjectRef) -> bool {
        self.found.get(&(r.api_version.clone(), r.kind.clone())).is_some_and(|(_, n)| *n)
    }

    /// Server-side apply of one object; returns the object as the server stored (or would store) it.
    pub async fn apply(
        &self,
        client: &kube::Client,
        m: &Manifest,
        force: bool,
        dry_run: bool,
    ) -> Result<Value, ApplyError> {
        let api = self.api(client, &m.id).map_err(ApplyError::Other)?;
        let mut params = PatchParams::apply(MANAGER);
        if force {
            params = params.force();
        }
        if dry_run {
            params = params.dry_run();
        }
        match api.patch(&m.id.name, &params, &Patch::Apply(&m.body)).await {
            Ok(obj) => serde_json::to_value(obj).map_err(|e| ApplyError::Other(e.into())),
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict" => {
                let causes = status.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
                let conflicts: Vec<String> = causes
                    .iter()
                    .filter(|c| c.reason == "FieldManagerConflict" || !c.field.is_empty())
                    .map(|c| format!("{} ({})", c.field, c.message))
                    .collect();
                Err(ApplyError::Conflict(if conflicts.is_empty() { vec![status.message.clone()] } else { conflicts }))
            }
            Err(kube::Error::Api(status))
                if status.code == 404 && status.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
            {
                Err(ApplyError::NoNamespace)
            }
            Err(e) => Err(ApplyError::Other(transport_error(e, &format!("applying {}", m.id)))),
        }
    }

    pub async fn get(&self, client: &kube::Client, r: &ObjectRef) -> anyhow::Result<Option<Value>> {
        let api = self.api(client, r)?;
        match api.get_opt(&r.name).await {
            Ok(Some(o)) => Ok(Some(serde_json::to_value(o)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(transport_error(e, &format!("reading {r}"))),
        }
    }

    pub async fn delete(&self, client: &kube::Client, r: &ObjectRef, dry_run: bool) -> anyhow::Result<()> {
        let api = self.api(client, r)?;
        let mut params = DeleteParams::background();
        if dry_run {
            params = params.dry_run();
        }
        match api.delete(&r.name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if api_status(&e) == Some(404) => Ok(()),
            Err(e) => Err(transport_error(e, &format!("deleting {r}"))),
        }
    }
}

/// "field .spec.replicas is owned by field manager ..." lines for an apply conflict.
pub fn describe_conflict(id: &ObjectRef, conflicts: &[String]) -> String {
    format!("{id}: {}", conflicts.iter().map(|c| format!("conflict on {c}")).collect::<Vec<_>>().join("; "))
}

#[cfg(test)]
mod tests {
    /// The CRD names of the kinds the release uses, as their operators name them.
    #[test]
    fn plurals_as_kubernetes_derives_them() {
        for (kind, plural) in [
            ("Kafka", "kafkas"),
            ("KafkaTopic", "kafkatopics"),
            ("Elasticsearch", "elasticsearches"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("Gateway", "gateways"),
            ("ExternalSecret", "externalsecrets"),
        ] {
            assert_eq!(super::plural(kind), plural);
        }
    }
}
