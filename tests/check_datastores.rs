//! `audctl check` end to end on the datastores section: the real binary, a targets file written from
//! the testbed's own `target()` accessors, and real components started together (PostgreSQL with a
//! streaming replica and WAL archiving, Redis with three sentinels, Kafka on three brokers,
//! Elasticsearch, and the audit server on that PostgreSQL).
//!
//! Scenarios in order on the same components: healthy (exit 0), one sentinel down (still exit 0:
//! quorum reachable), two down (redis FAIL, nothing else changes, exit 1), all three down (redis
//! ERROR unreachable, exit 3). No run may print a password or the API key.
//!
//! Needs the testbed components: run `cargo xtask deps install` first.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use audctl_targets::{AuditTarget, Secret, Targets};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::Value;

const ITEMS: &str = "postgres,redis,kafka,search,audit-service";
const API_KEY: &str = "e2e-datastores-key-5c1d9a7e";
const TENANT: &str = "audctl-probe";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Values for the testbed: the local profile (datastores outside the cluster, on 127.0.0.1 over
/// plain connections), the testbed's counts (one PostgreSQL replica, one Redis replica, one
/// Elasticsearch node; Kafka's three brokers are the default), and the alert rules on so that
/// service.metrics compares them with what the server exports instead of having nothing to compare.
/// `testbed.yaml` sets the three tuning parameters PostgreSQL reads only at start to the testbed's
/// own values: 4GB of shared_buffers does not fit this shared machine, and a replica refuses a
/// primary with more max_connections than itself. Every other parameter of the guide is set live.
fn check_args(dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["check", "--only", ITEMS, "--no-record", "-f"].map(String::from).to_vec();
    args.push(root().join("values/values-local.yaml").display().to_string());
    args.push("-f".into());
    args.push(dir.join("testbed.yaml").display().to_string());
    for set in [
        "postgresql.readReplicas.replicaCount=1",
        "redis.replica.replicaCount=1",
        "kafka.replicaCount=3",
        "elasticsearch.replicas=1",
        "prometheusRule.enabled=true",
    ] {
        args.push("--set".into());
        args.push(set.into());
    }
    args
}

const TESTBED_VALUES: &str =
    "postgresql:\n  parameters:\n    shared_buffers: 32MB\n    max_connections: \"100\"\n    wal_buffers: 1MB\n";

/// The guide's tuning that PostgreSQL applies on reload (postgresql.parameters in defaults.yaml).
const GUIDE_TUNING: &str = "ALTER SYSTEM SET effective_cache_size = '12GB'; ALTER SYSTEM SET maintenance_work_mem = '1GB'; \
    ALTER SYSTEM SET checkpoint_completion_target = 0.9; ALTER SYSTEM SET default_statistics_target = 100; \
    ALTER SYSTEM SET random_page_cost = 1.1; ALTER SYSTEM SET effective_io_concurrency = 200; \
    ALTER SYSTEM SET work_mem = '20MB'; ALTER SYSTEM SET min_wal_size = '1GB'; ALTER SYSTEM SET max_wal_size = '4GB'; \
    ALTER SYSTEM SET max_parallel_workers_per_gather = 4; ALTER SYSTEM SET max_parallel_workers = 8; \
    ALTER SYSTEM SET max_parallel_maintenance_workers = 4; SELECT pg_reload_conf()";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    json: Value,
}

impl Run {
    /// Item id -> (status, cause).
    fn items(&self) -> BTreeMap<String, (String, Option<String>)> {
        let mut out = BTreeMap::new();
        for section in self.json["sections"].as_array().into_iter().flatten() {
            for item in section["items"].as_array().into_iter().flatten() {
                let id = item["id"].as_str().unwrap_or_default().to_owned();
                let status = item["status"].as_str().unwrap_or_default().to_owned();
                out.insert(id, (status, item["cause"].as_str().map(str::to_owned)));
            }
        }
        out
    }

    /// Probe id -> status, over every item.
    fn probes(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for section in self.json["sections"].as_array().into_iter().flatten() {
            for item in section["items"].as_array().into_iter().flatten() {
                for p in item["probes"].as_array().into_iter().flatten() {
                    out.insert(
                        p["id"].as_str().unwrap_or_default().to_owned(),
                        p["status"].as_str().unwrap_or_default().to_owned(),
                    );
                }
            }
        }
        out
    }

    fn item(&self, id: &str) -> Value {
        let mut items =
            self.json["sections"].as_array().into_iter().flatten().flat_map(|s| s["items"].as_array()).flatten();
        items.find(|i| i["id"] == id).cloned().unwrap_or_else(|| panic!("no item {id} in {}", self.stdout))
    }
}

fn audctl(dir: &Path) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_audctl"))
        .current_dir(dir)
        .arg("--targets")
        .arg(dir.join("targets.yaml"))
        .args(["-o", "json"])
        .args(check_args(dir))
        .env_remove("KUBECONFIG")
        .env_remove("AUDCTL_TARGETS")
        .output()
        .expect("run audctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\n{stderr}"));
    Run { code: out.status.code(), stdout, stderr, json }
}

/// Kafka: the audit topic as the chart's KafkaTopic declares it (defaults.yaml kafka.topic), then
/// wait until every partition's ISR holds all its replicas.
async fn create_audit_topic(bootstrap: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let topic = NewTopic::new("audit-events", 12, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2")
        .set("retention.ms", "604800000");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    for result in admin.create_topics([&topic], &opts).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A blocking librdkafka call: off the async worker's hands.
        let md = tokio::task::block_in_place(|| {
            admin.inner().fetch_metadata(Some("audit-events"), Duration::from_secs(10))
        })?;
        let complete = md.topics().iter().all(|t| {
            t.partitions().len() == 12 && t.partitions().iter().all(|p| p.leader() >= 0 && p.isr().len() == 3)
        });
        if complete {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "audit-events not fully replicated within 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn es(url: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<()> {
    let mut req = reqwest::Client::new().request(method.clone(), format!("{url}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status();
    anyhow::ensure!(status.is_success(), "{method} {path}: {status}: {}", r.text().await?);
    Ok(())
}

/// Elasticsearch: the audit index template with the guide's settings (what the chart's
/// es-index-template ConfigMap holds), one successful snapshot in the testbed's repository, and the
/// disk threshold decider on. The testbed turns the decider off and its node's disk is this shared
/// machine's, whose fill level is not the test's to control (91% when this test was written, over the
/// default 90% high watermark): watermarks in free bytes, as a cluster on small disks would set them,
/// make the verdict independent of the machine while search.disk still reads them and every node's use.
async fn prepare_search(url: &str) -> anyhow::Result<()> {
    let template = serde_json::json!({"index_patterns": ["audit-*"], "template": {"settings": {
        "index.number_of_replicas": 1, "index.refresh_interval": "5s",
        "index.translog.durability": "async", "index.translog.sync_interval": "5s"}}});
    es(url, reqwest::Method::PUT, "/_index_template/audit-trail", Some(template)).await?;
    let repo = testbed::search::SNAPSHOT_REPOSITORY;
    es(url, reqwest::Method::PUT, &format!("/_snapshot/{repo}/e2e-1?wait_for_completion=true"), None).await?;
    let disk = serde_json::json!({"persistent": {
        "cluster.routing.allocation.disk.threshold_enabled": true,
        "cluster.routing.allocation.disk.watermark.low": "3mb",
        "cluster.routing.allocation.disk.watermark.high": "2mb",
        "cluster.routing.allocation.disk.watermark.flood_stage": "1mb"}});
    es(url, reqwest::Method::PUT, "/_cluster/settings", Some(disk)).await
}

/// Redis: the guide's hourly RDB save point and a memory limit (AOF is on in the testbed).
async fn prepare_redis(master_url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(master_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for (key, value) in [("save", "3600 1"), ("maxmemory", "256mb"), ("maxmemory-policy", "noeviction")] {
        let () = redis::cmd("CONFIG").arg("SET").arg(key).arg(value).query_async(&mut conn).await?;
    }
    Ok(())
}

/// PostgreSQL: the guide's reloadable tuning, then a WAL switch and wait until that segment is
/// archived (a fresh server has archived nothing, which the archiving probe rightly fails).
async fn prepare_postgres(pg: &testbed::Postgres) -> anyhow::Result<()> {
    pg.sql(GUIDE_TUNING).await?;
    pg.sql("SELECT pg_switch_wal()").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pg.sql("SELECT archived_count FROM pg_stat_archiver").await?.trim() == "0" {
        anyhow::ensure!(Instant::now() < deadline, "no WAL segment archived within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn assert_no_secret(run: &Run, secrets: &[String]) {
    for s in secrets {
        assert!(
            !run.stdout.contains(s) && !run.stderr.contains(s),
            "a secret is printed:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastores_section_end_to_end() -> anyhow::Result<()> {
    use testbed::PgOptions;
    let dir = tempfile::tempdir()?;
    let (pg, mut redis, kafka, search) = tokio::try_join!(
        testbed::postgres_with(PgOptions { replica: true, archive: true, ..Default::default() }),
        testbed::redis_sentinel(),
        testbed::kafka(3),
        testbed::search(),
    )?;

    // The audit server on that PostgreSQL, in its own database (it migrates it at start).
    let db_url = pg.create_database("audittrail").await?;
    let data = tempfile::tempdir()?;
    let mut config = audit_server::Config::local(data.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.database_url = Some(db_url);
    config.db_max_connections = 5;
    config.api_keys = vec![audit_server::ApiKeyConfig::plain(API_KEY, &[TENANT])];
    let server = audit_server::spawn(config).await?;
    let service_url = server.base_url();

    let (master, bootstrap, search_url) = (redis.master_url(), kafka.bootstrap_servers(), search.url());
    tokio::try_join!(
        prepare_postgres(&pg),
        prepare_redis(&master),
        create_audit_topic(&bootstrap),
        prepare_search(&search_url),
    )?;
    // One event, so that chain heads have a tenant to compare and request metrics have series.
    let event = serde_json::json!({
        "actor": {"id": "e2e", "type": "SERVICE", "name": "check_datastores"},
        "action": {"type": "E2E", "description": "end-to-end test"},
        "resource": {"id": "e2e-1", "type": "TEST"},
        "metadata": {"source": "e2e", "tenantId": TENANT},
    });
    let posted = reqwest::Client::new()
        .post(format!("{service_url}/api/v1/events"))
        .header("x-api-key", API_KEY)
        .json(&event)
        .send()
        .await?;
    anyhow::ensure!(posted.status().as_u16() == 201, "POST event: {}", posted.status());

    // The targets file from the testbed's accessors, as an operator would write it; PostgreSQL's
    // URL names the audit database (migrations and chain heads live there).
    let mut postgres = pg.target();
    postgres.url = postgres.url.replace("/postgres", "/audittrail");
    let targets = Targets {
        kube: None,
        postgres: Some(postgres),
        redis: Some(redis.target()),
        kafka: Some(kafka.target()),
        search: Some(search.target()),
        backup: None,
        audit: Some(AuditTarget { url: service_url, api_key: Some(Secret::Inline(API_KEY.into())), tenant: None }),
    };
    std::fs::write(dir.path().join("targets.yaml"), targets.to_yaml()?)?;
    std::fs::write(dir.path().join("testbed.yaml"), TESTBED_VALUES)?;
    let secrets = [pg.password().to_owned(), redis.password().to_owned(), API_KEY.to_owned()];

    // Healthy: every item and every probe PASS, exit 0.
    let good = audctl(dir.path());
    assert_no_secret(&good, &secrets);
    let items = good.items();
    let expected: BTreeMap<String, (String, Option<String>)> =
        ITEMS.split(',').map(|id| (id.to_owned(), ("PASS".to_owned(), None))).collect();
    assert_eq!(items, expected, "{}", good.stdout);
    let not_pass: Vec<String> =
        good.probes().into_iter().filter(|(_, s)| s != "PASS").map(|(id, s)| format!("{id} {s}")).collect();
    assert!(not_pass.is_empty(), "{not_pass:?}\n{}", good.stdout);
    assert_eq!(good.code, Some(0), "{}\n{}", good.stdout, good.stderr);
    // Every probe of the five items ran (the patterns expanded, service.write left out).
    let probes = good.probes();
    for id in [
        "postgres.replication",
        "postgres.archiving",
        "postgres.tuning",
        "postgres.migrations",
        "postgres.chain-heads",
        "redis.sentinels",
        "kafka.partitions",
        "search.snapshots",
        "search.indices",
        "service.metrics",
        "service.api-key",
    ] {
        assert!(probes.contains_key(id), "{id} did not run: {probes:?}");
    }
    assert!(!probes.contains_key("service.write"), "{probes:?}");

    // One sentinel down: failover still possible, nothing changes.
    redis.kill_sentinel(0);
    let one_down = audctl(dir.path());
    assert_eq!(one_down.items(), expected, "{}", one_down.stdout);
    assert_eq!(one_down.code, Some(0), "{}", one_down.stdout);

    // Two down: the quorum is lost; redis FAILs, naming actual vs needed, and only redis changes.
    redis.kill_sentinel(1);
    let lost = audctl(dir.path());
    assert_no_secret(&lost, &secrets);
    let mut want = expected.clone();
    want.insert("redis".into(), ("FAIL".into(), None));
    assert_eq!(lost.items(), want, "{}", lost.stdout);
    let message = lost.item("redis")["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("1 of 3 sentinels reachable, 2 needed to fail over"), "{message}");
    assert_eq!(lost.code, Some(1), "{}\n{}", lost.stdout, lost.stderr);

    // All three down: Redis's entry points are closed ports. ERROR (unreachable), exit 3.
    redis.kill_sentinel(2);
    let gone = audctl(dir.path());
    assert_no_secret(&gone, &secrets);
    want.insert("redis".into(), ("ERROR".into(), Some("unreachable".into())));
    assert_eq!(gone.items(), want, "{}", gone.stdout);
    assert_eq!(gone.code, Some(3), "{}\n{}", gone.stdout, gone.stderr);
    assert!(gone.stderr.contains("redis"), "{}", gone.stderr);

    server.shutdown().await?;
    Ok(())
}
