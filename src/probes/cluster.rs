//! Live probes of the cluster (kube-rs): HA, ingress controller, cert-manager, storage, monitoring,
//! log shipping, network policy, Pod Security, external-secrets, RBAC, TLS, rate limiting, alerts.
//!
//! Every probe reads; none writes. A cluster that cannot be reached is ERROR (unreachable), a
//! forbidden read is ERROR (forbidden), and no configured cluster is ERROR (not configured).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

use super::manifests::{doc, label_selects, pods};
use super::{Comparison, Context, ErrorCause, Finding, Probe, ProbeFuture, Target};
use crate::values::Values;

type RunFn = for<'a> fn(&'a Context) -> ProbeFuture<'a>;

struct Live {
    id: &'static str,
    describe: &'static str,
    run: RunFn,
}

impl Probe for Live {
    fn id(&self) -> &'static str {
        self.id
    }
    fn target(&self) -> Target {
        Target::Cluster
    }
    fn describe(&self) -> &'static str {
        self.describe
    }
    fn run<'a>(&'a self, ctx: &'a Context) -> ProbeFuture<'a> {
        (self.run)(ctx)
    }
}

macro_rules! live {
    ($id:literal, $describe:literal, $f:ident) => {{
        fn run<'a>(ctx: &'a Context) -> ProbeFuture<'a> {
            Box::pin(async move {
                match $f(ctx).await {
                    Ok(f) => f,
                    Err(f) => at_api_server(f, ctx),
                }
            })
        }
        Box::new(Live { id: $id, describe: $describe, run }) as Box<dyn Probe>
    }};
}

pub fn probes() -> Vec<Box<dyn Probe>> {
    vec![
        live!("cluster.ha", ">= 3 Ready nodes in >= 3 zones and more than one API server endpoint", ha),
        live!(
            "cluster.ingress-controller",
            "the IngressClass of the values exists and its controller pods are Ready",
            ingress_controller
        ),
        live!("cluster.cert-manager", "cert-manager CRDs present and the Ingress's issuer Ready", cert_manager),
        live!(
            "cluster.storage-class",
            "the values' storage classes exist, expand and bind WaitForFirstConsumer",
            storage_class
        ),
        live!(
            "cluster.monitoring",
            "prometheus-operator CRDs present and a Prometheus selecting the ServiceMonitor",
            monitoring
        ),
        live!("cluster.log-shipper", "a log shipper DaemonSet Ready on every node", log_shipper),
        live!("cluster.network-policy", "a live NetworkPolicy selecting the server's pods", network_policy),
        live!("cluster.pod-security", "the namespace enforces the restricted Pod Security Standard", pod_security),
        live!("cluster.secret-store", "the external-secrets store of the values is Ready", secret_store),
        live!("cluster.rbac", "the server's ServiceAccount has no cluster-wide or wildcard bindings", rbac),
        live!("cluster.tls", "every Ingress host under TLS with a certificate valid for 14 more days", tls),
        live!(
            "cluster.rate-limit",
            "rate-limit annotations on the live Ingress (or the server's own limiter)",
            rate_limit
        ),
        live!("cluster.alert-rules", "the release's PrometheusRule loaded and selected by a Prometheus", alert_rules),
    ]
}

type Probed = Result<Finding, Finding>;

fn client(ctx: &Context) -> Result<kube::Client, Finding> {
    ctx.kube.clone().ok_or_else(|| {
        Finding::error(ErrorCause::NotConfigured, "no cluster configured")
            .hint("give --kubeconfig/--context, KUBECONFIG or a targets file with `kube`")
    })
}

/// An unreachable API server's finding names the server (kube's errors do not), so that a
/// kubeconfig pointing at the wrong cluster or port shows in the report.
fn at_api_server(mut f: Finding, ctx: &Context) -> Finding {
    if let (Some(ErrorCause::Unreachable), Some(url)) = (&f.cause, &ctx.kube_url) {
        f.message = format!("{} (API server {url})", f.message);
    }
    f
}

/// A failed API call as a finding: unreachable, forbidden or other.
fn api_error(e: kube::Error, doing: &str) -> Finding {
    if crate::kube::is_transport(&e) {
        return Finding::error(
            ErrorCause::Unreachable,
            format!("{doing}: the API server is unreachable: {}", crate::kube::with_causes(&e)),
        )
        .hint("check the kubeconfig/context and that the API server answers");
    }
    match crate::kube::api_status(&e) {
        Some(401 | 403) => Finding::error(ErrorCause::Forbidden, format!("{doing}: forbidden: {e}"))
            .hint("the check needs read access (get/list) to these objects"),
        _ => Finding::error(ErrorCause::Other, format!("{doing}: {e}")),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    crate::kube::api_status(e) == Some(404)
}

/// GET that maps 404 to None.
async fn get_opt<K>(api: &Api<K>, name: &str, doing: &str) -> Result<Option<K>, Finding>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(api_error(e, doing)),
    }
}

async fn list<K>(api: &Api<K>, lp: &ListParams, doing: &str) -> Result<Vec<K>, Finding>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(lp).await.map(|l| l.items).map_err(|e| api_error(e, doing))
}

/// The names of `crds` that are not installed.
async fn missing_crds(c: &kube::Client, crds: &[&str]) -> Result<Vec<String>, Finding> {
    let api: Api<CustomResourceDefinition> = Api::all(c.clone());
    // Read concurrently: a probe is as slow as its slowest read, not the sum.
    let found = futures::future::join_all(crds.iter().map(|name| get_opt(&api, name, "reading CRDs"))).await;
    let mut missing = Vec::new();
    for (name, found) in crds.iter().zip(found) {
        if found?.is_none() {
            missing.push((*name).to_owned());
        }
    }
    Ok(missing)
}

fn dynamic(
    c: &kube::Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
        None => Api::all_with(c.clone(), &ar),
    }
}

/// `status.conditions[type=Ready]` of a custom resource: (status, reason + message).
fn ready_condition(o: &DynamicObject) -> Option<(String, String)> {
    let conds = o.data["status"]["conditions"].as_array()?;
    let c = conds.iter().find(|c| c["type"] == "Ready")?;
    let text = [c["reason"].as_str(), c["message"].as_str()].into_iter().flatten().collect::<Vec<_>>().join(": ");
    Some((c["status"].as_str().unwrap_or("Unknown").to_owned(), text))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn labels_json(m: &BTreeMap<String, String>) -> serde_json::Map<String, Value> {
    m.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect()
}

/// Labels of the server's pods in the render.
fn server_pod_labels(ctx: &Context) -> serde_json::Map<String, Value> {
    pods(&ctx.objects)
        .into_iter()
        .find(|p| p.owner == format!("Deployment/{}", ctx.values.name))
        .map(|p| p.labels)
        .unwrap_or_else(|| {
            serde_json::Map::from_iter([("app.kubernetes.io/name".to_owned(), Value::from(ctx.values.name.as_str()))])
        })
}

fn selector_text(labels: &serde_json::Map<String, Value>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
}

fn cmp(name: &str, expected: impl Into<String>, actual: impl ToString, ok: bool) -> Comparison {
    Comparison { name: name.into(), expected: expected.into(), actual: actual.to_string(), ok }
}

async fn ha(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let nodes = list(&Api::<Node>::all(c.clone()), &ListParams::default(), "listing nodes").await?;
    let ready: Vec<&Node> = nodes
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    let zones: BTreeSet<String> = ready
        .iter()
        .filter_map(|n| {
            let l = n.metadata.labels.as_ref()?;
            l.get("topology.kubernetes.io/zone").or_else(|| l.get("failure-domain.beta.kubernetes.io/zone")).cloned()
        })
        .collect();
    let slices = list(
        &Api::<EndpointSlice>::namespaced(c.clone(), "default"),
        &ListParams::default().labels("kubernetes.io/service-name=kubernetes"),
        "listing the API server's endpoints",
    )
    .await?;
    let endpoints: BTreeSet<String> = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.clone())
        .collect();
    let zone_list = zones.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut rows = vec![
        cmp("Ready nodes", ">= 3", ready.len(), ready.len() >= 3),
        cmp("zones with Ready nodes", ">= 3", format!("{} ({zone_list})", zones.len()), zones.len() >= 3),
        cmp("API server endpoints", ">= 2", endpoints.len(), endpoints.len() >= 2),
    ];
    let spread = one_server_pod_per_node(&ctx.values);
    if let Some(s) = &spread {
        rows.push(cmp(
            "Ready nodes for one server pod per node",
            format!(">= {}", s.needed),
            ready.len(),
            ready.len() >= s.needed,
        ));
    }
    let mut problems = Vec::new();
    if ready.len() < 3 {
        problems.push(format!("{} Ready nodes of {} (need 3)", ready.len(), nodes.len()));
    }
    if zones.len() < 3 {
        problems.push(format!(
            "Ready nodes in {} zone(s) [{zone_list}]: losing one zone takes the service down (need 3, label topology.kubernetes.io/zone)",
            zones.len()
        ));
    }
    if endpoints.len() < 2 {
        problems.push(format!(
            "{} API server endpoint(s) behind the `kubernetes` Service: the control plane is not HA",
            endpoints.len()
        ));
    }
    let summary = format!(
        "{} Ready nodes in {} zones ({zone_list}); {} API server endpoints",
        ready.len(),
        zones.len(),
        endpoints.len()
    );
    Ok(if problems.is_empty() {
        match spread.filter(|s| ready.len() < s.needed) {
            // The cluster is HA; the release cannot use all of it as configured. A warning: the
            // cluster may grow (an autoscaler) before the HPA gets there.
            Some(s) => Finding::warn(format!(
                "{summary}; but the server's required pod anti-affinity (one pod per node, kubernetes.io/hostname) \
                 needs {} Ready nodes at full scale ({} pods, {}, plus {} surge pods of a rolling update): with {}, \
                 pods beyond {} stay Pending, and a rollout at {} replicas cannot place its surge pod",
                s.needed,
                s.pods,
                s.source,
                s.needed - s.pods,
                ready.len(),
                ready.len(),
                ready.len()
            ))
            .hint("add nodes (or a cluster autoscaler), lower autoscaling.maxReplicas, or make the anti-affinity preferred")
            .comparisons(rows),
            None => Finding::pass(summary).comparisons(rows),
        }
    } else {
        Finding::fail(problems.join("; "))
            .hint(
                "spread nodes over 3 zones and run 3 control-plane nodes (a managed control plane behind one \
                 load-balanced address shows 1 endpoint: waive the item with that reason)",
            )
            .comparisons(rows)
    })
}

/// What the server's required anti-affinity asks of the nodes.
struct Spread {
    /// Server pods at full scale.
    pods: usize,
    source: &'static str,
    /// Nodes for those and a rolling update's surge pods.
    needed: usize,
}

/// Some when the values require at most one server pod per node (a required pod anti-affinity
/// term on kubernetes.io/hostname). The Deployment rolls with maxSurge 25 % and maxUnavailable 0
/// (templates/deployment.yaml.j2), so a rollout needs a node free for each surge pod.
fn one_server_pod_per_node(values: &Values) -> Option<Spread> {
    let terms = values
        .affinity
        .as_ref()?
        .pod_anti_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?;
    if !terms.iter().any(|t| t.topology_key == "kubernetes.io/hostname") {
        return None;
    }
    let pods = values.server_pods_at_full_scale() as usize;
    let source = if values.autoscaling.enabled { "autoscaling.maxReplicas" } else { "replicaCount" };
    Some(Spread { pods, source, needed: pods + pods.div_ceil(4) })
}

fn ingress_disabled() -> Finding {
    Finding::warn("ingress.enabled is false: the service is not exposed, nothing to check")
}

async fn ingress_controller(ctx: &Context) -> Probed {
    if !ctx.values.ingress.enabled {
        return Ok(ingress_disabled());
    }
    let c = client(ctx)?;
    let name = &ctx.values.ingress.class_name;
    let classes: Api<IngressClass> = Api::all(c.clone());
    let Some(class) = get_opt(&classes, name, "reading IngressClasses").await? else {
        let all = list(&classes, &ListParams::default(), "listing IngressClasses").await?;
        let names: Vec<String> = all.iter().filter_map(|c| c.metadata.name.clone()).collect();
        return Ok(Finding::fail(format!(
            "IngressClass {name:?} (ingress.className) does not exist; classes: [{}]",
            names.join(", ")
        ))
        .hint("install the ingress controller (it creates its IngressClass) or set ingress.className"));
    };
    let controller = class.spec.as_ref().and_then(|s| s.controller.clone()).unwrap_or_default();
    let labels = class.metadata.labels.clone().unwrap_or_default();
    let mut selector: Vec<String> = ["app.kubernetes.io/name", "app.kubernetes.io/instance"]
        .iter()
        .filter_map(|k| labels.get(*k).map(|v| format!("{k}={v}")))
        .collect();
    if selector.is_empty() {
        let known = match controller.as_str() {
            "k8s.io/ingress-nginx" => Some("app.kubernetes.io/name=ingress-nginx"),
            "traefik.io/ingress-controller" => Some("app.kubernetes.io/name=traefik"),
            "haproxy.org/ingress-controller/haproxy" => Some("app.kubernetes.io/name=kubernetes-ingress"),
            _ => None,
        };
        match known {
            Some(s) => selector.push(s.to_owned()),
            None => {
                return Ok(Finding::fail(format!(
                    "IngressClass {name} (controller {controller}) carries no app.kubernetes.io/name label: cannot find its controller pods"
                ))
                .hint("label the IngressClass like its controller pods (app.kubernetes.io/name, app.kubernetes.io/instance)"));
            }
        }
    }
    let sel = selector.join(",");
    let pods =
        list(&Api::<Pod>::all(c.clone()), &ListParams::default().labels(&sel), "listing ingress controller pods")
            .await?;
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let where_: BTreeSet<String> = pods.iter().filter_map(|p| p.metadata.namespace.clone()).collect();
    let rows = vec![cmp("Ready controller pods", ">= 1", format!("{ready}/{}", pods.len()), ready >= 1)];
    Ok(if ready >= 1 {
        Finding::pass(format!(
            "IngressClass {name} ({controller}): {ready}/{} controller pods Ready ({sel}) in {}",
            pods.len(),
            where_.into_iter().collect::<Vec<_>>().join(", ")
        ))
        .comparisons(rows)
    } else {
        Finding::fail(format!(
            "IngressClass {name} ({controller}) exists but {ready} of {} controller pods ({sel}) are Ready",
            pods.len()
        ))
        .hint("look at the ingress controller's pods and events")
        .comparisons(rows)
    })
}

async fn cert_manager(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let missing = missing_crds(
        &c,
        &["certificates.cert-manager.io", "clusterissuers.cert-manager.io", "issuers.cert-manager.io"],
    )
    .await?;
    if !missing.is_empty() {
        return Ok(Finding::fail(format!("cert-manager is not installed: CRDs missing: {}", missing.join(", ")))
            .hint("install cert-manager (its CRDs and controller)"));
    }
    if !ctx.values.ingress.enabled {
        return Ok(Finding::pass("cert-manager CRDs installed (ingress disabled: no issuer to check)"));
    }
    let ann = &ctx.values.ingress.annotations;
    let (kind, name, api) = if let Some(n) = ann.get("cert-manager.io/cluster-issuer") {
        ("ClusterIssuer", n, dynamic(&c, "cert-manager.io", "v1", "ClusterIssuer", "clusterissuers", None))
    } else if let Some(n) = ann.get("cert-manager.io/issuer") {
        ("Issuer", n, dynamic(&c, "cert-manager.io", "v1", "Issuer", "issuers", Some(&ctx.namespace)))
    } else {
        return Ok(Finding::fail("the Ingress names no issuer: no certificate will be issued")
            .hint("add the annotation cert-manager.io/cluster-issuer: NAME to ingress.annotations"));
    };
    let Some(issuer) = get_opt(&api, name, "reading the issuer").await? else {
        return Ok(Finding::fail(format!("{kind} {name:?} (ingress annotation) does not exist"))
            .hint(format!("create the {kind} or fix the cert-manager.io annotation")));
    };
    Ok(match ready_condition(&issuer) {
        Some((s, _)) if s == "True" => Finding::pass(format!("{kind} {name} is Ready")),
        Some((s, why)) => Finding::fail(format!("{kind} {name} is not Ready (Ready={s}: {why})"))
            .hint(format!("kubectl describe {} {name}", kind.to_lowercase())),
        None => Finding::fail(format!("{kind} {name} has no Ready condition yet (cert-manager has not processed it)"))
            .hint("is the cert-manager controller running?"),
    })
}

async fn storage_class(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let v = &ctx.values;
    let mut wanted: BTreeMap<Option<String>, Vec<&str>> = BTreeMap::new();
    if v.postgresql.enabled {
        wanted.entry(v.postgresql.primary.persistence.storage_class.clone()).or_default().push("postgresql");
    }
    if v.elasticsearch.enabled {
        wanted
            .entry(v.elasticsearch.volume_claim_template.storage_class_name.clone())
            .or_default()
            .push("elasticsearch");
    }
    if v.redis.enabled {
        wanted.entry(v.redis.persistence.storage_class.clone()).or_default().push("redis");
    }
    if v.kafka.enabled {
        wanted.entry(v.kafka.persistence.storage_class.clone()).or_default().push("kafka");
    }
    if wanted.is_empty() {
        return Ok(Finding::pass("no datastore runs in the cluster: no volumes to provision"));
    }
    let classes = list(&Api::<StorageClass>::all(c.clone()), &ListParams::default(), "listing StorageClasses").await?;
    let is_default = |s: &StorageClass| {
        s.metadata.annotations.as_ref().is_some_and(|a| {
            ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"]
                .iter()
                .any(|k| a.get(*k).map(String::as_str) == Some("true"))
        })
    };
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    for (name, users) in &wanted {
        let found = match name {
            Some(n) => classes.iter().find(|s| s.metadata.name.as_deref() == Some(n.as_str())),
            None => classes.iter().find(|s| is_default(s)),
        };
        let label = match name {
            Some(n) => n.clone(),
            None => "(default)".to_owned(),
        };
        let Some(sc) = found else {
            problems.push(match name {
                Some(n) => format!("StorageClass {n:?} ({}) does not exist", users.join(", ")),
                None => format!("no default StorageClass for {} (storageClass not set)", users.join(", ")),
            });
            continue;
        };
        let sc_name = sc.metadata.name.clone().unwrap_or_default();
        let mut lacks = Vec::new();
        if sc.allow_volume_expansion != Some(true) {
            lacks.push("allowVolumeExpansion is not true".to_owned());
        }
        let mode = sc.volume_binding_mode.clone().unwrap_or_else(|| "Immediate".into());
        if mode != "WaitForFirstConsumer" {
            lacks.push(format!("volumeBindingMode is {mode} (volumes may land in another zone than their pod)"));
        }
        if lacks.is_empty() {
            ok.push(format!("{label} -> {sc_name} ({}, {})", sc.provisioner, users.join(", ")));
        } else {
            problems.push(format!("StorageClass {sc_name} ({}): {}", users.join(", "), lacks.join(", ")));
        }
    }
    Ok(if problems.is_empty() {
        Finding::pass(format!("expandable, WaitForFirstConsumer: {}", ok.join("; ")))
    } else {
        Finding::fail(problems.join("; "))
            .hint("a StorageClass with allowVolumeExpansion: true and volumeBindingMode: WaitForFirstConsumer")
    })
}

/// Does the Prometheus `p` pick objects with `labels` in namespace `ns` (labels `ns_labels`)?
fn prometheus_selects(
    p: &DynamicObject,
    selector_key: &str,
    ns_selector_key: &str,
    labels: &serde_json::Map<String, Value>,
    ns: &str,
    ns_labels: &serde_json::Map<String, Value>,
) -> bool {
    let spec = &p.data["spec"];
    // A null selector selects nothing; an empty one selects everything.
    let sel = &spec[selector_key];
    if sel.is_null() || !label_selects(sel, labels) {
        return false;
    }
    match &spec[ns_selector_key] {
        Value::Null => p.metadata.namespace.as_deref() == Some(ns),
        nsel => label_selects(nsel, ns_labels),
    }
}

async fn namespace_labels(c: &kube::Client, ns: &str) -> Result<Option<serde_json::Map<String, Value>>, Finding> {
    let api: Api<Namespace> = Api::all(c.clone());
    Ok(get_opt(&api, ns, "reading the namespace").await?.map(|n| labels_json(&n.metadata.labels.unwrap_or_default())))
}

/// The release's own object of a kind (named after the release: the Redis exporter has a
/// ServiceMonitor too), else the first of that kind.
fn rendered(ctx: &Context, kind: &str) -> Option<(String, serde_json::Map<String, Value>)> {
    let of_kind = || ctx.objects.iter().filter(|o| o.kind == kind);
    of_kind().find(|o| o.name == ctx.values.name).or_else(|| of_kind().next()).map(|o| {
        let d = doc(o);
        (o.name.clone(), d["metadata"]["labels"].as_object().cloned().unwrap_or_default())
    })
}

async fn monitoring(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let missing = missing_crds(
        &c,
        &[
            "servicemonitors.monitoring.coreos.com",
            "prometheusrules.monitoring.coreos.com",
            "prometheuses.monitoring.coreos.com",
        ],
    )
    .await?;
    if !missing.is_empty() {
        return Ok(Finding::fail(format!(
            "prometheus-operator is not installed: CRDs missing: {}",
            missing.join(", ")
        ))
        .hint("install prometheus-operator (kube-prometheus-stack)"));
    }
    let Some((sm, labels)) = rendered(ctx, "ServiceMonitor") else {
        return Ok(Finding::fail("serviceMonitor.enabled is false: nothing scrapes the server's metrics")
            .hint("--set serviceMonitor.enabled=true"));
    };
    let ns_labels = namespace_labels(&c, &ctx.namespace).await?.unwrap_or_default();
    let proms = list(
        &dynamic(&c, "monitoring.coreos.com", "v1", "Prometheus", "prometheuses", None),
        &ListParams::default(),
        "listing Prometheus resources",
    )
    .await?;
    if proms.is_empty() {
        return Ok(Finding::fail("no Prometheus resource in the cluster: the operator has nothing to run")
            .hint("deploy a Prometheus (kube-prometheus-stack)"));
    }
    let picking: Vec<String> = proms
        .iter()
        .filter(|p| {
            prometheus_selects(
                p,
                "serviceMonitorSelector",
                "serviceMonitorNamespaceSelector",
                &labels,
                &ctx.namespace,
                &ns_labels,
            )
        })
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default()
            )
        })
        .collect();
    Ok(if picking.is_empty() {
        Finding::fail(format!(
            "none of {} Prometheus resources selects ServiceMonitor {sm} ({}) in namespace {}",
            proms.len(),
            selector_text(&labels),
            ctx.namespace
        ))
        .hint("match the Prometheus serviceMonitorSelector/NamespaceSelector, or set serviceMonitor.labels")
    } else {
        Finding::pass(format!(
            "Prometheus {} selects ServiceMonitor {sm} ({})",
            picking.join(", "),
            selector_text(&labels)
        ))
    })
}

const LOG_SHIPPERS: &[&str] = &[
    "fluent-bit",
    "fluentbit",
    "fluentd",
    "promtail",
    "vector",
    "filebeat",
    "alloy",
    "grafana-agent",
    "opentelemetry-collector",
    "otel-collector",
    "logstash",
];

async fn log_shipper(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let sets = list(&Api::<DaemonSet>::all(c.clone()), &ListParams::default(), "listing DaemonSets").await?;
    let all_nodes = list(&Api::<Node>::all(c.clone()), &ListParams::default(), "listing nodes").await?;
    // Nodes where workloads run: schedulable, without NoSchedule/NoExecute taints (a shipper that
    // skips tainted control-plane nodes still covers every workload).
    let nodes: Vec<&Node> = all_nodes
        .iter()
        .filter(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            spec.unschedulable != Some(true)
                && !spec
                    .taints
                    .unwrap_or_default()
                    .iter()
                    .any(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        })
        .collect();
    let shipper = |d: &DaemonSet| {
        let name = d.metadata.name.clone().unwrap_or_default();
        let app = d.metadata.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/name").cloned()).unwrap_or_default();
        LOG_SHIPPERS.iter().any(|s| name.contains(s) || app.contains(s))
    };
    let found: Vec<&DaemonSet> = sets.iter().filter(|d| shipper(d)).collect();
    let Some(best) = found.iter().max_by_key(|d| d.status.as_ref().map(|s| s.number_ready).unwrap_or(0)) else {
        return Ok(Finding::fail(format!("no log shipper DaemonSet ({}) in the cluster", LOG_SHIPPERS.join(", ")))
            .hint("deploy a log shipper, or attest the item if logs are collected another way"));
    };
    let st = best.status.clone().unwrap_or_default();
    let name = format!(
        "{}/{}",
        best.metadata.namespace.clone().unwrap_or_default(),
        best.metadata.name.clone().unwrap_or_default()
    );
    let rows = vec![cmp(
        "Ready shipper pods",
        format!(">= {} (workload nodes)", nodes.len()),
        st.number_ready,
        st.number_ready as usize >= nodes.len(),
    )];
    Ok(if st.number_ready as usize >= nodes.len() && st.number_ready >= st.desired_number_scheduled {
        Finding::pass(format!("DaemonSet {name}: {} pods Ready on {} nodes", st.number_ready, nodes.len()))
            .comparisons(rows)
    } else {
        Finding::fail(format!(
            "DaemonSet {name}: {} Ready of {} scheduled, {} nodes: some nodes ship no logs",
            st.number_ready,
            st.desired_number_scheduled,
            nodes.len()
        ))
        .hint("check the DaemonSet's tolerations and node selector")
        .comparisons(rows)
    })
}

fn no_namespace(ns: &str) -> Finding {
    Finding::fail(format!("namespace {ns} does not exist: the release is not deployed"))
        .hint("deploy first (audctl deploy), or give -n NAMESPACE")
}

async fn network_policy(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    if namespace_labels(&c, &ctx.namespace).await?.is_none() {
        return Ok(no_namespace(&ctx.namespace));
    }
    let labels = server_pod_labels(ctx);
    let policies = list(
        &Api::<NetworkPolicy>::namespaced(c.clone(), &ctx.namespace),
        &ListParams::default(),
        "listing NetworkPolicies",
    )
    .await?;
    let picking: Vec<String> = policies
        .iter()
        .filter(|p| {
            let sel = p
                .spec
                .as_ref()
                .map(|s| serde_json::to_value(&s.pod_selector).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            label_selects(&sel, &labels)
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    Ok(if picking.is_empty() {
        Finding::fail(format!(
            "no NetworkPolicy in namespace {} selects the server's pods (app.kubernetes.io/name={}); {} policies there",
            ctx.namespace,
            ctx.values.name,
            policies.len()
        ))
        .hint("deploy with networkPolicy.enabled=true (the release's NetworkPolicy)")
    } else {
        Finding::pass(format!(
            "NetworkPolicy {} selects the server's pods ({})",
            picking.join(", "),
            selector_text(&labels)
        ))
    })
}

async fn pod_security(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let Some(labels) = namespace_labels(&c, &ctx.namespace).await? else {
        return Ok(no_namespace(&ctx.namespace));
    };
    let get = |mode: &str| {
        labels
            .get(&format!("pod-security.kubernetes.io/{mode}"))
            .and_then(Value::as_str)
            .unwrap_or("(unset)")
            .to_owned()
    };
    let (enforce, audit, warn) = (get("enforce"), get("audit"), get("warn"));
    let rows = vec![
        cmp("enforce", "restricted", &enforce, enforce == "restricted"),
        cmp("audit", "restricted", &audit, audit == "restricted"),
        cmp("warn", "restricted", &warn, warn == "restricted"),
    ];
    Ok(if enforce != "restricted" {
        Finding::fail(format!(
            "namespace {} does not enforce the restricted Pod Security Standard (pod-security.kubernetes.io/enforce={enforce})",
            ctx.namespace
        ))
        .hint(format!("kubectl label namespace {} pod-security.kubernetes.io/enforce=restricted (namespace.create renders it)", ctx.namespace))
        .comparisons(rows)
    } else if audit != "restricted" || warn != "restricted" {
        Finding::warn(format!("namespace {} enforces restricted; audit={audit}, warn={warn}", ctx.namespace))
            .comparisons(rows)
    } else {
        Finding::pass(format!("namespace {} enforces, audits and warns at restricted", ctx.namespace)).comparisons(rows)
    })
}

async fn secret_store(ctx: &Context) -> Probed {
    let es = &ctx.values.secrets.external_secrets;
    if !es.enabled {
        return Ok(Finding::fail("secrets.externalSecrets.enabled is false: the server's Secret is managed by hand")
            .hint("--set secrets.externalSecrets.enabled=true with a Ready SecretStore"));
    }
    let c = client(ctx)?;
    let missing = missing_crds(
        &c,
        &[
            "externalsecrets.external-secrets.io",
            "secretstores.external-secrets.io",
            "clustersecretstores.external-secrets.io",
        ],
    )
    .await?;
    if !missing.is_empty() {
        return Ok(Finding::fail(format!("external-secrets is not installed: CRDs missing: {}", missing.join(", ")))
            .hint("install the external-secrets operator"));
    }
    let (kind, name) = (es.store_ref.kind.as_str(), es.store_ref.name.as_str());
    let api = match kind {
        "ClusterSecretStore" => {
            dynamic(&c, "external-secrets.io", "v1", "ClusterSecretStore", "clustersecretstores", None)
        }
        _ => dynamic(&c, "external-secrets.io", "v1", "SecretStore", "secretstores", Some(&ctx.namespace)),
    };
    let Some(store) = get_opt(&api, name, "reading the secret store").await? else {
        return Ok(Finding::fail(format!("{kind} {name:?} (secrets.externalSecrets.storeRef) does not exist"))
            .hint("create the store, or fix secrets.externalSecrets.storeRef"));
    };
    Ok(match ready_condition(&store) {
        Some((s, why)) if s == "True" => Finding::pass(format!(
            "{kind} {name} is Ready{}",
            if why.is_empty() { String::new() } else { format!(" ({why})") }
        )),
        Some((s, why)) => Finding::fail(format!("{kind} {name} is not Ready (Ready={s}: {why})"))
            .hint("check the store's provider credentials"),
        None => Finding::fail(format!("{kind} {name} has no Ready condition (the operator has not validated it)")),
    })
}

fn names_sa(s: &Subject, sa: &str, ns: &str) -> bool {
    match s.kind.as_str() {
        "ServiceAccount" => s.name == sa && s.namespace.as_deref() == Some(ns),
        "Group" => s.name == "system:serviceaccounts" || s.name == format!("system:serviceaccounts:{ns}"),
        "User" => s.name == format!("system:serviceaccount:{ns}:{sa}"),
        _ => false,
    }
}

fn wildcard(rules: &[PolicyRule]) -> bool {
    rules.iter().any(|r| {
        r.verbs.iter().any(|v| v == "*")
            || r.resources.iter().flatten().any(|v| v == "*")
            || r.api_groups.iter().flatten().any(|v| v == "*") && r.resources.iter().flatten().any(|v| v == "*")
    })
}

async fn rbac(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let (sa, ns) = (ctx.values.name.as_str(), ctx.namespace.as_str());
    let crbs =
        list(&Api::<ClusterRoleBinding>::all(c.clone()), &ListParams::default(), "listing ClusterRoleBindings").await?;
    let rbs =
        list(&Api::<RoleBinding>::namespaced(c.clone(), ns), &ListParams::default(), "listing RoleBindings").await?;
    let mut problems = Vec::new();
    for b in &crbs {
        let name = b.metadata.name.clone().unwrap_or_default();
        for s in b.subjects.iter().flatten() {
            // Kubernetes' own bindings to every service account (e.g. issuer discovery) are expected.
            let default_group_binding = s.kind == "Group" && b.role_ref.name.starts_with("system:");
            if names_sa(s, sa, ns) && !default_group_binding {
                problems.push(format!(
                    "ClusterRoleBinding {name} grants ClusterRole {} cluster-wide to {} {}",
                    b.role_ref.name, s.kind, s.name
                ));
            }
        }
    }
    let croles: Api<ClusterRole> = Api::all(c.clone());
    let roles: Api<Role> = Api::namespaced(c.clone(), ns);
    for b in &rbs {
        if !b.subjects.iter().flatten().any(|s| names_sa(s, sa, ns)) {
            continue;
        }
        let name = b.metadata.name.clone().unwrap_or_default();
        let r = &b.role_ref;
        if matches!(r.name.as_str(), "cluster-admin" | "admin" | "edit") && r.kind == "ClusterRole" {
            problems.push(format!("RoleBinding {name} grants ClusterRole {} in {ns}", r.name));
            continue;
        }
        let rules = match r.kind.as_str() {
            "ClusterRole" => get_opt(&croles, &r.name, "reading ClusterRoles").await?.and_then(|x| x.rules),
            _ => get_opt(&roles, &r.name, "reading Roles").await?.and_then(|x| x.rules),
        };
        if wildcard(&rules.unwrap_or_default()) {
            problems.push(format!("RoleBinding {name} grants {} {} with wildcard rules", r.kind, r.name));
        }
    }
    Ok(if problems.is_empty() {
        Finding::pass(format!(
            "ServiceAccount {ns}/{sa}: no cluster-wide or wildcard bindings ({} ClusterRoleBindings, {} RoleBindings read)",
            crbs.len(),
            rbs.len()
        ))
    } else {
        Finding::fail(format!("ServiceAccount {ns}/{sa}: {}", problems.join("; ")))
            .hint("the server needs no Kubernetes API access: remove these bindings")
    })
}

/// notAfter of the first certificate of a PEM bundle.
pub fn pem_not_after(pem: &[u8]) -> Result<DateTime<Utc>, String> {
    crate::x509::not_after_pem(pem)
}

const MIN_CERT_DAYS: i64 = 14;

async fn tls(ctx: &Context) -> Probed {
    let Some(ing) = ctx.objects.iter().find(|o| o.kind == "Ingress").map(doc) else {
        return Ok(ingress_disabled());
    };
    let c = client(ctx)?;
    let hosts: Vec<String> = ing["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["host"].as_str().map(str::to_owned))
        .collect();
    let tls = ing["spec"]["tls"].as_array().cloned().unwrap_or_default();
    let covered: BTreeSet<&str> =
        tls.iter().flat_map(|t| t["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str)).collect();
    let mut problems: Vec<String> = hosts
        .iter()
        .filter(|h| !covered.contains(h.as_str()))
        .map(|h| format!("host {h} is served without TLS"))
        .collect();
    let mut ok = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ctx.namespace);
    for t in &tls {
        let Some(name) = t["secretName"].as_str() else {
            problems.push("a tls entry without secretName".into());
            continue;
        };
        let Some(secret) = get_opt(&secrets, name, "reading the TLS Secret").await? else {
            problems
                .push(format!("TLS Secret {name} does not exist in {} (certificate not issued yet?)", ctx.namespace));
            continue;
        };
        let Some(crt) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else {
            problems.push(format!("Secret {name} has no tls.crt"));
            continue;
        };
        match pem_not_after(&crt.0) {
            Ok(after) => {
                let days = (after - ctx.now).num_hours() as f64 / 24.0;
                if after - ctx.now < chrono::Duration::days(MIN_CERT_DAYS) {
                    problems.push(format!(
                        "certificate in Secret {name} expires {} ({days:.1} days left, need {MIN_CERT_DAYS})",
                        after.format("%Y-%m-%d %H:%M UTC")
                    ));
                } else {
                    ok.push(format!("{name} valid until {} ({:.0} days)", after.format("%Y-%m-%d"), days));
                }
            }
            Err(e) => problems.push(format!("Secret {name}: {e}")),
        }
    }
    Ok(if problems.is_empty() {
        Finding::pass(format!("{} host(s) under TLS; {}", hosts.len(), ok.join("; ")))
    } else {
        Finding::fail(problems.join("; "))
            .hint("check cert-manager's Certificate and its renewal (kubectl describe certificate)")
    })
}

/// Annotations that make an ingress controller limit request rates.
const RATE_LIMIT_ANNOTATIONS: &[&str] = &[
    "nginx.ingress.kubernetes.io/limit-rps",
    "nginx.ingress.kubernetes.io/limit-rpm",
    "nginx.ingress.kubernetes.io/limit-connections",
    "nginx.org/limit-req-rate",
    "haproxy.org/rate-limit-requests",
];

async fn rate_limit(ctx: &Context) -> Probed {
    let own = ctx.values.server.rate_limit_per_second > 0.0;
    let Some((name, _)) = rendered(ctx, "Ingress") else {
        return Ok(if own {
            Finding::pass(format!(
                "the server limits each API key to {}/s (no Ingress)",
                ctx.values.server.rate_limit_per_second
            ))
        } else {
            ingress_disabled()
        });
    };
    let c = client(ctx)?;
    let api: Api<Ingress> = Api::namespaced(c.clone(), &ctx.namespace);
    let Some(live) = get_opt(&api, &name, "reading the Ingress").await? else {
        return Ok(Finding::fail(format!("Ingress {name} is not deployed in namespace {}", ctx.namespace))
            .hint("deploy the release (audctl deploy)"));
    };
    let ann = live.metadata.annotations.unwrap_or_default();
    let set: Vec<String> =
        RATE_LIMIT_ANNOTATIONS.iter().filter_map(|k| ann.get(*k).map(|v| format!("{k}={v}"))).collect();
    let ignored: Vec<&String> =
        ann.keys().filter(|k| k.contains("rate-limit") && !RATE_LIMIT_ANNOTATIONS.contains(&k.as_str())).collect();
    let ignored_note = if ignored.is_empty() {
        String::new()
    } else {
        format!(
            "; {} no controller reads ({})",
            if ignored.len() == 1 { "an annotation" } else { "annotations" },
            ignored.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    Ok(if !set.is_empty() {
        Finding::pass(format!("Ingress {name}: {}{ignored_note}", set.join(", ")))
    } else if own {
        Finding::pass(format!(
            "the server limits each API key to {}/s; Ingress {name} has no rate-limit annotation{ignored_note}",
            ctx.values.server.rate_limit_per_second
        ))
    } else {
        Finding::fail(format!("Ingress {name} has no rate-limit annotation{ignored_note}"))
            .hint("ingress-nginx: nginx.ingress.kubernetes.io/limit-rpm or limit-rps in ingress.annotations")
    })
}

async fn alert_rules(ctx: &Context) -> Probed {
    let c = client(ctx)?;
    let Some((name, labels)) = rendered(ctx, "PrometheusRule") else {
        return Ok(Finding::fail("prometheusRule.enabled is false: no alert fires for the service")
            .hint("--set prometheusRule.enabled=true"));
    };
    let missing =
        missing_crds(&c, &["prometheusrules.monitoring.coreos.com", "prometheuses.monitoring.coreos.com"]).await?;
    if !missing.is_empty() {
        return Ok(Finding::fail(format!("prometheus-operator CRDs missing: {}", missing.join(", "))));
    }
    let rules = dynamic(&c, "monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules", Some(&ctx.namespace));
    let Some(live) = get_opt(&rules, &name, "reading the PrometheusRule").await? else {
        return Ok(Finding::fail(format!("PrometheusRule {name} is not loaded in namespace {}", ctx.namespace))
            .hint("deploy the release (audctl deploy) with prometheusRule.enabled=true"));
    };
    let groups = live.data["spec"]["groups"].as_array().map(Vec::len).unwrap_or(0);
    let alerts: usize = live.data["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_array().map(|r| r.iter().filter(|r| !r["alert"].is_null()).count()).unwrap_or(0))
        .sum();
    let live_labels = labels_json(&live.metadata.labels.clone().unwrap_or_default());
    let labels = if live_labels.is_empty() { labels } else { live_labels };
    let ns_labels = namespace_labels(&c, &ctx.namespace).await?.unwrap_or_default();
    let proms = list(
        &dynamic(&c, "monitoring.coreos.com", "v1", "Prometheus", "prometheuses", None),
        &ListParams::default(),
        "listing Prometheus resources",
    )
    .await?;
    let picking: Vec<String> = proms
        .iter()
        .filter(|p| prometheus_selects(p, "ruleSelector", "ruleNamespaceSelector", &labels, &ctx.namespace, &ns_labels))
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default()
            )
        })
        .collect();
    Ok(if alerts == 0 {
        Finding::fail(format!("PrometheusRule {name} has no alerting rule"))
    } else if picking.is_empty() {
        Finding::fail(format!(
            "PrometheusRule {name} ({alerts} alerts) is loaded but no Prometheus selects it ({})",
            selector_text(&labels)
        ))
        .hint("match the Prometheus ruleSelector/ruleNamespaceSelector, or set prometheusRule.labels")
    } else {
        Finding::pass(format!(
            "PrometheusRule {name}: {alerts} alerts in {groups} groups, selected by {}",
            picking.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    fn spread(files: &[&str], sets: &[&str]) -> Option<(usize, usize, &'static str)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let files: Vec<_> = files.iter().map(|f| root.join(f)).collect();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let values = crate::values::load(&files, &sets).expect("values");
        super::one_server_pod_per_node(&values).map(|s| (s.pods, s.needed, s.source))
    }

    #[test]
    fn required_anti_affinity_needs_a_node_per_pod_and_surge() {
        // values-prod: maxReplicas 20, a quarter more to roll (rounded up).
        assert_eq!(spread(&["values/values-prod.yaml"], &[]), Some((20, 25, "autoscaling.maxReplicas")));
        let fixed = ["autoscaling.enabled=false", "replicaCount=3"];
        assert_eq!(spread(&["values/values-prod.yaml"], &fixed), Some((3, 4, "replicaCount")));
        // The default affinity is preferred: no constraint on the node count.
        assert_eq!(spread(&[], &[]), None);
    }
}
