//! Kafka probes against a real 3-node KRaft cluster: a topic as values say, a topic with
//! replication factor 1, one kept a single day, an absent one, then a broker killed (under-replicated
//! partitions); nothing listening.

mod probes_common;

use std::time::Duration;

use audctl::probes::{ErrorCause, Status};
use audctl_targets::{KafkaTarget, Targets};
use probes_common::{all_error, assert_status, context, row, run, values, wait_for};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

fn targets(kafka: &testbed::Kafka, topic: &str) -> Targets {
    let mut k = kafka.target();
    k.topic = topic.to_owned();
    Targets { kafka: Some(k), ..Default::default() }
}

async fn create_topic(kafka: &testbed::Kafka, name: &str, rf: i32, retention_ms: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    let topic = NewTopic::new(name, 3, TopicReplication::Fixed(rf)).set("retention.ms", retention_ms);
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&topic], &opts).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_a_killed_broker() -> anyhow::Result<()> {
    let mut kafka = testbed::kafka(3).await?;
    let v = values(&["kafka.topic.partitions=3"]);
    create_topic(&kafka, "audit-events", 3, "604800000").await?;
    create_topic(&kafka, "audit-rf1", 1, "604800000").await?;
    create_topic(&kafka, "audit-1d", 3, "86400000").await?;
    let good = targets(&kafka, "audit-events");

    // Good: 3 brokers, the topic as values say, every partition fully replicated.
    let f = run(&context(good.clone(), v.clone()), "kafka.brokers").await;
    assert_status(&f, Status::Pass);
    assert!(row(&f, "brokers in metadata").actual.starts_with("3 ("), "{f:#?}");
    let f = wait_for(&good, &v, "kafka.topic", 60, |f| f.status == Status::Pass).await;
    assert_eq!(row(&f, "replication factor").actual, "3");
    assert_eq!(row(&f, "min.insync.replicas").actual, "2");
    assert_eq!(row(&f, "retention.ms").actual, "7.0 days (604800000 ms)");
    wait_for(&good, &v, "kafka.partitions", 60, |f| f.status == Status::Pass).await;

    // Replication factor 1: FAIL on the factor, and acks=all cannot succeed (ISR 1 < min ISR 2).
    let rf1 = targets(&kafka, "audit-rf1");
    let f = run(&context(rf1.clone(), v.clone()), "kafka.topic").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("replication factor = 1 (expected >= 3 (kafka.topic.replicas))"), "{}", f.message);
    let f = run(&context(rf1, v.clone()), "kafka.partitions").await;
    assert_status(&f, Status::Fail);
    assert!(!row(&f, "audit-rf1 partitions writable with acks=all").ok, "{f:#?}");

    // Retention of one day: FAIL against the guide's 7 days.
    let f = run(&context(targets(&kafka, "audit-1d"), v.clone()), "kafka.topic").await;
    assert_status(&f, Status::Fail);
    let r = row(&f, "retention.ms");
    assert_eq!(
        (r.expected.as_str(), r.actual.as_str()),
        (">= 7.0 days (604800000 ms) (kafka.topic.retentionMs)", "1.0 days (86400000 ms)")
    );

    // No such topic.
    let f = run(&context(targets(&kafka, "no-such-topic"), v.clone()), "kafka.topic").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("no-such-topic does not exist"), "{}", f.message);
    // Its partitions are not "all writable": there are none.
    let f = run(&context(targets(&kafka, "no-such-topic"), v.clone()), "kafka.partitions").await;
    assert_status(&f, Status::Fail);
    let r = row(&f, "no-such-topic partitions writable with acks=all");
    assert_eq!((r.ok, r.actual.as_str()), (false, "none: the topic does not exist"), "{f:#?}");

    // A broker killed: it leaves the metadata once fenced and its replicas leave the ISR.
    kafka.kill_broker(2);
    let f = wait_for(&good, &v, "kafka.partitions", 120, |f| {
        f.status == Status::Fail && !row(f, "under-replicated partitions").ok
    })
    .await;
    assert!(row(&f, "under-replicated partitions").actual.contains("audit-events"), "{f:#?}");
    // acks=all still works with 2 of 3 in sync.
    assert!(row(&f, "audit-events partitions writable with acks=all").ok, "{f:#?}");
    let f = wait_for(&good, &v, "kafka.brokers", 60, |f| f.status == Status::Fail).await;
    assert!(f.message.contains("brokers in metadata = 2 ("), "{}", f.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_not_configured() -> anyhow::Result<()> {
    let t = Targets {
        kafka: Some(KafkaTarget {
            bootstrap_servers: vec![format!("127.0.0.1:{}", testbed::free_port()?)],
            topic: "audit-events".into(),
        }),
        ..Default::default()
    };
    all_error(&context(t, values(&[])), "kafka.", ErrorCause::Unreachable, None).await;
    // A broker that accepts and never answers.
    let (_silent, port) = probes_common::silent_port();
    let t = Targets {
        kafka: Some(KafkaTarget { bootstrap_servers: vec![format!("127.0.0.1:{port}")], topic: "audit-events".into() }),
        ..Default::default()
    };
    all_error(&context(t, values(&[])), "kafka.", ErrorCause::Unreachable, None).await;
    all_error(&context(Targets::default(), values(&[])), "kafka.", ErrorCause::NotConfigured, None).await;
    Ok(())
}
