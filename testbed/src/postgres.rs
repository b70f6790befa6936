//! PostgreSQL from Debian's packages: a primary, optionally a streaming replica and WAL archiving.
//!
//! Everything lives in one temp dir owned by [`crate::RUN_AS_USER`] (PostgreSQL refuses to run as
//! root): the data directories, the unix sockets, the WAL archive and the logs. Servers listen on
//! 127.0.0.1 with random ports and password (SCRAM) authentication, as in production; the unix
//! socket (in the private temp dir) trusts local connections so the testbed itself needs no password.
//! `fsync` and `synchronous_commit` stay on (written explicitly): the audit server's durability
//! tests kill the primary and count what survived. The temp dir is on tmpfs by default (fast to
//! create, fsync costs nothing); [`PgOptions::disk`] puts it on a disk, for measurements.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audctl_targets::{PostgresTarget, Secret};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User, chown};

use crate::process::{Process, free_port, wait_until};
use crate::scratch::{self, alive, children, random_hex, scratch_dir};

/// The superuser the testbed creates; tests connect with it (or create their own roles).
pub const SUPERUSER: &str = "audctl";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start besides the primary. The default (primary only) is the fastest.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgOptions {
    /// A streaming replica made with `pg_basebackup -R` and a replication slot.
    pub replica: bool,
    /// `archive_mode = on`, segments copied into [`Postgres::wal_archive_dir`].
    pub archive: bool,
    /// Data directories on a disk (the system temp dir) instead of the scratch dir (usually
    /// tmpfs), so every commit pays a real fsync: benchmarks measure what a deployment would.
    pub disk: bool,
    /// The production guide's `postgresql.conf` tuning ([`PRODUCTION_TUNING`]) instead of the
    /// testbed's small footprint: benchmarks measure the configuration that is deployed.
    pub production_tuning: bool,
}

/// The production guide's "Performance Tuning / PostgreSQL" settings, verbatim (the seed's
/// production-guide.md); durability settings stay on as everywhere else.
pub const PRODUCTION_TUNING: &str = "max_connections = 200\nshared_buffers = 4GB\neffective_cache_size = 12GB\n\
    maintenance_work_mem = 1GB\ncheckpoint_completion_target = 0.9\nwal_buffers = 64MB\n\
    default_statistics_target = 100\nrandom_page_cost = 1.1\neffective_io_concurrency = 200\nwork_mem = 20MB\n\
    min_wal_size = 1GB\nmax_wal_size = 4GB\nmax_worker_processes = 8\nmax_parallel_workers_per_gather = 4\n\
    max_parallel_workers = 8\nmax_parallel_maintenance_workers = 4\n";

/// A running PostgreSQL primary (and optional replica). Stopped, and its files removed, on drop.
pub struct Postgres {
    // Field order matters: processes are stopped (in Drop) before the temp dir is deleted.
    replica: Option<Instance>,
    primary: Instance,
    bin: PathBuf,
    password: String,
    sockets: PathBuf,
    archive: Option<PathBuf>,
    owner: (Uid, Gid),
    _dir: tempfile::TempDir,
}

/// One postmaster: its data directory, port and process.
struct Instance {
    name: &'static str,
    data: PathBuf,
    port: u16,
    log: PathBuf,
    process: Option<Process>,
}

/// Start a primary only.
pub async fn postgres() -> anyhow::Result<Postgres> {
    postgres_with(PgOptions::default()).await
}

/// Start a primary and, as asked, a streaming replica and WAL archiving.
pub async fn postgres_with(opts: PgOptions) -> anyhow::Result<Postgres> {
    let bin = bin_dir()?;
    let owner = run_as_user()?;
    let dir =
        if opts.disk { scratch::instance_dir_on_disk("audctl-pg-")? } else { scratch::instance_dir("audctl-pg-")? };
    let base = dir.path().to_owned();
    let sockets = base.join("sockets");
    let archive = opts.archive.then(|| base.join("wal-archive"));
    for d in [Some(&base), Some(&sockets), archive.as_ref()].into_iter().flatten() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        chown(d, Some(owner.0), Some(owner.1))
            .with_context(|| format!("chown {} to {}", d.display(), crate::RUN_AS_USER))?;
    }
    let password = random_hex(16)?;
    let data = base.join("primary");
    let template = template(&bin, owner).await?;
    copy_dir(&template, &data)?;
    write_config(&data, archive.as_deref(), opts.production_tuning)?;

    let mut pg = Postgres {
        replica: None,
        primary: Instance { name: "postgres-primary", data, port: 0, log: base.join("primary.log"), process: None },
        bin,
        password,
        sockets,
        archive,
        owner,
        _dir: dir,
    };
    pg.start_primary().await?;
    // The template has no password: nobody can log in over TCP until this runs.
    let escaped = pg.password.replace('\'', "''");
    pg.sql(&format!("ALTER ROLE {SUPERUSER} PASSWORD '{escaped}'")).await.context("setting the superuser password")?;
    if opts.replica {
        pg.start_replica().await?;
    }
    Ok(pg)
}

impl Postgres {
    /// `postgres://audctl:PASSWORD@127.0.0.1:PORT/postgres` on the primary.
    pub fn url(&self) -> String {
        self.url_for(self.primary.port, "postgres")
    }

    /// The replica's URL (read-only, hot standby), when one was asked for.
    pub fn replica_url(&self) -> Option<String> {
        self.replica.as_ref().map(|r| self.url_for(r.port, "postgres"))
    }

    /// The settings audctl reads, as an operator would write them: URLs without the password, the
    /// password beside them.
    pub fn target(&self) -> PostgresTarget {
        PostgresTarget {
            url: format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.primary.port),
            password: Some(Secret::Inline(self.password.clone())),
            replicas: self
                .replica
                .iter()
                .map(|r| format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", r.port))
                .collect(),
            wal_archive: self.archive.clone(),
        }
    }

    pub fn wal_archive_dir(&self) -> Option<&Path> {
        self.archive.as_deref()
    }

    pub fn port(&self) -> u16 {
        self.primary.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The primary's data directory (for tests that inspect or corrupt files).
    pub fn data_dir(&self) -> &Path {
        &self.primary.data
    }

    /// Create a database owned by the superuser and return its URL: one per test keeps tests apart
    /// on a shared server. `name` must be a plain identifier (`[a-z0-9_]`, not starting with a digit).
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let plain = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !plain {
            bail!("database name {name:?}: expected 1-63 characters of [a-z0-9_], not starting with a digit");
        }
        self.psql(self.primary.port, &format!("CREATE DATABASE {name}")).await?;
        Ok(self.url_for(self.primary.port, name))
    }

    /// A PostgreSQL tool of the installed major version (`pg_dump`, `pgbench`, `psql`...).
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    /// Run one SQL statement on the primary through its unix socket; returns psql's unaligned output.
    pub async fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql(self.primary.port, sql).await
    }

    /// SIGKILL the postmaster and every backend at once, as a machine crash would (no shutdown
    /// checkpoint). Backends are not in the postmaster's process group (each calls setsid), so
    /// they are found by parent pid, with the postmaster stopped first so it cannot fork more.
    pub fn kill_primary_hard(&mut self) {
        if let Some(mut p) = self.primary.process.take() {
            let postmaster = Pid::from_raw(p.pid() as i32);
            let _ = kill(postmaster, Signal::SIGSTOP);
            let backends = children(p.pid());
            for &b in &backends {
                let _ = kill(Pid::from_raw(b), Signal::SIGKILL);
            }
            p.kill_hard();
            // Restarting while an old backend still holds the shared memory would be refused.
            let deadline = Instant::now() + Duration::from_secs(5);
            while backends.iter().any(|&b| alive(b)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Pids of the primary's postmaster and its current children (for tests and measurements).
    pub fn primary_pids(&self) -> Vec<i32> {
        self.primary.process.as_ref().map(|p| pids_with_children(p.pid())).unwrap_or_default()
    }

    /// Pids of the replica's postmaster and its current children.
    pub fn replica_pids(&self) -> Vec<i32> {
        let process = self.replica.as_ref().and_then(|r| r.process.as_ref());
        process.map(|p| pids_with_children(p.pid())).unwrap_or_default()
    }

    /// Start the primary again on the same port and data (crash recovery replays the WAL).
    pub async fn restart_primary(&mut self) -> anyhow::Result<()> {
        if let Some(p) = self.primary.process.take() {
            shutdown(p, Signal::SIGINT);
        }
        self.start_primary().await
    }

    fn url_for(&self, port: u16, db: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{port}/{db}", self.password)
    }

    async fn start_primary(&mut self) -> anyhow::Result<()> {
        let keep_port = self.primary.port != 0;
        if keep_port {
            // A restart keeps its port (clients and the replica know it): if something took it
            // meanwhile, wait for it to be free again.
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                match start(&self.bin, self.owner, &self.sockets, &mut self.primary).await {
                    Err(e) if Instant::now() < deadline && crate::process::is_port_clash(&e) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => return other,
                }
            }
        }
        start_on_free_port(&self.bin, self.owner, &self.sockets, &mut self.primary).await
    }

    async fn start_replica(&mut self) -> anyhow::Result<()> {
        let base = self.primary.data.parent().context("primary data dir has a parent")?.to_owned();
        let data = base.join("replica");
        let out = tokio::process::Command::new(self.bin.join("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-U", SUPERUSER, "-X", "stream", "-R", "-C", "-S", "replica1", "--no-sync"])
            // Without it the backup waits for a spread checkpoint (many seconds on an idle server).
            .args(["--checkpoint=fast"])
            .arg("-p")
            .arg(self.primary.port.to_string())
            .arg("-D")
            .arg(&data)
            .env("PGPASSWORD", &self.password)
            .uid(self.owner.0.as_raw())
            .gid(self.owner.1.as_raw())
            .current_dir(&base)
            .output()
            .await
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!("pg_basebackup from the primary failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let mut replica =
            Instance { name: "postgres-replica", data, port: 0, log: base.join("replica.log"), process: None };
        start_on_free_port(&self.bin, self.owner, &self.sockets, &mut replica).await?;
        self.replica = Some(replica);
        // Ready only once the primary sees it streaming: tests read pg_stat_replication right away.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let state = self.psql(self.primary.port, "SELECT state FROM pg_stat_replication").await?;
            if state.lines().any(|l| l == "streaming") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self.replica.as_ref().map(|r| crate::process::log_tail(&r.log, 30)).unwrap_or_default();
                bail!(
                    "replica not streaming after {START_TIMEOUT:?} (pg_stat_replication: {state:?}); replica log:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn psql(&self, port: u16, sql: &str) -> anyhow::Result<String> {
        psql(&self.bin, &self.sockets, port, "postgres", sql).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The files are deleted next, so no shutdown checkpoint is needed: "immediate" mode.
        // The replica first, so it does not spin reconnecting to a primary that is going away.
        if let Some(p) = self.replica.as_mut().and_then(|r| r.process.take()) {
            shutdown(p, Signal::SIGQUIT);
        }
        if let Some(p) = self.primary.process.take() {
            shutdown(p, Signal::SIGQUIT);
        }
    }
}

/// Signal the postmaster (SIGINT: "fast" shutdown with a checkpoint; SIGQUIT: "immediate") and wait
/// for it; Process's own drop then sweeps the process group with SIGTERM/SIGKILL if anything is left.
fn shutdown(mut p: Process, mode: Signal) {
    let _ = kill(Pid::from_raw(p.pid() as i32), mode);
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pids_with_children(pid: u32) -> Vec<i32> {
    let mut all = vec![pid as i32];
    all.extend(children(pid));
    all
}

/// [`start`] on a port from free_port(); it can be taken before the postmaster binds it: then again
/// with another one.
async fn start_on_free_port(bin: &Path, owner: (Uid, Gid), sockets: &Path, inst: &mut Instance) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        inst.port = free_port()?;
        match start(bin, owner, sockets, inst).await {
            Err(e) if attempt < 3 && crate::process::is_port_clash(&e) => attempt += 1,
            other => return other,
        }
    }
}

/// Spawn the postmaster of `inst` directly under the run-as uid (no runuser in between, so the
/// process we hold is the postmaster and signals reach it), then wait for pg_isready.
async fn start(bin: &Path, owner: (Uid, Gid), sockets: &Path, inst: &mut Instance) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(&inst.data)
        .args(["-c", &format!("port={}", inst.port), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", sockets.display()))
        .uid(owner.0.as_raw())
        .gid(owner.1.as_raw())
        .current_dir(sockets);
    let mut process = Process::spawn(inst.name, cmd, &inst.log)?;
    let isready = bin.join("pg_isready");
    let port = inst.port.to_string();
    wait_until(&mut process, START_TIMEOUT, || {
        let mut probe = tokio::process::Command::new(&isready);
        probe.args(["-q", "-h", "127.0.0.1", "-t", "1", "-p", &port]);
        async move { Ok(probe.status().await.context("running pg_isready")?.success()) }
    })
    .await?;
    inst.process = Some(process);
    Ok(())
}

/// A pristine cluster made by initdb once per PostgreSQL build and copied for each instance
/// (initdb takes seconds, a copy a fraction of one). Kept under the cache dir; it has no password,
/// each instance sets its own.
async fn template(bin: &Path, owner: (Uid, Gid)) -> anyhow::Result<PathBuf> {
    let out = tokio::process::Command::new(bin.join("postgres")).arg("--version").output().await?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": the key changes with any rebuild.
    let version: String = String::from_utf8_lossy(&out.stdout)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    let dir = crate::cache_dir().join("postgres").join(format!("template-{}", version.trim_matches('-')));
    // Tests of one binary run in parallel: one initdb is enough.
    static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = BUILDING.lock().await;
    if dir.exists() {
        return Ok(dir);
    }
    // initdb runs as the run-as user, who cannot enter the cache under /root: build it in the
    // scratch dir, copy it next to its final place, then rename (atomic: another test binary sees
    // all or nothing).
    let work = tempfile::Builder::new().prefix("audctl-pg-initdb-").tempdir_in(scratch_dir())?;
    chown(work.path(), Some(owner.0), Some(owner.1))?;
    let data = work.path().join("data");
    initdb(bin, owner, work.path(), &data).await?;
    let parent = dir.parent().context("template dir has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let incoming = parent.join(format!(".incoming-{}", random_hex(8)?));
    copy_dir(&data, &incoming)?;
    if std::fs::rename(&incoming, &dir).is_err() {
        // Another test won the race; its template is as good as ours.
        let _ = std::fs::remove_dir_all(&incoming);
        if !dir.exists() {
            bail!("could not move the PostgreSQL template into {}", dir.display());
        }
    }
    Ok(dir)
}

/// `cp -a`: keeps the run-as user's ownership and the 0700 mode PostgreSQL insists on.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().context("running cp")?;
    if !out.status.success() {
        bail!("cp -a {} {}: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn initdb(bin: &Path, owner: (Uid, Gid), base: &Path, data: &Path) -> anyhow::Result<()> {
    // --no-sync only skips flushing initdb's own files; the running server keeps fsync on.
    let out = tokio::process::Command::new(bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
        .args(["--locale=C.UTF-8", "--no-sync", "--no-instructions"])
        .uid(owner.0.as_raw())
        .gid(owner.1.as_raw())
        .current_dir(base)
        .output()
        .await
        .context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb {} failed ({}):\n{}{}",
            data.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Settings shared by primary and replica (pg_basebackup copies this file); port and sockets are
/// given on the command line because they differ per instance.
fn write_config(data: &Path, archive: Option<&Path>, tuning: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let path = data.join("postgresql.conf");
    let mut conf =
        std::fs::OpenOptions::new().append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
    // Small memory footprint; everything durability-related keeps PostgreSQL's defaults, and the two
    // that decide whether a commit is durable are written out so no template change can turn them
    // off (the benchmark's ceiling and the crash tests depend on them). Dynamic
    // shared memory as files in the data dir (pg_dynshmem) rather than /dev/shm/PostgreSQL.*, so an
    // instance killed with its test run leaves nothing behind once its directory is swept.
    let mut text = String::from(
        "\n# audctl testbed\nshared_buffers = 32MB\nmax_connections = 100\ntimezone = 'UTC'\nlog_timezone = 'UTC'\n\
         max_wal_senders = 5\nmax_replication_slots = 5\nhot_standby = on\nwal_level = replica\n\
         dynamic_shared_memory_type = mmap\nfsync = on\nsynchronous_commit = on\n",
    );
    if tuning {
        // Later lines win in postgresql.conf: these replace the small footprint above.
        text.push_str(PRODUCTION_TUNING);
    }
    // Profiling aid (never set by the tests): more lines, e.g.
    // `shared_preload_libraries = 'pg_stat_statements'` for a benchmark run.
    if let Ok(extra) = std::env::var("AUDCTL_TESTBED_PG_CONF") {
        text.push_str(&extra.replace(';', "\n"));
        text.push('\n');
    }
    if let Some(dir) = archive {
        // Refuse to overwrite an archived segment, as the documentation's example does.
        text.push_str(&format!(
            "archive_mode = on\narchive_command = 'test ! -f \"{0}/%f\" && cp \"%p\" \"{0}/%f\"'\n",
            dir.display()
        ));
    }
    conf.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// SQL goes through stdin, never argv, so passwords in statements do not show in `ps`.
async fn psql(bin: &Path, sockets: &Path, port: u16, db: &str, sql: &str) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin.join("psql"))
        .arg("-h")
        .arg(sockets)
        .args(["-p", &port.to_string(), "-U", SUPERUSER, "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running psql")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql.as_bytes()).await.context("writing to psql")?;
        stdin.write_all(b";\n").await.context("writing to psql")?;
    }
    let out = child.wait_with_output().await.context("waiting for psql")?;
    if !out.status.success() {
        // Only the statement's first word: it may carry a password.
        let verb = sql.split_whitespace().next().unwrap_or_default();
        bail!("psql on port {port} failed ({verb} ...): {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// The PostgreSQL major each supported Debian release ships (one each): the testbed runs exactly
/// that one, whatever else is installed, and `cargo xtask deps install` installs `postgresql-<major>`.
pub const MAJORS: &[(&str, u32)] = &[("bookworm", 15), ("trixie", 17)];

/// Overrides [`MAJORS`] (another distribution, or PGDG packages): a major such as `16`.
pub const MAJOR_ENV: &str = "AUDCTL_PG_MAJOR";

/// The pinned major: `$AUDCTL_PG_MAJOR`, else the one of this Debian release ([`MAJORS`]).
pub fn major() -> anyhow::Result<u32> {
    if let Ok(v) = std::env::var(MAJOR_ENV) {
        return v.trim().parse().with_context(|| format!("{MAJOR_ENV}={v:?}: expected a major version such as 15"));
    }
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).unwrap_or("").trim_matches('"');
    match MAJORS.iter().find(|(name, _)| *name == codename) {
        Some((_, major)) => Ok(*major),
        None => bail!(
            "no pinned PostgreSQL major for this system (VERSION_CODENAME={codename:?} in /etc/os-release; known: \
             {MAJORS:?}): set {MAJOR_ENV}"
        ),
    }
}

/// `/usr/lib/postgresql/<pinned major>/bin` (see [`major`]).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let major = major()?;
    let bin = Path::new("/usr/lib/postgresql").join(major.to_string()).join("bin");
    if !bin.join("initdb").exists() {
        bail!("PostgreSQL {major} server binaries not found in {}: run `cargo xtask deps install`", bin.display());
    }
    Ok(bin)
}

/// Root (CI, this VM) runs PostgreSQL as [`crate::RUN_AS_USER`]; anyone else runs it as themselves
/// (switching to one's own uid is allowed, so the same code path serves both).
fn run_as_user() -> anyhow::Result<(Uid, Gid)> {
    if !Uid::effective().is_root() {
        return Ok((Uid::effective(), Gid::effective()));
    }
    match User::from_name(crate::RUN_AS_USER) {
        Ok(Some(u)) => Ok((u.uid, u.gid)),
        _ => bail!("system user {} is missing: run `cargo xtask deps install`", crate::RUN_AS_USER),
    }
}
