//! The nexthop objects weft's IPv4 gateway routes go through (see [`weft_netlink::nexthop`] for why: one hash
//! chain per device otherwise, and a route add that walks it).
//!
//! The model knows nothing of them: a desired route is `dst via gateway dev device [onlink]`, and the kernel's
//! dumps report a route through a nexthop object with that gateway and device (its `nexthop_compat_mode`, on by
//! default), so the diff compares them as it compares plain routes. This module keeps, per destination, the id
//! the route goes through, learned from each route dump and kept current by our own changes, and turns route
//! ops into the requests that honour it:
//!
//! - a new route gets a fresh id from weft's range, created with NLM_F_EXCL before the route names it, so a route
//!   never goes through an object someone else made (a taken id is skipped and another tried);
//! - a changed route replaces its own object (the route follows at once) and then itself (protocol, metric);
//! - a route goes by its id (a delete naming gateway and device matches no route through a nexthop object), and
//!   its object after it.
//!
//! IPv6 routes stay plain: the kernel keeps no shared route attributes there, so they have no chain to walk.
//! When the kernel has no nexthop objects (before Linux 5.3), or dumps routes by id alone (compat mode off), or
//! the operator asked for flannel's plain routes, every route is plain.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network};
use tracing::{info, warn};
use weft_netlink::nexthop::Nexthop;
use weft_netlink::route;

/// The first id of weft's range, all four top bits set. FRR's zebra numbers its routes' objects below 250,000,000
/// and its EVPN ones with a small type in bits 28 and up: the ranges do not meet.
pub const FIRST_ID: u32 = 0xF000_0000;

/// Whether weft numbered this object (and so may replace or delete it).
pub fn is_own(id: u32) -> bool {
    id >= FIRST_ID
}

#[derive(Debug)]
pub(super) struct Nexthops {
    enabled: bool,
    /// The object each route in scope goes through, ours or not, by destination (main table, IPv4 only: an
    /// entry is 12 bytes, not the 24 an `IpNetwork` key would take).
    by_dst: HashMap<Ipv4Network, u32>,
    /// The next id to try.
    next: u32,
    /// Our objects a route dump found no route naming any more (someone deleted the route, and a full pass put it
    /// back through a fresh object): deleted with the next changes.
    orphans: Vec<u32>,
}

impl Default for Nexthops {
    fn default() -> Self {
        Nexthops { enabled: true, by_dst: HashMap::new(), next: FIRST_ID, orphans: Vec::new() }
    }
}

fn v4(dst: &IpNetwork) -> Option<Ipv4Network> {
    match dst {
        IpNetwork::V4(net) => Some(*net),
        IpNetwork::V6(_) => None,
    }
}

/// What a route op becomes.
#[derive(Debug, Clone)]
pub(super) enum Plan {
    /// The object (created when `fresh`, replaced otherwise), then the route naming it.
    Replace { nexthop: Nexthop, fresh: bool, route: route::Route },
    /// The route (named by its id), then its object when it is ours.
    Delete { route: route::Route, own: bool },
}

impl Nexthops {
    /// Plain routes from now on (the operator's choice, or a kernel without nexthop objects).
    pub fn disable(&mut self, why: &str) {
        if self.enabled {
            info!(reason = why, "routes are plain from now on: no nexthop objects");
        }
        self.enabled = false;
    }

    /// The id `dst`'s route goes through, if it goes through one.
    pub fn id_of(&self, dst: &IpNetwork) -> Option<u32> {
        self.by_dst.get(&v4(dst)?).copied()
    }

    /// Deletes our object `id` with the next changes: no route names it.
    pub fn orphan(&mut self, id: u32) {
        self.orphans.push(id);
    }

    /// The objects to delete with the next changes (see `orphans`).
    pub fn take_orphans(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.orphans)
    }

    /// Takes in what an IPv4 route dump said: the routes in scope that go through an object (`ours`), whether
    /// one of them came by id alone (compat mode off), and the ids of weft's range that any route names (`named`,
    /// to number new objects past them and to find our objects left without their routes).
    pub fn learn_dump(&mut self, ours: &[(Ipv4Network, u32)], by_id_alone: bool, mut named: Vec<u32>) {
        if by_id_alone && self.enabled {
            warn!(
                "the kernel reports routes by nexthop id alone (net.ipv4.nexthop_compat_mode is 0): weft cannot \
                 compare them, and uses plain routes instead"
            );
            self.disable("nexthop_compat_mode is 0");
        }
        named.sort_unstable();
        let gone = self.by_dst.values().filter(|id| is_own(**id) && named.binary_search(id).is_err());
        self.orphans.extend(gone);
        // Refilled in place: a resync at 10,000 peers reuses the map's memory.
        self.by_dst.clear();
        self.by_dst.extend(ours.iter().copied());
        if let Some(highest) = named.last() {
            self.next = self.next.max(highest.saturating_add(1));
        }
    }

    /// A fresh id from weft's range (wrapping around at its end).
    fn allocate(&mut self) -> u32 {
        let id = self.next;
        self.next = if id == u32::MAX { FIRST_ID } else { id + 1 };
        id
    }

    /// Another id for a fresh object whose id turned out taken.
    pub fn retry(&mut self, plan: &mut Plan) {
        if let Plan::Replace { nexthop, fresh: true, route } = plan {
            nexthop.id = self.allocate();
            route.nexthop = Some(nexthop.id);
        }
    }

    /// The plan for replacing `route` (as the codec sends it plainly), or None when it stays plain.
    pub fn plan_replace(&mut self, route: &route::Route) -> Option<Plan> {
        let gateway @ IpAddr::V4(_) = route.gateway? else { return None };
        let device = route.device?;
        if !self.enabled || route.kind != route::RouteKind::Unicast {
            return None;
        }
        let (id, fresh) = match self.id_of(&route.dst) {
            Some(id) if is_own(id) => (id, false),
            _ => (self.allocate(), true),
        };
        let nexthop = Nexthop { id, gateway, device, onlink: route.onlink, protocol: route.protocol };
        Some(Plan::Replace { nexthop, fresh, route: route::Route { nexthop: Some(id), ..route.clone() } })
    }

    /// The plan for deleting `route`, or None when it goes through no object (it is deleted plainly).
    pub fn plan_delete(&self, route: &route::Route) -> Option<Plan> {
        let id = self.id_of(&route.dst)?;
        Some(Plan::Delete { route: route::Route { nexthop: Some(id), ..route.clone() }, own: is_own(id) })
    }

    /// Records how a planned op ended: the route at `dst` now goes through `id` (None: it is plain, or gone).
    pub fn settled(&mut self, dst: IpNetwork, id: Option<u32>) {
        let Some(dst) = v4(&dst) else { return };
        match id {
            Some(id) => self.by_dst.insert(dst, id),
            None => self.by_dst.remove(&dst),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Route;

    fn vxlan_route(n: u8) -> Route {
        let dst = format!("10.244.{n}.0/24").parse().unwrap();
        Route::via(dst, format!("10.244.{n}.0").parse().unwrap(), "flannel.1", true, 87)
    }

    fn sent(model: &Route) -> route::Route {
        route::Route {
            gateway: model.gateway,
            device: Some(7),
            onlink: model.onlink,
            ..route::Route::unicast(model.dst, 87)
        }
    }

    #[test]
    fn new_routes_get_fresh_ids_changed_ones_keep_theirs() {
        let mut nexthops = Nexthops::default();
        let r = vxlan_route(2);
        let Some(Plan::Replace { nexthop, fresh: true, route }) = nexthops.plan_replace(&sent(&r)) else { panic!() };
        assert_eq!((nexthop.id, nexthop.device, nexthop.onlink, route.nexthop), (FIRST_ID, 7, true, Some(FIRST_ID)));
        nexthops.settled(r.dst, Some(nexthop.id));
        let Some(Plan::Replace { nexthop, fresh: false, .. }) = nexthops.plan_replace(&sent(&r)) else { panic!() };
        assert_eq!(nexthop.id, FIRST_ID);
        let Some(Plan::Delete { route, own: true }) = nexthops.plan_delete(&sent(&r)) else { panic!() };
        assert_eq!(route.nexthop, Some(FIRST_ID));
        nexthops.settled(r.dst, None);
        assert!(nexthops.plan_delete(&sent(&r)).is_none(), "a plain route is deleted plainly");
    }

    #[test]
    fn only_ipv4_gateway_routes_go_through_objects() {
        let mut nexthops = Nexthops::default();
        let v6 = Route::via("fd00:2::/64".parse().unwrap(), "fd00:2::".parse().unwrap(), "flannel-v6.1", true, 87);
        assert!(nexthops.plan_replace(&sent(&v6)).is_none());
        let device_only = Route::dev("10.244.0.0/16".parse().unwrap(), "flannel0", 87);
        assert!(nexthops.plan_replace(&sent(&device_only)).is_none());
        nexthops.disable("test");
        let r = vxlan_route(2);
        assert!(nexthops.plan_replace(&sent(&r)).is_none());
    }

    #[test]
    fn a_dump_tells_the_ids_in_use_and_foreign_objects_are_left_alone() {
        let mut nexthops = Nexthops::default();
        let (a, b) = (vxlan_route(2), vxlan_route(3));
        // Route a goes through our object 0xf000_0010, route b through someone's object 12.
        let (a4, b4) = (v4(&a.dst).unwrap(), v4(&b.dst).unwrap());
        nexthops.learn_dump(&[(a4, 0xf000_0010), (b4, 12)], false, vec![0xf000_0010, 0xf000_0020]);
        let Some(Plan::Replace { nexthop, fresh: false, .. }) = nexthops.plan_replace(&sent(&a)) else { panic!() };
        assert_eq!(nexthop.id, 0xf000_0010);
        // b is moved to a fresh object of ours, numbered past every id in use.
        let Some(mut plan @ Plan::Replace { fresh: true, .. }) = nexthops.plan_replace(&sent(&b)) else { panic!() };
        let Plan::Replace { nexthop, .. } = &plan else { unreachable!() };
        assert_eq!(nexthop.id, 0xf000_0021);
        nexthops.retry(&mut plan);
        let Plan::Replace { nexthop, route, .. } = &plan else { unreachable!() };
        assert_eq!((nexthop.id, route.nexthop), (0xf000_0022, Some(0xf000_0022)));
        let Some(Plan::Delete { own: false, .. }) = nexthops.plan_delete(&sent(&b)) else { panic!() };

        // Route a went (someone deleted it): its object is an orphan, deleted with the next changes, once.
        nexthops.learn_dump(&[(b4, 12)], false, vec![]);
        assert_eq!(nexthops.take_orphans(), vec![0xf000_0010]);
        assert!(nexthops.take_orphans().is_empty());
        nexthops.learn_dump(&[(a4, 0xf000_0010)], false, vec![0xf000_0010]);
        assert!(nexthops.enabled);

        // Compat mode off: routes come by id alone, and weft goes back to plain routes.
        nexthops.learn_dump(&[(a4, 0xf000_0010)], true, vec![0xf000_0010]);
        assert!(!nexthops.enabled);
        assert!(nexthops.plan_replace(&sent(&b)).is_none());
    }
}
