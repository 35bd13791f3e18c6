//! The peers a WireGuard device wants, derived from the forwarding table: shared by the userspace plane and the
//! kernel device's writer, and pure (no runtime), so the plugin's build of this crate compiles it too.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use super::keys::Key;
use crate::forwarding::ForwardingTable;
use crate::Family;

/// What the data plane needs to know of one peer: where it is and what it may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub endpoint: SocketAddr,
    pub allowed: Vec<IpNetwork>,
}

/// The peers in a forwarding table for a device carrying `families`, by public key. Pure.
pub fn peers_from_table(table: &ForwardingTable, families: &[Family]) -> BTreeMap<Key, PeerSpec> {
    let mut peers: BTreeMap<Key, PeerSpec> = BTreeMap::new();
    for (subnet, endpoint) in &table.entries {
        if !families.contains(&Family::of(subnet.ip())) {
            continue;
        }
        let Some(key) = table.keys.get(subnet) else { continue };
        let spec = peers.entry(*key).or_insert_with(|| PeerSpec { endpoint: *endpoint, allowed: Vec::new() });
        spec.allowed.push(*subnet);
    }
    peers
}
