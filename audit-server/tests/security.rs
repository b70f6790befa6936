//! Security and hygiene: what a key learns about other tenants, unknown fields, slow clients,
//! idempotency retention, PostgreSQL durability settings.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db, KEY_A, KEY_B, event};
use serde_json::{Value, json};

on_both!(cross_tenant_get_is_404, unknown_fields_refused, idempotency_keys_expire, rate_limit_counts_events);

/// Reading another tenant's event by id answers exactly like a missing event: 404, no owner named.
async fn cross_tenant_get_is_404(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "cross_tenant").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let (s, theirs) = api.post(KEY_B, "/api/v1/events", &event("tenant-b", "bob", "LOGIN")).await?;
    ensure!(s == 201, "{theirs}");
    let id = theirs["id"].as_str().unwrap_or_default();
    let (s, b) = api.get(KEY_A, &format!("/api/v1/events/{id}")).await?;
    ensure!(s == 404 && b["error"] == "not_found", "another tenant's event: {s} {b}");
    ensure!(!b.to_string().contains("tenant-b"), "the answer names the owner: {b}");
    let missing = uuid::Uuid::now_v7().to_string();
    let (s2, b2) = api.get(KEY_A, &format!("/api/v1/events/{missing}")).await?;
    ensure!(s2 == 404, "{b2}");
    ensure!(
        b["message"].as_str().map(|m| m.replace(id, "ID")) == b2["message"].as_str().map(|m| m.replace(&missing, "ID")),
        "foreign and missing events are told apart: {b} / {b2}"
    );
    ensure!(api.get(KEY_B, &format!("/api/v1/events/{id}")).await?.0 == 200);
    server.shutdown().await
}

/// Unknown fields, at the top of an event, inside its parts or around a batch, are a 400 that
/// names them, and nothing is stored.
async fn unknown_fields_refused(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "unknown_fields").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let mut top = event("tenant-a", "a", "X");
    top["occuredAt"] = json!("2026-01-01T00:00:00Z"); // misspelt: `occurredAt` is a field
    let mut nested = event("tenant-a", "a", "X");
    nested["metadata"]["tenantID"] = json!("tenant-b");
    let cases: [(&str, Value, &str); 3] = [
        ("/api/v1/events", top, "occuredAt"),
        ("/api/v1/events", nested, "metadata.tenantID"),
        ("/api/v1/events/batch", json!({"events": [event("tenant-a", "a", "X")], "atomic": false}), "atomic"),
    ];
    for (path, body, field) in cases {
        let (s, b) = api.post(KEY_A, path, &body).await?;
        let fields: Vec<&str> =
            b["details"].as_array().into_iter().flatten().filter_map(|d| d["field"].as_str()).collect();
        ensure!(s == 400 && fields.contains(&field), "{field}: {s} {b}");
    }
    // Free-form parts keep any member.
    let mut free = event("tenant-a", "a", "X");
    free["actor"]["attributes"] = json!({"anything": {"nested": [1, "two"]}});
    let (s, b) = api.post(KEY_A, "/api/v1/events", &free).await?;
    ensure!(s == 201, "{b}");
    ensure!(api.all_events("tenant-a").await?.len() == 1, "a refused event was stored");
    server.shutdown().await
}

/// An Idempotency-Key is forgotten after its retention: the background purge deletes it, and the
/// same key then names a new request instead of a 409.
async fn idempotency_keys_expire(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "idem_expiry").await?;
    let mut config = db.config();
    config.idempotency_retention = Duration::from_secs(1);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let post = |actor: &'static str| {
        let api = api.clone();
        async move {
            let r = api
                .http
                .post(api.url("/api/v1/events"))
                .header("x-api-key", ADMIN_KEY)
                .header("idempotency-key", "k-expiring")
                .json(&event("tenant-a", actor, "X"))
                .send()
                .await?;
            anyhow::Ok(r.status().as_u16())
        }
    };
    ensure!(post("first").await? == 201);
    ensure!(post("second").await? == 409, "the key is remembered within its retention");
    let start = Instant::now();
    loop {
        match post("second").await? {
            201 => break,
            409 => {}
            s => anyhow::bail!("unexpected {s}"),
        }
        ensure!(start.elapsed() < Duration::from_secs(60), "the idempotency record never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let actors: Vec<String> =
        api.all_events("tenant-a").await?.iter().filter_map(|e| e["actor"]["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(actors, ["first", "second"]);
    server.shutdown().await
}

/// A client that sends its headers slowly (slowloris) has its connection closed after the header
/// read timeout, while other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connection_closed() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = Db::new(Backend::Sqlite, "slowloris").await?;
    let mut config = db.config();
    config.header_read_timeout = Duration::from_secs(1);
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await?;
    slow.write_all(b"GET /actuator/health HTTP/1.1\r\nhost: test\r\nx-slow: ").await?;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut buf)).await;
    ensure!(closed.is_ok(), "the slow connection is still open after 60 s");
    ensure!(!String::from_utf8_lossy(&buf).contains("200 OK"), "the incomplete request was served");
    let r = api.http.get(api.url("/actuator/health/liveness")).send().await?;
    ensure!(r.status() == 200, "{}", r.status());
    server.shutdown().await
}

/// PostgreSQL with synchronous_commit off could lose acknowledged events: refuse to start unless
/// explicitly allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commit_off_is_refused() -> Result<()> {
    let db = Db::new(Backend::Postgres, "async_commit").await?;
    let pg = db.pg.as_ref().ok_or_else(|| anyhow::anyhow!("PostgreSQL"))?;
    pg.sql("ALTER DATABASE async_commit SET synchronous_commit = off").await?;
    let err = match audit_server::spawn(db.config()).await {
        Ok(server) => {
            server.shutdown().await?;
            anyhow::bail!("started with synchronous_commit off");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("synchronous_commit") && err.contains("AUDIT_ALLOW_ASYNC_COMMIT"), "{err}");
    let mut config = db.config();
    config.allow_async_commit = true;
    let server = audit_server::spawn(config).await?;
    server.shutdown().await
}

/// The rate limit counts events: a batch of 100 costs 100 tokens, not one request's worth.
async fn rate_limit_counts_events(backend: Backend) -> Result<()> {
    let db = Db::new(backend, "rate_events").await?;
    let mut config = db.config();
    config.rate_limit_per_second = 0.01;
    config.rate_limit_burst = 150;
    let server = audit_server::spawn(config).await?;
    let api = Api::of(&server);
    let batch = json!({"events": (0..100).map(|i| event("tenant-a", &format!("u{i}"), "X")).collect::<Vec<_>>()});
    let (s, b) = api.post(KEY_A, "/api/v1/events/batch", &batch).await?;
    ensure!(s == 201, "the first batch fits the burst: {s} {b}");
    // 50 tokens left: a second batch of 100 is refused (per request it would pass), nothing stored.
    let (s, b) = api.post(KEY_A, "/api/v1/events/batch", &batch).await?;
    ensure!(s == 429 && b["error"] == "rate_limited", "{s} {}", b["error"]);
    ensure!(api.all_events("tenant-a").await?.len() == 100, "the refused batch was stored");
    // Single events still pass, one token each; another key has its own bucket.
    let (s, b) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", "one", "X")).await?;
    ensure!(s == 201, "{s} {b}");
    let (s, b) = api.post(KEY_B, "/api/v1/events/batch", &batch_of("tenant-b", 100)).await?;
    ensure!(s == 201, "{s} {b}");
    server.shutdown().await
}

fn batch_of(tenant: &str, n: usize) -> Value {
    json!({"events": (0..n).map(|i| event(tenant, &format!("u{i}"), "X")).collect::<Vec<_>>()})
}
