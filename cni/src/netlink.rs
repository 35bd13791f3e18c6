//! The kernel objects of one attachment, through rtnetlink: the host bridge with its gateway addresses, a veth pair
//! created with its container end already inside the netns under its final name, and the container's addresses and
//! routes. ADD builds messages and sends them in batches over blocking sockets ([`crate::rtnl`]); CHECK and DEL read
//! and delete through the async handles. Nothing shells out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::{CniError, Result};
use crate::rtnl::{Answer, Request, Rtnl};
use rtnetlink::packet_core::NlasIterator;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

/// The errno of a failed request, if the kernel gave one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn fail(what: impl Into<String>, e: rtnetlink::Error) -> CniError {
    let errno = match errno(&e) {
        Some(n) => std::io::Error::from_raw_os_error(n),
        None => std::io::Error::other(e.to_string()),
    };
    CniError::Netlink { what: what.into(), errno }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A random locally administered unicast MAC. Set explicitly so a bridge does not take over a port's MAC.
pub fn random_mac() -> Vec<u8> {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most the buffer's length into it.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != 6 {
        // Practically unreachable; fall back on time and pid, still unique enough for one host.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let seed = t ^ ((std::process::id() as u128) << 64);
        mac.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac.to_vec()
}

/// What we need to know about an existing link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub mac: String,
    pub mtu: Option<u32>,
    pub up: bool,
    pub kind: Option<InfoKind>,
    pub controller: Option<u32>,
    /// IFLA_LINK: for a veth, its peer's index in the peer's netns.
    pub peer: Option<u32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            mac: String::new(),
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
            controller: None,
            peer: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::Address(mac) => link.mac = format_mac(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::Link(i) => link.peer = Some(*i),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

impl Link {
    /// Reads an RTM_NEWLINK payload for just the attributes [`Link`] keeps: decoding the whole message (a bridge
    /// carries dozens of nested attributes) costs more than the kernel's answer itself.
    fn from_payload(payload: &[u8]) -> Option<Link> {
        let u32_at =
            |bytes: &[u8], at: usize| bytes.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4")));
        let attributes = payload.get(16..)?;
        let mut link = Link {
            index: u32_at(payload, 4)?,
            mac: String::new(),
            mtu: None,
            up: u32_at(payload, 8)? & libc::IFF_UP as u32 != 0,
            kind: None,
            controller: None,
            peer: None,
        };
        for nla in NlasIterator::new(attributes) {
            let nla = nla.ok()?;
            let value = nla.value();
            match nla.kind() {
                libc::IFLA_ADDRESS => link.mac = format_mac(value),
                libc::IFLA_MTU => link.mtu = u32_at(value, 0),
                libc::IFLA_MASTER => link.controller = u32_at(value, 0),
                libc::IFLA_LINK => link.peer = u32_at(value, 0),
                libc::IFLA_LINKINFO => link.kind = info_kind(value),
                _ => {}
            }
        }
        Some(link)
    }
}

/// IFLA_INFO_KIND inside an IFLA_LINKINFO value.
fn info_kind(linkinfo: &[u8]) -> Option<InfoKind> {
    let kind = NlasIterator::new(linkinfo).flatten().find(|nla| nla.kind() == libc::IFLA_INFO_KIND)?;
    let name = std::str::from_utf8(kind.value()).ok()?.trim_end_matches('\0');
    Some(InfoKind::from(name))
}

pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(Some(Link::from_message(&m))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(fail(format!("looking up interface {name}"), e)),
    }
}

/// The addresses on link `index`.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNetwork>> {
    let mut found = Vec::new();
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    while let Some(m) = stream.try_next().await.map_err(|e| fail("listing addresses", e))? {
        if m.header.index != index {
            continue;
        }
        for attr in &m.attributes {
            if let AddressAttribute::Address(ip) = attr {
                if let Ok(net) = IpNetwork::new(*ip, m.header.prefix_len) {
                    found.push(net);
                }
            }
        }
    }
    Ok(found)
}

/// The veth pair in one request: the host end `host` (up, in the bridge) and the container end created directly in
/// the netns behind `netns_fd`, under its final name (brought up from inside the netns).
pub struct Veth<'a> {
    pub host: &'a str,
    pub host_mac: &'a [u8],
    pub container: &'a str,
    pub container_mac: &'a [u8],
    pub mtu: u32,
    pub bridge_index: u32,
    pub netns_fd: std::os::fd::RawFd,
}

/// Deletes link `name`; false when it was not there. Deleting either end of a veth removes both.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool> {
    let Some(link) = link_by_name(h, name).await? else { return Ok(false) };
    match h.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(fail(format!("deleting interface {name}"), e)),
    }
}

/// Main-table routes (dst, gw) through link `index`, both families.
pub async fn routes(h: &Handle, index: u32) -> Result<Vec<(IpNetwork, Option<IpAddr>)>> {
    let mut found = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        let mut stream = h.route().get(query).execute();
        while let Some(m) = stream.try_next().await.map_err(|e| fail("listing routes", e))? {
            if m.header.table != 254 {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut gw = None;
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(a) => dst = route_ip(a),
                    RouteAttribute::Gateway(a) => gw = route_ip(a),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let unspecified =
                if family == AddressFamily::Inet { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) };
            if let Ok(net) = IpNetwork::new(dst.unwrap_or(unspecified), m.header.destination_prefix_length) {
                found.push((net, gw));
            }
        }
    }
    Ok(found)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

// ---- ADD: messages, sent in batches over a blocking socket ----

fn link_named(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

/// Reads link `name`; see [`link_of`] for the answer.
pub fn get_link_request(name: &str) -> Request {
    Request::plain(RouteNetlinkMessage::GetLink(link_named(name)))
}

/// The link called `name` (ENODEV: None).
pub fn get_link(nl: &mut Rtnl, name: &str) -> Result<Option<Link>> {
    let answer = one(nl, get_link_request(name), || format!("looking up interface {name}"))?;
    link_of(answer, name)
}

/// The link in the answer to [`get_link_request`] (ENODEV: None).
pub fn link_of(answer: Answer, name: &str) -> Result<Option<Link>> {
    match answer {
        Err(ENODEV) => Ok(None),
        Err(n) => Err(errno_fail(format!("looking up interface {name}"), n)),
        Ok(replies) => Ok(replies.first().and_then(|payload| Link::from_payload(payload))),
    }
}

/// Sends one request; the outer error is the socket's, the inner one the kernel's errno.
fn one(nl: &mut Rtnl, request: Request, what: impl Fn() -> String) -> Result<Answer> {
    let mut answers = nl.batch(vec![request]).map_err(|e| CniError::io(what(), e))?;
    answers.pop().ok_or_else(|| CniError::io(what(), std::io::Error::other("no answer")))
}

fn errno_fail(what: impl Into<String>, n: i32) -> CniError {
    CniError::Netlink { what: what.into(), errno: std::io::Error::from_raw_os_error(n) }
}

/// Makes sure bridge `name` exists and is up; returns it. Its gateway addresses are added in the same datagram as
/// the veth pair (an address request per gateway, EEXIST when there already), which costs no extra round trip.
pub fn ensure_bridge(nl: &mut Rtnl, name: &str, mtu: u32) -> Result<Link> {
    let link = match get_link(nl, name)? {
        Some(link) => link,
        None => {
            let msg = LinkBridge::new(name).mtu(mtu).address(random_mac()).build();
            match one(nl, Request::create(RouteNetlinkMessage::NewLink(msg)), || format!("creating bridge {name}"))? {
                // EEXIST: another ADD created it at the same moment.
                Ok(_) | Err(EEXIST) => {}
                Err(n) => return Err(errno_fail(format!("creating bridge {name}"), n)),
            }
            get_link(nl, name)?.ok_or_else(|| {
                CniError::io(format!("bridge {name}"), std::io::Error::other("vanished after creation"))
            })?
        }
    };
    if link.kind != Some(InfoKind::Bridge) {
        return Err(CniError::InvalidConfig(format!("interface {name} exists but is not a bridge ({:?})", link.kind)));
    }
    if !link.up {
        if let Err(n) = one(nl, up_request(link.index), || format!("bringing bridge {name} up"))? {
            return Err(errno_fail(format!("bringing bridge {name} up"), n));
        }
    }
    Ok(link)
}

fn up_request(index: u32) -> Request {
    Request::plain(RouteNetlinkMessage::NewLink(LinkUnspec::new_with_index(index).up().build()))
}

/// Adds `addr` to link `index`; EEXIST is expected when it is there already. IPv6 addresses skip DAD: the address
/// is ours by allocation, and waiting for DAD would delay the container's first packets by a second or more.
pub fn address_request(index: u32, addr: IpNetwork) -> Request {
    let mut msg = match addr.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(ip, addr.prefix()).build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(ip, addr.prefix()).build(),
    };
    if addr.is_ipv6() {
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    Request::create(RouteNetlinkMessage::NewAddress(msg))
}

pub fn veth_request(v: &Veth<'_>) -> Request {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(v.container)
        .mtu(v.mtu)
        .address(v.container_mac.to_vec())
        .setns_by_fd(v.netns_fd)
        // Not up here: the kernel opens the peer before the pair is linked, and veth_open then fails with ENOTCONN.
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(v.host)
        .mtu(v.mtu)
        .address(v.host_mac.to_vec())
        .controller(v.bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    Request::create(RouteNetlinkMessage::NewLink(msg))
}

/// Hairpin mode on bridge port `name` (addressed by name: no lookup).
pub fn hairpin_request(name: &str) -> Request {
    Request::plain(RouteNetlinkMessage::NewLink(LinkBridgePort::new(0).name(name).hairpin(true).build()))
}

/// A route on link `index` via `gw` (the gateway is on the link's subnet, so no onlink is needed); EEXIST is
/// expected when it is there already.
pub fn route_request(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Result<Request> {
    let invalid = |e| CniError::InvalidConfig(format!("route {dst} via {gw:?}: {e}"));
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map_err(invalid)?
        .output_interface(index);
    if let Some(gw) = gw {
        builder = builder.gateway(gw).map_err(invalid)?;
    }
    Ok(Request::create(RouteNetlinkMessage::NewRoute(builder.build())))
}

/// Brings the container's link `index` up and gives it `addresses` and `routes` (dst, gw), all in one batch: the
/// kernel handles them in order, so a route still comes after the address that makes its gateway reachable.
pub fn configure_container(
    nl: &mut Rtnl,
    index: u32,
    addresses: &[IpNetwork],
    routes: &[(IpNetwork, Option<IpAddr>)],
) -> Result<()> {
    let mut requests = vec![up_request(index)];
    let mut what = vec!["bringing the container interface up".to_string()];
    for addr in addresses {
        requests.push(address_request(index, *addr));
        what.push(format!("adding address {addr}"));
    }
    for (dst, gw) in routes {
        requests.push(route_request(index, *dst, *gw)?);
        what.push(format!("adding route {dst} via {gw:?}"));
    }
    let answers = nl.batch(requests).map_err(|e| CniError::io("configuring the container interface", e))?;
    first_failure(answers, &what)
}

/// The first answer that failed, as an error naming its request; EEXIST counts as done (the address or route is
/// there).
pub fn first_failure(answers: Vec<Answer>, what: &[String]) -> Result<()> {
    for (answer, what) in answers.into_iter().zip(what) {
        match answer {
            Ok(_) | Err(EEXIST) => {}
            Err(n) => return Err(errno_fail(what.clone(), n)),
        }
    }
    Ok(())
}

/// Deletes link `name` (addressed by name); false when it was not there.
pub fn remove_link(nl: &mut Rtnl, name: &str) -> Result<bool> {
    let request = Request::plain(RouteNetlinkMessage::DelLink(link_named(name)));
    match one(nl, request, || format!("deleting interface {name}"))? {
        Ok(_) => Ok(true),
        Err(ENODEV) => Ok(false),
        Err(n) => Err(errno_fail(format!("deleting interface {name}"), n)),
    }
}
