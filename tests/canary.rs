//! `audctl deploy --canary` end to end: the real binary against the testbed's kube-apiserver +
//! controller-manager + scheduler + kwok, gated on the metrics of a real audit server (SQLite) that
//! `audctl load` sends real traffic to during the steps. kwok's pods run no process, so the canary's
//! metrics are read from that server through `--canary-metrics-url` (in a real cluster audctl reads
//! every canary pod through the API server's pod proxy). The breach is a real fault: the test holds
//! the write lock of the server's SQLite database, so its appends time out and answer 503.
//!
//! Needs the testbed binaries: run `cargo xtask deps install` first.

mod kube_support;
mod service_support;

use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use serde_json::Value;
use sqlx::Connection;

use kube_support::{
    audctl, client, cluster, code, deploy_ok, deployment, history, image_of, local, states, stderr, text,
};
use service_support::{Backend, KEY, Server};

/// values-local plus what a canary needs: an Ingress to split traffic at, and the alert rules
/// whose thresholds gate it: HighErrorRate at the default 0.01; HighLatency raised to 10 s, so the
/// healthy run does not depend on this shared machine's load (the report shows the gate read it
/// from the rendered rule).
const OVERLAY: &str = "ingress:
  enabled: true
  hosts:
    - host: audit.canary.test
      paths:
        - path: /
          pathType: Prefix
prometheusRule:
  enabled: true
  latencyP99Seconds: 10
";

struct Release {
    _dir: tempfile::TempDir,
    overlay: String,
    ns: String,
}

impl Release {
    fn new(ns: &str) -> Release {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("canary.yaml");
        std::fs::write(&path, OVERLAY).expect("overlay");
        Release { overlay: path.display().to_string(), _dir: dir, ns: ns.into() }
    }

    fn args<'a>(&'a self, set_ns: &'a str, local: &'a str) -> Vec<&'a str> {
        vec!["-f", local, "-f", &self.overlay, "--set", set_ns]
    }

    /// Install revision 1 (image 0.1.0) without a canary: the stable version.
    async fn install(&self, k: &testbed::Kube) {
        let (set_ns, local) = (format!("namespace.name={}", self.ns), local());
        deploy_ok(k, &self.args(&set_ns, &local)).await;
    }

    /// `deploy --canary 50,100` of image 0.2.0, 3 s steps, metrics read from `metrics` (None: from
    /// the canary pods through the API server's pod proxy).
    async fn canary(&self, k: &testbed::Kube, metrics: Option<&str>) -> Output {
        let (set_ns, local) = (format!("namespace.name={}", self.ns), local());
        let mut args = vec!["deploy"];
        args.extend(self.args(&set_ns, &local));
        args.extend(["--set", "image.tag=0.2.0", "--canary", "50,100", "--step-duration", "3s"]);
        if let Some(url) = metrics {
            args.extend(["--canary-metrics-url", url]);
        }
        args.extend(["--timeout", "2m", "-o", "json"]);
        audctl(k, &args).await
    }
}

/// Real traffic: `audctl load` appending events to the server until dropped.
fn traffic(url: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
        .args(["load", "--url", url, "--scenario", "ingest", "--rate", "40", "--duration", "10m", "--timeout", "5s"])
        .env("AUDIT_API_KEY", KEY)
        .env_remove("AUDCTL_TARGETS")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("audctl load")
}

/// The canary Ingress' weights as the API server stored them, in the order they appeared.
fn watch_weights(c: kube::Client, ns: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let api: Api<Ingress> = Api::namespaced(c, &ns);
        let mut seen: Vec<String> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(i)) = api.get_opt("audit-trail-canary").await
                && let Some(w) =
                    i.metadata.annotations.and_then(|a| a.get("nginx.ingress.kubernetes.io/canary-weight").cloned())
                && seen.last() != Some(&w)
            {
                seen.push(w);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// Canary objects still in the namespace (by name, and anything labelled as a canary).
async fn canary_objects(c: &kube::Client, ns: &str) -> Vec<String> {
    let mut left = Vec::new();
    let name = "audit-trail-canary";
    if Api::<Deployment>::namespaced(c.clone(), ns).get_opt(name).await.expect("get").is_some() {
        left.push("Deployment".to_owned());
    }
    if Api::<Service>::namespaced(c.clone(), ns).get_opt(name).await.expect("get").is_some() {
        left.push("Service".to_owned());
    }
    if Api::<Ingress>::namespaced(c.clone(), ns).get_opt(name).await.expect("get").is_some() {
        left.push("Ingress".to_owned());
    }
    let labelled = ListParams::default().labels("audctl.io/canary=true");
    for cm in Api::<ConfigMap>::namespaced(c.clone(), ns).list(&labelled).await.expect("list").items {
        left.push(format!("ConfigMap/{}", cm.metadata.name.unwrap_or_default()));
    }
    left
}

fn available(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    d.status.as_ref().and_then(|s| s.available_replicas) == Some(want)
}

/// The deploy evidence records, oldest first: (outcome label, the canary figure of the record).
async fn evidence(c: &kube::Client, ns: &str) -> Vec<(String, Value)> {
    let params = ListParams::default().labels("audctl.io/kind=evidence,audctl.io/verb=deploy");
    let mut items = Api::<ConfigMap>::namespaced(c.clone(), ns).list(&params).await.expect("evidence").items;
    items.sort_by_key(|cm| cm.metadata.creation_timestamp.clone());
    items
        .iter()
        .map(|cm| {
            let outcome = cm.metadata.labels.as_ref().and_then(|l| l.get("audctl.io/outcome").cloned());
            let record: Value = cm
                .data
                .as_ref()
                .and_then(|d| d.get("record.json"))
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null);
            (outcome.unwrap_or_default(), record["figures"]["canary"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_canary_is_stepped_up_and_promoted() {
    let k = cluster().await;
    let c = client(k).await;
    let rel = Release::new("c-ok");
    rel.install(k).await;
    let server = Server::start(Backend::Sqlite, "").await.expect("audit server");
    let load = traffic(&server.url());
    let stop = Arc::new(AtomicBool::new(false));
    let weights = watch_weights(c.clone(), rel.ns.clone(), stop.clone());

    let out = rel.canary(k, Some(&format!("{}/actuator/prometheus", server.url()))).await;
    stop.store(true, Ordering::Relaxed);
    let seen = weights.await.expect("watcher");
    drop(load);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!(report["canary"]["outcome"], "promoted", "{report:#}");
    assert_eq!(
        (report["canary"]["maxErrorRate"].as_f64(), report["canary"]["maxLatencySeconds"].as_f64()),
        (Some(0.01), Some(10.0))
    );
    let steps = report["canary"]["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.iter().map(|s| s["weight"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), [50, 100]);
    for s in &steps {
        assert_eq!(s["passed"], true, "{s}");
        assert!(s["requests"].as_f64().unwrap_or(0.0) > 0.0, "a step passed without traffic: {s}");
        assert_eq!(s["errorRate"], 0.0, "{s}");
    }
    // The weights really were stepped on the API server, in order.
    assert_eq!(seen, ["50", "100"], "canary-weight annotations seen");

    // Promoted: the stable Deployment runs the new image and is available; no canary object left.
    let d = deployment(&c, &rel.ns).await;
    assert!(image_of(&d).ends_with(":0.2.0"), "{}", image_of(&d));
    assert!(available(&d), "{:?}", d.status);
    assert_eq!(canary_objects(&c, &rel.ns).await, Vec::<String>::new());
    let h = history(k, &rel.ns).await;
    assert_eq!(states(&h), vec![(2, "deployed".into()), (1, "superseded".into())]);
    assert!(h[0]["action"].as_str().is_some_and(|a| a.starts_with("canary 50,100")), "{}", h[0]);
    assert!(h[0]["outcome"].as_str().is_some_and(|o| o.contains("promoted")), "{}", h[0]);
    assert!(
        !h[0]["inventory"].to_string().contains("audit-trail-canary"),
        "the promoted revision's inventory lists canary objects: {}",
        h[0]
    );
    let ev = evidence(&c, &rel.ns).await;
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["success", "success"]);
    assert_eq!(ev[1].1["outcome"], "promoted", "the evidence carries the canary: {:?}", ev[1]);
    assert_eq!(ev[1].1["steps"].as_array().map(Vec::len), Some(2), "{:?}", ev[1]);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_breaching_the_error_rate_is_rolled_back() {
    let k = cluster().await;
    let c = client(k).await;
    let rel = Release::new("c-fail");
    rel.install(k).await;
    let stable = deployment(&c, &rel.ns).await;
    let server = Server::start_with(Backend::Sqlite, "", |cfg| cfg.append_timeout = Duration::from_millis(200))
        .await
        .expect("audit server");
    // The fault: another connection holds the database's write lock, so every append waits out
    // its busy timeout and the server answers 503.
    let db = server.dir.path().join("data").join("audit.db");
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.expect("sqlite");
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut holder).await.expect("write lock");
    let load = traffic(&server.url());

    let out = rel.canary(k, Some(&format!("{}/actuator/prometheus", server.url()))).await;
    drop(load);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("HighErrorRate: error rate 100.00%") && err.contains("> threshold 0.01 of the rendered rule"),
        "the failure names the threshold and the value:\n{}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!(report["canary"]["outcome"], "rolled back", "{report:#}");
    let steps = report["canary"]["steps"].as_array().cloned().unwrap_or_default();
    assert_eq!(steps.len(), 1, "stopped at the first step: {report:#}");
    assert_eq!((steps[0]["weight"].as_u64(), steps[0]["passed"].as_bool()), (Some(50), Some(false)));
    assert!(steps[0]["errors"].as_f64().unwrap_or(0.0) > 0.0, "{report:#}");

    // Rolled back: canary objects gone, the stable Deployment untouched (same generation, old
    // image) and available.
    assert_eq!(canary_objects(&c, &rel.ns).await, Vec::<String>::new());
    let d = deployment(&c, &rel.ns).await;
    assert!(image_of(&d).ends_with(":0.1.0"), "{}", image_of(&d));
    assert_eq!(d.metadata.generation, stable.metadata.generation, "the stable Deployment was changed");
    assert!(available(&d), "{:?}", d.status);
    let h = history(k, &rel.ns).await;
    assert_eq!(states(&h), vec![(2, "failed".into()), (1, "deployed".into())]);
    assert!(h[0]["outcome"].as_str().is_some_and(|o| o.contains("HighErrorRate")), "{}", h[0]);
    let ev = evidence(&c, &rel.ns).await;
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["success", "failure"]);
    assert_eq!(ev[1].1["outcome"], "rolled back", "the evidence carries the canary: {:?}", ev[1]);
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.expect("release the lock");
    server.stop().await.expect("stop");
}

/// Without --canary-metrics-url the canary pods are read through the API server's pod proxy; kwok's
/// pods serve nothing, so the gate cannot read them: the canary is rolled back, never promoted.
#[tokio::test(flavor = "multi_thread")]
async fn canary_whose_metrics_cannot_be_read_is_rolled_back() {
    let k = cluster().await;
    let c = client(k).await;
    let rel = Release::new("c-nometrics");
    rel.install(k).await;
    let out = rel.canary(k, None).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("/api/v1/namespaces/c-nometrics/pods/audit-trail-canary-")
            && err.contains("/proxy/actuator/prometheus"),
        "{}",
        text(&out)
    );
    assert_eq!(canary_objects(&c, &rel.ns).await, Vec::<String>::new());
    assert!(image_of(&deployment(&c, &rel.ns).await).ends_with(":0.1.0"));
    assert_eq!(states(&history(k, &rel.ns).await), vec![(2, "failed".into()), (1, "deployed".into())]);
}

/// A canary killed half-way (kill -9 of audctl) leaves its objects; the next deploy takes the
/// expired lock, marks the revision interrupted and prunes them (they were in its inventory).
#[tokio::test(flavor = "multi_thread")]
async fn killed_canary_is_cleaned_up_by_the_next_deploy() {
    let k = cluster().await;
    let c = client(k).await;
    let rel = Release::new("c-killed");
    rel.install(k).await;
    let server = Server::start(Backend::Sqlite, "").await.expect("audit server");
    let metrics = format!("{}/actuator/prometheus", server.url());
    let (set_ns, local) = (format!("namespace.name={}", rel.ns), local());
    let mut args = rel.args(&set_ns, &local);
    args.extend(["--set", "image.tag=0.2.0", "--lock-lease", "3s", "--timeout", "2m"]);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .arg("deploy")
        .args(&args)
        .args(["--canary", "50,100", "--step-duration", "10m", "--canary-metrics-url", &metrics])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn audctl");
    // Killed once its canary takes traffic.
    let ingresses: Api<Ingress> = Api::namespaced(c.clone(), &rel.ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while ingresses.get_opt("audit-trail-canary").await.expect("get").is_none() {
        assert!(std::time::Instant::now() < deadline, "the canary Ingress never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    child.start_kill().expect("kill -9");
    let _ = child.wait().await;
    assert!(!canary_objects(&c, &rel.ns).await.is_empty(), "the killed run removed its canary after all");

    let mut next = vec!["deploy"];
    next.extend(args.iter().copied());
    let out = audctl(k, &next).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(canary_objects(&c, &rel.ns).await, Vec::<String>::new(), "{}", text(&out));
    assert!(image_of(&deployment(&c, &rel.ns).await).ends_with(":0.2.0"));
    assert_eq!(
        states(&history(k, &rel.ns).await),
        vec![(3, "deployed".into()), (2, "interrupted".into()), (1, "superseded".into())]
    );
    server.stop().await.expect("stop");
}
