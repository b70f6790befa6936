//! `deps up` / `deps down`: a long-lived local stack for manual use, built from the same testbed
//! starters the tests use, so what a developer pokes at is what the tests run against.
//!
//! `up` starts a detached `deps serve` process that owns every component (they stop when it is
//! dropped), writes a targets file for `audctl --targets`, and waits for SIGTERM from `down`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use audctl_targets::Targets;

use super::Ctx;

fn stack_dir(ctx: &Ctx) -> PathBuf {
    ctx.cache.join("stack")
}

fn pid_file(ctx: &Ctx) -> PathBuf {
    stack_dir(ctx).join("serve.pid")
}

pub fn targets_file(ctx: &Ctx) -> PathBuf {
    stack_dir(ctx).join("targets.yaml")
}

fn log_file(ctx: &Ctx) -> PathBuf {
    stack_dir(ctx).join("stack.log")
}

/// PID of the running `deps serve`, if any.
pub fn running(ctx: &Ctx) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(ctx)).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

pub fn up(ctx: &Ctx) -> anyhow::Result<()> {
    if let Some(pid) = running(ctx) {
        eprintln!("stack already running (pid {pid})");
        return print_endpoints(ctx);
    }
    let dir = stack_dir(ctx);
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(targets_file(ctx));
    let log = std::fs::File::create(log_file(ctx))?;
    let start = Instant::now();
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["deps", "serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: the stack survives the terminal that started it.
            .process_group(0);
        cmd.spawn().context("starting `deps serve`")?
    };
    eprintln!("starting the stack (log {})...", log_file(ctx).display());
    let deadline = start + Duration::from_secs(300);
    loop {
        if targets_file(ctx).exists() {
            eprintln!("stack up in {:.1}s", start.elapsed().as_secs_f64());
            return print_endpoints(ctx);
        }
        if let Some(status) = child.try_wait()? {
            bail!("the stack failed to start ({status}):\n{}", tail(&log_file(ctx), 40));
        }
        if Instant::now() > deadline {
            bail!("the stack is not up after 300 s; see {}", log_file(ctx).display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn down(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(pid) = running(ctx) else {
        eprintln!("no stack is running");
        return Ok(());
    };
    let start = Instant::now();
    crate::util::step("stop the stack", Command::new("kill").args(["-TERM", &pid.to_string()]))?;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if start.elapsed() > Duration::from_secs(90) {
            bail!("the stack (pid {pid}) did not stop within 90 s; see {}", log_file(ctx).display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stack stopped in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn status(ctx: &Ctx) -> anyhow::Result<()> {
    match running(ctx) {
        Some(pid) => {
            println!("stack: running (pid {pid})");
            print_endpoints(ctx)
        }
        None => {
            println!("stack: not running (`cargo xtask deps up` starts it)");
            Ok(())
        }
    }
}

fn print_endpoints(ctx: &Ctx) -> anyhow::Result<()> {
    let path = targets_file(ctx);
    let targets = Targets::load(&path)?;
    if let Some(k) = &targets.kube {
        println!(
            "kubernetes     kubeconfig {}",
            k.kubeconfig.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    if let Some(p) = &targets.postgres {
        println!("postgresql     {}", audctl_targets::redact_url(&p.url));
        for r in &p.replicas {
            println!("  replica      {}", audctl_targets::redact_url(r));
        }
    }
    if let Some(r) = &targets.redis {
        println!("redis          sentinels {} (master set {})", r.sentinels.join(","), r.master_set);
    }
    if let Some(k) = &targets.kafka {
        println!("kafka          {}", k.bootstrap_servers.join(","));
    }
    if let Some(s) = &targets.search {
        println!("elasticsearch  {}", s.url);
    }
    println!("targets file   {}   (audctl --targets {0})", path.display());
    Ok(())
}

/// The body of the detached process: start everything, publish the targets, wait for a signal.
pub fn serve(ctx: &Ctx) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        std::fs::write(pid_file(ctx), std::process::id().to_string())?;
        let result = serve_inner(ctx).await;
        let _ = std::fs::remove_file(pid_file(ctx));
        let _ = std::fs::remove_file(targets_file(ctx));
        result
    })
}

async fn timed<T>(name: &str, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let start = Instant::now();
    let out = fut.await.with_context(|| format!("starting {name}"))?;
    eprintln!("{name}: ready in {:.1}s", start.elapsed().as_secs_f64());
    Ok(out)
}

async fn serve_inner(ctx: &Ctx) -> anyhow::Result<()> {
    use testbed::postgres::PgOptions;
    let start = Instant::now();
    // Concurrently: the stack is up when its slowest component is.
    let (pg, redis, kafka, search, kube) = tokio::try_join!(
        timed(
            "postgresql",
            testbed::postgres::postgres_with(PgOptions { replica: true, archive: true, ..Default::default() })
        ),
        timed("redis+sentinel", testbed::redis::redis_sentinel()),
        timed("kafka (3 brokers)", testbed::kafka::kafka(3)),
        timed("elasticsearch", testbed::search::search()),
        timed("kubernetes", testbed::kube::kube()),
    )?;
    let targets = Targets {
        kube: Some(kube.target()),
        postgres: Some(pg.target()),
        redis: Some(redis.target()),
        kafka: Some(kafka.target()),
        search: Some(search.target()),
        audit: None,
        backup: None,
    };
    // Written atomically: `up` treats the file's existence as "ready".
    let tmp = targets_file(ctx).with_extension("tmp");
    std::fs::write(&tmp, targets.to_yaml()?)?;
    std::fs::rename(&tmp, targets_file(ctx))?;
    eprintln!("stack ready in {:.1}s", start.elapsed().as_secs_f64());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    eprintln!("stopping the stack");
    // Dropping the handles stops the processes: clients' view first, the cluster last.
    drop((search, kafka, redis, pg));
    drop(kube);
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
