//! `cargo xtask deps install|up|down|status`: the real components the tests run against.
//!
//! Everything lands under the cache directory (`$AUDCTL_CACHE`, default ~/.cache/audctl), outside
//! the clone, keyed by version, so re-runs are quick and a new clone reuses it. Each component
//! module exposes `install(&Ctx)` and `status(&Ctx)`.

mod debian;
mod kube;
mod maven;
mod python;
mod stack;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
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
    /// The detached process behind `up` (internal).
    #[command(hide = true)]
    Serve,
}

/// Shared context of the install steps.
pub struct Ctx {
    /// Root of the cache (`~/.cache/audctl`).
    pub cache: PathBuf,
}

impl Ctx {
    pub fn new() -> Self {
        Self { cache: cache_dir() }
    }
}

/// One rule for where components live, shared with the tests that start them.
pub use testbed::{RUN_AS_USER, cache_dir};

/// Create [`RUN_AS_USER`] if missing (we run as root in CI and on dev machines).
pub fn ensure_run_user() -> anyhow::Result<()> {
    let exists = Command::new("id").arg("-u").arg(RUN_AS_USER).output()?.status.success();
    if !exists {
        crate::util::step(
            &format!("create system user {RUN_AS_USER}"),
            Command::new("useradd").args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                RUN_AS_USER,
            ]),
        )?;
    }
    Ok(())
}

pub fn run(cmd: DepsCommand) -> anyhow::Result<()> {
    let ctx = Ctx::new();
    match cmd {
        DepsCommand::Install => {
            let start = Instant::now();
            std::fs::create_dir_all(&ctx.cache)?;
            // One install at a time per cache (two clones, CI next to a developer): they would race
            // on the same folders and on Maven's local repository.
            let lock_path = ctx.cache.join(".install.lock");
            let lock =
                std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
            if lock.try_lock().is_err() {
                eprintln!("deps install: waiting for another install holding {}", lock_path.display());
                lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
            }
            // First: the other components need Java, Maven, build headers and the run-as user.
            debian::install(&ctx)?;
            kube::ensure_go(&ctx)?;
            python::install(&ctx)?;
            // Maven Central downloads (all of them, one Maven at a time) while Go builds.
            std::thread::scope(|scope| {
                let maven = scope.spawn(|| maven::install(&ctx).and_then(|()| kube::install_maven_crds(&ctx)));
                let go = kube::install(&ctx);
                let maven = maven.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the Maven install thread panicked")));
                go.and(maven)
            })?;
            eprintln!("deps install: done in {:.1}s (cache {})", start.elapsed().as_secs_f64(), ctx.cache.display());
            Ok(())
        }
        DepsCommand::Status => {
            debian::status(&ctx)?;
            kube::status(&ctx)?;
            maven::status(&ctx)?;
            python::status(&ctx)?;
            stack::status(&ctx)
        }
        DepsCommand::Up => stack::up(&ctx),
        DepsCommand::Down => stack::down(&ctx),
        DepsCommand::Serve => stack::serve(&ctx),
    }
}
