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
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            details.insert("database".into(), "UP".into());
            true
        }
        Ok(Err(e)) => {
            details.insert("database".into(), format!("DOWN: {e}"));
            false
        }
        Err(_) => {
            details.insert("database".into(), "DOWN: no answer within 2 s".into());
            false
        }
    }
}

pub async fn prometheus(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(state.store.pool_usage());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
