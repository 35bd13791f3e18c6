//! Keeps an up-to-date copy of every lease: list, then watch from the listed revision; on compaction or a lost
//! connection, relist and resync. The copy is published on a `watch` channel, so consumers always see the latest
//! whole set and bursts of changes coalesce for free.
//!
//! While etcd is unreachable the last known set stays published: the data plane keeps forwarding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::etcd::{Change, EtcdStore, Listing, StoreError, WatchBatch};
use crate::http::Metrics;
use crate::lease::{Lease, SubnetKey};

/// Every lease as of `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSet {
    pub leases: BTreeMap<SubnetKey, Lease>,
    pub revision: i64,
}

impl LeaseSet {
    pub fn from_listing(listing: &Listing) -> LeaseSet {
        LeaseSet { leases: listing.leases.iter().map(|l| (l.key, l.clone())).collect(), revision: listing.revision }
    }

    fn apply(&mut self, changes: &[Change], revision: i64) {
        for change in changes {
            match change {
                Change::Put(lease) => {
                    self.leases.insert(lease.key, lease.clone());
                }
                Change::Delete(key) => {
                    self.leases.remove(key);
                }
                Change::Problem(_) => {}
            }
        }
        self.revision = revision;
    }
}

/// Exponential backoff, capped: 100 ms, 200 ms, ... 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max }
    }

    pub fn etcd() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay to wait now; the following one doubles, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Runs until `shutdown` turns true. `initial` is a listing taken just before (so startup lists once).
pub async fn run(
    store: EtcdStore,
    initial: Listing,
    tx: watch::Sender<Arc<LeaseSet>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    report_problems(&initial.problems);
    // The channel holds the only long-lived copy of the set (10,000 leases are megabytes): changes are applied in
    // place, copy-on-write while a consumer still holds the previous version. The daemon normally created the
    // channel from this very listing; a set from another revision is replaced.
    if tx.borrow().revision == initial.revision {
        tx.send_modify(|_| {});
    } else {
        tx.send_replace(Arc::new(LeaseSet::from_listing(&initial)));
    }
    drop(initial);
    let mut backoff = Backoff::etcd();
    let mut lost_since: Option<tokio::time::Instant> = None;

    loop {
        let outcome = tokio::select! {
            _ = shutdown.changed() => return,
            outcome = follow(&store, &tx, &mut lost_since, &mut backoff, &metrics) => outcome,
        };
        metrics.etcd_connected.store(false, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            Ok(Resume::Relist) => {}
            Err(e) => {
                if lost_since.is_none() {
                    warn!(error = %e, "lost the etcd connection; keeping the last known {} leases and the data plane as they are", tx.borrow().leases.len());
                    lost_since = Some(tokio::time::Instant::now());
                } else {
                    debug!(error = %e, "etcd still unreachable");
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        // Relist and resync (after compaction, or to recover from a lost connection).
        match store.list_leases().await {
            Ok(listing) => {
                report_problems(&listing.problems);
                let fresh = LeaseSet::from_listing(&listing);
                log_resync(&tx.borrow(), &fresh);
                tx.send_replace(Arc::new(fresh));
            }
            Err(e) => debug!(error = %e, "relist failed"),
        }
    }
}

enum Resume {
    Relist,
}

/// Watches from the set's revision and applies changes until the watch breaks.
async fn follow(
    store: &EtcdStore,
    tx: &watch::Sender<Arc<LeaseSet>>,
    lost_since: &mut Option<tokio::time::Instant>,
    backoff: &mut Backoff,
    metrics: &Metrics,
) -> Result<Resume, StoreError> {
    let revision = tx.borrow().revision;
    let mut watch = store.watch_leases(revision + 1).await?;
    metrics.etcd_connected.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(since) = lost_since.take() {
        info!(outage = ?since.elapsed(), "etcd connection regained; leases resynced");
    }
    loop {
        match watch.next().await? {
            None => return Err(StoreError::WatchClosed { endpoints: store.endpoints().to_string() }),
            Some(WatchBatch::Compacted { compact_revision }) => {
                info!(compact_revision, "etcd history was compacted past our revision; relisting leases");
                return Ok(Resume::Relist);
            }
            Some(WatchBatch::Changes { changes, revision }) => {
                backoff.reset();
                for change in &changes {
                    if let Change::Problem(p) = change {
                        warn!("{p}");
                    }
                }
                tx.send_modify(|set| Arc::make_mut(set).apply(&changes, revision));
            }
        }
    }
}

fn report_problems(problems: &[String]) {
    for p in problems {
        warn!("{p}");
    }
}

fn log_resync(old: &LeaseSet, new: &LeaseSet) {
    let added = new.leases.keys().filter(|k| !old.leases.contains_key(k)).count();
    let removed = old.leases.keys().filter(|k| !new.leases.contains_key(k)).count();
    let changed = new.leases.iter().filter(|(k, l)| old.leases.get(k).is_some_and(|o| o.attrs != l.attrs)).count();
    if added + removed + changed > 0 {
        info!(added, removed, changed, revision = new.revision, "resynced leases from a fresh listing");
    } else {
        debug!(revision = new.revision, "relisted leases: no differences");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::etcd();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn changes_apply_in_order() {
        let lease =
            |k: &str| Lease { key: k.parse().unwrap(), attrs: Default::default(), etcd_lease: 1, mod_revision: 1 };
        let mut set = LeaseSet::default();
        set.apply(&[Change::Put(lease("10.244.1.0-24")), Change::Put(lease("10.244.2.0-24"))], 5);
        set.apply(&[Change::Delete("10.244.1.0-24".parse().unwrap()), Change::Problem("x".into())], 6);
        assert_eq!(set.leases.keys().map(|k| k.to_string()).collect::<Vec<_>>(), vec!["10.244.2.0-24"]);
        assert_eq!(set.revision, 6);
    }
}
