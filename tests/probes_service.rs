//! Audit service probes against the real audit server (in-process, SQLite): health, the metrics the
//! rendered PrometheusRule queries, the API key (valid, unknown, wrong tenant), the OpenAPI
//! document, the write probe (off by default, then on), readiness lost while draining, nothing
//! listening.

mod probes_common;

use std::time::Duration;

use audctl::probes::conns::Connections;
use audctl::probes::{Context, ErrorCause, Status};
use audctl_targets::{AuditTarget, Secret, Targets};
use probes_common::{assert_status, context, row, run, values};

const KEY: &str = "svc-probe-key-0123456789";

fn targets(url: &str, key: &str) -> Targets {
    Targets {
        audit: Some(AuditTarget { url: url.to_owned(), api_key: Some(Secret::Inline(key.to_owned())), tenant: None }),
        ..Default::default()
    }
}

/// The context the engine would build: values and their render.
fn ctx(t: &Targets, write_probe: bool) -> Context {
    let v = values(&[]);
    let mut c = context(t.clone(), v.clone());
    c.objects = audctl::render::render(&v, None).expect("render the default values");
    c.conns = Connections::with_write_probe(write_probe);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_service() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut config = audit_server::Config::local(data.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.shutdown_delay = Duration::from_secs(30);
    config.api_keys = vec![
        audit_server::ApiKeyConfig::plain(KEY, &["audctl-probe"]),
        audit_server::ApiKeyConfig::plain("other-tenant-key-98765", &["tenant-x"]),
    ];
    let server = audit_server::spawn(config).await?;
    let url = server.base_url();
    let t = targets(&url, KEY);

    assert_status(&run(&ctx(&t, false), "service.health").await, Status::Pass);
    assert_status(&run(&ctx(&t, false), "service.openapi").await, Status::Pass);

    // Every metric of the rendered alerts is exported...
    let f = run(&ctx(&t, false), "service.metrics").await;
    assert_status(&f, Status::Pass);
    assert!(row(&f, "audit_db_pool_connections_active").ok, "{f:#?}");
    // ... and a rule querying a series the server does not export fails, naming it.
    let mut drifted = ctx(&t, false);
    let rule = drifted.objects.iter_mut().find(|o| o.kind == "PrometheusRule").expect("a PrometheusRule");
    rule.text = rule.text.replace("audit_db_pool_connections_active", "audit_db_pool_connections_busy");
    let f = run(&drifted, "service.metrics").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("audit_db_pool_connections_busy = missing (expected exported)"), "{}", f.message);

    // API key: accepted, and a request without one refused.
    let f = run(&ctx(&t, false), "service.api-key").await;
    assert_status(&f, Status::Pass);
    // An unknown key: FAIL with 401, the key never shown.
    let f = run(&ctx(&targets(&url, "unknown-key-55555"), false), "service.api-key").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("with the key = 401 (expected 200)"), "{}", f.message);
    assert!(!serde_json::to_string(&f)?.contains("unknown-key-55555"));
    // A valid key of another tenant: 403, with a hint about audit.tenant.
    let f = run(&ctx(&targets(&url, "other-tenant-key-98765"), false), "service.api-key").await;
    assert_status(&f, Status::Fail);
    assert!(f.message.contains("= 403 (expected 200)") && f.hint.as_deref().unwrap_or("").contains("audit.tenant"));

    // Write probe: not run without --write-probe (never a pass); with it, write, read, verify.
    let f = run(&ctx(&t, false), "service.write").await;
    assert_eq!((f.status, f.cause), (Status::Error, Some(ErrorCause::NotConfigured)), "{f:#?}");
    let f = run(&ctx(&t, true), "service.write").await;
    assert_status(&f, Status::Pass);
    assert!(row(&f, "verify chain of tenant audctl-probe").actual.starts_with("verified ("), "{f:#?}");
    // Reference: the event is there, read with the server's own API.
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/events?tenantId=audctl-probe"))
        .header("x-api-key", KEY)
        .send()
        .await?
        .json()
        .await?;
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{page}");
    assert!(events[0]["resource"]["id"].as_str().unwrap_or("").starts_with("audctl-check-"), "{page}");

    // Draining (after SIGTERM, before the listener closes): readiness 503, liveness still 200.
    let stopping = tokio::spawn(server.shutdown());
    let f = probes_common::wait_for(&t, &values(&[]), "service.health", 20, |f| f.status == Status::Fail).await;
    assert!(f.message.contains("/actuator/health/readiness = 503 OUT_OF_SERVICE (expected 200 UP)"), "{}", f.message);
    assert!(row(&f, "/actuator/health/liveness").ok);
    stopping.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_not_configured() -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{}", testbed::free_port()?);
    let t = targets(&url, "k-unreach-1");
    for probe in ["service.health", "service.metrics", "service.api-key", "service.openapi", "service.write"] {
        let f = run(&ctx(&t, true), probe).await;
        assert_eq!((f.status, f.cause), (Status::Error, Some(ErrorCause::Unreachable)), "{probe}: {f:#?}");
        assert!(!serde_json::to_string(&f)?.contains("k-unreach-1"));
        let f = run(&ctx(&Targets::default(), true), probe).await;
        assert_eq!((f.status, f.cause), (Status::Error, Some(ErrorCause::NotConfigured)), "{probe}: {f:#?}");
    }
    // A server that accepts and never answers (every service probe shares this connection).
    let (_silent, port) = probes_common::silent_port();
    let silent = targets(&format!("http://127.0.0.1:{port}"), "k-silent-2");
    let f = run(&ctx(&silent, true), "service.health").await;
    assert_eq!((f.status, f.cause), (Status::Error, Some(ErrorCause::Unreachable)), "{f:#?}");
    Ok(())
}
