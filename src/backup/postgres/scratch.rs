//! A scratch PostgreSQL instance for point-in-time recovery (and `backup verify`).

use super::*;

/// A private PostgreSQL on a unix socket only, in a temporary directory; stopped and removed on drop.
pub(super) struct Scratch {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
}

/// PostgreSQL refuses to run as root: as root, the scratch instance runs as `AUDCTL_SCRATCH_USER`
/// (default `postgres`, the user Debian's packages create).
fn scratch_owner() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let user = std::env::var("AUDCTL_SCRATCH_USER").unwrap_or_else(|_| "postgres".into());
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == user {
            let uid = f[2].parse().with_context(|| format!("/etc/passwd: uid of {user}"))?;
            let gid = f[3].parse().with_context(|| format!("/etc/passwd: gid of {user}"))?;
            return Ok(Some((uid, gid)));
        }
    }
    bail!(
        "running as root, the recovery instance needs an unprivileged user: user {user:?} does not exist (set AUDCTL_SCRATCH_USER)"
    )
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Scratch {
    pub(super) fn create(root: &Path, bin: PathBuf) -> anyhow::Result<Scratch> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("audctl-restore-")
            .tempdir_in(root)
            .with_context(|| format!("creating a scratch directory in {}", root.display()))?;
        let owner = scratch_owner()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("picking a port")?;
        let port = listener.local_addr()?.port();
        Ok(Scratch { dir, bin, owner, port, child: None })
    }

    pub(super) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(super) fn sockets(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub(super) fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub(super) fn as_owner(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Base backup, WAL (verified copies from the repository, then the live archive for newer
    /// segments), and the configuration of a recovery that ends by promotion.
    pub(super) fn lay_out(
        &self,
        base: &[PathBuf],
        wal: &[PathBuf],
        archive: Option<&Path>,
        segment_size: u64,
    ) -> anyhow::Result<()> {
        let data = self.data();
        let waldir = self.dir.path().join("wal");
        for d in [&data, &self.sockets(), &waldir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let progress = Bytes::new(
            "unpacking the base backup",
            Some(base.iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum()),
        );
        for tar in base {
            let name = tar.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let into = match name {
                "base.tar" => data.clone(),
                "pg_wal.tar" => data.join("pg_wal"),
                "backup_manifest" => continue,
                other => data.join("pg_tblspc").join(other.trim_end_matches(".tar")),
            };
            std::fs::create_dir_all(&into)?;
            run(Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(&into), &format!("tar -xf {}", tar.display()))
                .map_err(|e| anyhow!("unpacking the base backup failed (is the scratch disk full?): {e:#}"))?;
            progress.add(tar.metadata().map(|m| m.len()).unwrap_or(0));
        }
        progress.finish();
        for f in ["postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal"] {
            let _ = std::fs::remove_file(data.join(f));
        }
        let mut have = BTreeSet::new();
        for f in wal {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            std::fs::copy(f, waldir.join(&name)).with_context(|| format!("copying {}", f.display()))?;
            have.insert(name);
        }
        if let Some(dir) = archive {
            for (name, path) in archived(dir, segment_size)? {
                if have.insert(name.clone()) {
                    std::fs::copy(&path, waldir.join(&name)).with_context(|| format!("copying {}", path.display()))?;
                }
            }
        }
        std::fs::write(data.join("recovery.signal"), b"")?;
        if !data.join("postgresql.conf").exists() {
            std::fs::write(data.join("postgresql.conf"), b"")?;
        }
        std::fs::write(self.dir.path().join("pg_hba.conf"), b"local all all trust\n")?;
        std::fs::write(self.dir.path().join("pg_ident.conf"), b"")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.owner {
            run(
                Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(self.dir.path()),
                "chown of the scratch directory",
            )?;
        }
        Ok(())
    }

    pub(super) async fn start(&mut self, target: Option<&RecoveryTarget>, user: &str) -> anyhow::Result<()> {
        let waldir = self.dir.path().join("wal");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D").arg(self.data());
        let mut settings = vec![
            ("port", self.port.to_string()),
            ("listen_addresses", String::new()),
            ("unix_socket_directories", self.sockets().display().to_string()),
            ("hba_file", self.dir.path().join("pg_hba.conf").display().to_string()),
            ("ident_file", self.dir.path().join("pg_ident.conf").display().to_string()),
            ("archive_mode", "off".into()),
            ("hot_standby", "off".into()),
            ("primary_conninfo", String::new()),
            ("primary_slot_name", String::new()),
            ("ssl", "off".into()),
            ("shared_preload_libraries", String::new()),
            ("shared_buffers", "128MB".into()),
            ("fsync", "off".into()),
            ("logging_collector", "off".into()),
            ("cluster_name", "audctl-restore".into()),
        ];
        if let Some(t) = target {
            let (key, value) = t.settings();
            settings.push(("restore_command", format!("cp \"{}/%f\" \"%p\"", waldir.display())));
            settings.push((key, value));
            settings.push(("recovery_target_action", "promote".into()));
        }
        for (k, v) in settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        let log = std::fs::File::create(self.log())?;
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).current_dir(self.dir.path());
        self.as_owner(&mut cmd);
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().with_context(|| format!("starting {}", self.bin.join("postgres").display()))?);
        let spinner = output::spinner(match target {
            Some(t) => format!("recovering to {}", t.describe()),
            None => "starting a scratch PostgreSQL".to_owned(),
        });
        let deadline = Instant::now() + Duration::from_secs(12 * 3600);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                spinner.finish_and_clear();
                if let (Some(t), Some(end)) = (target, self.wal_ended_before_target()) {
                    // Asked for a point past the WAL this backup (and archive) holds: an input
                    // error, said plainly. The scratch instance is all that ran; the copy into
                    // the target comes only after a successful recovery.
                    return Err(usage(format!(
                        "recovery to {} is not possible: the WAL of this backup and archive ends before it ({end}). \
                         Nothing was copied: the target database is untouched. Choose an earlier point, or name the \
                         archive that holds later WAL with --wal-archive",
                        t.describe()
                    )));
                }
                bail!("recovery failed: PostgreSQL exited ({status}); its log ends with:\n{}", self.log_tail(15));
            }
            if let Ok(mut c) = self.connect(user, "postgres").await {
                let recovering: bool =
                    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut c).await.unwrap_or(true);
                if !recovering {
                    spinner.finish_and_clear();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("recovery did not finish in 12 h; log:\n{}", self.log_tail(15));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A new empty cluster whose superuser is `user` (for restoring a dump).
    pub(super) fn init(&self, user: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.sockets())?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.dir.path(), Some(uid), Some(gid))?;
            std::os::unix::fs::chown(self.sockets(), Some(uid), Some(gid))?;
        }
        std::fs::write(self.dir.path().join("pg_hba.conf"), b"local all all trust\n")?;
        std::fs::write(self.dir.path().join("pg_ident.conf"), b"")?;
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(self.data())
            .args(["-U", user, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"])
            .current_dir(self.dir.path());
        self.as_owner(&mut cmd);
        run(&mut cmd, "initdb of the scratch cluster")
    }

    /// pg_restore `file` into a new database `db` of this instance.
    pub(super) fn restore_dump(&self, user: &str, db: &str, file: &Path) -> anyhow::Result<()> {
        let socket_args = |cmd: &mut Command| {
            cmd.arg("-h").arg(self.sockets()).args(["-p", &self.port.to_string(), "-U", user]).env_remove("PGPASSWORD");
        };
        let mut create = Command::new(self.bin.join("createdb"));
        socket_args(&mut create);
        create.arg(db);
        run(&mut create, "createdb in the scratch cluster")?;
        let mut restore = Command::new(self.bin.join("pg_restore"));
        socket_args(&mut restore);
        pg_restore_args(&mut restore, false);
        restore.args(["-d", db]).arg(file);
        run(&mut restore, "pg_restore into the scratch cluster")
    }

    pub(super) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// When recovery ran out of WAL before its target: where the WAL ended, from PostgreSQL's
    /// "redo done at LSN" and "last completed transaction was at log time T" lines.
    fn wal_ended_before_target(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.log()).ok()?;
        wal_end(&text)
    }

    /// "recovery stopping before commit of transaction 745, time ..." from the log.
    pub(super) fn stop_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.log()).ok()?;
        text.lines()
            .find(|l| l.contains("recovery stopping"))
            .map(|l| l.split("LOG:").nth(1).unwrap_or(l).trim().to_owned())
    }

    pub(super) async fn connect(&self, user: &str, db: &str) -> anyhow::Result<PgConnection> {
        let opts = PgConnectOptions::new()
            .socket(self.sockets())
            .port(self.port)
            .username(user)
            .database(db)
            .application_name("audctl");
        Ok(PgConnection::connect_with(&opts).await?)
    }

    /// pg_dump of the recovered database piped into pg_restore on the target (one transaction).
    pub(super) fn copy_into(&self, target: &Endpoint, user: &str, db: &str, force: bool) -> anyhow::Result<()> {
        let progress = Bytes::new("copying the recovered database", None);
        let mut dump = Command::new(self.bin.join("pg_dump"));
        dump.args(["-Fc", "-w", "-h"])
            .arg(self.sockets())
            .args(["-p", &self.port.to_string(), "-U", user, "-d", db])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut dumper = dump.spawn().context("starting pg_dump")?;
        let dump_errs = collect_stderr(&mut dumper);
        let mut restore = target.tool(&self.bin, "pg_restore");
        pg_restore_args(&mut restore, force);
        restore.args(["-d", &target.conninfo()]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut restorer = restore.spawn().context("starting pg_restore")?;
        let restore_errs = collect_stderr(&mut restorer);
        let mut from = dumper.stdout.take().context("pg_dump stdout")?;
        let mut to = restorer.stdin.take().context("pg_restore stdin")?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                break;
            }
            progress.add(n as u64);
        }
        drop(to);
        let dumped = finish_tool(dumper, "pg_dump of the recovered database", dump_errs);
        finish_tool(restorer, "pg_restore", restore_errs)
            .context("nothing was restored (one transaction, rolled back)")?;
        dumped?;
        progress.finish();
        Ok(())
    }

    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut cmd = Command::new(self.bin.join("pg_ctl"));
            cmd.arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.as_owner(&mut cmd);
            if !cmd.status().is_ok_and(|s| s.success()) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// See [`Scratch::wal_ended_before_target`]: None unless the log says the target was not reached.
fn wal_end(log: &str) -> Option<String> {
    if !log.contains("recovery ended before configured recovery target was reached") {
        return None;
    }
    let after = |marker: &str| log.lines().find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim().to_owned()));
    let redo = after("redo done at ").map(|r| r.split_whitespace().next().unwrap_or_default().to_owned());
    let last = after("last completed transaction was at log time ");
    Some(match (redo, last) {
        (Some(lsn), Some(t)) => format!("last transaction replayed at {t}, WAL end {lsn}"),
        (Some(lsn), None) => format!("WAL end {lsn}"),
        (None, Some(t)) => format!("last transaction replayed at {t}"),
        (None, None) => "no WAL after the base backup".to_owned(),
    })
}

#[cfg(test)]
mod wal_end_tests {
    use super::wal_end;

    #[test]
    fn the_end_of_wal_from_postgresqls_log() {
        let log = "2026-12-05 00:01:00.1 UTC [9] LOG:  redo done at 0/5000148 system usage: CPU: user: 0.00 s\n\
                   2026-12-05 00:01:00.1 UTC [9] LOG:  last completed transaction was at log time 2026-12-04 23:59:58.123456+00\n\
                   2026-12-05 00:01:00.1 UTC [9] FATAL:  recovery ended before configured recovery target was reached\n";
        assert_eq!(
            wal_end(log).as_deref(),
            Some("last transaction replayed at 2026-12-04 23:59:58.123456+00, WAL end 0/5000148")
        );
        assert_eq!(wal_end("FATAL:  could not open file"), None);
    }
}
