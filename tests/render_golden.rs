//! Golden tests: the manifests of the shipped values files, byte for byte.
//! `UPDATE_GOLDEN=1 cargo test -p audctl --test render_golden` rewrites tests/golden/*.yaml; review
//! the diff before committing it. Refused when `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Command;

const CASES: &[(&str, &[&str])] = &[
    ("prod", &["values/values-prod.yaml"]),
    ("staging", &["values/values-prod.yaml", "values/values-staging.yaml"]),
    ("local", &["values/values-local.yaml"]),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Render through the binary, as operators and the README do.
fn render(files: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audctl"));
    cmd.current_dir(root()).arg("render");
    for f in files {
        cmd.args(["-f", f]);
    }
    let out = cmd.output().expect("run audctl");
    assert!(out.status.success(), "audctl render {files:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn golden_manifests() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    // In CI a rewrite would make this test pass whatever the render produced.
    assert!(
        !(update && std::env::var_os("CI").is_some()),
        "UPDATE_GOLDEN is set in CI (CI is set): refusing to rewrite the golden files; unset it"
    );
    let mut failures = Vec::new();
    for (case, files) in CASES {
        let actual = render(files);
        let path: PathBuf = root().join("tests/golden").join(format!("{case}.yaml"));
        if update {
            std::fs::write(&path, &actual).expect("write golden file");
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (create it with UPDATE_GOLDEN=1)", path.display()));
        if expected != actual {
            let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).map_or_else(
                || format!("lengths differ ({} vs {} lines)", expected.lines().count(), actual.lines().count()),
                |i| {
                    format!(
                        "first difference at line {}:\n  golden: {}\n  actual: {}",
                        i + 1,
                        expected.lines().nth(i).unwrap_or_default(),
                        actual.lines().nth(i).unwrap_or_default()
                    )
                },
            );
            failures.push(format!("{case} ({}): {line}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "rendered manifests differ from the golden files (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}

#[test]
fn byte_identical_across_runs() {
    for (_, files) in CASES {
        assert_eq!(render(files), render(files), "{files:?} renders differently from one run to the next");
    }
}

#[test]
fn apply_order_namespace_first_custom_resources_last() {
    let text = render(&["values/values-prod.yaml"]);
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    assert_eq!(kinds.first(), Some(&"Namespace"), "{kinds:?}");
    let builtin =
        ["ConfigMap", "Service", "Deployment", "StatefulSet", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy"];
    let last_builtin = kinds.iter().rposition(|k| builtin.contains(k)).expect("built-in kinds");
    let first_custom = kinds
        .iter()
        .position(|k| {
            ["ExternalSecret", "Cluster", "Elasticsearch", "Kafka", "ServiceMonitor", "PrometheusRule"].contains(k)
        })
        .expect("custom resources");
    assert!(last_builtin < first_custom, "custom resources must come after built-in kinds: {kinds:?}");
    // The HPA owns the replica count in prod: the Deployment must not carry one.
    let deployment = text.split("\n---\n").find(|d| d.contains("kind: Deployment\n")).expect("a Deployment");
    assert!(!deployment.contains("\n  replicas:"), "replicas set although autoscaling is on");
}
