//! The host-gw backend, wire-compatible with flannel's: no device and no encapsulation, per remote host one route
//! `<its subnet> via <its public IP> dev <underlay>`. Every host must be on the same L2 segment, since the route's
//! gateway is the peer itself; a peer elsewhere is reported (see [`direct`]) instead of being retried forever.
//!
//! Leases carry BackendType `host-gw` and no BackendData, exactly as flanneld writes them, so weft and flanneld
//! hosts route to each other. Containers get the underlay's MTU: nothing is added to their packets.

use serde_json::Value;

use crate::backend::{Backend, Desired, SkippedPeer};
use crate::model::{KernelState, Link, Scope};
use crate::trust::RejectReason;
use crate::{direct, BackendError, Family, Peer, Underlay};

/// The lease's BackendType for this backend.
pub const BACKEND_TYPE: &str = "host-gw";

/// The `Backend` object of the network config, for `"Type": "host-gw"`. flannel's host-gw has no options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGwConfig {
    /// Keys other than `Type` (a config shared with a vxlan cluster, typos): flannel decodes only the keys it
    /// knows and drops the rest, so they are ignored here too, and reported as notes.
    pub ignored: Vec<String>,
}

impl HostGwConfig {
    /// Parses the backend object: `Type` (case-insensitively, as Go's JSON decoder matches it) is the only key;
    /// any other is kept in `ignored`.
    pub fn from_json(backend: &Value) -> Result<HostGwConfig, BackendError> {
        let ignored = backend
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, _)| key)
            .filter(|key| !key.eq_ignore_ascii_case("type"))
            .cloned()
            .collect();
        Ok(HostGwConfig { ignored })
    }
}

/// The prepared backend: the underlay every route leaves through, and the families routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGwBackend {
    pub underlay: Underlay,
    pub families: Vec<Family>,
    pub route_protocol: u8,
    /// Warnings about the configuration (ignored keys), logged at start-up.
    pub notes: Vec<String>,
}

impl HostGwBackend {
    /// Checks that the underlay has an address of every enabled family: a route's gateway is resolved there.
    pub fn prepare(
        config: HostGwConfig,
        underlay: Underlay,
        families: &[Family],
        route_protocol: u8,
    ) -> Result<HostGwBackend, BackendError> {
        if let Some(&family) = families.iter().find(|f| underlay.address(**f).is_none()) {
            return Err(BackendError::NoUnderlayAddress {
                interface: underlay.name.clone(),
                family,
                backend: BACKEND_TYPE,
            });
        }
        let notes = config
            .ignored
            .iter()
            .map(|key| format!("Backend.{key} is not a host-gw option (host-gw has none) and is ignored"))
            .collect();
        Ok(HostGwBackend { underlay, families: families.to_vec(), route_protocol, notes })
    }
}

impl Backend for HostGwBackend {
    fn backend_type(&self) -> &'static str {
        BACKEND_TYPE
    }

    /// No devices of its own: the routes (found by protocol) and the underlay they reference.
    fn scope(&self) -> Scope {
        Scope {
            links: Vec::new(),
            route_protocol: self.route_protocol,
            referenced: vec![self.underlay.name.clone()],
            ..Scope::default()
        }
    }

    /// The underlay every route leaves through.
    fn base(&self, _own: &Peer) -> Desired {
        let mut state = KernelState::default();
        state.add_link(Link::unowned(self.underlay.name.clone()));
        Desired { state, ..Desired::default() }
    }

    /// A route straight to the peer per family, or why it cannot have one.
    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        let mut part = Desired::default();
        for &family in &self.families {
            let Some((subnet, public_ip)) = peer.remote(own, family) else { continue };
            if peer.backend_type != BACKEND_TYPE {
                part.skip_other_backend(subnet, peer, BACKEND_TYPE);
                continue;
            }
            match direct::route_via_underlay(&self.underlay, subnet, public_ip, self.route_protocol) {
                Ok(route) => part.state.add_route(route),
                Err(e) => part.skipped.push(SkippedPeer { subnet, reason: RejectReason::NotOnSegment(e) }),
            }
        }
        part
    }

    /// flannel's host-gw lease has no BackendData.
    fn lease_data(&self, _family: Family) -> Option<Value> {
        None
    }

    /// Nothing is added to a packet: containers get the underlay's MTU.
    fn mtu(&self) -> u32 {
        self.underlay.mtu
    }

    fn notes(&self) -> &[String] {
        &self.notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;
    use crate::kernel::{reconcile, Kernel};
    use crate::model::{Route, WEFT_ROUTE_PROTOCOL};
    use crate::PerFamily;

    fn underlay() -> Underlay {
        Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap(), "fd00:198:18::1/64".parse().unwrap()])
    }

    fn backend(families: &[Family]) -> HostGwBackend {
        HostGwBackend::prepare(HostGwConfig::default(), underlay(), families, WEFT_ROUTE_PROTOCOL).unwrap()
    }

    fn peer(v4: Option<(&str, &str)>, v6: Option<(&str, &str)>, backend_type: &str) -> Peer {
        Peer {
            subnets: PerFamily::new(v4.map(|(s, _)| s.parse().unwrap()), v6.map(|(s, _)| s.parse().unwrap())),
            public_ips: PerFamily::new(v4.map(|(_, ip)| ip.parse().unwrap()), v6.map(|(_, ip)| ip.parse().unwrap())),
            backend_type: backend_type.into(),
            ..Peer::default()
        }
    }

    fn own() -> Peer {
        peer(Some(("10.244.1.0/24", "198.18.0.1")), Some(("fd00:10:244:1::/64", "fd00:198:18::1")), "host-gw")
    }

    #[test]
    fn unknown_keys_are_ignored_with_a_note_as_flannel_ignores_them() {
        assert_eq!(HostGwConfig::from_json(&serde_json::json!({"type": "host-gw"})).unwrap(), HostGwConfig::default());
        let config =
            HostGwConfig::from_json(&serde_json::json!({"Type": "host-gw", "VNI": 1, "Colour": "blue"})).unwrap();
        assert_eq!(config.ignored, ["Colour", "VNI"]);
        let prepared = HostGwBackend::prepare(config, underlay(), &[Family::V4], WEFT_ROUTE_PROTOCOL).unwrap();
        assert_eq!(
            prepared.notes(),
            [
                "Backend.Colour is not a host-gw option (host-gw has none) and is ignored",
                "Backend.VNI is not a host-gw option (host-gw has none) and is ignored",
            ]
        );
        assert!(backend(&[Family::V4]).notes().is_empty());
    }

    #[test]
    fn dual_stack_peers_get_one_route_per_family_and_the_rest_are_reported() {
        let peers = vec![
            peer(Some(("10.244.3.0/24", "198.18.0.3")), Some(("fd00:10:244:3::/64", "fd00:198:18::3")), "host-gw"),
            own(),
            peer(Some(("10.244.2.0/24", "198.18.0.2")), None, "host-gw"),
            peer(Some(("10.244.4.0/24", "198.19.0.4")), None, "host-gw"),
            peer(Some(("10.244.5.0/24", "198.18.0.5")), None, "vxlan"),
        ];
        let desired = backend(&[Family::V4, Family::V6]).desired(&own(), &peers);
        crate::backend::assert_parts_add_up(&backend(&[Family::V4, Family::V6]), &own(), &peers);
        let expected = "\
link eth0 unowned
route 10.244.2.0/24 via 198.18.0.2 dev eth0 proto 87
route 10.244.3.0/24 via 198.18.0.3 dev eth0 proto 87
route fd00:10:244:3::/64 via fd00:198:18::3 dev eth0 proto 87
skip 10.244.4.0/24: public IP 198.19.0.4 is not on eth0's segment (198.18.0.0/24), so no route can point at it directly; host-gw needs every host on one L2 segment (use vxlan with DirectRouting)
skip 10.244.5.0/24: BackendType is \"vxlan\", not \"host-gw\"
";
        assert_eq!(desired.render(), expected);
        let mut reversed = peers.clone();
        reversed.reverse();
        assert_eq!(
            backend(&[Family::V4, Family::V6]).desired(&own(), &reversed),
            desired,
            "peer order does not matter"
        );
    }

    #[test]
    fn lease_mtu_and_scope_are_flannels() {
        let b = backend(&[Family::V4]);
        assert_eq!((b.backend_type(), b.mtu(), b.lease_data(Family::V4)), ("host-gw", 1500, None));
        assert_eq!(b.scope().links, Vec::<String>::new());
        assert_eq!(b.scope().referenced, vec!["eth0"]);
        let v4_only = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        let err = HostGwBackend::prepare(HostGwConfig::default(), v4_only, &[Family::V4, Family::V6], 87).unwrap_err();
        assert!(matches!(err, BackendError::NoUnderlayAddress { family: Family::V6, .. }), "{err}");
    }

    #[tokio::test]
    async fn routes_are_programmed_repaired_and_removed_on_the_fake_kernel() {
        let b = backend(&[Family::V4]);
        let mut kernel = FakeKernel::new();
        let peers = vec![
            peer(Some(("10.244.2.0/24", "198.18.0.2")), None, "host-gw"),
            peer(Some(("10.244.3.0/24", "198.18.0.3")), None, "host-gw"),
        ];
        let scope = b.scope();
        let desired = b.desired(&own(), &peers);
        let report = reconcile(&mut kernel, &scope, &desired.state).await.unwrap();
        assert_eq!(report.applied.len(), 2, "{:?}", report.applied);
        assert_eq!(kernel.observe(&scope).await.unwrap(), desired.state);
        assert!(
            reconcile(&mut kernel, &scope, &desired.state).await.unwrap().applied.is_empty(),
            "a second pass is a no-op"
        );

        // A route deleted by hand comes back; a peer that left loses its route.
        kernel.state.routes.remove(&"10.244.2.0/24".parse().unwrap());
        let fewer = b.desired(&own(), &peers[..1]);
        let report = reconcile(&mut kernel, &scope, &fewer.state).await.unwrap();
        assert_eq!(report.applied.len(), 2, "{:?}", report.applied);
        let routes: Vec<Route> = kernel.observe(&scope).await.unwrap().routes.into_values().collect();
        assert_eq!(
            routes,
            vec![Route::via("10.244.2.0/24".parse().unwrap(), "198.18.0.2".parse().unwrap(), "eth0", false, 87)]
        );
    }
}
