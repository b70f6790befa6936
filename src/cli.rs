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

/// `-n`'s default, and the defaults' `namespace.name`.
pub const DEFAULT_NAMESPACE: &str = "audit-trail";

/// Flags every verb understands, in kubectl's spirit.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the release (deploy, diff, rollback -f, check -f, smoke: overrides the values'
    /// namespace.name, which those verbs use when -n is not given).
    #[arg(short = 'n', long, global = true, default_value = DEFAULT_NAMESPACE, value_name = "NS")]
    pub namespace: String,
    /// Whether -n was given on the command line (not the default): set by `run` after parsing.
    #[arg(skip)]
    pub namespace_given: bool,
    /// Connection settings of the datastores and the service (YAML); see `targets` in the README.
    #[arg(long, global = true, env = "AUDCTL_TARGETS", value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Output format of results.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Disable colours (also honoured: the NO_COLOR environment variable).
    // NO_COLOR is set to any value by convention (NO_COLOR=1); a plain bool flag would refuse "1".
    #[arg(long, global = true, env = "NO_COLOR", value_parser = clap::builder::FalseyValueParser::new())]
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
    Check(CheckArgs),
    /// Sign off a checklist item no probe can prove.
    Attest(AttestArgs),
    /// Apply the release to the cluster, wait for it, roll back on failure.
    Deploy(DeployArgs),
    /// Show what a deploy would change in the cluster (exit 1 when something would).
    Diff(DiffArgs),
    /// List the recorded revisions of a release.
    History(HistoryArgs),
    /// Re-apply an earlier recorded revision of the release and wait for it.
    Rollback(RollbackArgs),
    /// Verify the running service end to end (D-Day smoke tests).
    Smoke(SmokeArgs),
    /// Generate load against the service and enforce latency/error thresholds.
    // Boxed: by far the largest arguments, which every other variant would be sized to.
    Load(Box<LoadArgs>),
    /// Back up PostgreSQL, Elasticsearch, Redis and Kafka.
    Backup(BackupArgs),
    /// Restore the datastores from a backup and verify the result.
    Restore(RestoreArgs),
    /// Rehearse the whole go-live on one machine and write the go-live report.
    Rehearse(PendingArgs),
    /// Verify an export of the audit trail offline: its hash chain, and a signed checkpoint.
    Verify(VerifyArgs),
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
            Command::Verify(_) => "verify",
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
    /// Set values after the files, as Helm: --set autoscaling.maxReplicas=10,env[0].value=x, lists {a,b}; repeatable.
    // Doc comments are clap's help text, printed as written: `[0]` stays unescaped.
    #[allow(rustdoc::broken_intra_doc_links)]
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

/// `audctl check`: the go-live checklist proven live.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only the items of this phase (preprod, j-7, j-1, d-day, j+1); repeatable. Default: every phase.
    #[arg(long, value_name = "PHASE", value_parser = ["preprod", "j-7", "j-1", "d-day", "j+1"])]
    pub phase: Vec<String>,
    /// Only these items (ids, comma-separated or repeated).
    #[arg(long, value_name = "ID,..")]
    pub only: Vec<String>,
    /// Leave these items out (ids, comma-separated or repeated).
    #[arg(long, value_name = "ID,..")]
    pub skip: Vec<String>,
    /// Values file, as for render (manifest probes check exactly what would be deployed); repeatable.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value after the files, as for render; repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Overall deadline of the run (each probe also has its own timeout), e.g. 60s, 2m.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub timeout: String,
    /// Checklist file instead of the embedded checklists/go-live.yaml.
    #[arg(long, value_name = "FILE")]
    pub checklist: Option<PathBuf>,
    /// Waivers file (item, reason, owner, expires); default: checklists/waivers.yaml when present.
    #[arg(long, value_name = "FILE")]
    pub waivers: Option<PathBuf>,
    /// Oldest evidence record accepted by evidence items, overriding each item's maxAge (e.g. 7d).
    #[arg(long, value_name = "DURATION")]
    pub evidence_max_age: Option<String>,
    /// Do not write this run's evidence record to the cluster.
    #[arg(long)]
    pub no_record: bool,
    /// List the registered probes and exit.
    #[arg(long)]
    pub list_probes: bool,
    /// Also write an event in a dedicated tenant, read it back and verify its chain (service.write).
    /// Off by default: a check should not write to production unless asked.
    #[arg(long)]
    pub write_probe: bool,
}

/// `audctl attest`: sign off a checklist item no probe can prove.
#[derive(Debug, Args)]
pub struct AttestArgs {
    /// Checklist item id (see `audctl check -o json`).
    #[arg(value_name = "ITEM", required_unless_present = "list")]
    pub item: Option<String>,
    /// Who signs off (name or e-mail).
    #[arg(long, value_name = "NAME", required_unless_present_any = ["list", "revoke"])]
    pub by: Option<String>,
    /// What was checked, where the proof is.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Link to the proof (runbook, ticket, report).
    #[arg(long, value_name = "URL")]
    pub link: Option<String>,
    /// When the sign-off lapses: YYYY-MM-DD (valid through that day, UTC) or RFC 3339.
    #[arg(long, value_name = "DATE")]
    pub expires: Option<String>,
    /// List the attestations of the namespace.
    #[arg(long, conflicts_with_all = ["item", "by", "note", "link", "expires", "revoke"])]
    pub list: bool,
    /// Remove the attestation of ITEM.
    #[arg(long, conflicts_with_all = ["by", "note", "link", "expires"])]
    pub revoke: bool,
    /// Checklist file instead of the embedded checklists/go-live.yaml.
    #[arg(long, value_name = "FILE")]
    pub checklist: Option<PathBuf>,
}

/// `audctl deploy`: render (same inputs as `render`), apply server-side, wait, record the revision.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Values file, merged over the defaults; repeat to layer files (later files win).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value after the files (as for `render`); repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Use the *.j2 templates of this directory instead of the embedded ones (as for `render`).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Server-side dry run: the API server validates and admits every object, nothing changes.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub apply: ApplyArgs,
    /// Leave a failed rollout as it is instead of rolling back to the last good revision.
    #[arg(long)]
    pub no_rollback: bool,
    /// Canary rollout: the new version takes these traffic weights in turn (percent, increasing,
    /// e.g. 10,25,50,100) while its error rate and p99 stay under the rendered alert rules'
    /// thresholds; promoted after the last step, removed at the first breach (exit 1).
    #[arg(long, value_name = "WEIGHTS", value_parser = parse_canary, conflicts_with = "dry_run")]
    pub canary: Option<CanaryWeights>,
    /// How long each canary step is watched before it is judged.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION", requires = "canary")]
    pub step_duration: std::time::Duration,
    /// Read the canary's metrics here (repeatable) instead of from each canary pod through the API
    /// server's pod proxy (e.g. a port-forward, or a sidecar that is reachable from CI).
    #[arg(long, value_name = "URL", value_parser = parse_url, requires = "canary")]
    pub canary_metrics_url: Vec<String>,
}

impl GlobalArgs {
    /// Value overrides the verbs that render add after their own `--set`s: an explicit `-n`.
    pub fn render_sets(&self, sets: &[String]) -> Vec<String> {
        let mut all = sets.to_vec();
        if self.namespace_given {
            all.push(format!("namespace.name={}", self.namespace));
        }
        all
    }
}

/// The weights of `--canary`.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryWeights(pub Vec<u8>);

fn parse_canary(s: &str) -> Result<CanaryWeights, String> {
    crate::deploy::canary::parse_weights(s).map(CanaryWeights)
}

fn parse_url(s: &str) -> Result<String, String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(s.to_owned()),
        Ok(u) => Err(format!("{s}: scheme {} is not http or https", u.scheme())),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// Settings shared by `deploy` and `rollback`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Take over fields another field manager owns (default: refuse and name the manager and field).
    #[arg(long)]
    pub force_conflicts: bool,
    /// How long to wait for the rollout to be ready (and for a busy release lock), e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
    /// Lease of the release lock: renewed while this run lives; after it expires, a killed run's
    /// lock is taken over by the next deploy.
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub lock_lease: std::time::Duration,
    /// Take the release lock even though another run holds a live lease.
    #[arg(long)]
    pub force_unlock: bool,
}

/// `audctl diff`: server-side dry run compared with the live objects.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Values file, merged over the defaults; repeat to layer files (later files win).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value after the files (as for `render`); repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Use the *.j2 templates of this directory instead of the embedded ones (as for `render`).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

/// `audctl history`: revisions recorded in the namespace (-n).
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Release name (default: the only release recorded in the namespace).
    #[arg(long, value_name = "NAME")]
    pub release: Option<String>,
}

/// `audctl rollback [REVISION]`: re-apply a recorded revision (default: the previous good one).
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Revision to return to (see `audctl history`); default: the one before the current, or the
    /// deployed one when the latest failed or was interrupted (README, "Which revision rollback
    /// returns to").
    pub revision: Option<u32>,
    /// Release name (default: the values' name with -f, else the only release recorded in the namespace).
    #[arg(long, value_name = "NAME")]
    pub release: Option<String>,
    /// Values of the release (as for `deploy`): its namespace, name and expected cluster
    /// (`cluster.context` / `cluster.server`); another cluster is refused as deploy refuses it.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value after the files (as for `deploy`); repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub apply: ApplyArgs,
}

/// "90s", "5m", "1h", "1m30s" or plain seconds (one reading for every flag: [`crate::duration`]).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse_or_seconds(s)
}

/// A duration that must not be zero: `--timeout 0s` would fail every rollout at once (and a zero
/// lease could never be renewed in time), as `check --timeout 0s` is refused.
pub fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0 (e.g. 90s, 5m)".to_owned()),
        d => Ok(d),
    }
}

/// `audctl verify`: an export (`GET /api/v1/events/export?tenantId=`) checked without the server.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The NDJSON export of one tenant, in chain order (`-` for stdin).
    #[arg(value_name = "EXPORT")]
    pub export: PathBuf,
    /// A signed checkpoint of the tenant (`GET /api/v1/integrity/checkpoints?tenantId=`, or a file
    /// the server published); the export must contain its head. Needs --public-key.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub checkpoint: Option<PathBuf>,
    /// The server's Ed25519 public key: PEM, or the JSON of `GET /api/v1/integrity/public-key`.
    #[arg(long, value_name = "FILE", requires = "checkpoint")]
    pub public_key: Option<PathBuf>,
}

/// Where the audit service is and how to authenticate (shared by smoke and load).
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Base URL of the service (default: `audit.url` of --targets, then the first ingress host of the values).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// File holding the API key (default: the AUDIT_API_KEY environment variable, then `audit.apiKey` of --targets).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// PEM file of a CA (or self-signed certificate) to trust for https, besides the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Tenant to write to (default: `audit.tenant` of --targets, then `audctl-smoke`). For `load`,
    /// the prefix of its --tenants tenants (`ID-0`..; default `audctl-load`), or with --tenants 1
    /// the tenant itself.
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
}

/// `audctl smoke`: end-to-end verification of the running service.
#[derive(Debug, Args)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Values files the alert rules are rendered from (the metrics they query must be exported).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Set one value after the files (as for render); repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Render with the *.j2 templates of this directory instead of the embedded ones.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
    /// Fail when responses carry no rate-limit headers (RateLimit-*, X-RateLimit-*).
    #[arg(long)]
    pub expect_rate_limit_headers: bool,
    /// Timeout of each HTTP request, e.g. 10s.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub timeout: String,
    /// Fail when the TLS certificate expires within this many days.
    #[arg(long, default_value_t = 14, value_name = "DAYS")]
    pub min_cert_days: u32,
}

/// Scenarios of `audctl load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// POST /api/v1/events, one generated event.
    Ingest,
    /// POST /api/v1/events/batch, --batch-size events of one tenant.
    Batch,
    /// GET /api/v1/events/{id} of an event seeded before the run.
    Read,
    /// GET /api/v1/events with tenant and actor filters.
    List,
    /// GET /api/v1/integrity/verify of a tenant.
    Verify,
    /// A plain GET of --url exactly as given (what wrk does, for comparisons).
    Get,
}

/// `audctl load`: generate load and decide the exit code with thresholds.
#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// What each request does.
    #[arg(long, value_enum, default_value_t = Scenario::Ingest, conflicts_with = "mix")]
    pub scenario: Scenario,
    /// Weighted mix of scenarios, e.g. ingest=70,read=20,list=10.
    #[arg(long, value_name = "NAME=WEIGHT,...")]
    pub mix: Option<String>,
    /// Open model: constant arrival rate in requests per second (with --duration).
    #[arg(long, value_name = "PER_SECOND", conflicts_with_all = ["stages", "concurrency"])]
    pub rate: Option<f64>,
    /// Open model with stages, k6 style: DURATION:TARGET_RATE,... ramping linearly, e.g. 30s:100,2m:500,30s:0.
    #[arg(long, value_name = "STAGES", conflicts_with_all = ["rate", "concurrency", "duration"])]
    pub stages: Option<String>,
    /// Closed model: this many requests in flight, each sent when the previous one answered.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Length of a --rate or --concurrency run, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub duration: String,
    /// Connections of the open model (requests beyond them wait, and their wait counts as latency).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub connections: usize,
    /// Tenants the generated events are spread over.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub tenants: usize,
    /// Events per request of the batch scenario.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub batch_size: usize,
    /// Timeout of each request, e.g. 10s.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub timeout: String,
    /// Threshold: p99 latency (corrected in the open model) at most this, e.g. 1s, 250ms (the guide's HighLatency alert).
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub max_p99: String,
    /// Threshold: share of failed requests at most this, e.g. 1% or 0.01 (the guide's HighErrorRate alert).
    #[arg(long, default_value = "1%", value_name = "RATE")]
    pub max_error_rate: String,
    /// Draw latency percentiles and throughput over time into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Distributed: run N local worker processes and merge their histograms.
    #[arg(long, value_name = "N", conflicts_with_all = ["worker", "workers"])]
    pub workers_local: Option<usize>,
    /// Distributed in the cluster: run N workers as the pods of a Job in namespace -n, follow their
    /// logs and merge their histograms (needs --worker-image; --url must be reachable from the pods).
    #[arg(long, value_name = "N", conflicts_with = "worker", requires = "worker_image")]
    pub workers: Option<usize>,
    /// Image of the --workers pods: one with `audctl` on its PATH, of this version.
    #[arg(long, value_name = "IMAGE", requires = "workers")]
    pub worker_image: Option<String>,
    /// JSON merge patch (RFC 7386) applied to the --workers Job, as kubectl run's --overrides:
    /// e.g. '{"spec":{"template":{"spec":{"nodeSelector":{"pool":"load"}}}}}'.
    #[arg(long, value_name = "JSON", requires = "workers")]
    pub worker_overrides: Option<String>,
    /// Print the Job --workers would create (YAML; the Secret's values are not shown) and exit.
    #[arg(long, requires = "workers")]
    pub dry_run: bool,
    /// Internal: run as worker INDEX/COUNT of a distributed run, streaming histograms on stdout.
    #[arg(long, hide = true, value_name = "INDEX/COUNT")]
    pub worker: Option<String>,
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
    /// Kafka: replay an exported backup (`backup kafka --export`) into a topic, each record to its
    /// partition in order, then compare every record.
    Kafka(KafkaRestoreArgs),
}

#[derive(Debug, Args)]
pub struct KafkaRestoreArgs {
    #[command(flatten)]
    pub common: RestoreCommon,
    /// Topic to restore into (default: the backup's). Created with the backup's partitions and
    /// retention when missing; an existing one must be empty with enough partitions (or --force).
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
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
    /// required), search `http(s)://host:9200`, redis `redis://:password@host:port`, Kafka
    /// `host:port,host:port` (default: the targets file's entry).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Restore over a target that already holds data (objects in the backup are dropped and
    /// recreated; for Kafka, the topic).
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
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(std::time::Duration::from_secs(7200)));
        assert!(parse_duration("5x").is_err() && parse_duration("5m3").is_err());
        assert_eq!(parse_positive_duration("0s"), Err("must be more than 0 (e.g. 90s, 5m)".to_owned()));
        assert_eq!(parse_positive_duration("0"), Err("must be more than 0 (e.g. 90s, 5m)".to_owned()));
        assert_eq!(parse_positive_duration("1ms"), Ok(std::time::Duration::from_millis(1)));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
