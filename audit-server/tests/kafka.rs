//! The Kafka event stream on the testbed's real Kafka (3 brokers, KRaft): every stored event is on
//! the audit topic exactly once per tenant sequence, in chain order, with a value that re-hashes
//! (checked by the Python verifier, which shares no code with the server), after a happy run, a
//! broker stopped and started during ingest, the server binary killed with -9 between a publish
//! and its record (then restarted), and the leading relay of two replicas killed. The topic is read
//! with rdkafka and compared with the events in the database, never with the relay's own
//! bookkeeping.

#[macro_use]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use audit_server::config::KafkaConfig;
use common::{ADMIN_KEY, Api, Backend, Db, event, ingest, start_process_with, wait_for_acks};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

on_both!(every_event_once_in_order);

const TOPIC: &str = "audit-events";
const TENANTS: &[&str] = &["t-alpha", "t-bravo", "t-charlie", "t-delta", "t-echo"];
/// Generous deadlines: three JVMs and the server share a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(300);

/// A 3-broker cluster with the audit topic: 3 partitions, replicated 3 times, min.insync 2.
async fn kafka_with_topic() -> Result<testbed::Kafka> {
    let kafka = testbed::kafka(3).await?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    let topic = NewTopic::new(TOPIC, 3, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    let results = admin.create_topics(&[topic], &AdminOptions::new().operation_timeout(Some(DEADLINE))).await?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(kafka)
}

fn kafka_config(kafka: &testbed::Kafka) -> KafkaConfig {
    KafkaConfig { lease: Duration::from_secs(4), ..KafkaConfig::new(kafka.bootstrap_servers()) }
}

/// One message of the topic.
struct Record {
    partition: i32,
    headers: BTreeMap<String, String>,
    key: String,
    value: Value,
}

/// Every message of the topic, partition by partition in offset order, up to the ends as they
/// were when called.
async fn read_topic(servers: &str) -> Result<Vec<Record>> {
    let servers = servers.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .set("group.id", "kafka-test-reader")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in 0..3 {
            let (low, high) = consumer.fetch_watermarks(TOPIC, p, Duration::from_secs(30))?;
            if high > low {
                tpl.add_partition_offset(TOPIC, p, Offset::Offset(low))?;
                ends.insert(p, high);
            }
        }
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        consumer.assign(&tpl)?;
        let start = Instant::now();
        while !ends.is_empty() {
            ensure!(start.elapsed() < Duration::from_secs(120), "reading the topic took over 120 s");
            let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
            let m = m?;
            let Some(end) = ends.get(&m.partition()).copied() else { continue };
            if m.offset() >= end {
                continue;
            }
            let mut headers = BTreeMap::new();
            for h in m.headers().map(|h| h.iter().collect::<Vec<_>>()).unwrap_or_default() {
                headers.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
            }
            by_partition.entry(m.partition()).or_default().push(Record {
                partition: m.partition(),
                headers,
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: serde_json::from_slice(m.payload().unwrap_or_default())?,
            });
            if m.offset() + 1 >= end {
                ends.remove(&m.partition());
            }
        }
        Ok(by_partition.into_values().flatten().collect())
    })
    .await?
}

/// Wait until the topic holds at least every stored event of `tenants`, then until the outbox is
/// drained (no late duplicate can still come), then read the topic once more and check it against
/// the database (through the API): per tenant, the sequences 1..=n exactly once and in order on
/// one partition, each value equal to the stored event, the headers naming it, the whole re-hashed
/// by the Python verifier. Returns the event ids found.
async fn check_topic(api: &Api, db: &Db, servers: &str, tenants: &[&str]) -> Result<HashSet<String>> {
    let mut stored = BTreeMap::new();
    for t in tenants {
        stored.insert(*t, api.all_events(t).await?);
    }
    let start = Instant::now();
    loop {
        let records = read_topic(servers).await?;
        let covered = stored.iter().all(|(t, events)| events_of(&records, t).count() >= events.len());
        if covered && outbox_rows(db).await? == 0 {
            break;
        }
        ensure!(start.elapsed() < DEADLINE, "the topic does not hold every stored event after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let records = read_topic(servers).await?;
    let mut ids = HashSet::new();
    for (tenant, events) in &stored {
        let mine: Vec<&Record> = events_of(&records, tenant).collect();
        let sequences: Vec<i64> = mine.iter().map(|r| r.headers["sequence"].parse().unwrap_or(-1)).collect();
        let expected: Vec<i64> = (1..=events.len() as i64).collect();
        ensure!(
            sequences == expected,
            "{tenant}: topic sequences {} (first differences: {:?}), database 1..={}",
            sequences.len(),
            sequences.iter().zip(&expected).filter(|(a, b)| a != b).take(5).collect::<Vec<_>>(),
            events.len()
        );
        let partitions: HashSet<i32> = mine.iter().map(|r| r.partition).collect();
        ensure!(partitions.len() == 1, "{tenant} is on several partitions: {partitions:?}");
        let mut ndjson = String::new();
        for (r, e) in mine.iter().zip(events) {
            ensure!(r.value == *e, "{tenant}: the message differs from the stored event\n{}\n{e}", r.value);
            ensure!(
                r.headers["tenantId"] == *tenant && r.headers["eventId"] == e["id"],
                "{tenant}: headers {:?}",
                r.headers
            );
            ensure!(
                r.headers["hash"] == e["hash"] && r.headers["type"] == "event",
                "{tenant}: headers {:?}",
                r.headers
            );
            ndjson.push_str(&serde_json::to_string(&r.value)?);
            ndjson.push('\n');
            ids.insert(e["id"].as_str().unwrap_or_default().to_owned());
        }
        let file = db.dir.path().join(format!("topic-{tenant}.ndjson"));
        std::fs::write(&file, ndjson)?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/verify_export.py");
        let out = std::process::Command::new("python3").arg(&script).arg(&file).output().context("running python3")?;
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && said.trim() == format!("verified {}", events.len()),
            "{tenant}: the Python verifier says {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ids)
}

/// The event messages of a tenant (checkpoints share the topic).
fn events_of<'a>(records: &'a [Record], tenant: &'a str) -> impl Iterator<Item = &'a Record> {
    records.iter().filter(move |r| r.key == tenant && r.headers.get("type").map(String::as_str) == Some("event"))
}

/// Poll a count until it is above zero (every 50 ms, up to [`DEADLINE`]).
async fn until_positive(conn: &mut sqlx::PgConnection, count: &'static str, never: &str) -> Result<()> {
    let start = Instant::now();
    while sqlx::query_scalar::<_, i64>(count).fetch_one(&mut *conn).await? <= 0 {
        ensure!(start.elapsed() < DEADLINE, "{never}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Events left in the outbox (only to know when the relay is done: the checks read the topic).
async fn outbox_rows(db: &Db) -> Result<i64> {
    db.outbox_events("true").await
}

fn stop_clients(stop: &Mutex<bool>) {
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
}

fn acked_ids(acked: &Mutex<Vec<String>>) -> Vec<String> {
    acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

async fn every_event_once_in_order(backend: Backend) -> Result<()> {
    let kafka = kafka_with_topic().await?;
    let db = Arc::new(Db::new(backend, "kafka_happy").await?);
    let mut config = db.config();
    config.kafka = Some(kafka_config(&kafka));
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = db.sample_passed_rows(sampling.clone());
    let clients: Vec<_> = (0..8).map(|c| ingest(api.clone(), TENANTS, c, stop.clone(), acked.clone())).collect();
    let reached = wait_for_acks(&acked, 400, DEADLINE).await;
    stop_clients(&stop);
    for c in clients {
        c.await?;
    }
    reached?;
    let on_topic = check_topic(&api, &db, &kafka.bootstrap_servers(), TENANTS).await?;
    sampling.store(true, Ordering::Relaxed);
    // The relay deletes what it published in the transaction that records it: no row its cursor
    // passed is ever left for the periodic purge (a purge that missed them fails here).
    let (samples, worst) = sampler.await??;
    ensure!(worst == 0, "{worst} passed rows left in the outbox ({samples} samples)");
    let acked = acked_ids(&acked);
    ensure!(acked.iter().all(|id| on_topic.contains(id)), "an acknowledged event is not on the topic");
    ensure!(api.metric("audit_kafka_published_total").await? >= acked.len() as f64);
    ensure!(api.metric("audit_kafka_relay_leader").await? == 1.0);
    ensure!(api.metric("audit_outbox_read_floor_misses_total").await? == 0.0, "rows found below the read floor");
    if backend == Backend::Postgres {
        // The relay took the events this process committed from memory (src/outbox/handoff.rs),
        // and check_topic above compared every message with the stored event.
        let memory = api.metric(r#"audit_outbox_events_read_total{consumer="kafka",source="memory"}"#).await?;
        ensure!(memory > 0.0, "no event was handed off in memory");
    }
    if backend == Backend::Sqlite {
        // Issue 25: a signed checkpoint (SQLite generates a key) also goes to the topic.
        let (s, body) = api.get(ADMIN_KEY, "/api/v1/integrity/checkpoints?tenantId=t-alpha").await?;
        ensure!(s == 200, "{body}");
        let signed = &body["checkpoints"][0];
        let start = Instant::now();
        loop {
            let records = read_topic(&kafka.bootstrap_servers()).await?;
            let found = records.iter().find(|r| r.headers.get("type").map(String::as_str) == Some("checkpoint"));
            if let Some(r) = found {
                ensure!(r.key == "t-alpha" && r.value == *signed, "checkpoint message {} vs {signed}", r.value);
                break;
            }
            ensure!(start.elapsed() < DEADLINE, "the checkpoint never reached the topic");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The lag is sampled every 2 s: it must come back to zero.
    let start = Instant::now();
    while api.metric("audit_kafka_publish_lag_events").await? != 0.0 {
        ensure!(start.elapsed() < Duration::from_secs(60), "publishing lag stays above 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{backend:?}: {} acknowledged events, each once and in order on the topic", acked.len());
    server.shutdown().await
}

/// A broker is stopped during ingest, then started again: every acknowledged event is on the topic
/// exactly once and in order, and ingest never stopped (readiness does not depend on Kafka).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_during_ingest() -> Result<()> {
    let mut kafka = kafka_with_topic().await?;
    let db = Db::new(Backend::Postgres, "kafka_broker").await?;
    let mut config = db.config();
    config.kafka = Some(kafka_config(&kafka));
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8).map(|c| ingest(api.clone(), TENANTS, c, stop.clone(), acked.clone())).collect();
    let run = async {
        wait_for_acks(&acked, 200, DEADLINE).await?;
        kafka.kill_broker(0);
        let during = acked_ids(&acked).len();
        wait_for_acks(&acked, during + 300, DEADLINE).await.context("ingest stalled with a broker down")?;
        let ready = api.http.get(api.url("/actuator/health/readiness")).send().await?.status();
        ensure!(ready == 200, "readiness {ready} with one broker down");
        kafka.restart_broker(0).await?;
        let after = acked_ids(&acked).len();
        wait_for_acks(&acked, after + 200, DEADLINE).await
    };
    let outcome = run.await;
    stop_clients(&stop);
    for c in clients {
        c.await?;
    }
    outcome?;
    let on_topic = check_topic(&api, &db, &kafka.bootstrap_servers(), TENANTS).await?;
    let acked = acked_ids(&acked);
    let missing = acked.iter().filter(|id| !on_topic.contains(*id)).count();
    ensure!(missing == 0, "{missing} of {} acknowledged events are not on the topic", acked.len());
    eprintln!("broker stopped and started: {} acknowledged events, each once and in order", acked.len());
    server.shutdown().await
}

/// The server binary is killed with -9 after Kafka acknowledged a batch and before the relay
/// recorded it (its recording transaction is held on a table lock from another session), then
/// started again: the new relay finds the batch on the topic and does not send it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_publish_and_record() -> Result<()> {
    let kafka = kafka_with_topic().await?;
    let db = Arc::new(Db::new(Backend::Postgres, "kafka_kill").await?);
    let url = db.url.clone().context("PostgreSQL URL")?;
    let env = [
        ("AUDIT_KAFKA_BOOTSTRAP_SERVERS".to_owned(), kafka.bootstrap_servers()),
        ("AUDIT_KAFKA_LEASE_SECONDS".to_owned(), "4".to_owned()),
    ];
    let (mut server, api) = start_process_with(&db, "victim", &env).await?;
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8).map(|c| ingest(api.clone(), TENANTS, c, stop.clone(), acked.clone())).collect();
    let mut lock = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    let run = async {
        wait_for_acks(&acked, 200, DEADLINE).await?;
        // The relay's start-up resync also writes offsets (before publishing anything): wait for
        // a first recorded batch, so the lock below catches a publish, not the resync.
        let recorded = "SELECT COALESCE(sum(next_offset), 0)::bigint FROM outbox_kafka_offsets";
        until_positive(&mut lock, recorded, "the relay never recorded a batch").await?;
        sqlx::raw_sql("BEGIN; LOCK TABLE outbox_kafka_offsets IN EXCLUSIVE MODE").execute(&mut lock).await?;
        // The relay publishes its next batch, then waits on the lock to record it.
        let waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'outbox_kafka_offsets'::regclass AND NOT granted";
        until_positive(&mut lock, waiting, "the relay never tried to record a batch").await?;
        // The topic holds messages beyond the offsets the database has recorded.
        let recorded: i64 =
            sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::bigint FROM outbox_kafka_offsets")
                .fetch_one(&mut lock)
                .await?;
        let published = read_topic(&kafka.bootstrap_servers()).await?.len() as i64;
        ensure!(
            published > recorded,
            "no message is published but unrecorded ({published} on the topic, {recorded} recorded)"
        );
        Ok(published - recorded)
    };
    let outcome = run.await;
    server.kill_hard();
    stop_clients(&stop);
    for c in clients {
        c.await?;
    }
    let unrecorded = outcome?;
    // The killed session's transaction goes on once the lock is gone, then finds its client dead.
    sqlx::raw_sql("ROLLBACK").execute(&mut lock).await?;

    let (mut restarted, api) = start_process_with(&db, "restarted", &env).await?;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = db.sample_passed_rows(sampling.clone());
    for t in TENANTS {
        let (s, r) = api.post(ADMIN_KEY, "/api/v1/events", &event(t, "after", "RESTART")).await?;
        ensure!(s == 201, "{r}");
    }
    let on_topic = check_topic(&api, &db, &kafka.bootstrap_servers(), TENANTS).await?;
    sampling.store(true, Ordering::Relaxed);
    // The resync moves cursors past events it found on the topic, whose rows it never read: it
    // deletes them in the same transaction, not the periodic purge 10 s later.
    let (samples, worst) = sampler.await??;
    ensure!(worst == 0, "{worst} passed rows left after the resync ({samples} samples)");
    let acked = acked_ids(&acked);
    let missing = acked.iter().filter(|id| !on_topic.contains(*id)).count();
    ensure!(missing == 0, "{missing} of {} acknowledged events are not on the topic", acked.len());
    let skipped = api.metric("audit_kafka_resync_skipped_total").await?;
    // The killed process's unpublished events are not in this one's memory: they were read from
    // the database (and checked above with the others).
    let from_database = api.metric(r#"audit_outbox_events_read_total{consumer="kafka",source="database"}"#).await?;
    ensure!(from_database > 0.0, "the restarted relay read no event from the database");
    eprintln!(
        "killed with {unrecorded} messages published but not recorded; the restarted relay skipped {skipped}; {} \
         acknowledged events each once and in order",
        acked.len()
    );
    restarted.stop();
    if skipped == 0.0 {
        bail!("the restarted relay found nothing to skip: the crash did not fall between publish and record");
    }
    Ok(())
}

/// Two replicas on one database, both running the relay and both taking events for the same
/// tenants: one holds the lease and publishes, the other follows. The leader is killed with -9
/// mid-ingest; the follower takes the lease once it has expired and publishes the rest: its own
/// events, and those the dead leader committed but had not published (read from the database, not
/// its memory). Every acknowledged event is on the topic exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hand_the_relay_over() -> Result<()> {
    const LEADER: &str = "audit_kafka_relay_leader";
    let kafka = kafka_with_topic().await?;
    let db = Arc::new(Db::new(Backend::Postgres, "kafka_replicas").await?);
    let env = [
        ("AUDIT_KAFKA_BOOTSTRAP_SERVERS".to_owned(), kafka.bootstrap_servers()),
        ("AUDIT_KAFKA_LEASE_SECONDS".to_owned(), "4".to_owned()),
    ];
    let mut replicas =
        vec![start_process_with(&db, "replica-a", &env).await?, start_process_with(&db, "replica-b", &env).await?];
    let stop = Arc::new(Mutex::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> =
        (0..8).map(|c| ingest(replicas[c % 2].1.clone(), TENANTS, c, stop.clone(), acked.clone())).collect();
    let run = async {
        wait_for_acks(&acked, 300, DEADLINE).await?;
        // Exactly one of them leads, and has published.
        let start = Instant::now();
        let leader = loop {
            let leading = [replicas[0].1.metric(LEADER).await?, replicas[1].1.metric(LEADER).await?];
            let published = [
                replicas[0].1.metric("audit_kafka_published_total").await?,
                replicas[1].1.metric("audit_kafka_published_total").await?,
            ];
            match leading {
                [1.0, 0.0] if published[0] > 0.0 => break 0,
                [0.0, 1.0] if published[1] > 0.0 => break 1,
                _ => ensure!(start.elapsed() < DEADLINE, "no single leader that published: {leading:?} {published:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let survivor = 1 - leader;
        ensure!(
            replicas[survivor].1.metric("audit_kafka_published_total").await? == 0.0,
            "the follower published while the other replica led"
        );
        replicas[leader].0.kill_hard();
        // Ingest goes on at the survivor (the dead replica's clients now fail and retry).
        let before = acked.lock().unwrap_or_else(|p| p.into_inner()).len();
        wait_for_acks(&acked, before + 300, DEADLINE).await?;
        // The lease expires 4 s after the leader's last renewal: the follower takes over.
        replicas[survivor].1.metric_reaches(LEADER, 1.0, Duration::from_secs(60)).await?;
        Ok::<_, anyhow::Error>(survivor)
    };
    let outcome = run.await;
    stop_clients(&stop);
    for c in clients {
        c.await?;
    }
    let survivor = outcome?;
    let api = replicas[survivor].1.clone();
    let on_topic = check_topic(&api, &db, &kafka.bootstrap_servers(), TENANTS).await?;
    let acked = acked_ids(&acked);
    let missing = acked.iter().filter(|id| !on_topic.contains(*id)).count();
    ensure!(missing == 0, "{missing} of {} acknowledged events are not on the topic", acked.len());
    // Some of what the survivor published was the dead replica's: not in its memory.
    let from_database = api.metric(r#"audit_outbox_events_read_total{consumer="kafka",source="database"}"#).await?;
    ensure!(from_database > 0.0, "the new leader read no event from the database");
    eprintln!("leader killed, the follower took over: {} acknowledged events, each once and in order", acked.len());
    for (mut process, _) in replicas {
        process.stop();
    }
    Ok(())
}

/// A consumer registered in the database but run by no replica (search switched off, say) gets
/// rows of its own: `audit_outbox_rows` shows them while Kafka's lag is 0. Once it is unregistered,
/// the periodic purge removes them, also for tenants that get no new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_consumer_releases_the_outbox() -> Result<()> {
    let kafka = kafka_with_topic().await?;
    let db = Db::new(Backend::Postgres, "kafka_gone").await?;
    let url = db.url.clone().context("PostgreSQL URL")?;
    let mut config = db.config();
    config.kafka = Some(kafka_config(&kafka));
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    sqlx::query("INSERT INTO outbox_consumers (consumer, stream_id) VALUES ('gone', 'gone')")
        .execute(&mut conn)
        .await?;
    for i in 0..30 {
        let tenant = TENANTS[i % 3];
        let (status, body) = api.post(ADMIN_KEY, "/api/v1/events", &event(tenant, "alice", "LOGIN")).await?;
        ensure!(status == 201, "append {i}: {status} {body}");
    }
    let until = |name: &'static str, want: f64| api.metric_reaches(name, want, DEADLINE);
    until("audit_kafka_publish_lag_events", 0.0).await?;
    until("audit_outbox_rows", 30.0).await.context("the rows the unrun consumer holds back")?;
    ensure!(outbox_rows(&db).await? == 30, "the database disagrees with audit_outbox_rows");
    // The unrun consumer passed the first 4 events of one tenant: the periodic purge removes
    // exactly those of its rows (the relay's progress purges only the relay's own rows).
    sqlx::query("INSERT INTO outbox_cursors (consumer, tenant_id, sequence) VALUES ('gone', $1, 4)")
        .bind(TENANTS[0])
        .execute(&mut conn)
        .await?;
    let (status, body) = api.post(ADMIN_KEY, "/api/v1/events", &event(TENANTS[0], "alice", "LOGIN")).await?;
    ensure!(status == 201, "append 31: {status} {body}");
    until("audit_kafka_publish_lag_events", 0.0).await?;
    until("audit_outbox_rows", 27.0).await.context("30 + 1 rows of the unrun consumer, less the 4 it passed")?;
    sqlx::query("DELETE FROM outbox_consumers WHERE consumer = 'gone'").execute(&mut conn).await?;
    // No new events: only the periodic purge can remove them.
    until("audit_outbox_rows", 0.0).await.context("rows passed by every remaining consumer")?;
    ensure!(outbox_rows(&db).await? == 0, "rows left in the outbox");
    server.shutdown().await
}

/// The relay's read floor (src/outbox/floor.rs) against a transaction that draws its outbox
/// position and then commits after later ones were read and published: a trigger holds one
/// tenant's append on an advisory lock after its rows are inserted (their position noted in a
/// sequence, which is not transactional), while other tenants' events are published. The floor
/// must stay below the held row, its events must reach the topic once released, and the floor
/// must then pass it (it is not stuck at 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_floor_waits_for_a_late_commit() -> Result<()> {
    const SLOW: &str = "t-slow";
    const FLOOR: &str = "audit_outbox_read_floor_position{consumer=\"kafka\"}";
    let kafka = kafka_with_topic().await?;
    let db = Arc::new(Db::new(Backend::Postgres, "kafka_floor").await?);
    let url = db.url.clone().context("PostgreSQL URL")?;
    let mut config = db.config();
    config.kafka = Some(kafka_config(&kafka));
    // The held append must outlive the append sessions' statement timeout.
    config.append_timeout = Duration::from_secs(120);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE SEQUENCE held_position;
         CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM setval('held_position', NEW.position); PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
         CREATE TRIGGER hold AFTER INSERT ON outbox FOR EACH ROW WHEN ('t-slow' = ANY (NEW.tenants)) EXECUTE FUNCTION hold();",
    )
    .execute(&mut conn)
    .await?;
    let published = |n: usize| {
        let api = api.clone();
        async move {
            let start = Instant::now();
            while api.metric("audit_kafka_published_total").await? < n as f64 {
                ensure!(start.elapsed() < DEADLINE, "fewer than {n} events published");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let ingest_until = |n: usize| {
        let api = api.clone();
        async move {
            let (stop, acked) = (Arc::new(Mutex::new(false)), Arc::new(Mutex::new(Vec::new())));
            let clients: Vec<_> =
                (0..4).map(|c| ingest(api.clone(), TENANTS, c, stop.clone(), acked.clone())).collect();
            let reached = wait_for_acks(&acked, n, DEADLINE).await;
            stop_clients(&stop);
            for c in clients {
                c.await?;
            }
            reached.map(|()| acked_ids(&acked).len())
        }
    };
    let mut total = ingest_until(100).await?;
    published(total).await?;
    // The held append: alone in its transaction (nothing else in flight), blocked in the trigger.
    sqlx::query("SELECT pg_advisory_lock(4242)").execute(&mut conn).await?;
    let held = {
        let api = api.clone();
        tokio::spawn(async move { api.post(ADMIN_KEY, "/api/v1/events", &event(SLOW, "late", "LATE")).await })
    };
    until_positive(
        &mut conn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        "the append never reached the trigger",
    )
    .await?;
    let position: i64 = sqlx::query_scalar("SELECT last_value FROM held_position").fetch_one(&mut conn).await?;
    total += ingest_until(300).await?;
    published(total).await?;
    let floor = api.metric(FLOOR).await?;
    ensure!(floor < position as f64, "the read floor {floor} passed the uncommitted row at {position}");
    sqlx::query("SELECT pg_advisory_unlock(4242)").execute(&mut conn).await?;
    let (status, body) = held.await??;
    ensure!(status == 201, "the held append: {status} {body}");
    // More events, so that the floor has reads to move on.
    total += ingest_until(100).await?;
    published(total + 1).await?;
    let start = Instant::now();
    while api.metric(FLOOR).await? <= position as f64 {
        ensure!(start.elapsed() < DEADLINE, "the read floor never passed the late row at {position}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut tenants = TENANTS.to_vec();
    tenants.push(SLOW);
    check_topic(&api, &db, &kafka.bootstrap_servers(), &tenants).await?;
    ensure!(api.metric("audit_outbox_read_floor_misses_total").await? == 0.0, "a full read found rows below the floor");
    server.shutdown().await
}
