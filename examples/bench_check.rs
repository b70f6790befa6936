//! `cargo xtask bench check`: wall time of a full `audctl check` against the testbed cluster, compared
//! with its slowest probe. Probes run concurrently, so a run should take about as long as its slowest
//! probe (target: wall / slowest <= 1.2), not the sum of all of them.
//!
//! Starts the testbed's Kubernetes (`cargo xtask deps install` first), applies the production render,
//! then runs the check in-process (the same code as the binary) `--runs` times after one warm-up.

use std::io::Write;
use std::process::Stdio;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Measured runs after the warm-up.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runs = args.runs.max(1);
    let kube = testbed::kube().await?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prod = root.join("values/values-prod.yaml");
    let values = audctl::values::load(std::slice::from_ref(&prod), &[])?;
    let stream = audctl::render::to_stream(&audctl::render::render(&values, None)?);
    let mut apply = kube
        .kubectl()
        .args(["apply", "--server-side", "--field-manager=audctl-bench", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    apply.stdin.take().ok_or_else(|| anyhow::anyhow!("kubectl stdin"))?.write_all(stream.as_bytes())?;
    anyhow::ensure!(apply.wait()?.success(), "kubectl apply of the production render failed");

    let kubeconfig = kube.kubeconfig().display().to_string();
    let argv = [
        "audctl",
        "--kubeconfig",
        &kubeconfig,
        "--context",
        testbed::kube::CONTEXT,
        "-o",
        "json",
        "check",
        "-f",
        &prod.display().to_string(),
        "--skip",
        "postgres,search,redis,kafka,audit-service",
    ]
    .map(String::from);
    let cli = audctl::cli::Cli::try_parse_from(argv)?;
    let audctl::cli::Command::Check(check) = &cli.command else { anyhow::bail!("not a check command") };

    println!(
        "{:>4} {:>9} {:>10} {:>10}  {:<28} {:>12} {:>12}",
        "run", "wall ms", "probes ms", "slowest ms", "slowest probe", "wall/slow", "probes/slow"
    );
    let (mut total, mut phase) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let report = audctl::check::evaluate(check, &cli.global).await?;
        let Some(slow) = &report.slowest_probe else { anyhow::bail!("no probe ran") };
        let slow_ms = slow.ms.max(1) as f64;
        let (w, p) = (report.wall_ms as f64 / slow_ms, report.probes_ms as f64 / slow_ms);
        let tag = if run == 0 { "warm".to_owned() } else { run.to_string() };
        println!(
            "{tag:>4} {:>9} {:>10} {:>10}  {:<28} {w:>12.2} {p:>12.2}",
            report.wall_ms, report.probes_ms, slow.ms, slow.id
        );
        if run > 0 {
            total.push(w);
            phase.push(p);
        }
    }
    println!(
        "median over {runs} runs: full check wall / slowest probe = {:.2}; concurrent phase / slowest probe = {:.2} (target <= 1.2)",
        median(total),
        median(phase)
    );
    Ok(())
}
