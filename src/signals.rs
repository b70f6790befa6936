//! Ctrl-C (SIGINT) and SIGTERM for verbs that clean up or report before they stop (`deploy`,
//! `rollback`, `load`). The first signal is the verb's to handle; a second one exits at once, for
//! when that clean-up itself hangs.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Which signal stopped the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Int,
    Term,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Int => "SIGINT",
            Stop::Term => "SIGTERM",
        }
    }

    /// 128 + the signal number (see [`crate::error::Interrupted`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Stop::Int => 130,
            Stop::Term => 143,
        }
    }

    /// The error that exits with [`Stop::exit_code`]; `message` was already printed.
    pub fn error(self, message: String) -> anyhow::Error {
        crate::error::Interrupted { code: self.exit_code(), message }.into()
    }
}

/// SIGINT and SIGTERM, caught from creation on (the default action, dying at once, is replaced).
pub struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        Ok(Signals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.int.recv() => Stop::Int,
            _ = self.term.recv() => Stop::Term,
        }
    }

    /// The first signal, announced on stderr as `<SIGNAL> received: stopping (a second signal
    /// exits at once<at_once>)`. From then on a second one exits the process at once, saying
    /// `<SIGNAL> received again: exiting now<then>`.
    pub async fn first(&mut self, at_once: &'static str, then: &'static str) -> Stop {
        let stop = self.next().await;
        eprintln!("{} received: stopping (a second signal exits at once{at_once})", stop.name());
        if let Ok(mut again) = Signals::install() {
            tokio::spawn(async move {
                let stop = again.next().await;
                eprintln!("{} received again: exiting now{then}", stop.name());
                std::process::exit(i32::from(stop.exit_code()));
            });
        }
        stop
    }
}
