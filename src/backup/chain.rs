//! Re-verification of the audit server's per-tenant hash chains, from the canonical form documented
//! in audit-server/README.md ("The hash chain"), written here independently of the server's code:
//!
//! `hash = lowercase_hex(SHA-256(canonical_body || previousHash))`, `previousHash` = the previous
//! event's hash or `GENESIS`; the canonical body is JSON with keys sorted by code point at every
//! level, no whitespace, strings escaped minimally (`"`, `\`, control characters), numbers as
//! written. The stored `body` column is that canonical text.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const GENESIS: &str = audit_api::GENESIS;

/// One stored row, as read from the `events` table.
pub struct Row {
    pub tenant_id: String,
    pub sequence: i64,
    pub id: String,
    pub actor_id: String,
    pub resource_id: String,
    pub action_type: String,
    pub body: String,
    pub hash: String,
    pub previous_hash: String,
}

/// Outcome for one tenant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantChain {
    pub tenant_id: String,
    pub events: i64,
    pub last_hash: String,
    /// `None` when intact; else the first broken link and why.
    pub broken: Option<String>,
}

/// Feeds rows in `(tenant_id, sequence)` order; one chain per tenant.
#[derive(Default)]
pub struct Verifier {
    done: Vec<TenantChain>,
    current: Option<TenantChain>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(&mut self, row: &Row) {
        if self.current.as_ref().is_none_or(|c| c.tenant_id != row.tenant_id) {
            if let Some(c) = self.current.take() {
                self.done.push(c);
            }
            self.current = Some(TenantChain {
                tenant_id: row.tenant_id.clone(),
                events: 0,
                last_hash: GENESIS.to_owned(),
                broken: None,
            });
        }
        let Some(chain) = self.current.as_mut() else { return };
        if chain.broken.is_some() {
            return;
        }
        let expected = chain.events + 1;
        if let Some(reason) = link_problem(row, expected, &chain.last_hash) {
            chain.broken = Some(format!("sequence {}: {reason}", row.sequence));
            return;
        }
        chain.events = expected;
        chain.last_hash = row.hash.clone();
    }

    /// Close the walk; `heads` are the `chain_heads` rows (tenant -> (last_sequence, last_hash)).
    pub fn finish(mut self, heads: &BTreeMap<String, (i64, String)>) -> Vec<TenantChain> {
        if let Some(c) = self.current.take() {
            self.done.push(c);
        }
        for chain in &mut self.done {
            if chain.broken.is_some() {
                continue;
            }
            match heads.get(&chain.tenant_id) {
                None => chain.broken = Some("no chain_heads row for this tenant".into()),
                Some((seq, hash)) if *seq != chain.events || *hash != chain.last_hash => {
                    chain.broken = Some(format!(
                        "chain head says sequence {seq} ({}...), the events end at {} ({}...)",
                        short(hash),
                        chain.events,
                        short(&chain.last_hash)
                    ))
                }
                Some(_) => {}
            }
        }
        for (tenant, (seq, hash)) in heads {
            if *seq > 0 && !self.done.iter().any(|c| &c.tenant_id == tenant) {
                self.done.push(TenantChain {
                    tenant_id: tenant.clone(),
                    events: 0,
                    last_hash: GENESIS.to_owned(),
                    broken: Some(format!("chain head says sequence {seq} ({}...), no events found", short(hash))),
                });
            }
        }
        self.done
    }
}

fn short(h: &str) -> &str {
    h.get(..12).unwrap_or(h)
}

fn link_problem(row: &Row, expected_sequence: i64, previous: &str) -> Option<String> {
    if row.sequence != expected_sequence {
        return Some(format!("expected sequence {expected_sequence} (missing, inserted or reordered event)"));
    }
    if row.previous_hash != previous {
        return Some("previousHash does not match the previous event's hash".into());
    }
    if link_hash(&row.body, previous) != row.hash {
        return Some("hash does not match the event's content (edited event)".into());
    }
    let Ok(body) = serde_json::from_str::<Value>(&row.body) else {
        return Some("stored body is not JSON".into());
    };
    if canonical_json(&body) != row.body {
        return Some("stored body is not in canonical form".into());
    }
    let field = |path: &[&str]| {
        let mut v = &body;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().map(str::to_owned).or_else(|| v.as_i64().map(|n| n.to_string()))
    };
    let columns = [
        (&["id"][..], row.id.as_str(), "id"),
        (&["sequence"][..], &row.sequence.to_string(), "sequence"),
        (&["metadata", "tenantId"][..], row.tenant_id.as_str(), "tenant_id"),
        (&["actor", "id"][..], row.actor_id.as_str(), "actor_id"),
        (&["resource", "id"][..], row.resource_id.as_str(), "resource_id"),
        (&["action", "type"][..], row.action_type.as_str(), "action_type"),
    ];
    for (path, column, name) in columns {
        if field(path).as_deref() != Some(column) {
            return Some(format!("column {name} disagrees with the hashed body"));
        }
    }
    None
}

pub fn link_hash(canonical_body: &str, previous_hash: &str) -> String {
    let mut sha = Sha256::new();
    sha.update(canonical_body.as_bytes());
    sha.update(previous_hash.as_bytes());
    hex::encode(sha.finalize())
}

/// The README's canonical JSON.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::with_capacity(512);
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Code point order = byte order of the UTF-8 encoding.
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_str(s, out),
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_matches_the_readme() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"z": [1, {"y": null, "x": "é/\n\u0001"}], "c": 1.5}}"#)
            .expect("json");
        assert_eq!(canonical_json(&v), r#"{"a":{"c":1.5,"z":[1,{"x":"é/\n\u0001","y":null}]},"b":1}"#);
        // printf '{}GENESIS' | sha256sum
        assert_eq!(link_hash("{}", GENESIS), "0455d68d75d77a703656a69b594bad21935c852814b7e729ad69c3db2d1a2ae6");
    }

    fn row(tenant: &str, seq: i64, prev: &str) -> Row {
        let body = format!(
            r#"{{"action":{{"type":"LOGIN"}},"actor":{{"id":"u1","type":"USER"}},"id":"id-{tenant}-{seq}","metadata":{{"source":"t","tenantId":"{tenant}"}},"resource":{{"id":"r","type":"APP"}},"sequence":{seq},"timestamp":"2026-12-01T00:00:00.000000Z"}}"#
        );
        Row {
            tenant_id: tenant.into(),
            sequence: seq,
            id: format!("id-{tenant}-{seq}"),
            actor_id: "u1".into(),
            resource_id: "r".into(),
            action_type: "LOGIN".into(),
            hash: link_hash(&body, prev),
            body,
            previous_hash: prev.into(),
        }
    }

    #[test]
    fn intact_and_broken_chains() {
        let a1 = row("a", 1, GENESIS);
        let a2 = row("a", 2, &a1.hash);
        let b1 = row("b", 1, GENESIS);
        let mut heads = BTreeMap::new();
        heads.insert("a".to_owned(), (2, a2.hash.clone()));
        heads.insert("b".to_owned(), (1, b1.hash.clone()));
        let mut v = Verifier::new();
        for r in [&a1, &a2, &b1] {
            v.check(r);
        }
        let chains = v.finish(&heads);
        assert!(chains.iter().all(|c| c.broken.is_none()), "{chains:?}");

        let mut edited = row("a", 2, &a1.hash);
        edited.body = edited.body.replace("LOGIN", "LOGOUT");
        let mut v = Verifier::new();
        v.check(&a1);
        v.check(&edited);
        let chains = v.finish(&heads);
        assert!(chains[0].broken.as_deref().is_some_and(|b| b.contains("edited")), "{chains:?}");

        // A deleted tail: the head still says 2.
        let mut v = Verifier::new();
        v.check(&a1);
        v.check(&b1);
        let chains = v.finish(&heads);
        assert!(chains[0].broken.as_deref().is_some_and(|b| b.contains("chain head")), "{chains:?}");
    }
}
