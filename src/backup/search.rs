//! Elasticsearch / OpenSearch: snapshots through the snapshot API into a registered repository
//! (registered by audctl when asked), waited for, failed shards reported; restores with the
//! snapshot's uuid checked and document counts verified.
//!
//! The snapshot's data lives in the cluster's repository (fs, S3...); audctl's repository keeps the
//! manifest and the snapshot's description (`snapshot.json`), with their checksums.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::manifest::Manifest;
use super::progress::Bytes;
use super::{Check, Component, Ctx, RestoreReport, repo};
use crate::cli::{SearchBackupArgs, SearchRestoreArgs};
use crate::error::{Unreachable, usage};
use crate::evidence::Evidence;
use crate::output;

/// An HTTP client bound to one cluster.
struct Cluster {
    base: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

impl Cluster {
    /// Credentials inline in `url` are taken out of it (used as basic auth when `auth` is none),
    /// so neither messages nor reqwest's errors, which quote the URL, can show them.
    fn new(url: &str, auth: Option<(String, String)>) -> anyhow::Result<Cluster> {
        let shown = audctl_targets::redact_url(url);
        let mut parsed = url::Url::parse(url).map_err(|e| usage(format!("search URL {shown}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(usage(format!("search URL {shown}: expected http:// or https://")));
        }
        let inline = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            (u, p) => Some((u.to_owned(), p.unwrap_or_default().to_owned())),
        };
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(120)).build().context("building the HTTP client")?;
        Ok(Cluster { base: parsed.as_str().trim_end_matches('/').to_owned(), http, auth: auth.or(inline) })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                anyhow::Error::new(Unreachable {
                    what: format!("search cluster at {}", self.base),
                    detail: e.to_string(),
                })
            } else {
                anyhow!("{method} {path}: {}", e.without_url())
            }
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: HTTP {status}: {}", reason(&value));
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.ok(reqwest::Method::GET, path, None).await
    }

    /// "Elasticsearch 8.19.21" / "OpenSearch 2.19.6" (from `GET /`, or the nodes info where a
    /// distribution does not serve `/`).
    async fn product(&self) -> anyhow::Result<String> {
        if let Ok(root) = self.get("/").await {
            let version = root.pointer("/version/number").and_then(Value::as_str).unwrap_or("?");
            let opensearch = root.pointer("/version/distribution").and_then(Value::as_str) == Some("opensearch");
            return Ok(format!("{} {version}", if opensearch { "OpenSearch" } else { "Elasticsearch" }));
        }
        let nodes = self.get("/_nodes/_local").await?;
        let node =
            nodes.get("nodes").and_then(Value::as_object).and_then(|n| n.values().next()).cloned().unwrap_or_default();
        let version = node.get("version").and_then(Value::as_str).unwrap_or("?");
        let opensearch = node.get("modules").and_then(Value::as_array).is_some_and(|m| {
            m.iter()
                .any(|x| x.get("classname").and_then(Value::as_str).is_some_and(|c| c.starts_with("org.opensearch")))
        });
        Ok(format!("{} {version}", if opensearch { "OpenSearch" } else { "Elasticsearch" }))
    }

    /// Document count per index matching `pattern` (refreshed first, so counts are exact).
    async fn counts(&self, pattern: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        self.ok(reqwest::Method::POST, &format!("/{pattern}/_refresh?expand_wildcards=open"), None).await.ok();
        let (status, list) = self
            .call(
                reqwest::Method::GET,
                &format!("/_cat/indices/{pattern}?format=json&h=index&expand_wildcards=open"),
                None,
            )
            .await?;
        let mut counts = BTreeMap::new();
        if status == 404 {
            return Ok(counts);
        }
        if !(200..300).contains(&status) {
            bail!("listing indices {pattern}: HTTP {status}: {}", reason(&list));
        }
        for row in list.as_array().into_iter().flatten() {
            let Some(index) = row.get("index").and_then(Value::as_str) else { continue };
            if index.starts_with('.') {
                continue;
            }
            let c = self.get(&format!("/{index}/_count")).await?;
            counts.insert(index.to_owned(), c.get("count").and_then(Value::as_u64).unwrap_or(0));
        }
        Ok(counts)
    }
}

fn reason(v: &Value) -> String {
    v.pointer("/error/reason")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string().chars().take(300).collect())
}

fn cluster_from(ctx: &Ctx<'_>, url: Option<&str>) -> anyhow::Result<(Cluster, String)> {
    let target = ctx.targets().and_then(|t| t.search.clone());
    let url = match (url, &target) {
        (Some(u), _) => u.to_owned(),
        (None, Some(t)) => t.url.clone(),
        (None, None) => {
            return Err(usage("no search cluster: the targets file (--targets FILE) needs a `search:` entry"));
        }
    };
    let auth = match &target {
        Some(t) if url == t.url => match (&t.username, &t.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.expose().map_err(|e| usage(format!("search.password: {e}")))?)),
            _ => None,
        },
        _ => None,
    };
    // The URL is shown in plans, reports and evidence: never with its credentials.
    Ok((Cluster::new(&url, auth)?, crate::service::display_url(&url)))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPoint {
    pub repository: String,
    pub snapshot: String,
    pub uuid: String,
    pub state: String,
    pub indices: BTreeMap<String, u64>,
    pub shards_total: u64,
    pub shards_failed: u64,
}

pub async fn backup(ctx: &Ctx<'_>, args: &SearchBackupArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let t0 = Instant::now();
    let (cluster, url) = cluster_from(ctx, None)?;
    let repository = args
        .repository
        .clone()
        .or_else(|| ctx.targets().and_then(|t| t.search.as_ref()?.snapshot_repository.clone()))
        .ok_or_else(|| {
            usage("no snapshot repository: pass --repository NAME or set search.snapshotRepository in the targets file")
        })?;
    let product = cluster.product().await?;
    if let Some(location) = &args.register_fs {
        let body = json!({"type": "fs", "settings": {"location": location}});
        cluster.ok(reqwest::Method::PUT, &format!("/_snapshot/{repository}"), Some(&body)).await.with_context(
            || format!("registering the fs snapshot repository {repository} at {}", location.display()),
        )?;
    }
    cluster.ok(reqwest::Method::POST, &format!("/_snapshot/{repository}/_verify"), None).await.with_context(|| {
        format!("snapshot repository {repository} failed verification (register it with --register-fs DIR?)")
    })?;

    let indices = cluster.counts(&args.indices).await?;
    if indices.is_empty() {
        return Err(usage(format!("no open index matches {:?}: nothing to snapshot", args.indices)));
    }
    let mut staging = ctx.repo.begin(Component::Search, started)?;
    // Snapshot names must be lowercase.
    let name = staging.id.to_lowercase();
    let body = json!({"indices": indices.keys().cloned().collect::<Vec<_>>().join(","), "include_global_state": false});
    cluster
        .ok(reqwest::Method::PUT, &format!("/_snapshot/{repository}/{name}"), Some(&body))
        .await
        .context("starting the snapshot")?;
    let spinner = output::spinner(format!("snapshot {name} in {repository}"));
    let info = loop {
        let v = cluster.get(&format!("/_snapshot/{repository}/{name}")).await?;
        let snap = v.pointer("/snapshots/0").cloned().context("snapshot missing from its repository")?;
        let state = snap.get("state").and_then(Value::as_str).unwrap_or("");
        if matches!(state, "SUCCESS" | "PARTIAL" | "FAILED" | "INCOMPATIBLE") {
            break snap;
        }
        if t0.elapsed() > Duration::from_secs(6 * 3600) {
            bail!("snapshot {name} still {state} after 6 h");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    spinner.finish_and_clear();
    let state = info.get("state").and_then(Value::as_str).unwrap_or("").to_owned();
    let total = info.pointer("/shards/total").and_then(Value::as_u64).unwrap_or(0);
    let failed = info.pointer("/shards/failed").and_then(Value::as_u64).unwrap_or(0);
    if state != "SUCCESS" || failed > 0 {
        let failures = info.get("failures").map(Value::to_string).unwrap_or_default();
        bail!("snapshot {name} ended {state} with {failed} of {total} shards failed: {failures}");
    }
    let point = SnapshotPoint {
        repository,
        snapshot: name,
        uuid: info.get("uuid").and_then(Value::as_str).unwrap_or("").to_owned(),
        state,
        indices,
        shards_total: total,
        shards_failed: failed,
    };
    staging.write_bytes("snapshot.json", &serde_json::to_vec_pretty(&info)?)?;
    let manifest = Manifest::new(
        staging.id.clone(),
        Component::Search,
        started,
        Utc::now(),
        staging.files().to_vec(),
        product,
        url,
        serde_json::to_value(&point)?,
    );
    staging.commit(&manifest)?;
    ctx.emit(&json_report(&manifest))?;
    Ok(super::backup_evidence(&manifest))
}

/// `backup` output for components whose manifest says it all.
pub fn json_report(m: &Manifest) -> super::ManifestReport {
    super::ManifestReport(m.clone())
}

pub async fn restore(ctx: &Ctx<'_>, args: &SearchRestoreArgs) -> anyhow::Result<Evidence> {
    let started = Utc::now();
    let t0 = Instant::now();
    let stored = ctx.repo.open(&args.common.id, Component::Search)?;
    let m = &stored.manifest;
    let point: SnapshotPoint = serde_json::from_value(m.consistency.clone()).context("unreadable snapshot point")?;
    let checked = repo::verify_files(&stored, |_| true, &Bytes::hidden())?;
    let (cluster, url) = cluster_from(ctx, args.common.target.as_deref())?;
    let product = cluster.product().await?;

    // The snapshot must be the one recorded: same repository, name and uuid.
    let (status, v) = cluster
        .call(reqwest::Method::GET, &format!("/_snapshot/{}/{}", point.repository, point.snapshot), None)
        .await?;
    if status != 200 {
        bail!(
            "target {url} does not see snapshot {} in repository {} (HTTP {status}: {}): register the same repository there first",
            point.snapshot,
            point.repository,
            reason(&v)
        );
    }
    let uuid = v.pointer("/snapshots/0/uuid").and_then(Value::as_str).unwrap_or("");
    if uuid != point.uuid {
        bail!(
            "snapshot {} in {} has uuid {uuid}, the backup recorded {}: wrong repository or target",
            point.snapshot,
            point.repository,
            point.uuid
        );
    }
    let existing: Vec<String> = {
        let mut found = Vec::new();
        for index in point.indices.keys() {
            let (s, _) = cluster.call(reqwest::Method::HEAD, &format!("/{index}"), None).await?;
            if s == 200 {
                found.push(index.clone());
            }
        }
        found
    };
    if !existing.is_empty() && !args.common.force {
        return Err(usage(format!(
            "target {url} already has {} (indices of the backup): refusing to restore over them; pass --force to delete and restore them",
            existing.join(", ")
        )));
    }
    eprintln!("restore plan:");
    eprintln!(
        "  backup   {} (snapshot {} uuid {} in {}, {checked} files checked)",
        m.id, point.snapshot, point.uuid, point.repository
    );
    eprintln!(
        "  indices  {}",
        point.indices.iter().map(|(i, n)| format!("{i} ({n} docs)")).collect::<Vec<_>>().join(", ")
    );
    eprintln!(
        "  target   {url} ({product}){}",
        if existing.is_empty() { String::new() } else { format!(", deleting {} first (--force)", existing.join(", ")) }
    );
    eprintln!("  verify   document counts; duration against the RTO");
    super::confirm(args.common.yes, "Restore?")?;

    for index in &existing {
        cluster.ok(reqwest::Method::DELETE, &format!("/{index}"), None).await?;
    }
    let body =
        json!({"indices": point.indices.keys().cloned().collect::<Vec<_>>().join(","), "include_global_state": false});
    let spinner = output::spinner(format!("restoring snapshot {}", point.snapshot));
    let r = cluster
        .ok(
            reqwest::Method::POST,
            &format!("/_snapshot/{}/{}/_restore?wait_for_completion=true", point.repository, point.snapshot),
            Some(&body),
        )
        .await
        .context("restoring the snapshot")?;
    spinner.finish_and_clear();
    let failed = r.pointer("/snapshot/shards/failed").and_then(Value::as_u64).unwrap_or(0);
    let mut report = RestoreReport {
        backup: m.id.clone(),
        component: Component::Search,
        target: url.clone(),
        point_in_time: None,
        duration_seconds: 0.0,
        checks: vec![Check::new("shards failed", 0, failed, failed == 0)],
    };
    let actual = cluster.counts(&point.indices.keys().cloned().collect::<Vec<_>>().join(",")).await?;
    for (index, n) in &point.indices {
        let got = actual.get(index).copied();
        report.checks.push(Check::new(
            format!("documents {index}"),
            n,
            got.map(|g| g.to_string()).unwrap_or_else(|| "missing".into()),
            got == Some(*n),
        ));
    }
    report.add_rto(t0.elapsed());
    output::emit(ctx.global.output, &report)?;
    Ok(report.evidence(started))
}

/// `backup verify`: restore the snapshot's indices into the same cluster under a scratch prefix,
/// compare document counts, delete them.
pub async fn verify(ctx: &Ctx<'_>, stored: &repo::Stored) -> anyhow::Result<Vec<Check>> {
    let point: SnapshotPoint =
        serde_json::from_value(stored.manifest.consistency.clone()).context("unreadable snapshot point")?;
    let n = repo::verify_files(stored, |_| true, &Bytes::hidden())?;
    let mut checks = vec![Check::new("checksums", stored.manifest.files.len(), format!("{n} files intact"), true)];
    let (cluster, _) = cluster_from(ctx, None)?;
    let prefix = format!("audctl-verify-{}-", Utc::now().timestamp());
    let body = json!({
        "indices": point.indices.keys().cloned().collect::<Vec<_>>().join(","),
        "include_global_state": false,
        "rename_pattern": "(.+)",
        "rename_replacement": format!("{prefix}$1"),
        "index_settings": {"index.number_of_replicas": 0},
    });
    let r = cluster
        .ok(
            reqwest::Method::POST,
            &format!("/_snapshot/{}/{}/_restore?wait_for_completion=true", point.repository, point.snapshot),
            Some(&body),
        )
        .await
        .context("restoring the snapshot under a scratch name")?;
    let failed = r.pointer("/snapshot/shards/failed").and_then(Value::as_u64).unwrap_or(0);
    checks.push(Check::new("shards failed", 0, failed, failed == 0));
    let actual = cluster.counts(&format!("{prefix}*")).await;
    for index in point.indices.keys() {
        cluster.call(reqwest::Method::DELETE, &format!("/{prefix}{index}"), None).await.ok();
    }
    let actual = actual?;
    for (index, n) in &point.indices {
        let got = actual.get(&format!("{prefix}{index}")).copied();
        checks.push(Check::new(
            format!("documents {index}"),
            n,
            got.map(|g| g.to_string()).unwrap_or_else(|| "missing".into()),
            got == Some(*n),
        ));
    }
    Ok(checks)
}

/// Delete a backup's snapshot from the cluster's repository (prune).
pub async fn delete_snapshot(ctx: &Ctx<'_>, m: &Manifest) -> anyhow::Result<()> {
    let point: SnapshotPoint = serde_json::from_value(m.consistency.clone()).context("unreadable snapshot point")?;
    let (cluster, _) = cluster_from(ctx, None)?;
    let (status, v) = cluster
        .call(reqwest::Method::DELETE, &format!("/_snapshot/{}/{}", point.repository, point.snapshot), None)
        .await?;
    if status == 404 || (200..300).contains(&status) { Ok(()) } else { bail!("HTTP {status}: {}", reason(&v)) }
}
