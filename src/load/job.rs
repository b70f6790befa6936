//! `--workers N`: the workers run in the cluster, as the N pods of an Indexed Job that audctl
//! creates, and stream their lines in their pods' logs; the coordinator (this process) follows the
//! logs through the API server and merges them as it does local workers' (see
//! [`super::distributed`]).
//!
//! What the Job is made of, and why:
//! - One Secret per run holds the API key (and the CA file of `--ca`): it reaches the pods as an
//!   environment variable and a file, never in the Job's command line, which anyone who can read
//!   Jobs sees. The Secret is owned by the Job, so deleting the Job deletes it.
//! - Indexed completion, `parallelism = completions = N`, `backoffLimit` 0: pod `i` runs worker
//!   `i/N` (`$(JOB_COMPLETION_INDEX)`), and a failed worker is reported, not silently retried with
//!   its share of the load counted twice.
//! - Pods meet the `restricted` Pod Security standard the release's namespace enforces, and are
//!   spread over nodes (the reason to distribute is that one machine is not enough).
//! - `activeDeadlineSeconds` (the run, plus the start-up allowance) and `ttlSecondsAfterFinished`
//!   bound what a coordinator that died leaves behind; a coordinator that lives deletes the Job.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy};
use tokio::sync::mpsc::UnboundedSender;

use super::distributed::{self, Line};
use super::{LoadReport, Settings};
use crate::error::usage;
use crate::kube::KubeSettings;

/// Label on the Job, its pods and its Secret: the run's name.
pub const RUN_LABEL: &str = "audctl.io/load-run";
/// The worker container's name.
pub const CONTAINER: &str = "worker";
/// Where a worker pod finds the CA file of `--ca` (from the run's Secret).
pub const CA_MOUNT: &str = "/etc/audctl-load";
/// How long the pods may take to start (scheduling, image pull) before the run is abandoned.
pub const START_TIMEOUT: Duration = Duration::from_secs(300);
/// Attempts at opening a started pod's log, a second apart.
const LOG_OPEN_ATTEMPTS: u32 = 30;
const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// Waiting reasons that will not resolve by waiting.
const STUCK: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Where and as what the workers run.
pub struct JobOptions {
    pub kube: KubeSettings,
    pub namespace: String,
    /// An image with `audctl` on its PATH.
    pub image: String,
    /// `--worker-overrides`: a JSON merge patch applied to the Job.
    pub overrides: Option<serde_json::Value>,
}

/// `--worker-overrides`: a JSON object (a merge patch), or a usage error saying where it is not.
pub fn parse_overrides(text: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        usage(format!("--worker-overrides: not JSON: {e} (expected an object such as {{\"spec\":{{...}}}})"))
    })?;
    if !value.is_object() {
        return Err(usage("--worker-overrides: expected a JSON object (a merge patch of the Job)"));
    }
    Ok(value)
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}

/// `--dry-run`: the Job on stdout, as YAML.
pub fn print(settings: &Settings, count: usize, opts: &JobOptions) -> anyhow::Result<()> {
    let name = run_name();
    let job = job(&name, settings, count, &opts.image, opts.overrides.as_ref())?;
    let mut text = format!(
        "# Job {}/{name}; Secret {name} (not shown) holds the API key{}.\n",
        opts.namespace,
        if settings.ca_pem.is_some() { " and the CA file" } else { "" }
    );
    text.push_str(&serde_yaml::to_string(&job).context("writing the Job as YAML")?);
    crate::output::print(text.as_bytes())
}

fn run_name() -> String {
    format!("audctl-load-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

pub async fn coordinate(settings: &Settings, count: usize, opts: &JobOptions) -> anyhow::Result<LoadReport> {
    if let Some(host) = url::Url::parse(&settings.url).ok().and_then(|u| u.host_str().map(str::to_owned))
        && (host == "localhost" || host.starts_with("127.") || host == "[::1]")
    {
        tracing::warn!(
            "--url {} is this machine's loopback address: the workers run in the cluster and need an address \
             they can reach (the ingress's, or the Service's inside the cluster)",
            crate::service::display_url(&settings.url)
        );
    }
    let client = opts.kube.api_client().await?;
    let name = run_name();
    let ns = opts.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // Built first: an override that leaves no valid Job must not leave a Secret behind.
    let manifest = job(&name, settings, count, &opts.image, opts.overrides.as_ref())?;
    secrets.create(&PostParams::default(), &secret(&name, settings)).await.map_err(|e| refused(e, "Secret", ns))?;
    let job = match jobs.create(&PostParams::default(), &manifest).await {
        Ok(j) => j,
        Err(e) => {
            let _ = secrets.delete(&name, &DeleteParams::default()).await;
            return Err(refused(e, "Job", ns));
        }
    };
    eprintln!("audctl load: Job {ns}/{name}: {count} workers ({})", opts.image);
    // Owned by the Job from now on; if this fails the Secret is still deleted below.
    if let Some(uid) = job.metadata.uid.clone() {
        let owner = OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: name.clone(),
            uid,
            ..OwnerReference::default()
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        if let Err(e) = secrets.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!("Secret {ns}/{name}: setting its owner to the Job: {e}");
        }
    }

    let result = run(ns, settings, count, &name, &pods, &jobs, &client).await;

    // The Job's deletion takes its pods (and the Secret it owns); the Secret is also deleted by name
    // in case its owner was not set.
    if let Err(e) = jobs.delete(&name, &with_pods()).await
        && crate::kube::api_status(&e) != Some(404)
    {
        eprintln!(
            "audctl load: could not delete Job {ns}/{name} ({e}); delete it with `kubectl -n {ns} delete job {name}`"
        );
    }
    let _ = secrets.delete(&name, &DeleteParams::default()).await;
    result
}

async fn run(
    ns: &str,
    settings: &Settings,
    count: usize,
    name: &str,
    pods: &Api<Pod>,
    jobs: &Api<Job>,
    client: &kube::Client,
) -> anyhow::Result<LoadReport> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let starter = {
        let (pods, jobs, client, name, ns) =
            (pods.clone(), jobs.clone(), client.clone(), name.to_owned(), ns.to_owned());
        tokio::spawn(async move {
            if let Err(e) = follow_pods(&ns, &pods, &jobs, &client, &name, count, &tx).await {
                let _ = tx.send((usize::MAX, Err(e)));
            }
        })
    };
    let merged = distributed::merge(settings, count, rx, || {
        // Deleting the pods gives each worker SIGTERM: it stops and logs what it measured.
        let (jobs, name) = (jobs.clone(), name.to_owned());
        tokio::spawn(async move {
            let _ = jobs.delete(&name, &with_pods()).await;
        });
    })
    .await;
    starter.abort();
    let merged = merged?;
    if let Some(e) = merged.failure {
        return Err(e);
    }
    // An interrupted run reports what the workers that started measured; otherwise every worker
    // must have sent its results.
    if merged.interrupted.is_none()
        && let Some(missing) = (0..count).find(|i| !merged.done.contains_key(i))
    {
        anyhow::bail!("worker {missing} (Job {name}) ended without its results");
    }
    distributed::report(settings, merged.agg, merged.elapsed, merged.done, merged.interrupted)
}

/// Wait for each worker pod's container to start and follow its log; give up on pods that cannot
/// start, naming why.
async fn follow_pods(
    ns: &str,
    pods: &Api<Pod>,
    jobs: &Api<Job>,
    client: &kube::Client,
    name: &str,
    count: usize,
    tx: &UnboundedSender<(usize, anyhow::Result<Line>)>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut following = BTreeSet::new();
    let selector = ListParams::default().labels(&format!("{RUN_LABEL}={name}"));
    while following.len() < count {
        for pod in pods.list(&selector).await.context("listing the worker pods")?.items {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let Some(index) = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(INDEX_ANNOTATION))
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            if following.contains(&index) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let status = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
            let state = status.and_then(|s| s.state.as_ref());
            if let Some(w) = state.and_then(|s| s.waiting.as_ref())
                && let Some(reason) = w.reason.as_deref().filter(|r| STUCK.contains(r))
            {
                anyhow::bail!(
                    "worker pod {pod_name} cannot start: {reason}{}",
                    w.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                );
            }
            if state.is_some_and(|s| s.running.is_some() || s.terminated.is_some()) {
                following.insert(index);
                tokio::spawn(follow_log(pods.clone(), pod_name, index, tx.clone()));
            }
        }
        if following.len() == count {
            break;
        }
        match job_state(jobs, name).await {
            JobState::Failed(why) => anyhow::bail!("Job {name} failed: {why}"),
            // Deleted (by an interrupt, or by someone else): nothing more will start; the workers
            // that did are still followed, and the missing ones are reported.
            JobState::Gone => return Ok(()),
            JobState::Active => {}
        }
        // The Job controller could not create a pod: refused by admission (Pod Security, a
        // LimitRange, a quota). It would retry, but a load run that cannot start all its workers
        // should say so now rather than after the start-up allowance.
        if let Some(why) = warnings(client, ns, name, Some("FailedCreate")).await {
            anyhow::bail!("the worker pods of Job {name} could not be created: {why}");
        }
        if tokio::time::Instant::now() > deadline {
            let events = warnings(client, ns, name, None).await.map(|w| format!(": {w}")).unwrap_or_default();
            anyhow::bail!(
                "{} of {count} worker pods of Job {name} started within {} s{events}",
                following.len(),
                START_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Follow one pod's log until the worker's last line.
async fn follow_log(pods: Api<Pod>, pod: String, index: usize, tx: UnboundedSender<(usize, anyhow::Result<Line>)>) {
    let lp = LogParams { follow: true, container: Some(CONTAINER.into()), ..LogParams::default() };
    // A kubelet may not serve the log of a container that has just started; nothing was read yet,
    // so opening again loses and repeats nothing.
    let mut attempts = 0;
    let stream = loop {
        match pods.log_stream(&pod, &lp).await {
            Ok(s) => break s,
            Err(e) if attempts < LOG_OPEN_ATTEMPTS && !crate::kube::is_transport(&e) => {
                // A pod deleted meanwhile (an interrupt deletes the Job) will never serve its log:
                // waiting out the attempts would hold the interrupted run's report back.
                if !pod_alive(&pods, &pod).await {
                    let _ = tx
                        .send((index, Err(anyhow::anyhow!("worker pod {pod} was deleted before its log was served"))));
                    return;
                }
                tracing::debug!("log of worker pod {pod} not served yet: {e}");
                attempts += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                let _ = tx
                    .send((index, Err(anyhow::Error::new(e).context(format!("reading the log of worker pod {pod}")))));
                return;
            }
        }
    };
    let mut lines = stream.lines();
    while let Some(line) = lines.next().await {
        match line {
            Ok(l) => {
                if let Some(parsed) = distributed::route(index, &l, true) {
                    let last = distributed::is_last(&parsed);
                    let _ = tx.send((index, parsed));
                    if last {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx
                    .send((index, Err(anyhow::Error::new(e).context(format!("reading the log of worker pod {pod}")))));
                return;
            }
        }
    }
    // The log ended (the container exited) before the worker's last line.
    let _ = tx.send((index, Err(anyhow::anyhow!("worker pod {pod} ended without its results"))));
}

/// Whether the pod still exists and is not being deleted (an unanswered question counts as alive:
/// the caller keeps trying).
async fn pod_alive(pods: &Api<Pod>, pod: &str) -> bool {
    match pods.get_opt(pod).await {
        Ok(Some(p)) => p.metadata.deletion_timestamp.is_none(),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Deleting a Job deletes its pods (and what it owns) too, in the background.
fn with_pods() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() }
}

enum JobState {
    Active,
    Failed(String),
    Gone,
}

async fn job_state(jobs: &Api<Job>, name: &str) -> JobState {
    let job = match jobs.get_opt(name).await {
        Ok(Some(j)) if j.metadata.deletion_timestamp.is_none() => j,
        Ok(_) => return JobState::Gone,
        // A failed read is not a verdict: the next round asks again.
        Err(_) => return JobState::Active,
    };
    let failed = job
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    match failed {
        Some(c) => JobState::Failed(c.message.or(c.reason).unwrap_or_else(|| "no reason given".into())),
        None => JobState::Active,
    }
}

/// The newest of the Job's warning events (of `reason` only, if given), and how many others there
/// were: the Job controller repeats one refusal per pod and retry, differing only in pod names.
async fn warnings(client: &kube::Client, ns: &str, name: &str, reason: Option<&str>) -> Option<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut fields = format!("involvedObject.name={name},type=Warning");
    if let Some(r) = reason {
        fields.push_str(&format!(",reason={r}"));
    }
    let mut list = events.list(&ListParams::default().fields(&fields)).await.ok()?.items;
    list.retain(|e| e.message.is_some());
    list.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0).or(e.event_time.clone().map(|t| t.0)));
    let newest = list.last()?.message.clone()?;
    Some(match list.len() - 1 {
        0 => newest,
        others => format!("{newest} (and {others} earlier warnings)"),
    })
}

fn refused(e: kube::Error, what: &str, ns: &str) -> anyhow::Error {
    match crate::kube::api_status(&e) {
        Some(403) => usage(format!("creating the load run's {what} in namespace {ns} was forbidden: {e}")),
        Some(404) => usage(format!("namespace {ns} does not exist (-n names where the workers run)")),
        Some(422) => anyhow::anyhow!("the API server refused the load run's {what}: {e}"),
        _ if crate::kube::is_transport(&e) => crate::kube::transport_error(e, &format!("creating the {what}")),
        _ => anyhow::Error::new(e).context(format!("creating the load run's {what} in namespace {ns}")),
    }
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "audctl-load".into()),
        ("app.kubernetes.io/managed-by".into(), "audctl".into()),
        (RUN_LABEL.into(), name.into()),
    ])
}

fn secret(name: &str, settings: &Settings) -> Secret {
    let mut data = BTreeMap::new();
    if let Some(k) = &settings.key {
        data.insert("api-key".to_owned(), k.clone());
    }
    if let Some(pem) = &settings.ca_pem {
        data.insert("ca.crt".to_owned(), String::from_utf8_lossy(pem).into_owned());
    }
    Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), labels: Some(labels(name)), ..Default::default() },
        string_data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The Job of a run; its pods run `audctl load --worker $(JOB_COMPLETION_INDEX)/N ...`.
pub fn job(
    name: &str,
    settings: &Settings,
    count: usize,
    image: &str,
    overrides: Option<&serde_json::Value>,
) -> anyhow::Result<Job> {
    let ca = settings.ca_pem.as_ref().map(|_| format!("{CA_MOUNT}/ca.crt"));
    let args = distributed::worker_args(settings, "$(JOB_COMPLETION_INDEX)", count, ca.as_deref());
    let deadline = settings.model.duration() + START_TIMEOUT + Duration::from_secs(60);
    let labels = serde_json::to_value(labels(name))?;
    let mut env = vec![serde_json::json!({"name": "NO_COLOR", "value": "1"})];
    if settings.key.is_some() {
        env.push(serde_json::json!({
            "name": crate::service::API_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": name, "key": "api-key"}}
        }));
    }
    let mut value = serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": count,
            "parallelism": count,
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline.as_secs(),
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {RUN_LABEL: name}}
                    }],
                    "containers": [{
                        "name": CONTAINER,
                        "image": image,
                        "command": ["audctl"],
                        "args": args,
                        "env": env,
                        "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}
                        }
                    }]
                }
            }
        }
    });
    if ca.is_some() {
        let pod = &mut value["spec"]["template"]["spec"];
        pod["volumes"] = serde_json::json!([{"name": "ca", "secret": {
            "secretName": name, "items": [{"key": "ca.crt", "path": "ca.crt"}]
        }}]);
        pod["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "ca", "mountPath": CA_MOUNT, "readOnly": true}]);
    }
    match overrides {
        None => serde_json::from_value(value).context("building the load Job"),
        Some(patch) => {
            merge_patch(&mut value, patch);
            serde_json::from_value(value)
                .map_err(|e| usage(format!("--worker-overrides: the patched Job is not a valid Job: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Scenario;
    use crate::load::plan::{Model, Segment};

    fn settings(ca: bool) -> Settings {
        Settings {
            url: "https://audit.example.com".into(),
            key: Some("secret-key-value".into()),
            ca_pem: ca.then(|| b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            ca_path: ca.then(|| "/home/op/ca.pem".into()),
            model: Model::Open { segments: vec![Segment { from: 50.0, to: 50.0, duration: Duration::from_secs(120) }] },
            mix: vec![(Scenario::Ingest, 1)],
            tenant_prefix: "t".into(),
            tenants: 2,
            batch_size: 10,
            connections: 8,
            timeout: Duration::from_secs(5),
            max_p99: Duration::from_secs(1),
            max_error_rate: 0.01,
        }
    }

    #[test]
    fn pods_run_their_index_with_the_key_from_the_secret_and_the_ca_mounted() {
        let job = job("audctl-load-1", &settings(true), 3, "reg/audctl:1", None).expect("job");
        let spec = job.spec.expect("spec");
        assert_eq!((spec.completions, spec.parallelism, spec.backoff_limit), (Some(3), Some(3), Some(0)));
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        // The run (120 s), the start-up allowance and a minute.
        assert_eq!(spec.active_deadline_seconds, Some(120 + 300 + 60));
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default();
        let at = args.iter().position(|a| a == "--worker").expect("--worker");
        assert_eq!(args[at + 1], "$(JOB_COMPLETION_INDEX)/3");
        let ca = args.iter().position(|a| a == "--ca").expect("--ca");
        assert_eq!(args[ca + 1], "/etc/audctl-load/ca.crt", "the mounted file, not the operator's path");
        let whole = serde_json::to_string(&pod).expect("json");
        assert!(!whole.contains("secret-key-value"), "the key is in the pod spec: {whole}");
        let env = c.env.clone().unwrap_or_default();
        let key = env.iter().find(|e| e.name == crate::service::API_KEY_ENV).expect("key env");
        let from = key.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).expect("secretKeyRef");
        assert_eq!((from.name.as_str(), from.key.as_str()), ("audctl-load-1", "api-key"));
        let sc = pod.security_context.expect("pod securityContext");
        assert_eq!(sc.run_as_non_root, Some(true));
        let secret = secret("audctl-load-1", &settings(true));
        let data = secret.string_data.expect("data");
        assert_eq!(data.get("api-key").map(String::as_str), Some("secret-key-value"));
        assert!(data.contains_key("ca.crt"));
    }

    #[test]
    fn without_a_ca_nothing_is_mounted() {
        let job = job("audctl-load-2", &settings(false), 1, "reg/audctl:1", None).expect("job");
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        assert!(pod.volumes.unwrap_or_default().is_empty());
        assert!(!pod.containers[0].args.clone().unwrap_or_default().contains(&"--ca".to_owned()));
    }

    #[test]
    fn overrides_merge_as_rfc_7386_says() {
        // RFC 7386's own example (section 3).
        let mut target = serde_json::json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = serde_json::json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null}, "tags": ["example"]});
        merge_patch(&mut target, &patch);
        assert_eq!(
            target,
            serde_json::json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
        let patch =
            parse_overrides(r#"{"spec":{"template":{"spec":{"nodeSelector":{"pool":"load"}}}}}"#).expect("json");
        let patched = job("audctl-load-3", &settings(false), 2, "reg/audctl:1", Some(&patch)).expect("job");
        let pod = patched.spec.expect("spec").template.spec.expect("pod");
        assert_eq!(pod.node_selector.unwrap_or_default().get("pool").map(String::as_str), Some("load"));
        assert_eq!(pod.containers[0].image.as_deref(), Some("reg/audctl:1"), "the rest is kept");
        let bad = parse_overrides(r#"{"spec":{"completions":"many"}}"#).expect("json");
        let err = job("audctl-load-4", &settings(false), 2, "i", Some(&bad)).expect_err("not a Job");
        assert!(err.to_string().contains("--worker-overrides: the patched Job"), "{err}");
        assert!(parse_overrides("[1]").is_err() && parse_overrides("{").is_err());
    }
}
