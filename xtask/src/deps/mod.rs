//! `cargo xtask deps install|up|down|status`: the real components the tests run against.
//!
//! Everything lands under the cache directory (`$AUDCTL_CACHE`, default ~/.cache/audctl), outside
//! the clone, keyed by version, so re-runs are quick and a new clone reuses it.

use clap::Subcommand;

#[derive(Subcommand, Clone, Copy)]
pub enum DepsCommand {
    /// Install every component (idempotent; cached re-runs are quick).
    Install,
    /// Start a long-lived local stack and print its endpoints.
    Up,
    /// Stop the stack started by `up`.
    Down,
    /// Show what is installed and what is running.
    Status,
}

pub fn run(cmd: DepsCommand) -> anyhow::Result<()> {
    match cmd {
        DepsCommand::Install => Ok(()),
        DepsCommand::Up | DepsCommand::Down | DepsCommand::Status => {
            anyhow::bail!("not built yet")
        }
    }
}
