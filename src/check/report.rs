//! The result of `audctl check`: one document for machines (json/yaml), a table grouped by section
//! for people, and JUnit XML (one testcase per item) for CI systems.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Color};
use serde::Serialize;

use crate::output::{self, Report};
use crate::probes::{Comparison, Status};

use super::attest::Attestation;
use super::engine::{cause_label, label};
use super::waivers::Waiver;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub checklist: String,
    pub namespace: String,
    pub phases: Vec<String>,
    pub started: DateTime<Utc>,
    /// Wall time of the whole run (values, render, probes, records).
    pub wall_ms: u64,
    /// Wall time of the concurrent phase (probes, attestations and evidence read together).
    pub probes_ms: u64,
    /// The slowest probe (id, ms): a full check should take about as long as it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_probe: Option<SlowestProbe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waivers_file: Option<String>,
    /// Count of items per status.
    pub summary: BTreeMap<String, usize>,
    pub exit_code: u8,
    /// The ConfigMap this run's evidence record was written to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_record: Option<String>,
    pub sections: Vec<SectionReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowestProbe {
    pub id: String,
    pub ms: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SectionReport {
    pub id: String,
    pub title: String,
    pub phase: String,
    pub items: Vec<ItemReport>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemReport {
    pub id: String,
    pub text: String,
    pub proof: super::model::Proof,
    pub blocking: bool,
    #[serde(serialize_with = "ser_status")]
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeReport>,
    /// The evidence record the item relied on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiver: Option<Waiver>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub id: String,
    #[serde(serialize_with = "ser_status")]
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<ComparisonReport>,
    pub duration_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct ComparisonReport {
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

impl From<&Comparison> for ComparisonReport {
    fn from(c: &Comparison) -> Self {
        ComparisonReport { name: c.name.clone(), expected: c.expected.clone(), actual: c.actual.clone(), ok: c.ok }
    }
}

fn ser_status<S: serde::Serializer>(s: &Status, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(label(*s))
}

pub fn cause_string(c: &Option<crate::probes::ErrorCause>) -> Option<String> {
    c.as_ref().map(|c| cause_label(c).to_owned())
}

impl CheckReport {
    pub fn items(&self) -> impl Iterator<Item = &ItemReport> {
        self.sections.iter().flat_map(|s| &s.items)
    }

    /// "12 PASS, 1 FAIL, ..." in severity order.
    pub fn summary_line(&self) -> String {
        let order = ["FAIL", "NEEDS-ATTESTATION", "NEEDS-EVIDENCE", "ERROR", "WARN", "WAIVED", "ATTESTED", "PASS"];
        let parts: Vec<String> =
            order.iter().filter_map(|k| self.summary.get(*k).filter(|n| **n > 0).map(|n| format!("{n} {k}"))).collect();
        let slow =
            self.slowest_probe.as_ref().map(|s| format!("; slowest probe {} {} ms", s.id, s.ms)).unwrap_or_default();
        let n = self.items().count();
        // "1 item", and no empty slot (double space) when nothing was counted.
        let counted = if parts.is_empty() { String::new() } else { format!(" {}", parts.join(", ")) };
        format!(
            "{n} item{}:{counted} in {} ms{slow}; exit code {}",
            if n == 1 { "" } else { "s" },
            self.wall_ms,
            self.exit_code
        )
    }
}

fn status_cell(s: Status) -> Cell {
    let cell = Cell::new(label(s));
    if !output::color_enabled() {
        return cell;
    }
    match s {
        Status::Pass | Status::Attested => cell.fg(Color::Green),
        Status::Warn | Status::Waived => cell.fg(Color::Yellow),
        Status::Error => cell.fg(Color::Magenta),
        _ => cell.fg(Color::Red),
    }
}

impl Report for CheckReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["ITEM", "STATUS", "FINDING"]);
        for section in &self.sections {
            t.add_row(vec![
                Cell::new(format!("== {} ({})", section.title, section.phase)),
                Cell::new(""),
                Cell::new(""),
            ]);
            for item in &section.items {
                let mut finding = item.message.clone();
                if let Some(c) = &item.cause {
                    finding = format!("[{c}] {finding}");
                }
                if let Some(h) = &item.hint {
                    finding.push_str("\nhint: ");
                    finding.push_str(h);
                }
                let name = if item.blocking { item.id.clone() } else { format!("{} (non-blocking)", item.id) };
                t.add_row(vec![Cell::new(name), status_cell(item.status), Cell::new(finding)]);
            }
        }
        // Without a terminal (CI logs, pipes) wrap findings at a readable width.
        if t.width().is_none() {
            t.set_width(150);
        }
        t
    }

    fn junit(&self) -> Option<String> {
        Some(self.to_junit())
    }
}

pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 forbids.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// How an item shows in JUnit: FAIL and unproven items are failures, ERROR is an error, WAIVED is
/// skipped; PASS, ATTESTED and WARN pass (a WARN keeps its message in system-out).
enum Outcome {
    Pass,
    Failure,
    Error,
    Skipped,
}

fn outcome(s: Status) -> Outcome {
    match s {
        Status::Pass | Status::Attested | Status::Warn => Outcome::Pass,
        Status::Fail | Status::NeedsAttestation | Status::NeedsEvidence => Outcome::Failure,
        Status::Error => Outcome::Error,
        Status::Waived => Outcome::Skipped,
    }
}

impl CheckReport {
    pub fn to_junit(&self) -> String {
        let count = |items: &[ItemReport], want: fn(&Outcome) -> bool| {
            items.iter().filter(|i| want(&outcome(i.status))).count()
        };
        let all: Vec<&ItemReport> = self.items().collect();
        let total = |want: fn(&Outcome) -> bool| all.iter().filter(|i| want(&outcome(i.status))).count();
        let is_failure = |o: &Outcome| matches!(o, Outcome::Failure);
        let is_error = |o: &Outcome| matches!(o, Outcome::Error);
        let is_skipped = |o: &Outcome| matches!(o, Outcome::Skipped);
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"audctl check\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            all.len(),
            total(is_failure),
            total(is_error),
            total(is_skipped),
            self.wall_ms as f64 / 1000.0
        );
        for section in &self.sections {
            let items = &section.items;
            let time: u64 = items.iter().map(|i| i.duration_ms).max().unwrap_or(0);
            let _ = writeln!(
                x,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\" timestamp=\"{}\">",
                xml_escape(&section.title),
                items.len(),
                count(items, is_failure),
                count(items, is_error),
                count(items, is_skipped),
                time as f64 / 1000.0,
                self.started.format("%Y-%m-%dT%H:%M:%S")
            );
            for item in items {
                let _ = write!(
                    x,
                    "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                    xml_escape(&format!("audctl.check.{}", section.id)),
                    xml_escape(&format!("{}: {}", item.id, item.text)),
                    item.duration_ms as f64 / 1000.0
                );
                let mut body = item.message.clone();
                if let Some(h) = &item.hint {
                    body.push_str("\nhint: ");
                    body.push_str(h);
                }
                let msg = xml_escape(&format!("{}: {}", label(item.status), item.message));
                match outcome(item.status) {
                    Outcome::Pass if item.status == Status::Warn => {
                        let _ = writeln!(
                            x,
                            ">\n      <system-out>{}</system-out>\n    </testcase>",
                            xml_escape(&format!("WARN: {body}"))
                        );
                    }
                    Outcome::Pass => x.push_str("/>\n"),
                    Outcome::Failure => {
                        let _ = writeln!(
                            x,
                            ">\n      <failure message=\"{msg}\" type=\"{}\">{}</failure>\n    </testcase>",
                            label(item.status),
                            xml_escape(&body)
                        );
                    }
                    Outcome::Error => {
                        let _ = writeln!(
                            x,
                            ">\n      <error message=\"{msg}\" type=\"{}\">{}</error>\n    </testcase>",
                            item.cause.as_deref().unwrap_or("error"),
                            xml_escape(&body)
                        );
                    }
                    Outcome::Skipped => {
                        let _ = writeln!(x, ">\n      <skipped message=\"{msg}\"/>\n    </testcase>");
                    }
                }
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_has_no_empty_slot() {
        let report = CheckReport {
            checklist: "c.yaml".into(),
            namespace: "audit-trail".into(),
            phases: Vec::new(),
            started: Utc::now(),
            wall_ms: 31,
            probes_ms: 0,
            slowest_probe: None,
            waivers_file: None,
            summary: BTreeMap::new(),
            exit_code: 0,
            evidence_record: None,
            sections: Vec::new(),
        };
        assert_eq!(report.summary_line(), "0 items: in 31 ms; exit code 0");
    }
}
