//! The kernel objects of one attachment, through rtnetlink: the host bridge with its gateway addresses, a veth pair
//! created with its container end already inside the netns under its final name, and the container's addresses and
//! routes. Every call is one request; nothing shells out.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{CniError, Result};

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
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::Address(mac) => link.mac = format_mac(mac),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Controller(c) => link.controller = Some(*c),
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

/// Adds `addr` to link `index` unless it is there. IPv6 addresses skip DAD: the address is ours by allocation, and
/// waiting for DAD would delay the container's first packets by a second or more.
pub async fn add_address(h: &Handle, index: u32, addr: IpNetwork) -> Result<()> {
    let mut request = h.address().add(index, addr.ip(), addr.prefix());
    if addr.is_ipv6() {
        request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match request.execute().await {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        other => other.map_err(|e| fail(format!("adding address {addr}"), e)),
    }
}

/// Makes sure bridge `name` exists, is up and carries every gateway address; returns it.
pub async fn ensure_bridge(h: &Handle, name: &str, mtu: u32, gateways: &[IpNetwork]) -> Result<(Link, bool)> {
    let mut created = false;
    let link = match link_by_name(h, name).await? {
        Some(link) => link,
        None => {
            let msg = LinkBridge::new(name).mtu(mtu).address(random_mac()).build();
            match h.link().add(msg).execute().await {
                Ok(()) => created = true,
                // Another ADD created it at the same moment.
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(fail(format!("creating bridge {name}"), e)),
            }
            link_by_name(h, name).await?.ok_or_else(|| {
                CniError::io(format!("bridge {name}"), std::io::Error::other("vanished after creation"))
            })?
        }
    };
    if link.kind != Some(InfoKind::Bridge) {
        return Err(CniError::InvalidConfig(format!("interface {name} exists but is not a bridge ({:?})", link.kind)));
    }
    if !link.up {
        h.link()
            .change(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|e| fail(format!("bringing bridge {name} up"), e))?;
    }
    // One add per gateway (EEXIST means it is there already) costs less than dumping the addresses first.
    for gw in gateways {
        add_address(h, link.index, *gw).await?;
    }
    Ok((link, created))
}

/// The veth pair in one request: the host end `host` (up, in the bridge) and the container end created directly in
/// the netns behind `netns_fd`, under its final name (brought up by [`set_up`] from inside the netns).
pub struct Veth<'a> {
    pub host: &'a str,
    pub host_mac: &'a [u8],
    pub container: &'a str,
    pub container_mac: &'a [u8],
    pub mtu: u32,
    pub bridge_index: u32,
    pub netns_fd: std::os::fd::RawFd,
}

pub async fn create_veth(h: &Handle, v: &Veth<'_>) -> Result<(), rtnetlink::Error> {
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
    h.link().add(msg).execute().await
}

/// Brings link `index` up.
pub async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| fail("bringing the container interface up", e))
}

/// Hairpin mode on bridge port `name` (addressed by name: one request, no lookup).
pub async fn set_hairpin(h: &Handle, name: &str) -> Result<()> {
    h.link()
        .set_port(LinkBridgePort::new(0).name(name).hairpin(true).build())
        .execute()
        .await
        .map_err(|e| fail("enabling hairpin mode", e))
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

/// A route on link `index` via `gw` (the gateway is on the link's subnet, so no onlink is needed).
pub async fn add_route(h: &Handle, index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Result<()> {
    let what = || format!("adding route {dst} via {gw:?}");
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix())
        .map_err(|e| CniError::InvalidConfig(format!("{}: {e}", what())))?
        .output_interface(index);
    if let Some(gw) = gw {
        builder = builder.gateway(gw).map_err(|e| CniError::InvalidConfig(format!("{}: {e}", what())))?;
    }
    match h.route().add(builder.build()).execute().await {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        other => other.map_err(|e| fail(what(), e)),
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
