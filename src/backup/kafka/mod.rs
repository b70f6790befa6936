//! Kafka: the guide backs Kafka up "continuously, by log retention, 7 days". `audctl backup kafka`
//! checks the audit topic's retention covers 7 days and records the earliest and latest offset of
//! every partition (what a replay could start from); `--export` also copies the topic's records into
//! the backup, one JSON line per record (key, value and headers base64), one file per partition.

pub mod restore;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::manifest::Manifest;
use super::progress::Bytes;
use super::{Component, Ctx};
use crate::cli::KafkaBackupArgs;
use crate::error::{Unreachable, usage};
use crate::evidence::{Evidence, Outcome};

/// The guide's Kafka retention: 7 days.
pub const REQUIRED_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
pub(super) const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KafkaPoint {
    pub topic: String,
    /// `retention.ms` of the topic (-1: unlimited).
    pub retention_ms: i64,
    pub retention_ok: bool,
    /// partition -> [earliest, latest) offsets.
    pub partitions: BTreeMap<i32, (i64, i64)>,
    /// Records copied with --export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<u64>,
}

/// The admin and consumer settings of backup and restore: no offsets committed, reads by offset.
pub(super) fn client_config(servers: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("socket.timeout.ms", "20000");
    config
}

pub(super) fn unreachable(servers: &str, e: impl std::fmt::Display) -> anyhow::Error {
    Unreachable { what: format!("Kafka at {servers}"), detail: e.to_string() }.into()
}

/// The topic as the target cluster has it now.
pub(super) struct Existing {
    /// partition -> [earliest, latest) offsets.
    pub(super) partitions: BTreeMap<i32, (i64, i64)>,
}

impl Existing {
    pub(super) fn records(&self) -> i64 {
        self.partitions.values().map(|(low, high)| high - low).sum()
    }
}

/// The topic's partitions, `None` when it does not exist; also the number of brokers.
pub(super) fn describe(
    consumer: &BaseConsumer,
    servers: &str,
    topic: &str,
) -> anyhow::Result<(Option<Existing>, usize)> {
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(|e| unreachable(servers, e))?;
    let brokers = md.brokers().len();
    let Some(tm) = md.topics().iter().find(|t| t.name() == topic) else { return Ok((None, brokers)) };
    if tm.error().is_some() || tm.partitions().is_empty() {
        return Ok((None, brokers));
    }
    let mut partitions = BTreeMap::new();
    for p in tm.partitions() {
        let marks = consumer.fetch_watermarks(topic, p.id(), TIMEOUT).map_err(|e| unreachable(servers, e))?;
        partitions.insert(p.id(), marks);
    }
    Ok((Some(Existing { partitions }), brokers))
}

pub async fn backup(ctx: &Ctx<'_>, args: &KafkaBackupArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let t = ctx
        .targets()
        .and_then(|t| t.kafka.clone())
        .ok_or_else(|| usage("no Kafka: the targets file (--targets FILE) needs a `kafka:` entry"))?;
    let servers = t.bootstrap_servers.join(",");
    let topic = args.topic.clone().unwrap_or(t.topic.clone());
    let config = client_config(&servers, "audctl-backup");
    let admin: AdminClient<DefaultClientContext> = config.create().context("creating the Kafka admin client")?;
    let configs = tokio::time::timeout(
        TIMEOUT,
        admin
            .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new().request_timeout(Some(TIMEOUT))),
    )
    .await
    .map_err(|_| unreachable(&servers, "no answer in 20 s"))?
    .map_err(|e| unreachable(&servers, e))?;
    let resource = configs
        .into_iter()
        .next()
        .context("no config result")?
        .map_err(|code| anyhow!("topic {topic}: {code} (does it exist?)"))?;
    let retention_ms: i64 = resource
        .get("retention.ms")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("topic {topic}: no retention.ms in its configuration (does the topic exist?)"))?;
    let retention_ok = !(0..REQUIRED_RETENTION_MS).contains(&retention_ms);

    let consumer: BaseConsumer = config.create().context("creating the Kafka consumer")?;
    let (partitions, version) = match tokio::task::block_in_place(|| describe(&consumer, &servers, &topic))? {
        (Some(t), brokers) => (t.partitions, format!("{brokers} brokers")),
        (None, _) => bail!("topic {topic}: not in the cluster's metadata (does the topic exist?)"),
    };

    let mut staging = ctx.repo.begin(Component::Kafka, started)?;
    let mut exported = None;
    if args.export {
        let progress = Bytes::new(format!("exporting {topic}"), None);
        let count = tokio::task::block_in_place(|| export(&consumer, &topic, &partitions, &mut staging, &progress))?;
        progress.finish();
        exported = Some(count);
    }
    let point = KafkaPoint { topic: topic.clone(), retention_ms, retention_ok, partitions, exported };
    let manifest = Manifest::new(
        staging.id.clone(),
        Component::Kafka,
        started,
        Utc::now(),
        staging.files().to_vec(),
        version,
        servers.clone(),
        serde_json::to_value(&point)?,
    );
    staging.commit(&manifest)?;
    ctx.emit(&super::ManifestReport(manifest.clone()))?;
    let mut evidence = super::backup_evidence(&manifest).figure("retentionMs", retention_ms);
    if !retention_ok {
        eprintln!(
            "retention of {topic} is {} h, the guide requires 7 days (168 h): set retention.ms >= {REQUIRED_RETENTION_MS}",
            retention_ms / 3_600_000
        );
        evidence.outcome = Outcome::Failure;
        evidence.summary = format!("kafka topic {topic}: retention {} h < 7 days", retention_ms / 3_600_000);
    }
    Ok(evidence)
}

/// Read every partition from its earliest to its latest recorded offset into `topic/<p>.jsonl`.
fn export(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &BTreeMap<i32, (i64, i64)>,
    staging: &mut super::repo::Staging,
    progress: &Bytes,
) -> anyhow::Result<u64> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut total = 0u64;
    for (&p, &(low, high)) in partitions {
        let mut file = staging.create(&format!("topic/{p}.jsonl"))?;
        if high > low {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            consumer.assign(&tpl)?;
            let mut next = low;
            let mut idle = Instant::now();
            while next < high {
                match consumer.poll(Duration::from_millis(500)) {
                    None => {
                        if idle.elapsed() > Duration::from_secs(120) {
                            bail!("partition {p}: no record after offset {next} for 120 s (expected up to {high})");
                        }
                    }
                    Some(Err(e)) => return Err(anyhow!("reading partition {p}: {e}")),
                    Some(Ok(m)) => {
                        idle = Instant::now();
                        if m.offset() >= high {
                            break;
                        }
                        let headers: Vec<serde_json::Value> = m
                            .headers()
                            .map(|h| h.iter().map(|x| json!([x.key, x.value.map(|v| b64.encode(v))])).collect())
                            .unwrap_or_default();
                        let line = json!({
                            "partition": p,
                            "offset": m.offset(),
                            "timestamp": m.timestamp().to_millis(),
                            "key": m.key().map(|k| b64.encode(k)),
                            "value": m.payload().map(|v| b64.encode(v)),
                            "headers": headers,
                        });
                        let mut text = serde_json::to_vec(&line)?;
                        text.push(b'\n');
                        file.write(&text)?;
                        progress.add(text.len() as u64);
                        total += 1;
                        next = m.offset() + 1;
                    }
                }
            }
        }
        let entry = file.finish()?;
        staging.add(entry);
    }
    consumer.unassign().ok();
    Ok(total)
}

/// `backup verify`: checksums, and the exported records are all there and in offset order.
pub fn verify(stored: &super::repo::Stored) -> anyhow::Result<Vec<super::Check>> {
    use super::Check;
    let point: KafkaPoint =
        serde_json::from_value(stored.manifest.consistency.clone()).context("unreadable Kafka point")?;
    let n = super::repo::verify_files(stored, |_| true, &Bytes::hidden())?;
    let mut checks = vec![Check::new("checksums", stored.manifest.files.len(), format!("{n} files intact"), true)];
    if let Some(expected) = point.exported {
        // Decoded as a restore would read them: a line that does not decode, or out of order,
        // would stop a restore half-way, so it fails the verification here.
        let (records, ok) = match restore::partition_files(stored, &point) {
            Ok(files) => {
                let n: u64 = files.iter().map(|f| f.records).sum();
                (n.to_string(), n == expected)
            }
            Err(e) => (format!("{e:#}"), false),
        };
        checks.push(Check::new("exported records", expected, records, ok));
    }
    checks.push(Check::new("retention >= 7 days", REQUIRED_RETENTION_MS, point.retention_ms, point.retention_ok));
    Ok(checks)
}
