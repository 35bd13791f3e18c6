//! Our own subnet lease: acquire it, keep it alive, and take it back if someone deletes it.
//!
//! flanneld exits when its lease disappears ("Lease has been revoked"), which takes every pod on the node down
//! with it. weftd re-acquires instead, preferring the same subnet, so nothing on the node changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::alloc::{self, Choice, Identity};
use crate::backoff::Backoff;
use crate::claim_check::{self, Settled};
use crate::config::NetworkConfig;
use crate::http::Metrics;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::lease_holder::{self, overwrite, shares_public_ip, Overwrite};
use crate::registry::{LeaseSet, Version};
use crate::store::{LeaseStore, Listing, StoreError};

/// How many times to re-plan after losing a creation race before backing off.
const RACE_RETRIES: usize = 10;
/// How often a lease's TTL is read while watching for its holder's keepalive (the store counts whole seconds).
const TTL_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Alloc(#[from] alloc::AllocError),
    #[error("lost the race for a free subnet {0} times in a row")]
    Contended(usize),
    #[error(
        "lease {key} carries our public IP and another weftd keeps it alive (value {value}): is a second host \
         running with the same --public-ip? Leaving it alone and waiting; stop one of them or give each its own \
         address"
    )]
    HeldElsewhere { key: SubnetKey, value: String },
}

pub struct LeaseManager<S> {
    pub store: S,
    pub config: NetworkConfig,
    pub attrs: LeaseAttrs,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
}

/// The live leases reported for carrying our public IP, and the version of the set (with our own key then)
/// they were found in.
#[derive(Default)]
struct Impostors {
    reported: BTreeSet<SubnetKey>,
    seen: Option<(Version, SubnetKey)>,
}

impl Impostors {
    /// Takes in `set` (`own` is our lease's key, `ours` our value); returns the leases that carry our public IP
    /// now and did not before. Looks at the leases the set's journal says changed since the last look (a lease
    /// event costs the change, not a walk of 10,000 leases), at every lease when the journal cannot tell or our
    /// own key changed.
    fn update(&mut self, own: &SubnetKey, ours: &LeaseAttrs, set: &LeaseSet) -> Vec<SubnetKey> {
        let is_impostor = |l: &Lease| l.key != *own && shares_public_ip(l, ours);
        let changed = self.seen.filter(|(_, key)| key == own).and_then(|(v, _)| set.changed_since(Some(v)));
        self.seen = set.version().map(|v| (v, *own));
        let now: BTreeSet<SubnetKey> = match changed {
            Some(keys) => {
                let mut now = self.reported.clone();
                for key in keys {
                    match set.leases.get(&key) {
                        Some(lease) if is_impostor(lease) => now.insert(key),
                        _ => now.remove(&key),
                    };
                }
                now
            }
            None => set.leases.values().filter(|l| is_impostor(l)).map(|l| l.key).collect(),
        };
        let new = now.difference(&self.reported).copied().collect();
        self.reported = now;
        new
    }
}

impl<S: LeaseStore> LeaseManager<S> {
    fn identity(&self, preferred: Vec<SubnetKey>) -> Identity {
        Identity {
            public_ip: self.attrs.public_ip.map(Into::into),
            public_ipv6: self.attrs.public_ipv6.map(Into::into),
            preferred,
        }
    }

    /// One acquisition attempt: list, plan, then claim with create-if-absent, and yield the claim if an older lease
    /// overlaps it after all (retrying lost races either way).
    pub async fn acquire_once(&self, preferred: &[SubnetKey]) -> Result<Lease, AcquireError> {
        self.acquire_once_listed(preferred).await.map(|(lease, _)| lease)
    }

    /// [`acquire_once`](Self::acquire_once), with the listing the claim was last checked against, when there is
    /// one (see [`claim_check::settle_listed`]).
    async fn acquire_once_listed(&self, preferred: &[SubnetKey]) -> Result<(Lease, Option<Listing>), AcquireError> {
        if let Some(key) = self.store.assigned_subnet().await? {
            // The store assigned our subnet (a Kubernetes Node's pod CIDR): nothing to plan, nobody to race.
            return Ok((self.store.create_lease(&key, &self.attrs, self.ttl).await?, None));
        }
        for _ in 0..RACE_RETRIES {
            let listing = self.store.list_leases().await?;
            let plan =
                alloc::plan(&self.config, &listing.leases, &self.identity(preferred.to_vec()), &mut rand::rng())?;
            // Every lease the plan takes over or releases carries our public IP; none may be a running host's.
            let renewed = match &plan.choice {
                Choice::Renew(existing) => Some(existing),
                Choice::Claim(_) => None,
            };
            for lease in plan.stale.iter().chain(renewed) {
                self.refuse_if_held_elsewhere(lease, preferred).await?;
            }
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
                Ok(lease) => match claim_check::settle_listed(&self.store, lease).await? {
                    (Settled::Kept(lease), listing) => return Ok((lease, listing)),
                    (Settled::Yielded, _) => {}
                },
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
        self.acquire_listed(preferred, shutdown).await.map(|(lease, _)| lease)
    }

    /// [`acquire`](Self::acquire), with the listing taken after the claim when there is one: the startup's list
    /// of peers.
    pub async fn acquire_listed(
        &self,
        preferred: &[SubnetKey],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<(Lease, Option<Listing>)> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.acquire_once_listed(preferred).await {
                Ok((lease, listing)) => {
                    let kind = if lease.is_reservation() { "reservation" } else { "lease" };
                    self.metrics.lease_acquisitions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *self.metrics.subnet.lock().unwrap_or_else(|e| e.into_inner()) = lease.key.to_string();
                    info!(subnet = %lease.key, etcd_lease = format_args!("{:x}", lease.etcd_lease), "acquired subnet {kind}");
                    return Some((lease, listing));
                }
                Err(AcquireError::Alloc(e)) => error!("{e}"),
                Err(e @ AcquireError::HeldElsewhere { .. }) => error!("{e}"),
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
        let mut impostors = Impostors::default();
        let mut restore_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        // Whether someone else wrote our lease since the last keepalive: the restore backoff only starts afresh
        // after a quiet interval, so a write-back war with another host slows down to one write a minute. The first
        // write-back after a quiet interval is immediate: a single bad write is undone before peers act on it long.
        let mut overwritten = false;
        let mut quiet = true;
        // The same for writes by another weftd with our public IP: reported (and answered) once per episode.
        let mut twin_quiet = true;
        let mut next_keepalive = tokio::time::Instant::now() + interval;
        loop {
            let lost = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive = tokio::time::Instant::now() + interval;
                    if !std::mem::take(&mut overwritten) {
                        restore_backoff.reset();
                        quiet = true;
                        twin_quiet = true;
                    }
                    self.refresh(&own).await
                }
                changed = leases.changed() => {
                    if changed.is_err() { return; }
                    let set = leases.borrow_and_update().clone();
                    self.report_impostors(&own, &set, &mut impostors);
                    if let Some(write) = overwrite(&own, &set) {
                        overwritten = true;
                        let first = std::mem::take(&mut quiet);
                        let first_twin = write.is_duplicate_host() && std::mem::take(&mut twin_quiet);
                        let theirs = write.lease();
                        if first_twin {
                            self.report_duplicate(&own, theirs);
                        }
                        if let Overwrite::OurValue(_) = write {
                            // Our very bytes: nothing to repair. Written once more, the first time only, so the
                            // other weftd (which takes the lease for its own) sees a write it did not make and
                            // reports it too; later ones are only followed, so the two never write in a loop.
                            own = match first_twin {
                                true => self.write_again(&own, theirs).await.unwrap_or_else(|| theirs.clone()),
                                false => theirs.clone(),
                            };
                            continue;
                        }
                        // Two hosts that both restore "their" value would otherwise write in a tight loop.
                        let delay = if first { Duration::ZERO } else { restore_backoff.next_delay() };
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        if let Some(restored) = self.restore(&own, theirs).await {
                            own = restored;
                            own_tx.send_replace(own.clone());
                        }
                        continue;
                    }
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

    /// Writes our value back over a lease someone else changed (only if nobody changed it again meanwhile; a
    /// lost race is retried on the next change). Returns the restored lease.
    async fn restore(&self, own: &Lease, theirs: &Lease) -> Option<Lease> {
        warn!(
            subnet = %theirs.key,
            value = %theirs.attrs.to_json(),
            "our lease was changed by someone else; writing our own value back (another host configured with our \
             public IP, or an operator's mistake)"
        );
        self.metrics.own_lease_restores.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // On our own TTL lease (a plain put detaches the key from it), over their revision (compare-and-swap).
        let target = Lease { etcd_lease: own.etcd_lease, ..theirs.clone() };
        match self.store.renew_lease(&target, &self.attrs, self.ttl).await {
            Ok(lease) => {
                info!(subnet = %lease.key, "our lease value is restored");
                Some(lease)
            }
            Err(e) => {
                warn!(subnet = %theirs.key, error = %e, "could not restore our lease value yet; retrying on the next change");
                None
            }
        }
    }

    /// Leaves `lease` (a live lease carrying our public IP) alone when a running weftd keeps it alive: watched for one
    /// keepalive interval of its holder unless it holds exactly our value (our own restart), is a reservation, or is
    /// one `ours_before` names: the subnet file's lease at start-up, our own lease when re-acquiring (our own restart
    /// with a changed value, e.g. a rotated WireGuard key; another host configured with our public IP has its own
    /// subnet file).
    async fn refuse_if_held_elsewhere(&self, lease: &Lease, ours_before: &[SubnetKey]) -> Result<(), AcquireError> {
        if lease.is_reservation() || *lease.attrs == self.attrs {
            return Ok(());
        }
        if ours_before.contains(&lease.key) {
            info!(subnet = %lease.key, "the subnet file names this lease: ours from an earlier run, with a new value");
            return Ok(());
        }
        let Some(first) = self.store.time_to_live(lease).await? else {
            debug!(subnet = %lease.key, "the lease carrying our public IP has no TTL left: nobody holds it");
            return Ok(());
        };
        if lease_holder::missed_a_keepalive(first) {
            debug!(subnet = %lease.key, ttl = ?first, "the lease carrying our public IP missed a keepalive");
            return Ok(());
        }
        info!(
            subnet = %lease.key,
            "a live lease carries our public IP with another value; watching whether someone keeps it alive"
        );
        let deadline = tokio::time::Instant::now() + lease_holder::watch_for(first);
        let mut last = first;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(TTL_POLL).await;
            match self.store.time_to_live(lease).await? {
                None => return Ok(()),
                Some(now) if lease_holder::refreshed(last, now) => {
                    self.metrics.duplicate_public_ip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(AcquireError::HeldElsewhere { key: lease.key, value: lease.attrs.to_json() });
                }
                Some(now) => last = now,
            }
        }
        info!(subnet = %lease.key, "nobody kept it alive: it is ours from an earlier run");
        Ok(())
    }

    /// Writes our value over `theirs` (the same bytes) on our TTL lease; the lease as written.
    async fn write_again(&self, own: &Lease, theirs: &Lease) -> Option<Lease> {
        let target = Lease { etcd_lease: own.etcd_lease, ..theirs.clone() };
        self.store.renew_lease(&target, &self.attrs, self.ttl).await.ok()
    }

    /// Reports a write into our lease by another weftd configured with our public IP.
    fn report_duplicate(&self, own: &Lease, theirs: &Lease) {
        self.metrics.duplicate_public_ip.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        error!(
            subnet = %own.key,
            value = %theirs.attrs.to_json(),
            "another weftd with our public IP wrote our lease: two hosts run with the same --public-ip; stop one of \
             them or give each its own address"
        );
    }

    /// Warns once per lease about every other live lease that carries our public IP: two hosts configured with
    /// the same address would send each other's traffic to one of them.
    fn report_impostors(&self, own: &Lease, set: &LeaseSet, impostors: &mut Impostors) {
        for key in impostors.update(&own.key, &self.attrs, set) {
            if set.leases.get(&key).is_some_and(Lease::is_reservation) {
                // flannel's reservations: legitimate, but the host only moves at its next start; say so now.
                warn!(
                    subnet = %key,
                    our_subnet = %own.key,
                    "a reservation (no TTL) carries our public IP: weftd moves to it at its next start and releases \
                     {own}; delete it if it is a mistake",
                    own = own.key
                );
            } else {
                error!(
                    subnet = %key,
                    our_subnet = %own.key,
                    "another live lease carries our public IP: is a second host running with the same --public-ip? \
                     Hosts ignore it; check the hosts' addresses"
                );
            }
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
    use tokio::time::{timeout, Instant};

    use super::*;
    use crate::registry;
    use crate::store::memory::{MemoryStore, Op};

    const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const TTL: Duration = Duration::from_secs(6);

    #[test]
    fn impostors_found_from_the_journal_are_the_ones_a_walk_finds() {
        use crate::store::Change;
        let ours = LeaseAttrs { public_ip: Some("198.18.0.1".parse().unwrap()), ..Default::default() };
        let lease = |n: u8, ip: &str, revision: i64| Lease {
            key: format!("10.244.{n}.0-24").parse().unwrap(),
            attrs: Arc::new(LeaseAttrs { public_ip: Some(ip.parse().unwrap()), ..Default::default() }),
            etcd_lease: 7,
            mod_revision: revision,
        };
        let own: SubnetKey = "10.244.1.0-24".parse().unwrap();
        let mut set = LeaseSet::journaled(0);
        let (mut followed, mut found) = (Impostors::default(), Vec::new());
        // Peers take and drop our address, our own lease carries it (never an impostor), and a burst of
        // unrelated changes passes.
        let steps: Vec<Change> = vec![
            Change::Put(lease(1, "198.18.0.1", 1)),
            Change::Put(lease(2, "198.18.0.2", 2)),
            Change::Put(lease(3, "198.18.0.1", 3)),
            Change::Put(lease(2, "198.18.0.1", 4)),
            Change::Put(lease(3, "198.18.0.3", 5)),
            Change::Delete("10.244.2.0-24".parse().unwrap()),
            Change::Put(lease(4, "198.18.0.4", 7)),
            Change::Put(lease(3, "198.18.0.1", 8)),
        ];
        for (revision, change) in (1..).zip(steps) {
            set.apply(&[change], revision);
            found.extend(followed.update(&own, &ours, &set));
            let walked = Impostors::default().update(&own, &ours, &set);
            assert_eq!(followed.reported.iter().copied().collect::<Vec<_>>(), walked, "after revision {revision}");
        }
        let names: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["10.244.3.0-24", "10.244.2.0-24", "10.244.3.0-24"], "each new episode once");
    }

    fn manager(store: &MemoryStore, public_ip: &str) -> Arc<LeaseManager<MemoryStore>> {
        manager_with_mac(store, public_ip, "0e:00:00:00:00:01")
    }

    fn manager_with_mac(store: &MemoryStore, public_ip: &str, mac: &str) -> Arc<LeaseManager<MemoryStore>> {
        Arc::new(LeaseManager {
            store: store.clone(),
            config: NetworkConfig::parse(CONFIG).unwrap(),
            attrs: LeaseAttrs {
                public_ip: Some(public_ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac}).into()),
                ..Default::default()
            },
            ttl: TTL,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// A host as weftd runs it: its lease acquired, then the lease keeper beside the peer-set watcher (or beside a
    /// lease set that never changes, to see what the keeper notices on its own).
    struct Host {
        own: watch::Receiver<Lease>,
        first: Lease,
        _leases: watch::Sender<Arc<LeaseSet>>,
        _shutdown: watch::Sender<bool>,
    }

    async fn start(manager: Arc<LeaseManager<MemoryStore>>, with_peer_set: bool) -> Host {
        let (shutdown_tx, mut shutdown) = watch::channel(false);
        let own = manager.acquire(&[], &mut shutdown).await.expect("acquired");
        let listing = manager.store.list_leases().await.unwrap();
        let (leases_tx, leases_rx) = watch::channel(Arc::new(LeaseSet::from_listing(&listing)));
        let (own_tx, own_rx) = watch::channel(own.clone());
        if with_peer_set {
            let metrics = manager.metrics.clone();
            tokio::spawn(registry::run(manager.store.clone(), listing, leases_tx.clone(), metrics, shutdown.clone()));
        }
        tokio::spawn(manager.keep(own.clone(), own_tx, leases_rx, shutdown));
        Host { own: own_rx, first: own, _leases: leases_tx, _shutdown: shutdown_tx }
    }

    fn calls(store: &MemoryStore, op: Op) -> Vec<crate::store::memory::Call> {
        store.calls().into_iter().filter(|c| c.op == op).collect()
    }

    #[tokio::test]
    async fn a_deleted_lease_is_taken_back_with_the_same_subnet() {
        let store = MemoryStore::with_config(CONFIG);
        let mut host = start(manager(&store, "198.18.0.1"), true).await;
        let key = host.first.key;
        // Three times: a random pick among 100 free subnets would not land on the same one three times.
        for _ in 0..3 {
            let before = host.own.borrow_and_update().clone();
            assert!(store.delete(&key.to_string()), "an operator deletes our lease");
            timeout(Duration::from_secs(10), host.own.changed()).await.expect("re-acquired in time").unwrap();
            let after = host.own.borrow_and_update().clone();
            assert_eq!(after.key, key);
            assert!(after.mod_revision > before.mod_revision);
            assert_eq!(store.value(&key.to_string()), Some(after.attrs.to_json()));
        }
        assert_eq!(store.leases().len(), 1);
    }

    #[tokio::test]
    async fn a_lease_changed_by_someone_else_is_restored() {
        let store = MemoryStore::with_config(CONFIG);
        let mut host = start(manager(&store, "198.18.0.1"), true).await;
        let key = host.first.key.to_string();
        let forged = r#"{"PublicIP":"198.18.0.66","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:66"}}"#;
        // A plain put, as etcdctl does it: the key loses its TTL lease.
        store.put(&key, forged);
        timeout(Duration::from_secs(10), host.own.changed()).await.expect("restored in time").unwrap();
        let restored = host.own.borrow_and_update().clone();
        assert_eq!(restored.key, host.first.key, "same subnet");
        assert_eq!(restored.etcd_lease, host.first.etcd_lease, "back on our TTL lease, not a reservation");
        assert!(!store.leases()[0].is_reservation());
        assert_eq!(restored.attrs, host.first.attrs);
        assert_eq!(store.value(&key), Some(host.first.attrs.to_json()), "our value is back in the store");
        assert_eq!(store.leases().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_ttl_ran_out_is_noticed_by_the_keepalive_and_taken_back() {
        let store = MemoryStore::with_config(CONFIG);
        // No peer-set watcher: the keepalive alone must notice.
        let mut host = start(manager(&store, "198.18.0.1"), false).await;
        // The host was frozen for longer than the TTL (a suspended VM): the store expired the lease.
        store.advance(TTL + Duration::from_secs(1));
        assert!(store.leases().is_empty());
        timeout(keepalive_interval(TTL) * 2, host.own.changed()).await.expect("noticed by a keepalive").unwrap();
        let again = host.own.borrow().clone();
        assert_eq!(again.key, host.first.key);
        assert_ne!(again.etcd_lease, host.first.etcd_lease, "a new TTL lease");
        assert!(calls(&store, Op::KeepAlive).iter().any(|c| !c.ok));
    }

    #[tokio::test(start_paused = true)]
    async fn keepalives_every_third_of_the_ttl_keep_the_lease() {
        let store = MemoryStore::with_config(CONFIG);
        let host = start(manager(&store, "198.18.0.1"), true).await;
        let started = Instant::now();
        // Ten TTLs pass, the store's clock in step with tokio's.
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            store.advance(Duration::from_secs(1));
        }
        // Half a second more, so the keepalive due at 60 s is not left to the order timers fire in.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(store.leases().len(), 1, "the lease outlived ten TTLs");
        assert_eq!(*host.own.borrow(), host.first, "never re-acquired");
        let keepalives: Vec<Duration> = calls(&store, Op::KeepAlive).iter().map(|c| c.at - started).collect();
        let expected: Vec<Duration> = (1..=30).map(|i| keepalive_interval(TTL) * i).collect();
        assert_eq!(keepalives, expected);

        // Without keepalives (the host stopped), the same store lets it expire within one TTL.
        drop(host);
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.advance(TTL);
        assert!(store.leases().is_empty());
    }

    #[tokio::test]
    async fn two_hosts_racing_for_one_subnet_one_wins_the_other_takes_another() {
        let store = MemoryStore::with_config(CONFIG);
        let wanted: SubnetKey = "10.244.7.0-24".parse().unwrap();
        // Both saw the subnet free (both listed) before either claimed it.
        store.hold_claims();
        let racers: Vec<_> = ["198.18.0.1", "198.18.0.2"]
            .map(|ip| {
                let manager = manager(&store, ip);
                tokio::spawn(async move { manager.acquire_once(&[wanted]).await })
            })
            .into_iter()
            .collect();
        while calls(&store, Op::List).len() < 2 {
            tokio::task::yield_now().await;
        }
        store.release_claims();
        let mut won = Vec::new();
        for racer in racers {
            won.push(racer.await.unwrap().expect("both end with a lease"));
        }
        assert_eq!(won.iter().filter(|l| l.key == wanted).count(), 1, "exactly one wins the subnet");
        assert_ne!(won[0].key, won[1].key);
        let claims = calls(&store, Op::Create);
        assert_eq!(claims.iter().filter(|c| !c.ok).count(), 1, "the loser's claim failed once, as a conflict");
        assert_eq!(claims.len(), 3);
        let mut stored: Vec<SubnetKey> = store.leases().iter().map(|l| l.key).collect();
        let mut keys: Vec<SubnetKey> = won.iter().map(|l| l.key).collect();
        stored.sort();
        keys.sort();
        assert_eq!(stored, keys);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_for_our_public_ip_is_honoured_and_never_expires() {
        let store = MemoryStore::with_config(CONFIG);
        // An operator reserved 10.244.77.0/24 for this host (weftctl lease reserve): no TTL.
        store.put("10.244.77.0-24", r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
        let manager = manager(&store, "198.18.0.1");
        let attrs = manager.attrs.clone();
        let host = start(manager, true).await;
        assert_eq!(host.first.key.to_string(), "10.244.77.0-24");
        assert!(host.first.is_reservation());
        assert_eq!(store.value("10.244.77.0-24"), Some(attrs.to_json()), "our backend data is written into it");

        // A day passes for the store; a minute of it with the keeper running.
        tokio::time::sleep(Duration::from_secs(60)).await;
        store.advance(Duration::from_secs(86_400));
        tokio::time::sleep(Duration::from_secs(60)).await;
        let held = store.leases();
        assert_eq!(held.len(), 1);
        assert!(held[0].is_reservation());
        assert_eq!(*host.own.borrow(), host.first);
        assert!(calls(&store, Op::KeepAlive).is_empty(), "a reservation has no TTL to keep");
    }

    #[tokio::test]
    async fn a_restart_renews_our_live_lease_in_place() {
        let store = MemoryStore::with_config(CONFIG);
        let (_shutdown_tx, mut shutdown) = watch::channel(false);
        let first = manager(&store, "198.18.0.1").acquire(&[], &mut shutdown).await.unwrap();
        let again = manager(&store, "198.18.0.1").acquire(&[], &mut shutdown).await.unwrap();
        assert_eq!((again.key, again.etcd_lease), (first.key, first.etcd_lease), "same subnet, same TTL lease");
        assert!(again.mod_revision > first.mod_revision);
        assert_eq!(calls(&store, Op::Create).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn acquiring_during_an_outage_retries_with_backoff() {
        let store = MemoryStore::with_config(CONFIG);
        store.fail_all();
        let manager = manager(&store, "198.18.0.1");
        let (_shutdown_tx, mut shutdown) = watch::channel(false);
        let acquiring = tokio::spawn(async move { manager.acquire(&[], &mut shutdown).await });
        let began = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        store.restore();
        let lease = acquiring.await.unwrap().expect("acquired once the store is back");
        assert_eq!(store.leases(), vec![lease]);
        // The listings that planned a claim: the claim check lists once more after the create.
        let lists: Vec<u128> = store
            .calls()
            .iter()
            .take_while(|c| c.op != Op::Create)
            .filter(|c| c.op == Op::List)
            .map(|c| (c.at - began).as_millis())
            .collect();
        assert_eq!(lists, [0, 200, 600, 1400, 3000], "200 ms doubling, then success");
    }

    /// The store's clock in step with tokio's (paused) one, so TTLs run down while hosts keep them alive.
    fn run_store_clock(store: &MemoryStore) -> tokio::task::JoinHandle<()> {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                store.advance(Duration::from_millis(100));
            }
        })
    }

    fn duplicates(manager: &LeaseManager<MemoryStore>) -> u64 {
        manager.metrics.duplicate_public_ip.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_weftd_with_our_public_ip_leaves_our_live_lease_alone_until_we_stop() {
        let store = MemoryStore::with_config(CONFIG);
        let clock = run_store_clock(&store);
        let first = manager_with_mac(&store, "198.18.0.1", "0e:00:00:00:00:01");
        let host = start(first.clone(), true).await;
        let (own_key, key) = (host.first.key, host.first.key.to_string());
        let value = store.value(&key);
        // Another host, configured with our public IP: its VXLAN device has another MAC.
        let second = manager_with_mac(&store, "198.18.0.1", "0e:00:00:00:00:02");
        let err = second.acquire_once(&[]).await.unwrap_err();
        assert!(matches!(&err, AcquireError::HeldElsewhere { key: k, .. } if k.to_string() == key), "{err}");
        assert!(err.to_string().contains("same --public-ip"), "{err}");
        assert_eq!(store.value(&key), value, "our lease is untouched");
        assert_eq!(store.leases().len(), 1, "and the second took nothing else");
        assert_eq!(duplicates(&second), 1);
        assert!(calls(&store, Op::Renew).is_empty(), "nobody wrote it");

        // Once we stop, nobody keeps it alive any more: the second takes it over after one keepalive interval.
        drop(host);
        let began = Instant::now();
        let taken = second.acquire_once(&[own_key]).await.expect("taken over");
        assert_eq!(taken.key.to_string(), key);
        assert!(began.elapsed() <= keepalive_interval(TTL) + lease_holder::HOLDER_SLACK + Duration::from_secs(1));
        assert_eq!(store.value(&key), Some(second.attrs.to_json()));
        clock.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_with_a_new_value_takes_the_lease_the_subnet_file_names_at_once() {
        let store = MemoryStore::with_config(CONFIG);
        let clock = run_store_clock(&store);
        let before = manager_with_mac(&store, "198.18.0.1", "0e:00:00:00:00:01");
        let host = start(before, true).await;
        let (own_key, key) = (host.first.key, host.first.key.to_string());
        drop(host);
        // The same host restarted with another value (a rotated key): its subnet file names the lease.
        let after = manager_with_mac(&store, "198.18.0.1", "0e:00:00:00:00:02");
        let began = Instant::now();
        let taken = after.acquire_once(&[own_key]).await.expect("taken");
        assert_eq!(taken.key.to_string(), key);
        assert!(began.elapsed() < TTL_POLL, "no keepalive interval watched: {:?}", began.elapsed());
        assert_eq!(store.value(&key), Some(after.attrs.to_json()));
        assert_eq!(duplicates(&after), 0);
        clock.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_lease_of_another_weftd_with_our_ip_is_not_released_for_a_reservation() {
        let store = MemoryStore::with_config(CONFIG);
        let clock = run_store_clock(&store);
        let running = manager_with_mac(&store, "198.18.0.1", "0e:00:00:00:00:01");
        let host = start(running, true).await;
        let key = host.first.key.to_string();
        // A reservation for that public IP, then a second weftd with it (another MAC) starts.
        store.put("10.244.77.0-24", r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#);
        let second = manager_with_mac(&store, "198.18.0.1", "0e:00:00:00:00:02");
        let err = second.acquire_once(&[]).await.unwrap_err();
        assert!(matches!(&err, AcquireError::HeldElsewhere { key: k, .. } if k.to_string() == key), "{err}");
        assert!(calls(&store, Op::Delete).is_empty(), "the running host's lease is not released as stale");
        assert_eq!(store.value("10.244.77.0-24").as_deref(), Some(r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#));
        drop(host);
        clock.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn our_own_value_written_by_someone_else_is_reported_on_both_sides_and_not_fought_over() {
        let store = MemoryStore::with_config(CONFIG);
        let clock = run_store_clock(&store);
        let first = manager(&store, "198.18.0.1");
        let host = start(first.clone(), true).await;
        let key = host.first.key.to_string();
        let renewals = calls(&store, Op::Renew).len();
        // A twin with our exact value (the VTEP MAC is derived from the public IP) renews our lease at its start.
        let twin = manager(&store, "198.18.0.1");
        let twin_host = start(twin.clone(), true).await;
        assert_eq!(twin_host.first.key, host.first.key, "it takes our lease for its own");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!((duplicates(&first), duplicates(&twin)), (1, 1), "each side reports once");
        // The twin's renewal, then one write of the same bytes by each side; nothing after that.
        assert_eq!(calls(&store, Op::Renew).len(), renewals + 3);
        assert_eq!(store.value(&key), Some(first.attrs.to_json()));
        assert!(calls(&store, Op::KeepAlive).iter().all(|c| c.ok), "the keepalives follow the lease");
        drop((host, twin_host));
        clock.abort();
    }

    #[tokio::test]
    async fn another_value_with_our_public_ip_is_reported_and_restored() {
        let store = MemoryStore::with_config(CONFIG);
        let first = manager(&store, "198.18.0.1");
        let mut host = start(first.clone(), true).await;
        let key = host.first.key.to_string();
        let twin = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#;
        store.put_with_ttl(&key, twin, TTL);
        timeout(Duration::from_secs(10), host.own.changed()).await.expect("restored in time").unwrap();
        assert_eq!(store.value(&key), Some(first.attrs.to_json()));
        assert_eq!(duplicates(&first), 1);
        assert_eq!(first.metrics.own_lease_restores.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_keeps_overwriting_us_gets_a_slowing_write_back() {
        let store = MemoryStore::with_config(CONFIG);
        let clock = run_store_clock(&store);
        let first = manager(&store, "198.18.0.1");
        let host = start(first.clone(), true).await;
        let key = host.first.key.to_string();
        let twin = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#;
        // Another weftd with our public IP that writes its value back every 100 ms, for 10 s.
        for _ in 0..100 {
            if store.value(&key).as_deref() != Some(twin) {
                store.put_with_ttl(&key, twin, TTL);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let restores = first.metrics.own_lease_restores.load(std::sync::atomic::Ordering::Relaxed);
        // At once, then after 0.5, 1, 2 and 4 s: the backoff never starts afresh while the overwrites go on.
        assert_eq!(restores, 5, "write-backs in 10 s");
        assert_eq!(duplicates(&first), 1, "reported once");
        drop(host);
        clock.abort();
    }

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
