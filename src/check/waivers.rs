//! Waivers: a checked-in file of items the team accepts as not done, each with a reason, an owner and
//! an expiry. An expired waiver counts as absent, so the item fails again on its own.

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::error::usage;
use crate::values::source::Positions;

/// Used when `--waivers` is not given and this file exists (relative to the working directory).
pub const DEFAULT_PATH: &str = "checklists/waivers.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    waivers: Vec<Raw>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    item: String,
    reason: String,
    owner: String,
    /// A date (YYYY-MM-DD, valid through that day, UTC) or an RFC 3339 time.
    expires: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiver {
    pub item: String,
    pub reason: String,
    pub owner: String,
    /// The first instant it no longer holds (a date's next midnight, UTC).
    pub expires: DateTime<Utc>,
    /// The last day it holds, when `expires` is a midnight: the date as written in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_through: Option<NaiveDate>,
    /// `file:line` of the entry.
    pub source: String,
}

impl Waiver {
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires <= now
    }
}

/// The waivers to apply: `explicit`, else [`DEFAULT_PATH`] when present, else none.
pub fn load(explicit: Option<&Path>, known_items: &[&str]) -> anyhow::Result<(Option<PathBuf>, Vec<Waiver>)> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None if Path::new(DEFAULT_PATH).is_file() => PathBuf::from(DEFAULT_PATH),
        None => return Ok((None, Vec::new())),
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| usage(format!("cannot read waivers {}: {e}", path.display())))?;
    let waivers = parse(&path, &text, known_items)
        .map_err(|errors| usage(format!("invalid waivers {}:\n  {}", path.display(), errors.join("\n  "))))?;
    Ok((Some(path), waivers))
}

pub fn parse(path: &Path, text: &str, known_items: &[&str]) -> Result<Vec<Waiver>, Vec<String>> {
    let file: File = serde_yaml::from_str(text).map_err(|e| {
        let at = e.location().map(|l| format!("{}:{}", path.display(), l.line())).unwrap_or(path.display().to_string());
        vec![format!("{at}: {e}")]
    })?;
    let positions = Positions::of_file(path, text).map_err(|(at, msg)| vec![format!("{at}: {msg}")])?;
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, raw) in file.waivers.into_iter().enumerate() {
        let at = |key: &str| {
            positions
                .value(&format!("waivers[{i}]{key}"))
                .map(ToString::to_string)
                .unwrap_or_else(|| path.display().to_string())
        };
        if !known_items.contains(&raw.item.as_str()) {
            let near = known_items
                .iter()
                .min_by_key(|k| strsim::levenshtein(k, &raw.item))
                .filter(|k| strsim::levenshtein(k, &raw.item) <= 3);
            let hint = near.map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default();
            errors.push(format!("{}: unknown checklist item {:?}{hint}", at(".item"), raw.item));
        }
        for (key, value) in [("reason", &raw.reason), ("owner", &raw.owner)] {
            if value.trim().is_empty() {
                errors.push(format!("{}: waiver of {:?}: {key} must not be empty", at(&format!(".{key}")), raw.item));
            }
        }
        match parse_expiry(&raw.expires) {
            Ok(expires) => out.push(Waiver {
                item: raw.item,
                reason: raw.reason,
                owner: raw.owner,
                valid_through: valid_through(expires),
                expires,
                source: at("").rsplit_once(':').map(|(a, _)| a.to_owned()).unwrap_or_default(),
            }),
            Err(e) => errors.push(format!("{}: {e}", at(".expires"))),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The last day an expiry at `expires` still holds, when it is a midnight UTC (how a date
/// `YYYY-MM-DD` is stored: the next day's start, exclusive).
pub fn valid_through(expires: DateTime<Utc>) -> Option<NaiveDate> {
    (expires.time() == chrono::NaiveTime::MIN).then(|| expires.date_naive().pred_opt()).flatten()
}

/// An expiry for people, as it was written: "valid through 2027-05-31" for a date (stored as the
/// next midnight, which would read one day late), "valid until 2027-05-31 12:30 UTC" for a time.
pub fn validity(expires: DateTime<Utc>) -> String {
    match valid_through(expires) {
        Some(day) => format!("valid through {}", day.format("%Y-%m-%d")),
        None => format!("valid until {}", expires.format("%Y-%m-%d %H:%M UTC")),
    }
}

/// `YYYY-MM-DD` (valid through the end of that day, UTC) or an RFC 3339 timestamp.
pub fn parse_expiry(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let end =
            d.succ_opt().and_then(|n| n.and_hms_opt(0, 0, 0)).ok_or_else(|| format!("date {t:?} out of range"))?;
        return Ok(end.and_utc());
    }
    DateTime::parse_from_rfc3339(t)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| format!("expires {t:?}: expected a date YYYY-MM-DD or an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_lines_of_bad_entries() {
        let text = "waivers:\n  - item: rbac\n    reason: vendor SA\n    owner: alice\n    expires: 2030-01-31\n  - item: rbax\n    reason: x\n    owner: ''\n    expires: soon\n";
        let errors = parse(Path::new("w.yaml"), text, &["rbac", "tls"]).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("w.yaml:6:") && e.contains("did you mean \"rbac\"")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("w.yaml:8:") && e.contains("owner")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("w.yaml:9:") && e.contains("soon")), "{errors:?}");
        let ok = parse(Path::new("w.yaml"), &text[..text.find("  - item: rbax").unwrap()], &["rbac"]).unwrap();
        assert_eq!(ok[0].expires.to_rfc3339(), "2030-02-01T00:00:00+00:00");
        assert_eq!(ok[0].source, "w.yaml:2");
    }

    #[test]
    fn expiry_is_end_of_day() {
        let exp = parse_expiry("2026-12-01").unwrap();
        let w = Waiver {
            item: "a".into(),
            reason: "r".into(),
            owner: "o".into(),
            expires: exp,
            valid_through: valid_through(exp),
            source: String::new(),
        };
        assert!(!w.expired(parse_expiry("2026-12-01T23:59:00Z").unwrap()));
        assert!(w.expired(parse_expiry("2026-12-02T00:00:00Z").unwrap()));
    }

    #[test]
    fn expiry_is_shown_as_written() {
        assert_eq!(validity(parse_expiry("2027-05-31").unwrap()), "valid through 2027-05-31");
        assert_eq!(validity(parse_expiry("2099-01-01").unwrap()), "valid through 2099-01-01");
        assert_eq!(validity(parse_expiry("2027-05-31T12:30:00Z").unwrap()), "valid until 2027-05-31 12:30 UTC");
        let text = "waivers:\n  - item: rbac\n    reason: r\n    owner: o\n    expires: 2099-01-01\n";
        let w = &parse(Path::new("w.yaml"), text, &["rbac"]).unwrap()[0];
        let json = serde_json::to_value(w).unwrap();
        assert_eq!(
            (json["expires"].as_str(), json["validThrough"].as_str()),
            (Some("2099-01-02T00:00:00Z"), Some("2099-01-01"))
        );
    }
}
