//! `POST /api/v1/search`: the request, its validation, and its two answers: from the search
//! index ([`es_body`], [`from_es`]) and from the database ([`from_database`]), which apply the
//! same filters, full-text rule and aggregations so that a client cannot tell them apart but by
//! the `backend` field (and speed).
//!
//! Full text: every word of `query` must be a word of the description, the actor's name or the
//! resource's name, case-insensitively (words: runs of letters and digits). That is what the
//! cluster's standard analyzer does for such words; it has no stemming, so "deploy" does not find
//! "deployed" in either backend.

use std::collections::{BTreeMap, BTreeSet};

use audit_api::StoredEvent;
use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{ListQuery, Store, StoreError};

/// Most buckets per terms aggregation (by count, then key).
pub const TERMS_SIZE: usize = 20;
/// The database answer scans at most this many events of the tenant's range (then `partial`).
pub const SCAN_MAX: usize = 200_000;
const MAX_LIMIT: u32 = 1000;

/// Body of `POST /api/v1/search`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchRequest {
    /// The tenant searched (the key must be allowed for it).
    #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:@-]+$")]
    pub tenant_id: String,
    /// Words that must all appear in the description, actor name or resource name.
    #[schema(max_length = 1024)]
    pub query: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub actor_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub action_type: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub resource_type: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub resource_id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub source: Option<String>,
    /// Every tag given must be on the event with this value (at most 32; names without `=`).
    #[schema(schema_with = tags_filter_schema)]
    pub tags: Option<BTreeMap<String, String>>,
    /// RFC 3339, inclusive, on the storage `timestamp`.
    #[schema(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    #[schema(format = DateTime)]
    pub to: Option<String>,
    /// Any of `actionType`, `actor`, `resourceType`, `timeline`: computed over every matching event.
    pub aggregations: Option<Vec<AggregationKind>>,
    /// The timeline's bucket: `minute`, `hour` (default) or `day` (UTC).
    pub interval: Option<Interval>,
    /// 1 to 1000, default 100.
    /// (A number: JSON has no integer type, `5.0` is 5.)
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<f64>,
    /// `nextCursor` of the previous page (same request otherwise).
    #[schema(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
    /// `desc` (default: newest first) or `asc`.
    pub order: Option<SortOrder>,
}

/// `tags` of a search: names of 1 to 256 characters without `=` (tags are indexed as
/// `name=value`), values up to 4096.
fn tags_filter_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let string = |max: usize| ObjectBuilder::new().schema_type(Type::String).max_length(Some(max));
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::Object, Type::Null]))
        .additional_properties(Some(string(4096)))
        .property_names(Some(string(256).min_length(Some(1)).pattern(Some("^[^=]+$")).build()))
        .max_properties(Some(32))
        .build()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregationKind {
    ActionType,
    Actor,
    ResourceType,
    Timeline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Minute,
    #[default]
    Hour,
    Day,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

/// Answer of `POST /api/v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchResponse {
    pub events: Vec<StoredEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregations: Option<Aggregations>,
    /// `elasticsearch` (the search index; OpenSearch too) or `database`.
    pub backend: String,
    /// Database answer only: the scan stopped at its limit, aggregations and pages are incomplete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Aggregations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<Vec<Bucket>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Vec<Bucket>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<Vec<Bucket>>,
    /// Non-empty buckets only, oldest first; `key` is the bucket's start (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<Bucket>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bucket {
    pub key: String,
    pub count: u64,
}

/// A validated search.
#[derive(Debug, Clone)]
pub struct Search {
    pub tenant: String,
    pub words: Vec<String>,
    pub actor_id: Option<String>,
    pub action_type: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub source: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub aggregations: BTreeSet<AggregationKind>,
    pub interval: Interval,
    pub limit: u32,
    /// Keyset position: the sequence of the previous page's last event.
    pub after: Option<i64>,
    pub descending: bool,
}

/// Lowercased runs of letters and digits.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

impl Search {
    /// Validate a request; `Err` lists (field, message).
    pub fn parse(
        r: SearchRequest,
        time: impl Fn(&str) -> Result<DateTime<Utc>, String>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut field = |name: &str, m: &str| errors.push((name.to_owned(), m.to_owned()));
        let tenant = r.tenant_id.clone();
        if !crate::api::input::valid_tenant(&tenant) {
            field("tenantId", "is required: 1 to 128 characters among letters, digits and . _ - : @");
        }
        let query = r.query.unwrap_or_default();
        if query.chars().count() > 1024 {
            field("query", "must be at most 1024 characters");
        }
        let exact = [
            ("actorId", &r.actor_id),
            ("actionType", &r.action_type),
            ("resourceType", &r.resource_type),
            ("resourceId", &r.resource_id),
            ("source", &r.source),
        ];
        for (name, v) in exact {
            if v.as_ref().is_some_and(|v| v.is_empty() || v.chars().count() > 256 || v.chars().any(char::is_control)) {
                field(name, "must be 1 to 256 characters without control characters");
            }
        }
        let tags = r.tags.unwrap_or_default();
        if tags.len() > 32
            || tags.iter().any(|(k, v)| k.is_empty() || k.contains('=') || k.len() > 256 || v.len() > 4096)
        {
            field("tags", "at most 32 tags, names of 1 to 256 characters without '=', values up to 4096");
        }
        let mut when = |name: &str, v: &Option<String>| match v.as_deref().map(&time) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(m)) => {
                field(name, &m);
                None
            }
        };
        let (from, to) = (when("from", &r.from), when("to", &r.to));
        let limit = match r.limit {
            None => 100,
            Some(n) if n.fract() == 0.0 && (1.0..=f64::from(MAX_LIMIT)).contains(&n) => n as u32,
            Some(_) => {
                field("limit", "must be an integer from 1 to 1000");
                0
            }
        };
        let after = match r.cursor.as_deref() {
            None => None,
            Some(c) if !c.is_empty() && c.len() <= 18 && c.bytes().all(|b| b.is_ascii_digit()) => c.parse().ok(),
            Some(_) => {
                field("cursor", "is not a cursor returned by this API (1 to 18 digits)");
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Search {
            tenant,
            words: words(&query),
            actor_id: r.actor_id,
            action_type: r.action_type,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            source: r.source,
            tags,
            from,
            to,
            aggregations: r.aggregations.unwrap_or_default().into_iter().collect(),
            interval: r.interval.unwrap_or_default(),
            limit,
            after,
            descending: r.order.unwrap_or_default() == SortOrder::Desc,
        })
    }

    /// Whether an event of the tenant matches (the database answer's filter; the index applies
    /// the same rules in [`es_body`]).
    fn matches(&self, e: &StoredEvent) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !(eq(&self.actor_id, &e.actor.id)
            && eq(&self.action_type, &e.action.kind)
            && eq(&self.resource_type, &e.resource.kind)
            && eq(&self.resource_id, &e.resource.id)
            && eq(&self.source, &e.metadata.source))
        {
            return false;
        }
        let tags = e.metadata.tags.as_ref();
        if !self.tags.iter().all(|(k, v)| tags.and_then(|t| t.get(k)) == Some(v)) {
            return false;
        }
        if self.words.is_empty() {
            return true;
        }
        let text = [&e.action.description, &e.actor.name, &e.resource.name];
        let have: BTreeSet<String> = text.iter().filter_map(|t| t.as_deref()).flat_map(words).collect();
        self.words.iter().all(|w| have.contains(w))
    }
}

/// Start of the timeline bucket holding `t`.
fn bucket_start(t: DateTime<Utc>, interval: Interval) -> String {
    let (h, m) = match interval {
        Interval::Minute => (t.hour(), t.minute()),
        Interval::Hour => (t.hour(), 0),
        Interval::Day => (0, 0),
    };
    let start = Utc.with_ymd_and_hms(t.year(), t.month(), t.day(), h, m, 0).single().unwrap_or(t);
    start.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn top(counts: BTreeMap<String, u64>) -> Vec<Bucket> {
    let mut v: Vec<Bucket> = counts.into_iter().map(|(key, count)| Bucket { key, count }).collect();
    // By count, then key (BTreeMap order, kept by the stable sort): the cluster's order too.
    v.sort_by_key(|b| std::cmp::Reverse(b.count));
    v.truncate(TERMS_SIZE);
    v
}

/// The answer from the database: the filters the store can apply go to SQL, the rest are applied
/// here while scanning the tenant's range in order.
pub async fn from_database(store: &Store, s: &Search) -> Result<SearchResponse, StoreError> {
    let aggregate = !s.aggregations.is_empty();
    let mut counts: [BTreeMap<String, u64>; 4] = Default::default();
    let mut page = Vec::new();
    let mut more = false;
    let mut scanned = 0usize;
    // Aggregations count every match, so the scan starts at the beginning; a page alone starts
    // at the cursor and stops once it is full.
    let mut after = if aggregate { None } else { s.after };
    let mut partial = false;
    'scan: loop {
        let q = ListQuery {
            tenant_id: s.tenant.clone(),
            actor_id: s.actor_id.clone(),
            resource_id: s.resource_id.clone(),
            action_type: s.action_type.clone(),
            from: s.from,
            to: s.to,
            limit: 1000,
            after_sequence: after,
            descending: s.descending,
        };
        let (events, has_more) = store.list(&q).await?;
        for e in events {
            scanned += 1;
            after = Some(e.sequence);
            if !s.matches(&e) {
                continue;
            }
            if aggregate {
                let t = DateTime::parse_from_rfc3339(&e.timestamp).map(|t| t.with_timezone(&Utc));
                let keys = [
                    (AggregationKind::ActionType, Some(e.action.kind.clone())),
                    (AggregationKind::Actor, Some(e.actor.id.clone())),
                    (AggregationKind::ResourceType, Some(e.resource.kind.clone())),
                    (AggregationKind::Timeline, t.ok().map(|t| bucket_start(t, s.interval))),
                ];
                for (i, (kind, key)) in keys.into_iter().enumerate() {
                    if let (true, Some(key)) = (s.aggregations.contains(&kind), key) {
                        *counts[i].entry(key).or_default() += 1;
                    }
                }
            }
            let past_cursor = s.after.is_none_or(|c| if s.descending { e.sequence < c } else { e.sequence > c });
            if past_cursor {
                if page.len() < s.limit as usize {
                    page.push(e);
                } else {
                    more = true;
                    if !aggregate {
                        break 'scan;
                    }
                }
            }
        }
        if !has_more {
            break;
        }
        if scanned >= SCAN_MAX {
            partial = true;
            more = true;
            break;
        }
    }
    let next_cursor = page.last().filter(|_| more).map(|e| e.sequence.to_string());
    let aggregations = aggregate.then(|| {
        let [action, actor, resource, timeline] = counts;
        let want = |k| s.aggregations.contains(&k);
        Aggregations {
            action_type: want(AggregationKind::ActionType).then(|| top(action)),
            actor: want(AggregationKind::Actor).then(|| top(actor)),
            resource_type: want(AggregationKind::ResourceType).then(|| top(resource)),
            timeline: want(AggregationKind::Timeline)
                .then(|| timeline.into_iter().map(|(key, count)| Bucket { key, count }).collect()),
        }
    });
    Ok(SearchResponse { events: page, next_cursor, aggregations, backend: "database".into(), partial })
}

/// The search body for the index: the tenant is always a term filter (never text), so a query
/// cannot reach another tenant's documents.
pub fn es_body(s: &Search) -> Value {
    let mut filter = vec![json!({"term": {"tenantId": s.tenant}})];
    let exact = [
        ("actorId", &s.actor_id),
        ("actionType", &s.action_type),
        ("resourceType", &s.resource_type),
        ("resourceId", &s.resource_id),
        ("source", &s.source),
    ];
    for (f, v) in exact {
        if let Some(v) = v {
            filter.push(json!({"term": {f: v}}));
        }
    }
    for (k, v) in &s.tags {
        filter.push(json!({"term": {"tags": format!("{k}={v}")}}));
    }
    let mut range = serde_json::Map::new();
    if let Some(f) = s.from {
        range.insert("gte".into(), f.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
    }
    if let Some(t) = s.to {
        range.insert("lt".into(), t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
    }
    if !range.is_empty() {
        filter.push(json!({"range": {"timestamp": range}}));
    }
    let mut must = Vec::new();
    if !s.words.is_empty() {
        must.push(json!({"multi_match": {
            "query": s.words.join(" "), "fields": super::client::TEXT_FIELDS, "type": "cross_fields", "operator": "and"
        }}));
    }
    let order = if s.descending { "desc" } else { "asc" };
    let mut body = json!({
        "size": s.limit + 1,
        "track_total_hits": false,
        "_source": ["event"],
        "sort": [{"sequence": order}],
        "query": {"bool": {"filter": filter, "must": must}},
    });
    if let Some(after) = s.after {
        body["search_after"] = json!([after]);
        // Aggregations go in a request of their own past the first page (es_aggregations_body):
        // OpenSearch skips shards and segments holding no hit past `search_after`, and what it
        // skips drops out of the aggregations too. A CI run saw a page's counts differ.
        return body;
    }
    add_aggregations(s, &mut body);
    body
}

/// Past the first page (a cursor) with aggregations asked: the same query, no hits, no cursor,
/// only the aggregations, so that they count every match on every page.
pub fn es_aggregations_body(s: &Search) -> Option<Value> {
    if s.after.is_none() || s.aggregations.is_empty() {
        return None;
    }
    let first = Search { after: None, ..s.clone() };
    let mut body = es_body(&first);
    body["size"] = 0.into();
    if let Some(b) = body.as_object_mut() {
        b.remove("sort");
        b.remove("_source");
    }
    Some(body)
}

fn add_aggregations(s: &Search, body: &mut Value) {
    let terms = |field: &str| json!({"terms": {"field": field, "size": TERMS_SIZE, "order": [{"_count": "desc"}, {"_key": "asc"}]}});
    let mut aggs = serde_json::Map::new();
    for kind in &s.aggregations {
        let (name, agg) = match kind {
            AggregationKind::ActionType => ("actionType", terms("actionType")),
            AggregationKind::Actor => ("actor", terms("actorId")),
            AggregationKind::ResourceType => ("resourceType", terms("resourceType")),
            AggregationKind::Timeline => {
                let interval = match s.interval {
                    Interval::Minute => "minute",
                    Interval::Hour => "hour",
                    Interval::Day => "day",
                };
                (
                    "timeline",
                    json!({"date_histogram": {"field": "timestamp", "calendar_interval": interval, "min_doc_count": 1}}),
                )
            }
        };
        aggs.insert(name.into(), agg);
    }
    if !aggs.is_empty() {
        body["aggs"] = Value::Object(aggs);
    }
}

/// Read the index's answer to [`es_body`].
pub fn from_es(s: &Search, answer: &Value) -> Result<SearchResponse, String> {
    // A 200 can be partial: shards that failed (a rejected or broken shard query) or ran out of
    // time are left out of the hits and the aggregations. Passed on, such a page would silently
    // miss events and miscount; as an error, the caller answers from the database instead.
    let failed = answer["_shards"]["failed"].as_u64().unwrap_or(0);
    if failed > 0 || answer["timed_out"].as_bool().unwrap_or(false) {
        return Err(format!(
            "partial answer ({failed} of {} shards failed, timed out: {})",
            answer["_shards"]["total"], answer["timed_out"]
        ));
    }
    let hits = answer["hits"]["hits"].as_array().ok_or("search answer without hits")?;
    let mut events = Vec::with_capacity(hits.len());
    for h in hits {
        let e: StoredEvent =
            serde_json::from_value(h["_source"]["event"].clone()).map_err(|e| format!("indexed event: {e}"))?;
        // Defence in depth: the filter already holds the search to the tenant.
        if e.metadata.tenant_id != s.tenant {
            return Err("the index answered another tenant's event".into());
        }
        events.push(e);
    }
    let more = events.len() > s.limit as usize;
    events.truncate(s.limit as usize);
    let next_cursor = events.last().filter(|_| more).map(|e| e.sequence.to_string());
    let buckets = |name: &str, key: fn(&Value) -> Option<String>| -> Option<Vec<Bucket>> {
        let list = answer["aggregations"][name]["buckets"].as_array()?;
        Some(list.iter().filter_map(|b| Some(Bucket { key: key(b)?, count: b["doc_count"].as_u64()? })).collect())
    };
    let term = |b: &Value| b["key"].as_str().map(str::to_owned);
    let date = |b: &Value| {
        let ms = b["key"].as_i64()?;
        Some(Utc.timestamp_millis_opt(ms).single()?.format("%Y-%m-%dT%H:%M:%SZ").to_string())
    };
    let want = |k| s.aggregations.contains(&k);
    let aggregations = (!s.aggregations.is_empty()).then(|| Aggregations {
        action_type: want(AggregationKind::ActionType).then(|| buckets("actionType", term).unwrap_or_default()),
        actor: want(AggregationKind::Actor).then(|| buckets("actor", term).unwrap_or_default()),
        resource_type: want(AggregationKind::ResourceType).then(|| buckets("resourceType", term).unwrap_or_default()),
        timeline: want(AggregationKind::Timeline).then(|| buckets("timeline", date).unwrap_or_default()),
    });
    Ok(SearchResponse { events, next_cursor, aggregations, backend: "elasticsearch".into(), partial: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_first_page_aggregations_are_asked_without_the_cursor() {
        let request = SearchRequest {
            tenant_id: "t".into(),
            aggregations: Some(vec![AggregationKind::Actor]),
            ..Default::default()
        };
        let first = Search::parse(request, |_| Err("unused".into())).expect("valid");
        assert!(es_body(&first)["aggs"]["actor"].is_object());
        assert_eq!(es_aggregations_body(&first), None);
        let later = Search { after: Some(42), ..first.clone() };
        let hits = es_body(&later);
        assert_eq!(hits["search_after"], json!([42]));
        assert!(hits.get("aggs").is_none(), "{hits}");
        let aggs = es_aggregations_body(&later).expect("an aggregations request");
        assert!(aggs.get("search_after").is_none() && aggs.get("sort").is_none(), "{aggs}");
        assert_eq!(aggs["size"], 0);
        assert_eq!(aggs["query"], es_body(&first)["query"]);
        assert_eq!(aggs["aggs"], es_body(&first)["aggs"]);
    }

    #[test]
    fn partial_answers_are_errors_not_pages() {
        let request = SearchRequest { tenant_id: "t".into(), ..Default::default() };
        let s = Search::parse(request, |_| Err("unused".into())).expect("valid");
        let complete = json!({"timed_out": false, "_shards": {"total": 2, "failed": 0}, "hits": {"hits": []}});
        assert!(from_es(&s, &complete).is_ok());
        let failed = json!({"timed_out": false, "_shards": {"total": 2, "failed": 1}, "hits": {"hits": []}});
        assert_eq!(
            from_es(&s, &failed).err().as_deref(),
            Some("partial answer (1 of 2 shards failed, timed out: false)")
        );
        let late = json!({"timed_out": true, "_shards": {"total": 2, "failed": 0}, "hits": {"hits": []}});
        assert!(from_es(&s, &late).is_err());
    }

    #[test]
    fn words_are_lowercased_runs_of_letters_and_digits() {
        assert_eq!(words("Rotated KEY-42 for prod.db"), ["rotated", "key", "42", "for", "prod", "db"]);
        assert!(words("  --  ").is_empty());
    }

    #[test]
    fn buckets_start_at_the_interval() {
        let t = Utc.with_ymd_and_hms(2026, 12, 3, 11, 42, 17).single().expect("a time");
        assert_eq!(bucket_start(t, Interval::Minute), "2026-12-03T11:42:00Z");
        assert_eq!(bucket_start(t, Interval::Hour), "2026-12-03T11:00:00Z");
        assert_eq!(bucket_start(t, Interval::Day), "2026-12-03T00:00:00Z");
    }

    #[test]
    fn the_tenant_is_always_a_term_filter() {
        let r = SearchRequest { tenant_id: "t-a".into(), query: Some("tenantId:t-b".into()), ..Default::default() };
        let s = Search::parse(r, |_| Err("unused".into())).expect("valid");
        let body = es_body(&s);
        assert_eq!(body["query"]["bool"]["filter"][0], json!({"term": {"tenantId": "t-a"}}));
        // Query text is words for a match query, never query syntax.
        assert_eq!(body["query"]["bool"]["must"][0]["multi_match"]["query"], "tenantid t b");
    }
}
