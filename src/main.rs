//! `audctl` entry point: parse, dispatch, and turn the outcome into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    audctl::run(std::env::args_os())
}
