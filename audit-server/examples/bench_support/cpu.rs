//! CPU time by component, read from /proc: on a 2-core machine the brokers and the search node
//! share the cores with the server and PostgreSQL, so a lower ingest rate with the outbox may be
//! their CPU, not the server's. The bench prints where the cores went for each run.

use std::collections::BTreeMap;
use std::time::Instant;

/// Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ: 100 on every Linux
/// this runs on; the kernel exposes 100 whatever its internal HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// Ticks used so far by each component, and when they were read.
pub struct Sample {
    at: Instant,
    ticks: BTreeMap<&'static str, u64>,
}

/// Which component a process is: this process (the servers and the load clients), PostgreSQL,
/// a Kafka broker, the search node, or anything else.
fn component(pid: u32, comm: &str, cmdline: &str) -> &'static str {
    if pid == std::process::id() {
        "bench process (servers + clients)"
    } else if comm.starts_with("postgres") || comm.starts_with("postmaster") {
        "postgres"
    } else if cmdline.contains("kafka.Kafka") {
        "kafka brokers"
    } else if cmdline.contains("elasticsearch") || cmdline.contains("opensearch") {
        "search node"
    } else {
        "other"
    }
}

pub fn sample() -> Sample {
    let mut ticks = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // comm is in parentheses and may hold spaces: the fields after the last ')' are fixed.
        let Some(close) = stat.rfind(')') else { continue };
        let comm = stat[..close].split_once('(').map(|(_, c)| c).unwrap_or("");
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After ')': state(3) ... utime is field 14 and stime 15 of the whole line, here 11 and 12.
        let used = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        *ticks.entry(component(pid, comm, &cmdline)).or_insert(0) += used(11) + used(12);
    }
    Sample { at: Instant::now(), ticks }
}

impl Sample {
    /// Cores used by each component since `before` ("postgres 0.91, kafka brokers 0.35, ...").
    /// Processes that ended in between are not counted (their ticks are gone with them).
    pub fn since(&self, before: &Sample) -> String {
        let seconds = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let mut parts = Vec::new();
        for (name, &now) in &self.ticks {
            let was = before.ticks.get(name).copied().unwrap_or(0);
            let cores = now.saturating_sub(was) as f64 / TICKS_PER_SECOND / seconds;
            if cores >= 0.005 {
                parts.push(format!("{name} {cores:.2}"));
            }
        }
        format!("cores used: {}", parts.join(", "))
    }
}
