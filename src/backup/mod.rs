//! `audctl backup` and `audctl restore`: the production guide's backup strategy (Disaster
//! Recovery: what, how often, kept how long), restores that verify what they restored, and RTO/RPO
//! measured against the guide's table.
//!
//! One file per datastore; [`repo`] is the backup location and its catalog of manifests
//! ([`manifest`]), with the sha256 of every file; [`chain`] re-verifies the audit hash chains.

pub mod chain;
pub mod kafka;
pub mod manifest;
pub mod postgres;
pub mod progress;
pub mod redis;
pub mod repo;
pub mod search;

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cli::{
    BackupArgs, BackupCommand, BackupPruneArgs, BackupStatusArgs, BackupVerifyArgs, GlobalArgs, RestoreArgs,
    RestoreCommand,
};
use crate::error::{CheckFailed, Failure, usage};
use crate::evidence::{self, Evidence, Outcome};
use crate::output::{self, Report};
use repo::Repo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    Postgres,
    Search,
    Redis,
    Kafka,
}

impl Component {
    pub const ALL: [Component; 4] = [Component::Postgres, Component::Search, Component::Redis, Component::Kafka];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Postgres => "postgres",
            Component::Search => "search",
            Component::Redis => "redis",
            Component::Kafka => "kafka",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Component> {
        Component::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| usage(format!("component {s:?}: expected one of postgres, search, redis, kafka")))
    }

    /// The guide's Backup Strategy row for this component.
    pub fn policy(self) -> Policy {
        const HOUR: u64 = 3600;
        const DAY: u64 = 24 * HOUR;
        match self {
            Component::Postgres => Policy {
                cadence: Duration::from_secs(HOUR),
                retention: Duration::from_secs(7 * DAY),
                method: "pg_dump + WAL",
            },
            Component::Search => Policy {
                cadence: Duration::from_secs(DAY),
                retention: Duration::from_secs(30 * DAY),
                method: "snapshot",
            },
            Component::Redis => {
                Policy { cadence: Duration::from_secs(HOUR), retention: Duration::from_secs(DAY), method: "RDB + AOF" }
            }
            // "Continuous" by log retention: audctl records offsets at the same hourly cadence.
            Component::Kafka => Policy {
                cadence: Duration::from_secs(HOUR),
                retention: Duration::from_secs(7 * DAY),
                method: "log retention",
            },
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Production guide, Disaster Recovery, Backup Strategy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub cadence: Duration,
    pub retention: Duration,
    pub method: &'static str,
}

/// Production guide, RTO/RPO Targets: the scenarios a restore from backup serves.
pub const RTO_TARGETS: [(&str, Duration); 2] =
    [("region failure", Duration::from_secs(3600)), ("data corruption", Duration::from_secs(4 * 3600))];
/// RPO of both scenarios: < 1 hour.
pub const RPO_TARGET: Duration = Duration::from_secs(3600);

/// Settings shared by the subcommands.
pub struct Ctx<'a> {
    pub global: &'a GlobalArgs,
    pub targets: Option<audctl_targets::Targets>,
    pub repo: Repo,
    /// `backup all` prints one summary instead of each component's report.
    pub quiet: bool,
}

impl Ctx<'_> {
    /// A backup's report, unless a summary is printed instead.
    pub fn emit<R: Report>(&self, report: &R) -> anyhow::Result<()> {
        if self.quiet { Ok(()) } else { output::emit(self.global.output, report) }
    }

    pub fn targets(&self) -> Option<&audctl_targets::Targets> {
        self.targets.as_ref()
    }
}

fn load_targets(global: &GlobalArgs) -> anyhow::Result<Option<audctl_targets::Targets>> {
    match &global.targets {
        Some(path) => audctl_targets::Targets::load(path).map(Some).map_err(|e| usage(format!("targets file {e}"))),
        None => Ok(None),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")
}

pub fn run_backup(global: &GlobalArgs, args: &BackupArgs) -> anyhow::Result<()> {
    let targets = load_targets(global)?;
    let repo = Repo::resolve(args.repo.as_deref(), targets.as_ref())?;
    let mut ctx = Ctx { global, targets, repo, quiet: false };
    match &args.command {
        BackupCommand::All => {
            ctx.quiet = true;
            runtime()?.block_on(all(&ctx))
        }
        BackupCommand::Postgres(a) => {
            runtime()?.block_on(recorded(&ctx, "backup", Component::Postgres, postgres::backup(&ctx, a)))
        }
        BackupCommand::Search(a) => {
            runtime()?.block_on(recorded(&ctx, "backup", Component::Search, search::backup(&ctx, a)))
        }
        BackupCommand::Redis(a) => {
            runtime()?.block_on(recorded(&ctx, "backup", Component::Redis, redis::backup(&ctx, a)))
        }
        BackupCommand::Kafka(a) => {
            runtime()?.block_on(recorded(&ctx, "backup", Component::Kafka, kafka::backup(&ctx, a)))
        }
        BackupCommand::List(a) => list(&ctx, a.component.as_deref()),
        BackupCommand::Status(a) => status(&ctx, a),
        BackupCommand::Prune(a) => runtime()?.block_on(prune(&ctx, a)),
        BackupCommand::Verify(a) => runtime()?.block_on(verify(&ctx, a)),
    }
}

pub fn run_restore(global: &GlobalArgs, args: &RestoreArgs) -> anyhow::Result<()> {
    let targets = load_targets(global)?;
    let repo = Repo::resolve(args.repo.as_deref(), targets.as_ref())?;
    // A restore reads the repository: a mistyped --repo is an input error, not "no backup".
    repo.require_exists()?;
    let ctx = Ctx { global, targets, repo, quiet: false };
    match &args.command {
        RestoreCommand::Postgres(a) => {
            runtime()?.block_on(recorded(&ctx, "restore", Component::Postgres, postgres::restore(&ctx, a)))
        }
        RestoreCommand::Redis(a) => {
            runtime()?.block_on(recorded(&ctx, "restore", Component::Redis, redis::restore(&ctx, a)))
        }
        RestoreCommand::Search(a) => {
            runtime()?.block_on(recorded(&ctx, "restore", Component::Search, search::restore(&ctx, a)))
        }
        RestoreCommand::Kafka(a) => {
            runtime()?.block_on(recorded(&ctx, "restore", Component::Kafka, kafka::restore::restore(&ctx, a)))
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListReport {
    repo: String,
    backups: Vec<ListRow>,
    /// Backups that never completed (interrupted): not restorable, removed by `backup prune`.
    incomplete: Vec<String>,
    /// Backups whose manifest is unreadable or inconsistent: not restorable, kept by `backup prune`.
    damaged: Vec<DamagedRow>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DamagedRow {
    id: String,
    component: Component,
    reason: String,
}

impl DamagedRow {
    fn from(d: repo::Damaged) -> DamagedRow {
        DamagedRow { id: d.id, component: d.component, reason: d.reason }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListRow {
    id: String,
    component: Component,
    finished: DateTime<Utc>,
    duration_seconds: f64,
    size: u64,
    files: usize,
    server_version: String,
    consistency: String,
    verified: Option<DateTime<Utc>>,
}

impl Report for ListReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table([
            "id",
            "component",
            "finished",
            "size",
            "files",
            "server",
            "consistency point",
            "verified",
        ]);
        for b in &self.backups {
            t.add_row(vec![
                b.id.clone(),
                b.component.to_string(),
                b.finished.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                human_bytes(b.size),
                b.files.to_string(),
                b.server_version.clone(),
                b.consistency.clone(),
                b.verified.map(|v| v.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into()),
            ]);
        }
        for id in &self.incomplete {
            t.add_row(vec![
                id.clone(),
                "(incomplete)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for d in &self.damaged {
            t.add_row(vec![
                d.id.clone(),
                format!("{} (DAMAGED)", d.component),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                d.reason.clone(),
                "-".into(),
            ]);
        }
        t
    }
}

fn list(ctx: &Ctx, component: Option<&str>) -> anyhow::Result<()> {
    let component = component.map(Component::parse).transpose()?;
    ctx.repo.require_exists()?;
    let backups = ctx
        .repo
        .list(component)?
        .into_iter()
        .map(|s| ListRow {
            consistency: consistency_summary(&s.manifest),
            id: s.manifest.id.clone(),
            component: s.manifest.component,
            finished: s.manifest.finished,
            duration_seconds: (s.manifest.finished - s.manifest.started).num_milliseconds() as f64 / 1000.0,
            size: s.manifest.size,
            files: s.manifest.files.len(),
            server_version: s.manifest.server_version.clone(),
            verified: s.verified,
        })
        .collect();
    let damaged = ctx.repo.damaged(component)?.into_iter().map(DamagedRow::from).collect();
    let report = ListReport { repo: ctx.repo.display(), backups, incomplete: ctx.repo.partial(), damaged };
    // An empty table reads like a rendering failure: say so (stderr: stdout stays the report).
    if report.backups.is_empty() && report.incomplete.is_empty() && report.damaged.is_empty() {
        let of = component.map(|c| format!(" of {c}")).unwrap_or_default();
        eprintln!("no backups{of} in {}", report.repo);
    }
    output::emit(ctx.global.output, &report)
}

/// One line for tables: the consistency point of a backup.
fn consistency_summary(m: &manifest::Manifest) -> String {
    let c = &m.consistency;
    match m.component {
        Component::Postgres => {
            let mut parts = Vec::new();
            if let Some(lsn) = c.pointer("/dump/lsn").and_then(|v| v.as_str()) {
                parts.push(format!("dump at {lsn}"));
            }
            if let Some(lsn) = c.pointer("/base/endLsn").and_then(|v| v.as_str()) {
                parts.push(format!("base to {lsn}"));
            }
            if let Some(tl) = c.get("timeline").and_then(|v| v.as_i64()) {
                parts.push(format!("TL {tl}"));
            }
            parts.join(", ")
        }
        // Read field by field: a manifest of another version may lack one; the JSON is the fallback.
        Component::Kafka => {
            let topic = c.get("topic").and_then(|v| v.as_str());
            let partitions = c.get("partitions").and_then(|v| v.as_object()).map(|p| p.len());
            let retention = c.get("retentionMs").and_then(|v| v.as_i64());
            match (topic, partitions, retention) {
                (Some(t), Some(p), Some(r)) => {
                    let retention = if r < 0 { "unlimited".to_owned() } else { format!("{} h", r / 3_600_000) };
                    let exported = match c.get("exported").and_then(|v| v.as_u64()) {
                        Some(n) => format!(", {n} records exported"),
                        None => ", offsets only".to_owned(),
                    };
                    let plural = if p == 1 { "" } else { "s" };
                    format!("topic {t}: {p} partition{plural}, retention {retention}{exported}")
                }
                _ => c.to_string(),
            }
        }
        Component::Search => {
            let snapshot = c.get("snapshot").and_then(|v| v.as_str());
            let state = c.get("state").and_then(|v| v.as_str());
            let docs: Option<u64> =
                c.get("indices").and_then(|v| v.as_object()).map(|i| i.values().filter_map(|d| d.as_u64()).sum());
            match (snapshot, state, docs) {
                (Some(s), Some(st), Some(d)) => format!("snapshot {s} ({st}), {d} documents"),
                _ => c.to_string(),
            }
        }
        Component::Redis => {
            let node = c.get("node").and_then(|v| v.as_str());
            let role = c.get("role").and_then(|v| v.as_str());
            let keys = c.get("keys").and_then(|v| v.as_u64());
            match (node, role, keys) {
                (Some(n), Some(r), Some(k)) => format!("RDB from the {r} {n}, {k} keys"),
                _ => c.to_string(),
            }
        }
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// `--yes`, or an interactive "yes" on a terminal; without a terminal the restore is refused.
pub fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage("refusing to restore without confirmation: pass --yes (no terminal to ask on)"));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(usage("restore cancelled: nothing was changed"))
    }
}

/// A backup's manifest as the verb's result.
#[derive(Serialize)]
#[serde(transparent)]
pub struct ManifestReport(pub manifest::Manifest);

impl Report for ManifestReport {
    fn table(&self) -> comfy_table::Table {
        let m = &self.0;
        let mut t = output::new_table(["backup", "component", "size", "duration", "consistency point"]);
        let secs = (m.finished - m.started).num_milliseconds() as f64 / 1000.0;
        t.add_row(vec![
            m.id.clone(),
            m.component.to_string(),
            human_bytes(m.size),
            format!("{secs:.1} s"),
            consistency_summary(m),
        ]);
        t
    }
}

/// A comparison row of a restore's verification.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

impl Check {
    pub fn new(name: impl Into<String>, expected: impl fmt::Display, actual: impl fmt::Display, ok: bool) -> Check {
        Check { name: name.into(), expected: expected.to_string(), actual: actual.to_string(), ok }
    }
}

/// What a restore did and how it verified.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub backup: String,
    pub component: Component,
    pub target: String,
    pub point_in_time: Option<String>,
    pub duration_seconds: f64,
    pub checks: Vec<Check>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Add the duration against each RTO target of the guide.
    pub fn add_rto(&mut self, took: Duration) {
        self.duration_seconds = took.as_secs_f64();
        for (scenario, target) in RTO_TARGETS {
            self.checks.push(Check::new(
                format!("RTO ({scenario})"),
                format!("< {}", human_duration(target)),
                human_duration(took),
                took < target,
            ));
        }
    }
}

impl Report for RestoreReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["check", "expected", "actual", "result"]);
        for c in &self.checks {
            t.add_row(vec![
                c.name.clone(),
                c.expected.clone(),
                c.actual.clone(),
                if c.ok { "ok" } else { "FAILED" }.into(),
            ]);
        }
        t
    }
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Run one backup or restore and write its evidence record (verb "backup"/"restore", subject the
/// component) when a cluster is configured; never fails the verb for the record's sake. A usage
/// error (nothing ran) writes no record; a verification failure is exit 1 after its report.
async fn recorded(
    ctx: &Ctx<'_>,
    verb: &str,
    component: Component,
    work: impl std::future::Future<Output = anyhow::Result<Evidence>>,
) -> anyhow::Result<()> {
    let started = Utc::now();
    let result = work.await;
    let evidence = match &result {
        Ok(e) => e.clone(),
        Err(e) if Failure::classify(e) == Failure::Usage => return result.map(|_| ()),
        Err(e) => Evidence::new(verb, Outcome::Error, format!("{component}: {}", crate::error::chain(e)), started)
            .subject(component.as_str()),
    };
    let kube = crate::kube::KubeSettings::resolve(ctx.global, ctx.targets());
    evidence::record_best_effort(&kube, &ctx.global.namespace, &evidence).await;
    match result {
        Ok(e) if e.outcome == Outcome::Failure => Err(CheckFailed(e.summary).into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The evidence of a completed backup.
pub fn backup_evidence(m: &manifest::Manifest) -> Evidence {
    let secs = (m.finished - m.started).num_milliseconds() as f64 / 1000.0;
    Evidence::new(
        "backup",
        Outcome::Success,
        format!("{} backup {}: {} in {} files, {secs:.1} s", m.component, m.id, human_bytes(m.size), m.files.len()),
        m.started,
    )
    .subject(m.component.as_str())
    .figure("backupId", &m.id)
    .figure("bytes", m.size)
    .figure("files", m.files.len())
    .figure("durationSeconds", secs)
    .figure("serverVersion", &m.server_version)
}

impl RestoreReport {
    /// The evidence of this restore: success when every check passed (RTO included).
    pub fn evidence(&self, started: DateTime<Utc>) -> Evidence {
        let failed: Vec<&str> = self.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        let outcome = if failed.is_empty() { Outcome::Success } else { Outcome::Failure };
        let summary = if failed.is_empty() {
            format!(
                "{} restored from {} into {} in {}; {} checks passed",
                self.component,
                self.backup,
                self.target,
                human_duration(Duration::from_secs_f64(self.duration_seconds)),
                self.checks.len()
            )
        } else {
            format!(
                "{} restore from {} into {}: failed {}",
                self.component,
                self.backup,
                self.target,
                failed.join(", ")
            )
        };
        let mut e = Evidence::new("restore", outcome, summary, started)
            .subject(self.component.as_str())
            .figure("backupId", &self.backup)
            .figure("durationSeconds", self.duration_seconds)
            .figure("rtoSeconds", RTO_TARGETS[0].1.as_secs())
            .figure("checks", &self.checks);
        if let Some(p) = &self.point_in_time {
            e = e.figure("pointInTime", p);
        }
        e
    }
}

// ---------------------------------------------------------------------------------------------
// status, prune, verify

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusRow {
    component: Component,
    cadence_seconds: u64,
    rpo_target_seconds: u64,
    newest: Option<String>,
    newest_finished: Option<DateTime<Utc>>,
    age_seconds: Option<i64>,
    last_verified: Option<DateTime<Utc>>,
    overdue: bool,
    /// Ids of this component's damaged backups (never counted as the newest).
    damaged: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReport {
    repo: String,
    components: Vec<StatusRow>,
}

impl Report for StatusReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table([
            "component",
            "cadence (guide)",
            "newest backup",
            "age (current RPO)",
            "last verify",
            "status",
        ]);
        for r in &self.components {
            t.add_row(vec![
                r.component.to_string(),
                human_duration(Duration::from_secs(r.cadence_seconds)),
                r.newest.clone().unwrap_or_else(|| "none".into()),
                r.age_seconds
                    .map(|a| human_duration(Duration::from_secs(a.max(0) as u64)))
                    .unwrap_or_else(|| "-".into()),
                r.last_verified.map(|v| v.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into()),
                match (r.overdue, r.damaged.len()) {
                    (true, 0) => "OVERDUE".to_owned(),
                    (false, 0) => "ok".to_owned(),
                    (o, n) => format!("{}, {n} damaged", if o { "OVERDUE" } else { "ok" }),
                },
            ]);
        }
        t
    }
}

fn status(ctx: &Ctx, args: &BackupStatusArgs) -> anyhow::Result<()> {
    let only = args.component.as_deref().map(Component::parse).transpose()?;
    ctx.repo.require_exists()?;
    let all = ctx.repo.list(None)?;
    let damaged = ctx.repo.damaged(None)?;
    let configured: Vec<Component> = match ctx.targets() {
        Some(t) => Component::ALL
            .into_iter()
            .filter(|c| match c {
                Component::Postgres => t.postgres.is_some(),
                Component::Search => t.search.is_some(),
                Component::Redis => t.redis.is_some(),
                Component::Kafka => t.kafka.is_some(),
            })
            .collect(),
        None => Component::ALL.into_iter().filter(|c| all.iter().any(|b| b.manifest.component == *c)).collect(),
    };
    let components: Vec<Component> = match only {
        Some(c) => vec![c],
        None => configured,
    };
    if components.is_empty() {
        return Err(usage("no component to report on: name one with --component, or give a targets file"));
    }
    let now = Utc::now();
    let grace = chrono::Duration::minutes(args.grace_minutes as i64);
    let mut rows = Vec::new();
    for c in components {
        let policy = c.policy();
        let newest = all.iter().find(|b| b.manifest.component == c);
        let last_verified = all.iter().filter(|b| b.manifest.component == c).filter_map(|b| b.verified).max();
        let age = newest.map(|b| now - b.manifest.finished);
        let allowed = chrono::Duration::from_std(policy.cadence).unwrap_or_default() + grace;
        rows.push(StatusRow {
            component: c,
            cadence_seconds: policy.cadence.as_secs(),
            rpo_target_seconds: RPO_TARGET.as_secs(),
            newest: newest.map(|b| b.manifest.id.clone()),
            newest_finished: newest.map(|b| b.manifest.finished),
            age_seconds: age.map(|a| a.num_seconds()),
            last_verified,
            overdue: age.is_none_or(|a| a > allowed),
            damaged: damaged.iter().filter(|d| d.component == c).map(|d| d.id.clone()).collect(),
        });
    }
    let report = StatusReport { repo: ctx.repo.display(), components: rows };
    output::emit(ctx.global.output, &report)?;
    let overdue: Vec<String> =
        report.components.iter().filter(|r| r.overdue).map(|r| r.component.to_string()).collect();
    if overdue.is_empty() {
        Ok(())
    } else {
        Err(CheckFailed(format!("backups overdue: {}", overdue.join(", "))).into())
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PruneRow {
    id: String,
    component: Option<Component>,
    age_hours: f64,
    action: String,
    reason: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PruneReport {
    dry_run: bool,
    rows: Vec<PruneRow>,
}

impl Report for PruneReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["backup", "component", "age", "action", "why"]);
        for r in &self.rows {
            t.add_row(vec![
                r.id.clone(),
                r.component.map(|c| c.to_string()).unwrap_or_else(|| "(incomplete)".into()),
                format!("{:.1} h", r.age_hours),
                r.action.clone(),
                r.reason.clone(),
            ]);
        }
        t
    }
}

async fn prune(ctx: &Ctx<'_>, args: &BackupPruneArgs) -> anyhow::Result<()> {
    let only = args.component.as_deref().map(Component::parse).transpose()?;
    ctx.repo.require_exists()?;
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut doomed = Vec::new();
    for c in Component::ALL.into_iter().filter(|c| only.is_none_or(|o| o == *c)) {
        let retention = chrono::Duration::from_std(c.policy().retention).unwrap_or_default();
        for (i, b) in ctx.repo.list(Some(c))?.into_iter().enumerate() {
            let age = now - b.manifest.finished;
            let (action, reason) = if i == 0 {
                ("keep", "newest backup, always kept".to_owned())
            } else if age > retention {
                ("delete", format!("older than the guide's {} retention", human_duration(c.policy().retention)))
            } else {
                ("keep", "within retention".to_owned())
            };
            rows.push(PruneRow {
                id: b.manifest.id.clone(),
                component: Some(c),
                age_hours: age.num_seconds() as f64 / 3600.0,
                action: action.into(),
                reason,
            });
            if action == "delete" {
                doomed.push(b);
            }
        }
    }
    // Damaged backups are never deleted by prune: their age cannot be trusted, and the directory
    // may be repairable or be evidence of what went wrong; an operator removes them by hand.
    for d in ctx.repo.damaged(only)? {
        let age = std::fs::metadata(&d.dir).and_then(|m| m.modified()).ok().and_then(|m| m.elapsed().ok());
        rows.push(PruneRow {
            id: d.id,
            component: Some(d.component),
            age_hours: age.unwrap_or_default().as_secs_f64() / 3600.0,
            action: "keep".into(),
            reason: format!("damaged ({}): not restorable; repair or remove it by hand", d.reason),
        });
    }
    // Interrupted backups: deleted once a day old (a younger one may still be running).
    let mut stale_partials = Vec::new();
    if only.is_none() {
        for (id, modified) in ctx.repo.partial_ages() {
            let age = modified.and_then(|m| m.elapsed().ok()).unwrap_or_default();
            let old = age > Duration::from_secs(24 * 3600);
            rows.push(PruneRow {
                id: id.clone(),
                component: None,
                age_hours: age.as_secs_f64() / 3600.0,
                action: if old { "delete" } else { "keep" }.into(),
                reason: if old { "interrupted backup" } else { "incomplete, may still be running" }.into(),
            });
            if old {
                stale_partials.push(id);
            }
        }
    }
    let report = PruneReport { dry_run: !args.confirm, rows };
    output::emit(ctx.global.output, &report)?;
    if !args.confirm {
        eprintln!(
            "dry run: {} backups would be deleted; run again with --confirm to delete them",
            doomed.len() + stale_partials.len()
        );
        return Ok(());
    }
    for b in &doomed {
        if b.manifest.component == Component::Search {
            search::delete_snapshot(ctx, &b.manifest)
                .await
                .with_context(|| format!("deleting the snapshot of {}", b.manifest.id))?;
        }
        ctx.repo.remove(b)?;
    }
    for id in &stale_partials {
        ctx.repo.remove_partial(id)?;
    }
    eprintln!("deleted {} backups", doomed.len() + stale_partials.len());
    Ok(())
}

async fn verify(ctx: &Ctx<'_>, args: &BackupVerifyArgs) -> anyhow::Result<()> {
    ctx.repo.require_exists()?;
    let stored = if args.id == "latest" {
        ctx.repo.open("latest", Component::parse(&args.component)?)?
    } else {
        ctx.repo.find(&args.id)?
    };
    let component = stored.manifest.component;
    let scratch = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = async {
        let started = Utc::now();
        let t0 = std::time::Instant::now();
        let checks = match component {
            Component::Postgres => postgres::verify(&stored, &scratch).await?,
            Component::Search => search::verify(ctx, &stored).await?,
            Component::Redis => redis::verify(&stored).await?,
            Component::Kafka => kafka::verify(&stored)?,
        };
        let mut report = RestoreReport {
            backup: stored.manifest.id.clone(),
            component,
            target: "scratch (backup verify)".into(),
            point_in_time: None,
            duration_seconds: 0.0,
            checks,
        };
        report.add_rto(t0.elapsed());
        output::emit(ctx.global.output, &report)?;
        if report.ok() {
            ctx.repo.mark_verified(&stored, Utc::now(), &serde_json::to_value(&report.checks)?)?;
        }
        Ok(report.evidence(started).figure("verify", true))
    };
    recorded(ctx, "restore", component, work).await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllRow {
    component: Component,
    outcome: String,
    summary: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllReport {
    backups: Vec<AllRow>,
}

impl Report for AllReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["component", "outcome", "summary"]);
        for r in &self.backups {
            t.add_row(vec![r.component.to_string(), r.outcome.clone(), r.summary.clone()]);
        }
        t
    }
}

/// `backup all`: every component of the targets file, in turn; one failing does not stop the others.
async fn all(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let t = ctx.targets().ok_or_else(|| usage("backup all needs a targets file (--targets FILE)"))?;
    // A CronJob backing up nothing must not report success.
    if t.postgres.is_none() && t.search.is_none() && t.redis.is_none() && t.kafka.is_none() {
        return Err(usage(
            "backup all: the targets file configures no component (postgres, search, redis or kafka): nothing to back up",
        ));
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    let mut classes = Vec::new();
    for c in Component::ALL {
        let result = match c {
            Component::Postgres if t.postgres.is_some() => {
                let a = crate::cli::PgBackupArgs { method: crate::cli::PgMethod::All, wal_archive: None };
                recorded(ctx, "backup", c, postgres::backup(ctx, &a)).await
            }
            Component::Search if t.search.is_some() => {
                let a = crate::cli::SearchBackupArgs { repository: None, register_fs: None, indices: "*".into() };
                recorded(ctx, "backup", c, search::backup(ctx, &a)).await
            }
            Component::Redis if t.redis.is_some() => {
                recorded(ctx, "backup", c, redis::backup(ctx, &crate::cli::RedisBackupArgs {})).await
            }
            Component::Kafka if t.kafka.is_some() => {
                let a = crate::cli::KafkaBackupArgs { export: false, topic: None };
                recorded(ctx, "backup", c, kafka::backup(ctx, &a)).await
            }
            _ => continue,
        };
        let newest = ctx.repo.list(Some(c)).ok().and_then(|l| l.into_iter().next());
        match result {
            Ok(()) => rows.push(AllRow {
                component: c,
                outcome: "ok".into(),
                summary: newest
                    .map(|b| format!("{} ({})", b.manifest.id, human_bytes(b.manifest.size)))
                    .unwrap_or_default(),
            }),
            Err(e) => {
                failed.push(c.to_string());
                classes.push(Failure::classify(&e));
                rows.push(AllRow {
                    component: c,
                    outcome: "FAILED".into(),
                    summary: crate::error::chain(&e).to_string(),
                });
            }
        }
    }
    output::emit(ctx.global.output, &AllReport { backups: rows })?;
    if failed.is_empty() {
        return Ok(());
    }
    let msg = format!("backups failed: {}", failed.join(", "));
    // The exit code says what kind of failure it was when they are all of one kind: every target
    // unreachable is exit 3 (a dependency), every one misconfigured exit 2; a mix is exit 1.
    match classes.first() {
        Some(Failure::Unreachable) if classes.iter().all(|c| *c == Failure::Unreachable) => {
            Err(crate::error::Unreachable {
                what: format!("the backup target of {}", failed.join(", ")),
                detail: "see the table".into(),
            }
            .into())
        }
        Some(Failure::Usage) if classes.iter().all(|c| *c == Failure::Usage) => Err(usage(msg)),
        _ => Err(anyhow::anyhow!(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(component: Component, consistency: serde_json::Value) -> String {
        let now = Utc::now();
        let m = manifest::Manifest::new(
            "x".into(),
            component,
            now,
            now,
            Vec::new(),
            String::new(),
            String::new(),
            consistency,
        );
        consistency_summary(&m)
    }

    #[test]
    fn consistency_points_read_as_sentences_and_fall_back_to_their_json() {
        let kafka = json!({"topic": "audit-events", "retentionMs": 604800000, "retentionOk": true,
                           "partitions": {"0": [0, 15], "1": [0, 30]}, "exported": 45});
        assert_eq!(
            summary(Component::Kafka, kafka),
            "topic audit-events: 2 partitions, retention 168 h, 45 records exported"
        );
        let offsets_only = json!({"topic": "t", "retentionMs": -1, "partitions": {"0": [3, 9]}});
        assert_eq!(summary(Component::Kafka, offsets_only), "topic t: 1 partition, retention unlimited, offsets only");
        let search = json!({"repository": "r", "snapshot": "s1", "uuid": "u", "state": "SUCCESS",
                            "indices": {"a": 3, "b": 4}, "shardsTotal": 2, "shardsFailed": 0});
        assert_eq!(summary(Component::Search, search), "snapshot s1 (SUCCESS), 7 documents");
        let redis = json!({"node": "redis://r:6379", "role": "replica", "keys": 12, "expires": 1});
        assert_eq!(summary(Component::Redis, redis), "RDB from the replica redis://r:6379, 12 keys");
        // A field missing (another version's manifest): the JSON as it is.
        assert_eq!(summary(Component::Redis, json!({"node": "n"})), r#"{"node":"n"}"#);
    }
}
