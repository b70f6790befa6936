//! Scratch directories of running instances, and the cleanup of runs that never reached `Drop`.
//!
//! Servers run in their own process groups, so a Ctrl-C or SIGKILL of the test binary leaves them
//! running and their files in place. Each instance directory records the pid of the process that
//! created it, and every process of the instance works (has its current directory) inside it; the
//! next start of the same kind of instance kills the processes still working in directories whose
//! creator is gone, then deletes those directories. Every testbed instance (PostgreSQL, Redis,
//! Kafka, Elasticsearch/OpenSearch, Kubernetes) and the audit-server processes of its tests do so.

use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const OWNER_FILE: &str = "owner.pid";

/// Set by `cargo xtask ci` to an id of its own for the test run. Test binaries inherit it, and
/// [`crate::Process::spawn`] passes it on even to a child started with a cleared environment, so
/// every process the tests start carries it in /proc/PID/environ: after the tests, ci finds the
/// ones that outlived them, and only its own (other runs on the machine have another id or none).
pub const RUN_ID_ENV: &str = "AUDCTL_TEST_RUN";

/// Where instances keep their files: `$AUDCTL_TESTBED_TMP`, else /dev/shm when it is a writable
/// tmpfs, else the system temp dir. On this project's VMs creating and deleting the ~1000 files of a
/// PostgreSQL cluster on ext4 costs 2-3 s each way, on tmpfs 0.2 s. fsync stays on and a killed
/// process loses nothing either way (its writes are in the page cache); only a whole-machine crash
/// differs, and no test simulates one.
pub fn scratch_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDCTL_TESTBED_TMP") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable = nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK).is_ok();
    if shm.is_dir() && writable { shm.to_owned() } else { std::env::temp_dir() }
}

/// A fresh `<scratch>/<prefix>XXXXXX` owned by this process, after sweeping stale ones. For data
/// that is small and hot (a PostgreSQL cluster, Redis): the scratch dir is usually tmpfs.
pub fn instance_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    create_in(prefix, &scratch_dir())
}

/// Like [`instance_dir`], in the system temp dir (on disk): for large trees (a search distribution,
/// Kafka logs, etcd) that would cost memory on tmpfs.
pub fn instance_dir_on_disk(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    create_in(prefix, &std::env::temp_dir())
}

fn create_in(prefix: &str, base: &Path) -> anyhow::Result<tempfile::TempDir> {
    sweep(prefix);
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .with_context(|| format!("creating a {prefix}* directory in {}", base.display()))?;
    let owner = dir.path().join(OWNER_FILE);
    std::fs::write(&owner, std::process::id().to_string()).with_context(|| format!("writing {}", owner.display()))?;
    Ok(dir)
}

/// Kill the processes working inside `<prefix>*` directories (in the scratch and the temp dir)
/// whose creator is dead, then delete those directories. Best effort: a failure here must not fail
/// the test that is starting.
fn sweep(prefix: &str) {
    let mut bases = vec![scratch_dir(), std::env::temp_dir()];
    bases.dedup();
    for base in bases {
        sweep_in(&base, prefix);
    }
}

fn sweep_in(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix));
        // No owner file: an older layout or a directory being created right now; leave it.
        let owner = std::fs::read_to_string(path.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let Some(owner) = owner.filter(|_| ours) else { continue };
        if alive(owner) {
            continue;
        }
        // A server's working directory is inside its instance dir (every starter sets it there;
        // PostgreSQL then chdirs to its data dir, Redis to its `dir`), which identifies it even if
        // pids were reused since.
        for pid in processes_under(&path) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// Live processes whose environment carries [`RUN_ID_ENV`]`=run_id`, with their command lines:
/// what a test run started and left running. Zombies (no environment left) do not count.
pub fn processes_of_run(run_id: &str) -> Vec<(i32, String)> {
    let marker = format!("{RUN_ID_ENV}={run_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if pid == std::process::id() as i32 || !alive(pid) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|var| var == marker.as_bytes()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_owned();
            found.push((pid, cmdline));
        }
    }
    found
}

/// The instance directory `pid` works in and the pid its owner file names: how the sweep of a later
/// run finds the process once that owner is gone (tests check every component's processes have one).
pub fn instance_of(pid: u32) -> Option<(PathBuf, i32)> {
    working_paths(pid as i32).into_iter().find_map(|path| {
        path.ancestors().find_map(|dir| {
            let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?.trim().parse().ok()?;
            Some((dir.to_owned(), owner))
        })
    })
}

/// Where a process works: its current directory, then the absolute paths on its command line (a
/// JVM may run from `/` and name its config and data directories only there: Elasticsearch does).
fn working_paths(pid: i32) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_link(format!("/proc/{pid}/cwd")).into_iter().collect();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    for arg in cmdline.split(|b| *b == 0).filter_map(|a| std::str::from_utf8(a).ok()) {
        // `--data-dir=/x`, `-Des.path.conf=/x`, `/x`
        let value = arg.rsplit_once('=').map_or(arg, |(_, v)| v);
        if value.starts_with('/') && value.len() > 1 {
            paths.push(PathBuf::from(value));
        }
    }
    paths
}

/// Fails unless every live process in the process groups `pgids` works inside an instance
/// directory owned by this process (see [`instance_of`]).
pub fn check_swept_if_abandoned(pgids: &[u32]) -> anyhow::Result<()> {
    let members = crate::process::live_group_members(pgids);
    anyhow::ensure!(!members.is_empty(), "no live process in groups {pgids:?}");
    for pid in members {
        match instance_of(pid) {
            Some((_, owner)) if owner == std::process::id() as i32 => {}
            other => anyhow::bail!(
                "process {pid} ({:?}) is not inside an instance dir owned by this process: {other:?}",
                std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
            ),
        }
    }
    Ok(())
}

/// Processes working in `dir` or below it: current directory, or a path on the command line.
fn processes_under(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| working_paths(*pid).iter().any(|p| p.starts_with(dir)))
        .collect()
}

/// Direct children of `parent`, from /proc (PostgreSQL's backends leave the postmaster's group).
pub fn children(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat_field(*pid, 1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// Exists and is not a zombie (a zombie holds no resources; its reaper may be slow).
pub fn alive(pid: i32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z" && state != "X")
}

/// Field `n` after the command name in /proc/PID/stat (0 = state, 1 = parent pid).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// `2 * bytes` hex characters from the kernel's CSPRNG (passwords, ids): URL-safe, no escaping.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn stale_directories_and_their_processes_are_swept() -> anyhow::Result<()> {
        let prefix = format!("audctl-sweeptest-{}-", random_hex(4)?);
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(scratch_dir())?.keep();
        // A "server" left behind: working in the directory, its creator long gone.
        let mut orphan = Command::new("sleep").arg("300").current_dir(&dir).spawn()?;
        let mut dead_creator = Command::new("true").spawn()?;
        dead_creator.wait()?;
        std::fs::write(dir.join(OWNER_FILE), dead_creator.id().to_string())?;

        let fresh = instance_dir(&prefix)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while orphan.try_wait()?.is_none() {
            assert!(Instant::now() < deadline, "orphan in {} not killed", dir.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.exists(), "{} not removed", dir.display());
        assert!(fresh.path().join(OWNER_FILE).exists());
        // Our own directory is not swept by the next start.
        let again = instance_dir(&prefix)?;
        assert!(fresh.path().exists());
        drop((fresh, again));
        Ok(())
    }

    #[test]
    fn processes_of_a_run_are_found_by_its_id_only() -> anyhow::Result<()> {
        let (ours, theirs) = (random_hex(8)?, random_hex(8)?);
        let mut mine = Command::new("sleep").arg("300").env(RUN_ID_ENV, &ours).spawn()?;
        let mut other = Command::new("sleep").arg("300").env(RUN_ID_ENV, &theirs).spawn()?;
        let found = processes_of_run(&ours);
        let _ = (mine.kill(), other.kill());
        let _ = (mine.wait(), other.wait());
        assert_eq!(found, [(mine.id() as i32, "sleep 300".to_owned())]);
        assert!(processes_of_run(&ours).is_empty(), "a reaped process still counted");
        Ok(())
    }
}
