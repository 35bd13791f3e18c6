//! Our own subnet lease: acquire it, keep it alive, and take it back if someone deletes it.
//!
//! flanneld exits when its lease disappears ("Lease has been revoked"), which takes every pod on the node down
//! with it. weftd re-acquires instead, preferring the same subnet, so nothing on the node changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::alloc::{self, Choice, Identity};
use crate::backoff::Backoff;
use crate::config::NetworkConfig;
use crate::http::Metrics;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::LeaseSet;
use crate::store::{LeaseStore, StoreError};

/// How many times to re-plan after losing a creation race before backing off.
const RACE_RETRIES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Alloc(#[from] alloc::AllocError),
    #[error("lost the race for a free subnet {0} times in a row")]
    Contended(usize),
}

pub struct LeaseManager<S> {
    pub store: S,
    pub config: NetworkConfig,
    pub attrs: LeaseAttrs,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
}

impl<S: LeaseStore> LeaseManager<S> {
    fn identity(&self, preferred: Vec<SubnetKey>) -> Identity {
        Identity {
            public_ip: self.attrs.public_ip.map(Into::into),
            public_ipv6: self.attrs.public_ipv6.map(Into::into),
            preferred,
        }
    }

    /// One acquisition attempt: list, plan, then claim with create-if-absent (retrying lost races).
    pub async fn acquire_once(&self, preferred: &[SubnetKey]) -> Result<Lease, AcquireError> {
        for _ in 0..RACE_RETRIES {
            let listing = self.store.list_leases().await?;
            let plan =
                alloc::plan(&self.config, &listing.leases, &self.identity(preferred.to_vec()), &mut rand::rng())?;
            for stale in &plan.stale {
                info!(subnet = %stale.key, "deleting our old lease: it no longer fits the network config");
                match self.store.delete_lease(&stale.key).await {
                    // Gone already (expired, or deleted by someone else): just as good.
                    Ok(()) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let outcome = match &plan.choice {
                Choice::Renew(existing) => self.store.renew_lease(existing, &self.attrs, self.ttl).await,
                Choice::Claim(key) => self.store.create_lease(key, &self.attrs, self.ttl).await,
            };
            match outcome {
                Ok(lease) => return Ok(lease),
                Err(StoreError::Conflict { key }) => {
                    debug!(subnet = %key, "lease changed under us while claiming it; planning again")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AcquireError::Contended(RACE_RETRIES))
    }

    /// Acquires, retrying until it works or shutdown: etcd may be down, the pool may be full for now.
    pub async fn acquire(&self, preferred: &[SubnetKey], shutdown: &mut watch::Receiver<bool>) -> Option<Lease> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.acquire_once(preferred).await {
                Ok(lease) => {
                    let kind = if lease.is_reservation() { "reservation" } else { "lease" };
                    self.metrics.lease_acquisitions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *self.metrics.subnet.lock().unwrap_or_else(|e| e.into_inner()) = lease.key.to_string();
                    info!(subnet = %lease.key, etcd_lease = format_args!("{:x}", lease.etcd_lease), "acquired subnet {kind}");
                    return Some(lease);
                }
                Err(AcquireError::Alloc(e)) => error!("{e}"),
                Err(e) => warn!(error = %e, "could not acquire a subnet lease yet; retrying"),
            }
            tokio::select! {
                _ = shutdown.changed() => return None,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Keeps `own` alive until shutdown. Publishes a new lease on `own_tx` whenever it had to re-acquire.
    pub async fn keep(
        self: Arc<Self>,
        mut own: Lease,
        own_tx: watch::Sender<Lease>,
        mut leases: watch::Receiver<Arc<LeaseSet>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let interval = keepalive_interval(self.ttl);
        let mut next_keepalive = tokio::time::Instant::now() + interval;
        loop {
            let lost = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive = tokio::time::Instant::now() + interval;
                    self.refresh(&own).await
                }
                changed = leases.changed() => {
                    if changed.is_err() { return; }
                    let set = leases.borrow_and_update().clone();
                    is_gone(&own, &set)
                }
            };
            if !lost {
                continue;
            }
            info!(subnet = %own.key, "our lease was deleted from etcd; re-acquiring, preferring the same subnet");
            let Some(lease) = self.acquire(&[own.key], &mut shutdown).await else { return };
            if lease.key != own.key {
                warn!(old = %own.key, new = %lease.key, "re-acquired a different subnet: the old one was taken meanwhile");
            }
            own = lease;
            own_tx.send_replace(own.clone());
        }
    }

    /// Sends one keepalive. Returns true when the lease's TTL ran out (so the key is gone too).
    async fn refresh(&self, own: &Lease) -> bool {
        if own.is_reservation() {
            return false;
        }
        match self.store.keep_alive(own).await {
            Ok(ttl) => {
                debug!(subnet = %own.key, ttl = ttl.as_secs(), "lease kept alive");
                false
            }
            Err(StoreError::NotFound { .. }) => true,
            Err(e) => {
                debug!(error = %e, "keepalive failed; the lease has {:?} of TTL to spare", self.ttl);
                false
            }
        }
    }
}

/// Whether our key is missing from a lease set that is at least as new as our last write.
pub fn is_gone(own: &Lease, set: &LeaseSet) -> bool {
    set.revision >= own.mod_revision && !set.leases.contains_key(&own.key)
}

/// A third of the TTL, at most a minute: losing a few keepalives never loses the lease, and a revoked etcd lease
/// is noticed within a minute even if the delete event was missed.
pub fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, rev: i64) -> Lease {
        Lease { key: key.parse().unwrap(), attrs: Default::default(), etcd_lease: 9, mod_revision: rev }
    }

    #[test]
    fn gone_only_when_the_set_is_new_enough() {
        let own = lease("10.244.3.0-24", 10);
        let mut set = LeaseSet { revision: 9, ..Default::default() };
        assert!(!is_gone(&own, &set), "an older listing may predate our claim");
        set.revision = 10;
        assert!(is_gone(&own, &set));
        set.leases.insert(own.key, own.clone());
        assert!(!is_gone(&own, &set));
    }

    #[test]
    fn keepalive_interval_is_bounded() {
        assert_eq!(keepalive_interval(Duration::from_secs(86400)), Duration::from_secs(60));
        assert_eq!(keepalive_interval(Duration::from_secs(6)), Duration::from_secs(2));
        assert_eq!(keepalive_interval(Duration::from_secs(1)), Duration::from_millis(500));
    }
}
