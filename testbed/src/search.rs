//! A single-node Elasticsearch 8 (or OpenSearch 2) from the `integ-test-zip` distributions that
//! `cargo xtask deps install` unpacks, with a filesystem snapshot repository registered.
//!
//! Both refuse to run as root, so when we are root the node runs as [`crate::RUN_AS_USER`] through
//! `runuser`. The distribution is hard-linked into the node's temp dir (the cache under /root is not
//! readable by that user, and nothing may write into the shared cache); config, data, logs and the
//! snapshot repository are per-node directories owned by the run-as user.
//!
//! The test zips are minimal (ES: transport-netty4, x-pack-core/security, apm): `GET /` answers 405,
//! so readiness is `/_cluster/health`, and no setting of an absent module may appear in the config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::unistd::{Gid, Uid};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Jvm;
use crate::process::{Process, free_port, wait_until};

/// The distributions the testbed runs; the one place they are kept (`cargo xtask deps install`
/// fetches them and pins their digests).
pub const ELASTICSEARCH_VERSION: &str = "8.19.21";
pub const OPENSEARCH_VERSION: &str = "2.19.6";

/// Name under which the node's fs snapshot repository is registered.
pub const SNAPSHOT_REPOSITORY: &str = "audctl-testbed";

/// A JVM node needs ~10 s alone, over a minute on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Elasticsearch,
    OpenSearch,
}

impl Product {
    fn dist(self) -> String {
        match self {
            Product::Elasticsearch => format!("elasticsearch-{ELASTICSEARCH_VERSION}"),
            Product::OpenSearch => format!("opensearch-{OPENSEARCH_VERSION}"),
        }
    }

    /// Launcher and config file name (`elasticsearch`, `opensearch`), also the env var stem.
    fn stem(self) -> &'static str {
        match self {
            Product::Elasticsearch => "elasticsearch",
            Product::OpenSearch => "opensearch",
        }
    }

    fn env(self, suffix: &str) -> String {
        match self {
            Product::Elasticsearch => format!("ES_{suffix}"),
            Product::OpenSearch => format!("OPENSEARCH_{suffix}"),
        }
    }
}

/// A running search node. Dropping it stops the node and deletes its data and snapshots.
pub struct Search {
    // Declared before `dir` so the node stops before its directories are removed.
    process: Process,
    product: Product,
    port: u16,
    snapshot_dir: PathBuf,
    _dir: TempDir,
}

/// Elasticsearch 8, single node.
pub async fn search() -> anyhow::Result<Search> {
    search_with(Product::Elasticsearch).await
}

pub async fn search_with(product: Product) -> anyhow::Result<Search> {
    search_jvm(product, Jvm::FastStart).await
}

/// [`search_with`] with the node's JVM profile chosen: benchmarks take [`Jvm::Steady`].
pub async fn search_jvm(product: Product, jvm: Jvm) -> anyhow::Result<Search> {
    let home = crate::cache_dir().join(product.dist());
    crate::require(&product.dist(), &home.join("bin").join(product.stem()))?;
    // free_port() leaves a short window before the node binds; on a collision start afresh.
    let mut attempt = 1;
    loop {
        match start(product, &home, jvm).await {
            Err(e) if attempt < 3 && crate::process::is_port_clash(&e) => attempt += 1,
            other => return other,
        }
    }
}

async fn start(product: Product, dist: &Path, jvm: Jvm) -> anyhow::Result<Search> {
    let owner = run_as_owner()?;
    let dir = crate::scratch::instance_dir_on_disk(&format!("audctl-{}-", product.stem()))?;
    let root = dir.path();
    let home = root.join("home");
    link_tree(dist, &home)?;
    let (conf, data, logs, repo, tmp) =
        (root.join("config"), root.join("data"), root.join("logs"), root.join("snapshots"), root.join("tmp"));
    copy_config(&dist.join("config"), &conf)?;
    for d in [&data, &logs, &repo, &tmp] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // jvm.options names GC logs, crash files and heap dumps relative to the (read-only) home.
    let jvm_options = conf.join("jvm.options");
    let options =
        std::fs::read_to_string(&jvm_options).with_context(|| format!("reading {}", jvm_options.display()))?;
    let options = options
        .replace("=logs/", &format!("={}/", logs.display()))
        .replace("HeapDumpPath=data", &format!("HeapDumpPath={}", data.display()));
    std::fs::write(&jvm_options, options).with_context(|| format!("writing {}", jvm_options.display()))?;
    let (port, transport_port) = (free_port()?, free_port()?);
    let mut yml = format!(
        "cluster.name: audctl-testbed
node.name: node-1
discovery.type: single-node
network.host: 127.0.0.1
http.port: {port}
transport.port: {transport_port}
path.data: {data}
path.logs: {logs}
path.repo: [\"{repo}\"]
# Test machines may have fuller disks than production; shards must still allocate.
cluster.routing.allocation.disk.threshold_enabled: false
",
        data = data.display(),
        logs = logs.display(),
        repo = repo.display()
    );
    if product == Product::Elasticsearch {
        yml.push_str("xpack.security.enabled: false\n");
    }
    let yml_path = conf.join(format!("{}.yml", product.stem()));
    std::fs::write(&yml_path, yml).with_context(|| format!("writing {}", yml_path.display()))?;
    if let Some((uid, gid)) = owner {
        // The node writes its keystore into config; everything but the hard-linked home is its own.
        for d in [&conf, &data, &logs, &repo, &tmp] {
            chown_tree(d, uid, gid)?;
        }
        nix::unistd::chown(root, Some(uid), Some(gid)).with_context(|| format!("chown {}", root.display()))?;
    }

    let launcher = home.join("bin").join(product.stem());
    let mut cmd = if owner.is_some() {
        let mut c = Command::new("runuser");
        c.args(["-u", crate::RUN_AS_USER, "--"]).arg(&launcher);
        c
    } else {
        Command::new(&launcher)
    };
    cmd.current_dir(root)
        .env(product.env("PATH_CONF"), &conf)
        .env(
            product.env("JAVA_OPTS"),
            match jvm {
                // C1 only: start-up is JIT-bound; measured 63 s -> 34 s for ES at load ~5 on 2 cores.
                Jvm::FastStart => "-Xms256m -Xmx512m -XX:TieredStopAtLevel=1",
                // values/defaults.yaml's elasticsearch.javaOpts, the full JIT.
                Jvm::Steady => "-Xms1g -Xmx1g",
            },
        )
        .env(product.env("JAVA_HOME"), java_home()?)
        .env(product.env("TMPDIR"), &tmp);
    let mut process = Process::spawn(product.stem(), cmd, root.join(format!("{}.log", product.stem())))?;

    wait_until(&mut process, START_TIMEOUT, || async move {
        let (status, body) = http(port, "GET", "/_cluster/health", None).await?;
        Ok(status == 200 && (body.contains("\"status\":\"green\"") || body.contains("\"status\":\"yellow\"")))
    })
    .await?;
    let body = format!(r#"{{"type":"fs","settings":{{"location":"{}"}}}}"#, repo.display());
    let (status, answer) = http(port, "PUT", &format!("/_snapshot/{SNAPSHOT_REPOSITORY}"), Some(&body)).await?;
    if status != 200 {
        bail!("registering snapshot repository {SNAPSHOT_REPOSITORY} at {}: HTTP {status}: {answer}", repo.display());
    }
    Ok(Search { process, product, port, snapshot_dir: repo, _dir: dir })
}

impl Search {
    /// `http://127.0.0.1:PORT` (no security: the test zips run without TLS or users).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Directory of the fs snapshot repository [`SNAPSHOT_REPOSITORY`] (also the node's `path.repo`).
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    pub fn product(&self) -> Product {
        self.product
    }

    /// Process id (= process group id) of the node's launcher, e.g. to measure memory.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Connection settings as an operator would write them in the targets file.
    pub fn target(&self) -> audctl_targets::SearchTarget {
        audctl_targets::SearchTarget {
            url: self.url(),
            product: match self.product {
                Product::Elasticsearch => audctl_targets::SearchProduct::Elasticsearch,
                Product::OpenSearch => audctl_targets::SearchProduct::Opensearch,
            },
            username: None,
            password: None,
            snapshot_repository: Some(SNAPSHOT_REPOSITORY.to_owned()),
        }
    }
}

/// The run-as user's ids when we are root (the nodes refuse root), None when we are not.
fn run_as_owner() -> anyhow::Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(crate::RUN_AS_USER)?.with_context(|| {
        format!("system user {} is missing: run `cargo xtask deps install` first", crate::RUN_AS_USER)
    })?;
    Ok(Some((user.uid, user.gid)))
}

/// The JDK to run the node with: `$JAVA_HOME`, else the one `java` on PATH belongs to. The test zips
/// carry no bundled JDK, so the launcher needs one named.
fn java_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("JAVA_HOME").map(PathBuf::from)
        && home.join("bin/java").is_file()
    {
        return Ok(home);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let java = std::env::split_paths(&path)
        .map(|d| d.join("java"))
        .find(|p| p.is_file())
        .context("no `java` on PATH and no JAVA_HOME: run `cargo xtask deps install` (installs the default JDK)")?;
    let real = java.canonicalize().with_context(|| format!("resolving {}", java.display()))?;
    real.parent()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .with_context(|| format!("{} is not in a JDK's bin/ directory", real.display()))
}

/// Hard-link `src` into `dst` (a copy if they are on different filesystems): ~240 files, instant.
fn link_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let linked = Command::new("cp").arg("-al").arg(src).arg(dst).output()?;
    if linked.status.success() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dst);
    let copied = Command::new("cp").arg("-a").arg(src).arg(dst).output()?;
    if !copied.status.success() {
        bail!("copying {} to {}: {}", src.display(), dst.display(), String::from_utf8_lossy(&copied.stderr));
    }
    Ok(())
}

/// A real copy (not links): the node rewrites files here, which must not reach the shared cache.
fn copy_config(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let out = Command::new("cp").arg("-r").arg(src).arg(dst).output()?;
    if !out.status.success() {
        bail!("copying {} to {}: {}", src.display(), dst.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    nix::unistd::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// One HTTP/1.0 request to 127.0.0.1:`port` (no keep-alive, no chunking): status and body. Enough
/// for readiness and set-up; tests use the real client crates.
async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .context("connect timed out")??;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .with_context(|| format!("{method} {path}: no answer within 30 s"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: not an HTTP response: {head:.200}"))?;
    Ok((status, body.to_owned()))
}
