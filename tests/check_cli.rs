//! `audctl check` and `audctl attest` without a cluster: input validation (exit 2, naming the line),
//! manifest-only runs, and what an unconfigured cluster does to cluster items (ERROR, never PASS).

mod report_support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// audctl with no cluster anywhere: no KUBECONFIG, a HOME without ~/.kube, not in a pod.
fn audctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audctl"))
        .current_dir(dir)
        .args(args)
        .env("HOME", dir)
        .env_remove("KUBECONFIG")
        .env_remove("AUDCTL_TARGETS")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run audctl")
}

fn prod() -> String {
    root().join("values/values-prod.yaml").display().to_string()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn status<'a>(report: &'a Value, id: &str) -> &'a Value {
    &report_support::item(report, id)["status"]
}

#[test]
fn manifest_items_pass_without_a_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = audctl(dir.path(), &["check", "-f", &prod(), "--only", "hpa,health-checks", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(status(&report, "hpa"), "PASS");
    assert_eq!(status(&report, "health-checks"), "PASS");
    assert_eq!(report["exitCode"], 0);

    let out = audctl(dir.path(), &["check", "-f", &prod(), "--only", "hpa,resource-limits", "-o", "junit"]);
    let xml = String::from_utf8(out.stdout).expect("utf-8");
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(doc.descendants().filter(|n| n.has_tag_name("testcase")).count(), 2);
    // resource-limits is a WARN in production (Kafka has no CPU limit): a pass with its note.
    let out_text = doc.descendants().find(|n| n.has_tag_name("system-out")).and_then(|n| n.text()).unwrap_or_default();
    assert!(out_text.starts_with("WARN:") && out_text.contains("KafkaNodePool"), "{out_text}");
}

#[test]
fn cluster_items_without_a_cluster_are_errors_not_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        audctl(dir.path(), &["check", "-f", &prod(), "--only", "rbac,disaster-recovery,load-tested", "-o", "json"]);
    let report = json(&out);
    for id in ["rbac", "disaster-recovery", "load-tested"] {
        assert_eq!(status(&report, id), "ERROR", "{id}");
    }
    assert_eq!(out.status.code(), Some(1), "a gate does not pass what it could not see");
    // The datastore items until their probes exist (or their targets are configured).
    let out = audctl(dir.path(), &["check", "-f", &prod(), "--only", "postgres", "-o", "json"]);
    let report = json(&out);
    assert_eq!(status(&report, "postgres"), "ERROR");
}

#[test]
fn bad_input_is_exit_2_and_names_the_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checklist = dir.path().join("bad.yaml");
    std::fs::write(
        &checklist,
        "version: 1\nsections:\n  - id: s\n    title: S\n    phase: preprod\n    items:\n      - {id: a, text: A, proof: probe, probes: [cluster.rbca]}\n",
    )
    .expect("write");
    let out = audctl(dir.path(), &["check", "--checklist", &checklist.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:7:") && err.contains("did you mean \"cluster.rbac\""), "{err}");

    // What would only fail at run time is refused at load too: an evidence verb nothing writes,
    // exclusions that leave no probe, a zero maxAge, an id that cannot be a label value.
    std::fs::write(
        &checklist,
        "version: 1\nsections:\n  - id: s\n    title: S\n    phase: preprod\n    items:\n      - {id: a, text: A, proof: evidence, evidence: {verb: deplyo, maxAge: 0s, command: x}}\n      - {id: b, text: B, proof: probe, probes: [\"cluster.*\", \"!cluster.ha\"]}\n      - {id: A b, text: C, proof: probe, probes: [\"!cluster.ha\"]}\n",
    )
    .expect("write");
    let out = audctl(dir.path(), &["check", "--checklist", &checklist.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "bad.yaml:7:",
        "evidence.verb \"deplyo\" writes no evidence record (did you mean \"deploy\"?",
        "evidence.maxAge must be more than 0",
        "bad.yaml:9:",
        "item \"A b\": an id is lowercase",
        "only exclusions",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    // cluster.* is more than cluster.ha: b is valid, a and "A b" carry the 4 errors.
    assert!(err.contains("(4 error(s))") && !err.contains("bad.yaml:8:"), "{err}");

    let out = audctl(dir.path(), &["check", "--only", "rbca"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean \"rbac\""));

    let out = audctl(dir.path(), &["check", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let out = audctl(dir.path(), &["check", "--timeout", "0s", "--only", "hpa"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout 0s: must be more than 0"));
    let out = audctl(dir.path(), &["check", "--evidence-max-age", "0s", "--only", "hpa"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--evidence-max-age 0s: must be more than 0"));

    let out = audctl(dir.path(), &["attest", "--list"]);
    assert_eq!(out.status.code(), Some(2), "attestations live in the cluster");
    let out = audctl(dir.path(), &["attest", "no-such-item", "--by", "alice"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn probes_are_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = audctl(dir.path(), &["check", "--list-probes", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let list = json(&out);
    let ids: Vec<&str> = list["probes"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str()).collect();
    for id in ["cluster.ha", "cluster.tls", "manifests.resources", "manifests.network-policy"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
}

/// The release namespace is the values' (as for deploy -f), unless -n names one explicitly.
#[test]
fn namespace_comes_from_the_values_unless_n_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = root().join("values/values-staging.yaml").display().to_string();
    let base = ["check", "-f", &prod(), "-f", &staging, "--only", "hpa", "-o", "json"];
    let out = audctl(dir.path(), &base);
    assert_eq!(json(&out)["namespace"], "audit-trail-staging", "{}", String::from_utf8_lossy(&out.stderr));
    let out = audctl(dir.path(), &[&base[..], &["-n", "elsewhere"]].concat());
    assert_eq!(json(&out)["namespace"], "elsewhere");
    // -n given with its default value is still explicit.
    let out = audctl(dir.path(), &[&["-n", "audit-trail"][..], &base[..]].concat());
    assert_eq!(json(&out)["namespace"], "audit-trail");
    let out = audctl(dir.path(), &["check", "--only", "hpa", "-o", "json"]);
    assert_eq!(json(&out)["namespace"], "audit-trail", "no -f, no -n: the default");
}

/// A run that checks nothing is a usage error naming the filter that left nothing, not a green gate.
#[test]
fn selecting_no_item_is_exit_2_naming_the_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let out = audctl(dir.path(), &["check", "--only", "health-checks", "--phase", "j-7"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no report for an empty selection");
    assert!(
        stderr(&out).contains(
            "no checklist item selected: --phase j-7 leaves 5 items, then --only health-checks \
             (health-checks is in phase preprod) leaves none"
        ),
        "{}",
        stderr(&out)
    );
    let out = audctl(dir.path(), &["check", "--only", "rbac", "--skip", "rbac"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--only rbac leaves 1 item, then --skip rbac leaves none"), "{}", stderr(&out));
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "version: 1\nsections: []\n").expect("write");
    let out = audctl(dir.path(), &["check", "--checklist", &empty.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("the checklist has no items"), "{}", stderr(&out));
}

/// stdout closed by the reader before the report is written (`check -o json | head -c 10`): no
/// "Broken pipe" error, and the run's own exit code (these items pass: 0).
#[test]
fn closed_stdout_is_not_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for format in ["json", "table", "junit"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_audctl"))
            .current_dir(dir.path())
            .args(["check", "-f", &prod(), "--only", "health-checks", "-o", format])
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .env_remove("AUDCTL_TARGETS")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run audctl");
        // The only read end: closed before audctl gets to write, so its write fails with EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("error") && !err.contains("panicked"), "-o {format}: {err}");
        assert_eq!(out.status.code(), Some(0), "-o {format}: {err}");
    }
}

/// A bad -o for attest --list is a usage error before the cluster is contacted: with a cluster that
/// does not answer it is still exit 2, not 3.
#[test]
fn attest_list_junit_is_refused_before_the_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://127.0.0.1:{port}\"}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\n\
             current-context: x\n"
        ),
    )
    .expect("write");
    let kc = kubeconfig.display().to_string();
    let out = audctl(dir.path(), &["attest", "--list", "-o", "junit", "--kubeconfig", &kc]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("-o junit is only available for check, smoke and load"), "{err}");
    // The same cluster with a format attest --list has: it is asked, and does not answer.
    let out = audctl(dir.path(), &["attest", "--list", "-o", "json", "--kubeconfig", &kc]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    // With the reason, not only kube's "client error (Connect)".
    assert!(err.contains(&format!("127.0.0.1:{port}")) && err.contains("Connection refused"), "{err}");
    // check says so in a sentence, and the item why.
    let out = audctl(
        dir.path(),
        &["check", "-f", &prod(), "--only", "cluster-ha", "--kubeconfig", &kc, "--no-record", "-o", "json"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("error: a target of the check is unreachable: items not evaluated: cluster-ha"), "{err}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("listing nodes: the API server is unreachable: ") && report.contains("Connection refused"),
        "{report}"
    );
    // Which server: the kubeconfig's, as written there.
    assert!(report.contains(&format!("(API server https://127.0.0.1:{port})")), "{report}");
}

/// Messages read as sentences: the kubeconfig path quoted once, "1 item", no double space.
#[test]
fn messages_are_worded_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = audctl(dir.path(), &["check", "--only", "rbac", "--kubeconfig", "/nonexistent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("kubeconfig /nonexistent: cannot read it: No such file or directory"), "{err}");
    assert!(!err.contains("\"/nonexistent\""), "{err}");
    let out = audctl(dir.path(), &["check", "-f", &prod(), "--only", "health-checks"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("\n1 item: 1 PASS in "), "{table}");
}
