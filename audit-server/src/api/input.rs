//! Request bodies: content type (415), size (413), JSON syntax and fields (400 with every invalid
//! field listed). Validation runs on the raw JSON so all errors are reported at once, not just the
//! first one serde would stop at.

use audit_api::strict::Strict;
use audit_api::{FieldError, MAX_BATCH_EVENTS, MAX_BODY_BYTES, NewEvent};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::{AppState, Deadline};
use crate::appender::AppendError;

/// A JSON request body of an append, parsed but not yet validated, and its size in bytes. Refused
/// with 503 before it is read when the append queue is full (load shedding), and when the request
/// deadline passes while it is being received.
pub struct JsonBody(pub Value, pub usize);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if state.appender.saturated() {
            return Err(AppendError::Overloaded.into());
        }
        let (value, size) = read_json(req, state).await?;
        Ok(JsonBody(value, size))
    }
}

/// A JSON request body of a query (`POST /search`): the same content type, size and syntax rules
/// as an append's, without load shedding (a search takes nothing from the append queue).
pub struct QueryBody(pub Value);

impl FromRequest<AppState> for QueryBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(QueryBody(read_json(req, state).await?.0))
    }
}

/// Content type (415), size (413), deadline (503), then the JSON: read strictly (a key given
/// twice is refused, 400) and with integer literals beyond 64 bits refused (400, see
/// [`overflowing_integers`]).
async fn read_json(req: Request, state: &AppState) -> Result<(Value, usize), ApiError> {
    let deadline = req.extensions().get::<Deadline>().map(|d| d.0);
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !(mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type: application/json, got {content_type:?}"),
        ));
    }
    // A compressed body would read as "malformed JSON"; RFC 9110 (8.4.1) asks for a 415 naming
    // the coding. None is decoded here: bodies are small and a decompressor is a bomb to guard.
    let encoding = req.headers().get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("(not text)").trim());
    if let Some(coding) = encoding.filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity")) {
        let mut refused = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Encoding {coding:?} is not accepted: send the body uncompressed (no Content-Encoding)"),
        );
        refused.headers.push(("accept-encoding", "identity".into()));
        return Err(refused);
    }
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    // The router sets DefaultBodyLimit to MAX_BODY_BYTES; Bytes turns an overrun into a 413.
    let read = Bytes::from_request(req, state);
    let read = match deadline {
        Some(d) => tokio::time::timeout_at(d, read).await.map_err(|_| ApiError::timeout())?,
        None => read.await,
    };
    let bytes = read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"))
        }
    })?;
    // A key given twice is valid JSON that readers take differently (serde_json keeps the last,
    // many proxies and parsers the first): what they see must be what is stored and hashed.
    let value = match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(value)) => value,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(ApiError::bad_request(format!("{e}: a member may be given once")));
        }
        Err(e) => return Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
    };
    let overflowing = overflowing_integers(&bytes);
    if !overflowing.is_empty() {
        let mut errors = Vec::new();
        inexact_numbers(&value, &mut String::new(), &overflowing, &mut errors);
        if errors.is_empty() {
            errors.push(FieldError { field: String::new(), message: INEXACT.into() });
        }
        return Err(ApiError::invalid(errors));
    }
    Ok((value, bytes.len()))
}

const INEXACT: &str = "integers beyond 2^53 in magnitude cannot be kept exactly (numbers are IEEE 754 doubles, RFC 8785); send them as strings";

/// The values of the integer literals (no fraction, no exponent) outside strings that fit neither
/// an i64 nor a u64. serde_json reads those as the nearest double without a trace of the literal,
/// so [`inexact_numbers`] cannot tell `18446744073709551617` (rounded: refused) from
/// `1.8446744073709552e19` (a double as sent: kept). One pass over the bytes of a body that
/// already parsed as JSON, so strings and escapes are well formed.
fn overflowing_integers(bytes: &[u8]) -> Vec<f64> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = std::str::from_utf8(&bytes[start..i]).unwrap_or_default();
                // 19 characters hold every i64 and u64 below 10^18: nothing to parse on the hot path.
                if token.len() > 19
                    && !token.contains(['.', 'e', 'E'])
                    && token.parse::<i64>().is_err()
                    && token.parse::<u64>().is_err()
                    && let Ok(v) = token.parse::<f64>()
                {
                    found.push(v);
                }
            }
            _ => i += 1,
        }
    }
    found
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body exceeds {} MiB", MAX_BODY_BYTES / (1024 * 1024)),
    )
}

/// Lengths that keep every indexed value well inside PostgreSQL's btree entry limit.
const MAX_ID: usize = 256;
const MAX_TEXT: usize = 4096;
const MAX_TENANT: usize = 128;

/// The fields of an event, per part (those of `audit_api::NewEvent`).
const FIELDS: [(&str, &[&str]); 4] = [
    ("actor", &["id", "type", "name", "ip", "userAgent", "attributes"]),
    ("action", &["type", "description", "category"]),
    ("resource", &["id", "type", "name", "before", "after"]),
    ("metadata", &["source", "tenantId", "correlationId", "sessionId", "tags"]),
];

/// Validate one event; on success the typed event.
pub fn event(value: &Value, prefix: &str, errors: &mut Vec<FieldError>) -> Option<NewEvent> {
    let before = errors.len();
    let mut v = Check { prefix, errors };
    let Some(obj) = value.as_object() else {
        v.fail("", "must be a JSON object");
        return None;
    };
    for part in ["actor", "action", "resource", "metadata"] {
        match obj.get(part) {
            Some(Value::Object(_)) => {}
            None | Some(Value::Null) => v.fail(part, "is required"),
            Some(_) => v.fail(part, "must be an object"),
        }
    }
    // Unknown fields are refused rather than dropped: a client must not believe a field it sent
    // (say `occurredAt` misspelt `occuredAt`, or `tenantID`) is stored and covered by the hash.
    for key in obj.keys().filter(|k| *k != "occurredAt" && !FIELDS.iter().any(|(part, _)| part == k)) {
        v.fail(key, "is not a field of an event (unknown fields are refused, see the README)");
    }
    for (part, known) in FIELDS {
        if let Some(Value::Object(fields)) = obj.get(part) {
            for key in fields.keys().filter(|k| !known.contains(&k.as_str())) {
                v.fail(&format!("{part}.{key}"), &format!("is not a field of {part}"));
            }
        }
    }
    let get = |part: &str, field: &str| obj.get(part).and_then(|p| p.get(field));
    v.id(get("actor", "id"), "actor.id");
    v.id(get("actor", "type"), "actor.type");
    v.opt_text(get("actor", "name"), "actor.name");
    v.opt_text(get("actor", "ip"), "actor.ip");
    v.opt_text(get("actor", "userAgent"), "actor.userAgent");
    v.opt_object(get("actor", "attributes"), "actor.attributes");
    v.id(get("action", "type"), "action.type");
    v.opt_text(get("action", "description"), "action.description");
    v.opt_text(get("action", "category"), "action.category");
    v.id(get("resource", "id"), "resource.id");
    v.id(get("resource", "type"), "resource.type");
    v.opt_text(get("resource", "name"), "resource.name");
    v.id(get("metadata", "source"), "metadata.source");
    v.tenant(get("metadata", "tenantId"), "metadata.tenantId");
    v.opt_text(get("metadata", "correlationId"), "metadata.correlationId");
    v.opt_text(get("metadata", "sessionId"), "metadata.sessionId");
    if let Some(tags) = get("metadata", "tags").filter(|t| !t.is_null()) {
        match tags.as_object() {
            Some(map) if map.values().all(Value::is_string) => {
                for (key, tag) in map {
                    let field = format!("metadata.tags.{key}");
                    // The names a search can filter on (`tags` of POST /search): a tag stored
                    // under another name could never be found by it.
                    if key.is_empty() || key.chars().count() > MAX_ID || key.contains('=') {
                        v.fail(&field, "tag names must be 1 to 256 characters without '='");
                    }
                    v.opt_text(Some(tag), &field);
                }
            }
            _ => v.fail("metadata.tags", "must be an object of string values"),
        }
    }
    let occurred_at = match obj.get("occurredAt") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => occurred_at(t).map_err(|m| v.fail("occurredAt", &m)).ok(),
        Some(_) => {
            v.fail("occurredAt", "must be an RFC 3339 timestamp string");
            None
        }
    };
    for part in ["attributes", "before", "after"] {
        let owner = if part == "attributes" { "actor" } else { "resource" };
        if let Some(nested) = get(owner, part) {
            long_strings(nested, &mut format!("{prefix}{owner}.{part}"), errors);
        }
    }
    inexact_numbers(value, &mut prefix.trim_end_matches('.').to_owned(), &[], errors);
    if errors.len() > before {
        return None;
    }
    // Deserialized from the borrowed value: no copy of the event (the clone it replaces showed
    // in the profile with batches, docs/profile.md).
    match NewEvent::deserialize(value) {
        Ok(mut e) => {
            e.occurred_at = occurred_at;
            Some(e)
        }
        Err(e) => {
            errors.push(FieldError { field: prefix.trim_end_matches('.').to_owned(), message: e.to_string() });
            None
        }
    }
}

/// `occurredAt`: RFC 3339 within years 1..=9999, normalised to UTC with six fractional digits and
/// `Z` (the form of `timestamp`), so the stored and hashed text is one way of writing the instant.
/// Refused rather than rounded when it is more precise than a microsecond.
fn occurred_at(text: &str) -> Result<String, String> {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00.250Z ({e})"))?
        .with_timezone(&chrono::Utc);
    if !(1..=9999).contains(&t.year()) {
        return Err("must be between years 1 and 9999".into());
    }
    if t.nanosecond() % 1000 != 0 {
        return Err("must not be more precise than a microsecond (it would be stored rounded)".into());
    }
    // chrono keeps a leap second as a nanosecond count past 10^9, and writes it back as second 60
    // of any minute: no instant most readers accept (Python's datetime refuses it).
    if t.nanosecond() >= 1_000_000_000 {
        return Err(
            "must not be a leap second (second 60): give the instant as second 59.999999 or 00 of the next minute"
                .into(),
        );
    }
    Ok(crate::chain::format_timestamp(t))
}

/// Strings (and member names) nested in `attributes`, `before` and `after` obey the limit of
/// other strings ([`MAX_TEXT`] characters), as the README documents.
fn long_strings(value: &Value, path: &mut String, errors: &mut Vec<FieldError>) {
    let too_long = |s: &str| s.chars().count() > MAX_TEXT;
    let message = || format!("strings must be at most {MAX_TEXT} characters");
    match value {
        Value::String(s) if too_long(s) => errors.push(FieldError { field: path.clone(), message: message() }),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                long_strings(item, path, errors);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                path.push('.');
                path.push_str(&k.chars().take(64).collect::<String>());
                if too_long(k) {
                    errors.push(FieldError { field: path.clone(), message: format!("member names: {}", message()) });
                }
                long_strings(item, path, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Integers beyond 2^53 in magnitude would be rounded by the canonical form (RFC 8785 numbers are
/// doubles), so what is hashed and returned would differ from what was sent: refuse them. Also the
/// doubles equal to one of `overflowing`, the values of literals beyond 64 bits that serde_json
/// read as rounded doubles ([`overflowing_integers`]).
fn inexact_numbers(value: &Value, path: &mut String, overflowing: &[f64], errors: &mut Vec<FieldError>) {
    let rounded = |n: &serde_json::Number| n.is_f64() && n.as_f64().is_some_and(|v| overflowing.contains(&v));
    match value {
        Value::Number(n) if !audit_api::canonical::exact_number(n) || rounded(n) => {
            errors.push(FieldError { field: path.clone(), message: INEXACT.into() })
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                inexact_numbers(item, path, overflowing, errors);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                inexact_numbers(item, path, overflowing, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Validate a batch body (`{"events": [...]}` or a bare array); all events must share a tenant.
pub fn batch(value: &Value) -> Result<Vec<NewEvent>, ApiError> {
    let items = match value {
        Value::Array(items) => items,
        Value::Object(o) => match o.get("events") {
            _ if o.keys().any(|k| k != "events") => {
                let extra: Vec<&str> = o.keys().map(String::as_str).filter(|k| *k != "events").collect();
                return Err(ApiError::field(extra[0], "is not a field of a batch (only `events`)"));
            }
            Some(Value::Array(items)) => items,
            _ => return Err(ApiError::field("events", "is required and must be an array of events")),
        },
        _ => return Err(ApiError::field("events", "the body must be {\"events\": [...]}")),
    };
    if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::field(
            "events",
            format!("must hold 1 to {MAX_BATCH_EVENTS} events, got {}", items.len()),
        ));
    }
    let mut errors = Vec::new();
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if let Some(e) = event(item, &format!("events[{i}]."), &mut errors) {
            events.push(e);
        }
        if errors.len() >= 100 {
            break;
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let tenant = &events[0].metadata.tenant_id;
    if let Some(i) = events.iter().position(|e| &e.metadata.tenant_id != tenant) {
        return Err(ApiError::field(
            &format!("events[{i}].metadata.tenantId"),
            format!("all events of a batch must have the same tenantId ({tenant:?})"),
        ));
    }
    Ok(events)
}

struct Check<'a> {
    prefix: &'a str,
    errors: &'a mut Vec<FieldError>,
}

impl Check<'_> {
    fn fail(&mut self, field: &str, message: &str) {
        let field = format!("{}{field}", self.prefix);
        self.errors.push(FieldError { field: field.trim_end_matches('.').to_owned(), message: message.to_owned() });
    }

    /// Required, 1..=256 characters, no control characters (these go into indexed columns).
    fn id(&mut self, v: Option<&Value>, field: &str) {
        match v {
            None | Some(Value::Null) => self.fail(field, "is required"),
            Some(Value::String(s)) if s.trim().is_empty() => self.fail(field, "must not be blank"),
            Some(Value::String(s)) if s.chars().count() > MAX_ID => self.fail(field, "must be at most 256 characters"),
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                self.fail(field, "must not contain control characters")
            }
            Some(Value::String(_)) => {}
            Some(_) => self.fail(field, "must be a string"),
        }
    }

    fn tenant(&mut self, v: Option<&Value>, field: &str) {
        match v {
            Some(Value::String(s)) if !valid_tenant(s) => {
                self.fail(field, "must be 1 to 128 characters among letters, digits and . _ - : @ (and not `*`)")
            }
            other => self.id(other, field),
        }
    }

    fn opt_text(&mut self, v: Option<&Value>, field: &str) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.chars().count() > MAX_TEXT => {
                self.fail(field, "must be at most 4096 characters")
            }
            Some(Value::String(_)) => {}
            Some(_) => self.fail(field, "must be a string"),
        }
    }

    fn opt_object(&mut self, v: Option<&Value>, field: &str) {
        if !matches!(v, None | Some(Value::Null) | Some(Value::Object(_))) {
            self.fail(field, "must be an object");
        }
    }
}

pub fn valid_tenant(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TENANT
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@'))
}

/// An `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(audit_api::IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(s.to_owned())),
        _ => Err(ApiError::field("Idempotency-Key", "must be 1 to 255 visible ASCII characters")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "actor": {"id": "u1", "type": "USER"},
            "action": {"type": "LOGIN"},
            "resource": {"id": "r1", "type": "DOC"},
            "metadata": {"source": "web", "tenantId": "acme"}
        })
    }

    /// Literals beyond 64 bits (read as rounded doubles by serde_json) found by the scan, located
    /// in the parsed value; doubles written as such, strings and smaller integers left alone.
    #[test]
    fn overflowing_integer_literals_are_found_and_located() {
        let body = r#"{"a":{"n":18446744073709551617,"m":-9223372036854775809,"u64":18446744073709551615},
            "f":1.8446744073709552e19,"s":"18446744073709551617 \" 99999999999999999999","l":[100000000000000000001]}"#;
        let found = overflowing_integers(body.as_bytes());
        assert_eq!(found, vec![18446744073709551617.0, -9223372036854775809.0, 1e20]);
        let Strict(value) = serde_json::from_str(body).expect("json");
        let mut errors = Vec::new();
        inexact_numbers(&value, &mut String::new(), &found, &mut errors);
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        // `a.u64` fits 64 bits (not a scan's find) but is beyond 2^53: refused as ever. `f` is the
        // double 2^64 as sent, equal to the first literal once rounded: named too, the one
        // ambiguity of locating by value (the body is refused either way).
        assert_eq!(fields, ["a.m", "a.n", "a.u64", "f", "l[0]"]);
        assert!(overflowing_integers(br#"{"n":9223372036854775807,"t":"x"}"#).is_empty());
    }

    #[test]
    fn occurred_at_is_normalised_or_refused() {
        for (sent, stored) in [
            ("2026-01-31T12:00:00Z", "2026-01-31T12:00:00.000000Z"),
            ("2026-01-31T14:00:00.25+02:00", "2026-01-31T12:00:00.250000Z"),
            ("2026-01-31t12:00:00.123456z", "2026-01-31T12:00:00.123456Z"),
            ("2026-01-31T00:30:00-01:00", "2026-01-31T01:30:00.000000Z"),
        ] {
            let mut v = minimal();
            v["occurredAt"] = json!(sent);
            let mut errors = Vec::new();
            let e = event(&v, "", &mut errors).unwrap_or_else(|| panic!("{sent}: {errors:?}"));
            assert_eq!(e.occurred_at.as_deref(), Some(stored), "{sent}");
        }
        for bad in [
            json!("2026-01-31"),
            json!("2026-01-31T12:00:00.1234567Z"),
            json!("yesterday"),
            json!(1),
            json!("2026-06-30T12:34:60Z"),
            json!("2026-06-30T23:59:60.5+02:00"),
        ] {
            let mut v = minimal();
            v["occurredAt"] = bad.clone();
            let mut errors = Vec::new();
            assert!(event(&v, "", &mut errors).is_none(), "{bad} accepted");
            assert_eq!(errors[0].field, "occurredAt", "{bad}");
        }
    }

    #[test]
    fn tags_and_nested_strings_obey_the_limits() {
        let long = "x".repeat(MAX_TEXT + 1);
        let mut v = minimal();
        v["metadata"]["tags"] = json!({"ok": "x".repeat(MAX_TEXT), "big": long, "y".repeat(257): "long name"});
        v["actor"]["attributes"] = json!({"a": [1, {"deep": long}]});
        v["resource"]["after"] = json!([long]);
        v["resource"]["before"] = json!({ long.clone(): 1 });
        let mut errors = Vec::new();
        assert!(event(&v, "", &mut errors).is_none());
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        let before = format!("resource.before.{}", "x".repeat(64));
        let tag = format!("metadata.tags.{}", "y".repeat(257));
        assert_eq!(fields, ["actor.attributes.a[1].deep", "metadata.tags.big", &tag, "resource.after[0]", &before]);
        // Names the search's tag filter could never take.
        let mut unsearchable = minimal();
        unsearchable["metadata"]["tags"] = json!({"k=v": "x", "": "e"});
        let mut errors = Vec::new();
        assert!(event(&unsearchable, "", &mut errors).is_none());
        let mut fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["metadata.tags", "metadata.tags.k=v"]);
        let mut ok = minimal();
        ok["metadata"]["tags"] = json!({"k": "x".repeat(MAX_TEXT)});
        ok["resource"]["after"] = json!({"s": "x".repeat(MAX_TEXT)});
        assert!(event(&ok, "", &mut Vec::new()).is_some());
    }

    #[test]
    fn lists_every_invalid_field() {
        let mut errors = Vec::new();
        let v = json!({"actor": {"id": "", "type": 3}, "action": {}, "metadata": {"source": "s", "tenantId": "a b"}});
        assert!(event(&v, "", &mut errors).is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["resource", "actor.id", "actor.type", "action.type", "resource.id", "resource.type", "metadata.tenantId"]
        );
    }

    #[test]
    fn accepts_a_full_event() {
        let mut errors = Vec::new();
        let v = json!({
            "actor": {"id": "u1", "type": "USER", "attributes": {"k": [1, 2]}},
            "action": {"type": "LOGIN", "description": null},
            "resource": {"id": "r1", "type": "DOC", "before": 1, "after": {"x": null}},
            "metadata": {"source": "web", "tenantId": "acme", "tags": {"env": "prod"}}
        });
        let e = event(&v, "", &mut errors).expect("valid");
        assert!(errors.is_empty());
        assert_eq!(e.metadata.tenant_id, "acme");
    }

    #[test]
    fn refuses_unknown_fields() {
        let mut errors = Vec::new();
        let v = json!({
            "actor": {"id": "u1", "type": "USER", "role": "x"},
            "action": {"type": "LOGIN"},
            "resource": {"id": "r1", "type": "DOC"},
            "metadata": {"source": "web", "tenantId": "acme", "tenantID": "other"},
            "occuredAt": "2026-01-01T00:00:00Z"
        });
        assert!(event(&v, "", &mut errors).is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["occuredAt", "actor.role", "metadata.tenantID"]);
        assert!(batch(&json!({"events": [], "extra": 1})).is_err());
    }
}
