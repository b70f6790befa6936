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
    // A changed pin reinstalls; the same pin is a no-op.
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == SCHEMATHESIS) {
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        step("python venv for test tools", Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    step(
        &format!("pip install {SCHEMATHESIS}"),
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check", SCHEMATHESIS]),
    )?;
    std::fs::write(&marker, SCHEMATHESIS).with_context(|| format!("writing {}", marker.display()))
}

pub fn status(ctx: &Ctx) -> anyhow::Result<()> {
    let installed = std::fs::read_to_string(venv(ctx).join("installed.txt")).unwrap_or_default();
    println!("python tools: {}", if installed.is_empty() { "not installed" } else { installed.trim() });
    Ok(())
}
