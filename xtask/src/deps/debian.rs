//! Debian packages the testbed and the heavy crates' builds need.
//!
//! Checked with one `dpkg-query` call (well under a second), so cached re-runs cost nothing; apt's
//! index is only refreshed when something is actually missing.

use std::process::Command;

use anyhow::Context;

use crate::util::{capture, step};

/// Package and why it is here (printed by `deps status`). Names valid on Debian 12 and 13:
/// PostgreSQL comes as `postgresql-<major>` (see [`packages`]), Java as the release's default JDK
/// (17 on Debian 12, 21 on 13; Kafka 4 and Elasticsearch 8 / OpenSearch 2 run on either).
const PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "Redis primary and replica"),
    ("redis-sentinel", "the three sentinels watching mymaster"),
    ("redis-tools", "redis-cli (readiness probes)"),
    ("libcurl4-openssl-dev", "rdkafka's bundled librdkafka includes curl/curl.h"),
    ("curl", "HTTP probes by hand, and the Go toolchain download when Go is missing"),
    ("cmake", "rdkafka cmake-build"),
    ("g++", "rdkafka cmake-build"),
    ("make", "rdkafka cmake-build"),
    ("pkg-config", "rdkafka / openssl-sys discovery"),
    ("zlib1g-dev", "rdkafka compression"),
    ("libssl-dev", "rdkafka TLS"),
    ("openssl", "self-signed certificates and service-account keys for the Kubernetes testbed"),
    ("default-jdk-headless", "Kafka and Elasticsearch/OpenSearch (Java 17 or 21)"),
    ("maven", "fetches Kafka jars and the Elasticsearch integ-test zip from Maven Central"),
    ("unzip", "unpacks the Elasticsearch/OpenSearch distribution and the Go toolchain"),
    ("procps", "ps/pgrep used when diagnosing leftover processes"),
    ("python3", "the audit-server tests re-verify hash chains with the README's Python recipe"),
    ("python3-venv", "a virtualenv for the Python test tools (schemathesis) under the cache"),
    ("wrk", "the reference HTTP load generator of `cargo xtask bench load`"),
];

/// [`PACKAGES`] plus PostgreSQL at the testbed's pinned major (`testbed::postgres::major`).
fn packages() -> anyhow::Result<Vec<(String, String)>> {
    let major = testbed::postgres::major()?;
    let mut all = vec![(
        format!("postgresql-{major}"),
        format!("PostgreSQL {major} (the pinned major): initdb, pg_basebackup, psql, pg_isready"),
    )];
    all.extend(PACKAGES.iter().map(|(name, why)| ((*name).to_owned(), (*why).to_owned())));
    Ok(all)
}

/// A command that needs root: as is when we are root, else through sudo (which may ask for the
/// password). Only apt-get, stopping Debian's default services and useradd need it.
pub fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

pub fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// Services whose Debian packages may start a default instance on install (port 5432/6379/26379).
/// The testbed uses its own instances on random ports; a stray default instance only costs memory.
const AUTOSTARTED_SERVICES: &[&str] = &["postgresql", "redis-server", "redis-sentinel"];

/// Names of the packages in [`packages`] that are not fully installed.
fn missing() -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = packages()?.into_iter().map(|(name, _)| name).collect();
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
    Ok(names.into_iter().filter(|name| !installed.contains(&name.as_str())).collect())
}

pub fn install(_ctx: &super::Ctx) -> anyhow::Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        eprintln!("debian: all {} packages present", PACKAGES.len() + 1);
    } else {
        eprintln!("debian: missing {}", missing.join(" "));
        if !is_root() {
            let sudo =
                std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("sudo").is_file()));
            if !sudo {
                anyhow::bail!(
                    "missing Debian packages {}: installing them needs root, and there is no sudo; run \
                     `cargo xtask deps install` as root once, or install them yourself",
                    missing.join(" ")
                );
            }
            eprintln!("debian: not root: apt-get runs through sudo");
        }
        // `sudo VAR=value cmd` passes the variable on where `sudo` would drop an inherited one.
        let apt = |args: &[&str]| {
            let mut cmd = as_root("env");
            cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]).args(args);
            cmd
        };
        step("apt-get update", &mut apt(&["update", "-qq"]))?;
        let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
        step(&format!("apt-get install {}", missing.join(" ")), install.args(&missing))?;
        stop_default_services();
    }
    // Only root needs it: as anyone else the testbed runs PostgreSQL and the search nodes as itself.
    if is_root() { super::ensure_run_user() } else { Ok(()) }
}

/// Stop the default instances a fresh install may have started. Only after we installed something,
/// so a developer's own long-running services are left alone on ordinary runs.
fn stop_default_services() {
    for service in AUTOSTARTED_SERVICES {
        let running = Command::new("service").args([service, "status"]).output().is_ok_and(|o| o.status.success());
        if running {
            // Best effort: failing to stop only wastes memory, the testbed never uses default ports.
            if let Err(e) =
                step(&format!("stop Debian's default {service}"), as_root("service").args([service, "stop"]))
            {
                eprintln!("debian: {e:#}");
            }
        }
    }
}

pub fn status(_ctx: &super::Ctx) -> anyhow::Result<()> {
    let missing = missing()?;
    for (name, why) in packages()? {
        let state = if missing.contains(&name) { "MISSING" } else { "ok" };
        println!("debian  {name:<26} {state:<8} {why}");
    }
    let pg = capture(Command::new("sh").args(["-c", "ls -d /usr/lib/postgresql/*/bin 2>/dev/null || true"]))?;
    println!("debian  postgresql bin dirs: {}", if pg.trim().is_empty() { "none" } else { pg.trim() });
    match testbed::postgres::bin_dir() {
        Ok(dir) => println!("debian  the testbed runs {}", dir.display()),
        Err(e) => println!("debian  {e:#}"),
    }
    Ok(())
}
