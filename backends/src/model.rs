//! The kernel objects weft owns, as plain values.
//!
//! Desired state and observed state share one type, [`KernelState`], so the diff is a comparison of two values of
//! the same shape. Every collection is ordered, which makes the rendered text (and the op order) deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::Family;

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

/// A network device's name, as routes, addresses, neighbours and FDB entries name their device.
///
/// Linux keeps names to 15 bytes (IFNAMSIZ less the NUL), so a name is stored inline, without an allocation:
/// the model of 10,000 VXLAN peers names a device 50,000 times, and a `String` each was 1.6 MB of heap. A longer
/// name (one no kernel accepts, from a configuration) is kept on the heap, so that the kernel refuses it with
/// its own error rather than this type losing it.
#[derive(Clone)]
pub struct DeviceName(NameRepr);

/// 16 bytes, as is `Option<DeviceName>`: the length of an inline name is an [`InlineLen`], whose unused values
/// tell the heap variant and `None` apart, and a heap name sits behind one thin pointer. Every neighbour and FDB
/// entry names its device twice (key and value): 8 bytes less each is 0.3 MB at 10,000 peers.
#[derive(Clone)]
enum NameRepr {
    Inline { len: InlineLen, bytes: [u8; DeviceName::INLINE] },
    Heap(Box<Box<str>>),
}

/// The length of an inline name, 0 to 15.
#[derive(Clone, Copy)]
#[repr(u8)]
enum InlineLen {
    L0,
    L1,
    L2,
    L3,
    L4,
    L5,
    L6,
    L7,
    L8,
    L9,
    L10,
    L11,
    L12,
    L13,
    L14,
    L15,
}

impl InlineLen {
    const ALL: [InlineLen; DeviceName::INLINE + 1] = {
        use InlineLen::*;
        [L0, L1, L2, L3, L4, L5, L6, L7, L8, L9, L10, L11, L12, L13, L14, L15]
    };

    fn get(self) -> usize {
        self as usize
    }
}

impl DeviceName {
    const INLINE: usize = 15;

    pub fn new(name: &str) -> DeviceName {
        match InlineLen::ALL.get(name.len()) {
            Some(&len) => {
                let mut bytes = [0; Self::INLINE];
                bytes[..len.get()].copy_from_slice(name.as_bytes());
                DeviceName(NameRepr::Inline { len, bytes })
            }
            None => DeviceName(NameRepr::Heap(Box::new(name.into()))),
        }
    }

    /// The name's bytes, without the UTF-8 check [`as_str`](Self::as_str) makes: comparisons in the model's maps
    /// (50,000 names at 10,000 peers) use these. Bytes order as their text does.
    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            NameRepr::Inline { len, bytes } => &bytes[..len.get()],
            NameRepr::Heap(name) => name.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built from a &str cut at its length: always whole UTF-8.
            NameRepr::Inline { len, bytes } => std::str::from_utf8(&bytes[..len.get()]).unwrap_or_default(),
            NameRepr::Heap(name) => name,
        }
    }
}

impl std::ops::Deref for DeviceName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl DeviceName {
    /// Whether both names are inline and the same, told by one fixed-size comparison: nearly every comparison in
    /// the model's maps (keys of neighbours and FDB entries) is between two names of the same device, and a
    /// variable-length `memcmp` call for each was a tenth of a full pass at 20,000 peers. Bytes past an inline
    /// name's length are always zero.
    fn same_inline(&self, other: &DeviceName) -> bool {
        match (&self.0, &other.0) {
            (NameRepr::Inline { len: a, bytes: x }, NameRepr::Inline { len: b, bytes: y }) => {
                a.get() == b.get() && x == y
            }
            _ => false,
        }
    }
}

impl PartialEq for DeviceName {
    fn eq(&self, other: &DeviceName) -> bool {
        self.same_inline(other) || self.as_bytes() == other.as_bytes()
    }
}

impl Eq for DeviceName {}

impl PartialOrd for DeviceName {
    fn partial_cmp(&self, other: &DeviceName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DeviceName {
    fn cmp(&self, other: &DeviceName) -> std::cmp::Ordering {
        if self.same_inline(other) {
            return std::cmp::Ordering::Equal;
        }
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for DeviceName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for DeviceName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for DeviceName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl From<&str> for DeviceName {
    fn from(name: &str) -> DeviceName {
        DeviceName::new(name)
    }
}

impl From<&String> for DeviceName {
    fn from(name: &String) -> DeviceName {
        DeviceName::new(name)
    }
}

impl From<String> for DeviceName {
    fn from(name: String) -> DeviceName {
        DeviceName::new(&name)
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
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
    /// A TUN device. rtnetlink cannot create one: the userspace data plane opens /dev/net/tun, which creates it,
    /// and the kernel applier only sets its MTU, state and addresses (a missing one is
    /// [`KernelError::TunNotOpened`](crate::kernel::KernelError::TunNotOpened)).
    Tun,
    /// A WireGuard device. rtnetlink creates it; its keys, port and peers are configured over WireGuard's own
    /// generic-netlink family by the backend, which rtnetlink cannot see, so they are not part of this model.
    Wireguard,
    /// A device weft references (a route leaves through it) but neither creates, changes nor deletes, such as the
    /// underlay. Only its existence is observed: MAC, MTU and state read as zero, zero and down. A device of a kind
    /// the model does not know, found under one of our names, reads as this too, so it is re-created.
    Unowned,
}

impl LinkKind {
    /// Whether devices of this kind have an Ethernet address weft sets (TUN and WireGuard are layer 3).
    pub fn has_mac(&self) -> bool {
        matches!(self, LinkKind::Vxlan(_))
    }
}

/// A network device weft owns, or one it only references ([`LinkKind::Unowned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    pub mac: MacAddr,
    pub mtu: u32,
    pub up: bool,
}

impl Link {
    /// A reference to a device someone else manages; equal to what observing it yields.
    pub fn unowned(name: impl Into<String>) -> Link {
        Link { name: name.into(), kind: LinkKind::Unowned, mac: MacAddr::default(), mtu: 0, up: false }
    }

    /// Whether `other` can be turned into `self` in place (MAC, MTU, up), without re-creating the device.
    pub fn same_kind(&self, other: &Link) -> bool {
        self.kind == other.kind
    }

    pub fn is_owned(&self) -> bool {
        self.kind != LinkKind::Unowned
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub device: DeviceName,
    pub addr: IpNetwork,
}

/// What the kernel does with a packet that matches a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Forward it: through `gateway` and/or out of `device`.
    Unicast,
    /// Drop it silently. Holds a prefix (our own subnet, say) so that its packets never follow the default route.
    Blackhole,
}

/// A route in the main table. The destination is the identity: weft keeps at most one route per prefix (the
/// kernel may hold others for the same prefix at other metrics, such as a bridge's connected route).
///
/// A unicast route has a device, a gateway or both: `via G dev D` (VXLAN, host-gw), `dev D` alone (WireGuard,
/// TUN: the device is point-to-point). A blackhole route has neither.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub kind: RouteKind,
    pub gateway: Option<IpAddr>,
    pub device: Option<DeviceName>,
    pub onlink: bool,
    pub protocol: u8,
    /// The route's priority among routes to the same prefix, lower wins. 0 is the family's default (the kernel
    /// stores IPv4's as 0 and IPv6's as [`IPV6_DEFAULT_METRIC`]; both read back as 0 here).
    pub metric: u32,
}

/// The metric the kernel gives an IPv6 route added without one.
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// The metric of the blackhole for our own subnet: the least preferred a route can be, so that any other route
/// to the same prefix wins while it exists (the connected route of the bridge, metric 0 in IPv4 and 256 in IPv6)
/// and the blackhole only catches what no other route takes.
pub const LAST_RESORT_METRIC: u32 = u32::MAX;

impl Route {
    /// `dst via gateway dev device [onlink]`.
    pub fn via(dst: IpNetwork, gateway: IpAddr, device: impl Into<DeviceName>, onlink: bool, protocol: u8) -> Route {
        Route {
            dst,
            kind: RouteKind::Unicast,
            gateway: Some(gateway),
            device: Some(device.into()),
            onlink,
            protocol,
            metric: 0,
        }
    }

    /// `dst dev device`: everything for `dst` leaves through a point-to-point device.
    pub fn dev(dst: IpNetwork, device: impl Into<DeviceName>, protocol: u8) -> Route {
        Route {
            dst,
            kind: RouteKind::Unicast,
            gateway: None,
            device: Some(device.into()),
            onlink: false,
            protocol,
            metric: 0,
        }
    }

    /// `blackhole dst`.
    pub fn blackhole(dst: IpNetwork, protocol: u8) -> Route {
        Route { dst, kind: RouteKind::Blackhole, gateway: None, device: None, onlink: false, protocol, metric: 0 }
    }

    /// The same route at `metric` (0: the family's default).
    pub fn with_metric(self, metric: u32) -> Route {
        Route { metric, ..self }
    }

    /// The metric as the model holds it, from what the kernel reports: absent or the family's default is 0.
    pub fn normalized_metric(dst: IpNetwork, reported: Option<u32>) -> u32 {
        match reported {
            Some(IPV6_DEFAULT_METRIC) if dst.is_ipv6() => 0,
            Some(metric) => metric,
            None => 0,
        }
    }

    pub fn is_on(&self, device: &str) -> bool {
        self.device.as_deref() == Some(device)
    }

    /// Why the kernel would refuse this route whatever the devices: a unicast route needs a device or a gateway,
    /// a blackhole route has neither. Both kernels check this first, so they refuse it the same way.
    pub fn check(&self) -> Result<(), InvalidRoute> {
        let why = match (self.kind, self.gateway.is_some(), self.device.is_some()) {
            (RouteKind::Unicast, false, false) => "a unicast route needs a gateway or a device",
            (RouteKind::Blackhole, true, _) | (RouteKind::Blackhole, _, true) => {
                "a blackhole route has no gateway or device"
            }
            _ if self.gateway.is_some_and(|g| Family::of(g) != Family::of(self.dst.ip())) => {
                "the gateway's family differs from the destination's"
            }
            _ => return Ok(()),
        };
        Err(InvalidRoute { route: render_route(self), why })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{route}: {why}")]
pub struct InvalidRoute {
    pub route: String,
    pub why: &'static str,
}

/// A permanent neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub device: DeviceName,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A permanent forwarding-database entry of a VXLAN device: frames for `mac` are sent to the VTEP at `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub device: DeviceName,
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// The kinds of objects weft owns: devices first, then what lives on them, in the order their additions go in
/// (a route after the neighbour and FDB entry it resolves through). Their deletions go in the reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Links,
    Addresses,
    Neighbours,
    Fdb,
    Routes,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 5] =
        [ObjectKind::Links, ObjectKind::Addresses, ObjectKind::Neighbours, ObjectKind::Fdb, ObjectKind::Routes];
    /// Every kind but the devices themselves, in order.
    pub const ON_DEVICES: [ObjectKind; 4] =
        [ObjectKind::Addresses, ObjectKind::Neighbours, ObjectKind::Fdb, ObjectKind::Routes];
}

/// Everything weft owns in one network namespace, or everything it wants to own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub links: BTreeMap<String, Link>,
    pub addresses: BTreeSet<Address>,
    pub routes: BTreeMap<IpNetwork, Route>,
    pub neighbours: BTreeMap<(DeviceName, IpAddr), Neighbour>,
    pub fdb: BTreeMap<(DeviceName, MacAddr), FdbEntry>,
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
        self.routes.retain(|_, r| !r.is_on(device));
        self.neighbours.retain(|_, n| n.device != device);
        self.fdb.retain(|_, e| e.device != device);
    }

    /// Keeps only the objects of `kind`.
    pub fn keep_only(&mut self, kind: ObjectKind) {
        let kept = std::mem::take(self);
        match kind {
            ObjectKind::Links => self.links = kept.links,
            ObjectKind::Addresses => self.addresses = kept.addresses,
            ObjectKind::Neighbours => self.neighbours = kept.neighbours,
            ObjectKind::Fdb => self.fdb = kept.fdb,
            ObjectKind::Routes => self.routes = kept.routes,
        }
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
    let state = format!("mtu {}{}", link.mtu, if link.up { " up" } else { " down" });
    match &link.kind {
        LinkKind::Vxlan(v) => format!(
            "link {} vxlan id {} local {} dev #{} dstport {}{}{} address {} {state}",
            link.name,
            v.vni,
            v.local,
            v.underlay_index,
            v.port,
            if v.learning { "" } else { " nolearning" },
            if v.gbp { " gbp" } else { "" },
            link.mac,
        ),
        LinkKind::Tun => format!("link {} tun {state}", link.name),
        LinkKind::Wireguard => format!("link {} wireguard {state}", link.name),
        LinkKind::Unowned => format!("link {} unowned", link.name),
    }
}

pub fn render_route(r: &Route) -> String {
    let mut out = String::from("route ");
    if r.kind == RouteKind::Blackhole {
        out.push_str("blackhole ");
    }
    out.push_str(&r.dst.to_string());
    if let Some(gateway) = r.gateway {
        out.push_str(&format!(" via {gateway}"));
    }
    if let Some(device) = &r.device {
        out.push_str(&format!(" dev {device}"));
    }
    if r.onlink {
        out.push_str(" onlink");
    }
    out.push_str(&format!(" proto {}", r.protocol));
    if r.metric != 0 {
        out.push_str(&format!(" metric {}", r.metric));
    }
    out
}

/// What a kernel observation covers: only these objects are ever read, compared or changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Devices weft owns. Addresses, neighbours, FDB entries and routes on them are weft's.
    pub links: Vec<String>,
    /// Routes in the main table with this protocol are weft's, whatever their device (within `route_networks`).
    pub route_protocol: u8,
    /// The destinations a `route_protocol` route must fall inside to be ours: the cluster networks. Several weftd
    /// on one host (different etcd prefixes, networks and VNIs) tag their routes with the same protocol, so each
    /// claims only the routes into its own networks. Empty: every route with the protocol.
    pub route_networks: Vec<IpNetwork>,
    /// Devices weft only references ([`LinkKind::Unowned`]): observed as present or absent, never changed.
    pub referenced: Vec<String>,
    /// Firewall tables weft owns; every rule in them is weft's, nothing outside them is.
    pub tables: Vec<crate::rules::TableId>,
}

impl Scope {
    /// Devices weft owns (`links`) and nothing else.
    pub fn links(links: Vec<String>, route_protocol: u8) -> Scope {
        Scope { links, route_protocol, ..Scope::default() }
    }

    /// Whether a main-table route is ours: it leaves through a device we own, or it carries our protocol and
    /// leads into one of our networks.
    pub fn owns_route(&self, protocol: u8, on_owned_link: bool, dst: IpNetwork) -> bool {
        let inside = |n: &IpNetwork| {
            Family::of(n.ip()) == Family::of(dst.ip()) && n.prefix() <= dst.prefix() && n.contains(dst.network())
        };
        on_owned_link
            || (protocol == self.route_protocol
                && (self.route_networks.is_empty() || self.route_networks.iter().any(inside)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_owned_by_device_or_by_protocol_inside_our_networks() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        let any = Scope::links(vec!["flannel.1".into()], 87);
        assert!(any.owns_route(87, false, net("10.9.0.0/24")), "no networks: every protocol-87 route");
        assert!(!any.owns_route(4, false, net("10.9.0.0/24")));
        let mine = Scope { route_networks: vec![net("10.244.0.0/16"), net("fd00:244::/56")], ..any };
        assert!(mine.owns_route(87, false, net("10.244.3.0/24")));
        assert!(mine.owns_route(87, false, net("fd00:244:0:3::/64")));
        assert!(!mine.owns_route(87, false, net("10.245.3.0/24")), "another weftd's network");
        assert!(!mine.owns_route(87, false, net("10.0.0.0/8")), "wider than our network");
        assert!(mine.owns_route(4, true, net("10.245.3.0/24")), "on our own device, whatever it is");
    }

    #[test]
    fn a_family_default_metric_reads_as_zero() {
        let v4: IpNetwork = "10.244.1.0/24".parse().unwrap();
        let v6: IpNetwork = "fd00:244:0:1::/64".parse().unwrap();
        assert_eq!(Route::normalized_metric(v4, None), 0);
        assert_eq!(Route::normalized_metric(v6, Some(IPV6_DEFAULT_METRIC)), 0, "what the kernel reports for 0");
        assert_eq!(Route::normalized_metric(v4, Some(IPV6_DEFAULT_METRIC)), 1024, "IPv4 has no such default");
        assert_eq!(Route::normalized_metric(v6, Some(LAST_RESORT_METRIC)), LAST_RESORT_METRIC);
    }

    #[test]
    fn a_route_at_a_new_metric_replaces_the_old_one_in_two_steps() {
        let dst: IpNetwork = "10.244.1.0/24".parse().unwrap();
        let mut observed = KernelState::default();
        observed.add_route(Route::blackhole(dst, WEFT_ROUTE_PROTOCOL));
        let mut desired = KernelState::default();
        let last_resort = Route::blackhole(dst, WEFT_ROUTE_PROTOCOL).with_metric(LAST_RESORT_METRIC);
        desired.add_route(last_resort.clone());
        let ops: Vec<String> = crate::diff::diff(&desired, &observed).iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            vec![
                "replace route blackhole 10.244.1.0/24 proto 87 metric 4294967295",
                "delete route blackhole 10.244.1.0/24 proto 87",
            ],
            "the kernel adds the new one beside the old one, which must go by name"
        );
    }

    #[test]
    fn device_names_keep_their_text_and_order_inline_or_not() {
        let longest: DeviceName = "flannel.1048575".into();
        let too_long: DeviceName = "flannel.16777215".into();
        assert!(matches!(longest.0, NameRepr::Inline { .. }), "15 bytes, the kernel's limit, are kept inline");
        assert!(matches!(too_long.0, NameRepr::Heap(_)), "a name no kernel takes is kept whole");
        assert_eq!((longest.as_str(), too_long.as_str()), ("flannel.1048575", "flannel.16777215"));
        let mut names: Vec<DeviceName> =
            ["weft0", "flannel.16777215", "", "flannel.1", "eth0"].map(DeviceName::from).into();
        names.sort();
        let texts: Vec<&str> = names.iter().map(DeviceName::as_str).collect();
        assert_eq!(texts, ["", "eth0", "flannel.1", "flannel.16777215", "weft0"], "ordered as their text");
        assert_eq!(format!("{} {:?}", names[2], names[2]), "flannel.1 \"flannel.1\"");
        assert_eq!(std::mem::size_of::<DeviceName>(), 16);
        assert_eq!(std::mem::size_of::<Option<DeviceName>>(), 16);
    }

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
