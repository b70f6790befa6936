//! The search testbed is a real Elasticsearch 8 / OpenSearch 2 node usable through the
//! `elasticsearch` crate audctl uses: cluster health, indexing, and a filesystem snapshot taken,
//! the index deleted, restored from the snapshot and its documents counted back.

use std::time::Instant;

use anyhow::{Context, ensure};
use elasticsearch::cluster::ClusterHealthParts;
use elasticsearch::http::request::JsonBody;
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::Transport;
use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteParts, IndicesExistsParts};
use elasticsearch::params::Refresh;
use elasticsearch::snapshot::{SnapshotCreateParts, SnapshotCreateRepositoryParts, SnapshotRestoreParts};
use elasticsearch::{BulkParts, CountParts, Elasticsearch};
use serde_json::{Value, json};
use testbed::search::SNAPSHOT_REPOSITORY;
use testbed::{Product, Search, search, search_with};

const INDEX: &str = "audit-events";
const DOCS: usize = 25;

/// The body of a successful answer, or an error with the status and what the node said.
async fn ok_json(what: &str, response: Response) -> anyhow::Result<Value> {
    let status = response.status_code();
    let body = response.text().await?;
    ensure!(status.is_success(), "{what}: HTTP {status}: {body}");
    serde_json::from_str(&body).with_context(|| format!("{what}: not JSON: {body}"))
}

async fn health_index_snapshot_restore(node: &Search) -> anyhow::Result<()> {
    let target = node.target();
    assert_eq!(target.url, node.url());
    assert_eq!(target.snapshot_repository.as_deref(), Some(SNAPSHOT_REPOSITORY));
    let client = Elasticsearch::new(Transport::single_node(&node.url())?);

    let health = ok_json("cluster health", client.cluster().health(ClusterHealthParts::None).send().await?).await?;
    let status = health["status"].as_str().unwrap_or_default();
    assert!(status == "green" || status == "yellow", "cluster health: {health}");

    let settings = json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}});
    ok_json("create index", client.indices().create(IndicesCreateParts::Index(INDEX)).body(settings).send().await?)
        .await?;
    let mut lines: Vec<JsonBody<Value>> = Vec::with_capacity(DOCS * 2);
    for i in 0..DOCS {
        lines.push(json!({"index": {"_id": format!("evt-{i}")}}).into());
        lines.push(json!({"tenant": "tenant-a", "action": "login", "seq": i}).into());
    }
    let bulk = client.bulk(BulkParts::Index(INDEX)).body(lines).refresh(Refresh::WaitFor).send().await?;
    let bulk = ok_json("bulk index", bulk).await?;
    assert_eq!(bulk["errors"], json!(false), "bulk: {bulk}");
    assert_eq!(count(&client).await?, DOCS);

    // The testbed registered SNAPSHOT_REPOSITORY; registering one ourselves proves the API works
    // against path.repo, as audctl's backup setup does.
    let repository = "test-repo";
    let location = node.snapshot_dir().join("test-repo");
    let repo_body = json!({"type": "fs", "settings": {"location": location}});
    let snapshots = client.snapshot();
    let created = snapshots.create_repository(SnapshotCreateRepositoryParts::Repository(repository));
    ok_json("register repository", created.body(repo_body).send().await?).await?;

    let snapshot = client
        .snapshot()
        .create(SnapshotCreateParts::RepositorySnapshot(repository, "snap-1"))
        .wait_for_completion(true)
        .body(json!({"indices": INDEX}))
        .send()
        .await?;
    let snapshot = ok_json("create snapshot", snapshot).await?;
    assert_eq!(snapshot["snapshot"]["state"], json!("SUCCESS"), "snapshot: {snapshot}");
    assert!(location.read_dir()?.next().is_some(), "snapshot files should be in {}", location.display());

    ok_json("delete index", client.indices().delete(IndicesDeleteParts::Index(&[INDEX])).send().await?).await?;
    let exists = client.indices().exists(IndicesExistsParts::Index(&[INDEX])).send().await?;
    assert_eq!(exists.status_code().as_u16(), 404, "index should be gone before the restore");

    let restore = client
        .snapshot()
        .restore(SnapshotRestoreParts::RepositorySnapshot(repository, "snap-1"))
        .wait_for_completion(true)
        .body(json!({"indices": INDEX}))
        .send()
        .await?;
    let restore = ok_json("restore snapshot", restore).await?;
    assert_eq!(restore["snapshot"]["shards"]["failed"], json!(0), "restore: {restore}");
    assert_eq!(count(&client).await?, DOCS, "documents after restore");
    Ok(())
}

async fn count(client: &Elasticsearch) -> anyhow::Result<usize> {
    let body = ok_json("count", client.count(CountParts::Index(&[INDEX])).send().await?).await?;
    let n = body["count"].as_u64().with_context(|| format!("count: {body}"))?;
    Ok(usize::try_from(n)?)
}

#[tokio::test]
async fn elasticsearch_snapshot_and_restore() -> anyhow::Result<()> {
    let start = Instant::now();
    let node = search().await?;
    eprintln!(
        "elasticsearch ready in {:.1}s, RSS {:.0} MiB",
        start.elapsed().as_secs_f64(),
        testbed::process::rss_mib(&[node.pid()])
    );
    assert_eq!(node.product(), Product::Elasticsearch);
    // A killed test run's node (runuser and the JVM) would be found and swept by the next start.
    testbed::scratch::check_swept_if_abandoned(&[node.pid()])?;
    health_index_snapshot_restore(&node).await
}

#[tokio::test]
async fn opensearch_snapshot_and_restore() -> anyhow::Result<()> {
    let start = Instant::now();
    let node = search_with(Product::OpenSearch).await?;
    eprintln!(
        "opensearch ready in {:.1}s, RSS {:.0} MiB",
        start.elapsed().as_secs_f64(),
        testbed::process::rss_mib(&[node.pid()])
    );
    health_index_snapshot_restore(&node).await
}
