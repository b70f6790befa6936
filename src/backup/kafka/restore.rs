//! `audctl restore kafka`: replay a backup taken with `backup kafka --export` into a topic. Every
//! record goes back to the partition it came from, in its offset order, with its key, value,
//! headers and timestamp, through an idempotent producer (acks=all), so a retry inside the run
//! neither duplicates nor reorders. Afterwards every partition is read back and compared with the
//! backup record by record. The restored records get new offsets (a topic cannot be written at
//! chosen offsets): the plan and the report show the mapping.

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::{KafkaPoint, TIMEOUT, describe, unreachable};
use crate::backup::progress::Bytes;
use crate::backup::{Check, Component, Ctx, RestoreReport, repo};
use crate::cli::KafkaRestoreArgs;
use crate::error::usage;
use crate::evidence::Evidence;
use crate::output;

/// Deliveries awaited at most at once: bounds memory whatever the topic's size.
const IN_FLIGHT: usize = 10_000;

/// One line of `topic/<partition>.jsonl`, as `backup kafka --export` writes it.
#[derive(Debug, Deserialize, PartialEq)]
struct Line {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    headers: Vec<(String, Option<String>)>,
}

/// A record decoded from its line.
#[derive(Debug, PartialEq)]
struct Record {
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Line {
    fn decode(self) -> anyhow::Result<Record> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = |v: Option<String>, what: &str| -> anyhow::Result<Option<Vec<u8>>> {
            v.map(|s| b64.decode(s).with_context(|| format!("{what}: not base64"))).transpose()
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in self.headers {
            let v = bytes(v, &format!("header {k:?}"))?;
            headers.push((k, v));
        }
        Ok(Record {
            offset: self.offset,
            timestamp: self.timestamp.filter(|t| *t >= 0),
            key: bytes(self.key, "key")?,
            value: bytes(self.value, "value")?,
            headers,
        })
    }
}

/// Each partition's file of the backup, read line by line (a topic need not fit in memory).
pub(super) struct PartitionFile {
    partition: i32,
    path: PathBuf,
    /// Shown in messages: the path inside the backup.
    name: String,
    pub(super) records: u64,
    oldest: Option<i64>,
}

impl PartitionFile {
    /// The records in file order, each line checked: its partition, its offset after the last.
    fn records(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Record>> + '_> {
        let file = std::fs::File::open(&self.path).with_context(|| format!("opening {}", self.name))?;
        let mut last: Option<i64> = None;
        Ok(std::io::BufReader::new(file).lines().enumerate().map(move |(n, line)| {
            let at = || format!("{} line {}", self.name, n + 1);
            let line: Line = serde_json::from_str(&line.with_context(at)?).with_context(|| {
                format!("{}: expected an exported record (partition, offset, timestamp, key, value, headers)", at())
            })?;
            if line.partition != self.partition {
                bail!("{}: a record of partition {} in the file of partition {}", at(), line.partition, self.partition);
            }
            if let Some(l) = last
                && line.offset <= l
            {
                bail!("{}: offset {} after {l}: the records are not in offset order", at(), line.offset);
            }
            last = Some(line.offset);
            line.decode().with_context(at)
        }))
    }
}

/// The partition files of the backup, each checked to decode before anything is written.
pub(super) fn partition_files(stored: &repo::Stored, point: &KafkaPoint) -> anyhow::Result<Vec<PartitionFile>> {
    let mut files = Vec::new();
    for &partition in point.partitions.keys() {
        let name = format!("topic/{partition}.jsonl");
        let path = stored.dir.join(&name);
        if !stored.manifest.files.iter().any(|f| f.path == name) {
            bail!("backup {}: no {name} in its manifest", stored.manifest.id);
        }
        let mut file = PartitionFile { partition, path, name, records: 0, oldest: None };
        let (mut records, mut oldest) = (0u64, None::<i64>);
        for r in file.records()? {
            let r = r?;
            records += 1;
            if let Some(t) = r.timestamp {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        (file.records, file.oldest) = (records, oldest);
        files.push(file);
    }
    Ok(files)
}

fn bootstrap(ctx: &Ctx<'_>, target: Option<&str>) -> anyhow::Result<String> {
    let servers: Vec<String> = match target {
        Some(t) => t.split(',').map(|s| s.trim().to_owned()).collect(),
        None => ctx.targets().and_then(|t| t.kafka.as_ref()).map(|k| k.bootstrap_servers.clone()).ok_or_else(|| {
            usage("no Kafka: pass --target host:port[,host:port] or add `kafka:` to the targets file")
        })?,
    };
    for s in &servers {
        let port = s.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        if !matches!(port, Some((h, Ok(_))) if !h.is_empty()) {
            return Err(usage(format!("Kafka target {s:?}: expected host:port (e.g. kafka-0:9092), comma-separated")));
        }
    }
    Ok(servers.join(","))
}

pub async fn restore(ctx: &Ctx<'_>, args: &KafkaRestoreArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let t0 = Instant::now();
    let stored = ctx.repo.open(&args.common.id, Component::Kafka)?;
    let m = &stored.manifest;
    let point: KafkaPoint = serde_json::from_value(m.consistency.clone()).context("unreadable Kafka point")?;
    if point.exported.is_none() {
        return Err(usage(format!(
            "backup {} holds offsets only (taken without --export), no records to restore: the topic's retention \
             is that backup; take one with `audctl backup kafka --export` to have records to replay",
            m.id
        )));
    }
    let checked = repo::verify_files(&stored, |_| true, &Bytes::hidden())?;
    let files = partition_files(&stored, &point)?;
    let total: u64 = files.iter().map(|f| f.records).sum();
    let servers = bootstrap(ctx, args.common.target.as_deref())?;
    let topic = args.topic.clone().unwrap_or_else(|| point.topic.clone());
    let needed = point.partitions.keys().max().map_or(1, |p| p + 1);

    let config = super::client_config(&servers, "audctl-restore");
    let admin: AdminClient<DefaultClientContext> = config.create().context("creating the Kafka admin client")?;
    let consumer: BaseConsumer = config.create().context("creating the Kafka consumer")?;
    let (existing, brokers) = tokio::task::block_in_place(|| describe(&consumer, &servers, &topic))?;
    let target = format!("{servers} topic {topic}");
    if let Some(e) = &existing {
        if e.records() > 0 && !args.common.force {
            return Err(usage(format!(
                "topic {topic} on {servers} is not empty ({} records): refusing to restore over it; pass --force to \
                 delete and recreate it, or --topic NAME for another topic",
                e.records()
            )));
        }
        if (e.partitions.len() as i32) < needed && !args.common.force {
            return Err(usage(format!(
                "topic {topic} on {servers} has {} partitions, the backup {needed}: each record goes back to its \
                 partition; pass --force to recreate the topic, or --topic NAME for a new one",
                e.partitions.len()
            )));
        }
    }
    let recreate = existing.as_ref().is_some_and(|e| e.records() > 0 || (e.partitions.len() as i32) < needed);
    let replication = brokers.clamp(1, 3) as i32;

    eprintln!("restore plan:");
    eprintln!(
        "  backup   {} ({total} records of topic {} in {needed} partitions; {checked} files checked)",
        m.id, point.topic
    );
    eprintln!(
        "  target   {target}: {}",
        match &existing {
            None => format!(
                "created with {needed} partitions, replication {replication}, retention.ms {}",
                point.retention_ms
            ),
            Some(_) if recreate => format!(
                "deleted and recreated (--force) with {needed} partitions, replication {replication}, retention.ms {} \
                 (its other settings are not kept)",
                point.retention_ms
            ),
            Some(e) => format!("exists, empty, {} partitions", e.partitions.len()),
        }
    );
    eprintln!(
        "  method   each record to its partition in order (idempotent producer, acks=all), key, value, headers, timestamp"
    );
    eprintln!("  verify   every partition read back and compared record by record; duration against the RTO");
    eprintln!(
        "  offsets  the records get new offsets; consumer groups' committed offsets of the old topic do not apply"
    );
    if let Some(oldest) = files.iter().filter_map(|f| f.oldest).min()
        && point.retention_ms >= 0
        && Utc::now().timestamp_millis() - oldest > point.retention_ms
    {
        eprintln!(
            "  warning  records older than the topic's retention ({} h) keep their timestamps: the brokers will \
             delete them at their next retention check unless retention.ms is raised first",
            point.retention_ms / 3_600_000
        );
    }
    crate::backup::confirm(args.common.yes, "Restore?")?;

    if recreate {
        let deleted = admin.delete_topics(&[&topic], &AdminOptions::new().request_timeout(Some(TIMEOUT))).await;
        for r in deleted.map_err(|e| unreachable(&servers, e))? {
            r.map_err(|(t, code)| anyhow!("deleting topic {t}: {code}"))?;
        }
    }
    if existing.is_none() || recreate {
        create(&admin, &servers, &topic, needed, replication, point.retention_ms).await?;
    }
    // Where the restored records start in each partition: 0 for a new topic.
    let start = wait_ready(&consumer, &servers, &topic, needed).await?;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "120000")
        .create()
        .context("creating the Kafka producer")?;
    let progress = Bytes::count(format!("restored into {topic}"), Some(total), "records");
    for f in &files {
        produce(&producer, &topic, f, &progress).await.map_err(|e| {
            e.context(format!(
                "restore stopped: topic {topic} holds part of the backup; run it again with --force to start over"
            ))
        })?;
    }
    progress.finish();

    let compared = tokio::task::block_in_place(|| compare(&consumer, &servers, &topic, &files, &start))?;
    let mut report = RestoreReport {
        backup: m.id.clone(),
        component: Component::Kafka,
        target: target.clone(),
        point_in_time: None,
        duration_seconds: 0.0,
        checks: compared,
    };
    report.add_rto(t0.elapsed());
    for f in &files {
        let (low, high) = point.partitions.get(&f.partition).copied().unwrap_or_default();
        let from = start.get(&f.partition).copied().unwrap_or_default();
        eprintln!(
            "offsets: partition {}: backup {low}..{high} -> restored {from}..{}",
            f.partition,
            from + f.records as i64
        );
    }
    output::emit(ctx.global.output, &report)?;
    Ok(report.evidence(started))
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    servers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    retention_ms: i64,
) -> anyhow::Result<()> {
    let retention = retention_ms.to_string();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication)).set("retention.ms", &retention);
    // A topic just deleted is removed in the background: creating it again is refused meanwhile.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let results = admin
            .create_topics([&new], &AdminOptions::new().request_timeout(Some(TIMEOUT)))
            .await
            .map_err(|e| unreachable(servers, e))?;
        match results.into_iter().next() {
            Some(Ok(_)) => return Ok(()),
            Some(Err((_, code)))
                if code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(Err((t, code))) => bail!("creating topic {t}: {code}"),
            None => bail!("creating topic {topic}: no answer"),
        }
    }
}

/// Wait until every partition has a leader; the high watermarks then are where the restored
/// records will start.
async fn wait_ready(
    consumer: &BaseConsumer,
    servers: &str,
    topic: &str,
    needed: i32,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = tokio::task::block_in_place(|| describe(consumer, servers, topic));
        match got {
            Ok((Some(e), _)) if e.partitions.len() as i32 >= needed => {
                return Ok(e.partitions.into_iter().map(|(p, (_, high))| (p, high)).collect());
            }
            Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Ok(_) => bail!("topic {topic} on {servers}: its {needed} partitions had no leader within 60 s"),
            Err(e) => return Err(e),
        }
    }
}

async fn produce(producer: &FutureProducer, topic: &str, f: &PartitionFile, progress: &Bytes) -> anyhow::Result<()> {
    let mut pending = VecDeque::new();
    // Read as it is produced (local file, short lines): the delivery window bounds memory.
    for r in f.records()? {
        let r = r?;
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: v.as_deref() });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(f.partition).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            record = record.payload(v.as_slice());
        }
        if let Some(t) = r.timestamp {
            record = record.timestamp(t);
        }
        match producer.send_result(record) {
            Ok(delivery) => pending.push_back((r.offset, delivery)),
            Err((e, _)) => bail!("partition {}: producing the record of backup offset {}: {e}", f.partition, r.offset),
        }
        while pending.len() >= IN_FLIGHT {
            await_one(&mut pending, f.partition, progress).await?;
        }
    }
    while !pending.is_empty() {
        await_one(&mut pending, f.partition, progress).await?;
    }
    Ok(())
}

async fn await_one(
    pending: &mut VecDeque<(i64, rdkafka::producer::DeliveryFuture)>,
    partition: i32,
    progress: &Bytes,
) -> anyhow::Result<()> {
    let Some((offset, delivery)) = pending.pop_front() else { return Ok(()) };
    match delivery.await {
        Ok(Ok(_)) => {
            progress.add(1);
            Ok(())
        }
        Ok(Err((e, _))) => bail!("partition {partition}: the record of backup offset {offset} was not written: {e}"),
        Err(_) => bail!("partition {partition}: the producer stopped before the record of backup offset {offset}"),
    }
}

/// Read every partition back from where the restore started and compare it with the backup.
fn compare(
    consumer: &BaseConsumer,
    servers: &str,
    topic: &str,
    files: &[PartitionFile],
    start: &BTreeMap<i32, i64>,
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let mut first_difference = None;
    let mut identical = 0u64;
    for f in files {
        let from = start.get(&f.partition).copied().unwrap_or(0);
        let (_, high) = consumer.fetch_watermarks(topic, f.partition, TIMEOUT).map_err(|e| unreachable(servers, e))?;
        let written = high - from;
        checks.push(Check::new(
            format!("records partition {}", f.partition),
            f.records,
            written,
            written == f.records as i64,
        ));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, f.partition, Offset::Offset(from))?;
        consumer.assign(&tpl)?;
        let mut next = from;
        let mut idle = Instant::now();
        for expected in f.records()? {
            let expected = expected?;
            if next >= high {
                first_difference.get_or_insert_with(|| {
                    format!("partition {}: backup offset {} missing", f.partition, expected.offset)
                });
                break;
            }
            let m = loop {
                match consumer.poll(Duration::from_millis(500)) {
                    Some(Ok(m)) => break m,
                    Some(Err(e)) => bail!("reading partition {} back: {e}", f.partition),
                    None if idle.elapsed() > Duration::from_secs(60) => {
                        bail!("reading partition {} back: nothing after offset {next} for 60 s", f.partition)
                    }
                    None => {}
                }
            };
            idle = Instant::now();
            next = m.offset() + 1;
            let headers: Vec<(String, Option<Vec<u8>>)> = m
                .headers()
                .map(|h| h.iter().map(|x| (x.key.to_owned(), x.value.map(<[u8]>::to_vec))).collect())
                .unwrap_or_default();
            let got = Record {
                offset: expected.offset,
                timestamp: if expected.timestamp.is_some() { m.timestamp().to_millis() } else { None },
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            };
            if got == expected {
                identical += 1;
            } else {
                first_difference.get_or_insert_with(|| {
                    let what = if got.value != expected.value {
                        "value"
                    } else if got.key != expected.key {
                        "key"
                    } else if got.headers != expected.headers {
                        "headers"
                    } else {
                        "timestamp"
                    };
                    format!(
                        "partition {} offset {}: {what} differs from backup offset {}",
                        f.partition,
                        m.offset(),
                        expected.offset
                    )
                });
            }
        }
        consumer.unassign().ok();
    }
    let total: u64 = files.iter().map(|f| f.records).sum();
    checks.push(Check::new(
        "records identical to the backup (order, key, value, headers, timestamp)",
        format!("{total} records"),
        first_difference.clone().unwrap_or_else(|| format!("{identical} records, identical")),
        first_difference.is_none() && identical == total,
    ));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exported_line_decodes_with_null_key_and_header_value() {
        let line: Line = serde_json::from_str(
            r#"{"partition":2,"offset":7,"timestamp":1700000000000,"key":null,"value":"aGk=","headers":[["seq","Mw=="],["empty",null]]}"#,
        )
        .expect("line");
        let r = line.decode().expect("decode");
        assert_eq!(
            r,
            Record {
                offset: 7,
                timestamp: Some(1_700_000_000_000),
                key: None,
                value: Some(b"hi".to_vec()),
                headers: vec![("seq".into(), Some(b"3".to_vec())), ("empty".into(), None)],
            }
        );
    }

    #[test]
    fn a_value_that_is_not_base64_is_refused() {
        let line: Line = serde_json::from_str(r#"{"partition":0,"offset":0,"timestamp":null,"key":"@@","value":null}"#)
            .expect("line");
        assert!(format!("{:#}", line.decode().expect_err("bad key")).contains("key: not base64"));
    }
}
