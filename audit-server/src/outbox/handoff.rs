//! This replica's committed events, kept in memory for its own consumers (PostgreSQL).
//!
//! Why: a consumer's pending read joined every outbox row to its event to send it on, and the
//! bench's pg_stat_statements put that read at 22-43 µs of database time per event and consumer,
//! about half as much as the append statement itself, most of it the event lookups and the bytes
//! sent back. Almost every event a consumer reads was committed by this very process a moment
//! before; the append path has it in hand.
//!
//! What it does not change: which rows a consumer handles, in what order, and when. The outbox read
//! still decides that (same rows, same snapshot, same read floor, same cursors, rows of other
//! replicas included); only the events' content comes from here when this process committed them,
//! and from the database otherwise (another replica's events, an entry already evicted, an outcome
//! this process never learnt). So nothing here can lose, duplicate or reorder an event: at worst a
//! miss costs the lookup it always cost.
//!
//! Why content keyed by (tenant, sequence) is safe: an entry is put only after its transaction
//! committed, and a committed event never changes (append-only, its chain head row serialises a
//! tenant's sequences). A database restored under a running server would break this, as it already
//! breaks the remembered chain heads; restores go into a new database and the service is switched
//! by a deploy, which restarts the pods (see `audctl restore`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::chain;
use crate::store::{NewRow, StoredRow};

/// Events kept at most (oldest evicted first): a few seconds of this server's top rate, so a
/// consumer that keeps up finds every one, and one that fell behind reads from the database as
/// before.
pub const KEPT: usize = 20_000;

/// And bytes of event text kept at most: events are 1-2 kB typically but may be megabytes (the
/// request body limit is 10 MiB), and this must stay a small part of a pod's memory (values-prod
/// requests 2 GiB).
pub const KEPT_BYTES: usize = 32 << 20;

pub struct HandOff {
    inner: Mutex<Inner>,
    /// Consumers in this process: an entry is dropped once each has taken it.
    readers: u8,
    kept: usize,
    kept_bytes: usize,
}

#[derive(Default)]
struct Inner {
    by_tenant: HashMap<String, HashMap<i64, Entry>>,
    /// Keys in commit order, for eviction (entries already taken by every reader are skipped).
    order: VecDeque<(String, i64)>,
    /// Text bytes of the entries in `by_tenant`.
    bytes: usize,
}

struct Entry {
    row: NewRow,
    left: u8,
}

impl HandOff {
    pub fn new(readers: u8, kept: usize, kept_bytes: usize) -> Self {
        HandOff { inner: Mutex::new(Inner::default()), readers: readers.max(1), kept, kept_bytes }
    }

    /// A tenant's rows, just committed.
    pub(crate) fn put(&self, tenant: &str, rows: Vec<NewRow>) {
        if rows.is_empty() || self.kept == 0 {
            return;
        }
        let mut inner = self.lock();
        let Inner { by_tenant, order, bytes } = &mut *inner;
        let entries = by_tenant.entry(tenant.to_owned()).or_default();
        for row in rows {
            order.push_back((tenant.to_owned(), row.sequence));
            *bytes += size(&row);
            entries.insert(row.sequence, Entry { row, left: self.readers });
        }
        while order.len() > self.kept || *bytes > self.kept_bytes {
            let Some((t, s)) = order.pop_front() else { break };
            if let Some(row) = remove(by_tenant, &t, s) {
                *bytes -= size(&row);
            }
        }
    }

    /// The events at these (tenant, sequence) keys that this process committed and still keeps,
    /// in the same order (None: read it from the database). Each reader calls it once per key.
    pub(crate) fn take(&self, keys: &[(&str, i64)]) -> Vec<Option<StoredRow>> {
        let mut inner = self.lock();
        keys.iter()
            .map(|&(tenant, sequence)| {
                let entries = inner.by_tenant.get_mut(tenant)?;
                let entry = entries.get_mut(&sequence)?;
                entry.left = entry.left.saturating_sub(1);
                let row = match entry.left {
                    0 => {
                        let row = remove(&mut inner.by_tenant, tenant, sequence)?;
                        inner.bytes -= size(&row);
                        row
                    }
                    _ => entry.row.clone(),
                };
                Some(stored(tenant, row))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn remove(by_tenant: &mut HashMap<String, HashMap<i64, Entry>>, tenant: &str, sequence: i64) -> Option<NewRow> {
    let entries = by_tenant.get_mut(tenant)?;
    let entry = entries.remove(&sequence)?;
    if entries.is_empty() {
        by_tenant.remove(tenant);
    }
    Some(entry.row)
}

/// What an entry's text weighs.
fn size(r: &NewRow) -> usize {
    r.body.len() + r.actor_id.len() + r.resource_id.len() + r.action_type.len() + r.hash.len() + r.previous_hash.len()
}

/// The row as the database gives it back (`store::postgres::to_row`).
fn stored(tenant: &str, r: NewRow) -> StoredRow {
    StoredRow {
        id: r.id.to_string(),
        tenant_id: tenant.to_owned(),
        sequence: r.sequence,
        timestamp: chain::format_timestamp(r.ts),
        actor_id: r.actor_id,
        resource_id: r.resource_id,
        action_type: r.action_type,
        body: r.body,
        hash: r.hash,
        previous_hash: r.previous_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sequence: i64) -> NewRow {
        NewRow {
            id: uuid::Uuid::now_v7(),
            sequence,
            ts: chain::now(),
            actor_id: "a".into(),
            resource_id: "r".into(),
            action_type: "t".into(),
            body: format!("{{\"sequence\":{sequence}}}"),
            hash: format!("h{sequence}"),
            previous_hash: format!("h{}", sequence - 1),
        }
    }

    fn sequences(got: &[Option<StoredRow>]) -> Vec<Option<i64>> {
        got.iter().map(|r| r.as_ref().map(|r| r.sequence)).collect()
    }

    #[test]
    fn each_reader_gets_each_event_once_then_it_is_gone() {
        let h = HandOff::new(2, 100, KEPT_BYTES);
        h.put("t1", vec![row(1), row(2)]);
        h.put("t2", vec![row(1)]);
        let first = h.take(&[("t1", 1), ("t2", 1), ("t1", 3)]);
        assert_eq!(sequences(&first), [Some(1), Some(1), None]);
        let r = first[0].as_ref().map(|r| (r.tenant_id.as_str(), r.hash.as_str(), r.previous_hash.as_str()));
        assert_eq!(r, Some(("t1", "h1", "h0")));
        assert_eq!(sequences(&h.take(&[("t1", 1), ("t1", 2)])), [Some(1), Some(2)]);
        // Both readers took t1/1: gone. t1/2 was taken once.
        assert_eq!(sequences(&h.take(&[("t1", 1), ("t1", 2), ("t1", 2)])), [None, Some(2), None]);
    }

    #[test]
    fn the_oldest_are_evicted_beyond_the_bound() {
        let h = HandOff::new(1, 3, KEPT_BYTES);
        h.put("t", vec![row(1), row(2)]);
        h.put("u", vec![row(1), row(2)]);
        assert_eq!(sequences(&h.take(&[("t", 1), ("t", 2), ("u", 1), ("u", 2)])), [None, Some(2), Some(1), Some(2)]);
        let inner = h.lock();
        assert!(inner.by_tenant.is_empty(), "taken by the only reader: nothing left");
        assert!(inner.order.len() <= 3);
    }

    #[test]
    fn large_events_are_evicted_by_their_bytes() {
        let big = |sequence| NewRow { body: "x".repeat(1000), ..row(sequence) };
        // Room for two of them (each 1000 bytes of body plus its short fields).
        let h = HandOff::new(1, 100, 2500);
        h.put("t", vec![big(1), big(2), big(3)]);
        assert_eq!(sequences(&h.take(&[("t", 1), ("t", 2), ("t", 3)])), [None, Some(2), Some(3)]);
        let inner = h.lock();
        assert_eq!(inner.bytes, 0, "everything left was taken");
    }

    #[test]
    fn kept_zero_keeps_nothing() {
        let h = HandOff::new(1, 0, KEPT_BYTES);
        h.put("t", vec![row(1)]);
        assert_eq!(sequences(&h.take(&[("t", 1)])), [None]);
    }
}
