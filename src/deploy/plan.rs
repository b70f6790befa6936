//! What a deploy applies, as data: the rendered objects as JSON bodies with audctl's ownership label,
//! their identities (the inventory a revision records), what to prune, and the normalised, masked
//! views `diff` compares. Pure; no cluster access.

use std::collections::BTreeSet;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::render::Object;

/// Field manager of every server-side apply audctl makes.
pub const MANAGER: &str = "audctl";
/// Label audctl adds to every object it applies: the release it belongs to. Prune only ever deletes
/// objects carrying it (and managed by [`MANAGER`]).
pub const RELEASE_LABEL: &str = "audctl.io/release";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Identity of one applied object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ObjectRef {
    pub fn of(body: &Value) -> anyhow::Result<Self> {
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            api_version: s("/apiVersion").context("object without apiVersion")?,
            kind: s("/kind").context("object without kind")?,
            name: s("/metadata/name").context("object without metadata.name")?,
            namespace: s("/metadata/namespace"),
        })
    }

    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub id: ObjectRef,
    pub body: Value,
}

/// The rendered objects (already in apply order) as apply bodies labelled for `release`.
pub fn manifests(objects: &[Object], release: &str) -> anyhow::Result<Vec<Manifest>> {
    objects
        .iter()
        .map(|o| {
            let body: Value = serde_yaml::from_str(&o.text)
                .with_context(|| format!("template {}: object {} is not valid YAML", o.template, o.id()))?;
            labelled(body, release)
        })
        .collect()
}

/// Bodies recorded in a revision, re-labelled (idempotent) for re-applying.
pub fn from_bodies(bodies: Vec<Value>, release: &str) -> anyhow::Result<Vec<Manifest>> {
    bodies.into_iter().map(|b| labelled(b, release)).collect()
}

fn labelled(mut body: Value, release: &str) -> anyhow::Result<Manifest> {
    let id = ObjectRef::of(&body)?;
    let meta = body
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .with_context(|| format!("{id}: metadata is not a mapping"))?;
    let labels = meta.entry("labels").or_insert_with(|| Value::Object(Default::default()));
    if labels.is_null() {
        *labels = Value::Object(Default::default());
    }
    let labels = labels.as_object_mut().with_context(|| format!("{id}: metadata.labels is not a mapping"))?;
    labels.insert(RELEASE_LABEL.into(), Value::String(release.into()));
    Ok(Manifest { id, body })
}

pub fn inventory(manifests: &[Manifest]) -> Vec<ObjectRef> {
    manifests.iter().map(|m| m.id.clone()).collect()
}

/// Objects of `previous` no longer in `current`, in reverse apply order (dependents first). A
/// Namespace is never pruned: it holds the release records and whatever else lives there.
pub fn to_prune(previous: &[ObjectRef], current: &[ObjectRef]) -> Vec<ObjectRef> {
    let keep: BTreeSet<(&str, &str, &str, Option<&str>)> =
        current.iter().map(|r| (r.group(), r.kind.as_str(), r.name.as_str(), r.namespace.as_deref())).collect();
    let mut gone: Vec<ObjectRef> = previous
        .iter()
        .filter(|r| r.kind != "Namespace")
        .filter(|r| !keep.contains(&(r.group(), r.kind.as_str(), r.name.as_str(), r.namespace.as_deref())))
        .cloned()
        .collect();
    gone.sort_by_key(|r| std::cmp::Reverse(crate::render::objects::rank(&r.kind)));
    gone.dedup();
    gone
}

/// May prune delete this live object? Only when audctl put it there for this release: it carries
/// the release label and audctl is one of its field managers.
pub fn ours(live: &Value, release: &str) -> bool {
    let labelled =
        live.pointer("/metadata/labels").and_then(|l| l.get(RELEASE_LABEL)).and_then(Value::as_str) == Some(release);
    let managed = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|e| e.get("manager").and_then(Value::as_str) == Some(MANAGER)));
    labelled && managed
}

/// The image of the release: the first container of the first Deployment.
pub fn image(manifests: &[Manifest]) -> Option<String> {
    manifests
        .iter()
        .find(|m| m.id.kind == "Deployment")
        .and_then(|m| m.body.pointer("/spec/template/spec/containers/0/image"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Fields the server owns or that change on every write: not part of what a deploy changes.
pub fn normalize(v: &mut Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["managedFields", "resourceVersion", "generation", "uid", "creationTimestamp", "selfLink"] {
            meta.remove(k);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            a.remove("deployment.kubernetes.io/revision");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
}

const MASK: &str = "***";

/// Replace every value of a Secret's data/stringData by a mask; where a key's value differs between
/// `before` and `after`, the masks say so, so a diff still shows that (not what) it changes.
pub fn mask_secret(before: Option<&mut Value>, after: &mut Value) {
    if after.get("kind").and_then(Value::as_str) != Some("Secret") {
        return;
    }
    let mut before = before;
    for field in ["data", "stringData"] {
        let old: Option<serde_json::Map<String, Value>> =
            before.as_deref().and_then(|b| b.get(field)).and_then(Value::as_object).cloned();
        if let Some(map) = after.get_mut(field).and_then(Value::as_object_mut) {
            for (k, v) in map.iter_mut() {
                let same = old.as_ref().and_then(|o| o.get(k)) == Some(v);
                *v = Value::String(if same || old.is_none() { MASK.into() } else { format!("{MASK} (after)") });
            }
        }
        if let Some(map) = before.as_deref_mut().and_then(|b| b.get_mut(field)).and_then(Value::as_object_mut) {
            let new = after.get(field).and_then(Value::as_object);
            for (k, v) in map.iter_mut() {
                let changed = new.and_then(|n| n.get(k)).is_some_and(|n| n.as_str() != Some(MASK));
                *v = Value::String(if changed { format!("{MASK} (before)") } else { MASK.into() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(kind: &str, name: &str) -> ObjectRef {
        ObjectRef { api_version: "v1".into(), kind: kind.into(), name: name.into(), namespace: Some("ns".into()) }
    }

    #[test]
    fn prune_keeps_rendered_and_namespaces() {
        let previous = vec![r("Namespace", "ns"), r("ConfigMap", "a"), r("Service", "b"), r("ConfigMap", "c")];
        let current = vec![r("ConfigMap", "a")];
        assert_eq!(to_prune(&previous, &current), vec![r("Service", "b"), r("ConfigMap", "c")]);
    }

    #[test]
    fn label_is_added_and_ownership_needs_label_and_manager() {
        let m = labelled(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": null}}),
            "rel",
        )
        .expect("labelled");
        assert_eq!(m.body["metadata"]["labels"][RELEASE_LABEL], "rel");
        let mut live = m.body.clone();
        assert!(!ours(&live, "rel"), "no managedFields: not proven ours");
        live["metadata"]["managedFields"] = json!([{"manager": "audctl", "operation": "Apply"}]);
        assert!(ours(&live, "rel"));
        assert!(!ours(&live, "other"));
    }

    #[test]
    fn secrets_are_masked_but_changes_show() {
        let mut before = json!({"kind": "Secret", "data": {"a": "eA==", "b": "eQ=="}});
        let mut after = json!({"kind": "Secret", "data": {"a": "eA==", "b": "eg=="}});
        mask_secret(Some(&mut before), &mut after);
        assert_eq!(after["data"], json!({"a": "***", "b": "*** (after)"}));
        assert_eq!(before["data"], json!({"a": "***", "b": "*** (before)"}));
        let text = format!("{before}{after}");
        assert!(!text.contains("eA==") && !text.contains("eg=="));
    }
}
