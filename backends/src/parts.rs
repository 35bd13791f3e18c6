//! The desired state as a base and one part per peer, so that a change of one peer costs one peer's work.
//!
//! [`DesiredIndex`] holds the union of the base ([`Backend::base`](crate::backend::Backend::base)) and every
//! peer's part ([`Backend::peer`](crate::backend::Backend::peer)), which is exactly what
//! [`Backend::desired`](crate::backend::Backend::desired) gives, and remembers what each part was derived from.
//! Replacing or removing a part records the objects it touched in a [`Touched`]: their values before (what the
//! kernel holds, when the last pass left it equal to the desired state) and their keys, so that
//! [`Touched::ops`] diffs only those objects instead of the whole state.
//!
//! A part's objects are not stored: derivation is a pure function of the part's source (a peer's lease), so
//! removing a part derives it again to learn what it brought. At 10,000 peers the stored keys cost more than the
//! objects themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::{Desired, SkippedPeer};
use crate::dense;
use crate::diff::{diff, Op};
use crate::forwarding::ForwardingTable;
use crate::kernel::Drift;
use crate::model::{Address, DeviceName, KernelState, MacAddr};
use crate::rules::RuleSet;

/// The identity of one object of a part, as the diff keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Address(Address),
    Route(IpNetwork),
    Neighbour(DeviceName, IpAddr),
    Fdb(DeviceName, MacAddr),
    /// A forwarding-table entry (userspace data planes).
    Forward(IpNetwork),
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectKey::Address(a) => write!(f, "address {} dev {}", a.addr, a.device),
            ObjectKey::Route(dst) => write!(f, "route {dst}"),
            ObjectKey::Neighbour(device, ip) => write!(f, "neighbour {ip} dev {device}"),
            ObjectKey::Fdb(device, mac) => write!(f, "fdb entry {mac} dev {device}"),
            ObjectKey::Forward(subnet) => write!(f, "forwarding entry {subnet}"),
        }
    }
}

impl ObjectKey {
    /// The object `op` changes; None for a device's operations (no part holds a device).
    pub fn of_op(op: &Op) -> Option<ObjectKey> {
        match op {
            Op::AddAddress(a) | Op::DeleteAddress(a) => Some(ObjectKey::Address(a.clone())),
            Op::ReplaceNeighbour(n) | Op::DeleteNeighbour(n) => Some(ObjectKey::Neighbour(n.device.clone(), n.ip)),
            Op::ReplaceFdb(e) | Op::DeleteFdb(e) => Some(ObjectKey::Fdb(e.device.clone(), e.mac)),
            Op::ReplaceRoute(r) | Op::DeleteRoute(r) => Some(ObjectKey::Route(r.dst)),
            Op::CreateLink(_) | Op::UpdateLink(_) | Op::DeleteLink(_) => None,
        }
    }

    /// The object a deletion notification names, when it names one a part can hold (a device's deletion takes
    /// everything on it along, so it names no single object).
    pub fn of_drift(drift: &Drift) -> Option<ObjectKey> {
        match drift {
            Drift::RouteDeleted { dst, table: weft_netlink::route::MAIN_TABLE } => Some(ObjectKey::Route(*dst)),
            Drift::NeighbourDeleted { device, ip } => Some(ObjectKey::Neighbour(device.into(), *ip)),
            Drift::FdbDeleted { device, mac } => Some(ObjectKey::Fdb(device.into(), *mac)),
            _ => None,
        }
    }
}

/// Why a part could not be taken in: the index no longer matches what a full derivation would give, so the
/// caller runs a full pass instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("{object} is wanted by two parts of the desired state")]
    Collision { object: ObjectKey },
    #[error("a peer's part carries firewall tables or devices; only our own lease's base may")]
    NotPerPeer,
}

/// What one part was derived from (`source`, at a store revision), and what the backend skipped of it.
#[derive(Debug, Clone)]
struct Part<S> {
    revision: i64,
    source: S,
    /// Nearly every part skips nothing, and the index holds a part per peer: a thin pointer, 8 bytes, where an
    /// empty `Vec` is 24.
    #[allow(clippy::box_collection)]
    skipped: Option<Box<Vec<SkippedPeer>>>,
}

/// The desired state, kept as the union of a base and per-peer parts (keyed by `K`, the peer's lease key; `S`
/// is what a part is derived from, which derives it again when it is removed).
#[derive(Debug, Clone)]
pub struct DesiredIndex<K, S> {
    /// Every kernel object wanted: the base's and every part's.
    pub state: KernelState,
    /// The base's firewall tables (parts have none).
    pub rules: RuleSet,
    /// The forwarding table, for a userspace data plane: the base's (empty) and every part's entries.
    pub forwarding: Option<ForwardingTable>,
    base_skipped: Vec<SkippedPeer>,
    parts: BTreeMap<K, Part<S>>,
    /// The keys of the parts that skipped something, so listing what was skipped costs what it is.
    skipping: BTreeSet<K>,
}

/// The objects a change touched: their values before it, and their keys.
#[derive(Debug, Default)]
pub struct Touched {
    /// The touched objects as they were (and, after a pass that left the kernel equal to the desired state, as
    /// the kernel holds them).
    pub before: KernelState,
    pub keys: BTreeSet<ObjectKey>,
    /// The keys a notification said were deleted.
    gone: BTreeSet<ObjectKey>,
}

impl Touched {
    /// Records that `key` is absent from the kernel whatever the index says (a notification said it was
    /// deleted), so the diff puts it back if it is wanted.
    pub fn gone(&mut self, key: ObjectKey) {
        remove_object(&mut self.before, &key);
        self.keys.insert(key.clone());
        self.gone.insert(key);
    }

    /// Whether `op` touches one of the objects a notification said were deleted (see [`gone`](Self::gone)): a
    /// repair of drift, not a change of the leases.
    pub fn repairs(&self, op: &Op) -> bool {
        ObjectKey::of_op(op).is_some_and(|key| self.gone.contains(&key))
    }

    /// Whether a forwarding entry changed (the data plane needs the new table).
    pub fn forwarding_changed(&self) -> bool {
        self.keys.iter().any(|k| matches!(k, ObjectKey::Forward(_)))
    }

    /// The kernel operations that turn the touched objects from what they were into what `index` wants now:
    /// the full diff, restricted to these keys.
    pub fn ops<K: Ord, S>(&self, index: &DesiredIndex<K, S>) -> Vec<Op> {
        let mut after = KernelState::default();
        for key in &self.keys {
            copy_object(&index.state, &mut after, key);
        }
        diff(&after, &self.before)
    }
}

fn copy_object(from: &KernelState, to: &mut KernelState, key: &ObjectKey) {
    match key {
        ObjectKey::Address(a) => {
            if from.addresses.contains(a) {
                to.add_address(a.clone());
            }
        }
        ObjectKey::Route(dst) => {
            if let Some(r) = from.routes.get(dst) {
                to.add_route(r.clone());
            }
        }
        ObjectKey::Neighbour(device, ip) => {
            if let Some(n) = from.neighbours.get(&(device.clone(), *ip)) {
                to.add_neighbour(n.clone());
            }
        }
        ObjectKey::Fdb(device, mac) => {
            if let Some(e) = from.fdb.get(&(device.clone(), *mac)) {
                to.add_fdb(e.clone());
            }
        }
        ObjectKey::Forward(_) => {}
    }
}

fn remove_object(state: &mut KernelState, key: &ObjectKey) {
    match key {
        ObjectKey::Address(a) => {
            state.addresses.remove(a);
        }
        ObjectKey::Route(dst) => {
            state.routes.remove(dst);
        }
        ObjectKey::Neighbour(device, ip) => {
            state.neighbours.remove(&(device.clone(), *ip));
        }
        ObjectKey::Fdb(device, mac) => {
            state.fdb.remove(&(device.clone(), *mac));
        }
        ObjectKey::Forward(_) => {}
    }
}

/// The keys of a part's objects, in the order the diff would meet them.
fn object_keys(part: &Desired) -> Vec<ObjectKey> {
    let s = &part.state;
    let mut keys: Vec<ObjectKey> = s.addresses.iter().cloned().map(ObjectKey::Address).collect();
    keys.extend(s.neighbours.keys().map(|(d, ip)| ObjectKey::Neighbour(d.clone(), *ip)));
    keys.extend(s.fdb.keys().map(|(d, mac)| ObjectKey::Fdb(d.clone(), *mac)));
    keys.extend(s.routes.keys().map(|dst| ObjectKey::Route(*dst)));
    keys.extend(part.forwarding.iter().flat_map(|f| f.entries.keys().map(|k| ObjectKey::Forward(*k))));
    keys
}

impl<K: Ord + Clone, S> DesiredIndex<K, S> {
    /// An index holding only `base`.
    pub fn new(base: Desired) -> DesiredIndex<K, S> {
        let Desired { state, rules, forwarding, skipped } = base;
        DesiredIndex {
            state,
            rules,
            forwarding,
            base_skipped: skipped,
            parts: BTreeMap::new(),
            skipping: BTreeSet::new(),
        }
    }

    /// The store revision the part under `key` was derived from; None when there is no such part.
    pub fn revision(&self, key: &K) -> Option<i64> {
        self.parts.get(key).map(|p| p.revision)
    }

    /// Whether the backend skipped something of the part under `key`.
    pub fn has_skipped(&self, key: &K) -> bool {
        self.skipping.contains(key)
    }

    /// The store revision each part was derived from, in key order.
    pub fn revisions(&self) -> impl Iterator<Item = (&K, i64)> {
        self.parts.iter().map(|(k, p)| (k, p.revision))
    }

    /// What the backend skipped: the base's (no peer's) and each part's, with its key.
    pub fn skipped(&self) -> impl Iterator<Item = (Option<&K>, &SkippedPeer)> {
        let base = self.base_skipped.iter().map(|s| (None, s));
        let parts = self.skipping.iter().filter_map(|k| self.parts.get_key_value(k));
        base.chain(parts.flat_map(|(k, p)| p.skipped.iter().flat_map(|s| s.iter()).map(move |s| (Some(k), s))))
    }

    /// Takes a part out: its objects, which `derive` gives again from the part's source (as the part was put
    /// in), leave the desired state and are recorded in `touched` as they were.
    pub fn remove(&mut self, key: &K, touched: &mut Touched, derive: impl FnOnce(&K, &S) -> Desired) {
        let Some(part) = self.parts.remove(key) else { return };
        self.skipping.remove(key);
        for object in object_keys(&derive(key, &part.source)) {
            match &object {
                ObjectKey::Forward(subnet) => {
                    if let Some(table) = &mut self.forwarding {
                        table.entries.remove(subnet);
                        table.keys.remove(subnet);
                    }
                }
                other => {
                    copy_object(&self.state, &mut touched.before, other);
                    remove_object(&mut self.state, other);
                }
            }
            touched.keys.insert(object);
        }
    }

    /// Puts a part in (after [`remove`](Self::remove) of the one it replaces): `part` is what the backend
    /// derived from `source`, and must be what it derives from it every time. Refuses a part whose objects
    /// another part or the base already holds, leaving the index in an unspecified state: the caller rebuilds
    /// it with a full pass.
    pub fn insert(
        &mut self,
        key: K,
        revision: i64,
        source: S,
        part: Desired,
        touched: &mut Touched,
    ) -> Result<(), PartError> {
        touched.keys.extend(self.put(key, revision, source, part)?);
        Ok(())
    }

    /// [`insert`](Self::insert) while building the index afresh (a full pass), which diffs the whole state and
    /// so records nothing.
    pub fn build(&mut self, key: K, revision: i64, source: S, part: Desired) -> Result<(), PartError> {
        self.put(key, revision, source, part).map(drop)
    }

    /// Puts a part in; returns the keys of its objects.
    fn put(&mut self, key: K, revision: i64, source: S, part: Desired) -> Result<Vec<ObjectKey>, PartError> {
        if !part.rules.is_empty() || !part.state.links.is_empty() {
            return Err(PartError::NotPerPeer);
        }
        let objects = object_keys(&part);
        for object in &objects {
            let taken = match object {
                ObjectKey::Address(a) => self.state.addresses.contains(a),
                ObjectKey::Route(dst) => self.state.routes.contains_key(dst),
                ObjectKey::Neighbour(d, ip) => self.state.neighbours.contains_key(&(d.clone(), *ip)),
                ObjectKey::Fdb(d, mac) => self.state.fdb.contains_key(&(d.clone(), *mac)),
                ObjectKey::Forward(subnet) => self.forwarding.as_ref().is_some_and(|f| f.entries.contains_key(subnet)),
            };
            if taken {
                return Err(PartError::Collision { object: object.clone() });
            }
        }
        let Desired { state, forwarding, skipped, .. } = part;
        self.state.addresses.extend(state.addresses);
        self.state.routes.extend(state.routes);
        self.state.neighbours.extend(state.neighbours);
        self.state.fdb.extend(state.fdb);
        if let Some(part) = forwarding {
            let table = self.forwarding.get_or_insert_with(ForwardingTable::default);
            table.entries.extend(part.entries);
            table.keys.extend(part.keys);
        }
        if !skipped.is_empty() {
            self.skipping.insert(key.clone());
        }
        let skipped = (!skipped.is_empty()).then(|| Box::new(skipped));
        self.parts.insert(key, Part { revision, source, skipped });
        Ok(objects)
    }

    /// Re-packs the index's maps after a build (see [`crate::dense`]): the index is kept between passes.
    pub fn repack(&mut self) {
        let state = &mut self.state;
        dense::repack_set(&mut state.addresses);
        dense::repack_map(&mut state.routes);
        dense::repack_map(&mut state.neighbours);
        dense::repack_map(&mut state.fdb);
        if let Some(table) = &mut self.forwarding {
            dense::repack_map(&mut table.entries);
            dense::repack_map(&mut table.keys);
        }
        dense::repack_map(&mut self.parts);
    }

    /// The whole desired state, as [`Backend::desired`](crate::backend::Backend::desired) gives it.
    pub fn into_desired(self) -> Desired {
        let mut skipped = self.base_skipped;
        skipped.extend(self.parts.into_values().filter_map(|p| p.skipped).flat_map(|s| *s));
        let mut desired = Desired { state: self.state, rules: self.rules, forwarding: self.forwarding, skipped };
        desired.sort_skipped();
        desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::hostgw::{HostGwBackend, HostGwConfig};
    use crate::model::WEFT_ROUTE_PROTOCOL;
    use crate::{Family, Peer, PerFamily, Underlay};

    fn backend() -> HostGwBackend {
        let underlay = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        HostGwBackend::prepare(HostGwConfig::default(), underlay, &[Family::V4], WEFT_ROUTE_PROTOCOL).unwrap()
    }

    fn peer(n: u8, ip: &str) -> Peer {
        Peer {
            subnets: PerFamily::new(Some(format!("10.244.{n}.0/24").parse().unwrap()), None),
            public_ips: PerFamily::new(Some(ip.parse().unwrap()), None),
            backend_type: "host-gw".into(),
            ..Peer::default()
        }
    }

    #[test]
    fn a_changed_part_diffs_only_its_own_objects() {
        let b = backend();
        let own = peer(1, "198.18.0.1");
        let mut index: DesiredIndex<u8, Peer> = DesiredIndex::new(b.base(&own));
        let mut touched = Touched::default();
        for n in 2..6 {
            let p = peer(n, &format!("198.18.0.{n}"));
            index.insert(n, 1, p.clone(), b.peer(&own, &p), &mut touched).unwrap();
        }
        let derive = |_: &u8, p: &Peer| b.peer(&own, p);
        let peers: Vec<Peer> = (2..6).map(|n| peer(n, &format!("198.18.0.{n}"))).collect();
        assert_eq!(index.clone().into_desired(), b.desired(&own, &peers));

        // Peer 3 moves to another address, peer 4 goes: two objects touched, two operations.
        let mut touched = Touched::default();
        index.remove(&3, &mut touched, derive);
        let moved = peer(3, "198.18.0.33");
        index.insert(3, 2, moved.clone(), b.peer(&own, &moved), &mut touched).unwrap();
        index.remove(&4, &mut touched, derive);
        let ops: Vec<String> = touched.ops(&index).iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            vec![
                "replace route 10.244.3.0/24 via 198.18.0.33 dev eth0 proto 87",
                "delete route 10.244.4.0/24 via 198.18.0.4 dev eth0 proto 87",
            ]
        );
        assert_eq!(index.revisions().map(|(k, r)| (*k, r)).collect::<Vec<_>>(), vec![(2, 1), (3, 2), (5, 1)]);

        // A route deleted behind our back: only it is put back.
        let mut touched = Touched::default();
        touched.gone(ObjectKey::Route("10.244.5.0/24".parse().unwrap()));
        let ops: Vec<String> = touched.ops(&index).iter().map(ToString::to_string).collect();
        assert_eq!(ops, vec!["replace route 10.244.5.0/24 via 198.18.0.5 dev eth0 proto 87"]);

        // Two parts may not claim one object.
        let twin = peer(5, "198.18.0.9");
        let err = index.build(9, 1, twin.clone(), b.peer(&own, &twin)).unwrap_err();
        assert_eq!(err.to_string(), "route 10.244.5.0/24 is wanted by two parts of the desired state");
    }
}
