//! The Backend seam: what every backend provides, and the one enum over them that the daemon holds.
//!
//! A backend is prepared once at startup (devices chosen, MACs and MTUs fixed) and is then a pure function from
//! our lease and the peers' leases to the complete [`Desired`] state. The reconcile loop diffs and applies that;
//! the backend never touches the kernel itself.
//!
//! Adding a backend: a module with its config (parsed from the network config's `Backend` object) and its
//! prepared type implementing [`Backend`], one variant in [`BackendConfig`] and [`AnyBackend`], and one arm in
//! each `match` below. Nothing in the controller or the daemon changes.

use std::fmt::Write as _;

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::forwarding::ForwardingTable;
use crate::hostgw::{self, HostGwBackend, HostGwConfig};
use crate::model::MacAddr;
use crate::model::{KernelState, Scope};
use crate::rules::RuleSet;
use crate::trust::RejectReason;
use crate::udp::{self, UdpBackend, UdpConfig};
use crate::vxlan::{VxlanBackend, VxlanConfig};
use crate::wireguard::{self, WireguardBackend, WireguardConfig};
use crate::{vxlan, BackendError, Family, Peer, PerFamily, Underlay};

/// Everything a backend wants for a given set of leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Devices, addresses, neighbours, FDB entries and routes.
    pub state: KernelState,
    /// Firewall tables (masquerade, FORWARD accepts). Empty for a backend that needs none.
    pub rules: RuleSet,
    /// For a userspace data plane: where to send each peer subnet's packets. None for kernel data planes.
    pub forwarding: Option<ForwardingTable>,
    /// Peer leases the backend cannot use, with the reason.
    pub skipped: Vec<SkippedPeer>,
}

impl Desired {
    /// Kernel objects, then rules, then the forwarding table, as one text. Golden tests compare this.
    pub fn render(&self) -> String {
        let mut out = self.state.render();
        out.push_str(&self.rules.render());
        if let Some(forwarding) = &self.forwarding {
            out.push_str(&forwarding.render());
        }
        for s in &self.skipped {
            let _ = writeln!(out, "skip {}: {}", s.subnet, s.reason);
        }
        out
    }
}

impl Desired {
    /// Adds `part` (another peer's objects, say) to this state. A key both hold takes `part`'s value: the parts a
    /// backend derives never share a key (see [`Backend::peer`]).
    pub fn merge(&mut self, part: Desired) {
        let Desired { state, rules, forwarding, skipped } = part;
        self.state.links.extend(state.links);
        self.state.addresses.extend(state.addresses);
        self.state.routes.extend(state.routes);
        self.state.neighbours.extend(state.neighbours);
        self.state.fdb.extend(state.fdb);
        for table in rules.tables.into_values() {
            self.rules.add(table);
        }
        self.rules.foreign_forward.extend(rules.foreign_forward);
        if let Some(part) = forwarding {
            let table = self.forwarding.get_or_insert_with(ForwardingTable::default);
            table.entries.extend(part.entries);
            table.keys.extend(part.keys);
        }
        self.skipped.extend(skipped);
    }

    /// Records that `peer`'s `subnet` is left out because the peer runs another backend than `ours`.
    pub fn skip_other_backend(&mut self, subnet: IpNetwork, peer: &Peer, ours: &str) {
        let reason = RejectReason::WrongBackendType { theirs: peer.backend_type.clone(), ours: ours.into() };
        self.skipped.push(SkippedPeer { subnet, reason });
    }

    /// Puts what the backend skipped in a fixed order, so the value does not depend on the peers' order.
    pub fn sort_skipped(&mut self) {
        self.skipped.sort_by_cached_key(|s| (s.subnet, s.reason.to_string()));
    }
}

/// A peer lease the backend could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPeer {
    pub subnet: IpNetwork,
    pub reason: RejectReason,
}

/// A prepared backend.
pub trait Backend {
    /// The lease's BackendType ("vxlan").
    fn backend_type(&self) -> &'static str;

    /// What this backend owns: the devices it creates, the route protocol it tags routes with, the devices it
    /// only references and the firewall tables it fills. Only objects inside the scope are observed, compared or
    /// changed, and the scope does not depend on the leases, so stale objects of an earlier run are found.
    fn scope(&self) -> Scope;

    /// What our own lease alone asks for: devices, their addresses, our firewall tables, the forwarding table
    /// (empty) of a userspace data plane. Pure.
    fn base(&self, own: &Peer) -> Desired;

    /// What one peer adds to [`base`](Self::base): its routes, neighbours, FDB entries and forwarding entries, or
    /// why it is skipped. Pure, and independent of every other peer, so the reconcile loop re-derives only the
    /// peers that changed. Two different peers' parts never share a key (each object is keyed by something of the
    /// peer's own: its subnet, its gateway inside that subnet, its VTEP MAC), nor does a part share one with the
    /// base.
    fn peer(&self, own: &Peer, peer: &Peer) -> Desired;

    /// The complete desired state for our lease (`own`) and the other hosts' leases: the base and every peer's
    /// part. Pure: the same leases give the same value, whatever order the peers come in.
    fn desired(&self, own: &Peer, peers: &[Peer]) -> Desired {
        let mut desired = self.base(own);
        for peer in peers {
            desired.merge(self.peer(own, peer));
        }
        desired.sort_skipped();
        desired
    }

    /// BackendData (or BackendV6Data) for our lease; None when `family` is not enabled.
    fn lease_data(&self, family: Family) -> Option<Value>;

    /// The MTU containers should use (FLANNEL_MTU in subnet.env).
    fn mtu(&self) -> u32;

    /// Things the operator should know about how the configuration was applied (logged as warnings).
    fn notes(&self) -> &[String];
}

/// A backend's configuration, parsed from the network config's `Backend` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    HostGw(HostGwConfig),
    Udp(UdpConfig),
    Wireguard(WireguardConfig),
}

impl BackendConfig {
    /// Parses the `Backend` object for backend type `kind`.
    pub fn parse(kind: &str, backend: &Value) -> Result<BackendConfig, BackendError> {
        match kind {
            vxlan::BACKEND_TYPE => Ok(BackendConfig::Vxlan(VxlanConfig::from_json(backend)?)),
            hostgw::BACKEND_TYPE => Ok(BackendConfig::HostGw(HostGwConfig::from_json(backend)?)),
            udp::BACKEND_TYPE => Ok(BackendConfig::Udp(UdpConfig::from_json(backend)?)),
            wireguard::BACKEND_TYPE => Ok(BackendConfig::Wireguard(WireguardConfig::from_json(backend)?)),
            other => Err(BackendError::UnsupportedType(other.to_string())),
        }
    }

    /// The lease's BackendType for this backend.
    pub fn backend_type(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => vxlan::BACKEND_TYPE,
            BackendConfig::HostGw(_) => hostgw::BACKEND_TYPE,
            BackendConfig::Udp(_) => udp::BACKEND_TYPE,
            BackendConfig::Wireguard(_) => wireguard::BACKEND_TYPE,
        }
    }

    /// Whether a peer lease with BackendType `theirs` is one of ours. Exact, except that flanneld's udp leases
    /// carry no BackendType at all.
    pub fn accepts_backend_type(&self, theirs: &str) -> bool {
        match self {
            BackendConfig::Udp(_) => udp::accepts_backend_type(theirs),
            _ => theirs == self.backend_type(),
        }
    }

    /// Hands the config's cluster networks to a backend that needs them (udp: the TUN's prefix), refusing a
    /// family the backend cannot carry. The others need nothing from them.
    pub fn for_networks(self, networks: &PerFamily<IpNetwork>) -> Result<BackendConfig, BackendError> {
        match self {
            BackendConfig::Udp(c) => c.for_networks(networks).map(BackendConfig::Udp),
            BackendConfig::Wireguard(c) => Ok(BackendConfig::Wireguard(c.for_networks(networks))),
            other => Ok(other),
        }
    }

    /// Checks a peer's BackendData (or BackendV6Data) for `family` against our configuration: Ok with the
    /// tunnel endpoint's MAC when the backend has one (it must be unique among hosts), or why the data cannot be
    /// used. Pure, and available before the backend is prepared, so weftctl judges leases the way weftd does.
    pub fn check_peer_data(&self, data: Option<&Value>) -> Result<Option<MacAddr>, RejectReason> {
        match self {
            BackendConfig::Vxlan(c) => vxlan::check_peer_data(data, c.vni).map(Some),
            // flannel's host-gw and udp leases carry no BackendData, and whatever another host put there is not
            // used.
            BackendConfig::HostGw(_) | BackendConfig::Udp(_) => Ok(None),
            // A wireguard peer without a usable public key cannot be reached.
            BackendConfig::Wireguard(_) => wireguard::parse_lease_data(data).map(|_| None),
        }
    }

    /// What to observe before [`prepare`](Self::prepare): devices of an earlier run whose attributes the backend
    /// keeps (a VTEP's MAC, so peers' entries stay right across a restart).
    pub fn existing_scope(&self, families: &[Family], route_protocol: u8) -> Scope {
        match self {
            BackendConfig::Vxlan(c) => {
                Scope::links(families.iter().map(|f| vxlan::device_name(*f, c.vni)).collect(), route_protocol)
            }
            // No devices of its own, so nothing of an earlier run to keep.
            BackendConfig::HostGw(_) => Scope::links(Vec::new(), route_protocol),
            // The TUN keeps nothing the backend chooses.
            BackendConfig::Udp(_) => Scope::links(Vec::new(), route_protocol),
            // The key is kept in its file, not in the device.
            BackendConfig::Wireguard(_) => Scope::links(Vec::new(), route_protocol),
        }
    }

    /// Chooses the backend's devices and attributes for `underlay` and the enabled `families`.
    pub fn prepare(
        self,
        underlay: Underlay,
        families: &[Family],
        existing: &KernelState,
        route_protocol: u8,
    ) -> Result<AnyBackend, BackendError> {
        match self {
            BackendConfig::Vxlan(c) => {
                VxlanBackend::prepare(c, underlay, families, existing, route_protocol).map(AnyBackend::Vxlan)
            }
            BackendConfig::HostGw(c) => {
                HostGwBackend::prepare(c, underlay, families, route_protocol).map(AnyBackend::HostGw)
            }
            BackendConfig::Udp(c) => UdpBackend::prepare(c, underlay, route_protocol).map(AnyBackend::Udp),
            BackendConfig::Wireguard(c) => {
                WireguardBackend::prepare(c, underlay, families, route_protocol).map(AnyBackend::Wireguard)
            }
        }
    }
}

/// The prepared backend the daemon runs: one variant per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyBackend {
    Vxlan(VxlanBackend),
    HostGw(HostGwBackend),
    Udp(UdpBackend),
    Wireguard(WireguardBackend),
}

impl Backend for AnyBackend {
    fn backend_type(&self) -> &'static str {
        match self {
            AnyBackend::Vxlan(b) => b.backend_type(),
            AnyBackend::HostGw(b) => b.backend_type(),
            AnyBackend::Udp(b) => b.backend_type(),
            AnyBackend::Wireguard(b) => b.backend_type(),
        }
    }
    fn scope(&self) -> Scope {
        match self {
            AnyBackend::Vxlan(b) => b.scope(),
            AnyBackend::HostGw(b) => b.scope(),
            AnyBackend::Udp(b) => b.scope(),
            AnyBackend::Wireguard(b) => b.scope(),
        }
    }
    fn base(&self, own: &Peer) -> Desired {
        match self {
            AnyBackend::Vxlan(b) => b.base(own),
            AnyBackend::HostGw(b) => b.base(own),
            AnyBackend::Udp(b) => b.base(own),
            AnyBackend::Wireguard(b) => b.base(own),
        }
    }
    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        match self {
            AnyBackend::Vxlan(b) => b.peer(own, peer),
            AnyBackend::HostGw(b) => b.peer(own, peer),
            AnyBackend::Udp(b) => b.peer(own, peer),
            AnyBackend::Wireguard(b) => b.peer(own, peer),
        }
    }
    fn lease_data(&self, family: Family) -> Option<Value> {
        match self {
            AnyBackend::Vxlan(b) => b.lease_data(family),
            AnyBackend::HostGw(b) => b.lease_data(family),
            AnyBackend::Udp(b) => b.lease_data(family),
            AnyBackend::Wireguard(b) => b.lease_data(family),
        }
    }
    fn mtu(&self) -> u32 {
        match self {
            AnyBackend::Vxlan(b) => b.mtu(),
            AnyBackend::HostGw(b) => b.mtu(),
            AnyBackend::Udp(b) => b.mtu(),
            AnyBackend::Wireguard(b) => b.mtu(),
        }
    }
    fn notes(&self) -> &[String] {
        match self {
            AnyBackend::Vxlan(b) => b.notes(),
            AnyBackend::HostGw(b) => b.notes(),
            AnyBackend::Udp(b) => b.notes(),
            AnyBackend::Wireguard(b) => b.notes(),
        }
    }
}

/// Checks what the reconcile loop relies on to re-derive one peer at a time: the base and the peers' parts share
/// no key, and together they are exactly [`Backend::desired`] (whatever the peers' order). Tests of every backend
/// call it with peers of every kind the backend handles.
#[cfg(test)]
pub(crate) fn assert_parts_add_up<B: Backend>(backend: &B, own: &Peer, peers: &[Peer]) {
    fn keys(part: &Desired) -> Vec<String> {
        let s = &part.state;
        let mut keys: Vec<String> = s.links.keys().map(|k| format!("link {k}")).collect();
        keys.extend(s.addresses.iter().map(|a| format!("addr {} {}", a.device, a.addr)));
        keys.extend(s.routes.keys().map(|k| format!("route {k}")));
        keys.extend(s.neighbours.keys().map(|(d, ip)| format!("neigh {d} {ip}")));
        keys.extend(s.fdb.keys().map(|(d, mac)| format!("fdb {d} {mac}")));
        keys.extend(part.rules.tables.keys().map(|t| format!("table {t:?}")));
        keys.extend(part.forwarding.iter().flat_map(|f| f.entries.keys().map(|k| format!("forward {k}"))));
        keys
    }
    let base = backend.base(own);
    let mut seen: std::collections::BTreeMap<String, String> =
        keys(&base).into_iter().map(|k| (k, "the base".to_string())).collect();
    let mut union = base;
    let mut peer_objects = 0;
    for (i, peer) in peers.iter().enumerate() {
        let part = backend.peer(own, peer);
        assert!(part.rules.tables.is_empty(), "a peer's part has no firewall table of its own");
        for key in keys(&part) {
            peer_objects += 1;
            if let Some(holder) = seen.insert(key.clone(), format!("peer {i}")) {
                panic!("{key} is in both {holder} and peer {i}'s part");
            }
        }
        union.merge(part);
    }
    union.sort_skipped();
    assert!(peer_objects > 0, "the fixture gives the peers some objects");
    assert_eq!(union.render(), backend.desired(own, peers).render());
    let mut reversed = peers.to_vec();
    reversed.reverse();
    assert_eq!(backend.desired(own, &reversed), union, "the peers' order does not matter");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WEFT_ROUTE_PROTOCOL;

    #[test]
    fn the_config_picks_the_backend_and_the_backend_its_scope() {
        let err = BackendConfig::parse("ipip", &serde_json::json!({})).unwrap_err();
        assert!(matches!(err, BackendError::UnsupportedType(t) if t == "ipip"));
        let config = BackendConfig::parse("vxlan", &serde_json::json!({"VNI": 4})).unwrap();
        let scope = config.existing_scope(&[Family::V4, Family::V6], WEFT_ROUTE_PROTOCOL);
        assert_eq!(scope.links, vec!["flannel.4", "flannel-v6.4"]);
        let underlay = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        let backend = config.prepare(underlay, &[Family::V4], &KernelState::default(), WEFT_ROUTE_PROTOCOL).unwrap();
        assert_eq!((backend.backend_type(), backend.mtu()), ("vxlan", 1450));
        assert_eq!(backend.scope().links, vec!["flannel.4"]);
        assert!(backend.scope().tables.is_empty(), "VXLAN owns no firewall tables");
        assert!(backend.lease_data(Family::V6).is_none());

        let config = BackendConfig::parse("host-gw", &serde_json::json!({"Type": "host-gw"})).unwrap();
        assert!(config.existing_scope(&[Family::V4], WEFT_ROUTE_PROTOCOL).links.is_empty());
        let underlay = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        let backend = config.prepare(underlay, &[Family::V4], &KernelState::default(), WEFT_ROUTE_PROTOCOL).unwrap();
        assert_eq!((backend.backend_type(), backend.mtu()), ("host-gw", 1500));
        assert_eq!(backend.scope().referenced, vec!["eth0"]);
    }
}
