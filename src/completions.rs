//! `audctl completions <shell>` and the man page.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: &CompletionsArgs) -> anyhow::Result<()> {
    // Into a buffer first: clap_complete panics when its writer fails (`| head -1`, a full disk).
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "audctl", &mut buf);
    crate::output::print(&buf)
}

pub fn man() -> anyhow::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    crate::output::print(&buf)
}
