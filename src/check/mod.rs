//! `audctl check`: the go-live checklist (checklists/go-live.yaml) proven live.
//!
//! checklist (validated) -> selection (--phase/--only/--skip) -> values + render (manifest probes see
//! exactly what would be deployed) -> probes, attestations and evidence records read concurrently
//! under one deadline -> one verdict per item (waivers applied) -> report + exit code, and the run's
//! own evidence record in the cluster.

pub mod attest;
pub mod engine;
pub mod model;
pub mod report;
pub mod waivers;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Instant;

use chrono::Utc;

use crate::cli::{CheckArgs, GlobalArgs, OutputFormat};
use crate::error::{CheckFailed, Unreachable, usage};
use crate::evidence::{self, Evidence, Outcome};
use crate::kube::KubeSettings;
use crate::output;
use crate::probes::{self, Context, ErrorCause, Finding, Probe, Status};

use engine::{Inputs, ProbeRun, Verdict};
use model::{Checklist, Entry, PHASES, Proof};
use report::{CheckReport, ItemReport, ProbeReport, SectionReport};

pub fn probe_ids() -> Vec<&'static str> {
    probes::registry().ids()
}

/// The cluster client when one is configured (flags or targets file), else None.
pub async fn cluster_client(global: &GlobalArgs) -> anyhow::Result<Option<kube::Client>> {
    let targets = load_targets(global)?;
    let settings = KubeSettings::resolve(global, Some(&targets));
    if !settings.configured() {
        return Ok(None);
    }
    // Asked its version first (bounded): a hung or wrong server is exit 3, said so.
    Ok(Some(settings.api_client().await?))
}

fn load_targets(global: &GlobalArgs) -> anyhow::Result<audctl_targets::Targets> {
    match &global.targets {
        Some(path) => {
            audctl_targets::Targets::load(path).map_err(|e| usage(format!("targets file {}: {e}", path.display())))
        }
        None => Ok(audctl_targets::Targets::default()),
    }
}

pub fn run(args: &CheckArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run_async(args, global))
}

/// Items selected by --phase, --only and --skip (unknown ids are usage errors).
pub fn select(checklist: &Checklist, args: &CheckArgs) -> anyhow::Result<Vec<Entry>> {
    let ids = checklist.ids();
    let split = |v: &[String]| -> Vec<String> {
        v.iter().flat_map(|s| s.split(',')).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
    };
    let (only, skip) = (split(&args.only), split(&args.skip));
    for id in only.iter().chain(&skip) {
        if !ids.contains(&id.as_str()) {
            let near =
                ids.iter().min_by_key(|k| strsim::levenshtein(k, id)).filter(|k| strsim::levenshtein(k, id) <= 3);
            return Err(usage(format!(
                "unknown checklist item {id:?}{}",
                near.map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default()
            )));
        }
    }
    for p in &args.phase {
        if !PHASES.contains(&p.as_str()) {
            return Err(usage(format!("unknown phase {p:?} (expected one of {})", PHASES.join(", "))));
        }
    }
    let all = checklist.entries();
    if all.is_empty() {
        return Err(usage("the checklist has no items: nothing to check (add sections with items)"));
    }
    // Each filter in turn, so that an empty selection names the one that left nothing: a run that
    // checks nothing must not pass as a green gate.
    let phase_of = |e: &Entry| checklist.sections[e.section].phase.clone();
    let mut steps: Vec<(String, usize)> = Vec::new();
    let mut left = all;
    if !args.phase.is_empty() {
        left.retain(|e| args.phase.contains(&phase_of(e)));
        steps.push((format!("--phase {}", args.phase.join(" --phase ")), left.len()));
    }
    if !only.is_empty() {
        let before: Vec<Entry> = left.clone();
        left.retain(|e| only.contains(&e.item.id));
        let mut what = format!("--only {}", only.join(","));
        if left.is_empty() && !args.phase.is_empty() {
            // The ids exist (checked above): they are in other phases.
            let elsewhere: Vec<String> = checklist
                .entries()
                .iter()
                .filter(|e| only.contains(&e.item.id) && !before.iter().any(|b| b.item.id == e.item.id))
                .map(|e| format!("{} is in phase {}", e.item.id, phase_of(e)))
                .collect();
            what.push_str(&format!(" ({})", elsewhere.join(", ")));
        }
        steps.push((what, left.len()));
    }
    if !skip.is_empty() {
        left.retain(|e| !skip.contains(&e.item.id));
        steps.push((format!("--skip {}", skip.join(",")), left.len()));
    }
    if left.is_empty() {
        let said: Vec<String> = steps
            .iter()
            .map(|(what, n)| match n {
                0 => format!("{what} leaves none"),
                1 => format!("{what} leaves 1 item"),
                n => format!("{what} leaves {n} items"),
            })
            .collect();
        return Err(usage(format!("no checklist item selected: {}; nothing to check", said.join(", then "))));
    }
    Ok(left)
}

fn list_probes(format: OutputFormat) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Row {
        id: &'static str,
        target: String,
        timeout_s: u64,
        describe: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Rows {
        probes: Vec<Row>,
    }
    impl output::Report for Rows {
        fn table(&self) -> comfy_table::Table {
            let mut t = output::new_table(["PROBE", "TARGET", "TIMEOUT", "CHECKS"]);
            for r in &self.probes {
                t.add_row(vec![r.id.to_owned(), r.target.clone(), format!("{}s", r.timeout_s), r.describe.to_owned()]);
            }
            t
        }
    }
    let registry = probes::registry();
    let probes = registry
        .all()
        .map(|p| Row {
            id: p.id(),
            target: format!("{:?}", p.target()).to_lowercase(),
            timeout_s: p.timeout().as_secs(),
            describe: p.describe(),
        })
        .collect();
    output::emit(format, &Rows { probes })
}

async fn run_async(args: &CheckArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if args.list_probes {
        return list_probes(global.output);
    }
    let report = evaluate(args, global).await?;
    output::emit(global.output, &report)?;
    if global.output == OutputFormat::Table {
        output::print(format!("{}\n", report.summary_line()).as_bytes())?;
    }
    match report.exit_code {
        0 => Ok(()),
        crate::error::EXIT_UNREACHABLE => {
            let what: Vec<String> = report
                .items()
                .filter(|i| {
                    i.blocking
                        && i.status == Status::Error
                        && matches!(i.cause.as_deref(), Some("unreachable" | "timeout"))
                })
                .map(|i| i.id.clone())
                .collect();
            Err(Unreachable {
                what: "a target of the check".into(),
                detail: format!("items not evaluated: {}", what.join(", ")),
            }
            .into())
        }
        _ => Err(CheckFailed(report.summary_line()).into()),
    }
}

/// Run the check and return its report (with the exit code it implies), writing the run's evidence
/// record; printing is the caller's. Used by `audctl check` and `cargo xtask bench check`.
pub async fn evaluate(args: &CheckArgs, global: &GlobalArgs) -> anyhow::Result<CheckReport> {
    let started_at = Utc::now();
    let started = Instant::now();
    let timeout = model::parse_duration(&args.timeout).map_err(|e| usage(format!("--timeout: {e}")))?;
    // A zero deadline would time every probe out before it starts: ERRORs that say nothing.
    if timeout.is_zero() {
        return Err(usage(format!("--timeout {}: must be more than 0 (e.g. 60s, 2m)", args.timeout)));
    }
    let deadline = started + timeout;
    let evidence_max_age = match &args.evidence_max_age {
        Some(a) => match model::parse_duration(a).map_err(|e| usage(format!("--evidence-max-age: {e}")))? {
            // As for a checklist's evidence.maxAge: no record is younger than zero, every item would fail.
            d if d.is_zero() => {
                return Err(usage(format!("--evidence-max-age {a}: must be more than 0 (e.g. 7d, 12h)")));
            }
            d => Some(d),
        },
        None => None,
    };

    let registry = probes::registry();
    let ids: Vec<&str> = registry.ids();
    let checklist = model::load(args.checklist.as_deref(), &ids)?;
    let entries = select(&checklist, args)?;
    let (waivers_file, waivers) = waivers::load(args.waivers.as_deref(), &checklist.ids())?;
    // -n overrides the values' namespace.name as it does for deploy (render_sets), so probes,
    // attestations and evidence are read where `deploy -f` with the same files puts the release.
    let values = crate::values::load(&args.values, &global.render_sets(&args.set))?;
    let objects = crate::render::render(&values, None)?;

    let targets = load_targets(global)?;
    let settings = KubeSettings::resolve(global, Some(&targets));
    let (client, kube_url) = match settings.configured() {
        true => settings.client_at().await.map(|(c, url)| (Some(c), Some(url)))?,
        false => (None, None),
    };
    let namespace = values.namespace.name.clone();

    // The probes the selected items need, each run once.
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for e in &entries {
        needed.extend(engine::probes_of(e, &ids));
    }
    let to_run: Vec<&dyn Probe> = registry.all().filter(|p| needed.contains(p.id())).collect();
    let needs_attest = entries.iter().any(|e| e.item.proof == Proof::Attest);
    let evidence_verbs: BTreeSet<String> =
        entries.iter().filter_map(|e| e.item.evidence.as_ref().map(|s| s.verb.clone())).collect();

    let ctx = Context {
        namespace: namespace.clone(),
        kube: client.clone(),
        kube_url,
        targets,
        values: values.clone(),
        objects,
        conns: crate::probes::conns::Connections::with_write_probe(args.write_probe),
        now: started_at,
    };

    let total = to_run.len() as u64 + u64::from(needs_attest) + u64::from(!evidence_verbs.is_empty());
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| output::progress(total, "checking"));
    let plain = !tty;
    let on_probe = |run: &ProbeRun| {
        if let Some(b) = &bar {
            b.set_message(format!("{} {}", run.id, engine::label(run.finding.status)));
            b.inc(1);
        } else if plain {
            eprintln!(
                "check: {:<28} {:<17} {:>6} ms",
                run.id,
                engine::label(run.finding.status),
                run.elapsed.as_millis()
            );
        }
    };

    let no_cluster = || {
        Finding::error(ErrorCause::NotConfigured, "no cluster configured")
            .hint("give --kubeconfig/--context, KUBECONFIG or a targets file with `kube`")
    };
    let attest_fut = async {
        if !needs_attest {
            return Ok(BTreeMap::new());
        }
        let Some(c) = &client else { return Err(no_cluster()) };
        let budget = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(budget, attest::list(c, &namespace)).await {
            Ok(Ok(all)) => Ok(all),
            Ok(Err(e)) => Err(kube_finding(e, "listing attestations")),
            Err(_) => {
                Err(Finding::error(ErrorCause::Timeout, "listing attestations did not finish before the deadline"))
            }
        }
    };
    let evidence_fut = async {
        let mut by_verb = BTreeMap::new();
        if evidence_verbs.is_empty() {
            return Ok(by_verb);
        }
        let Some(c) = &client else { return Err(no_cluster()) };
        let budget = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(budget, evidence::list(c, &namespace, None)).await {
            Ok(Ok(all)) => {
                for stored in all {
                    if evidence_verbs.contains(&stored.evidence.verb) {
                        by_verb.entry(stored.evidence.verb.clone()).or_insert_with(Vec::new).push(stored);
                    }
                }
                Ok(by_verb)
            }
            Ok(Err(e)) => Err(classify_anyhow(&e, "reading evidence records")),
            Err(_) => {
                Err(Finding::error(ErrorCause::Timeout, "reading evidence records did not finish before the deadline"))
            }
        }
    };
    let probing = Instant::now();
    let (runs, attestations, evidence_records) =
        tokio::join!(engine::run_probes(&to_run, &ctx, deadline, on_probe), attest_fut, evidence_fut);
    let probes_ms = probing.elapsed().as_millis() as u64;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let runs: BTreeMap<String, ProbeRun> = runs.into_iter().map(|r| (r.id.clone(), r)).collect();
    let inputs = Inputs {
        probe_ids: &ids,
        namespace: &namespace,
        runs: &runs,
        attestations: &attestations,
        evidence: &evidence_records,
        waivers: &waivers,
        evidence_max_age,
        now: started_at,
    };
    let verdicts: Vec<(Entry, Verdict)> = entries
        .into_iter()
        .map(|e| {
            let v = engine::judge(&e, &inputs);
            (e, v)
        })
        .collect();
    let code = engine::exit_code(&verdicts.iter().map(|(e, v)| (e.item.blocking, v)).collect::<Vec<_>>());

    let mut report = build_report(&checklist, args, &namespace, started_at, &verdicts, &runs, waivers_file, code);
    report.wall_ms = started.elapsed().as_millis() as u64;
    report.probes_ms = probes_ms;

    // The run's own evidence record; a partial run (--only/--skip) says so in its figures.
    if !args.no_record && client.is_some() {
        let outcome = match code {
            0 => Outcome::Success,
            crate::error::EXIT_UNREACHABLE => Outcome::Error,
            _ => Outcome::Failure,
        };
        let mut ev = Evidence::new("check", outcome, report.summary_line(), started_at)
            .values_digest(evidence::digest_of(&values))
            .figure("wallMs", report.wall_ms)
            .figure("exitCode", code)
            .figure("only", &args.only)
            .figure("skip", &args.skip);
        if !args.phase.is_empty() {
            ev = ev.subject(args.phase.join(","));
        }
        for (k, n) in &report.summary {
            ev = ev.figure(k, *n);
        }
        report.evidence_record = evidence::record_best_effort(&settings, &namespace, &ev).await;
    }

    Ok(report)
}

fn kube_finding(e: kube::Error, doing: &str) -> Finding {
    let cause = if crate::kube::is_transport(&e) {
        ErrorCause::Unreachable
    } else if matches!(crate::kube::api_status(&e), Some(401 | 403)) {
        ErrorCause::Forbidden
    } else {
        ErrorCause::Other
    };
    Finding::error(cause, format!("{doing}: {e}"))
}

fn classify_anyhow(e: &anyhow::Error, doing: &str) -> Finding {
    let cause = match crate::error::Failure::classify(e) {
        crate::error::Failure::Unreachable => ErrorCause::Unreachable,
        _ => match e.chain().find_map(|c| c.downcast_ref::<kube::Error>()) {
            Some(k) if crate::kube::is_transport(k) => ErrorCause::Unreachable,
            Some(k) if matches!(crate::kube::api_status(k), Some(401 | 403)) => ErrorCause::Forbidden,
            _ => ErrorCause::Other,
        },
    };
    Finding::error(cause, format!("{doing}: {}", crate::error::chain(e)))
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    checklist: &Checklist,
    args: &CheckArgs,
    namespace: &str,
    started: chrono::DateTime<Utc>,
    verdicts: &[(Entry, Verdict)],
    runs: &BTreeMap<String, ProbeRun>,
    waivers_file: Option<std::path::PathBuf>,
    code: u8,
) -> CheckReport {
    let mut sections: Vec<SectionReport> = Vec::new();
    let mut summary: BTreeMap<String, usize> = BTreeMap::new();
    for (entry, v) in verdicts {
        let section = &checklist.sections[entry.section];
        if sections.last().is_none_or(|s| s.id != section.id) {
            sections.push(SectionReport {
                id: section.id.clone(),
                title: section.title.clone(),
                phase: section.phase.clone(),
                items: Vec::new(),
            });
        }
        *summary.entry(engine::label(v.status).to_owned()).or_default() += 1;
        let probes: Vec<ProbeReport> = v
            .probes
            .iter()
            .filter_map(|id| runs.get(id))
            .map(|r| ProbeReport {
                id: r.id.clone(),
                status: r.finding.status,
                message: r.finding.message.clone(),
                hint: r.finding.hint.clone(),
                cause: report::cause_string(&r.finding.cause),
                comparisons: r.finding.comparisons.iter().map(Into::into).collect(),
                duration_ms: r.elapsed.as_millis() as u64,
            })
            .collect();
        let duration_ms = probes.iter().map(|p| p.duration_ms).max().unwrap_or(0);
        if let Some(s) = sections.last_mut() {
            s.items.push(ItemReport {
                id: entry.item.id.clone(),
                text: entry.item.text.clone(),
                proof: entry.item.proof,
                blocking: entry.item.blocking,
                status: v.status,
                message: v.message.clone(),
                hint: v.hint.clone(),
                cause: report::cause_string(&v.cause),
                probes,
                evidence: v.evidence.clone(),
                attestation: v.attestation.clone(),
                waiver: v.waiver.clone(),
                duration_ms,
            });
        }
    }
    let slowest_probe = runs
        .values()
        .max_by_key(|r| r.elapsed)
        .map(|r| report::SlowestProbe { id: r.id.clone(), ms: r.elapsed.as_millis() as u64 });
    CheckReport {
        checklist: args
            .checklist
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| model::GO_LIVE_NAME.to_owned()),
        namespace: namespace.to_owned(),
        phases: if args.phase.is_empty() { PHASES.iter().map(|p| p.to_string()).collect() } else { args.phase.clone() },
        started,
        wall_ms: 0,
        probes_ms: 0,
        slowest_probe,
        waivers_file: waivers_file.map(|p| p.display().to_string()),
        summary,
        exit_code: code,
        evidence_record: None,
        sections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::Finding;

    fn verdict(status: Status, cause: Option<ErrorCause>) -> Verdict {
        let f = match cause {
            Some(c) => Finding::error(c, "x"),
            None => Finding::pass("x"),
        };
        let mut v = engine::judge_finding_for_test(&f);
        v.status = status;
        v
    }

    #[test]
    fn exit_codes_follow_precedence() {
        let pass = verdict(Status::Pass, None);
        let fail = verdict(Status::Fail, None);
        let unreachable = verdict(Status::Error, Some(ErrorCause::Unreachable));
        let not_configured = verdict(Status::Error, Some(ErrorCause::NotConfigured));
        let needs = verdict(Status::NeedsAttestation, None);
        let warn = verdict(Status::Warn, None);
        assert_eq!(engine::exit_code(&[(true, &pass), (true, &warn)]), 0);
        assert_eq!(engine::exit_code(&[(true, &pass), (true, &unreachable), (true, &fail)]), 1);
        assert_eq!(engine::exit_code(&[(true, &needs), (true, &unreachable)]), 1);
        assert_eq!(engine::exit_code(&[(true, &not_configured), (true, &unreachable)]), 3);
        assert_eq!(engine::exit_code(&[(true, &not_configured)]), 1);
        assert_eq!(engine::exit_code(&[(false, &fail), (false, &unreachable)]), 0);
    }
}
