//! Typed kernel events: the objects a notification announces, decoded with the same codecs as dumps.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;

use crate::address::Address;
use crate::fdb::FdbEntry;
use crate::link::Link;
use crate::neighbour::Neighbour;
use crate::route::Route;

/// One change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// RTM_NEWLINK: a device appeared or changed (state, name, MTU, ...).
    LinkAdded(Link),
    LinkDeleted(Link),
    AddressAdded(Address),
    AddressDeleted(Address),
    /// RTM_NEWROUTE: a route was added or replaced.
    RouteAdded(Route),
    RouteDeleted(Route),
    /// An ARP/NDP entry was added or changed.
    NeighbourAdded(Neighbour),
    NeighbourDeleted(Neighbour),
    /// An FDB entry was added or changed.
    FdbAdded(FdbEntry),
    FdbDeleted(FdbEntry),
    /// The socket's buffer overflowed: some notifications were lost, anything may have changed.
    Overrun,
}

/// What a notification announces, known from its type alone: lets a reader that ignores most notifications
/// (during a cold start, tens of thousands of additions) skip decoding them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    LinkAdded,
    LinkDeleted,
    AddressAdded,
    AddressDeleted,
    RouteAdded,
    RouteDeleted,
    /// An ARP/NDP or FDB entry was added or changed.
    NeighbourAdded,
    /// An ARP/NDP or FDB entry was deleted.
    NeighbourDeleted,
    Overrun,
}

impl EventKind {
    pub fn of(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<EventKind> {
        use RouteNetlinkMessage as M;
        Some(match &message.payload {
            NetlinkPayload::InnerMessage(inner) => match inner {
                M::NewLink(_) => EventKind::LinkAdded,
                M::DelLink(_) => EventKind::LinkDeleted,
                M::NewAddress(_) => EventKind::AddressAdded,
                M::DelAddress(_) => EventKind::AddressDeleted,
                M::NewRoute(_) => EventKind::RouteAdded,
                M::DelRoute(_) => EventKind::RouteDeleted,
                M::NewNeighbour(_) => EventKind::NeighbourAdded,
                M::DelNeighbour(_) => EventKind::NeighbourDeleted,
                _ => return None,
            },
            NetlinkPayload::Overrun(_) => EventKind::Overrun,
            _ => return None,
        })
    }
}

/// Multicast groups (RTMGRP_*) to subscribe a socket to, as a bitmask.
pub mod groups {
    pub const LINK: u32 = libc::RTMGRP_LINK as u32;
    pub const NEIGHBOUR: u32 = libc::RTMGRP_NEIGH as u32;
    pub const IPV4_ADDRESS: u32 = libc::RTMGRP_IPV4_IFADDR as u32;
    pub const IPV6_ADDRESS: u32 = libc::RTMGRP_IPV6_IFADDR as u32;
    pub const IPV4_ROUTE: u32 = libc::RTMGRP_IPV4_ROUTE as u32;
    pub const IPV6_ROUTE: u32 = libc::RTMGRP_IPV6_ROUTE as u32;
}

impl Event {
    /// The event a notification announces; None for messages that announce nothing weft reads (and for objects
    /// the codecs cannot read, such as a route of another family).
    pub fn from_message(message: &RouteNetlinkMessage) -> Option<Event> {
        use RouteNetlinkMessage as M;
        Some(match message {
            M::NewLink(m) => Event::LinkAdded(Link::from_message(m)?),
            M::DelLink(m) => Event::LinkDeleted(Link::from_message(m)?),
            M::NewAddress(m) => Event::AddressAdded(Address::from_message(m)?),
            M::DelAddress(m) => Event::AddressDeleted(Address::from_message(m)?),
            M::NewRoute(m) => Event::RouteAdded(Route::from_message(m)?),
            M::DelRoute(m) => Event::RouteDeleted(Route::from_message(m)?),
            M::NewNeighbour(m) => match FdbEntry::from_message(m) {
                Some(entry) => Event::FdbAdded(entry),
                None => Event::NeighbourAdded(Neighbour::from_message(m)?),
            },
            M::DelNeighbour(m) => match FdbEntry::from_message(m) {
                Some(entry) => Event::FdbDeleted(entry),
                None => Event::NeighbourDeleted(Neighbour::from_message(m)?),
            },
            _ => return None,
        })
    }

    /// The event of a whole netlink message, overruns included.
    pub fn from_netlink(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Event> {
        match &message.payload {
            NetlinkPayload::InnerMessage(inner) => Event::from_message(inner),
            NetlinkPayload::Overrun(_) => Some(Event::Overrun),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkHeader;

    use super::*;
    use crate::route;

    #[test]
    fn decodes_notifications() {
        let route = route::Route { device: Some(2), ..route::Route::unicast("10.244.2.0/24".parse().unwrap(), 87) };
        let RouteNetlinkMessage::NewRoute(msg) = route::replace(&route).message().unwrap().clone() else { panic!() };
        assert_eq!(Event::from_message(&RouteNetlinkMessage::DelRoute(msg)), Some(Event::RouteDeleted(route)));

        let mac = [2, 0, 0, 0, 0, 1];
        let RouteNetlinkMessage::NewNeighbour(fdb) =
            crate::fdb::replace(7, mac, "198.18.0.2".parse().unwrap()).message().unwrap().clone()
        else {
            panic!()
        };
        assert!(
            matches!(Event::from_message(&RouteNetlinkMessage::NewNeighbour(fdb)), Some(Event::FdbAdded(e)) if e.index == 7)
        );
        let RouteNetlinkMessage::NewNeighbour(arp) =
            crate::neighbour::replace(7, "10.244.2.0".parse().unwrap(), mac).message().unwrap().clone()
        else {
            panic!()
        };
        assert!(matches!(
            Event::from_message(&RouteNetlinkMessage::DelNeighbour(arp)),
            Some(Event::NeighbourDeleted(n)) if n.mac == Some(mac)
        ));

        let overrun = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::Overrun(vec![]));
        assert_eq!(Event::from_netlink(&overrun), Some(Event::Overrun));
        assert_eq!(EventKind::of(&overrun), Some(EventKind::Overrun));
        let deletion = RouteNetlinkMessage::DelNeighbour(Default::default());
        assert_eq!(EventKind::of(&NetlinkMessage::from(deletion)), Some(EventKind::NeighbourDeleted));
        assert_eq!(Event::from_message(&RouteNetlinkMessage::GetLink(Default::default())), None);
    }
}
