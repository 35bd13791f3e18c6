//! Applying ops: the one place that turns a model op into a request (`request_for`, `*_to_netlink`), which
//! answers count as done, and the batched `apply_all`.

use weft_netlink::link::{LinkChange, LinkRef, NewVxlan};
use weft_netlink::{address, fdb, link, neighbour, nexthop, route, Error, Outcome, Request};

use super::nexthops::Plan;
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
    let mut planned = Vec::new();
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
            Ok(Some(index)) if let Some(plan) = plan_for(kernel, op, index) => {
                results.push(None);
                planned.push((position, plan));
            }
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
    let (positions_planned, plans): (Vec<usize>, Vec<Plan>) = planned.into_iter().unzip();
    let planned_ops: Vec<&Op> = positions_planned.iter().map(|p| &ops[*p]).collect();
    let (answers, verdicts) = apply_planned(kernel, &planned_ops, plans, requests).await;
    for (position, answer) in positions.into_iter().zip(answers) {
        results[position] = Some(settle(&ops[position], answer));
    }
    for (position, verdict) in positions_planned.into_iter().zip(verdicts) {
        results[position] = Some(verdict);
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
            Some(index) => match plan_for(kernel, op, index) {
                Some(plan) => apply_planned(kernel, &[op], vec![plan], Vec::new()).await.1.remove(0),
                None => {
                    let answer = kernel.connection.request(request_for(op, index)?).await;
                    settle(op, answer)
                }
            },
            None => Ok(()),
        },
    }
}

/// How a route op goes through a nexthop object (see [`super::nexthops`]); None for every other op, and for
/// routes that stay plain.
fn plan_for(kernel: &mut NetlinkKernel, op: &Op, index: u32) -> Option<Plan> {
    match op {
        Op::ReplaceRoute(r) => kernel.nexthops.plan_replace(&route_to_netlink(r, index)),
        Op::DeleteRoute(r) => kernel.nexthops.plan_delete(&route_to_netlink(r, index)),
        _ => None,
    }
}

/// Times a fresh nexthop id is tried again when someone else holds it.
const FRESH_ID_TRIES: usize = 4;

/// Sends `others` (requests of ops that need no nexthop object) and applies route ops through nexthop objects, in
/// two rounds of bulk requests: `others` and the objects first (fresh ones created with NLM_F_EXCL, another id
/// tried while the id is taken; after `others`, since an object on a device needs the device's address, perhaps
/// added by one of them), then the routes, each naming its object only once the object is known to be ours. A
/// route whose object the kernel refuses is programmed plainly instead (a kernel without nexthop objects turns
/// them off for good). Objects a route dump found without their routes are deleted in the first round too.
/// Returns the answers to `others` and one verdict per planned op, each in order.
async fn apply_planned(
    kernel: &mut NetlinkKernel,
    ops: &[&Op],
    mut plans: Vec<Plan>,
    others: Vec<Request>,
) -> (Vec<Outcome>, Vec<Result<(), KernelError>>) {
    let mut other_answers = Vec::new();
    let mut first_round = Some(others);
    // `ready[i]` says whether op i's route may name its object.
    let mut ready: Vec<bool> = plans.iter().map(|p| matches!(p, Plan::Delete { .. })).collect();
    let mut pending: Vec<usize> = (0..plans.len()).filter(|i| !ready[*i]).collect();
    for attempt in 0..FRESH_ID_TRIES {
        let mut requests = first_round.take().unwrap_or_default();
        let leading = requests.len();
        let orphans = if attempt == 0 { kernel.nexthops.take_orphans() } else { Vec::new() };
        if pending.is_empty() && leading == 0 && orphans.is_empty() {
            break;
        }
        requests.extend(pending.iter().map(|i| match &plans[*i] {
            Plan::Replace { nexthop, fresh: true, .. } => nexthop::create(nexthop),
            Plan::Replace { nexthop, .. } => nexthop::replace(nexthop),
            Plan::Delete { .. } => unreachable!("deletions need no object first"),
        }));
        requests.extend(orphans.iter().map(|id| nexthop::delete(*id)));
        let mut answers = kernel.bulk.apply(requests).await.into_iter();
        other_answers.extend(answers.by_ref().take(leading));
        let mut taken = Vec::new();
        for (i, answer) in pending.iter().copied().zip(answers.by_ref()) {
            match answer {
                Ok(_) => ready[i] = true,
                Err(e) if e.is_exists() && attempt + 1 < FRESH_ID_TRIES => {
                    kernel.nexthops.retry(&mut plans[i]);
                    taken.push(i);
                }
                Err(e) => {
                    if matches!(e.errno(), Some(libc::EOPNOTSUPP) | Some(libc::EAFNOSUPPORT)) {
                        kernel.nexthops.disable("the kernel has no nexthop objects");
                    }
                    tracing::debug!(op = %ops[i], error = %e, "nexthop object refused; programming the route plainly");
                }
            }
        }
        for (id, answer) in orphans.iter().zip(answers) {
            match answer {
                Err(e) if !e.is_not_found() => {
                    tracing::debug!(id, error = %e, "could not delete a nexthop object left without its route")
                }
                _ => {}
            }
        }
        pending = taken;
    }
    if plans.is_empty() {
        return (other_answers, Vec::new());
    }
    // Round two: the routes, and the objects of deleted routes after them.
    let mut requests = Vec::new();
    let mut shares = Vec::with_capacity(plans.len());
    for (plan, ready) in plans.iter().zip(&ready) {
        let before = requests.len();
        match (plan, ready) {
            (Plan::Replace { route, .. }, true) => requests.push(route::replace(route)),
            (Plan::Replace { route, .. }, false) => {
                requests.push(route::replace(&route::Route { nexthop: None, ..route.clone() }))
            }
            (Plan::Delete { route, own }, _) => {
                requests.push(route::delete(route));
                if let (true, Some(id)) = (own, route.nexthop) {
                    requests.push(nexthop::delete(id));
                }
            }
        }
        shares.push(requests.len() - before);
    }
    let mut answers = kernel.bulk.apply(requests).await.into_iter();
    let mut out = Vec::with_capacity(plans.len());
    for ((op, plan), (share, ready)) in ops.iter().zip(&plans).zip(shares.into_iter().zip(ready)) {
        let mut verdict = Ok(());
        for answer in answers.by_ref().take(share) {
            // For a deletion, a route or object gone already counts as done, as for plain routes.
            verdict = verdict.and(settle(op, answer));
        }
        match plan {
            Plan::Replace { route, .. } if verdict.is_ok() => {
                kernel.nexthops.settled(route.dst, if ready { route.nexthop } else { None })
            }
            Plan::Delete { route, .. } => kernel.nexthops.settled(route.dst, None),
            // A fresh object no route names: deleted with the next changes.
            Plan::Replace { nexthop, fresh: true, .. } if ready => kernel.nexthops.orphan(nexthop.id),
            Plan::Replace { .. } => {}
        }
        out.push(verdict);
    }
    (other_answers, out)
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
