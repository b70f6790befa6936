//! Group commit across tenants. Every append goes into one per-process queue; the first request to
//! find it idle becomes the leader and appends every pending job, of any tenant, in one transaction,
//! then the jobs that arrived meanwhile, until the queue is empty. With many tenants a per-tenant
//! queue would commit about one request per transaction; a shared one commits them together.
//! Correctness across processes does not depend on this: the store locks each chain head row, in
//! tenant order so that two processes' transactions cannot deadlock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::store::{AppendJob, JobOutcome, Run, Store, StoreError};

type Reply = oneshot::Sender<Result<JobOutcome, StoreError>>;

#[derive(Default)]
struct Queue {
    pending: VecDeque<(String, AppendJob, Reply)>,
    leader: bool,
}

pub struct Appender {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    queue: Mutex<Queue>,
    /// A transaction stops taking jobs once it holds this many events (bounds its size and latency).
    max_run_events: usize,
}

impl Appender {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, max_run_events: usize) -> Arc<Self> {
        Arc::new(Appender {
            store,
            metrics,
            queue: Mutex::new(Queue::default()),
            max_run_events: max_run_events.max(1),
        })
    }

    /// Queue a job and wait until its transaction is committed (or failed).
    pub async fn submit(self: &Arc<Self>, tenant_id: &str, job: AppendJob) -> Result<JobOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = lock(&self.queue);
            q.pending.push_back((tenant_id.to_owned(), job, tx));
            !std::mem::replace(&mut q.leader, true)
        };
        if lead {
            // A task of its own: if this request is cancelled, the transaction still completes.
            tokio::spawn(self.clone().lead());
        }
        rx.await.unwrap_or_else(|_| Err(StoreError::Internal("the append task ended without an answer".into())))
    }

    async fn lead(self: Arc<Self>) {
        while let Some(batch) = self.take_batch() {
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
                Ok(results) => results,
                Err(e) => {
                    replies.iter().map(|_| Err(StoreError::Internal(format!("append task failed: {e}")))).collect()
                }
            };
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

    /// The next batch, grouped by tenant, or None (and leadership given up) when the queue is empty.
    fn take_batch(&self) -> Option<BTreeMap<String, Vec<(AppendJob, Reply)>>> {
        let mut q = lock(&self.queue);
        let mut batch: BTreeMap<String, Vec<(AppendJob, Reply)>> = BTreeMap::new();
        let mut events = 0;
        while let Some(front) = q.pending.front() {
            if !batch.is_empty() && events + front.1.events.len() > self.max_run_events {
                break;
            }
            events += front.1.events.len();
            if let Some((tenant_id, job, reply)) = q.pending.pop_front() {
                batch.entry(tenant_id).or_default().push((job, reply));
            }
        }
        if batch.is_empty() {
            q.leader = false;
            return None;
        }
        Some(batch)
    }
}

/// Poisoning only follows a panic while holding the lock; the data (a queue) stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
