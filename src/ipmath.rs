//! Address arithmetic shared by IPv4 and IPv6: addresses as integers, so both families use one code path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use weft_backends::Family;

pub fn bits(family: Family) -> u8 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// Number of addresses in a prefix of length `len`, saturating at u128::MAX for ::/0.
pub fn subnet_size(family: Family, len: u8) -> u128 {
    1u128.checked_shl(u32::from(bits(family) - len)).unwrap_or(u128::MAX)
}

/// Mask of the host bits of a prefix of length `len`.
pub fn host_mask(family: Family, len: u8) -> u128 {
    let host_bits = u32::from(bits(family) - len);
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// The last address of `net`.
pub fn last_address(net: IpNetwork) -> u128 {
    let family = Family::of(net.ip());
    to_u128(net.network()) | host_mask(family, net.prefix())
}

/// `net`'s base address plus `offset` (e.g. 1 for the gateway / first usable address).
pub fn nth(net: IpNetwork, offset: u128) -> IpAddr {
    let family = Family::of(net.ip());
    from_u128(family, to_u128(net.network()) + offset)
}

/// Whether two networks share any address.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    Family::of(a.ip()) == Family::of(b.ip()) && (a.contains(b.network()) || b.contains(a.network()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_covers_both_families() {
        let v4: IpNetwork = "10.244.3.0/24".parse().unwrap();
        assert_eq!(nth(v4, 1).to_string(), "10.244.3.1");
        assert_eq!(from_u128(Family::V4, last_address(v4)).to_string(), "10.244.3.255");
        let v6: IpNetwork = "fc00:0:0:5::/64".parse().unwrap();
        assert_eq!(nth(v6, 1).to_string(), "fc00:0:0:5::1");
        assert_eq!(subnet_size(Family::V6, 0), u128::MAX);
        assert_eq!(subnet_size(Family::V4, 24), 256);
        assert!(overlaps("10.0.0.0/8".parse().unwrap(), v4));
        assert!(!overlaps("10.244.4.0/24".parse().unwrap(), v4));
        assert!(!overlaps(v6, v4));
    }
}
