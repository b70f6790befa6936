//! `audctl deploy`, `diff`, `history`, `rollback` end to end: the real binary against the testbed's
//! kube-apiserver + controller-manager + scheduler + kwok (pods really scheduled, ReplicaSets really
//! rolled by the controller-manager; kwok's stages make `:never-ready` and `:crashloop` images fail
//! for real). One cluster per test binary, one namespace per test.
//!
//! No operator runs in the testbed: where a test needs CloudNativePG, ECK, Strimzi or
//! external-secrets resources to become ready, it writes the status their operator would (see
//! `act_as_operators`). Everything else is the real API server and controllers.
//!
//! Needs the testbed binaries: run `cargo xtask deps install` first.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

mod kube_support;

use kube_support::*;

/// ReplicaSets of the release: (image, spec replicas, ready replicas).
async fn replicasets(c: &kube::Client, ns: &str) -> Vec<(String, i32, i32)> {
    let list = Api::<ReplicaSet>::namespaced(c.clone(), ns).list(&ListParams::default()).await.expect("replicasets");
    list.items
        .iter()
        .map(|rs| {
            let image = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|p| p.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let ready = rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            (image, want, ready)
        })
        .collect()
}

/// resourceVersion of every object of the namespace audctl could touch.
async fn versions(k: &testbed::Kube, ns: &str) -> String {
    let out = k
        .kubectl()
        .args(["get", "deployments,services,configmaps,serviceaccounts,poddisruptionbudgets", "-n", ns])
        .args(["-o", "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}"])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_install_dry_run_upgrade_prune_and_explicit_rollback() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-local";
    let set_ns = format!("namespace.name={ns}");
    let base = ["-f", &local(), "--set", &set_ns];
    let with = |extra: &[&str]| base.iter().chain(extra).map(|s| s.to_string()).collect::<Vec<_>>();
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    // 1. First install.
    let out = deploy_ok(k, &base).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready in"), "{}", text(&out));
    let d = deployment(&c, ns).await;
    assert_eq!(d.status.as_ref().and_then(|s| s.ready_replicas), Some(1), "one replica ready");
    assert_eq!(states(&history(k, ns).await), vec![(1, "deployed".into())]);
    // The evidence record of the deploy (verb deploy, subject the values' environment, as the
    // checklist's staging-deploy/prod-deploy items look it up).
    let cms = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels("audctl.io/kind=evidence,audctl.io/verb=deploy"))
        .await
        .expect("evidence");
    assert_eq!(cms.items.len(), 1, "one deploy evidence record");
    let labels = cms.items[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("audctl.io/outcome").map(String::as_str), Some("success"), "{labels:?}");
    assert_eq!(labels.get("audctl.io/subject").map(String::as_str), Some("local"), "{labels:?}");

    // A ConfigMap audctl did not create, in the same namespace: never touched.
    let manual =
        k.kubectl().args(["create", "configmap", "manual", "-n", ns, "--from-literal=a=b"]).output().expect("kubectl");
    assert!(manual.status.success());

    // 2. Dry run of an upgrade: accepted, nothing changes.
    let before = versions(k, ns).await;
    let upgrade = with(&["--set", "image.tag=0.2.0", "--set", "podDisruptionBudget.enabled=true"]);
    let mut dry = vec!["deploy", "--dry-run"];
    dry.extend(refs(&upgrade));
    let out = audctl(k, &dry).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("created (server dry run)"),
        "the PDB would be created: {}",
        text(&out)
    );
    assert_eq!(versions(k, ns).await, before, "a dry run changed resourceVersions");
    assert_eq!(history(k, ns).await.len(), 1, "a dry run recorded a revision");

    // 3. Upgrade: new image and a PDB.
    deploy_ok(k, &refs(&upgrade)).await;
    let d = deployment(&c, ns).await;
    assert!(image_of(&d).ends_with(":0.2.0"), "{}", image_of(&d));
    let rss = replicasets(&c, ns).await;
    assert!(rss.iter().any(|(i, w, r)| i.ends_with(":0.2.0") && *w == 1 && *r == 1), "{rss:?}");
    assert!(rss.iter().any(|(i, w, _)| i.ends_with(":0.1.0") && *w == 0), "old ReplicaSet scaled down: {rss:?}");
    Api::<PodDisruptionBudget>::namespaced(c.clone(), ns).get("audit-trail").await.expect("PDB created");
    assert_eq!(states(&history(k, ns).await), vec![(2, "deployed".into()), (1, "superseded".into())]);

    // 4. Prune: the PDB is no longer rendered -> deleted; the manual ConfigMap stays.
    deploy_ok(k, &refs(&with(&["--set", "image.tag=0.2.0"]))).await;
    let pdb = Api::<PodDisruptionBudget>::namespaced(c.clone(), ns).get_opt("audit-trail").await.expect("get pdb");
    assert!(pdb.is_none_or(|p| p.metadata.deletion_timestamp.is_some()), "PDB not pruned");
    Api::<ConfigMap>::namespaced(c.clone(), ns).get("manual").await.expect("the manual ConfigMap was touched");

    // 5. Explicit rollback to revision 1 (re-applies its objects and waits).
    let out = audctl(k, &["rollback", "1", "-n", ns, "--timeout", "3m"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.1.0"));
    let h = history(k, ns).await;
    assert_eq!(h[0]["revision"], 4);
    assert_eq!(h[0]["action"], "rollback to 1");
    assert_eq!(h[0]["state"], "deployed");
    let rss = replicasets(&c, ns).await;
    assert!(rss.iter().any(|(i, w, r)| i.ends_with(":0.1.0") && *w == 1 && *r == 1), "{rss:?}");
    let ev = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels("audctl.io/kind=evidence,audctl.io/verb=rollback"))
        .await
        .expect("evidence");
    assert_eq!(ev.items.len(), 1, "one rollback evidence record");
}

/// The status each operator would write once its resource is up (no operator runs in the testbed).
async fn act_as_operators(c: kube::Client, ns: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let kinds = [
        ("postgresql.cnpg.io", "v1", "Cluster", "clusters"),
        ("elasticsearch.k8s.elastic.co", "v1", "Elasticsearch", "elasticsearches"),
        ("kafka.strimzi.io", "v1", "Kafka", "kafkas"),
        ("kafka.strimzi.io", "v1", "KafkaTopic", "kafkatopics"),
        ("external-secrets.io", "v1", "ExternalSecret", "externalsecrets"),
    ];
    // The checkpoint volume (values-prod `integrity.checkpointClaimName`) is provisioned by the
    // storage team on write-once storage, not by the release (values/defaults.yaml, README): the test
    // creates it as they would, once the deploy has made the namespace.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), &ns);
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "audit-trail-checkpoints"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let _ =
            claims.patch("audit-trail-checkpoints", &PatchParams::apply("storage-team"), &Patch::Apply(&claim)).await;
        for (group, version, kind, plural) in kinds {
            let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
            let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns, &ar);
            let Ok(list) = api.list(&ListParams::default()).await else { continue };
            for o in list.items {
                let name = o.metadata.name.clone().unwrap_or_default();
                let generation = o.metadata.generation.unwrap_or(1);
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let status = if kind == "Elasticsearch" {
                    json!({"health": "green", "phase": "Ready", "observedGeneration": generation})
                } else {
                    json!({"observedGeneration": generation, "conditions": [{
                        "type": "Ready", "status": "True", "reason": "Ready", "message": "written by the test acting as the operator",
                        "lastTransitionTime": now}]})
                };
                let _ =
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prod_install_waits_for_operator_resources() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-prod";
    let set_ns = format!("namespace.name={ns}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let operators = tokio::spawn(act_as_operators(c.clone(), ns.into(), stop.clone()));
    let out = deploy_ok(k, &["-f", &prod(), "--set", &set_ns]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = operators.await;
    let err = stderr(&out);
    for waited in
        ["Cluster/audit-trail-postgresql", "Elasticsearch/", "Kafka/", "StatefulSet/", "Deployment/audit-trail"]
    {
        assert!(err.contains(waited), "no wait line for {waited}:\n{err}");
    }
    let h = history(k, ns).await;
    assert_eq!(states(&h), vec![(1, "deployed".into())]);
    assert!(h[0]["inventory"].as_array().is_some_and(|i| i.len() > 20), "{}", h[0]);
    let labels = Api::<ConfigMap>::namespaced(c.clone(), ns)
        .list(&ListParams::default().labels("audctl.io/kind=evidence,audctl.io/verb=deploy"))
        .await
        .expect("evidence")
        .items
        .first()
        .and_then(|cm| cm.metadata.labels.clone())
        .unwrap_or_default();
    assert_eq!(labels.get("audctl.io/outcome").map(String::as_str), Some("success"), "{labels:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_rollout_is_rolled_back_automatically() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-fail";
    let set_ns = format!("namespace.name={ns}");
    deploy_ok(k, &["-f", &local(), "--set", &set_ns, "--set", "replicaCount=2"]).await;

    let out = audctl(
        k,
        &[
            "deploy",
            "-f",
            &local(),
            "--set",
            &set_ns,
            "--set",
            "replicaCount=2",
            "--set",
            "image.tag=never-ready",
            "--timeout",
            "25s",
        ],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("Deployment/audit-trail: not ready after"), "{err}");
    assert!(err.contains("running but not ready"), "the failing pod's reason: {err}");
    assert!(err.contains("Unhealthy"), "the failing pod's event: {err}");
    assert!(err.contains("rolled back to revision 1"), "{err}");

    // The previous ReplicaSet serves again; the never-ready one is scaled to zero.
    let d = deployment(&c, ns).await;
    assert!(image_of(&d).ends_with(":0.1.0"), "{}", image_of(&d));
    let rss = replicasets(&c, ns).await;
    assert!(rss.iter().any(|(i, w, r)| i.ends_with(":0.1.0") && *w == 2 && *r == 2), "{rss:?}");
    assert!(rss.iter().any(|(i, w, _)| i.ends_with(":never-ready") && *w == 0), "{rss:?}");
    let h = history(k, ns).await;
    assert_eq!(states(&h), vec![(3, "deployed".into()), (2, "failed".into()), (1, "superseded".into())]);
    assert!(h[0]["action"].as_str().is_some_and(|a| a.contains("automatic rollback to 1")), "{}", h[0]);

    // A crash-looping rollout with --no-rollback, its Deployment given a 5 s progress deadline (the
    // templates with one line added): the controller-manager declares ProgressDeadlineExceeded, long
    // before --timeout; the reason is CrashLoopBackOff and the rollout is left as it is.
    let templates = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(root().join("templates")).expect("templates") {
        let path = entry.expect("entry").path();
        let mut text = std::fs::read_to_string(&path).expect("template");
        if path.ends_with("deployment.yaml.j2") {
            text = text.replacen(
                "  revisionHistoryLimit: 5\n",
                "  revisionHistoryLimit: 5\n  progressDeadlineSeconds: 5\n",
                1,
            );
            assert!(text.contains("progressDeadlineSeconds: 5"), "deployment template changed shape");
        }
        std::fs::write(templates.path().join(path.file_name().expect("name")), text).expect("copy");
    }
    let tdir = templates.path().display().to_string();
    let out = audctl(
        k,
        &[
            "deploy",
            "-f",
            &local(),
            "--set",
            &set_ns,
            "--set",
            "replicaCount=2",
            "--set",
            "image.tag=crashloop",
            "--templates",
            &tdir,
            "--timeout",
            "10m",
            "--no-rollback",
        ],
    )
    .await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(!stderr(&out).contains("not ready after"), "failed by the deadline, not the timeout: {}", text(&out));
    assert!(stderr(&out).contains("ProgressDeadlineExceeded"), "{}", text(&out));
    assert!(stderr(&out).contains("CrashLoopBackOff"), "{}", text(&out));
    assert!(stderr(&out).contains("BackOff"), "the failing pod's event: {}", text(&out));
    assert!(stderr(&out).contains("--no-rollback"), "{}", text(&out));
    assert!(image_of(&deployment(&c, ns).await).ends_with(":crashloop"));
    assert_eq!(history(k, ns).await[0]["state"], "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_field_manager_is_refused_then_forced() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-conflict";
    let set_ns = format!("namespace.name={ns}");
    let args = ["-f".to_owned(), local(), "--set".into(), set_ns.clone()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    deploy_ok(k, &args).await;

    // Another manager takes one field of audctl's ConfigMap.
    let intruder = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: audit-trail-datastores\n  namespace: {ns}\ndata:\n  KAFKA_TOPIC: hijacked\n"
    );
    let mut child = k
        .kubectl()
        .args(["apply", "--server-side", "--field-manager=intruder", "--force-conflicts", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(intruder.as_bytes()).expect("write");
    assert!(child.wait_with_output().expect("kubectl").status.success());

    let mut deploy = vec!["deploy", "--timeout", "2m"];
    deploy.extend(&args);
    let out = audctl(k, &deploy).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("intruder") && err.contains(".data.KAFKA_TOPIC"), "names the manager and the field: {err}");
    assert!(err.contains("--force-conflicts"), "{err}");
    assert_eq!(history(k, ns).await.len(), 1, "a refused deploy recorded a revision");
    let cm = Api::<ConfigMap>::namespaced(c.clone(), ns).get("audit-trail-datastores").await.expect("cm");
    assert_eq!(cm.data.unwrap_or_default().get("KAFKA_TOPIC").map(String::as_str), Some("hijacked"));

    deploy.push("--force-conflicts");
    let out = audctl(k, &deploy).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let cm = Api::<ConfigMap>::namespaced(c.clone(), ns).get("audit-trail-datastores").await.expect("cm");
    assert_eq!(cm.data.unwrap_or_default().get("KAFKA_TOPIC").map(String::as_str), Some("audit-events"));
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_exit_codes_and_secret_masking() {
    let k = cluster().await;
    let ns = "d-diff";
    let set_ns = format!("namespace.name={ns}");
    // The embedded templates plus a Secret, so the diff has secret data to mask.
    let templates = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(root().join("templates")).expect("templates") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, templates.path().join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(
        templates.path().join("secret.yaml.j2"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {{ release.name }}-test\n  namespace: {{ release.namespace }}\n\
         type: Opaque\nstringData:\n  password: \"s3cr3t-{{ values.image.tag }}\"\n",
    )
    .expect("secret template");
    let tdir = templates.path().display().to_string();
    let args = |tag: &str| -> Vec<String> {
        ["-f", &local(), "--set", &set_ns, "--templates", &tdir, "--set", &format!("image.tag={tag}")]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |verb: &'static str, a: Vec<String>| async move {
        let mut full = vec![verb.to_owned()];
        full.extend(a);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        audctl(k, &refs).await
    };

    // Before the first deploy everything is new: exit 1.
    let out = run("diff", args("0.1.0")).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = run("deploy", args("0.1.0")).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    // Nothing would change: exit 0, no diff.
    let out = run("diff", args("0.1.0")).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    // A new tag changes the image, the version label and the secret; values stay masked.
    let out = run("diff", args("0.2.0")).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains(&format!("--- live/Deployment/{ns}/audit-trail")), "{diff}");
    assert!(
        diff.lines().any(|l| l.starts_with('+')
            && l.trim_start_matches('+').trim() == "image: registry.example.com/audit-trail/audit-server:0.2.0"),
        "{diff}"
    );
    assert!(diff.contains(&format!("+++ rendered/Secret/{ns}/audit-trail-test")), "{diff}");
    assert!(diff.contains("*** (before)") && diff.contains("*** (after)"), "changed secret value shown masked: {diff}");
    for leak in ["s3cr3t", "czNjcjN0", "managedFields"] {
        assert!(!diff.contains(leak), "diff leaks {leak}: {diff}");
    }
    // -o json: the same diffs per object, with the change; parseable, the secret still masked.
    let mut json_args = args("0.2.0");
    json_args.extend(["-o".to_owned(), "json".to_owned()]);
    let out = run("diff", json_args).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("diff -o json is JSON");
    let objects = report["objects"].as_array().cloned().unwrap_or_default();
    assert_eq!(report["changed"].as_u64(), Some(objects.len() as u64), "{report}");
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").expect("the Deployment changes");
    assert_eq!(deployment["change"], "update", "{report}");
    assert!(deployment["diff"].as_str().is_some_and(|d| d.contains(":0.2.0")), "{report}");
    assert!(!out.stdout.windows(6).any(|w| w == b"s3cr3t"), "{report}");
    // The live secret is what was deployed (the mask is only in the diff).
    let s = Api::<Secret>::namespaced(client(k).await, ns).get("audit-trail-test").await.expect("secret");
    let data = s.data.unwrap_or_default();
    assert_eq!(data.get("password").map(|b| b.0.as_slice()), Some(&b"s3cr3t-0.1.0"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_deploy_leaves_a_lock_the_next_deploy_recovers() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-lock";
    let set_ns = format!("namespace.name={ns}");
    deploy_ok(k, &["-f", &local(), "--set", &set_ns]).await;

    // A deploy stuck waiting on a never-ready rollout, holding the lock with an 8s lease...
    let values = local();
    let mut child = spawn_audctl(
        k,
        &[
            "deploy",
            "-f",
            &values,
            "--set",
            &set_ns,
            "--set",
            "image.tag=never-ready",
            "--timeout",
            "10m",
            "--lock-lease",
            "8s",
        ],
    );
    let pid = child.id().expect("pid");
    until_locked_and_recorded(&c, ns, pid, 2, async || true).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), ns);
    // ...is killed -9, as a cancelled CI job would be.
    child.start_kill().expect("kill -9");
    let _ = child.wait().await;

    let out =
        audctl(k, &["deploy", "-f", &local(), "--set", &set_ns, "--set", "image.tag=0.1.1", "--timeout", "3m"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("is locked by") && err.contains(&format!("pid {pid} ")), "says who holds the lock: {err}");
    assert!(err.contains("audctl deploy --force-unlock"), "says which command forces it: {err}");
    assert!(err.contains("taking over the release lock"), "{err}");
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.1.1"));
    assert_eq!(
        states(&history(k, ns).await),
        vec![(3, "deployed".into()), (2, "interrupted".into()), (1, "superseded".into())]
    );
    assert!(
        leases.get_opt("audctl-audit-trail-lock").await.expect("lease").is_none(),
        "lock released after the deploy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_context_is_refused() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-ctx";
    let set_ns = format!("namespace.name={ns}");
    // A kubeconfig with a second context "staging-eu" for the same cluster; current context: testbed.
    let dir = tempfile::tempdir().expect("tempdir");
    let text_cfg = std::fs::read_to_string(k.kubeconfig()).expect("kubeconfig");
    let extra =
        "- name: staging-eu\n  context:\n    cluster: testbed\n    user: testbed-admin\n    namespace: default\n";
    let cfg = text_cfg.replacen("contexts:\n", &format!("contexts:\n{extra}"), 1);
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, cfg).expect("write kubeconfig");
    let run = |extra: &'static [&'static str]| {
        let path = path.clone();
        let set_ns = set_ns.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
                .arg("--kubeconfig")
                .arg(&path)
                .args([
                    "deploy",
                    "-f",
                    &local(),
                    "--set",
                    &set_ns,
                    "--set",
                    "cluster.context=staging-eu",
                    "--timeout",
                    "2m",
                ])
                .args(extra)
                .env_remove("NO_COLOR")
                .output()
                .await
                .expect("audctl")
        }
    };
    let out = run(&[]).await;
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(stderr(&out).contains("staging-eu") && stderr(&out).contains("testbed"), "{}", text(&out));
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    assert!(namespaces.get_opt(ns).await.expect("get ns").is_none(), "something was applied");
    // Naming the context explicitly is the deliberate way to deploy there.
    let out = run(&["--context", "staging-eu"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = run(&["--context", "staging-eu", "--set", "image.tag=0.2.0"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));

    // rollback: the revisions recorded the cluster their values named; going back to one of them
    // is refused elsewhere, as its deploy was, and with -f the values are checked as deploy does.
    let rollback = |extra: &'static [&'static str]| {
        let path = path.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
                .arg("--kubeconfig")
                .arg(&path)
                .args(["rollback", "-n", ns, "--timeout", "2m"])
                .args(extra)
                .env_remove("NO_COLOR")
                .output()
                .await
                .expect("audctl")
        }
    };
    let unchanged = |h: Vec<Value>| states(&h) == vec![(2, "deployed".into()), (1, "superseded".into())];
    let out = rollback(&[]).await;
    assert_eq!(code(&out), 2, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("refusing to roll back to revision 1") && err.contains("staging-eu"), "{}", text(&out));
    assert!(unchanged(history(k, ns).await), "a refused rollback recorded a revision");
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.2.0"), "a refused rollback changed the Deployment");
    let values = ["-f", "", "--set", "namespace.name=d-ctx", "--set", "cluster.context=staging-eu"];
    let local = local();
    let with_values: Vec<&str> = values.iter().map(|v| if v.is_empty() { local.as_str() } else { v }).collect();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_audctl"))
        .arg("--kubeconfig")
        .arg(&path)
        .args(["rollback", "--timeout", "2m"])
        .args(&with_values)
        .env_remove("NO_COLOR")
        .output()
        .await
        .expect("audctl");
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(stderr(&out).contains("refusing to roll back on this cluster"), "{}", text(&out));
    assert!(unchanged(history(k, ns).await), "a refused rollback recorded a revision");
    // Named explicitly: rolled back.
    let out = rollback(&["--context", "staging-eu"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.1.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_crds_are_all_reported_before_anything_is_applied() {
    // A cluster of its own without the operators' CRDs (small: one node).
    let k = testbed::kube_with(testbed::KubeOptions { nodes: 1, crds: false }).await.expect("cluster without CRDs");
    let c = client(&k).await;
    let out = audctl(&k, &["deploy", "-f", &prod(), "--set", "namespace.name=d-crds", "--timeout", "1m"]).await;
    assert_eq!(code(&out), 2, "{}", text(&out));
    let err = stderr(&out);
    for kind in [
        "ServiceMonitor",
        "PrometheusRule",
        "ExternalSecret",
        "Cluster",
        "ScheduledBackup",
        "Elasticsearch",
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
    ] {
        assert!(err.contains(&format!("  {kind} (")), "{kind} not reported: {err}");
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c);
    assert!(namespaces.get_opt("d-crds").await.expect("get ns").is_none(), "the namespace was applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn namespace_flag_overrides_the_values() {
    let k = cluster().await;
    let c = client(k).await;
    let ns = "d-nsflag";
    // values-local names namespace audit-trail; -n (before or after the verb) moves the release.
    deploy_ok(k, &["-n", ns, "-f", &local()]).await;
    assert!(image_of(&deployment(&c, ns).await).ends_with(":0.1.0"));
    assert_eq!(states(&history(k, ns).await), vec![(1, "deployed".into())]);
    let out = audctl(k, &["diff", "-f", &local(), "-n", ns]).await;
    assert_eq!(code(&out), 0, "diff compared another namespace: {}", text(&out));
    let out = audctl(k, &["diff", "-f", &local(), "-n", ns, "--set", "image.tag=0.3.0"]).await;
    assert_eq!(code(&out), 1, "{}", text(&out));
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    assert!(namespaces.get_opt("audit-trail").await.expect("get ns").is_none(), "the values' namespace was used");
}
