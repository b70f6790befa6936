//! `cargo xtask ci`: exactly what `.ci/run` runs.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::testrun;
use crate::util::{self, cargo, step};

/// A test binary still running after this long is killed and counted as failed: one hung test must
/// not eat CI's whole budget.
const BINARY_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(clap::Args)]
pub struct CiArgs {
    /// Skip `deps install` (the components are already installed).
    #[arg(long)]
    pub no_install: bool,
    /// Test binaries run at once (most of their time is spent waiting on started components).
    #[arg(long, env = "AUDCTL_CI_JOBS", default_value_t = 3)]
    pub jobs: usize,
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    if !args.no_install {
        crate::deps::run(crate::deps::DepsCommand::Install)?;
    }
    step("cargo fmt --check", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    test(args.jobs)
}

/// Every test binary of the workspace (several at once, see testrun.rs), then the doc tests, ending
/// with one total line that CI reads.
fn test(jobs: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("==> cargo test (build)");
    let binaries = testrun::build()?;
    eprintln!("==> {} test binaries, {jobs} at a time", binaries.len());
    let mut totals = testrun::run(binaries, jobs, BINARY_TIMEOUT)?;
    let (doc_ok, doc_out) = util::capture_all(cargo().args(["test", "--workspace", "--doc"]))?;
    print!("{doc_out}");
    let doc = testrun::parse_totals(&doc_out);
    totals.passed += doc.passed;
    totals.failed += doc.failed + u64::from(!doc_ok && doc.failed == 0);
    totals.ignored += doc.ignored;
    let verdict = if totals.failed == 0 { "ok" } else { "FAILED" };
    eprintln!("<== cargo test: {verdict} in {:.1}s", start.elapsed().as_secs_f64());
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    if totals.failed > 0 {
        bail!("{} test(s) failed", totals.failed);
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}
