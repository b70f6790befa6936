//! Actuator endpoints (Spring Boot paths, which the seed's probes and ServiceMonitor use) and the
//! OpenAPI document.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use audit_api::Health;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::{ApiDoc, AppState};

pub async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn answer(status: StatusCode, details: BTreeMap<String, String>) -> Response {
    let word = if status.is_success() { "UP" } else { "OUT_OF_SERVICE" };
    let details = (!details.is_empty()).then_some(details);
    (status, Json(Health { status: word.into(), details })).into_response()
}

/// The process serves requests (no dependency checks: a database outage must not restart pods).
pub async fn liveness() -> Response {
    answer(StatusCode::OK, BTreeMap::new())
}

/// Ready to take traffic: not shutting down and the database answers (migrations ran at start).
pub async fn readiness(State(state): State<AppState>) -> Response {
    let mut details = BTreeMap::new();
    let ok = check(&state, &mut details).await;
    answer(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, details)
}

/// Overall health: the same checks as readiness.
pub async fn health(state: State<AppState>) -> Response {
    readiness(state).await
}

async fn check(state: &AppState, details: &mut BTreeMap<String, String>) -> bool {
    details.insert("store".into(), state.store.kind().into());
    if state.draining.load(Ordering::SeqCst) {
        details.insert("shutdown".into(), "in progress".into());
        return false;
    }
    // Appends must be able to commit: a connection of the append pool answers and the database
    // takes writes. The cause goes to the log only: these endpoints are unauthenticated.
    match tokio::time::timeout(Duration::from_secs(2), state.store.writable()).await {
        Ok(Ok(())) => {
            details.insert("database".into(), "UP".into());
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: appends cannot commit");
            details.insert("database".into(), "DOWN".into());
            false
        }
        Err(_) => {
            tracing::warn!("readiness: the database did not answer within 2 s");
            details.insert("database".into(), "DOWN".into());
            false
        }
    }
}

pub async fn prometheus(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(state.store.pool_usage(), state.appender.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
