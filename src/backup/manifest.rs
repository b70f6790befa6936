//! The manifest every backup carries: what was taken, when, from which server, where its consistency
//! point is, and the size and sha256 of every file.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Component;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Relative to the backup's directory, `/`-separated.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub component: Component,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Total bytes of the files.
    pub size: u64,
    pub files: Vec<FileEntry>,
    pub server_version: String,
    /// Where it was taken from (credentials removed).
    pub source: String,
    /// The component's consistency point and what verification compares against (PostgreSQL:
    /// LSN, timeline, row counts, tenants' chain heads; search: snapshot; redis: key count; kafka:
    /// offsets).
    pub consistency: serde_json::Value,
    pub audctl_version: String,
}

impl Manifest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        component: Component,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        files: Vec<FileEntry>,
        server_version: String,
        source: String,
        consistency: serde_json::Value,
    ) -> Self {
        Manifest {
            format: FORMAT,
            id,
            component,
            started,
            finished,
            size: files.iter().map(|f| f.size).sum(),
            files,
            server_version,
            source,
            consistency,
            audctl_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}
