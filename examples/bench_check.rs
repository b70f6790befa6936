//! `cargo xtask bench check`: wall time of a full `audctl check` against the testbed, compared with
//! its slowest probe. Probes run concurrently, so a run should take about as long as its slowest
//! probe (target: wall / slowest <= 1.2), not the sum of all of them.
//!
//! Starts, concurrently, the testbed's Kubernetes and every datastore (PostgreSQL with a replica and
//! archiving, Redis with three sentinels, Kafka on three brokers with the audit topic, Elasticsearch)
//! plus the audit server on that PostgreSQL (`cargo xtask deps install` first), applies the
//! production render, writes a targets file naming them all, then runs the whole checklist (every
//! cluster, manifest, datastore and service probe) in-process (the same code as the binary) `--runs`
//! times after one warm-up. Statuses do not matter here (the production values expect three
//! Elasticsearch nodes, tuned PostgreSQL...): only that every probe does its real work.

use std::io::Write;
use std::process::Stdio;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Measured runs after the warm-up.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

const API_KEY: &str = "bench-check-key-0d7e3b21";

/// The audit topic as values-prod's KafkaTopic declares it, so the topic probes read its config.
async fn create_audit_topic(bootstrap: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let topic = NewTopic::new("audit-events", 12, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2")
        .set("retention.ms", "604800000");
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(60)));
    for result in admin.create_topics([&topic], &opts).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runs = args.runs.max(1);
    let (kube, pg, redis, kafka, search) = tokio::try_join!(
        testbed::kube(),
        testbed::postgres_with(testbed::PgOptions { replica: true, archive: true, ..Default::default() }),
        testbed::redis_sentinel(),
        testbed::kafka(3),
        testbed::search(),
    )?;
    let db_url = pg.create_database("audittrail").await?;
    let data = tempfile::tempdir()?;
    let mut config = audit_server::Config::local(data.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.database_url = Some(db_url);
    config.api_keys = vec![audit_server::ApiKeyConfig::plain(API_KEY, &["audctl-probe"])];
    let server = audit_server::spawn(config).await?;
    create_audit_topic(&kafka.bootstrap_servers()).await?;
    let mut postgres = pg.target();
    postgres.url = postgres.url.replace("/postgres", "/audittrail");
    let targets = audctl_targets::Targets {
        kube: Some(kube.target()),
        postgres: Some(postgres),
        redis: Some(redis.target()),
        kafka: Some(kafka.target()),
        search: Some(search.target()),
        backup: None,
        audit: Some(audctl_targets::AuditTarget {
            url: server.base_url(),
            api_key: Some(audctl_targets::Secret::Inline(API_KEY.into())),
            tenant: None,
        }),
    };
    let dir = tempfile::tempdir()?;
    let targets_file = dir.path().join("targets.yaml");
    std::fs::write(&targets_file, targets.to_yaml()?)?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prod = root.join("values/values-prod.yaml");
    let values = audctl::values::load(std::slice::from_ref(&prod), &[])?;
    let stream = audctl::render::to_stream(&audctl::render::render(&values, None)?);
    let mut apply = kube
        .kubectl()
        .args(["apply", "--server-side", "--field-manager=audctl-bench", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    apply.stdin.take().ok_or_else(|| anyhow::anyhow!("kubectl stdin"))?.write_all(stream.as_bytes())?;
    anyhow::ensure!(apply.wait()?.success(), "kubectl apply of the production render failed");

    let kubeconfig = kube.kubeconfig().display().to_string();
    let argv = [
        "audctl",
        "--kubeconfig",
        &kubeconfig,
        "--context",
        testbed::kube::CONTEXT,
        "--targets",
        &targets_file.display().to_string(),
        "-o",
        "json",
        "check",
        "-f",
        &prod.display().to_string(),
    ]
    .map(String::from);
    let cli = audctl::cli::Cli::try_parse_from(argv)?;
    let audctl::cli::Command::Check(check) = &cli.command else { anyhow::bail!("not a check command") };

    println!(
        "{:>4} {:>9} {:>10} {:>10}  {:<28} {:>12} {:>12}",
        "run", "wall ms", "probes ms", "slowest ms", "slowest probe", "wall/slow", "probes/slow"
    );
    let (mut total, mut phase) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let report = audctl::check::evaluate(check, &cli.global).await?;
        if run == 0 {
            let ran: usize = report.sections.iter().flat_map(|s| &s.items).map(|i| i.probes.len()).sum();
            println!(
                "warm-up: {ran} probe results over {} items; items by status {:?}",
                report.items().count(),
                report.summary
            );
        }
        let Some(slow) = &report.slowest_probe else { anyhow::bail!("no probe ran") };
        let slow_ms = slow.ms.max(1) as f64;
        let (w, p) = (report.wall_ms as f64 / slow_ms, report.probes_ms as f64 / slow_ms);
        let tag = if run == 0 { "warm".to_owned() } else { run.to_string() };
        println!(
            "{tag:>4} {:>9} {:>10} {:>10}  {:<28} {w:>12.2} {p:>12.2}",
            report.wall_ms, report.probes_ms, slow.ms, slow.id
        );
        if run > 0 {
            total.push(w);
            phase.push(p);
        }
    }
    println!(
        "median over {runs} runs: full check wall / slowest probe = {:.2}; concurrent phase / slowest probe = {:.2} (target <= 1.2)",
        median(total),
        median(phase)
    );
    server.shutdown().await?;
    drop((search, kafka, redis, pg));
    Ok(())
}
