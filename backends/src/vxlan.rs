//! The kernel VXLAN backend, wire-compatible with flannel's: device `flannel.<VNI>` (`flannel-v6.<VNI>` for IPv6),
//! UDP port 8472, learning off, and per remote host one permanent neighbour, one FDB entry and one onlink route.
//!
//! Everything here is pure: the backend turns configuration, the underlay and the lease set into a [`Desired`]
//! state (kernel objects only: VXLAN needs no firewall rules and no userspace forwarding); the reconcile loop does
//! the rest.

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::backend::Backend;
pub use crate::backend::{Desired, SkippedPeer};
use crate::model::{Address, FdbEntry, KernelState, Link, LinkKind, MacAddr, Neighbour, Route, Scope, VxlanAttrs};
use crate::trust::RejectReason;
use crate::{direct, BackendError, Family, Peer, Underlay};

/// The lease's BackendType for this backend.
pub const BACKEND_TYPE: &str = "vxlan";
/// Linux's IANA-predating VXLAN port, which flannel uses ("0 = kernel default").
pub const DEFAULT_PORT: u16 = 8472;
pub const DEFAULT_VNI: u32 = 1;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD: u32 = 50;
/// The same with an outer IPv6 header (40). flannel asks for underlay − 50 on `flannel-v6.<VNI>` too; the kernel
/// silently clamps that to underlay − 70 at creation and refuses it on any later change, so we ask for what the
/// kernel can give.
pub const OVERHEAD_V6: u32 = 70;

/// The encapsulation overhead of a VTEP whose underlay (outer) family is `family`.
pub fn overhead(family: Family) -> u32 {
    match family {
        Family::V4 => OVERHEAD,
        Family::V6 => OVERHEAD_V6,
    }
}

/// The `Backend` object of the network config, for `"Type": "vxlan"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
    /// Underlay MTU to assume instead of the interface's (flannel's `MTU` option); the overlay gets this minus 50
    /// (70 on the IPv6 VTEP). Only a smaller value than the interface's can take effect.
    pub mtu: Option<u32>,
    /// Keys of the `Backend` object that are no vxlan option on Linux (flannel's Windows-only `Name` and
    /// `MacPrefix`, typos): ignored as flannel ignores them, and reported as notes.
    pub ignored: Vec<String>,
}

impl Default for VxlanConfig {
    fn default() -> Self {
        VxlanConfig {
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            gbp: false,
            learning: false,
            direct_routing: false,
            mtu: None,
            ignored: Vec::new(),
        }
    }
}

impl VxlanConfig {
    /// Parses the backend object. Field names match case-insensitively, as Go's JSON decoder does for flannel.
    pub fn from_json(backend: &Value) -> Result<VxlanConfig, BackendError> {
        let mut cfg = VxlanConfig::default();
        let Some(obj) = backend.as_object() else {
            return Ok(cfg);
        };
        for (key, value) in obj {
            let field = |msg: &str| BackendError::Config { field: format!("Backend.{key}"), msg: msg.to_string() };
            match key.to_ascii_lowercase().as_str() {
                "type" => {}
                "vni" => {
                    let vni = value.as_u64().ok_or_else(|| field("must be a whole number"))?;
                    if vni == 0 || vni > 0x00ff_ffff {
                        return Err(field(&format!("{vni} is outside 1..16777215")));
                    }
                    cfg.vni = vni as u32;
                }
                "port" => {
                    let port = value.as_u64().ok_or_else(|| field("must be a whole number"))?;
                    cfg.port = match port {
                        0 => DEFAULT_PORT,
                        1..=65535 => port as u16,
                        _ => return Err(field(&format!("{port} is not a UDP port"))),
                    };
                }
                "mtu" => {
                    let mtu = value.as_u64().ok_or_else(|| field("must be a whole number"))?;
                    cfg.mtu = match mtu {
                        0 => None,
                        m if m < 68 + u64::from(OVERHEAD) => {
                            return Err(field(&format!(
                                "{m} leaves less than 68 bytes after the 50-byte VXLAN overhead"
                            )))
                        }
                        m if m > 65535 => return Err(field(&format!("{m} is larger than 65535"))),
                        m => Some(m as u32),
                    };
                }
                "gbp" => cfg.gbp = value.as_bool().ok_or_else(|| field("must be true or false"))?,
                "learning" => cfg.learning = value.as_bool().ok_or_else(|| field("must be true or false"))?,
                "directrouting" => {
                    cfg.direct_routing = value.as_bool().ok_or_else(|| field("must be true or false"))?
                }
                // flannel decodes only the keys it knows and drops the rest, so a config shared with Windows nodes
                // (Name, MacPrefix) or carrying a typo still starts it: ignore them too, but say so.
                _ => cfg.ignored.push(key.clone()),
            }
        }
        Ok(cfg)
    }
}

/// The device name flannel uses for a family.
pub fn device_name(family: Family, vni: u32) -> String {
    match family {
        Family::V4 => format!("flannel.{vni}"),
        Family::V6 => format!("flannel-v6.{vni}"),
    }
}

/// The lease's BackendData (or BackendV6Data) for a VTEP, byte-compatible with flannel's `{"VNI":1,"VtepMAC":".."}`.
pub fn lease_data(vni: u32, mac: MacAddr) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("VNI".into(), Value::from(vni));
    map.insert("VtepMAC".into(), Value::String(mac.to_string()));
    Value::Object(map)
}

/// Reads a peer's VtepMAC out of its BackendData.
pub fn parse_lease_data(data: &Value) -> Result<MacAddr, String> {
    let mac = data
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("VtepMAC")))
        .map(|(_, v)| v)
        .ok_or("BackendData has no VtepMAC")?;
    let text = mac.as_str().ok_or("BackendData.VtepMAC is not a string")?;
    let mac: MacAddr = text.parse().map_err(|e: crate::model::InvalidMac| e.to_string())?;
    if mac.is_zero() || mac.0[0] & 1 == 1 {
        return Err(format!("BackendData.VtepMAC {mac} is not a unicast address"));
    }
    Ok(mac)
}

/// One VXLAN device of the backend (one per enabled address family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub family: Family,
    pub link: Link,
}

/// The prepared backend: its devices are known, and so is what goes into our lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanBackend {
    pub config: VxlanConfig,
    pub underlay: Underlay,
    pub vteps: Vec<Vtep>,
    pub route_protocol: u8,
    /// Things the operator should know about how the configuration was applied (logged as warnings).
    pub notes: Vec<String>,
}

impl VxlanBackend {
    /// Chooses the devices' attributes. A VTEP MAC is taken from the device if it exists already (so a restart, or
    /// a switch from flanneld, changes nothing on the wire); otherwise it is derived from the public IP and VNI,
    /// so a re-created device gets the same MAC again.
    pub fn prepare(
        config: VxlanConfig,
        underlay: Underlay,
        families: &[Family],
        existing: &KernelState,
        route_protocol: u8,
    ) -> Result<VxlanBackend, BackendError> {
        let mut notes: Vec<String> = config
            .ignored
            .iter()
            .map(|key| {
                format!(
                    "Backend.{key} is not a vxlan option on Linux (VNI, Port, MTU, GBP, Learning, DirectRouting) \
                     and is ignored"
                )
            })
            .collect();
        // The kernel caps a VXLAN device at its lower device's MTU minus the overhead: it clamps a larger MTU at
        // creation and refuses it on every later change, so asking for more would fail every reconcile pass.
        let underlay_mtu = match config.mtu {
            Some(m) if m > underlay.mtu => {
                notes.push(format!(
                    "Backend.MTU {m} is larger than {}'s MTU {}; using {} (the kernel allows no more)",
                    underlay.name, underlay.mtu, underlay.mtu
                ));
                underlay.mtu
            }
            Some(m) => m,
            None => underlay.mtu,
        };
        let mut vteps = Vec::new();
        for &family in families {
            let overhead = overhead(family);
            // IPv6 needs at least 1280 bytes on every link it crosses.
            let minimum = match family {
                Family::V4 => 68,
                Family::V6 => 1280,
            };
            let mtu =
                underlay_mtu.checked_sub(overhead).filter(|m| *m >= minimum).ok_or_else(|| BackendError::Config {
                    field: "Backend.MTU".into(),
                    msg: format!(
                        "underlay MTU {underlay_mtu} leaves less than {family}'s minimum of {minimum} bytes after \
                         VXLAN's {overhead}-byte overhead"
                    ),
                })?;
            let local = underlay.address(family).ok_or_else(|| BackendError::NoUnderlayAddress {
                interface: underlay.name.clone(),
                family,
                backend: BACKEND_TYPE,
            })?;
            let public = underlay.public_ip(family).unwrap_or(local);
            let name = device_name(family, config.vni);
            let mac = existing
                .links
                .get(&name)
                .map(|l| l.mac)
                .filter(|m| !m.is_zero())
                .unwrap_or_else(|| MacAddr::derived_from(&format!("weft-vtep/{public}/{}", config.vni)));
            let link = Link {
                name,
                kind: LinkKind::Vxlan(VxlanAttrs {
                    vni: config.vni,
                    local,
                    underlay_index: underlay.index,
                    port: config.port,
                    learning: config.learning,
                    gbp: config.gbp,
                }),
                mac,
                mtu,
                up: true,
            };
            vteps.push(Vtep { family, link });
        }
        Ok(VxlanBackend { config, underlay, vteps, route_protocol, notes })
    }

    /// The device direct routes leave through, when direct routing is on.
    fn direct_routing_device(&self) -> Option<String> {
        self.config.direct_routing.then(|| self.underlay.name.clone())
    }

    pub fn vtep(&self, family: Family) -> Option<&Vtep> {
        self.vteps.iter().find(|v| v.family == family)
    }
}

impl Backend for VxlanBackend {
    fn backend_type(&self) -> &'static str {
        BACKEND_TYPE
    }

    /// The MTU containers should use (FLANNEL_MTU): the smallest VTEP's, so that no packet a container sends, of
    /// either family, is too big for its tunnel. flannel publishes the IPv4 VTEP's even when dual-stack, which makes
    /// every new IPv6 path start with a dropped packet and an ICMPv6 Packet Too Big.
    fn mtu(&self) -> u32 {
        self.vteps.iter().map(|v| v.link.mtu).min().unwrap_or(self.underlay.mtu - OVERHEAD)
    }

    /// BackendData for our lease (None when the family is not enabled).
    fn lease_data(&self, family: Family) -> Option<Value> {
        self.vtep(family).map(|v| lease_data(self.config.vni, v.link.mac))
    }

    /// The VTEPs, and the underlay when direct routing sends peers' traffic out of it.
    fn scope(&self) -> Scope {
        Scope {
            links: self.vteps.iter().map(|v| v.link.name.clone()).collect(),
            route_protocol: self.route_protocol,
            referenced: self.direct_routing_device().into_iter().collect(),
            tables: Vec::new(),
            route_networks: Vec::new(),
        }
    }

    fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The VTEPs with our subnet's base address on each, and the underlay when direct routing uses it.
    fn base(&self, own: &Peer) -> Desired {
        let mut state = KernelState::default();
        if let Some(underlay) = self.direct_routing_device() {
            state.add_link(Link::unowned(underlay));
        }
        for vtep in &self.vteps {
            state.add_link(vtep.link.clone());
            if let Some(own_subnet) = own.subnet(vtep.family) {
                let base =
                    IpNetwork::new(own_subnet.network(), vtep.family.host_prefix()).expect("host prefix is valid");
                state.add_address(Address { device: vtep.link.name.as_str().into(), addr: base });
            }
        }
        Desired { state, ..Desired::default() }
    }

    /// Per family, a permanent neighbour, an FDB entry and an onlink route through the VTEP (or a direct route
    /// when direct routing finds the peer on our segment). A peer that cannot be used (another backend type, a
    /// malformed VtepMAC, a VNI that differs) is left out and reported.
    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        let mut part = Desired::default();
        for vtep in &self.vteps {
            let family = vtep.family;
            let device = &vtep.link.name;
            let Some((subnet, public_ip)) = peer.remote(own, family) else { continue };
            if peer.backend_type != BACKEND_TYPE {
                part.skip_other_backend(subnet, peer, BACKEND_TYPE);
                continue;
            }
            // Peers on our own segment are routed to directly; the rest go through the tunnel.
            if self.config.direct_routing {
                if let Ok(route) = direct::route_via_underlay(&self.underlay, subnet, public_ip, self.route_protocol) {
                    part.state.add_route(route);
                    continue;
                }
            }
            let mac = match check_peer_data(peer.backend_data(family), self.config.vni) {
                Ok(mac) => mac,
                Err(reason) => {
                    part.skipped.push(SkippedPeer { subnet, reason });
                    continue;
                }
            };
            let gateway = subnet.network();
            part.state.add_neighbour(Neighbour { device: device.as_str().into(), ip: gateway, mac });
            part.state.add_fdb(FdbEntry { device: device.as_str().into(), mac, dst: public_ip });
            part.state.add_route(Route::via(subnet, gateway, device, true, self.route_protocol));
        }
        part
    }
}

/// A peer's BackendData checked against our VNI: its VtepMAC, or why it cannot be used.
pub fn check_peer_data(data: Option<&Value>, vni: u32) -> Result<MacAddr, RejectReason> {
    let data = data.ok_or_else(|| RejectReason::BadBackendData { detail: "lease has no BackendData".into() })?;
    let theirs = data
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("VNI")))
        .and_then(|(_, v)| v.as_u64());
    match theirs {
        Some(v) if v != u64::from(vni) => Err(RejectReason::WrongVni { theirs: v, ours: vni }),
        _ => parse_lease_data(data).map_err(|detail| RejectReason::BadBackendData { detail }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WEFT_ROUTE_PROTOCOL;
    use crate::PerFamily;

    fn peer(n: u8, public_v4: &str, backend_type: &str, data: Value) -> Peer {
        Peer {
            subnets: PerFamily::new(
                Some(format!("10.244.{n}.0/24").parse().unwrap()),
                Some(format!("fd00:10:0:{n}::/64").parse().unwrap()),
            ),
            public_ips: PerFamily::new(Some(public_v4.parse().unwrap()), Some(format!("fd18::{n}").parse().unwrap())),
            backend_type: backend_type.into(),
            backend_data: PerFamily::new(Some(data.clone()), Some(data)),
        }
    }

    fn mac_data(n: u8) -> Value {
        lease_data(1, MacAddr([0x0e, 0, 0, 0, 0, n]))
    }

    #[test]
    fn each_peer_s_part_is_its_own_and_the_parts_add_up_to_the_whole() {
        let underlay =
            Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap(), "fd18::1/64".parse().unwrap()]);
        let own = peer(1, "198.18.0.1", "vxlan", mac_data(1));
        let peers = vec![
            own.clone(),
            peer(2, "198.18.0.2", "vxlan", mac_data(2)),
            peer(3, "198.19.0.3", "vxlan", mac_data(3)),
            peer(4, "198.18.0.4", "host-gw", Value::Null),
            peer(5, "198.18.0.5", "vxlan", lease_data(7, MacAddr([0x0e, 0, 0, 0, 0, 5]))),
            peer(6, "198.18.0.6", "vxlan", serde_json::json!({"VNI": 1})),
        ];
        for direct_routing in [false, true] {
            let config = VxlanConfig { direct_routing, ..VxlanConfig::default() };
            let families = [Family::V4, Family::V6];
            let backend = VxlanBackend::prepare(
                config,
                underlay.clone(),
                &families,
                &KernelState::default(),
                WEFT_ROUTE_PROTOCOL,
            )
            .unwrap();
            crate::backend::assert_parts_add_up(&backend, &own, &peers);
        }
    }
}
