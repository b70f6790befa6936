//! Signed checkpoints and offline verification of an export.
//!
//! A checkpoint states "tenant T's chain had `sequence` events and its last hash was `hash`", signed
//! by the server with Ed25519. Published outside the database (a directory, an object store, a
//! third party), it lets anyone detect what the database alone cannot: a tail cut with the chain
//! head moved back, a rewrite of every hash from some point on, a restore of an old backup or a
//! failover to a lagging replica (the sequence numbers get reused with other hashes).
//!
//! Signed bytes: the RFC 8785 canonical form of the checkpoint object without `signature`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical;

/// Tag of the only signature algorithm.
pub const ALGORITHM: &str = "Ed25519";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A signed statement of one tenant's chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SignedCheckpoint {
    pub tenant_id: String,
    /// Events in the chain (the sequence of its last event; 0 for an empty chain).
    pub sequence: i64,
    /// Hash of the event at `sequence` (`GENESIS` for an empty chain).
    pub hash: String,
    /// When the server signed it (RFC 3339 UTC).
    pub issued_at: String,
    /// First 16 hex digits of SHA-256 of the raw public key: which key signed.
    pub key_id: String,
    /// Base64 Ed25519 signature of the canonical form of the other members.
    pub signature: String,
}

/// How a chain compares with a signed checkpoint (`checkpointMatch` of a verify report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum CheckpointMatch {
    /// The event at the checkpoint's sequence carries the checkpoint's hash.
    Matched,
    /// The chain ends before the checkpoint's sequence: events were removed (a tail cut with the
    /// head moved back, or a rollback such as a restored old backup or a failover to a lagging
    /// replica, with nothing appended since).
    Truncated,
    /// Another event stands at the checkpoint's sequence: the chain was rewritten from there, or
    /// rolled back and then appended to (the sequence numbers were reused).
    Rewritten,
    /// The walk stopped at a broken link before the checkpoint's sequence.
    Unreached,
}

/// Answer to `GET /integrity/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CheckpointList {
    pub checkpoints: Vec<SignedCheckpoint>,
    /// Tenants left unsigned because their chain no longer contains their latest published
    /// checkpoint (only when every tenant was asked for; one tenant asked for is a 409). Absent
    /// when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diverged: Vec<Diverged>,
}

/// A tenant the server refused to sign a checkpoint for, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Diverged {
    pub tenant_id: String,
    pub problem: String,
}

/// Answer to `GET /integrity/public-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyInfo {
    /// Always `Ed25519`.
    pub algorithm: String,
    pub key_id: String,
    /// The 32-byte public key, base64.
    pub public_key: String,
    /// The same as a PEM SubjectPublicKeyInfo (`openssl pkey -pubin -in key.pem -text`).
    pub pem: String,
}

impl SignedCheckpoint {
    /// The bytes the signature covers.
    pub fn signed_text(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(map) = v.as_object_mut() {
            map.remove("signature");
        }
        canonical::to_string(&v)
    }

    /// Check the signature with a raw 32-byte Ed25519 public key.
    pub fn verify_signature(&self, public_key: &[u8]) -> Result<(), String> {
        let signature =
            STANDARD.decode(&self.signature).map_err(|e| format!("checkpoint signature is not base64: {e}"))?;
        if key_id(public_key) != self.key_id {
            return Err(format!(
                "checkpoint was signed by key {} but the public key given is {}",
                self.key_id,
                key_id(public_key)
            ));
        }
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
            .verify(self.signed_text().as_bytes(), &signature)
            .map_err(|_| "the checkpoint's signature does not verify with this public key".to_owned())
    }
}

/// `key_id` of a raw public key.
pub fn key_id(public_key: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public_key)[..8])
}

/// PEM SubjectPublicKeyInfo of a raw Ed25519 public key.
pub fn public_key_pem(public_key: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(der))
}

/// A raw 32-byte public key from text: a PEM `PUBLIC KEY`, the JSON of `GET /integrity/public-key`,
/// or base64 of the 32 bytes.
pub fn parse_public_key(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    if text.starts_with('{') {
        let info: PublicKeyInfo =
            serde_json::from_str(text).map_err(|e| format!("not the JSON of GET /integrity/public-key: {e}"))?;
        return parse_public_key(&info.public_key);
    }
    if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        let der = pem_body(text)?;
        return match der.strip_prefix(&SPKI_PREFIX[..]) {
            Some(key) if key.len() == 32 => Ok(key.to_vec()),
            _ => Err("the PEM public key is not an Ed25519 SubjectPublicKeyInfo".into()),
        };
    }
    match STANDARD.decode(text) {
        Ok(key) if key.len() == 32 => Ok(key),
        _ => Err("expected a PEM PUBLIC KEY, the JSON of GET /integrity/public-key, or base64 of 32 bytes".into()),
    }
}

/// The DER bytes of a one-block PEM file.
pub fn pem_body(text: &str) -> Result<Vec<u8>, String> {
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    STANDARD.decode(body).map_err(|e| format!("PEM body is not base64: {e}"))
}

/// Result of verifying an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    pub verified: bool,
    /// Links checked and intact before the first problem.
    pub checked: u64,
    /// Sequence of the last event read.
    pub last_sequence: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the chain contains the signed checkpoint's head (None: no checkpoint given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_matched: Option<bool>,
}

/// Walk an export in chain order and compare it with a checkpoint (its signature checked by the
/// caller). `events` are the parsed NDJSON lines.
pub struct ExportVerifier<'a> {
    checkpoint: Option<&'a SignedCheckpoint>,
    tenant: Option<String>,
    previous: String,
    expected: i64,
    checked: u64,
    broken: Option<(i64, String)>,
    matched: bool,
}

impl<'a> ExportVerifier<'a> {
    pub fn new(checkpoint: Option<&'a SignedCheckpoint>) -> Self {
        ExportVerifier {
            checkpoint,
            tenant: checkpoint.map(|c| c.tenant_id.clone()),
            previous: crate::GENESIS.to_owned(),
            expected: 1,
            checked: 0,
            broken: None,
            matched: checkpoint.is_some_and(|c| c.sequence == 0 && c.hash == crate::GENESIS),
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Fail the export at the next event for a reason found before its chain fields were read (a
    /// line whose JSON repeats a key: the hash covers only one of the values).
    pub fn reject(&mut self, reason: String) {
        if self.broken.is_none() {
            self.broken = Some((self.expected, reason));
        }
    }

    /// Check the next event of the export.
    pub fn check(&mut self, event: &Value) {
        if self.broken.is_some() {
            return;
        }
        let at = self.expected;
        let mut fail = |reason: String| self.broken = Some((at, reason));
        let sequence = event["sequence"].as_i64();
        let tenant = event["metadata"]["tenantId"].as_str().map(str::to_owned);
        let (Some(hash), Some(previous)) = (event["hash"].as_str(), event["previousHash"].as_str()) else {
            return fail("the event has no hash or previousHash".into());
        };
        if sequence != Some(at) {
            return fail(match sequence {
                Some(found) => format!("expected sequence {at}, found {found} (events missing or out of order)"),
                None => format!("expected sequence {at}, found no integer sequence"),
            });
        }
        match (&self.tenant, tenant) {
            (_, None) => return fail("the event has no metadata.tenantId".into()),
            // Before any link is checked the tenant expected is the checkpoint's: a first event of
            // another tenant means the two files do not go together, not a tampered event.
            (Some(t), Some(u)) if *t != u && self.checked == 0 && self.checkpoint.is_some() => {
                return fail(format!(
                    "the signed checkpoint is tenant {t:?}'s but the export's events are tenant {u:?}'s: give the \
                     checkpoint of tenant {u:?} (or the export of {t:?})"
                ));
            }
            (Some(t), Some(u)) if *t != u => return fail(format!("the event belongs to tenant {u:?}, not {t:?}")),
            (None, Some(u)) => self.tenant = Some(u),
            _ => {}
        }
        if previous != self.previous {
            return fail("previousHash does not match the hash of the preceding event".into());
        }
        if canonical::link_hash(&canonical::event_body(event), previous) != hash {
            return fail("hash does not match the event's content".into());
        }
        if let Some(cp) = self.checkpoint
            && cp.sequence == at
        {
            if cp.hash != hash {
                return fail(format!(
                    "event {at} differs from the signed checkpoint of {}: the chain was rewritten, or restored \
                     from another history (an old backup, a lagging replica)",
                    cp.issued_at
                ));
            }
            self.matched = true;
        }
        self.previous = hash.to_owned();
        self.expected += 1;
        self.checked += 1;
    }

    pub fn finish(mut self) -> ExportReport {
        let last = self.expected - 1;
        if self.broken.is_none()
            && let Some(cp) = self.checkpoint
            && cp.sequence > last
        {
            self.broken = Some((
                last + 1,
                format!(
                    "the chain ends at {last} but the signed checkpoint of {} covers {} events: events were \
                     removed (tail cut, rollback, or restore of an old backup)",
                    cp.issued_at, cp.sequence
                ),
            ));
        }
        ExportReport {
            verified: self.broken.is_none(),
            checked: self.checked,
            last_sequence: last,
            broken_at: self.broken.as_ref().map(|b| b.0),
            reason: self.broken.map(|b| b.1),
            checkpoint_matched: self.checkpoint.map(|_| self.matched),
        }
    }
}
