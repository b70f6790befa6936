//! The PrometheusRule's expressions must query series the audit server really exports: start the
//! server in-process (SQLite), scrape /actuator/prometheus as Prometheus would, and check every metric
//! of the rendered alerts against the scrape (kube_* series come from kube-state-metrics, not the
//! server). The server's declared list, audit_server::metrics::METRIC_NAMES, is checked as well, and
//! the rendered server configuration is read by the server's own `Config`.

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

#[test]
fn promql_metric_names_with_and_without_labels() {
    let expr = r#"sum by (le) (rate(http_server_requests_seconds_bucket{uri!~"/actuator.*",x='a}b'}[5m] offset 1h))
        / on (app) group_left(team) up > 0.99 and audit_db_pool_connections_max
        unless count without (pod) (kube_pod_info{namespace="x"}) > bool 1e3 or topk(3, foo:bar_ratio)"#;
    assert_eq!(
        audctl::probes::service::metric_names(expr),
        [
            "http_server_requests_seconds_bucket",
            "up",
            "audit_db_pool_connections_max",
            "kube_pod_info",
            "foo:bar_ratio"
        ]
    );
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
    let monitor = objects
        .iter()
        .find(|o| o.kind == "ServiceMonitor" && o.name == "audit-trail")
        .expect("the server's ServiceMonitor");
    let doc: serde_yaml::Value = serde_yaml::from_str(&monitor.text).expect("YAML");
    let relabel = &doc["spec"]["endpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "app");
    assert_eq!(relabel["replacement"], "audit-trail");
    let rule = objects.iter().find(|o| o.kind == "PrometheusRule").expect("a PrometheusRule");
    assert!(rule.text.contains("app=\"audit-trail\""));
}

/// The rendered server configuration, read by audit_server's own `Config` (which refuses unknown
/// fields) through the environment the rendered Deployment gives the pod: the ConfigMap's
/// config.yaml at AUDIT_CONFIG_FILE and an API keys file, in the format the audit-server README
/// documents for the Secret, at AUDIT_API_KEYS_FILE. Render and server cannot drift apart unseen.
#[test]
fn rendered_server_config_is_read_by_the_server() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["values/values-prod.yaml", "values/values-local.yaml"] {
        let values = audctl::values::load(&[root.join(file)], &[]).expect("values");
        let objects = audctl::render::render(&values, None).expect("render");
        let config_map = objects
            .iter()
            .filter(|o| o.kind == "ConfigMap")
            .map(|o| serde_yaml::from_str::<serde_yaml::Value>(&o.text).expect("ConfigMap YAML"))
            .find(|doc| doc["data"]["config.yaml"].is_string())
            .unwrap_or_else(|| panic!("{file}: no ConfigMap with config.yaml"));
        let deployment = objects.iter().find(|o| o.kind == "Deployment").expect("a Deployment");
        let deployment: serde_yaml::Value = serde_yaml::from_str(&deployment.text).expect("Deployment YAML");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let mut env = std::collections::BTreeMap::new();
        for var in container["env"].as_sequence().expect("container env") {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = match var["value"].as_str() {
                Some(v) => v.to_owned(),
                // From the Secret: a stand-in of the right form.
                None => "postgres://audit@db.example:5432/audit".to_owned(),
            };
            env.insert(name, value);
        }

        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("config.yaml");
        // The search credentials' mount (ECK's Secrets) stands in as files under the temp dir.
        let search_dir = dir.path().join("search");
        std::fs::create_dir(&search_dir).expect("mkdir");
        std::fs::write(search_dir.join("password"), "stand-in\n").expect("write");
        let rendered = config_map["data"]["config.yaml"].as_str().unwrap_or_default();
        let config_text = rendered.replace("/etc/audit-trail/search/", &format!("{}/", search_dir.display()));
        std::fs::write(&config_path, config_text).expect("write");
        let keys_path = dir.path().join("api-keys.yaml");
        let keys = format!(
            "- name: ingest-acme\n  sha256: {}\n  tenants: [acme, globex]\n- name: auditors\n  key: plain-key\n  tenants: [\"*\"]\n",
            "ab".repeat(32)
        );
        std::fs::write(&keys_path, keys).expect("write");
        assert_eq!(env.get("AUDIT_CONFIG_FILE").map(String::as_str), Some("/etc/audit-trail/config/config.yaml"));
        assert_eq!(env.get("AUDIT_API_KEYS_FILE").map(String::as_str), Some("/etc/audit-trail/secrets/api-keys.yaml"));
        env.insert("AUDIT_CONFIG_FILE".into(), config_path.display().to_string());
        env.insert("AUDIT_API_KEYS_FILE".into(), keys_path.display().to_string());

        let config = audit_server::Config::from_lookup(|name| env.get(name).cloned())
            .unwrap_or_else(|e| panic!("{file}: the server refuses the rendered configuration: {e:#}"));
        let s = &values.server;
        assert_eq!(config.listen.port(), s.port, "{file}");
        assert_eq!(config.data_dir, Path::new(&s.data_dir), "{file}");
        assert_eq!(config.db_max_connections, s.db_max_connections, "{file}");
        assert_eq!(config.rate_limit_per_second, s.rate_limit_per_second, "{file}");
        assert_eq!(config.rate_limit_burst, s.rate_limit_burst, "{file}");
        assert_eq!(config.shutdown_delay.as_secs_f64(), s.shutdown_delay_seconds, "{file}");
        assert_eq!(config.request_timeout.as_secs_f64(), s.request_timeout_seconds, "{file}");
        assert_eq!(config.group_commit_max_events, s.group_commit_max_events as usize, "{file}");
        assert!(config.database_url.is_some(), "{file}: DATABASE_URL not passed");
        // Tamper evidence: the signing key from its Secret, mounted read-only where the config
        // says; the checkpoint directory on its own volume; the background verifier's schedule.
        let i = &values.integrity;
        assert_eq!(config.checkpoint_dir.as_deref(), Some(Path::new(&i.checkpoint_dir)), "{file}");
        assert_eq!(config.verify_interval.map(|d| d.as_secs_f64()), Some(i.verify_interval_seconds), "{file}");
        assert_eq!(config.verify_full_interval.as_secs_f64(), i.verify_full_interval_seconds, "{file}");
        assert_eq!(config.checkpoint_interval.map(|d| d.as_secs_f64()), Some(i.checkpoint_interval_seconds), "{file}");
        let mounts = container["volumeMounts"].as_sequence().expect("volume mounts");
        let mount = |name: &str| mounts.iter().find(|m| m["name"] == name);
        let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_sequence().expect("volumes");
        let volume = |name: &str| volumes.iter().find(|v| v["name"] == name);
        let checkpoints = mount("checkpoints").unwrap_or_else(|| panic!("{file}: no checkpoints mount"));
        assert_eq!(checkpoints["mountPath"].as_str(), Some(i.checkpoint_dir.as_str()), "{file}");
        assert_ne!(checkpoints["readOnly"].as_bool(), Some(true), "{file}: the checkpoint dir must be writable");
        let claim = &volume("checkpoints").expect("checkpoints volume")["persistentVolumeClaim"]["claimName"];
        assert_eq!(claim.as_str(), i.checkpoint_claim_name.as_deref(), "{file}");
        match &i.signing_key_secret {
            Some(secret) => {
                let key_file = config.signing_key_file.clone().unwrap_or_else(|| panic!("{file}: no signing key"));
                let m = mount("signing-key").unwrap_or_else(|| panic!("{file}: signing key not mounted"));
                assert_eq!(m["readOnly"].as_bool(), Some(true), "{file}");
                let dir = m["mountPath"].as_str().expect("mountPath");
                assert_eq!(key_file.parent(), Some(Path::new(dir)), "{file}");
                let v = &volume("signing-key").expect("signing-key volume")["secret"];
                assert_eq!(v["secretName"].as_str(), Some(secret.as_str()), "{file}");
                assert_eq!(v["items"][0]["key"].as_str(), Some(i.signing_key_secret_key.as_str()), "{file}");
                let name = key_file.file_name().and_then(|n| n.to_str());
                assert_eq!(v["items"][0]["path"].as_str(), name, "{file}");
            }
            None => assert!(config.signing_key_file.is_none() && mount("signing-key").is_none(), "{file}"),
        }
        if file.ends_with("values-prod.yaml") {
            // Search: ECK's HTTP service, its elastic user and CA through one read-only mount.
            let search = config.search.as_ref().unwrap_or_else(|| panic!("{file}: search settings not passed"));
            assert_eq!(search.url, "https://audit-trail-es-http.audit-trail.svc:9200", "{file}");
            assert_eq!(search.username.as_deref(), Some("elastic"), "{file}");
            assert_eq!(search.password.as_ref().map(|p| p.expose()), Some("stand-in"), "{file}");
            assert!(rendered.contains("searchCaFile: /etc/audit-trail/search/ca.crt"), "{file}");
            assert_eq!(search.index_settings["index.refresh_interval"], "5s", "{file}: the seed's index settings");
            let m = mount("search-credentials").unwrap_or_else(|| panic!("{file}: search credentials not mounted"));
            assert_eq!(
                (m["mountPath"].as_str(), m["readOnly"].as_bool()),
                (Some("/etc/audit-trail/search"), Some(true))
            );
            let sources = &volume("search-credentials").expect("search-credentials volume")["projected"]["sources"];
            assert_eq!(sources[0]["secret"]["name"].as_str(), Some("audit-trail-es-elastic-user"), "{file}");
            assert_eq!(sources[0]["secret"]["items"][0]["path"].as_str(), Some("password"), "{file}");
            assert_eq!(sources[1]["secret"]["name"].as_str(), Some("audit-trail-es-http-certs-public"), "{file}");
            assert_eq!(sources[1]["secret"]["items"][0]["path"].as_str(), Some("ca.crt"), "{file}");
            let kafka = config.kafka.as_ref().unwrap_or_else(|| panic!("{file}: Kafka settings not passed"));
            assert_eq!(kafka.bootstrap_servers, "audit-trail-kafka-kafka-bootstrap.audit-trail.svc:9092", "{file}");
            assert_eq!(kafka.topic, values.kafka.topic.name, "{file}");
        }
        // Shared rate limits: the in-cluster Redis through its Sentinels, password from its Secret.
        match (&config.redis, values.redis.enabled) {
            (Some(r), true) => {
                let audit_server::config::RedisTarget::Sentinel { master_set, .. } = &r.target else {
                    panic!("{file}: Redis without Sentinel: {:?}", r.target)
                };
                assert_eq!(master_set, &values.redis.sentinel.master_set, "{file}");
                assert!(r.password.is_some(), "{file}: no AUDIT_REDIS_PASSWORD");
            }
            (None, false) => {}
            (r, enabled) => panic!("{file}: redis.enabled={enabled} but the server's Redis is {r:?}"),
        }
        let tenants: Vec<Vec<String>> = config.api_keys.iter().map(|k| k.tenants.clone()).collect();
        assert_eq!(tenants, [vec!["acme".to_owned(), "globex".to_owned()], vec!["*".to_owned()]], "{file}");
    }
}

/// The guide's `redis.metrics.enabled: true`: an exporter in every Redis pod, a metrics port on the
/// headless Service, a ServiceMonitor that finds that port, and the Redis NetworkPolicy letting the
/// monitoring namespace in on it. Off, none of it.
#[test]
fn redis_metrics_render_an_exporter_that_prometheus_can_reach() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let parse = |sets: &[&str]| -> Vec<(String, String, serde_json::Value)> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let values = audctl::values::load(&[root.join("values/values-prod.yaml")], &sets).expect("prod values");
        let objects = audctl::render::render(&values, None).expect("render prod");
        objects.iter().map(|o| (o.kind.clone(), o.name.clone(), serde_yaml::from_str(&o.text).expect("YAML"))).collect()
    };
    let find = |objects: &[(String, String, serde_json::Value)], kind: &str, name: &str| {
        objects.iter().find(|(k, n, _)| k == kind && n == name).map(|(_, _, d)| d.clone())
    };
    let on = parse(&[]);
    let set = find(&on, "StatefulSet", "audit-trail-redis").expect("the Redis StatefulSet");
    let containers = set["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let exporter = containers.iter().find(|c| c["name"] == "metrics").expect("an exporter container");
    assert_eq!(exporter["image"], "oliver006/redis_exporter:v1.67.0");
    assert_eq!(exporter["ports"][0]["containerPort"], 9121);
    assert_eq!(exporter["env"][1]["valueFrom"]["secretKeyRef"]["name"], "redis-secrets");
    let headless = find(&on, "Service", "audit-trail-redis-headless").expect("the headless Service");
    let port = headless["spec"]["ports"].as_array().into_iter().flatten().find(|p| p["name"] == "metrics");
    assert_eq!(port.map(|p| p["port"].clone()), Some(serde_json::json!(9121)));
    let monitor = find(&on, "ServiceMonitor", "audit-trail-redis").expect("a Redis ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let wanted = monitor["spec"]["selector"]["matchLabels"].as_object().cloned().unwrap_or_default();
    assert!(wanted.iter().all(|(k, v)| &headless["metadata"]["labels"][k] == v), "{wanted:?}");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus", "not selected by the server's Prometheus");
    let policy = find(&on, "NetworkPolicy", "audit-trail-redis-network-policy").expect("the Redis policy");
    let scrape = serde_json::json!({
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": 9121}],
    });
    assert!(policy["spec"]["ingress"].as_array().into_iter().flatten().any(|r| r == &scrape), "{policy}");

    let off = parse(&["redis.metrics.enabled=false"]);
    let set = find(&off, "StatefulSet", "audit-trail-redis").expect("the Redis StatefulSet");
    let names: Vec<_> = set["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, ["redis", "sentinel"]);
    assert!(find(&off, "ServiceMonitor", "audit-trail-redis").is_none());
}

/// The Deployment's AUDIT_LOG_FIELDS is what the server's own parser accepts, and gives the
/// guide's customFields for production: {"app":"audit-trail","env":"production"}.
#[test]
fn rendered_log_fields_are_the_guides_and_the_server_accepts_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let values = audctl::values::load(&[root.join("values/values-prod.yaml")], &[]).expect("prod values");
    let objects = audctl::render::render(&values, None).expect("render prod");
    let deployment = objects.iter().find(|o| o.kind == "Deployment").expect("a Deployment");
    let doc: serde_json::Value = serde_yaml::from_str(&deployment.text).expect("YAML");
    let env = doc["spec"]["template"]["spec"]["containers"][0]["env"].as_array().cloned().unwrap_or_default();
    let fields = env.iter().find(|e| e["name"] == "AUDIT_LOG_FIELDS").expect("AUDIT_LOG_FIELDS");
    let text = fields["value"].as_str().expect("a literal value");
    let parsed: serde_json::Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(parsed, serde_json::json!({"app": "audit-trail", "env": "production"}));
    let prefix = audit_server::logging::fixed_fields(Some(text)).expect("the server accepts it");
    assert_eq!(prefix, r#""app":"audit-trail","env":"production","#);
}

/// The connection budget the render enforces counts the server's append lanes as the server
/// opens them (its default, since the render does not set AUDIT_APPEND_LANES), and refuses pools
/// that cannot fit the in-cluster PostgreSQL's max_connections at the autoscaler's ceiling.
#[test]
fn server_pools_fit_max_connections_at_full_scale() {
    let data = tempfile::tempdir().expect("tempdir");
    let server_default = audit_server::Config::local(data.path()).append_lanes;
    assert_eq!(audctl::values::model::SERVER_APPEND_LANES as usize, server_default);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prod = [root.join("values/values-prod.yaml")];
    let v = audctl::values::load(&prod, &[]).expect("prod values fit");
    // 20 pods x (5 + 4) = 180 <= 200 - 3.
    assert_eq!(v.server_pods_at_full_scale() * v.server_connections_per_pod(), 180);
    let err = audctl::values::load(&prod, &["server.dbMaxConnections=6".to_owned()]).expect_err("200 > 197");
    let text = err.to_string();
    assert!(text.contains("20 pods x (6 pooled + 4 append connections) = 200"), "{text}");
    assert!(text.contains("expected server.dbMaxConnections <= 5"), "{text}");
    let prod_text = std::fs::read_to_string(&prod[0]).expect("values-prod.yaml");
    let raised = "server:\n  dbMaxConnections: 6\npostgresql:\n  parameters:\n    max_connections: \"203\"\n";
    let layers = [(prod[0].clone(), prod_text), ("raised.yaml".into(), raised.to_owned())];
    audctl::values::load_texts(&layers, &[]).expect("200 <= 203 - 3");
    // An external database is the live probe's to check.
    let external = ["server.dbMaxConnections=40".to_owned(), "postgresql.enabled=false".to_owned()];
    if let Err(e) = audctl::values::load(&prod, &external) {
        assert!(!e.to_string().contains("max_connections"), "{e}");
    }
}
