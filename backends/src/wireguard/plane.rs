//! The userspace WireGuard data plane: boringtun's protocol state machine per peer ([`Tunn`]) between the udp
//! backend's TUN queues ([`TunQueue`]) and one UDP socket per device.
//!
//! Three kinds of thread: per TUN queue a sending worker (read a packet, find its peer by destination in the
//! forwarding table, encrypt, send); one receiving worker (receive, find the peer by source address, decrypt,
//! check the inner source against the peer's subnets, write to the TUN); and a timer worker that drives
//! handshakes, retransmits and keepalives every [`TICK`] and applies new forwarding tables. Peers whose key and
//! endpoint stay the same keep their session across table changes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{debug, info, warn};

use super::keys::Key;
use crate::forwarding::{ForwardingReceiver, ForwardingTable};
use crate::udp::counters::Counters;
use crate::udp::packet::{DropReason, IpHeader};
use crate::udp::tun::{TunError, TunQueue};
use crate::Family;

/// How often the timer worker runs boringtun's timers (its own device ticks every 250 ms).
pub const TICK: Duration = Duration::from_millis(250);
/// A datagram: the largest TUN packet plus WireGuard's 32 bytes, and never below a handshake's 148.
const BUF: usize = 65535 + 32;

/// How one WireGuard device's data plane is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPlaneConfig {
    pub device: String,
    pub families: Vec<Family>,
    pub bind: SocketAddr,
    pub private_key: Key,
    pub psk: Option<Key>,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    /// TUN queues, each with its own sending worker.
    pub queues: usize,
    pub socket_buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WgPlaneError {
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("wireguard socket on {addr}: {what}: {source}")]
    Socket {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting wireguard data plane worker: {0}")]
    Spawn(#[source] io::Error),
}

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

struct WgPeer {
    spec: PeerSpec,
    endpoint: SockAddr,
    tunn: Mutex<Tunn>,
}

impl WgPeer {
    fn allows(&self, src: IpAddr) -> bool {
        self.spec.allowed.iter().any(|n| n.contains(src))
    }
}

/// The live peer set, swapped whole when the forwarding table changes.
#[derive(Default)]
struct PeerSet {
    by_key: BTreeMap<Key, Arc<WgPeer>>,
    /// Allowed subnet → peer, for the sending side (longest prefix wins).
    routes: Vec<(IpNetwork, Arc<WgPeer>)>,
    /// Endpoint IP → peer, for the receiving side.
    by_source: HashMap<IpAddr, Arc<WgPeer>>,
}

impl PeerSet {
    fn route(&self, dst: IpAddr) -> Option<&Arc<WgPeer>> {
        self.routes.iter().filter(|(n, _)| n.contains(dst)).max_by_key(|(n, _)| n.prefix()).map(|(_, p)| p)
    }
}

struct Shared {
    config: WgPlaneConfig,
    sock: Socket,
    peers: RwLock<Arc<PeerSet>>,
    counters: Arc<Counters>,
    next_index: Mutex<u32>,
}

/// Opens the TUN queues and the socket, then starts the workers; everything that can fail does so first.
pub fn start(
    config: &WgPlaneConfig,
    forwarding: ForwardingReceiver,
    counters: Arc<Counters>,
) -> Result<(), WgPlaneError> {
    let mut queues = Vec::new();
    for _ in 0..config.queues.max(1) {
        // No virtio header: every packet is encrypted on its own, so super-packets would only be cut up again.
        let (queue, _) = TunQueue::open(&config.device, false)?;
        queue.set_nonblocking().map_err(|source| {
            WgPlaneError::Tun(TunError::Ioctl { device: config.device.clone(), what: "O_NONBLOCK", source })
        })?;
        queues.push(Arc::new(queue));
    }
    let shared = Arc::new(Shared {
        config: config.clone(),
        sock: open_socket(config)?,
        peers: RwLock::new(Arc::new(PeerSet::default())),
        counters,
        next_index: Mutex::new(1),
    });
    shared.apply(&forwarding.borrow().clone());
    for (i, tun) in queues.iter().enumerate() {
        let (s, t) = (shared.clone(), tun.clone());
        spawn(format!("weft-wg-tx{i}"), move || s.send_loop(&t))?;
    }
    let (s, t) = (shared.clone(), queues[0].clone());
    spawn("weft-wg-rx".into(), move || s.receive_loop(&t))?;
    let s = shared.clone();
    spawn("weft-wg-timers".into(), move || s.timer_loop(forwarding))?;
    info!(device = %config.device, bind = %config.bind, queues = queues.len(), "userspace wireguard data plane running");
    Ok(())
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), WgPlaneError> {
    std::thread::Builder::new().name(name).spawn(f).map(|_| ()).map_err(WgPlaneError::Spawn)
}

fn open_socket(config: &WgPlaneConfig) -> Result<Socket, WgPlaneError> {
    let addr = config.bind;
    let err = |what: &'static str| move |source| WgPlaneError::Socket { addr, what, source };
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    let _ = sock.set_send_buffer_size(config.socket_buffer);
    let _ = sock.set_recv_buffer_size(config.socket_buffer);
    sock.bind(&addr.into()).map_err(err("bind"))?;
    Ok(sock)
}

impl Shared {
    fn snapshot(&self) -> Arc<PeerSet> {
        self.peers.read().expect("peer set lock").clone()
    }

    /// Applies a forwarding table: peers with the same key and endpoint keep their tunnel (and session).
    fn apply(&self, table: &ForwardingTable) {
        let wanted = peers_from_table(table, &self.config.families);
        let old = self.snapshot();
        let mut set = PeerSet::default();
        for (key, spec) in wanted {
            let peer = match old.by_key.get(&key) {
                Some(p) if p.spec == spec => p.clone(),
                Some(p) if p.spec.endpoint == spec.endpoint => {
                    // Same tunnel, other subnets: the session is kept by moving the tunnel over.
                    let tunn = std::mem::replace(&mut *p.tunn.lock().expect("tunnel lock"), self.new_tunn(&key));
                    Arc::new(WgPeer { endpoint: spec.endpoint.into(), spec, tunn: Mutex::new(tunn) })
                }
                _ => Arc::new(WgPeer { endpoint: spec.endpoint.into(), tunn: Mutex::new(self.new_tunn(&key)), spec }),
            };
            for subnet in &peer.spec.allowed {
                set.routes.push((*subnet, peer.clone()));
            }
            set.by_source.insert(peer.spec.endpoint.ip(), peer.clone());
            set.by_key.insert(key, peer);
        }
        debug!(device = %self.config.device, peers = set.by_key.len(), "wireguard peers applied");
        *self.peers.write().expect("peer set lock") = Arc::new(set);
    }

    fn new_tunn(&self, peer_key: &Key) -> Tunn {
        let mut index = self.next_index.lock().expect("index lock");
        *index = (*index + 1) & 0x00ff_ffff;
        let keepalive = Some(self.config.persistent_keepalive).filter(|k| *k > 0);
        Tunn::new(
            StaticSecret::from(self.config.private_key),
            PublicKey::from(*peer_key),
            self.config.psk,
            keepalive,
            *index,
            None,
        )
    }

    fn send_to(&self, peer: &WgPeer, packet: &[u8]) {
        match self.sock.send_to(packet, &peer.endpoint) {
            Ok(_) => {
                Counters::add(&self.counters.sent_packets, 1);
                Counters::add(&self.counters.sent_bytes, packet.len() as u64);
            }
            Err(_) => Counters::add(&self.counters.send_errors, 1),
        }
    }

    /// TUN → peers.
    fn send_loop(&self, tun: &TunQueue) {
        let mut packet = vec![0u8; 65535];
        let mut out = vec![0u8; BUF];
        loop {
            match tun.wait_readable(1000) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(error = %e, "wireguard data plane: polling the TUN failed; the sending worker stops");
                    return;
                }
            }
            let peers = self.snapshot();
            loop {
                let n = match tun.read(&mut packet) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                Counters::add(&self.counters.tun_reads, 1);
                let header = match IpHeader::parse(&packet[..n]) {
                    Ok(h) => h,
                    Err(reason) => {
                        self.counters.dropped(reason);
                        continue;
                    }
                };
                let Some(peer) = peers.route(header.dst) else {
                    self.counters.dropped(DropReason::NoPeer);
                    continue;
                };
                let result = peer.tunn.lock().expect("tunnel lock").encapsulate(&packet[..n], &mut out);
                match result {
                    TunnResult::WriteToNetwork(wire) => self.send_to(peer, wire),
                    TunnResult::Err(e) => debug!(error = ?e, "wireguard encapsulate"),
                    _ => {}
                }
            }
        }
    }

    /// Peers → TUN.
    fn receive_loop(&self, tun: &TunQueue) {
        let mut buf = vec![0u8; BUF];
        let mut out = vec![0u8; BUF];
        loop {
            // SAFETY: recv_from takes MaybeUninit bytes; an initialised buffer is a valid one.
            let uninit = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            let (n, from) = match self.sock.recv_from(uninit) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "wireguard data plane: receiving failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let Some(source) = from.as_socket() else { continue };
            let peers = self.snapshot();
            let Some(peer) = peers.by_source.get(&source.ip()) else {
                self.counters.dropped(DropReason::NotFromPeer);
                continue;
            };
            let mut tunn = peer.tunn.lock().expect("tunnel lock");
            let mut result = tunn.decapsulate(Some(source.ip()), &buf[..n], &mut out);
            loop {
                match result {
                    TunnResult::WriteToNetwork(wire) => {
                        self.send_to(peer, wire);
                        // Packets queued while the handshake ran go out now.
                        result = tunn.decapsulate(None, &[], &mut out);
                        continue;
                    }
                    TunnResult::WriteToTunnelV4(inner, src) => self.deliver(tun, peer, inner, IpAddr::V4(src)),
                    TunnResult::WriteToTunnelV6(inner, src) => self.deliver(tun, peer, inner, IpAddr::V6(src)),
                    TunnResult::Err(e) => self.count_error(e),
                    TunnResult::Done => {}
                }
                break;
            }
        }
    }

    fn deliver(&self, tun: &TunQueue, peer: &WgPeer, inner: &[u8], src: IpAddr) {
        if !peer.allows(src) {
            self.counters.dropped(DropReason::NotFromPeer);
            return;
        }
        Counters::add(&self.counters.received_packets, 1);
        Counters::add(&self.counters.received_bytes, inner.len() as u64);
        match tun.write(inner) {
            Ok(_) => Counters::add(&self.counters.tun_writes, 1),
            Err(_) => Counters::add(&self.counters.tun_write_errors, 1),
        }
    }

    fn count_error(&self, e: WireGuardError) {
        debug!(error = ?e, "wireguard packet refused");
        self.counters.dropped(DropReason::NotFromPeer);
    }

    /// Handshake retries, rekeys, keepalives; new forwarding tables.
    fn timer_loop(&self, mut forwarding: ForwardingReceiver) {
        let mut out = vec![0u8; BUF];
        loop {
            if forwarding.has_changed().unwrap_or(false) {
                let table = forwarding.borrow_and_update().clone();
                self.apply(&table);
            }
            let peers = self.snapshot();
            for peer in peers.by_key.values() {
                let result = peer.tunn.lock().expect("tunnel lock").update_timers(&mut out);
                match result {
                    TunnResult::WriteToNetwork(wire) => self.send_to(peer, wire),
                    TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                    TunnResult::Err(e) => debug!(error = ?e, "wireguard timers"),
                    _ => {}
                }
            }
            std::thread::sleep(TICK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_group_a_tables_subnets_by_key_and_keep_the_devices_families() {
        let mut table = ForwardingTable::default();
        table.insert_keyed("10.244.2.0/24".parse().unwrap(), "198.18.0.2:51820".parse().unwrap(), [2; 32]);
        table.insert_keyed("fd00:0:0:2::/64".parse().unwrap(), "198.18.0.2:51820".parse().unwrap(), [2; 32]);
        table.insert_keyed("10.244.3.0/24".parse().unwrap(), "198.18.0.3:51820".parse().unwrap(), [3; 32]);
        table.insert("10.244.4.0/24".parse().unwrap(), "198.18.0.4:8285".parse().unwrap());
        let v4 = peers_from_table(&table, &[Family::V4]);
        assert_eq!(v4.len(), 2, "an entry without a key is no WireGuard peer");
        assert_eq!(v4[&[2; 32]].allowed, vec!["10.244.2.0/24".parse::<IpNetwork>().unwrap()]);
        let both = peers_from_table(&table, &[Family::V4, Family::V6]);
        assert_eq!(both[&[2; 32]].allowed.len(), 2);
        assert_eq!(both[&[3; 32]].endpoint, "198.18.0.3:51820".parse().unwrap());
    }

    /// Two tunnels as two hosts would run them: the first packet starts a handshake, the answer completes it,
    /// and the queued packet arrives decrypted. What the data plane relies on from boringtun.
    #[test]
    fn two_tunnels_handshake_and_carry_a_packet() {
        let (ka, kb) =
            (super::super::keys::generate_private_key().unwrap(), super::super::keys::generate_private_key().unwrap());
        let (pa, pb) = (super::super::keys::public_key(&ka), super::super::keys::public_key(&kb));
        let psk = Some([9u8; 32]);
        let mut a = Tunn::new(StaticSecret::from(ka), PublicKey::from(pb), psk, None, 1, None);
        let mut b = Tunn::new(StaticSecret::from(kb), PublicKey::from(pa), psk, None, 2, None);
        let mut packet = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 244, 1, 2, 10, 244, 2, 2];
        packet.extend_from_slice(b"weft-marker!");
        packet[3] = packet.len() as u8;
        let (mut out_a, mut out_b, mut out) = (vec![0u8; BUF], vec![0u8; BUF], vec![0u8; BUF]);
        let TunnResult::WriteToNetwork(init) = a.encapsulate(&packet, &mut out_a) else { panic!("no handshake") };
        let init = init.to_vec();
        assert!(!init.windows(12).any(|w| w == b"weft-marker!"));
        let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, &init, &mut out_b) else { panic!("no response") };
        let resp = resp.to_vec();
        let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, &resp, &mut out_a) else { panic!() };
        let keepalive = keepalive.to_vec();
        let TunnResult::WriteToNetwork(data) = a.decapsulate(None, &[], &mut out_a) else { panic!("queued") };
        let data = data.to_vec();
        assert!(!data.windows(12).any(|w| w == b"weft-marker!"), "the payload is encrypted");
        assert!(matches!(b.decapsulate(None, &keepalive, &mut out), TunnResult::Done));
        match b.decapsulate(None, &data, &mut out) {
            TunnResult::WriteToTunnelV4(inner, src) => {
                assert_eq!(inner, &packet[..]);
                assert_eq!(src, std::net::Ipv4Addr::new(10, 244, 1, 2));
            }
            other => panic!("{other:?}"),
        }
    }
}
