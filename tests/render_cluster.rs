//! Every rendered object is valid for a real API server: server-side dry-run with strict field
//! validation against the testbed's kube-apiserver (v1.35, with the CRDs of prometheus-operator,
//! external-secrets, CloudNativePG, ECK and Strimzi loaded). Pod Security admission of the restricted
//! namespace also runs, and must have nothing to warn about.
//!
//! Needs the testbed binaries: run `cargo xtask deps install` first.

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

const CASES: &[(&str, &[&str])] = &[
    ("prod", &["values/values-prod.yaml"]),
    ("staging", &["values/values-prod.yaml", "values/values-staging.yaml"]),
    ("local", &["values/values-local.yaml"]),
];

fn kubectl(k: &testbed::Kube, args: &[&str], stdin: &str) -> Output {
    let mut child = k
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the testbed's kubectl");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write manifests");
    child.wait_with_output().expect("kubectl output")
}

#[tokio::test(flavor = "multi_thread")]
async fn rendered_objects_pass_server_side_strict_dry_run() {
    let k = testbed::kube().await.unwrap_or_else(|e| panic!("testbed cluster: {e:#} (run cargo xtask deps install)"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    for (case, files) in CASES {
        let files: Vec<_> = files.iter().map(|f| root.join(f)).collect();
        let values = audctl::values::load(&files, &[]).expect("values");
        let objects = audctl::render::render(&values, None).expect("render");
        // Namespaced objects cannot be dry-run into a namespace that does not exist: create it for real.
        let (namespace, rest): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| o.kind == "Namespace");
        if !namespace.is_empty() {
            let out = kubectl(
                &k,
                &["apply", "--server-side", "--field-manager=audctl", "-f", "-"],
                &audctl::render::to_stream(&namespace),
            );
            assert!(out.status.success(), "{case}: creating the namespace: {}", String::from_utf8_lossy(&out.stderr));
        } else {
            let ns = &values.namespace.name;
            let _ = kubectl(&k, &["create", "namespace", ns], "");
        }
        let out = kubectl(
            &k,
            &["apply", "--server-side", "--dry-run=server", "--validate=strict", "--field-manager=audctl", "-f", "-"],
            &audctl::render::to_stream(&rest),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.contains("Warning") {
            failures.push(format!("{case}:\n{stderr}"));
        }
        let accepted = stdout.lines().filter(|l| l.contains("(server dry run)")).count();
        if accepted != rest.len() {
            failures.push(format!("{case}: {accepted} of {} objects accepted:\n{stdout}", rest.len()));
        }
        eprintln!("{case}: {accepted} objects accepted by the API server (dry run)");
    }
    assert!(failures.is_empty(), "the API server refused or warned:\n{}", failures.join("\n"));

    // The check has teeth: a CRD schema violation is refused, and a non-restricted pod warned about.
    let bad_monitor = "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: bad\n  namespace: audit-trail\nspec:\n  selector: {}\n  endpoints:\n    - port: 8080\n";
    let dry_run =
        ["apply", "--server-side", "--dry-run=server", "--validate=strict", "--field-manager=audctl", "-f", "-"];
    let out = kubectl(&k, &dry_run, bad_monitor);
    assert!(!out.status.success(), "an integer ServiceMonitor port was accepted: the CRD schemas are not enforced");
    let root_pod = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\n  namespace: audit-trail\nspec:\n  selector:\n    matchLabels: {app: bad}\n  template:\n    metadata:\n      labels: {app: bad}\n    spec:\n      containers:\n        - name: c\n          image: busybox\n";
    let out = kubectl(&k, &dry_run, root_pod);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PodSecurity"), "no Pod Security warning for a non-restricted pod: {stderr}");
}
