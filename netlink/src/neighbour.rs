//! ARP/NDP entries: what a neighbour message of family inet/inet6 says, and replace/delete/dump requests. FDB
//! entries share the message type (family bridge) and live in [`crate::fdb`].

use std::net::IpAddr;

use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Action, Object};
use crate::link::mac_of;
use crate::request::{decodable, Request};
use crate::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    /// None for an entry still being resolved (or a failed one).
    pub mac: Option<Mac>,
    /// NUD_PERMANENT: set by someone, never learned or aged out.
    pub permanent: bool,
}

impl Neighbour {
    /// Reads an ARP/NDP entry; None for FDB entries and other families.
    pub fn from_message(msg: &NeighbourMessage) -> Option<Neighbour> {
        let header = &msg.header;
        let arp_or_ndp = matches!(header.family, AddressFamily::Inet | AddressFamily::Inet6);
        let ip = destination_of(msg).filter(|_| arp_or_ndp)?;
        let permanent = header.state == NeighbourState::Permanent;
        Some(Neighbour { index: header.ifindex, ip, mac: lladdr_of(msg), permanent })
    }
}

pub(crate) fn lladdr_of(msg: &NeighbourMessage) -> Option<Mac> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => mac_of(bytes),
        _ => None,
    })
}

/// NDA_DST. The crate decodes it by the message's family, so in the bridge family (FDB entries) it arrives as raw
/// bytes: 4 for an IPv4 VTEP, 16 for IPv6.
pub(crate) fn destination_of(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => ip_from_bytes(bytes),
        _ => None,
    })
}

/// An IP address from its network-order bytes.
fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::from(v6))
    } else {
        None
    }
}

/// What identifies an ARP/NDP entry to the kernel: device and IP.
fn key(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.header.ifindex = index;
    msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
    msg
}

/// A permanent entry `ip` -> `mac` on device `index`, replacing any entry for `ip`.
pub fn replace(index: u32, ip: IpAddr, mac: Mac) -> Request {
    let mut msg = key(index, ip);
    msg.header.state = NeighbourState::Permanent;
    msg.header.kind = RouteType::Unspec;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    Request::replace(Object::Neighbour, RouteNetlinkMessage::NewNeighbour(msg))
}

/// Deletes the entry for `ip` on device `index`; ENOENT when it is not there.
pub fn delete(index: u32, ip: IpAddr) -> Request {
    Request::plain(Action::Delete, Object::Neighbour, RouteNetlinkMessage::DelNeighbour(key(index, ip)))
}

/// The ARP (or, with `ipv6`, NDP) entries, with strict checking only those of device `index`.
pub fn dump(ipv6: bool, index: Option<u32>) -> Request {
    let family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    Request::dump(Object::Neighbour, RouteNetlinkMessage::GetNeighbour(dump_message(family, index)))
}

/// A neighbour dump request: the device filter goes in NDA_IFINDEX, the header stays zero (strict checking
/// refuses a dump with header fields set).
pub(crate) fn dump_message(family: AddressFamily, index: Option<u32>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.state = NeighbourState::None;
    if let Some(index) = index {
        msg.attributes.push(NeighbourAttribute::IfIndex(index));
    }
    msg
}

decodable!(Neighbour, NewNeighbour, |n| Some(n.index));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::MAC;

    #[test]
    fn golden_bytes_of_a_permanent_entry() {
        let bytes = replace(7, "10.244.2.0".parse().unwrap(), MAC).to_bytes(2);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: length 48, RTM_NEWNEIGH (28), REQUEST|ACK|REPLACE|CREATE, seq 2
            48, 0, 0, 0, 28, 0, 5, 5, 2, 0, 0, 0, 0, 0, 0, 0,
            // ndmsg: AF_INET, pads, ifindex 7, state PERMANENT (0x80), flags 0, type 0
            2, 0, 0, 0, 7, 0, 0, 0, 0x80, 0, 0, 0,
            // NDA_DST, NDA_LLADDR
            8, 0, 1, 0, 10, 244, 2, 0,
            10, 0, 2, 0, 0x0e, 0x2a, 0x4f, 0x00, 0x12, 0x9c, 0, 0,
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn reads_entries_and_their_state() {
        let RouteNetlinkMessage::NewNeighbour(mut msg) =
            replace(7, "fd00::2".parse().unwrap(), MAC).message().unwrap().clone()
        else {
            panic!()
        };
        let want = Neighbour { index: 7, ip: "fd00::2".parse().unwrap(), mac: Some(MAC), permanent: true };
        assert_eq!(Neighbour::from_message(&msg), Some(want));
        msg.header.state = NeighbourState::Stale;
        assert!(!Neighbour::from_message(&msg).unwrap().permanent);
        msg.header.family = AddressFamily::Bridge;
        assert_eq!(Neighbour::from_message(&msg), None, "an FDB entry is not a neighbour");
    }

    #[test]
    fn decodes_raw_ip_bytes() {
        assert_eq!(ip_from_bytes(&[198, 18, 0, 2]), Some("198.18.0.2".parse().unwrap()));
        let v6: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        assert_eq!(ip_from_bytes(&v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(ip_from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn dump_filters_by_device_in_an_attribute() {
        let RouteNetlinkMessage::GetNeighbour(msg) = dump(true, Some(7)).message().unwrap().clone() else { panic!() };
        assert_eq!((msg.header.family, msg.header.ifindex), (AddressFamily::Inet6, 0));
        assert_eq!(msg.attributes, vec![NeighbourAttribute::IfIndex(7)]);
    }
}
