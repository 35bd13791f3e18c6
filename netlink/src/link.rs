//! Links: what a link message says (name, index, kind with VXLAN attributes, MAC, MTU, admin state, master, peer),
//! and the requests that create, change, read and delete links.

use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Action, Object};
use crate::request::{decodable, Request};
use crate::Mac;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND; None for devices without one (loopback, physical NICs).
    pub kind: Option<Kind>,
    /// None when the device has no 6-byte hardware address (TUN devices, IP tunnels, WireGuard).
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    /// The administrative state (IFF_UP), not the carrier.
    pub up: bool,
    /// IFLA_MASTER: the bridge (or other master) the device is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, its peer's index (in the peer's netns); for a VXLAN device, its underlay.
    pub link: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Vxlan(Vxlan),
    Bridge,
    Veth,
    Wireguard,
    Tun,
    Other(String),
}

/// The attributes of a VXLAN device that can only be set when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    /// IFLA_VXLAN_LOCAL(6); the kernel omits it when no local address is set.
    pub local: Option<IpAddr>,
    /// IFLA_VXLAN_LINK: the underlay device's index.
    pub underlay: Option<u32>,
    /// The UDP port (host order, as `ip -d link` shows it); None leaves the kernel's default.
    pub port: Option<u16>,
    pub learning: bool,
    pub gbp: bool,
}

impl Link {
    /// Reads an RTM_NEWLINK/RTM_DELLINK message; None when it carries no name (the kernel always sends one).
    pub fn from_message(msg: &LinkMessage) -> Option<Link> {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            link: None,
        };
        let mut named = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => {
                    link.name = name.clone();
                    named = true;
                }
                LinkAttribute::Address(bytes) => link.mac = mac_of(bytes),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Controller(index) => link.master = Some(*index),
                LinkAttribute::Link(index) => link.link = Some(*index),
                LinkAttribute::LinkInfo(info) => link.kind = kind_of(info),
                _ => {}
            }
        }
        named.then_some(link)
    }
}

/// A 6-byte hardware address, or None for any other length.
pub fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok()
}

fn kind_of(info: &[LinkInfo]) -> Option<Kind> {
    let kind = info.iter().find_map(|i| if let LinkInfo::Kind(kind) = i { Some(kind) } else { None })?;
    Some(match kind {
        InfoKind::Vxlan => Kind::Vxlan(vxlan_of(info)),
        InfoKind::Bridge => Kind::Bridge,
        InfoKind::Veth => Kind::Veth,
        InfoKind::Wireguard => Kind::Wireguard,
        InfoKind::Tun => Kind::Tun,
        other => Kind::Other(other.to_string()),
    })
}

fn vxlan_of(info: &[LinkInfo]) -> Vxlan {
    // Learning is on unless the kernel says otherwise (it always reports it).
    let mut vxlan = Vxlan { vni: 0, local: None, underlay: None, port: None, learning: true, gbp: false };
    let data = info.iter().filter_map(|i| if let LinkInfo::Data(InfoData::Vxlan(d)) = i { Some(d) } else { None });
    for attr in data.flatten() {
        match attr {
            InfoVxlan::Id(vni) => vxlan.vni = *vni,
            InfoVxlan::Local(ip) => vxlan.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => vxlan.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(index) => vxlan.underlay = Some(*index),
            // The crate decodes IFLA_VXLAN_PORT from network byte order.
            InfoVxlan::Port(port) => vxlan.port = Some(*port),
            InfoVxlan::Learning(on) => vxlan.learning = *on,
            InfoVxlan::Gbp => vxlan.gbp = true,
            _ => {}
        }
    }
    vxlan
}

/// How a request names a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

fn message_for(target: LinkRef<'_>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    match target {
        LinkRef::Index(index) => msg.header.index = index,
        LinkRef::Name(name) => msg.attributes.push(LinkAttribute::IfName(name.to_string())),
    }
    msg
}

fn set_up(msg: &mut LinkMessage, up: bool) {
    msg.header.flags.set(LinkFlags::Up, up);
    msg.header.change_mask.insert(LinkFlags::Up);
}

/// A new device: its name, MAC, MTU and kind data; created down unless `up`.
fn new_device(name: &str, mac: Option<Mac>, mtu: Option<u32>, up: bool, info: Vec<LinkInfo>) -> LinkMessage {
    let mut msg = message_for(LinkRef::Name(name));
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if up {
        set_up(&mut msg, true);
    }
    msg.attributes.push(LinkAttribute::LinkInfo(info));
    msg
}

/// A VXLAN device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVxlan<'a> {
    pub name: &'a str,
    pub vxlan: &'a Vxlan,
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
}

pub fn create_vxlan(device: &NewVxlan<'_>) -> Request {
    let v = device.vxlan;
    let mut data = vec![InfoVxlan::Id(v.vni)];
    if let Some(port) = v.port {
        data.push(InfoVxlan::Port(port));
    }
    data.push(InfoVxlan::Learning(v.learning));
    match v.local {
        Some(IpAddr::V4(ip)) => data.push(InfoVxlan::Local(ip)),
        Some(IpAddr::V6(ip)) => data.push(InfoVxlan::Local6(ip)),
        None => {}
    }
    if let Some(underlay) = v.underlay {
        data.push(InfoVxlan::Link(underlay));
    }
    if v.gbp {
        data.push(InfoVxlan::Gbp);
    }
    let info = vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(data))];
    let msg = new_device(device.name, Some(device.mac), Some(device.mtu), device.up, info);
    Request::create(Object::Link, RouteNetlinkMessage::NewLink(msg))
}

/// A bridge, created down (bring it up with [`change`]). The MAC is set so the bridge does not take over a port's.
pub fn create_bridge(name: &str, mtu: u32, mac: Mac) -> Request {
    let msg = new_device(name, Some(mac), Some(mtu), false, vec![LinkInfo::Kind(InfoKind::Bridge)]);
    Request::create(Object::Link, RouteNetlinkMessage::NewLink(msg))
}

/// A WireGuard device (keys and peers are set over the WireGuard genetlink family, not here); created down unless
/// `up`.
pub fn create_wireguard(name: &str, mtu: Option<u32>, up: bool) -> Request {
    let msg = new_device(name, None, mtu, up, vec![LinkInfo::Kind(InfoKind::Wireguard)]);
    Request::create(Object::Link, RouteNetlinkMessage::NewLink(msg))
}

/// A veth pair in one request: the host end (up, a port of `master`) and the peer created straight inside the
/// netns behind `peer_netns_fd`, under its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VethPair<'a> {
    pub host: &'a str,
    pub host_mac: Mac,
    pub peer: &'a str,
    pub peer_mac: Mac,
    pub mtu: u32,
    pub master: u32,
    pub peer_netns_fd: RawFd,
}

pub fn create_veth(pair: &VethPair<'_>) -> Request {
    // Not up here: the kernel opens the peer before the pair is linked, and veth_open then fails with ENOTCONN.
    let mut peer = message_for(LinkRef::Name(pair.peer));
    peer.attributes.push(LinkAttribute::Mtu(pair.mtu));
    peer.attributes.push(LinkAttribute::Address(pair.peer_mac.to_vec()));
    peer.attributes.push(LinkAttribute::NetNsFd(pair.peer_netns_fd));
    let mut msg = message_for(LinkRef::Name(pair.host));
    msg.attributes.push(LinkAttribute::Mtu(pair.mtu));
    msg.attributes.push(LinkAttribute::Address(pair.host_mac.to_vec()));
    msg.attributes.push(LinkAttribute::Controller(pair.master));
    set_up(&mut msg, true);
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    Request::create(Object::Link, RouteNetlinkMessage::NewLink(msg))
}

/// What to change on an existing link; fields left None stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub mtu: Option<u32>,
    /// Any IFLA_ADDRESS, even the current one, makes the kernel flush the device's neighbour entries: set it only
    /// to change it.
    pub mac: Option<Mac>,
    pub up: Option<bool>,
    pub master: Option<u32>,
}

pub fn change(target: LinkRef<'_>, change: &LinkChange) -> Request {
    let mut msg = message_for(target);
    if let Some(mtu) = change.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = change.mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(master) = change.master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    if let Some(up) = change.up {
        set_up(&mut msg, up);
    }
    Request::plain(Action::Change, Object::Link, RouteNetlinkMessage::NewLink(msg))
}

/// Hairpin mode on bridge port `target`.
pub fn set_hairpin(target: LinkRef<'_>, on: bool) -> Request {
    let mut msg = message_for(target);
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(on)])),
    ]));
    Request::plain(Action::Change, Object::Link, RouteNetlinkMessage::NewLink(msg))
}

/// Deletes a link; deleting either end of a veth removes both. ENODEV when it is not there.
pub fn delete(target: LinkRef<'_>) -> Request {
    Request::plain(Action::Delete, Object::Link, RouteNetlinkMessage::DelLink(message_for(target)))
}

/// Reads one link; ENODEV when it is not there.
pub fn get(target: LinkRef<'_>) -> Request {
    Request::plain(Action::Get, Object::Link, RouteNetlinkMessage::GetLink(message_for(target)))
}

/// Every link. (The kernel offers no index filter for link dumps.)
pub fn dump() -> Request {
    Request::dump(Object::Link, RouteNetlinkMessage::GetLink(LinkMessage::default()))
}

decodable!(Link, NewLink, |l| Some(l.index));

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkMessage;

    use super::*;
    use crate::tests::MAC;

    fn vxlan() -> Vxlan {
        Vxlan {
            vni: 1,
            local: Some("198.18.0.1".parse().unwrap()),
            underlay: Some(2),
            port: Some(8472),
            learning: false,
            gbp: true,
        }
    }

    /// Decodes a request's bytes back, as the kernel would read them.
    fn round_trip(request: &Request) -> RouteNetlinkMessage {
        let bytes = request.to_bytes(1);
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        match message.payload {
            netlink_packet_core::NetlinkPayload::InnerMessage(inner) => inner,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_a_vxlan_link() {
        let vx = vxlan();
        let request = create_vxlan(&NewVxlan { name: "flannel.1", vxlan: &vx, mac: MAC, mtu: 1450, up: true });
        let RouteNetlinkMessage::NewLink(mut msg) = round_trip(&request) else { panic!() };
        msg.header.index = 7;
        msg.attributes.push(LinkAttribute::Controller(3));
        let link = Link::from_message(&msg).unwrap();
        let want = Link {
            index: 7,
            name: "flannel.1".into(),
            kind: Some(Kind::Vxlan(vx)),
            mac: Some(MAC),
            mtu: Some(1450),
            up: true,
            master: Some(3),
            link: None,
        };
        assert_eq!(link, want);
    }

    #[test]
    fn vxlan_defaults_when_the_kernel_omits_attributes() {
        let info = vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Id(4)]))];
        let want = Vxlan { vni: 4, local: None, underlay: None, port: None, learning: true, gbp: false };
        assert_eq!(kind_of(&info), Some(Kind::Vxlan(want)));
        assert_eq!(kind_of(&[LinkInfo::Kind(InfoKind::Bridge)]), Some(Kind::Bridge));
        assert_eq!(kind_of(&[LinkInfo::Kind(InfoKind::Other("dummy".into()))]), Some(Kind::Other("dummy".into())));
        assert_eq!(kind_of(&[]), None);
    }

    #[test]
    fn a_link_without_a_name_is_not_read() {
        assert_eq!(Link::from_message(&LinkMessage::default()), None);
        assert_eq!(mac_of(&[1, 2, 3]), None);
    }

    #[test]
    fn golden_bytes_of_a_bridge() {
        let bytes = create_bridge("cni0", 1450, MAC).to_bytes(5);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: length 80, RTM_NEWLINK (16), REQUEST|ACK|EXCL|CREATE (0x605), seq 5, port 0
            80, 0, 0, 0, 16, 0, 5, 6, 5, 0, 0, 0, 0, 0, 0, 0,
            // ifinfomsg: family, pad, type, index, flags, change
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // IFLA_IFNAME "cni0\0"
            9, 0, 3, 0, b'c', b'n', b'i', b'0', 0, 0, 0, 0,
            // IFLA_ADDRESS
            10, 0, 1, 0, 0x0e, 0x2a, 0x4f, 0x00, 0x12, 0x9c, 0, 0,
            // IFLA_MTU 1450
            8, 0, 4, 0, 0xaa, 0x05, 0, 0,
            // IFLA_LINKINFO { IFLA_INFO_KIND "bridge" }
        ];
        assert_eq!(bytes[..want.len()], want[..]);
        let linkinfo = &bytes[want.len()..];
        assert_eq!(&linkinfo[2..4], &[18, 0], "IFLA_LINKINFO");
        assert_eq!(&linkinfo[4..8], &[11, 0, 1, 0], "IFLA_INFO_KIND");
        assert_eq!(&linkinfo[8..15], b"bridge\0");
    }

    #[test]
    fn builds_a_veth_pair_with_its_peer_in_the_netns() {
        let pair = VethPair {
            host: "veth1",
            host_mac: MAC,
            peer: "eth0",
            peer_mac: [2; 6],
            mtu: 1400,
            master: 4,
            peer_netns_fd: 9,
        };
        let RouteNetlinkMessage::NewLink(msg) = round_trip(&create_veth(&pair)) else { panic!() };
        let host = Link::from_message(&msg).unwrap();
        assert_eq!((host.name.as_str(), host.up, host.master, host.kind), ("veth1", true, Some(4), Some(Kind::Veth)));
        let peer = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(info) => info.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) => Some(peer.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap();
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(9)));
        assert!(!Link::from_message(&peer).unwrap().up, "the peer is brought up from inside");
    }

    #[test]
    fn changes_only_what_is_asked() {
        let request = change(LinkRef::Index(7), &LinkChange { mtu: Some(1400), up: Some(false), ..Default::default() });
        let RouteNetlinkMessage::NewLink(msg) = request.message().unwrap() else { panic!() };
        assert_eq!(msg.header.index, 7);
        assert_eq!(msg.attributes, vec![LinkAttribute::Mtu(1400)]);
        assert!(msg.header.change_mask.contains(LinkFlags::Up) && !msg.header.flags.contains(LinkFlags::Up));
        let by_name = delete(LinkRef::Name("flannel.1"));
        let RouteNetlinkMessage::DelLink(msg) = by_name.message().unwrap() else { panic!() };
        assert_eq!(msg.attributes, vec![LinkAttribute::IfName("flannel.1".into())]);
        let wg = round_trip(&create_wireguard("wg0", Some(1420), true));
        let RouteNetlinkMessage::NewLink(msg) = wg else { panic!() };
        assert_eq!(Link::from_message(&msg).unwrap().kind, Some(Kind::Wireguard));
    }
}
