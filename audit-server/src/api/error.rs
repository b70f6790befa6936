//! Every error leaves as JSON `{error, message, details?}` with the right status.

use audit_api::{ErrorBody, FieldError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::appender::AppendError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Vec<FieldError>>,
    /// Extra response headers (the rate limiter's Retry-After and RateLimit-*).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, headers: Vec::new() }
    }

    pub fn invalid(details: Vec<FieldError>) -> Self {
        let n = details.len();
        ApiError {
            details: Some(details),
            ..Self::bad_request(format!("the request has {n} invalid field{}", if n == 1 { "" } else { "s" }))
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError { field: field.to_owned(), message: message.into() }])
    }

    /// A query string that does not deserialize: the parameter named when serde names it (unknown,
    /// repeated, or a value of the wrong type), in `details` as every other 400.
    pub fn query(rejection: axum::extract::rejection::QueryRejection) -> Self {
        let text = rejection.body_text();
        let message = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned();
        // serde's messages quote the field as `name`; an unknown one is listed after "expected".
        let field = message.split('`').nth(1).filter(|_| message.contains("field `")).unwrap_or("").to_owned();
        Self::invalid(vec![FieldError { field, message }])
    }

    pub fn forbidden_tenant(tenant: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", format!("this API key is not allowed for tenant {tenant:?}"))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; nothing was stored, retry later",
                )
            }
            StoreError::CommitUnknown(m) => {
                tracing::error!(error = %m, "commit outcome unknown");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "commit_outcome_unknown",
                    "the database failed during COMMIT: the events may or may not be stored; retry with the same \
                     Idempotency-Key (safe), or verify before retrying without one",
                )
            }
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error (logged on the server)")
            }
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Overloaded => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the append queue is full; nothing was stored, retry after the Retry-After delay",
            ),
            AppendError::TimedOut => Self::timeout(),
            AppendError::Store(e) => e.into(),
        }
    }
}

impl ApiError {
    /// The request deadline passed before anything was written.
    pub fn timeout() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request timed out; nothing was stored, retry later")
    }
}

/// Characters of a field path, and of a message, in an error body.
const MAX_FIELD: usize = 200;
const MAX_MESSAGE: usize = 1000;

/// `text` cut to `max` characters, `...` and the number of characters left out marking the cut.
fn clip(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some((at, _)) => {
            let left = text[at..].chars().count();
            format!("{}... ({left} more characters)", &text[..at])
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        // Field paths and messages can quote what the client sent (a member name of 4,097
        // characters, an unknown key): an error names it, it does not echo it back in full.
        let details = self.details.map(|d| {
            d.into_iter()
                .map(|f| FieldError { field: clip(f.field, MAX_FIELD), message: clip(f.message, MAX_MESSAGE) })
                .collect()
        });
        let body = ErrorBody { error: self.code.to_owned(), message: clip(self.message, MAX_MESSAGE), details };
        let mut response = (self.status, Json(body)).into_response();
        if retry {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn long_quotes_are_clipped_by_characters() {
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("0123456789".into(), 10), "0123456789");
        assert_eq!(clip("ééééé".into(), 3), "ééé... (2 more characters)");
        assert_eq!(clip("x".repeat(4097), 200), format!("{}... (3897 more characters)", "x".repeat(200)));
    }
}
