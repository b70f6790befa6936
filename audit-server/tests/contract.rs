//! The served OpenAPI document declares the constraints the server enforces, so a client
//! generated from it does not send requests the server refuses. Checked on the document itself,
//! then by schemathesis (installed by `cargo xtask deps install` in the cache's virtualenv)
//! against the running server: every operation, all checks, no 5xx and no schema-valid request
//! refused.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{ADMIN_KEY, Api, Backend, Db};
use serde_json::Value;

fn param<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_declares_enforced_constraints() -> Result<()> {
    let db = Db::new(Backend::Sqlite, "contract").await?;
    let server = audit_server::spawn(db.config()).await?;
    let api = Api::of(&server);
    let doc: Value = api.http.get(api.url("/api/v1/openapi.json")).send().await?.json().await?;
    let schemas = &doc["components"]["schemas"];

    for (schema, field) in [
        ("Actor", "id"),
        ("Actor", "type"),
        ("Action", "type"),
        ("Resource", "id"),
        ("Resource", "type"),
        ("Metadata", "source"),
    ] {
        let f = &schemas[schema]["properties"][field];
        ensure!(f["minLength"] == 1 && f["maxLength"] == 256, "{schema}.{field}: {f}");
        ensure!(f["pattern"] == audit_api::ID_PATTERN, "{schema}.{field}: {f}");
    }
    for (schema, field) in [("Actor", "name"), ("Action", "description"), ("Metadata", "correlationId")] {
        ensure!(schemas[schema]["properties"][field]["maxLength"] == 4096, "{schema}.{field}");
    }
    let tenant = &schemas["Metadata"]["properties"]["tenantId"];
    ensure!(tenant["pattern"] == audit_api::TENANT_PATTERN && tenant["maxLength"] == 128, "{tenant}");
    let tags = &schemas["Metadata"]["properties"]["tags"];
    ensure!(
        tags["additionalProperties"]["maxLength"] == 4096 && tags["propertyNames"]["maxLength"] == 256,
        "tags: {tags}"
    );
    let occurred = &schemas["NewEvent"]["properties"]["occurredAt"];
    ensure!(occurred["format"] == "date-time", "occurredAt: {occurred}");
    for (path, method, name) in [
        ("/api/v1/events", "post", "signed"),
        ("/api/v1/events/batch", "post", "signed"),
        ("/api/v1/integrity/verify", "get", "incremental"),
    ] {
        let p = param(&doc, path, method, name);
        ensure!(p["schema"]["type"] == "boolean", "{path} {name}: {p}");
    }
    ensure!(param(&doc, "/api/v1/integrity/verify", "get", "checkpoint")["in"] == "query", "verify checkpoint");
    let events = &schemas["BatchRequest"]["properties"]["events"];
    ensure!(events["minItems"] == 1 && events["maxItems"] == 1000, "{events}");

    let limit = &param(&doc, "/api/v1/events", "get", "limit")["schema"];
    ensure!(limit["minimum"] == 1 && limit["maximum"] == 1000, "limit: {limit}");
    let order = &param(&doc, "/api/v1/events", "get", "order")["schema"];
    let order = if order["$ref"].is_string() { &schemas["Order"] } else { order };
    ensure!(order["enum"] == serde_json::json!(["asc", "desc"]), "order: {order}");
    for path in ["/api/v1/events", "/api/v1/integrity/verify"] {
        let t = param(&doc, path, "get", "tenantId");
        ensure!(t["required"] == true && t["schema"]["pattern"] == audit_api::TENANT_PATTERN, "{path} tenantId: {t}");
    }
    let id = param(&doc, "/api/v1/events/{id}", "get", "id");
    ensure!(id["schema"]["format"] == "uuid", "id: {id}");
    let key = param(&doc, "/api/v1/events", "post", "Idempotency-Key");
    ensure!(
        key["schema"]["pattern"] == audit_api::IDEMPOTENCY_KEY_PATTERN && key["schema"]["maxLength"] == 255,
        "{key}"
    );

    // Schemathesis (installed by `cargo xtask deps install`): no 5xx, no schema-valid request refused.
    let schemathesis = testbed::python_tool("schemathesis")?;
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::process::Command::new(&schemathesis)
            .args(["run", "--checks", "all", "--max-examples", "30", "--header"])
            .arg(format!("X-API-Key: {ADMIN_KEY}"))
            .arg(api.url("/api/v1/openapi.json"))
            .output(),
    )
    .await??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        ensure!(text.contains("Test Case ID:"), "schemathesis did not run:\n{text}");
        let unexpected = unexpected_failures(&text);
        ensure!(
            unexpected.is_empty(),
            "schemathesis found problems:\n{}\n\n{}",
            unexpected.join("\n---\n"),
            &text[text.len().saturating_sub(3000)..]
        );
    }
    server.shutdown().await
}

/// Rules JSON Schema cannot state, documented in the README: a batch holds one tenant, integers
/// beyond 2^53 are refused, a `checkpoint` must be one the server signed, `signed=true` needs a
/// signing key, `occurredAt` at most microsecond precision within years 1-9999 and no leap second
/// (RFC 3339's date-time allows second 60), strings nested in
/// free-form parts at most 4096 characters. A schema-valid request refused for one of them is
/// expected.
const INEXPRESSIBLE: [&str; 8] = [
    "all events of a batch must have the same tenantId",
    "must not be a leap second",
    "integers beyond 2^53",
    "signed checkpoint",
    "has no signing key",
    "more precise than a microsecond",
    "between years 1 and 9999",
    "strings must be at most 4096 characters",
];

/// The failures of a schemathesis report other than those.
fn unexpected_failures(report: &str) -> Vec<String> {
    report
        .split("Test Case ID:")
        .skip(1)
        .map(|case| case.split("Reproduce with:").next().unwrap_or(case).trim().to_owned())
        .filter(|case| !(case.contains("ST202") && INEXPRESSIBLE.iter().any(|m| case.contains(m))))
        .collect()
}
