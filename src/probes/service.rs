//! Audit service probes: liveness and readiness, the metrics the rendered alerts query, the API key,
//! the OpenAPI document, and (only with `--write-probe`) a write, read back and chain verification
//! in a dedicated tenant.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::conns::{probe, row};
use super::{Comparison, Context, ErrorCause, Finding, Probe, Status, Target};

/// The tenant the write probe appends to when the targets file names none.
pub const DEFAULT_PROBE_TENANT: &str = "audctl-probe";

pub fn probes() -> Vec<Box<dyn Probe>> {
    vec![Box::new(Health), Box::new(Metrics), Box::new(ApiKey), Box::new(OpenApi), Box::new(WriteProbe)]
}

probe!(Health, Target::Service, "service.health", "Liveness and readiness endpoints answer 200 UP", health);
probe!(
    Metrics,
    Target::Service,
    "service.metrics",
    "/actuator/prometheus exports every metric the rendered PrometheusRule queries",
    metrics
);
probe!(
    ApiKey,
    Target::Service,
    "service.api-key",
    "The API key is accepted, and a request without one is refused",
    api_key
);
probe!(
    OpenApi,
    Target::Service,
    "service.openapi",
    "The OpenAPI document is served and describes the events API",
    openapi
);
probe!(
    WriteProbe,
    Target::Service,
    "service.write",
    "With --write-probe: append an event to a dedicated tenant, read it back, verify the tenant's chain",
    write_probe
);

type Outcome = Result<Finding, Finding>;

async fn health(ctx: &Context) -> Outcome {
    let http = ctx.conns.service(&ctx.targets).await?;
    let mut rows = Vec::new();
    for path in ["/actuator/health/liveness", "/actuator/health/readiness"] {
        let (status, body) = http.get(path, false).await?;
        let word = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_owned))
            .unwrap_or_default();
        rows.push(row(path, "200 UP", format!("{status} {word}"), status == 200 && word == "UP"));
    }
    Ok(Finding::from_comparisons(&format!("audit service {}", http.display), rows))
}

/// Metric names used in the `expr` fields of a rendered PrometheusRule (YAML text).
pub fn rule_metrics(rule_text: &str) -> anyhow::Result<BTreeSet<String>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(rule_text)?;
    let mut names = BTreeSet::new();
    let groups =
        doc["spec"]["groups"].as_sequence().ok_or_else(|| anyhow::anyhow!("PrometheusRule without spec.groups"))?;
    for group in groups {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            if let Some(expr) = rule["expr"].as_str() {
                names.extend(metric_names(expr));
            }
        }
    }
    Ok(names)
}

/// Identifiers directly followed by a label matcher: `name{...}` (every series in the chart's
/// expressions carries one).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    for (i, _) in expr.match_indices('{') {
        let start = bytes[..i]
            .iter()
            .rposition(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b':'))
            .map_or(0, |p| p + 1);
        if start < i {
            out.push(expr[start..i].to_owned());
        }
    }
    out
}

/// Series names in a Prometheus text exposition (comments and blank lines skipped).
pub fn exported_series(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && l.contains(' '))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Series that come from elsewhere (kube-state-metrics), not from the server.
fn served_by_server(metric: &str) -> bool {
    !metric.starts_with("kube_")
}

async fn metrics(ctx: &Context) -> Outcome {
    let http = ctx.conns.service(&ctx.targets).await?;
    let rendered;
    let objects = if ctx.objects.is_empty() {
        rendered = crate::render::render(&ctx.values, None).map_err(|e| {
            Finding::error(ErrorCause::Other, format!("rendering the release to read its alerts: {e:#}"))
        })?;
        &rendered
    } else {
        &ctx.objects
    };
    let Some(rule) = objects.iter().find(|o| o.kind == "PrometheusRule") else {
        return Ok(Finding::pass(
            "no PrometheusRule in the release (prometheusRule.enabled is false): nothing to compare",
        ));
    };
    let used = rule_metrics(&rule.text)
        .map_err(|e| Finding::error(ErrorCause::Other, format!("PrometheusRule {}: {e:#}", rule.name)))?;
    let path = &ctx.values.service_monitor.path;
    let (status, scrape) = http.get(path, false).await?;
    if status != 200 {
        return Ok(Finding::fail(format!("{path} answered {status}")).comparisons(vec![row(
            path,
            "200",
            status.to_string(),
            false,
        )]));
    }
    let exported = exported_series(&scrape);
    let rows: Vec<Comparison> = used
        .iter()
        .filter(|m| served_by_server(m))
        .map(|m| {
            let ok = exported.contains(m);
            row(m, "exported", if ok { "exported" } else { "missing" }, ok)
        })
        .collect();
    let mut f = Finding::from_comparisons(
        &format!("{} metrics queried by PrometheusRule {} at {path}", rows.len(), rule.name),
        rows,
    );
    if f.status == Status::Fail {
        f = f.hint("an alert on a series that is never exported never fires: fix the rule or the server's metrics");
    }
    Ok(f)
}

fn tenant(ctx: &Context) -> String {
    ctx.targets.audit.as_ref().and_then(|a| a.tenant.clone()).unwrap_or_else(|| DEFAULT_PROBE_TENANT.to_owned())
}

async fn api_key(ctx: &Context) -> Outcome {
    let http = ctx.conns.service(&ctx.targets).await?;
    if !http.has_key() {
        return Err(Finding::error(ErrorCause::NotConfigured, "no audit.apiKey in the targets file")
            .hint("add apiKey: {env: AUDIT_API_KEY} (or {file: ...}) under audit: in the targets file"));
    }
    let tenant = tenant(ctx);
    let path = format!("{}/events?tenantId={tenant}&limit=1", audit_api::API_PREFIX);
    let (with_key, _) = http.get(&path, true).await?;
    let (without, _) = http.get(&path, false).await?;
    let rows = vec![
        row(format!("GET events of tenant {tenant} with the key"), "200", with_key.to_string(), with_key == 200),
        row("the same without a key", "401", without.to_string(), without == 401),
    ];
    let mut f = Finding::from_comparisons(&format!("API key at {}", http.display), rows);
    if with_key == 403 {
        f = f.hint(format!(
            "the key is valid but not allowed for tenant {tenant}: set audit.tenant to a tenant of the key"
        ));
    } else if with_key == 401 {
        f = f.hint("the server does not know this key: check audit.apiKey against the server's AUDIT_API_KEYS");
    }
    Ok(f)
}

async fn openapi(ctx: &Context) -> Outcome {
    let http = ctx.conns.service(&ctx.targets).await?;
    let path = format!("{}/openapi.json", audit_api::API_PREFIX);
    let (status, body) = http.get(&path, false).await?;
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let version = doc["openapi"].as_str().unwrap_or("not an OpenAPI document").to_owned();
    let events = format!("{}/events", audit_api::API_PREFIX);
    let has_events = doc["paths"].get(&events).is_some();
    let rows = vec![
        row(format!("GET {path}"), "200", status.to_string(), status == 200),
        row("openapi", "3.x", &version, version.starts_with("3.")),
        row(format!("paths.{events}"), "present", if has_events { "present" } else { "absent" }, has_events),
    ];
    Ok(Finding::from_comparisons(&format!("OpenAPI document at {}", http.display), rows))
}

async fn write_probe(ctx: &Context) -> Outcome {
    if !ctx.conns.write_probe {
        // Never a pass: the write path was not exercised.
        return Err(Finding::error(ErrorCause::NotConfigured, "not run: writes need --write-probe")
            .hint("audctl check --write-probe appends one event to the tenant audit.tenant (default audctl-probe)"));
    }
    let http = ctx.conns.service(&ctx.targets).await?;
    let tenant = tenant(ctx);
    let marker = format!("audctl-check-{}", ctx.now.timestamp_millis());
    let event = json!({
        "actor": {"id": "audctl", "type": "SERVICE", "name": "audctl check --write-probe"},
        "action": {"type": "AUDCTL_WRITE_PROBE", "description": "go-live write probe"},
        "resource": {"id": marker, "type": "PROBE"},
        "metadata": {"source": "audctl", "tenantId": tenant},
    });
    let events = format!("{}/events", audit_api::API_PREFIX);
    let (status, body) = http.post(&events, &event).await?;
    let mut rows = vec![row(format!("POST {events} (tenant {tenant})"), "201", status.to_string(), status == 201)];
    if status != 201 {
        return Ok(Finding::from_comparisons("write probe", rows));
    }
    let receipt: audit_api::EventReceipt = serde_json::from_str(&body)
        .map_err(|e| Finding::error(ErrorCause::Other, format!("the write's receipt is not an EventReceipt: {e}")))?;
    let (status, body) = http.get(&format!("{events}/{}", receipt.id), true).await?;
    let stored: Option<audit_api::StoredEvent> = serde_json::from_str(&body).ok();
    let same = stored.as_ref().is_some_and(|s| s.hash == receipt.hash && s.resource.id == marker);
    rows.push(row(
        format!("read back event #{}", receipt.sequence),
        format!("200, hash {}", short(&receipt.hash)),
        format!("{status}, hash {}", stored.as_ref().map_or("-".to_owned(), |s| short(&s.hash))),
        status == 200 && same,
    ));
    let (status, body) =
        http.get(&format!("{}/integrity/verify?tenantId={tenant}", audit_api::API_PREFIX), true).await?;
    let report: Option<audit_api::VerifyReport> = serde_json::from_str(&body).ok();
    let verified = report.as_ref().is_some_and(|r| r.verified);
    rows.push(row(
        format!("verify chain of tenant {tenant}"),
        "verified",
        &match &report {
            Some(r) if r.verified => format!("verified ({} links)", r.checked),
            Some(r) => format!("broken after {} links", r.checked),
            None => format!("HTTP {status}"),
        },
        verified,
    ));
    Ok(Finding::from_comparisons(&format!("write probe in tenant {tenant}"), rows))
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_read_from_expressions() {
        let e = "sum(rate(http_server_requests_seconds_count{app=\"a\",status=~\"5..\"}[5m])) / sum(rate(http_server_requests_seconds_count{app=\"a\"}[5m]))";
        assert_eq!(metric_names(e), vec!["http_server_requests_seconds_count", "http_server_requests_seconds_count"]);
        let s = exported_series("# HELP x\n# TYPE x counter\nx_total{a=\"b\"} 1\ny 2\n\n");
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec!["x_total", "y"]);
    }
}
