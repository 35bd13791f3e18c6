//! The lease store seam: where the network config and the subnet leases live.
//!
//! Everything above it (the peer-set watcher in `registry`, the lease manager in `own_lease`, weftd and weftctl)
//! works against [`LeaseStore`], so the same code runs over etcd ([`etcd::EtcdStore`]) in production and over an
//! in-memory store ([`memory::MemoryStore`]) in unit tests, where an outage, a compaction or a race with another
//! host is one call away.
//!
//! The model is etcd's, which flannel's schema assumes: every change bumps one store-wide revision; a listing is a
//! snapshot at a revision; a watch replays every change after a revision unless that history was compacted; a
//! lease either has a TTL (kept by keepalives) or is a reservation that never expires. Another store (e.g. the
//! Kubernetes API: resourceVersion for revision, "410 Gone" for compaction) implements the same trait; the
//! resync logic on top ([`LeaseFeed`]) is written once for all of them.

use std::future::Future;
use std::time::Duration;

use crate::lease::{InvalidAttrs, InvalidKey, Lease, LeaseAttrs, SubnetKey};

pub mod any;
pub mod etcd;
pub mod etcd_tls;
mod feed;
pub mod kube_node;
pub mod kubernetes;
pub mod memory;

pub use feed::{LeaseFeed, ResyncCause, WatchEvent};

/// The cause of a store being unavailable, as the store's client reported it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, or refused to talk (the client's error says which).
    #[error("{store}: {source}")]
    Unavailable {
        store: String,
        #[source]
        source: BoxError,
    },
    #[error("{store}: no answer within {timeout:?}")]
    Timeout { store: String, timeout: Duration },
    #[error("{store}: the watch stream was closed")]
    WatchClosed { store: String },
    /// A watch asked for history the store no longer keeps: list again.
    #[error("{store}: the history before revision {compact_revision} was compacted")]
    Compacted { store: String, compact_revision: i64 },
    /// A lost race: the key was created, changed or deleted by someone else since we looked.
    #[error("lease {key} was created, changed or deleted by someone else meanwhile")]
    Conflict { key: SubnetKey },
    #[error("no lease {key}")]
    NotFound { key: SubnetKey },
    /// The store answered, but not with what its protocol promises.
    #[error("{store}: malformed answer: {what}")]
    Malformed { store: String, what: &'static str },
    #[error("invalid etcd endpoint {0:?}: expected a URL such as http://127.0.0.1:2379")]
    BadEndpoint(String),
    /// The TLS files or endpoints cannot work together; nothing was sent.
    #[error(transparent)]
    TlsSetup(#[from] etcd_tls::TlsSetupError),
    /// The store was reached, but the TLS handshake or the authentication failed; `why` says what to check.
    /// The Kubernetes store's own failures (a missing pod CIDR, a write it cannot do, its client setup).
    #[error(transparent)]
    Kube(Box<kubernetes::KubeStoreError>),
    #[error("{store}: {}: {source}", why.advice())]
    Rejected {
        store: String,
        why: etcd_tls::Rejection,
        #[source]
        source: BoxError,
    },
}

impl From<kubernetes::KubeStoreError> for StoreError {
    /// Boxed: the Kubernetes client's errors are large, and every store call returns a `StoreError`.
    fn from(e: kubernetes::KubeStoreError) -> StoreError {
        StoreError::Kube(Box::new(e))
    }
}

/// A key or value below the subnets prefix that is not a lease. Never fatal: it is reported to the operator, and a
/// key whose value is bad still holds its subnet (see [`Listing`]).
#[derive(Debug, thiserror::Error)]
pub enum LeaseProblem {
    #[error("ignoring {path}: {reason}")]
    BadKey { path: String, name: String, reason: InvalidKey },
    #[error("lease {path}: {reason} (value {value:?})")]
    BadValue { path: String, key: SubnetKey, value: String, reason: InvalidAttrs },
    /// A Node that carries flannel's annotations but cannot be a peer (`path` is `node/<name>`).
    #[error("ignoring {problem}")]
    BadNode { path: String, problem: kube_node::NodeProblem },
}

/// One key/value pair as a store holds it below the subnets prefix.
#[derive(Debug, Clone, Copy)]
pub struct StoredLease<'a> {
    /// The full key, for messages (`/coreos.com/network/subnets/10.244.3.0-24`).
    pub path: &'a str,
    /// The key below the subnets prefix (`10.244.3.0-24`).
    pub name: &'a str,
    pub value: &'a [u8],
    /// The TTL lease the key is attached to; 0 for a reservation.
    pub ttl_lease: i64,
    pub mod_revision: i64,
}

impl StoredLease<'_> {
    /// The lease, and what is wrong with it if anything. A key whose value is malformed still holds its subnet:
    /// it comes back with empty attributes, so the subnet is never handed out twice, and with no public IP it is
    /// never programmed as a peer.
    pub fn decode(&self) -> (Option<Lease>, Option<LeaseProblem>) {
        let key: SubnetKey = match self.name.parse() {
            Ok(key) => key,
            Err(reason) => {
                let problem = LeaseProblem::BadKey { path: self.path.to_string(), name: self.name.to_string(), reason };
                return (None, Some(problem));
            }
        };
        let text = String::from_utf8_lossy(self.value);
        let lease = |attrs: LeaseAttrs| Lease {
            key,
            attrs: attrs.into(),
            etcd_lease: self.ttl_lease,
            mod_revision: self.mod_revision,
        };
        match LeaseAttrs::from_json(&text) {
            Ok(attrs) => (Some(lease(attrs)), None),
            Err(reason) => (
                Some(lease(LeaseAttrs::default())),
                Some(LeaseProblem::BadValue { path: self.path.to_string(), key, value: text.into_owned(), reason }),
            ),
        }
    }
}

/// Every lease below the subnets prefix at one revision.
#[derive(Debug, Default)]
pub struct Listing {
    pub leases: Vec<Lease>,
    /// Keys or values that could not be parsed; shown to the operator, never fatal.
    pub problems: Vec<LeaseProblem>,
    pub revision: i64,
}

impl Listing {
    pub fn add(&mut self, stored: StoredLease<'_>) {
        let (lease, problem) = stored.decode();
        self.leases.extend(lease);
        self.problems.extend(problem);
    }
}

/// One change below the subnets prefix.
#[derive(Debug)]
pub enum Change {
    Put(Lease),
    Delete(SubnetKey),
    /// A key or value that could not be parsed (a bad value also comes as a `Put` that holds the subnet).
    Problem(LeaseProblem),
    /// A key that never was a lease (it did not parse) was deleted: forget its problem.
    DeleteUnparsable(String),
}

impl Change {
    /// The changes a put of `stored` makes.
    pub fn put(stored: StoredLease<'_>) -> impl Iterator<Item = Change> {
        let (lease, problem) = stored.decode();
        lease.map(Change::Put).into_iter().chain(problem.map(Change::Problem))
    }

    /// The change a delete of `name` makes.
    pub fn delete(name: &str) -> Option<Change> {
        Some(name.parse().map_or_else(|_| Change::DeleteUnparsable(name.to_string()), Change::Delete))
    }
}

/// Changes that happened up to and including `revision`, in order.
#[derive(Debug)]
pub struct WatchBatch {
    pub changes: Vec<Change>,
    pub revision: i64,
}

/// Where leases and the network config live. Every call is one request to the store (or one transaction), bounded
/// in time; none retries, so callers decide how to back off. The futures are `Send`, so callers can run them in
/// `tokio::spawn`ed tasks.
pub trait LeaseStore: Clone + Send + Sync + 'static {
    type Changes: ChangeStream;

    /// The network config text, or None when there is none.
    fn get_config(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    fn put_config(&self, text: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn list_leases(&self) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// Claims `key` with a TTL only if nobody holds it; `Conflict` when someone does (a lost race).
    fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Writes new attributes into a lease we hold, keeping its TTL lease while that lives (else taking a new one
    /// for `ttl`), or keeping it a reservation. Only if nobody changed it since `lease` was read: `Conflict`
    /// when it changed or vanished meanwhile.
    fn renew_lease(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Refreshes the TTL of `lease` once and returns the TTL it now has; `NotFound` when its TTL ran out or was
    /// revoked (so its key is gone too). A reservation has no TTL to refresh: do not call this for one.
    fn keep_alive(&self, lease: &Lease) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// How long the TTL lease `lease` is attached to has left, and what it was granted; None for a reservation or
    /// when it ran out. Read-only: unlike [`LeaseStore::keep_alive`], it never refreshes anything, so watching it
    /// shows whether someone else keeps the lease alive.
    fn time_to_live(&self, lease: &Lease) -> impl Future<Output = Result<Option<TimeToLive>, StoreError>> + Send;

    /// Deletes the lease for `key`; `NotFound` when there is none.
    fn delete_lease(&self, key: &SubnetKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes a reservation: a lease without TTL, which never expires (over whatever the key held).
    fn put_reservation(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The raw watch: every change from `revision` (inclusive) on. Fails with `Compacted` when that history is
    /// gone. Consumers use [`LeaseStore::watch`], which turns compaction and reconnects into a fresh listing.
    fn watch_changes(&self, revision: i64) -> impl Future<Output = Result<Self::Changes, StoreError>> + Send;

    /// The one subnet this host may hold, where the store assigns it (a Kubernetes Node's pod CIDR); None where
    /// hosts claim free subnets themselves (etcd).
    fn assigned_subnet(&self) -> impl Future<Output = Result<Option<SubnetKey>, StoreError>> + Send {
        std::future::ready(Ok(None))
    }

    /// Follows the leases after `seen_revision` (a listing's revision): changes in order, and a full fresh
    /// listing whenever the history is compacted or the watch broke.
    fn watch(&self, seen_revision: i64) -> LeaseFeed<Self> {
        LeaseFeed::new(self.clone(), seen_revision)
    }
}

/// A TTL lease's remaining and granted time, in the store's whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeToLive {
    pub remaining: Duration,
    pub granted: Duration,
}

/// A running raw watch.
pub trait ChangeStream: Send + 'static {
    /// The next changes. An error ends the watch: `Compacted` when it fell behind the store's history,
    /// `WatchClosed` or `Unavailable` when the connection went away.
    fn next(&mut self) -> impl Future<Output = Result<WatchBatch, StoreError>> + Send;
}
