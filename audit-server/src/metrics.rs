//! Prometheus text exposition, hand-written (a few counters and one histogram do not need a
//! metrics framework). The names are a contract with the PrometheusRule that render produces.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every metric family this server exports (the PrometheusRule queries these names).
pub const METRIC_NAMES: &[&str] = &[
    "http_server_requests_seconds",
    "audit_events_ingested_total",
    "audit_group_commit_runs_total",
    "audit_group_commit_jobs_total",
    "audit_db_pool_connections_active",
    "audit_db_pool_connections_max",
    "audit_append_queue_events",
    "audit_append_queue_bytes",
    "audit_append_tenants_in_flight",
    "audit_integrity_tenants_failed",
    "audit_integrity_tenants_verified",
    "audit_integrity_last_pass_timestamp_seconds",
    "audit_integrity_passes_total",
    "audit_integrity_links_verified_total",
    "audit_integrity_verify_errors_total",
    "audit_append_phase_seconds_total",
    "audit_kafka_publish_lag_events",
    "audit_kafka_publish_lag_seconds",
    "audit_kafka_published_total",
    "audit_kafka_publish_failures_total",
    "audit_kafka_resync_skipped_total",
    "audit_kafka_relay_leader",
    "audit_ratelimit_limited_total",
    "audit_ratelimit_redis_errors_total",
    "audit_ratelimit_fail_open_total",
    "audit_ratelimit_fail_closed_total",
    "audit_event_cache_hits_total",
    "audit_event_cache_misses_total",
    "audit_event_cache_errors_total",
    "audit_search_indexed_total",
    "audit_search_index_failures_total",
    "audit_search_fallbacks_total",
    "audit_search_indexer_leader",
    "audit_search_index_lag_events",
    "audit_search_index_lag_seconds",
    "audit_outbox_rows",
    "audit_outbox_read_floor_misses_total",
    "audit_outbox_read_floor_position",
    "audit_outbox_events_read_total",
];

/// The `phase` labels of `audit_append_phase_seconds_total`: `queue` is summed over requests (time
/// from arrival to the start of their transaction), the others over transactions.
pub const APPEND_PHASES: [&str; 6] = ["queue", "begin", "lock", "hash", "write", "commit"];

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Series {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    /// Keyed by (method, uri template, status): bounded because uri is a route template.
    http: Mutex<BTreeMap<(String, String, u16), Series>>,
    ingested: AtomicU64,
    runs: AtomicU64,
    jobs: AtomicU64,
    /// The background verifier's results (`crate::integrity`).
    pub integrity: IntegrityMetrics,
    /// Nanoseconds per phase of [`APPEND_PHASES`].
    phases: [AtomicU64; APPEND_PHASES.len()],
    pub kafka: KafkaMetrics,
    /// The rate limiter's decisions and its Redis's failures (`crate::api::auth`).
    pub redis: RateLimitMetrics,
    /// The GET-by-id cache in Redis (`crate::event_cache`).
    pub cache: CacheMetrics,
    pub search: SearchMetrics,
    /// Rows in the outbox (one per event and consumer), sampled by every replica with the outbox on.
    pub outbox_rows: AtomicU64,
    /// Outbox rows a consumer's full read found below its read floor (`crate::outbox::floor`):
    /// nonzero is a bug.
    pub outbox_floor_misses: AtomicU64,
}

/// The search indexer's figures (all zero without search). Lag is sampled from the database by
/// every replica, like Kafka's.
#[derive(Default)]
pub struct SearchMetrics {
    /// Events the search cluster acknowledged (bulk items created or updated).
    pub indexed: AtomicU64,
    /// Bulk requests or items that failed (retried).
    pub failures: AtomicU64,
    /// Searches answered from the database because the cluster did not (search configured).
    pub fallbacks: AtomicU64,
    pub leader: AtomicU64,
    pub lag_events: AtomicU64,
    /// f64 bits.
    pub lag_seconds: AtomicU64,
    /// The indexer's read floor, as the relay's.
    pub read_floor: AtomicU64,
    /// Events its reads took from this process's memory, and from the database.
    pub events_from: [AtomicU64; 2],
}

#[derive(Default)]
pub struct CacheMetrics {
    pub hits: AtomicU64,
    /// Not cached (or an entry that did not parse): the database answered.
    pub misses: AtomicU64,
    /// Cache reads or writes that Redis could not serve (unreachable, timeout, error reply).
    pub errors: AtomicU64,
}

#[derive(Default)]
pub struct RateLimitMetrics {
    /// Requests answered 429 (in-process or shared limiter).
    pub limited: AtomicU64,
    /// Rate-limit calls to Redis that failed (unreachable, timeout, error reply).
    pub errors: AtomicU64,
    /// Of those, requests let through unlimited (fail open) or refused with 503 (fail closed).
    pub fail_open: AtomicU64,
    pub fail_closed: AtomicU64,
}

/// Results of the background verifier. Counts, not per-tenant series: the number of tenants is
/// unbounded, and a broken tenant is named in the error log.
#[derive(Default)]
pub struct IntegrityMetrics {
    /// Tenants whose chain was found broken, and not intact since.
    pub tenants_failed: AtomicU64,
    /// Tenants verified intact by the latest pass.
    pub tenants_verified: AtomicU64,
    /// End of the latest complete pass (Unix milliseconds; 0: none yet).
    pub last_pass_unix_ms: AtomicU64,
    pub passes: AtomicU64,
    pub links: AtomicU64,
    /// Tenant verifications that could not run (database errors).
    pub errors: AtomicU64,
}

/// The Kafka relay's figures (all zero with Kafka off). Lag is sampled from the database by every
/// replica, so any replica's scrape shows it, not only the leader's.
#[derive(Default)]
pub struct KafkaMetrics {
    /// Events acknowledged by Kafka.
    pub published: AtomicU64,
    /// Events whose publication failed (refused or failed delivery; they are retried).
    pub failed: AtomicU64,
    /// Events found already on the topic when a relay took over or recovered, recorded without
    /// being sent again.
    pub resynced: AtomicU64,
    /// 1 while this replica's relay holds the lease.
    pub leader: AtomicU64,
    /// Outbox rows not yet published.
    pub lag_events: AtomicU64,
    /// Age of the oldest of them (f64 bits).
    pub lag_seconds: AtomicU64,
    /// The relay's read floor (`crate::outbox::floor`): its reads start after this position.
    pub read_floor: AtomicU64,
    /// Events its reads took from this process's memory (`crate::outbox::handoff`), and from the
    /// database.
    pub events_from: [AtomicU64; 2],
}

impl Metrics {
    pub fn observe_request(&self, method: &str, uri: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let s = http.entry((method.to_owned(), uri.to_owned(), status)).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
        s.count += 1;
        s.sum += secs;
    }

    /// One committed group-commit run that stored `events` new events for `jobs` requests.
    pub fn events_ingested(&self, events: u64, jobs: u64) {
        self.ingested.fetch_add(events, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs, Ordering::Relaxed);
    }

    /// Time spent in each phase of append transactions; `queued` summed over their requests.
    pub fn append_phases(&self, queued: Duration, p: &crate::store::Phases) {
        let times = [queued, p.begin, p.lock, p.hash, p.write, p.commit];
        for (counter, t) in self.phases.iter().zip(times) {
            counter.fetch_add(t.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// The exposition text; `pool` is (connections in use, maximum).
    pub fn render(&self, pool: (u64, u64), queue: crate::appender::QueueStats) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP http_server_requests_seconds Duration of HTTP requests.\n");
        out.push_str("# TYPE http_server_requests_seconds histogram\n");
        {
            let http = self.http.lock().unwrap_or_else(|p| p.into_inner());
            for ((method, uri, status), s) in http.iter() {
                let labels = format!("method=\"{}\",uri=\"{}\",status=\"{status}\"", escape(method), escape(uri));
                for (i, le) in BUCKETS.iter().enumerate() {
                    let _ =
                        writeln!(out, "http_server_requests_seconds_bucket{{{labels},le=\"{le}\"}} {}", s.buckets[i]);
                }
                let _ = writeln!(out, "http_server_requests_seconds_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
                let _ = writeln!(out, "http_server_requests_seconds_sum{{{labels}}} {}", s.sum);
                let _ = writeln!(out, "http_server_requests_seconds_count{{{labels}}} {}", s.count);
            }
        }
        let counters = [
            ("audit_events_ingested_total", "Events committed to a hash chain.", &self.ingested),
            ("audit_group_commit_runs_total", "Append transactions committed (one per group-commit run).", &self.runs),
            ("audit_group_commit_jobs_total", "Requests appended by those runs.", &self.jobs),
            ("audit_ratelimit_limited_total", "Requests refused with 429 by the rate limiter.", &self.redis.limited),
            ("audit_ratelimit_redis_errors_total", "Rate-limit calls to Redis that failed.", &self.redis.errors),
            (
                "audit_ratelimit_fail_open_total",
                "Requests let through unlimited because Redis failed (fail open).",
                &self.redis.fail_open,
            ),
            (
                "audit_ratelimit_fail_closed_total",
                "Requests refused with 503 because Redis failed (fail closed).",
                &self.redis.fail_closed,
            ),
        ];
        let (k, c) = (&self.kafka, &self.cache);
        let counters = counters.into_iter().chain([
            ("audit_event_cache_hits_total", "GET by id answered from the Redis cache.", &c.hits),
            ("audit_event_cache_misses_total", "GET by id not in the Redis cache (read from the database).", &c.misses),
            ("audit_event_cache_errors_total", "Event cache reads or writes Redis could not serve.", &c.errors),
            ("audit_kafka_published_total", "Events published to Kafka (acknowledged, acks=all).", &k.published),
            ("audit_kafka_publish_failures_total", "Events whose publication to Kafka failed (retried).", &k.failed),
            (
                "audit_kafka_resync_skipped_total",
                "Events found already on the topic after a relay restart or failure, recorded and not sent again.",
                &k.resynced,
            ),
            (
                "audit_outbox_read_floor_misses_total",
                "Outbox rows a consumer found below its read floor (a bug; the consumer reads from the start again).",
                &self.outbox_floor_misses,
            ),
        ]);
        for (name, help, value) in counters {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "audit_outbox_read_floor_position";
        let _ = writeln!(
            out,
            "# HELP {name} Outbox position after which the consumer's reads start (rows at or below it are handled).\n# TYPE {name} gauge"
        );
        for (consumer, floor) in [("kafka", &k.read_floor), ("search", &self.search.read_floor)] {
            let _ = writeln!(out, "{name}{{consumer=\"{consumer}\"}} {}", floor.load(Ordering::Relaxed));
        }
        let name = "audit_outbox_events_read_total";
        let _ = writeln!(
            out,
            "# HELP {name} Events the consumer's reads took from this process's memory (committed here) or from the database.\n# TYPE {name} counter"
        );
        for (consumer, from) in [("kafka", &k.events_from), ("search", &self.search.events_from)] {
            for (source, n) in ["memory", "database"].iter().zip(from) {
                let _ = writeln!(
                    out,
                    "{name}{{consumer=\"{consumer}\",source=\"{source}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let name = "audit_append_phase_seconds_total";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent in each phase of append transactions (queue: summed over requests).\n# TYPE {name} counter"
        );
        for (phase, ns) in APPEND_PHASES.iter().zip(&self.phases) {
            let _ = writeln!(out, "{name}{{phase=\"{phase}\"}} {}", ns.load(Ordering::Relaxed) as f64 / 1e9);
        }
        let gauges = [
            ("audit_db_pool_connections_active", "Database connections in use.", pool.0),
            ("audit_db_pool_connections_max", "Maximum database connections of the pool.", pool.1),
            ("audit_append_queue_events", "Events waiting for an append transaction.", queue.events),
            ("audit_append_queue_bytes", "Request bytes waiting for an append transaction.", queue.bytes),
            ("audit_append_tenants_in_flight", "Tenants inside a running append transaction.", queue.tenants_in_flight),
            (
                "audit_kafka_publish_lag_events",
                "Stored events not yet published to Kafka.",
                k.lag_events.load(Ordering::Relaxed),
            ),
            (
                "audit_kafka_relay_leader",
                "1 while this replica's Kafka relay holds the lease.",
                k.leader.load(Ordering::Relaxed),
            ),
            (
                "audit_outbox_rows",
                "Events listed in outbox rows (each event once per registered consumer) not deleted yet; a row goes once its consumer passed all of its events (grows if a registered consumer no longer runs).",
                self.outbox_rows.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let lag = f64::from_bits(k.lag_seconds.load(Ordering::Relaxed));
        let name = "audit_kafka_publish_lag_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Age of the oldest stored event not yet published to Kafka.\n# TYPE {name} gauge\n{name} {lag}"
        );
        self.render_integrity(&mut out);
        self.render_search(&mut out);
        out
    }

    fn render_search(&self, out: &mut String) {
        let s = &self.search;
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed).to_string();
        let families = [
            ("audit_search_indexed_total", "counter", "Events indexed in the search cluster.", load(&s.indexed)),
            (
                "audit_search_index_failures_total",
                "counter",
                "Bulk requests and items the search cluster refused or did not answer (retried).",
                load(&s.failures),
            ),
            (
                "audit_search_fallbacks_total",
                "counter",
                "Searches answered from the database because the search cluster did not answer.",
                load(&s.fallbacks),
            ),
            (
                "audit_search_indexer_leader",
                "gauge",
                "1 while this replica's indexer holds the lease.",
                load(&s.leader),
            ),
            (
                "audit_search_index_lag_events",
                "gauge",
                "Stored events not yet indexed for search.",
                load(&s.lag_events),
            ),
            (
                "audit_search_index_lag_seconds",
                "gauge",
                "Age of the oldest stored event not yet indexed for search.",
                f64::from_bits(s.lag_seconds.load(Ordering::Relaxed)).to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }

    fn render_integrity(&self, out: &mut String) {
        let i = &self.integrity;
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let families = [
            (
                "audit_integrity_tenants_failed",
                "gauge",
                "Tenants whose chain the background verifier found broken.",
                load(&i.tenants_failed).to_string(),
            ),
            (
                "audit_integrity_tenants_verified",
                "gauge",
                "Tenants verified intact by the latest background pass.",
                load(&i.tenants_verified).to_string(),
            ),
            (
                "audit_integrity_last_pass_timestamp_seconds",
                "gauge",
                "End of the latest complete background verification pass (Unix time; 0: none yet).",
                format!("{:.3}", load(&i.last_pass_unix_ms) as f64 / 1000.0),
            ),
            (
                "audit_integrity_passes_total",
                "counter",
                "Background verification passes completed.",
                load(&i.passes).to_string(),
            ),
            (
                "audit_integrity_links_verified_total",
                "counter",
                "Chain links checked by the background verifier.",
                load(&i.links).to_string(),
            ),
            (
                "audit_integrity_verify_errors_total",
                "counter",
                "Background verifications that could not run (database errors).",
                load(&i.errors).to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_declared_family() {
        let m = Metrics::default();
        m.observe_request("POST", "/api/v1/events", 201, Duration::from_millis(3));
        m.events_ingested(5, 2);
        let text = m.render((1, 10), Default::default());
        for name in METRIC_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from:\n{text}");
        }
        assert!(text.contains(
            "http_server_requests_seconds_bucket{method=\"POST\",uri=\"/api/v1/events\",status=\"201\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("audit_events_ingested_total 5"));
        assert!(text.contains("audit_db_pool_connections_max 10"));
    }
}
