//! From template output to checked objects: split documents, parse each into its Kubernetes type
//! (k8s-openapi) or custom resource type (crds.rs), refuse fields the type does not know, and sort
//! into apply order.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::crds::*;

/// One rendered object: its identity, the template it came from and its text (comments kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub template: String,
    pub text: String,
}

impl Object {
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Split a template's output into objects, checking each; errors name the template and object.
pub fn parse(template: &str, output: &str, errors: &mut Vec<String>) -> Vec<Object> {
    let mut objects = Vec::new();
    for chunk in split_documents(output) {
        let text = chunk.trim_matches('\n');
        let blank = text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        if blank {
            continue;
        }
        match parse_one(template, text) {
            Ok(object) => objects.push(object),
            Err(e) => errors.push(e),
        }
    }
    objects
}

fn split_documents(output: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in output.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line.trim_end());
            last.push('\n');
        }
    }
    docs
}

fn parse_one(template: &str, text: &str) -> Result<Object, String> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        format!("template {template}, object {}: not valid YAML: {e}\n{}", guess_id(text), numbered(text, &e))
    })?;
    let field = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default();
    let object =
        Object { api_version, kind, name: name.to_owned(), template: template.to_owned(), text: text.to_owned() };
    if object.name.is_empty() || object.kind.is_empty() {
        return Err(format!("template {template}: a document without kind or metadata.name:\n{text}"));
    }
    check_typed(&object.api_version, &object.kind, &value)
        .map_err(|e| format!("template {template}, object {}: {e}", object.id()))?;
    Ok(object)
}

/// The type of every object audctl renders. Anything else is a template bug.
fn check_typed(api_version: &str, kind: &str, value: &Value) -> Result<(), String> {
    match (api_version, kind) {
        ("v1", "Namespace") => typed::<Namespace>(value),
        ("v1", "ServiceAccount") => typed::<ServiceAccount>(value),
        ("v1", "ConfigMap") => typed::<ConfigMap>(value),
        ("v1", "Secret") => typed::<Secret>(value),
        ("v1", "Service") => typed::<Service>(value),
        ("apps/v1", "Deployment") => typed::<Deployment>(value),
        ("apps/v1", "StatefulSet") => typed::<StatefulSet>(value),
        ("batch/v1", "CronJob") => typed::<CronJob>(value),
        ("rbac.authorization.k8s.io/v1", "Role") => typed::<Role>(value),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed::<RoleBinding>(value),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => typed::<HorizontalPodAutoscaler>(value),
        ("policy/v1", "PodDisruptionBudget") => typed::<PodDisruptionBudget>(value),
        ("networking.k8s.io/v1", "Ingress") => typed::<Ingress>(value),
        ("networking.k8s.io/v1", "NetworkPolicy") => typed::<NetworkPolicy>(value),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => typed::<Custom<ServiceMonitorSpec>>(value),
        ("monitoring.coreos.com/v1", "PrometheusRule") => typed::<Custom<PrometheusRuleSpec>>(value),
        ("external-secrets.io/v1", "ExternalSecret") => typed::<Custom<ExternalSecretSpec>>(value),
        ("postgresql.cnpg.io/v1", "Cluster") => typed::<Custom<ClusterSpec>>(value),
        ("postgresql.cnpg.io/v1", "ScheduledBackup") => typed::<Custom<ScheduledBackupSpec>>(value),
        ("elasticsearch.k8s.elastic.co/v1", "Elasticsearch") => typed::<Custom<ElasticsearchSpec>>(value),
        ("kafka.strimzi.io/v1", "Kafka") => typed::<Custom<KafkaSpec>>(value),
        ("kafka.strimzi.io/v1", "KafkaNodePool") => typed::<Custom<KafkaNodePoolSpec>>(value),
        ("kafka.strimzi.io/v1", "KafkaTopic") => typed::<Custom<KafkaTopicSpec>>(value),
        _ => Err(format!("audctl has no type for apiVersion {api_version:?} kind {kind:?}")),
    }
}

/// Deserialize into `T`, then serialize back: a key of the input missing from the output is a
/// field `T` does not have (k8s-openapi ignores unknown fields; the API server would prune them).
fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(), String> {
    let object: T =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_yaml::to_value(&object).map_err(|e| e.to_string())?;
    match dropped(value, &back, String::new()) {
        Some(path) => Err(format!("{path}: unknown field (not in the schema of this kind)")),
        None => Ok(()),
    }
}

fn dropped(input: &Value, typed: &Value, path: String) -> Option<String> {
    match (input, typed) {
        (Value::Mapping(a), Value::Mapping(b)) => a.iter().find_map(|(k, v)| {
            let child = if path.is_empty() { key(k) } else { format!("{path}.{}", key(k)) };
            match b.get(k) {
                Some(w) => dropped(v, w, child),
                None if v.is_null() => None,
                None => Some(child),
            }
        }),
        (Value::Sequence(a), Value::Sequence(b)) => {
            a.iter().zip(b).enumerate().find_map(|(i, (v, w))| dropped(v, w, format!("{path}[{i}]")))
        }
        _ => None,
    }
}

fn key(k: &Value) -> String {
    k.as_str().map(str::to_owned).unwrap_or_else(|| format!("{k:?}"))
}

fn guess_id(text: &str) -> String {
    let find = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned())).unwrap_or("?".into())
    };
    format!("{}/{}", find("kind:"), find("name:"))
}

/// The offending document with line numbers around the error, to find the template line.
fn numbered(text: &str, e: &serde_yaml::Error) -> String {
    let at = e.location().map(|l| l.line()).unwrap_or(1);
    text.lines()
        .enumerate()
        .filter(|(i, _)| (i + 1).abs_diff(at) <= 3)
        .map(|(i, l)| format!("  {:>4}{} {l}", i + 1, if i + 1 == at { ">" } else { "|" }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Apply order: Helm's install order for built-in kinds, then custom resources (their CRDs and
/// operators must be there first; ExternalSecret before the datastores that read its Secret).
pub fn rank(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "CronJob",
        "Ingress",
        "ExternalSecret",
        "Cluster",
        "ScheduledBackup",
        "Elasticsearch",
        "KafkaNodePool",
        "Kafka",
        "KafkaTopic",
        "ServiceMonitor",
        "PrometheusRule",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

pub fn sort(objects: &mut [Object]) {
    objects.sort_by(|a, b| (rank(&a.kind), &a.kind, &a.name).cmp(&(rank(&b.kind), &b.kind, &b.name)));
}
