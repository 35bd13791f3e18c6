//! The trust boundary's vocabulary and its last guard.
//!
//! A peer lease is someone else's claim, written by any host or operator with etcd access: never a trusted
//! instruction. [`RejectReason`] is the one table of reasons a lease is not programmed, each with a stable short
//! name for metrics and a sentence for the log. The screening of leases happens where the network config is
//! known (the daemon's `trust` module); [`guard_routes`] is the backend-independent last check on what any
//! backend asked for: no route may cover the underlay, a host address or our own subnet, whatever the leases say.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::SkippedPeer;
use crate::direct::NotOnSegment;
use crate::model::{KernelState, MacAddr, RouteKind};
use crate::Family;

/// Why a peer lease (or a route built from one) is not programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The key is not `ADDRESS-PREFIXLEN[&ADDRESS-PREFIXLEN]`.
    BadKey { detail: String },
    /// The value is not flannel's `LeaseAttrs` JSON.
    BadValue { detail: String },
    /// The subnet lies outside the configured network of its family (or that family is not enabled).
    OutsideNetwork { subnet: IpNetwork, network: Option<IpNetwork> },
    /// The subnet is inside the network but not of the configured subnet length.
    WrongLength { subnet: IpNetwork, expected: u8 },
    /// The subnet overlaps the subnet we hold.
    OverlapsOwn { subnet: IpNetwork, own: IpNetwork },
    /// The subnet overlaps another accepted lease, which is older in the store and wins.
    OverlapsPeer { subnet: IpNetwork, winner: String },
    /// No public IP for a family the key has a subnet of.
    NoPublicIp { family: Family },
    /// The public IP cannot be a tunnel endpoint (loopback, multicast, inside the cluster network, ...).
    BadPublicIp { ip: IpAddr, why: &'static str },
    /// The public IP is one of ours: a lease claiming to be us.
    OurPublicIp { ip: IpAddr },
    /// BackendType differs from ours.
    WrongBackendType { theirs: String, ours: String },
    /// The backend's VNI (or its equivalent) differs from ours.
    WrongVni { theirs: u64, ours: u32 },
    /// BackendData is missing or malformed.
    BadBackendData { detail: String },
    /// The VtepMAC is already used by us or by an older accepted peer.
    DuplicateVtepMac { mac: MacAddr, holder: String },
    /// A route the backend built would cover something of this host's (the last guard).
    ProtectedRoute { dst: IpNetwork, protected: IpNetwork, what: &'static str },
    /// The backend routes to peers directly (host-gw) and this one's public IP is not on our segment.
    NotOnSegment(NotOnSegment),
}

impl RejectReason {
    /// Every short name, in table order (metrics export one series per name, zero included).
    pub const NAMES: &'static [&'static str] = &[
        "bad_key",
        "bad_value",
        "outside_network",
        "wrong_length",
        "overlaps_own",
        "overlaps_peer",
        "no_public_ip",
        "bad_public_ip",
        "our_public_ip",
        "wrong_backend_type",
        "wrong_vni",
        "bad_backend_data",
        "duplicate_vtep_mac",
        "protected_route",
        "not_on_segment",
    ];

    /// The stable short name: a metrics label and what `weftctl lease list` prints first.
    pub fn name(&self) -> &'static str {
        match self {
            RejectReason::BadKey { .. } => "bad_key",
            RejectReason::BadValue { .. } => "bad_value",
            RejectReason::OutsideNetwork { .. } => "outside_network",
            RejectReason::WrongLength { .. } => "wrong_length",
            RejectReason::OverlapsOwn { .. } => "overlaps_own",
            RejectReason::OverlapsPeer { .. } => "overlaps_peer",
            RejectReason::NoPublicIp { .. } => "no_public_ip",
            RejectReason::BadPublicIp { .. } => "bad_public_ip",
            RejectReason::OurPublicIp { .. } => "our_public_ip",
            RejectReason::WrongBackendType { .. } => "wrong_backend_type",
            RejectReason::WrongVni { .. } => "wrong_vni",
            RejectReason::BadBackendData { .. } => "bad_backend_data",
            RejectReason::DuplicateVtepMac { .. } => "duplicate_vtep_mac",
            RejectReason::ProtectedRoute { .. } => "protected_route",
            RejectReason::NotOnSegment(_) => "not_on_segment",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::BadKey { detail } | RejectReason::BadValue { detail } => f.write_str(detail),
            RejectReason::OutsideNetwork { subnet, network: Some(network) } => {
                write!(f, "{subnet} is not inside the network {network}")
            }
            RejectReason::OutsideNetwork { subnet, network: None } => {
                write!(f, "{subnet} is of a family the network config does not enable")
            }
            RejectReason::WrongLength { subnet, expected } => {
                write!(f, "{subnet} is not a /{expected} (the configured subnet length)")
            }
            RejectReason::OverlapsOwn { subnet, own } => write!(f, "{subnet} overlaps our own subnet {own}"),
            RejectReason::OverlapsPeer { subnet, winner } => {
                write!(f, "{subnet} overlaps the older lease {winner}, which is kept")
            }
            RejectReason::NoPublicIp { family } => write!(f, "no {family} public IP for its {family} subnet"),
            RejectReason::BadPublicIp { ip, why } => write!(f, "public IP {ip} is {why}"),
            RejectReason::OurPublicIp { ip } => write!(f, "public IP {ip} is this host's"),
            RejectReason::WrongBackendType { theirs, ours } => write!(f, "BackendType is {theirs:?}, not {ours:?}"),
            RejectReason::WrongVni { theirs, ours } => write!(f, "BackendData.VNI is {theirs}, ours is {ours}"),
            RejectReason::BadBackendData { detail } => f.write_str(detail),
            RejectReason::DuplicateVtepMac { mac, holder } => write!(f, "VtepMAC {mac} is already used by {holder}"),
            RejectReason::ProtectedRoute { dst, protected, what } => {
                write!(f, "a route to {dst} would cover {what} {protected}")
            }
            RejectReason::NotOnSegment(e) => {
                write!(f, "{e}; host-gw needs every host on one L2 segment (use vxlan with DirectRouting)")
            }
        }
    }
}

/// Why `ip` cannot be a peer's tunnel endpoint, for addresses that are wrong whatever the configuration.
pub fn unusable_endpoint(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(_) if crate::is_link_local(ip) => Some("a link-local address"),
        // An IPv4-mapped address would send IPv6-underlay tunnels to an IPv4 host.
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("an IPv4-mapped address"),
        _ => None,
    }
}

/// Something of this host's that no overlay route may cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protected {
    pub net: IpNetwork,
    /// What it is, for the message ("the underlay's connected prefix", "this host's address", "our own subnet").
    pub what: &'static str,
    /// A blackhole route for exactly this prefix is allowed (a userspace backend's fallback for our own subnet
    /// sends nothing anywhere).
    pub blackhole_allowed: bool,
}

impl Protected {
    pub fn connected_prefix(net: IpNetwork) -> Protected {
        // An interface address with its prefix: the route covers the whole connected subnet.
        let base = IpNetwork::new(net.network(), net.prefix()).unwrap_or(net);
        Protected { net: base, what: "the underlay's connected prefix", blackhole_allowed: false }
    }

    pub fn host_address(ip: IpAddr) -> Protected {
        let net = IpNetwork::new(ip, Family::of(ip).host_prefix()).expect("a host prefix is valid");
        Protected { net, what: "this host's address", blackhole_allowed: false }
    }

    pub fn own_subnet(net: IpNetwork) -> Protected {
        Protected { net, what: "our own subnet", blackhole_allowed: true }
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Removes every route (and the neighbours it would use) that covers or lies inside something protected, and
/// reports each. Whatever the leases and the backend say, the underlay, this host's addresses and our own subnet
/// keep their routes.
pub fn guard_routes(state: &mut KernelState, protected: &[Protected]) -> Vec<SkippedPeer> {
    let mut refused = Vec::new();
    for route in state.routes.values() {
        let allowed = |p: &Protected| p.blackhole_allowed && route.kind == RouteKind::Blackhole && route.dst == p.net;
        if let Some(p) = protected.iter().find(|p| overlaps(route.dst, p.net) && !allowed(p)) {
            refused.push(SkippedPeer {
                subnet: route.dst,
                reason: RejectReason::ProtectedRoute { dst: route.dst, protected: p.net, what: p.what },
            });
        }
    }
    for s in &refused {
        state.routes.remove(&s.subnet);
    }
    // A peer's gateway neighbour lies inside its subnet: without the route it would only shadow someone else's
    // address. Gateways of kept routes stay.
    let routes = &state.routes;
    let still_used = |ip: IpAddr| routes.values().any(|r| r.gateway == Some(ip));
    state.neighbours.retain(|_, n| !refused.iter().any(|s| s.subnet.contains(n.ip)) || still_used(n.ip));
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Neighbour, Route, WEFT_ROUTE_PROTOCOL};

    #[test]
    fn every_reason_has_a_listed_unique_name() {
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        let net: IpNetwork = "10.244.3.0/24".parse().unwrap();
        let all = [
            RejectReason::BadKey { detail: String::new() },
            RejectReason::BadValue { detail: String::new() },
            RejectReason::OutsideNetwork { subnet: net, network: None },
            RejectReason::WrongLength { subnet: net, expected: 24 },
            RejectReason::OverlapsOwn { subnet: net, own: net },
            RejectReason::OverlapsPeer { subnet: net, winner: String::new() },
            RejectReason::NoPublicIp { family: Family::V4 },
            RejectReason::BadPublicIp { ip, why: "" },
            RejectReason::OurPublicIp { ip },
            RejectReason::WrongBackendType { theirs: String::new(), ours: String::new() },
            RejectReason::WrongVni { theirs: 2, ours: 1 },
            RejectReason::BadBackendData { detail: String::new() },
            RejectReason::DuplicateVtepMac { mac: MacAddr::default(), holder: String::new() },
            RejectReason::ProtectedRoute { dst: net, protected: net, what: "" },
            RejectReason::NotOnSegment(NotOnSegment { public_ip: ip, interface: String::new(), segments: Vec::new() }),
        ];
        let names: Vec<&str> = all.iter().map(RejectReason::name).collect();
        assert_eq!(names, RejectReason::NAMES);
    }

    #[test]
    fn endpoints_that_are_never_a_host() {
        for (ip, why) in [
            ("127.0.0.1", "a loopback address"),
            ("224.0.0.1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
            ("0.0.0.0", "unspecified"),
            ("169.254.1.1", "a link-local address"),
            ("::1", "a loopback address"),
            ("ff02::1", "a multicast address"),
            ("::", "unspecified"),
            ("fe80::1", "a link-local address"),
            ("::ffff:198.18.0.1", "an IPv4-mapped address"),
        ] {
            assert_eq!(unusable_endpoint(ip.parse().unwrap()), Some(why), "{ip}");
        }
        for ip in ["198.18.0.1", "fd00::2", "2001:db8::1"] {
            assert_eq!(unusable_endpoint(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn the_guard_drops_routes_over_the_underlay_our_addresses_and_our_subnet() {
        let mut state = KernelState::default();
        for (dst, gw) in [
            ("10.244.2.0/24", "10.244.2.0"),
            ("198.18.0.0/24", "198.18.0.0"),
            ("198.18.0.0/25", "198.18.0.0"),
            ("0.0.0.0/0", "0.0.0.0"),
            ("10.244.1.128/25", "10.244.1.128"),
            ("fd00::/64", "fd00::"),
        ] {
            let dst: IpNetwork = dst.parse().unwrap();
            let gw: IpAddr = gw.parse().unwrap();
            state.add_route(Route::via(dst, gw, "flannel.1", true, WEFT_ROUTE_PROTOCOL));
            state.add_neighbour(Neighbour { device: "flannel.1".into(), ip: gw, mac: MacAddr::default() });
        }
        let protected = [
            Protected::connected_prefix("198.18.0.1/24".parse().unwrap()),
            Protected::host_address("fd00::1".parse().unwrap()),
            Protected::own_subnet("10.244.1.0/24".parse().unwrap()),
        ];
        state.add_route(Route::blackhole("10.244.1.0/24".parse().unwrap(), WEFT_ROUTE_PROTOCOL));
        let refused = guard_routes(&mut state, &protected);
        let kept: Vec<String> = state.routes.keys().map(ToString::to_string).collect();
        assert_eq!(kept, ["10.244.1.0/24", "10.244.2.0/24"], "our own subnet's blackhole sends nothing anywhere");
        assert_eq!(state.neighbours.len(), 1, "the refused routes' gateways go too");
        let reasons: Vec<String> = refused.iter().map(|s| s.reason.to_string()).collect();
        assert_eq!(
            reasons,
            [
                "a route to 0.0.0.0/0 would cover the underlay's connected prefix 198.18.0.0/24",
                "a route to 10.244.1.128/25 would cover our own subnet 10.244.1.0/24",
                "a route to 198.18.0.0/24 would cover the underlay's connected prefix 198.18.0.0/24",
                "a route to 198.18.0.0/25 would cover the underlay's connected prefix 198.18.0.0/24",
                "a route to fd00::/64 would cover this host's address fd00::1/128",
            ]
        );
        assert!(refused.iter().all(|s| s.reason.name() == "protected_route"));
    }
}
