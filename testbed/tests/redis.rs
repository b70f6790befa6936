//! The Redis + Sentinel testbed is real and usable through redis-rs, the crate audctl uses.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, cmd};
use testbed::{RedisSentinel, redis_sentinel};

/// A client that finds the master of `mymaster` by asking the sentinels, as audctl will.
fn sentinel_client(rs: &RedisSentinel) -> anyhow::Result<redis::sentinel::SentinelClient> {
    let target = rs.target();
    let mut addrs = Vec::new();
    for a in &target.sentinels {
        let (host, port) = a.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("sentinel address {a:?} lacks a port"))?;
        addrs.push(ConnectionAddr::Tcp(host.to_owned(), port.parse()?));
    }
    Ok(SentinelClientBuilder::new(addrs, &target.master_set, SentinelServerType::Master)?
        .set_client_to_sentinel_password(rs.password())
        .set_client_to_redis_password(rs.password())
        .build()?)
}

#[tokio::test]
async fn sentinel_names_the_master_and_writes_go_through() -> anyhow::Result<()> {
    let start = Instant::now();
    let rs = redis_sentinel().await?;
    eprintln!("redis primary + replica + 3 sentinels ready in {:?}", start.elapsed());

    let mut client = sentinel_client(&rs)?;
    let mut master = client.get_async_connection().await?;
    let () = master.set("audit:key", "value").await?;
    let got: String = master.get("audit:key").await?;
    assert_eq!(got, "value");

    // The connection the sentinel handed out is the node started as primary.
    let port: u16 = cmd("CONFIG").arg("GET").arg("port").query_async::<Vec<String>>(&mut master).await?[1].parse()?;
    assert_eq!(port, rs.primary_port());

    // INFO replication on the primary shows the replica online; AOF is on.
    let info: String = cmd("INFO").arg("replication").query_async(&mut master).await?;
    assert!(info.contains("connected_slaves:1"), "{info}");
    assert!(info.contains(&format!("port={}", rs.replica_port())), "{info}");
    let aof: Vec<String> = cmd("CONFIG").arg("GET").arg("appendonly").query_async(&mut master).await?;
    assert_eq!(aof.get(1).map(String::as_str), Some("yes"));

    // Without the password, the primary refuses commands.
    let anon = redis::Client::open(format!("redis://127.0.0.1:{}/", rs.primary_port()))?;
    let mut anon = anon.get_multiplexed_async_connection().await?;
    let refused: redis::RedisResult<Option<String>> = anon.get("audit:key").await;
    assert!(refused.is_err(), "unauthenticated GET should fail");

    // The replica serves the value (read-only).
    let replica = redis::Client::open(rs.replica_url())?;
    let mut replica = replica.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v: Option<String> = replica.get("audit:key").await?;
        if v.as_deref() == Some("value") {
            break;
        }
        assert!(Instant::now() < deadline, "value not replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rs.target().sentinels.len(), 3);
    Ok(())
}

#[tokio::test]
async fn sentinels_fail_over_when_the_primary_dies() -> anyhow::Result<()> {
    let mut rs = redis_sentinel().await?;
    let old = rs.primary_port();
    let mut client = sentinel_client(&rs)?;
    let mut master = client.get_async_connection().await?;
    let () = master.set("before", "failover").await?;
    // Acknowledged by the replica before the crash, so it must survive the failover.
    let acked: i64 = cmd("WAIT").arg(1).arg(2000).query_async(&mut master).await?;
    assert_eq!(acked, 1);

    let start = Instant::now();
    rs.kill_primary_hard();
    let new = rs.wait_for_failover(old, Duration::from_secs(30)).await?;
    eprintln!("failover from {old} to {new} in {:?}", start.elapsed());
    assert_eq!(new, rs.replica_port());

    // A fresh sentinel lookup lands on the promoted replica, which kept the acknowledged write.
    let mut client = sentinel_client(&rs)?;
    let mut master = client.get_async_connection().await?;
    let v: Option<String> = master.get("before").await?;
    assert_eq!(v.as_deref(), Some("failover"));
    let () = master.set("after", "ok").await?;

    // The old primary comes back from its AOF and is turned into a replica of the new master.
    rs.restart_primary().await?;
    let old_node = redis::Client::open(rs.master_url())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Fresh connection each time: the sentinel's reconfiguration ends with CLIENT KILL.
        let role = match old_node.get_multiplexed_async_connection().await {
            Ok(mut c) => cmd("ROLE").query_async::<Vec<redis::Value>>(&mut c).await.ok(),
            Err(_) => None,
        };
        let is_replica =
            matches!(role.as_ref().and_then(|r| r.first()), Some(redis::Value::BulkString(b)) if b == b"slave");
        if is_replica {
            break;
        }
        assert!(Instant::now() < deadline, "old primary not demoted to replica within 30s: {role:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn processes_and_files_are_gone_after_drop() -> anyhow::Result<()> {
    let rs = redis_sentinel().await?;
    let pids = rs.pids();
    assert_eq!(pids.len(), 5, "primary, replica and three sentinels");
    testbed::scratch::check_swept_if_abandoned(&pids)?;
    let conf_dir = std::path::PathBuf::from(format!("/proc/{}/cwd", pids[0])).read_link()?;
    let start = Instant::now();
    drop(rs);
    eprintln!("stopped in {:?}", start.elapsed());
    // Not killpg(pid, None): it also counts zombies, which a slow reaper may leave for a while.
    let live = testbed::process::live_group_members(&pids);
    assert!(live.is_empty(), "processes of groups {pids:?} survived drop: {live:?}");
    assert!(!conf_dir.exists(), "{} not removed", conf_dir.display());
    Ok(())
}
