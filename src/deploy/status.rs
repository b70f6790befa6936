//! Readiness of one object from its live state, by its kind's own rules (kstatus-grade). Pure: the
//! wait loop fetches, this module judges, so every rule is unit-tested on literal objects.

use serde_json::Value;

/// What the live object says about the rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Done: the object is what was applied and serving.
    Ready,
    /// Still converging; the message says on what.
    InProgress(String),
    /// Will not converge by itself (e.g. ProgressDeadlineExceeded, a failed Job).
    Failed(String),
}

/// Pods ready out of pods wanted, for workloads (progress display).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pods {
    pub ready: i64,
    pub wanted: i64,
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_i64()
}

fn string<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// The condition of `type_` in status.conditions.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn cond_status<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    condition(obj, type_)?.get("status")?.as_str()
}

fn cond_text(obj: &Value, type_: &str) -> String {
    let Some(c) = condition(obj, type_) else { return format!("no {type_} condition yet") };
    let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
    let message = c.get("message").and_then(Value::as_str).unwrap_or("");
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => format!("{type_}={}", cond_status(obj, type_).unwrap_or("?")),
        (false, true) => format!("{type_}={}: {reason}", cond_status(obj, type_).unwrap_or("?")),
        _ => format!("{type_}={}: {reason} {message}", cond_status(obj, type_).unwrap_or("?")).replace("  ", " "),
    }
}

/// The controller has seen the latest spec (status.observedGeneration >= metadata.generation).
fn observed(obj: &Value) -> Result<(), String> {
    let generation = int(obj, &["metadata", "generation"]);
    let observed = int(obj, &["status", "observedGeneration"]);
    match (generation, observed) {
        (Some(g), Some(o)) if o < g => Err(format!("controller has not observed generation {g} yet (at {o})")),
        _ => Ok(()),
    }
}

/// Readiness of `obj` (the live object as JSON) of `kind`.
pub fn assess(kind: &str, obj: &Value) -> Readiness {
    match kind {
        "Deployment" => deployment(obj),
        "StatefulSet" => statefulset(obj),
        "Job" => job(obj),
        "PodDisruptionBudget" => pdb(obj),
        "HorizontalPodAutoscaler" => hpa(obj),
        "Service" => service(obj),
        "Namespace" => match string(obj, &["status", "phase"]) {
            Some("Active") | None => Readiness::Ready,
            Some(other) => Readiness::Failed(format!("namespace is {other}")),
        },
        "PersistentVolumeClaim" => match string(obj, &["status", "phase"]) {
            Some("Bound") => Readiness::Ready,
            Some("Lost") => Readiness::Failed("claim lost its volume".into()),
            other => Readiness::InProgress(format!("claim is {}", other.unwrap_or("Pending"))),
        },
        // CloudNativePG: the operator sets Ready once every instance is up.
        "Cluster" => conditions_ready(obj, "Ready"),
        // ECK: health and phase.
        "Elasticsearch" => elasticsearch(obj),
        // Strimzi and external-secrets: a Ready condition (NotReady carries the reason).
        "Kafka" | "KafkaTopic" | "ExternalSecret" => conditions_ready(obj, "Ready"),
        // Accepted once stored; no controller reports on them (or none that gates serving traffic).
        _ => generic(obj),
    }
}

/// Pods ready / wanted for workload kinds, `None` for others.
pub fn pods(kind: &str, obj: &Value) -> Option<Pods> {
    let wanted = int(obj, &["spec", "replicas"]).unwrap_or(1);
    let ready = match kind {
        // Available pods (old and new: the status has no count of ready updated pods); the wait's
        // message says how far the update is.
        "Deployment" => int(obj, &["status", "availableReplicas"]).unwrap_or(0).min(wanted),
        "StatefulSet" => int(obj, &["status", "readyReplicas"]).unwrap_or(0),
        _ => return None,
    };
    Some(Pods { ready, wanted })
}

fn deployment(obj: &Value) -> Readiness {
    // Generation first: until the controller has seen this apply, the conditions are about the
    // previous rollout. A rollback right after a stuck one would otherwise fail on the stuck
    // one's ProgressDeadlineExceeded (seen on the testbed), which the controller resets once it
    // observes the new template.
    if let Err(e) = observed(obj) {
        return Readiness::InProgress(e);
    }
    if let Some(c) = condition(obj, "Progressing")
        && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    {
        return Readiness::Failed(format!("rollout stuck: {}", cond_text(obj, "Progressing")));
    }
    let wanted = int(obj, &["spec", "replicas"]).unwrap_or(1);
    let updated = int(obj, &["status", "updatedReplicas"]).unwrap_or(0);
    let total = int(obj, &["status", "replicas"]).unwrap_or(0);
    let available = int(obj, &["status", "availableReplicas"]).unwrap_or(0);
    if updated < wanted {
        return Readiness::InProgress(format!("{updated} of {wanted} pods updated"));
    }
    if total > updated {
        return Readiness::InProgress(format!("{} old pods still running", total - updated));
    }
    if available < updated {
        return Readiness::InProgress(format!("{available} of {updated} updated pods available"));
    }
    Readiness::Ready
}

fn statefulset(obj: &Value) -> Readiness {
    if let Err(e) = observed(obj) {
        return Readiness::InProgress(e);
    }
    let wanted = int(obj, &["spec", "replicas"]).unwrap_or(1);
    let ready = int(obj, &["status", "readyReplicas"]).unwrap_or(0);
    let updated = int(obj, &["status", "updatedReplicas"]).unwrap_or(0);
    let on_delete = string(obj, &["spec", "updateStrategy", "type"]) == Some("OnDelete");
    if ready < wanted {
        return Readiness::InProgress(format!("{ready} of {wanted} pods ready"));
    }
    if !on_delete {
        let partition = int(obj, &["spec", "updateStrategy", "rollingUpdate", "partition"]).unwrap_or(0);
        if partition == 0 {
            let (cur, upd) = (string(obj, &["status", "currentRevision"]), string(obj, &["status", "updateRevision"]));
            if cur != upd || updated < wanted {
                return Readiness::InProgress(format!("{updated} of {wanted} pods updated"));
            }
        } else if updated < wanted - partition {
            return Readiness::InProgress(format!(
                "{updated} of {} pods updated (partition {partition})",
                wanted - partition
            ));
        }
    }
    Readiness::Ready
}

fn job(obj: &Value) -> Readiness {
    if cond_status(obj, "Failed") == Some("True") {
        return Readiness::Failed(cond_text(obj, "Failed"));
    }
    if cond_status(obj, "Complete") == Some("True") {
        return Readiness::Ready;
    }
    let succeeded = int(obj, &["status", "succeeded"]).unwrap_or(0);
    let completions = int(obj, &["spec", "completions"]).unwrap_or(1);
    Readiness::InProgress(format!("{succeeded} of {completions} completions"))
}

fn pdb(obj: &Value) -> Readiness {
    match observed(obj) {
        Err(e) => Readiness::InProgress(e),
        // The disruption controller computes the budget once it has seen the generation.
        Ok(()) if obj.pointer("/status/observedGeneration").is_some() => Readiness::Ready,
        Ok(()) => Readiness::InProgress("disruption controller has not computed the budget yet".into()),
    }
}

fn hpa(obj: &Value) -> Readiness {
    // Accepted once stored (kstatus: an HPA has no rollout of its own). The controller reports on
    // its first sync (up to --horizontal-pod-autoscaler-sync-period, 15 s by default), so waiting
    // for that would only add latency; a target it cannot scale (AbleToScale=False) is waited on.
    // ScalingActive=False without a metrics server is not a rollout failure: minReplicas still holds.
    match cond_status(obj, "AbleToScale") {
        Some("False") => Readiness::InProgress(cond_text(obj, "AbleToScale")),
        _ => Readiness::Ready,
    }
}

fn service(obj: &Value) -> Readiness {
    if string(obj, &["spec", "type"]) == Some("LoadBalancer") {
        let ingress = obj.pointer("/status/loadBalancer/ingress").and_then(Value::as_array);
        if ingress.is_none_or(|i| i.is_empty()) {
            return Readiness::InProgress("waiting for a load balancer address".into());
        }
    }
    match string(obj, &["spec", "type"]) {
        Some("ExternalName") => Readiness::Ready,
        _ if obj.pointer("/spec/clusterIP").is_none() => Readiness::InProgress("no cluster IP yet".into()),
        _ => Readiness::Ready,
    }
}

fn elasticsearch(obj: &Value) -> Readiness {
    if let Err(e) = observed(obj) {
        return Readiness::InProgress(e);
    }
    let health = string(obj, &["status", "health"]).unwrap_or("unknown");
    let phase = string(obj, &["status", "phase"]).unwrap_or("unknown");
    match (health, phase) {
        ("green", "Ready") => Readiness::Ready,
        (_, "Invalid") => Readiness::Failed(format!("ECK reports phase Invalid (health {health})")),
        _ => Readiness::InProgress(format!("health {health}, phase {phase}")),
    }
}

fn conditions_ready(obj: &Value, type_: &str) -> Readiness {
    if let Err(e) = observed(obj) {
        return Readiness::InProgress(e);
    }
    match cond_status(obj, type_) {
        Some("True") => Readiness::Ready,
        // An operator reporting a hard error says so in the reason; still converging otherwise.
        Some("False")
            if condition(obj, type_)
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                .is_some_and(|r| r.contains("Error") || r.contains("Invalid") || r.contains("Failed")) =>
        {
            Readiness::Failed(cond_text(obj, type_))
        }
        _ => Readiness::InProgress(cond_text(obj, type_)),
    }
}

fn generic(obj: &Value) -> Readiness {
    // kstatus's generic rule: a Ready condition when there is one, else an observed generation.
    if condition(obj, "Ready").is_some() {
        return conditions_ready(obj, "Ready");
    }
    match (int(obj, &["metadata", "generation"]), int(obj, &["status", "observedGeneration"])) {
        (Some(g), Some(o)) if o < g => Readiness::InProgress(format!("controller has not observed generation {g} yet")),
        _ => Readiness::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(status: Value) -> Value {
        json!({"metadata": {"generation": 2}, "spec": {"replicas": 3}, "status": status})
    }

    #[test]
    fn deployment_rules() {
        let ready = dep(json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}));
        assert_eq!(assess("Deployment", &ready), Readiness::Ready);
        let stale = dep(json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}));
        assert!(matches!(assess("Deployment", &stale), Readiness::InProgress(m) if m.contains("generation 2")));
        let old = dep(json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}));
        assert!(matches!(assess("Deployment", &old), Readiness::InProgress(m) if m.contains("1 old pods")));
        let unavailable =
            dep(json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}));
        assert!(matches!(assess("Deployment", &unavailable), Readiness::InProgress(_)));
        let stuck = dep(json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"x-1\" has timed out progressing."}]}));
        assert!(matches!(assess("Deployment", &stuck), Readiness::Failed(m) if m.contains("ProgressDeadlineExceeded")));
        // The same condition before the controller saw the new generation: the previous rollout's.
        let earlier = dep(json!({"observedGeneration": 1, "replicas": 4, "updatedReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"x-1\" has timed out progressing."}]}));
        assert!(matches!(assess("Deployment", &earlier), Readiness::InProgress(m) if m.contains("generation 2")));
        assert_eq!(pods("Deployment", &unavailable), Some(Pods { ready: 2, wanted: 3 }));
    }

    #[test]
    fn statefulset_job_and_others() {
        let sts = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "currentReplicas": 2, "updatedReplicas": 2,
                       "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(assess("StatefulSet", &sts), Readiness::Ready);
        let mut rolling = sts.clone();
        rolling["status"]["updateRevision"] = json!("b");
        assert!(matches!(assess("StatefulSet", &rolling), Readiness::InProgress(_)));
        let failed =
            json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert!(matches!(assess("Job", &failed), Readiness::Failed(m) if m.contains("BackoffLimitExceeded")));
        assert_eq!(
            assess("Service", &json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.5"}})),
            Readiness::Ready
        );
        assert!(matches!(
            assess("Service", &json!({"spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.5"}})),
            Readiness::InProgress(_)
        ));
        assert_eq!(assess("Ingress", &json!({"metadata": {"generation": 1}})), Readiness::Ready);
        let pdb = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "disruptionsAllowed": 1}});
        assert_eq!(assess("PodDisruptionBudget", &pdb), Readiness::Ready);
        assert!(matches!(
            assess("PodDisruptionBudget", &json!({"metadata": {"generation": 1}})),
            Readiness::InProgress(_)
        ));
    }

    #[test]
    fn operator_resources_by_conditions() {
        let cnpg =
            json!({"metadata": {"generation": 1}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(assess("Cluster", &cnpg), Readiness::Ready);
        let not_yet = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Creating"}]}});
        assert!(matches!(assess("Kafka", &not_yet), Readiness::InProgress(m) if m.contains("Creating")));
        assert!(matches!(assess("Kafka", &json!({})), Readiness::InProgress(_)));
        let es = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "health": "yellow", "phase": "Ready"}});
        assert!(matches!(assess("Elasticsearch", &es), Readiness::InProgress(m) if m.contains("yellow")));
        let es = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "health": "green", "phase": "Ready"}});
        assert_eq!(assess("Elasticsearch", &es), Readiness::Ready);
        let broken =
            json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretSyncedError"}]}});
        assert!(matches!(assess("ExternalSecret", &broken), Readiness::Failed(_)));
    }
}
