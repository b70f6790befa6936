//! `audctl load --workers N`: the workers as the pods of a Job, on the testbed cluster, against the
//! real audit server.
//!
//! kwok schedules and "runs" pods but runs no container, so this test plays the container runtime
//! of the worker pods: it runs exactly what each pod's spec says (its args with `$(VAR)` expanded
//! from its env, the API key read from the Secret the env points at), and writes the process's
//! output in the CRI log format to a file kwok serves as that container's log. Everything else is
//! real: the Job and Secret audctl creates, Pod Security admission (`restricted`, enforced on the
//! namespace), the controller-manager's Indexed Job pods, the scheduler, and the log stream audctl
//! follows through the API server and the kubelet API (kwok).

mod kube_support;
mod service_support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use service_support::{Backend, KEY, Server, counter};
use tokio::io::{AsyncBufReadExt, BufReader};

const NS: &str = "load-job";

/// A namespace whose LimitRange allows half a CPU per container: the Job controller cannot create
/// the worker pods (they request 1), and the run says so at once instead of waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pods_refused_by_admission_end_the_run_naming_why() -> anyhow::Result<()> {
    const REFUSING: &str = "load-job-refused";
    let k = kube_support::cluster().await;
    let client = kube_support::client(k).await;
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": REFUSING}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    let limits: LimitRange = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "small"},
        "spec": {"limits": [{"type": "Container", "max": {"cpu": "500m"}}]}
    }))?;
    Api::<LimitRange>::namespaced(client.clone(), REFUSING).create(&PostParams::default(), &limits).await?;
    let started = std::time::Instant::now();
    let out = coordinator(k, REFUSING, "https://audit.example.invalid")
        .args(["--rate", "10", "--duration", "1m"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not be created") && stderr.contains("500m"), "{stderr}");
    // Well before the 5-minute start-up allowance.
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    let left = Api::<Job>::namespaced(client.clone(), REFUSING).list(&ListParams::default()).await?.items;
    assert!(left.iter().all(|j| j.metadata.deletion_timestamp.is_some()), "Jobs left: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_in_a_job_merge_exactly() -> anyhow::Result<()> {
    let k = kube_support::cluster().await;
    let client = kube_support::client(k).await;
    restricted_namespace(&client, NS).await?;
    let server = Server::start(Backend::Sqlite, "load_job").await?;
    let url = server.url();
    let before = counter(&url, "audit_events_ingested_total").await?;
    let logs = tempfile::tempdir()?;

    let coordinator = coordinator(k, NS, &url)
        .args(["--scenario", "ingest", "--rate", "40", "--duration", "3s", "--tenants", "4"])
        .args(["--worker-overrides", r#"{"spec":{"template":{"metadata":{"labels":{"team":"sre"}}}}}"#])
        .output();
    let runtime = play_runtime(k, &client, NS, logs.path(), 2);
    let (out, workers) = tokio::time::timeout(Duration::from_secs(240), async { tokio::join!(coordinator, runtime) })
        .await
        .context("the distributed run did not end within 240 s")?;
    let out = out?;
    let workers = workers?;
    let text =
        format!("{}\n--- stderr\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context(text.clone())?;

    // 40/s for 3 s split over two workers, each answered: the merged counts are the workers' sum.
    let per_worker = report["workers"].as_array().context("workers")?;
    assert_eq!(per_worker.len(), 2, "{report:#}");
    let sum = |f: &str| per_worker.iter().map(|w| w[f].as_u64().unwrap_or(0)).sum::<u64>();
    assert_eq!(report["requests"], 120, "{report:#}");
    assert_eq!(report["requests"].as_u64(), Some(sum("requests")));
    assert_eq!(report["errors"], 0, "{report:#}");
    // Independent reference: the server committed what the workers sent (an ingest request stores
    // one event), each worker seeding nothing for ingest.
    let after = counter(&url, "audit_events_ingested_total").await?;
    assert_eq!(after - before, 120.0, "server counter");

    // Pod `i` ran worker `i/2` (Indexed Job), on two different nodes, and the key was never in a spec.
    let mut indexes: Vec<&str> = workers.iter().map(|w| w.worker.as_str()).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, ["0/2", "1/2"]);
    assert_ne!(workers[0].node, workers[1].node, "workers spread over nodes");
    for w in &workers {
        assert!(!w.spec_json.contains(KEY), "the API key appears in pod {}'s spec", w.pod);
        assert_eq!(w.labels.get("team").map(String::as_str), Some("sre"), "--worker-overrides on pod {}", w.pod);
    }

    // Nothing left behind: the Job (with its pods) and the Secret are deleted.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let left = jobs.list(&ListParams::default()).await?.items;
    assert!(left.iter().all(|j| j.metadata.deletion_timestamp.is_some()), "Jobs left: {left:?}");
    let secrets_left: Vec<String> =
        secrets.list(&ListParams::default()).await?.items.into_iter().filter_map(|s| s.metadata.name).collect();
    assert!(secrets_left.iter().all(|s| !s.starts_with("audctl-load-")), "Secrets left: {secrets_left:?}");
    server.stop().await
}

/// Ctrl-C to the coordinator deletes the pods; their workers get SIGTERM (from the kubelet: here
/// the test's runtime), log what they measured, and the coordinator reports it, interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_reports_what_the_pods_measured() -> anyhow::Result<()> {
    const INT: &str = "load-job-interrupted";
    let k = kube_support::cluster().await;
    let client = kube_support::client(k).await;
    restricted_namespace(&client, INT).await?;
    let server = Server::start(Backend::Sqlite, "load_job_int").await?;
    let url = server.url();
    let before = counter(&url, "audit_events_ingested_total").await?;
    let logs = tempfile::tempdir()?;
    let coordinator = coordinator(k, INT, &url)
        .args(["--rate", "20", "--duration", "120s", "--connections", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = coordinator.id().context("pid")? as i32;
    let runtime = tokio::spawn({
        let (client, dir) = (client.clone(), logs.path().to_owned());
        async move { play_runtime(kube_support::cluster().await, &client, INT, &dir, 2).await }
    });
    // Running: the server committed events of both workers' first seconds.
    let started = std::time::Instant::now();
    while counter(&url, "audit_events_ingested_total").await? < before + 40.0 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "the run never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SAFETY: kill(2) on the child this test started and has not waited for.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = tokio::time::timeout(Duration::from_secs(90), coordinator.wait_with_output())
        .await
        .context("audctl did not stop within 90 s of the signal")??;
    runtime.await??;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context(stderr.clone())?;
    assert_eq!(out.status.code(), Some(130), "{report:#}\n{stderr}");
    assert!(report["interrupted"].as_str().unwrap_or_default().starts_with("SIGINT after"), "{report:#}");
    let per_worker = report["workers"].as_array().context("workers")?;
    assert_eq!(per_worker.len(), 2, "{report:#}");
    let ok = report["ok"].as_f64().unwrap_or(0.0);
    let sum: f64 = per_worker.iter().map(|w| w["ok"].as_f64().unwrap_or(0.0)).sum();
    assert_eq!(ok, sum, "{report:#}");
    assert!((40.0..2400.0).contains(&ok), "{report:#}");
    // Every ok was committed; a request in flight per connection (4 per worker) may be committed
    // and dropped uncounted.
    let committed = counter(&url, "audit_events_ingested_total").await? - before;
    assert!(committed >= ok && committed <= ok + 8.0, "committed {committed}, ok {ok}");
    server.stop().await
}

/// Ctrl-C while the worker pods run but before their logs are served (here: nobody plays the
/// runtime, so they never are): the deleted pods end the wait for their logs at once, and the
/// report is the empty interrupted run, not an error after the log retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_before_the_logs_are_served_reports_at_once() -> anyhow::Result<()> {
    const EARLY: &str = "load-job-early";
    let k = kube_support::cluster().await;
    let client = kube_support::client(k).await;
    restricted_namespace(&client, EARLY).await?;
    let mut coordinator = coordinator(k, EARLY, "https://audit.example.invalid")
        .args(["--rate", "10", "--duration", "1m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = coordinator.id().context("pid")? as i32;
    // Both pods started (kwok runs a Job's pods to completion at once): audctl is now trying to
    // open their logs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), EARLY);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let started = pods
            .list(&ListParams::default().labels("audctl.io/load-run"))
            .await?
            .items
            .iter()
            .filter(|p| {
                let statuses = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
                let state = statuses.and_then(|c| c.first()).and_then(|c| c.state.as_ref());
                state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            })
            .count();
        if started == 2 {
            break;
        }
        if let Some(status) = coordinator.try_wait()? {
            let out = coordinator.wait_with_output().await?;
            anyhow::bail!("audctl ended ({status}) before its pods ran: {}", String::from_utf8_lossy(&out.stderr));
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "worker pods not started within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let signalled = std::time::Instant::now();
    // SAFETY: kill(2) on the child this test started and has not waited for.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = tokio::time::timeout(Duration::from_secs(90), coordinator.wait_with_output())
        .await
        .context("audctl did not stop within 90 s of the signal")??;
    let took = signalled.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context(stderr.clone())?;
    assert_eq!(out.status.code(), Some(130), "{report:#}\n{stderr}");
    assert!(report["interrupted"].as_str().unwrap_or_default().starts_with("SIGINT after"), "{report:#}");
    assert_eq!(report["requests"].as_f64(), Some(0.0), "{report:#}");
    assert!(stderr.contains("was deleted before its log was served"), "{stderr}");
    // The log retries last 30 s; the deleted pods must not be waited for.
    assert!(took < Duration::from_secs(25), "stopped {took:?} after the signal\n{stderr}");
    Ok(())
}

/// `audctl load --workers 2` in namespace `ns` against `url`, JSON report, key in the environment;
/// the caller adds the model.
fn coordinator(k: &testbed::Kube, ns: &str, url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"));
    cmd.arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args(["-n", ns, "load", "--url", url, "--workers", "2", "--worker-image", "registry.example/audctl:test"])
        // Counting, not timing (see tests/load.rs).
        .args(["--max-p99", "60s", "-o", "json"])
        .env("AUDIT_API_KEY", KEY)
        .env_remove("AUDCTL_TARGETS")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// What the runtime saw of a worker pod.
struct Ran {
    pod: String,
    node: String,
    /// The `--worker` argument after expansion.
    worker: String,
    spec_json: String,
    labels: BTreeMap<String, String>,
}

/// Wait for `count` worker pods to be scheduled and run each one's command as its container would;
/// like a kubelet, give a pod's process SIGTERM when the pod is deleted.
async fn play_runtime(
    k: &testbed::Kube,
    client: &kube::Client,
    ns: &str,
    dir: &std::path::Path,
    count: usize,
) -> anyhow::Result<Vec<Ran>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut started: BTreeMap<String, tokio::task::JoinHandle<anyhow::Result<()>>> = BTreeMap::new();
    let mut ran = Vec::new();
    let mut pids: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while started.len() < count {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "worker pods not scheduled within 120 s");
        let list = pods.list(&ListParams::default().labels("audctl.io/load-run")).await?;
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { continue };
            if started.contains_key(&name) {
                continue;
            }
            let spec = pod.spec.clone().context("pod spec")?;
            let container = spec.containers.first().context("container")?.clone();
            // The pod's environment, as a kubelet resolves it.
            let mut env = BTreeMap::new();
            for var in container.env.clone().unwrap_or_default() {
                let value = match var.value_from {
                    None => var.value.unwrap_or_default(),
                    Some(from) => {
                        if let Some(field) = from.field_ref {
                            let path = field.field_path.as_str();
                            let key = |prefix: &str| path.strip_prefix(prefix).and_then(|f| f.strip_suffix("']"));
                            let found = if let Some(k) = key("metadata.labels['") {
                                pod.metadata.labels.as_ref().and_then(|l| l.get(k))
                            } else if let Some(k) = key("metadata.annotations['") {
                                pod.metadata.annotations.as_ref().and_then(|a| a.get(k))
                            } else {
                                anyhow::bail!("unexpected fieldRef {path}")
                            };
                            found.cloned().with_context(|| format!("{name}: no {path}"))?
                        } else if let Some(sk) = from.secret_key_ref {
                            let secret = secrets.get(&sk.name).await?;
                            let bytes = secret.data.and_then(|d| d.get(&sk.key).cloned()).context("secret key")?;
                            String::from_utf8(bytes.0)?
                        } else {
                            anyhow::bail!("unexpected env source in {name}")
                        }
                    }
                };
                env.insert(var.name, value);
            }
            let expand = |a: &str| {
                let mut out = a.to_owned();
                for (k, v) in &env {
                    out = out.replace(&format!("$({k})"), v);
                }
                out
            };
            let args: Vec<String> = container.args.clone().unwrap_or_default().iter().map(|a| expand(a)).collect();
            assert_eq!(container.command.as_deref(), Some(&["audctl".to_owned()][..]));
            let worker = args.iter().skip_while(|a| *a != "--worker").nth(1).cloned().context("--worker")?;

            let log = dir.join(format!("{name}.log"));
            std::fs::File::create(&log)?;
            k.serve_logs(ns, &name, &container.name, &log)?;
            let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
                .args(&args)
                .env_clear()
                .envs(&env)
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            pids.insert(name.clone(), child.id().context("pid")?);
            let (stdout, stderr) = (child.stdout.take().context("stdout")?, child.stderr.take().context("stderr")?);
            started.insert(
                name.clone(),
                tokio::spawn(async move {
                    let (a, b) = tokio::join!(cri_log(stdout, "stdout", &log), cri_log(stderr, "stderr", &log));
                    a?;
                    b?;
                    child.wait().await?;
                    Ok(())
                }),
            );
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            ran.push(Ran { pod: name, node, worker, spec_json: serde_json::to_string(&spec)?, labels });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while !started.values().all(|t| t.is_finished()) {
        let live = pods.list(&ListParams::default().labels("audctl.io/load-run")).await?.items;
        for (name, pid) in std::mem::take(&mut pids) {
            let deleted = !live
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(name.as_str()) && p.metadata.deletion_timestamp.is_none());
            if deleted && !started[&name].is_finished() {
                // SAFETY: kill(2) of a process this test started and has not reaped.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            } else if !deleted {
                pids.insert(name, pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, task) in started {
        task.await?.with_context(|| format!("running worker pod {name}"))?;
    }
    Ok(ran)
}

/// Append each line of `from` to `file` as a container runtime does: `<RFC 3339 time> <stream> F <line>`.
async fn cri_log(from: impl tokio::io::AsyncRead + Unpin, stream: &str, file: &std::path::Path) -> anyhow::Result<()> {
    let mut lines = BufReader::new(from).lines();
    while let Some(line) = lines.next_line().await? {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        // One write per line: stdout and stderr append to the same file (O_APPEND keeps each whole).
        let entry = format!("{now} {stream} F {line}\n");
        std::fs::OpenOptions::new().append(true).open(file)?.write_all(entry.as_bytes())?;
    }
    Ok(())
}

/// A namespace enforcing the `restricted` Pod Security standard, as the release's does.
async fn restricted_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"
        }}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the namespace")?;
    Ok(())
}
