//! Group commit. Each tenant has an in-process queue; the first request to find it idle becomes the
//! leader and appends every pending job in one transaction, then the jobs that arrived meanwhile,
//! until the queue is empty. A busy tenant thus costs one commit per run, not one per event.
//! Correctness across processes does not depend on this: the store locks the chain head row.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::store::{AppendJob, JobOutcome, Store, StoreError};

type Reply = oneshot::Sender<Result<JobOutcome, StoreError>>;

#[derive(Default)]
struct TenantQueue {
    pending: VecDeque<(AppendJob, Reply)>,
    leader: bool,
}

pub struct Appender {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    tenants: Mutex<HashMap<String, Arc<Mutex<TenantQueue>>>>,
    /// A run stops taking jobs once it holds this many events (bounds transaction size and latency).
    max_run_events: usize,
}

impl Appender {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, max_run_events: usize) -> Arc<Self> {
        Arc::new(Appender {
            store,
            metrics,
            tenants: Mutex::new(HashMap::new()),
            max_run_events: max_run_events.max(1),
        })
    }

    /// Queue a job and wait until its run is committed (or failed).
    pub async fn submit(self: &Arc<Self>, tenant_id: &str, job: AppendJob) -> Result<JobOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let queue = lock(&self.tenants).entry(tenant_id.to_owned()).or_default().clone();
        let lead = {
            let mut q = lock(&queue);
            q.pending.push_back((job, tx));
            !std::mem::replace(&mut q.leader, true)
        };
        if lead {
            // A task of its own: if this request is cancelled, the run still completes.
            tokio::spawn(self.clone().lead(tenant_id.to_owned(), queue));
        }
        rx.await.unwrap_or_else(|_| Err(StoreError::Internal("the append task ended without an answer".into())))
    }

    async fn lead(self: Arc<Self>, tenant_id: String, queue: Arc<Mutex<TenantQueue>>) {
        loop {
            let run = {
                let mut q = lock(&queue);
                let mut run = Vec::new();
                let mut events = 0;
                while let Some(front) = q.pending.front() {
                    if !run.is_empty() && events + front.0.events.len() > self.max_run_events {
                        break;
                    }
                    events += front.0.events.len();
                    run.extend(q.pending.pop_front());
                }
                if run.is_empty() {
                    q.leader = false;
                    break;
                }
                run
            };
            let (jobs, replies): (Vec<AppendJob>, Vec<Reply>) = run.into_iter().unzip();
            let job_count = jobs.len();
            // In a task of its own so that a panic fails this run's requests, not the tenant's queue.
            let (store, tenant) = (self.store.clone(), tenant_id.clone());
            let result = tokio::spawn(async move { store.append(&tenant, &jobs).await })
                .await
                .unwrap_or_else(|e| Err(StoreError::Internal(format!("append task failed: {e}"))));
            match result {
                Ok(outcomes) => {
                    let stored: usize =
                        outcomes.iter().map(|o| if let JobOutcome::Stored(r) = o { r.len() } else { 0 }).sum();
                    self.metrics.events_ingested(stored as u64, job_count as u64);
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant_id, jobs = job_count, error = %e, "append failed");
                    for reply in replies {
                        let _ = reply.send(Err(clone_error(&e)));
                    }
                }
            }
        }
        // Forget idle tenants so the map does not grow with every tenant ever seen.
        let mut tenants = lock(&self.tenants);
        if let Some(q) = tenants.get(&tenant_id)
            && Arc::ptr_eq(q, &queue)
        {
            let idle = {
                let q = lock(q);
                q.pending.is_empty() && !q.leader
            };
            if idle {
                tenants.remove(&tenant_id);
            }
        }
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

/// Poisoning only follows a panic while holding the lock; the data (a queue) stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
