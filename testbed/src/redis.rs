//! Redis from Debian's packages: a primary, one replica and three sentinels watching `mymaster`
//! (quorum 2), as the seed's Bitnami "replication + sentinel" architecture. AOF is on, and every
//! node (sentinels included) requires the same password, as the chart does with `auth.existingSecret`.
//!
//! Sentinels are tuned to notice a dead primary within a second (`down-after-milliseconds 1000`) so
//! failover tests finish in seconds; production keeps Redis's slower defaults.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audctl_targets::{RedisTarget, Secret};

use crate::process::{Process, free_port, wait_until};

/// The seed's master set name.
pub const MASTER_SET: &str = "mymaster";
const QUORUM: usize = 2;
const SENTINELS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(30);

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_SENTINEL: &str = "/usr/bin/redis-sentinel";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// A running primary + replica + three sentinels. Everything is stopped and removed on drop.
pub struct RedisSentinel {
    // Sentinels first: dropped before the data nodes so they do not start a failover on the way out.
    sentinels: Vec<Node>,
    replica: Node,
    primary: Node,
    password: String,
    _dir: tempfile::TempDir,
}

/// One redis-server (data node or sentinel).
struct Node {
    name: String,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    sentinel: bool,
    process: Option<Process>,
}

/// Start the primary, the replica (waits for its link to be up), then the sentinels (waits until
/// each one knows the master, the replica and the two other sentinels).
pub async fn redis_sentinel() -> anyhow::Result<RedisSentinel> {
    crate::require("redis-server", Path::new(REDIS_SERVER))?;
    crate::require("redis-sentinel", Path::new(REDIS_SENTINEL))?;
    crate::require("redis-cli", Path::new(REDIS_CLI))?;
    let dir = crate::scratch::instance_dir("audctl-redis-")?;
    let base = dir.path().to_owned();
    let password = crate::scratch::random_hex(16)?;

    let primary_port = free_port()?;
    let mut primary = data_node(&base, "redis-primary", primary_port, None, &password)?;
    primary.start(&password).await?;
    let mut replica = data_node(&base, "redis-replica", free_port()?, Some(primary_port), &password)?;
    replica.start(&password).await?;

    // Each sentinel is told the others' ids and the replica up front (lines sentinels write into
    // their own config once they learn them): agreement then takes ~1 s instead of several hello
    // rounds. wait_for_agreement still checks it for real.
    // Picked before any sentinel binds, so make sure the OS did not hand out one port twice.
    let mut ports: Vec<u16> = Vec::with_capacity(SENTINELS);
    while ports.len() < SENTINELS {
        let port = free_port()?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let ids = (0..SENTINELS).map(|_| crate::scratch::random_hex(20)).collect::<anyhow::Result<Vec<String>>>()?;
    let mut sentinels = Vec::with_capacity(SENTINELS);
    for i in 0..SENTINELS {
        let peers: Vec<(u16, &str)> = (0..SENTINELS).filter(|&j| j != i).map(|j| (ports[j], ids[j].as_str())).collect();
        let known = Known { id: &ids[i], peers: &peers, replica_port: replica.port };
        let mut node = sentinel_node(&base, i + 1, ports[i], primary_port, &password, &known)?;
        node.start(&password).await?;
        sentinels.push(node);
    }
    let rs = RedisSentinel { sentinels, replica, primary, password, _dir: dir };
    rs.wait_for_agreement(primary_port, START_TIMEOUT).await?;
    Ok(rs)
}

impl RedisSentinel {
    /// `redis://:PASSWORD@127.0.0.1:PORT/` of the node started as primary (not updated by failover:
    /// ask a sentinel, see [`Self::master_addr`]).
    pub fn master_url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/", self.password, self.primary.port)
    }

    pub fn replica_url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/", self.password, self.replica.port)
    }

    /// `127.0.0.1:PORT` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect()
    }

    /// The password of every node, sentinels included.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// Process ids of every running node (tests check that none survives drop).
    pub fn pids(&self) -> Vec<u32> {
        let nodes = self.sentinels.iter().chain([&self.replica, &self.primary]);
        nodes.filter_map(|n| n.process.as_ref().map(Process::pid)).collect()
    }

    /// Sentinel addresses, `mymaster` and the password: what an operator puts in the targets file.
    pub fn target(&self) -> RedisTarget {
        RedisTarget {
            sentinels: self.sentinel_addrs(),
            master_set: MASTER_SET.to_owned(),
            url: None,
            password: Some(Secret::Inline(self.password.clone())),
        }
    }

    /// The master's port as the first answering sentinel reports it.
    pub async fn master_addr(&self) -> anyhow::Result<u16> {
        let mut last = None;
        for s in &self.sentinels {
            match cli(s.port, &self.password, &["SENTINEL", "get-master-addr-by-name", MASTER_SET]).await {
                Ok(out) => return parse_master_port(&out),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel")))
    }

    /// SIGKILL the node started as primary (no AOF flush, no shutdown), to trigger a failover.
    pub fn kill_primary_hard(&mut self) {
        if let Some(mut p) = self.primary.process.take() {
            p.kill_hard();
        }
    }

    /// SIGKILL sentinel `i` (0-based), as a lost pod would be; the others keep watching the master.
    pub fn kill_sentinel(&mut self, i: usize) {
        let count = self.sentinels.len();
        let node = self.sentinels.get_mut(i).unwrap_or_else(|| panic!("sentinel index {i} out of range ({count})"));
        if let Some(mut p) = node.process.take() {
            p.kill_hard();
        }
    }

    /// Restart the killed primary from its AOF; after a failover the sentinels turn it into a replica.
    pub async fn restart_primary(&mut self) -> anyhow::Result<()> {
        if self.primary.process.is_some() {
            bail!("{} is still running", self.primary.name);
        }
        self.primary.start(&self.password).await
    }

    /// Wait until a sentinel reports a master other than `old_port` and the replica it promoted
    /// answers as master. Returns the new master's port.
    pub async fn wait_for_failover(&self, old_port: u16, timeout: Duration) -> anyhow::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            // Every sentinel must report the new master: a client may ask any of them, and one that
            // has not caught up yet still names the dead node.
            let mut ports = Vec::with_capacity(self.sentinels.len());
            for s in &self.sentinels {
                let out = cli(s.port, &self.password, &["SENTINEL", "get-master-addr-by-name", MASTER_SET]).await;
                ports.push(out.ok().and_then(|o| parse_master_port(&o).ok()));
            }
            if let Some(Some(port)) = ports.first().copied()
                && port != old_port
                && ports.iter().all(|p| *p == Some(port))
                && cli(port, &self.password, &["ROLE"]).await.is_ok_and(|r| r.starts_with("master"))
            {
                return Ok(port);
            }
            if Instant::now() > deadline {
                bail!(
                    "no failover away from port {old_port} within {timeout:?}; sentinel log:\n{}",
                    self.sentinel_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn sentinel_log_tail(&self) -> String {
        self.sentinels.first().map(|s| crate::process::log_tail(&s.log, 30)).unwrap_or_default()
    }

    /// Every sentinel agrees on the master and sees one replica and the two other sentinels.
    async fn wait_for_agreement(&self, master_port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let mut agreed = 0;
            for s in &self.sentinels {
                let fields = cli(s.port, &self.password, &["SENTINEL", "master", MASTER_SET]).await.unwrap_or_default();
                let get = |key: &str| field(&fields, key).unwrap_or_default();
                // Peers and replica must be reachable, not merely configured (see `Known`).
                let peers =
                    cli(s.port, &self.password, &["SENTINEL", "sentinels", MASTER_SET]).await.unwrap_or_default();
                let replicas =
                    cli(s.port, &self.password, &["SENTINEL", "replicas", MASTER_SET]).await.unwrap_or_default();
                let healthy = |flags: &[&str]| flags.iter().all(|f| !f.contains("down") && !f.contains("disconnected"));
                let peer_flags = all_fields(&peers, "flags");
                let replica_flags = all_fields(&replicas, "flags");
                let ok = get("port") == master_port.to_string()
                    && get("num-slaves") == "1"
                    && get("num-other-sentinels") == (SENTINELS - 1).to_string()
                    && healthy(&[get("flags")])
                    && peer_flags.len() == SENTINELS - 1
                    && healthy(&peer_flags)
                    && replica_flags.len() == 1
                    && healthy(&replica_flags);
                if ok {
                    agreed += 1;
                } else {
                    last = format!(
                        "sentinel {}: master port={} flags={}; replicas {replica_flags:?}; peers {peer_flags:?}",
                        s.port,
                        get("port"),
                        get("flags")
                    );
                }
            }
            if agreed == SENTINELS {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sentinels did not agree within {timeout:?} ({last}); sentinel log:\n{}",
                    self.sentinel_log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Node {
    async fn start(&mut self, password: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new(if self.sentinel { REDIS_SENTINEL } else { REDIS_SERVER });
        cmd.arg(&self.conf);
        let mut process = Process::spawn(self.name.clone(), cmd, &self.log)?;
        let (port, sentinel) = (self.port, self.sentinel);
        wait_until(&mut process, START_TIMEOUT, || async move {
            if sentinel {
                return Ok(cli(port, password, &["PING"]).await? == "PONG");
            }
            // A replica counts as ready once its link to the master is up (initial sync done).
            let info = cli(port, password, &["INFO", "replication"]).await?;
            Ok(info.contains("role:master") || info.contains("master_link_status:up"))
        })
        .await?;
        self.process = Some(process);
        Ok(())
    }
}

fn data_node(base: &Path, name: &str, port: u16, replica_of: Option<u16>, password: &str) -> anyhow::Result<Node> {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // masterauth on every node: after a failover the old primary comes back as a replica. Full syncs
    // start at once (the default waits 5 s for more replicas to share one diskless transfer).
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\nappendonly yes\nappendfsync everysec\n\
         requirepass {password}\nmasterauth {password}\nreplica-announce-ip 127.0.0.1\n\
         repl-diskless-sync-delay 0\n",
        dir.display()
    );
    if let Some(master) = replica_of {
        conf.push_str(&format!("replicaof 127.0.0.1 {master}\n"));
    }
    write_node(base, name, port, conf, false)
}

/// What a sentinel is told at start besides the master: its own id, its peers, the replica.
struct Known<'a> {
    id: &'a str,
    peers: &'a [(u16, &'a str)],
    replica_port: u16,
}

fn sentinel_node(
    base: &Path,
    i: usize,
    port: u16,
    master_port: u16,
    password: &str,
    known: &Known,
) -> anyhow::Result<Node> {
    let name = format!("redis-sentinel-{i}");
    let dir = base.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Sentinels rewrite their config file, so each has its own writable copy. requirepass here is
    // also what they use to authenticate to each other.
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {dir}\nrequirepass {password}\n\
         sentinel myid {id}\nsentinel announce-ip 127.0.0.1\n\
         sentinel monitor {MASTER_SET} 127.0.0.1 {master_port} {QUORUM}\n\
         sentinel auth-pass {MASTER_SET} {password}\n\
         sentinel down-after-milliseconds {MASTER_SET} 1000\n\
         sentinel failover-timeout {MASTER_SET} 10000\n\
         sentinel parallel-syncs {MASTER_SET} 1\n\
         sentinel known-replica {MASTER_SET} 127.0.0.1 {replica}\n",
        dir = dir.display(),
        id = known.id,
        replica = known.replica_port,
    );
    for (peer_port, peer_id) in known.peers {
        conf.push_str(&format!("sentinel known-sentinel {MASTER_SET} 127.0.0.1 {peer_port} {peer_id}\n"));
    }
    write_node(base, &name, port, conf, true)
}

fn write_node(base: &Path, name: &str, port: u16, conf: String, sentinel: bool) -> anyhow::Result<Node> {
    let path = base.join(format!("{name}.conf"));
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(Node { name: name.to_owned(), port, conf: path, log: base.join(format!("{name}.log")), sentinel, process: None })
}

/// Run redis-cli against 127.0.0.1:port (password via REDISCLI_AUTH, never on the command line).
async fn cli(port: u16, password: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(REDIS_CLI)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .output()
        .await
        .context("running redis-cli")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // redis-cli exits 0 on server errors when not on a tty; the reply then starts with ERR/NOAUTH...
    if !out.status.success() || text.starts_with("ERR") || text.starts_with("NOAUTH") || text.starts_with("LOADING") {
        bail!("redis-cli -p {port} {}: {} {}", args.join(" "), text, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(text)
}

/// The value after `key` in redis-cli's one-item-per-line rendering of a flat map reply.
fn field<'a>(reply: &'a str, key: &str) -> Option<&'a str> {
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        let value = lines.next()?;
        if line == key {
            return Some(value);
        }
    }
    None
}

/// Every value of `key` in a flat rendering of several maps (e.g. `SENTINEL sentinels`).
fn all_fields<'a>(reply: &'a str, key: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = reply.lines().collect();
    lines.chunks_exact(2).filter(|pair| pair[0] == key).map(|pair| pair[1]).collect()
}

/// `SENTINEL get-master-addr-by-name` prints the host then the port, one per line.
fn parse_master_port(reply: &str) -> anyhow::Result<u16> {
    let port = reply.lines().nth(1).context("empty get-master-addr-by-name reply")?;
    port.trim().parse().with_context(|| format!("unexpected master address reply {reply:?}"))
}
