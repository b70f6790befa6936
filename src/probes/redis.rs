//! Redis probes: Sentinel agreement and quorum, the master's replicas, persistence per the guide's
//! backup table (AOF + RDB), and memory limits safe for rate-limit and idempotency data.

use std::collections::BTreeMap;

use super::conns::{RedisMaster, SentinelView, probe, row};
use super::{Context, ErrorCause, Finding, Probe, Status, Target};

/// A replica whose last acknowledgement is older than this (INFO `lag`, seconds) fails.
pub const MAX_REPLICA_LAG_SECONDS: u64 = 10;
/// Grace after a save rule's period before a pending RDB save counts as overdue.
pub const SAVE_GRACE_SECONDS: i64 = 600;

pub fn probes() -> Vec<Box<dyn Probe>> {
    vec![Box::new(Sentinels), Box::new(Replication), Box::new(Persistence), Box::new(Memory)]
}

probe!(
    Sentinels,
    Target::Redis,
    "redis.sentinels",
    "Every sentinel knows the master set and agrees on the master; enough sentinels reachable to fail over",
    sentinels
);
probe!(
    Replication,
    Target::Redis,
    "redis.replication",
    "The master answers as master with redis.replica.replicaCount replicas online and in sync",
    replication
);
probe!(
    Persistence,
    Target::Redis,
    "redis.persistence",
    "AOF on, RDB save points as redis.save, last writes and saves successful and not overdue",
    persistence
);
probe!(
    Memory,
    Target::Redis,
    "redis.memory",
    "maxmemory set and an eviction policy that never evicts keys without a TTL",
    memory
);

type Outcome = Result<Finding, Finding>;

async fn sentinels(ctx: &Context) -> Outcome {
    let views = ctx.conns.redis_sentinels(&ctx.targets).await?;
    let target = ctx.targets.redis.as_ref();
    let set = target.map(|t| t.master_set.clone()).unwrap_or_default();
    if views.is_empty() {
        // Values that run Redis behind Sentinel (what the server is configured with, see
        // render::context) need the sentinels checked: a direct URL does not look at them, so the
        // probe cannot say they agree or have quorum and must not pass.
        if ctx.values.redis.enabled && ctx.values.redis.sentinel.enabled {
            return Err(Finding::error(
                ErrorCause::NotConfigured,
                "the values run Redis with Sentinel (redis.sentinel.enabled) but the targets file lists no \
                 sentinels (only redis.url): the sentinels were not checked",
            )
            .hint(
                "list every sentinel as host:port under redis.sentinels in the targets file (all of them: the \
                 quorum is counted against that list), with redis.masterSet",
            ));
        }
        return Ok(Finding::pass(
            "the values use no Sentinel (redis.enabled or redis.sentinel.enabled is false): redis.url is the \
             server's Redis, there is no sentinel to check",
        ));
    }
    let configured = views.len();
    let reachable: Vec<&SentinelView> = views.iter().filter(|v| v.info.is_ok()).collect();
    // The master the reachable sentinels name most often.
    let mut votes: BTreeMap<String, usize> = BTreeMap::new();
    for v in &reachable {
        if let Ok(Some(info)) = &v.info {
            *votes.entry(info.master.clone()).or_default() += 1;
        }
    }
    let agreed = votes.iter().max_by_key(|(_, n)| **n).map(|(m, _)| m.clone());
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut quorum = None;
    for v in views {
        let (actual, ok) = match &v.info {
            Err(e) => (format!("unreachable ({})", e.message), false),
            Ok(None) => {
                problems.push(format!("sentinel {} does not know {set}", v.addr));
                (format!("does not know {set}"), false)
            }
            Ok(Some(info)) => {
                quorum = quorum.or(Some(info.quorum));
                let same = Some(&info.master) == agreed.as_ref();
                if !same {
                    problems.push(format!("sentinel {} names master {}", v.addr, info.master));
                }
                let down = info.flags.contains("down");
                if down {
                    problems.push(format!("sentinel {} flags the master {}", v.addr, info.flags));
                }
                let flags = if down { format!(", master flags {}", info.flags) } else { String::new() };
                (format!("master {}{flags}", info.master), same && !down)
            }
        };
        rows.push(row(
            format!("sentinel {}", v.addr),
            format!("knows {set} at {}", agreed.as_deref().unwrap_or("?")),
            &actual,
            ok,
        ));
    }
    let quorum = quorum.unwrap_or(0);
    let wanted_quorum = ctx.values.redis.sentinel.quorum;
    rows.push(row(
        "quorum",
        format!("{wanted_quorum} (redis.sentinel.quorum)"),
        quorum.to_string(),
        quorum == wanted_quorum,
    ));
    if quorum != wanted_quorum {
        problems.push(format!("quorum = {quorum} (expected {wanted_quorum} (redis.sentinel.quorum))"));
    }
    // A failover needs `quorum` sentinels to agree the master is down and a majority of all
    // sentinels to authorise the leader.
    let majority = configured / 2 + 1;
    let needed = (quorum as usize).max(majority);
    let enough = reachable.len() >= needed;
    rows.push(row(
        "reachable sentinels",
        format!(">= {needed} (quorum {quorum}, majority of {configured})"),
        format!("{} of {configured}", reachable.len()),
        enough,
    ));
    if !enough {
        problems.insert(
            0,
            format!("{} of {configured} sentinels reachable, {needed} needed to fail over", reachable.len()),
        );
    }
    if let Some(ck) = reachable.iter().find_map(|v| v.ckquorum.clone()) {
        if !ck.starts_with("OK") {
            problems.push(format!("SENTINEL CKQUORUM: {ck}"));
        }
        let ok = ck.starts_with("OK");
        rows.push(row("SENTINEL CKQUORUM", "OK", ck, ok));
    }
    let what = format!("Sentinel master set {set}");
    let finding = if !problems.is_empty() {
        Finding::fail(format!("{what}: {}", problems.join("; "))).comparisons(rows).hint(
            "bring the sentinels back (they run beside each Redis pod) and make them agree; a master lost now might not be replaced",
        )
    } else {
        let mut f = Finding::pass(format!(
            "{what}: {} of {configured} sentinels reachable and agree on {}; quorum {quorum} reachable",
            reachable.len(),
            agreed.as_deref().unwrap_or("?")
        ))
        .comparisons(rows);
        if reachable.len() < configured {
            f = f.hint("a sentinel is down: failover still works, one more loss would stop it");
        }
        f
    };
    Ok(finding)
}

/// `INFO` text -> key/value pairs.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn info(master: &RedisMaster, section: &str) -> Result<BTreeMap<String, String>, Finding> {
    let text: String = master.query(redis::cmd("INFO").arg(section)).await?;
    Ok(parse_info(&text))
}

async fn config_get(master: &RedisMaster, key: &str) -> Result<String, Finding> {
    let pair: Vec<String> = master.query(redis::cmd("CONFIG").arg("GET").arg(key)).await?;
    Ok(pair.get(1).cloned().unwrap_or_default())
}

async fn replication(ctx: &Context) -> Outcome {
    let master = ctx.conns.redis_master(&ctx.targets).await?;
    let info = info(master, "replication").await?;
    let role = info.get("role").cloned().unwrap_or_default();
    let wanted = ctx.values.redis.replica.replica_count;
    let mut rows = vec![row(format!("role of {}", master.addr), "master", &role, role == "master")];
    let mut online = 0u32;
    let mut replica_rows = Vec::new();
    for (key, value) in &info {
        if !(key.starts_with("slave") && key[5..].chars().all(|c| c.is_ascii_digit())) {
            continue;
        }
        // slave0:ip=10.0.0.5,port=6379,state=online,offset=123,lag=0
        let fields: BTreeMap<&str, &str> = value.split(',').filter_map(|f| f.split_once('=')).collect();
        let who = format!("{}:{}", fields.get("ip").unwrap_or(&"?"), fields.get("port").unwrap_or(&"?"));
        let state = fields.get("state").copied().unwrap_or("?");
        let lag: u64 = fields.get("lag").and_then(|l| l.parse().ok()).unwrap_or(u64::MAX);
        let ok = state == "online" && lag <= MAX_REPLICA_LAG_SECONDS;
        if ok {
            online += 1;
        }
        replica_rows.push(row(
            format!("replica {who}"),
            format!("online, lag <= {MAX_REPLICA_LAG_SECONDS} s"),
            format!("{state}, lag {} s", if lag == u64::MAX { "?".into() } else { lag.to_string() }),
            ok,
        ));
    }
    rows.push(row(
        "replicas online",
        format!(">= {wanted} (redis.replica.replicaCount)"),
        format!("{online} (connected_slaves {})", info.get("connected_slaves").map_or("?", String::as_str)),
        online >= wanted,
    ));
    rows.extend(replica_rows);
    Ok(Finding::from_comparisons(&format!("Redis master {}", master.addr), rows))
}

/// `3600 1 300 100` -> [(3600, 1), (300, 100)].
pub fn parse_save(text: &str) -> Vec<(i64, i64)> {
    let nums: Vec<i64> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    nums.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

async fn persistence(ctx: &Context) -> Outcome {
    let master = ctx.conns.redis_master(&ctx.targets).await?;
    let aof = config_get(master, "appendonly").await?;
    let save = config_get(master, "save").await?;
    let p = info(master, "persistence").await?;
    let get = |k: &str| p.get(k).cloned().unwrap_or_else(|| "?".into());
    let wanted_save = ctx.values.redis.save.clone();
    let mut rows = vec![
        row("appendonly (AOF)", "yes", &aof, aof == "yes"),
        row(
            "save (RDB save points)",
            format!("{wanted_save} (redis.save)"),
            if save.trim().is_empty() { "none" } else { &save },
            parse_save(&save) == parse_save(&wanted_save) && !parse_save(&save).is_empty(),
        ),
        row("rdb_last_bgsave_status", "ok", get("rdb_last_bgsave_status"), get("rdb_last_bgsave_status") == "ok"),
    ];
    if aof == "yes" {
        for key in ["aof_last_write_status", "aof_last_bgrewrite_status"] {
            rows.push(row(key, "ok", get(key), get(key) == "ok"));
        }
    }
    // Overdue: changes pending longer than the save rule they satisfy allows.
    let changes: i64 = get("rdb_changes_since_last_save").parse().unwrap_or(0);
    let last: i64 = get("rdb_last_save_time").parse().unwrap_or(0);
    let age = ctx.now.timestamp() - last;
    let due = parse_save(&save).into_iter().filter(|(_, n)| changes >= *n).map(|(s, _)| s).min();
    let (expected, ok) = match due {
        Some(s) => {
            (format!("<= {} s old ({changes} changes pending)", s + SAVE_GRACE_SECONDS), age <= s + SAVE_GRACE_SECONDS)
        }
        None => ("no save due".to_owned(), true),
    };
    rows.push(row("last RDB save", &expected, format!("{age} s ago"), ok));
    let mut f = Finding::from_comparisons(&format!("Redis persistence on {}", master.addr), rows);
    if f.status == Status::Fail {
        f = f.hint("the guide's backup table wants RDB hourly plus AOF: CONFIG SET appendonly yes / save \"3600 1\" and fix the redis.conf the chart renders");
    }
    Ok(f)
}

/// Policies that never evict a key without a TTL.
const SAFE_POLICIES: &[&str] = &["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"];

async fn memory(ctx: &Context) -> Outcome {
    let master = ctx.conns.redis_master(&ctx.targets).await?;
    let max: u64 = config_get(master, "maxmemory").await?.parse().unwrap_or(0);
    let policy = config_get(master, "maxmemory-policy").await?;
    let m = info(master, "memory").await?;
    let used: u64 = m.get("used_memory").and_then(|u| u.parse().ok()).unwrap_or(0);
    let mb = |b: u64| format!("{:.0} MB", b as f64 / (1024.0 * 1024.0));
    let policy_ok = SAFE_POLICIES.contains(&policy.as_str());
    let rows = vec![
        row("maxmemory-policy", "noeviction or volatile-*", &policy, policy_ok),
        row(
            "maxmemory",
            "set (> 0)",
            &if max == 0 { "0 (unlimited)".into() } else { format!("{} ({} used)", mb(max), mb(used)) },
            max > 0,
        ),
    ];
    let what = format!("Redis memory on {}", master.addr);
    let f = if !policy_ok {
        Finding::fail(format!("{what}: maxmemory-policy {policy} evicts keys without a TTL"))
            .comparisons(rows)
            .hint("idempotency records and rate-limit counters must not vanish under memory pressure: use noeviction or a volatile-* policy")
    } else if max == 0 {
        Finding::warn(format!("{what}: no maxmemory, Redis grows until the container's memory limit kills it"))
            .comparisons(rows)
            .hint("set maxmemory below the container's memory limit (leave room for fork on save)")
    } else if used as f64 >= 0.9 * max as f64 {
        Finding::warn(format!("{what}: {} of {} used", mb(used), mb(max))).comparisons(rows)
    } else {
        Finding::from_comparisons(&what, rows)
    };
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_rules_and_info_parse() {
        assert_eq!(parse_save("3600 1 300 100"), vec![(3600, 1), (300, 100)]);
        assert!(parse_save("").is_empty());
        let info = parse_info(
            "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=1,state=online,offset=1,lag=0\r\n",
        );
        assert_eq!(info.get("role").map(String::as_str), Some("master"));
        assert!(info["slave0"].contains("state=online"));
    }
}
