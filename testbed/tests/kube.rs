//! The Kubernetes testbed is a real cluster for kube-rs: server-side apply, the scheduler spreading
//! pods over zones, kwok making them Ready, CRD schemas enforced, and nothing left behind.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::await_condition;
use serde_json::json;
use testbed::kube::layout::KUBERNETES_VERSION;
use testbed::kube::{CONTEXT, ZONES};
use testbed::{Kube, KubeOptions, kube_with};

async fn client(kube: &Kube) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(kube.kubeconfig())?;
    let options = KubeConfigOptions { context: Some(CONTEXT.to_owned()), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    Ok(kube::Client::try_from(config)?)
}

fn available(deployment: Option<&Deployment>) -> bool {
    let Some(status) = deployment.and_then(|d| d.status.as_ref()) else { return false };
    let condition_true = status.conditions.iter().flatten().any(|c| c.type_ == "Available" && c.status == "True");
    condition_true && status.available_replicas == Some(3)
}

#[tokio::test]
async fn deployment_becomes_available_spread_over_three_zones() -> anyhow::Result<()> {
    let kube = kube_with(KubeOptions { crds: false, ..Default::default() }).await?;
    let client = client(&kube).await?;
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}},
                    }],
                    "containers": [{
                        "name": "web",
                        "image": "registry.example/web:1",
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    }],
                },
            },
        },
    }))?;
    deployments.patch("web", &PatchParams::apply("testbed-test"), &Patch::Apply(&deployment)).await?;

    let wait = await_condition(deployments.clone(), "web", available);
    tokio::time::timeout(Duration::from_secs(60), wait).await.map_err(|_| {
        anyhow::anyhow!("deployment web not Available within 60s; logs in {}", kube.log_dir().display())
    })??;

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let mut node_names = BTreeSet::new();
    let mut zones = BTreeSet::new();
    for pod in pods.list(&ListParams::default().labels("app=web")).await? {
        let name = pod.spec.and_then(|s| s.node_name).ok_or_else(|| anyhow::anyhow!("pod not scheduled"))?;
        let node = nodes.get(&name).await?;
        let zone = node.metadata.labels.unwrap_or_default().remove("topology.kubernetes.io/zone");
        zones.insert(zone.ok_or_else(|| anyhow::anyhow!("node {name} has no zone label"))?);
        node_names.insert(name);
    }
    assert_eq!(node_names.len(), 3, "pods on {node_names:?}");
    assert!(node_names.iter().all(|n| kube.nodes().contains(n)), "pods on {node_names:?}, not kwok nodes");
    assert_eq!(zones, ZONES.iter().map(|z| z.to_string()).collect(), "pods in zones {zones:?}");
    Ok(())
}

#[tokio::test]
async fn crd_objects_are_validated_by_their_schema() -> anyhow::Result<()> {
    let kube = kube_with(KubeOptions { nodes: 1, crds: true }).await?;

    // kubectl works with the same kubeconfig and talks to the version we built.
    let out = kube.kubectl().args(["version", "-o", "json"]).output()?;
    assert!(out.status.success(), "kubectl version: {}", String::from_utf8_lossy(&out.stderr));
    let version: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(version["serverVersion"]["gitVersion"], KUBERNETES_VERSION, "{version}");

    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "servicemonitors");
    let monitors: Api<DynamicObject> = Api::default_namespaced_with(client(&kube).await?, &resource);
    let monitor = |port: serde_json::Value| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "audit"},
            "spec": {
                "selector": {"matchLabels": {"app": "audit"}},
                "endpoints": [{"port": port, "interval": "30s", "path": "/metrics"}],
            },
        }))?)
    };
    let params = PatchParams::apply("testbed-test");

    let applied = monitors.patch("audit", &params, &Patch::Apply(monitor(json!("http"))?)).await?;
    assert_eq!(applied.data["spec"]["endpoints"][0]["port"], "http");

    // A plain create goes through the CRD's OpenAPI schema validation: 422 naming the field.
    let mut invalid = monitor(json!(8080))?;
    invalid.metadata.name = Some("audit-invalid".into());
    match monitors.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("spec.endpoints[0].port"), "rejection does not name the field: {status:?}");
        }
        other => panic!("integer port accepted by the ServiceMonitor schema: {other:?}"),
    }
    // Server-side apply refuses it too, earlier, when it builds the typed object from the schema.
    let applied = monitors.patch("audit", &params, &Patch::Apply(monitor(json!(8080))?)).await;
    assert!(
        matches!(&applied, Err(kube::Error::Api(s)) if s.message.contains("expected string")),
        "integer port applied: {applied:?}"
    );
    Ok(())
}

#[tokio::test]
async fn dropping_the_cluster_stops_every_process() -> anyhow::Result<()> {
    let kube = kube_with(KubeOptions { nodes: 1, crds: false }).await?;
    let pids = kube.pids();
    let kubeconfig = kube.kubeconfig().to_owned();
    assert_eq!(pids.len(), 5, "etcd, apiserver, controller-manager, scheduler, kwok");
    // A killed test run's control plane would be found and swept by the next start.
    testbed::scratch::check_swept_if_abandoned(&pids)?;
    drop(kube);
    // Not killpg(pid, None): it also counts zombies, which a slow reaper may leave for a while.
    let live = testbed::process::live_group_members(&pids);
    assert!(live.is_empty(), "processes of groups {pids:?} survived the drop: {live:?}");
    assert!(!kubeconfig.exists(), "{} left behind", kubeconfig.display());
    Ok(())
}
