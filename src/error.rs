//! Exit codes and the typed errors callers branch on.
//!
//! anyhow carries context at the edges; the few situations that change the exit code are typed so
//! `run` can find them anywhere in the error chain.

use std::fmt;

pub const EXIT_OK: u8 = 0;
/// A check, a threshold or a verification failed: the tool worked, the system did not pass.
pub const EXIT_FAILED: u8 = 1;
/// Bad usage, configuration or input: fix the command line or the files.
pub const EXIT_USAGE: u8 = 2;
/// A dependency (cluster, database, service) could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Input the user must fix: a bad flag value, a malformed or invalid file, a verb not built yet.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Something audctl had to talk to did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{what} is unreachable: {detail}")]
pub struct Unreachable {
    pub what: String,
    pub detail: String,
}

/// The run completed and its report says something failed; the report itself was already printed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// The run was stopped by a signal (Ctrl-C, SIGTERM) and cleaned up after; its message was already
/// printed. The exit code is 128 + the signal, as a shell reports a process the signal stopped: CI
/// runners and wrappers read it as "cancelled", which none of the verdicts above means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Interrupted {
    pub code: u8,
    pub message: String,
}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// What kind of failure an error chain represents, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    CheckFailed,
    Usage,
    Unreachable,
    /// Stopped by a signal: 128 + its number.
    Interrupted(u8),
    /// Anything untyped: an internal or environment error. Treated like a failed run.
    Other,
}

impl Failure {
    pub fn classify(err: &anyhow::Error) -> Self {
        for cause in err.chain() {
            if cause.is::<UsageError>() {
                return Failure::Usage;
            }
            if cause.is::<Unreachable>() {
                return Failure::Unreachable;
            }
            if cause.is::<CheckFailed>() {
                return Failure::CheckFailed;
            }
            if let Some(i) = cause.downcast_ref::<Interrupted>() {
                return Failure::Interrupted(i.code);
            }
        }
        Failure::Other
    }

    pub fn code(self) -> u8 {
        match self {
            Failure::CheckFailed | Failure::Other => EXIT_FAILED,
            Failure::Usage => EXIT_USAGE,
            Failure::Unreachable => EXIT_UNREACHABLE,
            Failure::Interrupted(code) => code,
        }
    }
}

/// Render an error and its causes on one line: "reading values: file.yaml: no such file".
pub fn chain(err: &anyhow::Error) -> impl fmt::Display + '_ {
    struct Chain<'a>(&'a anyhow::Error);
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut first = true;
            for cause in self.0.chain() {
                if !first {
                    f.write_str(": ")?;
                }
                first = false;
                // kube prints an API error as its text followed by the whole Status in Debug
                // form, then the Status again as its source: say it once, with the HTTP code.
                if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
                    let reason = if status.reason.is_empty() { String::new() } else { format!(" {}", status.reason) };
                    return write!(f, "{} (HTTP {}{reason})", status.message, status.code);
                }
                write!(f, "{cause}")?;
            }
            Ok(())
        }
    }
    Chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_kube_api_error_is_said_once_with_its_code() {
        let status = kube::core::Status {
            message: "namespaces \"audit-trail\" not found".into(),
            reason: "NotFound".into(),
            code: 404,
            ..Default::default()
        };
        let err = anyhow::Error::new(kube::Error::Api(Box::new(status))).context("writing evidence x");
        assert_eq!(
            chain(&err).to_string(),
            "writing evidence x: namespaces \"audit-trail\" not found (HTTP 404 NotFound)"
        );
    }

    #[test]
    fn classify_finds_typed_error_under_context() {
        let err = Err::<(), _>(usage("bad")).context("loading values").unwrap_err();
        assert_eq!(Failure::classify(&err), Failure::Usage);
        assert_eq!(Failure::classify(&err).code(), EXIT_USAGE);
        let err = anyhow::Error::new(Unreachable { what: "postgres".into(), detail: "refused".into() });
        assert_eq!(Failure::classify(&err).code(), EXIT_UNREACHABLE);
        assert_eq!(Failure::classify(&anyhow::anyhow!("boom")).code(), EXIT_FAILED);
    }

    #[test]
    fn chain_joins_causes() {
        let err = Err::<(), _>(anyhow::anyhow!("inner")).context("outer").unwrap_err();
        assert_eq!(chain(&err).to_string(), "outer: inner");
    }
}
