//! Static probes of the rendered manifests (the render of the given values, exactly what would be
//! deployed; no cluster needed): health probes, requests and limits, autoscaling, disruption budget,
//! restricted security contexts, network policy coverage, pinned images, no secrets inline.

use serde_json::Value;

use super::{Context, Finding, Probe, ProbeFuture, Target};
use crate::render::Object;

/// A probe that only reads `ctx.objects`.
struct Static {
    id: &'static str,
    describe: &'static str,
    check: fn(&Context) -> Finding,
}

impl Probe for Static {
    fn id(&self) -> &'static str {
        self.id
    }
    fn target(&self) -> Target {
        Target::Manifests
    }
    fn describe(&self) -> &'static str {
        self.describe
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> ProbeFuture<'a> {
        let finding = (self.check)(ctx);
        Box::pin(async move { finding })
    }
}

pub fn probes() -> Vec<Box<dyn Probe>> {
    let p = |id, describe, check| Box::new(Static { id, describe, check }) as Box<dyn Probe>;
    vec![
        p(
            "manifests.probes",
            "liveness and readiness probes on every container of the Deployments and StatefulSets",
            probes_defined,
        ),
        p(
            "manifests.resources",
            "CPU/memory requests and memory limits on every container, datastores included",
            resources,
        ),
        p("manifests.hpa", "a HorizontalPodAutoscaler with minReplicas >= 3", hpa),
        p("manifests.pdb", "a PodDisruptionBudget selecting the server that still lets a node drain", pdb),
        p(
            "manifests.security-context",
            "restricted security contexts (non-root, no escalation, drop ALL, seccomp)",
            security_context,
        ),
        p(
            "manifests.network-policy",
            "every Deployment/StatefulSet pod selected by a NetworkPolicy (operator-run pods: not yet)",
            network_policy,
        ),
        p("manifests.images", "images pinned by tag (a digest preferred), never latest", images),
        p(
            "manifests.no-inline-secrets",
            "no Secret data, password env value or credential URL inline",
            no_inline_secrets,
        ),
    ]
}

/// The parsed document of a rendered object.
pub fn doc(o: &Object) -> Value {
    serde_yaml::from_str(&o.text).unwrap_or(Value::Null)
}

/// A pod template of the render: which object, its pod spec and labels.
pub struct Pod {
    pub owner: String,
    pub spec: Value,
    pub labels: serde_json::Map<String, Value>,
    /// A long-running pod (Deployment, StatefulSet, DaemonSet), as opposed to a CronJob's run:
    /// only those need liveness and readiness probes.
    pub serves: bool,
}

/// Pod templates of Deployments, StatefulSets, DaemonSets and CronJobs (operators' custom
/// resources describe theirs partially; see `datastore_resources`). CronJobs count: their pods
/// hold the datastores' credentials as much as the server's do.
pub fn pods(objects: &[Object]) -> Vec<Pod> {
    objects
        .iter()
        .filter_map(|o| {
            let d = doc(o);
            let (t, serves) = match o.kind.as_str() {
                "Deployment" | "StatefulSet" | "DaemonSet" => (&d["spec"]["template"], true),
                "CronJob" => (&d["spec"]["jobTemplate"]["spec"]["template"], false),
                _ => return None,
            };
            Some(Pod {
                owner: o.id(),
                spec: t["spec"].clone(),
                labels: t["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
                serves,
            })
        })
        .collect()
}

fn containers(spec: &Value) -> Vec<&Value> {
    spec["containers"].as_array().into_iter().flatten().collect()
}

fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"].iter().flat_map(|k| spec[*k].as_array().into_iter().flatten()).collect()
}

fn cname(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("?")
}

fn listing(problems: &[String]) -> String {
    const MAX: usize = 6;
    let mut s = problems.iter().take(MAX).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > MAX {
        s.push_str(&format!("; and {} more", problems.len() - MAX));
    }
    s
}

fn no_workloads() -> Finding {
    Finding::fail("the render has no Deployment or StatefulSet").hint("check the values files given with -f")
}

fn probes_defined(ctx: &Context) -> Finding {
    let pods: Vec<Pod> = pods(&ctx.objects).into_iter().filter(|p| p.serves).collect();
    if pods.is_empty() {
        return no_workloads();
    }
    let mut missing = Vec::new();
    let mut n = 0;
    for pod in &pods {
        for c in containers(&pod.spec) {
            n += 1;
            let lacks: Vec<&str> =
                ["livenessProbe", "readinessProbe"].into_iter().filter(|k| c[*k].is_null()).collect();
            if !lacks.is_empty() {
                missing.push(format!("{} container {}: no {}", pod.owner, cname(c), lacks.join(", ")));
            }
        }
    }
    if missing.is_empty() {
        Finding::pass(format!("{n} containers in {} workloads have liveness and readiness probes", pods.len()))
    } else {
        Finding::fail(listing(&missing))
            .hint("add livenessProbe and readinessProbe to each container (templates/ or values livenessProbe/readinessProbe)")
    }
}

/// Requests/limits of the datastores' custom resources: (owner, resources).
fn datastore_resources(objects: &[Object]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for o in objects {
        let d = doc(o);
        match o.kind.as_str() {
            "Cluster" if o.api_version.starts_with("postgresql.cnpg.io") => {
                out.push((o.id(), d["spec"]["resources"].clone()))
            }
            "KafkaNodePool" => out.push((o.id(), d["spec"]["resources"].clone())),
            "Elasticsearch" => {
                for set in d["spec"]["nodeSets"].as_array().into_iter().flatten() {
                    let cs = set["podTemplate"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
                    match cs.iter().find(|c| c["name"] == "elasticsearch") {
                        Some(c) => out.push((
                            format!("{} nodeSet {}", o.id(), set["name"].as_str().unwrap_or("?")),
                            c["resources"].clone(),
                        )),
                        None => out
                            .push((format!("{} nodeSet {}", o.id(), set["name"].as_str().unwrap_or("?")), Value::Null)),
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn resources(ctx: &Context) -> Finding {
    let pods = pods(&ctx.objects);
    if pods.is_empty() {
        return no_workloads();
    }
    let mut subjects: Vec<(String, Value)> = Vec::new();
    for pod in &pods {
        for c in all_containers(&pod.spec) {
            subjects.push((format!("{} container {}", pod.owner, cname(c)), c["resources"].clone()));
        }
    }
    subjects.extend(datastore_resources(&ctx.objects));
    let (mut fails, mut warns) = (Vec::new(), Vec::new());
    for (who, r) in &subjects {
        let mut lacks = Vec::new();
        for (section, key) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
            if r[section][key].is_null() {
                lacks.push(format!("{section}.{key}"));
            }
        }
        if !lacks.is_empty() {
            fails.push(format!("{who}: no {}", lacks.join(", ")));
        } else if r["limits"]["cpu"].is_null() {
            warns.push(format!("{who}: no limits.cpu"));
        }
    }
    let n = subjects.len();
    if !fails.is_empty() {
        Finding::fail(listing(&fails)).hint(
            "set CPU and memory requests and a memory limit on every container (values *.resources or templates/)",
        )
    } else if !warns.is_empty() {
        Finding::warn(format!(
            "{n} containers have requests and memory limits; without a CPU limit: {}",
            listing(&warns)
        ))
        .hint("a CPU limit bounds a noisy neighbour; leave it out only on purpose")
    } else {
        Finding::pass(format!("{n} containers have CPU and memory requests and limits"))
    }
}

fn hpa(ctx: &Context) -> Finding {
    let hpas: Vec<Value> = ctx.objects.iter().filter(|o| o.kind == "HorizontalPodAutoscaler").map(doc).collect();
    let Some(h) = hpas.first() else {
        return Finding::fail("no HorizontalPodAutoscaler in the render (autoscaling.enabled is false)")
            .hint("--set autoscaling.enabled=true with autoscaling.minReplicas >= 3");
    };
    let min = h["spec"]["minReplicas"].as_u64().unwrap_or(1);
    let max = h["spec"]["maxReplicas"].as_u64().unwrap_or(0);
    let rows = vec![super::Comparison {
        name: "minReplicas".into(),
        expected: ">= 3".into(),
        actual: min.to_string(),
        ok: min >= 3,
    }];
    if min >= 3 {
        Finding::pass(format!("HPA {} scales {min}..{max} replicas", h["metadata"]["name"].as_str().unwrap_or("?")))
            .comparisons(rows)
    } else {
        Finding::fail(format!("HPA minReplicas is {min}: one replica per zone needs at least 3"))
            .hint("set autoscaling.minReplicas to 3 or more")
            .comparisons(rows)
    }
}

fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let match_labels_ok =
        selector["matchLabels"].as_object().map(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v))).unwrap_or(true);
    let exprs_ok = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let have = labels.get(key).and_then(Value::as_str);
        match e["operator"].as_str().unwrap_or_default() {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => have.is_none_or(|h| !values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    match_labels_ok && exprs_ok
}

pub fn label_selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    selects(selector, labels)
}

fn pdb(ctx: &Context) -> Finding {
    let server = pods(&ctx.objects).into_iter().find(|p| p.owner == format!("Deployment/{}", ctx.values.name));
    let Some(server) = server else {
        return Finding::fail(format!("no Deployment/{} in the render", ctx.values.name));
    };
    let pdbs: Vec<Value> = ctx.objects.iter().filter(|o| o.kind == "PodDisruptionBudget").map(doc).collect();
    let Some(p) = pdbs.iter().find(|p| selects(&p["spec"]["selector"], &server.labels)) else {
        return Finding::fail("no PodDisruptionBudget selects the server's pods")
            .hint("podDisruptionBudget.enabled=true (minAvailable or maxUnavailable)");
    };
    let replicas =
        if ctx.values.autoscaling.enabled { ctx.values.autoscaling.min_replicas } else { ctx.values.replica_count };
    let name = p["metadata"]["name"].as_str().unwrap_or("?");
    if let Some(min) = p["spec"]["minAvailable"].as_u64() {
        if min >= u64::from(replicas) {
            return Finding::fail(format!(
                "PDB {name} minAvailable {min} >= {replicas} replicas: no pod can be evicted, node drains hang"
            ))
            .hint("minAvailable below the replica count (or maxUnavailable: 1)");
        }
        return Finding::pass(format!("PDB {name}: minAvailable {min} of {replicas}+ replicas"));
    }
    if p["spec"]["maxUnavailable"] == 0 || p["spec"]["maxUnavailable"] == "0%" {
        return Finding::fail(format!("PDB {name} maxUnavailable 0: no pod can be evicted, node drains hang"));
    }
    Finding::pass(format!("PDB {name}: maxUnavailable {}", p["spec"]["maxUnavailable"]))
}

fn security_context(ctx: &Context) -> Finding {
    let mut pods = pods(&ctx.objects);
    // Elasticsearch's pod template is ours too (ECK merges it).
    for o in ctx.objects.iter().filter(|o| o.kind == "Elasticsearch") {
        let d = doc(o);
        for set in d["spec"]["nodeSets"].as_array().into_iter().flatten() {
            pods.push(Pod {
                owner: format!("{} nodeSet {}", o.id(), set["name"].as_str().unwrap_or("?")),
                spec: set["podTemplate"]["spec"].clone(),
                labels: Default::default(),
                serves: true,
            });
        }
    }
    if pods.is_empty() {
        return no_workloads();
    }
    let mut problems = Vec::new();
    for pod in &pods {
        let psc = &pod.spec["securityContext"];
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            if pod.spec[key] == Value::Bool(true) {
                problems.push(format!("{}: {key}", pod.owner));
            }
        }
        for c in all_containers(&pod.spec) {
            let sc = &c["securityContext"];
            let who = format!("{} container {}", pod.owner, cname(c));
            let non_root = sc["runAsNonRoot"].as_bool().or(psc["runAsNonRoot"].as_bool()).unwrap_or(false);
            let uid_zero = sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64()) == Some(0);
            if !non_root || uid_zero {
                problems.push(format!("{who}: runAsNonRoot not true"));
            }
            if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
                problems.push(format!("{who}: allowPrivilegeEscalation not false"));
            }
            if sc["privileged"] == Value::Bool(true) {
                problems.push(format!("{who}: privileged"));
            }
            let drops_all = sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|v| v == "ALL"));
            if !drops_all {
                problems.push(format!("{who}: capabilities.drop lacks ALL"));
            }
            let seccomp = sc["seccompProfile"]["type"].as_str().or(psc["seccompProfile"]["type"].as_str());
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                problems.push(format!("{who}: seccompProfile not RuntimeDefault"));
            }
        }
    }
    if problems.is_empty() {
        Finding::pass(format!("{} pod templates meet the restricted Pod Security Standard", pods.len()))
    } else {
        Finding::fail(listing(&problems)).hint("see values securityContext / containerSecurityContext and templates/")
    }
}

fn network_policy(ctx: &Context) -> Finding {
    let pods = pods(&ctx.objects);
    if pods.is_empty() {
        return no_workloads();
    }
    let policies: Vec<Value> = ctx.objects.iter().filter(|o| o.kind == "NetworkPolicy").map(doc).collect();
    let uncovered: Vec<String> = pods
        .iter()
        .filter(|p| !policies.iter().any(|np| selects(&np["spec"]["podSelector"], &p.labels)))
        .map(|p| p.owner.clone())
        .collect();
    if uncovered.is_empty() {
        Finding::pass(format!("{} NetworkPolicies cover the pods of {} workloads", policies.len(), pods.len()))
    } else {
        Finding::fail(format!("pods not selected by any NetworkPolicy: {}", listing(&uncovered)))
            .hint("networkPolicy.enabled=true; every workload needs a policy selecting its pod labels")
    }
}

fn images(ctx: &Context) -> Finding {
    let pods = pods(&ctx.objects);
    if pods.is_empty() {
        return no_workloads();
    }
    let (mut fails, mut tags) = (Vec::new(), Vec::new());
    let mut n = 0;
    for pod in &pods {
        for c in all_containers(&pod.spec) {
            n += 1;
            let image = c["image"].as_str().unwrap_or_default();
            let who = format!("{} container {}: {image}", pod.owner, cname(c));
            if image.contains("@sha256:") {
                continue;
            }
            // The tag is after the last ':' that follows the last '/' (a registry port is not a tag).
            let last = image.rsplit('/').next().unwrap_or(image);
            match last.split_once(':') {
                None => fails.push(format!("{who} (no tag: latest)")),
                Some((_, "latest")) => fails.push(format!("{who} (latest)")),
                Some(_) => tags.push(image.to_owned()),
            }
        }
    }
    tags.sort();
    tags.dedup();
    if !fails.is_empty() {
        Finding::fail(listing(&fails)).hint("pin every image to a version tag, better a digest (image.digest)")
    } else if !tags.is_empty() {
        Finding::warn(format!("pinned by tag, not digest: {}", listing(&tags)))
            .hint("a tag can be moved; set image.digest (sha256:...) to pin exactly what runs")
    } else {
        Finding::pass(format!("{n} container images pinned by digest"))
    }
}

fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    // A path to a secret (AUDIT_API_KEYS_FILE) is not one.
    if ["_FILE", "_PATH", "_DIR"].iter().any(|s| n.ends_with(s)) {
        return false;
    }
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "APIKEY", "API_KEY", "PRIVATE_KEY", "CREDENTIAL"]
        .iter()
        .any(|k| n.contains(k))
}

/// `scheme://user:password@host`: a URL carrying a password.
fn url_with_password(text: &str) -> bool {
    text.match_indices("://").any(|(i, _)| {
        let rest = &text[i + 3..];
        let end = rest.find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'').unwrap_or(rest.len());
        rest[..end]
            .split_once('@')
            .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
    })
}

fn no_inline_secrets(ctx: &Context) -> Finding {
    let mut problems = Vec::new();
    for o in &ctx.objects {
        let d = doc(o);
        match o.kind.as_str() {
            "Secret" => {
                let keys: Vec<String> = ["data", "stringData"]
                    .iter()
                    .flat_map(|k| d[*k].as_object().into_iter().flat_map(|m| m.keys().cloned()))
                    .collect();
                if !keys.is_empty() {
                    problems.push(format!("{} carries {}", o.id(), keys.join(", ")));
                }
            }
            "ConfigMap" => {
                for (k, v) in d["data"].as_object().into_iter().flatten() {
                    if v.as_str().is_some_and(url_with_password) {
                        problems.push(format!("{} key {k}: a URL with a password", o.id()));
                    }
                }
            }
            _ => {}
        }
    }
    for pod in pods(&ctx.objects) {
        for c in all_containers(&pod.spec) {
            for e in c["env"].as_array().into_iter().flatten() {
                let name = e["name"].as_str().unwrap_or_default();
                let literal = e["value"].as_str().unwrap_or_default();
                if (looks_secret(name) && !literal.is_empty()) || url_with_password(literal) {
                    problems.push(format!("{} container {} env {name}: a literal secret", pod.owner, cname(c)));
                }
            }
        }
    }
    if problems.is_empty() {
        Finding::pass("no Secret data, secret-looking env value or credential URL in the manifests")
    } else {
        Finding::fail(listing(&problems))
            .hint("keep credentials in the secret store (secrets.externalSecrets) and reference them with secretKeyRef")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::Status;

    fn context(files: &[&str], sets: &[&str]) -> Context {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let files: Vec<_> = files.iter().map(|f| root.join(f)).collect();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let values = crate::values::load(&files, &sets).expect("values");
        let objects = crate::render::render(&values, None).expect("render");
        Context {
            namespace: values.namespace.name.clone(),
            kube: None,
            kube_url: None,
            targets: Default::default(),
            values,
            objects,
            conns: Default::default(),
            now: chrono::Utc::now(),
        }
    }

    fn run_all(ctx: &Context) -> Vec<(&'static str, Finding)> {
        probes()
            .iter()
            .map(|p| {
                let Static { id, check, .. } = Static { id: p.id(), describe: "", check: find(p.id()) };
                (id, check(ctx))
            })
            .collect()
    }

    fn find(id: &str) -> fn(&Context) -> Finding {
        match id {
            "manifests.probes" => probes_defined,
            "manifests.resources" => resources,
            "manifests.hpa" => hpa,
            "manifests.pdb" => pdb,
            "manifests.security-context" => security_context,
            "manifests.network-policy" => network_policy,
            "manifests.images" => images,
            "manifests.no-inline-secrets" => no_inline_secrets,
            other => panic!("no check for {other}"),
        }
    }

    #[test]
    fn production_render_passes_its_own_manifest_probes() {
        let ctx = context(&["values/values-prod.yaml"], &[]);
        for (id, f) in run_all(&ctx) {
            assert!(matches!(f.status, Status::Pass | Status::Warn), "{id}: {:?} {}", f.status, f.message);
        }
        // What stays a WARN in production: images pinned by tag only, Kafka without a CPU limit.
        let ctx = context(&["values/values-prod.yaml"], &[]);
        let all = run_all(&ctx);
        let get = |id: &str| all.iter().find(|(i, _)| *i == id).map(|(_, f)| f.clone()).expect(id);
        assert_eq!(get("manifests.images").status, Status::Warn, "{}", get("manifests.images").message);
        assert!(
            get("manifests.resources").message.contains("KafkaNodePool/audit-trail-kafka-brokers"),
            "{}",
            get("manifests.resources").message
        );
    }

    #[test]
    fn broken_values_fail_the_right_probe() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["autoscaling.minReplicas=2", "podDisruptionBudget.minAvailable=1"], "manifests.hpa", "minReplicas is 2"),
            (&["autoscaling.enabled=false"], "manifests.hpa", "no HorizontalPodAutoscaler"),
            (&["networkPolicy.enabled=false"], "manifests.network-policy", "Deployment/audit-trail"),
            (&["image.tag=latest"], "manifests.images", "(latest)"),
            (
                &["containerSecurityContext.allowPrivilegeEscalation=true"],
                "manifests.security-context",
                "allowPrivilegeEscalation",
            ),
            (&["env[0].name=DB_PASSWORD", "env[0].value=hunter2"], "manifests.no-inline-secrets", "env DB_PASSWORD"),
        ];
        for (sets, id, expect) in cases {
            let ctx = context(&["values/values-prod.yaml"], sets);
            let f = find(id)(&ctx);
            assert_eq!(f.status, Status::Fail, "{sets:?}: {id}: {}", f.message);
            assert!(f.message.contains(expect), "{sets:?}: {id}: {}", f.message);
            assert!(f.hint.is_some(), "{id}: no hint");
        }
        // The Redis StatefulSet as it was rendered before: no liveness probe, no limits, no policy.
        let mut ctx = context(&["values/values-prod.yaml"], &[]);
        ctx.objects.retain(|o| !(o.kind == "NetworkPolicy" && o.name.contains("redis")));
        for o in ctx.objects.iter_mut().filter(|o| o.kind == "StatefulSet") {
            let mut d = doc(o);
            for c in d["spec"]["template"]["spec"]["containers"].as_array_mut().into_iter().flatten() {
                if let Some(c) = c.as_object_mut() {
                    c.remove("livenessProbe");
                    c["resources"].as_object_mut().map(|r| r.remove("limits"));
                }
            }
            o.text = serde_yaml::to_string(&d).expect("yaml");
        }
        let f = probes_defined(&ctx);
        assert!(
            f.status == Status::Fail
                && f.message.contains("StatefulSet/audit-trail-redis container redis: no livenessProbe"),
            "{}",
            f.message
        );
        let f = resources(&ctx);
        assert!(
            f.status == Status::Fail && f.message.contains("container sentinel: no limits.memory"),
            "{}",
            f.message
        );
        let f = network_policy(&ctx);
        assert!(f.status == Status::Fail && f.message.contains("StatefulSet/audit-trail-redis"), "{}", f.message);

        // The backup CronJobs' pods need a policy of their own: the server's does not select them
        // (its egress has no Kubernetes API, and its anti-affinity must not keep them off nodes).
        let mut ctx = context(&["values/values-prod.yaml"], &[]);
        ctx.objects.retain(|o| o.name != "audit-trail-backup-network-policy");
        let f = network_policy(&ctx);
        assert!(f.status == Status::Fail && f.message.contains("CronJob/audit-trail-backup-postgres"), "{}", f.message);
        assert!(!f.message.contains("Deployment/"), "{}", f.message);
    }

    #[test]
    fn credential_urls() {
        assert!(url_with_password("postgres://audit:s3cret@db:5432/x"));
        assert!(!url_with_password("postgres://audit@db:5432/x"));
        assert!(!url_with_password("https://example.com:443/a@b"));
    }
}
