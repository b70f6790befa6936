//! `audctl backup redis` / `audctl restore redis` on the testbed's real Redis primary + replica +
//! Sentinel: the copy comes from the replica, the restore brings back every key with its TTL.

mod backup_support;

use anyhow::ensure;
use audctl_targets::Targets;
use backup_support::{audctl, targets_file};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_from_replica_wipe_restore_keeps_keys_and_ttls() -> anyhow::Result<()> {
    let rs = testbed::redis_sentinel().await?;
    let client = redis::Client::open(rs.master_url())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    for i in 0..400 {
        let _: () = con.set(format!("plain:{i}"), format!("value-{i}")).await?;
    }
    for i in 0..120 {
        let _: () = con.set_ex(format!("session:{i}"), "token", 3600 + i).await?;
    }
    let _: () = con.hset_multiple("hash:1", &[("a", "1"), ("b", "2")]).await?;
    let _: () = con.rpush("list:1", &["x", "y", "z"]).await?;
    let _: () = con.zadd("zset:1", "m", 3).await?;
    let _: () = redis::cmd("XADD").arg("stream:1").arg("*").arg("f").arg("v").query_async(&mut con).await?;
    let _: () = redis::cmd("SELECT").arg(2).query_async(&mut con).await?;
    let _: () = con.set("other-db", "yes").await?;
    let _: () = redis::cmd("SELECT").arg(0).query_async(&mut con).await?;
    // The replica has everything before the backup reads from it.
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10000).query_async(&mut con).await?;
    ensure!(acked == 1, "replica did not acknowledge");
    let expiry: i64 = redis::cmd("PEXPIRETIME").arg("session:7").query_async(&mut con).await?;

    let dir = tempfile::tempdir()?;
    let targets = targets_file(dir.path(), &Targets { redis: Some(rs.target()), ..Default::default() });
    let t = targets.to_str().unwrap_or_default();
    let repo = dir.path().join("repo");
    let r = repo.to_str().unwrap_or_default();

    let b = audctl(&["--targets", t, "-o", "json", "backup", "redis", "--repo", r]).await.ok().json();
    let c = &b["consistency"];
    assert_eq!(c["role"], "replica", "{b}");
    assert_eq!(c["node"], format!("redis://127.0.0.1:{}", rs.replica_port()), "{b}");
    assert_eq!(c["keys"], 400 + 120 + 4 + 1, "{b}");
    assert_eq!(c["expires"], 120, "{b}");
    let id = b["id"].as_str().unwrap_or_default().to_owned();

    // Non-empty target refused.
    let out = audctl(&["--targets", t, "restore", "redis", &id, "--repo", r, "--yes"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("not empty") && out.stderr.contains("--force"), "{}", out.stderr);

    // Wipe, restore into the primary Sentinel names.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await?;
    let report =
        audctl(&["--targets", t, "-o", "json", "restore", "redis", &id, "--repo", r, "--yes"]).await.ok().json();
    assert!(report["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{report}");
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
    assert_eq!(size, 524);
    let v: String = con.get("plain:399").await?;
    assert_eq!(v, "value-399");
    let after: i64 = redis::cmd("PEXPIRETIME").arg("session:7").query_async(&mut con).await?;
    assert_eq!(after, expiry, "TTL changed by the round trip");
    let ttl: i64 = con.ttl("plain:1").await?;
    assert_eq!(ttl, -1, "a key without TTL gained one");
    let list: Vec<String> = con.lrange("list:1", 0, -1).await?;
    assert_eq!(list, vec!["x", "y", "z"]);
    let _: () = redis::cmd("SELECT").arg(2).query_async(&mut con).await?;
    let other: String = con.get("other-db").await?;
    assert_eq!(other, "yes");
    let _: () = redis::cmd("SELECT").arg(0).query_async(&mut con).await?;

    // With --force over extra keys: flushed and restored.
    let _: () = con.set("extra", "1").await?;
    audctl(&["--targets", t, "restore", "redis", "latest", "--repo", r, "--yes", "--force"]).await.ok();
    let extra: Option<String> = con.get("extra").await?;
    assert_eq!(extra, None);

    // `backup all` takes every component of the targets file (here Redis) and prints one summary.
    let all = audctl(&["--targets", t, "-o", "json", "backup", "--repo", r, "all"]).await.ok().json();
    assert_eq!(all["backups"][0]["component"], "redis", "{all}");
    assert_eq!(all["backups"][0]["outcome"], "ok", "{all}");

    // A test-restore into a scratch redis-server.
    let v = audctl(&["-o", "json", "backup", "--repo", r, "verify", &id]).await.ok().json();
    assert!(v["checks"].as_array().is_some_and(|c| c.iter().all(|c| c["ok"] == true)), "{v}");

    // A truncated RDB is refused before the target is touched.
    let path = repo.join("redis").join(&id).join("dump.rdb");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let out = audctl(&["--targets", t, "restore", "redis", &id, "--repo", r, "--yes", "--force"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("dump.rdb") && out.stderr.contains("truncated"), "{}", out.stderr);
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
    assert_eq!(size, 524);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_and_restores_write_evidence_records() -> anyhow::Result<()> {
    use audctl::evidence::{self, Outcome};
    use audctl::kube::KubeSettings;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ObjectMeta, PostParams};

    let (rs, kube) = tokio::try_join!(
        testbed::redis_sentinel(),
        testbed::kube_with(testbed::KubeOptions { crds: false, ..Default::default() })
    )?;
    let settings = KubeSettings { kubeconfig: kube.target().kubeconfig, context: kube.target().context };
    let client = settings.client().await?;
    let ns = "audit-trail";
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(ns.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    let mut con = redis::Client::open(rs.master_url())?.get_multiplexed_async_connection().await?;
    let _: () = con.set("k", "v").await?;

    let dir = tempfile::tempdir()?;
    let targets = Targets { redis: Some(rs.target()), kube: Some(kube.target()), ..Default::default() };
    let targets = targets_file(dir.path(), &targets);
    let t = targets.to_str().unwrap_or_default();
    let repo = dir.path().join("repo");
    let r = repo.to_str().unwrap_or_default();

    let out = audctl(&["--targets", t, "-o", "json", "backup", "redis", "--repo", r]).await.ok();
    assert!(out.stderr.contains("evidence: recorded"), "{}", out.stderr);
    let id = out.json()["id"].as_str().unwrap_or_default().to_owned();
    audctl(&["--targets", t, "restore", "redis", &id, "--repo", r, "--yes", "--force"]).await.ok();
    std::fs::write(repo.join("redis").join(&id).join("dump.rdb"), b"garbage")?;
    let out = audctl(&["--targets", t, "restore", "redis", &id, "--repo", r, "--yes", "--force"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);

    let backups = evidence::list(&client, ns, Some("backup")).await?;
    assert_eq!(backups.len(), 1);
    let b = &backups[0].evidence;
    assert_eq!((b.outcome, b.subject.as_deref()), (Outcome::Success, Some("redis")));
    assert_eq!(b.figures["backupId"], id.as_str());
    let restores = evidence::list(&client, ns, Some("restore")).await?;
    let outcomes: Vec<Outcome> = restores.iter().map(|s| s.evidence.outcome).collect();
    assert_eq!(outcomes, vec![Outcome::Error, Outcome::Success], "newest first");
    assert!(restores[1].evidence.figures["durationSeconds"].as_f64().is_some());
    assert!(restores[0].evidence.summary.contains("dump.rdb"), "{}", restores[0].evidence.summary);
    Ok(())
}
