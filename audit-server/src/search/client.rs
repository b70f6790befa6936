//! The search cluster as the server uses it: an index template designed for the filters, monthly
//! indices, bulk indexing with per-item results, and raw searches. Plain REST paths that
//! Elasticsearch 8 and OpenSearch 2 both serve.

use std::collections::BTreeMap;
use std::time::Duration;

use audit_api::StoredEvent;
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Value, json};

use crate::config::SearchConfig;

pub struct SearchClient {
    es: Elasticsearch,
    prefix: String,
    timeout: Duration,
    settings: serde_json::Map<String, Value>,
}

/// Keyword fields (exact filters and aggregations) and text fields (full text) of a document.
const KEYWORDS: [&str; 9] =
    ["id", "tenantId", "actorId", "actorType", "actionType", "actionCategory", "resourceType", "resourceId", "source"];
pub const TEXT_FIELDS: [&str; 3] = ["description", "actorName", "resourceName"];

impl SearchClient {
    pub fn new(c: &SearchConfig) -> anyhow::Result<Self> {
        let url = Url::parse(&c.url).map_err(|e| anyhow::anyhow!("AUDIT_SEARCH_URL: {e}"))?;
        let mut b = TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(c.timeout);
        if let (Some(user), Some(password)) = (&c.username, &c.password) {
            b = b.auth(Credentials::Basic(user.clone(), password.expose().to_owned()));
        }
        if let Some(path) = &c.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading AUDIT_SEARCH_CA_FILE {}: {e}", path.display()))?;
            let ca = Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("AUDIT_SEARCH_CA_FILE {}: not a PEM certificate: {e}", path.display()))?;
            b = b.cert_validation(CertificateValidation::Full(ca));
        }
        let transport = b.build().map_err(|e| anyhow::anyhow!("search client: {e}"))?;
        Ok(SearchClient {
            es: Elasticsearch::new(transport),
            prefix: c.index_prefix.clone(),
            timeout: c.timeout,
            settings: c.index_settings.clone(),
        })
    }

    /// The monthly index of an event (`<prefix>-YYYY.MM`, by its storage timestamp).
    pub fn index_of(&self, timestamp: &str) -> String {
        let month = timestamp.get(..7).unwrap_or("0000-00").replace('-', ".");
        format!("{}-{month}", self.prefix)
    }

    /// Every index of the events (the template's pattern).
    pub fn pattern(&self) -> String {
        format!("{}-*", self.prefix)
    }

    /// Put the composable index template (idempotent): strict mappings, so a document that does
    /// not fit is refused instead of silently widening the mapping.
    pub async fn install_template(&self) -> Result<(), String> {
        let mut properties: BTreeMap<&str, Value> = BTreeMap::new();
        for k in KEYWORDS {
            properties.insert(k, json!({"type": "keyword"}));
        }
        for t in TEXT_FIELDS {
            properties.insert(t, json!({"type": "text"}));
        }
        properties.insert("correlationId", json!({"type": "keyword"}));
        properties.insert("tags", json!({"type": "keyword"}));
        properties.insert("sequence", json!({"type": "long"}));
        properties.insert("timestamp", json!({"type": "date"}));
        properties.insert("occurredAt", json!({"type": "date"}));
        // The event as stored, returned by searches; kept, not indexed.
        properties.insert("event", json!({"type": "object", "enabled": false}));
        let body = json!({
            "index_patterns": [self.pattern()],
            "priority": 200,
            "template": {"settings": self.settings, "mappings": {"dynamic": "strict", "properties": properties}},
            "_meta": {"managed_by": "audit-server"}
        });
        let path = format!("/_index_template/{}", self.prefix);
        self.call::<IgnoredAny>(Method::Put, &path, Some(body.to_string()), None).await.map(|_| ())
    }

    /// Index events in one bulk request: one result per event, in order (a 200 can carry failed
    /// items). Err: the request itself failed (nothing known of the items).
    pub async fn bulk(&self, events: &[StoredEvent]) -> Result<Vec<Result<(), String>>, String> {
        // Written straight from the events (no intermediate JSON values): on the 2-core bench,
        // the indexer's allocations showed among the server's top costs.
        let mut body = Vec::with_capacity(events.len() * 1024);
        for e in events {
            let action = BulkAction { index: BulkTarget { index: &self.index_of(&e.timestamp), id: &e.id } };
            serde_json::to_writer(&mut body, &action).map_err(|e| e.to_string())?;
            body.push(b'\n');
            serde_json::to_writer(&mut body, &document(e)).map_err(|e| e.to_string())?;
            body.push(b'\n');
        }
        let body = String::from_utf8(body).map_err(|e| e.to_string())?;
        // Only each item's status and error come back (filter_path), not its index, id, version
        // and shard counts: a smaller answer for the cluster to write and for us to read.
        let path = "/_bulk?filter_path=items.*.status,items.*.error";
        let answer: BulkAnswer = self.call(Method::Post, path, Some(body), Some("application/x-ndjson")).await?;
        if answer.items.len() != events.len() {
            return Err(format!("bulk answered {} items for {} events", answer.items.len(), events.len()));
        }
        Ok(answer
            .items
            .into_iter()
            .map(|item| match item.index.status {
                Some(200 | 201) => Ok(()),
                status => {
                    let reason = item.index.error.as_ref().and_then(|e| e["reason"].as_str()).unwrap_or("?");
                    Err(format!("status {status:?}: {reason}"))
                }
            })
            .collect())
    }

    /// A search over every index of the events.
    pub async fn search(&self, body: &Value) -> Result<Value, String> {
        let path = format!("/{}/_search?ignore_unavailable=true&allow_no_indices=true", self.pattern());
        self.call(Method::Post, &path, Some(body.to_string()), None).await
    }

    /// Make what was indexed visible to searches now (tests, tools; the cluster does it every second).
    pub async fn refresh(&self) -> Result<(), String> {
        self.call::<IgnoredAny>(Method::Post, &format!("/{}/_refresh", self.pattern()), None, None).await.map(|_| ())
    }

    /// A request whose 2xx answer is read as `T` (any other status is an error).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        kind: Option<&str>,
    ) -> Result<T, String> {
        let mut headers = HeaderMap::new();
        if let Some(k) = kind {
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(k).map_err(|e| e.to_string())?);
        }
        let r = self
            .es
            .send::<String, ()>(method, path, headers, None, body, Some(self.timeout))
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = r.status_code().as_u16();
        let text = r.text().await.map_err(|e| format!("{path}: reading the answer: {e}"))?;
        if !(200..300).contains(&status) {
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["reason"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(format!("{path}: status {status}: {reason}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{path}: unexpected answer: {e}"))
    }
}

#[derive(serde::Serialize)]
struct BulkAction<'a> {
    index: BulkTarget<'a>,
}

#[derive(serde::Serialize)]
struct BulkTarget<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a str,
}

#[derive(serde::Deserialize)]
struct BulkAnswer {
    items: Vec<BulkItem>,
}

#[derive(serde::Deserialize)]
struct BulkItem {
    index: BulkResult,
}

#[derive(serde::Deserialize)]
struct BulkResult {
    status: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
}

/// The document of an event: the filterable fields flattened, tags as `name=value` keywords, and
/// the event itself (what searches return).
pub fn document(e: &StoredEvent) -> Document<'_> {
    Document {
        id: &e.id,
        tenant_id: &e.metadata.tenant_id,
        sequence: e.sequence,
        timestamp: &e.timestamp,
        occurred_at: e.occurred_at.as_deref(),
        actor_id: &e.actor.id,
        actor_type: &e.actor.kind,
        actor_name: e.actor.name.as_deref(),
        action_type: &e.action.kind,
        action_category: e.action.category.as_deref(),
        description: e.action.description.as_deref(),
        resource_type: &e.resource.kind,
        resource_id: &e.resource.id,
        resource_name: e.resource.name.as_deref(),
        source: &e.metadata.source,
        correlation_id: e.metadata.correlation_id.as_deref(),
        tags: e.metadata.tags.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect(),
        event: e,
    }
}

/// A search document (see [`document`]); its fields are the index template's mappings.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document<'a> {
    id: &'a str,
    tenant_id: &'a str,
    sequence: i64,
    timestamp: &'a str,
    occurred_at: Option<&'a str>,
    actor_id: &'a str,
    actor_type: &'a str,
    actor_name: Option<&'a str>,
    action_type: &'a str,
    action_category: Option<&'a str>,
    description: Option<&'a str>,
    resource_type: &'a str,
    resource_id: &'a str,
    resource_name: Option<&'a str>,
    source: &'a str,
    correlation_id: Option<&'a str>,
    tags: Vec<String>,
    event: &'a StoredEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document as first written, through `json!`: the reference the typed one must equal.
    fn document_via_value(e: &StoredEvent) -> Value {
        let tags: Vec<String> = e.metadata.tags.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        json!({
            "id": e.id,
            "tenantId": e.metadata.tenant_id,
            "sequence": e.sequence,
            "timestamp": e.timestamp,
            "occurredAt": e.occurred_at,
            "actorId": e.actor.id,
            "actorType": e.actor.kind,
            "actorName": e.actor.name,
            "actionType": e.action.kind,
            "actionCategory": e.action.category,
            "description": e.action.description,
            "resourceType": e.resource.kind,
            "resourceId": e.resource.id,
            "resourceName": e.resource.name,
            "source": e.metadata.source,
            "correlationId": e.metadata.correlation_id,
            "tags": tags,
            "event": e,
        })
    }

    fn event(full: bool) -> StoredEvent {
        let mut v = json!({
            "id": "0b7c6f1e-4a53-4c61-9d0b-1f0e6c8a9d11", "sequence": 7, "timestamp": "2026-12-03T17:00:00.000000Z",
            "actor": {"id": "u-1", "type": "USER"},
            "action": {"type": "LOGIN"},
            "resource": {"id": "r-1", "type": "SESSION"},
            "metadata": {"source": "web", "tenantId": "acme"},
            "hash": "ab", "previousHash": "cd"
        });
        if full {
            v["occurredAt"] = json!("2026-12-03T16:59:59.000000Z");
            v["actor"]["name"] = json!("Ada \"the\" admin");
            v["action"]["description"] = json!("logged in, é 漢 \u{1F600}");
            v["action"]["category"] = json!("AUTH");
            v["resource"]["name"] = json!("s");
            v["resource"]["after"] = json!({"b": [1, 2.5, null], "a": true});
            v["metadata"]["correlationId"] = json!("c-9");
            v["metadata"]["tags"] = json!({"env": "prod", "team": "a=b"});
        }
        serde_json::from_value(v).expect("a valid stored event")
    }

    #[test]
    fn typed_document_equals_the_value_built_one() {
        for full in [false, true] {
            let e = event(full);
            let typed: Value = serde_json::to_value(document(&e)).expect("serializes");
            assert_eq!(typed, document_via_value(&e), "full = {full}");
        }
    }
}
