//! `audctl backup postgres`: the logical dump, the base backup and the WAL copied beside them.

use super::*;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackupReport {
    id: String,
    component: Component,
    repo: String,
    source: String,
    server_version: String,
    duration_seconds: f64,
    size: u64,
    files: Vec<FileEntry>,
    consistency: PgConsistency,
}

impl output::Report for BackupReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["file", "size", "sha256"]);
        for f in &self.files {
            t.add_row(vec![f.path.clone(), crate::backup::human_bytes(f.size), f.sha256.clone()]);
        }
        t.add_row(vec![
            format!("backup {} ({:.1} s)", self.id, self.duration_seconds),
            crate::backup::human_bytes(self.size),
            consistency_line(&self.consistency),
        ]);
        t
    }
}

pub(crate) fn consistency_line(c: &PgConsistency) -> String {
    let mut parts = Vec::new();
    if let Some(d) = &c.dump {
        parts.push(format!("dump at LSN {}", d.lsn));
    }
    if let Some(b) = &c.base {
        parts.push(format!("base {}..{}", b.start_lsn, b.end_lsn));
    }
    if let Some(tl) = c.timeline {
        parts.push(format!("timeline {tl}"));
    }
    if let Some(w) = &c.wal {
        parts.push(format!("{} WAL segments", w.segments));
    }
    parts.join(", ")
}

pub async fn backup(ctx: &Ctx<'_>, args: &PgBackupArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let t0 = Instant::now();
    let target = ctx.targets().and_then(|t| t.postgres.clone()).ok_or_else(|| {
        usage("no PostgreSQL to back up: the targets file (--targets FILE) needs a `postgres:` entry")
    })?;
    let password = target
        .password
        .as_ref()
        .map(|s| s.expose())
        .transpose()
        .map_err(|e| usage(format!("postgres.password in the targets file: {e}")))?;
    let ep = Endpoint::parse(&target.url, password, "postgres.url")?;
    // Checked before the dump runs, not after it: a mistyped archive is the operator's to fix.
    if matches!(args.method, PgMethod::All | PgMethod::Base)
        && let Some(dir) = args.wal_archive.as_ref().or(target.wal_archive.as_ref())
        && !dir.is_dir()
    {
        let flag = if args.wal_archive.is_some() { "--wal-archive" } else { "postgres.walArchive" };
        return Err(usage(format!("{flag} {}: no such directory", dir.display())));
    }
    let mut conn = ep.connect().await?;
    let info = server_info(&mut conn).await?;
    let bin = bin_dir(info.major)?;
    let wal_archive = args.wal_archive.clone().or(target.wal_archive.clone());
    let timeline: Option<i64> =
        sqlx::query_scalar("SELECT timeline_id::bigint FROM pg_control_checkpoint()").fetch_one(&mut conn).await.ok();

    let earlier_wal = recorded_wal(&ctx.repo.list(Some(Component::Postgres))?);
    let mut staging = ctx.repo.begin(Component::Postgres, started)?;
    let mut c = PgConsistency {
        database: ep.database(),
        user: ep.user(),
        server_major: info.major,
        wal_segment_size: info.wal_segment_size,
        timeline,
        dump: None,
        base: None,
        wal: None,
    };

    // Refused before the dump runs: the base backup would fail after it anyway.
    if info.in_recovery && matches!(args.method, PgMethod::All | PgMethod::Base) {
        return Err(usage(format!(
            "{} is a standby: take base backups from the primary (WAL archive continuity); a dump alone \
             (--method dump) may come from a standby",
            ep.display()
        )));
    }
    if matches!(args.method, PgMethod::All | PgMethod::Dump) {
        c.dump =
            Some(dump(&ep, &bin, &mut conn, &mut staging, info.in_recovery).await.context("logical dump (pg_dump)")?);
    }
    if matches!(args.method, PgMethod::All | PgMethod::Base) {
        let base = tokio::task::block_in_place(|| base_backup(&ep, &bin, &mut staging))
            .context("base backup (pg_basebackup)")?;
        c.timeline = Some(base.timeline);
        c.base = Some(base);
        if let Some(dir) = &wal_archive {
            let copy = tokio::task::block_in_place(|| copy_wal(dir, &earlier_wal, info.wal_segment_size, &mut staging))
                .with_context(|| format!("copying the WAL archive {}", dir.display()))?;
            c.wal = Some(copy);
        } else {
            eprintln!(
                "warning: no WAL archive configured (postgres.walArchive or --wal-archive): this base backup restores \
                 to its own end only, not to a later point in time"
            );
        }
    }
    drop(conn);

    let finished = Utc::now();
    let manifest = Manifest::new(
        staging.id.clone(),
        Component::Postgres,
        started,
        finished,
        staging.files().to_vec(),
        info.version.clone(),
        ep.display(),
        serde_json::to_value(&c)?,
    );
    let id = staging.id.clone();
    tokio::task::block_in_place(|| staging.commit(&manifest)).context("writing the manifest")?;
    let report = BackupReport {
        id: id.clone(),
        component: Component::Postgres,
        repo: ctx.repo.display(),
        source: ep.display(),
        server_version: info.version,
        duration_seconds: t0.elapsed().as_secs_f64(),
        size: manifest.size,
        files: manifest.files.clone(),
        consistency: c,
    };
    ctx.emit(&report)?;
    Ok(crate::backup::backup_evidence(&manifest))
}

/// Names of WAL files already kept by earlier backups (each segment is copied once).
fn recorded_wal(backups: &[Stored]) -> BTreeSet<String> {
    backups
        .iter()
        .flat_map(|b| b.manifest.files.iter())
        .filter_map(|f| f.path.strip_prefix("wal/").map(str::to_owned))
        .collect()
}

async fn dump(
    ep: &Endpoint,
    bin: &Path,
    conn: &mut PgConnection,
    staging: &mut repo::Staging,
    in_recovery: bool,
) -> anyhow::Result<DumpPoint> {
    // One snapshot for the dump, the row counts and the chain heads: the manifest describes
    // exactly what the dump holds.
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let lsn_fn = if in_recovery { "pg_last_wal_replay_lsn()" } else { "pg_current_wal_lsn()" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT pg_export_snapshot(), {lsn_fn}::text, now()")))
        .fetch_one(&mut *conn)
        .await
        .context("exporting a snapshot")?;
    let snapshot: String = row.try_get(0)?;
    let lsn: String = row.try_get(1)?;
    let at: DateTime<Utc> = row.try_get(2)?;
    let tables = table_counts(conn).await?;
    let tenants = chain_heads(conn).await?;

    let db = ep.database();
    let safe: String =
        db.chars().map(|ch| if ch.is_ascii_alphanumeric() || "-_.".contains(ch) { ch } else { '_' }).collect();
    let file = format!("dump/{safe}.dump");
    let progress = Bytes::new(format!("pg_dump {db}"), None);
    let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let mut cmd = ep.tool(bin, "pg_dump");
        cmd.args(["-Fc", "-w", "--snapshot", &snapshot, "-d", &ep.conninfo()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.join("pg_dump").display()))?;
        let errs = collect_stderr(&mut child);
        let mut stdout = child.stdout.take().context("pg_dump stdout")?;
        if let Err(e) = staging.write_from(&file, &mut stdout, &progress) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        finish_tool(child, "pg_dump", errs)
    });
    conn.execute("COMMIT").await.ok();
    result?;
    progress.finish();
    Ok(DumpPoint { file, lsn, at, tables, tenants })
}

fn base_backup(ep: &Endpoint, bin: &Path, staging: &mut repo::Staging) -> anyhow::Result<BasePoint> {
    let dir = staging.path("base");
    let label = format!("audctl {}", staging.id);
    let mut cmd = ep.tool(bin, "pg_basebackup");
    cmd.args(["-Ft", "-X", "stream", "--checkpoint=fast", "-w", "-l", &label, "-d", &ep.conninfo()])
        .arg("-D")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let progress = Bytes::new("pg_basebackup", None);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.join("pg_basebackup").display()))?;
    let errs = collect_stderr(&mut child);
    while child.try_wait()?.is_none() {
        progress.set(dir_size(&dir));
        std::thread::sleep(Duration::from_millis(300));
    }
    finish_tool(child, "pg_basebackup", errs)?;
    progress.set(dir_size(&dir));
    progress.finish();

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    let hashing = Bytes::hidden();
    for n in &names {
        staging.add_written(&format!("base/{n}"), &hashing)?;
    }
    let manifest_path = dir.join("backup_manifest");
    let text = std::fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let bm: serde_json::Value = serde_json::from_slice(&text).context("parsing pg_basebackup's backup_manifest")?;
    let range = bm
        .get("WAL-Ranges")
        .and_then(|r| r.as_array())
        .and_then(|r| r.last())
        .context("backup_manifest has no WAL-Ranges")?;
    let get = |k: &str| {
        range.get(k).and_then(|v| v.as_str()).map(str::to_owned).with_context(|| format!("backup_manifest: no {k}"))
    };
    Ok(BasePoint {
        start_lsn: get("Start-LSN")?,
        end_lsn: get("End-LSN")?,
        timeline: range.get("Timeline").and_then(|v| v.as_i64()).unwrap_or(1),
        finished: Utc::now(),
    })
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|es| es.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// A WAL segment file name (24 hex digits) or a timeline history file.
fn is_wal_file(name: &str) -> bool {
    (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        || (name.ends_with(".history") && name.len() == 16)
}

/// Complete files of the archive directory: segments of exactly the segment size (a segment
/// being copied in by archive_command is shorter) and history files.
pub(super) fn archived(dir: &Path, segment_size: u64) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
        if !is_wal_file(&name) {
            continue;
        }
        let len = e.metadata()?.len();
        if name.len() == 24 && len != segment_size {
            continue;
        }
        files.push((name, e.path()));
    }
    files.sort();
    Ok(files)
}

fn copy_wal(
    dir: &Path,
    earlier: &BTreeSet<String>,
    segment_size: u64,
    staging: &mut repo::Staging,
) -> anyhow::Result<WalCopy> {
    let progress = Bytes::new("WAL archive", None);
    let mut copied = Vec::new();
    for (name, path) in archived(dir, segment_size)? {
        if earlier.contains(&name) {
            continue;
        }
        let mut f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        staging.write_from(&format!("wal/{name}"), &mut f, &progress)?;
        copied.push(name);
    }
    progress.finish();
    let segments: Vec<&String> = copied.iter().filter(|n| n.len() == 24).collect();
    Ok(WalCopy {
        archive: dir.display().to_string(),
        segments: segments.len(),
        first: segments.first().map(|s| s.to_string()),
        last: segments.last().map(|s| s.to_string()),
    })
}
