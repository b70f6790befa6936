//! `audctl smoke`: D-Day verification of the running service, step by step, each one timed:
//! TLS (validity for the host, expiry), liveness, readiness, the metrics the rendered alert rules
//! query, the OpenAPI document, an event written, read back by id, found through the list filters,
//! its tenant chain verified, an unauthenticated write refused, rate-limit headers.
//! Exit 1 when a step fails, 3 when the service cannot be reached.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use audit_api::client::{Answer, Body, Client, ClientError, ListQuery};
use audit_api::{Action, Actor, Metadata, NewEvent, Resource};
use serde::Serialize;

use crate::cli::{GlobalArgs, SmokeArgs};
use crate::error::{CheckFailed, Unreachable, usage};
use crate::output::{self, Report};
use crate::render::objects::Object;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    pub status: StepStatus,
    pub millis: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SmokeReport {
    pub url: String,
    pub tenant: String,
    pub passed: bool,
    /// The service could not be reached at all (exit 3).
    pub unreachable: bool,
    pub steps: Vec<Step>,
}

impl Report for SmokeReport {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["step", "result", "ms", "detail"]);
        for s in &self.steps {
            let result = match s.status {
                StepStatus::Pass => "PASS",
                StepStatus::Fail => "FAIL",
                StepStatus::Skip => "skip",
            };
            t.add_row(vec![s.name.clone(), result.to_owned(), format!("{:.1}", s.millis), s.detail.clone()]);
        }
        t
    }

    fn junit(&self) -> Option<String> {
        use crate::load::plot::escape;
        let failures = self.steps.iter().filter(|s| s.status == StepStatus::Fail).count();
        let skipped = self.steps.iter().filter(|s| s.status == StepStatus::Skip).count();
        let total: f64 = self.steps.iter().map(|s| s.millis).sum::<f64>() / 1000.0;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<testsuite name=\"audctl smoke\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{total:.3}\">\n",
            self.steps.len()
        ));
        for s in &self.steps {
            x.push_str(&format!(
                "  <testcase classname=\"smoke\" name=\"{}\" time=\"{:.3}\">",
                escape(&s.name),
                s.millis / 1000.0
            ));
            match s.status {
                StepStatus::Pass => {}
                StepStatus::Fail => x.push_str(&format!("<failure message=\"{}\"/>", escape(&s.detail))),
                StepStatus::Skip => x.push_str(&format!("<skipped message=\"{}\"/>", escape(&s.detail))),
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite>\n");
        Some(x)
    }
}

/// Metric names queried by the `expr` of every rule of the rendered PrometheusRule(s).
pub fn alert_metrics(objects: &[Object]) -> anyhow::Result<BTreeSet<String>> {
    // One PromQL reading for smoke and the service.metrics check probe.
    let mut names = BTreeSet::new();
    for rule in objects.iter().filter(|o| o.kind == "PrometheusRule") {
        names.extend(
            crate::probes::service::rule_metrics(&rule.text)
                .with_context(|| format!("PrometheusRule {}", rule.name))?,
        );
    }
    Ok(names)
}

/// What smoke takes from the values: the series the server must export (those of the alerts,
/// except kube-state-metrics' `kube_*`), the service URL to fall back on, and where its evidence
/// record goes.
struct FromValues {
    required: BTreeSet<String>,
    fallback: Option<String>,
    /// `cluster.environment`: the record's subject, as deploy's (the checklist's smoke items look
    /// for "staging" / "production", the environments of values-staging.yaml / values-prod.yaml).
    environment: Option<String>,
    /// `namespace.name` (`-n` overrides it, as for deploy): deploy's records live there too.
    namespace: String,
}

fn from_values(args: &SmokeArgs, global: &GlobalArgs) -> anyhow::Result<FromValues> {
    let values = crate::values::load(&args.values, &global.render_sets(&args.set))?;
    let objects = crate::render::render(&values, args.templates.as_deref())?;
    let fallback = values.ingress.hosts.first().filter(|_| values.ingress.enabled).map(|h| {
        let tls = values.ingress.tls.iter().any(|t| t.hosts.contains(&h.host));
        format!("{}://{}", if tls { "https" } else { "http" }, h.host)
    });
    let required = alert_metrics(&objects)?.into_iter().filter(|m| !m.starts_with("kube_")).collect();
    Ok(FromValues {
        required,
        fallback,
        environment: values.cluster.environment.clone(),
        namespace: values.namespace.name.clone(),
    })
}

pub fn run(args: &SmokeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let from = from_values(args, global)?;
    let targets = crate::service::targets(global)?;
    let service = crate::service::resolve(&args.service, targets.as_ref(), from.fallback.clone())?;
    let timeout = crate::load::plan::parse_duration(&args.timeout).map_err(|e| usage(format!("--timeout {e}")))?;
    if timeout.is_zero() {
        return Err(usage("--timeout must be above zero"));
    }
    let tenant = service.tenant.clone().unwrap_or_else(|| "audctl-smoke".into());
    let started = chrono::Utc::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let report = runtime.block_on(smoke(&service, &tenant, &from.required, args, timeout))?;
    output::emit(global.output, &report)?;
    record_evidence(&report, &from, global, targets.as_ref(), started, &runtime);
    if report.unreachable {
        return Err(Unreachable {
            what: format!("service {}", report.url),
            detail: report
                .steps
                .iter()
                .find(|s| s.status == StepStatus::Fail)
                .map(|s| s.detail.clone())
                .unwrap_or_default(),
        }
        .into());
    }
    if !report.passed {
        let failed: Vec<&str> =
            report.steps.iter().filter(|s| s.status == StepStatus::Fail).map(|s| s.name.as_str()).collect();
        return Err(CheckFailed(format!("smoke failed: {}", failed.join(", "))).into());
    }
    Ok(())
}

/// "Smoke tests passing": the run in the cluster, when one is configured (never fails the verb).
fn record_evidence(
    report: &SmokeReport,
    from: &FromValues,
    global: &GlobalArgs,
    targets: Option<&audctl_targets::Targets>,
    started: chrono::DateTime<chrono::Utc>,
    runtime: &tokio::runtime::Runtime,
) {
    use crate::evidence::{Evidence, Outcome, record_best_effort};
    let kube = crate::kube::KubeSettings::resolve(global, targets);
    let count = |st: StepStatus| report.steps.iter().filter(|s| s.status == st).count();
    let outcome = match (report.unreachable, report.passed) {
        (true, _) => Outcome::Error,
        (false, true) => Outcome::Success,
        (false, false) => Outcome::Failure,
    };
    let failed: Vec<&str> =
        report.steps.iter().filter(|s| s.status == StepStatus::Fail).map(|s| s.name.as_str()).collect();
    let summary = format!(
        "{} steps against {}: {} pass, {} fail, {} skipped",
        report.steps.len(),
        report.url,
        count(StepStatus::Pass),
        count(StepStatus::Fail),
        count(StepStatus::Skip)
    );
    let subject = crate::deploy::subject(from.environment.as_deref(), &kube);
    let evidence = Evidence::new("smoke", outcome, summary, started)
        .subject(subject)
        .figure("url", &report.url)
        .figure("steps", report.steps.len())
        .figure("passed", count(StepStatus::Pass))
        .figure("failed", failed)
        .figure("skipped", count(StepStatus::Skip))
        .figure("totalMs", report.steps.iter().map(|s| s.millis).sum::<f64>());
    runtime.block_on(record_best_effort(&kube, &from.namespace, &evidence));
}

struct Steps {
    steps: Vec<Step>,
}

impl Steps {
    fn push(&mut self, name: &str, start: Instant, result: Result<String, String>) -> bool {
        let millis = start.elapsed().as_secs_f64() * 1000.0;
        let ok = result.is_ok();
        let (status, detail) = match result {
            Ok(d) => (StepStatus::Pass, d),
            Err(d) => (StepStatus::Fail, d),
        };
        self.steps.push(Step { name: name.to_owned(), status, millis, detail });
        ok
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.steps.push(Step { name: name.to_owned(), status: StepStatus::Skip, millis: 0.0, detail: why.to_owned() });
    }
}

const STEPS_AFTER_TLS: &[&str] = &[
    "liveness",
    "readiness",
    "metrics",
    "openapi",
    "write event",
    "read back by id",
    "found by list filters",
    "chain verified",
    "unauthenticated write refused",
    "rate-limit headers",
];

/// Nothing answered the first request: refused, unresolvable, or accepted and then silent for
/// the whole --timeout (a hung process or a black-holing proxy). Exit 3, not a failed check.
fn transport(e: &ClientError) -> bool {
    matches!(e, ClientError::Transport { connect: true, .. } | ClientError::Transport { timeout: true, .. })
}

fn describe<T>(a: &Answer<T>) -> String {
    match &a.body {
        Body::Ok(_) => format!("HTTP {}", a.status),
        Body::Error(e) => format!("HTTP {} {}: {}", a.status, e.error, e.message),
        Body::Invalid { reason, .. } => format!("HTTP {}, unexpected body ({reason})", a.status),
    }
}

async fn smoke(
    service: &crate::service::Service,
    tenant: &str,
    required: &BTreeSet<String>,
    args: &SmokeArgs,
    timeout: Duration,
) -> anyhow::Result<SmokeReport> {
    let url = crate::service::display_url(&service.url);
    let mut s = Steps { steps: Vec::new() };
    let mut unreachable = false;
    let finish = |s: Steps, unreachable: bool| SmokeReport {
        url: url.clone(),
        tenant: tenant.to_owned(),
        passed: !unreachable && s.steps.iter().all(|x| x.status != StepStatus::Fail),
        unreachable,
        steps: s.steps,
    };

    // A --ca file that holds no usable certificate is the operator's to fix (exit 2), not a step.
    let tls_config = crate::tls::client_config(service.ca_pem.as_deref()).map_err(usage)?;
    // TLS first: when it fails, every HTTP step would fail the same way.
    if service.url.starts_with("https://") {
        let t = Instant::now();
        match tls::check(&service.url, &tls_config, args.min_cert_days, timeout).await {
            Ok(detail) => {
                s.push("tls", t, Ok(detail));
            }
            Err(tls::TlsFailure::Unreachable(detail)) => {
                s.push("tls", t, Err(detail));
                STEPS_AFTER_TLS.iter().for_each(|n| s.skip(n, "service unreachable"));
                return Ok(finish(s, true));
            }
            Err(tls::TlsFailure::Invalid(detail)) => {
                let expiring = detail.starts_with("expires");
                s.push("tls", t, Err(detail));
                if !expiring {
                    STEPS_AFTER_TLS.iter().for_each(|n| s.skip(n, "TLS failed"));
                    return Ok(finish(s, false));
                }
            }
        }
    }

    let client = Client::new(&service.url, service.key().map(str::to_owned), tls_config, timeout)
        .map_err(|e| usage(e.to_string()))?;

    let t = Instant::now();
    match client.liveness().await {
        Err(e) if transport(&e) => {
            s.push("liveness", t, Err(e.to_string()));
            STEPS_AFTER_TLS[1..].iter().for_each(|n| s.skip(n, "service unreachable"));
            unreachable = true;
            return Ok(finish(s, unreachable));
        }
        Err(e) => {
            s.push("liveness", t, Err(e.to_string()));
        }
        Ok(a) => {
            let r = match &a.body {
                Body::Ok(h) if a.status == 200 && h.status == "UP" => Ok("UP".to_owned()),
                Body::Ok(h) => Err(format!("HTTP {}, status {:?} (expected UP)", a.status, h.status)),
                _ => Err(describe(&a)),
            };
            s.push("liveness", t, r);
        }
    }

    let t = Instant::now();
    let r = match client.readiness().await {
        Ok(a) => match &a.body {
            Body::Ok(h) if a.status == 200 && h.status == "UP" => Ok("UP".to_owned()),
            Body::Ok(h) => Err(format!("HTTP {}, status {:?} (expected UP)", a.status, h.status)),
            _ => Err(match &a.body {
                Body::Invalid { text, .. } if a.status == 503 => format!("HTTP 503 not ready: {}", text.trim()),
                _ => describe(&a),
            }),
        },
        Err(e) => Err(e.to_string()),
    };
    s.push("readiness", t, r);

    let t = Instant::now();
    let r = match client.get_text("/actuator/prometheus").await {
        Ok((200, text)) => {
            let exported = crate::probes::service::exported_series(&text);
            let missing: Vec<&str> = required.iter().filter(|m| !exported.contains(*m)).map(String::as_str).collect();
            if missing.is_empty() {
                Ok(format!("{} series the alert rules query are exported", required.len()))
            } else {
                Err(format!("the alert rules query series the service does not export: {}", missing.join(", ")))
            }
        }
        Ok((status, _)) => Err(format!("HTTP {status}")),
        Err(e) => Err(e.to_string()),
    };
    s.push("metrics", t, r);

    let t = Instant::now();
    let r = match client.get::<serde_json::Value>(&format!("{}/openapi.json", audit_api::API_PREFIX)).await {
        Ok(a) => match &a.body {
            Body::Ok(doc) if a.status == 200 => {
                let version = doc["openapi"].as_str().unwrap_or_default();
                let paths = doc["paths"].as_object().map(|p| p.len()).unwrap_or(0);
                if version.starts_with('3') && paths > 0 {
                    Ok(format!("OpenAPI {version}, {paths} paths"))
                } else {
                    Err("not an OpenAPI 3 document with paths".to_owned())
                }
            }
            _ => Err(describe(&a)),
        },
        Err(e) => Err(e.to_string()),
    };
    s.push("openapi", t, r);

    // The event round trip.
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let event = NewEvent {
        occurred_at: None,
        actor: Actor {
            id: format!("audctl-smoke-{marker}"),
            kind: "SERVICE".into(),
            name: Some("audctl smoke".into()),
            ip: None,
            user_agent: Some(format!("audctl/{}", env!("CARGO_PKG_VERSION"))),
            attributes: None,
        },
        action: Action { kind: "SMOKE_TEST".into(), description: Some("audctl smoke".into()), category: None },
        resource: Resource {
            id: format!("smoke-{marker}"),
            kind: "SMOKE".into(),
            name: None,
            before: None,
            after: None,
        },
        metadata: Metadata {
            source: "audctl-smoke".into(),
            tenant_id: tenant.to_owned(),
            correlation_id: Some(marker.clone()),
            session_id: None,
            tags: None,
        },
    };
    let mut rate_headers: Vec<String> = Vec::new();
    let t = Instant::now();
    let receipt = if service.key().is_none() {
        s.push(
            "write event",
            t,
            Err("no API key: pass --api-key-file, set AUDIT_API_KEY or audit.apiKey in --targets".into()),
        );
        None
    } else {
        match client.post_event(&event).await {
            Ok(a) => {
                rate_headers = a
                    .headers
                    .keys()
                    .map(|k| k.as_str().to_owned())
                    .filter(|k| k.starts_with("ratelimit") || k.starts_with("x-ratelimit"))
                    .collect();
                let status = a.status;
                let d = describe(&a);
                match a.body {
                    Body::Ok(r) if status == 201 && r.status == "STORED" => {
                        s.push("write event", t, Ok(format!("id {} sequence {}", r.id, r.sequence)));
                        Some(r)
                    }
                    Body::Ok(r) => {
                        s.push(
                            "write event",
                            t,
                            Err(format!("HTTP {status}, receipt status {:?} (expected STORED)", r.status)),
                        );
                        None
                    }
                    _ => {
                        s.push("write event", t, Err(d));
                        None
                    }
                }
            }
            Err(e) => {
                s.push("write event", t, Err(e.to_string()));
                None
            }
        }
    };
    match &receipt {
        None => {
            for n in ["read back by id", "found by list filters", "chain verified"] {
                s.skip(n, "no event was written");
            }
        }
        Some(receipt) => {
            let t = Instant::now();
            let r = match client.get_event(&receipt.id).await {
                Ok(a) => {
                    let d = describe(&a);
                    match a.body {
                        Body::Ok(e) if a.status == 200 => {
                            if e.id == receipt.id
                                && e.hash == receipt.hash
                                && e.actor == event.actor
                                && e.action == event.action
                                && e.resource == event.resource
                                && e.metadata == event.metadata
                            {
                                Ok("content and hash as written".to_owned())
                            } else {
                                Err("the event read back differs from the one written".to_owned())
                            }
                        }
                        _ => Err(d),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            s.push("read back by id", t, r);

            let t = Instant::now();
            let query = ListQuery {
                tenant_id: tenant.to_owned(),
                actor_id: Some(event.actor.id.clone()),
                action_type: Some(event.action.kind.clone()),
                resource_id: Some(event.resource.id.clone()),
                limit: Some(10),
                order: Some("desc".into()),
                ..ListQuery::default()
            };
            let r = match client.list(&query).await {
                Ok(a) => {
                    let d = describe(&a);
                    match a.body {
                        Body::Ok(page) if a.status == 200 => {
                            if page.events.iter().any(|e| e.id == receipt.id) {
                                Ok(format!("found among {} by tenant, actor, action and resource", page.events.len()))
                            } else {
                                Err(format!("not found by its filters ({} events returned)", page.events.len()))
                            }
                        }
                        _ => Err(d),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            s.push("found by list filters", t, r);

            let t = Instant::now();
            let r = match client.verify(tenant).await {
                Ok(a) => {
                    let d = describe(&a);
                    match a.body {
                        Body::Ok(v) if a.status == 200 && v.verified => {
                            Ok(format!("tenant {tenant}: {} links verified", v.checked))
                        }
                        Body::Ok(v) if a.status == 200 => Err(format!(
                            "tenant {tenant}: chain broken at sequence {}: {}",
                            v.first_broken_at.as_ref().map(|b| b.sequence).unwrap_or_default(),
                            v.first_broken_at.as_ref().map(|b| b.reason.as_str()).unwrap_or("")
                        )),
                        _ => Err(d),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            s.push("chain verified", t, r);
        }
    }

    let t = Instant::now();
    let r = match client.anonymous().post_event(&event).await {
        Ok(a) if a.status == 401 => Ok("HTTP 401".to_owned()),
        Ok(a) => Err(format!("expected 401, got {}", describe(&a))),
        Err(e) => Err(e.to_string()),
    };
    s.push("unauthenticated write refused", t, r);

    let t = Instant::now();
    if !rate_headers.is_empty() {
        s.push("rate-limit headers", t, Ok(rate_headers.join(", ")));
    } else if args.expect_rate_limit_headers {
        s.push("rate-limit headers", t, Err("no RateLimit-* or X-RateLimit-* header on the write's answer".into()));
    } else {
        s.skip("rate-limit headers", "none sent and none expected (--expect-rate-limit-headers)");
    }
    Ok(finish(s, unreachable))
}

/// The TLS step: a handshake verified against the system roots plus `--ca`, then the expiry.
mod tls {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls_pki_types::ServerName;

    pub enum TlsFailure {
        Unreachable(String),
        Invalid(String),
    }

    pub async fn check(
        url: &str,
        config: &rustls::ClientConfig,
        min_days: u32,
        timeout: Duration,
    ) -> Result<String, TlsFailure> {
        let uri: hyper::Uri = url.parse().map_err(|e| TlsFailure::Invalid(format!("URL {url:?}: {e}")))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).map_err(|e| TlsFailure::Invalid(format!("host {host}: {e}")))?;
        let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| TlsFailure::Unreachable(format!("{host}:{port}: connect timed out")))?
            .map_err(|e| TlsFailure::Unreachable(format!("{host}:{port}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config.clone()));
        let stream = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Err(_) => return Err(TlsFailure::Unreachable(format!("{host}:{port}: TLS handshake timed out"))),
            Ok(Err(e)) => {
                return Err(TlsFailure::Invalid(format!(
                    "certificate refused for {host}: {}",
                    crate::tls::refusal(&e, &host)
                )));
            }
            Ok(Ok(s)) => s,
        };
        let (_, session) = stream.get_ref();
        let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) else {
            return Err(TlsFailure::Invalid("the server sent no certificate".into()));
        };
        let not_after = crate::x509::not_after_der(leaf.as_ref())
            .map_err(|e| TlsFailure::Invalid(format!("cannot read the certificate's expiry date: {e}")))?;
        let days = (not_after - chrono::Utc::now()).num_days();
        let when = not_after.format("%Y-%m-%d %H:%M UTC");
        if days < i64::from(min_days) {
            return Err(TlsFailure::Invalid(format!("expires {when}, in {days} days (minimum {min_days})")));
        }
        Ok(format!("valid for {host}, expires {when} (in {days} days)"))
    }
}
