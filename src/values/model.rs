//! The typed values. Every key of values/defaults.yaml maps to a field here; unknown keys are refused.
//!
//! Field docs become the descriptions of `audctl render --schema`. Pod-level settings reuse the
//! Kubernetes types (k8s-openapi) so the values read like the manifests they end up in.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, PodSecurityContext, Probe, SecurityContext, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quantity::Quantity;

/// Values of an Audit Trail release.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// Release name: prefix of every object, value of `app.kubernetes.io/name` and of the `app` label.
    pub name: String,
    pub namespace: NamespaceValues,
    /// The cluster this release belongs to; `audctl deploy` refuses another one.
    #[serde(default)]
    pub cluster: ClusterValues,
    pub image: Image,
    /// Replicas when autoscaling is off (with autoscaling on, the HPA owns the replica count).
    pub replica_count: u32,
    pub autoscaling: Autoscaling,
    pub resources: Resources,
    /// Extra environment variables of the server container.
    pub env: Vec<EnvVar>,
    pub liveness_probe: Probe,
    pub readiness_probe: Probe,
    pub startup_probe: Option<Probe>,
    pub affinity: Option<Affinity>,
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// Pod security context (restricted Pod Security Standard compliant by default).
    pub security_context: PodSecurityContext,
    /// Security context of the server container.
    pub container_security_context: SecurityContext,
    /// Seconds Kubernetes waits after SIGTERM before SIGKILL.
    pub termination_grace_period_seconds: i64,
    /// Seconds the preStop hook sleeps so endpoints are removed before the server stops accepting.
    pub pre_stop_sleep_seconds: i64,
    pub pod_annotations: BTreeMap<String, String>,
    pub server: Server,
    /// Signed checkpoints and the background verifier of the audit server.
    pub integrity: Integrity,
    pub secrets: Secrets,
    pub service: ServiceValues,
    pub pod_disruption_budget: PodDisruptionBudgetValues,
    pub ingress: Ingress,
    pub network_policy: NetworkPolicyValues,
    pub service_monitor: ServiceMonitorValues,
    pub prometheus_rule: PrometheusRuleValues,
    pub postgresql: Postgresql,
    pub elasticsearch: Elasticsearch,
    pub redis: Redis,
    pub kafka: Kafka,
    pub backups: Backups,
}

/// Connections each server pod opens for appends, on top of `server.dbMaxConnections`: the
/// server's append lanes (`AUDIT_APPEND_LANES`, default 4; the render leaves it at that). A test
/// (render_metrics) holds this equal to the server's default.
pub const SERVER_APPEND_LANES: u32 = 4;

impl Values {
    /// Server pods when the release is at its largest: the autoscaler's ceiling, else the fixed
    /// replica count. Each opens its whole database pool.
    pub fn server_pods_at_full_scale(&self) -> u32 {
        if self.autoscaling.enabled { self.autoscaling.max_replicas } else { self.replica_count }
    }

    /// PostgreSQL connections one server pod holds at most: its pool and its append lanes.
    pub fn server_connections_per_pod(&self) -> u32 {
        self.server.db_max_connections + SERVER_APPEND_LANES
    }
}

/// `audctl backup` CronJobs at the production guide's cadence (Disaster Recovery), a daily prune and
/// a weekly test-restore.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backups {
    pub enabled: bool,
    /// The audctl image the CronJobs run.
    pub image: Image,
    /// Secret holding the targets file under the key `targets.yaml` (connection settings; secrets
    /// in it as `{file: ...}` or `{env: ...}`).
    pub targets_secret: String,
    /// PersistentVolumeClaim holding the backup repository, mounted at /backups.
    pub repository_claim: String,
    /// Cron schedules (UTC): hourly PostgreSQL, Redis and Kafka offsets, daily search snapshots,
    /// daily prune, weekly verify.
    pub schedules: BackupSchedules,
    /// Resources of the backup container.
    pub resources: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupSchedules {
    pub postgres: String,
    pub redis: String,
    pub kafka: String,
    pub search: String,
    pub prune: String,
    pub verify: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceValues {
    pub name: String,
    /// Render the Namespace object (false: it exists already and is managed elsewhere).
    pub create: bool,
    /// Pod Security Standard level for the enforce, audit and warn labels.
    pub pod_security: String,
}

/// Wrong-cluster protection: a deploy to a cluster other than the one named here is refused unless
/// `--context` names the context explicitly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterValues {
    /// Environment name (prod, staging...): the subject of deploy evidence records.
    pub environment: Option<String>,
    /// Kubeconfig context the release must be deployed with.
    pub context: Option<String>,
    /// API server URL the release must be deployed to (e.g. `https://api.prod.example:6443`).
    pub server: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    pub repository: String,
    pub tag: String,
    /// Optional `sha256:...` digest; pins the image when set.
    pub digest: Option<String>,
    pub pull_policy: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Autoscaling {
    pub enabled: bool,
    pub min_replicas: u32,
    pub max_replicas: u32,
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: Option<u32>,
    pub target_memory_utilization_percentage: Option<u32>,
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// CPU and memory requests and limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceList {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

impl ResourceList {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

/// Settings of the audit server, written to its configuration file (ConfigMap).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: u16,
    /// The only directory the server writes to (an emptyDir under the read-only root filesystem).
    pub data_dir: String,
    pub db_max_connections: u32,
    /// Requests per second per API key; 0 disables the server's own limiter.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    /// After SIGTERM, report not-ready this long before closing the listener.
    pub shutdown_delay_seconds: f64,
    pub request_timeout_seconds: f64,
    pub group_commit_max_events: u32,
    /// `RUST_LOG` filter of the server.
    pub log_level: String,
}

/// Tamper evidence outside the database (the audit-server README's threat model): the key that
/// signs checkpoints, where they are published, and the background verifier.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Integrity {
    /// Secret holding the Ed25519 signing key (PEM PKCS#8), mounted read-only and passed as
    /// AUDIT_SIGNING_KEY_FILE; null: no key, checkpoints off (PostgreSQL).
    pub signing_key_secret: Option<String>,
    /// Key of that Secret holding the PEM.
    pub signing_key_secret_key: String,
    /// AUDIT_CHECKPOINT_DIR: where checkpoints are published (a volume mounted there).
    pub checkpoint_dir: String,
    /// PersistentVolumeClaim mounted at `checkpointDir` (ReadWriteMany: every replica publishes),
    /// on storage the database's operators cannot rewrite; null: an emptyDir, lost with the pod.
    pub checkpoint_claim_name: Option<String>,
    /// Publish moved chain heads this often (0: on demand only).
    pub checkpoint_interval_seconds: f64,
    /// Background verifier: walk every chain this often (0: off).
    pub verify_interval_seconds: f64,
    /// A background pass walks every chain from its first event when the last full one is older.
    pub verify_full_interval_seconds: f64,
}

/// Where the server's secrets (DATABASE_URL, API keys) come from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secrets {
    /// Name of the Secret the Deployment reads (created by the ExternalSecret when that is enabled).
    pub name: String,
    pub external_secrets: ExternalSecrets,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalSecrets {
    pub enabled: bool,
    pub store_ref: StoreRef,
    pub refresh_interval: String,
    /// Secret key -> remote key in the store.
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreRef {
    pub name: String,
    /// SecretStore or ClusterSecretStore.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceValues {
    #[serde(rename = "type")]
    pub type_: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodDisruptionBudgetValues {
    pub enabled: bool,
    pub min_available: Option<IntOrString>,
    pub max_unavailable: Option<IntOrString>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ingress {
    pub enabled: bool,
    pub class_name: String,
    pub annotations: BTreeMap<String, String>,
    pub hosts: Vec<IngressHost>,
    pub tls: Vec<IngressTls>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressHost {
    pub host: String,
    pub paths: Vec<IngressPath>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressPath {
    pub path: String,
    pub path_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressTls {
    /// Secret cert-manager writes the certificate to; required.
    pub secret_name: Option<String>,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyValues {
    pub enabled: bool,
    /// Labels of the ingress controller's namespace (the seed uses `name: ingress-nginx`).
    pub ingress_namespace_labels: BTreeMap<String, String>,
    /// Namespace of Prometheus, allowed to scrape the metrics port.
    pub monitoring_namespace: String,
    /// Allow DNS to kube-system (without it every name lookup of the server times out).
    pub allow_dns: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceMonitorValues {
    pub enabled: bool,
    pub labels: BTreeMap<String, String>,
    pub path: String,
    pub interval: String,
    pub scrape_timeout: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRuleValues {
    pub enabled: bool,
    pub labels: BTreeMap<String, String>,
    /// Alert when more than this fraction of requests fail with 5xx.
    pub error_rate_threshold: f64,
    /// Alert when the p99 latency is above this many seconds.
    pub latency_p99_seconds: f64,
    /// Alert when this fraction of the database pool is in use.
    pub pool_usage_threshold: f64,
    /// Alert when no background verification pass completed for this long (with the verifier on).
    pub verifier_stale_seconds: f64,
    /// Alert when the oldest stored event not yet published to Kafka is older than this many
    /// seconds (the outbox relay is behind or Kafka is down). Rendered when Kafka is configured.
    pub kafka_publish_lag_seconds: f64,
    /// Alert when the oldest stored event not yet indexed for search is older than this many
    /// seconds. Rendered when Elasticsearch is configured.
    pub search_index_lag_seconds: f64,
}

/// Persistent volume of a datastore.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Persistence {
    pub size: Quantity,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsToggle {
    pub enabled: bool,
}

/// A datastore run elsewhere: only connection settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct External {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Database (PostgreSQL), URL scheme (Elasticsearch: http/https), or bootstrap list (Kafka).
    pub database: Option<String>,
    /// Extra options appended to the connection URL (e.g. `sslmode=require`).
    pub options: Option<String>,
}

/// PostgreSQL: a CloudNativePG `Cluster` when enabled, else `external`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Postgresql {
    pub enabled: bool,
    /// `standalone` (one instance) or `replication` (primary + readReplicas).
    pub architecture: String,
    pub image_name: Option<String>,
    pub auth: PostgresqlAuth,
    pub primary: PostgresqlPrimary,
    pub read_replicas: PostgresqlReplicas,
    pub metrics: MetricsToggle,
    /// postgresql.conf parameters (CloudNativePG `spec.postgresql.parameters`).
    pub parameters: BTreeMap<String, String>,
    pub backup: PostgresqlBackup,
    pub external: External,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresqlAuth {
    /// Must stay empty: passwords come from `existingSecret`, never from values files.
    pub postgres_password: String,
    /// Secret (type basic-auth: username, password) of the application owner.
    pub existing_secret: String,
    pub database: String,
    pub username: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresqlPrimary {
    pub resources: Resources,
    pub persistence: Persistence,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresqlReplicas {
    pub replica_count: u32,
    pub resources: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresqlBackup {
    pub enabled: bool,
    /// Six-field cron (seconds first), CloudNativePG's format.
    pub schedule: String,
    /// How long backups are kept, e.g. `7d`.
    pub retention_policy: String,
    /// Object store URL (s3://bucket/path) for base backups and WAL.
    pub destination_path: String,
    /// Secret with ACCESS_KEY_ID and ACCESS_SECRET_KEY for the object store.
    pub s3_credentials_secret: String,
}

/// Elasticsearch: an ECK `Elasticsearch` when enabled, else `external`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Elasticsearch {
    pub enabled: bool,
    pub version: String,
    pub replicas: u32,
    /// Kept from the Helm chart the seed used; Elasticsearch 7+ elects masters itself (ignored).
    pub minimum_master_nodes: u32,
    /// Kept from the Helm chart the seed used; ECK has its own readiness (ignored).
    pub cluster_health_check_params: String,
    pub resources: Resources,
    pub volume_claim_template: VolumeClaimTemplate,
    /// Files of the Helm chart (`elasticsearch.yml`); its node-level settings go to the nodeSet config.
    pub es_config: BTreeMap<String, String>,
    /// Node-level settings (elasticsearch.yml) added to the nodeSet config.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Index-level settings (`index.*`): applied by an index template, never in elasticsearch.yml.
    pub index_settings: BTreeMap<String, String>,
    /// JVM heap; keep it at half the memory limit at most.
    pub java_opts: String,
    pub snapshot: Snapshot,
    pub external: External,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeClaimTemplate {
    pub resources: StorageRequest,
    pub storage_class_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageRequest {
    pub requests: StorageQuantity,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageQuantity {
    pub storage: Quantity,
}

/// Snapshot lifecycle policy settings (the seed's backup table: daily, 30 days).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Snapshot {
    pub schedule: String,
    pub retention: String,
    pub repository: String,
}

/// Redis: primary + replicas with Sentinel when enabled, else `external`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redis {
    pub enabled: bool,
    /// `replication`, the only one rendered: a primary, `replica.replicaCount` replicas and Sentinel.
    pub architecture: String,
    pub image: String,
    pub auth: RedisAuth,
    pub replica: RedisReplica,
    pub sentinel: Sentinel,
    pub metrics: RedisMetrics,
    pub persistence: Persistence,
    /// RDB snapshot rules (`save` lines): the seed's backup table says hourly.
    pub save: String,
    pub external: External,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisAuth {
    /// Secret with key `redis-password`.
    pub existing_secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisReplica {
    pub replica_count: u32,
    pub resources: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sentinel {
    pub enabled: bool,
    pub master_set: String,
    pub quorum: u32,
}

/// The seed's `redis.metrics`: a redis_exporter container next to each Redis, scraped by a
/// ServiceMonitor.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisMetrics {
    pub enabled: bool,
    /// The exporter's image, pinned by tag or digest.
    pub image: String,
}

/// Kafka: a Strimzi `Kafka` + `KafkaNodePool` when enabled, else `external`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kafka {
    pub enabled: bool,
    pub version: String,
    pub replica_count: u32,
    pub resources: Resources,
    pub persistence: Persistence,
    pub metrics: KafkaMetrics,
    pub topic: KafkaTopicValues,
    pub external: External,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaMetrics {
    pub kafka: MetricsToggle,
    pub jmx: MetricsToggle,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaTopicValues {
    pub name: String,
    pub partitions: u32,
    pub replicas: u32,
    pub min_insync_replicas: u32,
    /// Seed's backup table: 7 days of log retention.
    pub retention_ms: u64,
}
