//! The generator: connections driven by the open model's schedule (a shared arrival counter, so a
//! stalled connection's arrivals are taken by the others and every wait counts) or by the closed
//! model's loop, recording into one interval that a ticker hands over every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio::time::Instant;

use super::http::{Conn, Endpoint, Failure};
use super::plan::Model;
use super::scenario::{Rng, Workload};
use super::stats::Interval;

pub struct Spec {
    pub model: Model,
    pub connections: usize,
    pub timeout: Duration,
    pub key: Option<String>,
    pub endpoint: Endpoint,
    pub workload: Arc<Workload>,
    /// Seeds the request generator (distinct per worker process).
    pub seed: u64,
}

struct Shared {
    spec: Spec,
    start: Instant,
    next: AtomicU64,
    current: Mutex<Interval>,
}

impl Shared {
    fn record(&self, corrected: Option<Duration>, service: Option<Duration>, error: Option<&str>) {
        let us = |d: Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        let mut iv = self.current.lock().unwrap_or_else(|p| p.into_inner());
        iv.record(corrected.map(us), service.map(us), error);
    }
}

/// Run the schedule; every finished second is sent on `seconds` as (index from 0, interval), the
/// last partial second included. Returns the elapsed time. Once `stop` turns true (a signal), the
/// run ends there: requests in flight are dropped uncounted, what was answered is kept.
pub async fn run(spec: Spec, seconds: UnboundedSender<(u64, Interval)>, mut stop: watch::Receiver<bool>) -> Duration {
    let tasks = match &spec.model {
        Model::Open { .. } => spec.connections.max(1),
        Model::Closed { concurrency, .. } => (*concurrency).max(1),
    };
    let shared = Arc::new(Shared { spec, start: Instant::now(), next: AtomicU64::new(0), current: Mutex::default() });
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..tasks {
        let shared = shared.clone();
        workers.spawn(async move {
            let mut rng = Rng::new(shared.spec.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
            match shared.spec.model {
                Model::Open { .. } => open_loop(&shared, &mut rng).await,
                Model::Closed { duration, .. } => closed_loop(&shared, &mut rng, shared.start + duration).await,
            }
        });
    }
    let mut second = 0u64;
    let mut ticker = tokio::time::interval_at(shared.start + Duration::from_secs(1), Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let iv = std::mem::take(&mut *shared.current.lock().unwrap_or_else(|p| p.into_inner()));
                let _ = seconds.send((second, iv));
                second += 1;
            }
            joined = workers.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            () = stopped(&mut stop) => {
                workers.abort_all();
                break;
            }
        }
    }
    let elapsed = shared.start.elapsed();
    let iv = std::mem::take(&mut *shared.current.lock().unwrap_or_else(|p| p.into_inner()));
    if iv.requests() > 0 || second == 0 {
        let _ = seconds.send((second, iv));
    }
    elapsed
}

/// Resolves once `stop` is true; never if its sender is gone without saying so.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The error class of an arrival not sent because it was over --timeout late.
pub const BEHIND: &str = "not sent: a --timeout behind schedule";

async fn open_loop(shared: &Shared, rng: &mut Rng) {
    let mut conn: Option<Conn> = None;
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(at) = shared.spec.model.arrival_time(n) else { return };
        let intended = shared.start + at;
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(intended).await;
        } else if now > intended + shared.spec.timeout {
            // Already a whole --timeout late before it could be sent (the service stalled and
            // every connection is busy): it is counted as failed, not sent, so that a stalled
            // service ends the run near its planned end plus one timeout instead of draining
            // the backlog for as long again as the service takes to answer it.
            shared.record(Some(now - intended), None, Some(BEHIND));
            continue;
        }
        one(shared, rng, &mut conn, intended).await;
    }
}

async fn closed_loop(shared: &Shared, rng: &mut Rng, end: Instant) {
    let mut conn: Option<Conn> = None;
    while Instant::now() < end {
        let now = Instant::now();
        one(shared, rng, &mut conn, now).await;
    }
}

/// One request: connect when needed, send, judge, record. `intended` is when it should have been sent.
async fn one(shared: &Shared, rng: &mut Rng, conn: &mut Option<Conn>, intended: Instant) {
    let spec = &shared.spec;
    let scenario = spec.workload.pick(rng);
    let call = spec.workload.call(scenario, rng);
    let sent = Instant::now();
    let deadline = sent + spec.timeout;
    let outcome = tokio::time::timeout_at(deadline, async {
        for _ in 0..2 {
            if conn.is_none() {
                *conn = Some(spec.endpoint.connect(spec.timeout).await?);
            }
            match conn.as_mut() {
                Some(c) => match c.send(&spec.endpoint, spec.key.as_deref(), &call).await {
                    Err(Failure::Stale) => *conn = None,
                    other => return other,
                },
                None => return Err(Failure::Connect("no connection".into())),
            }
        }
        Err(Failure::Stale)
    })
    .await
    .unwrap_or(Err(Failure::Timeout));
    let done = Instant::now();
    match outcome {
        Ok((status, body)) => {
            let error = spec.workload.check(scenario, status, &body);
            shared.record(Some(done - intended), Some(done - sent), error.as_deref());
        }
        Err(f) => {
            *conn = None;
            match f {
                // Nothing was exchanged: no latency to report, only the error.
                Failure::Connect(_) => shared.record(None, None, Some(f.class())),
                _ => shared.record(Some(done - intended), Some(done - sent), Some(f.class())),
            }
            if matches!(f, Failure::Connect(_)) {
                // Do not spin on a refused connection faster than the schedule asks.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
