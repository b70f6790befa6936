//! The checklist as data (checklists/go-live.yaml): sections of items, each proven by probes, by an
//! attestation or by an evidence record. Loading validates everything up front and names the line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::values::source::Positions;

/// The shipped checklist, embedded so the binary works anywhere (`--checklist FILE` replaces it).
pub const GO_LIVE: &str = include_str!("../../checklists/go-live.yaml");
pub const GO_LIVE_NAME: &str = "checklists/go-live.yaml";

/// Phases in go-live order.
pub const PHASES: [&str; 5] = ["preprod", "j-7", "j-1", "d-day", "j+1"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checklist {
    pub version: u32,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Section {
    pub id: String,
    pub title: String,
    /// One of [`PHASES`]: when the section's items must hold.
    pub phase: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proof {
    /// Live probes (ids of the probe registry, or `target.*` for every probe of a target).
    Probe,
    /// A person signs it off with `audctl attest`; probes listed are tried first.
    Attest,
    /// A successful evidence record of a verb, young enough.
    Evidence,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Item {
    pub id: String,
    pub text: String,
    pub proof: Proof,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceSpec>,
    /// A blocking item that fails or is unproven makes `check` exit non-zero (default true).
    #[serde(default = "yes")]
    pub blocking: bool,
}

fn yes() -> bool {
    true
}

/// Which evidence record proves an item.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvidenceSpec {
    /// The verb that writes the record (deploy, smoke, load, backup, restore, rollback).
    pub verb: String,
    /// The record's subject (audctl.io/subject), e.g. the environment; any subject when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Oldest acceptable record, e.g. `7d`, `12h` (`--evidence-max-age` overrides).
    pub max_age: String,
    /// The command that produces the record, shown when it is missing.
    pub command: String,
}

/// An item with its section, as the engine sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub section: usize,
    pub item: Item,
}

impl Checklist {
    pub fn entries(&self) -> Vec<Entry> {
        self.sections
            .iter()
            .enumerate()
            .flat_map(|(s, sec)| sec.items.iter().map(move |i| Entry { section: s, item: i.clone() }))
            .collect()
    }

    pub fn item(&self, id: &str) -> Option<&Item> {
        self.sections.iter().flat_map(|s| &s.items).find(|i| i.id == id)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.sections.iter().flat_map(|s| &s.items).map(|i| i.id.as_str()).collect()
    }
}

/// Read and validate a checklist file, or the embedded one when `path` is None.
pub fn load(path: Option<&Path>, probe_ids: &[&str]) -> anyhow::Result<Checklist> {
    let (name, text) = match path {
        Some(p) => (
            p.to_owned(),
            std::fs::read_to_string(p).map_err(|e| usage(format!("cannot read checklist {}: {e}", p.display())))?,
        ),
        None => (PathBuf::from(GO_LIVE_NAME), GO_LIVE.to_owned()),
    };
    parse(&name, &text, probe_ids).map_err(|errors| {
        usage(format!("invalid checklist {} ({} error(s)):\n  {}", name.display(), errors.len(), errors.join("\n  ")))
    })
}

/// Parse and validate; every problem is reported, each with `file:line`.
pub fn parse(name: &Path, text: &str, probe_ids: &[&str]) -> Result<Checklist, Vec<String>> {
    let checklist: Checklist = match serde_yaml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            let at =
                e.location().map(|l| format!("{}:{}", name.display(), l.line())).unwrap_or(name.display().to_string());
            return Err(vec![format!("{at}: {e}")]);
        }
    };
    let positions = Positions::of_file(name, text).map_err(|(at, msg)| vec![format!("{at}: {msg}")])?;
    // The value's own line, else its nearest ancestor's (an item's line for one of its fields).
    let at = |path: &str| -> String {
        let mut candidate = Some(path);
        while let Some(p) = candidate {
            if let Some(found) = positions.value(p) {
                return found.to_string();
            }
            candidate = crate::values::source::parent(p);
        }
        name.display().to_string()
    };
    let mut errors = Vec::new();
    if checklist.version != 1 {
        errors.push(format!("{}: version {} is not supported (expected 1)", at("version"), checklist.version));
    }
    let mut ids = BTreeSet::new();
    let mut section_ids = BTreeSet::new();
    for (s, section) in checklist.sections.iter().enumerate() {
        let spath = format!("sections[{s}]");
        if !section_ids.insert(section.id.as_str()) {
            errors.push(format!("{}: duplicate section id {:?}", at(&format!("{spath}.id")), section.id));
        }
        if !PHASES.contains(&section.phase.as_str()) {
            errors.push(format!(
                "{}: section {:?}: unknown phase {:?} (expected one of {})",
                at(&format!("{spath}.phase")),
                section.id,
                section.phase,
                PHASES.join(", ")
            ));
        }
        for (i, item) in section.items.iter().enumerate() {
            let ipath = format!("{spath}.items[{i}]");
            let here = at(&ipath);
            let what = format!("{here}: item {:?}", item.id);
            if item.id.trim().is_empty() {
                errors.push(format!("{here}: item without an id"));
            } else if !ids.insert(item.id.as_str()) {
                errors.push(format!("{what}: duplicate item id"));
            } else if let Err(e) = check_item_id(&item.id) {
                errors.push(format!("{}: item {:?}: {e}", at(&format!("{ipath}.id")), item.id));
            }
            if item.text.trim().is_empty() {
                errors.push(format!("{what}: missing text"));
            }
            match item.proof {
                Proof::Probe if item.probes.is_empty() => {
                    errors.push(format!("{what}: proof is probe but no probes are named"))
                }
                Proof::Evidence if item.evidence.is_none() => {
                    errors.push(format!("{what}: proof is evidence but there is no evidence: block"))
                }
                _ => {}
            }
            if item.proof != Proof::Evidence && item.evidence.is_some() {
                errors.push(format!("{what}: an evidence: block needs proof: evidence"));
            }
            if let Some(ev) = &item.evidence {
                let at_key = |key: &str| at(&format!("{ipath}.evidence.{key}"));
                match parse_duration(&ev.max_age) {
                    Err(e) => errors.push(format!("{}: item {:?}: evidence.maxAge: {e}", at_key("maxAge"), item.id)),
                    // No record is ever younger than zero: the item could never pass.
                    Ok(d) if d.is_zero() => errors.push(format!(
                        "{}: item {:?}: evidence.maxAge must be more than 0 (e.g. 1d, 12h)",
                        at_key("maxAge"),
                        item.id
                    )),
                    Ok(_) => {}
                }
                // A verb that writes no record (a typo) would leave the item NEEDS-EVIDENCE forever.
                if !crate::evidence::VERBS.contains(&ev.verb.as_str()) {
                    let near = crate::evidence::VERBS
                        .iter()
                        .min_by_key(|v| strsim::levenshtein(v, &ev.verb))
                        .filter(|v| strsim::levenshtein(v, &ev.verb) <= 3)
                        .map(|v| format!("did you mean {v:?}? "))
                        .unwrap_or_default();
                    errors.push(format!(
                        "{}: item {:?}: evidence.verb {:?} writes no evidence record ({near}expected one of {})",
                        at_key("verb"),
                        item.id,
                        ev.verb,
                        crate::evidence::VERBS.join(", ")
                    ));
                }
            }
            let mut refs_ok = true;
            for (k, probe) in item.probes.iter().enumerate() {
                if let Err(e) = check_probe_ref(probe, probe_ids) {
                    errors.push(format!("{}: item {:?}: {e}", at(&format!("{ipath}.probes[{k}]")), item.id));
                    refs_ok = false;
                }
            }
            if refs_ok && !item.probes.is_empty() {
                errors.extend(check_selection(&item.probes, probe_ids).into_iter().map(|e| format!("{what}: {e}")));
            }
        }
    }
    if errors.is_empty() { Ok(checklist) } else { Err(errors) }
}

/// Targets a `target.*` pattern may name.
pub const PROBE_TARGETS: [&str; 8] =
    ["cluster", "manifests", "postgres", "search", "redis", "kafka", "service", "evidence"];

fn check_probe_ref(probe: &str, probe_ids: &[&str]) -> Result<(), String> {
    // `!id` takes a probe out of a `target.*` pattern; the probe may not exist in this build.
    if let Some(excluded) = probe.strip_prefix('!') {
        let target = excluded.split_once('.').map(|(t, _)| t).unwrap_or_default();
        return if PROBE_TARGETS.contains(&target) {
            Ok(())
        } else {
            Err(format!(
                "{probe:?}: an exclusion names a probe id `target.name` (targets: {})",
                PROBE_TARGETS.join(", ")
            ))
        };
    }
    if let Some(target) = probe.strip_suffix(".*") {
        return if PROBE_TARGETS.contains(&target) {
            Ok(())
        } else {
            Err(format!("unknown probe target {target:?} in {probe:?} (expected one of {})", PROBE_TARGETS.join(", ")))
        };
    }
    if probe_ids.contains(&probe) {
        return Ok(());
    }
    let near = probe_ids
        .iter()
        .min_by_key(|id| strsim::levenshtein(id, probe))
        .filter(|id| strsim::levenshtein(id, probe) <= 3);
    Err(match near {
        Some(id) => format!("unknown probe {probe:?} (did you mean {id:?}?)"),
        None => format!("unknown probe {probe:?} (`audctl check --list-probes` lists them)"),
    })
}

/// An item id names a ConfigMap (`audctl-attest-<id>`, a DNS-1123 subdomain) and is the value of the
/// `audctl.io/item` label (at most 63 characters): lowercase letters, digits, `-` and `.`, starting
/// and ending with a letter or digit.
fn check_item_id(id: &str) -> Result<(), String> {
    let allowed = id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends = id.starts_with(|c: char| c.is_ascii_alphanumeric()) && id.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !allowed || !ends {
        return Err("an id is lowercase letters, digits, '-' and '.', starting and ending with a letter or digit \
                    (it names the ConfigMap audctl-attest-<id> and is a label value)"
            .into());
    }
    if id.len() > 63 {
        return Err(format!("an id is at most 63 characters (a label value), this one has {}", id.len()));
    }
    Ok(())
}

/// Every probe reference of an item must select something in this build, after the exclusions:
/// a pattern with no registered probe, an exclusion that takes nothing out (a typo would leave the
/// probe in) or exclusions that leave nothing would only show up as an ERROR at run time.
fn check_selection(refs: &[String], probe_ids: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    let (excluded, included): (Vec<&str>, Vec<&str>) =
        refs.iter().map(String::as_str).partition(|p| p.starts_with('!'));
    if included.is_empty() {
        return vec!["only exclusions (`!id`): name the probes to run too, e.g. `target.*`".into()];
    }
    let mut selected: Vec<&str> = Vec::new();
    for p in &included {
        let ids = expand(p, probe_ids);
        if ids.is_empty() {
            errors.push(format!("{p:?} matches no probe of this build (`audctl check --list-probes` lists them)"));
        }
        selected.extend(ids);
    }
    for p in &excluded {
        let id = &p[1..];
        if !selected.contains(&id) {
            errors.push(format!("{p:?} takes out a probe the item does not select (the item selects: {})", {
                let mut s = selected.clone();
                s.dedup();
                if s.is_empty() { "none".to_owned() } else { s.join(", ") }
            }));
        }
    }
    if errors.is_empty() && selected.iter().all(|id| excluded.iter().any(|p| &p[1..] == *id)) {
        errors.push(format!("the exclusions take out every probe the item selects ({})", refs.join(", ")));
    }
    errors
}

/// The probe ids a reference stands for: itself, or every registered id of a `target.*` pattern.
pub fn expand<'a>(probe: &str, probe_ids: &[&'a str]) -> Vec<&'a str> {
    match probe.strip_suffix(".*") {
        Some(target) => probe_ids
            .iter()
            .copied()
            .filter(|id| id.strip_prefix(target).is_some_and(|rest| rest.starts_with('.')))
            .collect(),
        None => probe_ids.iter().copied().filter(|id| *id == probe).collect(),
    }
}

/// `30d`, `12h`, `90m`, `45s`, `2w`, or a combination like `1d12h`; a unit is required.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text)
}

pub fn format_duration(d: Duration) -> String {
    crate::duration::format(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &[&str] = &["cluster.ha", "manifests.probes"];

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("c.yaml"), text, IDS).unwrap_err()
    }

    #[test]
    fn shipped_checklist_is_valid_and_has_the_guide_lines() {
        let ids = crate::probes::registry().ids();
        let c = parse(Path::new(GO_LIVE_NAME), GO_LIVE, &ids).unwrap_or_else(|e| panic!("{}", e.join("\n")));
        assert!(c.entries().len() >= 36, "{} items", c.entries().len());
        for phase in PHASES {
            assert!(c.sections.iter().any(|s| s.phase == phase), "no section for phase {phase}");
        }
    }

    #[test]
    fn unknown_probe_duplicate_and_missing_text_name_the_line() {
        let text = "version: 1\nsections:\n  - id: s\n    title: S\n    phase: preprod\n    items:\n      - {id: a, text: A, proof: probe, probes: [cluster.hx]}\n      - {id: a, text: \"\", proof: probe, probes: [manifests.probes]}\n";
        let e = errors(text);
        assert!(
            e.iter().any(|m| m.starts_with("c.yaml:7:")
                && m.contains("unknown probe \"cluster.hx\"")
                && m.contains("cluster.ha")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.starts_with("c.yaml:8:") && m.contains("duplicate item id")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("c.yaml:8:") && m.contains("missing text")), "{e:?}");
    }

    #[test]
    fn structural_errors_name_the_line() {
        let text = "version: 1\nsections:\n  - id: s\n    title: S\n    phase: preprod\n    items:\n      - {id: a, text: A, proof: maybe}\n";
        let e = errors(text);
        assert!(e[0].starts_with("c.yaml:7") && e[0].contains("maybe"), "{e:?}");
        let text = "version: 1\nsections:\n  - id: s\n    title: S\n    phase: later\n    items: []\n";
        assert!(errors(text)[0].starts_with("c.yaml:5:"), "{:?}", errors(text));
    }

    #[test]
    fn patterns_expand_to_registered_ids_of_their_target() {
        let ids = ["postgres.replication", "postgres.tuning", "postgresx.y", "redis.sentinel"];
        assert_eq!(expand("postgres.*", &ids), vec!["postgres.replication", "postgres.tuning"]);
        assert!(expand("kafka.*", &ids).is_empty());
        assert!(check_probe_ref("nosuch.*", &ids).is_err());
    }

    #[test]
    fn exclusions_take_probes_out_of_patterns() {
        assert!(check_probe_ref("!service.write", &["service.health"]).is_ok());
        assert!(check_probe_ref("!nosuch.write", &["service.health"]).is_err());
    }

    /// One section around `items` (each a flow mapping on its own line, from line 7).
    fn with_items(items: &[&str]) -> String {
        let mut text = "version: 1\nsections:\n  - id: s\n    title: S\n    phase: preprod\n    items:\n".to_owned();
        for i in items {
            text.push_str(&format!("      - {i}\n"));
        }
        text
    }

    fn one_error(item: &str) -> String {
        let e = errors(&with_items(&[item]));
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    }

    /// What used to pass validation and only fail at run time (or never pass) is refused at load.
    #[test]
    fn run_time_failures_are_load_errors_naming_the_line() {
        let e = one_error("{id: d, text: D, proof: evidence, evidence: {verb: deplyo, maxAge: 1d, command: x}}");
        assert!(
            e.starts_with("c.yaml:7:")
                && e.contains("evidence.verb \"deplyo\"")
                && e.contains("did you mean \"deploy\""),
            "{e}"
        );
        let e = one_error("{id: d, text: D, proof: evidence, evidence: {verb: load, maxAge: 0s, command: x}}");
        assert!(e.starts_with("c.yaml:7:") && e.contains("evidence.maxAge must be more than 0"), "{e}");
        let e = one_error("{id: p, text: P, proof: probe, probes: [\"!cluster.ha\"]}");
        assert!(e.starts_with("c.yaml:7:") && e.contains("only exclusions"), "{e}");
        let e = one_error("{id: p, text: P, proof: probe, probes: [\"cluster.*\", \"!cluster.ha\"]}");
        assert!(e.contains("the exclusions take out every probe the item selects"), "{e}");
        let e = one_error("{id: p, text: P, proof: probe, probes: [\"manifests.*\", \"!manifests.probs\"]}");
        assert!(e.contains("\"!manifests.probs\" takes out a probe the item does not select"), "{e}");
        let e = one_error("{id: p, text: P, proof: probe, probes: [\"kafka.*\"]}");
        assert!(e.starts_with("c.yaml:7:") && e.contains("\"kafka.*\" matches no probe of this build"), "{e}");
        let e = one_error("{id: A b, text: P, proof: attest}");
        assert!(e.starts_with("c.yaml:7:") && e.contains("item \"A b\": an id is lowercase"), "{e}");
        let long = format!("{{id: {}, text: P, proof: attest}}", "a".repeat(64));
        assert!(one_error(&long).contains("at most 63 characters"));
        // What they must stay: valid.
        let ok = with_items(&[
            "{id: a-1.b, text: A, proof: probe, probes: [\"cluster.*\", \"manifests.probes\"]}",
            "{id: b, text: B, proof: probe, probes: [\"manifests.*\", \"!manifests.probes\", cluster.ha]}",
            "{id: c, text: C, proof: evidence, evidence: {verb: smoke, maxAge: 1s, command: x}}",
        ]);
        parse(Path::new("c.yaml"), &ok, IDS).unwrap_or_else(|e| panic!("{e:?}"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration("1d12h").unwrap(), Duration::from_secs(36 * 3600));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("7y").is_err());
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "1d12h");
    }
}
