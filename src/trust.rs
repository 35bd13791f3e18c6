//! The trust boundary for peer leases: which of the leases in the store this host programs.
//!
//! etcd is shared by every host and every operator, so a lease is someone else's claim. [`screen`] is the one
//! pure function that decides, with one table of reasons ([`RejectReason`]): a lease is programmed only if its key
//! and value parse, each subnet lies inside the configured network of its family with exactly the configured
//! subnet length, it overlaps neither our subnet nor an accepted lease (the older store revision wins), each public
//! IP is a unicast host address that is not ours and not inside the cluster network, its backend type, VNI and
//! data match ours and its VtepMAC is unique. [`judge`] then asks the backend for the desired state of what was
//! accepted and applies the last guard ([`guard_routes`]): no route over the underlay, a host address or our own
//! subnet, whatever the leases and the backend said.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use weft_backends::backend::{Backend, BackendConfig, Desired};
use weft_backends::dense;
use weft_backends::model::MacAddr;
use weft_backends::parts::DesiredIndex;
use weft_backends::trust::{guard_routes, unusable_endpoint, Protected, RejectReason};
use weft_backends::Family;

use crate::config::NetworkConfig;
use crate::ipmath;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::LeaseSet;

/// What a host (or weftctl) judges peer leases against.
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    /// The networks and subnet lengths leases must fit.
    pub config: NetworkConfig,
    /// Our backend's configuration: its type, and how to check a peer's BackendData.
    pub backend: BackendConfig,
    /// This host's addresses (public IPs and the underlay's), with their prefixes: no peer may claim one, and no
    /// route may cover one or the prefix it is on. Empty in weftctl, which is no host.
    pub host_addresses: Vec<IpNetwork>,
}

impl TrustPolicy {
    /// A policy for judging leases from outside any host (weftctl).
    pub fn outside(config: NetworkConfig) -> Result<TrustPolicy, weft_backends::BackendError> {
        let backend = BackendConfig::parse(&config.backend.kind, &config.backend.raw)?;
        Ok(TrustPolicy { config, backend, host_addresses: Vec::new() })
    }

    fn is_ours(&self, ip: IpAddr) -> bool {
        self.host_addresses.iter().any(|a| a.ip() == ip)
    }

    fn inside_cluster(&self, ip: IpAddr) -> bool {
        self.config.families().into_iter().filter_map(|f| self.config.family(f)).any(|p| p.network.contains(ip))
    }

    /// What no route may cover: the underlay's connected prefixes, this host's addresses, our own subnets.
    pub fn protected(&self, own: Option<&Lease>) -> Vec<Protected> {
        let mut protected = Vec::new();
        for a in &self.host_addresses {
            if a.prefix() < Family::of(a.ip()).host_prefix() {
                protected.push(Protected::connected_prefix(*a));
            }
            protected.push(Protected::host_address(a.ip()));
        }
        protected.extend(own.into_iter().flat_map(|o| o.key.subnets()).map(Protected::own_subnet));
        protected
    }
}

/// A lease that is not programmed, by its name below the subnets prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub name: String,
    pub reason: RejectReason,
}

/// The leases that passed, and the rest with the reason.
#[derive(Debug, Default)]
pub struct Screening<'a> {
    pub accepted: Vec<&'a Lease>,
    pub rejected: Vec<Rejected>,
}

/// Judges every lease in `set` but our own (`own`; None in weftctl). Deterministic: of two conflicting leases the
/// one first in store order (oldest revision first, then key) is kept and the other reported. Accepted leases come
/// in key order, rejected ones in name order.
pub fn screen<'a>(policy: &TrustPolicy, own: Option<&Lease>, set: &'a LeaseSet) -> Screening<'a> {
    Screener::default().screen(policy, own, set)
}

/// [`screen`], remembering its verdicts so that the next screen of a changed set judges only the leases that
/// changed: the reconcile loop screens on every lease event, and judging 10,000 leases each time would make
/// every event cost the whole set. Whenever a conflict between two leases is involved (the older one wins, which
/// may reverse an earlier verdict) it judges the whole set again, so its answer always equals [`screen`]'s.
#[derive(Debug, Default)]
pub struct Screener {
    /// Our own lease as of the verdicts (it takes part in every judgement); None before the first screen.
    own: Option<Option<Lease>>,
    /// Every judged lease's value, and whether it passed the checks that look at it alone.
    verdicts: BTreeMap<SubnetKey, Verdict>,
    /// Who holds each subnet and VtepMAC among the accepted leases.
    subnets: BTreeMap<IpNetwork, SubnetKey>,
    macs: BTreeMap<MacAddr, SubnetKey>,
    /// Leases rejected for a subnet or VtepMAC another lease holds: while there are any, a change may reverse a
    /// verdict, so the whole set is judged again.
    contested: usize,
    /// Our own VtepMACs: no peer may use one.
    own_macs: Vec<MacAddr>,
    /// The keys of the leases rejected, so listing them costs what they are, not the whole set.
    rejected_keys: BTreeSet<SubnetKey>,
    /// Screens of the whole set so far (for tests: the point is that most screens are not).
    whole_screens: u64,
}

#[derive(Debug)]
struct Verdict {
    revision: i64,
    attrs: Arc<LeaseAttrs>,
    /// Boxed: most leases pass, and a verdict per lease at 10,000 peers should not carry the largest reason.
    outcome: Result<(), Box<RejectReason>>,
}

impl Verdict {
    fn judged(&self, lease: &Lease) -> bool {
        self.revision == lease.mod_revision && self.attrs == lease.attrs
    }
}

impl Screener {
    /// Screens `set`; see [`screen`]. `policy` must be the same on every call.
    pub fn screen<'a>(&mut self, policy: &TrustPolicy, own: Option<&Lease>, set: &'a LeaseSet) -> Screening<'a> {
        if self.own.as_ref().map(Option::as_ref) != Some(own) || !self.update(policy, own, set) {
            self.judge_all(policy, own, set);
        }
        self.screening(set)
    }

    /// Judges the leases that changed since the last screen against the standing verdicts. False when that
    /// cannot give exactly what judging the whole set would: a conflict between leases is involved.
    fn update(&mut self, policy: &TrustPolicy, own: Option<&Lease>, set: &LeaseSet) -> bool {
        let mut changed: Vec<&Lease> = Vec::new();
        let mut removed: Vec<SubnetKey> = Vec::new();
        {
            let mut leases = candidates(own, set).peekable();
            let mut verdicts = self.verdicts.iter().peekable();
            loop {
                match (leases.peek(), verdicts.peek()) {
                    (None, None) => break,
                    (Some(lease), Some((key, verdict))) if lease.key == **key => {
                        if !verdict.judged(lease) {
                            changed.push(lease);
                        }
                        leases.next();
                        verdicts.next();
                    }
                    (Some(lease), Some((key, _))) if lease.key < **key => changed.extend(leases.next()),
                    (Some(_), None) => changed.extend(leases.next()),
                    (_, Some(_)) => removed.extend(verdicts.next().map(|(key, _)| *key)),
                }
            }
        }
        self.take_in(policy, own, changed, removed)
    }

    /// [`screen`](Self::screen) when only the leases under `keys` can have changed since the last screen of this
    /// set's line (its journal says so). True when only their verdicts changed; false when the whole set was
    /// judged again (a conflict between leases was involved) and any verdict may have changed. Either way the
    /// verdicts are current.
    pub fn screen_keys(
        &mut self,
        policy: &TrustPolicy,
        own: Option<&Lease>,
        set: &LeaseSet,
        keys: &BTreeSet<SubnetKey>,
    ) -> bool {
        if self.own.as_ref().map(Option::as_ref) != Some(own) {
            self.judge_all(policy, own, set);
            return false;
        }
        let own_key = own.map(|o| o.key);
        let mut changed: Vec<&Lease> = Vec::new();
        let mut removed: Vec<SubnetKey> = Vec::new();
        for key in keys {
            let lease = set.leases.get(key).filter(|l| Some(l.key) != own_key && !set.bad_values.contains_key(key));
            match (lease, self.verdicts.get(key)) {
                (Some(lease), Some(verdict)) if verdict.judged(lease) => {}
                (Some(lease), _) => changed.push(lease),
                (None, Some(_)) => removed.push(*key),
                (None, None) => {}
            }
        }
        if self.take_in(policy, own, changed, removed) {
            return true;
        }
        self.judge_all(policy, own, set);
        false
    }

    /// Whether the last screen accepted the lease under `key`.
    pub fn is_accepted(&self, key: &SubnetKey) -> bool {
        self.verdicts.get(key).is_some_and(|v| v.outcome.is_ok())
    }

    /// The leases the last screen rejected (the set's malformed keys and values included), in name order.
    pub fn rejected(&self, set: &LeaseSet) -> Vec<Rejected> {
        let mut out = bad_entries(set);
        for key in &self.rejected_keys {
            if let Some(Err(reason)) = self.verdicts.get(key).map(|v| &v.outcome) {
                out.push(Rejected { name: key.to_string(), reason: (**reason).clone() });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Takes in changed and removed leases against the standing verdicts; false when a conflict between leases
    /// is involved (the verdicts are then partly updated: judge the whole set).
    fn take_in(
        &mut self,
        policy: &TrustPolicy,
        own: Option<&Lease>,
        mut changed: Vec<&Lease>,
        removed: Vec<SubnetKey>,
    ) -> bool {
        if changed.is_empty() && removed.is_empty() {
            return true;
        }
        if self.contested > 0 {
            return false;
        }
        for key in removed.iter().chain(changed.iter().map(|l| &l.key)) {
            self.rejected_keys.remove(key);
            if let Some(old) = self.verdicts.remove(key) {
                if old.outcome.is_ok() {
                    for subnet in key.subnets() {
                        self.subnets.remove(&subnet);
                        let data = old.attrs.backend_data(Family::of(subnet.ip()));
                        if let Ok(Some(mac)) = policy.backend.check_peer_data(data.as_ref()) {
                            self.macs.remove(&mac);
                        }
                    }
                }
            }
        }
        changed.sort_by_key(|l| l.precedence());
        for lease in changed {
            let outcome = judge_alone(policy, own, &self.own_macs, lease);
            if let Ok(macs) = &outcome {
                let taken = macs.iter().any(|m| self.macs.contains_key(m))
                    || lease.key.subnets().any(|s| self.subnets.contains_key(&s));
                if taken {
                    return false;
                }
                self.claim(lease, macs);
            }
            self.record(lease, outcome.map(drop));
        }
        true
    }

    /// Judges every lease, in store order.
    fn judge_all(&mut self, policy: &TrustPolicy, own: Option<&Lease>, set: &LeaseSet) {
        let whole_screens = self.whole_screens + 1;
        *self =
            Screener { own: Some(own.cloned()), own_macs: own_macs(policy, own), whole_screens, ..Screener::default() };
        let mut order: Vec<&Lease> = candidates(own, set).collect();
        order.sort_by_key(|l| l.precedence());
        for lease in order {
            let outcome = judge_alone(policy, own, &self.own_macs, lease).and_then(|macs| {
                let conflict = if let Some((mac, holder)) = macs.iter().find_map(|m| self.macs.get_key_value(m)) {
                    RejectReason::DuplicateVtepMac { mac: *mac, holder: holder.to_string() }
                } else if let Some((subnet, winner)) = lease.key.subnets().find_map(|s| self.subnets.get_key_value(&s))
                {
                    RejectReason::OverlapsPeer { subnet: *subnet, winner: winner.to_string() }
                } else {
                    self.claim(lease, &macs);
                    return Ok(());
                };
                self.contested += 1;
                Err(conflict)
            });
            self.record(lease, outcome);
        }
        // Kept until the next whole screen, and filled in precedence order, which leaves their nodes part empty.
        dense::repack_map(&mut self.verdicts);
        dense::repack_map(&mut self.subnets);
        dense::repack_map(&mut self.macs);
    }

    fn record(&mut self, lease: &Lease, outcome: Result<(), RejectReason>) {
        if outcome.is_err() {
            self.rejected_keys.insert(lease.key);
        }
        self.verdicts.insert(lease.key, Verdict::of(lease, outcome));
    }

    fn claim(&mut self, lease: &Lease, macs: &[MacAddr]) {
        self.subnets.extend(lease.key.subnets().map(|s| (s, lease.key)));
        self.macs.extend(macs.iter().map(|m| (*m, lease.key)));
    }

    /// The standing verdicts as a [`Screening`] of `set` (which they were made for).
    pub fn screening<'a>(&self, set: &'a LeaseSet) -> Screening<'a> {
        let mut out = Screening { accepted: Vec::new(), rejected: bad_entries(set) };
        let own = self.own.as_ref().and_then(|o| o.as_ref().map(|o| o.key));
        let mut verdicts = self.verdicts.iter();
        for lease in candidates_of(own, set) {
            // Both in key order, and the verdicts are of exactly these leases.
            let Some((_, verdict)) = verdicts.find(|(key, _)| **key == lease.key) else { break };
            match &verdict.outcome {
                Ok(()) => out.accepted.push(lease),
                Err(reason) => out.rejected.push(Rejected { name: lease.key.to_string(), reason: (**reason).clone() }),
            }
        }
        out.rejected.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl Verdict {
    fn of(lease: &Lease, outcome: Result<(), RejectReason>) -> Verdict {
        Verdict { revision: lease.mod_revision, attrs: lease.attrs.clone(), outcome: outcome.map_err(Box::new) }
    }
}

/// The set's malformed keys and values, as rejections.
fn bad_entries(set: &LeaseSet) -> Vec<Rejected> {
    let mut out = Vec::new();
    for (name, why) in &set.bad_keys {
        out.push(Rejected { name: name.clone(), reason: RejectReason::BadKey { detail: why.clone() } });
    }
    for (key, why) in &set.bad_values {
        out.push(Rejected { name: key.to_string(), reason: RejectReason::BadValue { detail: why.clone() } });
    }
    out
}

/// The leases the screen judges, in key order: all but our own and those whose value is not flannel's JSON.
fn candidates<'a>(own: Option<&Lease>, set: &'a LeaseSet) -> impl Iterator<Item = &'a Lease> {
    candidates_of(own.map(|o| o.key), set)
}

fn candidates_of(own: Option<SubnetKey>, set: &LeaseSet) -> impl Iterator<Item = &Lease> {
    set.leases.values().filter(move |l| Some(l.key) != own && !set.bad_values.contains_key(&l.key))
}

/// Our own lease's VtepMACs.
fn own_macs(policy: &TrustPolicy, own: Option<&Lease>) -> Vec<MacAddr> {
    let Some(own) = own else { return Vec::new() };
    [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|family| policy.backend.check_peer_data(own.attrs.backend_data(family).as_ref()).ok().flatten())
        .collect()
}

/// One lease against the policy and our own lease, whatever the other leases say: the VtepMACs it uses, or the
/// first reason it fails.
fn judge_alone(
    policy: &TrustPolicy,
    own: Option<&Lease>,
    own_macs: &[MacAddr],
    lease: &Lease,
) -> Result<Vec<MacAddr>, RejectReason> {
    let key: &SubnetKey = &lease.key;
    for subnet in key.subnets() {
        let family = Family::of(subnet.ip());
        let plan = policy.config.family(family);
        let Some(plan) = plan.filter(|p| p.network.contains(subnet.network()) && subnet.prefix() >= p.network.prefix())
        else {
            return Err(RejectReason::OutsideNetwork { subnet, network: plan.map(|p| p.network) });
        };
        if subnet.prefix() != plan.subnet_len {
            return Err(RejectReason::WrongLength { subnet, expected: plan.subnet_len });
        }
    }
    let ours = policy.backend.backend_type();
    if !policy.backend.accepts_backend_type(&lease.attrs.backend_type) {
        return Err(RejectReason::WrongBackendType { theirs: lease.attrs.backend_type.to_string(), ours: ours.into() });
    }
    let mut lease_macs = Vec::new();
    for subnet in key.subnets() {
        let family = Family::of(subnet.ip());
        let ip = lease.attrs.public_ip(family).ok_or(RejectReason::NoPublicIp { family })?;
        if let Some(why) = unusable_endpoint(ip) {
            return Err(RejectReason::BadPublicIp { ip, why });
        }
        if policy.inside_cluster(ip) {
            return Err(RejectReason::BadPublicIp { ip, why: "inside the cluster network" });
        }
        if policy.is_ours(ip) {
            return Err(RejectReason::OurPublicIp { ip });
        }
        if let Some(mac) = policy.backend.check_peer_data(lease.attrs.backend_data(family).as_ref())? {
            if own_macs.contains(&mac) {
                return Err(RejectReason::DuplicateVtepMac { mac, holder: "this host".to_string() });
            }
            lease_macs.push(mac);
        }
    }
    for subnet in key.subnets() {
        if let Some(own) = own.into_iter().flat_map(|o| o.key.subnets()).find(|o| ipmath::overlaps(*o, subnet)) {
            return Err(RejectReason::OverlapsOwn { subnet, own });
        }
    }
    Ok(lease_macs)
}

/// The desired state for `own` and the set, and every lease that is not programmed with the reason.
#[derive(Debug)]
pub struct Judgement<'a> {
    pub desired: Desired,
    pub accepted: Vec<&'a Lease>,
    pub rejected: Vec<Rejected>,
}

/// Screens the set, asks the backend for the accepted peers' desired state, and applies the last guard. What the
/// backend itself skipped is reported the same way.
pub fn judge<'a, B: Backend>(policy: &TrustPolicy, backend: &B, own: &Lease, set: &'a LeaseSet) -> Judgement<'a> {
    let IndexedJudgement { index, accepted, rejected } =
        judge_indexed(policy, backend, own, set, &mut Screener::default());
    Judgement { desired: index.into_desired(), accepted, rejected }
}

/// [`judge`]'s outcome with the desired state kept as a base and one part per accepted lease, so the reconcile
/// loop can later re-derive only the leases that change.
#[derive(Debug)]
pub struct IndexedJudgement<'a> {
    pub index: PeerIndex,
    pub accepted: Vec<&'a Lease>,
    pub rejected: Vec<Rejected>,
}

/// [`judge`], keeping the parts apart.
pub fn judge_indexed<'a, B: Backend>(
    policy: &TrustPolicy,
    backend: &B,
    own: &Lease,
    set: &'a LeaseSet,
    screener: &mut Screener,
) -> IndexedJudgement<'a> {
    let Screening { accepted, rejected } = screener.screen(policy, Some(own), set);
    let protected = policy.protected(Some(own));
    let own_peer = own.to_peer();
    let mut index = DesiredIndex::new(judge_base(backend, &own_peer, &protected));
    for lease in &accepted {
        let part = judge_peer(backend, &own_peer, lease, &protected);
        // Backends derive disjoint parts (every backend's tests check it) and the screen lets no two leases
        // claim one subnet or VTEP MAC, so this cannot collide; if it did, the first part would win.
        if let Err(e) = index.build(lease.key, lease.mod_revision, lease.attrs.clone(), part) {
            tracing::warn!(lease = %lease.key, error = %e, "a peer's objects collide with another's");
        }
    }
    index.repack();
    let (accepted, rejected) = accepted_and_rejected(accepted, rejected, &index);
    IndexedJudgement { index, accepted, rejected }
}

/// The desired state by peer: each part derived from a peer lease's value (under its key).
pub type PeerIndex = DesiredIndex<SubnetKey, Arc<LeaseAttrs>>;

/// What [`judge_peer`] gives for the lease under `key` with value `attrs`: how a [`PeerIndex`] derives a part
/// again to take it out.
pub fn judge_part<B: Backend>(
    backend: &B,
    own: &weft_backends::Peer,
    key: &SubnetKey,
    attrs: &Arc<LeaseAttrs>,
    protected: &[Protected],
) -> Desired {
    let lease = Lease { key: *key, attrs: attrs.clone(), etcd_lease: 0, mod_revision: 0 };
    judge_peer(backend, own, &lease, protected)
}

/// The base of the desired state (our own lease's objects), with the last guard applied.
pub fn judge_base<B: Backend>(backend: &B, own: &weft_backends::Peer, protected: &[Protected]) -> Desired {
    let mut base = backend.base(own);
    let refused = guard_routes(&mut base.state, protected);
    base.skipped.extend(refused);
    base
}

/// One accepted lease's part of the desired state, with the last guard applied.
pub fn judge_peer<B: Backend>(
    backend: &B,
    own: &weft_backends::Peer,
    lease: &Lease,
    protected: &[Protected],
) -> Desired {
    let mut part = backend.peer(own, &lease.to_peer());
    let refused = guard_routes(&mut part.state, protected);
    part.skipped.extend(refused);
    part
}

/// The screen's verdicts completed with what the backend and the last guard skipped: such a lease is reported
/// as rejected and no longer counted as accepted.
pub fn accepted_and_rejected<'a>(
    accepted: Vec<&'a Lease>,
    mut rejected: Vec<Rejected>,
    index: &PeerIndex,
) -> (Vec<&'a Lease>, Vec<Rejected>) {
    let before = rejected.len();
    for (key, s) in index.skipped() {
        let name = key.map_or(s.subnet.to_string(), ToString::to_string);
        rejected.push(Rejected { name, reason: s.reason.clone() });
    }
    let accepted = if rejected.len() == before {
        accepted
    } else {
        let refused: std::collections::BTreeSet<&str> = rejected[before..].iter().map(|r| r.name.as_str()).collect();
        accepted.into_iter().filter(|l| !refused.contains(l.key.to_string().as_str())).collect()
    };
    rejected.sort_by(|a, b| a.name.cmp(&b.name));
    (accepted, rejected)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use weft_backends::backend::AnyBackend;
    use weft_backends::model::{KernelState, WEFT_ROUTE_PROTOCOL};
    use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
    use weft_backends::Underlay;

    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::store::memory::MemoryStore;
    use crate::store::LeaseStore;

    const DUAL: &str =
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
    const OWN_KEY: &str = "10.244.1.0-24&fc00:0:0:1::-64";
    const OWN_MAC: &str = "0e:00:00:00:00:01";

    fn value(ip: &str, mac: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    }

    fn v6_value(ip: &str, ip6: &str, mac: &str, mac6: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        )
    }

    fn policy(config: &str, underlay: &[&str]) -> TrustPolicy {
        let config = NetworkConfig::parse(config).unwrap();
        let host_addresses = underlay.iter().map(|a| a.parse().unwrap()).collect();
        TrustPolicy { host_addresses, ..TrustPolicy::outside(config).unwrap() }
    }

    fn own_lease() -> Lease {
        Lease {
            key: OWN_KEY.parse().unwrap(),
            attrs: std::sync::Arc::new(
                LeaseAttrs::from_json(&v6_value("198.18.0.1", "fd00::1", OWN_MAC, "0e:00:00:00:01:01")).unwrap(),
            ),
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    /// The leases in `store`, as the daemon's registry holds them.
    async fn set_of(store: &MemoryStore) -> LeaseSet {
        LeaseSet::from_listing(&store.list_leases().await.unwrap())
    }

    fn reasons(screening: &Screening) -> BTreeMap<String, &'static str> {
        screening.rejected.iter().map(|r| (r.name.clone(), r.reason.name())).collect()
    }

    #[tokio::test]
    async fn every_reason_of_the_table_is_found_and_the_good_peers_are_kept() {
        let store = MemoryStore::new();
        store.put(OWN_KEY, &v6_value("198.18.0.1", "fd00::1", OWN_MAC, "0e:00:00:00:01:01"));
        // Two legitimate hosts, written first: they are the older leases.
        store.put("10.244.2.0-24", &value("198.18.0.2", "0e:00:00:00:00:02"));
        store.put(
            "10.244.3.0-24&fc00:0:0:3::-64",
            &v6_value("198.18.0.3", "fd00::3", "0e:00:00:00:00:03", "0e:00:00:00:01:03"),
        );
        let cases: &[(&str, String, &str)] = &[
            ("garbage", value("198.18.0.9", "0e:00:00:00:00:09"), "bad_key"),
            ("10.244.9.0-24", "{not json".into(), "bad_value"),
            ("198.18.0.0-24", value("198.18.0.9", "0e:00:00:00:00:09"), "outside_network"),
            ("0.0.0.0-0", value("198.18.0.9", "0e:00:00:00:00:09"), "outside_network"),
            ("10.0.0.0-8", value("198.18.0.9", "0e:00:00:00:00:09"), "outside_network"),
            ("10.244.0.0-16", value("198.18.0.9", "0e:00:00:00:00:09"), "wrong_length"),
            ("10.244.2.128-25", value("198.18.0.9", "0e:00:00:00:00:09"), "wrong_length"),
            ("10.244.10.0-24", value("127.0.0.1", "0e:00:00:00:00:0a"), "bad_public_ip"),
            ("10.244.11.0-24", value("224.0.0.1", "0e:00:00:00:00:0b"), "bad_public_ip"),
            ("10.244.12.0-24", value("255.255.255.255", "0e:00:00:00:00:0c"), "bad_public_ip"),
            ("10.244.13.0-24", value("169.254.0.1", "0e:00:00:00:00:0d"), "bad_public_ip"),
            ("10.244.14.0-24", value("10.244.2.1", "0e:00:00:00:00:0e"), "bad_public_ip"),
            ("10.244.15.0-24", value("0.0.0.0", "0e:00:00:00:00:0f"), "no_public_ip"),
            ("10.244.16.0-24", value("198.18.0.1", "0e:00:00:00:00:10"), "our_public_ip"),
            ("10.244.17.0-24", value("198.18.0.17", OWN_MAC), "duplicate_vtep_mac"),
            ("10.244.18.0-24", value("198.18.0.18", "0e:00:00:00:00:02"), "duplicate_vtep_mac"),
            ("10.244.19.0-24", value("198.18.0.19", "01:00:5e:00:00:01"), "bad_backend_data"),
            (
                "10.244.20.0-24",
                value("198.18.0.20", "0e:00:00:00:00:14").replace("vxlan", "host-gw"),
                "wrong_backend_type",
            ),
            (
                "10.244.21.0-24",
                value("198.18.0.21", "0e:00:00:00:00:15").replace("\"VNI\":1", "\"VNI\":7"),
                "wrong_vni",
            ),
            ("10.244.1.0-24", value("198.18.0.22", "0e:00:00:00:00:16"), "overlaps_own"),
            ("10.244.3.0-24", value("198.18.0.23", "0e:00:00:00:00:17"), "overlaps_peer"),
            (
                "10.244.24.0-24&fc00:0:0:24::-64",
                v6_value("198.18.0.24", "::1", "0e:00:00:00:00:18", "0e:00:00:00:01:18"),
                "bad_public_ip",
            ),
            ("10.244.25.0-24&fc00:0:0:25::-64", value("198.18.0.25", "0e:00:00:00:00:19"), "no_public_ip"),
            ("10.244.26.0-24&fc00:0:0:1::-64", value("198.18.0.26", "0e:00:00:00:00:1a"), "no_public_ip"),
            ("10.244.27.0-24&fc01::-64", value("198.18.0.27", "0e:00:00:00:00:1b"), "outside_network"),
        ];
        for (name, value, _) in cases {
            store.put(name, value);
        }
        let set = set_of(&store).await;
        let policy = policy(DUAL, &["198.18.0.1/24", "fd00::1/64"]);
        let own = own_lease();
        let screening = screen(&policy, Some(&own), &set);
        let accepted: Vec<String> = screening.accepted.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(accepted, ["10.244.2.0-24", "10.244.3.0-24&fc00:0:0:3::-64"]);
        let expected: BTreeMap<String, &str> = cases.iter().map(|(n, _, r)| (n.to_string(), *r)).collect();
        assert_eq!(reasons(&screening), expected);
        let found: BTreeSet<&str> = screening.rejected.iter().map(|r| r.reason.name()).collect();
        // The last guard's reason comes from routes, and host-gw's segment check from its backend, not from a lease.
        let from_leases = |n: &&str| !["protected_route", "not_on_segment"].contains(n);
        let table: BTreeSet<&str> = RejectReason::NAMES.iter().copied().filter(from_leases).collect();
        assert_eq!(found, table, "every reason of the lease screen is reachable from a lease");
        let overlap = screening.rejected.iter().find(|r| r.reason.name() == "overlaps_peer").unwrap();
        assert_eq!(
            overlap.reason.to_string(),
            "10.244.3.0/24 overlaps the older lease 10.244.3.0-24&fc00:0:0:3::-64, which is kept"
        );
    }

    #[tokio::test]
    async fn the_older_lease_wins_whatever_the_key_order() {
        for (first, second) in
            [("10.244.5.0-24", "10.244.5.0-24&fc00:0:0:5::-64"), ("10.244.5.0-24&fc00:0:0:5::-64", "10.244.5.0-24")]
        {
            let store = MemoryStore::new();
            store.put(first, &v6_value("198.18.0.5", "fd00::5", "0e:00:00:00:00:05", "0e:00:00:00:01:05"));
            store.put(second, &v6_value("198.18.0.6", "fd00::6", "0e:00:00:00:00:06", "0e:00:00:00:01:06"));
            let set = set_of(&store).await;
            let screening = screen(&policy(DUAL, &[]), None, &set);
            let accepted: Vec<String> = screening.accepted.iter().map(|l| l.key.to_string()).collect();
            assert_eq!(accepted, [first]);
            assert_eq!(reasons(&screening), BTreeMap::from([(second.to_string(), "overlaps_peer")]));
        }
    }

    /// Two hosts that raced for subnets and ended with the same IPv6 subnet under different IPv4 subnets (two
    /// keys, so the store let both in): the newer lease is rejected, whichever key sorts first, and the whole
    /// lease goes, its IPv4 half too, so no host programs half a peer.
    #[tokio::test]
    async fn of_two_peer_leases_sharing_only_an_ipv6_subnet_the_newer_is_rejected() {
        for (first, second) in [
            ("10.244.5.0-24&fc00:0:0:7::-64", "10.244.6.0-24&fc00:0:0:7::-64"),
            ("10.244.6.0-24&fc00:0:0:7::-64", "10.244.5.0-24&fc00:0:0:7::-64"),
        ] {
            let store = MemoryStore::new();
            store.put(first, &v6_value("198.18.0.5", "fd00::5", "0e:00:00:00:00:05", "0e:00:00:00:01:05"));
            store.put(second, &v6_value("198.18.0.6", "fd00::6", "0e:00:00:00:00:06", "0e:00:00:00:01:06"));
            let set = set_of(&store).await;
            for own in [None, Some(own_lease())] {
                let screening = screen(&policy(DUAL, &[]), own.as_ref(), &set);
                let accepted: Vec<String> = screening.accepted.iter().map(|l| l.key.to_string()).collect();
                assert_eq!(accepted, [first]);
                assert_eq!(reasons(&screening), BTreeMap::from([(second.to_string(), "overlaps_peer")]));
                assert_eq!(
                    screening.rejected[0].reason.to_string(),
                    format!("fc00:0:0:7::/64 overlaps the older lease {first}, which is kept")
                );
            }
        }
    }

    #[tokio::test]
    async fn weftctl_judges_without_a_host() {
        let store = MemoryStore::new();
        store.put("10.244.2.0-24", &value("198.18.0.2", "0e:00:00:00:00:02"));
        store.put("198.18.0.0-24", &value("198.18.0.3", "0e:00:00:00:00:03"));
        let set = set_of(&store).await;
        let screening = screen(&policy(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#, &[]), None, &set);
        assert_eq!(screening.accepted.len(), 1);
        assert_eq!(reasons(&screening), BTreeMap::from([("198.18.0.0-24".to_string(), "outside_network")]));
    }

    fn vxlan(underlay: &[&str], families: &[Family]) -> AnyBackend {
        let mut u = Underlay::new("eth0", 2, 1500, underlay.iter().map(|a| a.parse().unwrap()).collect());
        u.public_ips.v4 = None;
        let b =
            VxlanBackend::prepare(VxlanConfig::default(), u, families, &KernelState::default(), WEFT_ROUTE_PROTOCOL);
        AnyBackend::Vxlan(b.unwrap())
    }

    #[tokio::test]
    async fn the_last_guard_refuses_a_route_over_the_underlay_even_when_the_config_allows_it() {
        // A network config that contains the underlay: every rule of the screen passes for 10.9.0.0/24.
        let config = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
        let policy = policy(config, &["10.9.0.1/24"]);
        let store = MemoryStore::new();
        store.put("10.1.0.0-24", &value("198.18.0.1", OWN_MAC));
        store.put("10.2.0.0-24", &value("198.18.0.2", "0e:00:00:00:00:02"));
        store.put("10.9.0.0-24", &value("198.18.0.3", "0e:00:00:00:00:03"));
        let set = set_of(&store).await;
        let own = set.leases[&"10.1.0.0-24".parse().unwrap()].clone();
        let judged = judge(&policy, &vxlan(&["10.9.0.1/24"], &[Family::V4]), &own, &set);
        let routes: Vec<String> = judged.desired.state.routes.keys().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.2.0.0/24"]);
        assert_eq!(
            judged.rejected,
            [Rejected {
                name: "10.9.0.0-24".into(),
                reason: RejectReason::ProtectedRoute {
                    dst: "10.9.0.0/24".parse().unwrap(),
                    protected: "10.9.0.0/24".parse().unwrap(),
                    what: "the underlay's connected prefix",
                },
            }]
        );
        let accepted: Vec<String> = judged.accepted.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(accepted, ["10.2.0.0-24"], "a refused lease is not counted as a peer");
    }

    /// Subnets around and inside the cluster network, the underlay and everything.
    fn any_subnet() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => (0u8..6).prop_map(|n| format!("10.244.{n}.0-24")),
            4 => (0u8..4).prop_map(|n| format!("10.244.{n}.128-25")),
            1 => Just("10.244.0.0-16".to_string()),
            1 => Just("10.0.0.0-8".to_string()),
            1 => Just("198.18.0.0-24".to_string()),
            1 => Just("198.18.0.0-15".to_string()),
            1 => Just("198.18.0.1-32".to_string()),
            1 => Just("0.0.0.0-0".to_string()),
            4 => (0u8..4).prop_map(|n| format!("10.244.{n}.0-24&fc00:0:0:{n}::-64")),
            3 => (0u8..3).prop_map(|n| format!("0.0.0.0-0&fc00:0:0:{n}::-64")),
            1 => Just("0.0.0.0-0&fd00::-64".to_string()),
            1 => Just("0.0.0.0-0&::-0".to_string()),
        ]
    }

    fn any_ip() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => (1u8..6).prop_map(|n| format!("198.18.0.{n}")),
            1 => Just("127.0.0.1".to_string()),
            1 => Just("224.0.0.1".to_string()),
            1 => Just("255.255.255.255".to_string()),
            1 => Just("10.244.1.1".to_string()),
            1 => Just("0.0.0.0".to_string()),
        ]
    }

    fn any_ip6() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => (1u8..6).prop_map(|n| format!("fd00::{n}")),
            1 => Just("::1".to_string()),
            1 => Just("ff02::1".to_string()),
            1 => Just("fe80::1".to_string()),
        ]
    }

    fn any_lease() -> impl Strategy<Value = (String, String, i64)> {
        let mac = (0u8..16).prop_map(|n| format!("0e:00:00:00:00:{n:02x}"));
        let mac6 = (0u8..16).prop_map(|n| format!("0e:00:00:00:01:{n:02x}"));
        let kind = prop_oneof![6 => Just("vxlan"), 1 => Just("host-gw")];
        let vni = prop_oneof![6 => Just(1u32), 1 => Just(2u32)];
        (any_subnet(), any_ip(), any_ip6(), mac, mac6, kind, vni, 1i64..50).prop_map(
            |(key, ip, ip6, mac, mac6, kind, vni, revision)| {
                let value = format!(
                    r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"{kind}","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":{vni},"VtepMAC":"{mac6}"}}}}"#
                );
                (key, value, revision)
            },
        )
    }

    /// What a screening says, comparably.
    fn verdicts(screening: &Screening) -> (Vec<SubnetKey>, Vec<(String, String)>) {
        let accepted = screening.accepted.iter().map(|l| l.key).collect();
        let rejected = screening.rejected.iter().map(|r| (r.name.clone(), r.reason.to_string())).collect();
        (accepted, rejected)
    }

    #[test]
    fn a_change_without_conflicts_is_judged_alone() {
        let policy = policy(DUAL, &["198.18.0.1/24", "fd00::1/64"]);
        let own = own_lease();
        let mut set = LeaseSet::default();
        set.leases.insert(own.key, own.clone());
        let put = |set: &mut LeaseSet, n: u8, mac: &str, revision: i64| {
            let key: SubnetKey = format!("10.244.{n}.0-24&fc00:0:0:{n:x}::-64").parse().unwrap();
            let ip = format!("198.18.0.{n}");
            let value = v6_value(&ip, &format!("fd00::{n:x}"), mac, &format!("0e:00:00:00:01:{n:02x}"));
            let attrs = LeaseAttrs::from_json(&value).unwrap().into();
            set.leases.insert(key, Lease { key, attrs, etcd_lease: 1, mod_revision: revision });
        };
        put(&mut set, 2, "0e:00:00:00:00:02", 2);
        put(&mut set, 3, "0e:00:00:00:00:03", 3);
        let mut screener = Screener::default();
        assert_eq!(verdicts(&screener.screen(&policy, Some(&own), &set)).0.len(), 2);
        assert_eq!(screener.whole_screens, 1);

        // A new peer, a changed one, a removed one, one with a bad value: no screen of the whole set.
        put(&mut set, 4, "0e:00:00:00:00:04", 4);
        put(&mut set, 2, "0e:00:00:00:00:22", 5);
        set.leases.remove(&"10.244.3.0-24&fc00:0:0:3::-64".parse().unwrap());
        put(&mut set, 5, "0e:00:00:00:00:05", 6);
        set.bad_values.insert("10.244.5.0-24&fc00:0:0:5::-64".parse().unwrap(), "not JSON".into());
        let incremental = verdicts(&screener.screen(&policy, Some(&own), &set));
        assert_eq!(incremental, verdicts(&screen(&policy, Some(&own), &set)));
        assert_eq!(screener.whole_screens, 1);

        // A newcomer with a MAC already held: the whole set is judged (and the newcomer loses).
        put(&mut set, 6, "0e:00:00:00:00:04", 7);
        let conflicted = verdicts(&screener.screen(&policy, Some(&own), &set));
        assert_eq!(conflicted, verdicts(&screen(&policy, Some(&own), &set)));
        assert_eq!(screener.whole_screens, 2);
        assert!(conflicted.1.iter().any(|(name, why)| name.starts_with("10.244.6.0") && why.contains("VtepMAC")));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Through any sequence of puts and deletes (conflicts included), screening only what changed gives exactly
        /// what judging the whole set from scratch gives.
        #[test]
        fn the_incremental_screen_equals_the_whole_one(
            steps in proptest::collection::vec((any_lease(), any::<bool>(), any::<prop::sample::Index>()), 1..40)
        ) {
            let policy = policy(DUAL, &["198.18.0.1/24", "fd00::1/64"]);
            let own = own_lease();
            let mut set = LeaseSet::default();
            set.leases.insert(own.key, own.clone());
            let mut screener = Screener::default();
            for (revision, ((key, value, _), delete, which)) in (1..).zip(steps) {
                let peers: Vec<SubnetKey> = set.leases.keys().copied().filter(|k| *k != own.key).collect();
                if delete && !peers.is_empty() {
                    set.leases.remove(&peers[which.index(peers.len())]);
                } else {
                    let key: SubnetKey = key.parse().unwrap();
                    let attrs = LeaseAttrs::from_json(&value).unwrap().into();
                    set.leases.insert(key, Lease { key, attrs, etcd_lease: 1, mod_revision: revision + 1 });
                }
                let incremental = verdicts(&screener.screen(&policy, Some(&own), &set));
                prop_assert_eq!(incremental, verdicts(&screen(&policy, Some(&own), &set)));
            }
        }

        /// Whatever set of leases is in etcd, the desired state never routes the underlay, our own subnet or our
        /// addresses, never has two routes for overlapping prefixes, and never two neighbours or FDB entries for
        /// one VtepMAC.
        #[test]
        fn no_lease_set_routes_what_is_ours(leases in proptest::collection::vec(any_lease(), 0..12)) {
            let policy = policy(DUAL, &["198.18.0.1/24", "fd00::1/64"]);
            let mut set = LeaseSet::default();
            for (key, value, revision) in &leases {
                let key: SubnetKey = key.parse().unwrap();
                let attrs = LeaseAttrs::from_json(value).unwrap();
                set.leases.insert(key, Lease { key, attrs: attrs.into(), etcd_lease: 1, mod_revision: *revision });
            }
            let own = own_lease();
            set.leases.insert(own.key, own.clone());
            let backend = vxlan(&["198.18.0.1/24", "fd00::1/64"], &[Family::V4, Family::V6]);
            let judged = judge(&policy, &backend, &own, &set);
            let routes: Vec<IpNetwork> = judged.desired.state.routes.keys().copied().collect();
            let ours: Vec<IpNetwork> = ["198.18.0.0/24", "fd00::/64", "10.244.1.0/24", "fc00:0:0:1::/64"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect();
            for (i, r) in routes.iter().enumerate() {
                for o in &ours {
                    prop_assert!(!ipmath::overlaps(*r, *o), "route {r} overlaps {o}");
                }
                for other in &routes[i + 1..] {
                    prop_assert!(!ipmath::overlaps(*r, *other), "routes {r} and {other} overlap");
                }
            }
            for fdb in judged.desired.state.fdb.values() {
                prop_assert!(unusable_endpoint(fdb.dst).is_none() && !policy.is_ours(fdb.dst), "{fdb:?}");
            }
            let macs: Vec<_> = judged.desired.state.neighbours.values().map(|n| n.mac).collect();
            let unique: BTreeSet<_> = macs.iter().collect();
            prop_assert_eq!(macs.len(), unique.len(), "one VtepMAC per host");
            prop_assert_eq!(
                judged.accepted.len() + judged.rejected.len(),
                set.leases.len() - 1,
                "every lease but ours is either a peer or reported"
            );
        }
    }
}
