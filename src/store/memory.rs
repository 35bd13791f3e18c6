//! An in-memory lease store with etcd's semantics, for tests without a server: one store-wide revision, TTL leases,
//! create-if-absent, compare-on-renew, watches that replay history, and compaction.
//!
//! Test controls do to it what the world does to etcd, without any sleeping: [`MemoryStore::advance`] moves the
//! store's clock so TTLs run out; [`MemoryStore::fail_all`] starts an outage (every call, and every running
//! watch, fails as unavailable until [`MemoryStore::restore`]); [`MemoryStore::compact`] drops history, so a
//! watch from an older revision fails as compacted; [`MemoryStore::put`] and [`MemoryStore::delete`] change keys
//! as another host or an operator would; [`MemoryStore::hold_claims`] makes claims wait, so two hosts can be made
//! to race for the same subnet. Every call through the trait is recorded with its (tokio) time, so a test can
//! assert how a caller backed off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Change, ChangeStream, LeaseStore, Listing, StoreError, StoredLease, TimeToLive, WatchBatch};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

const NAME: &str = "memory store";

/// What a simulated outage reports as its cause.
#[derive(Debug, thiserror::Error)]
#[error("simulated outage")]
pub struct SimulatedOutage;

/// A call made through [`LeaseStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    GetConfig,
    PutConfig,
    List,
    Create,
    Renew,
    KeepAlive,
    Delete,
    Reserve,
    Watch,
    TimeToLive,
}

#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub op: Op,
    pub at: Instant,
    pub ok: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    ttl_lease: i64,
    mod_revision: i64,
}

#[derive(Debug, Clone)]
struct Event {
    revision: i64,
    name: String,
    /// None for a delete.
    put: Option<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct TtlLease {
    ttl: Duration,
    expires: Duration,
}

#[derive(Debug)]
struct State {
    revision: i64,
    config: Option<String>,
    /// Keys below the subnets prefix.
    keys: BTreeMap<String, Entry>,
    ttl_leases: BTreeMap<i64, TtlLease>,
    next_ttl_lease: i64,
    /// The store's clock, moved only by `advance`.
    now: Duration,
    /// Changes from `history_start` on.
    history: Vec<Event>,
    history_start: i64,
    outage: bool,
    calls: Vec<Call>,
}

/// Cloning gives another handle on the same store, as two hosts talking to one etcd.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    /// Bumped on every change or control, waking watches.
    wake: Arc<watch::Sender<u64>>,
    /// While false, claims wait (see `hold_claims`).
    claims_open: Arc<watch::Sender<bool>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 1, as a fresh etcd.
    pub fn new() -> MemoryStore {
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                revision: 1,
                config: None,
                keys: BTreeMap::new(),
                ttl_leases: BTreeMap::new(),
                next_ttl_lease: 0x1000,
                now: Duration::ZERO,
                history: Vec::new(),
                history_start: 1,
                outage: false,
                calls: Vec::new(),
            })),
            wake: Arc::new(watch::channel(0).0),
            claims_open: Arc::new(watch::channel(true).0),
        }
    }

    pub fn with_config(text: &str) -> MemoryStore {
        let store = MemoryStore::new();
        store.lock().write_config(text);
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    /// Records a call; fails it while an outage lasts.
    fn call(&self, op: Op) -> Result<MutexGuard<'_, State>, StoreError> {
        let mut state = self.lock();
        let ok = !state.outage;
        state.calls.push(Call { op, at: Instant::now(), ok });
        if ok {
            Ok(state)
        } else {
            Err(outage())
        }
    }

    /// Marks the last recorded call as failed for a reason other than an outage.
    fn failed(mut state: MutexGuard<'_, State>, error: StoreError) -> StoreError {
        if let Some(call) = state.calls.last_mut() {
            call.ok = false;
        }
        error
    }

    // Test controls. None of them is a call: they work during an outage and are not recorded.

    /// Moves the store's clock: TTL leases not kept alive within their TTL expire, taking their keys with them.
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.now += by;
        let now = state.now;
        let expired: Vec<i64> = state.ttl_leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            state.ttl_leases.remove(id);
        }
        let names: Vec<String> =
            state.keys.iter().filter(|(_, e)| expired.contains(&e.ttl_lease)).map(|(n, _)| n.clone()).collect();
        if !names.is_empty() {
            // etcd deletes every key of a revoked lease in one revision.
            state.revision += 1;
            for name in names {
                state.remove(&name);
            }
        }
        drop(state);
        self.notify();
    }

    /// Starts an outage: every call fails as unavailable, and so does every running watch.
    pub fn fail_all(&self) {
        self.lock().outage = true;
        self.notify();
    }

    /// Ends an outage.
    pub fn restore(&self) {
        self.lock().outage = false;
        self.notify();
    }

    /// Drops all history before the current revision, which it returns: a watch from an older revision fails as
    /// compacted, and a running watch that has not caught up fails the same way.
    pub fn compact(&self) -> i64 {
        let mut state = self.lock();
        let revision = state.revision;
        state.history.retain(|e| e.revision >= revision);
        state.history_start = revision;
        drop(state);
        self.notify();
        revision
    }

    /// Writes `value` at subnets key `name` without a TTL, as an operator or another host would (any text, so
    /// malformed keys and values can be written too). Returns the new revision.
    pub fn put(&self, name: &str, value: &str) -> i64 {
        self.put_entry(name, value, 0)
    }

    /// Writes another host's lease: `value` at `name` under a new TTL lease of `ttl`. Returns the new revision.
    pub fn put_with_ttl(&self, name: &str, value: &str, ttl: Duration) -> i64 {
        let id = self.lock().grant(ttl);
        self.put_entry(name, value, id)
    }

    fn put_entry(&self, name: &str, value: &str, ttl_lease: i64) -> i64 {
        let revision = self.lock().write(name, value.to_string(), ttl_lease);
        self.notify();
        revision
    }

    /// Deletes subnets key `name` as an operator would. Returns whether it existed.
    pub fn delete(&self, name: &str) -> bool {
        let existed = self.lock().delete(name);
        self.notify();
        existed
    }

    pub fn set_config(&self, text: &str) {
        self.lock().write_config(text);
        self.notify();
    }

    /// Makes every claim (create-if-absent) wait until `release_claims`, after the caller has listed: two hosts
    /// then both see a subnet free and race for it.
    pub fn hold_claims(&self) {
        self.claims_open.send_replace(false);
    }

    pub fn release_claims(&self) {
        self.claims_open.send_replace(true);
    }

    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Every lease as stored now (malformed ones as a listing keeps them), without making a call.
    pub fn leases(&self) -> Vec<Lease> {
        self.lock().listing().leases
    }

    /// The raw value at subnets key `name`.
    pub fn value(&self, name: &str) -> Option<String> {
        self.lock().keys.get(name).map(|e| e.value.clone())
    }

    /// Every call made so far through the trait.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }
}

fn outage() -> StoreError {
    StoreError::Unavailable { store: NAME.to_string(), source: Box::new(SimulatedOutage) }
}

/// etcd grants whole seconds, at least one.
fn granted(ttl: Duration) -> Duration {
    Duration::from_secs(ttl.as_secs().max(1))
}

impl State {
    fn grant(&mut self, ttl: Duration) -> i64 {
        let id = self.next_ttl_lease;
        self.next_ttl_lease += 1;
        let ttl = granted(ttl);
        self.ttl_leases.insert(id, TtlLease { ttl, expires: self.now + ttl });
        id
    }

    fn write_config(&mut self, text: &str) {
        self.revision += 1;
        self.config = Some(text.to_string());
    }

    /// A put in a revision of its own.
    fn write(&mut self, name: &str, value: String, ttl_lease: i64) -> i64 {
        self.revision += 1;
        let entry = Entry { value, ttl_lease, mod_revision: self.revision };
        self.history.push(Event { revision: self.revision, name: name.to_string(), put: Some(entry.clone()) });
        self.keys.insert(name.to_string(), entry);
        self.revision
    }

    /// A delete in a revision of its own.
    fn delete(&mut self, name: &str) -> bool {
        if !self.keys.contains_key(name) {
            return false;
        }
        self.revision += 1;
        self.remove(name);
        true
    }

    /// Removes a key in the current revision.
    fn remove(&mut self, name: &str) {
        self.keys.remove(name);
        self.history.push(Event { revision: self.revision, name: name.to_string(), put: None });
    }

    fn listing(&self) -> Listing {
        let mut listing = Listing { revision: self.revision, ..Default::default() };
        for (name, entry) in &self.keys {
            listing.add(stored(name, entry));
        }
        listing
    }
}

fn stored<'a>(name: &'a str, entry: &'a Entry) -> StoredLease<'a> {
    StoredLease {
        path: name,
        name,
        value: entry.value.as_bytes(),
        ttl_lease: entry.ttl_lease,
        mod_revision: entry.mod_revision,
    }
}

impl LeaseStore for MemoryStore {
    type Changes = MemoryChanges;

    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        Ok(self.call(Op::GetConfig)?.config.clone())
    }

    async fn put_config(&self, text: &str) -> Result<(), StoreError> {
        self.call(Op::PutConfig)?.write_config(text);
        self.notify();
        Ok(())
    }

    async fn list_leases(&self) -> Result<Listing, StoreError> {
        Ok(self.call(Op::List)?.listing())
    }

    async fn create_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        let mut open = self.claims_open.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = open.wait_for(|open| *open).await;
        let mut state = self.call(Op::Create)?;
        let name = key.to_string();
        if state.keys.contains_key(&name) {
            return Err(MemoryStore::failed(state, StoreError::Conflict { key: *key }));
        }
        let id = state.grant(ttl);
        let revision = state.write(&name, attrs.to_json(), id);
        drop(state);
        self.notify();
        Ok(Lease { key: *key, attrs: attrs.clone().into(), etcd_lease: id, mod_revision: revision })
    }

    async fn renew_lease(&self, lease: &Lease, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        let mut state = self.call(Op::Renew)?;
        let now = state.now;
        let ttl_lease = if lease.is_reservation() {
            0
        } else if let Some(live) = state.ttl_leases.get_mut(&lease.etcd_lease) {
            live.expires = now + live.ttl;
            lease.etcd_lease
        } else {
            state.grant(ttl)
        };
        let name = lease.key.to_string();
        if state.keys.get(&name).map(|e| e.mod_revision) != Some(lease.mod_revision) {
            return Err(MemoryStore::failed(state, StoreError::Conflict { key: lease.key }));
        }
        let revision = state.write(&name, attrs.to_json(), ttl_lease);
        drop(state);
        self.notify();
        Ok(Lease { key: lease.key, attrs: attrs.clone().into(), etcd_lease: ttl_lease, mod_revision: revision })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, StoreError> {
        let mut state = self.call(Op::KeepAlive)?;
        let now = state.now;
        match state.ttl_leases.get_mut(&lease.etcd_lease) {
            Some(live) => {
                live.expires = now + live.ttl;
                Ok(live.ttl)
            }
            None => Err(MemoryStore::failed(state, StoreError::NotFound { key: lease.key })),
        }
    }

    async fn time_to_live(&self, lease: &Lease) -> Result<Option<TimeToLive>, StoreError> {
        let state = self.call(Op::TimeToLive)?;
        let now = state.now;
        Ok(state.ttl_leases.get(&lease.etcd_lease).filter(|_| !lease.is_reservation()).map(|live| TimeToLive {
            // Whole seconds, rounded up, as etcd answers.
            remaining: Duration::from_secs((live.expires.saturating_sub(now)).as_secs_f64().ceil() as u64),
            granted: live.ttl,
        }))
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), StoreError> {
        let mut state = self.call(Op::Delete)?;
        if !state.delete(&key.to_string()) {
            return Err(MemoryStore::failed(state, StoreError::NotFound { key: *key }));
        }
        drop(state);
        self.notify();
        Ok(())
    }

    async fn put_reservation(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), StoreError> {
        self.call(Op::Reserve)?.write(&key.to_string(), attrs.to_json(), 0);
        self.notify();
        Ok(())
    }

    async fn watch_changes(&self, revision: i64) -> Result<MemoryChanges, StoreError> {
        let state = self.call(Op::Watch)?;
        if revision < state.history_start {
            let compact_revision = state.history_start;
            return Err(MemoryStore::failed(
                state,
                StoreError::Compacted { store: NAME.to_string(), compact_revision },
            ));
        }
        drop(state);
        Ok(MemoryChanges { store: self.clone(), wake: self.wake.subscribe(), next: revision, broken: false })
    }
}

/// A watch on a [`MemoryStore`].
pub struct MemoryChanges {
    store: MemoryStore,
    wake: watch::Receiver<u64>,
    /// The first revision not yet yielded.
    next: i64,
    /// Set once an outage broke it: like a dropped connection, it never recovers.
    broken: bool,
}

impl ChangeStream for MemoryChanges {
    async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        loop {
            // Seen before looking, so a change made after the look wakes us.
            self.wake.borrow_and_update();
            {
                let state = self.store.lock();
                if self.broken {
                    return Err(StoreError::WatchClosed { store: NAME.to_string() });
                }
                if state.outage {
                    self.broken = true;
                    return Err(outage());
                }
                if self.next < state.history_start {
                    return Err(StoreError::Compacted {
                        store: NAME.to_string(),
                        compact_revision: state.history_start,
                    });
                }
                let events: Vec<&Event> = state.history.iter().filter(|e| e.revision >= self.next).collect();
                if !events.is_empty() {
                    let mut changes = Vec::new();
                    for event in &events {
                        match &event.put {
                            Some(entry) => changes.extend(Change::put(stored(&event.name, entry))),
                            None => changes.extend(Change::delete(&event.name)),
                        }
                    }
                    self.next = state.revision + 1;
                    return Ok(WatchBatch { changes, revision: state.revision });
                }
            }
            if self.wake.changed().await.is_err() {
                return Err(StoreError::WatchClosed { store: NAME.to_string() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_VALUE: &str = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}"#;

    fn key(text: &str) -> SubnetKey {
        text.parse().unwrap()
    }

    fn attrs() -> LeaseAttrs {
        LeaseAttrs::from_json(HOST_VALUE).unwrap()
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_claim_is_create_if_absent_and_written_as_flannel_writes_it() {
        let store = MemoryStore::new();
        let lease = store.create_lease(&key("10.244.1.0-24"), &attrs(), TTL).await.unwrap();
        assert_eq!(store.value("10.244.1.0-24").as_deref(), Some(HOST_VALUE), "byte for byte");
        assert!(!lease.is_reservation());
        assert_eq!(lease.mod_revision, store.revision());
        let again = store.create_lease(&key("10.244.1.0-24"), &attrs(), TTL).await;
        assert!(matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
        assert_eq!(store.leases(), vec![lease]);
    }

    #[tokio::test]
    async fn a_renewal_only_succeeds_on_the_version_it_read() {
        let store = MemoryStore::new();
        let lease = store.create_lease(&key("10.244.1.0-24"), &attrs(), TTL).await.unwrap();
        let renewed = store.renew_lease(&lease, &attrs(), TTL).await.unwrap();
        assert_eq!(renewed.etcd_lease, lease.etcd_lease, "a live TTL lease is kept");
        // `lease` is now stale: someone (we ourselves) wrote since.
        let stale = store.renew_lease(&lease, &attrs(), TTL).await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
        store.delete("10.244.1.0-24");
        let vanished = store.renew_lease(&renewed, &attrs(), TTL).await;
        assert!(matches!(vanished, Err(StoreError::Conflict { .. })), "{vanished:?}");
    }

    #[tokio::test]
    async fn ttl_leases_expire_unless_kept_alive_and_reservations_never_do() {
        let store = MemoryStore::new();
        let kept = store.create_lease(&key("10.244.1.0-24"), &attrs(), TTL).await.unwrap();
        let left = store.create_lease(&key("10.244.2.0-24"), &attrs(), TTL).await.unwrap();
        store.put_reservation(&key("10.244.3.0-24"), &attrs()).await.unwrap();
        store.advance(TTL - Duration::from_secs(1));
        assert_eq!(store.keep_alive(&kept).await.unwrap(), TTL);
        store.advance(Duration::from_secs(1));
        let names: Vec<String> = store.leases().iter().map(|l| l.key.to_string()).collect();
        assert_eq!(names, ["10.244.1.0-24", "10.244.3.0-24"]);
        let expired = store.keep_alive(&left).await;
        assert!(matches!(expired, Err(StoreError::NotFound { .. })), "{expired:?}");
        store.advance(Duration::from_secs(365 * 86_400));
        let names: Vec<String> = store.leases().iter().map(|l| l.key.to_string()).collect();
        assert_eq!(names, ["10.244.3.0-24"]);
    }

    #[tokio::test]
    async fn a_watch_replays_history_and_fails_once_it_is_compacted() {
        let store = MemoryStore::new();
        let start = store.revision() + 1;
        store.put("10.244.1.0-24", HOST_VALUE);
        store.put("garbage", HOST_VALUE);
        store.delete("10.244.1.0-24");
        store.delete("garbage");
        let mut watch = store.watch_changes(start).await.unwrap();
        let batch = watch.next().await.unwrap();
        assert_eq!(batch.revision, store.revision());
        let kinds: Vec<&str> = batch
            .changes
            .iter()
            .map(|c| match c {
                Change::Put(_) => "put",
                Change::Delete(_) => "delete",
                Change::Problem(_) => "problem",
                Change::DeleteUnparsable(_) => "delete unparsable",
            })
            .collect();
        assert_eq!(kinds, ["put", "problem", "delete", "delete unparsable"]);

        let compacted = store.compact();
        let old = store.watch_changes(start).await;
        assert!(matches!(old, Err(StoreError::Compacted { compact_revision, .. }) if compact_revision == compacted));
        // A watch that had caught up is not affected.
        store.put("10.244.2.0-24", HOST_VALUE);
        assert_eq!(watch.next().await.unwrap().changes.len(), 1);
    }

    #[tokio::test]
    async fn an_outage_fails_every_call_and_breaks_running_watches_until_restored() {
        let store = MemoryStore::with_config("{}");
        let mut watch = store.watch_changes(store.revision() + 1).await.unwrap();
        store.fail_all();
        assert!(matches!(store.get_config().await, Err(StoreError::Unavailable { .. })));
        assert!(matches!(store.list_leases().await, Err(StoreError::Unavailable { .. })));
        assert!(matches!(watch.next().await, Err(StoreError::Unavailable { .. })));
        store.restore();
        assert_eq!(store.get_config().await.unwrap().as_deref(), Some("{}"));
        assert!(matches!(watch.next().await, Err(StoreError::WatchClosed { .. })), "a broken watch stays broken");
        let ok: Vec<bool> = store.calls().iter().map(|c| c.ok).collect();
        assert_eq!(ok, [true, false, false, true]);
    }
}
