//! Components that come from Maven Central: the Apache Kafka broker jars, and the Elasticsearch and
//! OpenSearch `integ-test-zip` distributions (the only runnable builds of them Maven Central serves).
//!
//! Layout under the cache (the testbed crate reads the same paths; keep the versions in step with
//! `testbed::kafka` and `testbed::search`):
//! - `kafka-<v>/lib/*.jar`: broker classpath, resolved from `xtask/maven/kafka/pom.xml`;
//! - `elasticsearch-<v>/`, `opensearch-<v>/`: the unpacked zips.
//!
//! Each piece is skipped when already present, so a cached re-run starts no JVM at all. Every piece
//! is built in a `.partial` directory and renamed into place at the end, so an interrupted install
//! is redone rather than half-used.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::Ctx;
use crate::util::step;

pub const KAFKA_VERSION: &str = "4.4.0";

/// A search distribution fetched as a zip from Maven Central.
struct Distribution {
    /// Directory name under the cache and inside the zip (`elasticsearch-8.19.21`).
    name: &'static str,
    /// Maven coordinates `group:artifact:version:zip`.
    artifact: &'static str,
    /// A file that proves the unpack finished.
    launcher: &'static str,
}

const DISTRIBUTIONS: [Distribution; 2] = [
    Distribution {
        name: "elasticsearch-8.19.21",
        artifact: "org.elasticsearch.distribution.integ-test-zip:elasticsearch:8.19.21:zip",
        launcher: "bin/elasticsearch",
    },
    Distribution {
        name: "opensearch-2.19.6",
        artifact: "org.opensearch.distribution.integ-test-zip:opensearch:2.19.6:zip",
        launcher: "bin/opensearch",
    },
];

fn kafka_dir(ctx: &Ctx) -> PathBuf {
    ctx.cache.join(format!("kafka-{KAFKA_VERSION}"))
}

fn kafka_ready(ctx: &Ctx) -> bool {
    kafka_dir(ctx).join("lib").join(format!("kafka_2.13-{KAFKA_VERSION}.jar")).is_file()
}

pub fn install(ctx: &Ctx) -> anyhow::Result<()> {
    require_tool("mvn", "maven")?;
    require_tool("java", "openjdk-17-jre-headless")?;
    require_tool("unzip", "unzip")?;
    let start = std::time::Instant::now();
    install_kafka(ctx)?;
    for dist in &DISTRIBUTIONS {
        install_distribution(ctx, dist)?;
    }
    eprintln!("maven: done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn status(ctx: &Ctx) -> anyhow::Result<()> {
    // Same columns as the other components' status lines.
    let line = |what: &str, ok: bool, path: &Path| {
        println!("maven   {what:<34} {:<8} {}", if ok { "ok" } else { "MISSING" }, path.display());
    };
    line(&format!("kafka {KAFKA_VERSION}"), kafka_ready(ctx), &kafka_dir(ctx));
    for dist in &DISTRIBUTIONS {
        let dir = ctx.cache.join(dist.name);
        line(dist.name, dir.join(dist.launcher).is_file(), &dir);
    }
    Ok(())
}

fn install_kafka(ctx: &Ctx) -> anyhow::Result<()> {
    let dir = kafka_dir(ctx);
    if kafka_ready(ctx) {
        eprintln!("maven: kafka {KAFKA_VERSION} cached in {}", dir.display());
        return Ok(());
    }
    let pom = crate::util::project_root().join("xtask/maven/kafka/pom.xml");
    let partial = fresh_partial(&dir)?;
    let lib = partial.join("lib");
    step(
        &format!("kafka {KAFKA_VERSION}: resolve broker jars from Maven Central"),
        Command::new("mvn")
            .args(["-B", "-q", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-Dkafka.version={KAFKA_VERSION}"))
            .arg(format!("-DoutputDirectory={}", lib.display()))
            .arg("-DincludeScope=runtime"),
    )?;
    promote(&partial, &dir)
}

fn install_distribution(ctx: &Ctx, dist: &Distribution) -> anyhow::Result<()> {
    let dir = ctx.cache.join(dist.name);
    if dir.join(dist.launcher).is_file() {
        eprintln!("maven: {} cached in {}", dist.name, dir.display());
        return Ok(());
    }
    let partial = fresh_partial(&dir)?;
    // dependency:copy resolves through ~/.m2 like dependency:get, and also puts the zip at a path we
    // know without asking Maven where its local repository is.
    step(
        &format!("{}: fetch {} from Maven Central", dist.name, dist.artifact),
        Command::new("mvn")
            .args(["-B", "-q", "dependency:copy", "-Dtransitive=false"])
            .arg(format!("-Dartifact={}", dist.artifact))
            .arg(format!("-DoutputDirectory={}", partial.display())),
    )?;
    let zip = partial.join(format!("{}.zip", dist.name));
    step(&format!("{}: unpack", dist.name), Command::new("unzip").arg("-q").arg(&zip).arg("-d").arg(&partial))?;
    let unpacked = partial.join(dist.name);
    if !unpacked.join(dist.launcher).is_file() {
        bail!("{} did not contain {}/{}", zip.display(), dist.name, dist.launcher);
    }
    std::fs::remove_file(&zip).with_context(|| format!("removing {}", zip.display()))?;
    // The zip unpacks into a folder of the same name; move that folder's content up one level.
    promote(&unpacked, &dir)?;
    std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))
}

/// An empty `<dir>.partial`, left-overs of an interrupted run removed.
fn fresh_partial(dir: &Path) -> anyhow::Result<PathBuf> {
    let partial = dir.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    Ok(partial)
}

fn promote(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing incomplete {}", to.display()))?;
    }
    std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

fn require_tool(tool: &str, debian_package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{tool}` not found on PATH: install the Debian package {debian_package}");
    }
    Ok(())
}
