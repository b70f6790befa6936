//! Child processes owned by a test: log captured to a file, stopped (whole process group) on drop.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// A running component process. Dropping it sends SIGTERM to its process group, then SIGKILL if it
/// has not exited after a grace period, so no process outlives the test.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    grace: Duration,
    /// Stops the group if this process dies without dropping it ([`watchdog`]).
    watchdog: Option<Child>,
}

impl Process {
    /// Start `cmd` in its own process group with stdout and stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: impl Into<PathBuf>) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let name = name.into();
        let log = log.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // Also through an `env_clear()` of the caller: ci finds its leftovers by this variable.
        if let Some(run) = std::env::var_os(crate::scratch::RUN_ID_ENV) {
            cmd.env(crate::scratch::RUN_ID_ENV, run);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let grace = Duration::from_secs(10);
        // Best effort: without it the component still stops on drop, as before.
        let watchdog = watchdog(child.id(), std::process::id(), grace).ok();
        Ok(Self { name, child, log, grace, watchdog })
    }

    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Still running? (Reaps the child if it exited.)
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Kill with SIGKILL, as a crash would (no graceful shutdown).
    pub fn kill_hard(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        self.release_watchdog();
    }

    /// The group is gone: its id may be reused, and the watchdog must not signal it any more.
    fn release_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// SIGTERM the group and wait up to the grace period, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.is_running() {
            self.release_watchdog();
            return;
        }
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                // The leader exited; make sure helpers it forked are gone too.
                let _ = killpg(pgid, Signal::SIGKILL);
                self.release_watchdog();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_hard();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `sh` loop that waits for this (test) process to be gone, then stops the process group `pgid`
/// as drop would have: SIGTERM, then SIGKILL after `grace`. A test killed by a signal (Ctrl-C, a
/// CI timeout) runs no drop, and its PostgreSQL, brokers or API server would live on under PID 1.
/// Not `PR_SET_PDEATHSIG`: it fires when the spawning *thread* exits, and tokio's blocking
/// threads do. Polls once a second; in a group of its own, so that stopping the component's group
/// does not stop it, and drop kills it.
fn watchdog(pgid: u32, owner: u32, grace: Duration) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let script = format!(
        "while kill -0 {owner} 2>/dev/null; do sleep 1; done; kill -TERM -{pgid} 2>/dev/null; sleep {grace}; \
         kill -KILL -{pgid} 2>/dev/null; exit 0",
        grace = grace.as_secs().max(1)
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    if let Some(run) = std::env::var_os(crate::scratch::RUN_ID_ENV) {
        cmd.env(crate::scratch::RUN_ID_ENV, run);
    }
    cmd.spawn()
}

/// The last `lines` lines of a log file (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on 127.0.0.1. The OS picks it; there is a small window before the component
/// binds it, which retries in the starters cover.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Did starting a component fail because its port was taken (the window [`free_port`] leaves)?
/// Matches the bind errors of the components' logs and of Rust's std, as found in an error chain.
pub fn is_port_clash(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    CLASH_MARKERS.iter().any(|m| text.contains(m))
}

const CLASH_MARKERS: [&str; 3] = ["Address already in use", "address already in use", "could not bind"];

/// The first line of a log that reports a port clash. The tail shown in an error may not hold it:
/// Elasticsearch's bind failure is followed by a stack trace longer than the tail.
fn clash_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find(|l| CLASH_MARKERS.iter().any(|m| l.contains(m))).map(|l| l.trim().to_owned())
}

/// Poll `probe` until it returns Ok(true), the process dies, or `timeout` passes; never later than
/// that, even when a probe hangs (each probe gets what is left of `timeout`). The error names the
/// component and includes the tail of its log.
pub async fn wait_until<F, Fut>(process: &mut Process, timeout: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = String::new();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, probe()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => last_err = format!("{e:#}"),
            Err(_) => last_err = format!("the probe did not answer within the remaining {left:?}"),
        }
        if !process.is_running() {
            let clash = clash_line(process.log_path()).map(|l| format!("\n(port clash: {l})")).unwrap_or_default();
            bail!(
                "{} exited during start-up (log {}):\n{}{clash}",
                process.name(),
                process.log_path().display(),
                process.log_tail(40)
            );
        }
        if start.elapsed() >= timeout {
            bail!(
                "{} not ready after {:?} (last probe error: {last_err}; log {}):\n{}",
                process.name(),
                timeout,
                process.log_path().display(),
                process.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100).min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

/// Live (non-zombie) processes whose process group is one of `pgids`, read from /proc.
pub fn live_group_members(pgids: &[u32]) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the parenthesised command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let in_group = fields.get(2).and_then(|g| g.parse::<u32>().ok()).is_some_and(|g| pgids.contains(&g));
        if in_group && fields.first() != Some(&"Z") {
            live.push(pid);
        }
    }
    live
}

/// Resident memory of every live process in the process groups `pgids`, in MiB (for reports).
pub fn rss_mib(pgids: &[u32]) -> f64 {
    let kib: u64 = live_group_members(pgids)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum();
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_process_group_on_drop() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        // The shell forks a grandchild; dropping must take both down.
        cmd.args(["-c", "sleep 300 & echo started; wait"]);
        let mut p = Process::spawn("sleeper", cmd, dir.path().join("log"))?;
        let log = dir.path().join("log");
        wait_until(&mut p, Duration::from_secs(5), || {
            let log = log.clone();
            async move { Ok(std::fs::read_to_string(log)?.contains("started")) }
        })
        .await?;
        let pgid = p.pid() as i32;
        drop(p);
        // A killed grandchild may stay a zombie until PID 1 reaps it (some sandboxes never do), and
        // killpg(None) counts zombies; what matters is that nothing in the group still runs.
        let live = live_group_members(&[pgid as u32]);
        assert!(live.is_empty(), "process group {pgid} survived drop: {live:?}");
        Ok(())
    }

    /// The owner (here a `sleep`, standing for a test process) is killed with SIGKILL, so no drop
    /// runs: the watchdog stops the component's whole group, a forked grandchild included.
    #[test]
    fn the_watchdog_stops_the_group_when_its_owner_dies() -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut owner = Command::new("sleep").arg("300").spawn()?;
        let mut component = Command::new("sh");
        component.args(["-c", "sleep 300 & wait"]).process_group(0);
        let mut component = component.spawn()?;
        let pgid = component.id();
        let mut dog = watchdog(pgid, owner.id(), Duration::from_secs(1))?;
        std::thread::sleep(Duration::from_millis(300));
        assert!(!live_group_members(&[pgid]).is_empty(), "the component is running");
        owner.kill()?;
        owner.wait()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !live_group_members(&[pgid]).is_empty() {
            assert!(Instant::now() < deadline, "group {pgid} still alive 15 s after its owner died");
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = component.wait();
        assert!(dog.wait()?.success(), "the watchdog exits once done");
        Ok(())
    }

    /// A bind failure far above the tail (Elasticsearch's, then a long stack trace) still reads as
    /// a port clash, so the starter retries on fresh ports (a CI run failed on this).
    #[tokio::test]
    async fn a_clash_above_the_tail_is_still_a_clash() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo 'Caused by: java.net.BindException: Address already in use'; seq 1 100 | sed 's/^/\tat frame/'",
        ]);
        let mut p = Process::spawn("node", cmd, dir.path().join("log"))?;
        let err = wait_until(&mut p, Duration::from_secs(10), || async { Ok(false) }).await.expect_err("exited");
        assert!(is_port_clash(&err), "{err:#}");
        Ok(())
    }

    #[tokio::test]
    async fn a_hanging_probe_does_not_overshoot_the_deadline() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sleep");
        cmd.arg("300");
        let mut p = Process::spawn("sleeper", cmd, dir.path().join("log"))?;
        let hanging = wait_until(&mut p, Duration::from_millis(500), || async {
            std::future::pending::<()>().await;
            Ok(true)
        });
        // Before the fix this never returned; a minute is only there to fail instead of hanging.
        let err = tokio::time::timeout(Duration::from_secs(60), hanging)
            .await
            .expect("wait_until overshot its 0.5 s deadline by a minute")
            .unwrap_err();
        assert!(format!("{err:#}").contains("did not answer"), "{err:#}");
        Ok(())
    }

    #[tokio::test]
    async fn reports_early_exit_with_log() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom-config-error; exit 3"]);
        let mut p = Process::spawn("failing", cmd, dir.path().join("log"))?;
        let err = wait_until(&mut p, Duration::from_secs(5), || async { Ok(false) }).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("failing exited") && msg.contains("boom-config-error"), "{msg}");
        Ok(())
    }
}
