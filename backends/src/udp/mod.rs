//! The udp backend, wire-compatible with flannel's: a TUN device (`flannel0`), UDP port 8285, and the raw inner IP
//! packet as the whole UDP payload (no header of its own). Leases carry the public IP and no BackendData, as
//! flanneld's do; flanneld writes no BackendType for udp, so a peer lease with an empty BackendType counts as udp.
//!
//! The kernel side is declarative like every backend's: the TUN link (MTU = underlay − 28, up) and its address,
//! our subnet's base address with the cluster network's prefix, whose connected route sends the whole cluster
//! network into the TUN. The data plane ([`plane`]) opens the TUN and moves packets; it follows the forwarding
//! table (peer subnet → peer public IP:port) that [`desired`](Backend::desired) computes, so peers come and go
//! without restarting it. The packet handling itself is pure: [`packet`] (headers, TTL, ICMP) and [`offload`]
//! (segmentation and coalescing).

pub mod counters;
pub mod offload;
pub mod packet;
#[cfg(feature = "runtime")]
pub mod plane;
pub mod switches;
pub mod tun;

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::backend::{Backend, Desired};
use crate::forwarding::ForwardingTable;
use crate::model::{Address, KernelState, Link, LinkKind, MacAddr, Scope};
use crate::{BackendError, Family, Peer, PerFamily, Underlay};

/// The lease's BackendType for this backend (flanneld itself writes none: see [`accepts_backend_type`]).
pub const BACKEND_TYPE: &str = "udp";
pub const DEFAULT_PORT: u16 = 8285;
pub const DEVICE: &str = "flannel0";
/// Outer IPv4 (20) + UDP (8): the inner packet is the whole payload.
pub const OVERHEAD: u32 = 28;

/// Whether a peer lease's BackendType is a udp host's: ours, or none at all (flanneld's udp lease).
pub fn accepts_backend_type(theirs: &str) -> bool {
    theirs == BACKEND_TYPE || theirs.is_empty()
}

/// The `Backend` object of the network config, for `"Type": "udp"`, and the cluster network it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    pub port: u16,
    /// The IPv4 cluster network (set from the network config by [`UdpConfig::for_networks`]).
    pub network: Option<IpNetwork>,
    /// Keys of the `Backend` object that are no udp option: ignored, as flannel ignores them, and reported.
    pub ignored: Vec<String>,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig { port: DEFAULT_PORT, network: None, ignored: Vec::new() }
    }
}

impl UdpConfig {
    /// Parses the backend object (keys case-insensitive, as Go's decoder matches them). flannel's udp has one
    /// option, `Port`.
    pub fn from_json(backend: &Value) -> Result<UdpConfig, BackendError> {
        let mut cfg = UdpConfig::default();
        for (key, value) in backend.as_object().into_iter().flatten() {
            let field = |msg: String| BackendError::Config { field: format!("Backend.{key}"), msg };
            match key.to_ascii_lowercase().as_str() {
                "type" => {}
                "port" => {
                    let port = value.as_u64().ok_or_else(|| field("must be a whole number".into()))?;
                    cfg.port = match port {
                        0 => DEFAULT_PORT,
                        1..=65535 => port as u16,
                        _ => return Err(field(format!("{port} is not a UDP port"))),
                    };
                }
                _ => cfg.ignored.push(key.clone()),
            }
        }
        Ok(cfg)
    }

    /// Adds the cluster networks. flannel's udp carries IPv4 only; an IPv6 network is refused by name.
    pub fn for_networks(mut self, networks: &PerFamily<IpNetwork>) -> Result<UdpConfig, BackendError> {
        if networks.v6.is_some() {
            return Err(BackendError::Config {
                field: "EnableIPv6".into(),
                msg: "the udp backend carries IPv4 only, as flannel's does; use vxlan for IPv6".into(),
            });
        }
        self.network = networks.v4;
        Ok(self)
    }
}

/// The prepared backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpBackend {
    pub port: u16,
    pub network: IpNetwork,
    pub underlay: Underlay,
    pub mtu: u32,
    pub route_protocol: u8,
    notes: Vec<String>,
}

impl UdpBackend {
    pub fn prepare(config: UdpConfig, underlay: Underlay, route_protocol: u8) -> Result<UdpBackend, BackendError> {
        let network = config.network.filter(IpNetwork::is_ipv4).ok_or_else(|| BackendError::Config {
            field: "Network".into(),
            msg: "the udp backend needs an IPv4 cluster network".into(),
        })?;
        if underlay.address(Family::V4).is_none() {
            return Err(BackendError::NoUnderlayAddress {
                interface: underlay.name.clone(),
                family: Family::V4,
                backend: BACKEND_TYPE,
            });
        }
        let notes = config
            .ignored
            .iter()
            .map(|key| format!("Backend.{key} is not a udp option (only Port is); ignored, as flannel ignores it"))
            .collect();
        let mtu = underlay.mtu.saturating_sub(OVERHEAD);
        Ok(UdpBackend { port: config.port, network, underlay, mtu, route_protocol, notes })
    }

    /// The address the UDP socket binds: the underlay's IPv4 address (flannel binds the interface address).
    pub fn bind_address(&self) -> SocketAddr {
        let ip = self.underlay.address(Family::V4).expect("checked in prepare");
        SocketAddr::new(ip, self.port)
    }

    /// The TUN's address for `own`: its subnet's base address with the cluster network's prefix; also the source
    /// of our ICMP errors.
    pub fn tun_address(&self, own: &Peer) -> Option<IpNetwork> {
        let subnet = own.subnet(Family::V4)?;
        IpNetwork::new(subnet.network(), self.network.prefix()).ok()
    }
}

impl Backend for UdpBackend {
    fn backend_type(&self) -> &'static str {
        BACKEND_TYPE
    }

    /// The TUN device; the route into it is the kernel's connected route of its address.
    fn scope(&self) -> Scope {
        Scope { links: vec![DEVICE.to_string()], route_protocol: self.route_protocol, ..Scope::default() }
    }

    /// The TUN with its address, and an empty forwarding table.
    fn base(&self, own: &Peer) -> Desired {
        let mut state = KernelState::default();
        state.add_link(Link {
            name: DEVICE.into(),
            kind: LinkKind::Tun,
            mac: MacAddr::default(),
            mtu: self.mtu,
            up: true,
        });
        if let Some(addr) = self.tun_address(own) {
            state.add_address(Address { device: DEVICE.into(), addr });
        }
        Desired { state, forwarding: Some(ForwardingTable::default()), ..Desired::default() }
    }

    /// The peer's forwarding entry: its subnet to its public IP on our port.
    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        let mut part = Desired::default();
        let Some((subnet, ip)) = peer.remote(own, Family::V4) else { return part };
        if !accepts_backend_type(&peer.backend_type) {
            part.skip_other_backend(subnet, peer, BACKEND_TYPE);
            return part;
        }
        let mut forwarding = ForwardingTable::default();
        forwarding.insert(subnet, SocketAddr::new(ip, self.port));
        part.forwarding = Some(forwarding);
        part
    }

    /// flannel's udp lease has no BackendData.
    fn lease_data(&self, _family: Family) -> Option<Value> {
        None
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn notes(&self) -> &[String] {
        &self.notes
    }
}

/// The source address of ICMP errors for packets of `family`: the cluster network's base address. Not the TUN's
/// own address: the kernel drops a packet arriving with one of its local addresses as source (a martian), so the
/// answer would never reach the sender. The base address is routed into the TUN, which also satisfies reverse-path
/// filtering, and flannel never leases the network's first subnet unless SubnetMin says so.
pub fn icmp_source(tun_address: Option<IpNetwork>, family: Family) -> Option<IpAddr> {
    tun_address.map(|n| n.network()).filter(|ip| Family::of(*ip) == family)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WEFT_ROUTE_PROTOCOL;

    fn underlay() -> Underlay {
        Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()])
    }

    fn backend() -> UdpBackend {
        let config = UdpConfig::from_json(&serde_json::json!({"Type": "udp", "port": 7000, "Bogus": 1})).unwrap();
        let config = config.for_networks(&PerFamily::new(Some("10.244.0.0/16".parse().unwrap()), None)).unwrap();
        UdpBackend::prepare(config, underlay(), WEFT_ROUTE_PROTOCOL).unwrap()
    }

    fn peer(subnet: &str, ip: &str, backend_type: &str) -> Peer {
        Peer {
            subnets: PerFamily::new(Some(subnet.parse().unwrap()), None),
            public_ips: PerFamily::new(Some(ip.parse().unwrap()), None),
            backend_type: backend_type.into(),
            ..Peer::default()
        }
    }

    #[test]
    fn config_takes_port_and_refuses_what_flannel_cannot_carry() {
        assert_eq!(UdpConfig::from_json(&serde_json::json!({"Type": "udp"})).unwrap().port, 8285);
        assert_eq!(UdpConfig::from_json(&serde_json::json!({"Port": 0})).unwrap().port, 8285);
        let err = UdpConfig::from_json(&serde_json::json!({"Port": 70000})).unwrap_err();
        assert_eq!(err.to_string(), "invalid network config field Backend.Port: 70000 is not a UDP port");
        let dual = PerFamily::new(Some("10.244.0.0/16".parse().unwrap()), Some("fd00::/48".parse().unwrap()));
        let err = UdpConfig::default().for_networks(&dual).unwrap_err();
        assert!(err.to_string().contains("field EnableIPv6: the udp backend carries IPv4 only"), "{err}");
        let err = UdpBackend::prepare(UdpConfig::default(), underlay(), 87).unwrap_err();
        assert!(err.to_string().contains("needs an IPv4 cluster network"), "{err}");
    }

    #[test]
    fn desired_state_is_the_tun_its_address_and_a_forwarding_table() {
        let b = backend();
        assert_eq!((b.mtu(), b.port, b.backend_type()), (1472, 7000, "udp"));
        assert_eq!(b.notes().len(), 1);
        assert_eq!(b.bind_address().to_string(), "198.18.0.1:7000");
        let own = peer("10.244.1.0/24", "198.18.0.1", "udp");
        let peers = vec![
            peer("10.244.3.0/24", "198.18.0.3", ""),
            own.clone(),
            peer("10.244.2.0/24", "198.18.0.2", "udp"),
            peer("10.244.4.0/24", "198.18.0.4", "vxlan"),
        ];
        let expected = "\
link flannel0 tun mtu 1472 up
addr 10.244.1.0/16 dev flannel0
forward 10.244.2.0/24 to 198.18.0.2:7000
forward 10.244.3.0/24 to 198.18.0.3:7000
skip 10.244.4.0/24: BackendType is \"vxlan\", not \"udp\"
";
        let desired = b.desired(&own, &peers);
        assert_eq!(desired.render(), expected);
        crate::backend::assert_parts_add_up(&b, &own, &peers);
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(b.desired(&own, &reversed), desired, "peer order does not matter");
        assert_eq!(b.scope().links, vec!["flannel0"]);
        assert_eq!(b.lease_data(Family::V4), None);
        assert_eq!(icmp_source(b.tun_address(&own), Family::V4), Some("10.244.0.0".parse().unwrap()));
        assert_eq!(icmp_source(b.tun_address(&own), Family::V6), None);
    }
}
