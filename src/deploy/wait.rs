//! Wait until every applied object is ready by its kind's rules ([`super::status`]), showing pods
//! ready x/y per workload (bars on a terminal, one plain line per change in CI). On a failure or a
//! timeout, say what failed: the not-ready pods of the new revision, their reasons and their events.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

use super::apply::Resources;
use super::plan::ObjectRef;
use super::status::{self, Readiness};

/// How the wait ended.
pub enum Outcome {
    Ready,
    /// What failed, one line per object, with pod reasons and events.
    Failed(Vec<String>),
}

const POLL: Duration = Duration::from_millis(250);

pub async fn wait(
    client: &kube::Client,
    resources: &Resources,
    ids: &[ObjectRef],
    timeout: Duration,
    abort: &(dyn Fn() -> Option<String> + Sync),
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let multi =
        MultiProgress::with_draw_target(if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut last_line: BTreeMap<String, String> = BTreeMap::new();
    let mut pending: Vec<ObjectRef> = ids.to_vec();
    let mut last: BTreeMap<String, (Readiness, Value)> = BTreeMap::new();
    loop {
        let mut still = Vec::new();
        let mut failed = Vec::new();
        for id in &pending {
            let Some(live) = resources.get(client, id).await? else {
                still.push(id.clone());
                last.insert(id.to_string(), (Readiness::InProgress("not found".into()), Value::Null));
                continue;
            };
            let r = status::assess(&id.kind, &live);
            let key = id.to_string();
            let pods = status::pods(&id.kind, &live);
            let line = match (&r, pods) {
                (Readiness::Ready, Some(p)) => format!("{key}: {}/{} pods ready", p.ready, p.wanted),
                (Readiness::Ready, None) => format!("{key}: ready"),
                (Readiness::InProgress(m), Some(p)) => format!("{key}: {}/{} pods ready ({m})", p.ready, p.wanted),
                (Readiness::InProgress(m), None) => format!("{key}: waiting ({m})"),
                (Readiness::Failed(m), _) => format!("{key}: failed ({m})"),
            };
            if tty {
                if let Some(p) = pods {
                    let bar = bars.entry(key.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new(p.wanted.max(0) as u64));
                        b.set_style(
                            ProgressStyle::with_template("{msg:40} [{bar:20}] {pos}/{len} pods ready {elapsed}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar())
                                .progress_chars("=> "),
                        );
                        b.set_message(key.clone());
                        b
                    });
                    bar.set_length(p.wanted.max(0) as u64);
                    bar.set_position(p.ready.max(0) as u64);
                }
            } else if last_line.get(&key) != Some(&line) {
                eprintln!("{line}");
                last_line.insert(key.clone(), line.clone());
            }
            match &r {
                Readiness::Ready => {
                    if let Some(b) = bars.get(&key) {
                        b.finish();
                    }
                }
                Readiness::InProgress(_) => still.push(id.clone()),
                Readiness::Failed(m) => failed.push((id.clone(), m.clone(), live.clone())),
            }
            last.insert(key, (r, live));
        }
        if !failed.is_empty() {
            let mut lines = Vec::new();
            for (id, m, live) in failed {
                lines.push(format!("{id}: {m}"));
                lines.extend(explain(client, &id, &live).await.into_iter().map(|l| format!("  {l}")));
            }
            multi.clear().ok();
            return Ok(Outcome::Failed(lines));
        }
        if still.is_empty() {
            multi.clear().ok();
            return Ok(Outcome::Ready);
        }
        if let Some(why) = abort() {
            multi.clear().ok();
            return Ok(Outcome::Failed(vec![why]));
        }
        if Instant::now() >= deadline {
            let mut lines = Vec::new();
            for id in &still {
                let (r, live) =
                    last.get(&id.to_string()).cloned().unwrap_or((Readiness::InProgress("?".into()), Value::Null));
                let why = match r {
                    Readiness::InProgress(m) | Readiness::Failed(m) => m,
                    Readiness::Ready => "ready".into(),
                };
                lines.push(format!("{id}: not ready after {}s: {why}", timeout.as_secs()));
                lines.extend(explain(client, id, &live).await.into_iter().map(|l| format!("  {l}")));
            }
            multi.clear().ok();
            return Ok(Outcome::Failed(lines));
        }
        pending = still;
        tokio::time::sleep(POLL).await;
    }
}

/// Not-ready pods of a workload's current revision, with their reasons and latest warning events.
async fn explain(client: &kube::Client, id: &ObjectRef, live: &Value) -> Vec<String> {
    let Some(ns) = id.namespace.as_deref() else { return Vec::new() };
    let selector = match id.kind.as_str() {
        "Deployment" => match new_replicaset_hash(client, ns, id, live).await {
            Some(hash) => Some(format!("{},pod-template-hash={hash}", match_labels(live))),
            None => Some(match_labels(live)),
        },
        "StatefulSet" => live
            .pointer("/status/updateRevision")
            .and_then(Value::as_str)
            .map(|rev| format!("{},controller-revision-hash={rev}", match_labels(live))),
        _ => None,
    };
    let Some(selector) = selector else { return Vec::new() };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else { return Vec::new() };
    let mut lines = Vec::new();
    for pod in list.items.iter().take(5) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(reason) = pod_problem(pod) else { continue };
        lines.push(format!("pod {name}: {reason}"));
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        if let Ok(evs) = events.list(&params).await {
            let mut warnings: Vec<&Event> =
                evs.items.iter().filter(|e| e.type_.as_deref() == Some("Warning")).collect();
            warnings.sort_by_key(|e| e.metadata.creation_timestamp.clone());
            for e in warnings.iter().rev().take(3) {
                lines.push(format!(
                    "  event {}: {} (x{})",
                    e.reason.as_deref().unwrap_or("?"),
                    e.message.as_deref().unwrap_or("").trim(),
                    e.count.unwrap_or(1)
                ));
            }
        }
    }
    if list.items.is_empty() {
        lines.push(format!("no pods match {selector}"));
    }
    lines
}

fn match_labels(live: &Value) -> String {
    live.pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// The pod-template-hash of the Deployment's current ReplicaSet (same revision annotation).
async fn new_replicaset_hash(client: &kube::Client, ns: &str, id: &ObjectRef, live: &Value) -> Option<String> {
    let revision = live.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")?.as_str()?.to_owned();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let list = rss.list(&ListParams::default().labels(&match_labels(live))).await.ok()?;
    list.items
        .into_iter()
        .filter(|rs| rs.metadata.owner_references.iter().flatten().any(|o| o.kind == "Deployment" && o.name == id.name))
        .find(|rs| {
            rs.metadata.annotations.as_ref().and_then(|a| a.get("deployment.kubernetes.io/revision")) == Some(&revision)
        })
        .and_then(|rs| rs.metadata.labels?.get("pod-template-hash").cloned())
}

/// Why a pod is not ready: a waiting/terminated container reason, unschedulable, or a false
/// Ready condition. `None` for a ready pod.
pub fn pod_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let cond = |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t);
    if cond("Ready").is_some_and(|c| c.status == "True") {
        return None;
    }
    for cs in status.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_else(|| "Waiting".into());
            let msg = w.message.clone().unwrap_or_default();
            return Some(
                format!("container {} {reason} (restarts {}) {msg}", cs.name, cs.restart_count).trim().to_owned(),
            );
        }
        if let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) {
            return Some(format!(
                "container {} terminated: {} (exit {})",
                cs.name,
                t.reason.clone().unwrap_or_default(),
                t.exit_code
            ));
        }
        if !cs.ready {
            return Some(format!("container {} running but not ready (readiness failing)", cs.name));
        }
    }
    if let Some(c) = cond("PodScheduled").filter(|c| c.status != "True") {
        return Some(format!(
            "{}: {}",
            c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
            c.message.clone().unwrap_or_default()
        ));
    }
    match cond("Ready") {
        Some(c) => Some(format!(
            "not ready: {} {}",
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default()
        )),
        None => Some(format!("phase {}", status.phase.clone().unwrap_or_else(|| "Pending".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    #[test]
    fn pod_problems_name_the_reason() {
        let ready = pod(serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}));
        assert_eq!(pod_problem(&ready), None);
        let crash = pod(serde_json::json!({"conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}]}));
        assert_eq!(pod_problem(&crash).as_deref(), Some("container server CrashLoopBackOff (restarts 4) back-off 40s"));
        let pull = pod(serde_json::json!({"containerStatuses": [{"name": "server", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}));
        assert!(pod_problem(&pull).is_some_and(|p| p.contains("ImagePullBackOff")));
        let unschedulable = pod(serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}));
        assert_eq!(pod_problem(&unschedulable).as_deref(), Some("Unschedulable: 0/3 nodes are available"));
    }
}
