//! The events API: append (single and batch), read, list with keyset pagination, verify.

use audit_api::{
    BatchResponse, ErrorBody, EventPage, EventReceipt, MAX_PAGE_LIMIT, NewEvent, StoredEvent, VerifyReport,
};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::auth::{Caller, charge_events};
use super::error::ApiError;
use super::input::{self, JsonBody};
use super::{AppState, Deadline};
use crate::chain;
use crate::store::{AppendJob, Idempotency, JobOutcome, ListQuery};

/// Append one event to its tenant's chain; 201 once committed.
#[utoipa::path(
    post, path = "/api/v1/events", tag = "events", request_body = NewEvent,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]+$", description = "Retry key: the same key returns the original result"),
        ("signed" = Option<bool>, Query, description = "true: each receipt carries the signed checkpoint of its own link (400 when the server has no signing key)"),
    ),
    responses(
        (status = 201, description = "Committed", body = EventReceipt),
        (status = 400, description = "Invalid fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused for a different request", body = ErrorBody),
        (status = 413, description = "Body over 10 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Not stored: database unavailable, lock or request timeout, or overloaded (Retry-After)", body = ErrorBody),
        (status = 500, description = "commit_outcome_unknown: retry with the same Idempotency-Key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn post_event(
    State(state): State<AppState>,
    Caller(scope): Caller,
    headers: HeaderMap,
    Extension(Deadline(deadline)): Extension<Deadline>,
    params: Result<Query<AppendParams>, QueryRejection>,
    JsonBody(body, size): JsonBody,
) -> Result<Response, ApiError> {
    let sign = receipt_signer(&state, params)?;
    let mut errors = Vec::new();
    let Some(event) = input::event(&body, "", &mut errors) else {
        charge_events(&state, &scope, 1).await?;
        return Err(ApiError::invalid(errors));
    };
    charge_events(&state, &scope, 1).await?;
    let tenant = event.metadata.tenant_id.clone();
    scope.require(&tenant)?;
    let key = input::idempotency_key(&headers)?;
    let events = vec![event];
    let outcome = append(&state, &tenant, events, key, "single", size, deadline).await?;
    let (mut receipts, replayed) = outcome;
    sign_receipts(sign, &tenant, &mut receipts);
    let receipt = receipts.into_iter().next().ok_or_else(|| ApiError::bad_request("nothing stored"))?;
    Ok(created(Json(receipt), replayed))
}

/// Append up to 1000 events of one tenant atomically; per-event receipts in request order.
#[utoipa::path(
    post, path = "/api/v1/events/batch", tag = "events", request_body = audit_api::BatchRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]+$", description = "Retry key: the same key returns the original result"),
        ("signed" = Option<bool>, Query, description = "true: each receipt carries the signed checkpoint of its own link (400 when the server has no signing key)"),
    ),
    responses(
        (status = 201, description = "Committed", body = BatchResponse),
        (status = 400, description = "Invalid fields", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused for a different request", body = ErrorBody),
        (status = 413, description = "Body over 10 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "Not stored: database unavailable, lock or request timeout, or overloaded (Retry-After)", body = ErrorBody),
        (status = 500, description = "commit_outcome_unknown: retry with the same Idempotency-Key", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn post_batch(
    State(state): State<AppState>,
    Caller(scope): Caller,
    headers: HeaderMap,
    Extension(Deadline(deadline)): Extension<Deadline>,
    params: Result<Query<AppendParams>, QueryRejection>,
    JsonBody(body, size): JsonBody,
) -> Result<Response, ApiError> {
    let sign = receipt_signer(&state, params)?;
    let events = match input::batch(&body) {
        Ok(events) => events,
        Err(e) => {
            charge_events(&state, &scope, 1).await?;
            return Err(e);
        }
    };
    // The rate limit counts events: a batch of 100 costs 100.
    charge_events(&state, &scope, events.len()).await?;
    let tenant = events[0].metadata.tenant_id.clone();
    scope.require(&tenant)?;
    let key = input::idempotency_key(&headers)?;
    let (mut results, replayed) = append(&state, &tenant, events, key, "batch", size, deadline).await?;
    sign_receipts(sign, &tenant, &mut results);
    Ok(created(Json(BatchResponse { count: results.len(), results }), replayed))
}

/// Query of the POST routes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendParams {
    signed: Option<bool>,
}

/// The signer when `?signed=true` asks for signed receipts; refused before anything is queued
/// when the server has no key.
fn receipt_signer(
    state: &AppState,
    params: Result<Query<AppendParams>, QueryRejection>,
) -> Result<Option<std::sync::Arc<crate::checkpoint::Signer>>, ApiError> {
    let Query(p) = params.map_err(ApiError::query)?;
    if p.signed != Some(true) {
        return Ok(None);
    }
    match &state.signer {
        Some(s) => Ok(Some(s.clone())),
        None => Err(ApiError::field("signed", "this server has no signing key (AUDIT_SIGNING_KEY_FILE)")),
    }
}

/// Signed after COMMIT, outside the append transaction (one Ed25519 signature per event: opt-in).
fn sign_receipts(
    signer: Option<std::sync::Arc<crate::checkpoint::Signer>>,
    tenant: &str,
    receipts: &mut [EventReceipt],
) {
    let Some(signer) = signer else { return };
    for r in receipts {
        r.checkpoint = Some(signer.sign_at(tenant, r.sequence, &r.hash, &r.timestamp));
    }
}

async fn append(
    state: &AppState,
    tenant: &str,
    events: Vec<NewEvent>,
    key: Option<String>,
    kind: &str,
    size: usize,
    deadline: tokio::time::Instant,
) -> Result<(Vec<EventReceipt>, bool), ApiError> {
    let idempotency = key.map(|key| {
        // What was asked, independent of JSON formatting: a retry must ask the same thing.
        let canonical = chain::canonical_json(&serde_json::to_value(&events).unwrap_or_default());
        Idempotency { key, fingerprint: chain::link_hash(&canonical, kind) }
    });
    match state.appender.submit(tenant, AppendJob { events, idempotency }, size, deadline).await? {
        JobOutcome::Stored(r) => Ok((r, false)),
        JobOutcome::Replayed(r) => Ok((r, true)),
        JobOutcome::KeyConflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request",
        )),
    }
}

fn created(body: impl IntoResponse, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, body).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// One stored event.
#[utoipa::path(
    get, path = "/api/v1/events/{id}", tag = "events",
    params(("id" = String, Path, format = Uuid, description = "Event id (UUID)")),
    responses(
        (status = 200, description = "The event", body = StoredEvent),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such event, or one of a tenant the key may not read", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_event(
    State(state): State<AppState>,
    Caller(scope): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StoredEvent>, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::field("id", e.body_text()))?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::field("id", "must be a UUID"))?;
    // Another tenant's event is answered exactly like a missing one: a key learns nothing about
    // events (or tenants) it may not read.
    // The cache holds the stored event, tenant included: the same scope check applies to it.
    let cached = match &state.event_cache {
        Some(cache) => cache.get(id).await,
        None => None,
    };
    let event = match cached {
        Some(event) => Some(event),
        None => {
            let event = state.store.get(id).await?;
            if let (Some(cache), Some(e)) = (&state.event_cache, &event) {
                cache.put(e);
            }
            event
        }
    };
    match event {
        Some(event) if scope.allows(&event.metadata.tenant_id) => Ok(Json(event)),
        _ => Err(ApiError::not_found(format!("no event {id}"))),
    }
}

/// Filters of `GET /events`. All optional except `tenantId`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    /// The tenant whose events to list (required).
    #[param(required = true, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]+$")]
    tenant_id: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    actor_id: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    resource_id: Option<String>,
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    action_type: Option<String>,
    /// RFC 3339, inclusive (years 1 to 9999).
    #[param(format = DateTime)]
    from: Option<String>,
    /// RFC 3339, exclusive (years 1 to 9999).
    #[param(format = DateTime)]
    to: Option<String>,
    /// 1 to 1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// `asc` (default: chain order, oldest first) or `desc`.
    #[param(value_type = Option<Order>)]
    order: Option<String>,
}

/// Order of `GET /events`.
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

/// List a tenant's events in chain order with keyset pagination: pages stay stable while events
/// are appended (new events only ever come after the cursor in `asc` order, never before).
#[utoipa::path(
    get, path = "/api/v1/events", tag = "events", params(ListParams),
    responses(
        (status = 200, description = "A page", body = EventPage),
        (status = 400, description = "Invalid filters", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    Caller(scope): Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(p) = params.map_err(ApiError::query)?;
    let tenant = required_tenant(p.tenant_id.as_deref())?;
    let mut errors = Vec::new();
    let mut field = |name: &str, message: String| errors.push(audit_api::FieldError { field: name.into(), message });
    let limit = match p.limit.as_deref().map(str::parse::<u32>) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_PAGE_LIMIT).contains(&n) => n,
        Some(_) => {
            field("limit", format!("must be an integer from 1 to {MAX_PAGE_LIMIT}"));
            0
        }
    };
    let descending = match p.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            field("order", "must be asc or desc".into());
            false
        }
    };
    let from = p.from.as_deref().and_then(|v| time(v).map_err(|m| field("from", m)).ok());
    let to = p.to.as_deref().and_then(|v| time(v).map_err(|m| field("to", m)).ok());
    let after_sequence =
        p.cursor.as_deref().and_then(|c| decode_cursor(c, descending).map_err(|m| field("cursor", m)).ok());
    for (name, v) in [("actorId", &p.actor_id), ("resourceId", &p.resource_id), ("actionType", &p.action_type)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.chars().count() > 256 || v.chars().any(char::is_control)) {
            field(name, "must be 1 to 256 characters without control characters".into());
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    scope.require(&tenant)?;
    let q = ListQuery {
        tenant_id: tenant,
        actor_id: p.actor_id,
        resource_id: p.resource_id,
        action_type: p.action_type,
        from,
        to,
        limit,
        after_sequence,
        descending,
    };
    let (events, more) = state.store.list(&q).await?;
    let next_cursor = match events.last() {
        Some(last) if more => Some(encode_cursor(last.sequence, descending)),
        _ => None,
    };
    Ok(Json(EventPage { events, next_cursor }))
}

/// Query of `GET /integrity/verify`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyParams {
    /// The tenant whose chain to walk (required).
    #[param(required = true, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]+$")]
    tenant_id: Option<String>,
    /// A signed checkpoint of this tenant as returned by `/integrity/checkpoints` (its JSON, URL
    /// encoded), compared with the chain instead of the latest published one. Refused (400) unless
    /// it names the tenant and its signature checks with this server's public key.
    checkpoint: Option<String>,
    /// `true`: walk only the events after the last position verified intact (recorded by every
    /// intact walk when the server has a signing key), not the whole chain.
    incremental: Option<bool>,
}

/// Walk a tenant's chain and report the first broken link, if any, and how it compares with a
/// signed checkpoint (the one given, else the latest published one). With `Accept:
/// application/x-ndjson` the walk is streamed, not bounded by the request timeout: a line
/// `{"checked": N}` after each page, then the report as the last line.
#[utoipa::path(
    get, path = "/api/v1/integrity/verify", tag = "integrity", params(VerifyParams),
    responses(
        (status = 200, description = "Verification result (verified may be false); NDJSON progress lines then the report with Accept: application/x-ndjson", body = VerifyReport),
        (status = 400, description = "Missing or invalid tenantId, or a checkpoint that is not a valid signed checkpoint of the tenant", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn verify(
    State(state): State<AppState>,
    Caller(scope): Caller,
    headers: HeaderMap,
    params: Result<Query<VerifyParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(ApiError::query)?;
    let tenant = required_tenant(p.tenant_id.as_deref())?;
    scope.require(&tenant)?;
    let checkpoint = match p.checkpoint.as_deref() {
        Some(text) => Some(supplied_checkpoint(&state, &tenant, text)?),
        None => match &state.signer {
            Some(signer) => signer.latest_published(&tenant).map_err(|e| {
                tracing::error!(error = %e, tenant, "reading the latest published checkpoint");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error (logged on the server)")
            })?,
            None => None,
        },
    };
    let incremental = p.incremental.unwrap_or(false);
    let streamed = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streamed {
        let report = crate::integrity::verify_tenant(
            &state.store,
            state.signer.as_deref(),
            &tenant,
            checkpoint,
            incremental,
            &|_| {},
        )
        .await?;
        return Ok(Json(report).into_response());
    }
    // The walk runs in a task of its own: the response (headers, then a line per page) starts at
    // once, so neither the request timeout nor an idle proxy cuts a long walk.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let lines = tx.clone();
        let progress = move |checked: u64| {
            let _ = lines.send(format!("{{\"checked\":{checked}}}\n"));
        };
        let signer = state.signer.as_deref();
        let walk = crate::integrity::verify_tenant(&state.store, signer, &tenant, checkpoint, incremental, &progress);
        // A client that goes away stops the walk (its snapshot transaction rolls back on drop).
        let result = tokio::select! {
            r = walk => r,
            () = tx.closed() => {
                tracing::debug!(tenant, "streamed verification abandoned by its client");
                return;
            }
        };
        let last = match result {
            Ok(report) => serde_json::to_string(&report).unwrap_or_default(),
            Err(e) => {
                tracing::error!(tenant, error = %e, "streamed verification failed");
                let body = ErrorBody {
                    error: "unavailable".into(),
                    message: "the verification could not complete (database error, logged on the server)".into(),
                    details: None,
                };
                serde_json::to_string(&body).unwrap_or_default()
            }
        };
        let _ = tx.send(last + "\n");
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, std::io::Error>(axum::body::Bytes::from(line)), rx))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines))
        .into_response())
}

/// A checkpoint given by the client: the JSON of a signed checkpoint of `tenant` whose signature
/// checks with this server's key, else 400.
fn supplied_checkpoint(
    state: &AppState,
    tenant: &str,
    text: &str,
) -> Result<audit_api::checkpoint::SignedCheckpoint, ApiError> {
    let invalid = |m: String| ApiError::field("checkpoint", m);
    let cp: audit_api::checkpoint::SignedCheckpoint = serde_json::from_str(text).map_err(|e| {
        invalid(format!("must be the JSON of a signed checkpoint as returned by /integrity/checkpoints ({e})"))
    })?;
    let Some(signer) = &state.signer else {
        return Err(invalid(
            "this server has no signing key, so it cannot check a signed checkpoint (verify an export offline \
             with audctl verify)"
                .into(),
        ));
    };
    if cp.tenant_id != tenant {
        return Err(invalid(format!("is a signed checkpoint of tenant {:?}, not {tenant:?}", cp.tenant_id)));
    }
    signer.check(&cp).map_err(|e| invalid(format!("a signed checkpoint that does not verify: {e}")))?;
    Ok(cp)
}

pub(crate) fn required_tenant(v: Option<&str>) -> Result<String, ApiError> {
    match v {
        None => Err(ApiError::field("tenantId", "is required")),
        Some(t) if !input::valid_tenant(t) => {
            Err(ApiError::field("tenantId", "must be 1 to 128 characters among letters, digits and . _ - : @"))
        }
        Some(t) => Ok(t.to_owned()),
    }
}

/// RFC 3339 within years 1..=9999 (what both databases can compare).
pub(crate) fn time(v: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(v)
        .map_err(|e| format!("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z ({e})"))?
        .with_timezone(&Utc);
    if !(1..=9999).contains(&t.year()) {
        return Err("must be between years 1 and 9999".into());
    }
    // Timestamps are stored to the microsecond: a finer bound would be compared cut short, and
    // `to` one nanosecond past an event would exclude it.
    if t.nanosecond() % 1000 != 0 {
        return Err("must not be more precise than a microsecond (timestamps are stored to the microsecond)".into());
    }
    if t.nanosecond() >= 1_000_000_000 {
        return Err("must not be a leap second (second 60)".into());
    }
    Ok(t)
}

/// The sequence of the last event of the page: the next page continues after it (`asc`) or
/// below it (`desc`). Plain digits, so the OpenAPI document can declare exactly what is accepted.
fn encode_cursor(sequence: i64, _descending: bool) -> String {
    sequence.to_string()
}

fn decode_cursor(cursor: &str, _descending: bool) -> Result<i64, String> {
    match cursor.parse::<i64>() {
        Ok(n) if !cursor.is_empty() && cursor.len() <= 18 && cursor.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err("is not a cursor returned by this API (1 to 18 digits)".to_owned()),
    }
}
