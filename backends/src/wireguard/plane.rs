//! The userspace WireGuard data plane: boringtun's protocol state machine per peer ([`Tunn`]) between the udp
//! backend's TUN queues ([`TunQueue`]) and one UDP socket per device.
//!
//! Three kinds of thread: per TUN queue a sending worker (read a packet, find its peer by destination in the
//! forwarding table, cut it into wire packets, encrypt, send as one UDP GSO train); one receiving worker (receive
//! a GRO train, find the peer by source address, decrypt, check the inner source against the peer's subnets,
//! coalesce, write to the TUN); and a timer worker that drives
//! handshakes, retransmits and keepalives every [`TICK`] and applies new forwarding tables. Peers whose key and
//! endpoint stay the same keep their session across table changes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnetwork::IpNetwork;
use socket2::{SockAddr, Socket};
use tracing::{debug, info, warn};

use super::keys::Key;
pub use super::peers::{peers_from_table, PeerSpec};
use crate::forwarding::{ForwardingReceiver, ForwardingTable};
use crate::udp::counters::Counters;
use crate::udp::offload::{self, Coalescer, VnetHdr, VNET_HDR_LEN};
use crate::udp::packet::{DropReason, IpHeader};
use crate::udp::plane::tunnel_socket;
use crate::udp::switches::Offloads;
use crate::udp::tun::{TunError, TunQueue};
use crate::Family;

/// How often the timer worker runs boringtun's timers (its own device ticks every 250 ms).
pub const TICK: Duration = Duration::from_millis(250);
/// A datagram: the largest TUN packet plus WireGuard's 32 bytes, and never below a handshake's 148.
const BUF: usize = 65535 + 32;
/// WireGuard's message type of a transport data packet (1-3 are the handshake and the cookie reply).
const DATA_MESSAGE: u8 = 4;
/// The kernel's UDP_MAX_SEGMENTS on older kernels.
const MAX_GSO_SEGMENTS: usize = 64;
/// The most one UDP GSO send may carry: an IPv4 datagram's payload limit.
const MAX_GSO_BYTES: usize = 65507;

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
    /// The udp backend's techniques, each on or off: TSO super-packets from the TUN, cut by its segmenter and
    /// encrypted packet by packet, decrypted packets merged by its coalescer (`tun`); one UDP GSO train per
    /// super-packet (`gso`); UDP GRO on receive (`gro`).
    pub offloads: Offloads,
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
        let (queue, _) = TunQueue::open(&config.device, config.offloads.tun)?;
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
    tunnel_socket(addr, config.socket_buffer, false, config.offloads.gro)
        .map_err(|(what, source)| WgPlaneError::Socket { addr, what, source })
}

/// One `sendmsg` of `train` to `dst`, cut by the kernel every `segment` bytes (UDP_SEGMENT).
fn send_gso(fd: i32, train: &[u8], dst: &SockAddr, segment: u16) -> io::Result<()> {
    let mut cmsg = [0u64; 4];
    let mut iov = libc::iovec { iov_base: train.as_ptr() as *mut libc::c_void, iov_len: train.len() };
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = dst.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = dst.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    // SAFETY: msg_control points at 32 bytes, enough for one header and a u16.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
    // SAFETY: the message points at live buffers of this frame.
    if unsafe { libc::sendmsg(fd, &msg, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `recvmsg`: the bytes, the sender, and the GRO segment size (0 when the datagram was not coalesced).
fn recv_gro(fd: i32, buf: &mut [u8], cmsg: &mut [u64; 8]) -> io::Result<(usize, Option<SocketAddr>, usize)> {
    // SAFETY: an all-zero sockaddr_storage and msghdr are valid values.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: every pointer in `msg` is to a live buffer of this frame.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut segment = 0;
    // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                segment = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as usize;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // SAFETY: the kernel wrote a sockaddr of `msg_namelen` bytes into the storage.
    let source = unsafe {
        SockAddr::new(std::mem::transmute::<libc::sockaddr_storage, socket2::SockAddrStorage>(name), msg.msg_namelen)
    };
    Ok(((n as usize).min(buf.len()), source.as_socket(), segment))
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

    /// TUN → peers: one read (a TSO super-packet with offloads), cut into wire-sized packets, each encrypted in
    /// turn under one lock of the peer's tunnel, sent as one UDP GSO train (encrypted packets of equal plaintext
    /// length have equal length, so only the last may be shorter, which is what UDP_SEGMENT wants).
    fn send_loop(&self, tun: &TunQueue) {
        let mut read = vec![0u8; 65535 + VNET_HDR_LEN];
        let mut plain: Vec<u8> = Vec::with_capacity(70_000);
        let mut wire = vec![0u8; 2 * BUF];
        let mut gso = self.config.offloads.gso;
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
                let n = match tun.read(&mut read) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                Counters::add(&self.counters.tun_reads, 1);
                if let Err(reason) = self.send_one(tun, &peers, &mut read[..n], &mut plain, &mut wire, &mut gso) {
                    self.counters.dropped(reason);
                }
            }
        }
    }

    fn send_one(
        &self,
        tun: &TunQueue,
        peers: &PeerSet,
        read: &mut [u8],
        plain: &mut Vec<u8>,
        wire: &mut [u8],
        gso: &mut bool,
    ) -> Result<(), DropReason> {
        let (vnet, packet) = if tun.vnet_hdr {
            let (h, p) = read.split_at_mut(VNET_HDR_LEN.min(read.len()));
            (VnetHdr::parse(h)?, &*p)
        } else {
            (VnetHdr::default(), &*read)
        };
        let header = IpHeader::parse(packet)?;
        let peer = peers.route(header.dst).ok_or(DropReason::NoPeer)?;
        plain.clear();
        let segments = offload::segment(&vnet, packet, plain)?;
        let seg_len = segments.segment_len.max(1);
        let mut tunn = peer.tunn.lock().expect("tunnel lock");
        // `wire[..train]` holds encrypted data packets of `train_seg` bytes each, the last possibly shorter.
        let (mut train, mut train_seg) = (0, 0);
        for chunk in plain.chunks(seg_len) {
            let full = train_seg != 0 && train / train_seg >= MAX_GSO_SEGMENTS;
            if full || train + chunk.len() + 48 > MAX_GSO_BYTES {
                self.flush_train(peer, &wire[..train], train_seg, gso);
                (train, train_seg) = (0, 0);
            }
            let (is_data, len) = match tunn.encapsulate(chunk, &mut wire[train..]) {
                TunnResult::WriteToNetwork(out) => (out.first() == Some(&DATA_MESSAGE), out.len()),
                TunnResult::Err(e) => {
                    debug!(error = ?e, "wireguard encapsulate");
                    continue;
                }
                _ => continue,
            };
            if !is_data {
                // A handshake initiation: the packet was queued until the session exists.
                let initiation = wire[train..train + len].to_vec();
                self.send_to(peer, &initiation);
                continue;
            }
            // A packet joins the train if the train has not yet ended with a shorter one and it is no longer.
            let joins = train_seg == 0 || (train % train_seg == 0 && len <= train_seg);
            if !joins {
                self.flush_train(peer, &wire[..train], train_seg, gso);
                wire.copy_within(train..train + len, 0);
                (train, train_seg) = (0, 0);
            }
            if train_seg == 0 {
                train_seg = len;
            }
            train += len;
        }
        self.flush_train(peer, &wire[..train], train_seg, gso);
        Ok(())
    }

    /// Sends `train` (packets of `seg` bytes, the last possibly shorter) as one UDP GSO send, or packet by packet
    /// without GSO (or once the kernel has refused it).
    fn flush_train(&self, peer: &WgPeer, train: &[u8], seg: usize, gso: &mut bool) {
        if train.is_empty() {
            return;
        }
        if *gso && train.len() > seg {
            match send_gso(self.sock.as_raw_fd(), train, &peer.endpoint, seg as u16) {
                Ok(()) => {
                    Counters::add(&self.counters.sent_packets, train.len().div_ceil(seg) as u64);
                    Counters::add(&self.counters.sent_bytes, train.len() as u64);
                    return;
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) || e.raw_os_error() == Some(libc::EINVAL) => {
                    warn!("wireguard data plane: the kernel refused a UDP GSO send; sending packet by packet");
                    *gso = false;
                }
                Err(_) => {
                    Counters::add(&self.counters.send_errors, 1);
                    return;
                }
            }
        }
        for packet in train.chunks(seg.max(1)) {
            self.send_to(peer, packet);
        }
    }

    /// Peers → TUN. With GRO one receive holds a train of datagrams from one sender; each is decrypted, and the
    /// packets are merged by the coalescer into super-packets, one TUN write each.
    fn receive_loop(&self, tun: &TunQueue) {
        let mut buf = vec![0u8; 65535];
        let mut out = vec![0u8; BUF];
        let mut coalescer = Coalescer::default();
        let mut cmsg = [0u64; 8];
        loop {
            let (n, source, segment) = match recv_gro(self.sock.as_raw_fd(), &mut buf, &mut cmsg) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "wireguard data plane: receiving failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let Some(source) = source else { continue };
            let peers = self.snapshot();
            let Some(peer) = peers.by_source.get(&source.ip()) else {
                self.counters.dropped(DropReason::NotFromPeer);
                continue;
            };
            let segment = if segment == 0 { n.max(1) } else { segment };
            let mut tunn = peer.tunn.lock().expect("tunnel lock");
            for datagram in buf[..n].chunks(segment) {
                let mut result = tunn.decapsulate(Some(source.ip()), datagram, &mut out);
                loop {
                    match result {
                        TunnResult::WriteToNetwork(wire) => {
                            self.send_to(peer, wire);
                            // Packets queued while the handshake ran go out now.
                            result = tunn.decapsulate(None, &[], &mut out);
                            continue;
                        }
                        TunnResult::WriteToTunnelV4(inner, src) => {
                            self.deliver(tun, &mut coalescer, peer, inner, IpAddr::V4(src))
                        }
                        TunnResult::WriteToTunnelV6(inner, src) => {
                            self.deliver(tun, &mut coalescer, peer, inner, IpAddr::V6(src))
                        }
                        TunnResult::Err(e) => self.count_error(e),
                        TunnResult::Done => {}
                    }
                    break;
                }
            }
            drop(tunn);
            let counters = &self.counters;
            coalescer.drain(|b| match tun.write(b) {
                Ok(_) => Counters::add(&counters.tun_writes, 1),
                Err(_) => Counters::add(&counters.tun_write_errors, 1),
            });
        }
    }

    fn deliver(&self, tun: &TunQueue, coalescer: &mut Coalescer, peer: &WgPeer, inner: &[u8], src: IpAddr) {
        if !peer.allows(src) {
            self.counters.dropped(DropReason::NotFromPeer);
            return;
        }
        Counters::add(&self.counters.received_packets, 1);
        Counters::add(&self.counters.received_bytes, inner.len() as u64);
        if tun.vnet_hdr {
            if let Err(reason) = coalescer.push(inner) {
                self.counters.dropped(reason);
            }
            return;
        }
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
