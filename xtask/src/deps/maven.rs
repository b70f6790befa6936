//! Components that come from Maven Central: the Apache Kafka broker jars, and the Elasticsearch and
//! OpenSearch `integ-test-zip` distributions (the only runnable builds of them Maven Central serves).
//!
//! Layout under the cache (the testbed crate reads the same paths; the versions are its constants,
//! `testbed::kafka::KAFKA_VERSION` and `testbed::search::{ELASTICSEARCH,OPENSEARCH}_VERSION`):
//! - `kafka-<v>/lib/*.jar`: broker classpath, resolved from `xtask/maven/kafka/pom.xml`;
//! - `elasticsearch-<v>/`, `opensearch-<v>/`: the unpacked zips.
//!
//! Each piece is skipped when already present (and, for Kafka, made from the same pom), so a cached
//! re-run starts no JVM at all. Every piece is built in a `.partial` directory and renamed into place
//! at the end, so an interrupted install is redone rather than half-used. Maven runs with
//! `--strict-checksums` (a download that does not match Central's checksum fails), and the zips are
//! checked against SHA-512 digests pinned here.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::Ctx;
use crate::util::{Stamp, step};

use testbed::kafka::KAFKA_VERSION;
use testbed::search::{ELASTICSEARCH_VERSION, OPENSEARCH_VERSION};

/// A search distribution fetched as a zip from Maven Central.
struct Distribution {
    /// Directory name under the cache and inside the zip (`elasticsearch-8.19.21`).
    name: String,
    /// Maven coordinates `group:artifact:version:zip`.
    artifact: String,
    /// A file that proves the unpack finished.
    launcher: &'static str,
    /// SHA-512 of the zip, as Central publishes it (`<zip>.sha512`); pinned with the version.
    sha512: &'static str,
}

fn distributions() -> [Distribution; 2] {
    [
        Distribution {
            name: format!("elasticsearch-{ELASTICSEARCH_VERSION}"),
            artifact: format!(
                "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ELASTICSEARCH_VERSION}:zip"
            ),
            launcher: "bin/elasticsearch",
            sha512: "cf6b0a93860d329937ae7f913ec5073b0c726c77639764b93fc83a304aa1dd9d4defcfa2849948eea3b0b47c2065f994908603939fc2a4774c9c4d868c5ec1dd",
        },
        Distribution {
            name: format!("opensearch-{OPENSEARCH_VERSION}"),
            artifact: format!("org.opensearch.distribution.integ-test-zip:opensearch:{OPENSEARCH_VERSION}:zip"),
            launcher: "bin/opensearch",
            sha512: "8adbfaa13162b8d42b388ece6b39bfb7f1a349ab9c128d4eced78ba1dd43b5a10850b43b8aac19fa5ab11f4d5c355ddf6f6617514d6112b0936a1903005d1d36",
        },
    ]
}

fn kafka_pom() -> PathBuf {
    crate::util::project_root().join("xtask/maven/kafka/pom.xml")
}

fn kafka_dir(ctx: &Ctx) -> PathBuf {
    ctx.cache.join(format!("kafka-{KAFKA_VERSION}"))
}

/// Installed, from the current pom.
fn kafka_ready(ctx: &Ctx) -> anyhow::Result<bool> {
    let jar = kafka_dir(ctx).join("lib").join(format!("kafka_2.13-{KAFKA_VERSION}.jar"));
    Ok(jar.is_file() && Stamp::of(&[kafka_pom()])?.matches(&kafka_dir(ctx))?)
}

pub fn install(ctx: &Ctx) -> anyhow::Result<()> {
    require_tool("mvn", "maven")?;
    require_tool("java", "default-jdk-headless")?;
    require_tool("unzip", "unzip")?;
    let start = std::time::Instant::now();
    install_kafka(ctx)?;
    for dist in &distributions() {
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
    line(&format!("kafka {KAFKA_VERSION}"), kafka_ready(ctx)?, &kafka_dir(ctx));
    for dist in &distributions() {
        let dir = ctx.cache.join(&dist.name);
        line(&dist.name, dir.join(dist.launcher).is_file(), &dir);
    }
    Ok(())
}

fn install_kafka(ctx: &Ctx) -> anyhow::Result<()> {
    let dir = kafka_dir(ctx);
    if kafka_ready(ctx)? {
        eprintln!("maven: kafka {KAFKA_VERSION} cached in {}", dir.display());
        return Ok(());
    }
    let pom = kafka_pom();
    let partial = fresh_partial(&dir)?;
    let lib = partial.join("lib");
    step(
        &format!("kafka {KAFKA_VERSION}: resolve broker jars from Maven Central"),
        Command::new("mvn")
            .args(["-B", "-q", "--strict-checksums", "-f"])
            .arg(&pom)
            .arg("dependency:copy-dependencies")
            .arg(format!("-Dkafka.version={KAFKA_VERSION}"))
            .arg(format!("-DoutputDirectory={}", lib.display()))
            .arg("-DincludeScope=runtime"),
    )?;
    Stamp::of(&[pom])?.write(&partial)?;
    promote(&partial, &dir)
}

fn install_distribution(ctx: &Ctx, dist: &Distribution) -> anyhow::Result<()> {
    let dir = ctx.cache.join(&dist.name);
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
            .args(["-B", "-q", "--strict-checksums", "dependency:copy", "-Dtransitive=false"])
            .arg(format!("-Dartifact={}", dist.artifact))
            .arg(format!("-DoutputDirectory={}", partial.display())),
    )?;
    let zip = partial.join(format!("{}.zip", dist.name));
    crate::util::check_digest(&zip, "sha512", dist.sha512)?;
    step(&format!("{}: unpack", dist.name), Command::new("unzip").arg("-q").arg(&zip).arg("-d").arg(&partial))?;
    let unpacked = partial.join(&dist.name);
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
