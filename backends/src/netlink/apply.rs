//! Applying ops: the one place that turns a model op into a request (`request_for`, `*_to_netlink`), which
//! answers count as done, and the batched `apply_all`.

use weft_netlink::link::{LinkChange, LinkRef, NewVxlan};
use weft_netlink::{address, fdb, link, neighbour, route, Error, Outcome, Request};

use super::NetlinkKernel;
use crate::diff::Op;
use crate::kernel::{precheck, KernelError};
use crate::model::{Link, LinkKind, MacAddr, Route, RouteKind};

/// Ops resolved, sent and settled at a time by `apply_all`: a few datagrams' worth (see
/// [`weft_netlink::blocking::CHANGE_DATAGRAM_BYTES`]), so that the requests of a pass over 10,000 peers never
/// exist all at once.
const APPLY_CHUNK: usize = 4096;

pub(super) async fn apply(kernel: &mut NetlinkKernel, op: &Op) -> Result<(), KernelError> {
    let result = apply_op(kernel, op).await;
    if is_stale_index(&result) && !kernel.indexes.is_empty() {
        // A cached index may belong to a device that was deleted (and perhaps re-created under the same name)
        // since the last dump: look the names up afresh and try once more.
        kernel.indexes.clear();
        return apply_op(kernel, op).await;
    }
    result
}

/// Resolves every op's device (from the cache) and hands the requests to the bulk socket in chunks of
/// [`APPLY_CHUNK`]: many requests per datagram, only refusals answered (see
/// [`weft_netlink::blocking::Socket::apply_changes`]), so a pass costs a few system calls per thousand ops instead
/// of a round trip each. The kernel still handles them one by one, in order, and every op gets its own verdict.
pub(super) async fn apply_all(kernel: &mut NetlinkKernel, ops: &[Op]) -> Vec<Result<(), KernelError>> {
    let mut out = Vec::with_capacity(ops.len());
    for chunk in ops.chunks(APPLY_CHUNK) {
        let results = apply_chunk(kernel, chunk).await;
        for (op, result) in chunk.iter().zip(results) {
            // As in apply: a cached index may belong to a deleted (perhaps re-created) device.
            out.push(if is_stale_index(&result) {
                kernel.indexes.clear();
                apply_op(kernel, op).await
            } else {
                result
            });
        }
    }
    out
}

async fn apply_chunk(kernel: &mut NetlinkKernel, ops: &[Op]) -> Vec<Result<(), KernelError>> {
    let mut results: Vec<Option<Result<(), KernelError>>> = Vec::with_capacity(ops.len());
    let mut positions = Vec::new();
    let mut requests = Vec::new();
    for (position, op) in ops.iter().enumerate() {
        if let Err(e) = precheck(op) {
            results.push(Some(Err(e)));
            continue;
        }
        if is_link_op(op) {
            results.push(Some(apply(kernel, op).await));
            continue;
        }
        match resolve(kernel, op).await {
            Ok(Some(index)) => match request_for(op, index) {
                Ok(request) => {
                    results.push(None);
                    positions.push(position);
                    requests.push(request);
                }
                Err(e) => results.push(Some(Err(e))),
            },
            Ok(None) => results.push(Some(Ok(()))),
            Err(e) => results.push(Some(Err(e))),
        }
    }
    if !requests.is_empty() {
        for (position, answer) in positions.into_iter().zip(kernel.bulk.apply(requests).await) {
            results[position] = Some(settle(&ops[position], answer));
        }
    }
    ops.iter()
        .zip(results)
        .map(|(op, result)| result.unwrap_or_else(|| Err(KernelError::Netlink(format!("{op}: no answer")))))
        .collect()
}

fn is_link_op(op: &Op) -> bool {
    matches!(op, Op::CreateLink(_) | Op::UpdateLink(_) | Op::DeleteLink(_))
}

fn is_stale_index(result: &Result<(), KernelError>) -> bool {
    matches!(result, Err(KernelError::Apply { source, .. }) if source.raw_os_error() == Some(libc::ENODEV))
}

async fn apply_op(kernel: &mut NetlinkKernel, op: &Op) -> Result<(), KernelError> {
    precheck(op)?;
    match op {
        // rtnetlink cannot create a TUN device: configure the one the data plane opened.
        Op::CreateLink(link) if link.kind == LinkKind::Tun => match kernel.optional_index(op, &link.name).await? {
            Some(_) => update_link(kernel, op, link).await,
            None => Err(KernelError::TunNotOpened { op: op.to_string(), device: link.name.clone() }),
        },
        Op::CreateLink(link) => {
            let request = create_link(link)
                .ok_or_else(|| KernelError::NotOurs { op: op.to_string(), device: link.name.clone() })?;
            kernel.indexes.remove(&link.name);
            kernel.absent.remove(&link.name);
            let answer = kernel.connection.request(request).await;
            settle(op, answer)
        }
        Op::UpdateLink(link) => update_link(kernel, op, link).await,
        Op::DeleteLink(name) => {
            let Some(index) = kernel.optional_index(op, name).await? else {
                return Ok(());
            };
            kernel.indexes.remove(name);
            let answer = kernel.connection.request(link::delete(LinkRef::Index(index))).await;
            settle(op, answer)
        }
        _ => match resolve(kernel, op).await? {
            Some(index) => {
                let answer = kernel.connection.request(request_for(op, index)?).await;
                settle(op, answer)
            }
            None => Ok(()),
        },
    }
}

/// The ifindex an address, neighbour, FDB or route op acts on. None means the op deletes something from a device
/// that is gone, which took the object along: nothing to do.
async fn resolve(kernel: &mut NetlinkKernel, op: &Op) -> Result<Option<u32>, KernelError> {
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
        kernel.optional_index(op, device).await
    } else {
        kernel.require_index(op, device).await.map(Some)
    }
}

async fn update_link(kernel: &mut NetlinkKernel, op: &Op, link: &Link) -> Result<(), KernelError> {
    let index = kernel.require_index(op, &link.name).await?;
    // Any IFLA_ADDRESS, even the current one, makes the kernel flush the device's neighbour entries
    // (NETDEV_CHANGEADDR), permanent ones included, behind the diff's back: send it only to change it. Layer-3
    // devices (TUN, WireGuard) have no address to set.
    let mut mac = None;
    if link.kind.has_mac() {
        let current = kernel.connection.request(link::get(LinkRef::Index(index))).await;
        let current = current.map_err(|e| KernelError::apply(op, e.into_io()))?;
        let current_mac = weft_netlink::decode_all::<link::Link>(&current).first().and_then(|l| l.mac).map(MacAddr);
        mac = (current_mac != Some(link.mac)).then_some(link.mac.0);
    }
    let change = LinkChange { mtu: Some(link.mtu), mac, up: Some(link.up), master: None };
    let answer = kernel.connection.request(link::change(LinkRef::Index(index), &change)).await;
    settle(op, answer)
}

/// The ifindex of "no device", for routes without one: what the kernel itself uses for "no output interface".
const NO_DEVICE: u32 = 0;

/// The request that creates `link`; None for kinds rtnetlink does not create (TUN devices come from /dev/net/tun,
/// unowned devices are someone else's). Without `up` the device is created down, which is what a desired "down"
/// link means.
pub(super) fn create_link(link: &Link) -> Option<Request> {
    match &link.kind {
        LinkKind::Vxlan(v) => {
            let vxlan = link::Vxlan {
                vni: v.vni,
                local: Some(v.local),
                underlay: (v.underlay_index != 0).then_some(v.underlay_index),
                port: Some(v.port),
                learning: v.learning,
                gbp: v.gbp,
            };
            let device = NewVxlan { name: &link.name, vxlan: &vxlan, mac: link.mac.0, mtu: link.mtu, up: link.up };
            Some(link::create_vxlan(&device))
        }
        LinkKind::Wireguard => Some(link::create_wireguard(&link.name, Some(link.mtu), link.up)),
        LinkKind::Tun | LinkKind::Unowned => None,
    }
}

/// A model route on device `index` ([`NO_DEVICE`] for none), as the codec's value: always in the main table.
fn route_to_netlink(r: &Route, index: u32) -> route::Route {
    route::Route {
        kind: match r.kind {
            RouteKind::Unicast => route::RouteKind::Unicast,
            RouteKind::Blackhole => route::RouteKind::Blackhole,
        },
        gateway: r.gateway,
        device: (index != NO_DEVICE).then_some(index),
        onlink: r.onlink,
        // Sent only when set, so a route at the family's default is added and deleted as before.
        metric: (r.metric != 0).then_some(r.metric),
        ..route::Route::unicast(r.dst, r.protocol)
    }
}

/// The request for an address, neighbour, FDB or route op on device `index`.
pub(super) fn request_for(op: &Op, index: u32) -> Result<Request, KernelError> {
    Ok(match op {
        Op::AddAddress(a) => address::add(index, a.addr, address::Dad::Run),
        Op::DeleteAddress(a) => address::delete(index, a.addr),
        Op::ReplaceNeighbour(n) => neighbour::replace(index, n.ip, n.mac.0),
        Op::DeleteNeighbour(n) => neighbour::delete(index, n.ip),
        Op::ReplaceFdb(e) => fdb::replace(index, e.mac.0, e.dst),
        Op::DeleteFdb(e) => fdb::delete(index, e.mac.0),
        Op::ReplaceRoute(r) => route::replace(&route_to_netlink(r, index)),
        Op::DeleteRoute(r) => route::delete(&route_to_netlink(r, index)),
        Op::CreateLink(_) | Op::UpdateLink(_) | Op::DeleteLink(_) => {
            return Err(KernelError::Netlink(format!("{op}: link operations are not batched")))
        }
    })
}

/// Answers that mean the kernel is already in the state `op` asks for.
fn already_done(op: &Op, e: &Error) -> bool {
    match op {
        Op::AddAddress(_) => e.is_exists(),
        Op::DeleteAddress(_) | Op::DeleteNeighbour(_) | Op::DeleteFdb(_) | Op::DeleteRoute(_) => e.is_not_found(),
        Op::DeleteLink(_) => e.is_no_device(),
        Op::CreateLink(_) | Op::UpdateLink(_) | Op::ReplaceNeighbour(_) | Op::ReplaceFdb(_) | Op::ReplaceRoute(_) => {
            false
        }
    }
}

/// The result of `op` from the kernel's answer.
fn settle(op: &Op, answer: Outcome) -> Result<(), KernelError> {
    match answer {
        Ok(_) => Ok(()),
        Err(e) if already_done(op, &e) => Ok(()),
        Err(e) => Err(KernelError::apply(op, e.into_io())),
    }
}

#[cfg(test)]
mod tests {
    use weft_netlink::{Action, Object, Operation};

    use super::*;
    use crate::model::FdbEntry;

    fn refused(errno: i32) -> Outcome {
        Err(Error::Kernel { operation: Operation::new(Action::Delete, Object::Link), errno })
    }

    #[test]
    fn counts_only_what_means_done_as_success() {
        let op = Op::DeleteLink("flannel.1".into());
        assert!(settle(&op, refused(libc::ENODEV)).is_ok());
        let err = settle(&op, refused(libc::EPERM)).unwrap_err();
        assert!(err.to_string().starts_with("delete link flannel.1: "), "{err}");
        match err {
            KernelError::Apply { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EPERM)),
            other => panic!("{other:?}"),
        }
        let entry = FdbEntry { device: "flannel.1".into(), mac: MacAddr([2; 6]), dst: "198.18.0.2".parse().unwrap() };
        assert!(settle(&Op::DeleteFdb(entry.clone()), refused(libc::ENOENT)).is_ok());
        assert!(settle(&Op::ReplaceFdb(entry), refused(libc::ENOENT)).is_err());
    }
}
