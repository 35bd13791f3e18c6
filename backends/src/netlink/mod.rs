//! Linux kernel access through the weft-netlink crate, split by concern:
//!
//! - [`observe`]: `observe` reads everything weft owns with a fixed number of dumps (one per object kind and
//!   family, filtered by the kernel where it can, never one request per object, so 10,000 peers cost the same
//!   number of round trips as one), and turns messages into model values;
//! - [`apply`]: `apply` turns one [`Op`] into one request (UpdateLink also reads the current MAC), `apply_all`
//!   sends a pass's many requests a datagram at a time on a second socket, with only refusals answered;
//! - [`watch`]: listens to the kernel's change notifications so the reconcile loop can wake up when someone
//!   removes our objects.
//!
//! A handle can be bound to another network namespace ([`NetlinkKernel::connect_in_netns`]): the socket is opened
//! by a short-lived thread that entered the namespace (weft_netlink::netns), and a netlink socket keeps acting on
//! the namespace it was created in. No tokio worker ever calls `setns`.

mod apply;
mod nexthops;
mod observe;
mod watch;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;

use ipnetwork::IpNetwork;
use weft_netlink::bulk::BulkSocket;
use weft_netlink::pipelined::Connection;
use weft_netlink::route::{RouteFilter, RouteKind};
use weft_netlink::{address, decode_all, link, route, Message, Request};

use crate::diff::Op;
use crate::kernel::{Kernel, KernelError};
use crate::model::{KernelState, MacAddr, ObjectKind, Scope};
use crate::Family;

pub use watch::{watch_deletions, watch_deletions_in_netns};

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
    /// The ifindex of the bridge (or other master) the device is a port of.
    pub master: Option<u32>,
}

/// rtnetlink access to one network namespace.
pub struct NetlinkKernel {
    connection: Connection,
    /// A second socket for the passes' many neighbour, FDB, route and address changes (see `apply_all`).
    bulk: BulkSocket,
    /// Device name to ifindex. Ops name devices, the kernel wants indexes; without the cache every neighbour, FDB
    /// entry and route would cost an extra lookup. Refreshed by every link dump, dropped on create/delete/ENODEV.
    indexes: HashMap<String, u32>,
    /// Devices found missing since the current `apply_all` began: a device that could not be created (its
    /// underlay went away) fails every route, neighbour and FDB entry through it, and each would otherwise cost a
    /// lookup of its own, 30,000 round trips a pass at 10,000 peers.
    absent: HashSet<String>,
    /// The nexthop objects our IPv4 gateway routes go through.
    nexthops: nexthops::Nexthops,
}

impl NetlinkKernel {
    /// A handle on the current network namespace. Must be called inside a tokio runtime, which runs the
    /// connection task.
    pub fn connect() -> io::Result<NetlinkKernel> {
        let connection = Connection::open().map_err(weft_netlink::Error::into_io)?;
        Ok(NetlinkKernel::new(connection, BulkSocket::open().map_err(weft_netlink::Error::into_io)?))
    }

    /// A handle on the network namespace at `netns_path` (e.g. /run/netns/foo), whatever namespace the caller is
    /// in. Must be called inside a tokio runtime.
    pub fn connect_in_netns(netns_path: &Path) -> io::Result<NetlinkKernel> {
        let connection = Connection::open_at(netns_path).map_err(weft_netlink::Error::into_io)?;
        Ok(NetlinkKernel::new(connection, BulkSocket::open_at(netns_path).map_err(weft_netlink::Error::into_io)?))
    }

    fn new(connection: Connection, bulk: BulkSocket) -> NetlinkKernel {
        NetlinkKernel {
            connection,
            bulk,
            indexes: HashMap::new(),
            absent: HashSet::new(),
            nexthops: nexthops::Nexthops::default(),
        }
    }

    /// Programs routes as flannel does, each with its own gateway and device, instead of through nexthop
    /// objects (see [`weft_netlink::nexthop`]). Routes already through objects are replaced by the next pass
    /// that changes them; a full pass leaves equal ones as they are.
    pub fn use_plain_routes(&mut self) {
        self.nexthops.disable("asked for plain routes");
    }

    /// Every interface with its addresses, ordered by ifindex.
    pub async fn interfaces(&mut self) -> Result<Vec<Interface>, KernelError> {
        let links = self.dump_links().await?;
        let answer = self.dump("addresses", address::dump(None)).await?;
        let mut by_index: HashMap<u32, Vec<IpNetwork>> = HashMap::new();
        for a in decode_all::<address::Address>(&answer) {
            by_index.entry(a.index).or_default().push(a.addr);
        }
        let mut out: Vec<Interface> = links
            .into_iter()
            .map(|l| Interface {
                addresses: by_index.remove(&l.index).unwrap_or_default(),
                name: l.name,
                index: l.index,
                mtu: l.mtu.unwrap_or(0),
                up: l.up,
                mac: l.mac.map(MacAddr),
                master: l.master,
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
            .filter(|r| r.dst.prefix() == 0 && r.kind == RouteKind::Unicast)
            .filter_map(|r| Some((r.metric.unwrap_or(0), r.device?)))
            .min_by_key(|(metric, _)| *metric);
        Ok(best.map(|(_, oif)| oif))
    }

    async fn dump(&self, what: &'static str, request: Request) -> Result<Vec<Message>, KernelError> {
        self.connection.request(request).await.map_err(|e| KernelError::Observe { what, source: e.into_io() })
    }

    async fn dump_links(&mut self) -> Result<Vec<link::Link>, KernelError> {
        let links: Vec<link::Link> = decode_all(&self.dump("links", link::dump()).await?);
        self.indexes = links.iter().map(|l| (l.name.clone(), l.index)).collect();
        self.absent.clear();
        Ok(links)
    }

    /// The main table's routes of `family`: the kernel leaves the other tables out (strict checking), and the
    /// codec filters again for kernels that ignore the filter.
    async fn dump_routes(&self, family: Family) -> Result<Vec<route::Route>, KernelError> {
        let filter = RouteFilter::main_table();
        let mut routes: Vec<route::Route> =
            self.dump_decoded("routes", route::dump(family == Family::V6, &filter), None).await?;
        routes.retain(|r| filter.matches(r));
        Ok(routes)
    }

    /// A dump decoded as it arrives (see [`Connection::dump`]).
    async fn dump_decoded<T: weft_netlink::Decode>(
        &self,
        what: &'static str,
        request: Request,
        device: Option<u32>,
    ) -> Result<Vec<T>, KernelError> {
        self.dump_into(what, request, device, Some).await
    }

    /// A dump whose objects become what the caller keeps as they arrive (see [`Connection::dump_into`]).
    async fn dump_into<T: weft_netlink::Decode, U>(
        &self,
        what: &'static str,
        request: Request,
        device: Option<u32>,
        keep: impl FnMut(T) -> Option<U>,
    ) -> Result<Vec<U>, KernelError> {
        let dumped = self.connection.dump_into(request, device, keep).await;
        dumped.map_err(|e| KernelError::Observe { what, source: e.into_io() })
    }

    /// The ifindex of `name`, or None when no such device exists.
    async fn index_of(&mut self, name: &str) -> io::Result<Option<u32>> {
        if let Some(index) = self.indexes.get(name) {
            return Ok(Some(*index));
        }
        if self.absent.contains(name) {
            return Ok(None);
        }
        match self.connection.request(link::get(link::LinkRef::Name(name))).await {
            Ok(answer) => {
                let found = decode_all::<link::Link>(&answer).first().map(|l| l.index);
                if let Some(index) = found {
                    self.indexes.insert(name.to_string(), index);
                } else {
                    self.absent.insert(name.to_string());
                }
                Ok(found)
            }
            Err(e) if e.is_no_device() => {
                self.absent.insert(name.to_string());
                Ok(None)
            }
            Err(e) => Err(e.into_io()),
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
}

impl Kernel for NetlinkKernel {
    async fn observe(&mut self, scope: &Scope) -> Result<KernelState, KernelError> {
        observe::observe(self, scope).await
    }

    async fn observe_kind(&mut self, scope: &Scope, kind: ObjectKind) -> Result<KernelState, KernelError> {
        observe::observe_kinds(self, scope, &[kind]).await
    }

    async fn apply_all(&mut self, ops: &[Op]) -> Vec<Result<(), KernelError>> {
        // Someone may have created a device since the last call.
        self.absent.clear();
        apply::apply_all(self, ops).await
    }

    async fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        self.absent.clear();
        apply::apply(self, op).await
    }
}
