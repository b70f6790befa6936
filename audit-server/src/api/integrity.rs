//! Signed checkpoints, the public key that verifies them, and the NDJSON export that offline
//! verifiers (`audctl verify`, the README's Python recipe) check against them.

use audit_api::ErrorBody;
use audit_api::checkpoint::{CheckpointList, Diverged, PublicKeyInfo};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::events::required_tenant;
use crate::checkpoint::{CheckpointError, Signer};
use crate::store::ListQuery;

fn signer(state: &AppState) -> Result<&Signer, ApiError> {
    state.signer.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "checkpoints_not_configured",
            "this server has no checkpoint signing key (AUDIT_SIGNING_KEY_FILE)",
        )
    })
}

/// The Ed25519 public key that verifies checkpoints (no API key needed: it is public).
#[utoipa::path(
    get, path = "/api/v1/integrity/public-key", tag = "integrity",
    responses(
        (status = 200, description = "The public key", body = PublicKeyInfo),
        (status = 404, description = "No signing key configured", body = ErrorBody),
    )
)]
pub async fn public_key(State(state): State<AppState>) -> Result<Json<PublicKeyInfo>, ApiError> {
    Ok(Json(signer(&state)?.public_key()))
}

/// Query of `GET /integrity/checkpoints`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantParams {
    /// The tenant (optional: default every tenant the key may read).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]+$")]
    tenant_id: Option<String>,
}

/// Sign and publish a checkpoint of the current chain head of one tenant, or of every tenant the
/// key may read. Refused (409) when the tenant's chain no longer contains its latest published
/// checkpoint; for every tenant, such tenants are listed in `diverged` and the others signed.
#[utoipa::path(
    get, path = "/api/v1/integrity/checkpoints", tag = "integrity", params(TenantParams),
    responses(
        (status = 200, description = "Signed checkpoints", body = CheckpointList),
        (status = 400, description = "Invalid tenantId", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = ErrorBody),
        (status = 404, description = "No signing key configured", body = ErrorBody),
        (status = 409, description = "The tenant's chain diverged from its published checkpoint (tenantId given)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn checkpoints(
    State(state): State<AppState>,
    Caller(scope): Caller,
    params: Result<Query<TenantParams>, QueryRejection>,
) -> Result<Json<CheckpointList>, ApiError> {
    let Query(p) = params.map_err(ApiError::query)?;
    let signer = signer(&state)?;
    let tenant = match p.tenant_id.as_deref() {
        Some(t) => {
            let t = required_tenant(Some(t))?;
            scope.require(&t)?;
            Some(t)
        }
        None => None,
    };
    let one_tenant = tenant.is_some();
    let heads = state.store.heads().await?;
    let mut wanted: Vec<(String, Option<(i64, String)>)> = heads
        .into_iter()
        .filter(|(t, _, _)| tenant.as_ref().map_or(scope.allows(t), |want| want == t))
        .map(|(t, s, h)| (t, Some((s, h))))
        .collect();
    if let Some(t) = tenant
        && wanted.is_empty()
    {
        wanted.push((t, None));
    }
    let mut out = CheckpointList { checkpoints: Vec::with_capacity(wanted.len()), diverged: Vec::new() };
    for (t, head) in wanted {
        match signer.checkpoint(&state.store, &t, head).await {
            Ok(cp) => out.checkpoints.push(cp),
            Err(CheckpointError::Diverged(m)) => {
                tracing::error!(tenant = t, problem = %m, "refusing to sign a checkpoint");
                // One tenant's divergence must not leave every other tenant unanchored: when all
                // were asked for, the others are signed and this one is listed apart.
                if one_tenant {
                    return Err(ApiError::new(StatusCode::CONFLICT, "chain_diverged", format!("tenant {t:?}: {m}")));
                }
                out.diverged.push(Diverged { tenant_id: t, problem: m });
            }
            Err(CheckpointError::Store(e)) => return Err(e.into()),
            Err(CheckpointError::Io(e)) => {
                tracing::error!(error = %format!("{e:#}"), "publishing a checkpoint");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error (logged on the server)",
                ));
            }
        }
    }
    Ok(Json(out))
}

/// Query of `GET /events/export`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportParams {
    /// The tenant whose events to export (required).
    #[param(required = true, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]+$")]
    tenant_id: Option<String>,
}

/// Every event of a tenant in chain order, one JSON object per line (NDJSON), streamed: the
/// input of offline verification.
#[utoipa::path(
    get, path = "/api/v1/events/export", tag = "events", params(ExportParams),
    responses(
        (status = 200, description = "NDJSON, one stored event per line, in sequence order", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "Missing or invalid tenantId", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    Caller(scope): Caller,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(ApiError::query)?;
    let tenant = required_tenant(p.tenant_id.as_deref())?;
    scope.require(&tenant)?;
    // One page of 1000 at a time, following the last sequence: appends only add after it.
    let pages = futures_util::stream::unfold(Some(0i64), move |after| {
        let state = state.clone();
        let tenant = tenant.clone();
        async move {
            let after = after?;
            let q = ListQuery { tenant_id: tenant, limit: 1000, after_sequence: Some(after), ..ListQuery::default() };
            match state.store.list(&q).await {
                Ok((events, more)) => {
                    let mut text = String::new();
                    for e in &events {
                        text.push_str(&serde_json::to_string(e).unwrap_or_default());
                        text.push('\n');
                    }
                    let next = match events.last() {
                        Some(last) if more => Some(last.sequence),
                        _ => None,
                    };
                    Some((Ok::<_, std::io::Error>(Bytes::from(text)), next))
                }
                Err(e) => {
                    tracing::error!(error = %e, "export failed mid-stream");
                    Some((Err(std::io::Error::other("export failed")), None))
                }
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(pages)).into_response())
}
