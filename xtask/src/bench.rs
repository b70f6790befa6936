//! `cargo xtask bench [server|render]`: measured runs (not timed tests) of the speed targets.
//! Each target lives in its own module function; `all` runs them in turn.

use clap::ValueEnum;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// Everything below, in turn.
    All,
    /// The audit server against PostgreSQL, as ratios of the pgbench ceiling.
    Server,
    /// `audctl render` of values-prod.
    Render,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum, default_value_t = BenchTarget::All)]
    pub target: BenchTarget,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let all = args.target == BenchTarget::All;
    if all || args.target == BenchTarget::Render {
        render()?;
    }
    if all || args.target == BenchTarget::Server {
        server()?;
    }
    Ok(())
}

fn render() -> anyhow::Result<()> {
    anyhow::bail!("bench render: not built yet")
}

fn server() -> anyhow::Result<()> {
    anyhow::bail!("bench server: not built yet")
}
