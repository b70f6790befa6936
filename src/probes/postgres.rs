//! PostgreSQL probes: reachability, streaming replicas and their lag, WAL archiving, the guide's
//! tuning, connection headroom, the audit server's migrations and its per-tenant chain heads.
//!
//! Connections come from the targets file's `postgres` entry (see [`super::conns`]); expectations
//! from the merged values (`postgresql.readReplicas`, `postgresql.parameters`, `server`, ...).

use std::time::Duration;

use sqlx::Row;

use super::conns::{self, probe, row};
use super::{Comparison, Context, ErrorCause, Finding, Probe, Target};

/// Replay lag above which a replica fails: one WAL segment, and ten seconds.
pub const MAX_LAG_BYTES: i64 = 16 * 1024 * 1024;
pub const MAX_LAG_SECONDS: f64 = 10.0;
/// The guide's backup table: hourly. A last archived segment older than this fails.
pub const MAX_ARCHIVE_AGE: Duration = Duration::from_secs(3600);
/// Connections in use above these fractions of what clients may open warn, then fail.
pub const HEADROOM_WARN: f64 = 0.75;
pub const HEADROOM_FAIL: f64 = 0.90;

/// The audit server's migrations, embedded from its source (version, description, checksum).
static AUDIT_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("audit-server/migrations/postgres");

pub fn probes() -> Vec<Box<dyn Probe>> {
    vec![
        Box::new(Reachable),
        Box::new(Replication),
        Box::new(Archiving),
        Box::new(Tuning),
        Box::new(Headroom),
        Box::new(Migrations),
        Box::new(ChainHeads),
    ]
}

probe!(
    Reachable,
    Target::Postgres,
    "postgres.reachable",
    "PostgreSQL primary reachable, authenticates, server version",
    reachable
);
probe!(
    Replication,
    Target::Postgres,
    "postgres.replication",
    "Streaming replicas as values ask (postgresql.readReplicas), each with replay lag under 16 MB and 10 s",
    replication
);
probe!(
    Archiving,
    Target::Postgres,
    "postgres.archiving",
    "WAL archiving on, no failure since the last success, last archived segment under an hour old",
    archiving
);
probe!(
    Tuning,
    Target::Postgres,
    "postgres.tuning",
    "Live settings equal the guide's tuning (postgresql.parameters), units normalised",
    tuning
);
probe!(
    Headroom,
    Target::Postgres,
    "postgres.connections",
    "Connections in use vs max_connections, and the server pools at full scale vs max_connections",
    headroom
);
probe!(
    Migrations,
    Target::Postgres,
    "postgres.migrations",
    "Every audit-server migration applied, successfully and with the shipped checksum",
    migrations
);
probe!(
    ChainHeads,
    Target::Postgres,
    "postgres.chain-heads",
    "Every tenant with events has a chain head naming its last event",
    chain_heads
);

type Outcome = Result<Finding, Finding>;

async fn reachable(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    let rec = sqlx::query("SELECT version(), current_setting('server_version_num')::int, pg_is_in_recovery()")
        .fetch_one(&pg.pool)
        .await
        .map_err(|e| conns::pg_query_error(&pg.display, &e))?;
    let version: String = rec.get(0);
    let num: i32 = rec.get(1);
    let in_recovery: bool = rec.get(2);
    let short = version.split(" on ").next().unwrap_or(&version).to_owned();
    let rows = vec![
        row("role", "primary", if in_recovery { "standby (in recovery)" } else { "primary" }, !in_recovery),
        // Supported majors: 13 and later (the audit server's SQL and CloudNativePG's floor).
        row("server version", ">= 13", &short, num >= 130_000),
    ];
    Ok(Finding::from_comparisons(&format!("PostgreSQL {} ({short})", pg.display), rows))
}

async fn replication(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    let v = &ctx.values.postgresql;
    let wanted = if v.architecture == "replication" { v.read_replicas.replica_count } else { 0 };
    let rows = sqlx::query(
        "SELECT coalesce(application_name, ''), coalesce(client_addr::text, 'local'), coalesce(state, ''), \
                coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint, \
                coalesce(extract(epoch FROM replay_lag), 0)::float8 \
         FROM pg_stat_replication ORDER BY application_name",
    )
    .fetch_all(&pg.pool)
    .await
    .map_err(|e| conns::pg_query_error(&pg.display, &e))?;
    // Without pg_monitor (or superuser) the columns of other sessions read as NULL.
    if rows.iter().any(|r| r.get::<String, _>(2).is_empty()) {
        return Err(Finding::error(
            ErrorCause::Forbidden,
            format!("PostgreSQL {}: pg_stat_replication is hidden from this user", pg.display),
        )
        .hint("grant pg_monitor to the user in postgres.url"));
    }
    let mut table = Vec::new();
    let streaming = rows.iter().filter(|r| r.get::<String, _>(2) == "streaming").count();
    table.push(row(
        "streaming replicas",
        format!(">= {wanted} (postgresql.readReplicas.replicaCount)"),
        streaming.to_string(),
        streaming as u64 >= u64::from(wanted),
    ));
    for r in &rows {
        let name: String = r.get(0);
        let addr: String = r.get(1);
        let state: String = r.get(2);
        let bytes: i64 = r.get(3);
        let seconds: f64 = r.get(4);
        let who = if name.is_empty() { addr } else { format!("{name}@{addr}") };
        table.push(row(format!("{who} state"), "streaming", &state, state == "streaming"));
        table.push(row(
            format!("{who} replay lag"),
            format!("<= {} MB", MAX_LAG_BYTES / (1024 * 1024)),
            format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0)),
            bytes <= MAX_LAG_BYTES,
        ));
        table.push(row(
            format!("{who} replay lag time"),
            format!("<= {MAX_LAG_SECONDS} s"),
            format!("{seconds:.1} s"),
            seconds <= MAX_LAG_SECONDS,
        ));
    }
    let mut finding = Finding::from_comparisons("streaming replication", table);
    if streaming < wanted as usize {
        finding = finding
            .hint("a replica is down or not streaming: look at its log and at pg_stat_replication on the primary");
    }
    Ok(finding)
}

async fn archiving(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    let rec = sqlx::query(
        "SELECT current_setting('archive_mode'), \
                current_setting('archive_command') || coalesce(current_setting('archive_library', true), ''), \
                archived_count, failed_count, coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), \
                extract(epoch FROM now() - last_archived_time)::float8, \
                coalesce(last_failed_time > last_archived_time OR (last_failed_time IS NOT NULL AND last_archived_time IS NULL), false) \
         FROM pg_stat_archiver",
    )
    .fetch_one(&pg.pool)
    .await
    .map_err(|e| conns::pg_query_error(&pg.display, &e))?;
    let mode: String = rec.get(0);
    let command: String = rec.get(1);
    let archived: i64 = rec.get(2);
    let failed: i64 = rec.get(3);
    let last_wal: String = rec.get(4);
    let last_failed_wal: String = rec.get(5);
    let age: Option<f64> = rec.get(6);
    let failing: bool = rec.get(7);
    let on = mode == "on" || mode == "always";
    let mut rows = vec![
        row("archive_mode", "on", &mode, on),
        row(
            "archive_command / archive_library",
            "set",
            if command.trim().is_empty() || command.trim() == "(disabled)" { "empty" } else { "set" },
            !command.trim().is_empty() && command.trim() != "(disabled)",
        ),
    ];
    if on {
        rows.push(row(
            "archiving now",
            "succeeding",
            &if failing {
                format!("failing ({failed} failures, last on {last_failed_wal})")
            } else {
                format!("succeeding ({failed} failures in all)")
            },
            !failing,
        ));
        let max_min = MAX_ARCHIVE_AGE.as_secs() / 60;
        let (actual, ok) = match age {
            Some(a) => {
                (format!("{} ({last_wal}, {archived} archived)", human_age(a)), a <= MAX_ARCHIVE_AGE.as_secs_f64())
            }
            None => ("never archived a segment".to_owned(), false),
        };
        rows.push(row("last archived segment", format!("<= {max_min} min old"), &actual, ok));
        // When the archive is a directory audctl can see (targets postgres.walArchive), the
        // segment the server reports archived must be there.
        let dir = ctx.targets.postgres.as_ref().and_then(|t| t.wal_archive.as_ref()).filter(|d| d.is_dir());
        if let Some(dir) = dir.filter(|_| !last_wal.is_empty()) {
            let present = dir.join(&last_wal).is_file();
            rows.push(row(
                format!("{last_wal} in {}", dir.display()),
                "present",
                if present { "present" } else { "absent" },
                present,
            ));
        }
    }
    let mut finding = Finding::from_comparisons("WAL archiving", rows);
    if failing {
        finding = finding.hint(
            "archive_command fails: check the archive destination (permissions, space, credentials) and the server log",
        );
    }
    Ok(finding)
}

fn human_age(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s old")
    } else if seconds < 7200.0 {
        format!("{:.0} min old", seconds / 60.0)
    } else {
        format!("{:.1} h old", seconds / 3600.0)
    }
}

async fn tuning(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    let wanted = &ctx.values.postgresql.parameters;
    if wanted.is_empty() {
        return Ok(Finding::pass("postgresql.parameters is empty: no tuning expected"));
    }
    let names: Vec<String> = wanted.keys().cloned().collect();
    let live = sqlx::query("SELECT name, setting, coalesce(unit, ''), vartype FROM pg_settings WHERE name = ANY($1)")
        .bind(&names)
        .fetch_all(&pg.pool)
        .await
        .map_err(|e| conns::pg_query_error(&pg.display, &e))?;
    let mut rows = Vec::new();
    for (name, expected) in wanted {
        let Some(r) = live.iter().find(|r| r.get::<String, _>(0) == *name) else {
            rows.push(row(name, expected, "unknown parameter on this server", false));
            continue;
        };
        let setting: String = r.get(1);
        let unit: String = r.get(2);
        rows.push(compare_setting(name, expected, &setting, &unit));
    }
    Ok(Finding::from_comparisons("the guide's PostgreSQL tuning (postgresql.parameters)", rows)
        .hint("set the parameters in the Cluster's spec.postgresql.parameters (or postgresql.conf) and reload/restart"))
}

/// One tuning row: memory normalised to MB (`8kB` pages and `kB` units converted), times to
/// seconds, other values compared as numbers when both parse, else as text.
pub fn compare_setting(name: &str, expected: &str, setting: &str, unit: &str) -> Comparison {
    if let Some(bytes_per_unit) = memory_unit(unit) {
        let actual_mb = setting.parse::<f64>().ok().map(|n| n * bytes_per_unit / MB);
        let expected_mb = parse_memory(expected);
        let shown_actual = match actual_mb {
            Some(mb) if unit == "8kB" => format!("{} ({setting} x 8kB)", fmt_mb(mb)),
            Some(mb) => format!("{} ({setting}{unit})", fmt_mb(mb)),
            None => format!("{setting}{unit}"),
        };
        let shown_expected = match expected_mb {
            Some(mb) => format!("{} ({expected})", fmt_mb(mb)),
            None => expected.to_owned(),
        };
        let ok = match (actual_mb, expected_mb) {
            (Some(a), Some(e)) => (a - e).abs() < 0.01,
            _ => false,
        };
        return row(name, &shown_expected, &shown_actual, ok);
    }
    if let Some(seconds_per_unit) = time_unit(unit) {
        let actual = setting.parse::<f64>().ok().map(|n| n * seconds_per_unit);
        let wanted = parse_time(expected);
        let ok = matches!((actual, wanted), (Some(a), Some(e)) if (a - e).abs() < 0.0005);
        let shown = actual.map(|a| format!("{a} s ({setting}{unit})")).unwrap_or_else(|| format!("{setting}{unit}"));
        let shown_expected = wanted.map(|w| format!("{w} s ({expected})")).unwrap_or_else(|| expected.to_owned());
        return row(name, &shown_expected, &shown, ok);
    }
    let ok = match (setting.parse::<f64>(), expected.trim().parse::<f64>()) {
        (Ok(a), Ok(e)) => (a - e).abs() < 1e-9,
        _ => setting.eq_ignore_ascii_case(expected.trim()),
    };
    row(name, expected.trim(), setting, ok)
}

const MB: f64 = 1024.0 * 1024.0;

fn fmt_mb(mb: f64) -> String {
    if (mb - mb.round()).abs() < 0.01 { format!("{} MB", mb.round() as i64) } else { format!("{mb:.2} MB") }
}

/// Bytes per unit of a pg_settings memory unit (`8kB`, `kB`, `MB`, `B`...).
fn memory_unit(unit: &str) -> Option<f64> {
    let (count, base) = match unit.find(|c: char| !c.is_ascii_digit()) {
        Some(0) => (1.0, unit),
        Some(i) => (unit[..i].parse::<f64>().ok()?, &unit[i..]),
        None => return None,
    };
    let base = match base {
        "B" => 1.0,
        "kB" => 1024.0,
        "MB" => MB,
        "GB" => MB * 1024.0,
        "TB" => MB * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(count * base)
}

/// `4GB`, `512MB`, `64kB`, `1TB`, `8192` (bare: kB, as postgresql.conf reads most memory settings).
pub fn parse_memory(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let bytes = match unit.trim() {
        "" | "kB" => 1024.0,
        "B" => 1.0,
        "MB" => MB,
        "GB" => MB * 1024.0,
        "TB" => MB * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * bytes / MB)
}

fn time_unit(unit: &str) -> Option<f64> {
    match unit {
        "us" => Some(1e-6),
        "ms" => Some(1e-3),
        "s" => Some(1.0),
        "min" => Some(60.0),
        "h" => Some(3600.0),
        "d" => Some(86400.0),
        _ => None,
    }
}

/// `5min`, `30s`, `200ms`, `1h`, bare number = the parameter's unit is unknown here: seconds.
fn parse_time(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(n * if unit.trim().is_empty() { 1.0 } else { time_unit(unit.trim())? })
}

async fn headroom(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    let rec = sqlx::query(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int, \
                coalesce(current_setting('reserved_connections', true), '0')::int, \
                (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int",
    )
    .fetch_one(&pg.pool)
    .await
    .map_err(|e| conns::pg_query_error(&pg.display, &e))?;
    let max: i32 = rec.get(0);
    let reserved = rec.get::<i32, _>(1) + rec.get::<i32, _>(2);
    let used: i32 = rec.get(3);
    let usable = (max - reserved).max(1);
    let fraction = f64::from(used) / f64::from(usable);
    let mut rows = vec![row(
        "connections in use",
        format!("< {:.0}% of {usable} (max_connections {max} - {reserved} reserved)", HEADROOM_FAIL * 100.0),
        format!("{used} ({:.0}%)", fraction * 100.0),
        fraction < HEADROOM_FAIL,
    )];
    // At full scale every server pod opens its whole pool.
    let v = &ctx.values;
    let pods = v.server_pods_at_full_scale();
    let needed = u64::from(pods) * u64::from(v.server_connections_per_pod());
    let scale_ok = needed <= usable as u64;
    rows.push(row(
        "server pools at full scale",
        format!("<= {usable}"),
        format!(
            "{needed} ({pods} pods x (server.dbMaxConnections {} + {} append lanes))",
            v.server.db_max_connections,
            crate::values::model::SERVER_APPEND_LANES
        ),
        scale_ok,
    ));
    let what = "PostgreSQL connection headroom";
    let finding = if fraction >= HEADROOM_FAIL {
        Finding::fail(format!("{what}: {used} of {usable} connections in use ({:.0}%)", fraction * 100.0))
            .comparisons(rows)
            .hint("new connections will soon be refused: find the clients holding them (pg_stat_activity) or raise max_connections")
    } else if !scale_ok {
        // A projection, not the present: a warning with the numbers.
        Finding::warn(format!(
            "{what}: at full scale the server pools need {needed} connections, max_connections leaves {usable}"
        ))
        .comparisons(rows)
        .hint("raise max_connections, lower server.dbMaxConnections or the replica ceiling, or put a pooler in front")
    } else if fraction >= HEADROOM_WARN {
        Finding::warn(format!("{what}: {used} of {usable} connections in use ({:.0}%)", fraction * 100.0))
            .comparisons(rows)
    } else {
        Finding::from_comparisons(what, rows)
    };
    Ok(finding)
}

async fn migrations(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    let applied = match sqlx::query(
        "SELECT version, description, success, encode(checksum, 'hex') FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&pg.pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) if conns::pg_code(&e).as_deref() == Some("42P01") => {
            return Ok(Finding::fail(format!(
                "no migrations applied in {}: table _sqlx_migrations is absent",
                pg.display
            ))
            .comparisons(vec![row("migrations applied", AUDIT_MIGRATIONS.iter().count().to_string(), "0", false)])
            .hint("start the audit server once against this database (it migrates at start), or point targets postgres.url at the audit database"));
        }
        Err(e) => return Err(conns::pg_query_error(&pg.display, &e)),
    };
    let mut rows = Vec::new();
    for m in AUDIT_MIGRATIONS.iter().filter(|m| m.migration_type.is_up_migration()) {
        let expected = format!("applied, checksum {}", short_hex(&hex::encode(&*m.checksum)));
        let found = applied.iter().find(|r| r.get::<i64, _>(0) == m.version);
        let (actual, ok) = match found {
            None => ("missing".to_owned(), false),
            Some(r) if !r.get::<bool, _>(2) => ("failed (success = false)".to_owned(), false),
            Some(r) => {
                let sum: String = r.get(3);
                let same = sum.eq_ignore_ascii_case(&hex::encode(&*m.checksum));
                (format!("applied, checksum {}", short_hex(&sum)), same)
            }
        };
        rows.push(row(format!("{} {}", m.version, m.description), &expected, &actual, ok));
    }
    for r in &applied {
        let version: i64 = r.get(0);
        if !AUDIT_MIGRATIONS.iter().any(|m| m.version == version) {
            let description: String = r.get(1);
            rows.push(row(
                format!("{version} {description}"),
                "a migration this audctl knows",
                "applied by a newer server",
                true,
            ));
        }
    }
    Ok(Finding::from_comparisons("audit-server migrations", rows))
}

fn short_hex(h: &str) -> String {
    h.chars().take(12).collect()
}

async fn chain_heads(ctx: &Context) -> Outcome {
    let pg = ctx.conns.postgres(&ctx.targets).await?;
    // Per tenant: the last event and the head row; a tenant appears when either exists.
    let rows = match sqlx::query(
        "WITH last AS (SELECT DISTINCT ON (tenant_id) tenant_id, sequence, hash FROM events \
                       ORDER BY tenant_id, sequence DESC) \
         SELECT coalesce(l.tenant_id, h.tenant_id), l.sequence, l.hash, h.last_sequence, h.last_hash \
         FROM last l FULL OUTER JOIN chain_heads h ON h.tenant_id = l.tenant_id ORDER BY 1",
    )
    .fetch_all(&pg.pool)
    .await
    {
        Ok(rows) => rows,
        Err(e) if conns::pg_code(&e).as_deref() == Some("42P01") => {
            return Ok(Finding::fail(format!("tables events/chain_heads are absent in {}", pg.display))
                .hint("the audit server has not migrated this database: see postgres.migrations"));
        }
        Err(e) => return Err(conns::pg_query_error(&pg.display, &e)),
    };
    if rows.is_empty() {
        return Ok(Finding::pass("no tenant has events yet: no chain heads expected"));
    }
    let mut table = Vec::new();
    for r in &rows {
        let tenant: String = r.get(0);
        let last_seq: Option<i64> = r.get(1);
        let last_hash: Option<String> = r.get(2);
        let head_seq: Option<i64> = r.get(3);
        let head_hash: Option<String> = r.get(4);
        let show = |s: Option<i64>, h: &Option<String>| match (s, h) {
            (Some(s), Some(h)) => format!("#{s} {}", short_hex(h)),
            _ => "none".to_owned(),
        };
        let ok = last_seq == head_seq && last_hash == head_hash;
        table.push(row(
            format!("tenant {tenant}"),
            format!("head = last event {}", show(last_seq, &last_hash)),
            format!("head {}", show(head_seq, &head_hash)),
            ok,
        ));
    }
    let tenants = table.len();
    let mut finding = Finding::from_comparisons(&format!("chain heads of {tenants} tenant(s)"), table);
    if !finding.comparisons.iter().all(|c| c.ok) {
        finding = finding.hint("a missing or stale head forks the chain on the next append: run the audit server's integrity verification for that tenant and restore from backup");
    }
    Ok(finding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_settings_are_normalised_to_mb() {
        // shared_buffers = 4GB is 524288 pages of 8kB.
        let c = compare_setting("shared_buffers", "4GB", "524288", "8kB");
        assert!(c.ok, "{c:?}");
        assert_eq!(c.expected, "4096 MB (4GB)");
        assert_eq!(c.actual, "4096 MB (524288 x 8kB)");
        // work_mem in kB.
        assert!(compare_setting("work_mem", "20MB", "20480", "kB").ok);
        let off = compare_setting("work_mem", "20MB", "4096", "kB");
        assert!(!off.ok);
        assert_eq!(off.actual, "4 MB (4096kB)");
        // max_wal_size in MB.
        assert!(compare_setting("max_wal_size", "4GB", "4096", "MB").ok);
    }

    #[test]
    fn plain_and_time_settings() {
        assert!(compare_setting("random_page_cost", "1.1", "1.1", "").ok);
        assert!(!compare_setting("random_page_cost", "1.1", "4", "").ok);
        assert!(compare_setting("checkpoint_completion_target", "0.9", "0.9", "").ok);
        assert!(compare_setting("checkpoint_timeout", "5min", "300", "s").ok);
        assert!(compare_setting("wal_level", "replica", "replica", "").ok);
    }

    #[test]
    fn embedded_migrations_match_the_server_sources() {
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/audit-server/migrations/postgres"))
            .expect("migrations dir")
            .count();
        assert_eq!(AUDIT_MIGRATIONS.iter().count(), files);
    }
}
