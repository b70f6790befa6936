//! The events API end to end over HTTP, each scenario on SQLite and on the testbed's PostgreSQL.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, KEY_A, KEY_B, event};
use serde_json::{Value, json};

on_both!(
    round_trip,
    idempotency,
    pagination_under_concurrent_inserts,
    error_statuses,
    tenant_isolation,
    failing_tenant_spares_others,
    tamper_detection,
    shutdown_and_metrics,
    outbox_lag_and_purge
);

async fn round_trip(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "round_trip").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);

    let (status, first) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", "alice", "LOGIN")).await?;
    ensure!(status == 201, "POST answered {status}: {first}");
    assert_eq!(first["status"], "STORED");
    assert_eq!(first["previousHash"], "GENESIS");
    assert_eq!(first["sequence"], 1);
    let (status, second) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", "bob", "LOGOUT")).await?;
    ensure!(status == 201, "{second}");
    assert_eq!(second["previousHash"], first["hash"], "the second link must point at the first");

    let (status, got) = api.get(KEY_A, &format!("/api/v1/events/{}", first["id"].as_str().unwrap_or_default())).await?;
    ensure!(status == 200, "GET answered {status}: {got}");
    assert_eq!(got["actor"]["id"], "alice");
    assert_eq!(got["resource"]["after"], json!({"v": 2}));
    assert_eq!(got["metadata"]["tags"], json!({"env": "test"}));
    assert_eq!(got["hash"], first["hash"]);
    assert_eq!(got["timestamp"], first["timestamp"]);
    // A third party can re-verify from what GET returns: the README's recipe, run by python3.
    readme_recipe_verifies(std::slice::from_ref(&got)).await?;

    let batch = json!({"events": (0..5).map(|i| event("tenant-a", &format!("u{i}"), "READ")).collect::<Vec<_>>()});
    let (status, res) = api.post(KEY_A, "/api/v1/events/batch", &batch).await?;
    ensure!(status == 201, "batch answered {status}: {res}");
    assert_eq!(res["count"], 5);
    let results = res["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results[0]["previousHash"], second["hash"]);
    for pair in results.windows(2) {
        assert_eq!(pair[1]["previousHash"], pair[0]["hash"]);
    }

    let (_, page) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&actorId=alice").await?;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1));
    let (_, page) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&actionType=READ&order=desc&limit=2").await?;
    let seqs: Vec<i64> =
        page["events"].as_array().into_iter().flatten().filter_map(|e| e["sequence"].as_i64()).collect();
    assert_eq!(seqs, [7, 6]);
    let (_, page) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&resourceId=doc-u3").await?;
    assert_eq!(page["events"][0]["actor"]["id"], "u3");
    let ts = first["timestamp"].as_str().unwrap_or_default();
    let (_, page) = api.get(KEY_A, &format!("/api/v1/events?tenantId=tenant-a&to={ts}")).await?;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(0), "`to` is exclusive");

    let report = api.verify("tenant-a").await?;
    assert_eq!(report, json!({"tenantId": "tenant-a", "verified": true, "checked": 7}));
    // The whole export verifies with the README's recipe, and an edited copy does not.
    let mut export = api.all_events("tenant-a").await?;
    ensure!(export.len() == 7, "{} events exported", export.len());
    readme_recipe_verifies(&export).await?;
    export[3]["actor"]["name"] = json!("Someone Else");
    ensure!(readme_recipe_verifies(&export).await.is_err(), "the README's recipe accepted an edited event");
    server.shutdown().await
}

async fn idempotency(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "idempotency").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let post = |key: &'static str, body: Value, path: &'static str| {
        let api = api.clone();
        async move {
            let r = api
                .http
                .post(api.url(path))
                .header("x-api-key", ADMIN_KEY)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await?;
            let replayed = r.headers().contains_key("idempotent-replayed");
            anyhow::Ok((r.status().as_u16(), replayed, r.json::<Value>().await?))
        }
    };
    let body = event("tenant-a", "alice", "LOGIN");
    let (s1, replayed1, r1) = post("k-1", body.clone(), "/api/v1/events").await?;
    let (s2, replayed2, r2) = post("k-1", body.clone(), "/api/v1/events").await?;
    ensure!(s1 == 201 && s2 == 201, "{s1} {s2}");
    assert!(!replayed1 && replayed2);
    assert_eq!(r1, r2, "a retry returns the original receipt");
    let (s3, _, r3) = post("k-1", event("tenant-a", "mallory", "LOGIN"), "/api/v1/events").await?;
    assert_eq!(s3, 409, "same key, different body: {r3}");

    // Concurrent retries with one key store one event.
    let tasks: Vec<_> =
        (0..8).map(|_| tokio::spawn(post("k-2", event("tenant-a", "carol", "X"), "/api/v1/events"))).collect();
    let mut ids = HashSet::new();
    for t in tasks {
        let (s, _, r) = t.await??;
        ensure!(s == 201, "{s}: {r}");
        ids.insert(r["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(ids.len(), 1, "concurrent retries got different events: {ids:?}");

    let batch = json!({"events": [event("tenant-a", "d", "A"), event("tenant-a", "e", "B")]});
    let (b1, _, br1) = post("k-3", batch.clone(), "/api/v1/events/batch").await?;
    let (b2, replayed, br2) = post("k-3", batch, "/api/v1/events/batch").await?;
    ensure!(b1 == 201 && b2 == 201 && replayed, "{b1} {b2} {br2}");
    assert_eq!(br1, br2);
    // Same key used on the other route is a different request.
    let (s, _, _) = post("k-3", event("tenant-a", "d", "A"), "/api/v1/events").await?;
    assert_eq!(s, 409);

    assert_eq!(api.all_events("tenant-a").await?.len(), 4, "1 + 1 + 2 events stored");
    assert_eq!(api.verify("tenant-a").await?["verified"], true);
    server.shutdown().await
}

async fn pagination_under_concurrent_inserts(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "pagination").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let batch = json!({"events": (0..250).map(|i| event("tenant-a", &format!("u{i}"), "SEED")).collect::<Vec<_>>()});
    let (status, _) = api.post(ADMIN_KEY, "/api/v1/events/batch", &batch).await?;
    ensure!(status == 201);

    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                let (s, body) =
                    api.post(ADMIN_KEY, "/api/v1/events", &event("tenant-a", &format!("w{i}"), "LIVE")).await?;
                ensure!(s == 201, "{s}: {body}");
            }
            anyhow::Ok(())
        })
    };
    // Newest first while writes land: pages continue below the cursor, so nothing repeats or hides.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first_top = None;
    loop {
        let mut path = "/api/v1/events?tenantId=tenant-a&order=desc&limit=17".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = api.get(ADMIN_KEY, &path).await?;
        ensure!(status == 200, "{page}");
        let seqs: Vec<i64> =
            page["events"].as_array().into_iter().flatten().filter_map(|e| e["sequence"].as_i64()).collect();
        first_top.get_or_insert(seqs[0]);
        seen.extend(seqs);
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await??;
    let top = first_top.unwrap_or_default();
    let expected: Vec<i64> = (1..=top).rev().collect();
    assert_eq!(seen, expected, "descending pages under concurrent inserts");

    // Ascending: everything once, in chain order, including what arrived meanwhile.
    let all = api.all_events("tenant-a").await?;
    let seqs: Vec<i64> = all.iter().filter_map(|e| e["sequence"].as_i64()).collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    server.shutdown().await
}

async fn error_statuses(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "errors").await?;
    let mut config = db.config();
    config.api_keys.push(audit_server::ApiKeyConfig::plain("slow-key", &["tenant-a"]));
    config.rate_limit_per_second = 2.0;
    config.rate_limit_burst = 200;
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let url = api.url("/api/v1/events");
    let http = &api.http;
    let expect_json_error = |status: u16, want: u16, body: &Value| -> Result<()> {
        ensure!(status == want, "expected {want}, got {status}: {body}");
        ensure!(body["error"].is_string() && body["message"].is_string(), "not a JSON error: {body}");
        Ok(())
    };

    // 400: every invalid field listed.
    let (s, b) =
        api.post(KEY_A, "/api/v1/events", &json!({"actor": {"id": ""}, "metadata": {"tenantId": "tenant-a"}})).await?;
    expect_json_error(s, 400, &b)?;
    let fields: Vec<&str> = b["details"].as_array().into_iter().flatten().filter_map(|d| d["field"].as_str()).collect();
    for f in ["action", "resource", "actor.id", "actor.type", "metadata.source"] {
        ensure!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    let r = http
        .post(&url)
        .header("x-api-key", KEY_A)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    let s = r.status().as_u16();
    expect_json_error(s, 400, &r.json().await?)?;
    let (s, b) = api.get(KEY_A, "/api/v1/events/not-a-uuid").await?;
    expect_json_error(s, 400, &b)?;
    let (s, b) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&limit=0").await?;
    expect_json_error(s, 400, &b)?;
    let (s, b) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&cursor=%%%").await?;
    expect_json_error(s, 400, &b)?;
    let (s, b) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&from=yesterday").await?;
    expect_json_error(s, 400, &b)?;
    let (s, b) = api.get(KEY_A, "/api/v1/events").await?;
    expect_json_error(s, 400, &b)?;
    let (s, b) = api.get(KEY_A, "/api/v1/integrity/verify").await?;
    expect_json_error(s, 400, &b)?;
    let many = json!({"events": (0..1001).map(|_| event("tenant-a", "x", "Y")).collect::<Vec<_>>()});
    let (s, b) = api.post(KEY_A, "/api/v1/events/batch", &many).await?;
    expect_json_error(s, 400, &b)?;
    let mixed = json!({"events": [event("tenant-a", "x", "Y"), event("tenant-b", "x", "Y")]});
    let (s, b) = api.post(ADMIN_KEY, "/api/v1/events/batch", &mixed).await?;
    expect_json_error(s, 400, &b)?;
    let mut nul = event("tenant-a", "x", "Y");
    nul["actor"]["id"] = json!("a\u{0}b");
    let (s, b) = api.post(KEY_A, "/api/v1/events", &nul).await?;
    expect_json_error(s, 400, &b)?;
    let mut long = event("tenant-a", "x", "Y");
    long["resource"]["id"] = json!("r".repeat(5000));
    let (s, b) = api.post(KEY_A, "/api/v1/events", &long).await?;
    expect_json_error(s, 400, &b)?;

    // What a client means must be what is stored, or a 400 naming the field: an integer literal
    // beyond 64 bits (serde_json would round it to a double), a key given twice (readers disagree
    // on which counts), a query parameter the route does not know (a filter silently dropped), a
    // time bound finer than the stored microsecond, a leap second.
    let raw = |path: &str, body: String| {
        http.post(api.url(path)).header("x-api-key", KEY_A).header("content-type", "application/json").body(body)
    };
    let big = event("tenant-a", "x", "Y").to_string().replacen(
        r#""actor":{"#,
        r#""actor":{"attributes":{"n":18446744073709551617},"#,
        1,
    );
    let r = raw("/api/v1/events", big).send().await?;
    let (s, b) = (r.status().as_u16(), r.json::<Value>().await?);
    expect_json_error(s, 400, &b)?;
    ensure!(b["details"][0]["field"] == "actor.attributes.n", "{b}");
    let twice =
        event("tenant-a", "x", "Y").to_string().replacen(r#""tenantId":"#, r#""tenantId":"tenant-b","tenantId":"#, 1);
    let r = raw("/api/v1/events", twice).send().await?;
    let (s, b) = (r.status().as_u16(), r.json::<Value>().await?);
    expect_json_error(s, 400, &b)?;
    ensure!(b["message"].as_str().is_some_and(|m| m.contains("\"tenantId\" appears twice")), "{b}");
    // What the client sent is named, not echoed back in full: a 4,097-character member name,
    // too long and given twice.
    let long_name = "n".repeat(4097);
    let echoed = event("tenant-a", "x", "Y").to_string().replacen(
        r#""actor":{"#,
        &format!(r#""actor":{{"attributes":{{"{long_name}":1,"{long_name}":2}},"#),
        1,
    );
    let r = raw("/api/v1/events", echoed).send().await?;
    let (s, text) = (r.status().as_u16(), r.text().await?);
    ensure!(s == 400 && text.len() < 1500, "{s}: {} bytes: {text:.300}", text.len());
    ensure!(text.contains("more characters"), "{text:.300}");
    for (path, field) in [
        ("/api/v1/events?tenantId=tenant-a&resourceType=NOPE", "resourceType"),
        ("/api/v1/events/export?tenantId=tenant-a&since=1", "since"),
        ("/api/v1/events?tenantId=tenant-a&to=2026-12-06T20:47:55.8659981Z", ""),
        ("/api/v1/events?tenantId=tenant-a&from=2026-06-30T12:34:60Z", ""),
    ] {
        let (s, b) = api.get(KEY_A, path).await?;
        expect_json_error(s, 400, &b)?;
        ensure!(field.is_empty() || b["details"][0]["field"] == field, "{path}: {b}");
    }
    let (s, b) = api.post(KEY_A, "/api/v1/events?sign=true", &event("tenant-a", "x", "Y")).await?;
    expect_json_error(s, 400, &b)?;
    // POST /search: the same body rules as the appends (415, a field path for a wrong type).
    let r = http
        .post(api.url("/api/v1/search"))
        .header("x-api-key", KEY_A)
        .header("content-type", "text/plain")
        .body(r#"{"tenantId":"tenant-a"}"#)
        .send()
        .await?;
    let s = r.status().as_u16();
    expect_json_error(s, 415, &r.json().await?)?;
    let (s, b) = api.post(KEY_A, "/api/v1/search", &json!({"tenantId": "tenant-a", "limit": "5"})).await?;
    expect_json_error(s, 400, &b)?;
    ensure!(b["details"][0]["field"] == "limit", "{b}");

    // 401: missing and wrong key.
    let r = http.get(api.url("/api/v1/events?tenantId=tenant-a")).send().await?;
    let s = r.status().as_u16();
    expect_json_error(s, 401, &r.json().await?)?;
    let (s, b) = api.get("wrong", "/api/v1/events?tenantId=tenant-a").await?;
    expect_json_error(s, 401, &b)?;
    // 404: unknown event, unknown route.
    let (s, b) = api.get(KEY_A, &format!("/api/v1/events/{}", uuid::Uuid::new_v4())).await?;
    expect_json_error(s, 404, &b)?;
    let (s, b) = api.get(KEY_A, "/api/v1/nothing-here").await?;
    expect_json_error(s, 404, &b)?;
    // 405 on a known route.
    let r = http.delete(api.url("/api/v1/events")).header("x-api-key", KEY_A).send().await?;
    let s = r.status().as_u16();
    expect_json_error(s, 405, &r.json().await?)?;
    // 413: over 10 MiB, declared up front or streamed in chunks. Raw TCP, because the server
    // answers without reading the rest and an HTTP client would fail on the broken pipe instead.
    for chunked in [false, true] {
        let (s, b) = post_oversized(server.addr(), chunked).await?;
        expect_json_error(s, 413, &b)?;
    }
    // 415: not JSON.
    let r = http.post(&url).header("x-api-key", KEY_A).header("content-type", "text/plain").body("{}").send().await?;
    let s = r.status().as_u16();
    expect_json_error(s, 415, &r.json().await?)?;
    // 415: a compressed body (RFC 9110 8.4.1), saying which coding and what is accepted; identity
    // is no coding at all.
    let gz = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00\x43\xbf\xa6\xa3\x02\x00\x00\x00".to_vec();
    let r = raw("/api/v1/events", String::new()).header("content-encoding", "gzip").body(gz).send().await?;
    ensure!(r.headers().get("accept-encoding").is_some_and(|v| v == "identity"), "{:?}", r.headers());
    let (s, b) = (r.status().as_u16(), r.json::<Value>().await?);
    expect_json_error(s, 415, &b)?;
    ensure!(b["message"].as_str().is_some_and(|m| m.contains("Content-Encoding \"gzip\"")), "{b}");
    let r = raw("/api/v1/events", event("tenant-a", "x", "Y").to_string()).header("content-encoding", "identity");
    let s = r.send().await?.status().as_u16();
    ensure!(s == 201, "Content-Encoding: identity refused: {s}");
    // 429: the rate-limited key, once its burst is spent.
    let mut limited = None;
    for _ in 0..400 {
        let (s, b) = api.get("slow-key", "/api/v1/events?tenantId=tenant-a&limit=1").await?;
        if s != 200 {
            limited = Some((s, b));
            break;
        }
    }
    let (s, b) = limited.ok_or_else(|| anyhow::anyhow!("never rate limited"))?;
    expect_json_error(s, 429, &b)?;
    server.shutdown().await
}

async fn tenant_isolation(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "isolation").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let (s, mine) = api.post(KEY_B, "/api/v1/events", &event("tenant-b", "bob", "LOGIN")).await?;
    ensure!(s == 201, "{mine}");
    let id = mine["id"].as_str().unwrap_or_default().to_owned();
    let forbidden = [
        api.post(KEY_A, "/api/v1/events", &event("tenant-b", "eve", "FORGE")).await?,
        api.post(KEY_A, "/api/v1/events/batch", &json!({"events": [event("tenant-b", "eve", "FORGE")]})).await?,
        api.get(KEY_A, "/api/v1/events?tenantId=tenant-b").await?,
        api.get(KEY_A, "/api/v1/integrity/verify?tenantId=tenant-b").await?,
    ];
    for (i, (status, body)) in forbidden.iter().enumerate() {
        ensure!(*status == 403 && body["error"] == "forbidden", "request {i}: {status} {body}");
    }
    // By id, another tenant's event is a 404 like a missing one (tests/security.rs).
    assert_eq!(api.get(KEY_A, &format!("/api/v1/events/{id}")).await?.0, 404);
    assert_eq!(api.get(KEY_B, &format!("/api/v1/events/{id}")).await?.0, 200);
    assert_eq!(api.all_events("tenant-b").await?.len(), 1, "the forged writes stored nothing");
    server.shutdown().await
}

/// Group commit puts several tenants in one transaction: a tenant whose append fails in the
/// database (here a squatted sequence number, a primary key violation) must not fail the others.
/// The requests are made to queue behind a held write lock, and the group-commit counters show
/// that they then shared transactions.
async fn failing_tenant_spares_others(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "failing_tenant").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    for (key, tenant) in [(KEY_A, "tenant-a"), (KEY_B, "tenant-b")] {
        let (s, b) = api.post(key, "/api/v1/events", &event(tenant, "first", "LOGIN")).await?;
        ensure!(s == 201, "{b}");
    }
    let uuid_cast = if backend == Backend::Postgres { "::uuid" } else { "" };
    db.exec(&format!(
        "INSERT INTO events (tenant_id, sequence, id, ts, actor_id, resource_id, action_type, body, hash, previous_hash)
         SELECT tenant_id, 2, '{}'{uuid_cast}, ts, actor_id, resource_id, action_type, body, hash, previous_hash
         FROM events WHERE tenant_id = 'tenant-a' AND sequence = 1",
        uuid::Uuid::now_v7()
    ))
    .await?;
    let (runs_before, jobs_before) =
        (api.metric("audit_group_commit_runs_total").await?, api.metric("audit_group_commit_jobs_total").await?);

    // The first append transaction waits for the held lock; the requests arriving meanwhile queue
    // behind it and go into the next transaction together, both tenants mixed.
    let lock = WriteLock::hold(&db).await?;
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let (key, tenant) = if i % 2 == 0 { (KEY_A, "tenant-a") } else { (KEY_B, "tenant-b") };
            let api = api.clone();
            tokio::spawn(async move { (tenant, api.post(key, "/api/v1/events", &event(tenant, "u", "X")).await) })
        })
        .collect();
    // The leader is inside its transaction (holding a pool connection), blocked on the lock.
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.metric("audit_db_pool_connections_active").await? < 1.0 {
        ensure!(Instant::now() < deadline, "no append transaction started within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.release().await?;
    for request in requests {
        let (tenant, answer) = request.await?;
        let (status, body) = answer?;
        let expected = if tenant == "tenant-a" { 500 } else { 201 };
        ensure!(status == expected, "{tenant}: expected {expected}, got {status}: {body}");
    }
    assert_eq!(api.all_events("tenant-b").await?.len(), 21, "every tenant-b event is stored");
    assert_eq!(api.verify("tenant-b").await?["verified"], true);
    let runs = api.metric("audit_group_commit_runs_total").await? - runs_before;
    let jobs = api.metric("audit_group_commit_jobs_total").await? - jobs_before;
    ensure!(jobs == 20.0, "{jobs} committed requests counted, expected tenant-b's 20");
    ensure!(runs < jobs, "tenant-b's {jobs} requests took {runs} group-commit runs: no transaction was shared");
    server.shutdown().await
}

/// The value of an unlabelled series in the server's scrape.
/// The outbox's upkeep statements (lag count, periodic purge) against literal counts: a search
/// consumer that cannot reach its cluster (nothing indexes, so only the test moves its cursors)
/// and a second consumer registered in the database that no replica runs. Besides 30 single
/// events, one request of 6 (on PostgreSQL one row per consumer lists them all): a row passed in
/// part stays, and only its pending events count as lag.
async fn outbox_lag_and_purge(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "outbox_lag_and_purge").await?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config = db.config();
    config.search = Some(audit_server::config::SearchConfig::new(format!("http://127.0.0.1:{closed}")));
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    db.exec("INSERT INTO outbox_consumers (consumer, stream_id) VALUES ('gone', 'gone')").await?;
    // 10 events per tenant, each with a row for `search` and one for `gone`; tenant-d's 6 in one
    // transaction.
    let started = Instant::now();
    for i in 0..30 {
        let tenant = ["tenant-a", "tenant-b", "tenant-c"][i % 3];
        let (status, body) = api.post(ADMIN_KEY, "/api/v1/events", &event(tenant, "alice", "LOGIN")).await?;
        ensure!(status == 201, "append {i}: {status} {body}");
    }
    let batch = json!({"events": (0..6).map(|i| event("tenant-d", &format!("u{i}"), "READ")).collect::<Vec<_>>()});
    let (status, body) = api.post(ADMIN_KEY, "/api/v1/events/batch", &batch).await?;
    ensure!(status == 201, "the batch: {status} {body}");
    if backend == Backend::Postgres {
        ensure!(db.count("SELECT count(*) FROM outbox").await? == 31 * 2, "one row per transaction and consumer");
    }
    let until = |name: &'static str, want: f64| api.metric_reaches(name, want, Duration::from_secs(60));
    until("audit_search_index_lag_events", 36.0).await?;
    until("audit_outbox_rows", 72.0).await?;
    // The age of the oldest pending event: stored during this test, so above 0 and below the
    // time since the appends began.
    let age = api.metric("audit_search_index_lag_seconds").await?;
    ensure!(age > 0.0 && age <= started.elapsed().as_secs_f64() + 5.0, "search lag of {age} s");
    // Cursors as if search had handled tenant-a up to 4, tenant-b up to 10 (all of it) and
    // tenant-d up to 4 (2 left), and `gone` tenant-c up to 7 and tenant-d all of it; tenant-a's
    // cursor for `gone` at 0 passes nothing.
    db.exec(
        "INSERT INTO outbox_cursors (consumer, tenant_id, sequence) VALUES \
         ('search', 'tenant-a', 4), ('search', 'tenant-b', 10), ('search', 'tenant-d', 4), \
         ('gone', 'tenant-c', 7), ('gone', 'tenant-a', 0), ('gone', 'tenant-d', 6)",
    )
    .await?;
    // The next sample (every 2 s) must count 18 at once, whether the purge (every 10 s) ran
    // first or not: events at a cursor are passed.
    let start = Instant::now();
    let lag = loop {
        let lag = api.metric("audit_search_index_lag_events").await?;
        if lag != 36.0 {
            break lag;
        }
        ensure!(start.elapsed() < Duration::from_secs(60), "the search lag stays at 36");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(lag == 36.0 - 4.0 - 10.0 - 4.0, "search lag {lag} after the cursors moved, expected 18");
    // The periodic purge (every 10 s) removes exactly the rows the cursors passed: search's 14
    // single events, gone's 7 and its tenant-d row. Search's tenant-d row, passed in part, stays
    // whole on PostgreSQL (6 events listed); on SQLite its 4 passed rows go.
    let search_left = if backend == Backend::Postgres { 22.0 } else { 18.0 };
    until("audit_outbox_rows", search_left + 23.0).await?;
    ensure!(db.outbox_events("consumer = 'gone'").await? == 23, "gone's rows");
    // Unregistered, `gone` holds nothing back any more: all its rows go, search's stay.
    db.exec("DELETE FROM outbox_consumers WHERE consumer = 'gone'").await?;
    until("audit_outbox_rows", search_left).await?;
    ensure!(db.outbox_events("consumer = 'search'").await? == search_left as i64, "search's rows");
    until("audit_search_index_lag_events", 18.0).await?;
    // Search passes everything: no lag, no age, no rows.
    db.exec("UPDATE outbox_cursors SET sequence = 10 WHERE consumer = 'search'").await?;
    db.exec("INSERT INTO outbox_cursors (consumer, tenant_id, sequence) VALUES ('search', 'tenant-c', 10)").await?;
    until("audit_search_index_lag_events", 0.0).await?;
    until("audit_search_index_lag_seconds", 0.0).await?;
    until("audit_outbox_rows", 0.0).await?;
    server.shutdown().await
}

/// An open transaction, on a connection of its own, holding the lock every append needs
/// (PostgreSQL: the chain heads table; SQLite: the database write lock).
enum WriteLock {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl WriteLock {
    async fn hold(db: &Db) -> Result<WriteLock> {
        use sqlx::Connection;
        Ok(match &db.url {
            Some(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::raw_sql("BEGIN; LOCK TABLE chain_heads IN EXCLUSIVE MODE").execute(&mut conn).await?;
                WriteLock::Postgres(conn)
            }
            None => {
                let url = format!("sqlite://{}", db.dir.path().join("data/audit.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await?;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await?;
                WriteLock::Sqlite(conn)
            }
        })
    }

    async fn release(self) -> Result<()> {
        match self {
            WriteLock::Postgres(mut c) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await?;
            }
            WriteLock::Sqlite(mut c) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await?;
            }
        }
        Ok(())
    }
}

/// Edit, delete, insert and reorder rows behind the server's back; verify names the first broken link.
async fn tamper_detection(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "tamper").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    for tenant in ["t-edit", "t-delete", "t-insert", "t-reorder", "t-tail", "t-column"] {
        let batch =
            json!({"events": (1..=10).map(|i| event(tenant, &format!("user{i}"), "LOGIN")).collect::<Vec<_>>()});
        let (s, b) = api.post(ADMIN_KEY, "/api/v1/events/batch", &batch).await?;
        ensure!(s == 201, "{b}");
        assert_eq!(api.verify(tenant).await?["verified"], true);
    }
    let uuid_cast = if backend == Backend::Postgres { "::uuid" } else { "" };
    db.exec("UPDATE events SET body = replace(body, '\"user5\"', '\"someone\"') WHERE tenant_id = 't-edit' AND sequence = 5").await?;
    db.exec("DELETE FROM events WHERE tenant_id = 't-delete' AND sequence = 4").await?;
    db.exec("DELETE FROM events WHERE tenant_id = 't-tail' AND sequence = 10").await?;
    db.exec("UPDATE events SET actor_id = 'someone' WHERE tenant_id = 't-column' AND sequence = 3").await?;
    // Reorder: swap the positions of events 6 and 7.
    db.exec(
        "UPDATE events SET sequence = -1 WHERE tenant_id = 't-reorder' AND sequence = 6;
         UPDATE events SET sequence = 6 WHERE tenant_id = 't-reorder' AND sequence = 7;
         UPDATE events SET sequence = 7 WHERE tenant_id = 't-reorder' AND sequence = -1;",
    )
    .await?;
    // Insert: a forger who knows the algorithm makes a valid-looking event 3 and shifts the rest up.
    let all = api.all_events("t-insert").await?;
    let prev = all[1]["hash"].as_str().unwrap_or_default().to_owned();
    // The forger follows the README (in Python), not the server's code.
    let mut forged = all[2].clone();
    let forged_id = uuid::Uuid::now_v7().to_string();
    forged["id"] = json!(forged_id);
    forged["actor"]["id"] = json!("forged");
    let (body, hash) = readme_link(&forged, &prev).await?;
    let forged_resource = forged["resource"]["id"].as_str().unwrap_or_default().to_owned();
    let shift: String = (3..=10)
        .rev()
        .map(|s| format!("UPDATE events SET sequence = {} WHERE tenant_id = 't-insert' AND sequence = {s};", s + 1))
        .collect();
    db.exec(&shift).await?;
    db.exec(&format!(
        "INSERT INTO events (tenant_id, sequence, id, ts, actor_id, resource_id, action_type, body, hash, previous_hash)
         SELECT tenant_id, 3, '{}'{uuid_cast}, ts, 'forged', '{}', action_type, '{}', '{hash}', '{prev}'
         FROM events WHERE tenant_id = 't-insert' AND sequence = 2",
        forged_id,
        forged_resource,
        body.replace('\'', "''"),
    ))
    .await?;

    let cases = [("t-edit", 5), ("t-delete", 4), ("t-insert", 4), ("t-reorder", 6), ("t-tail", 10), ("t-column", 3)];
    for (tenant, at) in cases {
        let report = api.verify(tenant).await?;
        ensure!(report["verified"] == false, "{tenant}: tampering not detected: {report}");
        ensure!(report["firstBrokenAt"]["sequence"] == at, "{tenant}: expected the first break at {at}: {report}");
        ensure!(report["checked"] == at - 1, "{tenant}: {report}");
    }
    server.shutdown().await
}

async fn shutdown_and_metrics(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "shutdown").await?;
    let mut config = db.config();
    // The drain window the checks below must fit in: generous for a loaded machine.
    config.shutdown_delay = Duration::from_secs(5);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    for path in ["/actuator/health", "/actuator/health/liveness", "/actuator/health/readiness"] {
        let r = api.http.get(api.url(path)).send().await?;
        ensure!(r.status() == 200, "{path}: {}", r.status());
    }
    let (s, stored) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", "a", "B")).await?;
    ensure!(s == 201);
    // Reads by id, found and not found: their raw ids must not become label values.
    let id = stored["id"].as_str().unwrap_or_default().to_owned();
    let (s, _) = api.get(KEY_A, &format!("/api/v1/events/{id}")).await?;
    ensure!(s == 200, "GET by id: {s}");
    let unknown = uuid::Uuid::new_v4().to_string();
    let (s, _) = api.get(KEY_A, &format!("/api/v1/events/{unknown}")).await?;
    ensure!(s == 404, "GET of an unknown id: {s}");
    let text = api.http.get(api.url("/actuator/prometheus")).send().await?.text().await?;
    for name in audit_server::metrics::METRIC_NAMES {
        ensure!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
    }
    ensure!(
        text.contains(r#"http_server_requests_seconds_count{method="POST",uri="/api/v1/events",status="201"} 1"#),
        "{text}"
    );
    for status in ["200", "404"] {
        let series = format!(
            r#"http_server_requests_seconds_count{{method="GET",uri="/api/v1/events/{{id}}",status="{status}"}} 1"#
        );
        ensure!(text.contains(&series), "no {series} in:\n{text}");
    }
    ensure!(!text.contains(&id) && !text.contains(&unknown), "raw ids leak into labels:\n{text}");
    ensure!(text.contains("audit_events_ingested_total 1"), "{text}");
    let doc: Value = api.http.get(api.url("/api/v1/openapi.json")).send().await?.json().await?;
    ensure!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for p in ["/api/v1/events", "/api/v1/events/batch", "/api/v1/events/{id}", "/api/v1/integrity/verify"] {
        ensure!(doc["paths"][p].is_object(), "{p} missing from the OpenAPI document");
    }

    // Readiness turns false as soon as shutdown starts, while requests are still served.
    let base = api.clone();
    let stopping = tokio::spawn(server.shutdown());
    loop {
        let r = base.http.get(base.url("/actuator/health/readiness")).send().await?;
        if r.status() == 503 {
            break;
        }
        ensure!(r.status() == 200, "readiness while shutdown starts: {}", r.status());
        ensure!(!stopping.is_finished(), "shut down without readiness ever turning 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, _) = base.post(KEY_A, "/api/v1/events", &event("tenant-a", "late", "B")).await?;
    ensure!(s == 201, "requests are still served while draining: {s}");
    stopping.await??;
    ensure!(base.http.get(base.url("/actuator/health")).send().await.is_err(), "still listening after shutdown");
    Ok(())
}

/// POST a body just over the limit over a raw connection and read the status and JSON answer.
async fn post_oversized(addr: std::net::SocketAddr, chunked: bool) -> Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let size = audit_api::MAX_BODY_BYTES + 1;
    let framing = if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {size}") };
    let head = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: test\r\nx-api-key: {KEY_A}\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                wr.write_all(&chunk).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&chunk[..chunk.len().min(size - sent)]).await?;
            }
            sent += chunk.len();
        }
        std::io::Result::Ok(())
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut raw)).await;
    writer.abort();
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // The answer may be chunk-framed: keep from the first brace to the last.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b > a => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok((status, json))
}

/// The re-verification recipe of the audit-server README (its ```python block), verbatim.
fn readme_recipe() -> Result<&'static str> {
    let readme = include_str!("../README.md");
    let start = readme.find("```python\n").context("no ```python block in audit-server/README.md")? + 10;
    let len = readme[start..].find("```").context("unterminated ```python block in audit-server/README.md")?;
    Ok(&readme[start..start + len])
}

/// Run a Python script with `input` as JSON on stdin; its stdout. python3 is an independent
/// implementation of the canonical form and the hash (json.dumps, hashlib), not the server's code.
async fn python(script: &str, input: &Value) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3 (installed by `cargo xtask deps install`)")?;
    let mut stdin = child.stdin.take().context("python3 stdin")?;
    stdin.write_all(&serde_json::to_vec(input)?).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    ensure!(out.status.success(), "python3 failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8(out.stdout)?)
}

/// The README's recipe reads `export.ndjson` (one tenant's chain from its start, ascending, as
/// `GET /api/v1/events/export` writes it): run it verbatim in a folder holding `events` as that file.
async fn readme_recipe_verifies(events: &[Value]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ndjson: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(dir.path().join("export.ndjson"), ndjson)?;
    let script = format!("{}\nprint(sum(1 for _ in open(\"export.ndjson\")))\n", readme_recipe()?);
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("PYTHONIOENCODING", "utf-8")
        .output()
        .await
        .context("running python3 (installed by `cargo xtask deps install`)")?;
    ensure!(out.status.success(), "python3 failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    let out = String::from_utf8(out.stdout)?;
    ensure!(out.trim() == events.len().to_string(), "the recipe checked {out:?} of {} events", events.len());
    Ok(())
}

/// Canonical body and link hash of `event` after `prev`, computed as the README describes.
async fn readme_link(event: &Value, prev: &str) -> Result<(String, String)> {
    let script = r#"import hashlib, json, sys
e, prev = json.load(sys.stdin)
body = {k: v for k, v in e.items() if k not in ("hash", "previousHash")}
canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
print(json.dumps([canon, hashlib.sha256((canon + prev).encode()).hexdigest()]))
"#;
    let out = python(script, &json!([event, prev])).await?;
    Ok(serde_json::from_str(out.trim())?)
}

/// The identifier columns of the PostgreSQL schema compare bytewise (migration 0007), on a fresh
/// database and on one upgraded with events in it: the catalog says "C" for each, the chains
/// still verify, and appends go on. The upgraded database also had outbox rows of the schema
/// before 0009 (one per event): 0009 turns each into a row listing its one event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_collate_c_fresh_and_upgraded() -> Result<()> {
    // (table, column) pairs migrations 0007 and 0009 set; the catalog is the reference.
    const IDENTIFIERS: &[(&str, &str)] = &[
        ("chain_heads", "tenant_id"),
        ("events", "tenant_id"),
        ("events", "actor_id"),
        ("events", "resource_id"),
        ("events", "action_type"),
        ("idempotency_keys", "tenant_id"),
        ("idempotency_keys", "key"),
        ("verified_positions", "tenant_id"),
        ("outbox", "consumer"),
        ("outbox", "tenants"),
        ("outbox_consumers", "consumer"),
        ("outbox_cursors", "consumer"),
        ("outbox_cursors", "tenant_id"),
        ("outbox_kafka_offsets", "topic"),
    ];
    /// The columns before 0009: the outbox's one tenant per row.
    fn before_0009(column: &(&'static str, &'static str)) -> (&'static str, &'static str) {
        match *column {
            ("outbox", "tenants") => ("outbox", "tenant_id"),
            other => other,
        }
    }
    async fn collations(url: &str, columns: &[(&str, &str)]) -> Result<Vec<(String, String, String)>> {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
        let mut out = Vec::new();
        for (table, column) in columns {
            // pg_attribute, not information_schema: it names an array column's collation too.
            let collation: String = sqlx::query_scalar(
                "SELECT c.collname::text FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid \
                 JOIN pg_collation c ON c.oid = a.attcollation \
                 WHERE t.relname = $1 AND a.attname = $2 AND NOT a.attisdropped",
            )
            .bind(table)
            .bind(column)
            .fetch_one(&mut conn)
            .await
            .with_context(|| format!("{table}.{column} is not in the schema"))?;
            out.push((table.to_string(), column.to_string(), collation));
        }
        Ok(out)
    }
    fn all_c(found: &[(String, String, String)]) -> bool {
        found.iter().all(|(_, _, c)| c == "C")
    }

    let db = Db::new(Backend::Postgres, "identifiers_collate_c").await?;
    let url = db.url.clone().context("a PostgreSQL URL")?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    for actor in ["Bob", "alice", "Zoé"] {
        let (status, body) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", actor, "LOGIN")).await?;
        ensure!(status == 201, "POST answered {status}: {body}");
    }
    server.shutdown().await?;
    let fresh = collations(&url, IDENTIFIERS).await?;
    ensure!(all_c(&fresh), "a fresh database: {fresh:?}");

    // Back to the state before 0007 (the database's default collation, 0007 not applied) and
    // 0009 (one outbox row per event), with the events and three outbox rows in it; the next
    // start applies 0007 and 0009 to a populated database.
    let mut undo = String::from(
        "ALTER TABLE outbox DROP CONSTRAINT outbox_events_paired, DROP COLUMN tenants, DROP COLUMN sequences, \
         ADD COLUMN tenant_id TEXT NOT NULL, ADD COLUMN sequence BIGINT NOT NULL;\n",
    );
    let older: Vec<_> = IDENTIFIERS.iter().map(before_0009).collect();
    for (table, column) in &older {
        undo.push_str(&format!("ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT COLLATE \"default\";\n"));
    }
    undo.push_str("INSERT INTO outbox (consumer, tenant_id, sequence) VALUES ('x', 'tenant-a', 1), ('x', 'tenant-a', 2), ('y', 'tenant-a', 3);\n");
    undo.push_str("DELETE FROM _sqlx_migrations WHERE version IN (7, 9);\n");
    db.exec(&undo).await?;
    let before = collations(&url, &older).await?;
    ensure!(before.iter().all(|(_, _, c)| c == "default"), "the undo did not take: {before:?}");

    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let upgraded = collations(&url, IDENTIFIERS).await?;
    ensure!(all_c(&upgraded), "an upgraded database: {upgraded:?}");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
    let rows: Vec<(String, Vec<String>, Vec<i64>)> =
        sqlx::query_as("SELECT consumer, tenants, sequences FROM outbox ORDER BY position")
            .fetch_all(&mut conn)
            .await?;
    let one = |c: &str, s: i64| (c.to_string(), vec!["tenant-a".to_string()], vec![s]);
    ensure!(rows == vec![one("x", 1), one("x", 2), one("y", 3)], "the outbox after 0009: {rows:?}");
    let (status, body) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", "Émile", "LOGOUT")).await?;
    ensure!(status == 201, "POST after the upgrade answered {status}: {body}");
    assert_eq!(body["sequence"], 4);
    let report = api.verify("tenant-a").await?;
    assert_eq!(report, json!({"tenantId": "tenant-a", "verified": true, "checked": 4}));
    let (_, page) = api.get(KEY_A, "/api/v1/events?tenantId=tenant-a&actorId=Zo%C3%A9").await?;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1), "{page}");
    server.shutdown().await
}
