//! The canary's gate, as pure functions: read the thresholds of the rendered alert rules
//! (HighErrorRate, HighLatency), parse the canary's Prometheus scrapes, and judge one step from the
//! deltas between the scrape at its start and the one at its end (counter deltas for the error
//! rate; bucket deltas and Prometheus' own `histogram_quantile` interpolation for the p99).
//!
//! The rules are read, not re-derived from values: whatever the rendered rule says (its matchers,
//! its quantile, its threshold and comparison) is what the gate applies, so the canary is judged
//! exactly as the alert would judge the new version. An expression of a shape the gate does not
//! understand is refused (exit 2) rather than guessed at.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::probes::service::metric_names;

/// Alert names the gate reads (the production guide's alerts).
pub const ERROR_ALERT: &str = "HighErrorRate";
pub const LATENCY_ALERT: &str = "HighLatency";

/// Requests to these routes are not the canary's traffic: kubelet probes and scrapes (audctl's own
/// included) would otherwise count as requests, so a step without real traffic would look served.
const NOT_TRAFFIC: &str = "/actuator";

#[derive(Debug, Clone)]
enum Op {
    Eq,
    Ne,
    Re(regex::Regex),
    NotRe(regex::Regex),
}

/// One label matcher of a selector.
#[derive(Debug, Clone)]
pub struct Matcher {
    label: String,
    op: Op,
    value: String,
}

impl PartialEq for Op {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Op::Eq, Op::Eq) | (Op::Ne, Op::Ne) => true,
            (Op::Re(a), Op::Re(b)) | (Op::NotRe(a), Op::NotRe(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Matcher {
    fn matches(&self, v: &str) -> bool {
        match &self.op {
            Op::Eq => v == self.value,
            Op::Ne => v != self.value,
            Op::Re(r) => r.is_match(v),
            Op::NotRe(r) => !r.is_match(v),
        }
    }
}

/// `metric{label="v",...}` of an alert expression.
#[derive(Debug, Clone)]
pub struct Selector {
    pub metric: String,
    matchers: Vec<Matcher>,
}

/// Whether the rule fires above (`>`) or at and above (`>=`) its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Cmp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Cmp {
    /// Would the alert fire on `value`?
    pub fn fires(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Gt => value > threshold,
            Cmp::Ge => value >= threshold,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

/// The two thresholds, as the rendered rules state them.
#[derive(Debug, Clone)]
pub struct Rules {
    pub errors: Selector,
    pub requests: Selector,
    pub max_error_rate: f64,
    pub error_cmp: Cmp,
    pub quantile: f64,
    pub buckets: Selector,
    pub max_latency: f64,
    pub latency_cmp: Cmp,
}

/// Read HighErrorRate and HighLatency from a rendered PrometheusRule (its JSON body).
pub fn rules(prometheus_rule: &Value) -> Result<Rules, String> {
    let expr = |alert: &str| -> Result<String, String> {
        prometheus_rule
            .pointer("/spec/groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|g| g.get("rules").and_then(Value::as_array).into_iter().flatten())
            .find(|r| r.get("alert").and_then(Value::as_str) == Some(alert))
            .and_then(|r| r.get("expr").and_then(Value::as_str))
            .map(str::to_owned)
            .ok_or_else(|| {
                format!("the rendered PrometheusRule has no alert {alert}: the canary gate reads its threshold")
            })
    };
    let e = expr(ERROR_ALERT)?;
    let shape = |alert: &str, why: &str| {
        format!("alert {alert}: {why} (expr: {})", e.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let (ratio, error_cmp, max_error_rate) =
        comparison(&e).ok_or_else(|| shape(ERROR_ALERT, "expected `<ratio> > <number>`"))?;
    let (num, den) = split_top(ratio, '/').ok_or_else(|| shape(ERROR_ALERT, "expected a ratio `errors / requests`"))?;
    let errors = selector(num).map_err(|w| shape(ERROR_ALERT, &w))?;
    let requests = selector(den).map_err(|w| shape(ERROR_ALERT, &w))?;
    let e = expr(LATENCY_ALERT)?;
    let shape = |why: &str| {
        format!("alert {LATENCY_ALERT}: {why} (expr: {})", e.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let (lhs, latency_cmp, max_latency) =
        comparison(&e).ok_or_else(|| shape("expected `histogram_quantile(...) > <number>`"))?;
    let args = lhs
        .trim()
        .strip_prefix("histogram_quantile")
        .map(str::trim_start)
        .and_then(|a| a.strip_prefix('('))
        .ok_or_else(|| shape("expected histogram_quantile(q, ...)"))?;
    let (q, rest) = split_top(args, ',').ok_or_else(|| shape("expected histogram_quantile(q, ...)"))?;
    let quantile: f64 = q.trim().parse().map_err(|_| shape("the quantile is not a number"))?;
    if !(0.0..=1.0).contains(&quantile) {
        return Err(shape("the quantile is not between 0 and 1"));
    }
    let buckets = selector(rest).map_err(|w| shape(&w))?;
    if !buckets.metric.ends_with("_bucket") {
        return Err(shape("expected a histogram's _bucket series"));
    }
    Ok(Rules { errors, requests, max_error_rate, error_cmp, quantile, buckets, max_latency, latency_cmp })
}

/// Index of every char of `s` that is outside quotes, braces, brackets and parentheses.
fn top_level(s: &str) -> Vec<(usize, char)> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ if depth == 0 => out.push((i, c)),
            _ => {}
        }
    }
    out
}

/// `lhs > number` (or `>=`): the single top-level comparison with a literal on its right.
fn comparison(expr: &str) -> Option<(&str, Cmp, f64)> {
    let top = top_level(expr);
    let gt: Vec<usize> = top.iter().filter(|(_, c)| *c == '>').map(|(i, _)| *i).collect();
    let [i] = gt.as_slice() else { return None };
    let i = *i;
    if top.iter().any(|(_, c)| *c == '<') {
        return None;
    }
    let (cmp, rhs) = match expr[i + 1..].strip_prefix('=') {
        Some(r) => (Cmp::Ge, r),
        None => (Cmp::Gt, &expr[i + 1..]),
    };
    let threshold: f64 = rhs.trim().parse().ok().filter(|t: &f64| t.is_finite())?;
    Some((&expr[..i], cmp, threshold))
}

/// `a <sep> b` split at the only top-level `sep`.
fn split_top(s: &str, sep: char) -> Option<(&str, &str)> {
    let at: Vec<usize> = top_level(s).into_iter().filter(|(_, c)| *c == sep).map(|(i, _)| i).collect();
    match at.as_slice() {
        [i] => Some((&s[..*i], &s[*i + 1..])),
        _ => None,
    }
}

/// The one series selector of a sub-expression (`sum(rate(name{...}[5m]))`).
fn selector(part: &str) -> Result<Selector, String> {
    let names: BTreeSet<String> = metric_names(part).into_iter().collect();
    let [metric] = names.into_iter().collect::<Vec<_>>().try_into().map_err(|n: Vec<String>| {
        format!(
            "expected one series in {:?}, found {}",
            part.trim(),
            if n.is_empty() { "none".into() } else { n.join(", ") }
        )
    })?;
    // The first occurrence of the name as a whole identifier, then its optional {...}.
    let at = part
        .match_indices(metric.as_str())
        .map(|(i, _)| i)
        .find(|&i| {
            let before = part[..i].chars().next_back();
            let after = part[i + metric.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            !ident(before) && !ident(after)
        })
        .ok_or_else(|| format!("series {metric} not found"))?;
    let rest = part[at + metric.len()..].trim_start();
    let matchers = match rest.strip_prefix('{') {
        Some(body) => matchers(body)?,
        None => Vec::new(),
    };
    Ok(Selector { metric, matchers })
}

/// `label="v", label=~"re", ...}`: the matchers up to the closing brace.
fn matchers(mut s: &str) -> Result<Vec<Matcher>, String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start().trim_start_matches(',').trim_start();
        if s.starts_with('}') {
            return Ok(out);
        }
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).ok_or("unterminated {")?;
        let label = s[..end].to_owned();
        s = s[end..].trim_start();
        let (op, rest) = if let Some(r) = s.strip_prefix("=~") {
            ("=~", r)
        } else if let Some(r) = s.strip_prefix("!~") {
            ("!~", r)
        } else if let Some(r) = s.strip_prefix("!=") {
            ("!=", r)
        } else if let Some(r) = s.strip_prefix('=') {
            ("=", r)
        } else {
            return Err(format!("matcher on {label:?}: expected =, !=, =~ or !~"));
        };
        let rest = rest.trim_start();
        let quote = rest.chars().next().filter(|c| matches!(c, '"' | '\'' | '`')).ok_or("expected a quoted value")?;
        let mut value = String::new();
        let mut chars = rest[1..].char_indices();
        let mut close = None;
        while let Some((i, c)) = chars.next() {
            if c == '\\' && quote != '`' {
                match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, e)) => value.push(e),
                    None => break,
                }
            } else if c == quote {
                close = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let close = close.ok_or("unterminated string")?;
        s = &rest[1 + close + 1..];
        // PromQL regexes are fully anchored.
        let re = || regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| format!("regex {value:?}: {e}"));
        let op = match op {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "=~" => Op::Re(re()?),
            _ => Op::NotRe(re()?),
        };
        out.push(Matcher { label, op, value });
    }
}

/// One sample of a text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments, blank and unparsable lines skipped).
pub fn parse_scrape(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(sample).collect()
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let ms = matchers(body).ok()?;
        for m in ms {
            if m.op != Op::Eq {
                return None;
            }
            labels.insert(m.label, m.value);
        }
        let close = top_level(line).into_iter().find(|(i, c)| *i > name_end && *c == ' ').map(|(i, _)| i)?;
        rest = &line[close..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// Does the series match the selector? Matchers on labels no series of the scrape carries are the
/// labels Prometheus attaches at scrape time (the ServiceMonitor's `app`): reading the canary
/// directly, the series is that target's, so they hold by construction.
fn selects(sel: &Selector, s: &Sample, exposed: &BTreeSet<&str>) -> bool {
    s.name == sel.metric
        && !s.labels.get("uri").is_some_and(|u| u.starts_with(NOT_TRAFFIC))
        && sel
            .matchers
            .iter()
            .filter(|m| exposed.contains(m.label.as_str()))
            .all(|m| m.matches(s.labels.get(&m.label).map(String::as_str).unwrap_or("")))
}

/// What one step measured on the canary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measure {
    pub requests: f64,
    pub errors: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_seconds: Option<f64>,
}

fn key(s: &Sample) -> (String, Vec<(String, String)>) {
    (s.name.clone(), s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Deltas between two scrapes of one target, summed over the series each selector picks.
/// Err: a counter went backwards (the process restarted during the step: a crash is a failure).
pub fn measure(rules: &Rules, before: &[Sample], after: &[Sample]) -> Result<Measure, String> {
    let exposed: BTreeSet<&str> = after.iter().flat_map(|s| s.labels.keys().map(String::as_str)).collect();
    let start: BTreeMap<_, f64> = before.iter().map(|s| (key(s), s.value)).collect();
    // Only the series the rules query (counters: the rules rate() them); gauges go up and down.
    let counters = [&rules.errors.metric, &rules.requests.metric, &rules.buckets.metric];
    let mut deltas = Vec::new();
    for s in after.iter().filter(|s| counters.contains(&&s.name)) {
        // A series first seen during the step (say the first 503) started from zero.
        let d = s.value - start.get(&key(s)).copied().unwrap_or(0.0);
        if d < 0.0 {
            return Err(format!(
                "{} went from {} to {}: the canary restarted during the step",
                s.name,
                s.value - d,
                s.value
            ));
        }
        deltas.push((s, d));
    }
    // fold from +0.0: an empty f64 sum is -0.0, which prints as "-0.00%".
    #[allow(clippy::unnecessary_fold)]
    let sum = |sel: &Selector| deltas.iter().filter(|(s, _)| selects(sel, s, &exposed)).fold(0.0, |a, (_, d)| a + d);
    let requests = sum(&rules.requests);
    let errors = sum(&rules.errors);
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (s, d) in deltas.iter().filter(|(s, _)| selects(&rules.buckets, s, &exposed)) {
        let Some(le) = s.labels.get("le").and_then(|l| if l == "+Inf" { Some(f64::INFINITY) } else { l.parse().ok() })
        else {
            continue;
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += d;
    }
    let mut buckets: Vec<(f64, f64)> = by_le.into_values().collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(Measure {
        requests,
        errors,
        error_rate: (requests > 0.0).then(|| errors / requests),
        p99_seconds: histogram_quantile(rules.quantile, &buckets),
    })
}

/// Prometheus' histogram_quantile over cumulative (upper bound, count) buckets: linear
/// interpolation inside the bucket holding the rank; in the +Inf bucket, the largest finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank)?;
    let (upper, count) = buckets[i];
    if upper.is_infinite() {
        return Some(if i == 0 { f64::INFINITY } else { buckets[i - 1].0 });
    }
    let (lower, below) = if i == 0 { (0.0_f64.min(upper), 0.0) } else { buckets[i - 1] };
    if count == below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

/// Why a step does not pass: each breached threshold, named with the measured value.
pub fn verdict(rules: &Rules, m: &Measure) -> Vec<String> {
    if m.requests <= 0.0 {
        // A gate over no samples cannot pass (k6 passes it; audctl's load thresholds fail it too).
        return vec![
            "no requests reached the canary during the step: the gate cannot judge a version that served nothing"
                .into(),
        ];
    }
    let mut out = Vec::new();
    if let Some(rate) = m.error_rate
        && rules.error_cmp.fires(rate, rules.max_error_rate)
    {
        out.push(format!(
            "{ERROR_ALERT}: error rate {:.2}% ({} of {} requests) {} threshold {} of the rendered rule",
            rate * 100.0,
            m.errors,
            m.requests,
            rules.error_cmp.as_str(),
            rules.max_error_rate
        ));
    }
    match m.p99_seconds {
        Some(p) if rules.latency_cmp.fires(p, rules.max_latency) => out.push(format!(
            "{LATENCY_ALERT}: p{} {:.3}s {} threshold {}s of the rendered rule",
            (rules.quantile * 1000.0).round() / 10.0,
            p,
            rules.latency_cmp.as_str(),
            rules.max_latency
        )),
        Some(_) => {}
        None => out.push(format!("{LATENCY_ALERT}: no latency samples in {}", rules.buckets.metric)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The expressions exactly as templates/prometheusrule.yaml.j2 renders them.
    fn rule(error_threshold: &str, latency_threshold: &str) -> Value {
        json!({"spec": {"groups": [{"name": "audit-trail", "rules": [
            {"alert": "HighErrorRate", "expr": format!("sum(rate(http_server_requests_seconds_count{{status=~\"5..\",app=\"audit-trail\"}}[5m]))\n/\nsum(rate(http_server_requests_seconds_count{{app=\"audit-trail\"}}[5m]))\n> {error_threshold}\n")},
            {"alert": "HighLatency", "expr": format!("histogram_quantile(0.99, sum(rate(http_server_requests_seconds_bucket{{app=\"audit-trail\"}}[5m])) by (le))\n> {latency_threshold}\n")},
        ]}]}})
    }

    fn scrape(ok: u64, fail: u64, fast: u64, probes: u64) -> Vec<Sample> {
        // `fast` of the ok requests under 5 ms, the rest at 2 s; failures at 10 ms; probe traffic.
        let mut t = String::new();
        let series = |t: &mut String, labels: &str, b: [u64; 3], n: u64| {
            for (le, c) in [("0.005", b[0]), ("0.01", b[1]), ("2.5", b[2]), ("+Inf", n)] {
                t.push_str(&format!("http_server_requests_seconds_bucket{{{labels},le=\"{le}\"}} {c}\n"));
            }
            t.push_str(&format!("http_server_requests_seconds_count{{{labels}}} {n}\n"));
        };
        series(&mut t, "method=\"POST\",uri=\"/api/v1/events\",status=\"201\"", [fast, fast, ok], ok);
        series(&mut t, "method=\"POST\",uri=\"/api/v1/events\",status=\"503\"", [0, fail, fail], fail);
        series(&mut t, "method=\"GET\",uri=\"/actuator/health/readiness\",status=\"503\"", [probes; 3], probes);
        t.push_str("# TYPE audit_events_ingested_total counter\naudit_events_ingested_total 5\n");
        // A gauge that falls while requests grow: not a restart.
        t.push_str(&format!("# TYPE audit_append_queue_events gauge\naudit_append_queue_events {}\n", 1000 - ok));
        parse_scrape(&t)
    }

    #[test]
    fn thresholds_come_from_the_rendered_rule() {
        let r = rules(&rule("0.01", "1")).expect("rules");
        assert_eq!((r.max_error_rate, r.error_cmp, r.quantile, r.max_latency), (0.01, Cmp::Gt, 0.99, 1.0));
        assert_eq!(r.errors.metric, "http_server_requests_seconds_count");
        assert_eq!(r.buckets.metric, "http_server_requests_seconds_bucket");
        let r = rules(&rule("0.05", "0.25")).expect("rules");
        assert_eq!((r.max_error_rate, r.max_latency), (0.05, 0.25));
        // Shapes the gate does not understand are refused, not guessed.
        assert!(rules(&rule("0.01 * 2", "1")).is_err());
        assert!(rules(&json!({"spec": {"groups": []}})).is_err_and(|e| e.contains("HighErrorRate")));
    }

    #[test]
    fn step_measured_from_deltas_not_totals() {
        let r = rules(&rule("0.01", "1")).expect("rules");
        // Before the step: 1000 requests, 500 of them failed (an earlier incident); during the
        // step 100 ok, all fast, no failure, and 50 failing probes that are not traffic.
        let m = measure(&r, &scrape(500, 500, 500, 10), &scrape(600, 500, 600, 60)).expect("measure");
        assert_eq!((m.requests, m.errors, m.error_rate), (100.0, 0.0, Some(0.0)));
        // A server that never failed exports no 5xx series at all: 0.00%, not -0.00%.
        let ok_only: Vec<Sample> = scrape(100, 0, 100, 0)
            .into_iter()
            .filter(|s| s.labels.get("status").map(String::as_str) != Some("503"))
            .collect();
        let m2 = measure(&r, &[], &ok_only).expect("measure");
        assert_eq!(format!("{:.2}", m2.error_rate.unwrap_or(1.0) * 100.0), "0.00", "{m2:?}");
        // p99 of 100 requests all in (0, 5ms]: rank 99 -> 0.005 * 99/100.
        assert!((m.p99_seconds.expect("p99") - 0.00495).abs() < 1e-9, "{m:?}");
        assert!(verdict(&r, &m).is_empty(), "{:?}", verdict(&r, &m));
        // 2 of 100 fail: 2% > 1%.
        let m = measure(&r, &scrape(0, 0, 0, 0), &scrape(98, 2, 98, 0)).expect("measure");
        assert_eq!(m.error_rate, Some(0.02));
        let v = verdict(&r, &m);
        assert!(v.len() == 1 && v[0].starts_with("HighErrorRate: error rate 2.00%") && v[0].contains("0.01"), "{v:?}");
        // Slow: 10 of 100 at 2 s -> p99 inside (0.01, 2.5] bucket: 0.01 + 2.49 * (99-90)/10.
        let m = measure(&r, &scrape(0, 0, 0, 0), &scrape(100, 0, 90, 0)).expect("measure");
        assert!((m.p99_seconds.expect("p99") - (0.01 + 2.49 * 0.9)).abs() < 1e-9, "{m:?}");
        assert!(
            verdict(&r, &m).iter().any(|v| v.starts_with("HighLatency: p99 2.251s > threshold 1s")),
            "{:?}",
            verdict(&r, &m)
        );
    }

    #[test]
    fn no_traffic_fails_and_restarts_are_caught() {
        let r = rules(&rule("0.01", "1")).expect("rules");
        // Only probes during the step.
        let m = measure(&r, &scrape(10, 0, 10, 0), &scrape(10, 0, 10, 30)).expect("measure");
        assert_eq!(m.requests, 0.0);
        assert!(verdict(&r, &m)[0].contains("no requests"));
        assert!(measure(&r, &scrape(10, 0, 10, 0), &scrape(5, 0, 5, 0)).is_err_and(|e| e.contains("restarted")));
    }

    #[test]
    fn quantile_matches_prometheus() {
        // Reference values worked by hand from Prometheus' bucketQuantile.
        let b = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(0.1));
        assert!((histogram_quantile(0.9, &b).expect("q") - 0.5).abs() < 1e-12);
        assert!((histogram_quantile(0.95, &b).expect("q") - 0.75).abs() < 1e-12);
        // In the +Inf bucket: the largest finite bound.
        assert_eq!(histogram_quantile(0.99, &[(1.0, 1.0), (f64::INFINITY, 10.0)]), Some(1.0));
        assert_eq!(histogram_quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn scrape_lines_parse_with_labels() {
        let s = parse_scrape("# HELP x\nx{a=\"b c\",le=\"+Inf\"} 3\ny 2.5\nbad line\n");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].labels.get("a").map(String::as_str), Some("b c"));
        assert_eq!((s[0].value, s[1].value), (3.0, 2.5));
    }
}
