//! The test suite, with independent test binaries run side by side.
//!
//! `cargo test` runs one test binary after another. Ours mostly wait on real components (a JVM
//! starting, a rollout, a replica catching up), so running a few binaries at once cuts the wall time
//! without starving the 2-core machine. Tests inside one binary keep sharing their started components.
//! Each binary's output is printed whole when it ends, so logs never interleave. The slowest binaries
//! of the previous run start first (durations kept next to the build cache), so the pool drains evenly.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{cargo, target_dir};

/// One test executable cargo built, and where cargo would run it from.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// "audctl::evidence", "testbed::kube", "audit-server (lib)".
    pub name: String,
    pub path: PathBuf,
    pub package_dir: PathBuf,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Build the test targets `selection` picks (`--workspace`: all of them) and list the executables.
pub fn build(selection: &[String]) -> anyhow::Result<Vec<TestBinary>> {
    let mut child = cargo()
        .args(["test", "--no-run", "--message-format=json-render-diagnostics"])
        .args(selection)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test --no-run")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut binaries = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else { continue };
        let manifest = msg["manifest_path"].as_str().map(PathBuf::from).unwrap_or_default();
        let package_dir = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
        let package = package_name(msg["package_id"].as_str().unwrap_or(""));
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("");
        let target = msg["target"]["name"].as_str().unwrap_or("");
        let name = match kind {
            "test" | "bench" | "example" => format!("{package}::{target}"),
            _ => format!("{target} ({kind})"),
        };
        binaries.push(TestBinary { name, path: PathBuf::from(exe), package_dir });
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the tests failed ({status})");
    }
    Ok(binaries)
}

/// "path+file:///work/main#audctl@0.1.0" -> "audctl"; cargo leaves the name out when it is the
/// folder's ("path+file:///work/main/testbed#0.1.0").
fn package_name(id: &str) -> String {
    let (path, fragment) = id.split_once('#').unwrap_or((id, ""));
    match fragment.split_once('@') {
        Some((name, _)) => name.to_owned(),
        None => path.rsplit('/').next().unwrap_or(path).to_owned(),
    }
}

/// Outcome of one binary.
struct Run {
    name: String,
    totals: Totals,
    success: bool,
    elapsed: Duration,
}

/// Run `binaries` with at most `jobs` at once, with `env` added to their environment; each is
/// killed after `timeout`.
pub fn run(
    binaries: Vec<TestBinary>,
    jobs: usize,
    timeout: Duration,
    env: &[(String, String)],
) -> anyhow::Result<Totals> {
    let env: Arc<Vec<(String, String)>> = Arc::new(env.to_vec());
    let history = durations_file();
    let previous = read_durations(&history);
    let mut queue = binaries;
    // Slowest first (unknown ones count as slow: new tests tend to start components).
    queue.sort_by_key(|b| std::cmp::Reverse(previous.get(&b.name).copied().unwrap_or(f64::MAX / 2.0) as u64));
    let queue = Arc::new(Mutex::new(VecDeque::from(queue)));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let print = Arc::new(Mutex::new(()));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (queue, runs, print, env) = (queue.clone(), runs.clone(), print.clone(), env.clone());
            std::thread::spawn(move || {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                    let Some(binary) = next else { break };
                    let run = run_one(&binary, timeout, &print, &env);
                    if let Ok(mut runs) = runs.lock() {
                        runs.push(run);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let runs = std::mem::take(&mut *runs.lock().map_err(|_| anyhow::anyhow!("a test runner thread panicked"))?);
    let mut totals = Totals::default();
    let mut durations = previous;
    eprintln!("\n==> test binaries, slowest first:");
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.elapsed));
    for r in &sorted {
        eprintln!(
            "    {:>7.1}s  {:<6} {} ({} passed, {} failed)",
            r.elapsed.as_secs_f64(),
            if r.success { "ok" } else { "FAILED" },
            r.name,
            r.totals.passed,
            r.totals.failed
        );
        totals.passed += r.totals.passed;
        totals.failed += r.totals.failed;
        totals.ignored += r.totals.ignored;
        durations.insert(r.name.clone(), r.elapsed.as_secs_f64());
    }
    write_durations(&history, &durations);
    let failed: Vec<&str> = runs.iter().filter(|r| !r.success).map(|r| r.name.as_str()).collect();
    if !failed.is_empty() {
        // Counted as failures even when the binary died before printing a result line.
        totals.failed = totals.failed.max(failed.len() as u64);
        eprintln!("==> failed binaries: {}", failed.join(", "));
    }
    Ok(totals)
}

fn run_one(binary: &TestBinary, timeout: Duration, print: &Mutex<()>, env: &[(String, String)]) -> Run {
    let start = Instant::now();
    let mut output = String::new();
    let result = (|| -> anyhow::Result<bool> {
        let mut child = Command::new(&binary.path)
            .current_dir(&binary.package_dir)
            .env("CARGO_MANIFEST_DIR", &binary.package_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.path.display()))?;
        // Drain both pipes on threads so a chatty test cannot block on a full pipe.
        let mut out = child.stdout.take().context("stdout")?;
        let mut err = child.stderr.take().context("stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        output.push_str(&out_reader.join().unwrap_or_default());
        let stderr = err_reader.join().unwrap_or_default();
        if !stderr.trim().is_empty() {
            output.push_str("---- stderr ----\n");
            output.push_str(&stderr);
        }
        match status {
            Some(status) => Ok(status.success()),
            None => {
                output
                    .push_str(&format!("\nKILLED after {} s: the binary did not finish in time\n", timeout.as_secs()));
                Ok(false)
            }
        }
    })();
    let success = match result {
        Ok(ok) => ok,
        Err(e) => {
            output.push_str(&format!("{e:#}\n"));
            false
        }
    };
    let totals = parse_totals(&output);
    let elapsed = start.elapsed();
    if let Ok(_guard) = print.lock() {
        println!(
            "\n==== {} ({:.1}s, {}) ====",
            binary.name,
            elapsed.as_secs_f64(),
            if success { "ok" } else { "FAILED" }
        );
        print!("{output}");
    }
    Run { name: binary.name.clone(), totals, success, elapsed }
}

/// Sum of the `test result:` lines of a binary's output.
pub fn parse_totals(output: &str) -> Totals {
    let mut t = Totals::default();
    for line in output.lines() {
        if let Some(counts) = line.strip_prefix("test result: ") {
            t.passed += count(counts, "passed");
            t.failed += count(counts, "failed");
            t.ignored += count(counts, "ignored");
        }
    }
    t
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

fn durations_file() -> PathBuf {
    target_dir().join("xtask-test-durations.txt")
}

/// `seconds<TAB>name` lines; a missing or odd file just means no history.
fn read_durations(path: &Path) -> BTreeMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (secs, name) = l.split_once('\t')?;
            Some((name.to_owned(), secs.parse().ok()?))
        })
        .collect()
}

fn write_durations(path: &Path, durations: &BTreeMap<String, f64>) {
    let text: String = durations.iter().map(|(n, s)| format!("{s:.1}\t{n}\n")).collect();
    let _ = std::fs::write(path, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_result_lines() {
        let out = "running 3 tests\ntest result: ok. 12 passed; 1 failed; 3 ignored; 0 measured; 0 filtered out; finished in 0.07s\n\
                   test result: FAILED. 2 passed; 2 failed; 0 ignored;\n";
        assert_eq!(parse_totals(out), Totals { passed: 14, failed: 3, ignored: 3 });
        assert_eq!(parse_totals("no result line"), Totals::default());
    }

    #[test]
    fn package_names_from_ids() {
        assert_eq!(package_name("path+file:///work/main#audctl@0.1.0"), "audctl");
        assert_eq!(package_name("path+file:///tmp/clone/testbed#0.1.0"), "testbed");
    }

    #[test]
    fn durations_round_trip() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-durations-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("d.txt");
        let d = BTreeMap::from([("a::b".to_owned(), 12.5), ("c (lib)".to_owned(), 0.1)]);
        write_durations(&path, &d);
        assert_eq!(read_durations(&path), d);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// A binary that dies without a result line, and one that hangs, both count as failures.
    #[test]
    fn crashed_and_hung_binaries_fail() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-runs-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let crash = dir.join("crash.sh");
        std::fs::write(&crash, "#!/bin/sh\necho 'running 1 test'\nexit 101\n")?;
        let hang = dir.join("hang.sh");
        std::fs::write(&hang, "#!/bin/sh\nexec sleep 30\n")?;
        let ok = dir.join("ok.sh");
        std::fs::write(&ok, "#!/bin/sh\necho 'test result: ok. 2 passed; 0 failed; 0 ignored'\n")?;
        for f in [&crash, &hang, &ok] {
            std::process::Command::new("chmod").arg("+x").arg(f).status()?;
        }
        let bin = |p: &PathBuf| TestBinary { name: p.display().to_string(), path: p.clone(), package_dir: dir.clone() };
        let print = Mutex::new(());
        let r = run_one(&bin(&hang), Duration::from_millis(500), &print, &[]);
        assert!(!r.success && r.elapsed < Duration::from_secs(10));
        assert!(!run_one(&bin(&crash), Duration::from_secs(10), &print, &[]).success);
        let good = run_one(&bin(&ok), Duration::from_secs(10), &print, &[]);
        assert!(good.success && good.totals.passed == 2);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
