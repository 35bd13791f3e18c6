//! The pure diff: desired state against observed state gives the operations that turn one into the other.
//!
//! Order matters to traffic: everything new is added (or replaced in place) before anything stale is deleted, and
//! a route is only added after the neighbour and FDB entry it resolves through. Both inputs must cover the same
//! [`Scope`](crate::model::Scope); objects outside it are never touched because they are never observed.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{render_link, render_route, Address, FdbEntry, KernelState, Link, Neighbour, ObjectKind, Route};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateLink(Link),
    /// Change MAC, MTU or up state in place.
    UpdateLink(Link),
    DeleteLink(String),
    AddAddress(Address),
    DeleteAddress(Address),
    ReplaceNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
    ReplaceFdb(FdbEntry),
    DeleteFdb(FdbEntry),
    ReplaceRoute(Route),
    DeleteRoute(Route),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateLink(l) => write!(f, "create {}", render_link(l)),
            Op::UpdateLink(l) => write!(f, "update {}", render_link(l)),
            Op::DeleteLink(name) => write!(f, "delete link {name}"),
            Op::AddAddress(a) => write!(f, "add addr {} dev {}", a.addr, a.device),
            Op::DeleteAddress(a) => write!(f, "delete addr {} dev {}", a.addr, a.device),
            Op::ReplaceNeighbour(n) => write!(f, "replace neigh {} lladdr {} dev {}", n.ip, n.mac, n.device),
            Op::DeleteNeighbour(n) => write!(f, "delete neigh {} dev {}", n.ip, n.device),
            Op::ReplaceFdb(e) => write!(f, "replace fdb {} dev {} dst {}", e.mac, e.device, e.dst),
            Op::DeleteFdb(e) => write!(f, "delete fdb {} dev {} dst {}", e.mac, e.device, e.dst),
            Op::ReplaceRoute(r) => write!(f, "replace {}", render_route(r)),
            Op::DeleteRoute(r) => write!(f, "delete {}", render_route(r)),
        }
    }
}

impl Op {
    /// A short name for the kind of operation, used as a metric label and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateLink(_) => "create_link",
            Op::UpdateLink(_) => "update_link",
            Op::DeleteLink(_) => "delete_link",
            Op::AddAddress(_) => "add_address",
            Op::DeleteAddress(_) => "delete_address",
            Op::ReplaceNeighbour(_) => "replace_neighbour",
            Op::DeleteNeighbour(_) => "delete_neighbour",
            Op::ReplaceFdb(_) => "replace_fdb",
            Op::DeleteFdb(_) => "delete_fdb",
            Op::ReplaceRoute(_) => "replace_route",
            Op::DeleteRoute(_) => "delete_route",
        }
    }
}

/// The operations that make `observed` equal to `desired`. Applying them to a kernel that holds `observed` and
/// observing again yields `desired`, so a second diff is empty.
pub fn diff(desired: &KernelState, observed: &KernelState) -> Vec<Op> {
    diff_owned(desired, observed.clone())
}

/// [`diff`], consuming the observation (a full pass has no other use for it, and at 10,000 peers a copy is
/// megabytes).
pub fn diff_owned(desired: &KernelState, mut observed: KernelState) -> Vec<Op> {
    let links = diff_links(desired, &observed.links);
    for name in &links.emptied {
        observed.remove_device(name);
    }
    let mut ops = links.first;
    let mut deletions = Vec::new();
    for kind in ObjectKind::ON_DEVICES {
        let (additions, stale) = diff_kind(desired, &observed, kind);
        ops.extend(additions);
        deletions.push(stale);
    }
    ops.extend(deletions.into_iter().rev().flatten());
    ops.extend(links.last);
    ops
}

/// The devices' part of a diff.
#[derive(Debug, Default)]
pub struct LinkOps {
    /// Updates, re-creations and creations: before anything on the devices.
    pub first: Vec<Op>,
    /// Deletions of devices no longer wanted: after everything else.
    pub last: Vec<Op>,
    /// The devices created or re-created: nothing observed on them before survives.
    pub emptied: Vec<String>,
}

/// The devices' part of the diff of `desired` against the `observed` devices.
pub fn diff_links(desired: &KernelState, observed: &BTreeMap<String, Link>) -> LinkOps {
    let mut out = LinkOps::default();
    // Links first: a device that must be re-created takes everything on it along, so the rest of the diff
    // works against the observation as it will be once the device is gone.
    for (name, want) in &desired.links {
        if !want.is_owned() {
            // A referenced device is someone else's: routes through it fail until it exists.
            continue;
        }
        match observed.get(name) {
            Some(have) if have == want => {}
            Some(have) if have.same_kind(want) => out.first.push(Op::UpdateLink(want.clone())),
            Some(_) => {
                out.first.push(Op::DeleteLink(name.clone()));
                out.emptied.push(name.clone());
                out.first.push(Op::CreateLink(want.clone()));
            }
            None => {
                out.emptied.push(name.clone());
                out.first.push(Op::CreateLink(want.clone()));
            }
        }
    }
    for (name, have) in observed {
        if !desired.links.contains_key(name) && have.is_owned() {
            out.last.push(Op::DeleteLink(name.clone()));
        }
    }
    out
}

/// One kind's part of the diff of `desired` against `observed` (only that kind of it is read): the additions
/// and in-place replacements, and the deletions of what is no longer wanted.
pub fn diff_kind(desired: &KernelState, observed: &KernelState, kind: ObjectKind) -> (Vec<Op>, Vec<Op>) {
    fn unwanted<V>(want: Option<&V>, _: &V) -> bool {
        want.is_none()
    }
    match kind {
        ObjectKind::Links => (Vec::new(), Vec::new()),
        ObjectKind::Addresses => (
            desired.addresses.difference(&observed.addresses).cloned().map(Op::AddAddress).collect(),
            observed.addresses.difference(&desired.addresses).cloned().map(Op::DeleteAddress).collect(),
        ),
        ObjectKind::Neighbours => {
            keyed(&desired.neighbours, &observed.neighbours, Op::ReplaceNeighbour, Op::DeleteNeighbour, unwanted)
        }
        ObjectKind::Fdb => keyed(&desired.fdb, &observed.fdb, Op::ReplaceFdb, Op::DeleteFdb, unwanted),
        // A route at another metric than the desired one is another route to the kernel: the replacement went in
        // beside it, so it goes (the delete names its metric, so only it goes).
        ObjectKind::Routes => keyed(
            &desired.routes,
            &observed.routes,
            Op::ReplaceRoute,
            Op::DeleteRoute,
            |want: Option<&Route>, have: &Route| want.is_none_or(|want| want.metric != have.metric),
        ),
    }
}

/// One keyed kind's operations: replace every desired value the observation lacks or holds otherwise, delete
/// every observed value `stale` says must go (given the desired value under its key, if any).
fn keyed<K: Ord, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    observed: &BTreeMap<K, V>,
    replace: fn(V) -> Op,
    delete: fn(V) -> Op,
    stale: impl Fn(Option<&V>, &V) -> bool,
) -> (Vec<Op>, Vec<Op>) {
    let additions = desired.iter().filter(|(key, want)| observed.get(key) != Some(want));
    let deletions = observed.iter().filter(|(key, have)| stale(desired.get(key), have));
    (additions.map(|(_, v)| replace(v.clone())).collect(), deletions.map(|(_, v)| delete(v.clone())).collect())
}
