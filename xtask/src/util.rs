//! Small helpers for running commands with visible, timed steps.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| project_root().join("target"))
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(project_root());
    cmd
}

/// Run a step, print its name and duration, fail on non-zero exit.
pub fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("==> {name}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    eprintln!(
        "<== {name}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Run a command and return its stdout.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Fail unless `file`'s digest (`sha256` or `sha512`, by coreutils' `<algo>sum`) is `expected`.
pub fn check_digest(file: &Path, algo: &str, expected: &str) -> anyhow::Result<()> {
    let out = capture(Command::new(format!("{algo}sum")).arg(file))?;
    let actual = out.split_whitespace().next().unwrap_or_default();
    if actual != expected {
        bail!("{}: {algo} is {actual}, expected the pinned {expected}: corrupted or tampered download", file.display());
    }
    Ok(())
}

/// The SHA-256 digests of the inputs a cache entry was made from (a pom, go.mod and go.sum...),
/// kept in the entry as `.inputs.sha256`: a changed input invalidates the entry.
pub struct Stamp(String);

const STAMP_FILE: &str = ".inputs.sha256";

impl Stamp {
    pub fn of(inputs: &[PathBuf]) -> anyhow::Result<Stamp> {
        let mut digests = String::new();
        for input in inputs {
            let out = capture(Command::new("sha256sum").arg(input))?;
            digests.push_str(out.split_whitespace().next().unwrap_or_default());
            digests.push('\n');
        }
        Ok(Stamp(digests))
    }

    /// Does the entry `dir` come from these inputs? An entry made before stamps existed has none:
    /// it is adopted (stamped now) rather than rebuilt.
    pub fn matches(&self, dir: &Path) -> anyhow::Result<bool> {
        match std::fs::read_to_string(dir.join(STAMP_FILE)) {
            Ok(text) => Ok(text == self.0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
                self.write(dir)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(STAMP_FILE);
        std::fs::write(&path, &self.0).with_context(|| format!("writing {}", path.display()))
    }
}

/// Run a command; whether it succeeded, and its stdout (stderr passes through).
pub fn capture_all(cmd: &mut Command) -> anyhow::Result<(bool, String)> {
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}
