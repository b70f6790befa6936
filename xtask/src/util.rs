//! Small helpers for running commands with visible, timed steps.

use std::path::PathBuf;
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

/// Run a command; whether it succeeded, and its stdout (stderr passes through).
pub fn capture_all(cmd: &mut Command) -> anyhow::Result<(bool, String)> {
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("running {cmd:?}"))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
}
