//! `cargo xtask bench load`: audctl's load generator measured against wrk and against itself.
//!
//! 1. Speed: `audctl load --scenario get --concurrency 64` and `wrk -t2 -c64` on the audit server's
//!    liveness endpoint (SQLite, release build, loopback), 10 s each: request rates, CPU seconds
//!    used by each tool (getrusage of the children), and the ratios.
//! 2. Honesty: the server is SIGSTOPped for 1 s in the middle of a run. The open model's corrected
//!    p99 must show the pause (>= 500 ms); wrk (closed loop) is run the same way for comparison.
//! 3. Memory: RSS of audctl at the start and the end of a soak (`--soak SECONDS`, 30 by default;
//!    the 10-minute soak is `--soak 600`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{cargo, step, target_dir};

const CONNECTIONS: &str = "64";

pub fn run(soak: u64) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: run `cargo xtask deps install` (Debian package wrk)");
    }
    step(
        "build release audctl and audit-server",
        cargo().args(["build", "--release", "-p", "audctl", "-p", "audit-server"]),
    )?;
    let bin = target_dir().join("release");
    let server = Server::start(&bin.join("audit-server"))?;
    let url = format!("http://127.0.0.1:{}/actuator/health/liveness", server.port);
    let audctl = bin.join("audctl");
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Speed, 10 s each, same connections, closed loop for both (wrk has no open model).
    eprintln!(
        "==> speed: wrk -t2 -c{CONNECTIONS} -d10s vs audctl load --scenario get --concurrency {CONNECTIONS} --duration 10s"
    );
    let (wrk_out, wrk_cpu) = cpu_of(|| {
        Command::new("wrk").args(["-t2", &format!("-c{CONNECTIONS}"), "-d10s", &url]).stderr(Stdio::inherit()).output()
    })?;
    let wrk_text = String::from_utf8_lossy(&wrk_out.stdout).into_owned();
    let wrk_rps =
        wrk_requests_per_second(&wrk_text).with_context(|| format!("no Requests/sec in wrk's output:\n{wrk_text}"))?;
    let (aud_out, aud_cpu) = cpu_of(|| {
        Command::new(&audctl)
            .args(["load", "--scenario", "get", "--url", &url, "--concurrency", CONNECTIONS, "--duration", "10s"])
            .args(["--max-p99", "1h", "-o", "json"])
            .stderr(Stdio::inherit())
            .output()
    })?;
    let report: serde_json::Value = serde_json::from_slice(&aud_out.stdout).context("audctl load -o json")?;
    let aud_rps = report["throughput"].as_f64().context("throughput")?;
    rows.push((
        "wrk requests/s".into(),
        format!("{wrk_rps:.0} ({wrk_cpu:.1} CPU s, {:.0} req per CPU s)", wrk_rps * 10.0 / wrk_cpu),
    ));
    rows.push((
        "audctl requests/s".into(),
        format!(
            "{aud_rps:.0} ({aud_cpu:.1} CPU s, {:.0} req per CPU s)",
            aud_rps * report["elapsedSeconds"].as_f64().unwrap_or(10.0) / aud_cpu
        ),
    ));
    rows.push(("speed ratio audctl/wrk".into(), format!("{:.2}x (aim >= 1.0x)", aud_rps / wrk_rps)));
    rows.push((
        "efficiency ratio (req per CPU s)".into(),
        format!("{:.2}x", (aud_rps * 10.0 / aud_cpu) / (wrk_rps * 10.0 / wrk_cpu)),
    ));

    // 2. Honesty: 1 s pause of the server, 2 s into a 6 s run.
    eprintln!("==> honesty: the server is paused (SIGSTOP) for 1 s, 2 s into each run");
    let open = with_pause(server.pid, || {
        Command::new(&audctl)
            .args(["load", "--scenario", "get", "--url", &url, "--rate", "500", "--duration", "6s"])
            .args(["--connections", CONNECTIONS, "--max-p99", "1h", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    })?;
    let open: serde_json::Value = serde_json::from_slice(&open.stdout).context("audctl load -o json")?;
    let corrected = open["corrected"]["p99"].as_f64().unwrap_or(0.0);
    let service = open["service"]["p99"].as_f64().unwrap_or(0.0);
    rows.push((
        "open model p99 with a 1 s pause".into(),
        format!(
            "corrected {corrected:.1} ms, service {service:.1} ms: {}",
            if corrected >= 500.0 { "the pause shows (>= 500 ms)" } else { "FAIL: the pause is hidden" }
        ),
    ));
    let closed = with_pause(server.pid, || {
        Command::new("wrk")
            .args(["-t2", &format!("-c{CONNECTIONS}"), "-d6s", "--latency", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    })?;
    let closed_text = String::from_utf8_lossy(&closed.stdout).into_owned();
    rows.push((
        "wrk (closed loop) p99 with a 1 s pause".into(),
        wrk_p99(&closed_text).map(|ms| format!("{ms:.1} ms")).unwrap_or_else(|| "not reported".into()),
    ));

    // 3. Memory over a soak.
    eprintln!("==> soak: audctl load --rate 1000 for {soak} s, RSS sampled");
    let mut child = Command::new(&audctl)
        .args(["load", "--scenario", "get", "--url", &url, "--rate", "1000", "--duration", &format!("{soak}s")])
        .args(["--max-p99", "1h", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting audctl")?;
    sleep(Duration::from_secs(2.min(soak / 2).max(1)));
    let start_rss = rss_kib(child.id());
    sleep(Duration::from_secs(soak.saturating_sub(3).max(1)));
    let end_rss = rss_kib(child.id());
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out)?;
    }
    child.wait()?;
    let soak_report: serde_json::Value = serde_json::from_slice(&out).context("audctl load -o json (soak)")?;
    rows.push((
        format!("RSS over a {soak} s soak"),
        format!(
            "start {} KiB, end {} KiB ({} requests)",
            start_rss.map(|v| v.to_string()).unwrap_or("?".into()),
            end_rss.map(|v| v.to_string()).unwrap_or("?".into()),
            soak_report["requests"]
        ),
    ));
    drop(server);

    println!("\naudctl load benchmark (one run; ratios matter, absolute figures depend on the machine)");
    for (k, v) in &rows {
        println!("  {k:<40} {v}");
    }
    if corrected < 500.0 {
        bail!("the open model's p99 did not show the 1 s pause");
    }
    Ok(())
}

/// Run a child to completion and measure the CPU seconds it (and its children) used.
fn cpu_of(f: impl FnOnce() -> std::io::Result<std::process::Output>) -> anyhow::Result<(std::process::Output, f64)> {
    let before = children_cpu();
    let out = f().context("running the benchmark tool")?;
    Ok((out, children_cpu() - before))
}

fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Start a tool, pause the server for 1 s two seconds in, wait for the tool.
fn with_pause(server: u32, spawn: impl FnOnce() -> std::io::Result<Child>) -> anyhow::Result<std::process::Output> {
    let child = spawn().context("starting the load tool")?;
    sleep(Duration::from_secs(2));
    signal(server, libc::SIGSTOP);
    sleep(Duration::from_secs(1));
    signal(server, libc::SIGCONT);
    child.wait_with_output().context("waiting for the load tool")
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn wrk_requests_per_second(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

/// wrk --latency's "99%  12.34ms" line, in milliseconds.
fn wrk_p99(text: &str) -> Option<f64> {
    let v = text.lines().find_map(|l| l.trim().strip_prefix("99%"))?.trim();
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("m") {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * factor)
}

/// The audit server as a separate process (it gets paused), SQLite in a temp dir.
struct Server {
    child: Child,
    pid: u32,
    port: u16,
    dir: PathBuf,
}

impl Server {
    fn start(exe: &Path) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("audctl-bench-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(exe)
            .env("AUDIT_DATA_DIR", &dir)
            .env("AUDIT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("AUDIT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();
        let server = Server { child, pid, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /actuator/health/readiness HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.contains(" 200 ") {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                bail!("the audit server did not become ready on port {port} within 60 s");
            }
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        signal(self.pid, libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "  Latency Distribution\n     50%  1.00ms\n     99%  12.50ms\nRequests/sec:  12345.67\n";
        assert_eq!(wrk_requests_per_second(text), Some(12345.67));
        assert_eq!(wrk_p99(text), Some(12.5));
        assert_eq!(wrk_p99("     99%    1.02s\n"), Some(1020.0));
    }
}
