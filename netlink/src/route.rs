//! Routes: what a route message says (destination, kind, gateway, output device, onlink, protocol, table,
//! metric, nexthop object), and replace/create/delete/dump requests. Gateway-less device routes, blackhole routes and gateway
//! routes (`10.244.2.0/24 via 198.18.0.3 dev eth0`) all go through the same code, for both families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Action, Object};
use crate::request::{decodable, decode_all, Request};

/// The main routing table.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// What the kernel does with packets to a route's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Forward them (via a gateway, or straight out of a device).
    Unicast,
    /// Drop them.
    Blackhole,
    /// Any other RTN_* type (local, broadcast, unreachable, ...), kept so it is never mistaken for ours.
    Other(u8),
}

/// A route as the kernel reports it, or as a request asks for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub kind: RouteKind,
    pub gateway: Option<IpAddr>,
    /// The output device; for a multipath route, the first next hop's.
    pub device: Option<u32>,
    pub onlink: bool,
    /// RTPROT_*: who made the route (kernel 2, boot 3, static 4, weft 87).
    pub protocol: u8,
    pub table: u32,
    /// RTA_PRIORITY; None when the kernel sent none (metric 0).
    pub metric: Option<u32>,
    /// RTA_NH_ID: the route goes through this nexthop object (see [`crate::nexthop`]). A request naming one sends
    /// no gateway, device or onlink flag (the nexthop carries them); a dump sends both while the kernel's
    /// `nexthop_compat_mode` is on (its default).
    pub nexthop: Option<u32>,
}

impl Route {
    /// A unicast route in the main table; add a gateway, device or onlink flag with struct update syntax.
    pub fn unicast(dst: IpNetwork, protocol: u8) -> Route {
        Route {
            dst,
            kind: RouteKind::Unicast,
            gateway: None,
            device: None,
            onlink: false,
            protocol,
            table: MAIN_TABLE,
            metric: None,
            nexthop: None,
        }
    }

    /// Reads an RTM_NEWROUTE/RTM_DELROUTE message; None for families other than IPv4 and IPv6.
    pub fn from_message(msg: &RouteMessage) -> Option<Route> {
        let header = &msg.header;
        let mut dst = None;
        let mut route = Route {
            dst: IpNetwork::new(unspecified(header.address_family)?, 0).ok()?,
            kind: kind_of(header.kind),
            gateway: None,
            device: None,
            onlink: header.flags.contains(RouteFlags::Onlink),
            protocol: u8::from(header.protocol),
            table: u32::from(header.table),
            metric: None,
            nexthop: None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
                RouteAttribute::Oif(index) => route.device = Some(*index),
                RouteAttribute::MultiPath(hops) if route.device.is_none() => {
                    route.device = hops.first().map(|h| h.interface_index)
                }
                // Tables above 255 only fit in RTA_TABLE.
                RouteAttribute::Table(table) => route.table = *table,
                RouteAttribute::Priority(metric) => route.metric = Some(*metric),
                RouteAttribute::NhId(id) => route.nexthop = Some(*id),
                _ => {}
            }
        }
        // The kernel puts IPv6 blackhole routes on lo; a blackhole has no device, in either family.
        if route.kind == RouteKind::Blackhole {
            route.device = None;
        }
        // A default route carries no destination attribute.
        if let Some(ip) = dst {
            route.dst = IpNetwork::new(ip, header.destination_prefix_length).ok()?;
        } else if header.destination_prefix_length != 0 {
            return None;
        }
        Some(route)
    }

    fn family(&self) -> AddressFamily {
        if self.dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        }
    }

    /// The message for a new route: scope link for a gateway-less unicast route (the destination is on the
    /// device, as `ip route add ... dev X` does), universe otherwise.
    fn message(&self) -> RouteMessage {
        let mut msg = self.key();
        msg.header.protocol = RouteProtocol::from(self.protocol);
        msg.header.scope = match (self.kind, self.gateway) {
            (RouteKind::Unicast, None) => RouteScope::Link,
            _ => RouteScope::Universe,
        };
        msg
    }

    /// Everything that selects this very route: destination, table, kind, gateway, device, onlink (or instead of
    /// these three its nexthop object), and the metric when set (two routes to one prefix at different metrics are two routes: a delete naming the metric
    /// removes only its own, a replace naming it leaves the other alone).
    fn key(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let header = &mut msg.header;
        header.address_family = self.family();
        header.destination_prefix_length = self.dst.prefix();
        header.kind = match self.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            RouteKind::Other(kind) => RouteType::from(kind),
        };
        if self.onlink && self.nexthop.is_none() {
            header.flags.insert(RouteFlags::Onlink);
        }
        match u8::try_from(self.table) {
            Ok(table) => header.table = table,
            Err(_) => {
                header.table = RouteHeader::RT_TABLE_UNSPEC;
                msg.attributes.push(RouteAttribute::Table(self.table));
            }
        }
        msg.attributes.push(RouteAttribute::Destination(address_of(self.dst.network())));
        if let Some(id) = self.nexthop {
            // The kernel refuses a gateway or device beside a nexthop id, and a delete naming them matches no
            // route that goes through a nexthop object.
            msg.attributes.push(RouteAttribute::NhId(id));
        } else {
            if let Some(gateway) = self.gateway {
                msg.attributes.push(RouteAttribute::Gateway(address_of(gateway)));
            }
            if let Some(device) = self.device {
                msg.attributes.push(RouteAttribute::Oif(device));
            }
        }
        if let Some(metric) = self.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        msg
    }
}

fn kind_of(kind: RouteType) -> RouteKind {
    match kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        other => RouteKind::Other(u8::from(other)),
    }
}

fn unspecified(family: AddressFamily) -> Option<IpAddr> {
    match family {
        AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    }
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn address_of(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(ip) => RouteAddress::Inet(ip),
        IpAddr::V6(ip) => RouteAddress::Inet6(ip),
    }
}

/// Adds `route`, or replaces the route to the same destination in its table.
pub fn replace(route: &Route) -> Request {
    Request::replace(Object::Route, RouteNetlinkMessage::NewRoute(route.message()))
}

/// Adds `route`; EEXIST when a route to the destination is there already.
pub fn create(route: &Route) -> Request {
    Request::create(Object::Route, RouteNetlinkMessage::NewRoute(route.message()))
}

/// Deletes `route`; ESRCH when it is not there. The kernel matches a delete against every field that is set:
/// protocol and scope are left as wildcards (what `ip route del` sends), gateway and device stay, so only the
/// route that was observed can match, never a foreign one to the same prefix.
pub fn delete(route: &Route) -> Request {
    let mut msg = route.key();
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = RouteScope::NoWhere;
    Request::plain(Action::Delete, Object::Route, RouteNetlinkMessage::DelRoute(msg))
}

/// What a route dump asks the kernel to leave out (with strict checking; without it the kernel sends every
/// route of the family and [`routes_in`] filters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFilter {
    pub table: Option<u32>,
    pub protocol: Option<u8>,
    pub device: Option<u32>,
}

impl RouteFilter {
    pub fn main_table() -> RouteFilter {
        RouteFilter { table: Some(MAIN_TABLE), ..RouteFilter::default() }
    }

    pub fn matches(&self, route: &Route) -> bool {
        self.table.is_none_or(|t| route.table == t)
            && self.protocol.is_none_or(|p| route.protocol == p)
            && self.device.is_none_or(|d| route.device == Some(d))
    }
}

/// The routes of one family, filtered by the kernel where it can.
pub fn dump(ipv6: bool, filter: &RouteFilter) -> Request {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    if let Some(table) = filter.table {
        // The header field is the filter; RTA_TABLE carries the tables above 255.
        match u8::try_from(table) {
            Ok(t) => msg.header.table = t,
            Err(_) => msg.attributes.push(RouteAttribute::Table(table)),
        }
    }
    if let Some(protocol) = filter.protocol {
        msg.header.protocol = RouteProtocol::from(protocol);
    }
    if let Some(device) = filter.device {
        msg.attributes.push(RouteAttribute::Oif(device));
    }
    Request::dump(Object::Route, RouteNetlinkMessage::GetRoute(msg))
}

decodable!(Route, NewRoute, |r| r.device);

/// The routes in a transport's answer that pass `filter`.
pub fn routes_in(messages: &[RouteNetlinkMessage], filter: &RouteFilter) -> Vec<Route> {
    decode_all::<Route>(messages).into_iter().filter(|r| filter.matches(r)).collect()
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    use super::*;

    fn round_trip(request: &Request) -> RouteMessage {
        let bytes = request.to_bytes(1);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap().payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn host_gw() -> Route {
        Route {
            gateway: Some("198.18.0.3".parse().unwrap()),
            device: Some(2),
            ..Route::unicast("10.244.2.0/24".parse().unwrap(), 87)
        }
    }

    #[test]
    fn round_trips_every_kind_of_route() {
        let onlink = Route {
            gateway: Some("10.244.2.0".parse().unwrap()),
            device: Some(7),
            onlink: true,
            ..Route::unicast("10.244.2.0/24".parse().unwrap(), 87)
        };
        let device_only = Route { device: Some(7), ..Route::unicast("fd00:2::/64".parse().unwrap(), 87) };
        let blackhole = Route { kind: RouteKind::Blackhole, ..Route::unicast("10.244.0.0/16".parse().unwrap(), 87) };
        let high_table = Route { table: 1000, metric: Some(5), ..host_gw() };
        for route in [host_gw(), onlink, device_only, blackhole, high_table] {
            assert_eq!(Route::from_message(&round_trip(&replace(&route))), Some(route.clone()), "{route:?}");
        }
    }

    #[test]
    fn golden_bytes_of_a_host_gw_route() {
        let bytes = replace(&host_gw()).to_bytes(3);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: length 52, RTM_NEWROUTE (24), REQUEST|ACK|REPLACE|CREATE (0x505), seq 3
            52, 0, 0, 0, 24, 0, 5, 5, 3, 0, 0, 0, 0, 0, 0, 0,
            // rtmsg: AF_INET, dst /24, src 0, tos 0, table main, proto 87, scope universe, unicast, flags 0
            2, 24, 0, 0, 254, 87, 0, 1, 0, 0, 0, 0,
            // RTA_DST, RTA_GATEWAY, RTA_OIF
            8, 0, 1, 0, 10, 244, 2, 0,
            8, 0, 5, 0, 198, 18, 0, 3,
            8, 0, 4, 0, 2, 0, 0, 0,
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn a_route_through_a_nexthop_object_names_only_its_id() {
        let through = Route { nexthop: Some(0xf000_0001), onlink: true, ..host_gw() };
        let sent = round_trip(&replace(&through));
        assert!(sent.attributes.contains(&RouteAttribute::NhId(0xf000_0001)), "{sent:?}");
        assert!(!sent.header.flags.contains(RouteFlags::Onlink));
        let read = Route::from_message(&sent).unwrap();
        assert_eq!((read.nexthop, read.gateway, read.device), (Some(0xf000_0001), None, None));
        let deletion = round_trip(&delete(&through));
        assert_eq!(Route::from_message(&deletion).map(|r| (r.nexthop, r.gateway)), Some((Some(0xf000_0001), None)));

        // What a dump says in the kernel's compatibility mode: the id and the nexthop's gateway and device.
        let mut dumped = round_trip(&replace(&host_gw()));
        dumped.attributes.push(RouteAttribute::NhId(9));
        assert_eq!(Route::from_message(&dumped), Some(Route { nexthop: Some(9), ..host_gw() }));
    }

    #[test]
    fn scope_follows_the_gateway() {
        let device_only = Route { device: Some(7), ..Route::unicast("10.244.1.0/24".parse().unwrap(), 4) };
        assert_eq!(round_trip(&create(&device_only)).header.scope, RouteScope::Link);
        assert_eq!(round_trip(&create(&host_gw())).header.scope, RouteScope::Universe);
        let deletion = round_trip(&delete(&host_gw()));
        assert_eq!((deletion.header.scope, deletion.header.protocol), (RouteScope::NoWhere, RouteProtocol::Unspec));
        assert_eq!(Route::from_message(&deletion).map(|r| (r.gateway, r.device)), Some((host_gw().gateway, Some(2))));
    }

    #[test]
    fn a_delete_names_the_metric_so_only_that_route_goes() {
        let blackhole = Route {
            kind: RouteKind::Blackhole,
            metric: Some(u32::MAX),
            ..Route::unicast("10.244.1.0/24".parse().unwrap(), 87)
        };
        let deletion = round_trip(&delete(&blackhole));
        assert!(deletion.attributes.contains(&RouteAttribute::Priority(u32::MAX)), "{deletion:?}");
        let unset = round_trip(&delete(&host_gw()));
        assert!(!unset.attributes.iter().any(|a| matches!(a, RouteAttribute::Priority(_))), "{unset:?}");
    }

    #[test]
    fn reads_default_and_multipath_routes() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.attributes.push(RouteAttribute::MultiPath(vec![Default::default()]));
        let route = Route::from_message(&msg).unwrap();
        assert_eq!((route.dst, route.device), ("::/0".parse().unwrap(), Some(0)));
        msg.header.address_family = AddressFamily::Bridge;
        assert_eq!(Route::from_message(&msg), None);

        let blackhole = Route { kind: RouteKind::Blackhole, ..Route::unicast("fd00::/48".parse().unwrap(), 87) };
        let mut reported = round_trip(&replace(&blackhole));
        reported.attributes.push(RouteAttribute::Oif(1));
        assert_eq!(Route::from_message(&reported), Some(blackhole), "IPv6 blackholes come back on lo");
    }

    #[test]
    fn dump_filters_by_table_protocol_and_device() {
        let filter = RouteFilter { table: Some(MAIN_TABLE), protocol: Some(87), device: Some(2) };
        let RouteNetlinkMessage::GetRoute(msg) = dump(false, &filter).message().unwrap().clone() else { panic!() };
        assert_eq!((msg.header.table, u8::from(msg.header.protocol)), (254, 87));
        assert_eq!(msg.attributes, vec![RouteAttribute::Oif(2)]);
        assert!(filter.matches(&host_gw()));
        assert!(!filter.matches(&Route { table: 1000, ..host_gw() }));
        assert!(!RouteFilter { device: Some(3), ..filter }.matches(&host_gw()));
        let answer = vec![RouteNetlinkMessage::NewRoute(round_trip(&replace(&host_gw())))];
        assert_eq!(routes_in(&answer, &RouteFilter::main_table()), vec![host_gw()]);
        assert!(routes_in(&answer, &RouteFilter { protocol: Some(4), ..filter }).is_empty());
    }
}
