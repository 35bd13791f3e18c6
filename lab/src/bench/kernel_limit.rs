//! The kernel's own limit for programming N peers: the objects weftd creates (a permanent neighbour, an FDB entry
//! and an onlink route per peer, the route through a nexthop object of its own) written by `ip -batch` /
//! `bridge -batch` to a fresh VXLAN device in a scratch namespace, and the same with flannel's plain routes. Those
//! tools send one request and wait for its acknowledgement, with no daemon around them.

use std::fmt::Write;
use std::time::Duration;

use super::error::Result;
use super::netns::{batch, ScratchNamespaces};
use super::synthetic;

/// Routes added one at a time on top of `existing` ones, to time the kernel's own cost of one route there.
const PROBE_ROUTES: usize = 200;

/// How a peer's route is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteForm {
    /// flannel's: `route replace <subnet> via <base> dev flannel.1 onlink`. Linux finds a route's shared next-hop
    /// info in a hash keyed by the device, not the gateway, so every such route lands in one chain, and adding a
    /// route walks it: the cost of one grows with the number of peers.
    Plain,
    /// weftd's: a nexthop object per peer, and the route naming it (hashed by the object's id).
    Nexthop,
}

/// The `ip -batch` lines for peer `i`'s route.
fn route_lines(i: usize, form: RouteForm) -> String {
    let net = synthetic::subnet(i);
    match form {
        RouteForm::Plain => format!("route replace {net} via {} dev flannel.1 onlink proto 87\n", net.ip()),
        RouteForm::Nexthop => {
            let id = 0xF000_0000 + i as u32;
            format!(
                "nexthop replace id {id} via {} dev flannel.1 onlink proto 87\nroute replace {net} nhid {id} proto 87\n",
                net.ip()
            )
        }
    }
}

/// The kernel's own time to add one peer route when `existing` peers' routes are already on the VXLAN device:
/// [`PROBE_ROUTES`] more routes (with their nexthop objects, in that form) written by one `ip -batch` (one request
/// and acknowledgement each), divided by their number.
pub fn route_insert(existing: usize, form: RouteForm) -> Result<Duration> {
    let mut scratch = ScratchNamespaces::new();
    let ns = scratch.create("insert")?;
    batch("ip", &ns, SETUP)?;
    batch("ip", &ns, &(0..existing).map(|i| route_lines(i, form)).collect::<String>())?;
    let probe: String = (existing..existing + PROBE_ROUTES).map(|i| route_lines(i, form)).collect();
    Ok(batch("ip", &ns, &probe)? / PROBE_ROUTES as u32)
}

/// A VXLAN device as weftd makes it, on an underlay bridge.
const SETUP: &str = "link add ul0 type bridge\n\
                     addr add 198.18.0.1/24 dev ul0\n\
                     link set ul0 up\n\
                     link add flannel.1 type vxlan id 1 local 198.18.0.1 dev ul0 dstport 8472 nolearning\n\
                     link set flannel.1 mtu 1450\n\
                     addr add 10.0.1.0/32 dev flannel.1\n\
                     link set flannel.1 up\n";

/// Programs `n` synthetic peers once and returns the wall time of the three batch runs (process start included).
pub fn ip_batch(n: usize, form: RouteForm) -> Result<Duration> {
    let mut scratch = ScratchNamespaces::new();
    let ns = scratch.create("limit")?;
    batch("ip", &ns, SETUP)?;
    let (mut neighbours, mut fdb, mut routes) = (String::new(), String::new(), String::new());
    for i in 0..n {
        let (net, mac, vtep) = (synthetic::subnet(i), synthetic::mac(i, 1), synthetic::public_ip(i));
        let _ = writeln!(neighbours, "neigh replace {} lladdr {mac} dev flannel.1 nud permanent", net.ip());
        let _ = writeln!(fdb, "fdb replace {mac} dev flannel.1 dst {vtep} self permanent");
        routes.push_str(&route_lines(i, form));
    }
    // Dependency order, as weftd applies them: neighbours and FDB entries before the routes that use them.
    let total = batch("ip", &ns, &neighbours)? + batch("bridge", &ns, &fdb)? + batch("ip", &ns, &routes)?;
    Ok(total)
}
