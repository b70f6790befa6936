//! Search (issue 22) on the testbed's real Elasticsearch 8 and OpenSearch 2: events reach the
//! index through the outbox, `POST /api/v1/search` answers filters, full text, aggregations and
//! pages exactly as this file's own model of the data says, and so does the database answer of a
//! server without search on the same data; tenants stay apart; the index stopped then back loses
//! nothing and ingest never waits for it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use audit_server::Config;
use audit_server::config::SearchConfig;
use common::{Api, Backend, Db, KEY_A, KEY_B};
use serde_json::{Value, json};
use testbed::search::Product;

const DEADLINE: Duration = Duration::from_secs(120);

/// What the test posted: (receipt id, tenant, actor, action, resource type, source, tags, description, timestamp).
#[derive(Clone, Debug)]
struct Posted {
    id: String,
    tenant: String,
    actor: String,
    action: String,
    rtype: String,
    source: String,
    env: String,
    description: String,
    timestamp: String,
}

const DESCRIPTIONS: [&str; 4] = [
    "rotated the signing key",
    "viewed the quarterly report",
    "deleted a stale session",
    "rotated a database password",
];

/// `timeout`: how long a search may take before the database answers. The happy paths give the
/// cluster plenty (a loaded CI machine runs several JVMs at once: 2 s was seen to fall back); the
/// down test wants the fallback quickly.
fn with_search(db: &Db, search: &testbed::search::Search, timeout: Duration) -> Config {
    let mut c = db.config();
    let mut s = SearchConfig::new(search.url());
    s.poll_interval = Duration::from_millis(100);
    s.timeout = timeout;
    c.search = Some(s);
    c
}

async fn ingest(api: &Api, tenant: &str, key: &str, n: usize, from: usize) -> Result<Vec<Posted>> {
    let mut out = Vec::new();
    for i in from..from + n {
        let p = Posted {
            id: String::new(),
            tenant: tenant.into(),
            actor: ["alice", "bob", "carol"][i % 3].into(),
            action: ["READ", "WRITE", "READ", "DELETE"][i % 4].into(),
            rtype: ["DOCUMENT", "SECRET"][i % 2].into(),
            source: ["web", "cli", "web", "web", "cli"][i % 5].into(),
            env: ["prod", "dev"][(i / 2) % 2].into(),
            description: DESCRIPTIONS[(i / 3) % 4].into(),
            timestamp: String::new(),
        };
        let body = json!({
            "actor": {"id": p.actor, "type": "USER", "name": format!("{} Example", p.actor)},
            "action": {"type": p.action, "description": p.description},
            "resource": {"id": format!("r-{i}"), "type": p.rtype, "name": format!("item {i}")},
            "metadata": {"source": p.source, "tenantId": tenant, "tags": {"env": p.env}}
        });
        let (s, r) = api.post(key, "/api/v1/events", &body).await?;
        ensure!(s == 201, "{s} {r}");
        out.push(Posted {
            id: r["id"].as_str().context("id")?.into(),
            timestamp: r["timestamp"].as_str().context("timestamp")?.into(),
            ..p
        });
    }
    Ok(out)
}

async fn wait_indexed(api: &Api, at_least: f64) -> Result<()> {
    let start = Instant::now();
    loop {
        let indexed = api.metric("audit_search_indexed_total").await?;
        let lag = api.metric("audit_search_index_lag_events").await?;
        if indexed >= at_least && lag == 0.0 {
            return Ok(());
        }
        ensure!(start.elapsed() < DEADLINE, "indexing stalled: {indexed} indexed, lag {lag}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Documents of a tenant in the cluster, asked directly (refreshed first).
async fn count_in_cluster(search: &testbed::search::Search, tenant: &str) -> Result<u64> {
    let http = reqwest::Client::new();
    http.post(format!("{}/audit-events-*/_refresh", search.url())).send().await?.error_for_status()?;
    let body = json!({"query": {"term": {"tenantId": tenant}}});
    let r: Value =
        http.post(format!("{}/audit-events-*/_count", search.url())).json(&body).send().await?.json().await?;
    r["count"].as_u64().with_context(|| format!("count answer {r}"))
}

/// The test's own answer: matching ids newest first, and the aggregations.
fn expected(data: &[Posted], tenant: &str, filter: &dyn Fn(&Posted) -> bool) -> (Vec<String>, Value) {
    let matching: Vec<&Posted> = data.iter().filter(|p| p.tenant == tenant && filter(p)).collect();
    let ids = matching.iter().rev().map(|p| p.id.clone()).collect();
    let terms = |key: &dyn Fn(&Posted) -> String| {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for p in &matching {
            *counts.entry(key(p)).or_default() += 1;
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Value::Array(v.into_iter().map(|(k, c)| json!({"key": k, "count": c})).collect())
    };
    let mut hours: BTreeMap<String, u64> = BTreeMap::new();
    for p in &matching {
        *hours.entry(format!("{}:00:00Z", &p.timestamp[..13])).or_default() += 1;
    }
    let timeline = Value::Array(hours.into_iter().map(|(k, c)| json!({"key": k, "count": c})).collect());
    let aggs = json!({
        "actionType": terms(&|p| p.action.clone()),
        "actor": terms(&|p| p.actor.clone()),
        "resourceType": terms(&|p| p.rtype.clone()),
        "timeline": timeline,
    });
    (ids, aggs)
}

/// Every page of a search (limit 7), its ids in order, the first page's aggregations and the backend.
async fn search_all(api: &Api, key: &str, mut body: Value) -> Result<(Vec<String>, Value, String)> {
    body["limit"] = 7.into();
    body["aggregations"] = json!(["actionType", "actor", "resourceType", "timeline"]);
    let (mut ids, mut aggs, mut backend) = (Vec::new(), Value::Null, String::new());
    for page in 0.. {
        let (s, r) = api.post(key, "/api/v1/search", &body).await?;
        ensure!(s == 200, "search {body}: {s} {r}");
        ensure!(r["events"].as_array().is_some_and(|e| e.len() <= 7), "page over the limit: {r}");
        for e in r["events"].as_array().into_iter().flatten() {
            ids.push(e["id"].as_str().context("id")?.to_owned());
        }
        if page == 0 {
            aggs = r["aggregations"].clone();
            backend = r["backend"].as_str().unwrap_or("").to_owned();
        } else {
            ensure!(
                r["aggregations"] == aggs,
                "aggregations changed between pages: page {page} ({}) {} against page 0 ({backend}) {aggs}",
                r["backend"],
                r["aggregations"]
            );
        }
        match r["nextCursor"].as_str() {
            Some(c) => body["cursor"] = c.into(),
            None => break,
        }
        ensure!(page < 100, "pages never end");
    }
    Ok((ids, aggs, backend))
}

type Case = (&'static str, Value, Box<dyn Fn(&Posted) -> bool>);

fn cases() -> Vec<Case> {
    vec![
        ("everything", json!({}), Box::new(|_| true)),
        ("actor", json!({"actorId": "bob"}), Box::new(|p| p.actor == "bob")),
        ("action", json!({"actionType": "READ"}), Box::new(|p| p.action == "READ")),
        ("resource type", json!({"resourceType": "SECRET"}), Box::new(|p| p.rtype == "SECRET")),
        ("source", json!({"source": "cli"}), Box::new(|p| p.source == "cli")),
        ("tags", json!({"tags": {"env": "prod"}}), Box::new(|p| p.env == "prod")),
        ("full text", json!({"query": "Rotated KEY"}), Box::new(|p| p.description == DESCRIPTIONS[0])),
        ("full text, word order", json!({"query": "password rotated"}), Box::new(|p| p.description == DESCRIPTIONS[3])),
        (
            "text and filters",
            json!({"query": "rotated", "actorId": "alice", "tags": {"env": "dev"}}),
            Box::new(|p| p.description.starts_with("rotated") && p.actor == "alice" && p.env == "dev"),
        ),
        ("no match", json!({"query": "rotate"}), Box::new(|_| false)),
        ("resource name", json!({"query": "item 7"}), Box::new(|p| p.id.is_empty())),
    ]
}

async fn check_cases(api: &Api, data: &[Posted], backend: &str, time_range: (&str, &str)) -> Result<()> {
    let mut all_cases = cases();
    // "item 7": the resource name is "item N"; only r-7 has the word 7 (ids are not text).
    let seven = data.iter().filter(|p| p.tenant == "tenant-a").nth(7).map(|p| p.id.clone()).unwrap_or_default();
    all_cases.pop();
    all_cases.push(("resource name", json!({"query": "item 7"}), Box::new(move |p| p.id == seven)));
    let (from, to) = time_range;
    let inside = (from.to_owned(), to.to_owned());
    all_cases.push((
        "time range",
        json!({"from": from, "to": to}),
        Box::new(move |p| p.timestamp.as_str() >= inside.0.as_str() && p.timestamp.as_str() < inside.1.as_str()),
    ));
    for (name, mut body, filter) in all_cases {
        body["tenantId"] = "tenant-a".into();
        let (ids, aggs, got_backend) = search_all(api, KEY_A, body).await?;
        let (want_ids, want_aggs) = expected(data, "tenant-a", filter.as_ref());
        ensure!(got_backend == backend, "{name}: answered by {got_backend}, expected {backend}");
        ensure!(
            ids == want_ids,
            "{name} ({backend}): {} ids, expected {}: {ids:?} vs {want_ids:?}",
            ids.len(),
            want_ids.len()
        );
        ensure!(aggs == want_aggs, "{name} ({backend}): aggregations {aggs} expected {want_aggs}");
    }
    // Oldest first, and a day timeline.
    let body =
        json!({"tenantId": "tenant-a", "order": "asc", "limit": 1000, "aggregations": ["timeline"], "interval": "day"});
    let (s, r) = api.post(KEY_A, "/api/v1/search", &body).await?;
    ensure!(s == 200, "{r}");
    let asc: Vec<&str> = r["events"].as_array().into_iter().flatten().filter_map(|e| e["id"].as_str()).collect();
    let want: Vec<&str> = data.iter().filter(|p| p.tenant == "tenant-a").map(|p| p.id.as_str()).collect();
    ensure!(asc == want, "{backend}: ascending order differs");
    let days: u64 =
        r["aggregations"]["timeline"].as_array().into_iter().flatten().filter_map(|b| b["count"].as_u64()).sum();
    ensure!(days == want.len() as u64, "{backend}: day timeline counts {days}");
    Ok(())
}

async fn check_isolation(api: &Api, data: &[Posted]) -> Result<()> {
    let (s, r) = api.post(KEY_B, "/api/v1/search", &json!({"tenantId": "tenant-a"})).await?;
    ensure!(s == 403, "key of tenant-b searched tenant-a: {s} {r}");
    for query in ["rotated", "tenant-a", "tenantId:tenant-a", "* OR tenantId:tenant-a"] {
        let (ids, _, _) = search_all(api, KEY_B, json!({"tenantId": "tenant-b", "query": query})).await?;
        let of_a: Vec<&String> =
            ids.iter().filter(|id| data.iter().any(|p| &p.id == *id && p.tenant != "tenant-b")).collect();
        ensure!(of_a.is_empty(), "query {query:?} of tenant-b found tenant-a's events {of_a:?}");
    }
    let (ids, _, _) = search_all(api, KEY_B, json!({"tenantId": "tenant-b", "query": "rotated"})).await?;
    let want = expected(data, "tenant-b", &|p| p.description.starts_with("rotated")).0;
    ensure!(ids == want && !want.is_empty(), "tenant-b's own search: {ids:?} vs {want:?}");
    Ok(())
}

async fn indexed_and_searched(product: Product, backend: Backend) -> Result<()> {
    let search = testbed::search::search_with(product).await?;
    let db = Arc::new(Db::new(backend, "search_happy").await?);
    let server = audit_server::spawn(with_search(&db, &search, Duration::from_secs(60))).await?;
    let api = Api::of(&server);
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = db.sample_passed_rows(sampling.clone());
    let mut data = ingest(&api, "tenant-a", KEY_A, 40, 0).await?;
    // Indexed in two steps, so that the sampler sees cursors and rows side by side for a while.
    wait_indexed(&api, 40.0).await?;
    data.extend(ingest(&api, "tenant-b", KEY_B, 12, 0).await?);
    wait_indexed(&api, 52.0).await?;
    sampling.store(true, Ordering::Relaxed);
    // The indexer deletes the rows it indexed in the transaction that moves its cursors.
    let (samples, worst) = sampler.await??;
    ensure!(worst == 0, "{worst} passed rows left in the outbox ({samples} samples)");
    // The indexer's read floor (src/outbox/floor.rs): past the first step's rows once the second
    // step is recorded, on PostgreSQL; SQLite has none.
    let floor = "audit_outbox_read_floor_position{consumer=\"search\"}";
    if backend == Backend::Postgres {
        let start = Instant::now();
        while api.metric(floor).await? == 0.0 {
            ensure!(start.elapsed() < Duration::from_secs(60), "the indexer's read floor stays at 0");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        ensure!(api.metric(floor).await? == 0.0, "a read floor on SQLite");
    }
    ensure!(api.metric("audit_outbox_read_floor_misses_total").await? == 0.0, "rows found below the read floor");
    ensure!(count_in_cluster(&search, "tenant-a").await? == 40 && count_in_cluster(&search, "tenant-b").await? == 12);
    // The template the cluster holds, read back from it.
    let t: Value = reqwest::get(format!("{}/_index_template/audit-events", search.url())).await?.json().await?;
    let mapping = &t["index_templates"][0]["index_template"]["template"]["mappings"]["properties"];
    ensure!(mapping["tenantId"]["type"] == "keyword" && mapping["timestamp"]["type"] == "date", "template {t}");
    ensure!(mapping["description"]["type"] == "text", "template {t}");
    let a: Vec<&Posted> = data.iter().filter(|p| p.tenant == "tenant-a").collect();
    let range = (a[10].timestamp.clone(), a[30].timestamp.clone());
    check_cases(&api, &data, "elasticsearch", (&range.0, &range.1)).await?;
    check_isolation(&api, &data).await?;
    server.shutdown().await?;

    // A second implementation of the same API: the database answer, on the same data.
    let mut config = db.config();
    config.search = None;
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    check_cases(&api, &data, "database", (&range.0, &range.1)).await?;
    check_isolation(&api, &data).await?;
    server.shutdown().await?;

    // The index lost (a snapshot restored without the newest events, or search configured late):
    // `audit-server search-reindex` indexes the events again from the database.
    delete_indices(&search).await?;
    let unknown = reindex_command(&db, &search, &["--tenant", "tenant-z"]).output().await?;
    ensure!(unknown.status.code() == Some(2), "an unknown tenant: {unknown:?}");
    ensure!(String::from_utf8_lossy(&unknown.stderr).contains("\"tenant-z\" has no events"), "{unknown:?}");
    let one = reindex(&db, &search, &["--tenant", "tenant-b"]).await?;
    ensure!(one["indexed"] == 12 && one["tenants"] == 1 && one["refused"] == 0, "{one}");
    ensure!(count_in_cluster(&search, "tenant-a").await? == 0 && count_in_cluster(&search, "tenant-b").await? == 12);
    delete_indices(&search).await?;
    let since = a[30].timestamp.clone();
    let recent = data.iter().filter(|p| p.tenant == "tenant-a" && p.timestamp >= since).count() as u64;
    let some = reindex(&db, &search, &["--tenant", "tenant-a", "--since", &since, "--batch", "3"]).await?;
    ensure!(some["indexed"] == recent && count_in_cluster(&search, "tenant-a").await? == recent, "{some}");
    let all = reindex(&db, &search, &[]).await?;
    ensure!(all["indexed"] == 52 && all["tenants"] == 2, "{all}");
    ensure!(count_in_cluster(&search, "tenant-a").await? == 40 && count_in_cluster(&search, "tenant-b").await? == 12);
    // And the index answers every case as the model says again.
    let server = audit_server::spawn(with_search(&db, &search, Duration::from_secs(60))).await?;
    let api = Api::of(&server);
    check_cases(&api, &data, "elasticsearch", (&range.0, &range.1)).await?;
    eprintln!(
        "{product:?}/{backend:?}: 52 events indexed; every case equal in the index, the database and the model, \
         and in the index again after search-reindex"
    );
    server.shutdown().await
}

/// Delete the server's indices (by name: Elasticsearch 8 refuses wildcard deletes by default).
async fn delete_indices(search: &testbed::search::Search) -> Result<()> {
    let http = reqwest::Client::new();
    let list: Value =
        http.get(format!("{}/_cat/indices/audit-events-*?format=json", search.url())).send().await?.json().await?;
    for index in list.as_array().context("indices")? {
        let name = index["index"].as_str().context("index name")?;
        http.delete(format!("{}/{name}", search.url())).send().await?.error_for_status()?;
    }
    Ok(())
}

/// Run `audit-server search-reindex ARGS` on `db` and `search`; its JSON summary.
async fn reindex(db: &Db, search: &testbed::search::Search, args: &[&str]) -> Result<Value> {
    let mut cmd = reindex_command(db, search, args);
    let out = tokio::time::timeout(DEADLINE, cmd.output()).await.context("search-reindex did not finish")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "search-reindex {args:?}: {:?}\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout).with_context(|| format!("search-reindex {args:?} printed no JSON: {stderr}"))
}

/// `audit-server search-reindex ARGS` with the configuration of `db` and `search`.
fn reindex_command(db: &Db, search: &testbed::search::Search, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_audit-server"));
    cmd.arg("search-reindex")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AUDIT_DATA_DIR", db.dir.path().join("data"))
        .env("AUDIT_SEARCH_URL", search.url())
        .env("AUDIT_LOG", "warn")
        .kill_on_drop(true);
    if let Some(url) = &db.url {
        cmd.env("DATABASE_URL", url);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_on_postgres() -> Result<()> {
    indexed_and_searched(Product::Elasticsearch, Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensearch_on_sqlite() -> Result<()> {
    indexed_and_searched(Product::OpenSearch, Backend::Sqlite).await
}

/// SIGSTOP/SIGCONT of the node's process group; continued on drop whatever happens.
struct Frozen(u32);

impl Frozen {
    fn freeze(pid: u32) -> Result<Frozen> {
        let ok = std::process::Command::new("kill").args(["-s", "STOP", "--", &format!("-{pid}")]).status()?.success();
        ensure!(ok, "kill -STOP -{pid} failed");
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-s", "CONT", "--", &format!("-{}", self.0)]).status();
    }
}

/// Bulk items refused by the cluster (a write block: 200 with failed items) are retried, not
/// counted; then the search node stops answering (frozen) during ingest: appends go on, readiness stays true,
/// the lag grows, searches are answered from the database; back, the lag returns to 0 and every
/// acknowledged event is in the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_down_then_back() -> Result<()> {
    let search = testbed::search::search_with(Product::Elasticsearch).await?;
    let db = Db::new(Backend::Postgres, "search_down").await?;
    let server = audit_server::spawn(with_search(&db, &search, Duration::from_secs(5))).await?;
    let api = Api::of(&server);
    let mut data = ingest(&api, "tenant-a", KEY_A, 10, 0).await?;
    wait_indexed(&api, 10.0).await?;

    // Refused items in a bulk answered 200: the month's index blocked for writes (403 per item).
    let http = reqwest::Client::new();
    let index = format!("{}/audit-events-{}", search.url(), &data[0].timestamp[..7].replace('-', "."));
    let block = |on: bool| http.put(format!("{index}/_settings")).json(&json!({"index.blocks.write": on})).send();
    block(true).await?.error_for_status()?;
    data.extend(ingest(&api, "tenant-a", KEY_A, 10, 10).await?);
    let start = Instant::now();
    while api.metric("audit_search_index_failures_total").await? < 1.0
        || api.metric("audit_search_index_lag_events").await? < 10.0
    {
        ensure!(start.elapsed() < DEADLINE, "refused bulk items never showed as failures and lag");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(api.metric("audit_search_indexed_total").await? == 10.0, "refused items counted as indexed");
    block(false).await?.error_for_status()?;
    wait_indexed(&api, 20.0).await?;
    ensure!(count_in_cluster(&search, "tenant-a").await? == 20, "refused items not indexed after the block was lifted");

    // The node stops answering altogether.
    let frozen = Frozen::freeze(search.pid())?;
    data.extend(ingest(&api, "tenant-a", KEY_A, 30, 20).await?);
    let ready = api.http.get(api.url("/actuator/health/readiness")).send().await?.status();
    ensure!(ready == 200, "readiness {ready} with search down");
    let start = Instant::now();
    while api.metric("audit_search_index_lag_events").await? < 1.0 {
        ensure!(start.elapsed() < DEADLINE, "the lag never showed the unindexed events");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ids, _, backend) = search_all(&api, KEY_A, json!({"tenantId": "tenant-a"})).await?;
    ensure!(backend == "database" && ids.len() == 50, "search with the index down: {backend}, {} events", ids.len());
    ensure!(api.metric("audit_search_fallbacks_total").await? >= 1.0);
    drop(frozen);
    wait_indexed(&api, 50.0).await?;
    ensure!(count_in_cluster(&search, "tenant-a").await? == 50, "events missing from the index after it came back");
    // Searches come back to the index (a node just thawed may still answer its first ones slowly).
    let want = expected(&data, "tenant-a", &|_| true).0;
    let start = Instant::now();
    loop {
        let (ids, _, backend) = search_all(&api, KEY_A, json!({"tenantId": "tenant-a"})).await?;
        ensure!(ids == want, "after recovery ({backend}): {} of {} events", ids.len(), want.len());
        if backend == "elasticsearch" {
            break;
        }
        ensure!(start.elapsed() < DEADLINE, "searches never came back to the index");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    server.shutdown().await
}
