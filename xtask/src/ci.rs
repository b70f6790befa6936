//! `cargo xtask ci`: exactly what `.ci/run` runs.

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
    step("cargo test", cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
    Ok(())
}
