//! Wire types of the Audit Trail events API (JSON, camelCase, under /api/v1).
//!
//! Shared by the server (which derives its OpenAPI document from them with the `openapi` feature)
//! and audctl's smoke and load verbs. Serde only: identifiers and timestamps travel as strings
//! (UUID and RFC 3339 with microseconds, UTC, `Z` suffix) so this crate pulls in nothing heavy.

pub mod canonical;
pub mod checkpoint;
pub mod strict;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Path prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";
/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header making a POST safe to retry: the same key returns the original result.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Largest accepted request body (the seed's ingress `proxy-body-size: 10m`).
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Most events in one `POST /events/batch`.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Largest page of `GET /events`.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// What the server accepts for ids and types (`actor.id`, `action.type`, ...): not blank, no
/// control characters (ECMA-262 regex). The OpenAPI attributes repeat these literals (utoipa takes
/// no constants there); the server's tests check the served document against them.
pub const ID_PATTERN: &str =
    r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$";
/// What the server accepts for `tenantId` (1 to 128 characters).
pub const TENANT_PATTERN: &str = "^[A-Za-z0-9._:@-]+$";
/// What the server accepts for an `Idempotency-Key` header (1 to 255 characters).
pub const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\x21-\x7E]+$";

/// `previousHash` of the first event of every tenant's chain.
pub const GENESIS: &str = "GENESIS";

// With `openapi` (the server), request types deny unknown fields, which the OpenAPI document
// declares as `additionalProperties: false`: the server refuses them (see its README); clients
// built without the feature stay lenient when reading answers.

/// Who did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Actor {
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    pub id: String,
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    #[serde(rename = "type")]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub attributes: Option<BTreeMap<String, Value>>,
}

/// What was done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Action {
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    #[serde(rename = "type")]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// What it was done to, optionally with its state before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Resource {
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    pub id: String,
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    #[serde(rename = "type")]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub after: Option<Value>,
}

/// Where the event comes from; `tenantId` selects the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct Metadata {
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 256,
            pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
        )
    )]
    pub source: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]+$"))]
    pub tenant_id: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Names of at most 256 characters, values of at most 4096.
    #[cfg_attr(feature = "openapi", schema(schema_with = tags_schema))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// `metadata.tags`: an object of strings, with the limits the server enforces.
#[cfg(feature = "openapi")]
fn tags_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let string = |max: usize| ObjectBuilder::new().schema_type(Type::String).max_length(Some(max));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(string(4096)))
        // The names the search's `tags` filter accepts: no empty name, no '='.
        .property_names(Some(string(256).min_length(Some(1)).pattern(Some("^[^=]+$")).build()))
        .build()
}

/// Body of `POST /events` (and each element of a batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct NewEvent {
    /// When it happened, by the client's clock (RFC 3339; stored normalised to UTC with six
    /// fractional digits and `Z`, and hashed like every other field). `timestamp` stays the
    /// server's time of storage.
    #[cfg_attr(feature = "openapi", schema(format = DateTime, max_length = 64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    pub actor: Actor,
    pub action: Action,
    pub resource: Resource,
    pub metadata: Metadata,
}

/// Body of `POST /events/batch`: all events must carry the same `metadata.tenantId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", serde(deny_unknown_fields))]
pub struct BatchRequest {
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 1000))]
    pub events: Vec<NewEvent>,
}

/// Answer to a stored event (201), also replayed for a retried `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EventReceipt {
    pub id: String,
    pub sequence: i64,
    pub timestamp: String,
    pub hash: String,
    pub previous_hash: String,
    /// Always `STORED`: the event is committed.
    pub status: String,
    /// With `?signed=true`: the server's signed statement of this link, a checkpoint of the chain
    /// at this event (`issuedAt` is the event's `timestamp`), verifiable with the public key and
    /// usable as the `checkpoint` of `/integrity/verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<checkpoint::SignedCheckpoint>,
}

/// Answer to `POST /events/batch` (201): one receipt per event, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub count: usize,
    pub results: Vec<EventReceipt>,
}

/// A stored event as read back. Without `hash` and `previousHash`, its canonical form is what was
/// hashed (see the audit-server README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub id: String,
    pub sequence: i64,
    pub timestamp: String,
    /// As sent by the client, normalised (absent when it sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    pub actor: Actor,
    pub action: Action,
    pub resource: Resource,
    pub metadata: Metadata,
    pub hash: String,
    pub previous_hash: String,
}

/// One page of `GET /events`; pass `nextCursor` as `cursor` for the next one (absent on the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Answer to `GET /integrity/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub tenant_id: String,
    pub verified: bool,
    /// Links checked and found intact before the first broken one (all of them when verified).
    pub checked: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_broken_at: Option<BrokenLink>,
    /// The signed checkpoint the chain was compared with (the one given in the request, else the
    /// latest published one), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<checkpoint::SignedCheckpoint>,
    /// How the chain compares with `checkpoint` (present with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_match: Option<checkpoint::CheckpointMatch>,
    /// An incremental walk (`incremental=true`) started after this sequence, the last position
    /// verified before (absent: the walk started at the first event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_from: Option<i64>,
}

/// The first link of a chain that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BrokenLink {
    /// Position in the chain (1 = first event) where the chain breaks.
    pub sequence: i64,
    /// The stored event at that position, when there is one (absent for a deleted event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub reason: String,
}

/// Every error response: `error` is a stable machine code, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
}

/// One invalid field of a request: `field` is a dotted path such as `metadata.tenantId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Health answers (`UP`, `DOWN`, `OUT_OF_SERVICE`), Spring Boot actuator style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<BTreeMap<String, String>>,
}

#[cfg(feature = "client")]
pub mod client;
