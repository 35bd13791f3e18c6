//! Which host interface carries the overlay: `--iface` (names or addresses, in order), then `--iface-regex`, then
//! `--iface-can-reach`, else the interface of the default route. A pure choice over the interface list.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use regex::Regex;
use weft_backends::netlink::Interface;
use weft_backends::{is_link_local, Family, Underlay};

#[derive(Debug, Clone, Default)]
pub struct IfaceOptions {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    pub can_reach: Option<IpAddr>,
    pub public_ipv4: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    #[error("no interface matches --iface {0:?} with an {1} address (interfaces: {2})")]
    NoMatch(String, Family, String),
    #[error("no interface matches any --iface-regex {0:?} with an {1} address (interfaces: {2})")]
    NoRegexMatch(Vec<String>, Family, String),
    #[error("none of --iface {0:?} is an interface or an interface's address (interfaces: {1})")]
    NotPresent(Vec<String>, String),
    #[error("no interface has the address {0} that routes to --iface-can-reach {1}")]
    CannotReach(IpAddr, IpAddr),
    #[error("there is no default route to pick an interface from; pass --iface")]
    NoDefaultRoute,
    #[error("the default-route interface (index {0}) has no {1} address; pass --iface")]
    DefaultHasNoAddress(u32, Family),
}

/// What the caller learned from the kernel before choosing.
pub struct HostFacts<'a> {
    pub interfaces: &'a [Interface],
    pub default_route_index: Option<u32>,
    /// The source address the kernel would use towards `--iface-can-reach`.
    pub can_reach_source: Option<IpAddr>,
}

/// Checked before weftd talks to etcd or claims anything: at least one `--iface` value names an interface or one
/// of its addresses (whatever the family the config will ask for, which is not known yet).
pub fn check_present(ifaces: &[String], interfaces: &[Interface]) -> Result<(), IfaceError> {
    let present = |value: &String| {
        let ip = value.parse::<IpAddr>().ok();
        interfaces.iter().any(|i| i.name == *value || i.addresses.iter().any(|a| Some(a.ip()) == ip))
    };
    if ifaces.is_empty() || ifaces.iter().any(present) {
        return Ok(());
    }
    let names = interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
    Err(IfaceError::NotPresent(ifaces.to_vec(), names))
}

/// Picks the underlay for `family` (the family the lease identity uses: IPv4 unless IPv4 is off).
pub fn select(opts: &IfaceOptions, facts: &HostFacts, family: Family) -> Result<Underlay, IfaceError> {
    let names = || facts.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ");
    let usable = |i: &Interface, ip: Option<IpAddr>| -> Option<IpAddr> {
        match ip {
            Some(ip) => i.addresses.iter().any(|a| a.ip() == ip).then_some(ip),
            None => first_address(i, family),
        }
    };

    if !opts.ifaces.is_empty() {
        for wanted in &opts.ifaces {
            let as_ip: Option<IpAddr> = wanted.parse().ok();
            for i in facts.interfaces {
                let matches = match as_ip {
                    Some(ip) => i.addresses.iter().any(|a| a.ip() == ip),
                    None => i.name == *wanted,
                };
                if let Some(ip) = matches.then(|| usable(i, as_ip)).flatten() {
                    return Ok(underlay(i, ip, opts));
                }
            }
        }
        return Err(IfaceError::NoMatch(opts.ifaces.join(","), family, names()));
    }

    if !opts.regexes.is_empty() {
        let regexes = opts
            .regexes
            .iter()
            .map(|r| Regex::new(r).map_err(|e| IfaceError::BadRegex(r.clone(), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        for re in &regexes {
            for i in facts.interfaces {
                // Like flannel, a regex may match an address as well as a name.
                if re.is_match(&i.name) {
                    if let Some(ip) = usable(i, None) {
                        return Ok(underlay(i, ip, opts));
                    }
                }
                if let Some(addr) =
                    i.addresses.iter().find(|a| Family::of(a.ip()) == family && re.is_match(&a.ip().to_string()))
                {
                    return Ok(underlay(i, addr.ip(), opts));
                }
            }
        }
        return Err(IfaceError::NoRegexMatch(opts.regexes.clone(), family, names()));
    }

    if let Some(target) = opts.can_reach {
        let source = facts.can_reach_source.ok_or(IfaceError::CannotReach(target, target))?;
        let i = facts
            .interfaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.ip() == source))
            .ok_or(IfaceError::CannotReach(source, target))?;
        return Ok(underlay(i, source, opts));
    }

    let index = facts.default_route_index.ok_or(IfaceError::NoDefaultRoute)?;
    let i = facts.interfaces.iter().find(|i| i.index == index).ok_or(IfaceError::NoDefaultRoute)?;
    let ip = first_address(i, family).ok_or(IfaceError::DefaultHasNoAddress(index, family))?;
    Ok(underlay(i, ip, opts))
}

fn first_address(i: &Interface, family: Family) -> Option<IpAddr> {
    i.addresses.iter().map(|a| a.ip()).find(|ip| Family::of(*ip) == family && !is_link_local(*ip))
}

/// The chosen address goes first, so it is the VTEP's local address.
fn underlay(i: &Interface, chosen: IpAddr, opts: &IfaceOptions) -> Underlay {
    let mut addresses: Vec<IpNetwork> = i.addresses.clone();
    addresses.sort_by_key(|a| a.ip() != chosen);
    Underlay {
        name: i.name.clone(),
        index: i.index,
        mtu: i.mtu,
        addresses,
        public_ipv4: opts.public_ipv4,
        public_ipv6: opts.public_ipv6,
    }
}

/// The local address the kernel would use to reach `target` (a connected UDP socket sends nothing).
pub fn source_address_towards(target: IpAddr) -> std::io::Result<IpAddr> {
    let bind: IpAddr = if target.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let socket = std::net::UdpSocket::bind((bind, 0))?;
    socket.connect((target, 9))?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, index: u32, addrs: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            index,
            mtu: 1500,
            up: true,
            mac: None,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn host() -> Vec<Interface> {
        vec![
            iface("lo", 1, &["127.0.0.1/8"]),
            iface("eth0", 2, &["198.18.0.1/24", "fe80::1/64"]),
            iface("eth1", 3, &["198.19.5.1/24", "198.19.6.1/24"]),
        ]
    }

    #[test]
    fn a_missing_iface_is_found_before_anything_else() {
        let host = host();
        let values = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_present(&[], &host).is_ok());
        assert!(check_present(&values(&["nope", &host[0].name]), &host).is_ok());
        let address = host.iter().flat_map(|i| &i.addresses).next().unwrap().ip().to_string();
        assert!(check_present(&values(&[&address]), &host).is_ok());
        let err = check_present(&values(&["eth9", "203.0.113.9"]), &host).unwrap_err().to_string();
        assert!(err.starts_with("none of --iface [\"eth9\", \"203.0.113.9\"] is an interface"), "{err}");
    }

    fn pick(opts: IfaceOptions, default: Option<u32>) -> Result<Underlay, IfaceError> {
        let interfaces = host();
        let facts = HostFacts { interfaces: &interfaces, default_route_index: default, can_reach_source: None };
        select(&opts, &facts, Family::V4)
    }

    #[test]
    fn default_route_interface_by_default() {
        let u = pick(IfaceOptions::default(), Some(2)).unwrap();
        assert_eq!((u.name.as_str(), u.address(Family::V4).unwrap().to_string()), ("eth0", "198.18.0.1".into()));
        assert_eq!(pick(IfaceOptions::default(), None).unwrap_err(), IfaceError::NoDefaultRoute);
    }

    #[test]
    fn iface_by_name_or_address_in_order() {
        let by_name = IfaceOptions { ifaces: vec!["missing".into(), "eth1".into()], ..Default::default() };
        assert_eq!(pick(by_name, Some(2)).unwrap().name, "eth1");
        let by_ip = IfaceOptions { ifaces: vec!["198.19.6.1".into()], ..Default::default() };
        let u = pick(by_ip, Some(2)).unwrap();
        assert_eq!(u.address(Family::V4).unwrap().to_string(), "198.19.6.1", "the named address is the VTEP address");
        let none = IfaceOptions { ifaces: vec!["wlan9".into()], ..Default::default() };
        let err = pick(none, Some(2)).unwrap_err().to_string();
        assert!(err.contains("--iface \"wlan9\"") && err.contains("lo, eth0, eth1"), "{err}");
    }

    #[test]
    fn regex_matches_names_then_addresses() {
        let opts = IfaceOptions { regexes: vec!["^eth1$".into()], ..Default::default() };
        assert_eq!(pick(opts, None).unwrap().name, "eth1");
        let opts = IfaceOptions { regexes: vec![r"^198\.19\.6\.".into()], ..Default::default() };
        assert_eq!(pick(opts, None).unwrap().address(Family::V4).unwrap().to_string(), "198.19.6.1");
        let bad = IfaceOptions { regexes: vec!["(".into()], ..Default::default() };
        assert!(matches!(pick(bad, None), Err(IfaceError::BadRegex(..))));
    }

    #[test]
    fn can_reach_uses_the_source_address() {
        let interfaces = host();
        let facts = HostFacts {
            interfaces: &interfaces,
            default_route_index: Some(2),
            can_reach_source: Some("198.19.5.1".parse().unwrap()),
        };
        let opts = IfaceOptions { can_reach: Some("198.19.5.7".parse().unwrap()), ..Default::default() };
        assert_eq!(select(&opts, &facts, Family::V4).unwrap().name, "eth1");
    }

    #[test]
    fn public_ip_overrides_what_is_published() {
        let opts = IfaceOptions { public_ipv4: Some("203.0.113.9".parse().unwrap()), ..Default::default() };
        let u = pick(opts, Some(2)).unwrap();
        assert_eq!(u.public_ip(Family::V4).unwrap().to_string(), "203.0.113.9");
        assert_eq!(u.address(Family::V4).unwrap().to_string(), "198.18.0.1");
    }
}
