//! Connection settings ("targets") of everything audctl talks to.
//!
//! One YAML file (`audctl --targets FILE`) names the cluster, the datastores and the service. The
//! testbed writes the same file for the components it starts, so a test drives audctl exactly as an
//! operator would. Secrets are never stored inline by operators: a [`Secret`] is read from an
//! environment variable or a file, and never shows in `Debug`/`Display` output.

mod secret;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use secret::{Secret, SecretError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Targets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeTarget {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// PostgreSQL: the primary and, optionally, replicas to read replication state from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresTarget {
    /// `postgres://user@host:port/db` (a password here is accepted but better kept in `password`).
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// Directory where WAL segments are archived, when audctl can see it (backup verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_archive: Option<PathBuf>,
}

/// Redis behind Sentinel (the seed's `mymaster`), or a direct URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisTarget {
    /// Sentinel addresses `host:port`; when empty, `url` is used directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sentinels: Vec<String>,
    #[serde(default = "default_master_set")]
    pub master_set: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

fn default_master_set() -> String {
    "mymaster".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaTarget {
    pub bootstrap_servers: Vec<String>,
    #[serde(default = "default_topic")]
    pub topic: String,
}

fn default_topic() -> String {
    "audit-events".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchProduct {
    #[default]
    Elasticsearch,
    Opensearch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchTarget {
    pub url: String,
    #[serde(default)]
    pub product: SearchProduct,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Name of the snapshot repository used by backup/restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_repository: Option<String>,
}

/// The Audit Trail service itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditTarget {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// Where `audctl backup` writes and `audctl restore` reads backups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupTarget {
    /// The backup repository: a local or mounted directory (`audctl backup --repo` overrides it).
    pub repo: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Targets {
    pub fn load(path: &Path) -> Result<Self, TargetsError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TargetsError::Read { path: path.to_owned(), source })?;
        Self::from_yaml(&text).map_err(|e| TargetsError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(self)
    }
}

/// A URL fit for printing: any password in it, and the value of any query parameter that names a
/// secret (password, passwd, pwd, token, secret, *key), are replaced by `***`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        // `user:secret@host/db` without a scheme parses as scheme `user` with no host: the
        // password would be shown as part of the path. Treat it as unparseable.
        Ok(u) if u.host().is_none() && raw.contains('@') => after_credentials(raw),
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if u.query_pairs().any(|(k, _)| is_secret_param(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_param(&k) { "***".to_owned() } else { v.into_owned() };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => after_credentials(raw),
    }
}

/// Not a URL we can parse: show only the part after the last '@', which never holds credentials.
fn after_credentials(raw: &str) -> String {
    raw.rsplit('@').next().unwrap_or_default().to_owned()
}

/// Query parameters whose value is a secret (`password`, `sslpassword`, `access_token`, `apiKey`...).
pub fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passwd", "pwd", "token", "secret"].iter().any(|s| n.contains(s)) || n.ends_with("key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults() {
        let t = Targets::from_yaml(
            "postgres:\n  url: postgres://audit@127.0.0.1:5432/audit\nredis:\n  sentinels: [\"127.0.0.1:26379\"]\nkafka:\n  bootstrapServers: [\"127.0.0.1:9092\"]\nbackup:\n  repo: /var/backups/audit\n",
        )
        .expect("valid targets");
        assert_eq!(t.redis.as_ref().map(|r| r.master_set.as_str()), Some("mymaster"));
        assert_eq!(t.kafka.as_ref().map(|k| k.topic.as_str()), Some("audit-events"));
        assert_eq!(t.backup.as_ref().map(|b| b.repo.as_path()), Some(Path::new("/var/backups/audit")));
        let again = Targets::from_yaml(&t.to_yaml().expect("serialise")).expect("reparse");
        assert_eq!(again, t);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Targets::from_yaml("postgress:\n  url: x\n").unwrap_err().to_string();
        assert!(err.contains("postgress"), "{err}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:hunter2@h:5432/db"), "postgres://u:***@h:5432/db");
        assert!(!redact_url("not a url user:hunter2@host").contains("hunter2"));
        assert!(!redact_url("audit:hunter2@db.example/audit").contains("hunter2"));
        assert!(!redact_url("http://elastic:hunter2@127.0.0.1:99999").contains("hunter2"));
        let q = redact_url("postgres://u@h/db?sslmode=require&password=hunter2&token=t0k&apiKey=k3y");
        assert!(!q.contains("hunter2") && !q.contains("t0k") && !q.contains("k3y"), "{q}");
        assert!(q.contains("sslmode=require"), "{q}");
    }
}
