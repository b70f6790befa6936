//! The search indexer: a consumer of the outbox (see [`crate::outbox`]) that bulk-indexes events
//! and moves its per-tenant cursors only past events the cluster acknowledged. Documents are keyed
//! by event id, so sending one twice (a crash between the bulk and the cursor update, two replicas
//! around a lease change) only rewrites it: unlike the Kafka relay, the indexer needs no care about
//! what a former leader still has in flight, only the lease to avoid doing the work twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::SEARCH;
use super::client::SearchClient;
use crate::config::SearchConfig;
use crate::metrics::Metrics;
use crate::outbox::floor::Floor;
use crate::outbox::{Advanced, Progress, Purge};
use crate::store::Store;

pub struct Indexer {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub client: Arc<SearchClient>,
    pub config: SearchConfig,
    pub holder: String,
}

/// Longest pause after failures (doubling from the poll interval).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Indexer {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut template = false;
        let mut backoff = self.config.poll_interval;
        let mut floor = Floor::default();
        loop {
            if *stop.borrow() {
                break;
            }
            // The template must exist before the first document creates an index: without it
            // the index would get dynamic mappings (ids analysed as text, filters that miss).
            if !template {
                match self.client.install_template().await {
                    Ok(()) => template = true,
                    Err(e) => tracing::warn!(error = %e, "search: installing the index template failed"),
                }
            }
            let pause = if !template {
                Some(MAX_BACKOFF)
            } else {
                match self.step(&mut floor).await {
                    Ok((0, _)) => Some(self.config.poll_interval),
                    // A full batch (the read stopped at its limit): more is waiting, go on at
                    // once. A partial one: the indexer keeps up, so let the next batch fill for
                    // one poll interval rather than paying a bulk request and a cursor
                    // transaction for every few events.
                    Ok((_, full)) => {
                        backoff = self.config.poll_interval;
                        (!full).then_some(self.config.poll_interval)
                    }
                    Err(e) => {
                        self.metrics.search.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "search: indexing failed, retrying");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        Some(backoff)
                    }
                }
            };
            if let Some(p) = pause
                && tokio::time::timeout(p, stop.changed()).await.is_ok()
            {
                break;
            }
        }
        self.metrics.search.leader.store(0, Ordering::Relaxed);
        if let Err(e) = self.store.outbox_release(SEARCH, &self.holder).await {
            tracing::warn!(error = %e, "search: releasing the indexer lease failed");
        }
    }

    /// Take or renew the lease, then index one batch; how many events were indexed (0: not the
    /// leader or nothing pending) and whether the read stopped at its limit. `floor`: where
    /// reads start (reset when the lease is not held).
    async fn step(&self, floor: &mut Floor) -> Result<(usize, bool), String> {
        let ttl = self.config.lease;
        let leading = self.store.outbox_lease(SEARCH, &self.holder, ttl).await.map_err(|e| e.to_string())?;
        self.metrics.search.leader.store(u64::from(leading), Ordering::Relaxed);
        if !leading {
            *floor = Floor::default();
            return Ok((0, false));
        }
        let (pending, read) = self
            .store
            .outbox_read(SEARCH, self.config.batch_max_events, floor, &self.metrics)
            .await
            .map_err(|e| e.to_string())?;
        if pending.is_empty() {
            return Ok((0, read.cut()));
        }
        let mut rows = Vec::with_capacity(pending.len());
        let mut events = Vec::with_capacity(pending.len());
        for p in pending {
            rows.push((p.row.tenant_id.clone(), p.row.sequence, p.position));
            events.push(p.row.into_event().map_err(|e| e.to_string())?);
        }
        let results = self.client.bulk(&events).await?;
        // A tenant's cursor moves to the last sequence before its first failed item (rows come in
        // position order, which is sequence order within a tenant).
        let mut handled: BTreeMap<String, i64> = BTreeMap::new();
        let mut failed: BTreeSet<String> = BTreeSet::new();
        let mut done = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for ((tenant, sequence, position), r) in rows.into_iter().zip(results) {
            if failed.contains(&tenant) {
                continue;
            }
            match r {
                Ok(()) => {
                    done.push(position);
                    handled.insert(tenant, sequence);
                }
                Err(e) => {
                    first_error.get_or_insert(format!("tenant {tenant} sequence {sequence}: {e}"));
                    failed.insert(tenant);
                }
            }
        }
        // A row with a failed item stays (its other events are passed by the cursors).
        let indexed = done.len();
        let done = read.complete(done);
        let progress = Progress {
            consumer: SEARCH,
            holder: &self.holder,
            ttl,
            handled: &handled,
            purge: Purge::Rows(&done),
            offsets: None,
        };
        let advanced = self.store.outbox_advance(&progress).await.map_err(|e| e.to_string())?;
        self.metrics.search.indexed.fetch_add(indexed as u64, Ordering::Relaxed);
        match advanced {
            Advanced::Recorded { xid } => floor.recorded(xid, &done),
            Advanced::LeaseLost => {
                *floor = Floor::default();
                self.metrics.search.leader.store(0, Ordering::Relaxed);
                return Ok((0, false));
            }
        }
        match first_error {
            Some(e) => Err(format!("{} of the batch refused, first: {e}", failed.len())),
            None => Ok((indexed, read.cut())),
        }
    }
}
