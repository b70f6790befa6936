//! `audctl load`: an open-model (constant arrival rate or k6-style stages) or closed-model load
//! generator against the audit API, with coordinated-omission-corrected latency, HDR histograms,
//! thresholds that decide the exit code, an SVG plot and distributed workers (local processes, or
//! the pods of a Kubernetes Job).

pub mod distributed;
pub mod engine;
pub mod http;
pub mod job;
pub mod plan;
pub mod plot;
pub mod scenario;
pub mod stats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{GlobalArgs, LoadArgs, Scenario};
use crate::error::{CheckFailed, Unreachable, usage};
use crate::output::{self, Report};
use crate::signals::{Signals, Stop};
use plan::Model;
use scenario::Workload;
use stats::{Aggregator, Percentiles, Point};

/// Everything a run (local, worker or coordinator) needs, resolved from the flags.
pub struct Settings {
    pub url: String,
    pub key: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub ca_path: Option<std::path::PathBuf>,
    pub model: Model,
    pub mix: Vec<(Scenario, u32)>,
    pub tenant_prefix: String,
    pub tenants: usize,
    pub batch_size: usize,
    pub connections: usize,
    pub timeout: Duration,
    pub max_p99: Duration,
    pub max_error_rate: f64,
}

pub fn settings(args: &LoadArgs, global: &GlobalArgs) -> anyhow::Result<Settings> {
    let targets = crate::service::targets(global)?;
    let service = crate::service::resolve(&args.service, targets.as_ref(), None)?;
    let mix = match &args.mix {
        Some(m) => plan::parse_mix(m).map_err(usage)?,
        None => vec![(args.scenario, 1)],
    };
    if args.tenants == 0 {
        return Err(usage("--tenants must be at least 1"));
    }
    if args.batch_size == 0 || args.batch_size > audit_api::MAX_BATCH_EVENTS {
        return Err(usage(format!("--batch-size must be 1 to {}", audit_api::MAX_BATCH_EVENTS)));
    }
    if args.connections == 0 {
        return Err(usage("--connections must be at least 1"));
    }
    let timeout = plan::parse_duration(&args.timeout).map_err(|e| usage(format!("--timeout {e}")))?;
    if timeout.is_zero() {
        return Err(usage("--timeout must be above zero"));
    }
    // Every scenario but `get` calls the API with a key: without one, a whole run would measure
    // 401s. `get` fetches --url as given (a health endpoint, as wrk would), key or not.
    if service.key().is_none() && mix.iter().any(|(s, _)| *s != Scenario::Get) {
        return Err(usage(format!(
            "no API key: pass --api-key-file, set {} or audit.apiKey in --targets",
            crate::service::API_KEY_ENV
        )));
    }
    Ok(Settings {
        url: service.url.clone(),
        key: service.key().map(str::to_owned),
        ca_pem: service.ca_pem.clone(),
        ca_path: args.service.ca.clone(),
        model: plan::model(args)?,
        mix,
        tenant_prefix: service.tenant.clone().unwrap_or_else(|| "audctl-load".into()),
        tenants: args.tenants,
        batch_size: args.batch_size,
        connections: args.connections,
        timeout,
        max_p99: plan::parse_duration(&args.max_p99).map_err(|e| usage(format!("--max-p99 {e}")))?,
        max_error_rate: plan::parse_rate(&args.max_error_rate).map_err(|e| usage(format!("--max-error-rate {e}")))?,
    })
}

pub fn run(args: &LoadArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let settings = settings(args, global)?;
    if let Some(path) = &args.plot
        && args.worker.is_none()
    {
        check_plot_path(path)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    if let Some(spec) = &args.worker {
        let (index, count) = distributed::parse_worker(spec)?;
        return runtime.block_on(distributed::worker(&settings, index, count));
    }
    let started = chrono::Utc::now();
    let report = match (args.workers_local, args.workers) {
        (Some(0), _) => return Err(usage("--workers-local must be at least 1")),
        (_, Some(0)) => return Err(usage("--workers must be at least 1")),
        (Some(n), _) => runtime.block_on(distributed::coordinate(&settings, n))?,
        (None, Some(n)) => {
            let targets = crate::service::targets(global)?;
            let opts = job::JobOptions {
                kube: crate::kube::KubeSettings::resolve(global, targets.as_ref()),
                namespace: global.namespace.clone(),
                image: args.worker_image.clone().unwrap_or_default(),
                overrides: args.worker_overrides.as_deref().map(job::parse_overrides).transpose()?,
            };
            if args.dry_run {
                return job::print(&settings, n, &opts);
            }
            runtime.block_on(job::coordinate(&settings, n, &opts))?
        }
        (None, None) => runtime.block_on(local(&settings))?,
    };
    finish(report, args, global, started, &runtime)
}

/// `<prefix>-0` .. `<prefix>-<n-1>`; one tenant is the name itself, so that a key scoped to one
/// tenant (`--tenant acme --tenants 1`, or `audit.tenant` of the targets) can be load-tested.
fn tenant_names(prefix: &str, n: usize) -> Vec<String> {
    if n == 1 { vec![prefix.to_owned()] } else { (0..n).map(|i| format!("{prefix}-{i}")).collect() }
}

/// The workload with seeded events when its scenarios read.
async fn prepare(settings: &Settings, endpoint: &http::Endpoint, worker: usize) -> anyhow::Result<Workload> {
    let tenants = tenant_names(&settings.tenant_prefix, settings.tenants);
    let mut workload =
        Workload::new(settings.mix.clone(), tenants, settings.batch_size, &endpoint.base_path, &endpoint.exact);
    let mut conn = endpoint.connect(settings.timeout).await.map_err(|f| {
        anyhow::Error::new(Unreachable {
            what: format!("service {}", crate::service::display_url(&settings.url)),
            detail: f.to_string(),
        })
    })?;
    if workload.needs_seed() {
        let mut rng = scenario::Rng::new(0x5eed ^ worker as u64);
        for tenant in workload.tenants.clone() {
            let events: Vec<_> = (0..10).map(|_| workload.event(&mut rng, &tenant)).collect();
            let actors: Vec<String> = events.iter().map(|e| e.actor.id.clone()).collect();
            let call = http::Call {
                method: hyper::Method::POST,
                path: format!("{}{}/events/batch", endpoint.base_path, audit_api::API_PREFIX),
                body: Some(serde_json::to_vec(&audit_api::BatchRequest { events })?.into()),
            };
            let (status, body) = conn
                .send(endpoint, settings.key.as_deref(), &call)
                .await
                .map_err(|f| anyhow::anyhow!("seeding tenant {tenant}: {f}"))?;
            let answer: audit_api::BatchResponse = match serde_json::from_slice(&body) {
                Ok(a) if status.as_u16() == 201 => a,
                _ => {
                    return Err(CheckFailed(format!(
                        "seeding events for the read/list/verify scenarios (tenant {tenant}) answered HTTP {}",
                        status.as_u16()
                    ))
                    .into());
                }
            };
            for (receipt, actor) in answer.results.into_iter().zip(actors) {
                workload.seeded.push((tenant.clone(), receipt.id, actor));
            }
        }
    }
    Ok(workload)
}

pub fn endpoint(settings: &Settings) -> anyhow::Result<http::Endpoint> {
    http::Endpoint::parse(&settings.url, settings.ca_pem.as_deref()).map_err(usage)
}

/// One process, no workers.
async fn local(settings: &Settings) -> anyhow::Result<LoadReport> {
    let endpoint = endpoint(settings)?;
    let workload = Arc::new(prepare(settings, &endpoint, 0).await?);
    let spec = engine::Spec {
        model: settings.model.clone(),
        connections: settings.connections,
        timeout: settings.timeout,
        key: settings.key.clone(),
        endpoint,
        workload: workload.clone(),
        seed: std::process::id().into(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut signals = Signals::install()?;
    let progress = Progress::new(settings);
    let run = tokio::spawn(engine::run(spec, tx, stop));
    let mut agg = Aggregator::default();
    let mut interrupted = None;
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some((second, iv)) => {
                    agg.add(second, &iv)?;
                    agg.flush_upto(second)?;
                    progress.update(&agg);
                }
                None => break,
            },
            stop = signals.first(AT_ONCE, ""), if interrupted.is_none() => {
                interrupted = Some(stop);
                let _ = stop_tx.send(true);
            }
        }
    }
    let elapsed = run.await.context("the generator task failed")?;
    agg.flush_all()?;
    progress.finish();
    let mut report = LoadReport::build(settings, &workload.label(), &agg, elapsed, Vec::new());
    report.interrupt(interrupted);
    Ok(report)
}

/// What a second signal loses (announced with the first).
const AT_ONCE: &str = ", without a report";

/// The live line on a terminal: current rate, p99 and errors.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(settings: &Settings) -> Progress {
        let what = match settings.model.peak_rate() {
            Some(r) => format!("open model, up to {r:.0}/s"),
            None => format!(
                "closed model, {} in flight",
                match settings.model {
                    Model::Closed { concurrency, .. } => concurrency,
                    Model::Open { .. } => 0,
                }
            ),
        };
        Progress { bar: output::spinner(format!("load {} ({what})", crate::service::display_url(&settings.url))) }
    }

    pub fn update(&self, agg: &Aggregator) {
        if let Some(p) = agg.timeline.last() {
            let total = agg.total.requests();
            let errors = agg.total.error_count();
            let pct = if total > 0 { errors as f64 * 100.0 / total as f64 } else { 0.0 };
            self.bar.set_message(format!(
                "{}s  {}/s  p99 {}  errors {errors} ({pct:.2}%)",
                p.second + 1,
                p.ok + p.errors,
                ms(p.p99)
            ));
        }
    }

    /// A line on stderr that the live line does not overwrite.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 { format!("{:.2}s", v / 1000.0) } else { format!("{v:.2}ms") }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// The flag: `max-p99` or `max-error-rate`.
    pub name: String,
    pub limit: String,
    /// The measured value, absent when there were no samples.
    pub actual: Option<String>,
    pub passed: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSummary {
    pub index: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub latency_samples: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub url: String,
    pub model: String,
    pub scenario: String,
    /// Peak target rate of the open model (requests/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    pub planned_seconds: f64,
    pub elapsed_seconds: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// Answers (ok or not) per second over the run.
    pub throughput: f64,
    /// Latency from each request's intended send time (open model); equal to service latency in the closed model.
    pub corrected: Percentiles,
    /// Latency from the actual send.
    pub service: Percentiles,
    pub errors_by_class: BTreeMap<String, u64>,
    pub thresholds: Vec<Threshold>,
    pub passed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerSummary>,
    /// Stopped by a signal before its planned end: the report covers what was answered until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    #[serde(skip)]
    pub stop: Option<Stop>,
    pub timeline: Vec<Point>,
}

impl LoadReport {
    pub fn build(
        settings: &Settings,
        scenario: &str,
        agg: &Aggregator,
        elapsed: Duration,
        workers: Vec<WorkerSummary>,
    ) -> LoadReport {
        let t = &agg.total;
        let requests = t.requests();
        let errors = t.error_count();
        let error_rate = if requests > 0 { errors as f64 / requests as f64 } else { 0.0 };
        let corrected = Percentiles::of(&t.corrected);
        let thresholds = thresholds(settings, &corrected, requests, error_rate);
        LoadReport {
            url: crate::service::display_url(&settings.url),
            model: settings.model.name().into(),
            scenario: scenario.to_owned(),
            target_rate: settings.model.peak_rate(),
            concurrency: match settings.model {
                Model::Closed { concurrency, .. } => Some(concurrency),
                Model::Open { .. } => None,
            },
            planned_seconds: settings.model.duration().as_secs_f64(),
            elapsed_seconds: elapsed.as_secs_f64(),
            requests,
            ok: t.ok,
            errors,
            error_rate,
            throughput: if elapsed.is_zero() { 0.0 } else { requests as f64 / elapsed.as_secs_f64() },
            corrected,
            service: Percentiles::of(&t.service),
            errors_by_class: t.errors.clone(),
            passed: thresholds.iter().all(|t| t.passed),
            thresholds,
            workers,
            interrupted: None,
            stop: None,
            timeline: agg.timeline.clone(),
        }
    }

    /// Requests were sent and none got an HTTP answer, good or bad: all timed out, failed on
    /// I/O or to connect, or were left unsent.
    pub fn unanswered(&self) -> bool {
        let answers =
            self.errors_by_class.iter().filter(|(class, _)| class.starts_with("HTTP ") || *class == "invalid body");
        self.requests > 0 && self.ok + answers.map(|(_, n)| n).sum::<u64>() == 0
    }

    /// Mark the report as cut short by `stop` (None: it ran to its end).
    pub fn interrupt(&mut self, stop: Option<Stop>) {
        let Some(stop) = stop else { return };
        self.interrupted = Some(format!(
            "{} after {:.1}s of {:.1}s planned: partial results (requests in flight were dropped)",
            stop.name(),
            self.elapsed_seconds,
            self.planned_seconds
        ));
        self.stop = Some(stop);
    }
}

/// `--max-p99` and `--max-error-rate`; a threshold over no samples fails (k6 passes it silently).
fn thresholds(settings: &Settings, corrected: &Percentiles, requests: u64, error_rate: f64) -> Vec<Threshold> {
    let limit_ms = settings.max_p99.as_secs_f64() * 1000.0;
    let p99 = if corrected.count == 0 {
        Threshold {
            name: "max-p99".into(),
            limit: ms(limit_ms),
            actual: None,
            passed: false,
            message: "no latency samples: a threshold on a metric with no samples fails".into(),
        }
    } else {
        let passed = corrected.p99 <= limit_ms;
        Threshold {
            name: "max-p99".into(),
            limit: ms(limit_ms),
            actual: Some(ms(corrected.p99)),
            passed,
            message: format!(
                "p99 {} {} {} over {} samples",
                ms(corrected.p99),
                if passed { "<=" } else { ">" },
                ms(limit_ms),
                corrected.count
            ),
        }
    };
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let errors = if requests == 0 {
        Threshold {
            name: "max-error-rate".into(),
            limit: pct(settings.max_error_rate),
            actual: None,
            passed: false,
            message: "no requests completed: a threshold on a metric with no samples fails".into(),
        }
    } else {
        let passed = error_rate <= settings.max_error_rate;
        Threshold {
            name: "max-error-rate".into(),
            limit: pct(settings.max_error_rate),
            actual: Some(pct(error_rate)),
            passed,
            message: format!(
                "error rate {} {} {} over {requests} requests",
                pct(error_rate),
                if passed { "<=" } else { ">" },
                pct(settings.max_error_rate)
            ),
        }
    };
    vec![p99, errors]
}

/// 0.5/s is not "0/s": whole rates without decimals, others to at most 3.
fn rate_text(r: f64) -> String {
    let text = format!("{r:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl Report for LoadReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["", "value"]);
        let mut row = |k: &str, v: String| {
            t.add_row(vec![k.to_owned(), v]);
        };
        row("url", self.url.clone());
        let model = match (self.target_rate, self.concurrency) {
            (Some(r), _) => format!("open, target {}/s", rate_text(r)),
            (None, Some(c)) => format!("closed, {c} in flight"),
            _ => self.model.clone(),
        };
        row("model", model);
        row("scenario", self.scenario.clone());
        row("duration", format!("{:.1}s (planned {:.1}s)", self.elapsed_seconds, self.planned_seconds));
        if let Some(why) = &self.interrupted {
            row("interrupted", why.clone());
        }
        row("requests", format!("{} ({} ok, {} failed)", self.requests, self.ok, self.errors));
        row("throughput", format!("{:.1}/s", self.throughput));
        let p = |p: &Percentiles| {
            if p.count == 0 {
                "no samples".to_owned()
            } else {
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    ms(p.p50),
                    ms(p.p90),
                    ms(p.p99),
                    ms(p.p999),
                    ms(p.max)
                )
            }
        };
        row("latency (corrected)", p(&self.corrected));
        row("latency (service)", p(&self.service));
        let errors = if self.errors_by_class.is_empty() {
            "none".to_owned()
        } else {
            self.errors_by_class.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
        };
        row("error rate", format!("{:.2}% ({errors})", self.error_rate * 100.0));
        for w in &self.workers {
            row(&format!("worker {}", w.index), format!("{} requests ({} failed)", w.requests, w.errors));
        }
        for th in &self.thresholds {
            row(
                &format!("threshold {}", th.name),
                format!("{} {}", if th.passed { "PASS" } else { "FAIL" }, th.message),
            );
        }
        t
    }

    fn junit(&self) -> Option<String> {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let failures = self.thresholds.iter().filter(|t| !t.passed).count();
        x.push_str(&format!(
            "<testsuite name=\"audctl load\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">\n",
            self.thresholds.len(),
            self.elapsed_seconds
        ));
        for t in &self.thresholds {
            x.push_str(&format!("  <testcase classname=\"load\" name=\"{}\">", plot::escape(&t.name)));
            if !t.passed {
                x.push_str(&format!("<failure message=\"{}\"/>", plot::escape(&t.message)));
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite>\n");
        Some(x)
    }
}

/// A plot that cannot be written is found before the run, not after minutes of load.
fn check_plot_path(path: &std::path::Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(format!("--plot {}: the directory {} does not exist", path.display(), dir.display())));
    }
    if path.is_dir() {
        return Err(usage(format!("--plot {}: is a directory", path.display())));
    }
    Ok(())
}

fn finish(
    report: LoadReport,
    args: &LoadArgs,
    global: &GlobalArgs,
    started: chrono::DateTime<chrono::Utc>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    // The report and the evidence first: a plot that fails to write (checked up front, but the
    // disk may fill) must not lose the run's results.
    output::emit(global.output, &report)?;
    record_evidence(&report, global, started, runtime)?;
    if let Some(path) = &args.plot {
        let title = format!("audctl load {} ({}, {})", report.url, report.model, report.scenario);
        std::fs::write(path, plot::svg(&title, &report.timeline))
            .map_err(|e| usage(format!("writing the plot {}: {e}", path.display())))?;
    }
    if let (Some(stop), Some(why)) = (report.stop, &report.interrupted) {
        let message = format!("interrupted ({why})");
        eprintln!("{}: {message}", output::paint_error("load"));
        return Err(stop.error(message));
    }
    if report.unanswered() {
        // Connected, then nothing answered (a hung service, a black-holing proxy): what smoke
        // calls unreachable too, not a latency verdict.
        return Err(Unreachable {
            what: format!("service {}", report.url),
            detail: format!("none of {} requests was answered within --timeout", report.requests),
        }
        .into());
    }
    let failed: Vec<&Threshold> = report.thresholds.iter().filter(|t| !t.passed).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for t in &failed {
        eprintln!("{}: threshold {} failed: {}", output::paint_error("load"), t.name, t.message);
    }
    Err(CheckFailed(format!(
        "threshold {} failed",
        failed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    ))
    .into())
}

/// "Load testing complete": the run's figures in the cluster, when one is configured (never fails the verb).
fn record_evidence(
    report: &LoadReport,
    global: &GlobalArgs,
    started: chrono::DateTime<chrono::Utc>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use crate::evidence::{Evidence, Outcome, record_best_effort};
    let targets = crate::service::targets(global)?;
    let kube = crate::kube::KubeSettings::resolve(global, targets.as_ref());
    let outcome = match (report.interrupted.is_some() || report.unanswered(), report.passed) {
        (true, _) => Outcome::Error,
        (false, true) => Outcome::Success,
        (false, false) => Outcome::Failure,
    };
    let cut = match report.stop {
        Some(stop) => format!("interrupted by {} after {:.1}s: ", stop.name(), report.elapsed_seconds),
        None => String::new(),
    };
    let summary = format!(
        "{cut}{} {}: p99 {} at {:.1} req/s, {:.2}% errors, thresholds {}",
        report.model,
        report.scenario,
        if report.corrected.count > 0 { ms(report.corrected.p99) } else { "n/a".into() },
        report.throughput,
        report.error_rate * 100.0,
        if report.passed { "passed" } else { "failed" }
    );
    let failed: Vec<&str> = report.thresholds.iter().filter(|t| !t.passed).map(|t| t.name.as_str()).collect();
    let evidence = Evidence::new("load", outcome, summary, started)
        .figure("url", &report.url)
        .figure("model", &report.model)
        .figure("scenario", &report.scenario)
        .figure("targetRate", report.target_rate)
        .figure("rate", report.throughput)
        .figure("requests", report.requests)
        .figure("errors", report.errors)
        .figure("errorRate", report.error_rate)
        .figure("p50Ms", report.corrected.p50)
        .figure("p99Ms", report.corrected.p99)
        .figure("p999Ms", report.corrected.p999)
        .figure("maxMs", report.corrected.max)
        .figure("serviceP99Ms", report.service.p99)
        .figure("durationSeconds", report.elapsed_seconds)
        .figure("workers", report.workers.len().max(1))
        .figure("failedThresholds", failed)
        .figure("interrupted", &report.interrupted);
    runtime.block_on(record_best_effort(&kube, &global.namespace, &evidence));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_keep_their_fraction() {
        for (rate, text) in [(0.5, "0.5"), (500.0, "500"), (1.0 / 3.0, "0.333"), (20.25, "20.25"), (10.0, "10")] {
            assert_eq!(super::rate_text(rate), text);
        }
    }

    #[test]
    fn one_tenant_is_the_name_itself() {
        assert_eq!(super::tenant_names("acme", 1), ["acme"]);
        assert_eq!(super::tenant_names("audctl-load", 3), ["audctl-load-0", "audctl-load-1", "audctl-load-2"]);
    }
}
