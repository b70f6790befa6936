//! The canonical form of an event and the chain's link hash, shared by the server (which hashes
//! what it stores) and by offline verifiers such as `audctl verify`.
//!
//! The canonical form is the JSON Canonicalization Scheme, RFC 8785 (JCS):
//!
//! - object members sorted by their keys' UTF-16 code units, at every level;
//! - no whitespace;
//! - strings with the minimal escapes of ECMAScript's `JSON.stringify`: `\"`, `\\`, `\b`, `\f`,
//!   `\n`, `\r`, `\t`, other characters below U+0020 as `\u00xx` (lowercase hex), everything else
//!   (including `/`, U+007F and non-ASCII) as UTF-8;
//! - numbers as IEEE 754 doubles written by ECMAScript's `Number.prototype.toString` (the
//!   shortest text that reads back to the same double: `1e-7`, `1e+21`, `10000000000000000`,
//!   `0.5`; `-0` as `0`).
//!
//! Any JSON reader that parses numbers to the nearest double therefore gets back the value that
//! was hashed, and any JCS implementation recomputes the same bytes. Integers whose magnitude
//! exceeds 2^53 cannot be doubles exactly; the server refuses them ([`exact_number`]).

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Largest integer magnitude every double represents exactly (2^53).
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// The JCS text of a JSON value.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write(value, &mut out);
    out
}

/// Append the JCS text of `value` to `out`.
pub fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(map, out),
    }
}

fn write_object(map: &Map<String, Value>, out: &mut String) {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    // UTF-16 code unit order; for keys without characters above U+D7FF it equals byte order.
    members.sort_by(|a, b| {
        if a.0.is_ascii() && b.0.is_ascii() { a.0.cmp(b.0) } else { a.0.encode_utf16().cmp(b.0.encode_utf16()) }
    });
    out.push('{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(key, out);
        out.push(':');
        write(value, out);
    }
    out.push('}');
}

fn write_number(n: &serde_json::Number, out: &mut String) {
    // Integers a double holds exactly print as their digits (what ECMAScript prints for them).
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= MAX_EXACT_INTEGER
    {
        out.push_str(&i.to_string());
        return;
    }
    if let Some(u) = n.as_u64()
        && u <= MAX_EXACT_INTEGER
    {
        out.push_str(&u.to_string());
        return;
    }
    // Everything else is a double (serde_json never holds NaN or infinities).
    let f = n.as_f64().unwrap_or(0.0);
    if f == 0.0 {
        out.push('0');
    } else {
        out.push_str(ryu_js::Buffer::new().format_finite(f));
    }
}

/// Append the JCS text of a string (quoted, with the escapes RFC 8785 prescribes).
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\x08' => Some("\\b"),
            b'\x0c' => Some("\\f"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether a number survives the canonical form unchanged: false for integers beyond 2^53 in
/// magnitude (JCS would round them to a double).
pub fn exact_number(n: &serde_json::Number) -> bool {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => i.unsigned_abs() <= MAX_EXACT_INTEGER,
        (None, Some(u)) => u <= MAX_EXACT_INTEGER,
        _ => true,
    }
}

/// `hash = lowercase_hex(SHA-256(canonical_body || previous_hash))`.
pub fn link_hash(canonical_body: &str, previous_hash: &str) -> String {
    let mut sha = Sha256::new();
    sha.update(canonical_body.as_bytes());
    sha.update(previous_hash.as_bytes());
    hex::encode(sha.finalize())
}

/// The canonical body of an event as read back (`GET /events/{id}` or one line of an export):
/// every member except `hash` and `previousHash`.
pub fn event_body(event: &Value) -> String {
    match event {
        Value::Object(map) => {
            let body: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "hash" && k.as_str() != "previousHash")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            to_string(&Value::Object(body))
        }
        other => to_string(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> String {
        to_string(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn numbers_as_ecmascript_writes_them() {
        // Expected texts from ECMAScript (`String(Number(x))` in any browser).
        for (input, want) in [
            ("0", "0"),
            ("-0.0", "0"),
            ("1.0", "1"),
            ("1e16", "10000000000000000"),
            ("1e21", "1e+21"),
            ("123456789012345680000", "123456789012345680000"),
            ("1e-7", "1e-7"),
            ("0.000001", "0.000001"),
            ("80e-27", "8e-26"),
            ("1.5e300", "1.5e+300"),
            ("-2.5e-300", "-2.5e-300"),
            ("0.1", "0.1"),
            ("9007199254740992", "9007199254740992"),
            ("4.35", "4.35"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ] {
            assert_eq!(num(input), want, "{input}");
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the RFC's literal, rounded on purpose
    fn rfc8785_sample() {
        // RFC 8785 section 3.2.2 (its input, with the literal characters it describes).
        let input = json!({
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u{20ac}$\u{f}\nA'B\"\\\\\"/",
            "literals": [null, true, false]
        });
        assert_eq!(
            to_string(&input),
            "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
             \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}"
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // RFC 8785 section 3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
        let v = json!({"\u{fb33}": 1, "\u{1f600}": 2, "a": 3, "\r": 4, "1": 5, "\u{80}": 6, "\u{f6}": 7});
        assert_eq!(
            to_string(&v),
            "{\"\\r\":4,\"1\":5,\"a\":3,\"\u{80}\":6,\"\u{f6}\":7,\"\u{1f600}\":2,\"\u{fb33}\":1}"
        );
    }

    #[test]
    fn agrees_with_serde_json_canonicalizer() {
        // An independent RFC 8785 implementation as a cross-check over awkward values.
        let v = json!({
            "f": [1e-30, 3.0e29, 8e-26, 123.456, -0.0, 1e21, 1e20, 2.2250738585072014e-308],
            "i": [0, -1, 9007199254740992i64, -9007199254740992i64],
            "s": "\u{0}\u{1f}\u{7f}\u{2028}</script>",
            "\u{e000}": {"\u{10000}": null}
        });
        assert_eq!(to_string(&v), serde_json_canonicalizer::to_string(&v).unwrap());
    }

    #[test]
    fn hash_covers_previous_link() {
        // printf '{}GENESIS' | sha256sum
        assert_eq!(link_hash("{}", "GENESIS"), "0455d68d75d77a703656a69b594bad21935c852814b7e729ad69c3db2d1a2ae6");
        assert_ne!(link_hash("{}", "GENESIS"), link_hash("{}", "x"));
    }

    #[test]
    fn event_body_leaves_out_the_links() {
        let e = json!({"id": "x", "hash": "h", "previousHash": "p", "sequence": 1});
        assert_eq!(event_body(&e), r#"{"id":"x","sequence":1}"#);
        assert!(!exact_number(&serde_json::Number::from(9007199254740993u64)));
        assert!(exact_number(&serde_json::Number::from(-9007199254740992i64)));
    }
}
