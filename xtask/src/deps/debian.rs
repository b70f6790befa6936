//! Debian packages the testbed and the heavy crates' builds need.
//!
//! Checked with one `dpkg-query` call (well under a second), so cached re-runs cost nothing; apt's
//! index is only refreshed when something is actually missing.

use std::process::Command;

use anyhow::Context;

use crate::util::{capture, step};

/// Package and why it is here (printed by `deps status`).
const PACKAGES: &[(&str, &str)] = &[
    ("postgresql", "initdb, pg_ctl, pg_basebackup, psql, pg_isready for the primary + replica"),
    ("redis-server", "Redis primary and replica"),
    ("redis-sentinel", "the three sentinels watching mymaster"),
    ("redis-tools", "redis-cli (readiness probes)"),
    ("libcurl4-openssl-dev", "rdkafka's bundled librdkafka includes curl/curl.h"),
    ("curl", "HTTP probes by hand"),
    ("cmake", "rdkafka cmake-build"),
    ("g++", "rdkafka cmake-build"),
    ("make", "rdkafka cmake-build"),
    ("pkg-config", "rdkafka / openssl-sys discovery"),
    ("zlib1g-dev", "rdkafka compression"),
    ("libssl-dev", "rdkafka TLS"),
    ("openssl", "self-signed certificates and service-account keys for the Kubernetes testbed"),
    ("openjdk-17-jdk-headless", "Kafka and Elasticsearch/OpenSearch run on Java 17"),
    ("maven", "fetches Kafka jars and the Elasticsearch integ-test zip from Maven Central"),
    ("unzip", "unpacks the Elasticsearch/OpenSearch distribution"),
    ("procps", "ps/pgrep used when diagnosing leftover processes"),
    ("wrk", "the reference HTTP load generator of `cargo xtask bench load`"),
];

/// Services whose Debian packages may start a default instance on install (port 5432/6379/26379).
/// The testbed uses its own instances on random ports; a stray default instance only costs memory.
const AUTOSTARTED_SERVICES: &[&str] = &["postgresql", "redis-server", "redis-sentinel"];

/// Names of the packages in [`PACKAGES`] that are not fully installed.
fn missing() -> anyhow::Result<Vec<&'static str>> {
    let names: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    // dpkg-query exits 1 when a name is unknown to dpkg; its stdout still lists the known ones.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${db:Status-Abbrev}\n")
        .args(&names)
        .output()
        .context("running dpkg-query (is this a Debian-based machine?)")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim_end() == "ii")
        .map(|(name, _)| name)
        .collect();
    Ok(names.into_iter().filter(|name| !installed.contains(name)).collect())
}

pub fn install(_ctx: &super::Ctx) -> anyhow::Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        eprintln!("debian: all {} packages present", PACKAGES.len());
    } else {
        eprintln!("debian: missing {}", missing.join(" "));
        step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        step(
            &format!("apt-get install {}", missing.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        stop_default_services();
    }
    super::ensure_run_user()
}

/// Stop the default instances a fresh install may have started. Only after we installed something,
/// so a developer's own long-running services are left alone on ordinary runs.
fn stop_default_services() {
    for service in AUTOSTARTED_SERVICES {
        let running = Command::new("service").args([service, "status"]).output().is_ok_and(|o| o.status.success());
        if running {
            // Best effort: failing to stop only wastes memory, the testbed never uses default ports.
            if let Err(e) =
                step(&format!("stop Debian's default {service}"), Command::new("service").args([service, "stop"]))
            {
                eprintln!("debian: {e:#}");
            }
        }
    }
}

pub fn status(_ctx: &super::Ctx) -> anyhow::Result<()> {
    let missing = missing()?;
    for (name, why) in PACKAGES {
        let state = if missing.contains(name) { "MISSING" } else { "ok" };
        println!("debian  {name:<26} {state:<8} {why}");
    }
    let pg = capture(Command::new("sh").args(["-c", "ls -d /usr/lib/postgresql/*/bin 2>/dev/null || true"]))?;
    println!("debian  postgresql bin dirs: {}", if pg.trim().is_empty() { "none" } else { pg.trim() });
    Ok(())
}
