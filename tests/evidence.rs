//! Evidence records round-trip through a real kube-apiserver: written as labelled ConfigMaps, read
//! back newest first, pruned to the last N per verb, and visible to kubectl (the team's view).

use audctl::evidence::{self, Evidence, KEEP_PER_VERB, Outcome};
use audctl::kube::KubeSettings;
use chrono::{Duration, Utc};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use testbed::{KubeOptions, kube_with};

#[tokio::test]
async fn records_round_trip_newest_first_and_are_pruned() -> anyhow::Result<()> {
    let kube = kube_with(KubeOptions { crds: false, ..Default::default() }).await?;
    let target = kube.target();
    let settings = KubeSettings { kubeconfig: target.kubeconfig, context: target.context };
    let client = settings.client().await?;
    let ns = "audit-trail";
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(ns.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;

    let t0 = Utc::now() - Duration::hours(3);
    let mut old = Evidence::new("smoke", Outcome::Success, "old smoke", t0).subject("staging");
    old.finished = t0 + Duration::minutes(1);
    let failed = Evidence::new("smoke", Outcome::Failure, "newest smoke failed", Utc::now()).subject("staging");
    let load = Evidence::new("load", Outcome::Success, "p99 10 ms", Utc::now()).figure("p99Ms", 10);
    let old_name = evidence::record(&client, ns, &old).await?;
    evidence::record(&client, ns, &failed).await?;
    evidence::record(&client, ns, &load).await?;

    let smokes = evidence::list(&client, ns, Some("smoke")).await?;
    assert_eq!(
        smokes.iter().map(|s| s.evidence.summary.as_str()).collect::<Vec<_>>(),
        ["newest smoke failed", "old smoke"]
    );
    // The newest *successful* one is the old one; for another subject there is none.
    let latest = evidence::latest_success(&client, ns, "smoke", Some("staging")).await?;
    assert_eq!(latest.map(|s| s.name), Some(old_name.clone()));
    assert!(evidence::latest_success(&client, ns, "smoke", Some("production")).await?.is_none());
    assert_eq!(evidence::list(&client, ns, None).await?.len(), 3);

    // kubectl sees the same record through the labels, with the JSON in its data.
    let out = kube
        .kubectl()
        .args(["get", "configmap", "-n", ns, "-l", "audctl.io/verb=load,audctl.io/outcome=success"])
        .args(["-o", "jsonpath={.items[*].data.record\\.json}"])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let parsed: serde_json::Value = serde_json::from_str(&text)?;
    assert_eq!(parsed["figures"]["p99Ms"], 10, "{text}");
    assert_eq!(parsed["verb"], "load");

    // Pruning keeps the newest KEEP_PER_VERB of a verb; the oldest smoke record goes first.
    for i in 0..KEEP_PER_VERB {
        evidence::record(&client, ns, &Evidence::new("smoke", Outcome::Success, format!("run {i}"), Utc::now()))
            .await?;
    }
    let smokes = evidence::list(&client, ns, Some("smoke")).await?;
    assert_eq!(smokes.len(), KEEP_PER_VERB);
    assert!(smokes.iter().all(|s| s.name != old_name), "the oldest record was not pruned");
    assert_eq!(evidence::list(&client, ns, Some("load")).await?.len(), 1, "pruning one verb touched another");
    Ok(())
}

#[tokio::test]
async fn unreachable_cluster_is_exit_3() -> anyhow::Result<()> {
    let kube = kube_with(KubeOptions { crds: false, ..Default::default() }).await?;
    let target = kube.target();
    let settings = KubeSettings { kubeconfig: target.kubeconfig, context: target.context };
    let client = settings.client().await?;
    drop(kube);
    let ev = Evidence::new("check", Outcome::Success, "x", Utc::now());
    let err = evidence::record(&client, "default", &ev).await.expect_err("the cluster is gone");
    assert_eq!(audctl::error::Failure::classify(&err).code(), 3, "{err:#}");
    Ok(())
}
