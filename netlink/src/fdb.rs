//! Forwarding database entries of a device (family bridge neighbour messages): the MAC -> remote VTEP entries a
//! VXLAN device keeps, and replace/delete/dump requests.

use std::net::IpAddr;

use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Action, Object};
use crate::neighbour::{destination_of, dump_message, lladdr_of};
use crate::request::{decodable, Request};
use crate::Mac;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    /// NDA_DST: the remote VTEP of a VXLAN entry.
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// NTF_SELF: the device's own entry, not one a bridge master keeps for the device as its port.
    pub own: bool,
}

impl FdbEntry {
    /// Reads an FDB entry; None for ARP/NDP entries.
    pub fn from_message(msg: &NeighbourMessage) -> Option<FdbEntry> {
        if msg.header.family != AddressFamily::Bridge {
            return None;
        }
        Some(FdbEntry {
            index: msg.header.ifindex,
            mac: lladdr_of(msg)?,
            dst: destination_of(msg),
            permanent: msg.header.state == NeighbourState::Permanent,
            own: msg.header.flags.contains(NeighbourFlags::Own),
        })
    }
}

/// What identifies an FDB entry: device and MAC. Without NDA_DST the VXLAN driver removes the entry with all its
/// remote destinations.
fn key(index: u32, mac: Mac) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    // NeighbourFlags::Own is NTF_SELF: the device's own entry, not a bridge master's.
    msg.header.flags = NeighbourFlags::Own;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

/// A permanent entry `mac` -> `dst` of device `index` itself, replacing any entry for `mac`.
pub fn replace(index: u32, mac: Mac, dst: IpAddr) -> Request {
    let mut msg = key(index, mac);
    msg.header.kind = RouteType::Unspec;
    msg.attributes.push(NeighbourAttribute::Destination(dst.into()));
    Request::replace(Object::Fdb, RouteNetlinkMessage::NewNeighbour(msg))
}

/// Deletes the entry for `mac` with all its destinations; ENOENT when it is not there.
pub fn delete(index: u32, mac: Mac) -> Request {
    Request::plain(Action::Delete, Object::Fdb, RouteNetlinkMessage::DelNeighbour(key(index, mac)))
}

/// The FDB entries, with strict checking only those of device `index`.
pub fn dump(index: Option<u32>) -> Request {
    Request::dump(Object::Fdb, RouteNetlinkMessage::GetNeighbour(dump_message(AddressFamily::Bridge, index)))
}

decodable!(FdbEntry, NewNeighbour, |e| Some(e.index));

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    use super::*;
    use crate::tests::MAC;

    #[test]
    fn round_trips_a_vtep_entry_of_either_family() {
        for dst in ["198.18.0.2", "fd00::2"] {
            let dst: IpAddr = dst.parse().unwrap();
            let bytes = replace(7, MAC, dst).to_bytes(1);
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap().payload
            else {
                panic!()
            };
            let want = FdbEntry { index: 7, mac: MAC, dst: Some(dst), permanent: true, own: true };
            assert_eq!(FdbEntry::from_message(&msg), Some(want));
        }
    }

    #[test]
    fn golden_bytes_of_a_deletion() {
        let bytes = delete(7, MAC).to_bytes(4);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: length 40, RTM_DELNEIGH (29), REQUEST|ACK, seq 4
            40, 0, 0, 0, 29, 0, 5, 0, 4, 0, 0, 0, 0, 0, 0, 0,
            // ndmsg: AF_BRIDGE (7), ifindex 7, state PERMANENT, flags NTF_SELF (2), type 0
            7, 0, 0, 0, 7, 0, 0, 0, 0x80, 0, 2, 0,
            // NDA_LLADDR, no NDA_DST
            10, 0, 2, 0, 0x0e, 0x2a, 0x4f, 0x00, 0x12, 0x9c, 0, 0,
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn tells_own_entries_from_a_masters() {
        let RouteNetlinkMessage::NewNeighbour(mut msg) =
            replace(7, MAC, "198.18.0.2".parse().unwrap()).message().unwrap().clone()
        else {
            panic!()
        };
        msg.header.flags = NeighbourFlags::Controller;
        assert!(!FdbEntry::from_message(&msg).unwrap().own);
        msg.header.family = AddressFamily::Inet;
        assert_eq!(FdbEntry::from_message(&msg), None);
        let answer =
            vec![RouteNetlinkMessage::NewNeighbour(key(7, MAC)), RouteNetlinkMessage::NewNeighbour(key(8, MAC))];
        assert_eq!(crate::decode_on::<FdbEntry>(&answer, Some(8)).len(), 1);
        assert!(crate::decode_all::<crate::neighbour::Neighbour>(&answer).is_empty(), "FDB entries are no neighbours");
    }
}
