//! `deploy --canary 10,25,50,100`: the new version as a canary Deployment next to the stable one,
//! behind ingress-nginx's canary annotations (a second Ingress `<name>-canary` with
//! `nginx.ingress.kubernetes.io/canary: "true"` and a `canary-weight`, a Service `<name>-canary`
//! selecting only canary pods). Each step scales the canary to its share of the stable replicas,
//! sets the weight, watches the canary's own metrics for the step duration and judges them with
//! [`super::gate`]. A failed step removes the canary objects (the stable Deployment was never
//! touched); the caller promotes after the last step.
//!
//! The canary objects are built here from the rendered Deployment, Service, Ingress and the
//! ConfigMaps the pods read (typed k8s-openapi objects), not from templates: they must be the
//! rendered release with as few, visible, changes as possible.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apply::{ApplyError, Resources};
use super::gate::{self, Measure, Rules, Sample};
use super::plan::{self, Manifest, ObjectRef};
use super::{lock, wait};

/// Label on every canary object (and canary pod).
pub const CANARY_LABEL: &str = "audctl.io/canary";
const SUFFIX: &str = "-canary";
/// The selector label whose value differs between stable and canary pods, so the stable Service
/// never sends traffic to the canary. `app.kubernetes.io/name` stays: the NetworkPolicy and the
/// ServiceMonitor select by it, and must cover the canary as they cover the stable pods.
const INSTANCE: &str = "app.kubernetes.io/instance";
const ANN_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const ANN_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a canary run applies, built from the render.
pub struct Plan {
    pub rules: Rules,
    pub stable: ObjectRef,
    configmaps: Vec<Manifest>,
    deployment: Deployment,
    service: Manifest,
    ingress: Ingress,
    release: String,
    /// Label selector of the canary pods.
    pub pod_selector: String,
    /// Container port name (or number) and path of the pods' Prometheus endpoint.
    port: String,
    path: String,
}

fn typed<T: DeserializeOwned>(m: &Manifest) -> Result<T, String> {
    serde_json::from_value(m.body.clone()).map_err(|e| format!("{}: {e}", m.id))
}

fn manifest<T: Serialize>(obj: &T, release: &str) -> anyhow::Result<Manifest> {
    let body = serde_json::to_value(obj)?;
    Ok(plan::from_bodies(vec![body], release)?.remove(0))
}

fn mark(labels: &mut Option<BTreeMap<String, String>>) {
    labels.get_or_insert_with(BTreeMap::new).insert(CANARY_LABEL.into(), "true".into());
}

fn canary_name(name: &Option<String>) -> Option<String> {
    name.as_ref().map(|n| format!("{n}{SUFFIX}"))
}

/// Build the canary objects from the rendered release; `Err` is a usage error (what is missing).
pub fn plan(manifests: &[Manifest], release: &str, metrics_path: &str) -> Result<Plan, String> {
    let find = |kind: &str, name: Option<&str>| {
        manifests.iter().find(|m| m.id.kind == kind && name.is_none_or(|n| m.id.name == n))
    };
    let dep = find("Deployment", Some(release)).ok_or_else(|| format!("the render has no Deployment {release}"))?;
    let svc = find("Service", Some(release)).ok_or_else(|| format!("the render has no Service {release}"))?;
    let ing = find("Ingress", Some(release)).ok_or(
        "a canary splits traffic at the ingress, and the render has no Ingress (ingress.enabled: true, with hosts)",
    )?;
    let rule = find("PrometheusRule", None).ok_or(
        "the canary gate applies the thresholds of the rendered alert rules, and the render has no PrometheusRule \
         (prometheusRule.enabled: true)",
    )?;
    let rules = gate::rules(&rule.body)?;

    let mut d: Deployment = typed(dep)?;
    let stable_selector = d.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    let Some(instance) = stable_selector.get(INSTANCE) else {
        return Err(format!(
            "Deployment {release} does not select pods by {INSTANCE}: cannot keep canary pods out of it"
        ));
    };
    let canary_instance = format!("{instance}{SUFFIX}");
    let mut selector = stable_selector.clone();
    selector.insert(INSTANCE.into(), canary_instance.clone());

    // ConfigMaps the pods read, copied as <name>-canary: the canary runs the new configuration
    // while the stable pods keep reading the one they started with.
    let rendered_cms: BTreeMap<&str, &Manifest> =
        manifests.iter().filter(|m| m.id.kind == "ConfigMap").map(|m| (m.id.name.as_str(), m)).collect();
    let mut configmaps = Vec::new();
    let spec = d.spec.as_mut().ok_or_else(|| format!("Deployment {release} has no spec"))?;
    let pod_spec = spec.template.spec.as_mut().ok_or_else(|| format!("Deployment {release} has no pod spec"))?;
    for name in configmap_refs(pod_spec) {
        if let Some(m) = rendered_cms.get(name.as_str()) {
            let mut cm: ConfigMap = typed(m)?;
            cm.metadata.name = canary_name(&cm.metadata.name);
            mark(&mut cm.metadata.labels);
            configmaps.push(manifest(&cm, release).map_err(|e| e.to_string())?);
        }
    }
    let copied: Vec<String> = configmaps.iter().map(|m| m.id.name.trim_end_matches(SUFFIX).to_owned()).collect();
    rename_configmaps(pod_spec, &copied);
    let port = pod_spec
        .containers
        .first()
        .and_then(|c| {
            c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("http")).or(c.ports.iter().flatten().next())
        })
        .map(|p| p.container_port.to_string())
        .ok_or_else(|| format!("Deployment {release}: the server container declares no port"))?;
    spec.selector.match_labels = Some(selector.clone());
    let tmeta = spec.template.metadata.get_or_insert_with(Default::default);
    tmeta.labels.get_or_insert_with(BTreeMap::new).insert(INSTANCE.into(), canary_instance);
    mark(&mut tmeta.labels);
    spec.replicas = Some(1);
    d.metadata.name = canary_name(&d.metadata.name);
    mark(&mut d.metadata.labels);

    let mut s: Service = typed(svc)?;
    s.metadata.name = canary_name(&s.metadata.name);
    mark(&mut s.metadata.labels);
    if let Some(spec) = s.spec.as_mut() {
        spec.selector = Some(selector.clone());
        // One load balancer per release: the canary is reached through the ingress only.
        spec.type_ = Some("ClusterIP".into());
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }

    let mut i: Ingress = typed(ing)?;
    let class = i.spec.as_ref().and_then(|s| s.ingress_class_name.clone()).unwrap_or_default();
    if !class.contains("nginx") {
        eprintln!("warning: ingress class {class:?}: the canary annotations are ingress-nginx's");
    }
    i.metadata.name = canary_name(&i.metadata.name);
    mark(&mut i.metadata.labels);
    // ingress-nginx ignores every other annotation on a canary Ingress (it inherits the main one's),
    // and cert-manager's would issue a second certificate into the same Secret; TLS likewise stays
    // with the main Ingress.
    i.metadata.annotations =
        Some(BTreeMap::from([(ANN_CANARY.into(), "true".into()), (ANN_WEIGHT.into(), "0".into())]));
    let stable_svc = svc.id.name.clone();
    if let Some(spec) = i.spec.as_mut() {
        spec.tls = None;
        let retarget = |b: &mut IngressBackend| {
            if let Some(svc) = b.service.as_mut().filter(|s| s.name == stable_svc) {
                svc.name = format!("{}{SUFFIX}", svc.name);
            }
        };
        if let Some(b) = spec.default_backend.as_mut() {
            retarget(b);
        }
        for rule in spec.rules.iter_mut().flatten() {
            for p in rule.http.iter_mut().flat_map(|h| h.paths.iter_mut()) {
                retarget(&mut p.backend);
            }
        }
    }
    let pod_selector = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    Ok(Plan {
        rules,
        stable: dep.id.clone(),
        configmaps,
        deployment: d,
        service: manifest(&s, release).map_err(|e| e.to_string())?,
        ingress: i,
        release: release.to_owned(),
        pod_selector,
        port,
        path: metrics_path.to_owned(),
    })
}

/// Names of the ConfigMaps a pod spec reads (volumes, envFrom, env valueFrom).
fn configmap_refs(p: &PodSpec) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    names.extend(p.volumes.iter().flatten().filter_map(|v| v.config_map.as_ref().map(|c| c.name.clone())));
    for c in p.containers.iter().chain(p.init_containers.iter().flatten()) {
        names.extend(c.env_from.iter().flatten().filter_map(|e| e.config_map_ref.as_ref().map(|r| r.name.clone())));
        names.extend(
            c.env
                .iter()
                .flatten()
                .filter_map(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref().map(|r| r.name.clone())),
        );
    }
    names.sort();
    names.dedup();
    names
}

fn rename_configmaps(p: &mut PodSpec, copied: &[String]) {
    let rename = |n: &mut String| {
        if copied.contains(n) {
            n.push_str(SUFFIX);
        }
    };
    for v in p.volumes.iter_mut().flatten() {
        if let Some(c) = v.config_map.as_mut() {
            rename(&mut c.name);
        }
    }
    for c in p.containers.iter_mut().chain(p.init_containers.iter_mut().flatten()) {
        for e in c.env_from.iter_mut().flatten() {
            if let Some(r) = e.config_map_ref.as_mut() {
                rename(&mut r.name);
            }
        }
        for e in c.env.iter_mut().flatten() {
            if let Some(r) = e.value_from.as_mut().and_then(|v| v.config_map_key_ref.as_mut()) {
                rename(&mut r.name);
            }
        }
    }
}

/// Canary pods for `weight`% of the traffic: the same share of the stable replicas, at least one.
pub fn replicas(stable: i32, weight: u8) -> i32 {
    (u32::try_from(stable.max(1)).unwrap_or(1) * u32::from(weight)).div_ceil(100).max(1) as i32
}

impl Plan {
    fn deployment(&self, replicas: i32) -> anyhow::Result<Manifest> {
        let mut d = self.deployment.clone();
        if let Some(s) = d.spec.as_mut() {
            s.replicas = Some(replicas);
        }
        manifest(&d, &self.release)
    }

    fn ingress(&self, weight: u8) -> anyhow::Result<Manifest> {
        let mut i = self.ingress.clone();
        i.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(ANN_WEIGHT.into(), weight.to_string());
        manifest(&i, &self.release)
    }

    /// Every canary object, in apply order (a revision's inventory lists them while the canary
    /// runs, so a later deploy prunes them if this run is killed).
    pub fn inventory(&self) -> anyhow::Result<Vec<ObjectRef>> {
        let mut all: Vec<ObjectRef> = self.configmaps.iter().map(|m| m.id.clone()).collect();
        all.push(self.deployment(1)?.id);
        all.push(self.service.id.clone());
        all.push(self.ingress(0)?.id);
        Ok(all)
    }
}

/// One step as measured and judged.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub weight: u8,
    pub pods: i32,
    pub seconds: f64,
    #[serde(flatten)]
    pub measure: Measure,
    pub passed: bool,
    pub detail: String,
}

impl Step {
    pub fn summary(&self) -> String {
        let m = &self.measure;
        let rate = m.error_rate.map(|r| format!("{:.2}%", r * 100.0)).unwrap_or_else(|| "-".into());
        let p99 = m.p99_seconds.map(|p| format!("{:.1}ms", p * 1000.0)).unwrap_or_else(|| "-".into());
        format!("{} requests, error rate {rate}, p99 {p99}", m.requests)
    }
}

pub enum Outcome {
    /// Every step passed: promote.
    Passed(Vec<Step>),
    /// A step failed (or the canary could not run); `why` names the threshold and the value.
    Failed { steps: Vec<Step>, why: String },
}

pub struct Settings<'a> {
    pub weights: &'a [u8],
    pub step: Duration,
    /// Explicit metrics endpoints; empty: every canary pod through the API server's pod proxy.
    pub metrics_urls: &'a [String],
    pub timeout: Duration,
}

/// Where the canary's metrics are read.
enum Target {
    Url(String),
    Pod(String),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Url(u) | Target::Pod(u) => u,
        }
    }
}

struct Scraper<'a> {
    client: &'a kube::Client,
    http: reqwest::Client,
    ns: &'a str,
    plan: &'a Plan,
}

impl Scraper<'_> {
    async fn targets(&self, urls: &[String]) -> Result<Vec<Target>, String> {
        if !urls.is_empty() {
            return Ok(urls.iter().cloned().map(Target::Url).collect());
        }
        // One scrape per pod, not through the Service: a Service proxy picks a pod per request, so
        // two scrapes would compare the counters of different processes.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.ns);
        let list = pods
            .list(&ListParams::default().labels(&self.plan.pod_selector))
            .await
            .map_err(|e| format!("listing the canary pods: {e}"))?;
        let ready: Vec<Target> = list
            .items
            .iter()
            .filter(|p| wait::pod_problem(p).is_none())
            .filter_map(|p| p.metadata.name.clone().map(Target::Pod))
            .collect();
        if ready.is_empty() {
            return Err(format!("no ready canary pod matches {}", self.plan.pod_selector));
        }
        Ok(ready)
    }

    async fn scrape_one(&self, t: &Target) -> anyhow::Result<String> {
        match t {
            Target::Url(u) => {
                let r = self.http.get(u).send().await.with_context(|| format!("GET {u}"))?;
                let status = r.status();
                anyhow::ensure!(status.is_success(), "GET {u}: HTTP {status}");
                Ok(r.text().await?)
            }
            Target::Pod(p) => {
                let uri = format!("/api/v1/namespaces/{}/pods/{p}:{}/proxy{}", self.ns, self.plan.port, self.plan.path);
                let req = hyper::Request::get(&uri).body(Vec::new())?;
                // Bounded like the URL scrapes: a pod that does not answer must not hang the canary.
                tokio::time::timeout(SCRAPE_TIMEOUT, self.client.request_text(req))
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {SCRAPE_TIMEOUT:?}"))
                    .and_then(|r| r.map_err(anyhow::Error::from))
                    .with_context(|| format!("GET {uri} (API server pod proxy)"))
            }
        }
    }

    /// Samples of every target, each tagged with its target so series of different pods stay apart.
    async fn scrape(&self, targets: &[Target]) -> Result<Vec<Sample>, String> {
        let mut all = Vec::new();
        for t in targets {
            let text = self.scrape_one(t).await.map_err(|e| format!("reading the canary's metrics: {e:#}"))?;
            let mut samples = gate::parse_scrape(&text);
            for s in &mut samples {
                s.labels.insert("__target".into(), t.name().to_owned());
            }
            all.extend(samples);
        }
        Ok(all)
    }
}

fn fail(steps: Vec<Step>, why: impl Into<String>) -> Outcome {
    Outcome::Failed { steps, why: why.into() }
}

async fn apply(client: &kube::Client, resources: &Resources, m: &Manifest) -> anyhow::Result<()> {
    match resources.apply(client, m, true, false).await {
        Ok(_) => Ok(()),
        Err(ApplyError::Other(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("applying {}: {e:?}", m.id)),
    }
}

/// Run the steps. Outer error: the cluster could not be talked to; the canary objects may exist
/// and the caller removes them either way.
pub async fn run(
    client: &kube::Client,
    resources: &Resources,
    plan: &Plan,
    ns: &str,
    stable_replicas: i32,
    settings: &Settings<'_>,
    lock: &lock::Held,
) -> anyhow::Result<Outcome> {
    let scraper = Scraper { client, http: reqwest::Client::builder().timeout(SCRAPE_TIMEOUT).build()?, ns, plan };
    let abort = || lock.lost().then(|| "the release lock was taken by another run (--force-unlock)".to_owned());
    let mut steps: Vec<Step> = Vec::new();
    for m in &plan.configmaps {
        apply(client, resources, m).await?;
    }
    apply(client, resources, &plan.service).await?;
    let n = settings.weights.len();
    for (i, &weight) in settings.weights.iter().enumerate() {
        let pods = replicas(stable_replicas, weight);
        let dep = plan.deployment(pods)?;
        apply(client, resources, &dep).await?;
        let ids = [dep.id.clone(), plan.service.id.clone()];
        if let wait::Outcome::Failed(what) = wait::wait(client, resources, &ids, settings.timeout, &abort).await? {
            return Ok(fail(steps, format!("the canary did not become ready at {weight}%: {}", what.join("; "))));
        }
        apply(client, resources, &plan.ingress(weight)?).await?;
        eprintln!(
            "canary step {}/{n}: weight {weight}%, {pods} canary pod(s), watching for {:?}",
            i + 1,
            settings.step
        );
        let targets = match scraper.targets(settings.metrics_urls).await {
            Ok(t) => t,
            Err(why) => return Ok(fail(steps, why)),
        };
        let before = match scraper.scrape(&targets).await {
            Ok(s) => s,
            Err(why) => return Ok(fail(steps, why)),
        };
        let started = Instant::now();
        let bar = crate::output::spinner(format!("canary {weight}%"));
        let tick = (settings.step / 6).clamp(Duration::from_secs(1), Duration::from_secs(15));
        loop {
            let left = settings.step.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(tick)).await;
            if let Some(why) = abort() {
                bar.finish_and_clear();
                return Ok(fail(steps, why));
            }
            // Progress only; the verdict is taken over the whole step below.
            if let Ok(now) = scraper.scrape(&targets).await
                && let Ok(m) = gate::measure(&plan.rules, &before, &now)
            {
                let so_far = Step { weight, pods, seconds: 0.0, measure: m, passed: true, detail: String::new() };
                let line = format!(
                    "canary {weight}%: {:.0}s of {:.0}s, {}",
                    started.elapsed().as_secs_f64(),
                    settings.step.as_secs_f64(),
                    so_far.summary()
                );
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    bar.set_message(line);
                } else {
                    eprintln!("{line}");
                }
            }
        }
        bar.finish_and_clear();
        let after = match scraper.scrape(&targets).await {
            Ok(s) => s,
            Err(why) => return Ok(fail(steps, why)),
        };
        let seconds = started.elapsed().as_secs_f64();
        let measure = match gate::measure(&plan.rules, &before, &after) {
            Ok(m) => m,
            Err(why) => {
                let detail = why.clone();
                steps.push(Step { weight, pods, seconds, measure: Measure::default(), passed: false, detail });
                return Ok(fail(steps, format!("canary step {weight}% failed: {why}")));
            }
        };
        let breaches = gate::verdict(&plan.rules, &measure);
        let passed = breaches.is_empty();
        let step = Step { weight, pods, seconds, measure, passed, detail: breaches.join("; ") };
        let summary = step.summary();
        steps.push(step);
        if !passed {
            eprintln!("canary step {}/{n} ({weight}%) failed: {}", i + 1, breaches.join("; "));
            return Ok(fail(steps, format!("canary step {weight}% failed: {}", breaches.join("; "))));
        }
        eprintln!("canary step {}/{n} ({weight}%) passed: {summary}", i + 1);
    }
    Ok(Outcome::Passed(steps))
}

/// Delete the canary objects (traffic first: the Ingress) and wait until they are gone.
pub async fn remove(
    client: &kube::Client,
    resources: &Resources,
    plan: &Plan,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut ids = plan.inventory()?;
    ids.reverse();
    for id in &ids {
        resources.delete(client, id, false).await?;
    }
    let deadline = Instant::now() + timeout;
    for id in &ids {
        while resources.get(client, id).await?.is_some() {
            anyhow::ensure!(Instant::now() < deadline, "{id} is still there {}s after its deletion", timeout.as_secs());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!("canary objects removed: {}", ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// `10,25,50,100`: strictly increasing weights in 1..=100.
pub fn parse_weights(s: &str) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::new();
    for part in s.split(',') {
        let w: u8 = part
            .trim()
            .parse()
            .ok()
            .filter(|w| (1..=100).contains(w))
            .ok_or_else(|| format!("canary weight {part:?} is not a whole percentage from 1 to 100"))?;
        if out.last().is_some_and(|last| *last >= w) {
            return Err(format!("canary weights must increase: {w} after {}", out.last().copied().unwrap_or(0)));
        }
        out.push(w);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(extra: &[&str]) -> Vec<Manifest> {
        let mut sets: Vec<String> = vec![
            "ingress.enabled=true".into(),
            "ingress.hosts[0].host=audit.example.com".into(),
            "ingress.hosts[0].paths[0].path=/".into(),
            "ingress.hosts[0].paths[0].pathType=Prefix".into(),
            "prometheusRule.enabled=true".into(),
        ];
        sets.extend(extra.iter().map(|s| s.to_string()));
        let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("values/values-local.yaml");
        super::super::render(&[local], &sets, None).expect("render").manifests
    }

    #[test]
    fn canary_objects_keep_out_of_the_stable_service() {
        let ms = rendered(&[]);
        let p = plan(&ms, "audit-trail", "/actuator/prometheus").expect("plan");
        let d = p.deployment(3).expect("deployment");
        assert_eq!(d.id.name, "audit-trail-canary");
        assert_eq!(d.body["spec"]["replicas"], 3);
        let labels = &d.body["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels[INSTANCE], "audit-trail-canary");
        assert_eq!(labels["app.kubernetes.io/name"], "audit-trail", "NetworkPolicy and ServiceMonitor still apply");
        assert_eq!(d.body["spec"]["selector"]["matchLabels"][INSTANCE], "audit-trail-canary");
        assert_eq!(d.body["metadata"]["labels"][plan::RELEASE_LABEL], "audit-trail", "prunable as the release's");
        // The stable Service's selector does not match canary pods.
        let stable_svc = ms.iter().find(|m| m.id.kind == "Service").expect("service");
        let sel = stable_svc.body["spec"]["selector"].as_object().expect("selector");
        assert!(sel.iter().any(|(k, v)| labels[k] != *v), "stable selector {sel:?} matches canary pods {labels}");
        assert_eq!(p.service.body["spec"]["selector"][INSTANCE], "audit-trail-canary");
        // The pods read canary copies of the rendered ConfigMaps.
        let pod = &d.body["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][0]["configMap"]["name"], "audit-trail-config-canary", "{pod}");
        assert_eq!(pod["containers"][0]["envFrom"][0]["configMapRef"]["name"], "audit-trail-datastores-canary");
        let cms: Vec<&str> = p.configmaps.iter().map(|m| m.id.name.as_str()).collect();
        assert_eq!(cms, ["audit-trail-config-canary", "audit-trail-datastores-canary"]);
        // The canary Ingress: weight annotation, canary backend, nothing else.
        let i = p.ingress(25).expect("ingress");
        assert_eq!(i.body["metadata"]["annotations"], serde_json::json!({ANN_CANARY: "true", ANN_WEIGHT: "25"}));
        assert_eq!(i.body["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "audit-trail-canary");
        assert_eq!(i.body["spec"]["rules"][0]["host"], "audit.example.com");
        assert!(i.body["spec"].get("tls").is_none());
        assert_eq!(p.rules.max_error_rate, 0.01);
    }

    #[test]
    fn canary_needs_an_ingress_and_the_alert_rules() {
        let mut ms = rendered(&[]);
        ms.retain(|m| m.id.kind != "PrometheusRule");
        assert!(plan(&ms, "audit-trail", "/m").is_err_and(|e| e.contains("prometheusRule.enabled")));
        let mut ms = rendered(&[]);
        ms.retain(|m| m.id.kind != "Ingress");
        assert!(plan(&ms, "audit-trail", "/m").is_err_and(|e| e.contains("ingress.enabled")));
    }

    #[test]
    fn weights_and_replicas() {
        assert_eq!(parse_weights("10,25,50,100"), Ok(vec![10, 25, 50, 100]));
        assert!(parse_weights("10,5").is_err());
        assert!(parse_weights("0,50").is_err());
        assert!(parse_weights("50,101").is_err());
        assert!(parse_weights("ten").is_err());
        assert_eq!([10, 25, 50, 100].map(|w| replicas(3, w)), [1, 1, 2, 3]);
        assert_eq!(replicas(0, 10), 1);
    }
}
