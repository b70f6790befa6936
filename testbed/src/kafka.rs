//! Apache Kafka in KRaft mode from the Maven Central jars that `cargo xtask deps install` resolves.
//!
//! Every node is a combined broker+controller on 127.0.0.1 with random ports. One node for most tests;
//! three nodes (`default.replication.factor=3`, `min.insync.replicas=2`) so that replication and the
//! loss of a broker can be checked for real. Nodes keep their data directory across
//! [`Kafka::kill_broker`] / [`Kafka::restart_broker`], as a crashed pod with a persistent volume would.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::Jvm;
use crate::process::{Process, free_port, wait_until};

/// The Kafka the testbed runs; the one place it is kept (`cargo xtask deps install` fetches it).
pub const KAFKA_VERSION: &str = "4.4.0";

/// Logged by `KafkaRaftServer` once the broker and controller of a node are serving.
const READY_LINE: &str = "Kafka Server started";

/// Generous: a loaded 2-core CI machine starts three JVMs at once.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Broker logs at INFO on stdout (the node's log file); the chatty request/state loggers stay quiet.
const BROKER_LOG4J: &str = "status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
";

/// StorageTool dumps its whole configuration at INFO; only problems are worth reading.
const TOOL_LOG4J: &str = "status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = %p %m%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = OUT
";

/// A running Kafka cluster of 1 or 3 nodes. Dropping it stops every node and deletes the data.
pub struct Kafka {
    // Declared before `dir` so the processes stop before their data directory is removed.
    nodes: Vec<Node>,
    lib: PathBuf,
    jvm: Jvm,
    dir: TempDir,
}

struct Node {
    /// Kafka `node.id`, 1-based (index + 1).
    id: usize,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

/// Start a KRaft cluster of `brokers` nodes (1 or 3) and wait until every node serves.
pub async fn kafka(brokers: usize) -> anyhow::Result<Kafka> {
    kafka_with(brokers, Jvm::FastStart).await
}

/// [`kafka`] with the brokers' JVM profile chosen: benchmarks take [`Jvm::Steady`].
pub async fn kafka_with(brokers: usize, jvm: Jvm) -> anyhow::Result<Kafka> {
    if brokers != 1 && brokers != 3 {
        bail!("testbed::kafka supports 1 or 3 nodes, not {brokers}");
    }
    let lib = crate::cache_dir().join(format!("kafka-{KAFKA_VERSION}")).join("lib");
    crate::require("Apache Kafka", &lib.join(format!("kafka_2.13-{KAFKA_VERSION}.jar")))?;
    // free_port() leaves a short window before the broker binds; on a collision start afresh.
    let mut attempt = 1;
    loop {
        match start(brokers, &lib, jvm).await {
            Err(e) if attempt < 3 && crate::process::is_port_clash(&e) => attempt += 1,
            other => return other,
        }
    }
}

async fn start(brokers: usize, lib: &Path, jvm: Jvm) -> anyhow::Result<Kafka> {
    let dir = crate::scratch::instance_dir_on_disk("audctl-kafka-")?;
    std::fs::write(dir.path().join("log4j2-broker.properties"), BROKER_LOG4J)?;
    std::fs::write(dir.path().join("log4j2-tool.properties"), TOOL_LOG4J)?;

    let ports: Vec<(u16, u16)> =
        (0..brokers).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
    let voters: Vec<String> = ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect();
    let mut nodes = Vec::with_capacity(brokers);
    for (i, &(port, controller_port)) in ports.iter().enumerate() {
        let id = i + 1;
        let data = dir.path().join(format!("data-{id}"));
        let config = dir.path().join(format!("server-{id}.properties"));
        let text = server_properties(id, port, controller_port, &voters.join(","), &data, brokers);
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        nodes.push(Node { id, port, config, log: dir.path().join(format!("node-{id}.log")), process: None });
    }

    // Every node's storage gets the same cluster id; the voters are static, so no --standalone.
    let cluster_id = random_cluster_id()?;
    // Spawned together, awaited one by one: the three JVMs format side by side.
    let mut formats = Vec::with_capacity(brokers);
    for node in &nodes {
        let mut cmd = tokio::process::Command::new(java());
        cmd.arg(format!("-Dlog4j2.configurationFile={}", dir.path().join("log4j2-tool.properties").display()))
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp"])
            .arg(lib.join("*"))
            .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
            .arg(&node.config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        formats.push(cmd.spawn().context("starting kafka.tools.StorageTool (is `java` on PATH?)")?);
    }
    for (node, child) in nodes.iter().zip(formats) {
        let out = child.wait_with_output().await.context("waiting for kafka.tools.StorageTool")?;
        if !out.status.success() {
            bail!(
                "formatting Kafka node {} storage failed ({}):\n{}{}",
                node.id,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let mut kafka = Kafka { nodes, lib: lib.to_owned(), jvm, dir };
    let mut offsets = Vec::with_capacity(brokers);
    for i in 0..brokers {
        offsets.push(kafka.spawn_node(i)?);
    }
    for (i, offset) in offsets.into_iter().enumerate() {
        kafka.wait_ready(i, offset).await?;
    }
    Ok(kafka)
}

impl Kafka {
    /// `127.0.0.1:P1,127.0.0.1:P2,...` (all nodes, including stopped ones).
    pub fn bootstrap_servers(&self) -> String {
        self.addresses().join(",")
    }

    /// Connection settings as an operator would write them in the targets file.
    pub fn target(&self) -> audctl_targets::KafkaTarget {
        audctl_targets::KafkaTarget { bootstrap_servers: self.addresses(), topic: "audit-events".to_owned() }
    }

    /// Process ids (= process group ids) of the running nodes, e.g. to measure memory.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.process.as_ref().map(Process::pid)).collect()
    }

    /// Crash node `i` (0-based index; Kafka `node.id` is `i + 1`) with SIGKILL: no controlled
    /// shutdown, its data directory stays for [`Kafka::restart_broker`].
    pub fn kill_broker(&mut self, i: usize) {
        if let Some(mut process) = self.node_mut(i).process.take() {
            process.kill_hard();
        }
    }

    /// Start node `i` again from its data directory (stopping it first if it runs) and wait until
    /// it serves.
    pub async fn restart_broker(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut process) = self.node_mut(i).process.take() {
            process.stop();
        }
        // Same ports (the other nodes know them): if another process took one meanwhile, retry
        // until it is free again.
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let offset = self.spawn_node(i)?;
            match self.wait_ready(i, offset).await {
                Err(e) if std::time::Instant::now() < deadline && crate::process::is_port_clash(&e) => {
                    if let Some(mut process) = self.node_mut(i).process.take() {
                        process.stop();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let count = self.nodes.len();
        self.nodes.get_mut(i).unwrap_or_else(|| panic!("Kafka node index {i} out of range (cluster has {count} nodes)"))
    }

    /// Launch node `i`; returns the log length before launch, where its ready line must appear after.
    fn spawn_node(&mut self, i: usize) -> anyhow::Result<u64> {
        let root = self.dir.path().to_owned();
        let log4j = root.join("log4j2-broker.properties");
        let lib = self.lib.join("*");
        let jvm = self.jvm;
        let node = self.node_mut(i);
        let offset = std::fs::metadata(&node.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(java());
        let options: &[&str] = match jvm {
            // The cleaner's dedupe buffer (128 MiB by default) lives on the heap: shrink it with the heap.
            Jvm::FastStart => &["-Xms32m", "-Xmx192m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"],
            // What kafka-server-start.sh gives a broker: a 1 GiB heap and G1, the full JIT.
            Jvm::Steady => &["-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"],
        };
        cmd.args(options)
            .arg("-Djava.awt.headless=true")
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(lib)
            .arg("kafka.Kafka")
            .arg(&node.config)
            // Inside the instance dir: what identifies a node left behind by a killed test run.
            .current_dir(&root);
        let process = Process::spawn(format!("kafka node {}", node.id), cmd, &node.log)?;
        node.process = Some(process);
        Ok(offset)
    }

    async fn wait_ready(&mut self, i: usize, offset: u64) -> anyhow::Result<()> {
        let node = self.node_mut(i);
        let log = node.log.clone();
        let process = node.process.as_mut().context("node is not running")?;
        wait_until(process, START_TIMEOUT, || {
            let log = log.clone();
            async move { Ok(log_contains_after(&log, offset, READY_LINE)) }
        })
        .await
    }
}

impl Drop for Kafka {
    /// SIGKILL every node at once: the data is deleted anyway, and stopping nodes one by one with
    /// SIGTERM took 14 s for 3 nodes (the last one waits for a controller quorum that is gone).
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.kill_hard();
            }
        }
    }
}

fn server_properties(id: usize, port: u16, controller_port: u16, voters: &str, data: &Path, nodes: usize) -> String {
    // Internal topics must fit the cluster: replication factor = nodes, min ISR 2 when there are 3.
    let min_isr = if nodes >= 3 { 2 } else { 1 };
    let mut s = String::new();
    let _ = write!(
        s,
        "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={nodes}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={nodes}
transaction.state.log.replication.factor={nodes}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={nodes}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=8388608
",
        data = data.display()
    );
    s
}

/// `$JAVA_HOME/bin/java` when set, else `java` from PATH.
fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME").map(|h| PathBuf::from(h).join("bin/java")).unwrap_or_else(|| "java".into())
}

fn log_contains_after(log: &Path, offset: u64, needle: &str) -> bool {
    let text = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[start..]).contains(needle)
}

/// A Kafka cluster id: 16 random bytes in URL-safe base64 without padding (what `StorageTool
/// random-uuid` prints), generated here to save a JVM start. Like Kafka, avoid a leading '-',
/// which command lines would read as an option.
fn random_cluster_id() -> anyhow::Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    loop {
        let mut bytes = [0u8; 16];
        urandom.read_exact(&mut bytes)?;
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut id = String::with_capacity(22);
        for b in bytes {
            bits = (bits << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                id.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
            }
        }
        if nbits > 0 {
            id.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
        }
        if !id.starts_with('-') && bytes != [0; 16] {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafka_uuids() -> anyhow::Result<()> {
        let id = random_cluster_id()?;
        assert_eq!(id.len(), 22, "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{id}");
        Ok(())
    }
}
