//! Ctrl-C (SIGINT) and SIGTERM during `deploy` / `rollback`. Without handlers the process dies at
//! once and leaves the release lock held (until its lease expires) and the revision `pending`. With
//! them, the first signal stops the run where it is (no automatic rollback: the operator asked to
//! stop), marks what was being rolled out `interrupted`, releases the lock and says how to get back.
//! A second signal exits at once, for when that clean-up itself hangs (cluster unreachable).

pub use crate::signals::{Signals, Stop};

use super::lock;
use super::release::{self, State};

/// The first signal of a deploy or rollback (a second one exits at once).
pub async fn first(signals: &mut Signals) -> Stop {
    signals.first(", leaving the lock to expire", "; the release lock expires after its lease").await
}

fn interrupted(stop: Stop, message: String) -> anyhow::Error {
    stop.error(message)
}

/// Stopped before the lock was held: no revision was recorded by this run.
pub fn before_lock(stop: Stop, verb: &str) -> anyhow::Error {
    let message = format!(
        "interrupted ({}): {verb} stopped before it held the release lock; no revision was recorded",
        stop.name()
    );
    eprintln!("{message}");
    interrupted(stop, message)
}

/// Stopped while holding the lock: mark this run's pending revisions interrupted (we hold the lock,
/// so every pending one is ours), release the lock, and say what the cluster is left with.
pub async fn settle(client: &kube::Client, ns: &str, name: &str, held: lock::Held, stop: Stop) -> anyhow::Error {
    let mut left = Vec::new();
    let mut current = None;
    let recorded = async {
        let revs = release::list(client, ns, name).await?;
        for mut r in revs.iter().filter(|r| r.state == State::Pending).cloned() {
            r.state = State::Interrupted;
            r.outcome = format!("interrupted by {} while rolling out; left as it was, not rolled back", stop.name());
            r.finished = Some(release::now());
            release::update(client, &r).await?;
            left.push(r.revision);
        }
        current = revs.iter().find(|r| r.state == State::Deployed).map(|r| r.revision);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    held.release().await;
    let back = match current {
        Some(m) => format!("run `audctl rollback -n {ns}` to return to revision {m}"),
        None => "no deployed revision to return to".to_owned(),
    };
    let mut message = match (left.as_slice(), &recorded) {
        (_, Err(e)) => format!(
            "interrupted ({}): could not record the revision as interrupted ({e:#}); the next deploy or rollback \
             marks it; {back}",
            stop.name()
        ),
        ([], Ok(())) => format!(
            "interrupted ({}): no revision was left mid-rollout; {}",
            stop.name(),
            match current {
                Some(m) => format!("revision {m} is current"),
                None => "no revision is deployed".to_owned(),
            }
        ),
        (revs, Ok(())) => {
            let list: Vec<String> = revs.iter().map(u32::to_string).collect();
            format!("interrupted ({}): revision {} left mid-rollout; {back}", stop.name(), list.join(", "))
        }
    };
    message.push_str(" (release lock released)");
    eprintln!("{message}");
    interrupted(stop, message)
}
