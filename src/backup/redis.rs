//! Redis: a consistent copy of the dataset with its TTLs, taken from a replica when Sentinel knows
//! a healthy one (the primary is not slowed): `redis-cli --rdb` runs a replica sync and receives the
//! node's RDB snapshot. The manifest's key and expiry counts come from loading that exact file into
//! a private scratch redis-server. Restore loads the RDB in a scratch server again and copies every
//! key with DUMP/RESTORE and its absolute expiry time (ABSTTL), then compares key counts and TTLs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::progress::Bytes;
use super::{Check, Component, Ctx, RestoreReport, repo};
use crate::cli::{RedisBackupArgs, RedisRestoreArgs};
use crate::error::{Unreachable, usage};
use crate::evidence::Evidence;
use crate::output;

const REDIS_CLI: &str = "redis-cli";
const REDIS_SERVER: &str = "redis-server";

/// One Redis node: host, port, password.
#[derive(Clone)]
struct Node {
    host: String,
    port: u16,
    password: Option<String>,
}

impl Node {
    fn display(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    fn url(&self) -> anyhow::Result<String> {
        let mut u = url::Url::parse(&format!("redis://{}:{}/", self.host, self.port))?;
        if let Some(p) = &self.password {
            u.set_password(Some(p)).map_err(|_| anyhow!("cannot put the password in a redis URL"))?;
        }
        Ok(u.to_string())
    }

    async fn connect(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()?).map_err(|e| usage(format!("{}: {e}", self.display())))?;
        match tokio::time::timeout(Duration::from_secs(20), client.get_multiplexed_async_connection()).await {
            Err(_) => {
                Err(Unreachable { what: format!("Redis at {}", self.display()), detail: "no answer in 20 s".into() }
                    .into())
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() => {
                Err(Unreachable { what: format!("Redis at {}", self.display()), detail: e.to_string() }.into())
            }
            Ok(Err(e)) => Err(anyhow!("Redis at {}: {e}", self.display())),
            Ok(Ok(c)) => Ok(c),
        }
    }

    fn parse(raw: &str, what: &str) -> anyhow::Result<Node> {
        let u = url::Url::parse(raw)
            .map_err(|e| usage(format!("{what}: not a URL ({e}); expected redis://:password@host:port")))?;
        if u.scheme() != "redis" {
            return Err(usage(format!("{what} {}: expected a redis:// URL", audctl_targets::redact_url(raw))));
        }
        Ok(Node {
            host: u.host_str().ok_or_else(|| usage(format!("{what}: no host")))?.to_owned(),
            port: u.port().unwrap_or(6379),
            password: u.password().map(str::to_owned).or_else(|| std::env::var("REDISCLI_AUTH").ok()),
        })
    }
}

fn host_port(addr: &str) -> anyhow::Result<(String, u16)> {
    let (h, p) =
        addr.rsplit_once(':').ok_or_else(|| usage(format!("sentinel address {addr:?}: expected host:port")))?;
    Ok((h.to_owned(), p.parse().map_err(|_| usage(format!("sentinel address {addr:?}: bad port")))?))
}

/// (primary, healthy replicas) as Sentinel sees them, or the URL's node alone.
async fn topology(ctx: &Ctx<'_>) -> anyhow::Result<(Node, Vec<Node>)> {
    let t = ctx
        .targets()
        .and_then(|t| t.redis.clone())
        .ok_or_else(|| usage("no Redis: the targets file (--targets FILE) needs a `redis:` entry"))?;
    let password =
        t.password.as_ref().map(|s| s.expose()).transpose().map_err(|e| usage(format!("redis.password: {e}")))?;
    if t.sentinels.is_empty() {
        let raw = t.url.as_deref().ok_or_else(|| usage("redis: set sentinels or url in the targets file"))?;
        let mut node = Node::parse(raw, "redis.url")?;
        if node.password.is_none() {
            node.password = password;
        }
        return Ok((node, Vec::new()));
    }
    let mut last = None;
    for addr in &t.sentinels {
        let (host, port) = host_port(addr)?;
        let sentinel = Node { host, port, password: password.clone() };
        let mut con = match sentinel.connect().await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let master: Vec<String> =
            redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&t.master_set).query_async(&mut con).await?;
        let [host, port] = master.as_slice() else {
            bail!("sentinel {addr} does not know master set {}", t.master_set)
        };
        let primary = Node { host: host.clone(), port: port.parse()?, password: password.clone() };
        let replicas: Vec<BTreeMap<String, String>> =
            redis::cmd("SENTINEL").arg("replicas").arg(&t.master_set).query_async(&mut con).await?;
        let healthy = replicas
            .iter()
            .filter(|r| {
                let flags = r.get("flags").map(String::as_str).unwrap_or("");
                !flags.contains("down")
                    && !flags.contains("disconnected")
                    && r.get("master-link-status").map(String::as_str) == Some("ok")
            })
            .filter_map(|r| {
                Some(Node {
                    host: r.get("ip")?.clone(),
                    port: r.get("port")?.parse().ok()?,
                    password: password.clone(),
                })
            })
            .collect();
        return Ok((primary, healthy));
    }
    Err(last.unwrap_or_else(|| anyhow!("no sentinel answered")))
}

/// Keys and keys with an expiry per database, from INFO keyspace.
async fn keyspace(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<BTreeMap<u32, (u64, u64)>> {
    let info: String = redis::cmd("INFO").arg("keyspace").query_async(con).await?;
    let mut dbs = BTreeMap::new();
    for line in info.lines() {
        let Some((db, rest)) = line.split_once(':') else { continue };
        let Some(n) = db.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else { continue };
        let field = |k: &str| {
            rest.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok()).unwrap_or(0)
        };
        dbs.insert(n, (field("keys"), field("expires")));
    }
    Ok(dbs)
}

async fn info_field(con: &mut redis::aio::MultiplexedConnection, section: &str, key: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query_async(con).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_owned()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisPoint {
    /// The node the copy came from and its role.
    pub node: String,
    pub role: String,
    /// Replication offset of that node when the copy started.
    pub repl_offset: Option<String>,
    pub keys: u64,
    pub expires: u64,
    /// Per database: [keys, keys with an expiry].
    pub databases: BTreeMap<u32, (u64, u64)>,
}

/// A private redis-server on a unix socket, loading `rdb`. Stopped on drop.
struct Scratch {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Scratch {
    async fn load(rdb: &Path) -> anyhow::Result<(Scratch, redis::aio::MultiplexedConnection)> {
        let dir = tempfile::Builder::new().prefix("audctl-redis-").tempdir().context("creating a scratch directory")?;
        std::fs::copy(rdb, dir.path().join("dump.rdb")).with_context(|| format!("copying {}", rdb.display()))?;
        let sock = dir.path().join("redis.sock");
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path())
            .args([
                "--dbfilename",
                "dump.rdb",
                "--appendonly",
                "no",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        super::postgres::die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting redis-server (Debian package redis-server) for the scratch copy")?;
        let mut scratch = Scratch { dir, child: Some(child) };
        let client = redis::Client::open(format!("redis+unix://{}", sock.display()))?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(c) = scratch.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                scratch.child = None;
                bail!("the scratch redis-server could not load the RDB file ({status})");
            }
            if sock.exists()
                && let Ok(mut con) = client.get_multiplexed_async_connection().await
            {
                // Answers LOADING errors until the file is loaded.
                if redis::cmd("PING").query_async::<String>(&mut con).await.is_ok() {
                    return Ok((scratch, con));
                }
            }
            if Instant::now() > deadline {
                bail!("the scratch redis-server did not load the RDB in 10 min");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub async fn backup(ctx: &Ctx<'_>, _args: &RedisBackupArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let (primary, replicas) = topology(ctx).await?;
    let (node, role) = match replicas.first() {
        Some(r) => (r.clone(), "replica"),
        None => (primary.clone(), "primary"),
    };
    let mut con = node.connect().await?;
    let version = info_field(&mut con, "server", "redis_version").await.unwrap_or_default();
    let repl_offset =
        info_field(&mut con, "replication", if role == "replica" { "slave_repl_offset" } else { "master_repl_offset" })
            .await;
    drop(con);

    let mut staging = ctx.repo.begin(Component::Redis, started)?;
    let path = staging.path("dump.rdb");
    let progress = Bytes::new(format!("RDB from the {role} {}", node.display()), None);
    let mut cmd = Command::new(REDIS_CLI);
    cmd.args(["--no-auth-warning", "-h", &node.host, "-p", &node.port.to_string(), "--rdb"])
        .arg(&path)
        .env_remove("REDISCLI_AUTH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = &node.password {
        cmd.env("REDISCLI_AUTH", p);
    }
    super::postgres::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("starting redis-cli (Debian package redis-tools)")?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        progress.set(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        bail!("redis-cli --rdb from {} failed ({status}): {}", node.display(), err.trim());
    }
    progress.set(std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
    progress.finish();
    staging.add_written("dump.rdb", &Bytes::hidden())?;

    // Count what the file holds (not what the live node holds a moment later).
    let (scratch, mut sc) = Scratch::load(&path).await?;
    let databases = keyspace(&mut sc).await?;
    drop(sc);
    drop(scratch);
    let point = RedisPoint {
        node: node.display(),
        role: role.to_owned(),
        repl_offset,
        keys: databases.values().map(|v| v.0).sum(),
        expires: databases.values().map(|v| v.1).sum(),
        databases,
    };
    let manifest = Manifest::new(
        staging.id.clone(),
        Component::Redis,
        started,
        Utc::now(),
        staging.files().to_vec(),
        version,
        node.display(),
        serde_json::to_value(&point)?,
    );
    staging.commit(&manifest)?;
    ctx.emit(&super::ManifestReport(manifest.clone()))?;
    Ok(super::backup_evidence(&manifest))
}

pub async fn restore(ctx: &Ctx<'_>, args: &RedisRestoreArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let t0 = Instant::now();
    let stored = ctx.repo.open(&args.common.id, Component::Redis)?;
    let m = &stored.manifest;
    let point: RedisPoint =
        serde_json::from_value(m.consistency.clone()).context("unreadable Redis consistency point")?;
    let checked = repo::verify_files(&stored, |_| true, &Bytes::hidden())?;
    let target = match &args.common.target {
        Some(raw) => Node::parse(raw, "--target")?,
        None => topology(ctx).await?.0,
    };
    let mut tc = target.connect().await?;
    let role = info_field(&mut tc, "replication", "role").await.unwrap_or_default();
    if role == "slave" {
        bail!("target {} is a replica: restore into the primary", target.display());
    }
    let existing: u64 = keyspace(&mut tc).await?.values().map(|v| v.0).sum();
    if existing > 0 && !args.common.force {
        return Err(usage(format!(
            "target {} is not empty ({existing} keys): refusing to restore over it; pass --force to FLUSHALL it first",
            target.display()
        )));
    }
    eprintln!("restore plan:");
    eprintln!(
        "  backup   {} (RDB from the {} {}, {} keys, {} with TTL; {checked} files checked)",
        m.id, point.role, point.node, point.keys, point.expires
    );
    eprintln!(
        "  method   load the RDB in a scratch redis-server, copy every key with DUMP/RESTORE and its absolute expiry"
    );
    eprintln!(
        "  target   {} ({existing} keys{})",
        target.display(),
        if existing > 0 { ", FLUSHALL first (--force)" } else { "" }
    );
    eprintln!("  verify   key counts and every TTL; duration against the RTO");
    super::confirm(args.common.yes, "Restore?")?;

    let rdb = stored.dir.join("dump.rdb");
    let (scratch, mut sc) = Scratch::load(&rdb).await?;
    let _ = scratch.path();
    if existing > 0 {
        redis::cmd("FLUSHALL").query_async::<()>(&mut tc).await?;
    }
    let dbs = keyspace(&mut sc).await?;
    let progress = Bytes::count("copied into the target", Some(dbs.values().map(|v| v.0).sum()), "keys");
    // Expiry per key as copied: compared with the target afterwards.
    let mut expiries: Vec<(u32, Vec<u8>, i64)> = Vec::new();
    for &db in dbs.keys() {
        redis::cmd("SELECT").arg(db).query_async::<()>(&mut sc).await?;
        redis::cmd("SELECT").arg(db).query_async::<()>(&mut tc).await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(&mut sc).await?;
            let mut read = redis::pipe();
            for k in &keys {
                read.cmd("DUMP").arg(k).cmd("PEXPIRETIME").arg(k);
            }
            let values: Vec<redis::Value> =
                if keys.is_empty() { Vec::new() } else { read.query_async(&mut sc).await? };
            let mut write = redis::pipe();
            for (k, pair) in keys.iter().zip(values.chunks(2)) {
                let (redis::Value::BulkString(payload), Ok(at)) =
                    (&pair[0], redis::from_redis_value::<i64>(pair[1].clone()))
                else {
                    continue; // expired since the scan
                };
                let ttl = if at > 0 { at } else { 0 };
                write.cmd("RESTORE").arg(k).arg(ttl).arg(payload.as_slice()).arg("REPLACE");
                if at > 0 {
                    write.arg("ABSTTL");
                    expiries.push((db, k.clone(), at));
                }
                write.ignore();
            }
            if !keys.is_empty() {
                write.query_async::<()>(&mut tc).await.context("RESTORE on the target")?;
            }
            progress.add(keys.len() as u64);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    progress.finish();

    // Verify: per database the same key count (less keys whose expiry has passed meanwhile), and
    // every copied expiry exactly as in the backup.
    let now_ms = Utc::now().timestamp_millis();
    let actual = keyspace(&mut tc).await?;
    let mut report = RestoreReport {
        backup: m.id.clone(),
        component: Component::Redis,
        target: target.display(),
        point_in_time: None,
        duration_seconds: 0.0,
        checks: Vec::new(),
    };
    for (db, (keys, _)) in &dbs {
        let lapsed = expiries.iter().filter(|(d, _, at)| d == db && *at <= now_ms).count() as u64;
        let got = actual.get(db).map(|v| v.0).unwrap_or(0);
        report.checks.push(Check::new(format!("keys db{db}"), keys - lapsed, got, got == keys - lapsed));
    }
    let mut wrong = 0usize;
    let mut first_wrong = None;
    for (db, key, at) in expiries.iter().filter(|(_, _, at)| *at > now_ms + 1000) {
        redis::cmd("SELECT").arg(*db).query_async::<()>(&mut tc).await?;
        let got: i64 = redis::cmd("PEXPIRETIME").arg(key.as_slice()).query_async(&mut tc).await?;
        if got != *at {
            wrong += 1;
            first_wrong
                .get_or_insert_with(|| format!("{} expires at {got}, backup says {at}", String::from_utf8_lossy(key)));
        }
    }
    let with_ttl = expiries.iter().filter(|(_, _, at)| *at > now_ms + 1000).count();
    report.checks.push(Check::new(
        "TTLs as in the backup",
        format!("{with_ttl} keys"),
        first_wrong.unwrap_or_else(|| format!("{with_ttl} keys, identical")),
        wrong == 0,
    ));
    report.add_rto(t0.elapsed());
    output::emit(ctx.global.output, &report)?;
    Ok(report.evidence(started))
}

/// `backup verify`: load the RDB in a scratch redis-server and compare its keyspace with the manifest.
pub async fn verify(stored: &repo::Stored) -> anyhow::Result<Vec<Check>> {
    let point: RedisPoint =
        serde_json::from_value(stored.manifest.consistency.clone()).context("unreadable Redis consistency point")?;
    let n = repo::verify_files(stored, |_| true, &Bytes::hidden())?;
    let mut checks = vec![Check::new("checksums", stored.manifest.files.len(), format!("{n} files intact"), true)];
    let (scratch, mut sc) = Scratch::load(&stored.dir.join("dump.rdb")).await?;
    let dbs = keyspace(&mut sc).await?;
    drop(sc);
    drop(scratch);
    let keys: u64 = dbs.values().map(|v| v.0).sum();
    // Keys whose TTL passed since the backup are not loaded: at most `expires` fewer.
    let ok = keys <= point.keys && keys + point.expires >= point.keys;
    checks.push(Check::new("keys loaded from the RDB", point.keys, keys, ok));
    Ok(checks)
}
