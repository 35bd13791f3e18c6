//! The kernel objects of one attachment, through weft-netlink's blocking transport: the host bridge with its
//! gateway addresses, a veth pair created with its container end already inside the netns under its final name,
//! and the container's addresses and routes. Requests whose order is fixed go out in one batch (one round trip);
//! ADD, CHECK and DEL all run on the calling thread, with no async runtime. Nothing shells out.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_netlink::address::{self, Dad};
use weft_netlink::blocking::Socket;
use weft_netlink::link::{self, Kind, Link, LinkChange, LinkRef};
use weft_netlink::route::{self, Route, RouteFilter};
use weft_netlink::{Mac, Outcome, Request};

use crate::error::{CniError, Result};

/// RTPROT_STATIC, what `ip route add` marks routes with; the container's routes are the plugin's configuration.
const STATIC_PROTOCOL: u8 = 4;

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A random locally administered unicast MAC. Set explicitly so a bridge does not take over a port's MAC.
pub fn random_mac() -> Mac {
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
    mac
}

/// Sends one request; the error names `what`.
fn one(nl: &mut Socket, request: Request, what: impl Fn() -> String) -> Result<Vec<weft_netlink::Message>> {
    nl.request(request).map_err(|e| CniError::netlink(what(), e))
}

/// The link in the answer to [`link::get`] (ENODEV: None).
pub fn link_of(answer: Outcome, name: &str) -> Result<Option<Link>> {
    match answer {
        Err(e) if e.is_no_device() => Ok(None),
        Err(e) => Err(CniError::netlink(format!("looking up interface {name}"), e)),
        Ok(messages) => Ok(weft_netlink::decode_all::<Link>(&messages).into_iter().next()),
    }
}

/// The link called `name` (None when there is none).
pub fn get_link(nl: &mut Socket, name: &str) -> Result<Option<Link>> {
    link_of(nl.request(link::get(LinkRef::Name(name))), name)
}

/// The addresses on link `index`.
pub fn addresses(nl: &mut Socket, index: u32) -> Result<Vec<IpNetwork>> {
    let answer = one(nl, address::dump(Some(index)), || "listing addresses".to_string())?;
    Ok(weft_netlink::decode_on::<address::Address>(&answer, Some(index)).into_iter().map(|a| a.addr).collect())
}

/// Main-table routes (dst, gw) through link `index`, both families.
pub fn routes(nl: &mut Socket, index: u32) -> Result<Vec<(IpNetwork, Option<IpAddr>)>> {
    let filter = RouteFilter { device: Some(index), ..RouteFilter::main_table() };
    let answers = nl
        .batch(vec![route::dump(false, &filter), route::dump(true, &filter)])
        .map_err(|e| CniError::netlink("listing routes", e))?;
    let mut found = Vec::new();
    for answer in answers {
        let messages = answer.map_err(|e| CniError::netlink("listing routes", e))?;
        found.extend(route::routes_in(&messages, &filter).into_iter().map(|r| (r.dst, r.gateway)));
    }
    Ok(found)
}

/// Makes sure bridge `name` exists and is up; returns it. Its gateway addresses are added in the same datagram as
/// the veth pair (an address request per gateway, EEXIST when there already), which costs no extra round trip.
pub fn ensure_bridge(nl: &mut Socket, name: &str, mtu: u32) -> Result<Link> {
    let link = match get_link(nl, name)? {
        Some(link) => link,
        None => {
            match nl.request(link::create_bridge(name, mtu, random_mac())) {
                // EEXIST: another ADD created it at the same moment.
                Ok(_) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(CniError::netlink(format!("creating bridge {name}"), e)),
            }
            get_link(nl, name)?.ok_or_else(|| {
                CniError::io(format!("bridge {name}"), std::io::Error::other("vanished after creation"))
            })?
        }
    };
    if link.kind != Some(Kind::Bridge) {
        return Err(CniError::InvalidConfig(format!("interface {name} exists but is not a bridge ({:?})", link.kind)));
    }
    if !link.up {
        one(nl, up_request(link.index), || format!("bringing bridge {name} up"))?;
    }
    Ok(link)
}

fn up_request(index: u32) -> Request {
    link::change(LinkRef::Index(index), &LinkChange { up: Some(true), ..LinkChange::default() })
}

/// Adds `addr` to link `index`; EEXIST is expected when it is there already. IPv6 addresses skip DAD: the address
/// is ours by allocation, and waiting for DAD would delay the container's first packets by a second or more.
pub fn address_request(index: u32, addr: IpNetwork) -> Request {
    address::add(index, addr, Dad::Skip)
}

/// A route on link `index` via `gw` (the gateway is on the link's subnet, so no onlink is needed); EEXIST is
/// expected when it is there already.
pub fn route_request(index: u32, dst: IpNetwork, gw: Option<IpAddr>) -> Result<Request> {
    if gw.is_some_and(|gw| gw.is_ipv4() != dst.is_ipv4()) {
        return Err(CniError::InvalidConfig(format!("route {dst} via {gw:?}: the gateway is of another family")));
    }
    let route = Route { gateway: gw, device: Some(index), ..Route::unicast(dst, STATIC_PROTOCOL) };
    Ok(route::create(&route))
}

/// Brings the container's link `index` up and gives it `addresses` and `routes` (dst, gw), all in one batch: the
/// kernel handles them in order, so a route still comes after the address that makes its gateway reachable.
pub fn configure_container(
    nl: &mut Socket,
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
    let answers = nl.batch(requests).map_err(|e| CniError::netlink("configuring the container interface", e))?;
    first_failure(answers, &what)
}

/// The first answer that failed, as an error naming its request; EEXIST counts as done (the address or route is
/// there).
pub fn first_failure(answers: Vec<Outcome>, what: &[String]) -> Result<()> {
    for (answer, what) in answers.into_iter().zip(what) {
        match answer {
            Ok(_) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(CniError::netlink(what.clone(), e)),
        }
    }
    Ok(())
}

/// Deletes link `name` (addressed by name); false when it was not there. Deleting either end of a veth removes
/// both.
pub fn remove_link(nl: &mut Socket, name: &str) -> Result<bool> {
    match nl.request(link::delete(LinkRef::Name(name))) {
        Ok(_) => Ok(true),
        Err(e) if e.is_no_device() => Ok(false),
        Err(e) => Err(CniError::netlink(format!("deleting interface {name}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast() {
        let mac = random_mac();
        assert_eq!(mac[0] & 0x03, 0x02, "{}", format_mac(&mac));
        assert_eq!(format_mac(&[0x0e, 0x2a, 0, 0, 0x12, 0x9c]), "0e:2a:00:00:12:9c");
    }

    #[test]
    fn a_gateway_of_the_other_family_is_a_configuration_error() {
        let err = route_request(2, "10.244.0.0/16".parse().unwrap(), Some("fd00::1".parse().unwrap())).unwrap_err();
        assert!(matches!(err, CniError::InvalidConfig(_)), "{err}");
        assert!(route_request(2, "0.0.0.0/0".parse().unwrap(), Some("10.244.1.1".parse().unwrap())).is_ok());
    }
}
