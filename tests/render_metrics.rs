//! The PrometheusRule's expressions must query series the audit server really exports: start the
//! server in-process (SQLite), scrape /actuator/prometheus as Prometheus would, and check every metric
//! of the rendered alerts against the scrape (kube_* series come from kube-state-metrics, not the
//! server). The server's declared list, audit_server::metrics::METRIC_NAMES, is checked as well.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;

/// Metric names used in the `expr` fields of the rendered PrometheusRule (parsed by the library,
/// which the `service.metrics` check probe uses against a live server).
fn alert_metrics() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let values = audctl::values::load(&[root.join("values/values-prod.yaml")], &[]).expect("prod values");
    let objects = audctl::render::render(&values, None).expect("render prod");
    let rule = objects.iter().find(|o| o.kind == "PrometheusRule").expect("a PrometheusRule");
    audctl::probes::service::rule_metrics(&rule.text).expect("PrometheusRule expressions")
}

/// The metric family a series belongs to (histogram series carry _bucket/_count/_sum).
fn family(series: &str) -> &str {
    ["_bucket", "_count", "_sum"].iter().find_map(|s| series.strip_suffix(s)).unwrap_or(series)
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the server");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_expressions_use_metrics_the_server_exports() {
    let used = alert_metrics();
    assert!(used.contains("http_server_requests_seconds_count"), "{used:?}");
    assert!(used.contains("audit_db_pool_connections_active"), "{used:?}");
    assert!(!used.iter().any(|m| m.starts_with("hikaricp_")), "Java metric names left in the alerts: {used:?}");

    let data = tempfile::tempdir().expect("temp dir");
    let mut config = audit_server::Config::local(data.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    let server = audit_server::spawn(config).await.expect("start the audit server on SQLite");
    let addr = server.addr();
    let scrape = tokio::task::spawn_blocking(move || {
        // One request first so the request histogram has a series.
        let _ = http_get(addr, "/actuator/health");
        http_get(addr, "/actuator/prometheus")
    })
    .await
    .expect("scrape");
    server.shutdown().await.expect("stop the server");

    assert!(scrape.starts_with("HTTP/1.") && scrape.contains(" 200 "), "scrape failed:\n{scrape}");
    let body = scrape.split_once("\r\n\r\n").map_or(scrape.as_str(), |(_, body)| body);
    let exported = audctl::probes::service::exported_series(body);
    let missing: Vec<&String> = used.iter().filter(|m| !m.starts_with("kube_") && !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "alerts query series the server does not export: {missing:?}\nexported: {exported:?}");

    for m in used.iter().filter(|m| !m.starts_with("kube_")) {
        assert!(
            audit_server::metrics::METRIC_NAMES.contains(&family(m)),
            "{m} is not in audit_server::metrics::METRIC_NAMES {:?}",
            audit_server::metrics::METRIC_NAMES
        );
    }
}

#[test]
fn servicemonitor_attaches_the_app_label_the_alerts_filter_on() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let values = audctl::values::load(&[root.join("values/values-prod.yaml")], &[]).expect("prod values");
    let objects = audctl::render::render(&values, None).expect("render prod");
    let monitor = objects.iter().find(|o| o.kind == "ServiceMonitor").expect("a ServiceMonitor");
    let doc: serde_yaml::Value = serde_yaml::from_str(&monitor.text).expect("YAML");
    let relabel = &doc["spec"]["endpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "app");
    assert_eq!(relabel["replacement"], "audit-trail");
    let rule = objects.iter().find(|o| o.kind == "PrometheusRule").expect("a PrometheusRule");
    assert!(rule.text.contains("app=\"audit-trail\""));
}
