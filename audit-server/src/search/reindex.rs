//! `audit-server search-reindex`: index events straight from the database, for the events the
//! outbox never gave the indexer: those stored before search was configured (they have no outbox
//! rows), and those newer than a restored snapshot (their rows were consumed before the index was
//! lost). Documents are keyed by event id and events never change, so indexing one again, while
//! the live indexer may be sending it too, rewrites the same document.

use std::time::Duration;

use audit_api::StoredEvent;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::client::SearchClient;
use crate::store::{ListQuery, Store};

/// What to index again.
#[derive(Debug, Clone, Default)]
pub struct Reindex {
    /// Only these tenants (empty: every tenant with events).
    pub tenants: Vec<String>,
    /// Only events stored at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events per bulk request.
    pub batch: u32,
}

/// What was indexed.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reindexed {
    pub tenants: u64,
    pub indexed: u64,
    /// Events the cluster refused after every retry (the first reason is kept).
    pub refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_refusal: Option<String>,
}

/// A `--tenant` with no events in the database: a mistyped id, said before anything is indexed.
#[derive(Debug)]
pub struct UnknownTenant(pub String);

impl std::fmt::Display for UnknownTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tenant {:?} has no events in the database", self.0)
    }
}

impl std::error::Error for UnknownTenant {}

/// Attempts per bulk request, and per refused item, before giving up on it.
const ATTEMPTS: u32 = 4;

/// Index every selected event, tenant by tenant in chain order; `progress(tenant, indexed so far)`
/// after each page. A cluster that does not answer (after the retries) is an error; items it
/// refuses are counted in [`Reindexed::refused`].
pub async fn reindex(
    store: &Store,
    client: &SearchClient,
    what: &Reindex,
    progress: &mut (dyn FnMut(&str, u64) + Send),
) -> anyhow::Result<Reindexed> {
    // The template first, as the indexer does: a document must never create an index without it.
    client.install_template().await.map_err(|e| anyhow::anyhow!("installing the index template: {e}"))?;
    let heads: Vec<String> = store.heads().await?.into_iter().map(|(tenant, _, _)| tenant).collect();
    let tenants = if what.tenants.is_empty() {
        heads
    } else {
        if let Some(t) = what.tenants.iter().find(|t| !heads.contains(t)) {
            return Err(UnknownTenant(t.clone()).into());
        }
        what.tenants.clone()
    };
    let mut done = Reindexed { tenants: tenants.len() as u64, ..Reindexed::default() };
    for tenant in &tenants {
        let mut after = None;
        loop {
            let q = ListQuery {
                tenant_id: tenant.clone(),
                actor_id: None,
                resource_id: None,
                action_type: None,
                from: what.since,
                to: None,
                limit: what.batch.max(1),
                after_sequence: after,
                descending: false,
            };
            let (page, more) = store.list(&q).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.sequence);
            index_page(client, page, &mut done).await?;
            progress(tenant, done.indexed);
            if !more {
                break;
            }
        }
    }
    Ok(done)
}

/// One page: sent again (only its refused items) up to [`ATTEMPTS`] times, with a growing pause.
async fn index_page(client: &SearchClient, mut events: Vec<StoredEvent>, done: &mut Reindexed) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let results = match client.bulk(&events).await {
            Ok(r) => r,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "search-reindex: bulk request failed, retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                continue;
            }
            Err(e) => anyhow::bail!("the search cluster did not take a bulk request after {ATTEMPTS} attempts: {e}"),
        };
        let mut refused = Vec::new();
        let mut reason = None;
        for (event, r) in events.into_iter().zip(results) {
            match r {
                Ok(()) => done.indexed += 1,
                Err(e) => {
                    reason.get_or_insert_with(|| {
                        format!("tenant {} sequence {}: {e}", event.metadata.tenant_id, event.sequence)
                    });
                    refused.push(event);
                }
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        if attempt == ATTEMPTS {
            done.refused += refused.len() as u64;
            if done.first_refusal.is_none() {
                done.first_refusal = reason;
            }
            return Ok(());
        }
        tracing::warn!(
            refused = refused.len(),
            first = reason.as_deref().unwrap_or(""),
            "search-reindex: items refused, retrying them"
        );
        tokio::time::sleep(pause).await;
        pause *= 2;
        events = refused;
    }
    Ok(())
}
