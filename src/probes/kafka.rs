//! Kafka probes: brokers in the metadata, the audit topic's replication, ISR and retention.
//!
//! The audit server itself does not produce to Kafka yet (no client in audit-server/src), so the
//! producer side is checked from the cluster: with acks=all (and idempotence, which implies it) a
//! write succeeds only while every partition's ISR holds min.insync.replicas brokers.

use std::collections::BTreeMap;

use super::conns::{KafkaMetadata, probe, row};
use super::{Context, Finding, Probe, Status, Target};

const DAY_MS: i64 = 24 * 3600 * 1000;

pub fn probes() -> Vec<Box<dyn Probe>> {
    vec![Box::new(Brokers), Box::new(Topic), Box::new(Partitions)]
}

probe!(Brokers, Target::Kafka, "kafka.brokers", "Brokers in the cluster metadata >= kafka.replicaCount", brokers);
probe!(
    Topic,
    Target::Kafka,
    "kafka.topic",
    "The audit topic exists with partitions, replication factor, min.insync.replicas and retention (>= 7 days) as values say",
    topic
);
probe!(
    Partitions,
    Target::Kafka,
    "kafka.partitions",
    "No offline or under-replicated partition; every audit partition writable with acks=all (ISR >= min.insync.replicas)",
    partitions
);

type Outcome = Result<Finding, Finding>;

fn topic_name(ctx: &Context) -> String {
    ctx.targets.kafka.as_ref().map(|k| k.topic.clone()).unwrap_or_else(|| ctx.values.kafka.topic.name.clone())
}

async fn brokers(ctx: &Context) -> Outcome {
    let kafka = ctx.conns.kafka(&ctx.targets).await?;
    let md = kafka.metadata().await?;
    let wanted = ctx.values.kafka.replica_count;
    let ids: Vec<String> = md.brokers.iter().map(|(id, addr)| format!("{id}@{addr}")).collect();
    let rows = vec![row(
        "brokers in metadata",
        format!(">= {wanted} (kafka.replicaCount)"),
        format!("{} ({})", md.brokers.len(), ids.join(", ")),
        md.brokers.len() as u64 >= u64::from(wanted),
    )];
    let mut f = Finding::from_comparisons(&format!("Kafka cluster at {}", kafka.display), rows);
    if f.status == Status::Fail {
        f = f.hint("a broker is down or fenced: check the broker pods and their logs");
    }
    Ok(f)
}

/// `retention.ms` as days for messages (-1 is unlimited).
fn retention_text(ms: i64) -> String {
    if ms < 0 { "unlimited (-1)".into() } else { format!("{:.1} days ({ms} ms)", ms as f64 / DAY_MS as f64) }
}

async fn topic(ctx: &Context) -> Outcome {
    let kafka = ctx.conns.kafka(&ctx.targets).await?;
    let name = topic_name(ctx);
    let md = kafka.metadata().await?;
    let Some(partitions) = md.topics.get(&name) else {
        return Ok(Finding::fail(format!("topic {name} does not exist"))
            .comparisons(vec![row("topic", &name, "absent", false)])
            .hint("the chart's KafkaTopic creates it (Strimzi topic operator); check its status"));
    };
    let t = &ctx.values.kafka.topic;
    let rf = partitions.iter().map(|p| p.replicas.len()).min().unwrap_or(0);
    let configs = kafka.topic_config(&name).await?;
    let min_isr: i64 = configs.get("min.insync.replicas").and_then(|v| v.parse().ok()).unwrap_or(1);
    let retention: i64 = configs.get("retention.ms").and_then(|v| v.parse().ok()).unwrap_or(7 * DAY_MS);
    let wanted_retention = t.retention_ms as i64;
    let rows = vec![
        row(
            "partitions",
            format!(">= {} (kafka.topic.partitions)", t.partitions),
            partitions.len().to_string(),
            partitions.len() as u64 >= u64::from(t.partitions),
        ),
        row(
            "replication factor",
            format!(">= {} (kafka.topic.replicas)", t.replicas),
            rf.to_string(),
            rf as u64 >= u64::from(t.replicas),
        ),
        row(
            "min.insync.replicas",
            format!(">= {} (kafka.topic.minInsyncReplicas)", t.min_insync_replicas),
            min_isr.to_string(),
            min_isr >= i64::from(t.min_insync_replicas),
        ),
        row(
            "retention.ms",
            format!(">= {} (kafka.topic.retentionMs)", retention_text(wanted_retention)),
            retention_text(retention),
            retention < 0 || retention >= wanted_retention,
        ),
        row(
            "min.insync.replicas < replication factor",
            "yes (one broker may be lost)",
            format!("{min_isr} < {rf}"),
            min_isr < rf as i64,
        ),
    ];
    let mut f = Finding::from_comparisons(&format!("topic {name}"), rows);
    if f.status == Status::Fail {
        f = f.hint("fix the KafkaTopic spec (replicas, config) ; the replication factor of an existing topic changes only by partition reassignment");
    }
    Ok(f)
}

async fn partitions(ctx: &Context) -> Outcome {
    let kafka = ctx.conns.kafka(&ctx.targets).await?;
    let name = topic_name(ctx);
    let md: KafkaMetadata = kafka.metadata().await?;
    let exists = md.topics.contains_key(&name);
    let min_isr: usize = match exists {
        true => kafka.topic_config(&name).await?.get("min.insync.replicas").and_then(|v| v.parse().ok()).unwrap_or(1),
        false => 1,
    };
    let mut offline: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut under: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut not_writable = Vec::new();
    let mut total = 0;
    for (topic, parts) in &md.topics {
        for p in parts {
            total += 1;
            if p.leader < 0 {
                offline.entry(topic.clone()).or_default().push(p.id);
            }
            if p.isr.len() < p.replicas.len() {
                under.entry(topic.clone()).or_default().push(p.id);
            }
            if *topic == name && (p.leader < 0 || p.isr.len() < min_isr) {
                not_writable.push(p.id);
            }
        }
    }
    let list = |m: &BTreeMap<String, Vec<i32>>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.iter().map(|(t, ps)| format!("{t} {ps:?}")).collect::<Vec<_>>().join(", ")
        }
    };
    let rows = vec![
        row("offline partitions", "none", list(&offline), offline.is_empty()),
        row("under-replicated partitions", "none", list(&under), under.is_empty()),
        row(
            format!("{name} partitions writable with acks=all"),
            format!("all (ISR >= min.insync.replicas {min_isr})"),
            // A missing topic has no partition to write to: not a vacuous "all".
            &match (exists, not_writable.is_empty()) {
                (false, _) => "none: the topic does not exist".to_owned(),
                (true, true) => "all".to_owned(),
                (true, false) => format!("not {not_writable:?}"),
            },
            exists && not_writable.is_empty(),
        ),
    ];
    let mut f = Finding::from_comparisons(&format!("{total} partitions of {} topics", md.topics.len()), rows);
    if f.status == Status::Fail {
        f = f.hint(match exists {
            true => "a broker is down or lagging: its replicas left the ISR; bring it back and watch the ISR grow",
            false => "create the topic (see kafka.topic): the chart's KafkaTopic, through the Strimzi topic operator",
        });
    }
    Ok(f)
}
