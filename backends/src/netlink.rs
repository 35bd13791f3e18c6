//! Linux kernel access over rtnetlink.
//!
//! [`NetlinkKernel`] implements [`Kernel`]: `observe` reads everything weft owns with a fixed number of dumps (one
//! per object kind and family, never one request per object, so 10,000 peers cost the same number of round trips
//! as one), and `apply` turns one [`Op`] into one netlink request (UpdateLink also reads the current MAC).
//! [`watch_deletions`] listens to the kernel's change notifications so the reconcile loop can wake up when someone
//! removes our objects.
//!
//! A handle can be bound to another network namespace ([`NetlinkKernel::connect_in_netns`]): the socket is opened
//! by a short-lived thread that entered the namespace, and a netlink socket keeps acting on the namespace it was
//! created in. No tokio worker ever calls `setns`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use futures_util::future::BoxFuture;
use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr, TokioSocket};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, LinkVxlan, LinkWireguard, RouteMessageBuilder};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::diff::Op;
use crate::kernel::{precheck, Kernel, KernelError};
use crate::model::{
    Address, FdbEntry, KernelState, Link, LinkKind, MacAddr, Neighbour, Route, RouteKind, Scope, VxlanAttrs,
};
use crate::{is_link_local, Family};

/// The main routing table; the only one weft reads or writes.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A host network interface, for choosing the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The administrative state (IFF_UP), not the carrier.
    pub up: bool,
    /// None when the device has no 6-byte hardware address (TUN devices, IP tunnels).
    pub mac: Option<MacAddr>,
    /// Every address with its prefix, link-local ones included.
    pub addresses: Vec<IpNetwork>,
}

/// rtnetlink access to one network namespace.
pub struct NetlinkKernel {
    handle: Handle,
    /// Device name to ifindex. Ops name devices, the kernel wants indexes; without the cache every neighbour, FDB
    /// entry and route would cost an extra lookup. Refreshed by every link dump, dropped on create/delete/ENODEV.
    indexes: HashMap<String, u32>,
}

impl NetlinkKernel {
    /// A handle on the current network namespace. Must be called inside a tokio runtime, which runs the
    /// connection task.
    pub fn connect() -> io::Result<NetlinkKernel> {
        require_runtime()?;
        NetlinkKernel::from_socket(route_socket(0)?)
    }

    /// A handle on the network namespace at `netns_path` (e.g. /run/netns/foo), whatever namespace the caller is
    /// in. Must be called inside a tokio runtime.
    pub fn connect_in_netns(netns_path: &Path) -> io::Result<NetlinkKernel> {
        require_runtime()?;
        NetlinkKernel::from_socket(in_netns(netns_path, || route_socket(0))?)
    }

    fn from_socket(socket: Socket) -> io::Result<NetlinkKernel> {
        let (connection, handle, _) = rtnetlink::from_socket(into_tokio(socket)?);
        tokio::spawn(connection);
        Ok(NetlinkKernel { handle, indexes: HashMap::new() })
    }

    /// Every interface with its addresses, ordered by ifindex.
    pub async fn interfaces(&mut self) -> Result<Vec<Interface>, KernelError> {
        let links = self.dump_links().await?;
        let addresses = dump(self.handle.address().get().execute(), "addresses").await?;
        let mut by_index: HashMap<u32, Vec<IpNetwork>> = HashMap::new();
        for msg in &addresses {
            if let Some(net) = address_network(msg) {
                by_index.entry(msg.header.index).or_default().push(net);
            }
        }
        let mut out: Vec<Interface> = links
            .iter()
            .filter_map(|msg| {
                let index = msg.header.index;
                Some(Interface {
                    name: link_name(msg)?.to_string(),
                    index,
                    mtu: link_mtu(msg),
                    up: msg.header.flags.contains(LinkFlags::Up),
                    mac: link_mac(msg),
                    addresses: by_index.remove(&index).unwrap_or_default(),
                })
            })
            .collect();
        out.sort_by_key(|i| i.index);
        Ok(out)
    }

    /// The output interface of the main table's default route for `family` with the lowest metric, if any.
    pub async fn default_route_interface(&mut self, family: Family) -> Result<Option<u32>, KernelError> {
        let routes = self.dump_routes(family).await?;
        let best = routes
            .iter()
            .filter(|r| {
                route_table(r) == MAIN_TABLE
                    && r.header.destination_prefix_length == 0
                    && r.header.kind == RouteType::Unicast
            })
            .filter_map(|r| Some((route_metric(r), route_oif(r)?)))
            .min_by_key(|(metric, _)| *metric);
        Ok(best.map(|(_, oif)| oif))
    }

    async fn dump_links(&mut self) -> Result<Vec<LinkMessage>, KernelError> {
        let links = dump(self.handle.link().get().execute(), "links").await?;
        self.indexes = links.iter().filter_map(|m| Some((link_name(m)?.to_string(), m.header.index))).collect();
        Ok(links)
    }

    async fn dump_routes(&self, family: Family) -> Result<Vec<RouteMessage>, KernelError> {
        // The header of a dump request only selects the family: without strict checking the kernel dumps every
        // table, so the caller filters.
        let request = match family {
            Family::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            Family::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        dump(self.handle.route().get(request).execute(), "routes").await
    }

    async fn dump_neighbours(&self, family: AddressFamily) -> Result<Vec<NeighbourMessage>, KernelError> {
        let what = if family == AddressFamily::Bridge { "fdb" } else { "neighbours" };
        dump(self.handle.neighbours().get().set_address_family(family).execute(), what).await
    }

    /// The ifindex of `name`, or None when no such device exists.
    async fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        if let Some(index) = self.indexes.get(name) {
            return Ok(Some(*index));
        }
        let mut found = self.handle.link().get().match_name(name).execute();
        match found.try_next().await {
            Ok(Some(msg)) => {
                self.indexes.insert(name.to_string(), msg.header.index);
                Ok(Some(msg.header.index))
            }
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// The ifindex of a device an op needs to exist.
    async fn require_index(&mut self, op: &Op, name: &str) -> Result<u32, KernelError> {
        match self.index_of(name).await {
            Ok(Some(index)) => Ok(index),
            Ok(None) => Err(KernelError::no_such_device(op, name)),
            Err(e) => Err(KernelError::apply(op, e)),
        }
    }

    /// The ifindex of a device an op removes something from; None means the device, and so the object, is gone.
    async fn optional_index(&mut self, op: &Op, name: &str) -> Result<Option<u32>, KernelError> {
        self.index_of(name).await.map_err(|e| KernelError::apply(op, e))
    }

    async fn current_mac(&mut self, op: &Op, index: u32) -> Result<Option<MacAddr>, KernelError> {
        let mut found = self.handle.link().get().match_index(index).execute();
        match found.try_next().await {
            Ok(msg) => Ok(msg.as_ref().and_then(link_mac)),
            Err(e) => Err(KernelError::apply(op, to_io(e))),
        }
    }

    async fn apply_op(&mut self, op: &Op) -> Result<(), KernelError> {
        precheck(op)?;
        match op {
            // rtnetlink cannot create a TUN device: configure the one the data plane opened.
            Op::CreateLink(link) if link.kind == LinkKind::Tun => match self.optional_index(op, &link.name).await? {
                Some(_) => self.update_link(op, link).await,
                None => Err(KernelError::TunNotOpened { op: op.to_string(), device: link.name.clone() }),
            },
            Op::CreateLink(link) => {
                self.indexes.remove(&link.name);
                let message = create_link_message(link)
                    .ok_or_else(|| KernelError::NotOurs { op: op.to_string(), device: link.name.clone() })?;
                outcome(op, self.handle.link().add(message).execute().await, &[])
            }
            Op::UpdateLink(link) => self.update_link(op, link).await,
            Op::DeleteLink(name) => {
                let Some(index) = self.optional_index(op, name).await? else {
                    return Ok(());
                };
                self.indexes.remove(name);
                outcome(op, self.handle.link().del(index).execute().await, &[libc::ENODEV])
            }
            _ => match self.resolve(op).await? {
                Some(index) => request(&self.handle, op, index).await,
                None => Ok(()),
            },
        }
    }

    /// The ifindex an address, neighbour, FDB or route op acts on. None means the op deletes something from a
    /// device that is gone, which took the object along: nothing to do.
    async fn resolve(&mut self, op: &Op) -> Result<Option<u32>, KernelError> {
        let (device, deletes) = match op {
            Op::AddAddress(a) => (&a.device, false),
            Op::DeleteAddress(a) => (&a.device, true),
            Op::ReplaceNeighbour(n) => (&n.device, false),
            Op::DeleteNeighbour(n) => (&n.device, true),
            Op::ReplaceFdb(e) => (&e.device, false),
            Op::DeleteFdb(e) => (&e.device, true),
            // A route without a device (a blackhole) needs no index; 0 is the kernel's "no output interface".
            Op::ReplaceRoute(Route { device: None, .. }) | Op::DeleteRoute(Route { device: None, .. }) => {
                return Ok(Some(NO_DEVICE))
            }
            Op::ReplaceRoute(Route { device: Some(device), .. }) => (device, false),
            Op::DeleteRoute(Route { device: Some(device), .. }) => (device, true),
            Op::CreateLink(_) | Op::UpdateLink(_) | Op::DeleteLink(_) => {
                return Err(KernelError::Netlink(format!("{op}: link operations are not resolved by index")))
            }
        };
        if deletes {
            self.optional_index(op, device).await
        } else {
            self.require_index(op, device).await.map(Some)
        }
    }

    async fn update_link(&mut self, op: &Op, link: &Link) -> Result<(), KernelError> {
        let index = self.require_index(op, &link.name).await?;
        let mut change = LinkUnspec::new_with_index(index).mtu(link.mtu);
        // Any IFLA_ADDRESS, even the current one, makes the kernel flush the device's neighbour entries
        // (NETDEV_CHANGEADDR), permanent ones included, behind the diff's back: send it only to change it. Layer-3
        // devices (TUN, WireGuard) have no address to set.
        if link.kind.has_mac() && self.current_mac(op, index).await? != Some(link.mac) {
            change = change.address(link.mac.0.to_vec());
        }
        let change = if link.up { change.up() } else { change.down() };
        outcome(op, self.handle.link().change(change.build()).execute().await, &[])
    }
}

impl Kernel for NetlinkKernel {
    async fn observe(&mut self, scope: &Scope) -> Result<KernelState, KernelError> {
        let links = self.dump_links().await?;
        let names: HashMap<u32, String> =
            links.iter().filter_map(|m| Some((m.header.index, link_name(m)?.to_string()))).collect();
        let owned: HashMap<u32, String> =
            names.iter().filter(|(_, name)| scope.links.contains(name)).map(|(i, n)| (*i, n.clone())).collect();

        let mut state = KernelState::default();
        for msg in links.iter().filter(|m| owned.contains_key(&m.header.index)) {
            state.add_link(link_from_message(msg)?);
        }
        for name in names.values().filter(|name| scope.referenced.contains(name)) {
            state.add_link(Link::unowned(name.clone()));
        }
        for family in [Family::V4, Family::V6] {
            for msg in self.dump_routes(family).await? {
                if let Some(route) = route_from_message(&msg, &names, &owned, scope) {
                    state.add_route(route);
                }
            }
        }
        if owned.is_empty() {
            // Addresses, neighbours and FDB entries only count on our devices.
            return Ok(state);
        }
        for msg in dump(self.handle.address().get().execute(), "addresses").await? {
            if let Some(address) = address_from_message(&msg, &owned) {
                state.add_address(address);
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for msg in self.dump_neighbours(family).await? {
                if let Some(neighbour) = neighbour_from_message(&msg, &owned) {
                    state.add_neighbour(neighbour);
                }
            }
        }
        for msg in self.dump_neighbours(AddressFamily::Bridge).await? {
            if let Some(entry) = fdb_from_message(&msg, &owned) {
                state.add_fdb(entry);
            }
        }
        Ok(state)
    }

    /// Resolves every op's device first (from the cache), then keeps up to [`PIPELINE_DEPTH`] requests in flight
    /// on the one socket instead of waiting for each acknowledgement: the kernel still handles them one by one,
    /// in order, but the round trip through the connection task is paid once per window, not once per op.
    async fn apply_all(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        let mut results: Vec<Option<Result<(), KernelError>>> = Vec::with_capacity(ops.len());
        let mut requests = Vec::new();
        for (position, op) in ops.iter().enumerate() {
            if let Err(e) = precheck(op) {
                results.push(Some(Err(e)));
                continue;
            }
            if matches!(op, Op::CreateLink(_) | Op::UpdateLink(_) | Op::DeleteLink(_)) {
                results.push(Some(self.apply(op).await));
                continue;
            }
            match self.resolve(op).await {
                Ok(Some(index)) => {
                    results.push(None);
                    let pending = request(&self.handle, op, index);
                    requests.push(async move { (position, pending.await) });
                }
                Ok(None) => results.push(Some(Ok(()))),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let answered: Vec<_> = futures_util::stream::iter(requests).buffer_unordered(PIPELINE_DEPTH).collect().await;
        for (position, result) in answered {
            results[position] = Some(result);
        }
        let mut out = Vec::with_capacity(ops.len());
        for (op, result) in ops.iter().zip(results) {
            let result = result.unwrap_or_else(|| Err(KernelError::Netlink(format!("{op}: no answer"))));
            let stale_index = matches!(&result, Err(KernelError::Apply { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV));
            // As in apply: a cached index may belong to a deleted (perhaps re-created) device.
            out.push(if stale_index {
                self.indexes.clear();
                self.apply_op(op).await
            } else {
                result
            });
        }
        out
    }

    async fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        let result = self.apply_op(op).await;
        let stale_index = matches!(&result, Err(KernelError::Apply { source, .. })
            if source.raw_os_error() == Some(libc::ENODEV));
        if stale_index && !self.indexes.is_empty() {
            // A cached index may belong to a device that was deleted (and perhaps re-created under the same
            // name) since the last dump: look the names up afresh and try once more.
            self.indexes.clear();
            return self.apply_op(op).await;
        }
        result
    }
}

/// The ifindex of "no device", for routes without one: what the kernel itself uses for "no output interface".
const NO_DEVICE: u32 = 0;

/// Requests kept in flight by [`NetlinkKernel::apply_all`]: enough to hide the round trip, few enough that the
/// acknowledgements always fit in the socket's receive buffer.
const PIPELINE_DEPTH: usize = 128;

/// The netlink request for an address, neighbour, FDB or route op on device `index`, as a future that owns what
/// it needs, so that many can be in flight at once.
fn request(handle: &Handle, op: &Op, index: u32) -> BoxFuture<'static, Result<(), KernelError>> {
    let op = op.clone();
    let handle = handle.clone();
    Box::pin(async move {
        match &op {
            Op::AddAddress(a) => {
                let request = handle.address().add(index, a.addr.ip(), a.addr.prefix());
                outcome(&op, request.execute().await, &[libc::EEXIST])
            }
            Op::DeleteAddress(a) => {
                let request = handle.address().del(address_message(index, a.addr));
                outcome(&op, request.execute().await, &[libc::EADDRNOTAVAIL, libc::ENOENT])
            }
            Op::ReplaceNeighbour(n) => {
                let request = handle
                    .neighbours()
                    .add(index, n.ip)
                    .link_layer_address(&n.mac.0)
                    .state(NeighbourState::Permanent)
                    .replace();
                outcome(&op, request.execute().await, &[])
            }
            Op::DeleteNeighbour(n) => {
                let request = handle.neighbours().del(neighbour_key(index, n.ip));
                outcome(&op, request.execute().await, &[libc::ENOENT])
            }
            Op::ReplaceFdb(e) => {
                let request = handle
                    .neighbours()
                    .add_bridge(index, &e.mac.0)
                    .destination(e.dst)
                    // NeighbourFlags::Own is NTF_SELF: the VXLAN device's own entry, not a bridge master's.
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace();
                outcome(&op, request.execute().await, &[])
            }
            Op::DeleteFdb(e) => {
                let request = handle.neighbours().del(fdb_key(index, e.mac));
                outcome(&op, request.execute().await, &[libc::ENOENT])
            }
            Op::ReplaceRoute(r) => {
                let message = route_message(r, index).map_err(|e| KernelError::apply(&op, e))?;
                outcome(&op, handle.route().add(message).replace().execute().await, &[])
            }
            Op::DeleteRoute(r) => {
                let message = route_delete_message(r, index).map_err(|e| KernelError::apply(&op, e))?;
                outcome(&op, handle.route().del(message).execute().await, &[libc::ESRCH])
            }
            Op::CreateLink(_) | Op::UpdateLink(_) | Op::DeleteLink(_) => {
                Err(KernelError::Netlink(format!("{op}: link operations are not pipelined")))
            }
        }
    })
}

// ---- connection plumbing ----

fn require_runtime() -> io::Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("netlink connections must be opened inside a tokio runtime: {e}")))
}

/// A NETLINK_ROUTE socket, subscribed to the `groups` bitmask (RTMGRP_*) when it is not 0.
fn route_socket(groups: u32) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    if groups != 0 {
        socket.bind(&SocketAddr::new(0, groups))?;
    }
    Ok(socket)
}

/// Runs `open` on a thread that has entered the network namespace at `netns_path`. The thread exits right after,
/// so no thread that runs anything else ever changes namespace.
fn in_netns<T: Send + 'static>(
    netns_path: &Path,
    open: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = netns_path.to_path_buf();
    let worker = std::thread::Builder::new().name("weft-netns".into()).spawn(move || {
        let described = |e: io::Error| io::Error::new(e.kind(), format!("entering netns {}: {e}", path.display()));
        let netns = File::open(&path).map_err(described)?;
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| described(e.into()))?;
        open()
    })?;
    worker.join().map_err(|_| io::Error::other("the netns thread panicked"))?
}

fn into_tokio(socket: Socket) -> io::Result<TokioSocket> {
    socket.set_non_blocking(true)?;
    // SAFETY: the descriptor comes straight from an owned socket that gives it up here, so TokioSocket becomes
    // its only owner. TokioSocket::from_raw_fd registers it with the runtime, which require_runtime checked.
    Ok(unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) })
}

// ---- errors ----

/// The positive errno of a kernel NACK.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => Some(-msg.raw_code()),
        _ => None,
    }
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match errno(&e) {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::other(e.to_string()),
    }
}

/// The result of `op`, with the listed errnos counted as success: they mean the kernel is already in the state
/// the op asks for.
fn outcome(op: &Op, result: Result<(), rtnetlink::Error>, benign: &[i32]) -> Result<(), KernelError> {
    match result {
        Err(e) if errno(&e).is_some_and(|code| benign.contains(&code)) => Ok(()),
        other => other.map_err(|e| KernelError::apply(op, to_io(e))),
    }
}

async fn dump<T>(
    stream: impl Stream<Item = Result<T, rtnetlink::Error>>,
    what: &'static str,
) -> Result<Vec<T>, KernelError> {
    stream.try_collect().await.map_err(|e| KernelError::Observe { what, source: to_io(e) })
}

// ---- reading messages ----

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_mtu(msg: &LinkMessage) -> u32 {
    msg.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(mtu) = a { Some(*mtu) } else { None }).unwrap_or(0)
}

fn link_mac(msg: &LinkMessage) -> Option<MacAddr> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => MacAddr::from_slice(bytes),
        _ => None,
    })
}

// ---- model <-> message conversions for links and routes (the place to extend for a new kind) ----

fn link_from_message(msg: &LinkMessage) -> Result<Link, KernelError> {
    let name = link_name(msg).ok_or_else(|| KernelError::Netlink(format!("link #{} has no name", msg.header.index)))?;
    let kind = msg
        .attributes
        .iter()
        .find_map(|a| if let LinkAttribute::LinkInfo(info) = a { link_kind(info) } else { None })
        .unwrap_or(LinkKind::Unowned);
    Ok(Link {
        name: name.to_string(),
        kind,
        mac: link_mac(msg).unwrap_or_default(),
        mtu: link_mtu(msg),
        up: msg.header.flags.contains(LinkFlags::Up),
    })
}

/// The model's kind for IFLA_LINKINFO; None for a kind the model does not know (say a bridge someone named
/// flannel.1), which reads as [`LinkKind::Unowned`]: never a desired kind, so the diff re-creates the device, as
/// flannel does.
fn link_kind(info: &[LinkInfo]) -> Option<LinkKind> {
    let kind = info.iter().find_map(|i| if let LinkInfo::Kind(kind) = i { Some(kind) } else { None })?;
    match kind {
        InfoKind::Vxlan => Some(LinkKind::Vxlan(vxlan_attrs(info))),
        InfoKind::Tun => Some(LinkKind::Tun),
        InfoKind::Wireguard => Some(LinkKind::Wireguard),
        _ => None,
    }
}

/// The VXLAN attributes in IFLA_LINKINFO of a VXLAN device.
fn vxlan_attrs(info: &[LinkInfo]) -> VxlanAttrs {
    // The kernel omits IFLA_VXLAN_LOCAL when no local address is set; the rest it always reports.
    let mut attrs = VxlanAttrs {
        vni: 0,
        local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        underlay_index: 0,
        port: 0,
        learning: true,
        gbp: false,
    };
    let data = info.iter().filter_map(|i| if let LinkInfo::Data(InfoData::Vxlan(d)) = i { Some(d) } else { None });
    for attr in data.flatten() {
        match attr {
            InfoVxlan::Id(vni) => attrs.vni = *vni,
            InfoVxlan::Local(ip) => attrs.local = IpAddr::V4(*ip),
            InfoVxlan::Local6(ip) => attrs.local = IpAddr::V6(*ip),
            InfoVxlan::Link(index) => attrs.underlay_index = *index,
            // The crate decodes IFLA_VXLAN_PORT from network byte order: this is the port as ip -d link shows it.
            InfoVxlan::Port(port) => attrs.port = *port,
            InfoVxlan::Learning(on) => attrs.learning = *on,
            InfoVxlan::Gbp => attrs.gbp = true,
            _ => {}
        }
    }
    attrs
}

/// The address with its prefix. IPv4 keeps the local address in IFA_LOCAL (IFA_ADDRESS is the peer on
/// point-to-point links); IPv6 only sends IFA_ADDRESS.
fn address_network(msg: &AddressMessage) -> Option<IpNetwork> {
    let find = |local: bool| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let ip = find(true).or_else(|| find(false))?;
    IpNetwork::new(ip, msg.header.prefix_len).ok()
}

fn address_from_message(msg: &AddressMessage, owned: &HashMap<u32, String>) -> Option<Address> {
    let device = owned.get(&msg.header.index)?;
    let addr = address_network(msg)?;
    if is_link_local(addr.ip()) && addr.is_ipv6() {
        // The kernel adds an fe80:: address to every device by itself.
        return None;
    }
    Some(Address { device: device.clone(), addr })
}

/// The table a route is in: IFLA_RTA_TABLE when present (tables above 255 only fit there), else the header's.
fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(msg.header.table))
}

fn route_metric(msg: &RouteMessage) -> u32 {
    msg.attributes.iter().find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None }).unwrap_or(0)
}

/// The output interface; for a multipath route, the first next hop's.
fn route_oif(msg: &RouteMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
        _ => None,
    })
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn route_destination(msg: &RouteMessage) -> Option<IpNetwork> {
    let ip = msg
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Destination(d) = a { route_address(d) } else { None })
        .or(match msg.header.address_family {
            // A default route carries no destination attribute.
            AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            _ => None,
        })?;
    IpNetwork::new(ip, msg.header.destination_prefix_length).ok()
}

/// A main-table unicast or blackhole route that weft owns: it carries our protocol or leaves through one of our
/// devices. Connected routes (proto kernel) are the kernel's, not weft's.
fn route_from_message(
    msg: &RouteMessage,
    names: &HashMap<u32, String>,
    owned: &HashMap<u32, String>,
    scope: &Scope,
) -> Option<Route> {
    let header = &msg.header;
    let kind = match header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        _ => return None,
    };
    if route_table(msg) != MAIN_TABLE || header.protocol == RouteProtocol::Kernel {
        return None;
    }
    // IPv6 reports a blackhole route on lo; it has no device in any sense the model cares about.
    let oif = msg
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
        .filter(|_| kind == RouteKind::Unicast);
    let dst = route_destination(msg)?;
    if !scope.owns_route(u8::from(header.protocol), oif.is_some_and(|i| owned.contains_key(&i)), dst) {
        return None;
    }
    let gateway =
        msg.attributes.iter().find_map(|a| if let RouteAttribute::Gateway(g) = a { route_address(g) } else { None });
    let device = match oif {
        Some(index) => Some(names.get(&index)?.clone()),
        None => None,
    };
    Some(Route {
        dst,
        kind,
        gateway,
        device,
        onlink: header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(header.protocol),
    })
}

fn neighbour_lladdr(msg: &NeighbourMessage) -> Option<MacAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => MacAddr::from_slice(bytes),
        _ => None,
    })
}

/// NDA_DST. The crate decodes it by the message's family, so in the bridge family (FDB entries) it arrives as raw
/// bytes: 4 for an IPv4 VTEP, 16 for IPv6.
fn neighbour_destination(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => decode_ip(bytes),
        _ => None,
    })
}

/// An IP address from its network-order bytes.
fn decode_ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}

fn neighbour_from_message(msg: &NeighbourMessage, owned: &HashMap<u32, String>) -> Option<Neighbour> {
    let device = owned.get(&msg.header.ifindex)?;
    // Without IPv6 in the kernel an AF_INET6 dump falls back to all families, FDB entries included.
    let arp_or_ndp = matches!(msg.header.family, AddressFamily::Inet | AddressFamily::Inet6);
    if !arp_or_ndp || msg.header.state != NeighbourState::Permanent {
        return None;
    }
    Some(Neighbour { device: device.clone(), ip: neighbour_destination(msg)?, mac: neighbour_lladdr(msg)? })
}

/// A permanent FDB entry of the device itself (NTF_SELF); entries a bridge master keeps for the device as its
/// port are someone else's.
fn fdb_from_message(msg: &NeighbourMessage, owned: &HashMap<u32, String>) -> Option<FdbEntry> {
    let device = owned.get(&msg.header.ifindex)?;
    let header = &msg.header;
    if header.family != AddressFamily::Bridge
        || header.state != NeighbourState::Permanent
        || !header.flags.contains(NeighbourFlags::Own)
    {
        return None;
    }
    Some(FdbEntry { device: device.clone(), mac: neighbour_lladdr(msg)?, dst: neighbour_destination(msg)? })
}

// ---- building requests ----

/// The RTM_NEWLINK request that creates `link`; None for kinds rtnetlink does not create (TUN devices come from
/// /dev/net/tun, unowned devices are someone else's).
fn create_link_message(link: &Link) -> Option<LinkMessage> {
    match &link.kind {
        LinkKind::Vxlan(v) => Some(vxlan_message(link, v)),
        LinkKind::Wireguard => {
            let builder = LinkWireguard::new(&link.name).mtu(link.mtu);
            Some(if link.up { builder.up() } else { builder }.build())
        }
        LinkKind::Tun | LinkKind::Unowned => None,
    }
}

fn vxlan_message(link: &Link, v: &VxlanAttrs) -> LinkMessage {
    let mut builder = LinkVxlan::new(&link.name, v.vni).port(v.port).learning(v.learning);
    builder = match v.local {
        IpAddr::V4(ip) => builder.local(ip),
        IpAddr::V6(ip) => builder.local6(ip),
    };
    if v.underlay_index != 0 {
        builder = builder.dev(v.underlay_index);
    }
    if v.gbp {
        builder = builder.gbp();
    }
    builder = builder.address(link.mac.0.to_vec()).mtu(link.mtu);
    // Without up() the device is created down, which is what a desired "down" link means.
    if link.up {
        builder = builder.up();
    }
    builder.build()
}

fn address_message(index: u32, addr: IpNetwork) -> AddressMessage {
    match addr.ip() {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(ip, addr.prefix()).build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(ip, addr.prefix()).build(),
    }
}

/// What identifies an ARP/NDP entry to the kernel: device and IP.
fn neighbour_key(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.header.ifindex = index;
    msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
    msg
}

/// What identifies an FDB entry: device and MAC. Without NDA_DST the VXLAN driver removes the entry with all its
/// remote destinations, which matches the model, where the MAC is the key.
fn fdb_key(index: u32, mac: MacAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg
}

// rtnetlink does not export its InvalidRouteMessage type, only its Display.
fn invalid_route(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// Destination, kind, gateway and device of `route`, in the main table. `index` is [`NO_DEVICE`] for a route
/// without a device.
fn route_builder(route: &Route, index: u32) -> io::Result<RouteMessageBuilder<IpAddr>> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .map_err(invalid_route)?
        .table_id(MAIN_TABLE);
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway).map_err(invalid_route)?;
    }
    if index != NO_DEVICE {
        builder = builder.output_interface(index);
    }
    if route.kind == RouteKind::Blackhole {
        builder = builder.kind(RouteType::BlackHole);
    } else if route.gateway.is_none() {
        // What `ip route add <dst> dev <device>` sends: the destination is on the link itself.
        builder = builder.scope(RouteScope::Link);
    }
    Ok(builder)
}

fn route_message(route: &Route, index: u32) -> io::Result<RouteMessage> {
    let builder = route_builder(route, index)?.protocol(RouteProtocol::from(route.protocol));
    Ok(if route.onlink { builder.onlink() } else { builder }.build())
}

/// The kernel matches a delete against every field that is set, and the builder presets proto static and scope
/// universe. Unspec/NoWhere are wildcards (what `ip route del` sends); gateway and device stay, so only the route
/// that was observed can match, never a foreign one to the same prefix.
fn route_delete_message(route: &Route, index: u32) -> io::Result<RouteMessage> {
    Ok(route_builder(route, index)?.protocol(RouteProtocol::Unspec).scope(RouteScope::NoWhere).build())
}

// ---- change notifications ----

/// Subscribes to link, neighbour and route notifications in the current network namespace and sends a short
/// description on the channel whenever something inside `scope` disappears or one of its devices goes down. Call
/// inside a tokio runtime. The descriptions are for logs; treat every message as "reconcile soon". The channel
/// closes if the netlink socket fails (after a final message), and the watcher stops when the receiver is dropped.
pub fn watch_deletions(scope: Scope) -> io::Result<UnboundedReceiver<String>> {
    require_runtime()?;
    start_watch(route_socket(WATCH_GROUPS)?, scope)
}

/// [`watch_deletions`] for the network namespace at `netns_path`.
pub fn watch_deletions_in_netns(netns_path: &Path, scope: Scope) -> io::Result<UnboundedReceiver<String>> {
    require_runtime()?;
    start_watch(in_netns(netns_path, || route_socket(WATCH_GROUPS))?, scope)
}

const WATCH_GROUPS: u32 = rtnetlink::constants::RTMGRP_LINK
    | rtnetlink::constants::RTMGRP_NEIGH
    | rtnetlink::constants::RTMGRP_IPV4_ROUTE
    | rtnetlink::constants::RTMGRP_IPV6_ROUTE;

fn start_watch(socket: Socket, scope: Scope) -> io::Result<UnboundedReceiver<String>> {
    let (connection, handle, notifications) = rtnetlink::from_socket(into_tokio(socket)?);
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(watch(handle, notifications, WatchState::new(scope), tx));
    Ok(rx)
}

async fn watch(
    handle: Handle,
    mut notifications: impl Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)> + Unpin,
    mut state: WatchState,
    tx: UnboundedSender<String>,
) {
    // Neighbour and route notifications name devices by index only, so learn the indexes of our devices now;
    // later RTM_NEWLINK notifications keep the map current.
    match dump(handle.link().get().execute(), "links").await {
        Ok(links) => {
            for link in &links {
                state.link_seen(link);
            }
        }
        Err(e) => {
            tracing::warn!("netlink watch: listing links failed, relying on notifications: {e}")
        }
    }
    drop(handle);
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return,
            message = notifications.next() => message,
        };
        let Some((message, _)) = message else {
            let _ = tx.send("netlink notification socket closed".to_string());
            return;
        };
        let description = match message.payload {
            NetlinkPayload::InnerMessage(event) => state.describe(&event),
            // The socket buffer overflowed and notifications were lost: anything may have changed.
            NetlinkPayload::Overrun(_) => Some("netlink notifications were lost (overrun)".to_string()),
            _ => None,
        };
        if let Some(text) = description {
            if tx.send(text).is_err() {
                return;
            }
        }
    }
}

/// What the watcher knows about our devices: ifindex -> (name, admin up).
struct WatchState {
    scope: Scope,
    links: HashMap<u32, (String, bool)>,
}

impl WatchState {
    fn new(scope: Scope) -> WatchState {
        WatchState { scope, links: HashMap::new() }
    }

    fn in_scope(&self, name: &str) -> bool {
        self.scope.links.iter().any(|l| l == name)
    }

    /// Records a device from a dump or RTM_NEWLINK; returns its previous state if it was known.
    fn link_seen(&mut self, msg: &LinkMessage) -> Option<(String, bool)> {
        let index = msg.header.index;
        match link_name(msg) {
            Some(name) if self.in_scope(name) => {
                self.links.insert(index, (name.to_string(), msg.header.flags.contains(LinkFlags::Up)))
            }
            _ => self.links.remove(&index),
        }
    }

    fn device(&self, index: u32) -> Option<&str> {
        self.links.get(&index).map(|(name, _)| name.as_str())
    }

    /// A description of `event` if it removed or disabled something of ours.
    fn describe(&mut self, event: &RouteNetlinkMessage) -> Option<String> {
        match event {
            RouteNetlinkMessage::NewLink(msg) => {
                let before = self.link_seen(msg);
                let now = self.links.get(&msg.header.index);
                match (before, now) {
                    (Some((old, _)), None) => Some(format!("link {old} renamed")),
                    (Some((_, true)) | None, Some((name, false))) => Some(format!("link {name} went down")),
                    _ => None,
                }
            }
            RouteNetlinkMessage::DelLink(msg) => {
                let known = self.links.remove(&msg.header.index).map(|(name, _)| name);
                let name = known.or_else(|| link_name(msg).filter(|n| self.in_scope(n)).map(str::to_string))?;
                Some(format!("link {name} deleted"))
            }
            RouteNetlinkMessage::DelRoute(msg) => {
                let on_owned_link = route_oif(msg).is_some_and(|i| self.links.contains_key(&i));
                let ours = route_destination(msg).map_or(on_owned_link, |dst| {
                    self.scope.owns_route(u8::from(msg.header.protocol), on_owned_link, dst)
                });
                ours.then(|| describe_route(msg))
            }
            RouteNetlinkMessage::DelNeighbour(msg) => {
                let device = self.device(msg.header.ifindex)?;
                Some(describe_neighbour(msg, device))
            }
            _ => None,
        }
    }
}

/// One change the kernel announced, as far as convergence measurements care: what appeared or disappeared, with
/// the time it was received. Used by benchmarks and tests to time reconciles without polling dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// RTM_NEWROUTE for a main-table route (`protocol` tells ours, 87, from others).
    RouteAdded {
        dst: IpNetwork,
        protocol: u8,
    },
    RouteDeleted {
        dst: IpNetwork,
        protocol: u8,
    },
    /// A permanent ARP/NDP entry was added or replaced.
    NeighbourSet {
        ifindex: u32,
        ip: IpAddr,
        mac: MacAddr,
    },
    NeighbourDeleted {
        ifindex: u32,
        ip: IpAddr,
    },
    /// A permanent FDB entry of a device itself (NTF_SELF) with a remote destination, such as a VXLAN peer.
    FdbSet {
        ifindex: u32,
        mac: MacAddr,
        dst: IpAddr,
    },
    FdbDeleted {
        ifindex: u32,
        mac: MacAddr,
    },
    /// The socket buffer overflowed: some notifications were lost, counts built from events are incomplete.
    Overrun,
}

/// Receive buffer for [`kernel_events_in_netns`]: a cold start of 10,000 peers announces 30,000 objects within
/// a second or two, far more than the default buffer holds while the reader is descheduled.
const EVENT_BUFFER_BYTES: usize = 256 << 20;

/// Streams route and neighbour notifications from the network namespace at `netns_path`, each stamped with the
/// time it was read. Call inside a tokio runtime; the stream ends when the receiver is dropped (the socket task
/// stops at its next message).
pub fn kernel_events_in_netns(netns_path: &Path) -> io::Result<UnboundedReceiver<(std::time::Instant, KernelEvent)>> {
    require_runtime()?;
    let groups = rtnetlink::constants::RTMGRP_NEIGH | rtnetlink::constants::RTMGRP_IPV4_ROUTE;
    let socket = in_netns(netns_path, move || {
        let socket = route_socket(groups)?;
        force_receive_buffer(&socket, EVENT_BUFFER_BYTES);
        Ok(socket)
    })?;
    let (connection, _handle, mut notifications) = rtnetlink::from_socket(into_tokio(socket)?);
    tokio::spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = notifications.next().await {
            let at = std::time::Instant::now();
            let event = match message.payload {
                NetlinkPayload::InnerMessage(inner) => classify_event(&inner),
                NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
                _ => None,
            };
            if let Some(event) = event {
                if tx.send((at, event)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// SO_RCVBUFFORCE (root may exceed rmem_max), falling back to SO_RCVBUF; best effort.
fn force_receive_buffer(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its exact length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

fn classify_event(message: &RouteNetlinkMessage) -> Option<KernelEvent> {
    match message {
        RouteNetlinkMessage::NewRoute(msg) | RouteNetlinkMessage::DelRoute(msg) => {
            if route_table(msg) != MAIN_TABLE {
                return None;
            }
            let dst = route_destination(msg)?;
            let protocol = u8::from(msg.header.protocol);
            Some(match message {
                RouteNetlinkMessage::NewRoute(_) => KernelEvent::RouteAdded { dst, protocol },
                _ => KernelEvent::RouteDeleted { dst, protocol },
            })
        }
        RouteNetlinkMessage::NewNeighbour(msg) | RouteNetlinkMessage::DelNeighbour(msg) => {
            let added = matches!(message, RouteNetlinkMessage::NewNeighbour(_));
            let ifindex = msg.header.ifindex;
            if msg.header.family == AddressFamily::Bridge {
                if !msg.header.flags.contains(NeighbourFlags::Own) {
                    return None;
                }
                let mac = neighbour_lladdr(msg)?;
                if !added {
                    return Some(KernelEvent::FdbDeleted { ifindex, mac });
                }
                let dst = neighbour_destination(msg)?;
                (msg.header.state == NeighbourState::Permanent).then_some(KernelEvent::FdbSet { ifindex, mac, dst })
            } else {
                let ip = neighbour_destination(msg)?;
                if !added {
                    return Some(KernelEvent::NeighbourDeleted { ifindex, ip });
                }
                let mac = neighbour_lladdr(msg)?;
                (msg.header.state == NeighbourState::Permanent).then_some(KernelEvent::NeighbourSet {
                    ifindex,
                    ip,
                    mac,
                })
            }
        }
        _ => None,
    }
}

fn describe_route(msg: &RouteMessage) -> String {
    let dst = route_destination(msg).map_or_else(|| "?".to_string(), |d| d.to_string());
    match route_table(msg) {
        MAIN_TABLE => format!("route {dst} deleted"),
        table => format!("route {dst} (table {table}) deleted"),
    }
}

fn describe_neighbour(msg: &NeighbourMessage, device: &str) -> String {
    let text = |x: Option<String>| x.unwrap_or_else(|| "?".to_string());
    if msg.header.family == AddressFamily::Bridge {
        format!("fdb entry {} dev {device} deleted", text(neighbour_lladdr(msg).map(|m| m.to_string())))
    } else {
        format!("neighbour {} dev {device} deleted", text(neighbour_destination(msg).map(|ip| ip.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(index: u32, name: &str) -> HashMap<u32, String> {
        HashMap::from([(index, name.to_string())])
    }

    fn mac() -> MacAddr {
        "0e:2a:4f:00:12:9c".parse().unwrap()
    }

    #[test]
    fn decodes_raw_ip_bytes() {
        assert_eq!(decode_ip(&[198, 18, 0, 2]), Some("198.18.0.2".parse().unwrap()));
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        assert_eq!(decode_ip(&v6.octets()), Some(IpAddr::V6(v6)));
        assert_eq!(decode_ip(&[1, 2, 3]), None);
        assert_eq!(decode_ip(&[]), None);
    }

    fn fdb_message(index: u32, dst: Vec<u8>, state: NeighbourState, flags: NeighbourFlags) -> NeighbourMessage {
        let mut msg = fdb_key(index, mac());
        msg.header.state = state;
        msg.header.flags = flags;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Other(dst)));
        msg
    }

    #[test]
    fn reads_fdb_entries_of_the_device_itself() {
        let owned = owned(7, "flannel.1");
        let msg = fdb_message(7, vec![198, 18, 0, 2], NeighbourState::Permanent, NeighbourFlags::Own);
        let want = FdbEntry { device: "flannel.1".into(), mac: mac(), dst: "198.18.0.2".parse().unwrap() };
        assert_eq!(fdb_from_message(&msg, &owned), Some(want));

        let by_master = fdb_message(7, vec![198, 18, 0, 2], NeighbourState::Permanent, NeighbourFlags::Controller);
        assert_eq!(fdb_from_message(&by_master, &owned), None);
        let learned = fdb_message(7, vec![198, 18, 0, 2], NeighbourState::Reachable, NeighbourFlags::Own);
        assert_eq!(fdb_from_message(&learned, &owned), None);
        let elsewhere = fdb_message(8, vec![198, 18, 0, 2], NeighbourState::Permanent, NeighbourFlags::Own);
        assert_eq!(fdb_from_message(&elsewhere, &owned), None);
    }

    #[test]
    fn reads_permanent_neighbours_only() {
        let owned = owned(7, "flannel.1");
        let mut msg = neighbour_key(7, "10.244.2.0".parse().unwrap());
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac().0.to_vec()));
        let want = Neighbour { device: "flannel.1".into(), ip: "10.244.2.0".parse().unwrap(), mac: mac() };
        assert_eq!(neighbour_from_message(&msg, &owned), Some(want));
        msg.header.state = NeighbourState::Stale;
        assert_eq!(neighbour_from_message(&msg, &owned), None);
        let fdb = fdb_message(7, vec![198, 18, 0, 2], NeighbourState::Permanent, NeighbourFlags::Own);
        assert_eq!(neighbour_from_message(&fdb, &owned), None, "an FDB entry is not a neighbour");
    }

    fn route(dst: &str, gateway: Option<&str>, oif: u32, protocol: u8) -> RouteMessage {
        let dst: IpNetwork = dst.parse().unwrap();
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .unwrap()
            .output_interface(oif)
            .protocol(RouteProtocol::from(protocol));
        if let Some(gw) = gateway {
            builder = builder.gateway(gw.parse().unwrap()).unwrap();
        }
        builder.build()
    }

    #[test]
    fn selects_our_routes() {
        let names = HashMap::from([(2, "u0".to_string()), (7, "flannel.1".to_string())]);
        let owned = owned(7, "flannel.1");
        let scope = Scope::links(vec!["flannel.1".into()], 87);
        let mut on_device = route("10.244.2.0/24", Some("10.244.2.0"), 7, 87);
        on_device.header.flags.insert(RouteFlags::Onlink);
        let want = Route::via("10.244.2.0/24".parse().unwrap(), "10.244.2.0".parse().unwrap(), "flannel.1", true, 87);
        assert_eq!(route_from_message(&on_device, &names, &owned, &scope), Some(want));

        let direct = route("10.244.3.0/24", Some("198.18.0.3"), 2, 87);
        assert_eq!(route_from_message(&direct, &names, &owned, &scope).map(|r| r.device), Some(Some("u0".to_string())));

        // Another weftd's direct route (its own network) is not ours once our networks are known.
        let narrowed = Scope { route_networks: vec!["10.244.0.0/16".parse().unwrap()], ..scope.clone() };
        let other_network = route("10.245.3.0/24", Some("198.18.0.3"), 2, 87);
        assert!(route_from_message(&other_network, &names, &owned, &scope).is_some());
        assert_eq!(route_from_message(&other_network, &names, &owned, &narrowed), None);
        assert!(route_from_message(&direct, &names, &owned, &narrowed).is_some());

        let foreign = route("10.244.9.0/24", Some("198.18.0.9"), 2, 4);
        assert_eq!(route_from_message(&foreign, &names, &owned, &scope), None);
        let connected = route("10.244.1.0/24", None, 7, 2);
        assert_eq!(route_from_message(&connected, &names, &owned, &scope), None);
        // A device route (WireGuard, TUN) has no gateway; a blackhole route has no device either.
        let no_gateway = route("10.244.4.0/24", None, 7, 87);
        let device_route = Route::dev("10.244.4.0/24".parse().unwrap(), "flannel.1", 87);
        assert_eq!(route_from_message(&no_gateway, &names, &owned, &scope), Some(device_route));
        let mut blackhole = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix("10.244.1.0".parse().unwrap(), 24)
            .table_id(MAIN_TABLE)
            .kind(RouteType::BlackHole)
            .protocol(RouteProtocol::from(87))
            .build();
        let want = Route::blackhole("10.244.1.0/24".parse().unwrap(), 87);
        assert_eq!(route_from_message(&blackhole, &names, &owned, &scope), Some(want.clone()));
        // IPv6 reports blackholes on lo: still no device.
        blackhole.attributes.push(RouteAttribute::Oif(1));
        assert_eq!(route_from_message(&blackhole, &names, &owned, &scope), Some(want.clone()));
        blackhole.header.protocol = RouteProtocol::Static;
        assert_eq!(route_from_message(&blackhole, &names, &owned, &scope), None, "someone else's blackhole");
        // What we send reads back as what we meant.
        let sent = route_message(&want, NO_DEVICE).unwrap();
        assert_eq!(route_from_message(&sent, &names, &owned, &scope), Some(want));
        let device_route = Route::dev("10.244.4.0/24".parse().unwrap(), "flannel.1", 87);
        let sent = route_message(&device_route, 7).unwrap();
        assert_eq!(route_from_message(&sent, &names, &owned, &scope), Some(device_route));

        let mut other_table = route("10.244.2.0/24", Some("10.244.2.0"), 7, 87);
        other_table.header.table = 0;
        other_table.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(route_from_message(&other_table, &names, &owned, &scope), None);
        let mut local = route("10.244.1.0/32", Some("10.244.1.0"), 7, 87);
        local.header.kind = RouteType::Local;
        assert_eq!(route_from_message(&local, &names, &owned, &scope), None);
    }

    #[test]
    fn default_route_has_an_unspecified_destination() {
        let mut msg = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(3).build();
        msg.header.destination_prefix_length = 0;
        assert_eq!(route_destination(&msg), Some("::/0".parse().unwrap()));
    }

    #[test]
    fn reads_vxlan_attributes() {
        let info = vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(1),
                InfoVxlan::Local("198.18.0.1".parse().unwrap()),
                InfoVxlan::Link(2),
                InfoVxlan::Port(8472),
                InfoVxlan::Learning(false),
                InfoVxlan::Gbp,
            ])),
        ];
        let want = VxlanAttrs {
            vni: 1,
            local: "198.18.0.1".parse().unwrap(),
            underlay_index: 2,
            port: 8472,
            learning: false,
            gbp: true,
        };
        assert_eq!(link_kind(&info), Some(LinkKind::Vxlan(want)));
        assert_eq!(link_kind(&[LinkInfo::Kind(InfoKind::Bridge)]), None);
        assert_eq!(link_kind(&[LinkInfo::Kind(InfoKind::Tun)]), Some(LinkKind::Tun));
        assert_eq!(link_kind(&[LinkInfo::Kind(InfoKind::Wireguard)]), Some(LinkKind::Wireguard));
    }

    #[test]
    fn a_device_of_another_kind_reads_as_never_desired() {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName("flannel.1".into()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        let link = link_from_message(&msg).unwrap();
        assert_eq!(link.kind, LinkKind::Unowned);
    }

    #[test]
    fn skips_ipv6_link_local_addresses() {
        let owned = owned(7, "flannel.1");
        let message = |ip: &str, prefix| {
            let ip: IpAddr = ip.parse().unwrap();
            let mut msg = AddressMessage::default();
            msg.header.index = 7;
            msg.header.prefix_len = prefix;
            msg.attributes.push(AddressAttribute::Address(ip));
            msg
        };
        assert_eq!(address_from_message(&message("fe80::1", 64), &owned), None);
        let v4 = address_from_message(&message("10.244.1.0", 32), &owned).unwrap();
        assert_eq!(v4.addr, "10.244.1.0/32".parse().unwrap());
    }

    #[test]
    fn counts_only_the_listed_errnos_as_success() {
        let nack = |code: i32| {
            let mut msg = rtnetlink::packet_core::ErrorMessage::default();
            msg.code = std::num::NonZeroI32::new(-code);
            rtnetlink::Error::NetlinkError(msg)
        };
        let op = Op::DeleteLink("flannel.1".into());
        assert!(outcome(&op, Err(nack(libc::ENODEV)), &[libc::ENODEV]).is_ok());
        let err = outcome(&op, Err(nack(libc::EPERM)), &[libc::ENODEV]).unwrap_err();
        assert!(err.to_string().starts_with("delete link flannel.1: "), "{err}");
        match err {
            KernelError::Apply { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::EPERM))
            }
            other => panic!("{other:?}"),
        }
    }

    fn scope() -> Scope {
        Scope::links(vec!["flannel.1".into()], 87)
    }

    fn link(index: u32, name: &str, up: bool) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if up {
            msg.header.flags.insert(LinkFlags::Up);
        }
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg
    }

    #[test]
    fn watch_describes_what_concerns_us() {
        let mut state = WatchState::new(scope());
        state.link_seen(&link(7, "flannel.1", true));

        let ours = route("10.244.2.0/24", Some("10.244.2.0"), 2, 87);
        assert_eq!(
            state.describe(&RouteNetlinkMessage::DelRoute(ours)).as_deref(),
            Some("route 10.244.2.0/24 deleted")
        );
        let on_device = route("10.244.5.0/24", Some("10.244.5.0"), 7, 4);
        assert!(state.describe(&RouteNetlinkMessage::DelRoute(on_device)).is_some());
        let foreign = route("10.244.9.0/24", Some("198.18.0.9"), 2, 4);
        assert_eq!(state.describe(&RouteNetlinkMessage::DelRoute(foreign)), None);

        let neigh = neighbour_key(7, "10.244.2.0".parse().unwrap());
        assert_eq!(
            state.describe(&RouteNetlinkMessage::DelNeighbour(neigh)).as_deref(),
            Some("neighbour 10.244.2.0 dev flannel.1 deleted")
        );
        let fdb = fdb_key(7, mac());
        assert_eq!(
            state.describe(&RouteNetlinkMessage::DelNeighbour(fdb)).as_deref(),
            Some("fdb entry 0e:2a:4f:00:12:9c dev flannel.1 deleted")
        );

        assert_eq!(state.describe(&RouteNetlinkMessage::NewLink(link(7, "flannel.1", true))), None);
        assert_eq!(
            state.describe(&RouteNetlinkMessage::NewLink(link(7, "flannel.1", false))).as_deref(),
            Some("link flannel.1 went down")
        );
        // Still down: no news.
        assert_eq!(state.describe(&RouteNetlinkMessage::NewLink(link(7, "flannel.1", false))), None);
        assert_eq!(
            state.describe(&RouteNetlinkMessage::DelLink(link(7, "flannel.1", false))).as_deref(),
            Some("link flannel.1 deleted")
        );
        assert_eq!(state.describe(&RouteNetlinkMessage::DelLink(link(3, "eth0", true))), None);
    }
}
