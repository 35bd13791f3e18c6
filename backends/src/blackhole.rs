//! `--ip-blackhole-route`: a blackhole route for our own subnet, for every backend.
//!
//! flanneld adds `blackhole <own subnet>` once at start-up (for Canal): packets for an address of our subnet that
//! no container holds are dropped here instead of following the default route out of the host. flanneld adds it
//! at the family's default metric, where it competes with the bridge's connected route for the same prefix
//! (`10.244.1.0/24 dev cni0 proto kernel`); weft adds it at [`LAST_RESORT_METRIC`], the least preferred metric
//! there is, so the connected route always wins while it exists and the blackhole only takes what nothing else
//! takes (no bridge yet, or the bridge down).
//!
//! The route is part of the desired state, tagged with the backend's route protocol, so the reconcile loop owns
//! it like any other route: a deleted one comes back, one for an old subnet (or left from a run with the flag)
//! is removed, and `weftctl cleanup` removes it with the other routes carrying weft's protocol.

use serde_json::Value;

use crate::backend::{Backend, Desired};
use crate::model::{Route, Scope, LAST_RESORT_METRIC};
use crate::{Family, Peer};

/// A backend with, when `enabled`, the blackhole route for our subnet of each family added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithBlackholeRoute<B> {
    pub backend: B,
    pub enabled: bool,
}

/// The blackhole for `own`'s subnet of each family, tagged with `protocol`.
pub fn own_subnet_blackholes(own: &Peer, protocol: u8) -> Vec<Route> {
    own.subnets.iter().map(|(_, subnet)| Route::blackhole(*subnet, protocol).with_metric(LAST_RESORT_METRIC)).collect()
}

impl<B: Backend> Backend for WithBlackholeRoute<B> {
    fn backend_type(&self) -> &'static str {
        self.backend.backend_type()
    }

    /// The backend's scope unchanged: the blackhole carries the route protocol and lies inside our network, so it
    /// is already ours, and without the flag a leftover one is found and removed.
    fn scope(&self) -> Scope {
        self.backend.scope()
    }

    fn base(&self, own: &Peer) -> Desired {
        let mut desired = self.backend.base(own);
        if self.enabled {
            for route in own_subnet_blackholes(own, self.backend.scope().route_protocol) {
                desired.state.add_route(route);
            }
        }
        desired
    }

    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        self.backend.peer(own, peer)
    }

    fn lease_data(&self, family: Family) -> Option<Value> {
        self.backend.lease_data(family)
    }

    fn mtu(&self) -> u32 {
        self.backend.mtu()
    }

    fn notes(&self) -> &[String] {
        self.backend.notes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;
    use crate::hostgw::{HostGwBackend, HostGwConfig};
    use crate::kernel::{reconcile, Kernel};
    use crate::model::{Route, WEFT_ROUTE_PROTOCOL};
    use crate::{PerFamily, Underlay};

    fn backend(enabled: bool) -> WithBlackholeRoute<HostGwBackend> {
        let underlay = Underlay::new(
            "eth0",
            2,
            1500,
            vec!["198.18.0.1/24".parse().unwrap(), "2001:db8:18::1/64".parse().unwrap()],
        );
        let families = [Family::V4, Family::V6];
        let backend =
            HostGwBackend::prepare(HostGwConfig::default(), underlay, &families, WEFT_ROUTE_PROTOCOL).unwrap();
        WithBlackholeRoute { backend, enabled }
    }

    fn own(v4: &str, v6: &str) -> Peer {
        Peer { subnets: PerFamily::new(Some(v4.parse().unwrap()), Some(v6.parse().unwrap())), ..Peer::default() }
    }

    #[test]
    fn one_last_resort_blackhole_per_family_of_our_lease() {
        let desired = backend(true).desired(&own("10.244.1.0/24", "fd00:244:0:1::/64"), &[]);
        let routes: Vec<String> = desired.state.routes.values().map(crate::model::render_route).collect();
        assert_eq!(
            routes,
            vec![
                "route blackhole 10.244.1.0/24 proto 87 metric 4294967295",
                "route blackhole fd00:244:0:1::/64 proto 87 metric 4294967295",
            ]
        );
        assert!(backend(false).desired(&own("10.244.1.0/24", "fd00:244:0:1::/64"), &[]).state.routes.is_empty());
        assert!(backend(true).desired(&Peer::default(), &[]).state.routes.is_empty(), "no lease yet, no blackhole");
        let peer = Peer {
            subnets: PerFamily::new(Some("10.244.2.0/24".parse().unwrap()), Some("fd00:244:0:2::/64".parse().unwrap())),
            public_ips: PerFamily::new(Some("198.18.0.2".parse().unwrap()), Some("2001:db8:18::2".parse().unwrap())),
            backend_type: "host-gw".into(),
            ..Peer::default()
        };
        let own = own("10.244.1.0/24", "fd00:244:0:1::/64");
        crate::backend::assert_parts_add_up(&backend(true), &own, &[peer, own.clone()]);
    }

    #[tokio::test]
    async fn the_loop_keeps_it_moves_it_with_the_subnet_and_drops_it_without_the_flag() {
        let mut kernel = FakeKernel::new();
        let on = backend(true);
        let scope = on.scope();
        let first = on.desired(&own("10.244.1.0/24", "fd00:244:0:1::/64"), &[]);
        reconcile(&mut kernel, &scope, &first.state).await.unwrap();
        assert_eq!(kernel.observe(&scope).await.unwrap().routes, first.state.routes);

        // Deleted behind our back: the next pass puts exactly it back.
        let v4 = Route::blackhole("10.244.1.0/24".parse().unwrap(), 87).with_metric(LAST_RESORT_METRIC);
        kernel.state.routes.remove(&v4.dst);
        let repair = reconcile(&mut kernel, &scope, &first.state).await.unwrap();
        assert_eq!(repair.applied, vec![crate::diff::Op::ReplaceRoute(v4)]);

        // A new subnet: the new blackhole goes in, the old one goes.
        let moved = on.desired(&own("10.244.7.0/24", "fd00:244:0:1::/64"), &[]);
        reconcile(&mut kernel, &scope, &moved.state).await.unwrap();
        assert_eq!(kernel.observe(&scope).await.unwrap().routes, moved.state.routes);

        // Restarted without the flag: the leftover is ours (protocol 87) and is removed.
        let off = backend(false);
        let none = off.desired(&own("10.244.7.0/24", "fd00:244:0:1::/64"), &[]);
        reconcile(&mut kernel, &off.scope(), &none.state).await.unwrap();
        assert!(kernel.observe(&off.scope()).await.unwrap().routes.is_empty());
    }
}
