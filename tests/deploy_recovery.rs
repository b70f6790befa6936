//! `deploy` and `rollback` when things go wrong midway, on the real testbed cluster (as tests/deploy.rs:
//! kube-apiserver + controller-manager + scheduler + kwok; image tag `:never-ready` never becomes
//! ready): an interrupt (SIGINT/SIGTERM) while waiting, `rollback` after a failed or interrupted
//! revision, a rollback that fails, and an object the API server refuses.
//!
//! Needs the testbed binaries: run `cargo xtask deps install` first.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;

mod kube_support;

use kube_support::*;

const LOCK: &str = "audctl-audit-trail-lock";

/// Start a deploy (or rollback) that cannot become ready, wait until it holds the lock, has
/// recorded `revision` and applied the never-ready Deployment (so it is waiting), then send
/// `signal`. Returns the finished process's output.
async fn interrupt_while_waiting(
    k: &testbed::Kube,
    c: &kube::Client,
    ns: &str,
    args: &[&str],
    revision: u32,
    signal: i32,
) -> std::process::Output {
    let child = spawn_audctl(k, args);
    let pid = child.id().expect("pid");
    until_locked_and_recorded(c, ns, pid, revision, async || {
        image_of(&deployment(c, ns).await).ends_with(":never-ready")
    })
    .await;
    // Well into the wait (it polls every 250 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // SAFETY: kill(2) of the child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill");
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("audctl did not stop within 60s of the signal")
        .expect("wait")
}

/// The `audctl.io/outcome` of the evidence records of `verb` in `ns`, newest first (names start
/// with the time).
async fn evidence_outcomes(c: &kube::Client, ns: &str, verb: &str) -> Vec<String> {
    let selector = format!("audctl.io/kind=evidence,audctl.io/verb={verb}");
    let list = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .expect("evidence records");
    let mut records: Vec<(String, String)> = list
        .items
        .into_iter()
        .map(|cm| {
            let outcome = cm.metadata.labels.unwrap_or_default().get("audctl.io/outcome").cloned().unwrap_or_default();
            (cm.metadata.name.unwrap_or_default(), outcome)
        })
        .collect();
    records.sort();
    records.into_iter().rev().map(|(_, o)| o).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_deploy_and_rollback_release_the_lock_and_record_interrupted() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "r-sigint";
    let set_ns = format!("namespace.name={ns}");
    deploy_ok(k, &["-f", &local(), "--set", &set_ns]).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), ns);
    let never_ready =
        ["deploy", "-f", &local(), "--set", &set_ns, "--set", "image.tag=never-ready", "--timeout", "10m"];

    // Ctrl-C: exit 130, revision 2 interrupted (not rolled back), the lock released at once.
    let out = interrupt_while_waiting(k, &c, ns, &never_ready, 2, libc::SIGINT).await;
    assert_eq!(code(&out), 130, "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("interrupted") && err.contains("revision 2 left mid-rollout") && err.contains("revision 1"),
        "says what state the cluster is left in: {err}"
    );
    assert!(err.contains("audctl rollback"), "says how to get back: {err}");
    assert!(leases.get_opt(LOCK).await.expect("lease").is_none(), "lock still held: {}", text(&out));
    assert_eq!(states(&history(k, ns).await), vec![(2, "interrupted".into()), (1, "deployed".into())]);
    assert!(image_of(&deployment(&c, ns).await).ends_with(":never-ready"), "an interrupt rolled back");
    // The interrupted run left its evidence record (outcome error), next to the first deploy's.
    let outcomes = evidence_outcomes(&c, ns, "deploy").await;
    assert_eq!(outcomes, ["error", "success"], "deploy evidence records, newest first");

    // SIGTERM (a cancelled CI job): exit 143, the same recovery.
    let out = interrupt_while_waiting(k, &c, ns, &never_ready, 3, libc::SIGTERM).await;
    assert_eq!(code(&out), 143, "{}", text(&out));
    assert!(leases.get_opt(LOCK).await.expect("lease").is_none(), "lock still held: {}", text(&out));
    assert_eq!(
        states(&history(k, ns).await),
        vec![(3, "interrupted".into()), (2, "interrupted".into()), (1, "deployed".into())]
    );

    // An interrupted rollback (to the never-ready revision 3) is handled the same way.
    let out =
        interrupt_while_waiting(k, &c, ns, &["rollback", "3", "-n", ns, "--timeout", "10m"], 4, libc::SIGINT).await;
    assert_eq!(code(&out), 130, "{}", text(&out));
    assert!(stderr(&out).contains("revision 4 left mid-rollout"), "{}", text(&out));
    assert!(leases.get_opt(LOCK).await.expect("lease").is_none(), "lock still held: {}", text(&out));
    assert_eq!(history(k, ns).await[0]["state"], "interrupted");
    assert_eq!(evidence_outcomes(&c, ns, "rollback").await, ["error"], "the interrupted rollback's evidence");

    // What the message says to run works: back to revision 1, the one that was serving.
    let out = audctl(k, &["rollback", "-n", ns, "--timeout", "3m"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let h = history(k, ns).await;
    assert_eq!(h[0]["action"], "rollback to 1", "{}", h[0]);
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.1.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_without_revision_returns_to_the_revision_that_was_serving() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "r-serving";
    let set_ns = format!("namespace.name={ns}");
    deploy_ok(k, &["-f", &local(), "--set", &set_ns]).await;
    deploy_ok(k, &["-f", &local(), "--set", &set_ns, "--set", "image.tag=0.2.0"]).await;
    let out = audctl(
        k,
        &[
            "deploy",
            "-f",
            &local(),
            "--set",
            &set_ns,
            "--set",
            "image.tag=never-ready",
            "--timeout",
            "5s",
            "--no-rollback",
        ],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        states(&history(k, ns).await),
        vec![(3, "failed".into()), (2, "deployed".into()), (1, "superseded".into())]
    );

    // Revision 2 was serving before revision 3 failed: that is where a plain rollback goes.
    let out = audctl(k, &["rollback", "-n", ns, "--timeout", "3m"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let h = history(k, ns).await;
    assert_eq!(h[0]["action"], "rollback to 2", "{}", h[0]);
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.2.0"));

    // The latest revision is the current deployed one: the one before it, as before.
    let out = audctl(k, &["rollback", "-n", ns, "--timeout", "3m"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let h = history(k, ns).await;
    assert_eq!(h[0]["action"], "rollback to 2", "the last good revision before revision 4 (= 2): {}", h[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_rollback_restores_the_revision_that_was_current() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "r-failrb";
    let set_ns = format!("namespace.name={ns}");
    deploy_ok(k, &["-f", &local(), "--set", &set_ns]).await;
    // Revision 2 fails and is rolled back automatically (revision 3 = revision 1).
    let out =
        audctl(k, &["deploy", "-f", &local(), "--set", &set_ns, "--set", "image.tag=never-ready", "--timeout", "5s"])
            .await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        states(&history(k, ns).await),
        vec![(3, "deployed".into()), (2, "failed".into()), (1, "superseded".into())]
    );

    // Rolling back to the failed revision 2: warned, fails again, revision 3 is restored.
    let out = audctl(k, &["rollback", "2", "-n", ns, "--timeout", "5s"]).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("warning: revision 2 is recorded as failed"), "{err}");
    assert!(err.contains("restored revision 3"), "says the previous revision is back: {err}");
    let h = history(k, ns).await;
    assert_eq!(
        states(&h)[..3],
        [(5, "deployed".into()), (4, "failed".into()), (3, "superseded".into())],
        "history tells the truth"
    );
    assert!(h[0]["action"].as_str().is_some_and(|a| a.contains("automatic rollback to 3")), "{}", h[0]);
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.1.0"), "left on the broken spec");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_object_says_exactly_what_was_applied() {
    let k = cluster().await;
    let c = client(k).await;

    // A new namespace: it must exist to hold the lock and the records, so it alone is created.
    let ns = "r-refused";
    let set_ns = format!("namespace.name={ns}");
    let bogus = ["deploy", "-f", &local(), "--set", &set_ns, "--set", "service.type=Bogus", "--timeout", "1m"];
    let out = audctl(k, &bogus).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("Service/audit-trail") && err.contains("Bogus"), "names the refused object: {err}");
    assert!(err.contains(&format!("nothing but Namespace/{ns} was applied")), "{err}");
    assert!(Api::<Service>::namespaced(c.clone(), ns).get_opt("audit-trail").await.expect("svc").is_none());
    let records = Api::<Secret>::namespaced(c.clone(), ns)
        .list(&kube::api::ListParams::default().labels("audctl.io/kind=release"))
        .await
        .expect("records");
    assert!(records.items.is_empty(), "a refused deploy recorded a revision");

    // An existing namespace: truly nothing is applied (the Namespace object included).
    let ns = "r-refused-existing";
    let set_ns = format!("namespace.name={ns}");
    deploy_ok(k, &["-f", &local(), "--set", &set_ns]).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    let before = namespaces.get(ns).await.expect("ns").metadata.resource_version;
    let out = audctl(k, &["deploy", "-f", &local(), "--set", &set_ns, "--set", "service.type=Bogus"]).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(stderr(&out).contains("nothing was applied"), "{}", text(&out));
    assert_eq!(namespaces.get(ns).await.expect("ns").metadata.resource_version, before, "the Namespace was applied");
    assert_eq!(states(&history(k, ns).await), vec![(1, "deployed".into())]);
}
