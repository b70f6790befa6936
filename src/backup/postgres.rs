//! PostgreSQL: logical dumps (pg_dump custom format, in the snapshot where the row counts and chain
//! heads are recorded), physical base backups (pg_basebackup, WAL streamed) and the WAL archive,
//! restores with pg_restore (one transaction) or point-in-time recovery in a scratch instance,
//! and verification of row counts and every tenant's hash chain.
//!
//! Client tools come from `/usr/lib/postgresql/<server major>/bin` (`AUDCTL_PG_BINDIR` overrides),
//! so the dump is made by a pg_dump of the server's own major version.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection, Row};

use super::chain::{self, TenantChain};
use super::manifest::{FileEntry, Manifest};
use super::progress::Bytes;
use super::repo::{self, Stored};
use super::{Check, Component, Ctx, RestoreReport};
use crate::cli::{PgBackupArgs, PgMethod, PgRestoreArgs};
use crate::error::{Unreachable, usage};
use crate::evidence::Evidence;
use crate::output;

// ---------------------------------------------------------------------------------------------
// Connections

/// A server and database to talk to: the URL without its password, the password beside it.
#[derive(Clone)]
pub struct Endpoint {
    url: url::Url,
    password: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.url)
    }
}

impl Endpoint {
    /// `raw` is `postgres://user[:password]@host[:port]/db[?params]`; `password` (from the targets
    /// file or PGPASSWORD) is used when the URL has none.
    pub fn parse(raw: &str, password: Option<String>, what: &str) -> anyhow::Result<Endpoint> {
        let mut url = url::Url::parse(raw).map_err(|e| {
            usage(format!(
                "{what} {:?}: not a URL ({e}); expected postgres://user@host:port/db",
                audctl_targets::redact_url(raw)
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(usage(format!(
                "{what} {}: expected a postgres:// URL, got scheme {:?}",
                audctl_targets::redact_url(raw),
                url.scheme()
            )));
        }
        let inline = url.password().map(percent_decode);
        let _ = url.set_password(None);
        if url.host_str().is_none_or(str::is_empty) {
            return Err(usage(format!("{what} {url}: no host")));
        }
        if url.username().is_empty() {
            return Err(usage(format!("{what} {url}: no user name (postgres://USER@host/db)")));
        }
        let ep = Endpoint { url, password: inline.or(password) };
        if ep.database().is_empty() {
            return Err(usage(format!("{what} {}: no database name (postgres://user@host/DB)", ep.display())));
        }
        Ok(ep)
    }

    pub fn database(&self) -> String {
        percent_decode(self.url.path().trim_start_matches('/'))
    }

    pub fn user(&self) -> String {
        percent_decode(self.url.username())
    }

    /// Printable (never holds the password).
    pub fn display(&self) -> String {
        self.url.to_string()
    }

    fn options(&self) -> anyhow::Result<PgConnectOptions> {
        let mut opts = PgConnectOptions::from_str(self.url.as_str())
            .map_err(|e| usage(format!("{}: {e}", self.display())))?
            .application_name("audctl");
        if let Some(p) = &self.password {
            opts = opts.password(p);
        }
        Ok(opts)
    }

    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        let opts = self.options()?;
        match tokio::time::timeout(Duration::from_secs(20), PgConnection::connect_with(&opts)).await {
            Err(_) => Err(Unreachable {
                what: format!("PostgreSQL at {}", self.display()),
                detail: "no answer in 20 s".into(),
            }
            .into()),
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(connect_error(e, &self.display())),
        }
    }

    /// A client tool with the connection in its environment (the password never in argv).
    fn tool(&self, bin: &Path, name: &str) -> Command {
        let mut cmd = Command::new(bin.join(name));
        cmd.env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "20").env("PGAPPNAME", "audctl");
        if let Some(p) = &self.password {
            cmd.env("PGPASSWORD", p);
        }
        cmd
    }

    /// The libpq connection string (a URL without the password).
    fn conninfo(&self) -> String {
        self.url.to_string()
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex =
            if bytes[i] == b'%' && i + 2 < bytes.len() { std::str::from_utf8(&bytes[i + 1..i + 3]).ok() } else { None };
        if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connect_error(e: sqlx::Error, what: &str) -> anyhow::Error {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            Unreachable { what: format!("PostgreSQL at {what}"), detail: e.to_string() }.into()
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => {
            anyhow!(
                "{what}: the database does not exist; create it first (CREATE DATABASE ...) or choose another --target"
            )
        }
        other => anyhow!(other).context(format!("connecting to PostgreSQL at {what}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Server facts

struct ServerInfo {
    version: String,
    major: u32,
    wal_segment_size: u64,
    in_recovery: bool,
}

async fn server_info(conn: &mut PgConnection) -> anyhow::Result<ServerInfo> {
    let row = sqlx::query(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int,
                (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), pg_is_in_recovery()",
    )
    .fetch_one(&mut *conn)
    .await
    .context("reading the server version")?;
    let num: i32 = row.try_get(1)?;
    Ok(ServerInfo {
        version: row.try_get(0)?,
        major: (num / 10000) as u32,
        wal_segment_size: row.try_get::<Option<i64>, _>(2)?.unwrap_or(16 << 20) as u64,
        in_recovery: row.try_get(3)?,
    })
}

/// Client tools of PostgreSQL `major`.
pub fn bin_dir(major: u32) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("AUDCTL_PG_BINDIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
    };
    if !dir.join("pg_dump").exists() {
        bail!(
            "PostgreSQL {major} client tools not found in {} (the server is {major}: a matching pg_dump is required); \
             install postgresql-client-{major} or set AUDCTL_PG_BINDIR",
            dir.display()
        );
    }
    Ok(dir)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Row count of every user table, `schema.table` -> rows.
async fn table_counts(conn: &mut PgConnection) -> anyhow::Result<BTreeMap<String, i64>> {
    let tables = sqlx::query(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await
    .context("listing tables")?;
    let mut counts = BTreeMap::new();
    for t in tables {
        let (schema, table): (String, String) = (t.try_get(0)?, t.try_get(1)?);
        let sql = format!("SELECT count(*) FROM {}.{}", quote_ident(&schema), quote_ident(&table));
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await
            .with_context(|| format!("counting rows of {schema}.{table}"))?;
        counts.insert(format!("{schema}.{table}"), n);
    }
    Ok(counts)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    pub last_sequence: i64,
    pub last_hash: String,
}

async fn has_audit_tables(conn: &mut PgConnection) -> anyhow::Result<bool> {
    let ok: bool =
        sqlx::query_scalar("SELECT to_regclass('events') IS NOT NULL AND to_regclass('chain_heads') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    Ok(ok)
}

async fn chain_heads(conn: &mut PgConnection) -> anyhow::Result<BTreeMap<String, Head>> {
    if !has_audit_tables(conn).await? {
        return Ok(BTreeMap::new());
    }
    let rows = sqlx::query("SELECT tenant_id, last_sequence, last_hash FROM chain_heads ORDER BY tenant_id")
        .fetch_all(&mut *conn)
        .await
        .context("reading chain_heads")?;
    let mut heads = BTreeMap::new();
    for r in rows {
        heads.insert(r.try_get(0)?, Head { last_sequence: r.try_get(1)?, last_hash: r.try_get(2)? });
    }
    Ok(heads)
}

/// Walk every tenant's chain (one snapshot) and re-verify it. `None` when the database has no
/// audit tables.
async fn verify_chains(conn: &mut PgConnection) -> anyhow::Result<Option<(Vec<TenantChain>, BTreeMap<String, Head>)>> {
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let result = async {
        if !has_audit_tables(conn).await? {
            return Ok(None);
        }
        let heads = chain_heads(conn).await?;
        let mut verifier = chain::Verifier::new();
        let (mut tenant, mut seq) = (String::new(), 0i64);
        let mut first = true;
        loop {
            let rows = sqlx::query(
                "SELECT tenant_id, sequence, id::text, actor_id, resource_id, action_type, body, hash, previous_hash
                 FROM events WHERE $3 OR (tenant_id, sequence) > ($1, $2) ORDER BY tenant_id, sequence LIMIT 5000",
            )
            .bind(&tenant)
            .bind(seq)
            .bind(first)
            .fetch_all(&mut *conn)
            .await
            .context("reading events")?;
            first = false;
            let Some(last) = rows.last() else { break };
            tenant = last.try_get(0)?;
            seq = last.try_get(1)?;
            for r in &rows {
                verifier.check(&chain::Row {
                    tenant_id: r.try_get(0)?,
                    sequence: r.try_get(1)?,
                    id: r.try_get(2)?,
                    actor_id: r.try_get(3)?,
                    resource_id: r.try_get(4)?,
                    action_type: r.try_get(5)?,
                    body: r.try_get(6)?,
                    hash: r.try_get(7)?,
                    previous_hash: r.try_get(8)?,
                });
            }
        }
        let plain: BTreeMap<String, (i64, String)> =
            heads.iter().map(|(t, h)| (t.clone(), (h.last_sequence, h.last_hash.clone()))).collect();
        Ok(Some((verifier.finish(&plain), heads)))
    }
    .await;
    conn.execute("ROLLBACK").await.ok();
    result
}

// ---------------------------------------------------------------------------------------------
// Manifest contents

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PgConsistency {
    pub database: String,
    pub user: String,
    pub server_major: u32,
    pub wal_segment_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BasePoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalCopy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpPoint {
    pub file: String,
    /// WAL position of the dump's snapshot.
    pub lsn: String,
    pub at: DateTime<Utc>,
    /// Rows per table in the dump's snapshot.
    pub tables: BTreeMap<String, i64>,
    /// Every tenant's chain head in the dump's snapshot.
    pub tenants: BTreeMap<String, Head>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasePoint {
    pub start_lsn: String,
    /// Recovery from this base backup is consistent from here on.
    pub end_lsn: String,
    pub timeline: i64,
    pub finished: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WalCopy {
    pub archive: String,
    pub segments: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
}

fn consistency(m: &Manifest) -> anyhow::Result<PgConsistency> {
    serde_json::from_value(m.consistency.clone())
        .with_context(|| format!("backup {}: unreadable PostgreSQL consistency point", m.id))
}

/// An LSN `X/Y` as a number, for comparisons.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

// ---------------------------------------------------------------------------------------------
// Running tools

/// Wait for `child`, failing with its stderr (collected by a thread) when it fails.
fn finish_tool(mut child: Child, name: &str, stderr: std::thread::JoinHandle<String>) -> anyhow::Result<()> {
    let status = child.wait().with_context(|| format!("waiting for {name}"))?;
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        bail!("{name} failed ({status}): {}", err.trim());
    }
    Ok(())
}

fn collect_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    })
}

/// Children die with audctl: a killed backup leaves no pg_basebackup writing into the repository.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Backup

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
            t.add_row(vec![f.path.clone(), super::human_bytes(f.size), f.sha256.clone()]);
        }
        t.add_row(vec![
            format!("backup {} ({:.1} s)", self.id, self.duration_seconds),
            super::human_bytes(self.size),
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

    if matches!(args.method, PgMethod::All | PgMethod::Dump) {
        c.dump =
            Some(dump(&ep, &bin, &mut conn, &mut staging, info.in_recovery).await.context("logical dump (pg_dump)")?);
    }
    if matches!(args.method, PgMethod::All | PgMethod::Base) {
        if info.in_recovery {
            bail!("{} is a standby: take base backups from the primary (WAL archive continuity)", ep.display());
        }
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
    Ok(super::backup_evidence(&manifest))
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
fn archived(dir: &Path, segment_size: u64) -> anyhow::Result<Vec<(String, PathBuf)>> {
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

// ---------------------------------------------------------------------------------------------
// Restore

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

    fn describe(&self) -> String {
        match self {
            RecoveryTarget::Time(t) => format!("time {}", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            RecoveryTarget::Lsn(l) => format!("LSN {l}"),
            RecoveryTarget::Xid(x) => format!("transaction {x}"),
            RecoveryTarget::Name(n) => format!("restore point {n:?}"),
            RecoveryTarget::Immediate => "the end of the base backup".to_owned(),
        }
    }

    /// Server settings (`-c name=value`).
    fn settings(&self) -> (&'static str, String) {
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
    let mut checked = tokio::task::block_in_place(|| repo::verify_files(&stored, uses, &progress))?;
    for (b, f) in &wal_sources {
        let name = f.path.clone();
        checked += tokio::task::block_in_place(|| repo::verify_files(b, |e| e.path == name, &progress))?;
    }
    progress.finish();

    // The target: reachable, a version that can take the dump, empty unless --force.
    let mut conn = target.connect().await?;
    let info = server_info(&mut conn).await?;
    if info.in_recovery {
        bail!("target {} is a read-only standby: restore into a primary", target.display());
    }
    if info.major < c.server_major {
        bail!(
            "target {} runs PostgreSQL {}, older than the backup's {}: restore into PostgreSQL {} or newer",
            target.display(),
            info.version,
            c.server_major,
            c.server_major
        );
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
        super::human_bytes(m.size),
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
    super::confirm(args.common.yes, "Restore?")?;

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
    let n = tokio::task::block_in_place(|| repo::verify_files(stored, |_| true, &progress))?;
    progress.finish();
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

fn pg_restore_args(cmd: &mut Command, force: bool) {
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

// ---------------------------------------------------------------------------------------------
// Scratch instance for point-in-time recovery (and `backup verify`)

/// A private PostgreSQL on a unix socket only, in a temporary directory; stopped and removed on drop.
struct Scratch {
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
    fn create(root: &Path, bin: PathBuf) -> anyhow::Result<Scratch> {
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

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sockets(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn as_owner(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Base backup, WAL (verified copies from the repository, then the live archive for newer
    /// segments), and the configuration of a recovery that ends by promotion.
    fn lay_out(
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

    async fn start(&mut self, target: Option<&RecoveryTarget>, user: &str) -> anyhow::Result<()> {
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
    fn init(&self, user: &str) -> anyhow::Result<()> {
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
    fn restore_dump(&self, user: &str, db: &str, file: &Path) -> anyhow::Result<()> {
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

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// "recovery stopping before commit of transaction 745, time ..." from the log.
    fn stop_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.log()).ok()?;
        text.lines()
            .find(|l| l.contains("recovery stopping"))
            .map(|l| l.split("LOG:").nth(1).unwrap_or(l).trim().to_owned())
    }

    async fn connect(&self, user: &str, db: &str) -> anyhow::Result<PgConnection> {
        let opts = PgConnectOptions::new()
            .socket(self.sockets())
            .port(self.port)
            .username(user)
            .database(db)
            .application_name("audctl");
        Ok(PgConnection::connect_with(&opts).await?)
    }

    /// pg_dump of the recovered database piped into pg_restore on the target (one transaction).
    fn copy_into(&self, target: &Endpoint, user: &str, db: &str, force: bool) -> anyhow::Result<()> {
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

    fn stop(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_compare_numerically() {
        assert!(parse_lsn("0/3000148") < parse_lsn("0/30001A0"));
        assert!(parse_lsn("1/0") > parse_lsn("0/FFFFFFFF"));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn endpoints_keep_passwords_out_of_urls() -> anyhow::Result<()> {
        let ep = Endpoint::parse("postgres://audit:s%40cret@db.example:5432/audit?sslmode=require", None, "t")?;
        assert_eq!(ep.password.as_deref(), Some("s@cret"));
        assert!(!ep.display().contains("cret"));
        assert_eq!(ep.database(), "audit");
        assert!(Endpoint::parse("mysql://a@b/c", None, "--target").is_err());
        assert!(Endpoint::parse("postgres://a@b/", None, "--target").unwrap_err().to_string().contains("no database"));
        Ok(())
    }
}
