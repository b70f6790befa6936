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

/// A targets file naming `kafka` and `topic` in `dir`, and where the repository goes.
fn targets_and_repo(
    dir: &std::path::Path,
    kafka: &testbed::Kafka,
    topic: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let targets = Targets {
        kafka: Some(KafkaTarget { bootstrap_servers: kafka.target().bootstrap_servers, topic: topic.into() }),
        ..Default::default()
    };
    (targets_file(dir, &targets), dir.join("repo"))
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
    let (targets, repo) = targets_and_repo(dir.path(), &kafka, "audit-events");
    let (t, r) = (targets.to_str().unwrap_or_default(), repo.to_str().unwrap_or_default());

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

type Rec = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>, Option<i64>);

/// Every record of `topic`, per partition in offset order, read by this test's own consumer: the
/// reference the restore is compared with.
fn read_topic(servers: &str, topic: &str) -> anyhow::Result<std::collections::BTreeMap<i32, Vec<Rec>>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", servers).set("group.id", "test-reference").create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(20))?;
    let t = md.topics().iter().find(|t| t.name() == topic).context("topic metadata")?;
    let mut all = std::collections::BTreeMap::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(20))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(low))?;
        consumer.assign(&tpl)?;
        let mut records = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (records.len() as i64) < high - low {
            anyhow::ensure!(std::time::Instant::now() < deadline, "{topic}/{}: records missing", p.id());
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                let m = m?;
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec))).collect())
                    .unwrap_or_default();
                records.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                    m.timestamp().to_millis(),
                ));
            }
        }
        all.insert(p.id(), records);
    }
    Ok(all)
}

/// `restore kafka` puts every exported record back in its partition, in order, with its key, value,
/// headers and timestamp; refuses a non-empty topic without --force, a backup without records, and
/// a corrupted backup file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_replays_every_record_in_order() -> anyhow::Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    let kafka = testbed::kafka(1).await?;
    let servers = &kafka.bootstrap_servers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", servers).create()?;
    topic(&admin, "events", 3, "604800000").await?;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", servers).set("acks", "all").create()?;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..120i64 {
        let seq = (i / 3).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "sequence", value: Some(seq.as_bytes()) })
            .insert(Header { key: "trace", value: if i % 4 == 0 { None } else { Some(&b"t"[..]) } });
        let key = format!("tenant-{}", i % 5);
        let value = format!("{{\"n\":{i}}}");
        let mut record =
            FutureRecord::to("events").partition((i % 3) as i32).headers(headers).timestamp(now - 1000 + i);
        // Some records without a key, one without a value (a tombstone).
        if i % 7 != 0 {
            record = record.key(&key);
        }
        if i != 5 {
            record = record.payload(&value);
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow!("produce: {e}"))?;
    }
    let source = tokio::task::spawn_blocking({
        let s = servers.to_owned();
        move || read_topic(&s, "events")
    })
    .await??;
    assert_eq!(source.values().map(Vec::len).sum::<usize>(), 120);

    let dir = tempfile::tempdir()?;
    let (targets, repo) = targets_and_repo(dir.path(), &kafka, "events");
    let (t, r) = (targets.to_str().unwrap_or_default(), repo.to_str().unwrap_or_default());
    let b = audctl(&["--targets", t, "-o", "json", "backup", "kafka", "--repo", r, "--export"]).await.ok().json();
    let id = b["id"].as_str().context("id")?.to_owned();

    let restore = |extra: &[&str]| {
        let mut args = vec!["--targets", t, "-o", "json", "restore", "kafka", "--repo", r, &id, "--yes"];
        args.extend_from_slice(extra);
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move { audctl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let out = restore(&["--topic", "events-restored"]).await.ok();
    let report = out.json();
    let checks = report["checks"].as_array().context("checks")?;
    assert!(checks.iter().all(|c| c["ok"] == true), "{report:#}");
    assert!(checks.iter().any(|c| c["actual"] == "120 records, identical"), "{report:#}");
    assert!(out.stderr.contains("offsets: partition 0: backup 0..40 -> restored 0..40"), "{}", out.stderr);
    let restored = tokio::task::spawn_blocking({
        let s = servers.to_owned();
        move || read_topic(&s, "events-restored")
    })
    .await??;
    assert_eq!(restored, source);
    // Created as the backup's topic was: its partitions and retention.
    let configs = admin
        .describe_configs(&[rdkafka::admin::ResourceSpecifier::Topic("events-restored")], &AdminOptions::new())
        .await?;
    let config = configs.into_iter().next().context("config")?.map_err(|c| anyhow!("{c}"))?;
    assert_eq!(config.get("retention.ms").and_then(|e| e.value.as_deref()), Some("604800000"));

    // Not over records already there, unless --force (which recreates the topic: 120, not 240).
    let out = restore(&["--topic", "events-restored"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not empty (120 records)") && out.stderr.contains("--force"), "{}", out.stderr);
    let out = restore(&["--topic", "events-restored", "--force"]).await.ok();
    assert!(out.json()["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{}", out.stdout);
    let again = tokio::task::spawn_blocking({
        let s = servers.to_owned();
        move || read_topic(&s, "events-restored")
    })
    .await??;
    assert_eq!(again, source);

    // A backup of offsets only has nothing to replay.
    let plain = audctl(&["--targets", t, "-o", "json", "backup", "kafka", "--repo", r]).await.ok().json();
    let plain_id = plain["id"].as_str().context("id")?;
    let out = audctl(&["--targets", t, "restore", "kafka", "--repo", r, plain_id, "--yes", "--topic", "x"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("without --export"), "{}", out.stderr);

    // A line that does not decode (here with its checksum made to match, as a faulty writer would
    // leave it) fails `backup verify` and stops a restore before anything is written.
    let dir0 = repo.join("kafka").join(&id);
    let file2 = dir0.join("topic").join("2.jsonl");
    let text = std::fs::read_to_string(&file2)?;
    let first = text.lines().next().context("a line")?;
    let broken = r#"{"partition":2,"offset":0,"timestamp":null,"key":"@@","value":null,"headers":[]}"#;
    std::fs::write(&file2, text.replacen(first, broken, 1))?;
    let manifest_path = dir0.join("manifest.json");
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path)?)?;
    for f in manifest["files"].as_array_mut().context("files")? {
        if f["path"] == "topic/2.jsonl" {
            f["sha256"] = sha256sum(&file2).into();
            f["size"] = std::fs::metadata(&file2)?.len().into();
        }
    }
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
    let v = audctl(&["-o", "json", "backup", "--repo", r, "verify", &id]).await;
    assert_eq!(v.code, Some(1), "{}\n{}", v.stdout, v.stderr);
    let row = v.json()["checks"].as_array().and_then(|c| c.iter().find(|c| c["name"] == "exported records").cloned());
    let actual = row.as_ref().and_then(|r| r["actual"].as_str()).unwrap_or_default().to_owned();
    assert!(actual.contains("topic/2.jsonl line 1") && actual.contains("not base64"), "{row:?}");
    let out = restore(&["--topic", "never-created"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("topic/2.jsonl line 1"), "{}", out.stderr);

    // A corrupted file is refused before anything is written: the topic is not even created.
    let file = repo.join("kafka").join(&id).join("topic").join("1.jsonl");
    let mut bytes = std::fs::read(&file)?;
    let at = bytes.iter().position(|b| *b == b'A').context("a base64 A")?;
    bytes[at] = b'B';
    std::fs::write(&file, bytes)?;
    let out = restore(&["--topic", "never-created"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("topic/1.jsonl is corrupted"), "{}", out.stderr);
    let names = tokio::task::spawn_blocking({
        let s = servers.to_owned();
        move || -> anyhow::Result<Vec<String>> {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &s).create()?;
            Ok(c.fetch_metadata(None, Duration::from_secs(20))?.topics().iter().map(|t| t.name().to_owned()).collect())
        }
    })
    .await??;
    assert!(!names.iter().any(|n| n == "never-created"), "{names:?}");
    Ok(())
}
