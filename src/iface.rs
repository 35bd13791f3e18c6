//! Which host interface carries the overlay, chosen by flannel's rules (flannel's `LookupExtIface` and main.go):
//!
//! 1. With none of `--iface`, `--iface-regex`, `--iface-can-reach`: the interface that owns `--public-ip` (else
//!    `--public-ipv6`) when one does, else the interface of the default route.
//! 2. Otherwise each `--iface` in order (an address names the interface that owns it, and is the local address;
//!    a name needs an address of the family), then each `--iface-regex` in order (first against every
//!    interface's addresses, then against the names, where the first interface whose name matches is the only
//!    candidate), then `--iface-can-reach`. The first that yields an interface wins; a candidate that fails
//!    (even a regex that does not compile) falls through to the next, as in flannel, and the error reports every
//!    one that was tried.
//!
//! weft differs in one place: a `--public-ip` that no interface owns (a NAT address) falls back to the default
//! route where flanneld exits. A pure choice over the interface list.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use regex::Regex;
use weft_backends::netlink::Interface;
use weft_backends::{is_link_local, Family, PerFamily, Underlay};

#[derive(Debug, Clone, Default)]
pub struct IfaceOptions {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    pub can_reach: Option<IpAddr>,
    /// `--public-ip` / `--public-ipv6`.
    pub public_ips: PerFamily<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfaceError {
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    #[error("no interface matches --iface {0:?} with an {1} address (interfaces: {2})")]
    NoMatch(String, Family, String),
    #[error("no interface matches --iface-regex {0:?} with an {1} address (interfaces: {2})")]
    NoRegexMatch(String, Family, String),
    #[error("none of --iface {0:?} is an interface or an interface's address (interfaces: {1})")]
    NotPresent(Vec<String>, String),
    #[error("no interface has the address {0} that routes to --iface-can-reach {1}")]
    CannotReach(IpAddr, IpAddr),
    #[error("there is no default route to pick an interface from; pass --iface")]
    NoDefaultRoute,
    #[error("the default-route interface (index {0}) has no {1} address; pass --iface")]
    DefaultHasNoAddress(u32, Family),
    #[error("no interface matches the interfaces, regexes and --iface-can-reach given: {}", list(.0))]
    NothingMatched(Vec<IfaceError>),
}

fn list(errors: &[IfaceError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// What the caller learned from the kernel before choosing.
pub struct HostFacts<'a> {
    pub interfaces: &'a [Interface],
    pub default_route_index: Option<u32>,
    /// The source address the kernel would use towards `--iface-can-reach` (None: no route to it).
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
    let chooser = Chooser { facts, family };
    if opts.ifaces.is_empty() && opts.regexes.is_empty() && opts.can_reach.is_none() {
        if let Some(public) = opts.public_ips.v4.or(opts.public_ips.v6) {
            if let Some((i, ip)) = chooser.owner_of(public) {
                return Ok(underlay(i, ip, opts));
            }
        }
        let (i, ip) = chooser.default_route()?;
        return Ok(underlay(i, ip, opts));
    }

    let mut tried = Vec::new();
    let candidates = opts
        .ifaces
        .iter()
        .map(|wanted| chooser.by_iface(wanted))
        .chain(opts.regexes.iter().map(|re| chooser.by_regex(re)))
        .chain(opts.can_reach.map(|target| chooser.by_route(target)));
    for candidate in candidates {
        match candidate {
            Ok((i, ip)) => return Ok(underlay(i, ip, opts)),
            Err(e) => tried.push(e),
        }
    }
    Err(if tried.len() == 1 { tried.remove(0) } else { IfaceError::NothingMatched(tried) })
}

struct Chooser<'a> {
    facts: &'a HostFacts<'a>,
    family: Family,
}

impl<'a> Chooser<'a> {
    fn names(&self) -> String {
        self.facts.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// The interface holding `ip`, with `ip` as the local address when it is of our family.
    fn owner_of(&self, ip: IpAddr) -> Option<(&'a Interface, IpAddr)> {
        let i = self.facts.interfaces.iter().find(|i| i.addresses.iter().any(|a| a.ip() == ip))?;
        let local = if Family::of(ip) == self.family { Some(ip) } else { first_address(i, self.family) };
        local.map(|local| (i, local))
    }

    /// `--iface`: an address or a name.
    fn by_iface(&self, wanted: &str) -> Result<(&'a Interface, IpAddr), IfaceError> {
        let found = match wanted.parse::<IpAddr>() {
            Ok(ip) => self.owner_of(ip),
            Err(_) => self
                .facts
                .interfaces
                .iter()
                .find(|i| i.name == wanted)
                .and_then(|i| first_address(i, self.family).map(|ip| (i, ip))),
        };
        found.ok_or_else(|| IfaceError::NoMatch(wanted.to_string(), self.family, self.names()))
    }

    /// `--iface-regex`: every interface's addresses first, then the first interface whose name matches.
    fn by_regex(&self, pattern: &str) -> Result<(&'a Interface, IpAddr), IfaceError> {
        let re = Regex::new(pattern).map_err(|e| IfaceError::BadRegex(pattern.to_string(), e.to_string()))?;
        for i in self.facts.interfaces {
            if let Some(ip) = usable_addresses(i, self.family).find(|ip| re.is_match(&ip.to_string())) {
                return Ok((i, ip));
            }
        }
        self.facts
            .interfaces
            .iter()
            .find(|i| re.is_match(&i.name))
            .and_then(|i| first_address(i, self.family).map(|ip| (i, ip)))
            .ok_or_else(|| IfaceError::NoRegexMatch(pattern.to_string(), self.family, self.names()))
    }

    /// `--iface-can-reach`: the interface holding the source address of the route to `target`.
    fn by_route(&self, target: IpAddr) -> Result<(&'a Interface, IpAddr), IfaceError> {
        let source = self.facts.can_reach_source.ok_or(IfaceError::CannotReach(target, target))?;
        let i = self
            .facts
            .interfaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.ip() == source))
            .ok_or(IfaceError::CannotReach(source, target))?;
        Ok((i, source))
    }

    fn default_route(&self) -> Result<(&'a Interface, IpAddr), IfaceError> {
        let index = self.facts.default_route_index.ok_or(IfaceError::NoDefaultRoute)?;
        let i = self.facts.interfaces.iter().find(|i| i.index == index).ok_or(IfaceError::NoDefaultRoute)?;
        let ip = first_address(i, self.family).ok_or(IfaceError::DefaultHasNoAddress(index, self.family))?;
        Ok((i, ip))
    }
}

/// Addresses a tunnel can use as its local end: of the family, not loopback or link-local (a VTEP on a
/// link-local address cannot be reached from another link).
fn usable_addresses(i: &Interface, family: Family) -> impl Iterator<Item = IpAddr> + '_ {
    i.addresses
        .iter()
        .map(|a| a.ip())
        .filter(move |ip| Family::of(*ip) == family && !is_link_local(*ip) && !ip.is_loopback())
}

fn first_address(i: &Interface, family: Family) -> Option<IpAddr> {
    usable_addresses(i, family).next()
}

/// The chosen address goes first, so it is the VTEP's local address.
fn underlay(i: &Interface, chosen: IpAddr, opts: &IfaceOptions) -> Underlay {
    let mut addresses: Vec<IpNetwork> = i.addresses.clone();
    addresses.sort_by_key(|a| a.ip() != chosen);
    Underlay { name: i.name.clone(), index: i.index, mtu: i.mtu, addresses, public_ips: opts.public_ips }
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
            master: None,
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
        let opts = IfaceOptions {
            public_ips: PerFamily::new(Some("203.0.113.9".parse().unwrap()), None),
            ..Default::default()
        };
        let u = pick(opts, Some(2)).unwrap();
        assert_eq!(u.public_ip(Family::V4).unwrap().to_string(), "203.0.113.9");
        assert_eq!(u.address(Family::V4).unwrap().to_string(), "198.18.0.1");
    }

    fn opts(ifaces: &[&str], regexes: &[&str], can_reach: Option<&str>) -> IfaceOptions {
        IfaceOptions {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: regexes.iter().map(|s| s.to_string()).collect(),
            can_reach: can_reach.map(|s| s.parse().unwrap()),
            ..Default::default()
        }
    }

    fn chosen(u: &Underlay) -> (String, String) {
        (u.name.clone(), u.address(Family::V4).unwrap().to_string())
    }

    #[test]
    fn public_ip_without_iface_picks_the_interface_that_owns_it() {
        let opts = IfaceOptions {
            public_ips: PerFamily::new(Some("198.19.6.1".parse().unwrap()), None),
            ..Default::default()
        };
        let u = pick(opts, Some(2)).unwrap();
        assert_eq!(chosen(&u), ("eth1".into(), "198.19.6.1".into()), "not the default route's eth0");
        // With --iface given, --public-ip only sets what is published.
        let mut with_iface = opts_with_public("198.19.6.1");
        with_iface.ifaces = vec!["eth0".into()];
        assert_eq!(pick(with_iface, Some(2)).unwrap().name, "eth0");
    }

    fn opts_with_public(ip: &str) -> IfaceOptions {
        IfaceOptions { public_ips: PerFamily::new(Some(ip.parse().unwrap()), None), ..Default::default() }
    }

    #[test]
    fn iface_falls_back_to_regex_then_can_reach() {
        let interfaces = host();
        let facts = HostFacts {
            interfaces: &interfaces,
            default_route_index: Some(2),
            can_reach_source: Some("198.19.5.1".parse().unwrap()),
        };
        let regex_wins = opts(&["wlan0"], &["^eth0$"], Some("198.19.5.7"));
        assert_eq!(select(&regex_wins, &facts, Family::V4).unwrap().name, "eth0");
        let can_reach_wins = opts(&["wlan0"], &["^wlan"], Some("198.19.5.7"));
        assert_eq!(select(&can_reach_wins, &facts, Family::V4).unwrap().name, "eth1");
        let iface_wins = opts(&["eth1"], &["^eth0$"], Some("198.19.5.7"));
        assert_eq!(select(&iface_wins, &facts, Family::V4).unwrap().name, "eth1");
    }

    #[test]
    fn a_failing_candidate_falls_through_even_a_bad_regex() {
        let u = pick(opts(&[], &["(", "^eth1$"], None), Some(2)).unwrap();
        assert_eq!(u.name, "eth1");
        // An interface name without an address of the family is a failed candidate, not a choice.
        let interfaces = vec![iface("eth9", 9, &["2001:db8::9/64"]), iface("eth0", 2, &["198.18.0.1/24"])];
        let facts = HostFacts { interfaces: &interfaces, default_route_index: None, can_reach_source: None };
        assert_eq!(select(&opts(&["eth9", "eth0"], &[], None), &facts, Family::V4).unwrap().name, "eth0");
    }

    #[test]
    fn when_nothing_matches_every_candidate_is_reported() {
        let err = pick(opts(&["wlan0"], &["^ppp", "("], Some("198.19.5.7")), Some(2)).unwrap_err();
        let IfaceError::NothingMatched(tried) = &err else { panic!("{err:?}") };
        assert_eq!(tried.len(), 4, "{err}");
        let text = err.to_string();
        for part in ["--iface \"wlan0\"", "--iface-regex \"^ppp\"", "\"(\" is not a valid", "--iface-can-reach"] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }

    #[test]
    fn regex_tries_every_address_before_any_name() {
        // "1" matches the name eth1 and the address 198.18.0.1 on eth0, which comes first in flannel's order
        // because addresses are matched before names.
        let u = pick(opts(&[], &["1"], None), None).unwrap();
        assert_eq!(chosen(&u), ("eth0".into(), "198.18.0.1".into()));
        // A name match takes the first interface whose name matches, and its first address.
        let u = pick(opts(&[], &["^eth[0-9]{1,2}$"], None), None).unwrap();
        assert_eq!(chosen(&u), ("eth0".into(), "198.18.0.1".into()));
    }

    #[test]
    fn loopback_and_link_local_are_never_the_local_address() {
        let interfaces = vec![iface("lo", 1, &["127.0.0.1/8"]), iface("eth0", 2, &["169.254.3.4/16"])];
        let facts = HostFacts { interfaces: &interfaces, default_route_index: Some(2), can_reach_source: None };
        assert!(matches!(select(&opts(&["lo"], &[], None), &facts, Family::V4), Err(IfaceError::NoMatch(..))));
        assert_eq!(
            select(&IfaceOptions::default(), &facts, Family::V4).unwrap_err(),
            IfaceError::DefaultHasNoAddress(2, Family::V4)
        );
    }

    #[test]
    fn ipv6_through_the_same_rules() {
        let interfaces = vec![
            iface("eth0", 2, &["198.18.0.1/24", "fe80::1/64", "2001:db8::1/64"]),
            iface("eth1", 3, &["2001:db8:1::1/64"]),
        ];
        let facts = HostFacts { interfaces: &interfaces, default_route_index: Some(2), can_reach_source: None };
        let u = select(&IfaceOptions::default(), &facts, Family::V6).unwrap();
        assert_eq!(u.address(Family::V6).unwrap().to_string(), "2001:db8::1");
        let by_regex = select(&opts(&[], &["^2001:db8:1:"], None), &facts, Family::V6).unwrap();
        assert_eq!(by_regex.name, "eth1");
        let public = IfaceOptions {
            public_ips: PerFamily::new(None, Some("2001:db8:1::1".parse().unwrap())),
            ..Default::default()
        };
        assert_eq!(select(&public, &facts, Family::V6).unwrap().name, "eth1");
    }
}
