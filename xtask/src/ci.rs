//! `cargo xtask ci`: exactly what `.ci/run` runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{cargo, step};

#[derive(clap::Args)]
pub struct CiArgs {
    /// Skip `deps install` (the components are already installed).
    #[arg(long)]
    pub no_install: bool,
    /// Not CI: skip fmt and clippy and run `cargo test ARGS...` instead of the whole workspace, with
    /// the same totals and left-over process check (e.g. `--only -p testbed --lib`).
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARGS")]
    pub only: Option<Vec<String>>,
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    if !args.no_install {
        crate::deps::run(crate::deps::DepsCommand::Install)?;
    }
    let test_args = match args.only {
        Some(only) => only,
        None => {
            step("cargo fmt --check", cargo().args(["fmt", "--all", "--", "--check"]))?;
            step("cargo clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
            vec!["--workspace".to_owned()]
        }
    };
    test(&test_args)
}

/// `cargo test`, passing its output through and ending with one total over all test binaries
/// (cargo prints a `test result:` line per binary, the last often a doc-test run of zero), then
/// the check that no process the tests started outlived them.
fn test(args: &[String]) -> anyhow::Result<()> {
    // Built first, without the run id: build helpers (a compiler cache server, say) may outlive the
    // build legitimately and must not count as left behind.
    step("cargo test --no-run", cargo().args(["test", "--no-run"]).args(args))?;
    let run_id = run_id();
    let start = Instant::now();
    eprintln!("==> cargo test ({}={run_id})", testbed::scratch::RUN_ID_ENV);
    let mut child = cargo()
        .args(["test", "--no-fail-fast"])
        .args(args)
        .env(testbed::scratch::RUN_ID_ENV, &run_id)
        // Tests that could rewrite their own expectations (UPDATE_GOLDEN) refuse to under CI.
        .env("CI", "true")
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            passed += count(counts, "passed");
            failed += count(counts, "failed");
            ignored += count(counts, "ignored");
        }
    }
    let status = child.wait()?;
    eprintln!(
        "<== cargo test: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    let left_behind = left_behind(&run_id);
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
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

/// The number before `word` in "ok. 12 passed; 0 failed; 1 ignored; ...".
fn count(counts: &str, word: &str) -> u64 {
    counts
        .split(';')
        .find_map(|part| {
            let mut it = part.split_whitespace().rev();
            (it.next() == Some(word)).then(|| it.next()?.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_are_read_from_a_result_line() {
        let line = "ok. 12 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.07s";
        assert_eq!((count(line, "passed"), count(line, "failed"), count(line, "ignored")), (12, 1, 3));
        assert_eq!(count("FAILED. 0 passed; 2 failed;", "passed"), 0);
    }
}
