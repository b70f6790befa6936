//! Search probes against a real single-node Elasticsearch 8 and OpenSearch 2: health and node counts,
//! security expectations, snapshots (none, fresh, repository removed), the audit index with 0 then 1
//! replica (yellow on one node), the index template, disk watermarks; nothing listening.

mod probes_common;

use audctl::probes::{ErrorCause, Status};
use audctl_targets::{SearchProduct, SearchTarget, Targets};
use probes_common::{all_error, assert_status, context, row, run, values};
use testbed::{Product, search_with};

/// Values for the testbed: one node, reached over plain http (no security expected).
fn testbed_values(extra: &[&str]) -> audctl::values::Values {
    let mut sets = vec![
        "elasticsearch.replicas=1",
        "elasticsearch.enabled=false",
        "elasticsearch.external.host=127.0.0.1",
        "elasticsearch.external.database=http",
    ];
    sets.extend_from_slice(extra);
    values(&sets)
}

async fn es(url: &str, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<()> {
    let mut req = reqwest::Client::new().request(method.clone(), format!("{url}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status();
    anyhow::ensure!(status.is_success(), "{method} {path}: {status}: {}", r.text().await?);
    Ok(())
}

async fn scenarios(product: Product) -> anyhow::Result<()> {
    let node = search_with(product).await?;
    let url = node.url();
    let t = Targets { search: Some(node.target()), ..Default::default() };
    let v = testbed_values(&[]);
    let ctx = || context(t.clone(), v.clone());
    use reqwest::Method;

    // Health: green, one data and master-eligible node as values (1) say; default values want 3.
    let f = run(&ctx(), "search.health").await;
    assert_status(&f, Status::Pass);
    let f = run(&context(t.clone(), values(&[])), "search.health").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("data nodes = 1 (expected >= 3 (elasticsearch.replicas))"), "{}", f.message);

    // Security: not expected over http; expected by the default values (ECK), and off here.
    assert_status(&run(&ctx(), "search.security").await, Status::Pass);
    let f = run(&context(t.clone(), values(&[])), "search.security").await;
    assert_status(&f, Status::Fail);
    let anon = row(&f, "anonymous request refused");
    assert_eq!((anon.expected.as_str(), anon.actual.as_str()), ("yes (401)", "no (200)"));

    // Snapshots: the repository is registered but empty, then a snapshot is taken.
    let f = run(&ctx(), "search.snapshots").await;
    assert_status(&f, Status::Fail);
    assert_eq!(row(&f, "newest successful snapshot").actual, "none (0 snapshots in all)");
    es(&url, Method::PUT, "/_snapshot/audctl-testbed/snap-1?wait_for_completion=true", None).await?;
    let f = run(&ctx(), "search.snapshots").await;
    assert_status(&f, Status::Pass);
    assert!(row(&f, "newest successful snapshot").actual.starts_with("snap-1, 0.0 h old"), "{f:#?}");

    // Indices: nothing yet; then the template and an index with 0 replicas.
    let f = run(&ctx(), "search.indices").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("neither an index template audit-trail nor an index matching audit-*"), "{}", f.message);
    let template = serde_json::json!({"index_patterns": ["audit-*"], "template": {"settings": {
        "index.refresh_interval": "5s", "index.translog.durability": "async", "index.translog.sync_interval": "5s"}}});
    es(&url, Method::PUT, "/_index_template/audit-trail", Some(template)).await?;
    let zero = serde_json::json!({"settings": {"index.number_of_replicas": 0, "index.number_of_shards": 1}});
    es(&url, Method::PUT, "/audit-2026.12", Some(zero)).await?;
    let f = run(&ctx(), "search.indices").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("index audit-2026.12 index.number_of_replicas = 0 (expected >= 1)"), "{}", f.message);
    assert!(row(&f, "template audit-trail index.refresh_interval").ok, "{f:#?}");
    assert_eq!(f.comparisons.iter().filter(|c| !c.ok).count(), 1, "{f:#?}");
    // One replica: the index passes, and on a single node the cluster turns yellow (WARN).
    es(&url, Method::PUT, "/audit-2026.12/_settings", Some(serde_json::json!({"index.number_of_replicas": 1}))).await?;
    assert_status(&run(&ctx(), "search.indices").await, Status::Pass);
    let f = run(&ctx(), "search.health").await;
    assert_status(&f, Status::Warn);
    assert_eq!(row(&f, "cluster health").actual, "yellow");
    // A setting drifted on the live index.
    es(&url, Method::PUT, "/audit-2026.12/_settings", Some(serde_json::json!({"index.refresh_interval": "1s"})))
        .await?;
    let f = run(&ctx(), "search.indices").await;
    assert!(f.message.contains("index audit-2026.12 index.refresh_interval = 1s (expected 5s)"), "{}", f.message);

    // Disk: the testbed disables the disk decider (WARN); enabled with free-space watermarks this
    // machine meets, PASS; with a low watermark it cannot meet, WARN; a high one, FAIL.
    let f = run(&ctx(), "search.disk").await;
    assert_status(&f, Status::Warn);
    assert_eq!(row(&f, "disk threshold decider").actual, "disabled");
    let marks = |low: &str, high: &str| {
        serde_json::json!({"transient": {
            "cluster.routing.allocation.disk.threshold_enabled": true,
            "cluster.routing.allocation.disk.watermark.low": low,
            "cluster.routing.allocation.disk.watermark.high": high,
            "cluster.routing.allocation.disk.watermark.flood_stage": "1mb"}})
    };
    es(&url, Method::PUT, "/_cluster/settings", Some(marks("3mb", "2mb"))).await?;
    assert_status(&run(&ctx(), "search.disk").await, Status::Pass);
    es(&url, Method::PUT, "/_cluster/settings", Some(marks("100000gb", "2mb"))).await?;
    let f = run(&ctx(), "search.disk").await;
    assert_status(&f, Status::Warn);
    assert!(f.comparisons[0].actual.contains("(over low watermark)"), "{f:#?}");
    es(&url, Method::PUT, "/_cluster/settings", Some(marks("100000gb", "90000gb"))).await?;
    let f = run(&ctx(), "search.disk").await;
    assert_status(&f, Status::Fail);
    assert!(f.comparisons[0].actual.contains("(over high watermark)"), "{f:#?}");
    es(&url, Method::PUT, "/_cluster/settings", Some(marks("3mb", "2mb"))).await?;

    // No snapshot repository at all.
    es(&url, Method::DELETE, "/_snapshot/audctl-testbed", None).await?;
    let f = run(&ctx(), "search.snapshots").await;
    assert_status(&f, Status::Fail);
    let r = row(&f, "snapshot repository");
    assert_eq!((r.expected.as_str(), r.actual.as_str()), ("audctl-testbed", "none registered"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch() -> anyhow::Result<()> {
    scenarios(Product::Elasticsearch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch() -> anyhow::Result<()> {
    scenarios(Product::OpenSearch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_not_configured() -> anyhow::Result<()> {
    let t = Targets {
        search: Some(SearchTarget {
            url: format!("http://127.0.0.1:{}", testbed::free_port()?),
            product: SearchProduct::Elasticsearch,
            username: Some("elastic".into()),
            password: Some(audctl_targets::Secret::Inline("es-pw-777".into())),
            snapshot_repository: None,
        }),
        ..Default::default()
    };
    all_error(&context(t, values(&[])), "search.", ErrorCause::Unreachable, Some("es-pw-777")).await;
    // A node that accepts and never answers.
    let (_silent, port) = probes_common::silent_port();
    let t = Targets {
        search: Some(SearchTarget {
            url: format!("http://127.0.0.1:{port}"),
            product: SearchProduct::Opensearch,
            username: None,
            password: None,
            snapshot_repository: None,
        }),
        ..Default::default()
    };
    all_error(&context(t, values(&[])), "search.", ErrorCause::Unreachable, None).await;
    all_error(&context(Targets::default(), values(&[])), "search.", ErrorCause::NotConfigured, None).await;
    Ok(())
}
