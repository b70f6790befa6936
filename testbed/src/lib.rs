//! Real components for tests, started on loopback with random ports and stopped on drop.
//!
//! Components are installed once by `cargo xtask deps install` under [`cache_dir`]; this crate only
//! starts instances. A missing component is an error that says how to install it, never a skip.

pub mod kafka;
pub mod kube;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod scratch;
pub mod search;

use std::path::PathBuf;

pub use kafka::{Kafka, kafka, kafka_with};
pub use kube::{Kube, KubeOptions, kube, kube_with};
pub use postgres::{PgOptions, Postgres, postgres, postgres_with};
pub use process::{Process, free_port, wait_until};
pub use redis::{RedisSentinel, redis_sentinel};
pub use search::{Product, Search, search, search_jvm, search_with};

/// How the testbed's JVMs (Kafka brokers, search nodes) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jvm {
    /// Small heaps and the C1 compiler only: tests start many clusters and care for start-up time.
    FastStart,
    /// Deployment-sized heaps and the full JIT: benchmarks measure steady state, as production runs.
    Steady,
}

/// Where `cargo xtask deps install` puts binaries, jars and distributions: `$AUDCTL_CACHE`, else
/// `$XDG_CACHE_HOME/audctl`, else `~/.cache/audctl`. Outside the clone so CI and new clones reuse it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AUDCTL_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("audctl")
}

/// A Python tool installed by `cargo xtask deps install` in the cache's virtualenv (e.g. schemathesis);
/// an error saying how to install it when absent.
pub fn python_tool(name: &str) -> anyhow::Result<PathBuf> {
    require(name, &cache_dir().join("python").join("bin").join(name))
}

/// The unprivileged system user that runs components refusing root (PostgreSQL, Elasticsearch).
pub const RUN_AS_USER: &str = "audctl-testbed";

/// Fail with install instructions when `path` (a binary or distribution) is absent.
pub fn require(component: &str, path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        Ok(path.to_owned())
    } else {
        anyhow::bail!(
            "{component} is not installed (expected {}): run `cargo xtask deps install` first",
            path.display()
        )
    }
}
