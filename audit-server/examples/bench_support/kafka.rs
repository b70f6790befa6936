//! Issue 22's bench: the ingest rate with the Kafka outbox on, against the rate without it, in the
//! same run (aim: within 10 %). Two servers in this process, each on its own database, one with
//! `kafka` configured (3 testbed brokers, topic of 3 partitions replicated 3 times); the same
//! scenario (single events over 100 tenants) alternates between them in the order A B B A, so that
//! the machine's changing load and any drift over the run hit both alike. Then the relay must
//! drain: its lag back to 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use audit_server::config::KafkaConfig;
use audit_server::{ApiKeyConfig, Config};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{Figure, KEY, body_bytes, drive, event};

/// The figures of both servers and a summary line.
pub async fn outbox_cost(
    pg: &testbed::postgres::Postgres,
    http: &reqwest::Client,
    clients: usize,
    pool: u32,
    duration: Duration,
) -> Result<(Vec<Figure>, String)> {
    eprintln!("starting Kafka (testbed, 3 brokers)...");
    let kafka = testbed::kafka(3).await?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    let topic = NewTopic::new("audit-events", 3, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let mut servers = Vec::new();
    for (name, with_kafka) in [("bench_plain", false), ("bench_outbox", true)] {
        let dir = tempfile::tempdir()?;
        let mut config = Config::local(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse()?;
        config.database_url = Some(pg.create_database(name).await?);
        config.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
        config.db_max_connections = pool;
        config.kafka = with_kafka.then(|| KafkaConfig::new(kafka.bootstrap_servers()));
        servers.push((audit_server::spawn(config).await?, dir));
    }
    let bodies = Arc::new((0..100).map(|t| body_bytes(&event(&format!("tenant-{t}")))).collect::<Vec<_>>());
    let mut rates = [Vec::new(), Vec::new()];
    for (round, order) in [[0, 1], [1, 0]].into_iter().enumerate() {
        for i in order {
            let server = &servers[i].0;
            let label = if i == 0 { "without Kafka" } else { "with the Kafka outbox" };
            eprintln!("running: outbox comparison, round {}, {label}", round + 1);
            let url = format!("{}/api/v1/events", server.base_url());
            let f = drive(http, &url, bodies.clone(), clients, 1, duration).await?;
            rates[i].push(f);
        }
    }
    // Everything the outbox server stored must reach the topic.
    let base = servers[1].0.base_url();
    let start = Instant::now();
    loop {
        let text = http.get(format!("{base}/actuator/prometheus")).send().await?.text().await?;
        let lag =
            text.lines().find_map(|l| l.strip_prefix("audit_kafka_publish_lag_events ")?.trim().parse::<f64>().ok());
        if lag == Some(0.0) {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("the Kafka relay did not drain the outbox within 300 s (lag {lag:?})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained = start.elapsed();
    for (server, _) in servers {
        server.shutdown().await?;
    }
    let mut figures = Vec::new();
    let mut means = [0.0; 2];
    for (i, runs) in rates.into_iter().enumerate() {
        let n = runs.len() as f64;
        means[i] = runs.iter().map(|f| f.events_per_sec).sum::<f64>() / n;
        let label = if i == 0 { "no Kafka" } else { "Kafka outbox" };
        figures.push(Figure {
            name: format!("server single events, 100 tenants, {label}"),
            events_per_sec: means[i],
            p50_ms: runs.iter().filter_map(|f| f.p50_ms).reduce(f64::max),
            p99_ms: runs.iter().filter_map(|f| f.p99_ms).reduce(f64::max),
            errors: runs.iter().map(|f| f.errors).sum(),
            load: runs.iter().map(|f| f.load).fold(0.0, f64::max),
            phases: None,
        });
    }
    let summary = format!(
        "outbox cost (issue 22): with the Kafka outbox {:.0} events/s, without {:.0} events/s: ratio {:.3} \
         (aim >= 0.90); mean of 2 runs each, in the order A B B A, p50/p99 the worse run's; the relay drained {:.1} s after the last run.",
        means[1],
        means[0],
        means[1] / means[0].max(1.0),
        drained.as_secs_f64()
    );
    Ok((figures, summary))
}
