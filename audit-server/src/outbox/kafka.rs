//! The Kafka relay: publishes the outbox to the audit topic, one message per event (key = tenant,
//! value = the stored event with its hash exactly as `GET /api/v1/events/{id}` returns it, headers
//! `tenantId`, `sequence`, `eventId`, `hash`, `stream`, `type`), so that a crash, a broker outage
//! or relays on several replicas never lose, duplicate or reorder a tenant's events on the topic.
//!
//! The reasoning, case by case:
//!
//! - **Lost**: an event has an outbox row iff it committed (same transaction), and the row is
//!   purged only after Kafka acknowledged the message with acks=all (min.insync.replicas of the
//!   topic decides how many copies that is) and the relay recorded it.
//! - **Reordered or duplicated by one producer**: `enable.idempotence` (the broker drops retried
//!   batches it already has and refuses out-of-order ones), `acks=all`, and no message timeout
//!   (`message.timeout.ms=0`): librdkafka documents that messages timing out in its queue leave
//!   gaps (1, 4, 5), and a later retry of 2 and 3 would put them after 5. Without a timeout a
//!   broker outage only delays delivery, and `enable.gapless.guarantee` turns any other failure
//!   in a series into a fatal error instead of a gap. The relay enqueues a batch in chain order
//!   and stops enqueuing at the first refusal, so what reaches a partition is always a prefix.
//!   Key = tenant and a fixed partition count keep a tenant on one partition (murmur2, as Java
//!   clients hash keys).
//! - **Duplicated across producers** (a relay crashes after Kafka acknowledged a batch and before
//!   its cursors committed; a fatal error; another replica takes over): the outbox cannot know
//!   what was published, so the topic says it. Every message carries its tenant and sequence,
//!   and the relay records, with its cursors, the offset of each partition below which every
//!   message is accounted for. A relay starting to lead, or recovering from any failure, first
//!   reads each partition from that offset to its end, moves the cursors past what it finds
//!   there (for this database's `stream` only) and purges those rows: they are skipped, not sent
//!   again. Reading only the last message of each partition would not do: a partition holds many
//!   tenants, and their outbox positions commit out of order.
//! - **Two relays at once**: a lease (see the outbox module) elects one. A leader starts a batch
//!   only with at least half the lease left, renews the lease every quarter while it waits for
//!   acknowledgements, and if it cannot renew it purges its producer queue and drops the producer
//!   with a quarter of the lease still left. The next leader takes over only after the lease
//!   expired, so the former leader's last requests have had that quarter to land before the new
//!   leader reads the partition ends. The remaining risk is a request stuck inside a broker
//!   longer than that (say a leader appended it and its replication stalls for more than a
//!   quarter of the lease): Kafka transactions would fence it, at the price of every consumer
//!   having to read with isolation.level=read_committed. Consumers can always deduplicate by the
//!   `tenantId` and `sequence` headers.
//!
//! Readiness does not depend on Kafka: while Kafka is down the outbox grows, the lag metrics rise
//! and the PrometheusRule alerts; appends go on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::time::Instant;

use super::floor::Floor;
use super::{Advanced, KAFKA, Pending, Progress, Purge};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// librdkafka calls (metadata, watermarks) that block; a broker answers in milliseconds.
const BLOCKING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the partition ends may take before the resync is retried.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// The relay producer's defaults, overridable with `AUDIT_KAFKA_PROPERTIES`. `linger.ms` 20, not
/// 5: perf of the bench's server process put librdkafka's broker threads at 18,600 CPU cycles per
/// event published with 5 (mostly clock_gettime, waking every linger period), 3,000 with 20, and
/// the brokers' JVMs at 0.25 of a core instead of 0.28. A batch waits 15 ms more before it is
/// sent; the publishing lag alert is at minutes.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("linger.ms", "20")];

/// Message headers (the dedup key is `stream` + `tenantId` + `sequence`).
pub const HEADER_TENANT: &str = "tenantId";
pub const HEADER_SEQUENCE: &str = "sequence";
pub const HEADER_EVENT_ID: &str = "eventId";
pub const HEADER_HASH: &str = "hash";
pub const HEADER_STREAM: &str = "stream";
pub const HEADER_TYPE: &str = "type";

pub struct Relay {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub config: KafkaConfig,
    /// This database's stream id (see `outbox_consumers`).
    pub stream: String,
    /// This relay's lease holder name (unique per process).
    pub holder: String,
}

/// Why leading stopped.
enum Ended {
    /// Shutting down.
    Stopped,
    /// The lease is gone (another replica leads, or it could not be renewed in time).
    LeaseLost,
}

impl Relay {
    /// Follow (try to take the lease) and lead (publish) until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let ttl = self.config.lease;
        loop {
            if *stop.borrow() {
                break;
            }
            let asked = Instant::now();
            match self.store.outbox_lease(KAFKA, &self.holder, ttl).await {
                Ok(true) => {
                    tracing::info!(topic = %self.config.topic, "kafka relay: leading");
                    self.metrics.kafka.leader.store(1, std::sync::atomic::Ordering::Relaxed);
                    let ended = self.lead(asked, &mut stop).await;
                    self.metrics.kafka.leader.store(0, std::sync::atomic::Ordering::Relaxed);
                    match ended {
                        Ended::Stopped => break,
                        Ended::LeaseLost => tracing::warn!("kafka relay: lease lost, following"),
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "kafka relay: taking the lease failed"),
            }
            // A follower checks a few times per lease period.
            if wait(&mut stop, ttl / 4).await {
                break;
            }
        }
        if let Err(e) = self.store.outbox_release(KAFKA, &self.holder).await {
            tracing::warn!(error = %e, "kafka relay: releasing the lease failed");
        }
    }

    /// Lead while the lease holds. `valid_from`: when the lease was last asked for (its expiry is
    /// at least that plus the lease period).
    async fn lead(&self, mut valid_from: Instant, stop: &mut watch::Receiver<bool>) -> Ended {
        let ttl = self.config.lease;
        let mut backoff = Duration::from_millis(500);
        // A new floor per lease term: starting from 0 again is always safe, and cheap once a term.
        let mut floor = Floor::default();
        'producer: loop {
            let producer = match self.producer() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "kafka relay: creating the producer failed");
                    if wait(stop, backoff).await {
                        return Ended::Stopped;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            // Learn what a predecessor (or this relay, before a failure) published but did not record.
            let mut offsets = loop {
                match self.resync(&mut valid_from).await {
                    Ok(Some(offsets)) => break offsets,
                    Ok(None) => {
                        discard(producer).await;
                        return Ended::LeaseLost;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "kafka relay: reading the topic's end failed");
                        if wait(stop, backoff).await {
                            discard(producer).await;
                            return Ended::Stopped;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            };
            loop {
                if *stop.borrow() {
                    discard(producer).await;
                    return Ended::Stopped;
                }
                if valid_from.elapsed() > ttl / 4 {
                    match self.renew(&mut valid_from).await {
                        Some(true) => {}
                        Some(false) => {
                            discard(producer).await;
                            return Ended::LeaseLost;
                        }
                        None if valid_from.elapsed() > ttl / 2 => {
                            discard(producer).await;
                            return Ended::LeaseLost;
                        }
                        None => {
                            if wait(stop, Duration::from_millis(500)).await {
                                discard(producer).await;
                                return Ended::Stopped;
                            }
                            continue;
                        }
                    }
                }
                let (pending, rows) = match self
                    .store
                    .outbox_read(KAFKA, self.config.batch_max_events, &mut floor, &self.metrics)
                    .await
                {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka relay: reading the outbox failed");
                        if wait(stop, backoff).await {
                            discard(producer).await;
                            return Ended::Stopped;
                        }
                        continue;
                    }
                };
                let pending = in_chain_order(pending);
                if pending.is_empty() {
                    if wait(stop, self.config.poll_interval).await {
                        discard(producer).await;
                        return Ended::Stopped;
                    }
                    continue;
                }
                // A batch starts only with at least half the lease left (see the module comment).
                if valid_from.elapsed() > ttl / 2 {
                    continue;
                }
                match self.publish(&producer, &pending, &mut valid_from, stop).await {
                    Published::All(delivered) => {
                        backoff = Duration::from_millis(500);
                        self.metrics.kafka.published.fetch_add(pending.len() as u64, RELAXED);
                        let mut handled = BTreeMap::new();
                        for p in &pending {
                            handled.insert(p.row.tenant_id.clone(), p.row.sequence);
                        }
                        for (partition, offset) in delivered {
                            let next = offsets.entry(partition).or_insert(0);
                            *next = (*next).max(offset + 1);
                        }
                        // Rows an event of which waits behind a gap stay for the next read.
                        let positions = rows.complete(pending.iter().map(|p| p.position));
                        let progress = Progress {
                            consumer: KAFKA,
                            holder: &self.holder,
                            ttl,
                            handled: &handled,
                            purge: Purge::Rows(&positions),
                            offsets: Some((&self.config.topic, &offsets)),
                        };
                        let asked = Instant::now();
                        match self.store.outbox_advance(&progress).await {
                            Ok(Advanced::Recorded { xid }) => {
                                valid_from = asked;
                                floor.recorded(xid, &positions);
                                // A partial batch: the relay keeps up; let the next one fill for a
                                // poll interval (fewer, larger produce requests and cursor writes).
                                if !rows.cut() && wait(stop, self.config.poll_interval).await {
                                    discard(producer).await;
                                    return Ended::Stopped;
                                }
                            }
                            Ok(Advanced::LeaseLost) => {
                                discard(producer).await;
                                return Ended::LeaseLost;
                            }
                            // Published but not recorded: the topic knows, ask it before going on.
                            Err(e) => {
                                tracing::warn!(error = %e, "kafka relay: recording published events failed");
                                if wait(stop, backoff).await {
                                    discard(producer).await;
                                    return Ended::Stopped;
                                }
                                discard(producer).await;
                                continue 'producer;
                            }
                        }
                    }
                    Published::Failed(e, failed) => {
                        self.metrics.kafka.failed.fetch_add(failed, RELAXED);
                        tracing::error!(error = %format!("{e:#}"), failed, "kafka relay: publishing failed");
                        discard(producer).await;
                        if wait(stop, backoff).await {
                            return Ended::Stopped;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue 'producer;
                    }
                    Published::LeaseLost => {
                        discard(producer).await;
                        return Ended::LeaseLost;
                    }
                    Published::Stopped => {
                        discard(producer).await;
                        return Ended::Stopped;
                    }
                }
            }
        }
    }

    /// Renew the lease: Some(held) or None when the database did not answer.
    async fn renew(&self, valid_from: &mut Instant) -> Option<bool> {
        let asked = Instant::now();
        match self.store.outbox_lease(KAFKA, &self.holder, self.config.lease).await {
            Ok(true) => {
                *valid_from = asked;
                Some(true)
            }
            Ok(false) => Some(false),
            Err(e) => {
                tracing::warn!(error = %e, "kafka relay: renewing the lease failed");
                None
            }
        }
    }

    fn producer(&self) -> anyhow::Result<FutureProducer> {
        producer_config(&self.config).create().context("creating the Kafka producer (check AUDIT_KAFKA_PROPERTIES)")
    }

    /// Enqueue the batch in order and wait for every acknowledgement, renewing the lease meanwhile.
    async fn publish(
        &self,
        producer: &FutureProducer,
        batch: &[Pending],
        valid_from: &mut Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> Published {
        let ttl = self.config.lease;
        let mut futures = Vec::with_capacity(batch.len());
        let mut refused = None;
        for p in batch {
            let message = match Outgoing::of(p, &self.stream) {
                Ok(m) => m,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            };
            let record =
                FutureRecord::to(&self.config.topic).key(&message.key).payload(&message.value).headers(message.headers);
            match producer.send_result(record) {
                Ok(f) => futures.push(f),
                Err((e, _)) => {
                    // Nothing after a refused message is enqueued: the partition gets a prefix.
                    refused = Some(
                        anyhow!(e)
                            .context(format!("Kafka refused event {} of tenant {}", p.row.sequence, p.row.tenant_id)),
                    );
                    break;
                }
            }
        }
        let enqueued = futures.len();
        let all = join_all(futures);
        tokio::pin!(all);
        let mut renew_at = *valid_from + ttl / 4;
        let results = loop {
            tokio::select! {
                results = &mut all => break results,
                _ = tokio::time::sleep_until(renew_at) => match self.renew(valid_from).await {
                    Some(true) => renew_at = *valid_from + ttl / 4,
                    Some(false) => return Published::LeaseLost,
                    // Not renewed with a quarter of the lease left: give up while the next
                    // leader still has to wait that quarter (see the module comment).
                    None if valid_from.elapsed() > ttl * 3 / 4 => return Published::LeaseLost,
                    None => renew_at = Instant::now() + Duration::from_millis(500),
                },
                _ = stop.changed() => return Published::Stopped,
            }
        };
        let mut delivered = Vec::with_capacity(results.len());
        let mut failed = (batch.len() - enqueued) as u64;
        let mut first_error = refused;
        for r in results {
            match r {
                Ok(Ok(d)) => delivered.push((d.partition, d.offset)),
                Ok(Err((e, _))) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| anyhow!(e).context("delivery failed"));
                }
                Err(_) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| anyhow!("the producer dropped a delivery report"));
                }
            }
        }
        match first_error {
            None => Published::All(delivered),
            Some(e) => Published::Failed(e, failed),
        }
    }

    /// Read every partition from its recorded offset to its end and record what is already there
    /// (cursors moved past it, its rows purged, offsets set to the ends). None: the lease is gone.
    async fn resync(&self, valid_from: &mut Instant) -> anyhow::Result<Option<BTreeMap<i32, i64>>> {
        let from = self.store.outbox_kafka_offsets(&self.config.topic).await?;
        let (config, stream) = (self.config.clone(), self.stream.clone());
        let found = tokio::task::spawn_blocking(move || read_ends(&config, &stream, &from))
            .await
            .context("the resync task panicked")??;
        let skipped: u64 = found.messages;
        let progress = Progress {
            consumer: KAFKA,
            holder: &self.holder,
            ttl: self.config.lease,
            handled: &found.last_sequences,
            purge: Purge::Passed,
            offsets: Some((&self.config.topic, &found.ends)),
        };
        let asked = Instant::now();
        if self.store.outbox_advance(&progress).await? == Advanced::LeaseLost {
            return Ok(None);
        }
        *valid_from = asked;
        if skipped > 0 {
            tracing::info!(
                messages = skipped,
                tenants = found.last_sequences.len(),
                "kafka relay: events already on the topic were recorded, not sent again"
            );
        }
        self.metrics.kafka.resynced.fetch_add(skipped, RELAXED);
        Ok(Some(found.ends))
    }
}

const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

enum Published {
    /// Every message acknowledged: (partition, offset) of each.
    All(Vec<(i32, i64)>),
    /// Some refused or failed (how many): the outcome of the others is known only to the topic.
    Failed(anyhow::Error, u64),
    LeaseLost,
    Stopped,
}

/// One event as a Kafka message.
struct Outgoing {
    key: String,
    value: Vec<u8>,
    headers: OwnedHeaders,
}

impl Outgoing {
    fn of(p: &Pending, stream: &str) -> anyhow::Result<Outgoing> {
        let r = &p.row;
        let sequence = r.sequence.to_string();
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: HEADER_TENANT, value: Some(r.tenant_id.as_str()) })
            .insert(Header { key: HEADER_SEQUENCE, value: Some(sequence.as_str()) })
            .insert(Header { key: HEADER_EVENT_ID, value: Some(r.id.as_str()) })
            .insert(Header { key: HEADER_HASH, value: Some(r.hash.as_str()) })
            .insert(Header { key: HEADER_STREAM, value: Some(stream) })
            .insert(Header { key: HEADER_TYPE, value: Some("event") });
        let key = r.tenant_id.clone();
        // The stored event as GET /api/v1/events/{id} returns it (its hash re-verifies).
        let event = r.to_event()?;
        Ok(Outgoing { key, value: serde_json::to_vec(&event)?, headers })
    }
}

/// Per tenant, keep only rows that continue the chain from the cursor without a gap (rows after a
/// gap wait for the next batch), sorted by sequence; tenants stay in the order of their oldest row.
fn in_chain_order(pending: Vec<Pending>) -> Vec<Pending> {
    let mut by_tenant: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
    let mut order = Vec::new();
    for p in pending {
        if !by_tenant.contains_key(&p.row.tenant_id) {
            order.push(p.row.tenant_id.clone());
        }
        by_tenant.entry(p.row.tenant_id.clone()).or_default().push(p);
    }
    let mut out = Vec::new();
    for tenant in order {
        let Some(mut rows) = by_tenant.remove(&tenant) else { continue };
        rows.sort_by_key(|p| p.row.sequence);
        let Some(first) = rows.first() else { continue };
        let from = first.after.map_or(first.row.sequence, |a| a + 1);
        out.extend((from..).zip(rows).take_while(|(next, p)| p.row.sequence == *next).map(|(_, p)| p));
    }
    out
}

/// What the ends of the partitions hold.
struct Found {
    /// Tenant -> highest sequence of this stream found.
    last_sequences: BTreeMap<String, i64>,
    /// Partition -> its end (high watermark) when read.
    ends: BTreeMap<i32, i64>,
    /// Messages of this stream found.
    messages: u64,
}

/// Blocking: read each partition of the topic from `from` (its low watermark when absent or
/// out of range) to the high watermark taken at the start.
fn read_ends(config: &KafkaConfig, stream: &str, from: &BTreeMap<i32, i64>) -> anyhow::Result<Found> {
    let mut c = client_config(config);
    c.set("client.id", "audit-server-outbox-resync")
        .set("group.id", "audit-server-outbox-resync")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("allow.auto.create.topics", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = c.create().context("creating the Kafka consumer")?;
    let topic = config.topic.as_str();
    let metadata = consumer.fetch_metadata(Some(topic), BLOCKING_TIMEOUT).context("reading topic metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        bail!("topic {topic} does not exist (create it with the partitions and replication it needs)");
    }
    let mut found = Found { last_sequences: BTreeMap::new(), ends: BTreeMap::new(), messages: 0 };
    let mut assignment = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, BLOCKING_TIMEOUT).context("reading watermarks")?;
        found.ends.insert(p, high);
        let start = from.get(&p).copied().unwrap_or(low).clamp(low, high);
        if start < high {
            assignment.add_partition_offset(topic, p, Offset::Offset(start))?;
            remaining.insert(p, high);
        }
    }
    if remaining.is_empty() {
        return Ok(found);
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + RESYNC_TIMEOUT;
    while !remaining.is_empty() {
        if std::time::Instant::now() > deadline {
            bail!("reading the end of topic {topic} took over {RESYNC_TIMEOUT:?}");
        }
        let Some(result) = consumer.poll(Duration::from_millis(500)) else {
            // Offsets without a message (compaction, control records): ask where the consumer is.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    if let (Offset::Offset(at), Some(end)) = (e.offset(), remaining.get(&e.partition()))
                        && at >= *end
                    {
                        remaining.remove(&e.partition());
                    }
                }
            }
            continue;
        };
        let m = result.context("reading the topic")?;
        let partition = m.partition();
        let Some(end) = remaining.get(&partition).copied() else { continue };
        if m.offset() < end
            && let Some(headers) = m.headers()
        {
            let header = |name: &str| {
                headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
            };
            if header(HEADER_STREAM) == Some(stream)
                && header(HEADER_TYPE) == Some("event")
                && let (Some(tenant), Some(sequence)) =
                    (header(HEADER_TENANT), header(HEADER_SEQUENCE).and_then(|s| s.parse::<i64>().ok()))
            {
                found.messages += 1;
                let last = found.last_sequences.entry(tenant.to_owned()).or_insert(sequence);
                *last = (*last).max(sequence);
            }
        }
        if m.offset() + 1 >= end {
            remaining.remove(&partition);
        }
    }
    Ok(found)
}

/// The configured librdkafka properties and the brokers (each client adds its own settings).
fn client_config(config: &KafkaConfig) -> ClientConfig {
    client_config_over(config, &[])
}

/// The relay producer's settings: defaults, then the operator's properties, then the guarantees.
fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = client_config_over(config, PRODUCER_DEFAULTS);
    c.set("client.id", "audit-server-outbox")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true")
        .set("partitioner", "murmur2_random")
        .set("max.in.flight.requests.per.connection", "5");
    c
}

/// [`client_config`] over `defaults`: properties the operator may override (a throughput trade-off
/// such as `linger.ms`), unlike those set after it (the guarantees, [`crate::config`]'s KAFKA_FIXED).
fn client_config_over(config: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.bootstrap_servers);
    c
}

/// Signed checkpoints on the audit topic (issue 25): key = tenant, value = the checkpoint as
/// published to the checkpoint directory, headers `tenantId`, `sequence`, `hash`, `stream` and
/// `type: checkpoint`. Not through the outbox: the directory is the record, this a copy for
/// consumers of the topic (a duplicate is the same signed bytes); the relay skips these messages.
pub struct CheckpointStream {
    producer: FutureProducer,
    topic: String,
    stream: String,
}

impl CheckpointStream {
    pub fn new(config: &KafkaConfig, stream: &str) -> anyhow::Result<CheckpointStream> {
        let producer = client_config(config)
            .set("client.id", "audit-server-checkpoints")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .create()
            .context("creating the Kafka producer for checkpoints")?;
        Ok(CheckpointStream { producer, topic: config.topic.clone(), stream: stream.to_owned() })
    }

    /// Enqueue one checkpoint; its delivery is awaited (and a failure logged) in the background.
    pub fn send(&self, cp: &audit_api::checkpoint::SignedCheckpoint) {
        let Ok(value) = serde_json::to_vec(cp) else { return };
        let sequence = cp.sequence.to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: HEADER_TENANT, value: Some(cp.tenant_id.as_str()) })
            .insert(Header { key: HEADER_SEQUENCE, value: Some(sequence.as_str()) })
            .insert(Header { key: HEADER_HASH, value: Some(cp.hash.as_str()) })
            .insert(Header { key: HEADER_STREAM, value: Some(self.stream.as_str()) })
            .insert(Header { key: HEADER_TYPE, value: Some("checkpoint") });
        let record = FutureRecord::to(&self.topic).key(&cp.tenant_id).payload(&value).headers(headers);
        let tenant = cp.tenant_id.clone();
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        tracing::warn!(tenant, "checkpoint not delivered to Kafka (it is in the checkpoint directory)");
                    }
                });
            }
            Err((e, _)) => tracing::warn!(tenant, error = %e, "checkpoint not queued for Kafka"),
        }
    }
}

/// Drop a producer without delivering what it still holds (off the async threads: librdkafka's
/// destroy blocks until its threads end).
async fn discard(producer: FutureProducer) {
    let _ = tokio::task::spawn_blocking(move || {
        producer.purge(PurgeConfig::default().queue().inflight());
        drop(producer);
    })
    .await;
}

/// Sleep `d` unless stopped first; true when stopped.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredRow;

    fn pending(position: i64, tenant: &str, sequence: i64, after: Option<i64>) -> Pending {
        let row = StoredRow {
            id: format!("{tenant}-{sequence}"),
            tenant_id: tenant.into(),
            sequence,
            timestamp: String::new(),
            actor_id: String::new(),
            resource_id: String::new(),
            action_type: String::new(),
            body: String::new(),
            hash: String::new(),
            previous_hash: String::new(),
        };
        Pending { position, after, row }
    }

    #[test]
    fn operator_properties_override_the_defaults_but_not_the_guarantees() {
        let mut config = KafkaConfig::new("127.0.0.1:9092");
        let c = producer_config(&config);
        assert_eq!(c.get("linger.ms"), Some("20"));
        config.properties = vec![("linger.ms".into(), "50".into()), ("compression.type".into(), "lz4".into())];
        let c = producer_config(&config);
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("compression.type"), Some("lz4"));
        // The config loader refuses fixed keys; even if one got through, the guarantee is set last.
        config.properties = vec![("acks".into(), "1".into())];
        assert_eq!(producer_config(&config).get("acks"), Some("all"));
    }

    #[test]
    fn publishes_each_tenant_from_its_cursor_without_gaps() {
        let rows = vec![
            pending(1, "b", 8, Some(6)), // b's cursor is 6: 7 is not visible yet, b waits
            pending(2, "a", 4, Some(2)),
            pending(3, "a", 3, Some(2)), // out of position order: sorted back
            pending(4, "c", 10, None),   // never handled: starts at its oldest row
            pending(5, "a", 6, Some(2)), // after a gap (5 missing): waits
            pending(6, "c", 11, None),
        ];
        let order: Vec<String> = in_chain_order(rows).iter().map(|p| p.row.id.clone()).collect();
        assert_eq!(order, ["a-3", "a-4", "c-10", "c-11"]);
    }
}
