//! Redis probes against the testbed's primary + replica + three sentinels: good state, save points
//! and AOF off, memory policy, one sentinel down (still PASS), two down (FAIL), wrong password,
//! nothing listening.

mod probes_common;

use audctl::probes::{ErrorCause, Status};
use audctl_targets::{RedisTarget, Secret, Targets};
use probes_common::{all_error, assert_status, context, row, run, values};
use testbed::redis_sentinel;

fn targets(r: RedisTarget) -> Targets {
    Targets { redis: Some(r), ..Default::default() }
}

async fn config_set(url: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let () = redis::cmd("CONFIG").arg("SET").arg(key).arg(value).query_async(&mut conn).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_replication_persistence_and_memory() -> anyhow::Result<()> {
    let mut rs = redis_sentinel().await?;
    let t = targets(rs.target());
    let v = values(&["redis.replica.replicaCount=1"]);
    let master = rs.master_url();

    // Good: three sentinels agree, quorum 2 reachable; the master has its replica online.
    let f = run(&context(t.clone(), v.clone()), "redis.sentinels").await;
    assert_status(&f, Status::Pass);
    assert_eq!(row(&f, "reachable sentinels").actual, "3 of 3");
    assert_eq!(row(&f, "quorum").actual, "2");
    let f = run(&context(t.clone(), v.clone()), "redis.replication").await;
    assert_status(&f, Status::Pass);
    assert!(row(&f, "replicas online").actual.starts_with("1 "), "{f:#?}");
    // Values asking for two replicas: FAIL with both numbers.
    let f = run(&context(t.clone(), values(&["redis.replica.replicaCount=2"])), "redis.replication").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("replicas online = 1 (connected_slaves 1) (expected >= 2"), "{}", f.message);

    // Persistence: the testbed keeps Redis's default save points; values want the guide's hourly.
    let f = run(&context(t.clone(), v.clone()), "redis.persistence").await;
    assert_status(&f, Status::Fail);
    let save = row(&f, "save (RDB save points)");
    assert_eq!((save.expected.as_str(), save.actual.as_str()), ("3600 1 (redis.save)", "3600 1 300 100 60 10000"));
    config_set(&master, "save", "3600 1").await?;
    let f = run(&context(t.clone(), v.clone()), "redis.persistence").await;
    assert_status(&f, Status::Pass);
    // AOF off: FAIL naming it.
    config_set(&master, "appendonly", "no").await?;
    let f = run(&context(t.clone(), v.clone()), "redis.persistence").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("appendonly (AOF) = no (expected yes)"), "{}", f.message);
    config_set(&master, "appendonly", "yes").await?;

    // Memory: unlimited is a WARN; a limit with noeviction PASS; allkeys-lru FAIL.
    let f = run(&context(t.clone(), v.clone()), "redis.memory").await;
    assert_status(&f, Status::Warn);
    config_set(&master, "maxmemory", "256mb").await?;
    let f = run(&context(t.clone(), v.clone()), "redis.memory").await;
    assert_status(&f, Status::Pass);
    config_set(&master, "maxmemory-policy", "allkeys-lru").await?;
    let f = run(&context(t.clone(), v.clone()), "redis.memory").await;
    assert_status(&f, Status::Fail);
    let p = row(&f, "maxmemory-policy");
    assert_eq!((p.expected.as_str(), p.actual.as_str()), ("noeviction or volatile-*", "allkeys-lru"));
    config_set(&master, "maxmemory-policy", "noeviction").await?;

    // Wrong password: every Redis probe is an ERROR (forbidden), the password never shown.
    let mut wrong = rs.target();
    wrong.password = Some(Secret::Inline("wrong-pass-123".into()));
    all_error(&context(targets(wrong), v.clone()), "redis.", ErrorCause::Forbidden, Some("wrong-pass-123")).await;
    let f = run(&context(t.clone(), v.clone()), "redis.sentinels").await;
    assert!(!serde_json::to_string(&f)?.contains(rs.password()));

    // One sentinel down: failover still possible, PASS (with a hint); the master still reachable.
    rs.kill_sentinel(0);
    let f = run(&context(t.clone(), v.clone()), "redis.sentinels").await;
    assert_status(&f, Status::Pass);
    assert_eq!(row(&f, "reachable sentinels").actual, "2 of 3");
    assert!(f.hint.is_some(), "{f:#?}");
    assert_status(&run(&context(t.clone(), v.clone()), "redis.replication").await, Status::Pass);
    // Two down: no failover any more, FAIL with actual vs needed.
    rs.kill_sentinel(1);
    let f = run(&context(t.clone(), v.clone()), "redis.sentinels").await;
    assert_status(&f, Status::Fail);
    let r = row(&f, "reachable sentinels");
    assert_eq!((r.expected.as_str(), r.actual.as_str()), (">= 2 (quorum 2, majority of 3)", "1 of 3"));
    assert!(f.message.contains("1 of 3 sentinels reachable, 2 needed"), "{}", f.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_not_configured() -> anyhow::Result<()> {
    let sentinels =
        (0..3).map(|_| Ok(format!("127.0.0.1:{}", testbed::free_port()?))).collect::<anyhow::Result<_>>()?;
    let t = targets(RedisTarget {
        sentinels,
        master_set: "mymaster".into(),
        url: None,
        password: Some(Secret::Inline("pw-abc".into())),
    });
    all_error(&context(t, values(&[])), "redis.", ErrorCause::Unreachable, Some("pw-abc")).await;
    // Sentinels that accept and never answer.
    let silent: Vec<_> = (0..3).map(|_| probes_common::silent_port()).collect();
    let t = targets(RedisTarget {
        sentinels: silent.iter().map(|(_, port)| format!("127.0.0.1:{port}")).collect(),
        master_set: "mymaster".into(),
        url: None,
        password: None,
    });
    all_error(&context(t, values(&[])), "redis.", ErrorCause::Unreachable, None).await;
    all_error(&context(Targets::default(), values(&[])), "redis.", ErrorCause::NotConfigured, None).await;
    Ok(())
}

/// Only `redis.url` in the targets file: the sentinels are not looked at, so with values that run
/// Sentinel the probe is ERROR not-configured (never a PASS it did not check); without Sentinel in
/// the values there is nothing to check. No Redis is needed: the probe stops before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_without_sentinels_in_the_targets_is_not_configured() -> anyhow::Result<()> {
    let port = testbed::free_port()?;
    let direct = || {
        targets(RedisTarget {
            sentinels: Vec::new(),
            master_set: "mymaster".into(),
            url: Some(format!("redis://127.0.0.1:{port}")),
            password: None,
        })
    };
    let f = run(&context(direct(), values(&[])), "redis.sentinels").await;
    assert_eq!((f.status, f.cause), (Status::Error, Some(ErrorCause::NotConfigured)), "{f:#?}");
    assert!(f.message.contains("the sentinels were not checked"), "{}", f.message);
    assert!(f.hint.as_deref().unwrap_or_default().contains("redis.sentinels in the targets file"), "{f:#?}");
    let f = run(&context(direct(), values(&["redis.sentinel.enabled=false"])), "redis.sentinels").await;
    assert_eq!(f.status, Status::Pass, "{f:#?}");
    assert!(f.message.contains("no sentinel to check"), "{}", f.message);
    Ok(())
}
