//! The per-tenant hash chain: canonical form of an event and the link hash.
//!
//! `hash = hex(SHA-256(canonical_body || previous_hash))`, where `previous_hash` is the lowercase hex
//! hash of the preceding event of the same tenant, or the ASCII string `GENESIS` for the first one.
//! The canonical body is the stored event without `hash` and `previousHash` (so `id`, `sequence`,
//! `timestamp`, `actor`, `action`, `resource`, `metadata`) in the JSON Canonicalization Scheme
//! (RFC 8785), implemented in `audit_api::canonical` so that offline verifiers share it. The README
//! shows how to re-verify an export with any JCS implementation.

use std::collections::BTreeMap;

use audit_api::{GENESIS, NewEvent, StoredEvent, canonical};
use chrono::{DateTime, SecondsFormat, Utc};
#[cfg(test)]
use serde::Serialize;
use serde_json::Value;

/// The hashed part of an event, in the field names of the wire format.
#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    id: &'a str,
    sequence: i64,
    timestamp: &'a str,
    #[serde(flatten)]
    event: &'a NewEvent,
}

/// Canonical JSON of an event about to be appended, written straight from the typed event: the
/// same text as the JCS form of its serialization (`canonical_body_via_value`, checked against
/// it by a property test) without building a `Value` tree first, which was most of the server's
/// CPU per event with batches (docs/profile.md). Members are written in JCS order: every fixed
/// key here is ASCII, so that is byte order; free-form maps (attributes, tags) are sorted.
pub fn canonical_body(id: &str, sequence: i64, timestamp: &str, event: &NewEvent) -> String {
    let mut out = String::with_capacity(512);
    let o = &mut out;
    o.push('{');
    let mut top = Members::new(o);
    let a = &event.action;
    top.key("action").push('{');
    let mut m = Members::new(top.out);
    m.opt_str("category", &a.category);
    m.opt_str("description", &a.description);
    m.str("type", &a.kind);
    top.out.push('}');
    let actor = &event.actor;
    top.key("actor").push('{');
    let mut m = Members::new(top.out);
    if let Some(attributes) = &actor.attributes {
        sorted_map(m.key("attributes"), attributes, canonical::write);
    }
    m.str("id", &actor.id);
    m.opt_str("ip", &actor.ip);
    m.opt_str("name", &actor.name);
    m.str("type", &actor.kind);
    m.opt_str("userAgent", &actor.user_agent);
    top.out.push('}');
    top.str("id", id);
    let meta = &event.metadata;
    top.key("metadata").push('{');
    let mut m = Members::new(top.out);
    m.opt_str("correlationId", &meta.correlation_id);
    m.opt_str("sessionId", &meta.session_id);
    m.str("source", &meta.source);
    if let Some(tags) = &meta.tags {
        sorted_map(m.key("tags"), tags, |v, out| canonical::write_string(v, out));
    }
    m.str("tenantId", &meta.tenant_id);
    top.out.push('}');
    top.opt_str("occurredAt", &event.occurred_at);
    let r = &event.resource;
    top.key("resource").push('{');
    let mut m = Members::new(top.out);
    if let Some(after) = &r.after {
        canonical::write(after, m.key("after"));
    }
    if let Some(before) = &r.before {
        canonical::write(before, m.key("before"));
    }
    m.str("id", &r.id);
    m.opt_str("name", &r.name);
    m.str("type", &r.kind);
    top.out.push('}');
    canonical::write(&Value::from(sequence), top.key("sequence"));
    top.str("timestamp", timestamp);
    out.push('}');
    out
}

/// The members of one JSON object being written: commas between them.
struct Members<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut String) -> Self {
        Members { out, first: true }
    }

    /// Write `"key":` (after a comma unless first) and hand back the output for the value.
    fn key(&mut self, key: &str) -> &mut String {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        canonical::write_string(key, self.out);
        self.out.push(':');
        self.out
    }

    fn str(&mut self, key: &str, value: &str) {
        canonical::write_string(value, self.key(key));
    }

    fn opt_str(&mut self, key: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }
}

/// A free-form object in JCS member order (keys by UTF-16 code units).
fn sorted_map<V>(out: &mut String, map: &BTreeMap<String, V>, write: impl Fn(&V, &mut String)) {
    let mut members: Vec<(&String, &V)> = map.iter().collect();
    // BTreeMap order is byte order, which equals UTF-16 order unless a key holds characters above
    // U+D7FF: only then sort again.
    if !members.iter().all(|(k, _)| k.is_ascii()) {
        members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
    out.push('{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical::write_string(key, out);
        out.push(':');
        write(value, out);
    }
    out.push('}');
}

/// The reference for [`canonical_body`]: the JCS text of the event's serialization.
#[cfg(test)]
fn canonical_body_via_value(id: &str, sequence: i64, timestamp: &str, event: &NewEvent) -> String {
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
    use proptest::prelude::*;

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

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(any::<String>())
    }

    prop_compose! {
        fn new_event()(
            actor in (any::<String>(), any::<String>(), text(), text(), text(),
                prop::option::of(prop::collection::btree_map(any::<String>(), json(), 0..4))),
            action in (any::<String>(), text(), text()),
            resource in (any::<String>(), any::<String>(), text(), prop::option::of(json()), prop::option::of(json())),
            metadata in (any::<String>(), any::<String>(), text(), text(),
                prop::option::of(prop::collection::btree_map(any::<String>(), any::<String>(), 0..4))),
            occurred_at in text(),
        ) -> NewEvent {
            NewEvent {
                occurred_at,
                actor: audit_api::Actor {
                    id: actor.0, kind: actor.1, name: actor.2, ip: actor.3, user_agent: actor.4, attributes: actor.5,
                },
                action: audit_api::Action { kind: action.0, description: action.1, category: action.2 },
                resource: audit_api::Resource {
                    id: resource.0, kind: resource.1, name: resource.2, before: resource.3, after: resource.4,
                },
                metadata: audit_api::Metadata {
                    source: metadata.0, tenant_id: metadata.1, correlation_id: metadata.2, session_id: metadata.3,
                    tags: metadata.4,
                },
            }
        }
    }

    proptest! {
        /// The typed writer and the JCS form of the serialized event are the same text, whatever
        /// the optional fields, escapes, non-BMP keys and nested values.
        #[test]
        fn typed_canonical_body_equals_the_value_path(event in new_event(), sequence in 1i64..i64::MAX, id in any::<String>()) {
            let ts = "2026-01-01T00:00:00.000000Z";
            prop_assert_eq!(canonical_body(&id, sequence, ts, &event), canonical_body_via_value(&id, sequence, ts, &event));
        }
    }

    /// A row as the stores read it; only the body, id and sequence matter to reading it back.
    fn stored_row(id: &str, sequence: i64, body: String) -> crate::store::StoredRow {
        crate::store::StoredRow {
            id: id.into(),
            tenant_id: String::new(),
            sequence,
            timestamp: String::new(),
            actor_id: String::new(),
            resource_id: String::new(),
            action_type: String::new(),
            body,
            hash: "h".repeat(64),
            previous_hash: GENESIS.into(),
        }
    }

    proptest! {
        /// A stored row reads back as the same event through the typed body as through the
        /// `Value` path it replaced, and as the event that was appended.
        #[test]
        // Sequences up to 2^53: the canonical form writes numbers as JCS does (IEEE doubles), so a
        // larger one would not read back as itself by either path (no tenant gets near it).
        fn typed_read_back_equals_the_value_path(event in new_event(), sequence in 1i64..(1 << 53), id in any::<String>()) {
            let ts = "2026-01-01T00:00:00.000000Z";
            let row = stored_row(&id, sequence, canonical_body(&id, sequence, ts, &event));
            let typed = row.clone().into_event().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let borrowed = row.to_event().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let reference = row.into_event_via_value().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&typed, &reference);
            prop_assert_eq!(&borrowed, &reference);
            // Free-form values (attributes, before/after) are left out: JCS writes numbers as
            // doubles, so an integer above 2^53 comes back rounded, by design of the hashed form.
            prop_assert_eq!(
                (&typed.id, typed.sequence, &typed.actor.id, &typed.action, &typed.metadata, &typed.occurred_at),
                (&id, sequence, &event.actor.id, &event.action, &event.metadata, &event.occurred_at)
            );
            prop_assert_eq!(&typed.hash, &"h".repeat(64));
        }
    }

    #[test]
    fn unreadable_and_unexpected_bodies_are_errors() {
        for body in ["not json", "[1]", r#"{"id":"x"}"#] {
            let row = stored_row("x", 1, body.into());
            assert!(row.clone().into_event().is_err(), "{body}");
            assert!(row.to_event().is_err(), "{body}");
            assert!(row.into_event_via_value().is_err(), "{body}");
        }
    }

    #[test]
    fn timestamps_are_fixed_width() {
        let ts = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        assert_eq!(format_timestamp(ts), "2023-11-14T22:13:20.000001Z");
    }
}
