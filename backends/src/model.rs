//! The kernel objects weft owns, as plain values.
//!
//! Desired state and observed state share one type, [`KernelState`], so the diff is a comparison of two values of
//! the same shape. Every collection is ordered, which makes the rendered text (and the op order) deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;

/// The routing protocol number weft tags its routes with (`ip route ... proto 87`), so a dump of the main table
/// tells our routes apart from everyone else's. 87 is unassigned in /etc/iproute2/rt_protos.
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (FNV-1a), stable for the same seed on every
    /// run and every machine. Used for VTEP MACs so a re-created device keeps its MAC and peers' ARP entries
    /// stay right.
    pub fn derived_from(seed: &str) -> MacAddr {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = hash.to_be_bytes();
        // bit 1 of the first octet: locally administered; bit 0 cleared: unicast.
        MacAddr([(b[0] | 0x02) & 0xfe, b[1], b[2], b[3], b[4], b[5]])
    }

    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets such as 0e:2a:4f:00:12:9c")]
pub struct InvalidMac(pub String);

impl FromStr for MacAddr {
    type Err = InvalidMac;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidMac(s.to_string());
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(parts) {
            if part.len() != 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Attributes of a VXLAN device that can only be set at creation: a mismatch means delete and re-create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub local: IpAddr,
    /// ifindex of the underlay interface (`dev` in `ip -d link`).
    pub underlay_index: u32,
    pub port: u16,
    pub learning: bool,
    pub gbp: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    Vxlan(VxlanAttrs),
}

/// A network device weft owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    pub mac: MacAddr,
    pub mtu: u32,
    pub up: bool,
}

impl Link {
    /// Whether `other` can be turned into `self` in place (MAC, MTU, up), without re-creating the device.
    pub fn same_kind(&self, other: &Link) -> bool {
        self.kind == other.kind
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub device: String,
    pub addr: IpNetwork,
}

/// A route in the main table. The destination is the identity: the kernel keeps one per prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: IpAddr,
    pub device: String,
    pub onlink: bool,
    pub protocol: u8,
}

/// A permanent neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub device: String,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A permanent forwarding-database entry of a VXLAN device: frames for `mac` are sent to the VTEP at `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub device: String,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// Everything weft owns in one network namespace, or everything it wants to own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: BTreeMap<String, Link>,
    pub addresses: BTreeSet<Address>,
    pub routes: BTreeMap<IpNetwork, Route>,
    pub neighbours: BTreeMap<(String, IpAddr), Neighbour>,
    pub fdb: BTreeMap<(String, MacAddr), FdbEntry>,
}

impl KernelState {
    pub fn add_link(&mut self, link: Link) {
        self.links.insert(link.name.clone(), link);
    }
    pub fn add_address(&mut self, address: Address) {
        self.addresses.insert(address);
    }
    pub fn add_route(&mut self, route: Route) {
        self.routes.insert(route.dst, route);
    }
    pub fn add_neighbour(&mut self, n: Neighbour) {
        self.neighbours.insert((n.device.clone(), n.ip), n);
    }
    pub fn add_fdb(&mut self, e: FdbEntry) {
        self.fdb.insert((e.device.clone(), e.mac), e);
    }

    /// Drops every object that lives on `device` (what the kernel does when the device is deleted).
    pub fn remove_device(&mut self, device: &str) {
        self.links.remove(device);
        self.addresses.retain(|a| a.device != device);
        self.routes.retain(|_, r| r.device != device);
        self.neighbours.retain(|_, n| n.device != device);
        self.fdb.retain(|_, e| e.device != device);
    }

    /// The number of objects, for logs and metrics.
    pub fn object_count(&self) -> usize {
        self.links.len() + self.addresses.len() + self.routes.len() + self.neighbours.len() + self.fdb.len()
    }

    /// `ip`-like text, one object per line, in a fixed order. Golden tests compare this.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for link in self.links.values() {
            out.push_str(&render_link(link));
            out.push('\n');
        }
        for a in &self.addresses {
            out.push_str(&format!("addr {} dev {}\n", a.addr, a.device));
        }
        for n in self.neighbours.values() {
            out.push_str(&format!("neigh {} lladdr {} dev {} PERMANENT\n", n.ip, n.mac, n.device));
        }
        for e in self.fdb.values() {
            out.push_str(&format!("fdb {} dev {} dst {} self permanent\n", e.mac, e.device, e.dst));
        }
        for r in self.routes.values() {
            out.push_str(&render_route(r));
            out.push('\n');
        }
        out
    }
}

pub fn render_link(link: &Link) -> String {
    let LinkKind::Vxlan(v) = &link.kind;
    format!(
        "link {} vxlan id {} local {} dev #{} dstport {}{}{} address {} mtu {}{}",
        link.name,
        v.vni,
        v.local,
        v.underlay_index,
        v.port,
        if v.learning { "" } else { " nolearning" },
        if v.gbp { " gbp" } else { "" },
        link.mac,
        link.mtu,
        if link.up { " up" } else { " down" },
    )
}

pub fn render_route(r: &Route) -> String {
    format!(
        "route {} via {} dev {}{} proto {}",
        r.dst,
        r.gateway,
        r.device,
        if r.onlink { " onlink" } else { "" },
        r.protocol
    )
}

/// What a kernel observation covers: only these objects are ever read, compared or changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Devices weft owns. Addresses, neighbours, FDB entries and routes on them are weft's.
    pub links: Vec<String>,
    /// Routes in the main table with this protocol are weft's, whatever their device.
    pub route_protocol: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text() {
        let mac: MacAddr = "c6:d2:32:6f:8f:44".parse().unwrap();
        assert_eq!(mac.to_string(), "c6:d2:32:6f:8f:44");
        assert_eq!(serde_json::to_string(&mac).unwrap(), "\"c6:d2:32:6f:8f:44\"");
        assert!("c6:d2:32:6f:8f".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:4g".parse::<MacAddr>().is_err());
        assert!("c6:d2:32:6f:8f:444".parse::<MacAddr>().is_err());
    }

    #[test]
    fn derived_mac_is_stable_local_unicast() {
        let a = MacAddr::derived_from("198.18.0.1/1");
        assert_eq!(a, MacAddr::derived_from("198.18.0.1/1"));
        assert_ne!(a, MacAddr::derived_from("198.18.0.2/1"));
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered unicast: {a}");
    }
}
