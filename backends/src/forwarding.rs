//! The forwarding table of a userspace data plane (a TUN device with a UDP packet loop, say): which tunnel
//! endpoint carries traffic for each peer subnet.
//!
//! The reconcile loop computes it with the rest of the desired state and publishes it on a tokio watch channel;
//! the data plane reads the latest value whenever it changes. A data plane that falls behind skips intermediate
//! tables, which is right: only the newest one describes the peers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
#[cfg(feature = "runtime")]
use std::sync::Arc;

use ipnetwork::IpNetwork;
#[cfg(feature = "runtime")]
use tokio::sync::watch;

/// Peer subnet to the UDP endpoint that reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingTable {
    pub entries: BTreeMap<IpNetwork, SocketAddr>,
    /// The peer's public key per subnet, for a data plane that encrypts (wireguard); empty for udp.
    pub keys: BTreeMap<IpNetwork, [u8; 32]>,
}

impl ForwardingTable {
    pub fn insert(&mut self, subnet: IpNetwork, endpoint: SocketAddr) {
        self.entries.insert(subnet, endpoint);
    }

    /// An entry whose endpoint is reached through an encrypted tunnel to the peer with `public_key`.
    pub fn insert_keyed(&mut self, subnet: IpNetwork, endpoint: SocketAddr, public_key: [u8; 32]) {
        self.entries.insert(subnet, endpoint);
        self.keys.insert(subnet, public_key);
    }

    /// The endpoint for a packet to `dst`: the longest prefix that contains it.
    pub fn lookup(&self, dst: std::net::IpAddr) -> Option<SocketAddr> {
        self.entries.iter().filter(|(net, _)| net.contains(dst)).max_by_key(|(net, _)| net.prefix()).map(|(_, e)| *e)
    }

    /// One line per entry, in subnet order. Golden tests compare this.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (subnet, endpoint) in &self.entries {
            match self.keys.get(subnet) {
                Some(key) => {
                    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                    let _ = writeln!(out, "forward {subnet} to {endpoint} key {hex}");
                }
                None => {
                    let _ = writeln!(out, "forward {subnet} to {endpoint}");
                }
            }
        }
        out
    }
}

/// What a data plane holds: the newest table, shared, not copied per reader.
#[cfg(feature = "runtime")]
pub type ForwardingReceiver = watch::Receiver<Arc<ForwardingTable>>;

/// The reconcile loop's end of the channel.
#[derive(Debug)]
#[cfg(feature = "runtime")]
pub struct ForwardingPublisher {
    sender: watch::Sender<Arc<ForwardingTable>>,
}

#[cfg(feature = "runtime")]
impl Default for ForwardingPublisher {
    fn default() -> Self {
        ForwardingPublisher::new()
    }
}

#[cfg(feature = "runtime")]
impl ForwardingPublisher {
    /// Starts with an empty table.
    pub fn new() -> ForwardingPublisher {
        ForwardingPublisher { sender: watch::Sender::new(Arc::new(ForwardingTable::default())) }
    }

    /// A receiver for a data plane; it sees the current table at once.
    pub fn subscribe(&self) -> ForwardingReceiver {
        self.sender.subscribe()
    }

    /// Publishes `table` if it differs from the current one; returns whether it did. Receivers are only woken
    /// for a real change, so a resync pass costs the data plane nothing.
    pub fn publish(&self, table: &ForwardingTable) -> bool {
        self.sender.send_if_modified(|current| {
            if **current == *table {
                return false;
            }
            *current = Arc::new(table.clone());
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> ForwardingTable {
        let mut t = ForwardingTable::default();
        for (subnet, endpoint) in entries {
            t.insert(subnet.parse().unwrap(), endpoint.parse().unwrap());
        }
        t
    }

    #[tokio::test]
    async fn the_data_plane_sees_the_latest_table_and_only_real_changes() {
        let publisher = ForwardingPublisher::new();
        let mut plane = publisher.subscribe();
        assert!(plane.borrow_and_update().entries.is_empty());

        // Two tables published while the data plane was busy: it wakes once and reads the second.
        assert!(publisher.publish(&table(&[("10.244.2.0/24", "198.18.0.2:8285")])));
        assert!(publisher.publish(&table(&[("10.244.3.0/24", "198.18.0.3:8285")])));
        plane.changed().await.unwrap();
        assert_eq!(plane.borrow_and_update().render(), "forward 10.244.3.0/24 to 198.18.0.3:8285\n");

        // The same table again: nobody is woken.
        assert!(!publisher.publish(&table(&[("10.244.3.0/24", "198.18.0.3:8285")])));
        assert!(!plane.has_changed().unwrap());
    }

    #[test]
    fn lookup_takes_the_longest_prefix() {
        let t = table(&[("10.244.0.0/16", "198.18.0.9:8285"), ("10.244.2.0/24", "198.18.0.2:8285")]);
        assert_eq!(t.lookup("10.244.2.7".parse().unwrap()), Some("198.18.0.2:8285".parse().unwrap()));
        assert_eq!(t.lookup("10.244.5.7".parse().unwrap()), Some("198.18.0.9:8285".parse().unwrap()));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), None);
    }
}
