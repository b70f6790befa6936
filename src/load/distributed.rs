//! Distributed mode: `--workers-local N` starts N worker processes (this binary, `load --worker i/N`),
//! and `--workers N` runs them as the pods of a Kubernetes Job (see [`super::job`]). Each worker runs
//! its share of the load and streams one JSON line per second with its interval's HDR histograms
//! (V2, base64), on stdout or in its pod's log. The coordinator merges them into one report and one
//! threshold verdict. The API key reaches workers through their environment, never their command
//! line.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::plan::Model;
use super::scenario::scenario_name;
use super::stats::{Aggregator, Interval, WireInterval};
use super::{LoadReport, Progress, Settings, WorkerSummary, engine, plan};
use crate::error::{Unreachable, usage};
use crate::signals::Signals;

/// Environment variable naming the executable workers run (default: this one).
pub const WORKER_EXE_ENV: &str = "AUDCTL_WORKER_EXE";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) enum Line {
    Interval(WireInterval),
    Done { requests: u64, ok: u64, latency_samples: u64, elapsed_seconds: f64 },
    Error { message: String, unreachable: bool },
}

pub fn parse_worker(spec: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = spec.split_once('/').and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => Err(usage(format!("--worker {spec:?}: expected INDEX/COUNT with INDEX < COUNT"))),
    }
}

/// Worker side: run the share and stream the intervals on stdout.
pub async fn worker(settings: &Settings, index: usize, count: usize) -> anyhow::Result<()> {
    let mut out = tokio::io::stdout();
    let result = worker_run(settings, index, count, &mut out).await;
    if let Err(e) = &result {
        let unreachable = crate::error::Failure::classify(e) == crate::error::Failure::Unreachable;
        let line = Line::Error { message: crate::error::chain(e).to_string(), unreachable };
        write_line(&mut out, &line).await?;
    }
    out.flush().await?;
    result
}

async fn write_line(out: &mut tokio::io::Stdout, line: &Line) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    out.write_all(text.as_bytes()).await.context("writing to the coordinator")?;
    out.flush().await.context("writing to the coordinator")
}

async fn worker_run(
    settings: &Settings,
    index: usize,
    count: usize,
    out: &mut tokio::io::Stdout,
) -> anyhow::Result<()> {
    let endpoint = super::endpoint(settings)?;
    let workload = Arc::new(super::prepare(settings, &endpoint, index).await?);
    let spec = engine::Spec {
        model: settings.model.share(index, count),
        connections: plan::split(settings.connections, index, count).max(1),
        timeout: settings.timeout,
        key: settings.key.clone(),
        endpoint,
        workload,
        seed: (u64::from(std::process::id()) << 8) ^ index as u64,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // A worker gets Ctrl-C from the terminal and SIGTERM from its coordinator, often both: any
    // signal ends its run, and it still sends what it measured (the coordinator reports it).
    let mut signals = Signals::install()?;
    let run = tokio::spawn(engine::run(spec, tx, stop));
    let mut total = Interval::default();
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some((second, iv)) => {
                    total.merge(&iv)?;
                    write_line(out, &Line::Interval(iv.to_wire(second)?)).await?;
                }
                None => break,
            },
            _ = signals.next() => {
                let _ = stop_tx.send(true);
            }
        }
    }
    let elapsed = run.await.context("the generator task failed")?;
    let done = Line::Done {
        requests: total.requests(),
        ok: total.ok,
        latency_samples: total.corrected.len(),
        elapsed_seconds: elapsed.as_secs_f64(),
    };
    write_line(out, &done).await
}

/// The command line of worker `index` (a number, or `$(JOB_COMPLETION_INDEX)` in a pod): the
/// resolved settings, not the user's flags. `ca`: where the worker finds the CA file.
pub(super) fn worker_args(settings: &Settings, index: &str, count: usize, ca: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec!["load".into(), "--worker".into(), format!("{index}/{count}"), "--url".into()];
    a.push(settings.url.clone());
    let mix = settings.mix.iter().map(|(s, w)| format!("{}={w}", scenario_name(*s))).collect::<Vec<_>>().join(",");
    a.extend(["--mix".into(), mix]);
    match &settings.model {
        Model::Open { segments } => {
            // Stages carry every shape, constant rates included (from == to after the first).
            let constant = segments.len() == 1 && segments[0].from == segments[0].to;
            if constant {
                a.extend(["--rate".into(), segments[0].to.to_string()]);
                a.extend(["--duration".into(), format!("{}", segments[0].duration.as_secs_f64())]);
            } else {
                let mut prev = 0.0;
                let mut parts = Vec::new();
                for s in segments {
                    if s.from != prev {
                        // A jump: a very short ramp to the new start rate.
                        parts.push(format!("0.001:{}", s.from));
                    }
                    parts.push(format!("{}:{}", s.duration.as_secs_f64(), s.to));
                    prev = s.to;
                }
                a.extend(["--stages".into(), parts.join(",")]);
            }
        }
        Model::Closed { concurrency, duration } => {
            a.extend(["--concurrency".into(), concurrency.to_string()]);
            a.extend(["--duration".into(), format!("{}", duration.as_secs_f64())]);
        }
    }
    a.extend(["--connections".into(), settings.connections.to_string()]);
    a.extend(["--tenants".into(), settings.tenants.to_string()]);
    a.extend(["--tenant".into(), settings.tenant_prefix.clone()]);
    a.extend(["--batch-size".into(), settings.batch_size.to_string()]);
    a.extend(["--timeout".into(), format!("{}", settings.timeout.as_secs_f64())]);
    if let Some(ca) = ca {
        a.extend(["--ca".into(), ca.to_owned()]);
    }
    a
}

/// A worker's output line for the coordinator: `None` when it is not one. Local workers write
/// only these on stdout, so anything else is an error there; a pod's log also holds its stderr
/// (`lenient`), whose lines are shown as the worker's and skipped.
pub(super) fn route(index: usize, line: &str, lenient: bool) -> Option<anyhow::Result<Line>> {
    match serde_json::from_str::<Line>(line) {
        Ok(l) => Some(Ok(l)),
        Err(_) if lenient => {
            eprintln!("worker {index}: {line}");
            None
        }
        Err(e) => Some(Err(anyhow::Error::new(e).context(format!("worker {index} sent an unreadable line")))),
    }
}

/// Whether a line is a worker's last (after it, nothing else is read from that worker).
pub(super) fn is_last(line: &anyhow::Result<Line>) -> bool {
    !matches!(line, Ok(Line::Interval(_)))
}

/// Coordinator side: start the workers, merge their streams second by second.
pub async fn coordinate(settings: &Settings, count: usize) -> anyhow::Result<LoadReport> {
    let exe = match std::env::var_os(WORKER_EXE_ENV) {
        Some(p) => p.into(),
        None => std::env::current_exe().context("finding the audctl executable for the workers")?,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, anyhow::Result<Line>)>();
    let ca = settings.ca_path.as_ref().map(|p| p.display().to_string());
    let mut children = Vec::new();
    for index in 0..count {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(worker_args(settings, &index.to_string(), count, ca.as_deref()))
            .env_remove(crate::service::API_KEY_ENV)
            .env_remove("AUDCTL_TARGETS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(k) = &settings.key {
            cmd.env(crate::service::API_KEY_ENV, k);
        }
        let mut child = cmd.spawn().with_context(|| format!("starting worker {index} ({})", exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(parsed) = route(index, &l, false) {
                            let _ = tx.send((index, parsed));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send((index, Err(anyhow::Error::new(e).context(format!("reading worker {index}")))));
                        break;
                    }
                }
            }
        });
        children.push(child);
    }
    drop(tx);

    let merged = merge(settings, count, rx, || {
        for child in &children {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on our own child's pid; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    })
    .await?;
    let mut failure = merged.failure;
    for (index, mut child) in children.into_iter().enumerate() {
        let status = child.wait().await.with_context(|| format!("waiting for worker {index}"))?;
        if failure.is_none() && !merged.done.contains_key(&index) {
            failure = Some(anyhow::anyhow!("worker {index} ended without its results ({status})"));
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    report(settings, merged.agg, merged.elapsed, merged.done, merged.interrupted)
}

/// What the coordinator learnt from its workers.
pub(super) struct Merged {
    pub agg: Aggregator,
    pub elapsed: Duration,
    pub done: BTreeMap<usize, WorkerSummary>,
    /// The first error a worker reported (or its stream's).
    pub failure: Option<anyhow::Error>,
    pub interrupted: Option<crate::signals::Stop>,
}

/// Merge the workers' lines second by second until every sender is gone. A signal calls
/// `interrupt` once (it makes the workers stop and send what they measured).
pub(super) async fn merge(
    settings: &Settings,
    count: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(usize, anyhow::Result<Line>)>,
    mut interrupt: impl FnMut(),
) -> anyhow::Result<Merged> {
    let progress = Progress::new(settings);
    let mut agg = Aggregator::default();
    // Last second each worker reported (None: nothing yet); done workers no longer hold seconds back.
    let mut last: Vec<Option<u64>> = vec![None; count];
    let mut done: BTreeMap<usize, WorkerSummary> = BTreeMap::new();
    let mut elapsed = Duration::ZERO;
    let mut failure: Option<anyhow::Error> = None;
    let mut signals = Signals::install()?;
    let mut interrupted = None;
    loop {
        let (index, line) = tokio::select! {
            got = rx.recv() => match got {
                Some(got) => got,
                None => break,
            },
            stop = signals.first(super::AT_ONCE, ""), if interrupted.is_none() => {
                // The workers stop and send what they measured; from a terminal they got the
                // signal too, from a supervisor (SIGTERM to this process) they did not.
                interrupted = Some(stop);
                interrupt();
                continue;
            }
        };
        let line = match line {
            Ok(line) => line,
            // After an interrupt a worker may end without its results (its pod deleted before it
            // started, a process killed): the run reports the workers that did send theirs.
            Err(e) if interrupted.is_some() => {
                progress.println(&format!("audctl load: worker {index}: {e:#} (after the interrupt)"));
                continue;
            }
            Err(e) => return Err(e),
        };
        match line {
            Line::Interval(w) => {
                agg.add(w.second, &Interval::from_wire(&w)?)?;
                last[index] = Some(w.second);
            }
            Line::Done { requests, ok, latency_samples, elapsed_seconds } => {
                done.insert(index, WorkerSummary { index, requests, ok, errors: requests - ok, latency_samples });
                elapsed = elapsed.max(Duration::from_secs_f64(elapsed_seconds));
            }
            Line::Error { message, unreachable } => {
                let err = if unreachable {
                    anyhow::Error::new(Unreachable { what: format!("service (worker {index})"), detail: message })
                } else {
                    anyhow::anyhow!("worker {index}: {message}")
                };
                failure.get_or_insert(err);
            }
        }
        let complete = (0..count).filter(|i| !done.contains_key(i)).map(|i| last[i]).min().unwrap_or(Some(u64::MAX));
        if let Some(upto) = complete {
            agg.flush_upto(upto)?;
            progress.update(&agg);
        }
    }
    progress.finish();
    Ok(Merged { agg, elapsed, done, failure, interrupted })
}

/// The report of a distributed run.
pub(super) fn report(
    settings: &Settings,
    mut agg: Aggregator,
    elapsed: Duration,
    done: BTreeMap<usize, WorkerSummary>,
    interrupted: Option<crate::signals::Stop>,
) -> anyhow::Result<LoadReport> {
    agg.flush_all()?;
    let scenario = if settings.mix.len() == 1 {
        scenario_name(settings.mix[0].0).to_owned()
    } else {
        settings.mix.iter().map(|(s, w)| format!("{}={w}", scenario_name(*s))).collect::<Vec<_>>().join(",")
    };
    let mut report = LoadReport::build(settings, &scenario, &agg, elapsed, done.into_values().collect());
    report.interrupt(interrupted);
    Ok(report)
}
