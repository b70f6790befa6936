//! `audctl restore postgres` and `backup verify` of a PostgreSQL backup: pg_restore in one
//! transaction, or point-in-time recovery in a scratch instance, then the chain checks.

use super::*;

/// Where point-in-time recovery stops.
#[derive(Debug, Clone)]
pub enum RecoveryTarget {
    Time(DateTime<Utc>),
    Lsn(String),
    Xid(u64),
    Name(String),
    /// The end of the base backup (the earliest consistent point).
    Immediate,
}

impl RecoveryTarget {
    fn from_args(a: &PgRestoreArgs) -> anyhow::Result<Option<RecoveryTarget>> {
        if let Some(t) = &a.to_time {
            let ts = DateTime::parse_from_rfc3339(t).map_err(|e| {
                usage(format!("--to-time {t:?}: {e}; expected RFC 3339 such as 2026-12-01T06:30:00.123456Z"))
            })?;
            return Ok(Some(RecoveryTarget::Time(ts.with_timezone(&Utc))));
        }
        if let Some(l) = &a.to_lsn {
            if parse_lsn(l).is_none() {
                return Err(usage(format!("--to-lsn {l:?}: expected a WAL location such as 0/3000148")));
            }
            return Ok(Some(RecoveryTarget::Lsn(l.trim().to_owned())));
        }
        if let Some(x) = &a.to_xid {
            let xid = x
                .trim()
                .parse::<u64>()
                .map_err(|_| usage(format!("--to-xid {x:?}: expected a transaction id (a number)")))?;
            return Ok(Some(RecoveryTarget::Xid(xid)));
        }
        if let Some(n) = &a.to_name {
            if n.is_empty() || n.contains('\'') {
                return Err(usage("--to-name: expected a restore point name without quotes"));
            }
            return Ok(Some(RecoveryTarget::Name(n.clone())));
        }
        Ok(None)
    }

    pub(super) fn describe(&self) -> String {
        match self {
            RecoveryTarget::Time(t) => format!("time {}", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            RecoveryTarget::Lsn(l) => format!("LSN {l}"),
            RecoveryTarget::Xid(x) => format!("transaction {x}"),
            RecoveryTarget::Name(n) => format!("restore point {n:?}"),
            RecoveryTarget::Immediate => "the end of the base backup".to_owned(),
        }
    }

    /// Server settings (`-c name=value`).
    pub(super) fn settings(&self) -> (&'static str, String) {
        match self {
            RecoveryTarget::Time(t) => ("recovery_target_time", t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()),
            RecoveryTarget::Lsn(l) => ("recovery_target_lsn", l.clone()),
            RecoveryTarget::Xid(x) => ("recovery_target_xid", x.to_string()),
            RecoveryTarget::Name(n) => ("recovery_target_name", n.clone()),
            RecoveryTarget::Immediate => ("recovery_target", "immediate".to_owned()),
        }
    }

    /// Can recovery from `base` reach this target? (Unknown for xids and names: PostgreSQL says.)
    fn after_base(&self, base: &BasePoint) -> bool {
        match self {
            RecoveryTarget::Time(t) => *t >= base.finished,
            RecoveryTarget::Lsn(l) => parse_lsn(l) >= parse_lsn(&base.end_lsn),
            _ => true,
        }
    }
}

pub async fn restore(ctx: &Ctx<'_>, args: &PgRestoreArgs) -> anyhow::Result<Evidence> {
    let t0 = Instant::now();
    let started = Utc::now();
    let pitr = RecoveryTarget::from_args(args)?;
    let raw = args.common.target.as_deref().ok_or_else(|| {
        usage("--target URL is required: the database to restore into (postgres://user@host:port/db), never implied")
    })?;
    let target = Endpoint::parse(raw, std::env::var("PGPASSWORD").ok(), "--target")?;
    let all = ctx.repo.list(Some(Component::Postgres))?;
    let stored = pick_backup(ctx, &args.common.id, pitr.as_ref(), &all)?;
    let m = &stored.manifest;
    let c = consistency(m)?;

    // What the restore reads, checked before anything is touched.
    let wal_archive =
        args.wal_archive.clone().or_else(|| ctx.targets().and_then(|t| t.postgres.as_ref()?.wal_archive.clone()));
    let mut wal_sources: Vec<(Stored, FileEntry)> = Vec::new();
    match (&pitr, &c.dump, &c.base) {
        (None, None, _) => {
            return Err(usage(format!(
                "backup {} has no logical dump (taken with --method base): restore it to a point in time with --to-time/--to-lsn/--to-xid/--to-name",
                m.id
            )));
        }
        (Some(_), _, None) => {
            return Err(usage(format!(
                "backup {} has no base backup (taken with --method dump): point-in-time recovery needs one",
                m.id
            )));
        }
        (Some(t), _, Some(base)) if !t.after_base(base) => {
            return Err(usage(format!(
                "backup {} ends at {} (LSN {}), after the recovery target {}: choose an earlier backup (`audctl backup list`)",
                m.id,
                base.finished.to_rfc3339(),
                base.end_lsn,
                t.describe()
            )));
        }
        (Some(_), _, Some(_)) => {
            // WAL kept by this backup and every later one of the same server (each segment is stored once).
            for later in all.iter().filter(|b| b.manifest.finished >= m.finished && b.manifest.source == m.source) {
                for f in later.manifest.files.iter().filter(|f| f.path.starts_with("wal/")) {
                    wal_sources.push((later.clone(), f.clone()));
                }
            }
        }
        (None, Some(_), _) => {}
    }
    let uses = |f: &FileEntry| {
        if pitr.is_some() { f.path.starts_with("base/") } else { c.dump.as_ref().is_some_and(|d| d.file == f.path) }
    };
    let total: u64 = m.files.iter().filter(|f| uses(f)).map(|f| f.size).sum::<u64>()
        + wal_sources.iter().map(|(_, f)| f.size).sum::<u64>();
    let progress = Bytes::new("verifying checksums", Some(total));
    let verified = tokio::task::block_in_place(|| {
        let mut checked = repo::verify_files(&stored, uses, &progress)?;
        for (b, f) in &wal_sources {
            let name = f.path.clone();
            checked += repo::verify_files(b, |e| e.path == name, &progress)?;
        }
        anyhow::Ok(checked)
    });
    progress.finish();
    let checked = match verified {
        Ok(n) => n,
        // A damaged file is a failed verification (exit 1) with its report, not a bare error:
        // the target was not touched.
        Err(e) => {
            let report = checksum_failure(m, "target not touched", &e);
            output::emit(ctx.global.output, &report)?;
            return Ok(report.evidence(started));
        }
    };

    // The target: reachable, a version that can take the dump, empty unless --force.
    let mut conn = target.connect().await?;
    let info = server_info(&mut conn).await?;
    // Wrong targets are refusals (exit 2, nothing touched), as the runbook says.
    if info.in_recovery {
        return Err(usage(format!("target {} is a read-only standby: restore into a primary", target.display())));
    }
    if info.major < c.server_major {
        return Err(usage(format!(
            "target {} runs PostgreSQL {}, older than the backup's {}: restore into PostgreSQL {} or newer",
            target.display(),
            info.version,
            c.server_major,
            c.server_major
        )));
    }
    let existing = table_counts(&mut conn).await?;
    if !existing.is_empty() && !args.common.force {
        return Err(usage(format!(
            "target {} is not empty ({} tables, e.g. {}): refusing to restore over it; pass --force to drop and \
             recreate the backup's objects there",
            target.display(),
            existing.len(),
            existing.keys().next().cloned().unwrap_or_default()
        )));
    }
    let bin = bin_dir(c.server_major.max(info.major))?;

    // The plan.
    eprintln!("restore plan:");
    eprintln!(
        "  backup   {} ({} {}, taken {} from {})",
        m.id,
        crate::backup::human_bytes(m.size),
        m.server_version,
        m.finished.to_rfc3339(),
        m.source
    );
    eprintln!("  checked  {checked} files against the manifest's sha256: all intact");
    match &pitr {
        None => eprintln!(
            "  method   pg_restore of {} in one transaction (all or nothing){}",
            c.dump.as_ref().map(|d| d.file.as_str()).unwrap_or(""),
            if args.common.force { ", dropping the backup's objects first (--force)" } else { "" }
        ),
        Some(t) => eprintln!(
            "  method   point-in-time recovery to {} in a scratch PostgreSQL {} (base {} + {} WAL files{}), then copied in one transaction",
            t.describe(),
            c.server_major,
            c.base.as_ref().map(|b| b.end_lsn.as_str()).unwrap_or(""),
            wal_sources.len(),
            wal_archive.as_ref().map(|d| format!(" + archive {}", d.display())).unwrap_or_default()
        ),
    }
    eprintln!("  target   {} (PostgreSQL {}, {} tables)", target.display(), info.version, existing.len());
    eprintln!(
        "  verify   row counts and every tenant's hash chain; duration against the RTO (< 1 h region, < 4 h corruption)"
    );
    crate::backup::confirm(args.common.yes, "Restore?")?;

    let mut report = RestoreReport {
        backup: m.id.clone(),
        component: Component::Postgres,
        target: target.display(),
        point_in_time: pitr.as_ref().map(RecoveryTarget::describe),
        duration_seconds: 0.0,
        checks: Vec::new(),
    };
    let (expected_tables, expected_heads) = match &pitr {
        None => {
            let d = c.dump.as_ref().context("dump")?;
            tokio::task::block_in_place(|| {
                pg_restore_file(&target, &bin, &stored.dir.join(&d.file), args.common.force)
            })?;
            (d.tables.clone(), Some(d.tenants.clone()))
        }
        Some(t) => {
            let scratch_root = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
            let base_files: Vec<PathBuf> =
                m.files.iter().filter(|f| f.path.starts_with("base/")).map(|f| stored.dir.join(&f.path)).collect();
            let wal_files: Vec<PathBuf> = wal_sources.iter().map(|(b, f)| b.dir.join(&f.path)).collect();
            let mut scratch = Scratch::create(&scratch_root, bin.clone())?;
            scratch.lay_out(&base_files, &wal_files, wal_archive.as_deref(), c.wal_segment_size)?;
            scratch.start(Some(t), &c.user).await?;
            let mut sc = scratch.connect(&c.user, &c.database).await?;
            let counts = table_counts(&mut sc).await?;
            drop(sc);
            report.checks.push(Check::new(
                "recovery target",
                t.describe(),
                scratch.stop_line().unwrap_or_else(|| "reached".into()),
                true,
            ));
            tokio::task::block_in_place(|| scratch.copy_into(&target, &c.user, &c.database, args.common.force))?;
            scratch.stop();
            (counts, None)
        }
    };

    // Verify the target.
    let actual = table_counts(&mut conn).await?;
    for (table, n) in &expected_tables {
        let got = actual.get(table).copied();
        report.checks.push(Check::new(
            format!("rows {table}"),
            n,
            got.map(|g| g.to_string()).unwrap_or_else(|| "missing".into()),
            got == Some(*n),
        ));
    }
    chain_checks(&mut conn, expected_heads.as_ref(), &mut report.checks).await?;
    let took = t0.elapsed();
    report.add_rto(took);
    output::emit(ctx.global.output, &report)?;
    Ok(report.evidence(started))
}

/// The report of a restore or `backup verify` stopped by a file that does not match the manifest.
fn checksum_failure(m: &Manifest, target: &str, e: &anyhow::Error) -> RestoreReport {
    let why = crate::error::chain(e).to_string();
    eprintln!("{}: {why}", output::paint_error("checksum"));
    RestoreReport {
        backup: m.id.clone(),
        component: Component::Postgres,
        target: target.to_owned(),
        point_in_time: None,
        duration_seconds: 0.0,
        checks: vec![Check::new("checksums", "every file as in the manifest", why, false)],
    }
}

/// Re-verify every tenant's chain in `conn`'s database; compare the heads with `expected_heads`.
async fn chain_checks(
    conn: &mut PgConnection,
    expected_heads: Option<&BTreeMap<String, Head>>,
    checks: &mut Vec<Check>,
) -> anyhow::Result<()> {
    match verify_chains(conn).await? {
        None => checks.push(Check::new(
            "hash chains",
            "audit tables",
            "none in this database",
            expected_heads.is_none_or(|h| h.is_empty()),
        )),
        Some((chains, heads)) => {
            let broken: Vec<&TenantChain> = chains.iter().filter(|c| c.broken.is_some()).collect();
            checks.push(Check::new(
                "hash chains",
                format!("{} tenants intact", chains.len()),
                if broken.is_empty() {
                    format!("{} tenants intact ({} events)", chains.len(), chains.iter().map(|c| c.events).sum::<i64>())
                } else {
                    broken
                        .iter()
                        .map(|c| format!("{}: {}", c.tenant_id, c.broken.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
                broken.is_empty(),
            ));
            if let Some(exp) = expected_heads {
                let same = exp == &heads;
                checks.push(Check::new(
                    "chain heads as in the backup",
                    format!("{} tenants", exp.len()),
                    if same { format!("{} tenants, identical", heads.len()) } else { "different".into() },
                    same,
                ));
            }
        }
    }
    Ok(())
}

/// `backup verify`: restore the dump into a scratch cluster and recover the base backup to its end
/// in another, and run the restore's verification on each, without touching any real server.
pub async fn verify(stored: &Stored, scratch_root: &Path) -> anyhow::Result<Vec<Check>> {
    let m = &stored.manifest;
    let c = consistency(m)?;
    let mut checks = Vec::new();
    let progress = Bytes::new("verifying checksums", Some(m.size));
    let n = tokio::task::block_in_place(|| repo::verify_files(stored, |_| true, &progress));
    progress.finish();
    let n = match n {
        Ok(n) => n,
        // Reported as the failed row (exit 1 after the report), not as a bare error.
        Err(e) => return Ok(checksum_failure(m, "scratch (backup verify)", &e).checks),
    };
    checks.push(Check::new("checksums", format!("{} files", m.files.len()), format!("{n} files intact"), true));
    let bin = bin_dir(c.server_major)?;
    if let Some(d) = &c.dump {
        let mut s = Scratch::create(scratch_root, bin.clone())?;
        s.init(&c.user)?;
        s.start(None, &c.user).await?;
        tokio::task::block_in_place(|| s.restore_dump(&c.user, &c.database, &stored.dir.join(&d.file)))?;
        let mut conn = s.connect(&c.user, &c.database).await?;
        let actual = table_counts(&mut conn).await?;
        for (table, n) in &d.tables {
            let got = actual.get(table).copied();
            checks.push(Check::new(
                format!("dump: rows {table}"),
                n,
                got.map(|g| g.to_string()).unwrap_or_else(|| "missing".into()),
                got == Some(*n),
            ));
        }
        chain_checks(&mut conn, Some(&d.tenants), &mut checks).await?;
        drop(conn);
        s.stop();
    }
    if let Some(base) = &c.base {
        let mut s = Scratch::create(scratch_root, bin)?;
        let base_files: Vec<PathBuf> =
            m.files.iter().filter(|f| f.path.starts_with("base/")).map(|f| stored.dir.join(&f.path)).collect();
        let wal: Vec<PathBuf> =
            m.files.iter().filter(|f| f.path.starts_with("wal/")).map(|f| stored.dir.join(&f.path)).collect();
        s.lay_out(&base_files, &wal, None, c.wal_segment_size)?;
        s.start(Some(&RecoveryTarget::Immediate), &c.user).await?;
        checks.push(Check::new(
            "base backup recovers",
            format!("consistent at {}", base.end_lsn),
            "recovered and promoted",
            true,
        ));
        let mut conn = s.connect(&c.user, &c.database).await?;
        chain_checks(&mut conn, None, &mut checks).await?;
        drop(conn);
        s.stop();
    }
    Ok(checks)
}

/// `id`, or for `latest` the newest backup that can serve the request.
fn pick_backup(ctx: &Ctx<'_>, id: &str, pitr: Option<&RecoveryTarget>, all: &[Stored]) -> anyhow::Result<Stored> {
    if id != "latest" {
        return ctx.repo.open(id, Component::Postgres);
    }
    all.iter()
        .find(|b| {
            let Ok(c) = consistency(&b.manifest) else { return false };
            match pitr {
                None => c.dump.is_some(),
                Some(t) => c.base.as_ref().is_some_and(|base| t.after_base(base)),
            }
        })
        .cloned()
        .ok_or_else(|| usage(format!("no PostgreSQL backup in {} can serve this restore", ctx.repo.display())))
}

pub(super) fn pg_restore_args(cmd: &mut Command, force: bool) {
    cmd.args(["--single-transaction", "--exit-on-error", "--no-owner", "--no-acl", "-w"]);
    if force {
        cmd.args(["--clean", "--if-exists"]);
    }
}

fn pg_restore_file(target: &Endpoint, bin: &Path, file: &Path, force: bool) -> anyhow::Result<()> {
    let progress = Bytes::new("pg_restore", None);
    let mut cmd = target.tool(bin, "pg_restore");
    pg_restore_args(&mut cmd, force);
    cmd.args(["-d", &target.conninfo()]).arg(file).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.join("pg_restore").display()))?;
    let errs = collect_stderr(&mut child);
    finish_tool(child, "pg_restore", errs).context("nothing was restored (one transaction, rolled back)")?;
    progress.finish();
    Ok(())
}
