//! Issue 22's bench: the ingest rate with the outbox on (Kafka and search), against the rate
//! without it, in the same run (aim: within 10 %). Two servers in this process, each on its own
//! database, one with `kafka` (3 testbed brokers, topic of 3 partitions replicated 3 times) and
//! `search` (the testbed's Elasticsearch) configured; the same
//! scenario (single events over 100 tenants) alternates between them in the order A B B A, so that
//! the machine's changing load and any drift over the run hit both alike. Then the relay and the
//! indexer must drain: both lags back to 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use audit_server::config::{KafkaConfig, SearchConfig};
use audit_server::{ApiKeyConfig, Config};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::{Figure, KEY, body_bytes, cpu, drive, event};

/// The figures of both servers and a summary line.
pub async fn outbox_cost(
    pg: &testbed::postgres::Postgres,
    http: &reqwest::Client,
    args: &super::Args,
    duration: Duration,
) -> Result<(Vec<Figure>, String)> {
    let (clients, pool) = (args.clients, args.pool);
    eprintln!("starting Kafka (testbed, 3 brokers, {:?} JVMs)...", args.jvm);
    let kafka = testbed::kafka_with(3, args.jvm).await?;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka.bootstrap_servers()).create()?;
    let topic = NewTopic::new("audit-events", 3, TopicReplication::Fixed(3)).set("min.insync.replicas", "2");
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    eprintln!("starting Elasticsearch (testbed, {:?} JVM)...", args.jvm);
    let search = testbed::search_jvm(testbed::Product::Elasticsearch, args.jvm).await?;
    let index_settings = production_index_settings()?;
    let mut servers = Vec::new();
    for (name, with_kafka) in [("bench_plain", false), ("bench_outbox", true)] {
        let dir = tempfile::tempdir()?;
        let mut config = Config::local(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse()?;
        config.database_url = Some(pg.create_database(name).await?);
        config.api_keys = vec![ApiKeyConfig::plain(KEY, &["*"])];
        config.db_max_connections = pool;
        config.kafka = with_kafka.then(|| KafkaConfig::new(kafka.bootstrap_servers()));
        config.search = with_kafka.then(|| {
            let mut s = SearchConfig::new(search.url());
            s.index_settings = index_settings.clone();
            s
        });
        servers.push((audit_server::spawn(config).await?, dir));
    }
    let bodies = Arc::new((0..100).map(|t| body_bytes(&event(&format!("tenant-{t}")))).collect::<Vec<_>>());
    let mut rates = [Vec::new(), Vec::new()];
    let mut cores = [Vec::new(), Vec::new()];
    for (round, order) in [[0, 1], [1, 0]].into_iter().enumerate() {
        for i in order {
            let server = &servers[i].0;
            let label = if i == 0 { "without the outbox" } else { "with the outbox (Kafka and search)" };
            eprintln!("running: outbox comparison, round {}, {label}", round + 1);
            let url = format!("{}/api/v1/events", server.base_url());
            let before = cpu::sample();
            let f = drive(http, &url, bodies.clone(), clients, 1, duration).await?;
            let used = cpu::sample().since(&before);
            eprintln!("  {:.0} events/s; {used}", f.events_per_sec);
            cores[i].push(used);
            rates[i].push(f);
        }
    }
    // Everything the outbox server stored must reach the topic and the index.
    let base = servers[1].0.base_url();
    let start = Instant::now();
    let mut drained = [None, None];
    while drained.iter().any(Option::is_none) {
        let text = http.get(format!("{base}/actuator/prometheus")).send().await?.text().await?;
        let gauges = ["audit_kafka_publish_lag_events ", "audit_search_index_lag_events "];
        for (i, name) in gauges.iter().enumerate() {
            let lag = text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
            if drained[i].is_none() && lag == Some(0.0) {
                drained[i] = Some(start.elapsed());
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("the outbox was not drained within 300 s (Kafka, search: {drained:?})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let [kafka_drained, search_drained] = drained.map(|d| d.unwrap_or_default().as_secs_f64());
    for (server, _) in servers {
        server.shutdown().await?;
    }
    let mut figures = Vec::new();
    let mut means = [0.0; 2];
    for (i, runs) in rates.into_iter().enumerate() {
        let n = runs.len() as f64;
        means[i] = runs.iter().map(|f| f.events_per_sec).sum::<f64>() / n;
        let label = if i == 0 { "no outbox" } else { "outbox: Kafka + search" };
        figures.push(Figure {
            name: format!("server single events, 100 tenants, {label}"),
            events_per_sec: means[i],
            p50_ms: runs.iter().filter_map(|f| f.p50_ms).reduce(f64::max),
            p99_ms: runs.iter().filter_map(|f| f.p99_ms).reduce(f64::max),
            errors: runs.iter().map(|f| f.errors).sum(),
            load: runs.iter().map(|f| f.load).fold(0.0, f64::max),
            phases: Some(cores[i].join("; ")),
        });
    }
    let summary = format!(
        "outbox cost (issue 22): with the outbox (Kafka relay and search indexer) {:.0} events/s, without {:.0} \
         events/s: ratio {:.3} (aim >= 0.90); mean of 2 runs each, in the order A B B A, p50/p99 the worse run's; \
         drained after the last run: Kafka {kafka_drained:.1} s, search {search_drained:.1} s.",
        means[1],
        means[0],
        means[1] / means[0].max(1.0),
    );
    Ok((figures, summary))
}

/// The index settings a deployment gives the audit indices: values/defaults.yaml's
/// `elasticsearch.indexSettings` (refresh every 5 s, asynchronous translog), read from the file.
fn production_index_settings() -> Result<serde_json::Map<String, serde_json::Value>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../values/defaults.yaml");
    let values: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    match &values["elasticsearch"]["indexSettings"] {
        serde_json::Value::Object(settings) => Ok(settings.clone()),
        other => bail!("{path}: elasticsearch.indexSettings is not a mapping: {other}"),
    }
}
