//! What templates see: `values` (the merged values, keys as in the values files) and `release`
//! (names and derived settings computed once here, so templates stay declarative).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::values::Values;

/// Settings ECK manages itself; set in elasticsearch.yml they are refused or overridden.
const ECK_MANAGED: &[&str] = &["cluster.name", "node.name", "network.host", "path.data", "path.logs", "discovery."];

#[derive(Debug, Serialize)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub image: String,
    /// Labels on every object of the server.
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    /// Labels of the backup CronJobs' pods. Their own name, not the server's: the server's
    /// NetworkPolicy, anti-affinity and spread constraints select `app.kubernetes.io/name`, and
    /// must neither confine nor keep out the jobs.
    pub backup_selector: BTreeMap<String, String>,
    /// The server's configuration file (AUDIT_CONFIG_FILE), as written to the ConfigMap.
    pub server_config: String,
    /// Connection settings of the datastores, as environment variables (ConfigMap, no secrets).
    pub datastores: BTreeMap<String, String>,
    pub postgresql: Names,
    pub elasticsearch: Elasticsearch,
    pub redis: Names,
    pub kafka: Names,
}

#[derive(Debug, Serialize)]
pub struct Names {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Serialize)]
pub struct Elasticsearch {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// Node-level settings for the nodeSet config.
    pub node_config: BTreeMap<String, Json>,
    /// Settings of the seed's elasticsearch.yml that ECK manages, with the reason, for a comment.
    pub dropped: Vec<String>,
    /// Index-level settings (index template).
    pub index_settings: BTreeMap<String, Json>,
}

pub fn release(v: &Values) -> Release {
    let name = v.name.clone();
    let namespace = v.namespace.name.clone();
    let image = match &v.image.digest {
        Some(digest) => format!("{}@{digest}", v.image.repository),
        None => format!("{}:{}", v.image.repository, v.image.tag),
    };
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.clone()),
        ("app.kubernetes.io/instance".to_owned(), name.clone()),
    ]);
    let backup_selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), format!("{name}-backup")),
        ("app.kubernetes.io/instance".to_owned(), name.clone()),
    ]);
    let mut labels = selector.clone();
    labels.insert("app.kubernetes.io/version".into(), v.image.tag.clone());
    labels.insert("app.kubernetes.io/managed-by".into(), "audctl".into());
    labels.insert("app".into(), name.clone());

    let fqdn = |service: &str| format!("{service}.{namespace}.svc");
    let postgresql = if v.postgresql.enabled {
        let cluster = format!("{name}-postgresql");
        Names { host: fqdn(&format!("{cluster}-rw")), name: cluster, port: 5432 }
    } else {
        external_names(&name, "postgresql", &v.postgresql.external, 5432)
    };
    let elasticsearch = elasticsearch(v, &fqdn);
    let redis = if v.redis.enabled {
        let n = format!("{name}-redis");
        Names { host: fqdn(&n), name: n, port: 26379 }
    } else {
        external_names(&name, "redis", &v.redis.external, 6379)
    };
    let kafka = if v.kafka.enabled {
        let n = format!("{name}-kafka");
        Names { host: fqdn(&format!("{n}-kafka-bootstrap")), name: n, port: 9092 }
    } else {
        external_names(&name, "kafka", &v.kafka.external, 9092)
    };

    let mut datastores = BTreeMap::new();
    datastores.insert("POSTGRES_HOST".into(), postgresql.host.clone());
    datastores.insert("POSTGRES_PORT".into(), postgresql.port.to_string());
    let database =
        if v.postgresql.enabled { Some(&v.postgresql.auth.database) } else { v.postgresql.external.database.as_ref() };
    datastores.insert("POSTGRES_DATABASE".into(), database.cloned().unwrap_or_default());
    let scheme = if v.elasticsearch.enabled {
        "https".to_owned()
    } else {
        v.elasticsearch.external.database.clone().unwrap_or("https".into())
    };
    datastores.insert("ELASTICSEARCH_URL".into(), format!("{scheme}://{}:{}", elasticsearch.host, elasticsearch.port));
    if v.redis.enabled && v.redis.sentinel.enabled {
        datastores.insert("REDIS_SENTINELS".into(), format!("{}:{}", redis.host, redis.port));
        datastores.insert("REDIS_MASTER_SET".into(), v.redis.sentinel.master_set.clone());
    } else {
        datastores.insert("REDIS_URL".into(), format!("redis://{}:{}", redis.host, redis.port));
    }
    datastores.insert("KAFKA_BOOTSTRAP_SERVERS".into(), format!("{}:{}", kafka.host, kafka.port));
    datastores.insert("KAFKA_TOPIC".into(), v.kafka.topic.name.clone());

    Release {
        server_config: server_config(v, &kafka, &redis, &elasticsearch, &datastores),
        name,
        namespace,
        image,
        labels,
        selector,
        backup_selector,
        datastores,
        postgresql,
        elasticsearch,
        redis,
        kafka,
    }
}

fn external_names(release: &str, what: &str, e: &crate::values::model::External, port: u16) -> Names {
    Names { name: format!("{release}-{what}"), host: e.host.clone().unwrap_or_default(), port: e.port.unwrap_or(port) }
}

/// Where the Deployment mounts the signing key Secret (read-only).
pub const SIGNING_KEY_DIR: &str = "/etc/audit-trail/signing-key";

/// The server's config file (audit-server's FileConfig keys). Rendered here, not in a template, so
/// the Deployment's checksum/config annotation hashes exactly what the ConfigMap holds.
/// Where the Deployment mounts the search credentials (ECK's elastic user and HTTP CA).
pub const SEARCH_CREDENTIALS_DIR: &str = "/etc/audit-trail/search";

fn server_config(
    v: &Values,
    kafka: &Names,
    redis: &Names,
    es: &Elasticsearch,
    datastores: &BTreeMap<String, String>,
) -> String {
    let s = &v.server;
    let mut config = serde_json::json!({
        "listen": format!("0.0.0.0:{}", s.port),
        "dataDir": s.data_dir,
        "dbMaxConnections": s.db_max_connections,
        "rateLimitPerSecond": s.rate_limit_per_second,
        "rateLimitBurst": s.rate_limit_burst,
        "shutdownDelaySeconds": s.shutdown_delay_seconds,
        "requestTimeoutSeconds": s.request_timeout_seconds,
        "groupCommitMaxEvents": s.group_commit_max_events,
    });
    let i = &v.integrity;
    if let Some(map) = config.as_object_mut() {
        if i.signing_key_secret.is_some() {
            map.insert("signingKeyFile".into(), format!("{SIGNING_KEY_DIR}/signing-key.pem").into());
        }
        map.insert("checkpointDir".into(), i.checkpoint_dir.clone().into());
        map.insert("checkpointIntervalSeconds".into(), i.checkpoint_interval_seconds.into());
        map.insert("verifyIntervalSeconds".into(), i.verify_interval_seconds.into());
        map.insert("verifyFullIntervalSeconds".into(), i.verify_full_interval_seconds.into());
        // Rate limits shared by the replicas (audit-server README, "Redis"): the in-cluster Redis
        // through its Sentinels. The password comes from Redis's Secret (Deployment env), not here.
        if v.redis.enabled {
            let r = if v.redis.sentinel.enabled {
                serde_json::json!({
                    "sentinels": [format!("{}:{}", redis.host, redis.port)],
                    "masterSet": v.redis.sentinel.master_set,
                })
            } else {
                serde_json::json!({"url": format!("redis://{}:6379", redis.host)})
            };
            map.insert("redis".into(), r);
        }
    }
    // Kafka deployed or external: every stored event is published to the topic (outbox relay).
    if !kafka.host.is_empty() {
        config["kafkaBootstrapServers"] = format!("{}:{}", kafka.host, kafka.port).into();
        config["kafkaTopic"] = v.kafka.topic.name.clone().into();
    }
    // Search (audit-server README, "Search"): events indexed from the outbox, searches answered
    // from the index. In-cluster ECK: its elastic user and HTTP CA, mounted by the Deployment; the
    // index template carries the seed's index settings (the server's template is the one that
    // applies to its indices, so it must hold them).
    if !es.host.is_empty() {
        config["searchUrl"] = datastores.get("ELASTICSEARCH_URL").cloned().unwrap_or_default().into();
        config["searchIndexSettings"] = serde_json::to_value(&es.index_settings).unwrap_or_default();
        if v.elasticsearch.enabled {
            config["searchUsername"] = "elastic".into();
            config["searchPasswordFile"] = format!("{SEARCH_CREDENTIALS_DIR}/password").into();
            config["searchCaFile"] = format!("{SEARCH_CREDENTIALS_DIR}/ca.crt").into();
        }
    }
    serde_yaml::to_string(&config).unwrap_or_default()
}

fn elasticsearch(v: &Values, fqdn: &dyn Fn(&str) -> String) -> Elasticsearch {
    let es = &v.elasticsearch;
    let mut node_config = BTreeMap::new();
    let mut index_settings: BTreeMap<String, Json> =
        es.index_settings.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect();
    let mut dropped = Vec::new();
    let mut cluster_name = None;
    // The seed's esConfig (Helm chart style) holds elasticsearch.yml as text: split it.
    if let Some(yml) = es.es_config.get("elasticsearch.yml")
        && let Ok(map) = serde_yaml::from_str::<BTreeMap<String, Json>>(yml)
    {
        for (key, value) in map {
            if key == "cluster.name" {
                cluster_name = value.as_str().map(str::to_owned);
                dropped.push(format!("{key}: becomes the resource name (ECK derives cluster.name from it)"));
            } else if key.starts_with("xpack.security.") {
                dropped.push(format!("{key}: ECK enables security and transport TLS itself"));
            } else if ECK_MANAGED.iter().any(|m| key.starts_with(m)) {
                dropped.push(format!("{key}: managed by ECK"));
            } else if key.starts_with("index.") {
                index_settings.insert(key, value);
            } else {
                node_config.insert(key, value);
            }
        }
    }
    for (key, value) in &es.config {
        node_config.insert(key.clone(), value.clone());
    }
    // No vm.max_map_count sysctl under the restricted Pod Security Standard (it needs a privileged
    // init container): use niofs instead of mmap.
    node_config.insert("node.store.allow_mmap".into(), Json::Bool(false));
    let name =
        if es.enabled { cluster_name.unwrap_or_else(|| format!("{}-es", v.name)) } else { format!("{}-es", v.name) };
    let (host, port) = if es.enabled {
        (fqdn(&format!("{name}-es-http")), 9200)
    } else {
        (es.external.host.clone().unwrap_or_default(), es.external.port.unwrap_or(9200))
    };
    Elasticsearch { name, host, port, node_config, dropped, index_settings }
}
