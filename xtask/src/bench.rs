//! `cargo xtask bench [server|render|check|deploy|backup]`: measured runs (not timed tests) of the speed targets.
//! Each target lives in its own module function; `all` runs them in turn.

use clap::ValueEnum;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// Everything below, in turn.
    All,
    /// The audit server against PostgreSQL, as ratios of the pgbench ceiling.
    Server,
    /// `audctl render` of values-prod.
    Render,
    /// `audctl check` against the testbed cluster and datastores: wall time vs the slowest probe.
    Check,
    /// `audctl deploy` of values-prod on the testbed vs `kubectl apply --server-side` + `rollout status`.
    Deploy,
    /// `audctl load`: generator speed vs wrk, honesty under a paused server, RSS over a soak.
    Load,
    /// `audctl backup postgres` against plain pg_dump on >= 1 GB of audit events; restore vs RTO.
    Backup,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = BenchTarget::All)]
    pub target: BenchTarget,
    /// Length of the load generator's memory soak, in seconds (the full soak: 600).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub soak: u64,
    /// Arguments after `--` go to the server benchmark (`-- --soak 300 --storage both`; see
    /// audit-server/examples/bench.rs).
    #[arg(last = true, value_name = "SERVER_BENCH_ARGS")]
    pub server_args: Vec<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let all = args.target == BenchTarget::All;
    if all || args.target == BenchTarget::Render {
        render()?;
    }
    if all || args.target == BenchTarget::Server {
        server(&args.server_args)?;
    }
    if all || args.target == BenchTarget::Check {
        check()?;
    }
    if all || args.target == BenchTarget::Deploy {
        deploy()?;
    }
    if all || args.target == BenchTarget::Load {
        crate::bench_load::run(args.soak)?;
    }
    if all || args.target == BenchTarget::Backup {
        backup()?;
    }
    Ok(())
}

/// Criterion benchmark of loading, checking and rendering values-prod (audctl's benches/render.rs);
/// the target is well under 50 ms per render.
fn render() -> anyhow::Result<()> {
    crate::util::step(
        "bench render (values-prod: values, templates, typed parse of every object)",
        crate::util::cargo().args(["bench", "-p", "audctl", "--bench", "render"]),
    )
}

/// The audit-server crate's `bench` example does the work (it starts PostgreSQL through the
/// testbed, runs pgbench for the ceiling, then drives the server; then the same ingest with and
/// without the Kafka outbox, alternating, on 3 testbed brokers), so xtask stays light. For other
/// durations or client counts pass its flags after `--`:
/// `cargo xtask bench server -- --seconds 30 --clients 64 --batch-clients 16 --soak 300`.
fn server(extra: &[String]) -> anyhow::Result<()> {
    crate::util::step(
        "bench server (pgbench ceiling, then the audit server on PostgreSQL on disk, then a soak)",
        crate::util::cargo().args(["run", "--release", "-p", "audit-server", "--example", "bench", "--"]).args(extra),
    )
}

/// audctl's `bench_check` example starts the testbed cluster and every datastore (PostgreSQL with a
/// replica and archiving, Redis Sentinel, Kafka x3, Elasticsearch) plus the audit server, applies the
/// production render and runs the whole checklist in-process several times: the ratio of a full
/// check's wall time to its slowest probe shows that probes run concurrently (target <= 1.2). More
/// runs: `cargo run --release -p audctl --example bench_check -- --runs 30`.
fn check() -> anyhow::Result<()> {
    crate::util::step(
        "bench check (testbed cluster, datastores and audit server: full check wall time vs its slowest probe)",
        crate::util::cargo().args(["run", "--release", "-p", "audctl", "--example", "bench_check"]),
    )
}

/// audctl's `bench_deploy` example starts the testbed cluster and times, in the same run and on the
/// same objects, `audctl deploy` of values-prod against `kubectl apply --server-side` followed by
/// `kubectl rollout status` (median of 3 rounds, fresh namespaces). Aim: audctl no slower.
fn deploy() -> anyhow::Result<()> {
    crate::util::step(
        "bench deploy (values-prod on the testbed: audctl deploy vs kubectl apply --server-side + rollout status)",
        crate::util::cargo().args(["run", "--release", "-p", "audctl", "--example", "bench_deploy"]),
    )
}

/// audctl's `bench_backup` example (release build; it finds the release audctl next to it): 1 GB of
/// audit events with valid chains loaded with COPY, then pg_dump and audctl twice each, alternating.
fn backup() -> anyhow::Result<()> {
    crate::util::step("build audctl (release)", crate::util::cargo().args(["build", "--release", "-p", "audctl"]))?;
    crate::util::step(
        "bench backup (pg_dump vs audctl backup postgres on >= 1 GB, restore vs RTO)",
        crate::util::cargo().args(["run", "--release", "-p", "audctl", "--example", "bench_backup"]),
    )
}
