//! `audctl deploy`, `diff`, `history`, `rollback`: releases applied safely.
//!
//! Split like kube-rs's client/runtime: pure judgement and data ([`plan`]: what is applied, owned,
//! pruned, masked; [`status`]: is an object ready) apart from the code that talks to the cluster
//! ([`apply`]: discovery, server-side apply; [`wait`]; [`release`]: revision records; [`lock`]: the
//! lease). This file drives them: render -> checks -> lock -> record -> apply -> wait -> prune or
//! roll back -> record + evidence.

pub mod apply;
pub mod canary;
mod diff;
pub mod gate;
mod interrupt;
pub mod lock;
pub mod plan;
pub mod release;
pub mod status;
pub mod wait;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::Table;
use serde::Serialize;

use self::apply::{ApplyError, Resources};
use self::plan::{Manifest, ObjectRef};
use self::release::{Revision, State};
use crate::cli::{ApplyArgs, DeployArgs, DiffArgs, GlobalArgs, HistoryArgs, RollbackArgs};
use crate::error::{CheckFailed, usage};
use crate::evidence::{self, Evidence, Outcome as EvOutcome};
use crate::kube::KubeSettings;
use crate::output::{self, Report};
use crate::values::Values;
use crate::values::model::ClusterValues;

pub use diff::diff as run_diff_async;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn deploy(global: &GlobalArgs, args: &DeployArgs) -> anyhow::Result<()> {
    runtime()?.block_on(run_deploy(global, args))
}

pub fn diff(global: &GlobalArgs, args: &DiffArgs) -> anyhow::Result<()> {
    runtime()?.block_on(diff::diff(global, args))
}

pub fn history(global: &GlobalArgs, args: &HistoryArgs) -> anyhow::Result<()> {
    runtime()?.block_on(run_history(global, args))
}

pub fn rollback(global: &GlobalArgs, args: &RollbackArgs) -> anyhow::Result<()> {
    runtime()?.block_on(run_rollback(global, args))
}

fn settings(global: &GlobalArgs) -> anyhow::Result<KubeSettings> {
    let targets = match &global.targets {
        Some(path) => Some(
            audctl_targets::Targets::load(path).map_err(|e| usage(format!("targets file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    Ok(KubeSettings::resolve(global, targets.as_ref()))
}

/// The rendered release: values, objects as apply bodies.
pub struct Rendered {
    pub values: Values,
    pub manifests: Vec<Manifest>,
}

pub fn render(files: &[PathBuf], sets: &[String], templates: Option<&Path>) -> anyhow::Result<Rendered> {
    let values = crate::values::load(files, sets)?;
    let objects = crate::render::render(&values, templates)?;
    let manifests = plan::manifests(&objects, &values.name)?;
    Ok(Rendered { values, manifests })
}

/// Wrong-cluster protection: the values may name the context and/or API server the release belongs
/// to. Elsewhere is refused (exit 2) unless `--context` explicitly names the context in use.
/// `verb` is what would be refused ("deploy", "roll back").
pub fn check_cluster(
    expected: &ClusterValues,
    global: &GlobalArgs,
    settings: &KubeSettings,
    verb: &str,
) -> anyhow::Result<()> {
    if expected.context.is_none() && expected.server.is_none() {
        return Ok(());
    }
    let (context, server) = current_cluster(settings)?;
    let explicit = global.context.is_some();
    let mut wrong = Vec::new();
    if let Some(want) = &expected.context
        && context.as_deref() != Some(want.as_str())
    {
        wrong.push(format!(
            "the values expect context {want:?}, the current context is {:?}",
            context.as_deref().unwrap_or("(none)")
        ));
    }
    if let Some(want) = &expected.server
        && server.as_deref().map(|s| s.trim_end_matches('/')) != Some(want.trim_end_matches('/'))
    {
        wrong.push(format!(
            "the values expect API server {want}, the current one is {}",
            server.as_deref().unwrap_or("(unknown)")
        ));
    }
    if wrong.is_empty() {
        return Ok(());
    }
    if explicit {
        eprintln!("warning: {}; going ahead because --context names it explicitly", wrong.join("; "));
        return Ok(());
    }
    Err(usage(format!(
        "refusing to {verb} on this cluster: {} (values cluster.context / cluster.server). Switch context, or name \
         it explicitly with --context if this really is the cluster",
        wrong.join("; ")
    )))
}

/// The kubeconfig context in use and its API server URL (in-cluster: no context, the service host).
fn current_cluster(settings: &KubeSettings) -> anyhow::Result<(Option<String>, Option<String>)> {
    let config = match &settings.kubeconfig {
        Some(path) => crate::kube::read_kubeconfig(path)?,
        None => match kube::config::Kubeconfig::read() {
            Ok(c) => c,
            Err(_) => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
                let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                return Ok((None, host.map(|h| format!("https://{h}:{port}"))));
            }
        },
    };
    let context = settings.context.clone().or(config.current_context.clone());
    let server = context.as_ref().and_then(|name| {
        let ctx = config.contexts.iter().find(|c| &c.name == name)?.context.as_ref()?;
        let cluster = config.clusters.iter().find(|c| c.name == ctx.cluster)?.cluster.as_ref()?;
        cluster.server.clone()
    });
    Ok((context, server))
}

/// Evidence subject: the environment (values cluster.environment, else the context, else "cluster"),
/// as the checklist's evidence items name it ("staging", "production"). The namespace needs no
/// mention: the record lives in it. Shared with `smoke`, whose records the same items look for.
pub fn subject(values_env: Option<&str>, settings: &KubeSettings) -> String {
    values_env
        .map(str::to_owned)
        .or_else(|| current_cluster(settings).ok().and_then(|(c, _)| c))
        .unwrap_or_else(|| "cluster".into())
}

/// Result of a deploy or rollback, as printed on stdout.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployReport {
    pub release: String,
    pub namespace: String,
    pub revision: Option<u32>,
    pub dry_run: bool,
    pub outcome: String,
    pub image: Option<String>,
    pub seconds: f64,
    pub objects: Vec<ObjectLine>,
    pub pruned: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
}

/// What a canary deploy did: its steps as measured, and how it ended.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryReport {
    /// "promoted", "rolled back", or "promotion failed".
    pub outcome: String,
    /// The thresholds applied, as read from the rendered HighErrorRate and HighLatency rules.
    pub max_error_rate: f64,
    pub max_latency_seconds: f64,
    pub latency_quantile: f64,
    pub steps: Vec<canary::Step>,
}

impl CanaryReport {
    fn new(outcome: &str, rules: &gate::Rules, steps: Vec<canary::Step>) -> Self {
        CanaryReport {
            outcome: outcome.into(),
            max_error_rate: rules.max_error_rate,
            max_latency_seconds: rules.max_latency,
            latency_quantile: rules.quantile,
            steps,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ObjectLine {
    pub object: String,
    pub action: String,
}

impl Report for DeployReport {
    fn table(&self) -> Table {
        let mut t = output::new_table(["object", "action"]);
        for o in &self.objects {
            t.add_row(vec![o.object.clone(), o.action.clone()]);
        }
        for p in &self.pruned {
            t.add_row(vec![p.clone(), if self.dry_run { "would prune".into() } else { "pruned".to_owned() }]);
        }
        for s in self.canary.iter().flat_map(|c| &c.steps) {
            let verdict = if s.passed { "passed".to_owned() } else { format!("FAILED: {}", s.detail) };
            t.add_row(vec![
                format!("canary {}% ({} pods, {:.0}s)", s.weight, s.pods, s.seconds),
                format!("{verdict}: {}", s.summary()),
            ]);
        }
        let rev = self.revision.map(|r| format!("revision {r}")).unwrap_or_else(|| "dry run".into());
        t.add_row(vec![format!("{} in {} ({rev})", self.release, self.namespace), self.outcome.clone()]);
        t
    }
}

/// Everything one apply-and-wait run needs.
struct Run<'a> {
    client: kube::Client,
    resources: Resources,
    release: &'a str,
    ns: &'a str,
    args: &'a ApplyArgs,
}

enum Applied {
    Ready { pruned: Vec<String> },
    Failed { what: Vec<String> },
}

impl Run<'_> {
    /// Apply in order, wait, then prune what `previous` had and `manifests` no longer have.
    /// `rollback`: fields the controller-manager took meanwhile are taken back (see
    /// [`controllers_only`]).
    async fn apply_and_wait(
        &self,
        manifests: &[Manifest],
        previous: &[ObjectRef],
        timeout: Duration,
        lock: &lock::Held,
        rollback: bool,
    ) -> anyhow::Result<Applied> {
        let mut conflicts = Vec::new();
        for m in manifests {
            let mut applied = self.resources.apply(&self.client, m, self.args.force_conflicts, false).await;
            if rollback
                && let Err(ApplyError::Conflict(c)) = &applied
                && controllers_only(c)
            {
                eprintln!("{}: taking back {} from the controller-manager", m.id, c.join(", "));
                applied = self.resources.apply(&self.client, m, true, false).await;
            }
            match applied {
                Ok(_) => eprintln!("applied {}", m.id),
                Err(ApplyError::Conflict(c)) => conflicts.push(apply::describe_conflict(&m.id, &c)),
                Err(ApplyError::NoNamespace) => {
                    return Ok(Applied::Failed {
                        what: vec![format!("{}: namespace {} does not exist", m.id, self.ns)],
                    });
                }
                Err(ApplyError::Other(e)) => return Ok(Applied::Failed { what: vec![format!("{}: {e:#}", m.id)] }),
            }
        }
        if !conflicts.is_empty() {
            conflicts.push(
                "another field manager owns these fields: re-run with --force-conflicts to take them over".into(),
            );
            return Ok(Applied::Failed { what: conflicts });
        }
        tracing::info!("applied {} objects", manifests.len());
        let ids = plan::inventory(manifests);
        let abort = || lock.lost().then(|| "the release lock was taken by another run (--force-unlock)".to_owned());
        match wait::wait(&self.client, &self.resources, &ids, timeout, &abort).await? {
            wait::Outcome::Failed(what) => return Ok(Applied::Failed { what }),
            wait::Outcome::Ready => {}
        }
        let pruned = self.prune(previous, &ids, false).await?;
        Ok(Applied::Ready { pruned })
    }

    async fn prune(&self, previous: &[ObjectRef], current: &[ObjectRef], dry_run: bool) -> anyhow::Result<Vec<String>> {
        let mut pruned = Vec::new();
        for r in plan::to_prune(previous, current) {
            let Ok(api_known) = self.resources.api(&self.client, &r) else {
                eprintln!("prune: skipping {r}: its resource type is no longer served");
                continue;
            };
            drop(api_known);
            match self.resources.get(&self.client, &r).await? {
                None => {}
                Some(live) if plan::ours(&live, self.release) => {
                    self.resources.delete(&self.client, &r, dry_run).await?;
                    if !dry_run {
                        eprintln!("pruned {r}");
                    }
                    pruned.push(r.to_string());
                }
                Some(_) => {
                    eprintln!("prune: leaving {r} alone: it does not carry audctl's release label and field manager")
                }
            }
        }
        Ok(pruned)
    }
}

/// Resolve resource types of everything the run may touch: what it applies and what it may prune.
async fn resolve_all(
    client: &kube::Client,
    manifests: &[Manifest],
    previous: &[ObjectRef],
) -> anyhow::Result<Resources> {
    let mut ids: Vec<&ObjectRef> = manifests.iter().map(|m| &m.id).collect();
    let applied = apply::resolve(client, &ids).await?;
    // Kinds only in the old inventory may be gone (CRD removed): resolve them separately, leniently.
    ids.extend(previous.iter());
    Ok(apply::resolve(client, &ids).await.unwrap_or(applied))
}

/// Objects of earlier revisions that may still be live: every inventory since the current deployed
/// revision (a failed or interrupted revision after it may have created objects).
fn live_inventory(revs: &[Revision]) -> Vec<ObjectRef> {
    let mut set = BTreeSet::new();
    for r in revs {
        set.extend(r.inventory.iter().cloned());
        if r.state == State::Deployed {
            break;
        }
    }
    set.into_iter().collect()
}

/// The release namespace must exist before the lock and the records can (they live in it). An
/// existing one is left alone here: the rendered Namespace is applied with the rest, after the
/// preflight, so a refused deploy changes nothing. A missing one is created now; returns its
/// identity then, for the preflight's message.
async fn ensure_namespace(
    client: &kube::Client,
    resources: &Resources,
    manifests: &[Manifest],
    ns: &str,
) -> anyhow::Result<Option<ObjectRef>> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    match api.get_opt(ns).await {
        Ok(Some(_)) => return Ok(None),
        Ok(None) => {}
        Err(e) => return Err(crate::kube::transport_error(e, "reading the release namespace")),
    }
    let Some(m) = manifests.iter().find(|m| m.id.kind == "Namespace" && m.id.name == ns) else {
        return Err(usage(format!(
            "namespace {ns} does not exist and the values do not create it (namespace.create: false); create it first"
        )));
    };
    match resources.apply(client, m, true, false).await {
        Ok(_) => Ok(Some(m.id.clone())),
        Err(ApplyError::Other(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("applying namespace {ns}: {e:?}")),
    }
}

/// Whether every conflicting field belongs to the controller-manager. A rollback restores a
/// revision that was good; the revision it undoes may have had controllers take fields: above all
/// a HorizontalPodAutoscaler, which sets `.spec.replicas` through the scale subresource (its
/// templates leave the field to it). Restoring a revision without one means taking the count
/// back, or the rollback fails on its own undo. Fields of any other manager (a person, another
/// tool) are still refused without `--force-conflicts`.
fn controllers_only(conflicts: &[String]) -> bool {
    !conflicts.is_empty() && conflicts.iter().all(|c| c.contains("conflict with \"kube-controller-manager\""))
}

/// Server-side dry run of every object before anything changes: field-manager conflicts and
/// objects the API server refuses are all reported at once, and nothing is applied (but
/// `created`, the namespace [`ensure_namespace`] had to create for the lock and records).
async fn preflight(
    client: &kube::Client,
    resources: &Resources,
    manifests: &[Manifest],
    force: bool,
    created: Option<&ObjectRef>,
) -> anyhow::Result<()> {
    let mut refused = Vec::new();
    let mut conflict = false;
    for m in manifests {
        match resources.apply(client, m, force, true).await {
            Ok(_) | Err(ApplyError::NoNamespace) => {}
            Err(ApplyError::Conflict(c)) => {
                conflict = true;
                refused.push(apply::describe_conflict(&m.id, &c));
            }
            Err(ApplyError::Other(e)) if crate::error::Failure::classify(&e) == crate::error::Failure::Unreachable => {
                return Err(e);
            }
            Err(ApplyError::Other(e)) => refused.push(format!("{}: {e:#}", m.id)),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    if conflict {
        refused.push(
            "these fields belong to another field manager: re-run with --force-conflicts to take them over".into(),
        );
    }
    let applied = match created {
        Some(ns) => format!("nothing but {ns} was applied (created to hold the release lock and records)"),
        None => "nothing was applied".to_owned(),
    };
    let msg = format!("{applied}:\n  {}", refused.join("\n  "));
    eprintln!("{}: {msg}", output::paint_error("deploy refused"));
    Err(CheckFailed(msg).into())
}

/// Mark revisions left pending by a run that died (we hold the lock, so it is not running).
async fn settle_interrupted(client: &kube::Client, revs: &mut [Revision]) -> anyhow::Result<()> {
    for r in revs.iter_mut().filter(|r| r.state == State::Pending) {
        r.state = State::Interrupted;
        r.outcome = "its run stopped before finishing (killed?); found by a later run".into();
        r.finished = Some(release::now());
        eprintln!("revision {} was left pending by a run that stopped; marked interrupted", r.revision);
        release::update(client, r).await?;
    }
    Ok(())
}

/// An interrupted run is evidence too (what was stopped, when, by whom): a later audit must not
/// find a gap where a deploy was attempted.
async fn record_interrupted(client: &kube::Client, ns: &str, ev: &Evidence) {
    if let Err(e) = evidence::record(client, ns, ev).await {
        eprintln!("warning: could not write the evidence record of the interrupted run: {e:#}");
    }
}

fn lock_options(args: &ApplyArgs, verb: &str) -> lock::Options {
    lock::Options {
        lease: args.lock_lease,
        force: args.force_unlock,
        wait: args.timeout,
        force_hint: format!("audctl {verb} --force-unlock ..."),
    }
}

async fn run_deploy(global: &GlobalArgs, args: &DeployArgs) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let started_wall = chrono::Utc::now();
    let started = release::now();
    let Rendered { values, manifests } =
        render(&args.values, &global.render_sets(&args.set), args.templates.as_deref())?;
    // Everything a canary needs from the render is checked before the cluster is touched.
    let canary_plan = match &args.canary {
        Some(_) => Some(
            canary::plan(&manifests, &values.name, &values.service_monitor.path)
                .map_err(|e| usage(format!("--canary: {e}")))?,
        ),
        None => None,
    };
    let settings = settings(global)?;
    check_cluster(&values.cluster, global, &settings, "deploy")?;
    let client = settings.api_client().await?;
    let ns = values.namespace.name.clone();
    let name = values.name.clone();
    let image = plan::image(&manifests);

    if args.dry_run {
        return dry_run(global, &client, &manifests, &values, started_at).await;
    }

    // From here on the cluster changes: an interrupt is handled (see `interrupt`), not fatal.
    let mut signals = interrupt::Signals::install()?;
    let locked = async {
        let resources = resolve_all(&client, &manifests, &[]).await?;
        let created = ensure_namespace(&client, &resources, &manifests, &ns).await?;
        let holder = lock::identity("deploy");
        let held = lock::acquire(&client, &ns, &name, &holder, &lock_options(&args.apply, "deploy")).await?;
        Ok::<_, anyhow::Error>((resources, created, held))
    };
    let (resources, created, held) = tokio::select! {
        locked = locked => locked?,
        stop = interrupt::first(&mut signals) => return Err(interrupt::before_lock(stop, "deploy")),
    };
    let body = async {
        let mut revs = release::list(&client, &ns, &name).await?;
        settle_interrupted(&client, &mut revs).await?;
        let previous = live_inventory(&revs);
        // Kinds only in earlier inventories (a CRD since removed...) need a second look.
        let resources = if previous.iter().all(|r| resources.knows(r)) {
            resources
        } else {
            resolve_all(&client, &manifests, &previous).await?
        };
        let t = Instant::now();
        preflight(&client, &resources, &manifests, args.apply.force_conflicts, created.as_ref()).await?;
        tracing::info!("preflight dry run of {} objects: {:.2}s", manifests.len(), t.elapsed().as_secs_f64());
        let number = revs.first().map(|r| r.revision + 1).unwrap_or(1);
        let mut rev = Revision {
            release: name.clone(),
            namespace: ns.clone(),
            revision: number,
            state: State::Pending,
            action: "deploy".into(),
            started: started.clone(),
            finished: None,
            who: evidence::who(),
            values_digest: Some(evidence::digest_of(&values)),
            image: image.clone(),
            outcome: String::new(),
            audctl_version: env!("CARGO_PKG_VERSION").into(),
            inventory: plan::inventory(&manifests),
            manifests: manifests.iter().map(|m| m.body.clone()).collect(),
            cluster: Some(values.cluster.clone()),
        };
        let stable_replicas = match (&canary_plan, &args.canary) {
            (Some(cp), Some(weights)) => {
                let stable = revs.iter().find(|r| r.state == State::Deployed).map(|r| r.revision);
                let live = resources.get(&client, &cp.stable).await?;
                let (Some(_), Some(live)) = (stable, live) else {
                    return Err(usage(format!(
                        "--canary: release {name} has no deployed revision with a live {} to compare the canary \
                         with; deploy it once without --canary",
                        cp.stable
                    )));
                };
                let w: Vec<String> = weights.0.iter().map(u8::to_string).collect();
                rev.action = format!("canary {} ({:?} steps)", w.join(","), args.step_duration);
                // Listed while the canary runs: a later deploy prunes them if this run is killed.
                rev.inventory.extend(cp.inventory()?);
                live.pointer("/spec/replicas").and_then(serde_json::Value::as_i64).unwrap_or(1) as i32
            }
            _ => 0,
        };
        release::create(&client, &rev).await?;
        eprintln!("release {name}: revision {number} ({}) in namespace {ns}", image.as_deref().unwrap_or("no image"));
        let run = Run { client: client.clone(), resources, release: &name, ns: &ns, args: &args.apply };
        if let Some(cp) = &canary_plan {
            let canary = Canary { plan: cp, args, stable_replicas, manifests: &manifests, previous: &previous };
            return canary_deploy(&run, &mut revs, &mut rev, &canary, started_at, &held).await;
        }
        let timeout = args.apply.timeout.saturating_sub(started_at.elapsed()).max(Duration::from_secs(1));
        let applied = run.apply_and_wait(&manifests, &previous, timeout, &held, false).await;
        let applied = match applied {
            Ok(a) => a,
            Err(e) => Applied::Failed { what: vec![format!("{e:#}")] },
        };
        finish(&run, &mut revs, &mut rev, applied, args.no_rollback, started_at, &held).await
    };
    // On a signal the run stops at its next await point, wherever it is; `settle` finds what it
    // left pending from the records.
    let result = tokio::select! {
        result = body => result,
        stop = interrupt::first(&mut signals) => {
            let stopped = interrupt::settle(&client, &ns, &name, held, stop).await;
            let ev = Evidence::new("deploy", EvOutcome::Error, stopped.to_string(), started_wall)
                .subject(subject(values.cluster.environment.as_deref(), &settings))
                .values_digest(evidence::digest_of(&values));
            record_interrupted(&client, &ns, &ev).await;
            return Err(stopped);
        }
    };
    held.release().await;
    let (report, failure) = result?;
    let ev_outcome = if failure.is_some() { EvOutcome::Failure } else { EvOutcome::Success };
    let ev = Evidence::new("deploy", ev_outcome, report.outcome.clone(), started_wall)
        .subject(subject(values.cluster.environment.as_deref(), &settings))
        .values_digest(evidence::digest_of(&values))
        .figure("revision", report.revision.unwrap_or(0))
        .figure("seconds", report.seconds)
        .figure("image", report.image.clone().unwrap_or_default());
    let ev = match &report.canary {
        Some(c) => ev.figure("canary", c),
        None => ev,
    };
    if let Err(e) = evidence::record(&client, &ns, &ev).await {
        eprintln!("warning: could not write the deploy evidence record: {e:#}");
    }
    output::emit(global.output, &report)?;
    match failure {
        Some(msg) => {
            eprintln!("{}: {msg}", output::paint_error("deploy failed"));
            Err(CheckFailed(msg).into())
        }
        None => Ok(()),
    }
}

/// A canary deploy's inputs besides the run.
struct Canary<'a> {
    plan: &'a canary::Plan,
    args: &'a DeployArgs,
    stable_replicas: i32,
    manifests: &'a [Manifest],
    previous: &'a [ObjectRef],
}

/// Run the canary steps; promote (the normal apply, wait and record of the whole render) when all
/// pass, else remove the canary objects and record the revision failed. The stable Deployment is
/// only ever changed by the promotion.
async fn canary_deploy(
    run: &Run<'_>,
    revs: &mut [Revision],
    rev: &mut Revision,
    c: &Canary<'_>,
    started_at: Instant,
    lock: &lock::Held,
) -> anyhow::Result<(DeployReport, Option<String>)> {
    let args = c.args;
    let weights = args.canary.as_ref().map(|w| w.0.clone()).unwrap_or_default();
    let settings = canary::Settings {
        weights: &weights,
        step: args.step_duration,
        metrics_urls: &args.canary_metrics_url,
        timeout: args.apply.timeout,
    };
    let timeout = args.apply.timeout;
    let outcome = canary::run(&run.client, &run.resources, c.plan, run.ns, c.stable_replicas, &settings, lock).await;
    let (steps, why) = match outcome {
        Ok(canary::Outcome::Passed(steps)) => {
            eprintln!("canary passed {} step(s): promoting it to {}", steps.len(), c.plan.stable);
            let applied = match run.apply_and_wait(c.manifests, c.previous, timeout, lock, false).await {
                Ok(a) => a,
                Err(e) => Applied::Failed { what: vec![format!("{e:#}")] },
            };
            let promoted = matches!(applied, Applied::Ready { .. });
            rev.inventory = plan::inventory(c.manifests);
            let (mut report, mut failure) = finish(run, revs, rev, applied, args.no_rollback, started_at, lock).await?;
            // The stable Deployment now serves the new version (or, after a failed promotion, the
            // rolled-back one): traffic goes back to it as the canary objects go.
            let removed = canary::remove(&run.client, &run.resources, c.plan, timeout).await;
            if promoted {
                rev.outcome = format!("canary passed {} step(s), promoted: {}", steps.len(), rev.outcome);
                release::update(&run.client, rev).await?;
                report.outcome = rev.outcome.clone();
            }
            if let Err(e) = removed {
                report.outcome = format!("{}; removing the canary objects failed: {e:#}", report.outcome);
                failure = Some(report.outcome.clone());
            }
            let outcome = if promoted { "promoted" } else { "promotion failed" };
            report.canary = Some(CanaryReport::new(outcome, &c.plan.rules, steps));
            return Ok((report, failure));
        }
        Ok(canary::Outcome::Failed { steps, why }) => (steps, why),
        Err(e) => (Vec::new(), format!("{e:#}")),
    };
    eprintln!("{}: {why}", output::paint_error("canary failed"));
    let mut msg = format!("{why}; canary rolled back");
    match canary::remove(&run.client, &run.resources, c.plan, timeout).await {
        Ok(()) => msg.push_str(" (canary objects removed)"),
        Err(e) => msg.push_str(&format!(", but removing the canary objects failed: {e:#}")),
    }
    // The stable Deployment was never touched: say that it serves (or what is wrong with it).
    let stable = std::slice::from_ref(&c.plan.stable);
    let current = revs.iter().find(|r| r.state == State::Deployed).map(|r| r.revision).unwrap_or(0);
    match wait::wait(&run.client, &run.resources, stable, timeout, &|| None).await {
        Ok(wait::Outcome::Ready) => msg.push_str(&format!("; {} of revision {current} is serving", c.plan.stable)),
        Ok(wait::Outcome::Failed(w)) => msg.push_str(&format!("; {} is not ready: {}", c.plan.stable, w.join("; "))),
        Err(e) => msg.push_str(&format!("; could not read {}: {e:#}", c.plan.stable)),
    }
    rev.state = State::Failed;
    rev.outcome = msg.clone();
    rev.finished = Some(release::now());
    release::update(&run.client, rev).await?;
    let objects = c
        .plan
        .inventory()?
        .iter()
        .map(|r| ObjectLine { object: r.to_string(), action: "canary, removed".into() })
        .collect();
    let report = DeployReport {
        release: rev.release.clone(),
        namespace: rev.namespace.clone(),
        revision: Some(rev.revision),
        dry_run: false,
        outcome: msg.clone(),
        image: rev.image.clone(),
        seconds: started_at.elapsed().as_secs_f64(),
        objects,
        pruned: Vec::new(),
        rolled_back_to: None,
        canary: Some(CanaryReport::new("rolled back", &c.plan.rules, steps)),
    };
    Ok((report, Some(msg)))
}

/// Record the outcome of `rev`; on failure roll back to the last good revision (unless told not to).
async fn finish(
    run: &Run<'_>,
    revs: &mut [Revision],
    rev: &mut Revision,
    applied: Applied,
    no_rollback: bool,
    started_at: Instant,
    lock: &lock::Held,
) -> anyhow::Result<(DeployReport, Option<String>)> {
    let objects: Vec<ObjectLine> =
        rev.inventory.iter().map(|r| ObjectLine { object: r.to_string(), action: "applied".into() }).collect();
    let mut report = DeployReport {
        release: rev.release.clone(),
        namespace: rev.namespace.clone(),
        revision: Some(rev.revision),
        dry_run: false,
        outcome: String::new(),
        image: rev.image.clone(),
        seconds: 0.0,
        objects,
        pruned: Vec::new(),
        rolled_back_to: None,
        canary: None,
    };
    match applied {
        Applied::Ready { pruned } => {
            report.seconds = started_at.elapsed().as_secs_f64();
            rev.state = State::Deployed;
            rev.outcome = format!("ready in {:.1}s{}", report.seconds, pruned_note(&pruned));
            rev.finished = Some(release::now());
            release::update(&run.client, rev).await?;
            supersede(&run.client, revs, rev.revision).await?;
            release::trim(&run.client, run.ns, run.release, revs).await?;
            eprintln!("revision {} of {} is ready ({:.1}s)", rev.revision, rev.release, report.seconds);
            report.outcome = rev.outcome.clone();
            report.pruned = pruned;
            Ok((report, None))
        }
        Applied::Failed { what } => {
            rev.state = State::Failed;
            rev.outcome = what.join("\n");
            rev.finished = Some(release::now());
            release::update(&run.client, rev).await?;
            eprintln!(
                "{}: revision {} failed:\n  {}",
                output::paint_error("rollout failed"),
                rev.revision,
                what.join("\n  ")
            );
            let mut msg = format!("revision {} failed: {}", rev.revision, what.first().cloned().unwrap_or_default());
            let good = revs.iter().find(|r| r.state.good()).cloned();
            match (no_rollback, good) {
                (true, _) => msg.push_str("; left as it is (--no-rollback)"),
                (false, None) => msg.push_str("; no earlier good revision to roll back to, left as it is"),
                (false, Some(good)) => {
                    eprintln!("rolling back to revision {} (the last good one)", good.revision);
                    let action = format!("automatic rollback to {} (revision {} failed)", good.revision, rev.revision);
                    let mut all: Vec<Revision> = std::iter::once(rev.clone()).chain(revs.iter().cloned()).collect();
                    let back = roll_to(run, &mut all, &good, action, run.args.timeout, lock).await?;
                    match back {
                        Ok(number) => {
                            report.rolled_back_to = Some(good.revision);
                            msg.push_str(&format!(
                                "; rolled back to revision {} (recorded as revision {number}), which is ready",
                                good.revision
                            ));
                        }
                        Err(why) => {
                            msg.push_str(&format!("; the rollback to revision {} failed too: {why}", good.revision))
                        }
                    }
                }
            }
            report.seconds = started_at.elapsed().as_secs_f64();
            report.outcome = msg.clone();
            Ok((report, Some(msg)))
        }
    }
}

fn pruned_note(pruned: &[String]) -> String {
    if pruned.is_empty() { String::new() } else { format!(", pruned {}", pruned.join(", ")) }
}

/// Mark the previous deployed revision(s) superseded by `current`.
async fn supersede(client: &kube::Client, revs: &mut [Revision], current: u32) -> anyhow::Result<()> {
    for r in revs.iter_mut().filter(|r| r.state == State::Deployed && r.revision != current) {
        r.state = State::Superseded;
        release::update(client, r).await?;
    }
    Ok(())
}

/// Re-apply `target`'s recorded objects as a new revision, wait, prune. Outer error: the cluster
/// could not be talked to; inner: the new revision failed (its reason).
async fn roll_to(
    run: &Run<'_>,
    revs: &mut Vec<Revision>,
    target: &Revision,
    action: String,
    timeout: Duration,
    lock: &lock::Held,
) -> anyhow::Result<Result<u32, String>> {
    let manifests = plan::from_bodies(target.manifests.clone(), run.release)?;
    let previous = live_inventory(revs);
    let number = revs.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let mut rev = Revision {
        revision: number,
        state: State::Pending,
        action,
        started: release::now(),
        finished: None,
        who: evidence::who(),
        outcome: String::new(),
        inventory: plan::inventory(&manifests),
        audctl_version: env!("CARGO_PKG_VERSION").into(),
        ..target.clone()
    };
    release::create(&run.client, &rev).await?;
    let started = Instant::now();
    let resources = resolve_all(&run.client, &manifests, &previous).await?;
    let sub = Run { client: run.client.clone(), resources, release: run.release, ns: run.ns, args: run.args };
    let applied = sub.apply_and_wait(&manifests, &previous, timeout, lock, true).await?;
    rev.finished = Some(release::now());
    match applied {
        Applied::Ready { pruned } => {
            rev.state = State::Deployed;
            rev.outcome = format!("ready in {:.1}s{}", started.elapsed().as_secs_f64(), pruned_note(&pruned));
            release::update(&run.client, &rev).await?;
            supersede(&run.client, revs, number).await?;
            revs.insert(0, rev);
            release::trim(&run.client, run.ns, run.release, revs).await?;
            eprintln!("revision {number} (= revision {}) is ready", target.revision);
            Ok(Ok(number))
        }
        Applied::Failed { what } => {
            rev.state = State::Failed;
            rev.outcome = what.join("\n");
            release::update(&run.client, &rev).await?;
            // Listed like the others: a restore after it numbers its revision past it and prunes
            // what it created.
            revs.insert(0, rev);
            Ok(Err(what.join("; ")))
        }
    }
}

async fn dry_run(
    global: &GlobalArgs,
    client: &kube::Client,
    manifests: &[Manifest],
    values: &Values,
    started_at: Instant,
) -> anyhow::Result<()> {
    let ns = &values.namespace.name;
    let revs = release::list(client, ns, &values.name).await.unwrap_or_default();
    let previous = live_inventory(&revs);
    let resources = resolve_all(client, manifests, &previous).await?;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for m in manifests {
        let existed = resources.get(client, &m.id).await?.is_some();
        let action = match resources.apply(client, m, false, true).await {
            Ok(_) if existed => "configured (server dry run)".to_owned(),
            Ok(_) => "created (server dry run)".to_owned(),
            Err(ApplyError::NoNamespace) => format!("would be created once namespace {ns} exists"),
            Err(ApplyError::Conflict(c)) => {
                problems.push(apply::describe_conflict(&m.id, &c));
                "conflict".to_owned()
            }
            Err(ApplyError::Other(e)) => {
                problems.push(format!("{}: {e:#}", m.id));
                "refused".to_owned()
            }
        };
        objects.push(ObjectLine { object: m.id.to_string(), action });
    }
    let run = Run {
        client: client.clone(),
        resources,
        release: &values.name,
        ns,
        args: &ApplyArgs {
            force_conflicts: false,
            timeout: Duration::ZERO,
            lock_lease: Duration::ZERO,
            force_unlock: false,
        },
    };
    let pruned = run.prune(&previous, &plan::inventory(manifests), true).await?;
    let outcome = if problems.is_empty() {
        "dry run: every object accepted, nothing changed".to_owned()
    } else {
        format!("dry run: {} object(s) refused, nothing changed", problems.len())
    };
    let report = DeployReport {
        release: values.name.clone(),
        namespace: ns.clone(),
        revision: None,
        dry_run: true,
        outcome,
        image: plan::image(manifests),
        seconds: started_at.elapsed().as_secs_f64(),
        objects,
        pruned,
        rolled_back_to: None,
        canary: None,
    };
    output::emit(global.output, &report)?;
    if problems.is_empty() {
        Ok(())
    } else {
        let mut msg = problems.join("\n  ");
        if msg.contains("conflict on") {
            msg.push_str("\n  re-run with --force-conflicts to take the fields over");
        }
        eprintln!("{}:\n  {msg}", output::paint_error("dry run refused"));
        Err(CheckFailed(msg).into())
    }
}

/// The release name given, or the only one recorded in the namespace.
async fn release_name(client: &kube::Client, ns: &str, given: Option<&str>) -> anyhow::Result<String> {
    if let Some(n) = given {
        return Ok(n.to_owned());
    }
    let names = release::releases(client, ns).await?;
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(usage(format!("no release recorded in namespace {ns} (audctl deploy records them; -n NAMESPACE?)"))),
        many => {
            Err(usage(format!("several releases in namespace {ns} ({}); pick one with --release", many.join(", "))))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub release: String,
    pub namespace: String,
    pub revisions: Vec<Revision>,
}

impl Report for HistoryReport {
    fn table(&self) -> Table {
        let mut t = output::new_table(["revision", "state", "action", "image", "who", "started", "outcome"]);
        for r in &self.revisions {
            let outcome = r.outcome.lines().next().unwrap_or("").to_owned();
            t.add_row(vec![
                r.revision.to_string(),
                r.state.as_str().to_owned(),
                r.action.clone(),
                r.image.clone().unwrap_or_default(),
                r.who.clone(),
                r.started.clone(),
                outcome,
            ]);
        }
        t
    }
}

async fn run_history(global: &GlobalArgs, args: &HistoryArgs) -> anyhow::Result<()> {
    let client = settings(global)?.api_client().await?;
    let ns = &global.namespace;
    let name = release_name(&client, ns, args.release.as_deref()).await?;
    let revisions = release::list(&client, ns, &name).await?;
    output::emit(global.output, &HistoryReport { release: name, namespace: ns.clone(), revisions })
}

/// `rollback` without a revision. When the latest revision is the current deployed one: the last
/// good revision before it. When it is not (it failed with --no-rollback, or was interrupted), the
/// deployed revision was serving before it: go back to that one (else the newest good one).
fn default_target(revs: &[Revision]) -> Option<&Revision> {
    let latest = revs.first()?;
    if latest.state == State::Deployed {
        return revs.iter().find(|r| r.state.good() && r.revision < latest.revision);
    }
    revs.iter().find(|r| r.state == State::Deployed).or_else(|| revs.iter().find(|r| r.state.good()))
}

async fn run_rollback(global: &GlobalArgs, args: &RollbackArgs) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let started_wall = chrono::Utc::now();
    let settings = settings(global)?;
    let values = if args.values.is_empty() && args.set.is_empty() {
        None
    } else {
        Some(crate::values::load(&args.values, &global.render_sets(&args.set))?)
    };
    if let Some(v) = &values {
        check_cluster(&v.cluster, global, &settings, "roll back")?;
    }
    let client = settings.api_client().await?;
    let ns = values.as_ref().map(|v| v.namespace.name.clone()).unwrap_or_else(|| global.namespace.clone());
    let given = args.release.as_deref().or(values.as_ref().map(|v| v.name.as_str()));
    let name = release_name(&client, &ns, given).await?;
    let holder = lock::identity("rollback");
    let mut signals = interrupt::Signals::install()?;
    let opts = lock_options(&args.apply, "rollback");
    let held = tokio::select! {
        held = lock::acquire(&client, &ns, &name, &holder, &opts) => held?,
        stop = interrupt::first(&mut signals) => return Err(interrupt::before_lock(stop, "rollback")),
    };
    let body = async {
        let mut revs = release::list(&client, &ns, &name).await?;
        settle_interrupted(&client, &mut revs).await?;
        let current = revs.iter().find(|r| r.state == State::Deployed).cloned();
        let target =
            match args.revision {
                Some(n) => revs.iter().find(|r| r.revision == n).cloned().ok_or_else(|| {
                    usage(format!("release {name} has no revision {n} (see `audctl history -n {ns}`)"))
                })?,
                None => default_target(&revs)
                    .cloned()
                    .ok_or_else(|| usage(format!("release {name} has no earlier good revision to roll back to")))?,
            };
        if !target.state.good() {
            eprintln!(
                "warning: revision {} is recorded as {}: it did not become ready when it was rolled out",
                target.revision,
                target.state.as_str()
            );
        }
        if target.manifests.is_empty() {
            return Err(usage(format!("revision {} of {name} recorded no objects", target.revision)));
        }
        // The revision goes back only where its deploy was allowed to go (its values' cluster).
        if let Some(expected) = &target.cluster {
            check_cluster(expected, global, &settings, &format!("roll back to revision {}", target.revision))?;
        }
        let manifests = plan::from_bodies(target.manifests.clone(), &name)?;
        let resources = resolve_all(&client, &manifests, &live_inventory(&revs)).await?;
        let run = Run { client: client.clone(), resources, release: &name, ns: &ns, args: &args.apply };
        let action = format!("rollback to {}", target.revision);
        eprintln!(
            "release {name}: rolling back to revision {} ({})",
            target.revision,
            target.image.as_deref().unwrap_or("-")
        );
        let outcome = roll_to(&run, &mut revs, &target, action, args.apply.timeout, &held).await?;
        // As a failed deploy is: a rollback that did not become ready must not leave the cluster on
        // its spec while the records say the previous revision serves. Put that one back.
        let restored = match (&outcome, &current) {
            (Err(why), Some(prev)) if prev.revision != target.revision => {
                eprintln!(
                    "{}: revision {} did not become ready: {why}; restoring revision {} (current before the rollback)",
                    output::paint_error("rollback failed"),
                    target.revision,
                    prev.revision
                );
                let failed = revs.first().map(|r| r.revision).unwrap_or(0);
                let action =
                    format!("automatic rollback to {} (rollback to {} failed)", prev.revision, target.revision);
                Some((prev.revision, roll_to(&run, &mut revs, prev, action, args.apply.timeout, &held).await?, failed))
            }
            _ => None,
        };
        Ok::<_, anyhow::Error>((target, outcome, restored, revs))
    };
    let result = tokio::select! {
        result = body => result,
        stop = interrupt::first(&mut signals) => {
            let stopped = interrupt::settle(&client, &ns, &name, held, stop).await;
            let env = current_cluster(&settings).ok().and_then(|(c, _)| c);
            let ev = Evidence::new("rollback", EvOutcome::Error, stopped.to_string(), started_wall)
                .subject(subject(env.as_deref(), &settings));
            record_interrupted(&client, &ns, &ev).await;
            return Err(stopped);
        }
    };
    held.release().await;
    let (target, outcome, restored, revs) = result?;
    let seconds = started_at.elapsed().as_secs_f64();
    let (number, failure) = match &outcome {
        Ok(n) => (Some(*n), None),
        Err(why) => (revs.first().map(|r| r.revision), Some(why.clone())),
    };
    let mut summary = match &failure {
        None => format!(
            "rolled back to revision {} (now revision {}) in {seconds:.1}s",
            target.revision,
            number.unwrap_or(0)
        ),
        Some(why) => format!("rollback to revision {} failed: {why}", target.revision),
    };
    match &restored {
        Some((prev, Ok(n), _)) => {
            summary.push_str(&format!("; restored revision {prev} (recorded as revision {n}), which is ready"))
        }
        Some((prev, Err(why), _)) => summary.push_str(&format!("; restoring revision {prev} failed too: {why}")),
        None if failure.is_some() => summary.push_str("; left as it is (no other revision was current before)"),
        None => {}
    }
    // The failed rollback's own revision, not the restore's, is what the report is about.
    let number = restored.as_ref().map(|(_, _, failed)| Some(*failed)).unwrap_or(number);
    let env = current_cluster(&settings).ok().and_then(|(c, _)| c);
    let ev = Evidence::new(
        "rollback",
        if failure.is_some() { EvOutcome::Failure } else { EvOutcome::Success },
        summary.clone(),
        started_wall,
    )
    .subject(subject(env.as_deref(), &settings))
    .figure("revision", number.unwrap_or(0))
    .figure("target", target.revision);
    let ev = match &target.values_digest {
        Some(d) => ev.values_digest(d.clone()),
        None => ev,
    };
    if let Err(e) = evidence::record(&client, &ns, &ev).await {
        eprintln!("warning: could not write the rollback evidence record: {e:#}");
    }
    let report = DeployReport {
        release: name,
        namespace: ns,
        revision: number,
        dry_run: false,
        outcome: summary.clone(),
        image: target.image.clone(),
        seconds,
        objects: target
            .inventory
            .iter()
            .map(|r| ObjectLine { object: r.to_string(), action: "applied".into() })
            .collect(),
        pruned: Vec::new(),
        rolled_back_to: Some(target.revision),
        canary: None,
    };
    output::emit(global.output, &report)?;
    match failure {
        Some(_) => {
            eprintln!("{}: {summary}", output::paint_error("rollback failed"));
            Err(CheckFailed(summary).into())
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_takes_back_only_what_the_controller_manager_took() {
        // As the API server said it on the testbed (`deps up`): prod's HPA had scaled the failed
        // revision, and the rollback to a revision with a replica count failed on it.
        let hpa = vec![
            r#".spec.replicas (conflict with "kube-controller-manager" with subresource "scale" using apps/v1)"#
                .to_owned(),
        ];
        assert!(controllers_only(&hpa));
        let person = vec![r#".data.KAFKA_TOPIC (conflict with "intruder" using v1)"#.to_owned()];
        assert!(!controllers_only(&person));
        assert!(!controllers_only(&[hpa[0].clone(), person[0].clone()]));
        assert!(!controllers_only(&[]));
    }

    fn revs(states: &[(u32, State)]) -> Vec<Revision> {
        states
            .iter()
            .map(|&(revision, state)| Revision {
                release: "audit-trail".into(),
                namespace: "ns".into(),
                revision,
                state,
                action: "deploy".into(),
                started: String::new(),
                finished: None,
                who: "me".into(),
                values_digest: None,
                image: None,
                outcome: String::new(),
                audctl_version: "0".into(),
                inventory: vec![],
                manifests: vec![],
                cluster: None,
            })
            .collect()
    }

    #[test]
    fn rollback_default_target() {
        use State::*;
        let target = |s: &[(u32, State)]| default_target(&revs(s)).map(|r| r.revision);
        // The latest is current: the good one before it.
        assert_eq!(target(&[(3, Deployed), (2, Failed), (1, Superseded)]), Some(1));
        // The latest failed (--no-rollback) or was interrupted: the deployed one was serving.
        assert_eq!(target(&[(28, Failed), (27, Deployed), (26, Superseded)]), Some(27));
        assert_eq!(target(&[(5, Interrupted), (4, Interrupted), (3, Deployed), (2, Superseded)]), Some(3));
        // Nothing deployed: the newest good one.
        assert_eq!(target(&[(3, Failed), (2, Superseded), (1, Superseded)]), Some(2));
        assert_eq!(target(&[(1, Deployed)]), None);
        assert_eq!(target(&[]), None);
    }
}
