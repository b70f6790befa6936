//! audctl: the go-live toolkit for the Audit Trail service.
//!
//! The binary is a thin shell over this library so integration tests and `xtask` can drive the same
//! code paths. Dependencies point one way: `cli` -> verbs -> (render, values, output, ...); nothing
//! below the verbs knows about clap.

pub mod backup;
pub mod check;
pub mod cli;
pub mod deploy;
pub mod duration;
pub mod error;
pub mod evidence;
pub mod kube;
pub mod load;
pub mod output;
pub mod probes;
pub mod render;
pub mod service;
pub mod signals;
pub mod smoke;
pub mod tls;
pub mod values;
pub mod verify;
pub mod x509;

mod completions;
mod pending;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};
use crate::error::Failure;

/// Parse `args`, run the verb and map the result to the documented exit codes.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let parsed = Cli::command().try_get_matches_from(args).and_then(|m| {
        let mut cli = Cli::from_arg_matches(&m)?;
        // A global flag is recorded in the subcommand's matches when given after the verb.
        let given = |m: &clap::ArgMatches| m.value_source("namespace") == Some(clap::parser::ValueSource::CommandLine);
        cli.global.namespace_given = given(&m) || m.subcommand().is_some_and(|(_, sub)| given(sub));
        Ok(cli)
    });
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help/version to stdout with exit 0 and usage errors to stderr with exit 2.
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { error::EXIT_USAGE } else { 0 });
        }
    };
    output::init_color(cli.global.no_color);
    init_tracing(cli.global.verbose);

    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let failure = Failure::classify(&err);
            // A failed check printed its report, an interrupted run its own line.
            if !matches!(failure, Failure::CheckFailed | Failure::Interrupted(_)) || cli.global.verbose > 0 {
                eprintln!("{}: {}", output::paint_error("error"), error::chain(&err));
            }
            ExitCode::from(failure.code())
        }
    }
}

fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    // Refused before any work: found only when the report is printed, an unsupported format used
    // to exit 2 after a restore had replaced a database or a backup had been committed.
    if matches!(cli.command, Command::Completions(_) | Command::Man) && cli.global.output != cli::OutputFormat::Table {
        // They print a script or a page; taking -o json silently would hand a parser a script.
        return Err(error::usage(format!(
            "`audctl {}` prints {}: -o {} does not apply (leave -o out)",
            cli.command.name(),
            if matches!(cli.command, Command::Man) { "a man page" } else { "a shell script" },
            clap::ValueEnum::to_possible_value(&cli.global.output).map(|v| v.get_name().to_owned()).unwrap_or_default()
        )));
    }
    if cli.global.output == cli::OutputFormat::Junit && !supports_junit(&cli.command) {
        return Err(error::usage(output::JUNIT_UNSUPPORTED));
    }
    match &cli.command {
        Command::Render(args) => render::run(args, cli.global.output),
        Command::Check(args) => check::run(args, &cli.global),
        Command::Attest(args) => check::attest::run(args, &cli.global),
        Command::Deploy(args) => deploy::deploy(&cli.global, args),
        Command::Diff(args) => deploy::diff(&cli.global, args),
        Command::History(args) => deploy::history(&cli.global, args),
        Command::Rollback(args) => deploy::rollback(&cli.global, args),
        Command::Verify(args) => verify::run(args, cli.global.output),
        Command::Backup(args) => backup::run_backup(&cli.global, args),
        Command::Restore(args) => backup::run_restore(&cli.global, args),
        Command::Completions(args) => completions::run(args),
        Command::Man => completions::man(),
        Command::Smoke(args) => smoke::run(args, &cli.global),
        Command::Load(args) => load::run(args, &cli.global),
        other => pending::run(other.name()),
    }
}

/// The verbs whose report is pass/fail test cases (their `Report::junit` returns `Some`).
fn supports_junit(command: &Command) -> bool {
    match command {
        Command::Check(a) => !a.list_probes,
        Command::Smoke(_) | Command::Load(_) => true,
        _ => false,
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUDCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("audctl={level}")));
    // Logs go to stderr so `-o json` on stdout stays machine-readable.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output::color_enabled())
        .try_init();
}
