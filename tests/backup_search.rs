//! `audctl backup search` / `audctl restore search` on the testbed's real Elasticsearch and
//! OpenSearch: snapshot (into the testbed's repository and into one audctl registers), wipe,
//! restore, document counts back; a non-empty target is refused without --force.

mod backup_support;

use anyhow::ensure;
use audctl_targets::Targets;
use backup_support::{audctl, targets_file};
use serde_json::{Value, json};
use testbed::{Product, Search};

const INDEX: &str = "audit-events-2026.12";

async fn call(node: &Search, method: reqwest::Method, path: &str, body: Option<String>) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let mut req = http.request(method, format!("{}{path}", node.url())).header("content-type", "application/x-ndjson");
    if let Some(b) = body {
        req = req.body(b);
    }
    let r = req.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    ensure!(status.is_success(), "{path}: {status} {v}");
    Ok(v)
}

async fn count(node: &Search, index: &str) -> anyhow::Result<u64> {
    call(node, reqwest::Method::POST, &format!("/{index}/_refresh"), None).await?;
    let v = call(node, reqwest::Method::GET, &format!("/{index}/_count"), None).await?;
    Ok(v["count"].as_u64().unwrap_or(0))
}

async fn round_trip(product: Product) -> anyhow::Result<()> {
    let node = testbed::search_with(product).await?;
    let settings = json!({"settings": {"number_of_shards": 2, "number_of_replicas": 0}}).to_string();
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/{INDEX}", node.url()))
        .header("content-type", "application/json")
        .body(settings)
        .send()
        .await?;
    ensure!(r.status().is_success(), "create index: {}", r.text().await?);
    let mut bulk = String::new();
    for i in 0..750 {
        bulk.push_str(&format!("{{\"index\":{{\"_id\":\"evt-{i}\"}}}}\n{}\n", json!({"tenant": "acme", "seq": i})));
    }
    let v = call(&node, reqwest::Method::POST, &format!("/{INDEX}/_bulk?refresh=true"), Some(bulk)).await?;
    ensure!(v["errors"] == false, "bulk: {v}");

    let dir = tempfile::tempdir()?;
    let targets = targets_file(dir.path(), &Targets { search: Some(node.target()), ..Default::default() });
    let t = targets.to_str().unwrap_or_default();
    let repo = dir.path().join("repo");
    let r = repo.to_str().unwrap_or_default();

    // Into a repository audctl registers itself.
    let location = node.snapshot_dir().join("audctl-registered");
    let loc = location.to_str().unwrap_or_default();
    let b = audctl(&[
        "--targets",
        t,
        "-o",
        "json",
        "backup",
        "search",
        "--repo",
        r,
        "--repository",
        "registered",
        "--register-fs",
        loc,
        "--indices",
        "audit-*",
    ])
    .await
    .ok()
    .json();
    assert_eq!(b["consistency"]["indices"][INDEX], 750, "{b}");
    assert_eq!(b["consistency"]["shardsFailed"], 0, "{b}");
    assert_eq!(b["consistency"]["state"], "SUCCESS", "{b}");
    assert!(location.read_dir()?.next().is_some(), "no snapshot files in {}", location.display());
    let id = b["id"].as_str().unwrap_or_default().to_owned();

    // Wipe, restore, count.
    call(&node, reqwest::Method::DELETE, &format!("/{INDEX}"), None).await?;
    let report =
        audctl(&["--targets", t, "-o", "json", "restore", "search", &id, "--repo", r, "--yes"]).await.ok().json();
    assert!(report["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{report}");
    assert_eq!(count(&node, INDEX).await?, 750);

    // Present now: refused without --force; with --force, deleted and restored.
    call(
        &node,
        reqwest::Method::POST,
        &format!("/{INDEX}/_doc?refresh=true"),
        Some(json!({"extra": true}).to_string()),
    )
    .await?;
    let out = audctl(&["--targets", t, "restore", "search", &id, "--repo", r, "--yes"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--force") && out.stderr.contains(INDEX), "{}", out.stderr);
    assert_eq!(count(&node, INDEX).await?, 751);
    audctl(&["--targets", t, "restore", "search", &id, "--repo", r, "--yes", "--force"]).await.ok();
    assert_eq!(count(&node, INDEX).await?, 750);

    // The testbed's pre-registered repository (from the targets file) works the same way.
    let b =
        audctl(&["--targets", t, "-o", "json", "backup", "search", "--repo", r, "--indices", INDEX]).await.ok().json();
    assert_eq!(b["consistency"]["repository"], testbed::search::SNAPSHOT_REPOSITORY);
    let list = audctl(&["-o", "json", "backup", "--repo", r, "list", "--component", "search"]).await.ok().json();
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(2), "{list}");

    // A test-restore under scratch names, removed afterwards.
    let v = audctl(&["--targets", t, "-o", "json", "backup", "--repo", r, "verify", &id]).await.ok().json();
    assert!(v["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{v}");
    let indices = call(&node, reqwest::Method::GET, "/_cat/indices?format=json", None).await?;
    assert!(!indices.to_string().contains("audctl-verify"), "scratch indices left: {indices}");

    // A corrupted snapshot description is refused before the cluster is touched.
    let path = repo.join("search").join(&id).join("snapshot.json");
    let mut bytes = std::fs::read(&path)?;
    bytes[10] ^= 1;
    std::fs::write(&path, bytes)?;
    let out = audctl(&["--targets", t, "restore", "search", &id, "--repo", r, "--yes", "--force"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("snapshot.json") && out.stderr.contains("corrupted"), "{}", out.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_snapshot_wipe_restore() -> anyhow::Result<()> {
    round_trip(Product::Elasticsearch).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_snapshot_wipe_restore() -> anyhow::Result<()> {
    round_trip(Product::OpenSearch).await
}
