//! `audctl backup kafka` on the testbed's real Kafka (KRaft, 1 broker): retention checked against
//! the guide's 7 days, offsets per partition recorded, --export copies every record.

mod backup_support;

use std::time::Duration;

use anyhow::{Context, anyhow};
use audctl_targets::{KafkaTarget, Targets};
use backup_support::{audctl, sha256sum, targets_file};
use base64::Engine;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

async fn topic(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    partitions: i32,
    retention_ms: &str,
) -> anyhow::Result<()> {
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1)).set("retention.ms", retention_ms);
    for r in admin.create_topics(&[t], &AdminOptions::new()).await? {
        r.map_err(|(n, c)| anyhow!("creating {n}: {c}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_retention_and_export() -> anyhow::Result<()> {
    let kafka = testbed::kafka(1).await?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    topic(&admin, "audit-events", 3, "604800000").await?;
    topic(&admin, "short-lived", 1, "86400000").await?;
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).set("acks", "all").create()?;
    let mut per_partition = [0i64; 3];
    for i in 0..90 {
        let key = format!("tenant-{}", i % 5);
        let value = format!("{{\"seq\":{i}}}");
        let p = i % 3;
        producer
            .send(FutureRecord::to("audit-events").key(&key).payload(&value).partition(p), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow!("produce: {e}"))?;
        per_partition[p as usize] += 1;
    }

    let dir = tempfile::tempdir()?;
    let targets = Targets {
        kafka: Some(KafkaTarget { bootstrap_servers: kafka.target().bootstrap_servers, topic: "audit-events".into() }),
        ..Default::default()
    };
    let targets = targets_file(dir.path(), &targets);
    let t = targets.to_str().unwrap_or_default();
    let repo = dir.path().join("repo");
    let r = repo.to_str().unwrap_or_default();

    let b = audctl(&["--targets", t, "-o", "json", "backup", "kafka", "--repo", r, "--export"]).await.ok().json();
    let c = &b["consistency"];
    assert_eq!(c["retentionMs"], 604800000, "{b}");
    assert_eq!(c["retentionOk"], true, "{b}");
    for p in 0..3 {
        assert_eq!(c["partitions"][p.to_string()], serde_json::json!([0, per_partition[p]]), "{b}");
    }
    assert_eq!(c["exported"], 90, "{b}");
    let id = b["id"].as_str().context("id")?;
    let dir0 = repo.join("kafka").join(id);
    let mut seqs = Vec::new();
    for f in b["files"].as_array().context("files")? {
        let path = dir0.join(f["path"].as_str().context("path")?);
        assert_eq!(f["sha256"].as_str(), Some(sha256sum(&path).as_str()));
        for line in std::fs::read_to_string(&path)?.lines() {
            let rec: Value = serde_json::from_str(line)?;
            let value = base64::engine::general_purpose::STANDARD.decode(rec["value"].as_str().context("value")?)?;
            let v: Value = serde_json::from_slice(&value)?;
            seqs.push(v["seq"].as_i64().context("seq")?);
        }
    }
    seqs.sort();
    assert_eq!(seqs, (0..90).collect::<Vec<i64>>());

    let v = audctl(&["-o", "json", "backup", "--repo", r, "verify", id]).await.ok().json();
    assert!(
        v["checks"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "exported records" && c["actual"] == "90")),
        "{v}"
    );

    // One day of retention is below the guide's 7: recorded, but exit 1 with the reason.
    let out = audctl(&["--targets", t, "backup", "kafka", "--repo", r, "--topic", "short-lived"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("24 h") && out.stderr.contains("7 days"), "{}", out.stderr);

    // A topic that does not exist.
    let out = audctl(&["--targets", t, "backup", "kafka", "--repo", r, "--topic", "nope"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
    Ok(())
}
