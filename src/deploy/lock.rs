//! The release lock: a coordination.k8s.io Lease per release, held by one deploy/rollback at a time
//! and renewed while it runs. A holder that dies (kill -9, a cancelled CI job) stops renewing; once
//! its lease has expired the next deploy takes over, so a release is never stuck.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::kube::{api_status, transport_error};

pub fn lease_name(release: &str) -> String {
    format!("audctl-{release}-lock")
}

/// Who holds the lock: user, host, process and verb, for the message another deploy prints.
pub fn identity(verb: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{} on {} pid {} (audctl {verb})", crate::evidence::who(), host, std::process::id())
}

/// A held lock. Renewed in the background until [`Held::release`] (or drop, which stops renewing).
pub struct Held {
    api: Api<Lease>,
    name: String,
    holder: String,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

pub struct Options {
    pub lease: Duration,
    /// Take the lock even from a live holder.
    pub force: bool,
    /// Give up waiting for a live holder after this long.
    pub wait: Duration,
    /// The command that forces the lock, for the waiting message.
    pub force_hint: String,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Seconds until a lease expires (negative: expired), by its renew time and duration.
fn remaining(spec: &LeaseSpec) -> f64 {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return -1.0 };
    let duration = f64::from(spec.lease_duration_seconds.unwrap_or(0));
    let age = Timestamp::now().duration_since(renewed.0).as_secs_f64();
    duration - age
}

pub async fn acquire(
    client: &kube::Client,
    ns: &str,
    release: &str,
    holder: &str,
    opts: &Options,
) -> anyhow::Result<Held> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let name = lease_name(release);
    let seconds = i32::try_from(opts.lease.as_secs().max(1)).unwrap_or(i32::MAX);
    let deadline = Instant::now() + opts.wait;
    let mut announced = false;
    loop {
        let ours = |transitions: i32, rv: Option<String>| Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_owned()),
                resource_version: rv,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        };
        let existing = match api.get_opt(&name).await {
            Ok(l) => l,
            Err(e) => return Err(transport_error(e, "reading the release lock")),
        };
        let attempt = match existing {
            None => api.create(&PostParams::default(), &ours(0, None)).await,
            Some(lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let other = spec.holder_identity.clone().unwrap_or_default();
                let left = remaining(&spec);
                let free = other.is_empty() || left <= 0.0;
                if !free && !opts.force {
                    if Instant::now() >= deadline {
                        anyhow::bail!(
                            "release {release} is locked by {other} (lease {name} in namespace {ns}, expires in {left:.0}s); \
                             gave up waiting. If that run is gone, wait for the lease to expire or take the lock now with `{}`",
                            opts.force_hint
                        );
                    }
                    if !announced {
                        eprintln!(
                            "release {release} is locked by {other}; waiting for it to finish or for its lease to expire \
                             (in {left:.0}s, lease {name} in namespace {ns}). To take the lock now: `{}`",
                            opts.force_hint
                        );
                        announced = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500).min(Duration::from_secs_f64(left.max(0.1)))).await;
                    continue;
                }
                if !other.is_empty() {
                    if left <= 0.0 {
                        eprintln!("taking over the release lock from {other}: its lease expired {:.0}s ago", -left);
                    } else {
                        eprintln!("forcing the release lock away from {other} (--force-unlock)");
                    }
                }
                let transitions = spec.lease_transitions.unwrap_or(0) + 1;
                api.replace(&name, &PostParams::default(), &ours(transitions, lease.metadata.resource_version.clone()))
                    .await
            }
        };
        match attempt {
            Ok(_) => break,
            // Someone else created or took it between our read and write: read again.
            Err(e) if api_status(&e) == Some(409) => continue,
            Err(e) => return Err(transport_error(e, "taking the release lock")),
        }
    }
    let lost = Arc::new(AtomicBool::new(false));
    let renewer = tokio::spawn(renew(api.clone(), name.clone(), holder.to_owned(), opts.lease, lost.clone()));
    Ok(Held { api, name, holder: holder.to_owned(), lost, renewer })
}

async fn renew(api: Api<Lease>, name: String, holder: String, lease: Duration, lost: Arc<AtomicBool>) {
    let every = (lease / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(every).await;
        let result = async {
            let mut current = api.get(&name).await?;
            let spec = current.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(holder.as_str()) {
                return Ok::<bool, kube::Error>(false);
            }
            spec.renew_time = Some(micro_now());
            api.replace(&name, &PostParams::default(), &current).await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("warning: the release lock {name} was taken by someone else");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // A transient error: try again at the next tick (the lease outlives two misses).
            Err(e) => tracing::warn!("renewing the release lock {name}: {e}"),
        }
    }
}

impl Held {
    /// The lock was taken away (forced by another run) while we held it.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Stop renewing and delete the lease if it is still ours.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(Some(l)) = self.api.get_opt(&self.name).await
            && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.holder.as_str())
        {
            let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry_from_renew_time_and_duration() {
        let ago = |s: i64| MicroTime(Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(s));
        let live = LeaseSpec { renew_time: Some(ago(2)), lease_duration_seconds: Some(30), ..Default::default() };
        assert!(remaining(&live) > 20.0);
        let dead = LeaseSpec { renew_time: Some(ago(60)), lease_duration_seconds: Some(30), ..Default::default() };
        assert!(remaining(&dead) < 0.0);
        assert!(remaining(&LeaseSpec::default()) < 0.0, "a lease never renewed is free");
    }
}
