//! A secret value that is resolved late and never printed.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a secret comes from. In YAML: `password: {env: PGPASSWORD}`, `{file: /run/secrets/pg}`,
/// or a plain string (for throw-away local stacks only).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    Env { env: String },
    File { file: PathBuf },
    Inline(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("reading secret file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

impl Secret {
    /// The secret's value. Call it at the point of use; never log the result.
    pub fn expose(&self) -> Result<String, SecretError> {
        match self {
            Secret::Env { env } => std::env::var(env).map_err(|_| SecretError::MissingEnv(env.clone())),
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|source| SecretError::File { path: file.clone(), source }),
            Secret::Inline(v) => Ok(v.clone()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env { env } => write!(f, "Secret(env:{env})"),
            Secret::File { file } => write!(f, "Secret(file:{})", file.display()),
            Secret::Inline(_) => f.write_str("Secret(***)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_inline_value() {
        let s: Secret = serde_yaml::from_str("hunter2").expect("inline");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose().expect("inline"), "hunter2");
    }

    #[test]
    fn file_and_env_sources() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n")?;
        let s: Secret = serde_yaml::from_str(&format!("file: {}", path.display()))?;
        assert_eq!(s.expose()?, "s3cret");
        let s: Secret = serde_yaml::from_str("env: AUDCTL_TEST_SURELY_UNSET_VAR")?;
        assert!(matches!(s.expose(), Err(SecretError::MissingEnv(_))));
        Ok(())
    }
}
