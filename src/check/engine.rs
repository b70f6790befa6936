//! Runs probes concurrently, each under its own timeout and all under one deadline, then turns probe
//! findings, attestations, evidence records and waivers into one status per checklist item.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};

use crate::evidence::Stored;
use crate::probes::{Context, ErrorCause, Finding, Probe, Status};

use super::attest::Attestation;
use super::model::{self, Entry, Proof};
use super::waivers::Waiver;

/// One probe's outcome.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    pub id: String,
    pub finding: Finding,
    pub elapsed: Duration,
}

/// Run `probes` concurrently. Each gets its own timeout, cut short by `deadline`; `done` is called as
/// each one finishes (progress display).
pub async fn run_probes(
    probes: &[&dyn Probe],
    ctx: &Context,
    deadline: Instant,
    mut done: impl FnMut(&ProbeRun),
) -> Vec<ProbeRun> {
    let mut running: FuturesUnordered<_> = probes
        .iter()
        .map(|probe| async move {
            let started = Instant::now();
            let own = probe.timeout();
            let left = deadline.saturating_duration_since(started);
            let budget = own.min(left);
            let finding = match tokio::time::timeout(budget, probe.run(ctx)).await {
                Ok(finding) => finding,
                Err(_) if left < own => Finding::error(
                    ErrorCause::Timeout,
                    format!(
                        "not finished when the overall --timeout deadline was reached ({:.1}s in)",
                        budget.as_secs_f64()
                    ),
                )
                .hint("raise --timeout, or look at why the target answers slowly"),
                Err(_) => {
                    Finding::error(ErrorCause::Timeout, format!("no answer within the probe's {} timeout", secs(own)))
                        .hint("the target is slow or hangs; check its health and the network path")
                }
            };
            ProbeRun { id: probe.id().to_owned(), finding, elapsed: started.elapsed() }
        })
        .collect();
    let mut out = Vec::with_capacity(probes.len());
    while let Some(run) = running.next().await {
        done(&run);
        out.push(run);
    }
    out
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

/// How bad a status is, to combine several into one (worst wins).
pub fn severity(s: Status) -> u8 {
    match s {
        Status::Pass | Status::Attested => 0,
        Status::Waived => 1,
        Status::Warn => 2,
        Status::Error => 3,
        Status::NeedsEvidence => 4,
        Status::NeedsAttestation => 5,
        Status::Fail => 6,
    }
}

pub fn label(s: Status) -> &'static str {
    s.label()
}

pub fn cause_label(c: &ErrorCause) -> &'static str {
    match c {
        ErrorCause::Unreachable => "unreachable",
        ErrorCause::Forbidden => "forbidden",
        ErrorCause::Timeout => "timeout",
        ErrorCause::NotConfigured => "not-configured",
        ErrorCause::Other => "other",
    }
}

/// Everything the items are judged on.
pub struct Inputs<'a> {
    pub probe_ids: &'a [&'a str],
    /// Where attestations and evidence were read: the hints name it when it is not `-n`'s default.
    pub namespace: &'a str,
    pub runs: &'a BTreeMap<String, ProbeRun>,
    /// Attestations by item, or why they could not be read.
    pub attestations: &'a Result<BTreeMap<String, Attestation>, Finding>,
    /// Evidence records by verb (newest first), or why they could not be read.
    pub evidence: &'a Result<BTreeMap<String, Vec<Stored>>, Finding>,
    pub waivers: &'a [Waiver],
    pub evidence_max_age: Option<Duration>,
    pub now: DateTime<Utc>,
}

/// The verdict on one item.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub status: Status,
    pub message: String,
    pub hint: Option<String>,
    pub cause: Option<ErrorCause>,
    /// Probe ids behind the verdict.
    pub probes: Vec<String>,
    pub evidence: Option<String>,
    pub attestation: Option<Attestation>,
    pub waiver: Option<Waiver>,
}

impl Verdict {
    fn new(status: Status, message: impl Into<String>) -> Self {
        Verdict {
            status,
            message: message.into(),
            hint: None,
            cause: None,
            probes: Vec::new(),
            evidence: None,
            attestation: None,
            waiver: None,
        }
    }

    fn from_finding(f: &Finding) -> Self {
        let mut v = Verdict::new(f.status, f.message.clone());
        v.hint = f.hint.clone();
        v.cause = f.cause;
        v
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The probe ids an item needs (patterns expanded).
pub fn probes_of(entry: &Entry, probe_ids: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in entry.item.probes.iter().filter(|p| !p.starts_with('!')) {
        for id in model::expand(p, probe_ids) {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_owned());
            }
        }
    }
    out.retain(|id| !entry.item.probes.iter().any(|p| p.strip_prefix('!') == Some(id.as_str())));
    out
}

pub fn judge(entry: &Entry, inputs: &Inputs) -> Verdict {
    let item = &entry.item;
    let mut verdict = match item.proof {
        Proof::Probe => judge_probes(entry, inputs),
        Proof::Attest => judge_attest(entry, inputs),
        Proof::Evidence => judge_evidence(entry, inputs),
    };
    // A valid waiver turns anything short of a pass into WAIVED; an expired one counts as absent.
    if severity(verdict.status) > severity(Status::Waived) {
        if let Some(w) = inputs.waivers.iter().find(|w| w.item == item.id && !w.expired(inputs.now)) {
            verdict.message = format!(
                "waived by {}, {} ({}): {} [was {}: {}]",
                w.owner,
                super::waivers::validity(w.expires),
                w.source,
                w.reason,
                label(verdict.status),
                verdict.message
            );
            verdict.status = Status::Waived;
            verdict.hint = None;
            verdict.cause = None;
            verdict.waiver = Some(w.clone());
        } else if let Some(w) = inputs.waivers.iter().find(|w| w.item == item.id) {
            verdict.message = format!(
                "{} (the waiver by {}, {}, has expired)",
                verdict.message,
                w.owner,
                super::waivers::validity(w.expires)
            );
        }
    }
    verdict
}

fn judge_probes(entry: &Entry, inputs: &Inputs) -> Verdict {
    let ids = probes_of(entry, inputs.probe_ids);
    if ids.is_empty() {
        let mut v = Verdict::new(
            Status::Error,
            format!("no probe in this build matches {} (they come with a later audctl)", entry.item.probes.join(", ")),
        )
        .hint(format!("skip the item with --skip {} or waive it until its probes exist", entry.item.id));
        v.cause = Some(ErrorCause::NotConfigured);
        return v;
    }
    combine(&ids, inputs)
}

/// ` -n NS` for a hint's command when the check's namespace is not the one the command would use.
fn ns_flag(inputs: &Inputs) -> String {
    if inputs.namespace == crate::cli::DEFAULT_NAMESPACE { String::new() } else { format!(" -n {}", inputs.namespace) }
}

/// Worst status of the probes; the message lists every probe when there are several.
fn combine(ids: &[String], inputs: &Inputs) -> Verdict {
    let runs: Vec<&ProbeRun> = ids.iter().filter_map(|id| inputs.runs.get(id)).collect();
    let Some(worst) = runs.iter().max_by_key(|r| severity(r.finding.status)) else {
        let mut v = Verdict::new(Status::Error, "probes did not run");
        v.cause = Some(ErrorCause::Other);
        return v;
    };
    let mut v = Verdict::from_finding(&worst.finding);
    if runs.len() > 1 {
        let mut parts: Vec<&&ProbeRun> = runs.iter().collect();
        parts.sort_by_key(|r| std::cmp::Reverse(severity(r.finding.status)));
        v.message = parts
            .iter()
            .map(|r| format!("{} {}: {}", r.id, label(r.finding.status), r.finding.message))
            .collect::<Vec<_>>()
            .join("; ");
    }
    v.probes = ids.to_vec();
    v
}

fn judge_attest(entry: &Entry, inputs: &Inputs) -> Verdict {
    let id = &entry.item.id;
    let attest_hint =
        format!("audctl attest {id}{} --by NAME [--note TEXT] [--link URL] [--expires DATE]", ns_flag(inputs));
    let probes = probes_of(entry, inputs.probe_ids);
    let probed = (!probes.is_empty()).then(|| combine(&probes, inputs));
    if let Some(v) = probed.as_ref().filter(|v| v.status == Status::Pass) {
        return v.clone();
    }
    let found = match inputs.attestations {
        Ok(all) => all.get(id),
        Err(why) => {
            let mut v = Verdict::from_finding(why);
            v.message = format!("cannot read attestations: {}", why.message);
            return v;
        }
    };
    let probe_note = probed.as_ref().map(|v| format!(" (probes: {})", v.message)).unwrap_or_default();
    match found {
        Some(a) if !a.expired(inputs.now) => {
            let mut v = Verdict::new(Status::Attested, a.describe());
            v.attestation = Some(a.clone());
            v
        }
        Some(a) => {
            let mut v = Verdict::new(
                Status::NeedsAttestation,
                format!(
                    "the attestation by {} ({}) has expired{probe_note}",
                    a.by,
                    a.expires.map(super::waivers::validity).unwrap_or_default()
                ),
            )
            .hint(attest_hint);
            v.attestation = Some(a.clone());
            v
        }
        None => Verdict::new(Status::NeedsAttestation, format!("not attested yet{probe_note}")).hint(attest_hint),
    }
}

fn judge_evidence(entry: &Entry, inputs: &Inputs) -> Verdict {
    let Some(spec) = &entry.item.evidence else {
        return Verdict::new(Status::Error, "evidence item without an evidence block");
    };
    let limit = inputs
        .evidence_max_age
        .or_else(|| model::parse_duration(&spec.max_age).ok())
        .unwrap_or(Duration::from_secs(7 * 86_400));
    let records = match inputs.evidence {
        Ok(by_verb) => by_verb.get(&spec.verb).map(Vec::as_slice).unwrap_or_default(),
        Err(why) => {
            let mut v = Verdict::from_finding(why);
            v.message = format!("cannot read evidence records: {}", why.message);
            return v;
        }
    };
    let subject_ok =
        |s: &Stored| spec.subject.as_ref().is_none_or(|want| s.evidence.subject.as_deref() == Some(want.as_str()));
    let what = match &spec.subject {
        Some(s) => format!("`{}` record for {s}", spec.verb),
        None => format!("`{}` record", spec.verb),
    };
    // A command naming values files writes into their namespace.name (deploy, smoke); the others
    // write into -n, which must then be this check's namespace.
    let command = if spec.command.split_whitespace().any(|w| w == "-f" || w == "--values") {
        spec.command.clone()
    } else {
        format!("{}{}", spec.command, ns_flag(inputs))
    };
    let hint = format!("run `{command}` (this check reads evidence records in namespace {})", inputs.namespace);
    let relevant: Vec<&Stored> = records.iter().filter(|s| subject_ok(s)).collect();
    let success = relevant.iter().find(|s| matches!(s.evidence.outcome, crate::evidence::Outcome::Success));
    let latest_failure = relevant
        .first()
        .filter(|s| !matches!(s.evidence.outcome, crate::evidence::Outcome::Success))
        .map(|s| format!("; the latest {what} ({}) is not a success: {}", s.name, s.evidence.summary))
        .unwrap_or_default();
    match success {
        Some(s) => {
            let age = (inputs.now - s.evidence.finished).to_std().unwrap_or_default();
            if age <= limit {
                let mut v = Verdict::new(
                    Status::Pass,
                    format!(
                        "{what} {} from {} ago: {}{latest_failure}",
                        s.name,
                        model::format_duration(age),
                        s.evidence.summary
                    ),
                );
                v.evidence = Some(s.name.clone());
                v
            } else {
                let mut v = Verdict::new(
                    Status::NeedsEvidence,
                    format!(
                        "the newest successful {what} ({}) is {} old, over the {} limit{latest_failure}",
                        s.name,
                        model::format_duration(age),
                        model::format_duration(limit)
                    ),
                )
                .hint(hint);
                v.evidence = Some(s.name.clone());
                v
            }
        }
        None => Verdict::new(
            Status::NeedsEvidence,
            format!("no successful {what} in the last {}{latest_failure}", model::format_duration(limit)),
        )
        .hint(hint),
    }
}

/// The exit code of a run: 1 when a blocking item failed or is unproven (needs attestation or
/// evidence), else 3 when a blocking item could not be evaluated because something was unreachable
/// (or timed out), else 1 when a blocking item could not be evaluated for another reason (forbidden,
/// not configured: a gate must not pass what it could not see), else 0.
pub fn exit_code(verdicts: &[(bool, &Verdict)]) -> u8 {
    let blocking = || verdicts.iter().filter(|(b, _)| *b).map(|(_, v)| *v);
    if blocking().any(|v| matches!(v.status, Status::Fail | Status::NeedsAttestation | Status::NeedsEvidence)) {
        return crate::error::EXIT_FAILED;
    }
    let errors: Vec<&Verdict> = blocking().filter(|v| v.status == Status::Error).collect();
    if errors.iter().any(|v| matches!(v.cause, Some(ErrorCause::Unreachable | ErrorCause::Timeout))) {
        return crate::error::EXIT_UNREACHABLE;
    }
    if !errors.is_empty() {
        return crate::error::EXIT_FAILED;
    }
    crate::error::EXIT_OK
}

#[cfg(test)]
pub fn judge_finding_for_test(f: &Finding) -> Verdict {
    Verdict::from_finding(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::{ProbeFuture, Target};

    /// A probe that answers after `delay` with a pass.
    struct Slow {
        id: &'static str,
        delay: Duration,
        timeout: Duration,
    }

    impl Probe for Slow {
        fn id(&self) -> &'static str {
            self.id
        }
        fn target(&self) -> Target {
            Target::Manifests
        }
        fn describe(&self) -> &'static str {
            "test probe"
        }
        fn timeout(&self) -> Duration {
            self.timeout
        }
        fn run<'a>(&'a self, _ctx: &'a Context) -> ProbeFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                Finding::pass("answered")
            })
        }
    }

    fn context() -> Context {
        let values = crate::values::load(&[], &[]).expect("defaults");
        Context {
            namespace: "t".into(),
            kube: None,
            kube_url: None,
            targets: Default::default(),
            values,
            objects: Vec::new(),
            conns: Default::default(),
            now: Utc::now(),
        }
    }

    /// The waiver's and the attestation's dates read as written (`expires: 2099-01-01` holds through
    /// that day), not as the next midnight they are stored as.
    #[test]
    fn expiries_are_shown_as_written() {
        use super::super::waivers::{parse_expiry, valid_through};
        let entry = |id: &str| Entry {
            section: 0,
            item: model::Item {
                id: id.into(),
                text: "t".into(),
                proof: Proof::Attest,
                probes: Vec::new(),
                evidence: None,
                blocking: true,
            },
        };
        let waiver = |expires: &str| {
            let e = parse_expiry(expires).expect("expiry");
            Waiver {
                item: "runbooks".into(),
                reason: "INC-42".into(),
                owner: "alice".into(),
                expires: e,
                valid_through: valid_through(e),
                source: "w.yaml:2".into(),
            }
        };
        let now = parse_expiry("2030-01-01T12:00:00Z").expect("now");
        let judge_with = |waivers: &[Waiver], attestations: BTreeMap<String, Attestation>| {
            let runs = BTreeMap::new();
            let attestations = Ok(attestations);
            let evidence = Ok(BTreeMap::new());
            let inputs = Inputs {
                probe_ids: &[],
                namespace: "audit-trail",
                runs: &runs,
                attestations: &attestations,
                evidence: &evidence,
                waivers,
                evidence_max_age: None,
                now,
            };
            judge(&entry("runbooks"), &inputs).message
        };
        let m = judge_with(&[waiver("2099-01-01")], BTreeMap::new());
        assert!(m.starts_with("waived by alice, valid through 2099-01-01 (w.yaml:2): INC-42"), "{m}");
        let m = judge_with(&[waiver("2029-12-31")], BTreeMap::new());
        assert!(m.ends_with("(the waiver by alice, valid through 2029-12-31, has expired)"), "{m}");
        let expires = parse_expiry("2029-06-30").ok();
        let a = Attestation {
            item: "runbooks".into(),
            by: "bob".into(),
            note: None,
            link: None,
            at: parse_expiry("2029-01-01T00:00:00Z").expect("at"),
            expires,
            valid_through: expires.and_then(valid_through),
            name: "audctl-attest-runbooks".into(),
        };
        let m = judge_with(&[], BTreeMap::from([("runbooks".to_owned(), a)]));
        assert_eq!(m, "the attestation by bob (valid through 2029-06-30) has expired");
    }

    #[tokio::test]
    async fn own_timeout_and_overall_deadline_are_errors_with_their_cause() {
        let ctx = context();
        let fast = Slow { id: "t.fast", delay: Duration::from_millis(10), timeout: Duration::from_secs(5) };
        let hangs = Slow { id: "t.hangs", delay: Duration::from_secs(3600), timeout: Duration::from_millis(200) };
        let long = Slow { id: "t.long", delay: Duration::from_secs(3600), timeout: Duration::from_secs(600) };
        let probes: Vec<&dyn Probe> = vec![&fast, &hangs, &long];
        let mut seen = Vec::new();
        let runs =
            run_probes(&probes, &ctx, Instant::now() + Duration::from_millis(600), |r| seen.push(r.id.clone())).await;
        let by_id: BTreeMap<&str, &ProbeRun> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(by_id["t.fast"].finding.status, Status::Pass);
        let own = &by_id["t.hangs"].finding;
        assert_eq!((own.status, own.cause), (Status::Error, Some(ErrorCause::Timeout)));
        assert!(own.message.contains("probe's 0.2s timeout"), "{}", own.message);
        let overall = &by_id["t.long"].finding;
        assert_eq!((overall.status, overall.cause), (Status::Error, Some(ErrorCause::Timeout)));
        assert!(overall.message.contains("--timeout deadline"), "{}", overall.message);
        // Reported as they finish, fastest first.
        assert_eq!(seen, ["t.fast", "t.hangs", "t.long"]);
    }
}
