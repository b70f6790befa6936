//! Command-line definitions (clap derive). One args struct per verb; no behaviour lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "audctl",
    version,
    about = "Take the Audit Trail service to production on Kubernetes, and keep it there.",
    long_about = "audctl renders the Audit Trail release, checks the go-live checklist against the live \
                  cluster and datastores, deploys with automatic rollback, verifies the running service \
                  and protects its data.\n\nExit codes: 0 ok, 1 a check or threshold failed, 2 usage, \
                  configuration or input error, 3 a dependency was unreachable.",
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every verb understands, in kubectl's spirit.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the release.
    #[arg(short = 'n', long, global = true, default_value = "audit-trail", value_name = "NS")]
    pub namespace: String,
    /// Connection settings of the datastores and the service (YAML); see `targets` in the README.
    #[arg(long, global = true, env = "AUDCTL_TARGETS", value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Output format of results.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Disable colours (also honoured: the NO_COLOR environment variable).
    #[arg(long, global = true, env = "NO_COLOR")]
    pub no_color: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); AUDCTL_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout.
    Json,
    /// One YAML document on stdout.
    Yaml,
    /// JUnit XML, for CI systems (check, smoke, load).
    Junit,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render values files into Kubernetes manifests.
    Render(RenderArgs),
    /// Run the go-live checklist as live probes against cluster and datastores.
    Check(PendingArgs),
    /// Sign off a checklist item no probe can prove.
    Attest(PendingArgs),
    /// Apply the release to the cluster, wait for it, roll back on failure.
    Deploy(PendingArgs),
    /// Show what a deploy would change in the cluster.
    Diff(PendingArgs),
    /// List the releases deployed to the cluster.
    History(PendingArgs),
    /// Roll the release back to an earlier revision.
    Rollback(PendingArgs),
    /// Verify the running service end to end (D-Day smoke tests).
    Smoke(PendingArgs),
    /// Generate load against the service and enforce latency/error thresholds.
    Load(PendingArgs),
    /// Back up PostgreSQL, Elasticsearch, Redis and Kafka.
    Backup(BackupArgs),
    /// Restore the datastores from a backup and verify the result.
    Restore(RestoreArgs),
    /// Rehearse the whole go-live on one machine and write the go-live report.
    Rehearse(PendingArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
    /// Print the man page (roff); used by `cargo xtask man`.
    #[command(hide = true)]
    Man,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Render(_) => "render",
            Command::Check(_) => "check",
            Command::Attest(_) => "attest",
            Command::Deploy(_) => "deploy",
            Command::Diff(_) => "diff",
            Command::History(_) => "history",
            Command::Rollback(_) => "rollback",
            Command::Smoke(_) => "smoke",
            Command::Load(_) => "load",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::Rehearse(_) => "rehearse",
            Command::Completions(_) => "completions",
            Command::Man => "man",
        }
    }
}

/// `audctl render`: values files to Kubernetes manifests.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Values file, merged over the defaults; repeat to layer files (later files win).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value after the files, e.g. --set autoscaling.maxReplicas=10 or env[0].value=x; repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Use the *.j2 templates of this directory instead of the embedded ones.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Write one file per object into DIR (in apply order) instead of YAML on stdout.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Print the JSON Schema of the values and exit.
    #[arg(long, conflicts_with_all = ["values", "set", "templates", "output_dir"])]
    pub schema: bool,
}

/// `audctl backup`: take, list, check and prune backups.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup repository (a directory); default: `backup.repo` in the targets file.
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// PostgreSQL: pg_dump (custom format) and pg_basebackup with the WAL archive.
    Postgres(PgBackupArgs),
    /// Elasticsearch/OpenSearch: a snapshot through the snapshot API.
    Search(SearchBackupArgs),
    /// Redis: a consistent RDB copy (replica sync, from a replica when Sentinel has a healthy one).
    Redis(RedisBackupArgs),
    /// Kafka: check the audit topic's retention (>= 7 days), record offsets; --export copies records.
    Kafka(KafkaBackupArgs),
    /// Every component named in the targets file, in turn (the CronJobs' entry point).
    All,
    /// List the complete backups in the repository, newest first.
    List(BackupListArgs),
    /// Current RPO per component against the guide's cadence; exit 1 when a backup is overdue.
    Status(BackupStatusArgs),
    /// Delete backups past the guide's retention (dry run unless --confirm).
    Prune(BackupPruneArgs),
    /// Test-restore a backup into scratch instances and run the restore's verification.
    Verify(BackupVerifyArgs),
}

#[derive(Debug, Args)]
pub struct BackupStatusArgs {
    /// Only this component (postgres, search, redis, kafka).
    #[arg(long, value_name = "COMPONENT")]
    pub component: Option<String>,
    /// Minutes a backup may run late beyond its cadence before it counts as overdue.
    #[arg(long, default_value_t = 15, value_name = "MINUTES")]
    pub grace_minutes: u64,
}

#[derive(Debug, Args)]
pub struct BackupPruneArgs {
    /// Only this component (postgres, search, redis, kafka).
    #[arg(long, value_name = "COMPONENT")]
    pub component: Option<String>,
    /// Delete for real (without it, only show what would be deleted).
    #[arg(long)]
    pub confirm: bool,
}

#[derive(Debug, Args)]
pub struct BackupVerifyArgs {
    /// Backup id (see `audctl backup list`), or `latest` with --component.
    #[arg(value_name = "BACKUP_ID")]
    pub id: String,
    /// With `latest`: whose newest backup (postgres, search, redis, kafka).
    #[arg(long, value_name = "COMPONENT", default_value = "postgres")]
    pub component: String,
    /// Where scratch instances live (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KafkaBackupArgs {
    /// Copy the topic's records into the backup (one JSON line per record, per partition).
    #[arg(long)]
    pub export: bool,
    /// Topic (default: `kafka.topic` in the targets file, `audit-events`).
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct RedisBackupArgs {}

#[derive(Debug, Args)]
pub struct SearchBackupArgs {
    /// Snapshot repository on the cluster (default: `search.snapshotRepository` in the targets file).
    #[arg(long, value_name = "NAME")]
    pub repository: Option<String>,
    /// Register the repository first, as a shared-filesystem (fs) repository at this location (a
    /// directory listed in the nodes' path.repo).
    #[arg(long, value_name = "DIR")]
    pub register_fs: Option<PathBuf>,
    /// Indices to snapshot (comma-separated names or patterns).
    #[arg(long, default_value = "*", value_name = "PATTERN")]
    pub indices: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PgMethod {
    /// Logical dump and physical base backup with WAL (the default: restore and point in time).
    All,
    /// Logical dump only (pg_dump custom format).
    Dump,
    /// Physical base backup and WAL only (point-in-time recovery).
    Base,
}

#[derive(Debug, Args)]
pub struct PgBackupArgs {
    /// What to take.
    #[arg(long, value_enum, default_value_t = PgMethod::All)]
    pub method: PgMethod,
    /// Directory of the server's WAL archive to copy into the backup (default: `postgres.walArchive`
    /// in the targets file).
    #[arg(long, value_name = "DIR")]
    pub wal_archive: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackupListArgs {
    /// Only this component's backups (postgres, search, redis, kafka).
    #[arg(long, value_name = "COMPONENT")]
    pub component: Option<String>,
}

/// `audctl restore`: restore a datastore from a backup, then verify it.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup repository (a directory); default: `backup.repo` in the targets file.
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RestoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// PostgreSQL: pg_restore of the dump into an empty database, or point-in-time recovery.
    Postgres(PgRestoreArgs),
    /// Elasticsearch/OpenSearch: restore the snapshot's indices, then count their documents.
    Search(SearchRestoreArgs),
    /// Redis: copy every key with its TTL into the target, then compare key counts and TTLs.
    Redis(RedisRestoreArgs),
}

#[derive(Debug, Args)]
pub struct RedisRestoreArgs {
    #[command(flatten)]
    pub common: RestoreCommon,
}

#[derive(Debug, Args)]
pub struct SearchRestoreArgs {
    #[command(flatten)]
    pub common: RestoreCommon,
}

/// What every restore asks for.
#[derive(Debug, Args)]
pub struct RestoreCommon {
    /// Backup id (see `audctl backup list`), or `latest`.
    #[arg(value_name = "BACKUP_ID")]
    pub id: String,
    /// Where to restore: PostgreSQL `postgres://user@host:port/db` (password in PGPASSWORD or inline;
    /// required), search `http(s)://host:9200`, redis `redis://:password@host:port` (default: the
    /// targets file's entry).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Restore over a target that already holds data (objects in the backup are dropped and recreated).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PgRestoreArgs {
    #[command(flatten)]
    pub common: RestoreCommon,
    /// Point-in-time recovery to this time (RFC 3339, e.g. 2026-12-01T06:30:00Z), from the base
    /// backup and the WAL.
    #[arg(long, value_name = "TIME", group = "pitr")]
    pub to_time: Option<String>,
    /// Point-in-time recovery up to this WAL location (e.g. 0/3000148).
    #[arg(long, value_name = "LSN", group = "pitr")]
    pub to_lsn: Option<String>,
    /// Point-in-time recovery up to this transaction id (included).
    #[arg(long, value_name = "XID", group = "pitr")]
    pub to_xid: Option<String>,
    /// Point-in-time recovery up to this named restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME", group = "pitr")]
    pub to_name: Option<String>,
    /// WAL archive directory with segments newer than the backups (default: `postgres.walArchive`
    /// in the targets file); read-only.
    #[arg(long, value_name = "DIR")]
    pub wal_archive: Option<PathBuf>,
    /// Where the temporary recovery instance lives (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
}

/// Arguments of a verb that is not built yet: none are accepted.
#[derive(Debug, Args)]
pub struct PendingArgs {}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
