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

/// This process's threads that run the load clients (a runtime of their own, see
/// [`client_runtime`]); the rest of the process is the servers (and, outside the outbox
/// comparison, clients on the main runtime too).
pub const CLIENT_THREAD: &str = "bench-client";
pub const SERVERS: &str = "bench process less load-client threads";
pub const CLIENTS: &str = "load clients";
pub const POSTGRES: &str = "postgres";

/// A runtime for the load clients alone, so that their CPU is told apart from the servers'.
pub fn client_runtime() -> std::io::Result<ClientRuntime> {
    runtime(CLIENT_THREAD, 2)
}

/// A runtime of `threads` threads named `name`: threads not named [`CLIENT_THREAD`] count as
/// the servers' (the ceiling's mirror runs on one, so that its encoding counts as the relay's).
pub fn runtime(name: &str, threads: usize) -> std::io::Result<ClientRuntime> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name(name).enable_all().build()?;
    Ok(ClientRuntime(Some(rt)))
}

/// The clients' runtime, shut down in the background when dropped: dropping a runtime inside
/// another one panics, which turned any error of the comparison (a drain timing out) into a
/// panic that hid it.
pub struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for ClientRuntime {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Which component a process is: PostgreSQL, a Kafka broker, the search node, or anything else
/// (this process is counted per thread, see [`sample`]).
fn component(comm: &str, cmdline: &str) -> &'static str {
    if comm.starts_with("postgres") || comm.starts_with("postmaster") {
        POSTGRES
    } else if cmdline.contains("kafka.Kafka") {
        "kafka brokers"
    } else if cmdline.contains("elasticsearch") || cmdline.contains("opensearch") {
        "search node"
    } else {
        "other"
    }
}

/// comm and utime + stime of one /proc/<pid> or /proc/<pid>/task/<tid> entry.
fn stat(dir: &std::path::Path) -> Option<(String, u64)> {
    stat_fields(dir).map(|(comm, f)| (comm, f[0] + f[1]))
}

/// comm and utime + stime + cutime + cstime of a process: with the CPU of its children that
/// ended and were reaped. Without it a PostgreSQL backend that exits during a run (a pool closing
/// an idle connection, the bench's own connections) takes its ticks with it, the component's
/// sum goes down, and the run shows PostgreSQL at 0 cores (seen). The postmaster reaps its
/// backends, so their time stays in its children's counters.
fn stat_with_children(dir: &std::path::Path) -> Option<(String, u64)> {
    stat_fields(dir).map(|(comm, f)| (comm, f.iter().sum()))
}

/// comm and [utime, stime, cutime, cstime].
fn stat_fields(dir: &std::path::Path) -> Option<(String, [u64; 4])> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // comm is in parentheses and may hold spaces: the fields after the last ')' are fixed.
    let close = stat.rfind(')')?;
    let comm = stat[..close].split_once('(').map(|(_, c)| c).unwrap_or("");
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After ')': state(3) ... utime is field 14 and stime 15 of the whole line, here 11 and 12.
    let used = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((comm.to_owned(), [used(11), used(12), used(13), used(14)]))
}

pub fn sample() -> Sample {
    let mut ticks = BTreeMap::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == me {
            // The whole process (threads that ended included) less the client runtime's threads
            // (told apart by name; they live as long as the runtime).
            let Some((_, total)) = stat(&entry.path()) else { continue };
            let clients: u64 = std::fs::read_dir(entry.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|task| stat(&task.path()))
                .filter(|(comm, _)| comm.starts_with(CLIENT_THREAD))
                .map(|(_, used)| used)
                .sum();
            ticks.insert(CLIENTS, clients);
            ticks.insert(SERVERS, total.saturating_sub(clients));
            continue;
        }
        let Some((comm, used)) = stat_with_children(&entry.path()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        *ticks.entry(component(&comm, &cmdline)).or_insert(0) += used;
    }
    Sample { at: Instant::now(), ticks }
}

impl Sample {
    /// Cores the named components used together since `before`.
    pub fn cores(&self, before: &Sample, names: &[&str]) -> f64 {
        let seconds = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let ticks: u64 = names
            .iter()
            .map(|n| {
                let now = self.ticks.get(n).copied().unwrap_or(0);
                now.saturating_sub(before.ticks.get(n).copied().unwrap_or(0))
            })
            .sum();
        ticks as f64 / TICKS_PER_SECOND / seconds
    }

    /// Cores used by each component since `before` ("postgres 0.91, kafka brokers 0.35, ...").
    /// Processes that ended in between are not counted (their ticks are gone with them).
    pub fn since(&self, before: &Sample) -> String {
        let mut parts = Vec::new();
        for name in self.ticks.keys() {
            let cores = self.cores(before, &[name]);
            if cores >= 0.005 {
                parts.push(format!("{name} {cores:.2}"));
            }
        }
        format!("cores used: {}", parts.join(", "))
    }
}
