//! Elasticsearch / OpenSearch probes: cluster health and node counts, security, snapshots, the
//! audit indices and their template, disk watermarks. Both products answer the same APIs used here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::conns::{probe, row};
use super::{Comparison, Context, Finding, Probe, Status, Target};

/// The audit indices (the rendered index template's pattern).
pub const AUDIT_INDEX_PATTERN: &str = "audit-*";
/// The guide's backup table: daily snapshots. One hour of grace for a snapshot still running.
pub const MAX_SNAPSHOT_AGE: Duration = Duration::from_secs(25 * 3600);

pub fn probes() -> Vec<Box<dyn Probe>> {
    vec![Box::new(Health), Box::new(Security), Box::new(Snapshots), Box::new(Indices), Box::new(Disk)]
}

probe!(
    Health,
    Target::Search,
    "search.health",
    "Cluster health green (yellow warns, red fails); data and master-eligible nodes >= elasticsearch.replicas",
    health
);
probe!(
    Security,
    Target::Search,
    "search.security",
    "Security (authentication, https) on where values say so",
    security
);
probe!(
    Snapshots,
    Target::Search,
    "search.snapshots",
    "Snapshot repository registered; newest successful snapshot younger than a day (the guide's cadence)",
    snapshots
);
probe!(
    Indices,
    Target::Search,
    "search.indices",
    "Audit indices (audit-*) and their index template: replicas >= 1, the guide's refresh and translog settings",
    indices
);
probe!(Disk, Target::Search, "search.disk", "Disk use of every node below the allocation watermarks", disk);

type Outcome = Result<Finding, Finding>;

async fn health(ctx: &Context) -> Outcome {
    let es = ctx.conns.search(&ctx.targets).await?;
    let h = es.get("/_cluster/health").await?;
    let nodes = es.get("/_nodes?filter_path=nodes.*.roles").await?;
    let status = h["status"].as_str().unwrap_or("unknown").to_owned();
    let (mut data, mut master) = (0u64, 0u64);
    if let Some(map) = nodes["nodes"].as_object() {
        for node in map.values() {
            let roles: Vec<&str> = node["roles"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if roles.iter().any(|r| *r == "data" || r.starts_with("data_")) {
                data += 1;
            }
            if roles.iter().any(|r| *r == "master" || *r == "cluster_manager") {
                master += 1;
            }
        }
    }
    let wanted = u64::from(ctx.values.elasticsearch.replicas);
    let rows = vec![
        row("cluster health", "green", &status, status == "green"),
        row("data nodes", format!(">= {wanted} (elasticsearch.replicas)"), data.to_string(), data >= wanted),
        row(
            "master-eligible nodes",
            format!(">= {wanted} (elasticsearch.replicas)"),
            master.to_string(),
            master >= wanted,
        ),
    ];
    let unassigned = h["unassigned_shards"].as_u64().unwrap_or(0);
    let what = format!("{} cluster {}", es.product, h["cluster_name"].as_str().unwrap_or("?"));
    let counts_ok = rows[1].ok && rows[2].ok;
    let finding = match status.as_str() {
        "yellow" if counts_ok => Finding::warn(format!("{what}: health yellow ({unassigned} unassigned shards)"))
            .comparisons(rows)
            .hint("replica shards are unassigned: too few data nodes for the indices' number_of_replicas, or allocation blocked (GET _cluster/allocation/explain)"),
        "red" => Finding::fail(format!("{what}: health red ({unassigned} unassigned shards, primaries among them)"))
            .comparisons(rows)
            .hint("GET _cluster/allocation/explain names the shard and why it is unassigned"),
        _ => Finding::from_comparisons(&what, rows),
    };
    Ok(finding)
}

/// Values ask for security when the chart runs Elasticsearch (ECK turns it on), when the seed's
/// elasticsearch.yml or `config` sets `xpack.security.enabled: true`, or when an external cluster
/// is reached over https.
pub fn security_expected(v: &crate::values::Values) -> (bool, &'static str) {
    let es = &v.elasticsearch;
    let yml_says = es
        .es_config
        .get("elasticsearch.yml")
        .and_then(|yml| serde_yaml::from_str::<BTreeMap<String, Value>>(yml).ok())
        .and_then(|m| m.get("xpack.security.enabled").cloned())
        .or_else(|| es.config.get("xpack.security.enabled").cloned());
    if let Some(v) = yml_says {
        let on = v.as_bool().unwrap_or_else(|| v.as_str() == Some("true"));
        return (on, "elasticsearch.esConfig / config xpack.security.enabled");
    }
    if es.enabled {
        return (true, "elasticsearch.enabled (ECK enables security)");
    }
    let https = es.external.database.as_deref().unwrap_or("https") == "https";
    (https, "elasticsearch.external.database (URL scheme)")
}

async fn security(ctx: &Context) -> Outcome {
    let es = ctx.conns.search(&ctx.targets).await?;
    let (wanted, why) = security_expected(&ctx.values);
    let anonymous = es.anonymous_status("/_cluster/health").await?;
    let auth_on = anonymous == 401 || anonymous == 403;
    let https = es.url.starts_with("https://");
    let mut rows = vec![row(
        "anonymous request refused",
        if wanted { "yes (401)" } else { "not required" },
        &if auth_on { format!("yes ({anonymous})") } else { format!("no ({anonymous})") },
        auth_on || !wanted,
    )];
    rows.push(row(
        "https",
        if wanted { "yes" } else { "not required" },
        if https { "yes" } else { "no" },
        https || !wanted,
    ));
    let mut finding = Finding::from_comparisons(&format!("{} security (expected per {why})", es.product), rows);
    if finding.status == Status::Fail {
        finding = finding.hint("enable xpack.security (OpenSearch: the security plugin) with TLS on the HTTP layer, and give audctl a user in targets search.username/password");
    }
    Ok(finding)
}

fn repository_name(ctx: &Context) -> String {
    ctx.targets
        .search
        .as_ref()
        .and_then(|t| t.snapshot_repository.clone())
        .unwrap_or_else(|| ctx.values.elasticsearch.snapshot.repository.clone())
}

async fn snapshots(ctx: &Context) -> Outcome {
    let es = ctx.conns.search(&ctx.targets).await?;
    let repo = repository_name(ctx);
    let repos = es.get("/_snapshot").await?;
    let registered: Vec<String> = repos.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    if !registered.contains(&repo) {
        let actual = if registered.is_empty() { "none registered".to_owned() } else { registered.join(", ") };
        return Ok(Finding::fail(format!("snapshot repository {repo} is not registered"))
            .comparisons(vec![row("snapshot repository", &repo, &actual, false)])
            .hint("register it (PUT _snapshot/<name>) and a daily snapshot lifecycle policy; the repository name comes from targets search.snapshotRepository or elasticsearch.snapshot.repository"));
    }
    let list = es.get(&format!("/_snapshot/{repo}/_all")).await?;
    let now_ms = ctx.now.timestamp_millis();
    let newest = list["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["state"].as_str() == Some("SUCCESS"))
        .filter_map(|s| Some((s["end_time_in_millis"].as_i64()?, s["snapshot"].as_str().unwrap_or("?").to_owned())))
        .max();
    let total = list["snapshots"].as_array().map_or(0, Vec::len);
    let max_h = MAX_SNAPSHOT_AGE.as_secs() / 3600;
    let newest_row = match &newest {
        Some((end, name)) => {
            let age_h = (now_ms - end) as f64 / 3_600_000.0;
            row(
                "newest successful snapshot",
                format!("<= {max_h} h old"),
                format!("{name}, {age_h:.1} h old"),
                age_h <= max_h as f64,
            )
        }
        None => row(
            "newest successful snapshot",
            format!("<= {max_h} h old"),
            format!("none ({total} snapshots in all)"),
            false,
        ),
    };
    let rows = vec![row("snapshot repository", &repo, &repo, true), newest_row];
    let mut finding = Finding::from_comparisons(&format!("snapshots in {repo}"), rows);
    if finding.status == Status::Fail {
        finding = finding.hint("the daily snapshot policy is not running or failing: GET _slm/status and _slm/policy (OpenSearch: _plugins/_sm)");
    }
    Ok(finding)
}

/// `{"index": {"refresh_interval": "5s"}}` -> `index.refresh_interval = "5s"`.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// Expected index settings: the rendered template's (values indexSettings + index.* of esConfig).
fn expected_index_settings(ctx: &Context) -> BTreeMap<String, String> {
    crate::render::context::release(&ctx.values)
        .elasticsearch
        .index_settings
        .into_iter()
        .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
        .collect()
}

fn settings_rows(subject: &str, live: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> Vec<Comparison> {
    let mut rows = Vec::new();
    let replicas = live.get("index.number_of_replicas").cloned();
    let ok = replicas.as_deref().is_none_or(|r| r.parse::<u32>().is_ok_and(|n| n >= 1));
    rows.push(row(
        format!("{subject} index.number_of_replicas"),
        ">= 1",
        replicas.as_deref().unwrap_or("unset (default 1)"),
        ok,
    ));
    for (key, value) in wanted {
        let actual = live.get(key).cloned();
        rows.push(row(
            format!("{subject} {key}"),
            value,
            actual.as_deref().unwrap_or("unset"),
            actual.as_deref() == Some(value.as_str()),
        ));
    }
    rows
}

async fn indices(ctx: &Context) -> Outcome {
    let es = ctx.conns.search(&ctx.targets).await?;
    let wanted = expected_index_settings(ctx);
    let template_name = ctx.values.name.clone();
    let mut rows = Vec::new();
    // The template: what every new audit index gets.
    let template = es.get_optional(&format!("/_index_template/{template_name}")).await?;
    let template_settings = template.as_ref().and_then(|t| {
        t["index_templates"].as_array()?.first().map(|it| it["index_template"]["template"]["settings"].clone())
    });
    match &template_settings {
        Some(s) => {
            let mut flat = BTreeMap::new();
            flatten("", s, &mut flat);
            // Templates may omit the `index.` prefix.
            let flat = flat
                .into_iter()
                .map(|(k, v)| if k.starts_with("index.") { (k, v) } else { (format!("index.{k}"), v) })
                .collect();
            rows.extend(settings_rows(&format!("template {template_name}"), &flat, &wanted));
        }
        None => rows.push(row("index template", &template_name, "absent", false)),
    }
    // The live indices.
    let live = es
        .get(&format!(
            "/{AUDIT_INDEX_PATTERN}/_settings?include_defaults=true&flat_settings=true&expand_wildcards=open"
        ))
        .await?;
    let mut names = 0;
    if let Some(map) = live.as_object() {
        for (index, body) in map {
            names += 1;
            let mut flat = BTreeMap::new();
            for part in ["defaults", "settings"] {
                if let Some(obj) = body[part].as_object() {
                    for (k, v) in obj {
                        flat.insert(k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
                    }
                }
            }
            rows.extend(settings_rows(&format!("index {index}"), &flat, &wanted));
        }
    }
    if template_settings.is_none() && names == 0 {
        return Ok(Finding::fail(format!(
            "neither an index template {template_name} nor an index matching {AUDIT_INDEX_PATTERN}"
        ))
        .comparisons(rows)
        .hint("apply the rendered <release>-es-index-template ConfigMap's index-template.json: PUT _index_template/<release>"));
    }
    let what = format!("audit indices ({names} matching {AUDIT_INDEX_PATTERN}) and template {template_name}");
    Ok(Finding::from_comparisons(&what, rows))
}

/// A watermark as a limit on used disk: `85%`/`0.85` (fraction used) or `500mb` (free bytes left).
#[derive(Debug, Clone, PartialEq)]
pub enum Watermark {
    UsedFraction(f64),
    FreeBytes(u64),
}

pub fn parse_watermark(text: &str) -> Option<Watermark> {
    let t = text.trim().to_ascii_lowercase();
    if let Some(p) = t.strip_suffix('%') {
        return p.trim().parse::<f64>().ok().map(|p| Watermark::UsedFraction(p / 100.0));
    }
    if let Ok(r) = t.parse::<f64>() {
        return Some(Watermark::UsedFraction(r));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "b" => 1.0,
        "kb" => 1024.0,
        "mb" => 1024.0 * 1024.0,
        "gb" => 1024.0 * 1024.0 * 1024.0,
        "tb" => 1024.0f64.powi(4),
        "pb" => 1024.0f64.powi(5),
        _ => return None,
    };
    Some(Watermark::FreeBytes((n * mult) as u64))
}

impl Watermark {
    fn exceeded(&self, total: u64, available: u64) -> bool {
        match self {
            Watermark::UsedFraction(f) => total > 0 && (1.0 - available as f64 / total as f64) >= *f,
            Watermark::FreeBytes(b) => available <= *b,
        }
    }
}

async fn disk(ctx: &Context) -> Outcome {
    let es = ctx.conns.search(&ctx.targets).await?;
    let settings = es.get("/_cluster/settings?include_defaults=true&flat_settings=true").await?;
    let setting = |key: &str| -> Option<String> {
        ["transient", "persistent", "defaults"].iter().find_map(|part| {
            let v = &settings[*part][key];
            v.as_str().map(str::to_owned).or_else(|| (!v.is_null()).then(|| v.to_string()))
        })
    };
    let base = "cluster.routing.allocation.disk";
    let enabled = setting(&format!("{base}.threshold_enabled")).unwrap_or_else(|| "true".into()) == "true";
    let marks: Vec<(&str, String)> = ["low", "high", "flood_stage"]
        .into_iter()
        .map(|m| (m, setting(&format!("{base}.watermark.{m}")).unwrap_or_else(|| default_watermark(m).into())))
        .collect();
    let stats = es.get("/_nodes/stats/fs?filter_path=nodes.*.name,nodes.*.fs.total").await?;
    let mut rows = Vec::new();
    let mut worst = 0; // 0 ok, 1 above low, 2 above high or flood
    if let Some(nodes) = stats["nodes"].as_object() {
        for node in nodes.values() {
            let name = node["name"].as_str().unwrap_or("?");
            let total = node["fs"]["total"]["total_in_bytes"].as_u64().unwrap_or(0);
            let avail = node["fs"]["total"]["available_in_bytes"].as_u64().unwrap_or(0);
            let used = if total > 0 { 100.0 * (1.0 - avail as f64 / total as f64) } else { 0.0 };
            let over: Vec<&str> = marks
                .iter()
                .filter(|(_, v)| parse_watermark(v).is_some_and(|w| w.exceeded(total, avail)))
                .map(|(m, _)| *m)
                .collect();
            let level = if over.contains(&"high") || over.contains(&"flood_stage") {
                2
            } else {
                usize::from(over.contains(&"low"))
            };
            worst = worst.max(level);
            let highest = over.last().copied();
            rows.push(row(
                format!("node {name} disk used"),
                format!("below low watermark {}", marks[0].1),
                &match highest {
                    Some(m) => format!("{used:.0}% (over {m} watermark)"),
                    None => format!("{used:.0}% ({} GB free)", avail / (1024 * 1024 * 1024)),
                },
                level == 0,
            ));
        }
    }
    rows.push(row("disk threshold decider", "enabled", if enabled { "enabled" } else { "disabled" }, enabled));
    let what = format!("disk watermarks (low {}, high {}, flood_stage {})", marks[0].1, marks[1].1, marks[2].1);
    let finding = if worst == 2 {
        Finding::fail(format!("{what}: a node is over the high watermark: shards move away or indices turn read-only"))
            .comparisons(rows)
    } else if worst == 1 || !enabled {
        let msg = if enabled {
            format!("{what}: a node is over the low watermark, no new shards go there")
        } else {
            format!(
                "{what}: cluster.routing.allocation.disk.threshold_enabled is false, a full disk will not be prevented"
            )
        };
        Finding::warn(&msg).comparisons(rows)
    } else {
        Finding::from_comparisons(&what, rows)
    };
    Ok(finding)
}

fn default_watermark(which: &str) -> &'static str {
    match which {
        "low" => "85%",
        "high" => "90%",
        _ => "95%",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_parse_in_every_form() {
        assert_eq!(parse_watermark("85%"), Some(Watermark::UsedFraction(0.85)));
        assert_eq!(parse_watermark("0.9"), Some(Watermark::UsedFraction(0.9)));
        assert_eq!(parse_watermark("500mb"), Some(Watermark::FreeBytes(500 * 1024 * 1024)));
        assert!(Watermark::UsedFraction(0.85).exceeded(100, 10));
        assert!(!Watermark::UsedFraction(0.85).exceeded(100, 20));
        assert!(Watermark::FreeBytes(50).exceeded(100, 40));
    }
}
