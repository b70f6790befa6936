//! A typed client of the events API (feature `client`), on reqwest with rustls.
//!
//! Every call returns the HTTP status and headers with the decoded body, so callers that verify
//! the service (audctl smoke) can judge the answer themselves; transport failures are `Err`.
//! The API key is sent as `X-API-Key` and never appears in `Debug` output or errors.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    API_KEY_HEADER, API_PREFIX, BatchRequest, BatchResponse, ErrorBody, EventPage, EventReceipt, Health, NewEvent,
    StoredEvent, VerifyReport,
};

/// Filters of `GET /events` (all optional except the tenant).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

/// The body of an answer: the expected type on success, the error body otherwise.
#[derive(Debug, Clone)]
pub enum Body<T> {
    Ok(T),
    Error(ErrorBody),
    /// Neither shape: the raw text and why it did not decode.
    Invalid {
        text: String,
        reason: String,
    },
}

/// One answer of the service.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Body<T>,
}

impl<T> Answer<T> {
    /// The decoded body when the status is `expected`.
    pub fn expect(self, expected: u16) -> Result<T, String> {
        match self.body {
            Body::Ok(v) if self.status == expected => Ok(v),
            Body::Ok(_) => Err(format!("HTTP {} (expected {expected})", self.status)),
            Body::Error(e) => Err(format!("HTTP {} {}: {}", self.status, e.error, e.message)),
            Body::Invalid { reason, .. } => Err(format!("HTTP {}: unexpected body ({reason})", self.status)),
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The request could not be built (bad URL, bad CA file).
    Config(String),
    /// Connect, TLS, timeout or I/O failure.
    Transport { connect: bool, timeout: bool, message: String },
}

impl std::error::Error for ClientError {}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Config(m) => f.write_str(m),
            ClientError::Transport { message, .. } => f.write_str(message),
        }
    }
}

impl ClientError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // The full source chain says what happened (refused, DNS, certificate expired...).
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ClientError::Transport { connect: e.is_connect(), timeout: e.is_timeout(), message }
    }
}

/// A client bound to one service.
#[derive(Clone)]
pub struct Client {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("key", &self.key.as_ref().map(|_| "***")).finish()
    }
}

impl Client {
    /// `base` such as `https://audit.example.com` (no trailing `/api/v1`); `tls` the rustls
    /// configuration of https connections (its roots and verifier: audctl adds `--ca` to them).
    pub fn new(
        base: &str,
        key: Option<String>,
        tls: rustls::ClientConfig,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| ClientError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Client { base: base.trim_end_matches('/').to_owned(), key, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client without its API key (to check that writes are refused).
    pub fn anonymous(&self) -> Client {
        Client { key: None, ..self.clone() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.key {
            Some(k) => r.header(API_KEY_HEADER, k),
            None => r,
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<Answer<T>, ClientError> {
        let resp = req.send().await.map_err(ClientError::from_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.map_err(ClientError::from_reqwest)?;
        let body = if (200..300).contains(&status) {
            match serde_json::from_str::<T>(&text) {
                Ok(v) => Body::Ok(v),
                Err(e) => Body::Invalid { text, reason: e.to_string() },
            }
        } else {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => Body::Error(e),
                Err(e) => Body::Invalid { text, reason: e.to_string() },
            }
        };
        Ok(Answer { status, headers, body })
    }

    /// `GET path` of any route, decoded as `T` (health, OpenAPI document as `serde_json::Value`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, ClientError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// `GET path` as text (e.g. `/actuator/prometheus`): status and body.
    pub async fn get_text(&self, path: &str) -> Result<(u16, String), ClientError> {
        let resp = self.request(reqwest::Method::GET, path).send().await.map_err(ClientError::from_reqwest)?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(ClientError::from_reqwest)?))
    }

    pub async fn liveness(&self) -> Result<Answer<Health>, ClientError> {
        self.get("/actuator/health/liveness").await
    }

    pub async fn readiness(&self) -> Result<Answer<Health>, ClientError> {
        self.get("/actuator/health/readiness").await
    }

    pub async fn post_event(&self, event: &NewEvent) -> Result<Answer<EventReceipt>, ClientError> {
        self.send(self.request(reqwest::Method::POST, &format!("{API_PREFIX}/events")).json(event)).await
    }

    pub async fn post_batch(&self, batch: &BatchRequest) -> Result<Answer<BatchResponse>, ClientError> {
        self.send(self.request(reqwest::Method::POST, &format!("{API_PREFIX}/events/batch")).json(batch)).await
    }

    pub async fn get_event(&self, id: &str) -> Result<Answer<StoredEvent>, ClientError> {
        self.get(&format!("{API_PREFIX}/events/{id}")).await
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Answer<EventPage>, ClientError> {
        self.send(self.request(reqwest::Method::GET, &format!("{API_PREFIX}/events")).query(query)).await
    }

    pub async fn verify(&self, tenant: &str) -> Result<Answer<VerifyReport>, ClientError> {
        self.send(
            self.request(reqwest::Method::GET, &format!("{API_PREFIX}/integrity/verify"))
                .query(&[("tenantId", tenant)]),
        )
        .await
    }
}
