//! Which addresses of a subnet may be handed out, and in which order: host-local's rules, so that a node switching
//! from it continues where it left off. The range is the subnet without its network address, without the IPv4
//! broadcast address, and without the gateway (the first address); allocation goes round-robin from the address
//! after the last one reserved.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::error::{CniError, Result};

/// At most this many candidates are tried per ADD: an IPv6 /64 would otherwise be searched for ever.
pub const MAX_CANDIDATES: u128 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The subnet with its prefix, e.g. 10.244.3.0/24.
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
    start: u128,
    end: u128,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((n as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

impl Range {
    /// The range of the host's subnet as the subnet file gives it (any address of the subnet with its prefix, e.g.
    /// FLANNEL_SUBNET=10.244.3.1/24).
    pub fn for_subnet(subnet: IpNetwork) -> Result<Range> {
        let base = to_u128(subnet.network());
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        let host_bits = bits - subnet.prefix() as u32;
        if host_bits < 2 {
            return Err(CniError::InvalidConfig(format!(
                "subnet {subnet} is too small to hold a gateway and containers"
            )));
        }
        let last = base + ((1u128 << host_bits) - 1);
        // IPv4 keeps its broadcast address out; IPv6 has none.
        let end = if subnet.is_ipv4() { last - 1 } else { last };
        let gateway = from_u128(base + 1, subnet.ip());
        let subnet = IpNetwork::new(subnet.network(), subnet.prefix()).expect("prefix was valid");
        Ok(Range { subnet, gateway, start: base + 1, end })
    }

    /// The gateway address with the subnet's prefix, as it goes on the bridge.
    pub fn gateway_with_prefix(&self) -> IpNetwork {
        IpNetwork::new(self.gateway, self.subnet.prefix()).expect("prefix was valid")
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.subnet.is_ipv4() && (self.start..=self.end).contains(&to_u128(ip))
    }

    /// Candidates in allocation order: from the address after `last_reserved` (when it is in the range), wrapping
    /// around, each address once, the gateway never.
    pub fn candidates(&self, last_reserved: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        let size = self.end - self.start + 1;
        let first = match last_reserved.filter(|ip| self.contains(*ip)) {
            Some(ip) => (to_u128(ip) - self.start + 1) % size,
            None => 0,
        };
        let gateway = to_u128(self.gateway);
        (0..size.min(MAX_CANDIDATES))
            .map(move |i| self.start + (first + i) % size)
            .filter(move |n| *n != gateway)
            .map(move |n| from_u128(n, self.gateway))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(r: &Range, last: Option<&str>, n: usize) -> Vec<String> {
        r.candidates(last.map(|l| l.parse().unwrap())).take(n).map(|ip| ip.to_string()).collect()
    }

    #[test]
    fn host_local_order_for_ipv4() {
        let r = Range::for_subnet("10.244.3.1/24".parse().unwrap()).unwrap();
        assert_eq!(r.subnet.to_string(), "10.244.3.0/24");
        assert_eq!(r.gateway.to_string(), "10.244.3.1");
        assert_eq!(r.gateway_with_prefix().to_string(), "10.244.3.1/24");
        assert_eq!(ips(&r, None, 2), ["10.244.3.2", "10.244.3.3"]);
        assert_eq!(ips(&r, Some("10.244.3.30"), 1), ["10.244.3.31"]);
        // After the last usable address (.254; .255 is broadcast) it wraps, skipping the gateway.
        assert_eq!(ips(&r, Some("10.244.3.253"), 3), ["10.244.3.254", "10.244.3.2", "10.244.3.3"]);
        // A last-reserved address from another subnet is ignored.
        assert_eq!(ips(&r, Some("10.9.9.9"), 1), ["10.244.3.2"]);
        assert_eq!(r.candidates(None).count(), 253);
    }

    #[test]
    fn small_and_ipv6_ranges() {
        let r = Range::for_subnet("10.0.0.1/29".parse().unwrap()).unwrap();
        assert_eq!(ips(&r, None, 10), ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        assert!(Range::for_subnet("10.0.0.1/31".parse().unwrap()).is_err());
        let r6 = Range::for_subnet("fd00:1::1/64".parse().unwrap()).unwrap();
        assert_eq!(ips(&r6, None, 2), ["fd00:1::2", "fd00:1::3"]);
        assert_eq!(r6.candidates(None).count() as u128, MAX_CANDIDATES - 1);
        let r6small = Range::for_subnet("fd00::1/126".parse().unwrap()).unwrap();
        assert_eq!(ips(&r6small, None, 5), ["fd00::2", "fd00::3"]);
    }
}
