//! The per-tenant hash chain: canonical form of an event and the link hash.
//!
//! `hash = hex(SHA-256(canonical_body || previous_hash))`, where `previous_hash` is the lowercase hex
//! hash of the preceding event of the same tenant, or the ASCII string `GENESIS` for the first one.
//! The canonical body is the stored event without `hash` and `previousHash` (so `id`, `sequence`,
//! `timestamp`, `actor`, `action`, `resource`, `metadata`) in the JSON Canonicalization Scheme
//! (RFC 8785), implemented in `audit_api::canonical` so that offline verifiers share it. The README
//! shows how to re-verify an export with any JCS implementation.

use audit_api::{GENESIS, NewEvent, StoredEvent};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;

/// The hashed part of an event, in the field names of the wire format.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    id: &'a str,
    sequence: i64,
    timestamp: &'a str,
    #[serde(flatten)]
    event: &'a NewEvent,
}

/// Canonical JSON of an event about to be appended.
pub fn canonical_body(id: &str, sequence: i64, timestamp: &str, event: &NewEvent) -> String {
    // Serializing plain structs to a Value cannot fail (no maps with non-string keys).
    let value = serde_json::to_value(Body { id, sequence, timestamp, event }).unwrap_or(Value::Null);
    canonical_json(&value)
}

/// Canonical JSON of an event read back (drops `hash` and `previousHash`): what a verifier hashes.
pub fn canonical_body_of(stored: &StoredEvent) -> String {
    audit_api::canonical::event_body(&serde_json::to_value(stored).unwrap_or(Value::Null))
}

/// The link hash of a canonical body following `previous_hash`.
pub fn link_hash(canonical_body: &str, previous_hash: &str) -> String {
    audit_api::canonical::link_hash(canonical_body, previous_hash)
}

/// `previousHash` of the first event of a chain.
pub fn genesis() -> &'static str {
    GENESIS
}

/// Timestamps in events: RFC 3339, UTC, exactly six fractional digits, `Z`. Fixed width, so the
/// text sorts chronologically (the SQLite store relies on it) and PostgreSQL round-trips it exactly.
pub fn format_timestamp(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, truncated to microseconds (the precision both stores keep).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The canonical (RFC 8785) text of a JSON value.
pub fn canonical_json(value: &Value) -> String {
    audit_api::canonical::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_keys_recursively_and_compacts() {
        let v: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"z": [1, {"y": null, "x": "é/\n"}], "c": 1.50}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":1.5,"z":[1,{"x":"é/\n","y":null}]},"b":1}"#);
    }

    #[test]
    fn hash_covers_previous_link() {
        let a = link_hash("{}", GENESIS);
        // Computed outside this code: `printf '{}GENESIS' | sha256sum`.
        assert_eq!(a, "0455d68d75d77a703656a69b594bad21935c852814b7e729ad69c3db2d1a2ae6");
        assert_ne!(a, link_hash("{}", &a));
    }

    /// The canonical body and both links of a fixed event, as literals computed by the README's
    /// Python recipe (json.dumps sort_keys, ensure_ascii=False; hashlib.sha256), not by this code.
    #[test]
    fn canonical_form_and_hash_match_the_readme_recipe() {
        let event: NewEvent = serde_json::from_value(serde_json::json!({
            "actor": {"id": "alice", "type": "USER", "name": "Zoë/Ops"},
            "action": {"type": "LOGIN", "description": "line1\nline2 \"quoted\""},
            "resource": {"id": "doc-1", "type": "DOCUMENT", "after": {"v": 2, "a": [1, "x"]}},
            "metadata": {"source": "tests", "tenantId": "tenant-a", "tags": {"b": "2", "a": "1"}}
        }))
        .unwrap();
        let body = canonical_body("01900000-0000-7000-8000-000000000001", 1, "2026-01-01T00:00:00.000000Z", &event);
        let expected = r#"{"action":{"description":"line1\nline2 \"quoted\"","type":"LOGIN"},"actor":{"id":"alice","name":"Zoë/Ops","type":"USER"},"id":"01900000-0000-7000-8000-000000000001","metadata":{"source":"tests","tags":{"a":"1","b":"2"},"tenantId":"tenant-a"},"resource":{"after":{"a":[1,"x"],"v":2},"id":"doc-1","type":"DOCUMENT"},"sequence":1,"timestamp":"2026-01-01T00:00:00.000000Z"}"#;
        assert_eq!(body, expected);
        let first = link_hash(&body, GENESIS);
        assert_eq!(first, "a76860fff7430541267ff9df01b318ce7bd6293f9e77ace332fa615c66528f65");
        assert_eq!(link_hash(&body, &first), "55a663be25af323dc0b989e294589ce5da45cbfaa18b5050e0a911e9b2332b40");
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        assert_eq!(format_timestamp(ts), "2023-11-14T22:13:20.000001Z");
    }
}
