//! `cargo xtask ci`: exactly what `.ci/run` runs.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util::{cargo, step};

#[derive(clap::Args)]
pub struct CiArgs {
    /// Skip `deps install` (the components are already installed).
    #[arg(long)]
    pub no_install: bool,
}

pub fn run(args: CiArgs) -> anyhow::Result<()> {
    if !args.no_install {
        crate::deps::run(crate::deps::DepsCommand::Install)?;
    }
    step("cargo fmt --check", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy", cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    test()
}

/// `cargo test --workspace`, passing its output through and ending with one total over all test
/// binaries (cargo prints a `test result:` line per binary, the last often a doc-test run of zero).
fn test() -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("==> cargo test");
    let mut child = cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
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
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
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
