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
    Smoke(SmokeArgs),
    /// Generate load against the service and enforce latency/error thresholds.
    Load(LoadArgs),
    /// Back up PostgreSQL, Elasticsearch, Redis and Kafka.
    Backup(PendingArgs),
    /// Restore the datastores from a backup and verify the result.
    Restore(PendingArgs),
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
    /// Tenant to write to (default: `audit.tenant` of --targets, then `audctl-smoke`).
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
    #[arg(long, value_name = "N", conflicts_with = "worker")]
    pub workers_local: Option<usize>,
    /// Internal: run as worker INDEX/COUNT of a distributed run, streaming histograms on stdout.
    #[arg(long, hide = true, value_name = "INDEX/COUNT")]
    pub worker: Option<String>,
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
