//! The kernel's own limit for programming N peers: the same 3N objects weftd creates (a permanent neighbour, an
//! FDB entry and an onlink route per peer) written by `ip -batch` / `bridge -batch` to a fresh VXLAN device in a
//! scratch namespace. Those tools send one request and wait for its acknowledgement, with no daemon around them.

use std::fmt::Write;
use std::time::Duration;

use super::error::Result;
use super::netns::{batch, ScratchNamespaces};
use super::synthetic;

/// Programs `n` synthetic peers once and returns the wall time of the three batch runs (process start included).
pub fn ip_batch(n: usize) -> Result<Duration> {
    let mut scratch = ScratchNamespaces::new();
    let ns = scratch.create("limit")?;
    let setup = "link add ul0 type bridge\n\
                 addr add 198.18.0.1/24 dev ul0\n\
                 link set ul0 up\n\
                 link add flannel.1 type vxlan id 1 local 198.18.0.1 dev ul0 dstport 8472 nolearning\n\
                 link set flannel.1 mtu 1450\n\
                 addr add 10.0.1.0/32 dev flannel.1\n\
                 link set flannel.1 up\n";
    batch("ip", &ns, setup)?;
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
