//! Observing: the dumps `observe` makes, and the one place that turns what the kernel reports into model values
//! (`*_from`). Only objects inside the scope are read.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use weft_netlink::route::{RouteFilter, MAIN_TABLE};
use weft_netlink::{address, fdb, link, neighbour, route};

use super::{nexthops, NetlinkKernel};
use crate::is_link_local;
use crate::kernel::KernelError;
use crate::model::{
    Address, FdbEntry, KernelState, Link, LinkKind, MacAddr, Neighbour, ObjectKind, Route, RouteKind, Scope, VxlanAttrs,
};
use crate::Family;

/// Our devices by ifindex.
type Owned = HashMap<u32, String>;

pub(super) async fn observe(kernel: &mut NetlinkKernel, scope: &Scope) -> Result<KernelState, KernelError> {
    observe_kinds(kernel, scope, &ObjectKind::ALL).await
}

/// The objects of `kinds` inside `scope`; a dump of the devices is always taken (the other kinds name theirs by
/// index), the other dumps only for the kinds asked for.
pub(super) async fn observe_kinds(
    kernel: &mut NetlinkKernel,
    scope: &Scope,
    kinds: &[ObjectKind],
) -> Result<KernelState, KernelError> {
    let links = kernel.dump_links().await?;
    let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let owned: Owned =
        names.iter().filter(|(_, name)| scope.links.contains(name)).map(|(i, n)| (*i, n.clone())).collect();

    let mut state = KernelState::default();
    if kinds.contains(&ObjectKind::Links) {
        for l in links.iter().filter(|l| owned.contains_key(&l.index)) {
            state.add_link(link_from(l));
        }
        for name in names.values().filter(|name| scope.referenced.contains(name)) {
            state.add_link(Link::unowned(name.clone()));
        }
    }
    // Each kind is gathered first and made a map at once: a B-tree built in one go has full nodes, one filled an
    // insertion at a time (a dump comes nearly in key order) about half-empty ones, and at 10,000 peers the
    // observation is held beside the whole desired state. A dump's raw messages go as soon as they are read.
    if kinds.contains(&ObjectKind::Routes) {
        let mut routes = Vec::new();
        let filter = RouteFilter::main_table();
        for family in [Family::V4, Family::V6] {
            // Which nexthop object each of our routes goes through, and which of weft's ids any route names.
            let (mut through, mut by_id_alone, mut named) = (Vec::new(), false, Vec::new());
            let ours = |r: route::Route| {
                named.extend(r.nexthop.filter(|id| nexthops::is_own(*id)));
                let route = route_from(&r, &names, &owned, scope).filter(|_| filter.matches(&r))?;
                if let (Some(id), IpNetwork::V4(dst)) = (r.nexthop, route.dst) {
                    through.push((dst, id));
                    by_id_alone |= r.gateway.is_none() && r.kind == route::RouteKind::Unicast;
                }
                Some((route.dst, route))
            };
            let ipv6 = family == Family::V6;
            routes.extend(kernel.dump_into("routes", route::dump(ipv6, &filter), None, ours).await?);
            if !ipv6 {
                kernel.nexthops.learn_dump(&through, by_id_alone, named);
            }
        }
        state.routes = routes.into_iter().collect();
    }
    if owned.is_empty() {
        // Addresses, neighbours and FDB entries only count on our devices.
        return Ok(state);
    }
    // With one device in scope (the usual case) the kernel sends only its objects.
    let only = (owned.len() == 1).then(|| owned.keys().next().copied()).flatten();
    if kinds.contains(&ObjectKind::Addresses) {
        let addresses: Vec<address::Address> = kernel.dump_decoded("addresses", address::dump(only), only).await?;
        state.addresses = addresses.iter().filter_map(|a| address_from(a, &owned)).collect();
    }
    if kinds.contains(&ObjectKind::Neighbours) {
        let mut neighbours = Vec::new();
        for ipv6 in [false, true] {
            let ours = |n: neighbour::Neighbour| neighbour_from(&n, &owned).map(|n| ((n.device.clone(), n.ip), n));
            neighbours.extend(kernel.dump_into("neighbours", neighbour::dump(ipv6, only), only, ours).await?);
        }
        state.neighbours = neighbours.into_iter().collect();
    }
    if kinds.contains(&ObjectKind::Fdb) {
        let ours = |e: fdb::FdbEntry| fdb_from(&e, &owned).map(|e| ((e.device.clone(), e.mac), e));
        state.fdb = kernel.dump_into("fdb", fdb::dump(only), only, ours).await?.into_iter().collect();
    }
    Ok(state)
}

pub(super) fn link_from(l: &link::Link) -> Link {
    Link {
        name: l.name.clone(),
        kind: kind_from(l.kind.as_ref()),
        mac: l.mac.map(MacAddr).unwrap_or_default(),
        mtu: l.mtu.unwrap_or(0),
        up: l.up,
    }
}

/// The model's kind of a device. A kind the model does not know (say a bridge someone named flannel.1) reads as
/// [`LinkKind::Unowned`]: never a desired kind, so the diff re-creates the device, as flannel does.
fn kind_from(kind: Option<&link::Kind>) -> LinkKind {
    match kind {
        Some(link::Kind::Vxlan(v)) => LinkKind::Vxlan(VxlanAttrs {
            vni: v.vni,
            local: v.local.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            underlay_index: v.underlay.unwrap_or(0),
            port: v.port.unwrap_or(0),
            learning: v.learning,
            gbp: v.gbp,
        }),
        Some(link::Kind::Tun) => LinkKind::Tun,
        Some(link::Kind::Wireguard) => LinkKind::Wireguard,
        _ => LinkKind::Unowned,
    }
}

fn address_from(a: &address::Address, owned: &Owned) -> Option<Address> {
    let device = owned.get(&a.index)?;
    if is_link_local(a.addr.ip()) && a.addr.is_ipv6() {
        // The kernel adds an fe80:: address to every device by itself.
        return None;
    }
    Some(Address { device: device.as_str().into(), addr: a.addr })
}

/// A main-table unicast or blackhole route that weft owns ([`Scope::owns_route`]: it leaves through one of our
/// devices, or carries our protocol and leads into our networks). Connected routes (proto kernel) are the
/// kernel's, not weft's.
pub(super) fn route_from(
    r: &route::Route,
    names: &HashMap<u32, String>,
    owned: &Owned,
    scope: &Scope,
) -> Option<Route> {
    const KERNEL_PROTOCOL: u8 = 2;
    let kind = match r.kind {
        route::RouteKind::Unicast => RouteKind::Unicast,
        route::RouteKind::Blackhole => RouteKind::Blackhole,
        route::RouteKind::Other(_) => return None,
    };
    if r.table != MAIN_TABLE || r.protocol == KERNEL_PROTOCOL {
        return None;
    }
    // The codec gives a blackhole no device (IPv6 reports one on lo).
    if !scope.owns_route(r.protocol, r.device.is_some_and(|i| owned.contains_key(&i)), r.dst) {
        return None;
    }
    let device = match r.device {
        Some(index) => Some(names.get(&index)?.as_str().into()),
        None => None,
    };
    Some(Route {
        dst: r.dst,
        kind,
        gateway: r.gateway,
        device,
        onlink: r.onlink,
        protocol: r.protocol,
        metric: Route::normalized_metric(r.dst, r.metric),
    })
}

fn neighbour_from(n: &neighbour::Neighbour, owned: &Owned) -> Option<Neighbour> {
    let device = owned.get(&n.index)?;
    if !n.permanent {
        return None;
    }
    Some(Neighbour { device: device.as_str().into(), ip: n.ip, mac: MacAddr(n.mac?) })
}

/// A permanent FDB entry of the device itself (NTF_SELF); entries a bridge master keeps for the device as its
/// port are someone else's.
fn fdb_from(e: &fdb::FdbEntry, owned: &Owned) -> Option<FdbEntry> {
    let device = owned.get(&e.index)?;
    if !e.permanent || !e.own {
        return None;
    }
    Some(FdbEntry { device: device.as_str().into(), mac: MacAddr(e.mac), dst: e.dst? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(index: u32, name: &str) -> Owned {
        HashMap::from([(index, name.to_string())])
    }

    fn mac() -> MacAddr {
        "0e:2a:4f:00:12:9c".parse().unwrap()
    }

    fn fdb(index: u32, permanent: bool, own: bool) -> fdb::FdbEntry {
        fdb::FdbEntry { index, mac: mac().0, dst: Some("198.18.0.2".parse().unwrap()), permanent, own }
    }

    #[test]
    fn reads_fdb_entries_of_the_device_itself() {
        let owned = owned(7, "flannel.1");
        let want = FdbEntry { device: "flannel.1".into(), mac: mac(), dst: "198.18.0.2".parse().unwrap() };
        assert_eq!(fdb_from(&fdb(7, true, true), &owned), Some(want));
        assert_eq!(fdb_from(&fdb(7, true, false), &owned), None, "a bridge master's entry");
        assert_eq!(fdb_from(&fdb(7, false, true), &owned), None, "a learned entry");
        assert_eq!(fdb_from(&fdb(8, true, true), &owned), None, "another device's entry");
    }

    #[test]
    fn reads_permanent_neighbours_only() {
        let owned = owned(7, "flannel.1");
        let mut n =
            neighbour::Neighbour { index: 7, ip: "10.244.2.0".parse().unwrap(), mac: Some(mac().0), permanent: true };
        let want = Neighbour { device: "flannel.1".into(), ip: "10.244.2.0".parse().unwrap(), mac: mac() };
        assert_eq!(neighbour_from(&n, &owned), Some(want));
        n.permanent = false;
        assert_eq!(neighbour_from(&n, &owned), None);
    }

    fn route(dst: &str, gateway: Option<&str>, oif: u32, protocol: u8) -> route::Route {
        route::Route {
            gateway: gateway.map(|g| g.parse().unwrap()),
            device: Some(oif),
            ..route::Route::unicast(dst.parse().unwrap(), protocol)
        }
    }

    #[test]
    fn selects_our_routes() {
        let names = HashMap::from([(2, "u0".to_string()), (7, "flannel.1".to_string())]);
        let owned = owned(7, "flannel.1");
        let scope = Scope::links(vec!["flannel.1".into()], 87);
        let on_device = route::Route { onlink: true, ..route("10.244.2.0/24", Some("10.244.2.0"), 7, 87) };
        assert_eq!(route_from(&on_device, &names, &owned, &scope), Some(flannel_route()));

        let direct = route("10.244.3.0/24", Some("198.18.0.3"), 2, 87);
        assert_eq!(route_from(&direct, &names, &owned, &scope).map(|r| r.device), Some(Some("u0".into())));

        // Another weftd's direct route (its own network) is not ours once our networks are known.
        let narrowed = Scope { route_networks: vec!["10.244.0.0/16".parse().unwrap()], ..scope.clone() };
        let other_network = route("10.245.3.0/24", Some("198.18.0.3"), 2, 87);
        assert!(route_from(&other_network, &names, &owned, &scope).is_some());
        assert_eq!(route_from(&other_network, &names, &owned, &narrowed), None);
        assert!(route_from(&direct, &names, &owned, &narrowed).is_some());

        let foreign = route("10.244.9.0/24", Some("198.18.0.9"), 2, 4);
        assert_eq!(route_from(&foreign, &names, &owned, &scope), None);
        let connected = route("10.244.1.0/24", None, 7, 2);
        assert_eq!(route_from(&connected, &names, &owned, &scope), None);
        // A device route (WireGuard, TUN) has no gateway; a blackhole route has no device either.
        let no_gateway = route("10.244.4.0/24", None, 7, 87);
        let device_route = Route::dev("10.244.4.0/24".parse().unwrap(), "flannel.1", 87);
        assert_eq!(route_from(&no_gateway, &names, &owned, &scope), Some(device_route));
        let blackhole = route::Route {
            kind: route::RouteKind::Blackhole,
            ..route::Route::unicast("10.244.1.0/24".parse().unwrap(), 87)
        };
        let want = Route::blackhole("10.244.1.0/24".parse().unwrap(), 87);
        assert_eq!(route_from(&blackhole, &names, &owned, &scope), Some(want));
        let theirs = route::Route { protocol: 4, ..blackhole };
        assert_eq!(route_from(&theirs, &names, &owned, &scope), None, "someone else's blackhole");
        let other_table = route::Route { table: 1000, ..route("10.244.2.0/24", Some("10.244.2.0"), 7, 87) };
        assert_eq!(route_from(&other_table, &names, &owned, &scope), None);
        let local =
            route::Route { kind: route::RouteKind::Other(2), ..route("10.244.1.0/32", Some("10.244.1.0"), 7, 87) };
        assert_eq!(route_from(&local, &names, &owned, &scope), None);
    }

    fn flannel_route() -> Route {
        Route::via("10.244.2.0/24".parse().unwrap(), "10.244.2.0".parse().unwrap(), "flannel.1", true, 87)
    }

    /// What apply sends is what observe reads back: model -> request -> model.
    #[test]
    fn model_values_survive_the_trip_through_messages() {
        use weft_netlink::Message;
        let vxlan = VxlanAttrs {
            vni: 1,
            local: "198.18.0.1".parse().unwrap(),
            underlay_index: 2,
            port: 8472,
            learning: false,
            gbp: true,
        };
        let want = Link { name: "flannel.1".into(), kind: LinkKind::Vxlan(vxlan), mac: mac(), mtu: 1450, up: true };
        let Message::NewLink(msg) = super::super::apply::create_link(&want).unwrap().message().unwrap().clone() else {
            panic!()
        };
        assert_eq!(link::Link::from_message(&msg).map(|l| link_from(&l)), Some(want));

        let names = HashMap::from([(7, "flannel.1".to_string())]);
        let device_route = Route::dev("10.244.4.0/24".parse().unwrap(), "flannel.1", 87);
        let blackhole = Route::blackhole("10.244.0.0/16".parse().unwrap(), 87);
        let last_resort = Route::blackhole("fd00:244:0:1::/64".parse().unwrap(), 87).with_metric(u32::MAX);
        let metric_5 = Route::dev("fd00:244:0:2::/64".parse().unwrap(), "flannel.1", 87).with_metric(5);
        let routes = [(flannel_route(), 7), (device_route, 7), (blackhole, 0), (last_resort, 0), (metric_5, 7)];
        for (route, index) in routes {
            let op = crate::diff::Op::ReplaceRoute(route.clone());
            let request = super::super::apply::request_for(&op, index).unwrap();
            let Message::NewRoute(msg) = request.message().unwrap().clone() else { panic!() };
            let read = route::Route::from_message(&msg).unwrap();
            assert_eq!(
                route_from(&read, &names, &owned(7, "flannel.1"), &Scope::links(vec!["flannel.1".into()], 87)),
                Some(route)
            );
        }
        let wireguard =
            Link { name: "wg0".into(), kind: LinkKind::Wireguard, mac: MacAddr::default(), mtu: 1420, up: true };
        let request = super::super::apply::create_link(&wireguard).unwrap();
        let Message::NewLink(msg) = request.message().unwrap().clone() else { panic!() };
        assert_eq!(link::Link::from_message(&msg).map(|l| link_from(&l)), Some(wireguard));
        let tun = Link { name: "tun0".into(), kind: LinkKind::Tun, mac: MacAddr::default(), mtu: 1420, up: true };
        assert!(super::super::apply::create_link(&tun).is_none(), "the data plane creates TUN devices");
        assert!(super::super::apply::create_link(&Link::unowned("eth0")).is_none());
    }

    #[test]
    fn a_device_of_another_kind_reads_as_never_desired() {
        let l = link::Link {
            index: 7,
            name: "flannel.1".into(),
            kind: Some(link::Kind::Bridge),
            mac: None,
            mtu: None,
            up: false,
            master: None,
            link: None,
        };
        assert_eq!(link_from(&l).kind, LinkKind::Unowned);
        assert_eq!(kind_from(Some(&link::Kind::Tun)), LinkKind::Tun);
    }

    #[test]
    fn skips_ipv6_link_local_addresses() {
        let owned = owned(7, "flannel.1");
        let a = |net: &str| address::Address { index: 7, addr: net.parse().unwrap() };
        assert_eq!(address_from(&a("fe80::1/64"), &owned), None);
        assert_eq!(address_from(&a("10.244.1.0/32"), &owned).unwrap().addr, "10.244.1.0/32".parse().unwrap());
    }
}
