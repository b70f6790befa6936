//! The Kafka testbed is a real KRaft cluster usable through rdkafka, the crate audctl and the audit
//! server use: produce/consume on one node; on three nodes, metadata for 3 brokers, a topic with
//! replication factor 3 and min.insync.replicas=2, and acks=all surviving the loss of one broker.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use testbed::{Kafka, kafka};

const TIMEOUT: Duration = Duration::from_secs(60);

fn producer(kafka: &Kafka) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .create()?)
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &str) -> anyhow::Result<()> {
    let record = FutureRecord::to(topic).key(key).payload(payload);
    producer.send(record, TIMEOUT).await.map_err(|(e, _)| anyhow!("producing {key} to {topic}: {e}"))?;
    Ok(())
}

fn metadata(producer: &FutureProducer, topic: Option<&str>) -> anyhow::Result<Metadata> {
    Ok(producer.client().fetch_metadata(topic, Duration::from_secs(10))?)
}

/// (leader node id, replicas, in-sync replicas) of partition 0 of `topic`.
fn partition0(producer: &FutureProducer, topic: &str) -> anyhow::Result<(i32, usize, usize)> {
    let md = metadata(producer, Some(topic))?;
    let t = md.topics().iter().find(|t| t.name() == topic).with_context(|| format!("no metadata for {topic}"))?;
    let p = t.partitions().first().with_context(|| format!("{topic} has no partitions"))?;
    Ok((p.leader(), p.replicas().len(), p.isr().len()))
}

#[tokio::test]
async fn single_node_produces_and_consumes() -> anyhow::Result<()> {
    let start = Instant::now();
    let kafka = kafka(1).await?;
    eprintln!(
        "kafka 1 node ready in {:.1}s, RSS {:.0} MiB",
        start.elapsed().as_secs_f64(),
        testbed::process::rss_mib(&kafka.pids())
    );
    let target = kafka.target();
    assert_eq!(target.bootstrap_servers.join(","), kafka.bootstrap_servers());

    let topic = "audit-events";
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    let created =
        admin.create_topics(&[NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await?;
    for r in created {
        r.map_err(|(name, code)| anyhow!("creating topic {name}: {code}"))?;
    }

    let producer = producer(&kafka)?;
    produce(&producer, topic, "tenant-a", r#"{"action":"login"}"#).await?;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "testbed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let message = tokio::time::timeout(TIMEOUT, consumer.recv()).await.context("no message consumed within 60 s")??;
    assert_eq!(message.key(), Some(&b"tenant-a"[..]));
    assert_eq!(message.payload(), Some(&br#"{"action":"login"}"#[..]));
    Ok(())
}

#[tokio::test]
async fn three_nodes_replicate_and_survive_one_broker_loss() -> anyhow::Result<()> {
    let start = Instant::now();
    let mut kafka = kafka(3).await?;
    eprintln!(
        "kafka 3 nodes ready in {:.1}s, RSS {:.0} MiB",
        start.elapsed().as_secs_f64(),
        testbed::process::rss_mib(&kafka.pids())
    );
    assert_eq!(kafka.bootstrap_servers().split(',').count(), 3);
    // A killed test run's brokers would be found and swept by the next start.
    testbed::scratch::check_swept_if_abandoned(&kafka.pids())?;

    let producer = producer(&kafka)?;
    let brokers = metadata(&producer, None)?.brokers().len();
    assert_eq!(brokers, 3, "metadata should list 3 brokers");

    let topic = "audit-events";
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    let new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    for r in admin.create_topics(&[new_topic], &AdminOptions::new()).await? {
        r.map_err(|(name, code)| anyhow!("creating topic {name}: {code}"))?;
    }
    // A broker may describe the new topic before its configuration reached it: wait for it.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let configs = admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()).await?;
        let config = configs.into_iter().next().context("no config result")?.map_err(|c| anyhow!("describe: {c}"))?;
        let min_isr = config.get("min.insync.replicas").and_then(|e| e.value.clone());
        if min_isr.as_deref() == Some("2") {
            break;
        }
        ensure!(Instant::now() < deadline, "min.insync.replicas of {topic} is {min_isr:?} after {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (leader, replicas, _) = wait_for_isr(&producer, topic, 3).await?;
    assert_eq!(replicas, 3, "replication factor");
    produce(&producer, topic, "before", "all replicas up").await?;

    // Crash the partition leader: a new leader must take over and acks=all still succeed with ISR 2.
    let leader_index = usize::try_from(leader - 1).context("leader id")?;
    kafka.kill_broker(leader_index);
    let killed = Instant::now();
    produce(&producer, topic, "after-kill", "one broker down").await?;
    eprintln!("acks=all produce succeeded {:.1}s after killing the leader", killed.elapsed().as_secs_f64());
    // The killed replica leaves the ISR (brokers' metadata may lag the produce by a moment).
    let (new_leader, _, _) = wait_for_isr(&producer, topic, 2).await?;
    assert_ne!(new_leader, leader, "leadership should have moved off the killed node");

    // The node comes back from its data directory and catches up.
    kafka.restart_broker(leader_index).await?;
    wait_for_isr(&producer, topic, 3).await?;
    produce(&producer, topic, "after-restart", "healed").await?;
    Ok(())
}

async fn wait_for_isr(producer: &FutureProducer, topic: &str, want: usize) -> anyhow::Result<(i32, usize, usize)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = partition0(producer, topic);
        if let Ok(state @ (_, _, isr)) = last
            && isr == want
        {
            return Ok(state);
        }
        if Instant::now() > deadline {
            bail!("ISR of {topic} never reached {want}; last metadata: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
