//! The generator: connections driven by the open model's schedule (a shared arrival counter, so a
//! stalled connection's arrivals are taken by the others and every wait counts) or by the closed
//! model's loop, recording into one interval that a ticker hands over every second.
//!
//! The open model's arrivals are released at their time by a thread of its own (`pace`), not by
//! each connection's tokio sleep: tokio's timer rounds a sleep up to its next millisecond tick and
//! wakes a little after it, and that lateness of the generator's own counted in every corrected
//! latency (an idle local server at 50/s: corrected p50 3.0 ms against 1.7 ms of service time).
//! A thread's sleep is precise to a few tens of microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Semaphore, watch};
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
    /// Open model: one permit per arrival that is due (see [`pace`]). None: no pacer thread
    /// could be started, and each connection sleeps on tokio's timer as before.
    due: Option<Arc<Semaphore>>,
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
    let start = Instant::now();
    let due = match &spec.model {
        Model::Open { .. } => {
            let (model, due) = (spec.model.clone(), Arc::new(Semaphore::new(0)));
            let released = due.clone();
            std::thread::Builder::new()
                .name("load-pacer".into())
                .spawn(move || pace(&model, start.into_std(), &released, tasks))
                .ok()
                .map(|_| due)
        }
        Model::Closed { .. } => None,
    };
    let shared = Arc::new(Shared { spec, start, next: AtomicU64::new(0), due, current: Mutex::default() });
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
    // Ends the pacer (it checks between arrivals and at least every PACER_CHECK).
    if let Some(due) = &shared.due {
        due.close();
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

/// How often at most a pacer waiting for a far arrival looks whether the run has ended.
const PACER_CHECK: Duration = Duration::from_millis(50);

/// Release one permit of `due` per arrival of `model` at its time from `start`, until the last
/// one; then `tasks` more, so that every connection takes one, finds no arrival and ends. Returns
/// early once `due` is closed (the run ended). Arrivals already due (a late wake, a high rate) are
/// released together.
fn pace(model: &Model, start: std::time::Instant, due: &Semaphore, tasks: usize) {
    let mut n = 0u64;
    loop {
        if due.is_closed() {
            return;
        }
        let Some(at) = model.arrival_time(n) else {
            due.add_permits(tasks);
            return;
        };
        let at = start + at;
        let now = std::time::Instant::now();
        if at > now {
            std::thread::sleep((at - now).min(PACER_CHECK));
            continue;
        }
        let mut ready = 1;
        while model.arrival_time(n + ready as u64).is_some_and(|next| start + next <= now) {
            ready += 1;
        }
        due.add_permits(ready);
        n += ready as u64;
    }
}

async fn open_loop(shared: &Shared, rng: &mut Rng) {
    let mut conn: Option<Conn> = None;
    loop {
        // The n-th permit is released when arrival n is due, so the arrival taken below is due.
        if let Some(due) = &shared.due {
            match due.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
        }
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(at) = shared.spec.model.arrival_time(n) else { return };
        let intended = shared.start + at;
        let now = Instant::now();
        if intended > now {
            // Only without a pacer (none could be started): tokio's timer, a millisecond late.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::plan::Segment;

    fn open(rate: f64, ms: u64) -> Model {
        Model::Open { segments: vec![Segment { from: rate, to: rate, duration: Duration::from_millis(ms) }] }
    }

    /// Arrivals of `model` due at `t` after the start.
    fn due_by(model: &Model, t: Duration) -> usize {
        (0..).take_while(|n| model.arrival_time(*n).is_some_and(|at| at <= t)).count()
    }

    #[test]
    fn the_pacer_releases_each_arrival_at_its_time_never_before_then_one_per_task() {
        // 200/s for 0.3 s: 60 arrivals, the n-th due at (n + 1) x 5 ms.
        let model = open(200.0, 300);
        let due = Arc::new(Semaphore::new(0));
        let start = std::time::Instant::now();
        let pacer = {
            let (model, due) = (model.clone(), due.clone());
            std::thread::spawn(move || pace(&model, start, &due, 4))
        };
        let mut seen = Vec::new();
        while !pacer.is_finished() {
            // Read the count first, then the clock: whatever was released by the read is due by
            // the clock's time.
            let released = due.available_permits();
            let t = start.elapsed();
            assert!(
                released <= due_by(&model, t) || released == 64,
                "{released} arrivals released after {t:?}, only {} due",
                due_by(&model, t)
            );
            seen.push(released);
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(due.available_permits(), 60 + 4, "every arrival, then one permit per task");
        // Released over time, not at once at the end.
        assert!(seen.iter().filter(|r| (1..60).contains(*r)).count() > 10, "{seen:?}");
    }

    #[test]
    fn a_closed_run_ends_the_pacer_while_it_waits_for_a_far_arrival() {
        // One arrival a minute: the pacer sleeps in PACER_CHECK slices and sees the close.
        let model = open(1.0 / 60.0, 600_000);
        let due = Arc::new(Semaphore::new(0));
        let pacer = {
            let due = due.clone();
            std::thread::spawn(move || pace(&model, std::time::Instant::now(), &due, 1))
        };
        std::thread::sleep(Duration::from_millis(20));
        due.close();
        let closed = std::time::Instant::now();
        while !pacer.is_finished() {
            assert!(closed.elapsed() < Duration::from_secs(5), "the pacer outlived its run");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
