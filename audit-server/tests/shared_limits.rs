//! Rate limits shared through the testbed's real Redis (primary, replica, three sentinels on
//! `mymaster`, password): two servers share one bucket per key, the limiter survives a Sentinel
//! failover, and with Redis gone ingestion continues (fail open) or answers 503 (fail closed).
//!
//! The two servers have their own SQLite databases: what they share here is only the limit.
//! Also here: the GET-by-id event cache in the same Redis.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use audit_server::config::{Password, RedisConfig, RedisTarget};
use audit_server::{Config, RunningServer};
use common::{Api, Backend, Db, KEY_A, KEY_B, event};

const RATE: f64 = 0.5;
const BURST: u32 = 20;

fn limited(db: &Db, redis: &testbed::redis::RedisSentinel, fail_open: bool) -> Config {
    let mut c = db.config();
    c.rate_limit_per_second = RATE;
    c.rate_limit_burst = BURST;
    c.redis = Some(RedisConfig {
        target: RedisTarget::Sentinel { sentinels: redis.sentinel_addrs(), master_set: "mymaster".into() },
        password: Some(Password::new(redis.password())),
        fail_open,
        timeout: Duration::from_secs(2),
        event_cache: Duration::ZERO,
    });
    c
}

/// POST one event for tenant-a: (status, headers).
async fn post(api: &Api, actor: &str) -> Result<(u16, reqwest::header::HeaderMap)> {
    let r = api
        .http
        .post(api.url("/api/v1/events"))
        .header("x-api-key", KEY_A)
        .json(&event("tenant-a", actor, "X"))
        .send()
        .await?;
    Ok((r.status().as_u16(), r.headers().clone()))
}

async fn metric(server: &RunningServer, name: &str) -> Result<u64> {
    let text = reqwest::get(format!("{}/actuator/prometheus", server.base_url())).await?.text().await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .ok_or_else(|| anyhow::anyhow!("{name} not exported"))?;
    Ok(line[name.len() + 1..].trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_limit() -> Result<()> {
    let redis = testbed::redis::redis_sentinel().await?;
    let (db1, db2) = (Db::new(Backend::Sqlite, "a").await?, Db::new(Backend::Sqlite, "b").await?);
    let s1 = audit_server::spawn(limited(&db1, &redis, true)).await?;
    let s2 = audit_server::spawn(limited(&db2, &redis, true)).await?;
    let apis = [Api::of(&s1), Api::of(&s2)];
    let start = Instant::now();
    // 60 requests, 4 at a time, spread over both servers: concurrent takes from one bucket.
    let mut statuses = Vec::new();
    let mut limited_headers = None;
    for _ in 0..15 {
        let posts = (0..4).map(|i| post(&apis[i % 2], "u"));
        for r in futures_util::future::join_all(posts).await {
            let (status, headers) = r?;
            if status == 429 {
                limited_headers = Some(headers);
            }
            statuses.push(status);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    // Independent of the limiter's code: the burst plus what the rate refills in the elapsed time.
    let most = 20 + (0.5 * elapsed).ceil() as usize;
    ensure!(accepted <= most, "{accepted} accepted by two servers sharing a limit of at most {most} ({elapsed:.1} s)");
    ensure!(accepted >= 20, "the burst of 20 was not usable: {accepted} accepted: {statuses:?}");
    ensure!(statuses.iter().all(|s| *s == 201 || *s == 429), "statuses {statuses:?}");
    let h = limited_headers.ok_or_else(|| anyhow::anyhow!("no 429 at all"))?;
    ensure!(h.get("ratelimit-limit").is_some_and(|v| v == "20"), "{h:?}");
    ensure!(h.get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{h:?}");
    ensure!(h.contains_key("ratelimit-remaining") && h.contains_key("ratelimit-reset"), "{h:?}");
    let refused =
        metric(&s1, "audit_ratelimit_limited_total").await? + metric(&s2, "audit_ratelimit_limited_total").await?;
    ensure!(refused as usize == statuses.len() - accepted, "429 metric {refused}");
    // The bucket is namespaced and expires (KEY_A is the second configured key: `key#2`).
    let client = redis::Client::open(redis.master_url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let ttl: i64 = redis::cmd("PTTL").arg("audit-server:ratelimit:key#2").query_async(&mut conn).await?;
    ensure!(ttl > 0 && ttl <= 42_000 + 1_000, "bucket TTL {ttl} ms");
    // Refill at the configured rate: one token every 2 s (0.5/s), so well within 10 s.
    let drained = Instant::now();
    while post(&apis[1], "refill").await?.0 != 201 {
        ensure!(drained.elapsed() < Duration::from_secs(10), "no token refilled within 10 s at 0.5/s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s1.shutdown().await?;
    s2.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_survives_a_failover() -> Result<()> {
    let mut redis = testbed::redis::redis_sentinel().await?;
    let db = Db::new(Backend::Sqlite, "failover").await?;
    let server = audit_server::spawn(limited(&db, &redis, true)).await?;
    let api = Api::of(&server);
    // Drain the bucket: a 429 can only come from Redis (this server fails open).
    let deadline = Instant::now() + Duration::from_secs(60);
    while post(&api, "before").await?.0 != 429 {
        ensure!(Instant::now() < deadline, "never rate limited before the failover");
    }
    let old = redis.primary_port();
    redis.kill_primary_hard();
    // Traffic during the failover: no 5xx (fail open while the master is unknown).
    let failover = redis.wait_for_failover(old, Duration::from_secs(60));
    let traffic = async {
        let mut statuses = Vec::new();
        for i in 0..20 {
            statuses.push(post(&api, &format!("during{i}")).await?.0);
        }
        anyhow::Ok(statuses)
    };
    let (new, statuses) = tokio::join!(failover, traffic);
    let (new, statuses) = (new?, statuses?);
    ensure!(new != old && statuses.iter().all(|s| *s < 500), "during the failover: {statuses:?}");
    // Rate limited again within a deadline: the limiter found the new master through Sentinel.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = post(&api, "after").await?;
        ensure!(status < 500, "{status} after the failover");
        if status == 429 {
            break;
        }
        ensure!(Instant::now() < deadline, "never rate limited after the failover to port {new}");
    }
    let errors_then = metric(&server, "audit_ratelimit_redis_errors_total").await?;
    for _ in 0..5 {
        ensure!(post(&api, "steady").await?.0 < 500);
    }
    ensure!(metric(&server, "audit_ratelimit_redis_errors_total").await? == errors_then, "Redis errors after recovery");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_or_closed() -> Result<()> {
    let redis = testbed::redis::redis_sentinel().await?;
    let (db1, db2) = (Db::new(Backend::Sqlite, "open").await?, Db::new(Backend::Sqlite, "closed").await?);
    let open = audit_server::spawn(limited(&db1, &redis, true)).await?;
    let closed = audit_server::spawn(limited(&db2, &redis, false)).await?;
    let (open_api, closed_api) = (Api::of(&open), Api::of(&closed));
    ensure!(post(&closed_api, "up").await?.0 == 201, "fail-closed server refused with Redis up");
    drop(redis);
    // Beyond the burst of 20: all stored, each counted as a fail-open decision.
    for i in 0..30 {
        let (status, _) = post(&open_api, &format!("open{i}")).await?;
        ensure!(status == 201, "append {i} answered {status} with Redis down (fail open)");
    }
    ensure!(open_api.all_events("tenant-a").await?.len() == 30);
    ensure!(metric(&open, "audit_ratelimit_fail_open_total").await? >= 30);
    ensure!(metric(&open, "audit_ratelimit_redis_errors_total").await? >= 30);
    let r = closed_api
        .http
        .post(closed_api.url("/api/v1/events"))
        .header("x-api-key", KEY_A)
        .json(&event("tenant-a", "c", "X"))
        .send()
        .await?;
    ensure!(r.status() == 503 && r.headers().contains_key("retry-after"), "fail closed: {}", r.status());
    let body: serde_json::Value = r.json().await?;
    ensure!(body["error"] == "rate_limiter_unavailable", "{body}");
    ensure!(metric(&closed, "audit_ratelimit_fail_closed_total").await? >= 1);
    open.shutdown().await?;
    closed.shutdown().await
}

/// A server whose Redis holds the GET-by-id cache (no rate limit).
fn cached(db: &Db, target: RedisTarget, password: Option<&str>) -> Config {
    let mut c = db.config();
    c.redis = Some(RedisConfig {
        target,
        password: password.map(Password::new),
        fail_open: true,
        timeout: Duration::from_secs(2),
        event_cache: Duration::from_secs(60),
    });
    c
}

/// GET by id: the first read fills the cache (checked in Redis itself), the next is answered from
/// it (an entry changed in Redis shows through, so it really is the cache that answers), the
/// caller's tenant scope applies to cached events too, and with Redis unreachable the database
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_by_id_is_cached_and_scoped() -> Result<()> {
    let redis = testbed::redis::redis_sentinel().await?;
    let db = Db::new(Backend::Sqlite, "cache").await?;
    let target = RedisTarget::Sentinel { sentinels: redis.sentinel_addrs(), master_set: "mymaster".into() };
    let server = audit_server::spawn(cached(&db, target, Some(redis.password()))).await?;
    let api = Api::of(&server);
    let (s, stored) = api.post(KEY_A, "/api/v1/events", &event("tenant-a", "alice", "READ")).await?;
    ensure!(s == 201, "{stored}");
    let id = stored["id"].as_str().ok_or_else(|| anyhow::anyhow!("no id in {stored}"))?.to_owned();
    let path = format!("/api/v1/events/{id}");
    let (s, first) = api.get(KEY_A, &path).await?;
    ensure!(s == 200 && first["id"] == id.as_str(), "{s} {first}");
    ensure!(metric(&server, "audit_event_cache_misses_total").await? == 1);

    // The entry, read from the master without the server's code.
    let key = format!("audit-server:event:{id}");
    let client =
        redis::Client::open(format!("redis://:{}@127.0.0.1:{}/", redis.password(), redis.master_addr().await?))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let start = Instant::now();
    let entry: String = loop {
        if let Some(v) = redis::AsyncCommands::get::<_, Option<String>>(&mut conn, &key).await? {
            break v;
        }
        ensure!(start.elapsed() < Duration::from_secs(30), "{key} never written to Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(serde_json::from_str::<serde_json::Value>(&entry)? == first, "cached {entry} vs served {first}");
    let ttl: i64 = redis::AsyncCommands::ttl(&mut conn, &key).await?;
    ensure!((1..=60).contains(&ttl), "TTL {ttl}");

    // Changed in Redis, the change is what GET serves: the cache answered, not the database.
    let mut changed = first.clone();
    changed["actor"]["id"] = "from-the-cache".into();
    redis::AsyncCommands::set_ex::<_, _, ()>(&mut conn, &key, changed.to_string(), 60).await?;
    let (s, second) = api.get(KEY_A, &path).await?;
    ensure!(s == 200 && second == changed, "{s} {second}");
    ensure!(metric(&server, "audit_event_cache_hits_total").await? == 1);
    // Another tenant's key: the same 404 as for a missing event, cached or not.
    let (s, body) = api.get(KEY_B, &path).await?;
    ensure!(s == 404, "tenant b read tenant a's cached event: {s} {body}");
    server.shutdown().await?;

    // Redis unreachable (nothing listens on the port): the database answers, the error is counted.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server =
        audit_server::spawn(cached(&db, RedisTarget::Url(format!("redis://127.0.0.1:{closed}/")), None)).await?;
    let api = Api::of(&server);
    let (s, body) = api.get(KEY_A, &path).await?;
    ensure!(s == 200 && body == first, "{s} {body}");
    ensure!(metric(&server, "audit_event_cache_errors_total").await? >= 1);
    server.shutdown().await
}
