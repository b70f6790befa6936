//! `POST /api/v1/search` (see [`crate::search`]).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::input::QueryBody;
use crate::search::query::{self, Search, SearchRequest, SearchResponse};

/// Full-text and filtered search of one tenant's events, with aggregations and pagination. From
/// the search index when one is configured and answers, else from the database (`backend` says
/// which; the filters, the full-text rule and the aggregations are the same).
#[utoipa::path(
    post, path = "/api/v1/search", tag = "events", request_body = SearchRequest,
    responses(
        (status = 200, description = "A page of matching events, newest first by default", body = SearchResponse),
        (status = 400, description = "Invalid request", body = audit_api::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = audit_api::ErrorBody),
        (status = 403, description = "Key not allowed for the tenant", body = audit_api::ErrorBody),
        (status = 413, description = "Body larger than 10 MiB", body = audit_api::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = audit_api::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn search(
    State(state): State<AppState>,
    Caller(scope): Caller,
    QueryBody(body): QueryBody,
) -> Result<Json<SearchResponse>, ApiError> {
    // The path of the member that does not fit (`limit`, `aggregations[0]`), in `details` as every
    // other 400 of the API; serde stops at the first, the rules of [`Search::parse`] list them all.
    let request: SearchRequest = serde_path_to_error::deserialize(&body).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ApiError::invalid(vec![audit_api::FieldError { field, message: e.into_inner().to_string() }])
    })?;
    let s = Search::parse(request, super::events::time).map_err(|errors| {
        ApiError::invalid(errors.into_iter().map(|(field, message)| audit_api::FieldError { field, message }).collect())
    })?;
    scope.require(&s.tenant)?;
    if let Some(client) = &state.search {
        let answer = async {
            let mut page = query::from_es(&s, &client.search(&query::es_body(&s)).await?)?;
            if let Some(body) = query::es_aggregations_body(&s) {
                page.aggregations = query::from_es(&s, &client.search(&body).await?)?.aggregations;
            }
            Ok::<_, String>(page)
        };
        match answer.await {
            Ok(r) => return Ok(Json(r)),
            Err(e) => {
                state.metrics.search.fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "search: the index did not answer, answering from the database");
            }
        }
    }
    Ok(Json(query::from_database(&state.store, &s).await?))
}
