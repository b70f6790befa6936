//! `audctl smoke` against the real audit server (SQLite and the testbed's PostgreSQL), run as the
//! binary. Failing smokes: a server answering 5xx (its PostgreSQL killed), a wrong API key, an
//! expired or not yet trusted self-signed certificate (served by a TLS terminator started here), a
//! metric the alert rules query but the server does not export, nothing listening.

mod report_support;
mod service_support;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use report_support::item;
use service_support::{Backend, KEY, Server, audctl, code, json, raw_get, stderr, stdout};

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"].as_array().and_then(|s| s.iter().find(|x| x["name"] == name)).unwrap_or(&serde_json::Value::Null)
}

fn failed(report: &serde_json::Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "fail")
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

async fn passing(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, "smoke_pass").await?;
    let url = server.url();
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("api-key");
    service_support::write(&key_file, &format!("{KEY}\n"))?;
    let out =
        audctl(&["smoke", "--url", &url, "--api-key-file", key_file.to_str().unwrap_or_default(), "-o", "json"], None)
            .await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 0, "{report:#}\n{}", stderr(&out));
    assert_eq!(failed(&report), Vec::<String>::new());
    for name in [
        "liveness",
        "readiness",
        "metrics",
        "openapi",
        "write event",
        "read back by id",
        "found by list filters",
        "chain verified",
        "unauthenticated write refused",
    ] {
        assert_eq!(step(&report, name)["status"], "pass", "{name}: {report:#}");
        assert!(step(&report, name)["millis"].as_f64().is_some(), "{name} is timed");
    }
    // No rate limit configured on this server: the step says so instead of passing.
    assert_eq!(step(&report, "rate-limit headers")["status"], "skip");
    // Independent check: the event smoke wrote is in the tenant's chain, read with raw HTTP.
    let (status, body) = raw_get(&url, "/api/v1/events?tenantId=audctl-smoke&actionType=SMOKE_TEST", Some(KEY)).await?;
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(1), "{page}");
    let written = step(&report, "write event")["detail"].as_str().unwrap_or_default().to_owned();
    assert!(written.contains(page["events"][0]["id"].as_str().unwrap_or("?")), "{written}");
    assert!(!stdout(&out).contains(KEY) && !stderr(&out).contains(KEY), "the key leaked");

    // The same run as JUnit: a well-formed suite with no failure.
    let out = audctl(&["smoke", "--url", &url, "-o", "junit"], Some(KEY)).await?;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let xml = stdout(&out);
    let doc = roxmltree::Document::parse(&xml).map_err(|e| anyhow::anyhow!("JUnit not XML: {e}"))?;
    assert_eq!(doc.root_element().attribute("failures"), Some("0"));
    assert_eq!(doc.root_element().children().filter(|n| n.has_tag_name("testcase")).count(), 10);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_smoke_sqlite() -> anyhow::Result<()> {
    passing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_smoke_postgres() -> anyhow::Result<()> {
    passing(Backend::Postgres).await
}

/// PostgreSQL killed under the server: it still lives but answers 503; smoke fails (exit 1, not 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answering_5xx_fails() -> anyhow::Result<()> {
    let mut server = Server::start(Backend::Postgres, "smoke_5xx").await?;
    let url = server.url();
    server.pg.as_mut().context("postgres")?.kill_primary_hard();
    let out = audctl(&["smoke", "--url", &url, "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    assert_eq!(step(&report, "liveness")["status"], "pass");
    let f = failed(&report);
    assert!(f.contains(&"readiness".to_owned()) && f.contains(&"write event".to_owned()), "{report:#}");
    assert!(step(&report, "readiness")["detail"].as_str().unwrap_or_default().contains("503"), "{report:#}");
    // The server either answers 5xx or holds the write until its database timeout, past smoke's
    // own request timeout: both fail the step (a 503 from the server means "not stored").
    let detail = step(&report, "write event")["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("HTTP 5") || detail.contains("timed out"), "{report:#}");
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_fails_without_printing_it() -> anyhow::Result<()> {
    let server = Server::start(Backend::Sqlite, "").await?;
    let wrong = "wrong-key-that-must-never-be-printed";
    let out = audctl(&["smoke", "--url", &server.url()], Some(wrong)).await?;
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let table = stdout(&out);
    assert!(table.contains("write event") && table.contains("401"), "{table}");
    assert!(!table.contains(wrong) && !stderr(&out).contains(wrong));
    let out = audctl(&["smoke", "--url", &server.url(), "-o", "json"], Some(wrong)).await?;
    assert_eq!(failed(&json(&out)?), ["write event"]);
    server.stop().await
}

/// The alert rules query a metric the server does not export (a rule added to the templates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_missing_fails_naming_it() -> anyhow::Result<()> {
    let server = Server::start(Backend::Sqlite, "").await?;
    let dir = tempfile::tempdir()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    for entry in std::fs::read_dir(&root)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    let rule = dir.path().join("prometheusrule.yaml.j2");
    let text = std::fs::read_to_string(&rule)?;
    let extra = "      rules:\n        - alert: QueueBacklog\n          expr: |\n            audit_queue_backlog_events{app=\"audit-trail\"} > 1000\n          for: 5m\n          labels:\n            severity: warning\n          annotations:\n            summary: backlog\n";
    anyhow::ensure!(text.contains("      rules:\n"), "the rule template changed shape");
    service_support::write(&rule, &text.replacen("      rules:\n", extra, 1))?;
    let out = audctl(
        &["smoke", "--url", &server.url(), "--templates", dir.path().to_str().unwrap_or_default(), "-o", "json"],
        Some(KEY),
    )
    .await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    assert_eq!(failed(&report), ["metrics"]);
    assert!(step(&report, "metrics")["detail"].as_str().unwrap_or_default().contains("audit_queue_backlog_events"));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_exits_3() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = audctl(&["smoke", "--url", &format!("http://127.0.0.1:{port}")], Some(KEY)).await?;
    assert_eq!(code(&out), 3, "{}{}", stdout(&out), stderr(&out));
    Ok(())
}

/// A self-signed certificate for `localhost` valid from `not_before` to `not_after`: (PEM, server config).
fn certificate(
    not_before: chrono::NaiveDate,
    not_after: chrono::NaiveDate,
) -> anyhow::Result<(String, rustls::ServerConfig)> {
    certificate_ca(not_before, not_after, false)
}

/// The same, marked `basicConstraints CA:TRUE` when `ca` (as `openssl req -x509` makes them).
fn certificate_ca(
    not_before: chrono::NaiveDate,
    not_after: chrono::NaiveDate,
    ca: bool,
) -> anyhow::Result<(String, rustls::ServerConfig)> {
    use chrono::Datelike;
    let ymd = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params.not_before = ymd(not_before);
    params.not_after = ymd(not_after);
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    Ok((cert.pem(), config))
}

/// A TLS terminator in front of `backend`: (address, task to abort).
async fn terminate_tls(
    config: rustls::ServerConfig,
    backend: SocketAddr,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    Ok((addr, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_are_judged() -> anyhow::Result<()> {
    let server = Server::start(Backend::Sqlite, "").await?;
    let dir = tempfile::tempdir()?;
    let today = chrono::Utc::now().date_naive();
    let days = |n: i64| today + chrono::Duration::days(n);

    // Valid for a year: refused without --ca (self-signed), every step passes with it.
    let (pem, config) = certificate(days(-1), days(365))?;
    let ca = dir.path().join("valid.pem");
    service_support::write(&ca, &pem)?;
    let (addr, task) = terminate_tls(config, server.server.addr()).await?;
    let url = format!("https://localhost:{}", addr.port());
    let out = audctl(&["smoke", "--url", &url, "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    assert_eq!(failed(&report), ["tls"]);
    assert!(step(&report, "tls")["detail"].as_str().unwrap_or_default().contains("--ca"), "{report:#}");
    // load cannot reach the service (exit 3) and says, in words, how to trust the certificate.
    let out = audctl(&["load", "--url", &url, "--rate", "20", "--duration", "1s"], Some(KEY)).await?;
    assert_eq!(code(&out), 3, "{}\n{}", stdout(&out), stderr(&out));
    let why = stderr(&out);
    assert!(why.contains("cannot connect: TLS:") && why.contains("--ca FILE"), "{why}");
    assert!(!why.contains("Connect("), "a Debug form leaked: {why}");
    let out =
        audctl(&["smoke", "--url", &url, "--ca", ca.to_str().unwrap_or_default(), "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 0, "{report:#}\n{}", stderr(&out));
    assert!(step(&report, "tls")["detail"].as_str().unwrap_or_default().contains("valid for localhost"));
    task.abort();

    // A self-signed CA certificate as the server's, what `openssl req -x509` makes: trusted with
    // --ca as curl --cacert trusts it (webpki alone refuses it: CaUsedAsEndEntity), by smoke and
    // by load; still refused for a name it does not hold, or once expired.
    let (pem, config) = certificate_ca(days(-1), days(365), true)?;
    let ca = dir.path().join("self-signed-ca.pem");
    service_support::write(&ca, &pem)?;
    let ca_arg = ca.to_str().unwrap_or_default();
    let (addr, task) = terminate_tls(config, server.server.addr()).await?;
    let url = format!("https://localhost:{}", addr.port());
    // Without --ca: refused, in words (not rustls's `Other(OtherError(CaUsedAsEndEntity))`).
    let out = audctl(&["smoke", "--url", &url, "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    let detail = step(&report, "tls")["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("CaUsedAsEndEntity") && detail.contains("--ca FILE"), "{detail}");
    assert!(!detail.contains("OtherError"), "{detail}");
    let out = audctl(&["smoke", "--url", &url, "--ca", ca_arg, "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 0, "{report:#}\n{}", stderr(&out));
    assert!(step(&report, "tls")["detail"].as_str().unwrap_or_default().contains("valid for localhost"));
    let out =
        audctl(&["load", "--url", &url, "--ca", ca_arg, "--rate", "20", "--duration", "1s", "-o", "json"], Some(KEY))
            .await?;
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let by_ip = format!("https://127.0.0.1:{}", addr.port());
    let out = audctl(&["smoke", "--url", &by_ip, "--ca", ca_arg, "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    assert_eq!(failed(&report), ["tls"]);
    let detail = step(&report, "tls")["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("NotValidForName") && detail.contains("does not list 127.0.0.1"), "{detail}");
    task.abort();
    let (pem, config) = certificate_ca(days(-60), days(-2), true)?;
    service_support::write(&ca, &pem)?;
    let (addr, task) = terminate_tls(config, server.server.addr()).await?;
    let url = format!("https://localhost:{}", addr.port());
    let out = audctl(&["smoke", "--url", &url, "--ca", ca_arg, "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    let detail = step(&report, "tls")["detail"].as_str().unwrap_or_default().to_lowercase();
    assert!(detail.contains("expired"), "{detail}");
    task.abort();

    // A --ca file without a certificate is the operator's to fix: exit 2, naming the flag.
    let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = audctl(&["smoke", "--url", &url, "--ca", not_pem, "-o", "json"], Some(KEY)).await?;
    assert_eq!(code(&out), 2, "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("--ca"), "{}", stderr(&out));

    // Expired, even though trusted: refused with the reason.
    let (pem, config) = certificate(days(-60), days(-2))?;
    let ca = dir.path().join("expired.pem");
    service_support::write(&ca, &pem)?;
    let (addr, task) = terminate_tls(config, server.server.addr()).await?;
    let url = format!("https://localhost:{}", addr.port());
    let out =
        audctl(&["smoke", "--url", &url, "--ca", ca.to_str().unwrap_or_default(), "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    assert_eq!(failed(&report), ["tls"]);
    let detail = step(&report, "tls")["detail"].as_str().unwrap_or_default().to_lowercase();
    assert!(detail.contains("expired"), "{detail}");
    task.abort();

    // Trusted and valid, but expiring within the 14 days the guide asks for.
    let (pem, config) = certificate(days(-30), days(5))?;
    let ca = dir.path().join("expiring.pem");
    service_support::write(&ca, &pem)?;
    let (addr, task) = terminate_tls(config, server.server.addr()).await?;
    let url = format!("https://localhost:{}", addr.port());
    let out =
        audctl(&["smoke", "--url", &url, "--ca", ca.to_str().unwrap_or_default(), "-o", "json"], Some(KEY)).await?;
    let report = json(&out)?;
    assert_eq!(code(&out), 1, "{report:#}");
    assert_eq!(failed(&report), ["tls"]);
    assert!(step(&report, "tls")["detail"].as_str().unwrap_or_default().contains("minimum 14"), "{report:#}");
    task.abort();
    server.stop().await
}

/// With a cluster configured, both verbs leave their evidence record ("Smoke tests passing",
/// "Load testing complete"), read back here through the evidence API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_and_load_record_evidence_in_the_cluster() -> anyhow::Result<()> {
    let cluster = testbed::kube().await.context("testbed cluster (run cargo xtask deps install)")?;
    let kubeconfig = cluster.kubeconfig().to_str().unwrap_or_default().to_owned();
    let server = Server::start(Backend::Sqlite, "").await?;
    let url = server.url();
    let out = audctl(&["smoke", "--url", &url, "--kubeconfig", &kubeconfig, "-n", "default"], Some(KEY)).await?;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("evidence: recorded"), "{}", stderr(&out));
    let out = audctl(
        &[
            "load",
            "--url",
            &url,
            "--rate",
            "10",
            "--duration",
            "1s",
            "--max-p99",
            "0s",
            "--kubeconfig",
            &kubeconfig,
            "-n",
            "default",
        ],
        Some(KEY),
    )
    .await?;
    assert_eq!(code(&out), 1, "{}", stderr(&out));

    let settings = audctl::kube::KubeSettings { kubeconfig: Some(cluster.kubeconfig().to_owned()), context: None };
    let client = settings.client().await?;
    let smoke = audctl::evidence::list(&client, "default", Some("smoke")).await?;
    assert_eq!(smoke.len(), 1);
    assert_eq!(smoke[0].evidence.outcome, audctl::evidence::Outcome::Success);
    assert_eq!(smoke[0].evidence.figures["passed"], 9);
    let load = audctl::evidence::list(&client, "default", Some("load")).await?;
    assert_eq!(load.len(), 1);
    assert_eq!(load[0].evidence.outcome, audctl::evidence::Outcome::Failure);
    assert_eq!(load[0].evidence.figures["requests"], 10);
    assert_eq!(load[0].evidence.figures["failedThresholds"], serde_json::json!(["max-p99"]));
    assert!(load[0].evidence.figures["p99Ms"].as_f64().is_some_and(|v| v > 0.0));
    server.stop().await
}

/// The checklist's smoke items want a record for their environment (`subject: production` /
/// `staging`): smoke takes it from the values' `cluster.environment`, as deploy does, and the check
/// then passes the item on that record alone (the other environment's item still needs its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_record_with_the_values_environment_proves_the_checklist_item() -> anyhow::Result<()> {
    let cluster = testbed::kube().await.context("testbed cluster (run cargo xtask deps install)")?;
    let kubeconfig = cluster.kubeconfig().to_str().unwrap_or_default().to_owned();
    let prod = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("values/values-prod.yaml");
    let prod = prod.to_str().unwrap_or_default();
    let server = Server::start(Backend::Sqlite, "").await?;
    let cluster_args = ["--kubeconfig", &kubeconfig, "-n", "default"];
    let url = server.url();
    let mut args = vec!["smoke", "--url", &url, "-f", prod];
    args.extend(cluster_args);
    let out = audctl(&args, Some(KEY)).await?;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));

    let settings = audctl::kube::KubeSettings { kubeconfig: Some(cluster.kubeconfig().to_owned()), context: None };
    let client = settings.client().await?;
    let smoke = audctl::evidence::list(&client, "default", Some("smoke")).await?;
    assert_eq!(smoke.len(), 1);
    assert_eq!(smoke[0].evidence.subject.as_deref(), Some("production"));

    let mut args = vec!["check", "-f", prod, "--only", "prod-smoke,staging-smoke", "--no-record", "-o", "json"];
    args.extend(cluster_args);
    let out = audctl(&args, None).await?;
    let report = json(&out)?;
    let prod_smoke = item(&report, "prod-smoke");
    assert_eq!(prod_smoke["status"], "PASS", "{report:#}");
    assert_eq!(prod_smoke["evidence"], smoke[0].name.as_str());
    let staging_smoke = item(&report, "staging-smoke");
    assert_eq!(staging_smoke["status"], "NEEDS-EVIDENCE", "{report:#}");
    // The hint is a command that writes the record this item looks for.
    let hint = staging_smoke["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("audctl smoke -f values/values-prod.yaml -f values/values-staging.yaml"), "{hint}");
    assert_eq!(code(&out), 1, "staging-smoke is still unproven");

    // The hint as given (no -n): the staging values put the record in their namespace, where a
    // check with the same values (no -n either) reads it.
    let staging = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("values/values-staging.yaml");
    let staging = staging.to_str().unwrap_or_default();
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta { name: Some("audit-trail-staging".into()), ..Default::default() },
        ..Default::default()
    };
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&kube::api::PostParams::default(), &ns)
        .await?;
    let out =
        audctl(&["smoke", "--url", &url, "-f", prod, "-f", staging, "--kubeconfig", &kubeconfig], Some(KEY)).await?;
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("in namespace audit-trail-staging"), "{}", stderr(&out));
    let args = ["check", "-f", prod, "-f", staging, "--only", "staging-smoke,load-tested", "--no-record", "-o", "json"];
    let out = audctl(&[&args[..], &["--kubeconfig", &kubeconfig]].concat(), None).await?;
    let report = json(&out)?;
    assert_eq!(report["namespace"], "audit-trail-staging");
    assert_eq!(item(&report, "staging-smoke")["status"], "PASS", "{report:#}");
    // A verb without values writes into -n: the hint names this check's namespace.
    let hint = item(&report, "load-tested")["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("`audctl load -n audit-trail-staging`"), "{hint}");
    server.stop().await
}
