//! `cargo xtask ci`: exactly what `.ci/run` runs.

use std::process::Command;
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
    /// Not CI: skip fmt, clippy and the doc tests, and build and run only the test binaries these
    /// `cargo test` arguments select (e.g. `--only -p testbed --lib`), with the same totals and
    /// left-over process check.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARGS")]
    pub only: Option<Vec<String>>,
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    if !args.no_install {
        crate::deps::run(crate::deps::DepsCommand::Install)?;
    }
    if args.only.is_none() {
        step("cargo fmt --check", cargo().args(["fmt", "--all", "--", "--check"]))?;
        step("cargo clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
        // Broken intra-doc links and bare URLs went unnoticed while nothing built the docs.
        step(
            "cargo doc",
            cargo().args(["doc", "--workspace", "--no-deps", "--quiet"]).env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    test(args.jobs, args.only)
}

/// Every test binary of the workspace (several at once, see testrun.rs), then the doc tests, ending
/// with one total line that CI reads, then the check that no process the tests started outlived
/// them.
fn test(jobs: usize, only: Option<Vec<String>>) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("==> cargo test (build)");
    // Built without the run id: build helpers (a compiler cache server, say) may outlive the build
    // legitimately and must not count as left behind.
    let selection = only.clone().unwrap_or_else(|| vec!["--workspace".to_owned()]);
    let binaries = testrun::build(&selection)?;
    let run_id = run_id();
    // Every test process gets the run id (testbed passes it on to what it starts), and CI=true:
    // tests that could rewrite their own expectations (UPDATE_GOLDEN) refuse to.
    let env = [(testbed::scratch::RUN_ID_ENV.to_owned(), run_id.clone()), ("CI".to_owned(), "true".to_owned())];
    eprintln!("==> {} test binaries, {jobs} at a time ({}={run_id})", binaries.len(), testbed::scratch::RUN_ID_ENV);
    let mut totals = testrun::run(binaries, jobs, BINARY_TIMEOUT, &env)?;
    if only.is_none() {
        let mut doc = cargo();
        doc.args(["test", "--workspace", "--doc"]).envs(env.iter().map(|(k, v)| (k, v)));
        let (doc_ok, doc_out) = util::capture_all(&mut doc)?;
        print!("{doc_out}");
        let doc = testrun::parse_totals(&doc_out);
        totals.passed += doc.passed;
        totals.failed += doc.failed + u64::from(!doc_ok && doc.failed == 0);
        totals.ignored += doc.ignored;
    }
    let verdict = if totals.failed == 0 { "ok" } else { "FAILED" };
    eprintln!("<== cargo test: {verdict} in {:.1}s", start.elapsed().as_secs_f64());
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    let left_behind = left_behind(&run_id);
    if totals.failed > 0 {
        bail!("{} test(s) failed", totals.failed);
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    left_behind
}

/// A fresh id for one test run (pid and time: unique on this machine).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Fails, naming them, if processes of this test run are still alive once the tests are over; kills
/// them so that they do not linger. Processes of other runs on the machine carry another id.
fn left_behind(run_id: &str) -> anyhow::Result<()> {
    // A process group being stopped right at the end may need a moment to go.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = testbed::scratch::processes_of_run(run_id);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = testbed::scratch::processes_of_run(run_id);
    }
    if left.is_empty() {
        eprintln!("no process of the tests outlived them");
        return Ok(());
    }
    for (pid, cmdline) in &left {
        eprintln!("left behind: pid {pid}: {cmdline}");
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    bail!("{} process(es) started by the tests outlived them (listed above, now killed)", left.len())
}
