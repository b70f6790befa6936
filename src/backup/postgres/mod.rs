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
use sqlx::postgres::{PgConnectOptions, PgSslMode};
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
        // An unparseable or scheme-less value is never echoed: `user:password@host/db` (no
        // scheme) would be printed password and all.
        const EXPECTED: &str = "expected postgres://user@host:port/db";
        let mut url = url::Url::parse(raw).map_err(|e| usage(format!("{what}: not a URL ({e}); {EXPECTED}")))?;
        if !raw.contains("://") {
            return Err(usage(format!("{what}: not a URL (no scheme://); {EXPECTED}")));
        }
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(usage(format!(
                "{what} {}: expected a postgres:// URL, got scheme {:?}",
                audctl_targets::redact_url(raw),
                url.scheme()
            )));
        }
        // A password given as a query parameter leaves the URL too: it would be printed in
        // messages and passed in pg_restore's argv.
        let mut query_password = None;
        if url.query_pairs().any(|(k, _)| k == "password") {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter_map(|(k, v)| {
                    if k == "password" {
                        query_password = Some(v.into_owned());
                        None
                    } else {
                        Some((k.into_owned(), v.into_owned()))
                    }
                })
                .collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        let inline = url.password().map(percent_decode).or(query_password);
        let _ = url.set_password(None);
        let shown = audctl_targets::redact_url(url.as_str());
        if url.host_str().is_none_or(str::is_empty) {
            return Err(usage(format!("{what} {shown}: no host")));
        }
        if url.username().is_empty() {
            return Err(usage(format!("{what} {shown}: no user name (postgres://USER@host/db)")));
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

    /// Printable (never holds the password, nor other secret-looking query parameters).
    pub fn display(&self) -> String {
        audctl_targets::redact_url(self.url.as_str())
    }

    /// The SSL mode imposed on every connection, audctl's own and the client tools': the same
    /// policy as `check` (verify-full unless the URL sets sslmode or the host is loopback).
    fn ssl_mode(&self) -> Option<PgSslMode> {
        let host = percent_decode(self.url.host_str().unwrap_or_default());
        crate::probes::conns::pg_default_ssl_mode(self.url.as_str(), &host)
    }

    fn options(&self) -> anyhow::Result<PgConnectOptions> {
        let mut opts = PgConnectOptions::from_str(self.url.as_str())
            .map_err(|e| usage(format!("{}: {e}", self.display())))?
            .application_name("audctl");
        if let Some(p) = &self.password {
            opts = opts.password(p);
        }
        if let Some(mode) = self.ssl_mode() {
            opts = opts.ssl_mode(mode);
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
        // libpq's default is `prefer`, which falls back to plaintext: impose what audctl's own
        // connection used (an sslmode in the URL is in the conninfo and wins over the env).
        if matches!(self.ssl_mode(), Some(PgSslMode::VerifyFull)) {
            cmd.env("PGSSLMODE", "verify-full");
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
        sqlx::Error::Tls(_) => Unreachable {
            what: format!("PostgreSQL at {what}"),
            detail: format!(
                "TLS: {e} (TLS is verified by default off loopback: trust the server's CA with sslrootcert=FILE \
                 in the URL, or set sslmode in it)"
            ),
        }
        .into(),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
            Unreachable { what: format!("PostgreSQL at {what}"), detail: e.to_string() }.into()
        }
        // A refusal the operator fixes (exit 2, as the runbook says), not a failed check.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000") => usage(format!(
            "{what}: the database does not exist; create it first (CREATE DATABASE ...) or choose another --target"
        )),
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

mod backup;
mod restore;
mod scratch;

use backup::archived;
pub use backup::backup;
use restore::pg_restore_args;
pub use restore::{RecoveryTarget, restore, verify};
use scratch::Scratch;

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
    fn tls_is_verified_off_loopback_unless_the_url_says_otherwise() -> anyhow::Result<()> {
        let verified =
            |u: &str| Endpoint::parse(u, None, "t").map(|e| matches!(e.ssl_mode(), Some(PgSslMode::VerifyFull)));
        let imposed = |u: &str| Endpoint::parse(u, None, "t").map(|e| e.ssl_mode().is_some());
        assert!(verified("postgres://a@db.example:5432/audit")?);
        assert!(verified("postgres://a@10.0.0.5/audit")?);
        assert!(!imposed("postgres://a@127.0.0.1:5432/audit")?);
        assert!(!imposed("postgres://a@localhost/audit")?);
        assert!(!imposed("postgres://a@[::1]:5432/audit")?);
        assert!(!imposed("postgres://a@db.example/audit?sslmode=require")?);
        let opts = Endpoint::parse("postgres://a@db.example/audit", None, "t")?.options()?;
        assert!(matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull));
        let ep = Endpoint::parse("postgres://a@db.example/audit", None, "t")?;
        let cmd = ep.tool(Path::new("/bin"), "pg_dump");
        assert!(cmd.get_envs().any(|(k, v)| k == "PGSSLMODE" && v == Some("verify-full".as_ref())));
        Ok(())
    }

    #[test]
    fn endpoints_keep_passwords_out_of_urls() -> anyhow::Result<()> {
        let ep = Endpoint::parse("postgres://audit:s%40cret@db.example:5432/audit?sslmode=require", None, "t")?;
        assert_eq!(ep.password.as_deref(), Some("s@cret"));
        assert!(!ep.display().contains("cret"));
        assert_eq!(ep.database(), "audit");
        assert!(Endpoint::parse("mysql://a@b/c", None, "--target").is_err());
        for raw in ["audit:S3cretPW@db.example/audit", "postgres://audit:S3cretPW@db.example:99999/audit"] {
            let err = Endpoint::parse(raw, None, "--target").unwrap_err().to_string();
            assert!(!err.contains("S3cretPW"), "{err}");
        }
        let ep = Endpoint::parse("postgres://audit@db.example/audit?password=S3cretPW&sslmode=require", None, "t")?;
        assert_eq!(ep.password.as_deref(), Some("S3cretPW"));
        assert!(!ep.display().contains("S3cretPW") && !ep.conninfo().contains("S3cretPW"), "{}", ep.conninfo());
        assert!(ep.conninfo().contains("sslmode=require"), "{}", ep.conninfo());
        assert!(Endpoint::parse("postgres://a@b/", None, "--target").unwrap_err().to_string().contains("no database"));
        Ok(())
    }
}
