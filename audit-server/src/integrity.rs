//! Verification of whole chains beyond one request: every intact walk records the position it
//! reached (signed, in `verified_positions`), so the next walk can start there (incremental), and a
//! background task verifies every tenant at an interval, its result exported as metrics that the
//! rendered PrometheusRule alerts on. See the README's threat model for what an incremental walk
//! proves and what only a full one does.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use audit_api::VerifyReport;
use audit_api::checkpoint::SignedCheckpoint;

use crate::checkpoint::Signer;
use crate::metrics::Metrics;
use crate::store::{Start, Store, StoreError};

/// Walk a tenant's chain, compared with `checkpoint` when given. `incremental`: start after the
/// last position verified intact (when there is one and its signature checks with this server's
/// key), else at the first event. An intact walk records the head it reached as the tenant's new
/// verified position (only with a signing key: unsigned, anyone writing the database could move
/// it forward over events never verified).
pub async fn verify_tenant(
    store: &Store,
    signer: Option<&Signer>,
    tenant: &str,
    checkpoint: Option<SignedCheckpoint>,
    incremental: bool,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<VerifyReport, StoreError> {
    let start = match signer {
        Some(signer) if incremental => verified_start(store, signer, tenant).await?,
        _ => None,
    };
    let from = start.as_ref().map_or(0, |s| s.sequence);
    let (report, end) = store.verify(tenant, checkpoint, start, progress).await?;
    if let Some(signer) = signer
        && report.verified
        && end.sequence > from
    {
        let position = signer.sign(tenant, end.sequence, &end.hash);
        if let Err(e) = store.save_verified_position(&position).await {
            tracing::warn!(tenant, error = %e, "recording the verified position failed");
        }
    }
    Ok(report)
}

/// The tenant's stored verified position, if its signature checks with this server's key. A
/// position signed by another key (rotated) or not at all is ignored: the walk is then full.
async fn verified_start(store: &Store, signer: &Signer, tenant: &str) -> Result<Option<Start>, StoreError> {
    let Some(text) = store.verified_position(tenant).await? else { return Ok(None) };
    let cp = match serde_json::from_str::<SignedCheckpoint>(&text) {
        Ok(cp) => cp,
        Err(e) => {
            tracing::warn!(tenant, error = %e, "unreadable verified position ignored: full walk");
            return Ok(None);
        }
    };
    if let Err(e) = signer
        .check(&cp)
        .and_then(|()| if cp.tenant_id == tenant { Ok(()) } else { Err(format!("it names tenant {:?}", cp.tenant_id)) })
    {
        tracing::warn!(tenant, problem = %e, "verified position not signed by this server's key: full walk");
        return Ok(None);
    }
    Ok(Some(Start { sequence: cp.sequence, hash: cp.hash }))
}

/// Settings of the background verifier.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// A pass over every tenant this often.
    pub every: Duration,
    /// A pass walks every chain from its first event when the last full pass is older than this
    /// (the first pass after start is full); the others are incremental.
    pub full_every: Duration,
}

/// Verify every tenant each `schedule.every`, forever; results go to `metrics` (no per-tenant
/// series: a broken tenant is named in the error log).
pub async fn verify_periodically(
    store: Arc<Store>,
    signer: Option<Arc<Signer>>,
    metrics: Arc<Metrics>,
    schedule: Schedule,
) {
    let mut tick = tokio::time::interval(schedule.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full: Option<tokio::time::Instant> = None;
    // Tenants found broken are walked in full until they verify again: an incremental walk from a
    // position past the break would call them intact.
    let mut broken: HashSet<String> = HashSet::new();
    loop {
        tick.tick().await;
        let full = last_full.is_none_or(|t| t.elapsed() >= schedule.full_every);
        let started = tokio::time::Instant::now();
        let heads = match store.heads().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "background verification: reading chain heads failed");
                metrics.integrity.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let (mut intact, mut errors) = (0u64, 0u64);
        for (tenant, _, _) in heads {
            let checkpoint = match signer.as_deref().map(|s| s.latest_published(&tenant)).transpose() {
                Ok(cp) => cp.flatten(),
                Err(e) => {
                    tracing::error!(tenant, error = %format!("{e:#}"), "background verification: published checkpoint unreadable");
                    None
                }
            };
            let incremental = !full && !broken.contains(&tenant);
            let counted = |_: u64| {};
            match verify_tenant(&store, signer.as_deref(), &tenant, checkpoint, incremental, &counted).await {
                Ok(report) => {
                    metrics.integrity.links.fetch_add(report.checked, Ordering::Relaxed);
                    if report.verified {
                        intact += 1;
                        broken.remove(&tenant);
                    } else {
                        let at = report.first_broken_at.as_ref();
                        tracing::error!(
                            tenant,
                            sequence = at.map(|b| b.sequence),
                            reason = at.map(|b| b.reason.as_str()),
                            "background verification: the chain is broken"
                        );
                        broken.insert(tenant);
                    }
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(tenant, error = %e, "background verification failed to run");
                }
            }
        }
        if full {
            last_full = Some(started);
        }
        let m = &metrics.integrity;
        m.errors.fetch_add(errors, Ordering::Relaxed);
        m.tenants_failed.store(broken.len() as u64, Ordering::Relaxed);
        m.tenants_verified.store(intact, Ordering::Relaxed);
        m.passes.fetch_add(1, Ordering::Relaxed);
        m.last_pass_unix_ms.store(chrono::Utc::now().timestamp_millis().max(0) as u64, Ordering::Relaxed);
        tracing::debug!(full, intact, broken = broken.len(), errors, elapsed = ?started.elapsed(), "background verification pass");
    }
}
