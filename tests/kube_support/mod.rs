//! Shared by tests/deploy.rs, tests/deploy_recovery.rs and tests/canary.rs: one testbed cluster per test binary
//! (kube-apiserver + controller-manager + scheduler + kwok), stopped when the binary exits, and the
//! audctl binary run against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::Value;

pub static CLUSTER: tokio::sync::OnceCell<testbed::Kube> = tokio::sync::OnceCell::const_new();
static CLEANUP: Mutex<(Vec<u32>, Option<PathBuf>)> = Mutex::new((Vec::new(), None));

unsafe extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// A shared cluster lives in a static, which is never dropped: stop its process groups (and remove
/// its directory) when the test binary exits.
extern "C" fn stop_cluster() {
    if let Ok(guard) = CLEANUP.lock() {
        for pid in guard.0.iter().rev() {
            // SAFETY: plain kill(2) of process groups this test binary started.
            unsafe { kill(-(*pid as i32), 9) };
        }
        if let Some(dir) = &guard.1 {
            std::thread::sleep(Duration::from_millis(200));
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub async fn cluster() -> &'static testbed::Kube {
    CLUSTER
        .get_or_init(|| async {
            let k = testbed::kube()
                .await
                .unwrap_or_else(|e| panic!("testbed cluster: {e:#} (run cargo xtask deps install)"));
            if let Ok(mut g) = CLEANUP.lock() {
                g.0 = k.pids();
                g.1 = k.kubeconfig().parent().map(Path::to_owned);
            }
            // SAFETY: registering a plain extern "C" fn.
            unsafe { atexit(stop_cluster) };
            k
        })
        .await
}

pub async fn client(k: &testbed::Kube) -> kube::Client {
    let config = kube::config::Kubeconfig::read_from(k.kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.expect("config");
    kube::Client::try_from(config).expect("client")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn local() -> String {
    root().join("values/values-local.yaml").display().to_string()
}

pub fn prod() -> String {
    root().join("values/values-prod.yaml").display().to_string()
}

/// Run the real binary against the testbed; stdout/stderr captured.
pub async fn audctl(k: &testbed::Kube, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("AUDCTL_TARGETS")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run audctl")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub async fn deploy_ok(k: &testbed::Kube, args: &[&str]) -> Output {
    let mut full = vec!["deploy", "--timeout", "3m"];
    full.extend_from_slice(args);
    let out = audctl(k, &full).await;
    assert_eq!(code(&out), 0, "deploy {args:?} failed:\n{}", text(&out));
    out
}

pub async fn history(k: &testbed::Kube, ns: &str) -> Vec<Value> {
    let out = audctl(k, &["history", "-n", ns, "-o", "json"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("history json");
    v["revisions"].as_array().cloned().unwrap_or_default()
}

pub fn states(h: &[Value]) -> Vec<(u64, String)> {
    h.iter().map(|r| (r["revision"].as_u64().unwrap_or(0), r["state"].as_str().unwrap_or("").to_owned())).collect()
}

pub async fn deployment(c: &kube::Client, ns: &str) -> Deployment {
    Api::<Deployment>::namespaced(c.clone(), ns).get("audit-trail").await.expect("deployment")
}

pub fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// audctl started in the background against the cluster (output piped, killed if dropped), for
/// the tests that stop a run midway.
pub fn spawn_audctl(k: &testbed::Kube, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn audctl")
}

/// Wait (two minutes at most) until the audctl run `pid` holds the release lock of `ns`, has
/// recorded `revision`, and `also` is true (e.g. it applied what it now waits for).
pub async fn until_locked_and_recorded(
    c: &kube::Client,
    ns: &str,
    pid: u32,
    revision: u32,
    also: impl AsyncFn() -> bool,
) {
    let leases: Api<Lease> = Api::namespaced(c.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
    let record = format!("audctl-release-audit-trail-v{revision}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let holder =
            leases.get_opt("audctl-audit-trail-lock").await.ok().flatten().and_then(|l| l.spec?.holder_identity);
        let recorded = secrets.get_opt(&record).await.ok().flatten().is_some();
        if holder.is_some_and(|h| h.contains(&format!("pid {pid} "))) && recorded && also().await {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "audctl never took the lock and recorded revision {revision}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
