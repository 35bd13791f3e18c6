//! The peer set: an up-to-date copy of every lease. List, then follow the store's watch from the listed revision;
//! on compaction or a lost connection the watch yields a fresh listing and the set is resynced from it. The copy
//! is published on a `watch` channel, so consumers always see the latest whole set and bursts of changes coalesce
//! for free.
//!
//! While the store is unreachable the last known set stays published: the data plane keeps forwarding.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::http::Metrics;
use crate::lease::{Lease, SubnetKey};
use crate::store::{Change, LeaseProblem, LeaseStore, Listing, ResyncCause, WatchEvent};

/// Every lease as of `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSet {
    /// Change a journaled set only through [`apply`](Self::apply): a change made by hand is not journaled, and
    /// the consumers that follow the journal would never see it.
    pub leases: BTreeMap<SubnetKey, Lease>,
    pub revision: i64,
    /// Keys below the subnets prefix that are not leases (by their name there), and why: never programmed, but
    /// reported and counted like every other rejected lease.
    pub bad_keys: BTreeMap<String, String>,
    /// Leases whose value is not flannel's JSON, and why. They hold their subnet (in `leases`, without
    /// attributes) and are never programmed.
    pub bad_values: BTreeMap<SubnetKey, String>,
    /// Which keys the recent changes touched, so a consumer that saw an earlier version visits only those.
    pub journal: Journal,
}

/// A version of the lease set a consumer has seen: the journal's line and the batch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    line: u64,
    batch: u64,
}

/// The keys changed by the most recent batches of changes applied to a set. A set made from a listing starts a
/// new line (a relisting may differ from the last version anywhere); a set built by hand has no line, and then
/// nobody can tell what changed: consumers look at the whole set.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// 0: no line.
    line: u64,
    /// Batches recorded on this line so far.
    batch: u64,
    /// The batch after which `entries` holds every change (0, or the batch of the last entry dropped to keep the
    /// journal short).
    complete_after: u64,
    entries: std::collections::VecDeque<(u64, SubnetKey)>,
}

/// How many changes the journal keeps: a consumer that falls further behind looks at the whole set once.
const JOURNAL_LEN: usize = 4096;

/// Sets compare by what they say, not by how they were reached.
impl PartialEq for Journal {
    fn eq(&self, _: &Journal) -> bool {
        true
    }
}

impl Eq for Journal {}

impl Journal {
    /// A new line.
    pub fn begin() -> Journal {
        static LINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let line = LINES.fetch_add(1, Ordering::Relaxed);
        Journal { line, ..Journal::default() }
    }

    /// Starts the next batch: the keys recorded from now on changed after every version seen so far.
    pub fn next_batch(&mut self) {
        self.batch += 1;
    }

    /// Records that the entry under `key` changed in the current batch.
    pub fn record(&mut self, key: SubnetKey) {
        if self.line == 0 {
            return;
        }
        if self.entries.len() == JOURNAL_LEN {
            if let Some((dropped, _)) = self.entries.pop_front() {
                self.complete_after = dropped;
            }
        }
        self.entries.push_back((self.batch, key));
    }
}

impl LeaseSet {
    /// An empty set whose changes are journaled (a set from a listing is too).
    pub fn journaled(revision: i64) -> LeaseSet {
        LeaseSet { revision, journal: Journal::begin(), ..LeaseSet::default() }
    }

    /// This version, for a later [`changed_since`](Self::changed_since); None when the set keeps no journal.
    pub fn version(&self) -> Option<Version> {
        (self.journal.line != 0).then_some(Version { line: self.journal.line, batch: self.journal.batch })
    }

    /// The keys whose entry changed after `since`, or None when the journal cannot tell (no journal, another
    /// line, or older than it keeps): then anything may have changed.
    pub fn changed_since(&self, since: Option<Version>) -> Option<std::collections::BTreeSet<SubnetKey>> {
        let since = since?;
        let journal = &self.journal;
        if journal.line == 0 || since.line != journal.line || since.batch < journal.complete_after {
            return None;
        }
        let newer = journal.entries.iter().rev().take_while(|(batch, _)| *batch > since.batch);
        Some(newer.map(|(_, key)| *key).collect())
    }

    pub fn from_listing(listing: &Listing) -> LeaseSet {
        let mut set = LeaseSet {
            leases: listing.leases.iter().map(|l| (l.key, l.clone())).collect(),
            revision: listing.revision,
            journal: Journal::begin(),
            ..LeaseSet::default()
        };
        for problem in &listing.problems {
            set.note(problem);
        }
        set
    }

    /// [`LeaseSet::from_listing`] that moves the leases out of `listing` instead of copying them (10,000 leases
    /// are megabytes); the listing keeps its revision and problems.
    pub fn take_from_listing(listing: &mut Listing) -> LeaseSet {
        let mut set = LeaseSet {
            leases: std::mem::take(&mut listing.leases).into_iter().map(|l| (l.key, l)).collect(),
            revision: listing.revision,
            journal: Journal::begin(),
            ..LeaseSet::default()
        };
        for problem in &listing.problems {
            set.note(problem);
        }
        set
    }

    fn note(&mut self, problem: &LeaseProblem) {
        match problem {
            LeaseProblem::BadKey { name, reason, .. } => {
                self.bad_keys.insert(name.clone(), reason.to_string());
            }
            LeaseProblem::BadValue { key, reason, .. } => {
                self.bad_values.insert(*key, reason.to_string());
            }
            LeaseProblem::BadNode { path, problem } => match problem.key {
                Some(key) => {
                    self.bad_values.insert(key, problem.defect.to_string());
                }
                None => {
                    self.bad_keys.insert(path.clone(), problem.defect.to_string());
                }
            },
        }
    }

    /// Applies one batch of changes from the store's watch, all at `revision`.
    pub fn apply(&mut self, changes: &[Change], revision: i64) {
        self.journal.next_batch();
        for change in changes {
            match change {
                Change::Put(lease) => {
                    // A bad value comes as a put followed by its problem; a good one clears an earlier problem.
                    self.bad_values.remove(&lease.key);
                    self.leases.insert(lease.key, lease.clone());
                    self.journal.record(lease.key);
                }
                Change::Delete(key) => {
                    self.bad_values.remove(key);
                    self.leases.remove(key);
                    self.journal.record(*key);
                }
                Change::Problem(problem) => {
                    if let Some(key) = problem_key(problem) {
                        self.journal.record(key);
                    }
                    self.note(problem)
                }
                Change::DeleteUnparsable(name) => {
                    self.bad_keys.remove(name);
                }
            }
        }
        self.revision = revision;
    }
}

/// The lease key a problem is about, if it names one.
fn problem_key(problem: &LeaseProblem) -> Option<SubnetKey> {
    match problem {
        LeaseProblem::BadKey { .. } => None,
        LeaseProblem::BadValue { key, .. } => Some(*key),
        LeaseProblem::BadNode { problem, .. } => problem.key,
    }
}

/// Runs until `shutdown` turns true. `initial` is a listing taken just before (so startup lists once); its leases
/// may have been taken out already ([`LeaseSet::take_from_listing`]) when the channel holds them.
pub async fn run<S: LeaseStore>(
    store: S,
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
    let mut feed = store.watch(initial.revision);
    drop(initial);
    // The listing just succeeded: the store answers.
    metrics.etcd_connected.store(true, Ordering::Relaxed);
    // Waits between attempts while the store is away; reset once changes flow again (not on a mere relisting,
    // which a watch that keeps breaking right away would otherwise turn into a tight loop).
    let mut backoff = Backoff::store();
    let mut lost_since: Option<tokio::time::Instant> = None;

    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => return,
            event = feed.next() => event,
        };
        match event {
            Ok(WatchEvent::Changes { changes, revision }) => {
                backoff.reset();
                metrics.etcd_connected.store(true, Ordering::Relaxed);
                for change in &changes {
                    if let Change::Problem(p) = change {
                        warn!("{p}");
                    }
                }
                tx.send_modify(|set| Arc::make_mut(set).apply(&changes, revision));
            }
            Ok(WatchEvent::Resync { mut listing, cause }) => {
                metrics.etcd_connected.store(true, Ordering::Relaxed);
                match (cause, lost_since.take()) {
                    (_, Some(since)) => info!(outage = ?since.elapsed(), "etcd connection regained; leases resynced"),
                    (ResyncCause::Compacted { compact_revision }, None) => {
                        info!(compact_revision, "etcd history was compacted past our revision; relisted leases")
                    }
                    (ResyncCause::Reconnected, None) => debug!("the watch was re-established; leases relisted"),
                }
                report_problems(&listing.problems);
                let fresh = LeaseSet::take_from_listing(&mut listing);
                log_resync(&tx.borrow(), &fresh);
                tx.send_replace(Arc::new(fresh));
            }
            Err(e) => {
                metrics.etcd_connected.store(false, Ordering::Relaxed);
                if lost_since.is_none() {
                    warn!(error = %e, "lost the etcd connection; keeping the last known {} leases and the data plane as they are", tx.borrow().leases.len());
                    lost_since = Some(tokio::time::Instant::now());
                } else {
                    debug!(error = %e, "etcd still unreachable");
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

fn report_problems(problems: &[LeaseProblem]) {
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
    use std::time::Duration;

    use tokio::time::{timeout, Instant};

    use super::*;
    use crate::store::memory::{MemoryStore, Op};
    use crate::store::StoredLease;

    fn problem() -> LeaseProblem {
        let stored = StoredLease { path: "bad", name: "bad", value: b"{}", ttl_lease: 0, mod_revision: 1 };
        stored.decode().1.expect("a bad key is a problem")
    }

    fn value(public_ip: &str) -> String {
        format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}}}"#
        )
    }

    #[tokio::test]
    async fn taking_the_leases_out_of_a_listing_gives_the_same_set() {
        let store = MemoryStore::new();
        for (key, ip) in [("10.244.1.0-24", "198.18.0.1"), ("10.244.2.0-24", "198.18.0.2")] {
            store.put(key, &value(ip));
        }
        store.put("10.244.3.0-24", "not json");
        store.put("not-a-key", &value("198.18.0.4"));
        let mut listing = store.list_leases().await.unwrap();
        let copied = LeaseSet::from_listing(&listing);
        let taken = LeaseSet::take_from_listing(&mut listing);
        assert_eq!(taken, copied);
        assert_eq!((taken.leases.len(), taken.bad_values.len(), taken.bad_keys.len()), (3, 1, 1));
        assert!(listing.leases.is_empty());
        assert_eq!((listing.revision, listing.problems.len()), (copied.revision, 2), "the rest stays");
    }

    /// What the store holds now, as a set of leases.
    fn stored_set(store: &MemoryStore) -> BTreeMap<SubnetKey, Lease> {
        store.leases().into_iter().map(|l| (l.key, l)).collect()
    }

    struct Running {
        rx: watch::Receiver<Arc<LeaseSet>>,
        metrics: Arc<Metrics>,
        _shutdown: watch::Sender<bool>,
    }

    /// Starts the peer-set watcher from `listing`, as the daemon does.
    fn start(store: &MemoryStore, listing: Listing) -> Running {
        let (tx, rx) = watch::channel(Arc::new(LeaseSet::from_listing(&listing)));
        let metrics = Arc::new(Metrics::default());
        let (shutdown_tx, shutdown) = watch::channel(false);
        tokio::spawn(run(store.clone(), listing, tx, metrics.clone(), shutdown));
        Running { rx, metrics, _shutdown: shutdown_tx }
    }

    /// Waits until the published set satisfies `done`.
    async fn published(rx: &mut watch::Receiver<Arc<LeaseSet>>, done: impl Fn(&LeaseSet) -> bool) -> Arc<LeaseSet> {
        let wait = rx.wait_for(|set| done(set));
        timeout(Duration::from_secs(60), wait).await.expect("the set never got there").unwrap().clone()
    }

    #[tokio::test]
    async fn changes_by_other_hosts_are_followed() {
        let store = MemoryStore::new();
        store.put("10.244.1.0-24", &value("198.18.0.1"));
        let mut running = start(&store, store.list_leases().await.unwrap());
        store.put_with_ttl("10.244.2.0-24", &value("198.18.0.2"), Duration::from_secs(60));
        store.delete("10.244.1.0-24");
        // A garbage key is reported and ignored; a garbage value still holds its subnet.
        store.put("garbage", "{}");
        store.put("10.244.3.0-24", "{not json");
        let revision = store.revision();
        let set = published(&mut running.rx, |set| set.revision == revision).await;
        assert_eq!(set.leases, stored_set(&store));
        let keys: Vec<String> = set.leases.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["10.244.2.0-24", "10.244.3.0-24"]);
        assert!(running.metrics.etcd_connected.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn after_a_compaction_the_set_resyncs_and_equals_the_store() {
        let store = MemoryStore::new();
        for h in 1..=3 {
            store.put(&format!("10.244.{h}.0-24"), &value(&format!("198.18.0.{h}")));
        }
        // The daemon lists at startup, then programs the kernel; meanwhile the store moves on and compacts the
        // history the watch would have started from.
        let listing = store.list_leases().await.unwrap();
        store.delete("10.244.1.0-24");
        store.put("10.244.2.0-24", &value("198.18.0.22"));
        store.put_with_ttl("10.244.4.0-24", &value("198.18.0.4"), Duration::from_secs(60));
        let compacted = store.compact();
        assert!(compacted > listing.revision);

        let mut running = start(&store, listing);
        let set = published(&mut running.rx, |set| set.revision >= compacted).await;
        assert_eq!(set.leases, stored_set(&store));
        assert_eq!(set.revision, compacted);
        assert_eq!(store.calls().iter().filter(|c| c.op == Op::List).count(), 2, "one relisting after the start");

        // And it keeps following changes after the resync.
        store.delete("10.244.4.0-24");
        let revision = store.revision();
        let set = published(&mut running.rx, |set| set.revision == revision).await;
        assert_eq!(set.leases, stored_set(&store));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_keeps_the_last_set_backs_off_and_resyncs_after_recovery() {
        let store = MemoryStore::new();
        for h in 1..=2 {
            store.put_with_ttl(&format!("10.244.{h}.0-24"), &value(&format!("198.18.0.{h}")), Duration::from_secs(60));
        }
        let mut running = start(&store, store.list_leases().await.unwrap());
        let before = running.rx.borrow().clone();
        while !store.calls().iter().any(|c| c.op == Op::Watch) {
            tokio::task::yield_now().await;
        }

        let calls_before = store.calls().len();
        let outage_began = Instant::now();
        store.fail_all();
        // The world moves on while we cannot see it.
        store.delete("10.244.1.0-24");
        store.put("10.244.3.0-24", &value("198.18.0.3"));
        tokio::time::sleep(Duration::from_secs(20)).await;

        assert_eq!(*running.rx.borrow(), before, "the last known set stays published");
        assert!(!running.metrics.etcd_connected.load(Ordering::Relaxed));
        let attempts: Vec<Instant> =
            store.calls()[calls_before..].iter().inspect(|c| assert!(!c.ok, "{c:?}")).map(|c| c.at).collect();
        let gaps: Vec<u128> = std::iter::once(outage_began)
            .chain(attempts.iter().copied())
            .zip(attempts.iter())
            .map(|(a, b)| (*b - a).as_millis())
            .collect();
        assert_eq!(gaps, [100, 200, 400, 800, 1600, 3200, 5000, 5000], "retries back off, capped at 5 s");

        store.restore();
        let set = published(&mut running.rx, |set| set.revision == store.revision()).await;
        assert_eq!(set.leases, stored_set(&store));
        assert!(running.metrics.etcd_connected.load(Ordering::Relaxed));
        let recovered = store.calls()[calls_before..].iter().filter(|c| c.ok).count();
        assert_eq!(recovered, 2, "one listing and one new watch");
        assert!(Instant::now() - outage_began <= Duration::from_millis(16_300 + 5_000), "recovered on the next try");
    }

    #[test]
    fn changes_apply_in_order() {
        let lease =
            |k: &str| Lease { key: k.parse().unwrap(), attrs: Default::default(), etcd_lease: 1, mod_revision: 1 };
        let mut set = LeaseSet::default();
        set.apply(&[Change::Put(lease("10.244.1.0-24")), Change::Put(lease("10.244.2.0-24"))], 5);
        set.apply(&[Change::Delete("10.244.1.0-24".parse().unwrap()), Change::Problem(problem())], 6);
        assert_eq!(set.leases.keys().map(|k| k.to_string()).collect::<Vec<_>>(), vec!["10.244.2.0-24"]);
        assert_eq!(set.revision, 6);
        assert_eq!(set.bad_keys.keys().collect::<Vec<_>>(), ["bad"], "a bad key is remembered to be reported");
        set.apply(&[Change::DeleteUnparsable("bad".into())], 7);
        assert!(set.bad_keys.is_empty(), "and forgotten when deleted");
    }

    #[tokio::test]
    async fn bad_values_are_remembered_until_fixed_or_deleted() {
        let store = MemoryStore::new();
        store.put("10.244.1.0-24", "{not json");
        store.put("nonsense", "{}");
        let mut running = start(&store, store.list_leases().await.unwrap());
        assert_eq!(running.rx.borrow().bad_values.len(), 1);
        assert_eq!(running.rx.borrow().bad_keys.len(), 1);
        store.put("10.244.2.0-24", "[]");
        store.put("10.244.1.0-24", &value("198.18.0.1"));
        store.delete("nonsense");
        let revision = store.revision();
        let set = published(&mut running.rx, |set| set.revision == revision).await;
        let bad: Vec<String> = set.bad_values.keys().map(ToString::to_string).collect();
        assert_eq!(bad, ["10.244.2.0-24"]);
        assert!(set.bad_keys.is_empty());
    }
}
