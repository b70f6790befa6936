//! `cargo xtask bench deploy`: time from start to all-ready of the prod render on the testbed, for
//! `audctl deploy` and, in the same run on the same objects, for `kubectl apply --server-side` +
//! `kubectl rollout status` (the Deployment and the StatefulSet). Each round uses fresh namespaces;
//! the median of the rounds is reported. No operator runs in the testbed, so a thread writes the
//! status the operators would to their resources (CloudNativePG, ECK, Strimzi, external-secrets) as
//! soon as they appear; kubectl does not wait for those at all.
//!
//! `cargo run --release --example bench_deploy -- [ROUNDS]` (default 3).

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let rt = tokio::runtime::Runtime::new()?;
    let k = rt.block_on(testbed::kube())?;
    let client = rt.block_on(async {
        let config = kube::config::Kubeconfig::read_from(k.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
        anyhow::Ok(kube::Client::try_from(config)?)
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let operators = rt.spawn(act_as_operators(client, stop.clone()));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prod = root.join("values/values-prod.yaml");

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let ns = format!("bench-audctl-{round}");
        let start = Instant::now();
        let code = audctl::run([
            "audctl".to_owned(),
            "-v".into(),
            "--kubeconfig".into(),
            k.kubeconfig().display().to_string(),
            "-o".into(),
            "json".into(),
            "deploy".into(),
            "-f".into(),
            prod.display().to_string(),
            "--set".into(),
            format!("namespace.name={ns}"),
            "--timeout".into(),
            "5m".into(),
        ]);
        if code != std::process::ExitCode::SUCCESS {
            bail!("audctl deploy failed in round {round}");
        }
        ours.push(start.elapsed().as_secs_f64());

        let ns = format!("bench-kubectl-{round}");
        let values = audctl::values::load(std::slice::from_ref(&prod), &[format!("namespace.name={ns}")])?;
        let stream = audctl::render::to_stream(&audctl::render::render(&values, None)?);
        let start = Instant::now();
        let mut apply = k
            .kubectl()
            .args(["apply", "--server-side", "--field-manager=bench", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        apply.stdin.take().context("stdin")?.write_all(stream.as_bytes())?;
        if !apply.wait()?.success() {
            bail!("kubectl apply failed in round {round}");
        }
        for workload in ["deployment/audit-trail", "statefulset/audit-trail-redis"] {
            let status = k
                .kubectl()
                .args(["rollout", "status", workload, "-n", &ns, "--timeout=5m"])
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("kubectl rollout status {workload} failed in round {round}");
            }
        }
        theirs.push(start.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: audctl deploy {:.2}s, kubectl apply + rollout status {:.2}s",
            ours[round], theirs[round]
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rt.block_on(operators);
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "deploy of the prod render, start to all ready (median of {rounds}): audctl {a:.2}s, kubectl {b:.2}s, ratio {:.2} \
         (audctl also waits for StatefulSet, HPA, PDB and the operators' resources, records the revision and evidence)",
        a / b
    );
    drop(k);
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The status each operator would write once its resource is up, in every namespace.
async fn act_as_operators(c: kube::Client, stop: Arc<AtomicBool>) {
    let kinds = [
        ("postgresql.cnpg.io", "v1", "Cluster", "clusters"),
        ("elasticsearch.k8s.elastic.co", "v1", "Elasticsearch", "elasticsearches"),
        ("kafka.strimzi.io", "v1", "Kafka", "kafkas"),
        ("kafka.strimzi.io", "v1", "KafkaTopic", "kafkatopics"),
        ("external-secrets.io", "v1", "ExternalSecret", "externalsecrets"),
    ];
    // The checkpoint volume of values-prod (`integrity.checkpointClaimName`) is the storage team's,
    // not the release's: created here as they would, in each bench namespace.
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "audit-trail-checkpoints"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    while !stop.load(Ordering::Relaxed) {
        let namespaces: Api<Namespace> = Api::all(c.clone());
        if let Ok(list) = namespaces.list(&ListParams::default()).await {
            for ns in list.items.iter().filter_map(|n| n.metadata.name.as_deref()).filter(|n| n.starts_with("bench-")) {
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
                let apply = PatchParams::apply("storage-team");
                let _ = claims.patch("audit-trail-checkpoints", &apply, &Patch::Apply(&claim)).await;
            }
        }
        for (group, version, kind, plural) in kinds {
            let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
            let all: Api<DynamicObject> = Api::all_with(c.clone(), &ar);
            let Ok(list) = all.list(&ListParams::default()).await else { continue };
            for o in list.items {
                if o.data.get("status").is_some_and(|s| !s.is_null()) {
                    continue;
                }
                let (Some(name), Some(ns)) = (o.metadata.name.clone(), o.metadata.namespace.clone()) else { continue };
                let generation = o.metadata.generation.unwrap_or(1);
                let status = if kind == "Elasticsearch" {
                    json!({"health": "green", "phase": "Ready", "observedGeneration": generation})
                } else {
                    json!({"observedGeneration": generation, "conditions": [{"type": "Ready", "status": "True",
                        "reason": "Ready", "message": "written by the bench acting as the operator",
                        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string()}]})
                };
                let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns, &ar);
                let _ =
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status}))).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
