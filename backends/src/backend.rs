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

    /// The complete desired state for our lease (`own`) and the other hosts' leases. Pure: the same leases give
    /// the same value, whatever order the peers come in.
    fn desired(&self, own: &Peer, peers: &[Peer]) -> Desired;

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
    fn desired(&self, own: &Peer, peers: &[Peer]) -> Desired {
        match self {
            AnyBackend::Vxlan(b) => b.desired(own, peers),
            AnyBackend::HostGw(b) => b.desired(own, peers),
            AnyBackend::Udp(b) => b.desired(own, peers),
            AnyBackend::Wireguard(b) => b.desired(own, peers),
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
