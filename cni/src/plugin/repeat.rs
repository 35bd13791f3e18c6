//! A second ADD for an attachment that an earlier ADD made: the same container ID and interface name, with
//! addresses already allocated to them. Runtimes repeat ADD after a timeout or a restart; the reference plugins
//! then hand back what exists. So does weft, but only when the earlier attachment is whole and lives in this very
//! CNI_NETNS: its interface there is the peer of our host end, in the bridge, with every allocated address on it.
//! Anything else is refused before anything is touched, so a repeat never gets a second address and never
//! replaces an interface in another container's netns.

use ipnetwork::IpNetwork;
use weft_netlink::link::{Kind, Link};

use crate::error::CniError;

/// What the kernel shows of the attachment, seen from CNI_NETNS and from the host.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// CNI_IFNAME inside CNI_NETNS.
    pub container: Option<Link>,
    /// The addresses on it.
    pub container_addresses: Vec<IpNetwork>,
    /// Our host end, named after the attachment.
    pub host_veth: Option<Link>,
    pub bridge: Option<Link>,
}

/// The names the attachment's parts must have.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub ifname: &'a str,
    pub netns: &'a str,
    pub host_veth: &'a str,
    pub bridge: &'a str,
    /// The addresses allocated to (container ID, ifname), with their prefix lengths.
    pub addresses: &'a [IpNetwork],
}

/// Every way `observed` is not the earlier attachment in this netns; empty when it is exactly that.
pub fn differences(expected: &Expected<'_>, observed: &Observed) -> Vec<String> {
    let Expected { ifname, netns, host_veth, bridge, addresses } = *expected;
    let mut diffs = Vec::new();
    let Some(container) = &observed.container else {
        diffs.push(match observed.host_veth {
            Some(_) => format!(
                "{netns} has no {ifname}: the earlier ADD's {ifname}, peer of host interface {host_veth}, is in another \
                 network namespace"
            ),
            None => format!("{netns} has no {ifname}, and host interface {host_veth} is missing"),
        });
        return diffs;
    };
    if container.kind != Some(Kind::Veth) {
        diffs.push(format!("{ifname} in {netns} is not a veth"));
    }
    match &observed.host_veth {
        None => diffs.push(format!("host interface {host_veth} is missing")),
        // A veth's IFLA_LINK is its peer's index; ours lives in the host netns, where indexes are unique, so both
        // pointing at each other means this is the pair the earlier ADD made, with its container end right here.
        Some(host) if container.link != Some(host.index) || host.link != Some(container.index) => diffs.push(format!(
            "{ifname} in {netns} is not the peer of host interface {host_veth} (the earlier ADD's {ifname} is in \
             another network namespace)"
        )),
        Some(host) => match &observed.bridge {
            Some(b) if host.master == Some(b.index) => {}
            _ => diffs.push(format!("host interface {host_veth} is not a port of bridge {bridge}")),
        },
    }
    for address in addresses {
        if !observed.container_addresses.contains(address) {
            diffs.push(format!("{address} is not on {ifname}"));
        }
    }
    diffs
}

/// The refusal of a repeat that does not match, naming the earlier addresses and every difference.
pub fn refusal(id: &str, ifname: &str, held: &[std::net::IpAddr], diffs: &[String]) -> CniError {
    let held: Vec<String> = held.iter().map(ToString::to_string).collect();
    CniError::InvalidEnv(format!(
        "container {id} already has {ifname} with {} from an earlier ADD, which this ADD does not match ({}); DEL \
         it before adding it again",
        held.join(", "),
        diffs.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Kind, peer: Option<u32>, master: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(kind),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            mtu: Some(1450),
            up: true,
            master,
            link: peer,
        }
    }

    /// The attachment an ADD made: eth0 (index 2 in the container) paired with host end 7, a port of bridge 3.
    fn whole() -> Observed {
        Observed {
            container: Some(link(2, "eth0", Kind::Veth, Some(7), None)),
            container_addresses: vec!["10.244.9.2/24".parse().unwrap()],
            host_veth: Some(link(7, "veth0123", Kind::Veth, Some(2), Some(3))),
            bridge: Some(link(3, "cni0", Kind::Bridge, None, None)),
        }
    }

    fn diffs(observed: &Observed) -> Vec<String> {
        let addresses = ["10.244.9.2/24".parse().unwrap()];
        let expected = Expected {
            ifname: "eth0",
            netns: "/run/netns/a",
            host_veth: "veth0123",
            bridge: "cni0",
            addresses: &addresses,
        };
        differences(&expected, observed)
    }

    #[test]
    fn the_earlier_attachment_in_this_netns_matches() {
        assert_eq!(diffs(&whole()), Vec::<String>::new());
    }

    #[test]
    fn an_interface_of_another_netns_never_matches() {
        // Another container's netns: its eth0 is some other veth, paired with another host end.
        let mut other = whole();
        other.container = Some(link(2, "eth0", Kind::Veth, Some(9), None));
        assert_eq!(
            diffs(&other),
            ["eth0 in /run/netns/a is not the peer of host interface veth0123 (the earlier ADD's eth0 is in another \
              network namespace)"]
        );
        // Same index by chance, but our host end points at another index.
        let mut other = whole();
        other.host_veth = Some(link(7, "veth0123", Kind::Veth, Some(5), Some(3)));
        assert_eq!(diffs(&other).len(), 1);
        // A netns without the interface at all.
        let empty = Observed { container: None, ..whole() };
        assert_eq!(
            diffs(&empty),
            ["/run/netns/a has no eth0: the earlier ADD's eth0, peer of host interface veth0123, is in another \
              network namespace"]
        );
        let nothing = Observed { container: None, host_veth: None, ..whole() };
        assert_eq!(diffs(&nothing), ["/run/netns/a has no eth0, and host interface veth0123 is missing"]);
    }

    #[test]
    fn a_partial_attachment_lists_every_difference() {
        let mut partial = whole();
        partial.container_addresses.clear();
        partial.bridge = None;
        partial.container.as_mut().unwrap().kind = Some(Kind::Other("dummy".into()));
        assert_eq!(
            diffs(&partial),
            [
                "eth0 in /run/netns/a is not a veth",
                "host interface veth0123 is not a port of bridge cni0",
                "10.244.9.2/24 is not on eth0",
            ]
        );
        let gone = Observed { host_veth: None, ..whole() };
        assert_eq!(diffs(&gone), ["host interface veth0123 is missing"]);
    }

    #[test]
    fn the_refusal_names_the_earlier_addresses_and_what_differs() {
        let e = refusal("c1", "eth0", &["10.244.9.2".parse().unwrap()], &["/run/netns/a has no eth0".into()]);
        assert_eq!(e.code(), 4);
        assert_eq!(
            e.to_string(),
            "container c1 already has eth0 with 10.244.9.2 from an earlier ADD, which this ADD does not match \
             (/run/netns/a has no eth0); DEL it before adding it again"
        );
    }
}
