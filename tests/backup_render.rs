//! The backup CronJobs `audctl render` adds: the guide's cadence, and command lines audctl accepts.

use std::path::Path;

use clap::Parser;

fn cronjobs(values: &str) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let v = audctl::values::load(&[root.join("values").join(values)], &[]).expect("values load");
    let objects = audctl::render::render(&v, None).expect("render");
    objects
        .iter()
        .filter(|o| o.kind == "CronJob")
        .map(|o| serde_yaml::from_str::<serde_json::Value>(&o.text).expect("yaml"))
        .collect()
}

#[test]
fn prod_backs_up_at_the_guides_cadence_with_valid_command_lines() {
    let jobs = cronjobs("values-prod.yaml");
    let find = |name: &str| {
        jobs.iter()
            .find(|j| j["metadata"]["name"] == format!("audit-trail-backup-{name}"))
            .unwrap_or_else(|| panic!("no CronJob for {name}"))
            .clone()
    };
    let hourly = |s: &str| s.split_whitespace().skip(1).all(|f| f == "*");
    let daily = |s: &str| s.split_whitespace().skip(2).all(|f| f == "*");
    for (name, every_hour) in [("postgres", true), ("redis", true), ("kafka", true), ("search", false)] {
        let j = find(name);
        let schedule = j["spec"]["schedule"].as_str().unwrap_or_default();
        assert!(if every_hour { hourly(schedule) } else { daily(schedule) && !hourly(schedule) }, "{name}: {schedule}");
        assert_eq!(j["spec"]["concurrencyPolicy"], "Forbid");
    }
    let verify = find("verify");
    let fields: Vec<&str> = verify["spec"]["schedule"].as_str().unwrap_or_default().split_whitespace().collect();
    assert_ne!(fields[4], "*", "verify runs weekly: {fields:?}");
    for j in &jobs {
        let args: Vec<String> = serde_json::from_value(
            j["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
        )
        .expect("args");
        let argv: Vec<String> = std::iter::once("audctl".to_owned()).chain(args.iter().cloned()).collect();
        audctl::cli::Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{argv:?} is not a valid audctl command line: {e}"));
        assert!(args.windows(2).any(|w| w[0] == "--repo" && w[1] == "/backups"), "{args:?}");
    }
}

#[test]
fn local_has_no_backup_cronjobs() {
    assert!(cronjobs("values-local.yaml").is_empty());
}

/// Rendered objects of the production values, parsed, with their kind and name.
fn prod_objects() -> Vec<(String, String, serde_json::Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let v = audctl::values::load(&[root.join("values/values-prod.yaml")], &[]).expect("values load");
    let objects = audctl::render::render(&v, None).expect("render");
    objects.iter().map(|o| (o.kind.clone(), o.name.clone(), serde_yaml::from_str(&o.text).expect("yaml"))).collect()
}

/// Does a `matchLabels` selector select these labels?
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let want = selector["matchLabels"].as_object().cloned().unwrap_or_default();
    !want.is_empty() && want.iter().all(|(k, v)| &labels[k] == v)
}

/// The backup jobs' pods used to carry the server's `app.kubernetes.io/name`: the server's
/// NetworkPolicy then confined them (no egress to the Kubernetes API, where their evidence goes)
/// and its required anti-affinity kept them off every node running a server pod.
#[test]
fn backup_pods_have_their_own_identity_and_policy() {
    let objects = prod_objects();
    let one = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, d)| d.clone())
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
    };
    let server_policy = one("NetworkPolicy", "audit-trail-network-policy");
    let backup_policy = one("NetworkPolicy", "audit-trail-backup-network-policy");
    let redis_policy = one("NetworkPolicy", "audit-trail-redis-network-policy");
    let deployment = one("Deployment", "audit-trail");
    let anti = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
    let cronjobs: Vec<_> = objects.iter().filter(|(k, _, _)| k == "CronJob").collect();
    assert_eq!(cronjobs.len(), 6, "the six backup CronJobs");
    for (_, name, job) in cronjobs {
        let labels = &job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "audit-trail-backup", "{name}");
        assert!(!selects(&server_policy["spec"]["podSelector"], labels), "{name}: the server's policy selects it");
        assert!(selects(&backup_policy["spec"]["podSelector"], labels), "{name}: the backup policy misses it");
        for term in anti["requiredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten() {
            assert!(!selects(&term["labelSelector"], labels), "{name}: the server's anti-affinity matches it");
        }
        let from = redis_policy["spec"]["ingress"][0]["from"].as_array().cloned().unwrap_or_default();
        assert!(from.iter().any(|f| selects(&f["podSelector"], labels)), "{name}: Redis refuses it");
    }
    // Nothing connects to the jobs; they reach the Kubernetes API (443, or 6443 after translation).
    assert_eq!(backup_policy["spec"]["ingress"], serde_json::json!([]));
    let api = serde_json::json!([{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]);
    let egress = backup_policy["spec"]["egress"].as_array().cloned().unwrap_or_default();
    assert!(egress.iter().any(|e| e["to"].is_null() && e["ports"] == api), "{egress:?}");
    assert!(
        !server_policy["spec"]["egress"].as_array().into_iter().flatten().any(|e| e["ports"] == api),
        "the server itself gets no Kubernetes API egress"
    );
}

/// The Deployment's affinity is values-prod.yaml's, read as plain YAML (not through audctl's
/// values loader): the default's preferred anti-affinity used to be merged into it.
#[test]
fn prod_affinity_is_exactly_the_values_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("values/values-prod.yaml")).expect("values-prod.yaml");
    let file: serde_json::Value = serde_yaml::from_str(&text).expect("values-prod.yaml is YAML");
    let objects = prod_objects();
    let deployment = objects.iter().find(|(k, _, _)| k == "Deployment").map(|(_, _, d)| d).expect("a Deployment");
    assert_eq!(deployment["spec"]["template"]["spec"]["affinity"], file["affinity"]);
}
