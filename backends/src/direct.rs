//! Routes straight to a peer across the underlay: `<peer subnet> via <peer public IP> dev <underlay>`, with no
//! encapsulation. The host-gw backend routes every peer this way; VXLAN's DirectRouting does it for the peers on
//! its own segment and tunnels the rest.
//!
//! Such a route only works when the peer's public IP is on one of the underlay's connected subnets: the kernel
//! resolves the gateway with ARP/NDP on the underlay, and a gateway behind a router is refused (`Network is
//! unreachable`) or, worse, accepted through an onlink flag and then black-holed by the router.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::Route;
use crate::{Family, Underlay};

/// Why a peer cannot be routed to directly: its public IP is not on the underlay's segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOnSegment {
    pub public_ip: IpAddr,
    pub interface: String,
    /// The underlay's connected subnets of the peer's family.
    pub segments: Vec<IpNetwork>,
}

impl fmt::Display for NotOnSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let segments: Vec<String> = self.segments.iter().map(|n| n.to_string()).collect();
        write!(
            f,
            "public IP {} is not on {}'s segment ({}), so no route can point at it directly",
            self.public_ip,
            self.interface,
            if segments.is_empty() { "no address of its family".to_string() } else { segments.join(", ") }
        )
    }
}

/// The route to `subnet` through the peer at `public_ip`, when that peer is on the underlay's segment.
pub fn route_via_underlay(
    underlay: &Underlay,
    subnet: IpNetwork,
    public_ip: IpAddr,
    protocol: u8,
) -> Result<Route, NotOnSegment> {
    if underlay.is_directly_connected(public_ip) {
        return Ok(Route::via(subnet, public_ip, &underlay.name, false, protocol));
    }
    let family = Family::of(public_ip);
    Err(NotOnSegment {
        public_ip,
        interface: underlay.name.clone(),
        segments: underlay
            .addresses
            .iter()
            .filter(|n| Family::of(n.ip()) == family && n.prefix() < family.host_prefix())
            .map(|n| IpNetwork::new(n.network(), n.prefix()).expect("a network's own prefix is valid"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WEFT_ROUTE_PROTOCOL;

    fn underlay() -> Underlay {
        Underlay::new(
            "eth0",
            2,
            1500,
            vec![
                "198.18.0.1/24".parse().unwrap(),
                "fd00:198:18::1/64".parse().unwrap(),
                "198.18.5.1/32".parse().unwrap(),
            ],
        )
    }

    #[test]
    fn a_peer_on_the_segment_gets_a_plain_route_of_either_family() {
        let route =
            route_via_underlay(&underlay(), "10.244.2.0/24".parse().unwrap(), "198.18.0.2".parse().unwrap(), 87)
                .unwrap();
        assert_eq!(crate::model::render_route(&route), "route 10.244.2.0/24 via 198.18.0.2 dev eth0 proto 87");
        let route = route_via_underlay(
            &underlay(),
            "fd00:10:244:2::/64".parse().unwrap(),
            "fd00:198:18::2".parse().unwrap(),
            WEFT_ROUTE_PROTOCOL,
        )
        .unwrap();
        assert_eq!(crate::model::render_route(&route), "route fd00:10:244:2::/64 via fd00:198:18::2 dev eth0 proto 87");
    }

    #[test]
    fn a_peer_elsewhere_is_refused_with_the_segments_named() {
        // A /32 on the interface is no segment: nothing else lives on it.
        let err = route_via_underlay(&underlay(), "10.244.3.0/24".parse().unwrap(), "198.18.5.2".parse().unwrap(), 87)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "public IP 198.18.5.2 is not on eth0's segment (198.18.0.0/24), so no route can point at it directly"
        );
        let v4_only = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        let err = route_via_underlay(&v4_only, "fd00:10:244:3::/64".parse().unwrap(), "fd00::3".parse().unwrap(), 87)
            .unwrap_err();
        assert!(err.to_string().contains("(no address of its family)"), "{err}");
    }
}
