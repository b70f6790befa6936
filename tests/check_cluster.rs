//! `audctl check` and `audctl attest` against the testbed's real kube-apiserver (kwok nodes in three
//! zones, the operators' CRDs loaded), driving the real binary for exit codes and output formats.
//!
//! One cluster for the whole binary (it costs 30-60 s to start here): the scenarios run in order in
//! one test, each breaking one thing for real, checking, and putting it back, so every variant is
//! compared with the same healthy baseline. The operators themselves do not run in the testbed: where
//! an operator would write a status (cert-manager's ClusterIssuer Ready, external-secrets' store
//! Ready), the test writes it through the status subresource, as the operator would.
//!
//! Needs the testbed binaries: run `cargo xtask deps install` first.

mod report_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use report_support::{item, items};
use serde_json::Value;

const NS: &str = "audit-trail";
/// 64 hex digits: a digest in the form image references take.
const DIGEST: &str = "sha256:2d1f3c5e7a9b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Bed {
    kube: testbed::Kube,
    dir: tempfile::TempDir,
}

impl Bed {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kube
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the testbed's kubectl");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed.
    fn k(&self, args: &[&str]) {
        self.k_in(args, "");
    }

    fn k_in(&self, args: &[&str], stdin: &str) {
        let out = self.kubectl(args, stdin);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn apply(&self, yaml: &str) {
        self.k_in(&["apply", "--server-side", "--force-conflicts", "--field-manager=audctl-test", "-f", "-"], yaml);
    }

    fn audctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_audctl"))
            .current_dir(self.dir.path())
            .arg("--kubeconfig")
            .arg(self.kube.kubeconfig())
            .args(["--context", testbed::kube::CONTEXT])
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("AUDCTL_TARGETS")
            .output()
            .expect("run audctl")
    }

    /// The check arguments of the healthy setup: the production values plus the overlay.
    fn values_args(&self) -> Vec<String> {
        vec![
            "-f".into(),
            root().join("values/values-prod.yaml").display().to_string(),
            "-f".into(),
            self.path("healthy.yaml").display().to_string(),
        ]
    }

    /// Run `check -o json` with the healthy values; (exit code, report).
    fn check(&self, ns: &str, extra: &[&str]) -> (i32, Value) {
        let mut args: Vec<String> = vec!["check".into(), "-n".into(), ns.into(), "-o".into(), "json".into()];
        args.extend(self.values_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.audctl(&argv);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("check -o json is not JSON ({e}):\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr))
        });
        (out.status.code().unwrap_or(-1), report)
    }
}

fn statuses(report: &Value) -> BTreeMap<String, String> {
    items(report)
        .iter()
        .map(|i| (i["id"].as_str().unwrap_or_default().to_owned(), i["status"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Items proven by cluster (and manifest) probes only.
const CLUSTER_ITEMS: &[&str] = &[
    "cluster-ha",
    "ingress-controller",
    "cert-manager",
    "storage-class",
    "monitoring-stack",
    "network-policies",
    "pod-security",
    "external-secrets",
    "rbac",
    "tls-everywhere",
    "rate-limiting",
    "alerting",
];

/// What the production render needs from the cluster, created for real.
const PLATFORM: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ingress-nginx}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
  labels: {app.kubernetes.io/name: ingress-nginx, app.kubernetes.io/instance: ingress-nginx}
spec:
  controller: k8s.io/ingress-nginx
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}
spec:
  replicas: 2
  selector:
    matchLabels: {app.kubernetes.io/name: ingress-nginx, app.kubernetes.io/instance: ingress-nginx}
  template:
    metadata:
      labels: {app.kubernetes.io/name: ingress-nginx, app.kubernetes.io/instance: ingress-nginx}
    spec:
      containers: [{name: controller, image: "registry.k8s.io/ingress-nginx/controller:v1.12.0"}]
---
apiVersion: v1
kind: Namespace
metadata: {name: logging}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: fluent-bit, namespace: logging, labels: {app.kubernetes.io/name: fluent-bit}}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: fluent-bit}}
  template:
    metadata: {labels: {app.kubernetes.io/name: fluent-bit}}
    spec:
      containers: [{name: fluent-bit, image: "fluent/fluent-bit:3.2"}]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast-ssd}
provisioner: kwok.x-k8s.io/fake
allowVolumeExpansion: true
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: letsencrypt-prod}
spec:
  selfSigned: {}
---
apiVersion: external-secrets.io/v1
kind: ClusterSecretStore
metadata: {name: vault-backend}
spec:
  provider:
    fake:
      data: []
---
apiVersion: v1
kind: Namespace
metadata: {name: monitoring}
---
apiVersion: monitoring.coreos.com/v1
kind: Prometheus
metadata: {name: k8s, namespace: monitoring}
spec:
  serviceMonitorSelector: {matchLabels: {release: prometheus}}
  serviceMonitorNamespaceSelector: {}
  ruleSelector: {matchLabels: {release: prometheus}}
  ruleNamespaceSelector: {}
---
# Three API server endpoints behind the `kubernetes` Service, as an HA control plane publishes
# (the testbed's single apiserver runs with --endpoint-reconciler-type=none).
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-ha
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: audctl-test}
addressType: IPv4
endpoints:
  - addresses: ["10.0.0.1"]
  - addresses: ["10.0.0.2"]
  - addresses: ["10.0.0.3"]
ports:
  - {name: https, port: 6443, protocol: TCP}
"#;

const INGRESS_CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
  labels: {app.kubernetes.io/name: ingress-nginx, app.kubernetes.io/instance: ingress-nginx}
spec:
  controller: k8s.io/ingress-nginx
"#;

/// Status conditions written as the operator would (status subresource).
fn set_ready(bed: &Bed, kind: &str, name: &str, ready: bool, reason: &str, message: &str) {
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }]}});
    bed.k(&["patch", kind, name, "--subresource=status", "--type=merge", "-p", &patch.to_string()]);
}

/// A self-signed certificate for the Ingress host, valid `days` days, as a kubernetes.io/tls Secret.
fn tls_secret(bed: &Bed, days: u32) {
    let (key, crt) = (bed.path(&format!("tls-{days}.key")), bed.path(&format!("tls-{days}.crt")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-days", &days.to_string(), "-subj", "/CN=audit-api.example.com"])
        .args(["-addext", "subjectAltName=DNS:audit-api.example.com"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let _ = bed.kubectl(&["delete", "secret", "audit-trail-tls", "-n", NS, "--ignore-not-found"], "");
    let (crt, key) = (format!("--cert={}", crt.display()), format!("--key={}", key.display()));
    bed.k(&["create", "secret", "tls", "audit-trail-tls", "-n", NS, &crt, &key]);
}

fn render_release(bed: &Bed) -> String {
    let mut args = vec!["render".to_owned()];
    args.extend(bed.values_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bed.audctl(&argv);
    assert!(out.status.success(), "render: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn setup_healthy(bed: &Bed) {
    // The production values, with what a clean production render still leaves as WARN pinned down:
    // digests for the images (the backup jobs' and the Redis exporter's too), a CPU limit for
    // Kafka, and the classes of the volumes named.
    std::fs::write(
        bed.path("healthy.yaml"),
        format!(
            "image:\n  digest: {DIGEST}\nbackups:\n  image:\n    digest: {DIGEST}\n\
             redis:\n  image: redis:7.4@{DIGEST}\n  metrics:\n    image: oliver006/redis_exporter:v1.67.0@{DIGEST}\n\
             \x20 persistence:\n    storageClass: fast-ssd\n\
             kafka:\n  resources:\n    limits:\n      cpu: 2000m\n  persistence:\n    storageClass: fast-ssd\n"
        ),
    )
    .expect("write values overlay");
    bed.apply(PLATFORM);
    set_ready(
        bed,
        "clusterissuer",
        "letsencrypt-prod",
        true,
        "ACMEAccountRegistered",
        "written by the test, as cert-manager would",
    );
    set_ready(
        bed,
        "clustersecretstore",
        "vault-backend",
        true,
        "Valid",
        "written by the test, as external-secrets would",
    );
    bed.apply(&render_release(bed));
    tls_secret(bed, 3650);
    bed.k(&["rollout", "status", "deployment/ingress-nginx-controller", "-n", "ingress-nginx", "--timeout=180s"]);
    wait_for("fluent-bit Ready on 3 nodes", || {
        let out =
            bed.kubectl(&["get", "ds", "fluent-bit", "-n", "logging", "-o", "jsonpath={.status.numberReady}"], "");
        String::from_utf8_lossy(&out.stdout).trim() == "3"
    });
}

struct Variant {
    name: &'static str,
    item: &'static str,
    expect: &'static str,
    break_it: fn(&Bed),
    restore: fn(&Bed),
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "nodes in one zone",
            item: "cluster-ha",
            expect: "1 zone(s) [zone-a]",
            break_it: |b| {
                b.k(&[
                    "label",
                    "node",
                    "kwok-node-1",
                    "kwok-node-2",
                    "topology.kubernetes.io/zone=zone-a",
                    "--overwrite",
                ])
            },
            restore: |b| {
                b.k(&["label", "node", "kwok-node-1", "topology.kubernetes.io/zone=zone-b", "--overwrite"]);
                b.k(&["label", "node", "kwok-node-2", "topology.kubernetes.io/zone=zone-c", "--overwrite"]);
            },
        },
        Variant {
            name: "issuer not Ready",
            item: "cert-manager",
            expect: "ClusterIssuer letsencrypt-prod is not Ready (Ready=False: ErrRegisterACMEAccount",
            break_it: |b| {
                set_ready(
                    b,
                    "clusterissuer",
                    "letsencrypt-prod",
                    false,
                    "ErrRegisterACMEAccount",
                    "account key rejected",
                )
            },
            restore: |b| {
                set_ready(b, "clusterissuer", "letsencrypt-prod", true, "ACMEAccountRegistered", "written by the test")
            },
        },
        Variant {
            name: "namespace without Pod Security labels",
            item: "pod-security",
            expect: "pod-security.kubernetes.io/enforce=(unset)",
            break_it: |b| {
                b.k(&[
                    "label",
                    "namespace",
                    NS,
                    "pod-security.kubernetes.io/enforce-",
                    "pod-security.kubernetes.io/audit-",
                    "pod-security.kubernetes.io/warn-",
                ])
            },
            restore: |b| b.apply(&render_release(b)),
        },
        Variant {
            name: "NetworkPolicy missing",
            item: "network-policies",
            expect: "no NetworkPolicy in namespace audit-trail selects the server's pods",
            break_it: |b| b.k(&["delete", "networkpolicy", "audit-trail-network-policy", "-n", NS]),
            restore: |b| b.apply(&render_release(b)),
        },
        Variant {
            name: "certificate expiring tomorrow",
            item: "tls-everywhere",
            expect: "certificate in Secret audit-trail-tls expires",
            break_it: |b| tls_secret(b, 1),
            restore: |b| tls_secret(b, 3650),
        },
        Variant {
            name: "service account bound to cluster-admin",
            item: "rbac",
            expect: "ClusterRoleBinding audit-trail-admin grants ClusterRole cluster-admin cluster-wide",
            break_it: |b| {
                b.k(&[
                    "create",
                    "clusterrolebinding",
                    "audit-trail-admin",
                    "--clusterrole=cluster-admin",
                    "--serviceaccount=audit-trail:audit-trail",
                ])
            },
            restore: |b| b.k(&["delete", "clusterrolebinding", "audit-trail-admin"]),
        },
        Variant {
            name: "no IngressClass",
            item: "ingress-controller",
            expect: "IngressClass \"nginx\" (ingress.className) does not exist",
            break_it: |b| b.k(&["delete", "ingressclass", "nginx"]),
            restore: |b| b.apply(INGRESS_CLASS),
        },
    ]
}

/// The preprod and J-7 items (alerting is J-7), without the datastores (their probes have their
/// own tests against the testbed's datastores).
fn preprod_args() -> Vec<&'static str> {
    vec!["--phase", "preprod", "--phase", "j-7", "--skip", "postgres,search,redis,kafka,audit-service", "--no-record"]
}

#[tokio::test(flavor = "multi_thread")]
async fn check_against_a_real_cluster() {
    let kube =
        testbed::kube().await.unwrap_or_else(|e| panic!("testbed cluster: {e:#} (run cargo xtask deps install)"));
    let bed = Bed { kube, dir: tempfile::tempdir().expect("tempdir") };
    setup_healthy(&bed);

    // Healthy: every cluster item passes, and the run is exit 0 when only they are checked. But
    // cluster-ha warns: values-prod's required anti-affinity puts one server pod per node, and
    // 20 pods (autoscaling.maxReplicas) plus 5 surge pods need 25 nodes; this cluster has 3.
    let (code, healthy) = bed.check(NS, &preprod_args());
    for id in CLUSTER_ITEMS {
        let i = item(&healthy, id);
        let want = if *id == "cluster-ha" { "WARN" } else { "PASS" };
        assert_eq!(i["status"], want, "healthy setup: {id} is not {want}: {i:#}");
    }
    let ha = item(&healthy, "cluster-ha");
    let msg = ha["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("needs 25 Ready nodes at full scale (20 pods, autoscaling.maxReplicas, plus 5 surge"),
        "{ha:#}"
    );
    // Two fixed replicas and one surge pod fit 3 nodes: the item passes (the PDB follows: 2 of 2
    // would block drains, which render refuses).
    let fixed = "autoscaling.enabled=false,replicaCount=2,podDisruptionBudget.minAvailable=1";
    let (_, fixed) = bed.check(NS, &["--only", "cluster-ha", "--no-record", "--set", fixed]);
    assert_eq!(item(&fixed, "cluster-ha")["status"], "PASS", "{:#}", item(&fixed, "cluster-ha"));
    assert_eq!(item(&healthy, "log-aggregation")["status"], "PASS", "the fluent-bit DaemonSet proves log shipping");
    assert_eq!(item(&healthy, "disaster-recovery")["status"], "NEEDS-ATTESTATION");
    assert_eq!(item(&healthy, "load-tested")["status"], "NEEDS-EVIDENCE");
    assert!(item(&healthy, "load-tested")["hint"].as_str().unwrap_or_default().contains("audctl load"));
    assert_eq!(code, 1, "unattested blocking items make the run fail");
    let only = CLUSTER_ITEMS.join(",");
    let (code, _) = bed.check(NS, &["--only", &only, "--no-record"]);
    assert_eq!(code, 0, "all cluster items pass: exit 0");
    let baseline = statuses(&healthy);
    eprintln!("healthy baseline: {baseline:?}");

    for v in variants() {
        (v.break_it)(&bed);
        let (code, report) = bed.check(NS, &preprod_args());
        let got = item(&report, v.item);
        assert_eq!(got["status"], "FAIL", "{}: {} should FAIL: {got:#}", v.name, v.item);
        let msg = got["message"].as_str().unwrap_or_default();
        assert!(msg.contains(v.expect), "{}: message of {} lacks {:?}: {msg}", v.name, v.item, v.expect);
        assert!(got["hint"].as_str().is_some_and(|h| !h.is_empty()), "{}: no hint", v.name);
        assert_eq!(code, 1, "{}: a FAIL is exit 1", v.name);
        let mut changed = statuses(&report);
        changed.retain(|id, s| baseline.get(id) != Some(s));
        assert_eq!(changed.keys().collect::<Vec<_>>(), vec![v.item], "{}: other items changed: {changed:?}", v.name);
        (v.restore)(&bed);
        eprintln!("variant {:?}: {} FAIL: {msg}", v.name, v.item);
    }
    let (_, again) = bed.check(NS, &preprod_args());
    assert_eq!(statuses(&again), baseline, "restoring every variant gives the healthy baseline back");

    output_formats(&bed);
    attestations(&bed);
    waivers(&bed);
    evidence(&bed).await;
    forbidden(&bed);
    unreachable_apiserver(&bed);
}

fn output_formats(bed: &Bed) {
    // JUnit: one testcase per item, failures and errors counted apart, parsed by a real XML parser.
    let mut args = vec!["check".to_owned(), "-n".into(), NS.into(), "-o".into(), "junit".into()];
    args.extend(bed.values_args());
    args.extend(["--phase", "preprod", "--no-record"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bed.audctl(&argv);
    assert_eq!(out.status.code(), Some(1));
    let xml = String::from_utf8(out.stdout).expect("utf-8");
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("JUnit is not XML: {e}\n{xml}"));
    let (_, report) = bed.check(NS, &["--phase", "preprod", "--no-record"]);
    let st = statuses(&report);
    let count = |want: &[&str]| st.values().filter(|s| want.contains(&s.as_str())).count();
    let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
    assert_eq!(cases.len(), st.len(), "one testcase per item");
    let failures = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).count();
    let errors = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("error"))).count();
    assert_eq!(failures, count(&["FAIL", "NEEDS-ATTESTATION", "NEEDS-EVIDENCE"]));
    // The datastore items have no probe in this build (or no targets): errors, not failures.
    assert_eq!(errors, count(&["ERROR"]));
    assert!(errors >= 1, "the datastore items are ERROR without targets: {st:?}");
    let suites = doc.root_element();
    assert_eq!(suites.attribute("tests"), Some(st.len().to_string().as_str()));
    assert_eq!(suites.attribute("failures"), Some(failures.to_string().as_str()));
    assert_eq!(suites.attribute("errors"), Some(errors.to_string().as_str()));
    let sections: Vec<&str> =
        doc.descendants().filter(|n| n.has_tag_name("testsuite")).filter_map(|n| n.attribute("name")).collect();
    assert_eq!(sections, ["Infrastructure", "Securite", "Application", "Datastores (reference architecture)"]);

    // YAML carries the same document as JSON.
    let mut args = vec!["check".to_owned(), "-n".into(), NS.into(), "-o".into(), "yaml".into()];
    args.extend(bed.values_args());
    args.extend(["--only", "rbac,hpa", "--no-record"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bed.audctl(&argv);
    let text = String::from_utf8_lossy(&out.stdout);
    let yaml: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("-o yaml is not YAML: {e}\n{text}"));
    assert_eq!(statuses(&yaml).len(), 2);
    assert_eq!(statuses(&yaml)["rbac"], "PASS");

    // Table: grouped by section, with the finding; plain progress lines on stderr (no TTY).
    let mut args = vec!["check".to_owned(), "-n".into(), NS.into()];
    args.extend(bed.values_args());
    args.extend(["--only", "rbac,disaster-recovery", "--no-record"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bed.audctl(&argv);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("== Securite (preprod)") && table.contains("== Application (preprod)"), "{table}");
    assert!(table.contains("NEEDS-ATTESTATION") && table.contains("hint: audctl attest disaster-recovery"), "{table}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.rbac"), "no progress line");
}

fn attestations(bed: &Bed) {
    let ns = "attest-test";
    bed.k(&["create", "namespace", ns]);
    let attest = |args: &[&str]| {
        let mut a = vec!["attest", "-n", ns];
        a.extend_from_slice(args);
        bed.audctl(&a)
    };
    // Unknown item, and an item probes prove: usage errors (exit 2), nothing written.
    let out = attest(&["disaster-recovry", "--by", "alice"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean \"disaster-recovery\""));
    assert_eq!(attest(&["rbac", "--by", "alice"]).status.code(), Some(2));

    let out = attest(&[
        "disaster-recovery",
        "--by",
        "alice",
        "--note",
        "DR drill 2026-11-20",
        "--link",
        "https://wiki/dr",
        "--expires",
        "2099-12-31",
    ]);
    assert!(out.status.success(), "attest: {}", String::from_utf8_lossy(&out.stderr));
    // The date as given, not the next midnight it is stored as.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(", valid through 2099-12-31: DR drill") && !said.contains("2100-01-01"), "{said}");
    // An earlier sign-off that has since lapsed, as it sits in the cluster.
    bed.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: audctl-attest-runbooks\n  namespace: {ns}\n  labels:\n    \
         app.kubernetes.io/managed-by: audctl\n    audctl.io/kind: attestation\n    audctl.io/item: runbooks\ndata:\n  \
         item: runbooks\n  by: bob\n  at: \"2025-01-01T00:00:00Z\"\n  expires: \"2025-06-30T00:00:00Z\"\n"
    ));
    let (code, report) = bed.check(ns, &["--only", "disaster-recovery,runbooks", "--no-record"]);
    let dr = item(&report, "disaster-recovery");
    assert_eq!(dr["status"], "ATTESTED", "{dr:#}");
    assert!(dr["message"].as_str().unwrap_or_default().contains("attested by alice"), "{dr:#}");
    assert_eq!(dr["attestation"]["link"], "https://wiki/dr");
    let rb = item(&report, "runbooks");
    assert_eq!(rb["status"], "NEEDS-ATTESTATION");
    // Stored as 2025-06-30T00:00:00Z: the last day it held is the 29th.
    let said = rb["message"].as_str().unwrap_or_default();
    assert!(said.contains("the attestation by bob (valid through 2025-06-29) has expired"), "{rb:#}");
    assert_eq!(code, 1);

    let out = attest(&["--list", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("attest --list -o json");
    let listed: Vec<&str> =
        list["attestations"].as_array().into_iter().flatten().filter_map(|a| a["item"].as_str()).collect();
    assert_eq!(listed, ["disaster-recovery", "runbooks"]);
    assert_eq!(list["attestations"][0]["validThrough"], "2099-12-31");
    let table = String::from_utf8_lossy(&attest(&["--list"]).stdout).into_owned();
    assert!(
        table.contains("valid through 2099-12-31") && table.contains("valid through 2025-06-29 (expired)"),
        "{table}"
    );

    assert!(attest(&["disaster-recovery", "--revoke"]).status.success());
    assert_eq!(attest(&["disaster-recovery", "--revoke"]).status.code(), Some(1), "revoking twice: nothing to revoke");
    let (_, report) = bed.check(ns, &["--only", "disaster-recovery", "--no-record"]);
    assert_eq!(item(&report, "disaster-recovery")["status"], "NEEDS-ATTESTATION");
}

fn waivers(bed: &Bed) {
    bed.k(&[
        "create",
        "clusterrolebinding",
        "audit-trail-admin",
        "--clusterrole=cluster-admin",
        "--serviceaccount=audit-trail:audit-trail",
    ]);
    let file = bed.path("waivers.yaml");
    let write = |expires: &str| {
        std::fs::write(
            &file,
            format!("waivers:\n  - item: rbac\n    reason: vendor agent needs it until INC-42 is fixed\n    owner: alice\n    expires: {expires}\n"),
        )
        .expect("write waivers");
    };
    let waivers_arg = file.display().to_string();
    write("2099-01-31");
    let (code, report) = bed.check(NS, &["--only", "rbac,hpa", "--waivers", &waivers_arg, "--no-record"]);
    let rbac = item(&report, "rbac");
    assert_eq!(rbac["status"], "WAIVED", "{rbac:#}");
    assert!(rbac["message"].as_str().unwrap_or_default().contains("INC-42"), "{rbac:#}");
    assert_eq!(rbac["waiver"]["owner"], "alice");
    assert_eq!(code, 0, "a waived item does not fail the run");
    write("2020-01-31");
    let (code, report) = bed.check(NS, &["--only", "rbac,hpa", "--waivers", &waivers_arg, "--no-record"]);
    let rbac = item(&report, "rbac");
    assert_eq!(rbac["status"], "FAIL", "an expired waiver counts as absent: {rbac:#}");
    assert!(rbac["message"].as_str().unwrap_or_default().contains("expired"), "{rbac:#}");
    assert_eq!(code, 1);
    // checklists/waivers.yaml is read by default, relative to the working directory.
    std::fs::create_dir_all(bed.path("checklists")).expect("mkdir");
    std::fs::copy(&file, bed.path("checklists/waivers.yaml")).expect("copy");
    write("2099-01-31");
    std::fs::copy(&file, bed.path("checklists/waivers.yaml")).expect("copy");
    let (_, report) = bed.check(NS, &["--only", "rbac", "--no-record"]);
    assert_eq!(item(&report, "rbac")["status"], "WAIVED");
    std::fs::remove_file(bed.path("checklists/waivers.yaml")).expect("rm");
    // A waiver naming an unknown item is a usage error naming the line.
    std::fs::write(&file, "waivers:\n  - item: rbca\n    reason: r\n    owner: o\n    expires: 2099-01-01\n")
        .expect("write");
    let mut args = vec!["check".to_owned(), "-n".into(), NS.into(), "--waivers".into(), waivers_arg.clone()];
    args.extend(bed.values_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = bed.audctl(&argv);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waivers.yaml:2:") && err.contains("\"rbca\""), "{err}");
    bed.k(&["delete", "clusterrolebinding", "audit-trail-admin"]);
}

async fn evidence(bed: &Bed) {
    let ns = "evidence-test";
    bed.k(&["create", "namespace", ns]);
    let settings = audctl::kube::KubeSettings {
        kubeconfig: Some(bed.kube.kubeconfig().to_owned()),
        context: Some(testbed::kube::CONTEXT.to_owned()),
    };
    let client = settings.client().await.expect("client");
    // No record: NEEDS-EVIDENCE naming the command. A record 40 days old: still not enough.
    let (_, report) = bed.check(ns, &["--only", "load-tested", "--no-record"]);
    assert_eq!(item(&report, "load-tested")["status"], "NEEDS-EVIDENCE");
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    let ev =
        audctl::evidence::Evidence::new("load", audctl::evidence::Outcome::Success, "p99 41 ms at 1000 req/s", old);
    let old_name = record_at(&client, ns, ev, old).await;
    let (_, report) = bed.check(ns, &["--only", "load-tested", "--no-record"]);
    let lt = item(&report, "load-tested");
    assert_eq!(lt["status"], "NEEDS-EVIDENCE", "{lt:#}");
    assert!(lt["message"].as_str().unwrap_or_default().contains(&old_name), "{lt:#}");
    // A fresh successful record (ten minutes old): PASS, naming it.
    let recent = chrono::Utc::now() - chrono::Duration::minutes(10);
    let ev =
        audctl::evidence::Evidence::new("load", audctl::evidence::Outcome::Success, "p99 38 ms at 1000 req/s", recent);
    let fresh = record_at(&client, ns, ev, recent).await;
    let (_, report) = bed.check(ns, &["--only", "load-tested", "--no-record"]);
    let lt = item(&report, "load-tested");
    assert_eq!(lt["status"], "PASS", "{lt:#}");
    assert_eq!(lt["evidence"], fresh.as_str());
    assert!(lt["message"].as_str().unwrap_or_default().contains("p99 38 ms"), "{lt:#}");
    // --evidence-max-age tightens the limit below the record's age (5m against ten minutes), or not.
    let (_, report) = bed.check(ns, &["--only", "load-tested", "--no-record", "--evidence-max-age", "5m"]);
    assert_eq!(item(&report, "load-tested")["status"], "NEEDS-EVIDENCE");
    let (_, report) = bed.check(ns, &["--only", "load-tested", "--no-record", "--evidence-max-age", "1h"]);
    assert_eq!(item(&report, "load-tested")["status"], "PASS");
    // The check records its own run, read back through the same module.
    let (code, report) = bed.check(ns, &["--only", "load-tested,rbac"]);
    let name = report["evidenceRecord"].as_str().unwrap_or_else(|| panic!("no evidence record: {report:#}")).to_owned();
    let records = audctl::evidence::list(&client, ns, Some("check")).await.expect("list");
    let stored = records.first().expect("a check record");
    assert_eq!(stored.name, name);
    assert_eq!(code, 0);
    assert!(matches!(stored.evidence.outcome, audctl::evidence::Outcome::Success));
    assert!(stored.evidence.summary.contains("2 items"), "{}", stored.evidence.summary);
}

/// Record `ev` as if it had finished at `at`.
async fn record_at(
    client: &kube::Client,
    ns: &str,
    mut ev: audctl::evidence::Evidence,
    at: chrono::DateTime<chrono::Utc>,
) -> String {
    ev.finished = at;
    audctl::evidence::record(client, ns, &ev).await.expect("record")
}

/// A user the API server knows but RBAC grants nothing: cluster items are ERROR (forbidden), exit 1.
fn forbidden(bed: &Bed) {
    bed.k(&["create", "serviceaccount", "nobody", "-n", "default"]);
    let out = bed.kubectl(&["create", "token", "nobody", "-n", "default"], "");
    assert!(out.status.success(), "create token: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let admin = std::fs::read_to_string(bed.kube.kubeconfig()).expect("kubeconfig");
    let nobody: String = admin
        .lines()
        .map(|l| if l.trim_start().starts_with("token:") { format!("    token: {token}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    let path = bed.path("nobody.kubeconfig");
    std::fs::write(&path, nobody).expect("write kubeconfig");
    let mut args: Vec<String> =
        ["check", "-n", NS, "-o", "json", "--only", "rbac,cluster-ha", "--no-record"].map(String::from).to_vec();
    args.extend(bed.values_args());
    let out = Command::new(env!("CARGO_BIN_EXE_audctl"))
        .arg("--kubeconfig")
        .arg(&path)
        .args(&args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run audctl");
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    for id in ["rbac", "cluster-ha"] {
        let i = item(&report, id);
        assert_eq!((i["status"].as_str(), i["cause"].as_str()), (Some("ERROR"), Some("forbidden")), "{id}: {i:#}");
    }
    assert_eq!(out.status.code(), Some(1), "forbidden is not unreachable: exit 1");
}

fn unreachable_apiserver(bed: &Bed) {
    // Stop the apiserver itself (pids: etcd, kube-apiserver, ...); the kubeconfig stays valid.
    let apiserver = bed.kube.pids()[1];
    let out = Command::new("kill").arg(apiserver.to_string()).output().expect("kill");
    assert!(out.status.success());
    let port: u16 = bed.kube.server().rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    wait_for("the apiserver to stop listening", || std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let (code, report) = bed.check(NS, &["--only", "cluster-ha,disaster-recovery,load-tested,hpa"]);
    assert_eq!(code, 3, "unreachable cluster: exit 3: {report:#}");
    for id in ["cluster-ha", "disaster-recovery", "load-tested"] {
        let i = item(&report, id);
        assert_eq!(i["status"], "ERROR", "{id}: {i:#}");
        assert_eq!(i["cause"], "unreachable", "{id}: {i:#}");
    }
    assert_eq!(item(&report, "hpa")["status"], "PASS", "manifest probes need no cluster");
}
