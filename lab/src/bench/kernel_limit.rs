//! The kernel's own limit for programming N peers: the same 3N objects weftd creates (a permanent neighbour, an
//! FDB entry and an onlink route per peer) written by `ip -batch` / `bridge -batch` to a fresh VXLAN device in a
//! scratch namespace. Those tools send one request and wait for its acknowledgement, with no daemon around them.

use std::fmt::Write;
use std::time::Duration;

use super::error::Result;
use super::netns::{batch, ScratchNamespaces};
use super::synthetic;

/// Routes added one at a time on top of `existing` ones, to time the kernel's own cost of one route there.
const PROBE_ROUTES: usize = 200;

/// The kernel's own time to add one peer route when `existing` peers' routes are already on the VXLAN device:
/// [`PROBE_ROUTES`] more routes written by one `ip -batch` (one request and acknowledgement each), divided by their
/// number. Linux finds a route's shared next-hop info in a hash keyed by the device, not the gateway, so every
/// onlink route via its own gateway on one device lands in one chain, and adding a route walks it: this grows with
/// the number of peers whatever programs the routes (flannel's routes have the same form).
pub fn route_insert(existing: usize) -> Result<Duration> {
    let mut scratch = ScratchNamespaces::new();
    let ns = scratch.create("insert")?;
    batch("ip", &ns, SETUP)?;
    let route = |i: usize| {
        let net = synthetic::subnet(i);
        format!("route replace {net} via {} dev flannel.1 onlink proto 87\n", net.ip())
    };
    batch("ip", &ns, &(0..existing).map(route).collect::<String>())?;
    let probe: String = (existing..existing + PROBE_ROUTES).map(route).collect();
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
pub fn ip_batch(n: usize) -> Result<Duration> {
    let mut scratch = ScratchNamespaces::new();
    let ns = scratch.create("limit")?;
    batch("ip", &ns, SETUP)?;
    let (mut neighbours, mut fdb, mut routes) = (String::new(), String::new(), String::new());
    for i in 0..n {
        let (net, mac, vtep) = (synthetic::subnet(i), synthetic::mac(i, 1), synthetic::public_ip(i));
        let _ = writeln!(neighbours, "neigh replace {} lladdr {mac} dev flannel.1 nud permanent", net.ip());
        let _ = writeln!(fdb, "fdb replace {mac} dev flannel.1 dst {vtep} self permanent");
        let _ = writeln!(routes, "route replace {net} via {} dev flannel.1 onlink proto 87", net.ip());
    }
    // Dependency order, as weftd applies them: neighbours and FDB entries before the routes that use them.
    let total = batch("ip", &ns, &neighbours)? + batch("bridge", &ns, &fdb)? + batch("ip", &ns, &routes)?;
    Ok(total)
}
