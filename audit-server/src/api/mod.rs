//! HTTP routes, shared state, request metrics and the OpenAPI document.

pub mod auth;
pub mod error;
pub mod events;
pub mod input;
pub mod integrity;
mod ops;
pub mod search;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi;

use crate::appender::Appender;
use crate::metrics::Metrics;
use crate::store::Store;
use auth::{KeyRing, RateLimiter};
use error::ApiError;

pub struct Inner {
    pub store: Arc<Store>,
    pub appender: Arc<Appender>,
    pub keys: KeyRing,
    pub limiter: RateLimiter,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: readiness turns false at once.
    pub draining: AtomicBool,
    pub request_timeout: Duration,
    /// Signs checkpoints; None when no key is configured.
    pub signer: Option<Arc<crate::checkpoint::Signer>>,
    /// GET by id through Redis; None without Redis or with the cache off.
    pub event_cache: Option<Arc<crate::event_cache::EventCache>>,
    /// The search index; None: searches answer from the database.
    pub search: Option<Arc<crate::search::client::SearchClient>>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Audit Trail API", version = "1", description = "Hash-chained, append-only audit events."),
    paths(
        events::post_event,
        events::post_batch,
        events::get_event,
        events::list_events,
        events::verify,
        integrity::export,
        integrity::checkpoints,
        integrity::public_key,
        search::search
    ),
    components(schemas(events::Order)),
    modifiers(&ApiKeyScheme),
    tags((name = "events"), (name = "integrity"))
)]
pub struct ApiDoc;

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/events", post(events::post_event).get(events::list_events))
        .route("/events/batch", post(events::post_batch))
        .route("/search", post(search::search))
        .route("/events/export", get(integrity::export))
        .route("/integrity/checkpoints", get(integrity::checkpoints))
        .route("/integrity/public-key", get(integrity::public_key))
        .route("/events/{id}", get(events::get_event))
        .route("/integrity/verify", get(events::verify))
        .route("/openapi.json", get(ops::openapi));
    Router::new()
        .nest(audit_api::API_PREFIX, api)
        .route("/actuator/health", get(ops::health))
        .route("/actuator/health/liveness", get(ops::liveness))
        .route("/actuator/health/readiness", get(ops::readiness))
        .route("/actuator/prometheus", get(ops::prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(audit_api::MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

/// When the request must be answered. Appends handle it themselves ([`crate::appender`]): cut
/// off from outside, a request whose transaction has begun could answer 503 and still commit.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub tokio::time::Instant);

/// Per request: the timeout (503) and the `http_server_requests_seconds` observation.
async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let uri = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "UNKNOWN".into());
    let method = match *req.method() {
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::PATCH | Method::HEAD | Method::OPTIONS => {
            req.method().as_str().to_owned()
        }
        _ => "OTHER".to_owned(),
    };
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    req.extensions_mut().insert(Deadline(deadline));
    let append = req.method() == Method::POST && matches!(uri.as_str(), "/api/v1/events" | "/api/v1/events/batch");
    let response = if append {
        next.run(req).await
    } else {
        match tokio::time::timeout_at(deadline, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::timeout().into_response(),
        }
    };
    let status = response.status().as_u16();
    state.metrics.observe_request(&method, &uri, status, start.elapsed());
    if status >= 500 {
        tracing::warn!(%method, %uri, status, "request failed");
    }
    response
}
