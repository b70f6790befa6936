//! Python tools the tests run as outside referees, in a virtualenv of their own under the cache
//! (Debian's Python refuses system-wide pip installs, and a venv keeps the versions pinned here).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use super::Ctx;
use crate::util::step;

/// schemathesis fuzzes the audit server against its own OpenAPI document (audit-server/tests/contract.rs).
pub const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The venv's folder; the tests find the tools in its bin/ (`testbed::python_tool`).
fn venv(ctx: &Ctx) -> PathBuf {
    ctx.cache.join("python")
}

pub fn install(ctx: &Ctx) -> anyhow::Result<()> {
    let venv = venv(ctx);
    let marker = venv.join("installed.txt");
    // A changed pin reinstalls; the same pin in the same place is a no-op. A venv is not
    // relocatable (its scripts name their interpreter by absolute path), so a cache copied or
    // moved elsewhere (another user's home, a changed AUDCTL_CACHE) is made anew, not trusted.
    let stamp = format!("{SCHEMATHESIS} {}", venv.display());
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == stamp) {
        return Ok(());
    }
    if std::fs::read_to_string(&marker).is_ok() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing the stale venv {}", venv.display()))?;
    }
    if !venv.join("bin/pip").exists() {
        step("python venv for test tools", Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    step(
        &format!("pip install {SCHEMATHESIS}"),
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", SCHEMATHESIS]),
    )?;
    std::fs::write(&marker, stamp).with_context(|| format!("writing {}", marker.display()))
}

pub fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let installed = std::fs::read_to_string(venv(ctx).join("installed.txt")).unwrap_or_default();
    // The stamp is "<pin> <venv path>": show the pin.
    let pin = installed.split_whitespace().next().unwrap_or("not installed");
    println!("python tools: {pin}");
    Ok(())
}
