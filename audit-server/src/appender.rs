//! Group commit across tenants, with an unambiguous outcome for every request.
//!
//! Every append goes into one per-process queue. Up to `lanes` tasks take jobs from it, each
//! appending every pending job of tenants no other lane holds, in one transaction, then the jobs
//! that arrived meanwhile, until nothing is left for it. With many tenants a per-tenant queue
//! would commit about one request per transaction; a shared one commits them together, and
//! several lanes keep one tenant whose chain head is locked (another session, a slow replica)
//! from stalling every other tenant. Correctness across processes does not depend on this: the
//! store locks each chain head row, in tenant order, so transactions cannot deadlock.
//!
//! What a requester may conclude:
//! - the queue is bounded (events and request bytes); beyond it `submit` refuses at once
//!   ([`AppendError::Overloaded`]), nothing queued;
//! - a job whose requester gave up (deadline passed, connection dropped) before its transaction
//!   began is removed and never written ([`AppendError::TimedOut`]);
//! - once its transaction has begun, `submit` waits for the outcome, however long the database
//!   takes (bounded by the store's lock and statement timeouts).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::store::{AppendJob, JobOutcome, Run, Store, StoreError};

type Reply = oneshot::Sender<Result<JobOutcome, StoreError>>;

/// Jobs taken for one transaction, grouped by tenant (sorted: the lock order).
type Batch = BTreeMap<String, Vec<(AppendJob, Reply)>>;

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// Why a job was not appended (all of them: nothing was written).
#[derive(Debug)]
pub enum AppendError {
    /// The queue is full (events or bytes): shed before accepting anything.
    Overloaded,
    /// The deadline passed before the job's transaction began; the job was dropped.
    TimedOut,
    /// The store failed the job's transaction (see [`StoreError`] for what is known).
    Store(StoreError),
}

impl From<StoreError> for AppendError {
    fn from(e: StoreError) -> Self {
        AppendError::Store(e)
    }
}

/// Bounds of the queue and the transactions.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A transaction stops taking jobs once it holds this many events.
    pub max_run_events: usize,
    /// Transactions in flight at once, for disjoint tenants.
    pub lanes: usize,
    /// Events waiting (not yet in a transaction) beyond which new requests are refused.
    pub max_queued_events: usize,
    /// Request bytes waiting beyond which new requests are refused.
    pub max_queued_bytes: usize,
}

/// A snapshot of the queue, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub events: u64,
    pub bytes: u64,
    pub tenants_in_flight: u64,
}

struct Entry {
    tenant: String,
    queued_at: Instant,
    job: AppendJob,
    bytes: usize,
    reply: Reply,
    state: Arc<AtomicU8>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Entry>,
    /// Events and bytes in `pending`.
    events: usize,
    bytes: usize,
    /// Tenants inside a running transaction (a tenant is in at most one lane).
    in_flight: HashSet<String>,
    /// Running lane tasks.
    lanes: usize,
}

impl Queue {
    fn forget(&mut self, e: &Entry) {
        self.events -= e.job.events.len();
        self.bytes -= e.bytes;
    }
}

pub struct Appender {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    queue: Mutex<Queue>,
    limits: Limits,
}

/// Marks the job abandoned if the waiting request goes away (timeout or dropped connection)
/// before a lane took it, and removes it from the queue.
struct Waiter<'a> {
    appender: &'a Appender,
    state: Arc<AtomicU8>,
}

impl Waiter<'_> {
    /// True if the job had not been taken: it never will be.
    fn abandon(&self) -> bool {
        if self.state.compare_exchange(QUEUED, ABANDONED, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return false;
        }
        let mut q = lock(&self.appender.queue);
        if let Some(i) = q.pending.iter().position(|e| Arc::ptr_eq(&e.state, &self.state))
            && let Some(e) = q.pending.remove(i)
        {
            q.forget(&e);
        }
        true
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl Appender {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, limits: Limits) -> Arc<Self> {
        let limits = Limits {
            max_run_events: limits.max_run_events.max(1),
            lanes: limits.lanes.max(1),
            max_queued_events: limits.max_queued_events.max(1),
            max_queued_bytes: limits.max_queued_bytes.max(1),
        };
        Arc::new(Appender { store, metrics, queue: Mutex::new(Queue::default()), limits })
    }

    /// Whether the queue is full: requests are refused before their bodies are read.
    pub fn saturated(&self) -> bool {
        let q = lock(&self.queue);
        q.events >= self.limits.max_queued_events || q.bytes >= self.limits.max_queued_bytes
    }

    /// Events and bytes waiting for a transaction, tenants inside one.
    pub fn stats(&self) -> QueueStats {
        let q = lock(&self.queue);
        QueueStats { events: q.events as u64, bytes: q.bytes as u64, tenants_in_flight: q.in_flight.len() as u64 }
    }

    /// Queue a job of `bytes` request bytes and wait for its outcome. If `deadline` passes before
    /// its transaction begins, the job is dropped ([`AppendError::TimedOut`]); after that, this
    /// waits for the commit or the failure.
    pub async fn submit(
        self: &Arc<Self>,
        tenant_id: &str,
        job: AppendJob,
        bytes: usize,
        deadline: Instant,
    ) -> Result<JobOutcome, AppendError> {
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let spawn_lane = {
            let mut q = lock(&self.queue);
            let n = job.events.len();
            // An empty queue takes any one job, so a request at the limit is never refused forever.
            if !q.pending.is_empty()
                && (q.events + n > self.limits.max_queued_events || q.bytes + bytes > self.limits.max_queued_bytes)
            {
                return Err(AppendError::Overloaded);
            }
            q.events += n;
            q.bytes += bytes;
            q.pending.push_back(Entry {
                tenant: tenant_id.to_owned(),
                queued_at: Instant::now(),
                job,
                bytes,
                reply: tx,
                state: state.clone(),
            });
            let spawn = q.lanes < self.limits.lanes && !q.in_flight.contains(tenant_id);
            if spawn {
                q.lanes += 1;
            }
            spawn
        };
        if spawn_lane {
            // A task of its own: if this request is cancelled, a begun transaction still completes.
            tokio::spawn(self.clone().lane());
        }
        let waiter = Waiter { appender: self, state };
        let answer = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(answer) => answer,
            Err(_) if waiter.abandon() => return Err(AppendError::TimedOut),
            // Already in a transaction: its outcome is what the client must be told.
            Err(_) => rx.await,
        };
        drop(waiter);
        answer
            .unwrap_or_else(|_| Err(StoreError::Internal("the append task ended without an answer".into())))
            .map_err(AppendError::Store)
    }

    async fn lane(self: Arc<Self>) {
        while let Some((batch, queued)) = self.take_batch() {
            let tenants: Vec<String> = batch.keys().cloned().collect();
            // Sorted by tenant (the store's lock order); each tenant's jobs keep their arrival order.
            let (runs, replies): (Vec<Run>, Vec<Vec<Reply>>) = batch
                .into_iter()
                .map(|(tenant_id, entries)| {
                    let (jobs, replies) = entries.into_iter().unzip();
                    (Run { tenant_id, jobs }, replies)
                })
                .unzip();
            // In a task of its own so that a panic fails this batch's requests, not the queue.
            let store = self.store.clone();
            let results = match tokio::spawn(async move { store.append_runs(&runs).await }).await {
                Ok((results, phases)) => {
                    self.metrics.append_phases(queued, &phases);
                    results
                }
                Err(e) => {
                    replies.iter().map(|_| Err(StoreError::Internal(format!("append task failed: {e}")))).collect()
                }
            };
            {
                let mut q = lock(&self.queue);
                for t in &tenants {
                    q.in_flight.remove(t);
                }
            }
            let (mut stored, mut committed_jobs) = (0, 0);
            for (result, replies) in results.into_iter().zip(replies) {
                match result {
                    Ok(outcomes) => {
                        committed_jobs += replies.len();
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            if let JobOutcome::Stored(r) = &outcome {
                                stored += r.len();
                            }
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(jobs = replies.len(), error = %e, "append failed");
                        for reply in replies {
                            let _ = reply.send(Err(e.duplicate()));
                        }
                    }
                }
            }
            if committed_jobs > 0 {
                self.metrics.events_ingested(stored as u64, committed_jobs as u64);
            }
        }
    }

    /// The next batch: pending jobs of tenants no other lane holds, grouped by tenant, now marked
    /// taken, with the time its jobs waited in the queue (summed); or None (and this lane ends)
    /// when there is none.
    fn take_batch(&self) -> Option<(Batch, std::time::Duration)> {
        let mut q = lock(&self.queue);
        let now = Instant::now();
        let mut queued = std::time::Duration::ZERO;
        let mut batch: Batch = BTreeMap::new();
        let mut events = 0;
        let mut kept = VecDeque::with_capacity(q.pending.len());
        while let Some(entry) = q.pending.pop_front() {
            if !batch.is_empty() && events + entry.job.events.len() > self.limits.max_run_events {
                kept.push_back(entry);
                kept.extend(q.pending.drain(..));
                break;
            }
            if q.in_flight.contains(&entry.tenant) {
                kept.push_back(entry);
                continue;
            }
            q.forget(&entry);
            if entry.state.compare_exchange(QUEUED, TAKEN, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                continue; // abandoned by its requester: dropped unwritten
            }
            events += entry.job.events.len();
            queued += now - entry.queued_at;
            batch.entry(entry.tenant).or_default().push((entry.job, entry.reply));
        }
        q.pending = kept;
        if batch.is_empty() {
            q.lanes -= 1;
            return None;
        }
        for t in batch.keys() {
            q.in_flight.insert(t.clone());
        }
        Some((batch, queued))
    }
}

/// Poisoning only follows a panic while holding the lock; the data (a queue) stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
