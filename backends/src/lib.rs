//! weft's data plane.
//!
//! A [`backend::Backend`] turns our lease and the other hosts' leases into the complete [`backend::Desired`]
//! state: kernel objects ([`model::KernelState`]), firewall tables ([`rules::RuleSet`]) and, for a userspace
//! data plane, a [`forwarding::ForwardingTable`]. The pure [`diff::diff`] and [`rules::diff_rules`] compare that
//! with what a [`kernel::Kernel`] and a [`rules::Rules`] observe and yield the operations to apply; the forwarding
//! table goes to the data plane on a watch channel. [`netlink::NetlinkKernel`] and [`rules::NftRules`] talk to
//! Linux; [`fake::FakeKernel`] and [`fake::FakeRules`] stand in for them in tests.

pub mod backend;
pub mod blackhole;
pub mod dense;
pub mod diff;
pub mod direct;
pub mod fake;
pub mod forwarding;
pub mod hostgw;
pub mod kernel;
pub mod model;
#[cfg(feature = "runtime")]
pub mod netlink;
pub mod parts;
pub mod rules;
pub mod trust;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

/// An IP address family. v4 and v6 go through the same code; this says which half of a lease is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first: the order every per-family loop walks them in.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The prefix length of a single address (32 or 128).
    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn of(addr: IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One value per address family, for everything that comes in an IPv4 and an IPv6 half (a lease's subnets,
/// public IPs and backend data; the config's networks). Code walks the families instead of naming two fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PerFamily<T> {
    pub v4: Option<T>,
    pub v6: Option<T>,
}

impl<T> Default for PerFamily<T> {
    fn default() -> Self {
        PerFamily { v4: None, v6: None }
    }
}

impl<T> PerFamily<T> {
    pub fn new(v4: Option<T>, v6: Option<T>) -> Self {
        PerFamily { v4, v6 }
    }

    pub fn get(&self, family: Family) -> Option<&T> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    pub fn set(&mut self, family: Family, value: Option<T>) {
        match family {
            Family::V4 => self.v4 = value,
            Family::V6 => self.v6 = value,
        }
    }

    /// The families that have a value, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (Family, &T)> {
        Family::ALL.into_iter().filter_map(|f| self.get(f).map(|v| (f, v)))
    }

    pub fn families(&self) -> Vec<Family> {
        self.iter().map(|(f, _)| f).collect()
    }

    /// Builds a value per family; `f` returning None leaves that family empty.
    pub fn from_fn(mut f: impl FnMut(Family) -> Option<T>) -> Self {
        PerFamily { v4: f(Family::V4), v6: f(Family::V6) }
    }
}

impl PerFamily<IpAddr> {
    /// Addresses sorted into their families; an address of the other family in a slot is dropped.
    pub fn of_addresses(v4: Option<IpAddr>, v6: Option<IpAddr>) -> Self {
        PerFamily { v4: v4.filter(IpAddr::is_ipv4), v6: v6.filter(IpAddr::is_ipv6) }
    }
}

/// A host's lease as a backend sees it: which subnets, where its tunnel endpoint is, and the opaque data its
/// backend published.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub subnets: PerFamily<IpNetwork>,
    pub public_ips: PerFamily<IpAddr>,
    pub backend_type: String,
    pub backend_data: PerFamily<Value>,
}

impl Peer {
    pub fn subnet(&self, family: Family) -> Option<IpNetwork> {
        self.subnets.get(family).copied()
    }
    pub fn public_ip(&self, family: Family) -> Option<IpAddr> {
        self.public_ips.get(family).copied()
    }
    /// This peer's subnet and public IP of `family`: None when it lacks either, or when the subnet is ours (a
    /// peer never routes our own subnet away from us).
    pub fn remote(&self, own: &Peer, family: Family) -> Option<(IpNetwork, IpAddr)> {
        let (subnet, public_ip) = (self.subnet(family)?, self.public_ip(family)?);
        (own.subnet(family) != Some(subnet)).then_some((subnet, public_ip))
    }
    pub fn backend_data(&self, family: Family) -> Option<&Value> {
        self.backend_data.get(family)
    }
}

/// The host interface that carries encapsulated traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The interface's own addresses with their prefixes (the VTEP's local address comes from here).
    pub addresses: Vec<IpNetwork>,
    /// The addresses other hosts reach us at, when they differ from the interface's (NAT); published in the lease.
    pub public_ips: PerFamily<IpAddr>,
}

impl Underlay {
    /// An underlay published at its own addresses (no `--public-ip`).
    pub fn new(name: impl Into<String>, index: u32, mtu: u32, addresses: Vec<IpNetwork>) -> Underlay {
        Underlay { name: name.into(), index, mtu, addresses, public_ips: PerFamily::default() }
    }

    /// The interface's first global address of `family`.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        self.addresses.iter().map(|n| n.ip()).find(|ip| Family::of(*ip) == family && !is_link_local(*ip))
    }

    /// The address published in our lease for `family`.
    pub fn public_ip(&self, family: Family) -> Option<IpAddr> {
        self.public_ips.get(family).copied().or_else(|| self.address(family))
    }

    /// Whether `ip` is on one of the interface's connected subnets (same L2, reachable without a gateway).
    pub fn is_directly_connected(&self, ip: IpAddr) -> bool {
        self.addresses.iter().any(|n| n.contains(ip) && n.prefix() < Family::of(ip).host_prefix())
    }
}

pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid network config field {field}: {msg}")]
    Config { field: String, msg: String },
    #[error("interface {interface} has no {family} address for the {backend} backend")]
    NoUnderlayAddress { interface: String, family: Family, backend: &'static str },
    #[error("unsupported backend type {0:?}: this build supports \"vxlan\", \"host-gw\", \"udp\" and \"wireguard\"")]
    UnsupportedType(String),
    #[error(transparent)]
    WireguardKey(#[from] wireguard::keys::KeyError),
}
