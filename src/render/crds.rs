//! Typed custom resources: the subset of the operators' CRDs that the templates use, with unknown
//! fields refused, so a misspelt field fails `audctl render` instead of being pruned by the API server.
//! Field names follow the CRDs (cert-manager aside, versions: prometheus-operator v0.85,
//! external-secrets v1.3, CloudNativePG v1.28, ECK v3.5, Strimzi 0.49).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A custom resource: apiVersion, kind, metadata and a typed spec.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Custom<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
}

macro_rules! spec {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $field: Option<$ty>,)*
        }
    };
}

// monitoring.coreos.com/v1
spec!(ServiceMonitorSpec { selector: LabelSelector, endpoints: Vec<Endpoint>, namespace_selector: Json, job_label: String });
spec!(Endpoint {
    port: String, path: String, interval: String, scrape_timeout: String, scheme: String,
    relabelings: Vec<Relabeling>, metric_relabelings: Vec<Relabeling>
});
spec!(Relabeling {
    action: String, source_labels: Vec<String>, target_label: String, replacement: String, regex: String, separator: String
});
spec!(PrometheusRuleSpec { groups: Vec<RuleGroup> });
spec!(RuleGroup { name: String, interval: String, rules: Vec<Rule> });
spec!(Rule {
    alert: String, record: String, expr: String,
    #[serde(rename = "for")] for_: String,
    labels: BTreeMap<String, String>, annotations: BTreeMap<String, String>
});

// external-secrets.io/v1
spec!(ExternalSecretSpec {
    refresh_interval: String, secret_store_ref: StoreRef, target: SecretTarget, data: Vec<SecretData>
});
spec!(StoreRef { name: String, kind: String });
spec!(SecretTarget { name: String, creation_policy: String });
spec!(SecretData { secret_key: String, remote_ref: RemoteRef });
spec!(RemoteRef { key: String, property: String });

// postgresql.cnpg.io/v1
spec!(ClusterSpec {
    instances: u32,
    image_name: String,
    inherited_metadata: InheritedMetadata,
    enable_superuser_access: bool,
    bootstrap: Bootstrap,
    postgresql: PostgresConfig,
    storage: Storage,
    resources: ResourceRequirements,
    affinity: CnpgAffinity,
    monitoring: CnpgMonitoring,
    backup: CnpgBackup
});
spec!(InheritedMetadata { labels: BTreeMap<String, String>, annotations: BTreeMap<String, String> });
spec!(Bootstrap { initdb: InitDb });
spec!(InitDb { database: String, owner: String, secret: NameRef });
spec!(NameRef { name: String });
spec!(KeyRef { name: String, key: String });
spec!(PostgresConfig { parameters: BTreeMap<String, String> });
spec!(Storage { size: String, storage_class: String });
spec!(CnpgAffinity { enable_pod_anti_affinity: bool, topology_key: String });
spec!(CnpgMonitoring { enable_pod_monitor: bool });
spec!(CnpgBackup { retention_policy: String, barman_object_store: BarmanObjectStore });
spec!(BarmanObjectStore { destination_path: String, s3_credentials: S3Credentials, wal: WalConfig });
spec!(S3Credentials { access_key_id: KeyRef, secret_access_key: KeyRef });
spec!(WalConfig { compression: String });
spec!(ScheduledBackupSpec {
    schedule: String,
    immediate: bool,
    backup_owner_reference: String,
    method: String,
    cluster: NameRef
});

// elasticsearch.k8s.elastic.co/v1
spec!(ElasticsearchSpec { version: String, node_sets: Vec<NodeSet> });
spec!(NodeSet {
    name: String, count: u32, config: BTreeMap<String, Json>, pod_template: PodTemplateSpec,
    volume_claim_templates: Vec<PersistentVolumeClaim>
});

// kafka.strimzi.io/v1 (Strimzi 0.49 deprecates v1beta2)
spec!(KafkaNodePoolSpec {
    replicas: u32, roles: Vec<String>, resources: ResourceRequirements, storage: KafkaStorage, template: PoolTemplate
});
spec!(KafkaStorage { #[serde(rename = "type")] type_: String, volumes: Vec<KafkaVolume> });
spec!(KafkaVolume {
    id: u32,
    #[serde(rename = "type")]
    type_: String,
    size: String,
    class: String,
    delete_claim: bool,
    kraft_metadata: String
});
spec!(PoolTemplate { pod: PodTemplateMeta });
spec!(PodTemplateMeta { metadata: InheritedMetadata });
spec!(KafkaSpec { kafka: KafkaCluster, entity_operator: EntityOperator, kafka_exporter: KafkaExporter });
spec!(KafkaCluster { version: String, listeners: Vec<Listener>, config: BTreeMap<String, Json>, metrics_config: MetricsConfig });
spec!(Listener {
    name: String,
    port: u16,
    #[serde(rename = "type")]
    type_: String,
    tls: bool
});
spec!(MetricsConfig {
    #[serde(rename = "type")]
    type_: String,
    value_from: MetricsValueFrom
});
spec!(MetricsValueFrom { config_map_key_ref: KeyRef });
spec!(EntityOperator { topic_operator: Json, user_operator: Json });
spec!(KafkaExporter { topic_regex: String, group_regex: String });
spec!(KafkaTopicSpec { partitions: u32, replicas: u32, config: BTreeMap<String, Json> });
