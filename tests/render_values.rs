//! Bad values through the binary: exit code 2, and each message names file:line:column, the key
//! path and what is expected. One file per kind of mistake, then all of them at once.

use std::path::Path;
use std::process::{Command, Output};

fn audctl(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_audctl")).args(args).current_dir(dir).output().expect("run audctl")
}

/// Render `values` (written to bad.yaml) and return stderr; asserts exit code 2 and empty stdout.
fn refused(values: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bad.yaml"), values).expect("write values");
    let mut args = vec!["render", "-f", "bad.yaml"];
    args.extend_from_slice(extra);
    let out = audctl(&args, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "expected exit code 2, stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "nothing may be rendered on error");
    stderr
}

fn assert_has(stderr: &str, expected: &str) {
    assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
}

#[test]
fn checkpoint_dir_on_another_mount_refused() {
    let e = refused("integrity:\n  checkpointDir: /var/lib/audit-trail\n  verifyIntervalSeconds: -1\n", &[]);
    assert_has(&e, "integrity.checkpointDir");
    assert_has(&e, "already a mount of the server container");
    assert_has(&e, "integrity.verifyIntervalSeconds");
}

#[test]
fn unknown_key_with_did_you_mean() {
    let e = refused("autoscaling:\n  enabled: true\n  maxReplica: 5\n", &[]);
    assert_has(&e, "bad.yaml:3:3: autoscaling.maxReplica: unknown key `maxReplica`; did you mean `maxReplicas`?");
}

#[test]
fn unknown_key_inside_a_kubernetes_type() {
    let e = refused("livenessProbe:\n  httpGet:\n    paht: /health\n    port: 8080\n", &[]);
    assert_has(&e, "bad.yaml:3:5: livenessProbe.httpGet.paht: unknown key `paht`; did you mean `path`?");
}

#[test]
fn wrong_type() {
    let e = refused("replicaCount: three\n", &[]);
    assert_has(&e, "bad.yaml:1:15: replicaCount: wrong type: found string \"three\", expected u32");
}

#[test]
fn log_level_the_server_would_refuse_or_misread() {
    // `infoo` alone is a valid filter for tracing (a target named infoo) and would log nothing else.
    for bad in ["infoo", "warn,audit_server=loud", ""] {
        let e = refused(&format!("server:\n  logLevel: {bad:?}\n"), &[]);
        assert_has(&e, &format!("bad.yaml:2:13: server.logLevel: {bad:?}: expected a level (trace, debug"));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ok.yaml"), "server:\n  logLevel: WARN, audit_server=debug,h2[conn]=off\n")
        .expect("write values");
    let out = audctl(&["render", "-f", "ok.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn invalid_quantity() {
    let e = refused("resources:\n  limits:\n    memory: 2Gb\n", &[]);
    assert_has(&e, "bad.yaml:3:13: resources.limits.memory: \"2Gb\" is not a Kubernetes quantity");
    assert_has(&e, "e.g. 500m, 2Gi");
}

#[test]
fn requests_above_limits() {
    let e = refused("resources:\n  requests:\n    cpu: 2\n  limits:\n    cpu: 1500m\n", &[]);
    assert_has(
        &e,
        "bad.yaml:3:10: resources.requests.cpu: request 2 is above the limit 1500m; expected requests <= limits",
    );
}

#[test]
fn min_replicas_above_max() {
    let e = refused("autoscaling:\n  enabled: true\n  minReplicas: 5\n  maxReplicas: 3\n", &[]);
    assert_has(&e, "bad.yaml:3:16: autoscaling.minReplicas: 5 is above autoscaling.maxReplicas (3)");
}

#[test]
fn ingress_tls_without_secret_name() {
    let values = "ingress:\n  enabled: true\n  hosts:\n    - host: a.example.com\n      paths: [{path: /, pathType: Prefix}]\n  tls:\n    - hosts: [a.example.com]\n";
    let e = refused(values, &[]);
    assert_has(
        &e,
        "bad.yaml:7:7: ingress.tls[0]: no secretName: expected the Secret cert-manager writes the certificate to",
    );
}

#[test]
fn jvm_options_for_the_rust_server_refused() {
    let values = "resources:\n  limits:\n    memory: 4Gi\nenv:\n  - name: JAVA_OPTS\n    value: -Xms2g -Xmx6g\n";
    let e = refused(values, &[]);
    assert_has(
        &e,
        "bad.yaml:5:11: env[0].name: JAVA_OPTS: JVM options have no effect, the audit server is a Rust binary",
    );
}

#[test]
fn inline_password_refused() {
    let e = refused("postgresql:\n  auth:\n    postgresPassword: hunter2\n", &[]);
    assert_has(&e, "bad.yaml:3:23: postgresql.auth.postgresPassword: a password in the values");
    assert!(!e.contains("hunter2"), "{e}");
    // Given by --set, the secret is not echoed either (errors land in CI logs).
    let e = refused("{}\n", &["--set", "image.tag=1.2,postgresql.auth.postgresPassword=hunter2"]);
    assert_has(&e, "--set image.tag=1.2,postgresql.auth.postgresPassword=***: postgresql.auth.postgresPassword");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn bad_set_points_at_the_argument() {
    let e = refused("{}\n", &["--set", "autoscaling.maxReplicas=many"]);
    assert_has(&e, "--set autoscaling.maxReplicas=many: autoscaling.maxReplicas: wrong type: found string \"many\"");
}

#[test]
fn huge_set_index_is_refused_not_a_panic() {
    let e = refused("{}\n", &["--set", "env[18446744073709551615]=x"]);
    assert_has(&e, "list index 18446744073709551615 is too large (at most 9999)");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn every_error_at_once() {
    let values = "replicaCout: 3\nresources:\n  limits:\n    memory: 2Gb\nautoscaling:\n  enabled: true\n  minReplicas: 9\n  maxReplicas: 3\n";
    let e = refused(values, &[]);
    assert_has(&e, "invalid values (3 errors)");
    assert_has(&e, "bad.yaml:1:1: replicaCout");
    assert_has(&e, "bad.yaml:4:13: resources.limits.memory");
    assert_has(&e, "bad.yaml:7:16: autoscaling.minReplicas");
}

#[test]
fn later_files_and_set_win() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), "replicaCount: 2\n").expect("write");
    std::fs::write(dir.path().join("b.yaml"), "replicaCount: 3\n").expect("write");
    let out = audctl(&["render", "-f", "a.yaml", "-f", "b.yaml", "--set", "replicaCount=4"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\n  replicas: 4\n"));
}

#[test]
fn template_bug_names_template_and_object_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).expect("mkdir");
    std::fs::write(
        templates.join("svc.yaml.j2"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ release.name }}\nspec:\n  portz: []\n",
    )
    .expect("write template");
    let out_dir = dir.path().join("out");
    let out = audctl(&["render", "--templates", "templates", "--output-dir", "out"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_has(&stderr, "template svc.yaml.j2, object Service/audit-trail: spec.portz: unknown field");
    assert!(!out_dir.exists(), "nothing may be written when rendering fails");

    std::fs::write(templates.join("svc.yaml.j2"), "kind: Service\nmetadata:\n  name: {{ values.nmae }}\n")
        .expect("write");
    let out = audctl(&["render", "--templates", "templates"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_has(&stderr, "template svc.yaml.j2: svc.yaml.j2:3: undefined value");
}

#[test]
fn output_dir_one_file_per_object_in_apply_order() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    let out = audctl(&["render", "-f", "values/values-prod.yaml", "--output-dir"], root);
    assert_eq!(out.status.code(), Some(2), "--output-dir needs a value");
    let target = dir.path().join("manifests");
    let target_arg = target.to_str().expect("UTF-8 temp path");
    let out = audctl(&["render", "-f", "values/values-prod.yaml", "--output-dir", target_arg], root);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .expect("output dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.first().map(String::as_str), Some("00-namespace-audit-trail.yaml"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-prometheusrule-audit-trail-alerts.yaml")), "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "temporary files left: {names:?}");
    // Rendering local into the same directory removes the objects local does not have.
    let out = audctl(&["render", "-f", "values/values-local.yaml", "--output-dir", target_arg], root);
    assert!(out.status.success());
    let after = std::fs::read_dir(&target).expect("output dir").count();
    assert!(after < names.len(), "stale files kept: {after} >= {}", names.len());
}

#[test]
fn schema_is_json_schema_of_the_values() {
    let out = audctl(&["render", "--schema"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(schema["title"], "Values");
    assert!(schema["properties"]["autoscaling"].is_object(), "{schema}");
    assert_eq!(schema["additionalProperties"], false);
}

/// Render through the binary from the crate root; returns (exit code, stdout, stderr).
fn render_in_root(args: &[&str]) -> (Option<i32>, String, String) {
    let out = audctl(args, Path::new(env!("CARGO_MANIFEST_DIR")));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn empty_or_comment_only_values_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, baseline, stderr) = render_in_root(&["render", "-f", "values/values-prod.yaml"]);
    assert_eq!(code, Some(0), "{stderr}");
    for (name, text) in [("empty.yaml", ""), ("comments.yaml", "# nothing to override yet\n\n# still nothing\n")] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write values");
        let path = path.to_str().expect("UTF-8 temp path");
        let (code, stdout, stderr) = render_in_root(&["render", "-f", "values/values-prod.yaml", "-f", path]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        assert_eq!(stdout, baseline, "{name} changed the rendered manifests");
    }
}

#[test]
fn values_file_not_a_mapping_names_file_and_line() {
    let e = refused("# a list where a mapping belongs\n- replicaCount: 3\n", &[]);
    assert_has(&e, "bad.yaml:2:1: found a list at the top level: expected a mapping of values (key: value)");
    let e = refused("42\n", &[]);
    assert_has(&e, "bad.yaml:1:1: found a number at the top level");
}

/// Name -> content of every entry of `dir` (directories as "<dir>").
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| {
            let e = e.expect("entry");
            let content =
                if e.path().is_dir() { "<dir>".to_owned() } else { std::fs::read_to_string(e.path()).expect("read") };
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect()
}

const PROD: &str = "values/values-prod.yaml";

#[test]
fn output_dir_files_carry_the_marker_and_stay_yaml() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().to_str().expect("UTF-8 temp path");
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--output-dir", target]);
    assert_eq!(code, Some(0), "{stderr}");
    for (name, text) in snapshot(dir.path()) {
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(first, audctl::render::OUTPUT_DIR_MARKER, "{name}");
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(doc.get("kind").is_some(), "{name}: {doc:?}");
    }
}

#[test]
fn output_dir_keeps_files_audctl_did_not_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().to_str().expect("UTF-8 temp path");
    // Named like audctl's files, but the user's: one with Helm's own `# Source:` header.
    let user = [("07-notes.yaml", "# my notes\na: 1\n"), ("98-helm.yaml", "# Source: chart/templates/x.yaml\nb: 2\n")];
    for (name, text) in user {
        std::fs::write(dir.path().join(name), text).expect("write user file");
    }
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--output-dir", target]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = render_in_root(&["render", "-f", "values/values-local.yaml", "--output-dir", target]);
    assert_eq!(code, Some(0), "{stderr}");
    let after = snapshot(dir.path());
    for (name, text) in user {
        assert_eq!(after.get(name).map(String::as_str), Some(text), "user file {name} removed or changed");
    }
    // What prod wrote and local does not produce is gone (the prod PrometheusRule, for one).
    assert!(!after.keys().any(|n| n.contains("prometheusrule")), "{:?}", after.keys());
}

#[test]
fn output_dir_refuses_before_replacing_anything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().to_str().expect("UTF-8 temp path");
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--output-dir", target]);
    assert_eq!(code, Some(0), "{stderr}");
    let before = snapshot(dir.path());
    // The last file in apply order becomes a directory: every earlier rename would already have run.
    let last = before.keys().next_back().expect("files").clone();
    std::fs::remove_file(dir.path().join(&last)).expect("remove");
    std::fs::create_dir(dir.path().join(&last)).expect("mkdir");
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--set", "image.tag=9.9.9", "--output-dir", target]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_has(&stderr, &format!("--output-dir: {} is in the way", dir.path().join(&last).display()));
    let mut expected = before.clone();
    expected.insert(last.clone(), "<dir>".into());
    assert_eq!(snapshot(dir.path()), expected, "files replaced or temporary files left");

    // A user's file at one of the names: refused too, and left as it was.
    std::fs::remove_dir(dir.path().join(&last)).expect("rmdir");
    std::fs::write(dir.path().join(&last), "mine: true\n").expect("write");
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--set", "image.tag=9.9.9", "--output-dir", target]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_has(&stderr, "was not written by audctl render");
    expected.insert(last, "mine: true\n".into());
    assert_eq!(snapshot(dir.path()), expected, "files replaced or temporary files left");
}

#[test]
fn output_dir_that_is_a_file_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("manifests");
    std::fs::write(&file, "x").expect("write");
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--output-dir", file.to_str().expect("UTF-8")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_has(&stderr, &format!("--output-dir: cannot create {}", file.display()));
}

/// The rendered documents of `audctl render -f values-prod.yaml ARGS...`, parsed; asserts exit 0.
fn render_prod_docs(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let mut args = vec!["render", "-f", PROD];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = render_in_root(&args);
    assert_eq!(code, Some(0), "{args:?}: {stderr}");
    stdout
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<serde_yaml::Value>(d).expect("rendered YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

fn object<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name} rendered"))
}

fn server_image(docs: &[serde_yaml::Value]) -> String {
    let containers = &object(docs, "Deployment", "audit-trail")["spec"]["template"]["spec"]["containers"];
    containers[0]["image"].as_str().expect("an image").to_owned()
}

#[test]
fn set_types_decimals_booleans_and_null() {
    let docs = render_prod_docs(&["--set", "prometheusRule.errorRateThreshold=0.05"]);
    let rule = serde_yaml::to_string(object(&docs, "PrometheusRule", "audit-trail-alerts")).expect("YAML");
    assert!(rule.contains("> 0.05"), "threshold 0.05 not in the rules:\n{rule}");

    let docs = render_prod_docs(&["--set", "ingress.enabled=false", "--set", "image.digest=null"]);
    assert!(!docs.iter().any(|d| d["kind"].as_str() == Some("Ingress")), "ingress.enabled=false still renders one");
}

#[test]
fn set_number_where_a_string_is_expected_keeps_its_text() {
    for (tag, expected) in [("1.2", "1.2"), ("0.10", "0.10"), ("7", "7"), ("true", "true")] {
        let docs = render_prod_docs(&["--set", &format!("image.tag={tag}")]);
        assert_eq!(server_image(&docs), format!("registry.example.com/audit-trail/audit-server:{expected}"));
    }
    let docs = render_prod_docs(&["--set", "podAnnotations.weight=0.50"]);
    let annotations = &object(&docs, "Deployment", "audit-trail")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["weight"].as_str(), Some("0.50"), "{annotations:?}");
}

#[test]
fn set_decimal_where_an_integer_is_expected_is_refused() {
    let e = refused("{}\n", &["--set", "replicaCount=1.5"]);
    assert_has(&e, "--set replicaCount=1.5: replicaCount: wrong type: found floating point `1.5`, expected u32");
}

#[test]
fn set_escaped_dots_address_one_key() {
    let docs = render_prod_docs(&["--set", r"ingress.annotations.nginx\.ingress\.kubernetes\.io/limit-rpm=500"]);
    let annotations =
        object(&docs, "Ingress", "audit-trail")["metadata"]["annotations"].as_mapping().expect("annotations");
    let limit = annotations.get("nginx.ingress.kubernetes.io/limit-rpm").and_then(serde_yaml::Value::as_str);
    assert_eq!(limit, Some("500"), "{annotations:?}");
    assert!(annotations.get("nginx").is_none(), "the path was split on the escaped dots: {annotations:?}");
    // Prod's other annotations are untouched.
    let redirect = annotations.get("nginx.ingress.kubernetes.io/ssl-redirect").and_then(serde_yaml::Value::as_str);
    assert_eq!(redirect, Some("true"));
}

#[test]
fn env_var_without_a_name_is_refused() {
    let e = refused("{}\n", &["--set", "env[0].value=x"]);
    assert_has(&e, "--set env[0].value=x: env[0].name: empty or missing: expected the environment variable's name");
    let e = refused("env:\n  - name: A\n    value: a\n  - value: b\n", &[]);
    assert_has(&e, "bad.yaml:4:5: env[1].name: empty or missing");
}

#[test]
fn set_index_beyond_the_end_of_a_list_is_refused() {
    let e = refused("{}\n", &["--set", "env[3].value=x"]);
    assert_has(&e, "--set env[3].value=x: env[3].value: list index 3 is beyond the end of env (0 items)");
    // The index just past the end appends.
    let docs = render_prod_docs(&["--set", "env[0].name=A", "--set", "env[0].value=a", "--set", "env[1].name=B"]);
    let env = &object(&docs, "Deployment", "audit-trail")["spec"]["template"]["spec"]["containers"][0]["env"];
    let names: Vec<&str> = env.as_sequence().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.ends_with(&["A", "B"]), "{names:?}");
}

#[test]
fn every_error_names_its_real_source() {
    let e = refused("{}\n", &["--set", "foo"]);
    assert_has(&e, "  --set foo: expected PATH=VALUE, e.g. a.b[0].c=1");
    let e = refused("replicaCount: 2\n---\nreplicaCount: 3\n", &[]);
    assert_has(&e, "bad.yaml:2:1: a second YAML document (`---`): expected one document per values file");
    // A required key removed by null: the layer that removed it.
    let e = refused("{}\n", &["--set", "image=null"]);
    assert_has(&e, "  --set image=null: missing key `image`: removed by a null here, but required");
    let e = refused("replicaCount: 2\nimage:\n  repository: null\n", &[]);
    assert_has(&e, "bad.yaml:3:3: image: missing key `repository`: removed by a null here");
    assert!(!e.contains("(defaults)"), "{e}");
}

#[test]
fn alert_thresholds_out_of_range_are_refused() {
    let e = refused(
        "prometheusRule:\n  errorRateThreshold: 5\n  latencyP99Seconds: -1\n  poolUsageThreshold: 0\n",
        &["--set", "prometheusRule.verifierStaleSeconds=0"],
    );
    assert_has(&e, "invalid values (4 errors)");
    assert_has(&e, "bad.yaml:2:23: prometheusRule.errorRateThreshold: 5: expected a ratio above 0 and at most 1");
    assert_has(&e, "bad.yaml:3:22: prometheusRule.latencyP99Seconds: -1: expected a number of seconds above 0");
    assert_has(&e, "bad.yaml:4:23: prometheusRule.poolUsageThreshold: 0: expected a ratio above 0 and at most 1");
    assert_has(&e, "--set prometheusRule.verifierStaleSeconds=0: prometheusRule.verifierStaleSeconds: 0: expected");
    // The bounds themselves are accepted.
    render_prod_docs(&[
        "--set",
        "prometheusRule.errorRateThreshold=1",
        "--set",
        "prometheusRule.latencyP99Seconds=0.001",
    ]);
}

#[test]
fn output_json_is_a_kubernetes_list_of_the_same_objects() {
    let yaml = render_prod_docs(&[]);
    let (code, stdout, stderr) = render_in_root(&["render", "-o", "json", "-f", PROD]);
    assert_eq!(code, Some(0), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("-o json prints JSON");
    assert_eq!((list["apiVersion"].as_str(), list["kind"].as_str()), (Some("v1"), Some("List")));
    let items = list["items"].as_array().expect("items");
    let ids = |kind: &serde_json::Value, name: &serde_json::Value| format!("{kind}/{name}");
    let json_ids: Vec<String> = items.iter().map(|o| ids(&o["kind"], &o["metadata"]["name"])).collect();
    let yaml_ids: Vec<String> = yaml
        .iter()
        .map(|d| {
            let d: serde_json::Value = serde_json::to_value(d).expect("YAML as JSON");
            ids(&d["kind"], &d["metadata"]["name"])
        })
        .collect();
    assert_eq!(json_ids, yaml_ids, "same objects in the same (apply) order");
    let ingress = items.iter().find(|o| o["kind"] == "Ingress").expect("an Ingress");
    assert_eq!(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/limit-rpm"], "1000");
}

#[test]
fn output_junit_and_json_with_output_dir_are_refused() {
    let (code, stdout, stderr) = render_in_root(&["render", "-o", "junit", "-f", PROD]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_has(&stderr, "-o junit is only available for check, smoke and load; use table, json or yaml");
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("out");
    let (code, _, stderr) =
        render_in_root(&["render", "-o", "json", "-f", PROD, "--output-dir", target.to_str().expect("UTF-8")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_has(&stderr, "the files of --output-dir are YAML");
    assert!(!target.exists(), "nothing may be written");
}

#[test]
fn architectures_the_templates_do_not_render_are_refused() {
    let e = refused("redis:\n  architecture: bogus\n", &["--set", "postgresql.architecture=replica"]);
    assert_has(&e, "bad.yaml:2:17: redis.architecture: \"bogus\": expected replication, the only one rendered");
    assert_has(
        &e,
        "--set postgresql.architecture=replica: postgresql.architecture: \"replica\": expected standalone or replication",
    );
    let e = refused("redis:\n  architecture: standalone\n", &[]);
    assert_has(&e, "Helm's standalone is not supported");
}

#[test]
fn staging_on_prod_prefers_spreading_and_limits_to_200_per_minute() {
    let (code, stdout, stderr) =
        render_in_root(&["render", "-f", PROD, "-f", "values/values-staging.yaml", "-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let find =
        |kind: &str| list["items"].as_array().expect("items").iter().find(|o| o["kind"] == kind).cloned().expect(kind);
    let affinity = &find("Deployment")["spec"]["template"]["spec"]["affinity"];
    let spread = serde_json::json!({
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "audit-trail"}},
                    "topologyKey": "kubernetes.io/hostname"
                }
            }]
        },
        // Prod's, untouched by staging: a preference, it never refuses to schedule.
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "preference": {"matchExpressions": [{"key": "node-type", "operator": "In", "values": ["compute-optimized"]}]}
            }]
        }
    });
    assert_eq!(affinity, &spread);
    let annotations = &find("Ingress")["metadata"]["annotations"];
    let expected = serde_json::json!({
        "cert-manager.io/cluster-issuer": "letsencrypt-staging",
        "nginx.ingress.kubernetes.io/limit-rpm": "200",
        "nginx.ingress.kubernetes.io/proxy-body-size": "10m",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "60",
        "nginx.ingress.kubernetes.io/proxy-send-timeout": "60",
        "nginx.ingress.kubernetes.io/rate-limit": "200",
        "nginx.ingress.kubernetes.io/rate-limit-window": "1m",
        "nginx.ingress.kubernetes.io/ssl-redirect": "true"
    });
    assert_eq!(annotations, &expected);
    // Prod itself keeps its required anti-affinity and its 1000/min.
    let prod = render_prod_docs(&[]);
    let prod_affinity = &object(&prod, "Deployment", "audit-trail")["spec"]["template"]["spec"]["affinity"];
    assert!(prod_affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_sequence());
    let prod_ingress = &object(&prod, "Ingress", "audit-trail")["metadata"]["annotations"];
    assert_eq!(prod_ingress["nginx.ingress.kubernetes.io/limit-rpm"].as_str(), Some("1000"));
}

#[test]
fn a_type_error_is_not_judged_again_with_the_default() {
    // values-prod: PDB minAvailable 2. The wrong minReplicas stands in as its default (2) for the
    // other checks, which reported "2 leaves no pod evictable with 2 replicas".
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--set", "autoscaling.minReplicas=abc"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_has(&stderr, "autoscaling.minReplicas");
    assert!(!stderr.contains("podDisruptionBudget"), "a cross-field error computed with the default:\n{stderr}");
    // The same cross-field check still runs when the value it reads is the user's own.
    let (code, _, stderr) = render_in_root(&["render", "-f", PROD, "--set", "autoscaling.minReplicas=2"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_has(&stderr, "podDisruptionBudget.minAvailable: 2 leaves no pod evictable with 2 replicas");
}
