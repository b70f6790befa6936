//! Checks across fields that types cannot express: requests within limits, replica bounds, TLS
//! secrets, JVM heap within the memory limit, datastores either deployed or reachable.

use super::ValueError;
use super::model::{Image, Resources, Values};
use super::quantity::{Quantity, jvm_size};
use super::source::Sources;

struct Checker<'a> {
    sources: &'a Sources,
    errors: &'a mut Vec<ValueError>,
    /// Paths whose value was wrong (a type error, already reported) and stands in as its default
    /// so that the other checks can run: a check that reads one would judge the default, not
    /// what the user wrote (`--set autoscaling.minReplicas=abc` is no PDB problem).
    repaired: &'a [String],
}

/// `path` is `other`, or one is inside the other (`a.b` and `a.b.c`, `a.b[0]`).
fn related(path: &str, other: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    inside(path, other) || inside(other, path)
}

impl Checker<'_> {
    fn fail(&mut self, path: &str, message: String) {
        self.fail_reading(path, &[], message);
    }

    /// [`Checker::fail`] for a check that also read the values at `reads`: dropped when it or one
    /// of them was repaired.
    fn fail_reading(&mut self, path: &str, reads: &[&str], message: String) {
        if self.repaired.iter().any(|r| std::iter::once(path).chain(reads.iter().copied()).any(|p| related(p, r))) {
            return;
        }
        let origin = self.sources.value_origin(path).cloned();
        self.errors.push(ValueError { origin, path: path.to_owned(), message });
    }

    fn resources(&mut self, path: &str, r: &Resources) {
        let pairs = [("cpu", &r.requests.cpu, &r.limits.cpu), ("memory", &r.requests.memory, &r.limits.memory)];
        for (name, request, limit) in pairs {
            if let (Some(request), Some(limit)) = (request, limit)
                && request.value() > limit.value()
            {
                self.fail_reading(
                    &format!("{path}.requests.{name}"),
                    &[&format!("{path}.limits.{name}")],
                    format!("request {request} is above the limit {limit}; expected requests <= limits"),
                );
            }
        }
    }

    /// The forms the kubelet and registries accept (distribution's reference grammar), so that a
    /// bad tag fails here, naming the key, and not at deploy or at pull.
    fn image(&mut self, path: &str, image: &Image) {
        let repo = &image.repository;
        // `[host[:port]/]path`: the host may hold a port and capitals, the path components not.
        let parts: Vec<&str> = repo.split('/').collect();
        let (host, path_parts) = match parts.as_slice() {
            [first, rest @ ..] if !rest.is_empty() && (first.contains(['.', ':']) || *first == "localhost") => {
                (Some(*first), rest)
            }
            all => (None, all),
        };
        let chars_ok = |c: &str, extra: &str| {
            !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch) || extra.contains(ch))
        };
        let repo_ok = host.is_none_or(|h| chars_ok(h, ":") && h.matches(':').count() <= 1)
            && path_parts.iter().all(|c| chars_ok(c, "") && !c.chars().any(|ch| ch.is_ascii_uppercase()));
        if !repo_ok {
            self.fail(
                &format!("{path}.repository"),
                format!(
                    "{repo:?}: expected an image name like registry.example.com/team/name (lowercase path, no spaces)"
                ),
            );
        }
        let tag = &image.tag;
        let tag_ok = tag.len() <= 128
            && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag.is_empty() && !tag_ok {
            self.fail(
                &format!("{path}.tag"),
                format!("{tag:?}: expected a tag of letters, digits, '_', '.' and '-' (at most 128, not starting with '.' or '-')"),
            );
        }
        if let Some(digest) = &image.digest {
            let ok = digest.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty()
                    && alg.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && hex.len() >= 32
                    && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            });
            if !ok {
                self.fail(&format!("{path}.digest"), format!("{digest:?}: expected sha256:<64 hex digits>"));
            }
        }
        if !["Always", "IfNotPresent", "Never"].contains(&image.pull_policy.as_str()) {
            self.fail(
                &format!("{path}.pullPolicy"),
                format!("{:?}: expected Always, IfNotPresent or Never", image.pull_policy),
            );
        }
    }

    fn dns_label(&mut self, path: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !ok {
            self.fail(
                path,
                format!("{name:?} is not a DNS label; expected lowercase letters, digits and '-', at most 63"),
            );
        }
    }
}

pub fn semantic(v: &Values, sources: &Sources, repaired: &[String], errors: &mut Vec<ValueError>) {
    let mut c = Checker { sources, errors, repaired };
    c.dns_label("name", &v.name);
    c.dns_label("namespace.name", &v.namespace.name);
    if !["privileged", "baseline", "restricted"].contains(&v.namespace.pod_security.as_str()) {
        c.fail(
            "namespace.podSecurity",
            format!("{:?}: expected privileged, baseline or restricted", v.namespace.pod_security),
        );
    }
    if v.image.tag.is_empty() && v.image.digest.is_none() {
        c.fail("image.tag", "empty: expected an image tag (or image.digest)".into());
    }
    c.image("image", &v.image);
    c.image("backups.image", &v.backups.image);
    log_filter(&mut c, &v.server.log_level);

    c.resources("resources", &v.resources);
    c.resources("postgresql.primary.resources", &v.postgresql.primary.resources);
    c.resources("postgresql.readReplicas.resources", &v.postgresql.read_replicas.resources);
    c.resources("elasticsearch.resources", &v.elasticsearch.resources);
    c.resources("redis.replica.resources", &v.redis.replica.resources);
    c.resources("kafka.resources", &v.kafka.resources);

    let a = &v.autoscaling;
    if a.enabled {
        if a.min_replicas == 0 {
            c.fail("autoscaling.minReplicas", "0: expected at least 1".into());
        }
        if a.min_replicas > a.max_replicas {
            c.fail_reading(
                "autoscaling.minReplicas",
                &["autoscaling.maxReplicas"],
                format!(
                    "{} is above autoscaling.maxReplicas ({}); expected minReplicas <= maxReplicas",
                    a.min_replicas, a.max_replicas
                ),
            );
        }
        for (key, target) in [
            ("targetCPUUtilizationPercentage", a.target_cpu_utilization_percentage),
            ("targetMemoryUtilizationPercentage", a.target_memory_utilization_percentage),
        ] {
            if let Some(t) = target
                && !(1..=100).contains(&t)
            {
                c.fail(&format!("autoscaling.{key}"), format!("{t}: expected a percentage between 1 and 100"));
            }
        }
        if a.target_cpu_utilization_percentage.is_none() && a.target_memory_utilization_percentage.is_none() {
            c.fail("autoscaling", "no CPU or memory target: expected at least one".into());
        }
    } else if v.replica_count == 0 {
        c.fail("replicaCount", "0: expected at least 1 (use autoscaling or scale to 0 with kubectl)".into());
    }

    let pdb = &v.pod_disruption_budget;
    if pdb.enabled {
        if pdb.min_available.is_some() == pdb.max_unavailable.is_some() {
            c.fail("podDisruptionBudget", "expected exactly one of minAvailable and maxUnavailable".into());
        }
        let floor = if a.enabled { a.min_replicas } else { v.replica_count };
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) = pdb.min_available
            && i64::from(n) >= i64::from(floor)
        {
            c.fail_reading(
                "podDisruptionBudget.minAvailable",
                &["autoscaling.enabled", "autoscaling.minReplicas", "replicaCount"],
                format!("{n} leaves no pod evictable with {floor} replicas: node drains would block; expected fewer than {floor}"),
            );
        }
    }

    if v.ingress.enabled {
        if v.ingress.hosts.is_empty() {
            c.fail("ingress.hosts", "empty: expected at least one host when the ingress is enabled".into());
        }
        for (i, tls) in v.ingress.tls.iter().enumerate() {
            if tls.secret_name.as_deref().is_none_or(str::is_empty) {
                c.fail(
                    &format!("ingress.tls[{i}]"),
                    "no secretName: expected the Secret cert-manager writes the certificate to".into(),
                );
            }
            for (j, host) in tls.hosts.iter().enumerate() {
                if !v.ingress.hosts.iter().any(|h| &h.host == host) {
                    c.fail(&format!("ingress.tls[{i}].hosts[{j}]"), format!("{host:?} is not one of ingress.hosts"));
                }
            }
        }
    }

    heap_within_limit(&mut c, v);
    pools_within_max_connections(&mut c, v);
    integrity(&mut c, v);
    alert_thresholds(&mut c, v);

    if !v.postgresql.auth.postgres_password.is_empty() {
        c.fail(
            "postgresql.auth.postgresPassword",
            "a password in the values (a file or --set): expected \"\" and the password in auth.existingSecret".into(),
        );
    }
    // The templates honour these and no other value: anything else would be silently ignored.
    if !["standalone", "replication"].contains(&v.postgresql.architecture.as_str()) {
        c.fail(
            "postgresql.architecture",
            format!("{:?}: expected standalone or replication", v.postgresql.architecture),
        );
    }
    if v.redis.architecture != "replication" {
        c.fail(
            "redis.architecture",
            format!(
                "{:?}: expected replication, the only one rendered (a primary, redis.replica.replicaCount \
                 replicas and Sentinel; Helm's standalone is not supported)",
                v.redis.architecture
            ),
        );
    }
    if v.postgresql.architecture == "standalone" && v.postgresql.read_replicas.replica_count > 0 && v.postgresql.enabled
    {
        c.fail(
            "postgresql.readReplicas.replicaCount",
            "read replicas with architecture standalone: expected 0 or architecture replication".into(),
        );
    }
    for (key, value) in &v.elasticsearch.es_config {
        if key != "elasticsearch.yml" {
            c.fail(&format!("elasticsearch.esConfig.{key}"), "expected only elasticsearch.yml".into());
        } else if serde_yaml::from_str::<serde_yaml::Mapping>(value).is_err() {
            c.fail(&format!("elasticsearch.esConfig.{key}"), "not a YAML mapping of settings".into());
        }
    }
    for key in v.elasticsearch.config.keys() {
        if key.starts_with("index.") {
            c.fail(
                &format!("elasticsearch.config.{key}"),
                "index-level setting: Elasticsearch refuses it in elasticsearch.yml; expected it under elasticsearch.indexSettings".into(),
            );
        }
    }
    if v.kafka.enabled && v.kafka.topic.replicas > v.kafka.replica_count {
        c.fail_reading(
            "kafka.topic.replicas",
            &["kafka.replicaCount", "kafka.enabled"],
            format!(
                "{} replicas with {} brokers: expected at most the broker count",
                v.kafka.topic.replicas, v.kafka.replica_count
            ),
        );
    }
    if v.kafka.topic.min_insync_replicas > v.kafka.topic.replicas {
        c.fail_reading(
            "kafka.topic.minInsyncReplicas",
            &["kafka.topic.replicas"],
            "above kafka.topic.replicas: every write would fail".into(),
        );
    }

    for (name, enabled, host) in [
        ("postgresql", v.postgresql.enabled, &v.postgresql.external.host),
        ("elasticsearch", v.elasticsearch.enabled, &v.elasticsearch.external.host),
        ("redis", v.redis.enabled, &v.redis.external.host),
        ("kafka", v.kafka.enabled, &v.kafka.external.host),
    ] {
        if !enabled && host.as_deref().is_none_or(str::is_empty) {
            c.fail(
                &format!("{name}.external.host"),
                format!("{name} is neither deployed ({name}.enabled: false) nor external: expected a host"),
            );
        }
    }
}

/// The checkpoint directory is a volume of its own (two mounts cannot share a path), and the
/// server refuses negative intervals.
/// `server.logLevel` becomes the server's `AUDIT_LOG` filter, which refuses to start on a bad level;
/// a bare word that is not a level (`infoo`) would be taken as a target name and log nothing
/// else. So: a level, or `target=level`, comma-separated (span filters `target[span]=level` are
/// passed through).
fn log_filter(c: &mut Checker<'_>, filter: &str) {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let bad = filter.split(',').map(str::trim).filter(|d| !d.is_empty() && !d.contains('[')).find(|d| {
        let level = d.rsplit_once('=').map_or(*d, |(_, l)| l);
        !LEVELS.contains(&level.to_ascii_lowercase().as_str())
    });
    if filter.trim().is_empty() || bad.is_some() {
        c.fail(
            "server.logLevel",
            format!(
                "{filter:?}: expected a level (trace, debug, info, warn, error or off) or target=level, comma-separated \
                 (e.g. info or warn,audit_server=debug)"
            ),
        );
    }
}

fn integrity(c: &mut Checker<'_>, v: &Values) {
    let i = &v.integrity;
    let dir = i.checkpoint_dir.trim_end_matches('/');
    if !i.checkpoint_dir.starts_with('/') {
        c.fail("integrity.checkpointDir", format!("{:?}: expected an absolute path", i.checkpoint_dir));
    } else if [v.server.data_dir.trim_end_matches('/'), "/tmp", "/etc/audit-trail/config", "/etc/audit-trail/secrets"]
        .contains(&dir)
    {
        c.fail(
            "integrity.checkpointDir",
            format!("{dir:?}: already a mount of the server container; use a path of its own"),
        );
    }
    for (path, value) in [
        ("integrity.checkpointIntervalSeconds", i.checkpoint_interval_seconds),
        ("integrity.verifyIntervalSeconds", i.verify_interval_seconds),
        ("integrity.verifyFullIntervalSeconds", i.verify_full_interval_seconds),
    ] {
        if !(value >= 0.0 && value.is_finite()) {
            c.fail(path, format!("{value}: expected a number of seconds, 0 or more"));
        }
    }
}

/// The alert rules compare these as they are: a ratio above 1 or a duration of 0 or less makes an
/// alert that can never fire or always fires, so both are refused.
fn alert_thresholds(c: &mut Checker<'_>, v: &Values) {
    let r = &v.prometheus_rule;
    for (key, value) in [("errorRateThreshold", r.error_rate_threshold), ("poolUsageThreshold", r.pool_usage_threshold)]
    {
        if !(value > 0.0 && value <= 1.0) {
            c.fail(
                &format!("prometheusRule.{key}"),
                format!("{value}: expected a ratio above 0 and at most 1 (0.05 is 5%)"),
            );
        }
    }
    for (key, value) in [
        ("latencyP99Seconds", r.latency_p99_seconds),
        ("verifierStaleSeconds", r.verifier_stale_seconds),
        ("kafkaPublishLagSeconds", r.kafka_publish_lag_seconds),
        ("searchIndexLagSeconds", r.search_index_lag_seconds),
    ] {
        if !(value > 0.0 && value.is_finite()) {
            c.fail(&format!("prometheusRule.{key}"), format!("{value}: expected a number of seconds above 0"));
        }
    }
}

/// The audit server is a Rust binary: JVM options in its environment (the guide's JAVA_OPTS) would be
/// silently ignored, so they are refused. Elasticsearch is a JVM: `-Xmx` above its container memory
/// limit gets the pod OOM-killed under load.
fn heap_within_limit(c: &mut Checker<'_>, v: &Values) {
    for (i, env) in v.env.iter().enumerate() {
        // k8s-openapi defaults a missing name to "": the API server would refuse the Deployment.
        if env.name.is_empty() {
            c.fail(&format!("env[{i}].name"), "empty or missing: expected the environment variable's name".into());
            continue;
        }
        let jvm_flags = env.value.as_deref().is_some_and(|v| v.split_whitespace().any(|f| f.starts_with("-X")));
        if env.name.ends_with("JAVA_OPTS") || env.name == "JAVA_TOOL_OPTIONS" || jvm_flags {
            c.fail(
                &format!("env[{i}].name"),
                format!(
                    "{}: JVM options have no effect, the audit server is a Rust binary; its memory is bounded by \
                     resources.limits.memory (sized with server.dbMaxConnections and server.groupCommitMaxEvents)",
                    env.name
                ),
            );
        }
    }
    let es_limit = v.elasticsearch.resources.limits.memory.as_ref().map(Quantity::value);
    for flag in v.elasticsearch.java_opts.split_whitespace() {
        if let (Some(heap), Some(limit)) = (flag.strip_prefix("-Xmx").and_then(jvm_size), es_limit)
            && heap > limit
        {
            c.fail_reading(
                "elasticsearch.javaOpts",
                &["elasticsearch.resources.limits.memory"],
                format!("{flag} is above elasticsearch.resources.limits.memory"),
            );
        }
    }
}

/// The in-cluster PostgreSQL's `max_connections` must hold every server pod's whole pool at the
/// autoscaler's ceiling: past it, new pods cannot connect exactly when the load is highest. The
/// `postgres.connections` probe checks the live database the same way; here the render refuses
/// a release whose own values cannot add up. An external database is the probe's to check.
fn pools_within_max_connections(c: &mut Checker<'_>, v: &Values) {
    if !v.postgresql.enabled {
        return;
    }
    let param = |name: &str, default: u64| -> Option<u64> {
        match v.postgresql.parameters.get(name) {
            None => Some(default),
            Some(text) => text.trim().parse().ok(),
        }
    };
    let path = "postgresql.parameters";
    let (Some(max), Some(reserved)) = (param("max_connections", 100), param("superuser_reserved_connections", 3))
    else {
        for name in ["max_connections", "superuser_reserved_connections"] {
            if param(name, 0).is_none() {
                c.fail(&format!("{path}.{name}"), "expected a whole number of connections".into());
            }
        }
        return;
    };
    let usable = max.saturating_sub(reserved);
    let pods = v.server_pods_at_full_scale();
    let per_pod = v.server_connections_per_pod();
    let needed = u64::from(pods) * u64::from(per_pod);
    if needed > usable {
        let lanes = super::model::SERVER_APPEND_LANES;
        let fits = (usable / u64::from(pods.max(1))).saturating_sub(u64::from(lanes));
        c.fail_reading(
            "server.dbMaxConnections",
            &["autoscaling", "replicaCount", "postgresql.parameters", "postgresql.enabled"],
            format!(
                "{pods} pods x ({} pooled + {lanes} append connections) = {needed} at full scale, but \
                 max_connections {max} - {reserved} reserved leaves {usable}; expected server.dbMaxConnections \
                 <= {fits} (or raise postgresql.parameters.max_connections)",
                v.server.db_max_connections,
            ),
        );
    }
}
