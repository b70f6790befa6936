//! `cargo xtask <task>`: the project's automation, in Rust (the rust-analyzer pattern).

mod bench;
mod ci;
mod deps;
mod testrun;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "audctl project automation")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// What CI runs: install test dependencies, fmt check, clippy -D warnings, the whole test suite.
    Ci(ci::CiArgs),
    /// Measured runs of the speed targets (render, server).
    Bench(bench::BenchArgs),
    /// Install, start, stop and inspect the real components the tests use.
    #[command(subcommand)]
    Deps(deps::DepsCommand),
    /// Write the audctl man page (clap_mangen) to target/man/audctl.1, or DIR.
    Man {
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Xtask::parse().task {
        Task::Ci(args) => ci::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Deps(cmd) => deps::run(cmd),
        Task::Man { out_dir } => {
            let dir = out_dir.unwrap_or_else(|| util::target_dir().join("man"));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("audctl.1");
            let roff = util::capture(util::cargo().args(["run", "--quiet", "--bin", "audctl", "--", "man"]))?;
            std::fs::write(&path, roff)?;
            println!("wrote {}", path.display());
            Ok(())
        }
    }
}
