//! The udp data plane: per TUN queue one sending worker (TUN → peers) and one receiving worker (peers → TUN),
//! plain threads on blocking sockets, each following the forwarding table on its watch channel.
//!
//! With every technique on (the default, [`Offloads::ALL`]) the TUN carries virtio-net headers with TSO/USO, so
//! one read is up to 64 KiB of one flow; it is cut into wire packets by [`offload::segment`] and sent as one UDP
//! GSO datagram train (`UDP_SEGMENT`), many trains per `sendmmsg`. The receiving socket has UDP GRO, so one
//! `recvmmsg` slot holds a train from a peer; its packets are merged by [`offload::Coalescer`] into
//! super-packets, one TUN write each. Each technique has its own switch ([`Offloads`]); with all off, every packet
//! is its own read, datagram and write: flannel's own data path.

use std::collections::HashSet;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{info, warn};

use super::counters::Counters;
use super::offload::{self, Coalescer, VnetHdr, VNET_HDR_LEN};
use super::packet::{decrement_hop_limit, net_unreachable, DropReason, IpHeader};
use super::switches::Offloads;
use super::tun::{TunError, TunOffloads, TunQueue};
use crate::forwarding::{ForwardingReceiver, ForwardingTable};
use crate::Family;

/// TUN reads gathered before one `sendmmsg`.
const TX_BATCH: usize = 32;
/// Datagram slots per `recvmmsg`; with GRO each holds up to 64 KiB.
const RX_BATCH: usize = 16;
const MAX_READ: usize = 65535 + VNET_HDR_LEN;
/// The most one UDP GSO send may carry: an IPv4 datagram's payload limit.
const MAX_GSO_BYTES: usize = 65507;
/// The kernel's UDP_MAX_SEGMENTS on older kernels (newer ones allow 128).
const MAX_GSO_SEGMENTS: usize = 64;

/// How the data plane is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneConfig {
    pub device: String,
    pub queues: usize,
    /// Where the UDP sockets bind (underlay address, Port).
    pub bind: SocketAddr,
    /// The source of ICMP errors (see [`super::icmp_source`]).
    pub icmp_source: Option<IpAddr>,
    /// Virtio-net headers with TSO/USO on the TUN, UDP GSO on send, UDP GRO on receive: each on or off.
    pub offloads: Offloads,
    /// SO_SNDBUF/SO_RCVBUF of each socket (forced past rmem_max/wmem_max as root).
    pub socket_buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("udp backend socket on {addr}: {what}: {source}")]
    Socket {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting udp data plane worker: {0}")]
    Spawn(#[source] io::Error),
}

/// A running data plane: what it got from the kernel. Its workers run until the process exits.
#[derive(Debug)]
pub struct DataPlane {
    /// What the TUN granted (none when TUN offloads are off).
    pub tun_offloads: TunOffloads,
    pub queues: usize,
}

/// Opens every TUN queue and socket, then starts the workers. Everything that can fail does so before any
/// worker runs.
pub fn start(
    config: &PlaneConfig,
    forwarding: ForwardingReceiver,
    counters: Arc<Counters>,
) -> Result<DataPlane, PlaneError> {
    let mut queues = Vec::new();
    let mut offloads = TunOffloads { tso: false, uso: false };
    for _ in 0..config.queues.max(1) {
        let (queue, got) = TunQueue::open(&config.device, config.offloads.tun)?;
        queue.set_nonblocking().map_err(|source| {
            PlaneError::Tun(TunError::Ioctl { device: config.device.clone(), what: "O_NONBLOCK", source })
        })?;
        offloads = got;
        queues.push((Arc::new(queue), Arc::new(open_socket(config)?)));
    }
    for (i, (tun, sock)) in queues.iter().enumerate() {
        let tx = Worker {
            tun: tun.clone(),
            sock: sock.clone(),
            peers: Peers::new(forwarding.clone()),
            counters: counters.clone(),
            icmp_source: config.icmp_source,
            gso: config.offloads.gso,
            gro: config.offloads.gro,
        };
        let rx = tx.clone_parts();
        spawn(format!("weft-udp-tx{i}"), move || tx.send_loop())?;
        spawn(format!("weft-udp-rx{i}"), move || rx.receive_loop())?;
    }
    info!(
        device = %config.device,
        queues = queues.len(),
        bind = %config.bind,
        techniques = %config.offloads,
        tun_offloads = ?offloads,
        "udp data plane running"
    );
    Ok(DataPlane { tun_offloads: offloads, queues: queues.len() })
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), PlaneError> {
    std::thread::Builder::new().name(name).spawn(f).map(|_| ()).map_err(PlaneError::Spawn)
}

fn open_socket(config: &PlaneConfig) -> Result<Socket, PlaneError> {
    let addr = config.bind;
    // One socket per queue on the same port; the kernel spreads peers across them by their address and port.
    tunnel_socket(addr, config.socket_buffer, true, config.offloads.gro).map_err(|(what, source)| PlaneError::Socket {
        addr,
        what,
        source,
    })
}

/// A UDP socket for a tunnel's data plane (udp and wireguard): large buffers, optionally SO_REUSEPORT and UDP_GRO,
/// bound to `addr`. An error names the step that failed.
pub(crate) fn tunnel_socket(
    addr: SocketAddr,
    buffer: usize,
    reuse_port: bool,
    gro: bool,
) -> Result<Socket, (&'static str, io::Error)> {
    let step = |what: &'static str| move |source| (what, source);
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(step("socket"))?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(step("SO_REUSEPORT"))?;
    }
    let size = buffer as libc::c_int;
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
        // Root may exceed the sysctl limits; otherwise the plain options below apply what they allow.
        if set_int(&sock, libc::SOL_SOCKET, opt, size).is_err() {
            let _ = sock.set_send_buffer_size(buffer);
            let _ = sock.set_recv_buffer_size(buffer);
        }
    }
    if gro {
        set_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 1).map_err(step("UDP_GRO"))?;
    }
    sock.bind(&addr.into()).map_err(step("bind"))?;
    Ok(sock)
}

fn set_int(sock: &Socket, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int from a valid pointer.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The forwarding table as one worker sees it, and the peers' addresses for the source check.
struct Peers {
    rx: ForwardingReceiver,
    table: Arc<ForwardingTable>,
    sources: HashSet<IpAddr>,
}

impl Peers {
    fn new(mut rx: ForwardingReceiver) -> Peers {
        let table = rx.borrow_and_update().clone();
        let sources = table.entries.values().map(SocketAddr::ip).collect();
        Peers { rx, table, sources }
    }

    /// Takes the newest table if one was published (a version check when nothing changed).
    fn refresh(&mut self) {
        if self.rx.has_changed().unwrap_or(false) {
            self.table = self.rx.borrow_and_update().clone();
            self.sources = self.table.entries.values().map(SocketAddr::ip).collect();
        }
    }
}

struct Worker {
    tun: Arc<TunQueue>,
    sock: Arc<Socket>,
    peers: Peers,
    counters: Arc<Counters>,
    icmp_source: Option<IpAddr>,
    /// UDP GSO on send (switched off for good if the kernel refuses it).
    gso: bool,
    /// UDP GRO on the socket: a received datagram may be a train.
    gro: bool,
}

/// One datagram train to send: `out[start..start + len]`, cut every `segment_len` bytes.
struct Train {
    peer: SocketAddr,
    dst: SockAddr,
    start: usize,
    len: usize,
    segment_len: usize,
}

impl Worker {
    fn clone_parts(&self) -> Worker {
        Worker {
            tun: self.tun.clone(),
            sock: self.sock.clone(),
            peers: Peers::new(self.peers.rx.clone()),
            counters: self.counters.clone(),
            icmp_source: self.icmp_source,
            gso: self.gso,
            gro: self.gro,
        }
    }

    /// TUN → peers.
    fn send_loop(mut self) {
        let mut read_buf = vec![0u8; MAX_READ];
        let mut out: Vec<u8> = Vec::with_capacity(TX_BATCH * 70_000);
        let mut trains: Vec<Train> = Vec::with_capacity(TX_BATCH * 2);
        let mut warned = false;
        loop {
            match self.tun.wait_readable(1000) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(error = %e, "udp data plane: polling the TUN failed; the sending worker stops");
                    return;
                }
            }
            self.peers.refresh();
            out.clear();
            trains.clear();
            for _ in 0..TX_BATCH {
                let n = match self.tun.read(&mut read_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if !warned {
                            warn!(error = %e, "udp data plane: reading the TUN failed");
                            warned = true;
                        }
                        break;
                    }
                };
                Counters::add(&self.counters.tun_reads, 1);
                if let Err(reason) = self.route(&mut read_buf[..n], &mut out, &mut trains) {
                    self.counters.dropped(reason);
                }
            }
            self.flush(&out, &trains);
        }
    }

    /// One TUN read: checked, hop limit decremented, cut into wire packets for its peer, or answered.
    fn route(&self, read: &mut [u8], out: &mut Vec<u8>, trains: &mut Vec<Train>) -> Result<(), DropReason> {
        let (vnet, packet) = if self.tun.vnet_hdr {
            let (h, p) = read.split_at_mut(VNET_HDR_LEN.min(read.len()));
            (VnetHdr::parse(h)?, p)
        } else {
            (VnetHdr::default(), read)
        };
        let header = IpHeader::parse(packet)?;
        if header.family != Family::V4 {
            return Err(DropReason::WrongFamily);
        }
        let Some(dst) = self.peers.table.lookup(header.dst) else {
            self.answer_unreachable(packet, &header);
            return Err(DropReason::NoPeer);
        };
        decrement_hop_limit(packet, &header)?;
        let start = out.len();
        let segments = match offload::segment(&vnet, packet, out) {
            Ok(s) => s,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let (len, segment_len) = (segments.total_len, segments.segment_len);
        // Consecutive reads for one peer form one train while it stays valid for UDP_SEGMENT (equal segments, only
        // the last shorter): without TUN offloads this is what gives GSO several packets to carry.
        match trains.last_mut() {
            Some(last) if joins_train(last, dst, start, segment_len) => last.len += len,
            _ => trains.push(Train { peer: dst, dst: dst.into(), start, len, segment_len }),
        }
        Ok(())
    }

    fn answer_unreachable(&self, packet: &[u8], header: &IpHeader) {
        let Some(source) = self.icmp_source else { return };
        let Some(icmp) = net_unreachable(packet, header, source) else { return };
        let written = if self.tun.vnet_hdr {
            let mut framed = VnetHdr::default().encode().to_vec();
            framed.extend_from_slice(&icmp);
            self.tun.write(&framed)
        } else {
            self.tun.write(&icmp)
        };
        match written {
            Ok(_) => Counters::add(&self.counters.icmp_unreachable, 1),
            Err(_) => Counters::add(&self.counters.tun_write_errors, 1),
        }
    }

    /// Sends the batch: with GSO one message per train (split where a train exceeds what one send may carry),
    /// without it one message per wire packet; all in as few `sendmmsg` calls as the kernel allows.
    fn flush(&mut self, out: &[u8], trains: &[Train]) {
        // (train index, offset, length, segment length or 0 for a single packet)
        let mut messages: Vec<(usize, usize, usize, u16)> = Vec::new();
        for (t, train) in trains.iter().enumerate() {
            let per_send =
                if self.gso { (MAX_GSO_BYTES / train.segment_len.max(1)).clamp(1, MAX_GSO_SEGMENTS) } else { 1 };
            let chunk = per_send * train.segment_len;
            let mut at = train.start;
            let end = train.start + train.len;
            while at < end {
                let len = chunk.min(end - at);
                let gso = if len > train.segment_len { train.segment_len as u16 } else { 0 };
                messages.push((t, at, len, gso));
                at += len;
            }
        }
        let mut sent = 0;
        while sent < messages.len() {
            let batch = &messages[sent..];
            match send_mmsg(self.sock.as_raw_fd(), out, trains, batch) {
                Ok(n) => {
                    for &(_, _, len, gso) in &batch[..n] {
                        let count = if gso == 0 { 1 } else { len.div_ceil(usize::from(gso)) };
                        Counters::add(&self.counters.sent_packets, count as u64);
                        Counters::add(&self.counters.sent_bytes, len as u64);
                    }
                    sent += n.max(1);
                    if n == 0 {
                        Counters::add(&self.counters.send_errors, 1);
                    }
                }
                Err(e) => {
                    // The first message failed (a peer unreachable, say): count it and go on with the rest.
                    if e.raw_os_error() == Some(libc::EIO) && self.gso {
                        warn!("udp data plane: the kernel refused a UDP GSO send (EIO); sending packet by packet");
                        self.gso = false;
                    }
                    Counters::add(&self.counters.send_errors, 1);
                    sent += 1;
                }
            }
        }
    }

    /// Peers → TUN.
    fn receive_loop(mut self) {
        let mut slots = RecvSlots::new(if self.gro { 65535 } else { MAX_READ });
        let mut coalescer = Coalescer::default();
        let mut warned = false;
        loop {
            let n = match slots.receive(self.sock.as_raw_fd()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "udp data plane: receiving failed");
                        warned = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            self.peers.refresh();
            for i in 0..n {
                let (data, source, segment) = slots.message(i);
                let segment = if segment == 0 { data.len().max(1) } else { segment };
                let from_peer = source.is_some_and(|s| self.peers.sources.contains(&s.ip()));
                for packet in data.chunks(segment) {
                    if !from_peer {
                        self.counters.dropped(DropReason::NotFromPeer);
                        continue;
                    }
                    match self.accept(packet) {
                        Ok(header) => {
                            Counters::add(&self.counters.received_packets, 1);
                            Counters::add(&self.counters.received_bytes, header.total_len as u64);
                            let packet = &packet[..header.total_len];
                            if self.tun.vnet_hdr {
                                let _ = coalescer.push(packet);
                            } else {
                                self.write_tun(packet);
                            }
                        }
                        Err(reason) => self.counters.dropped(reason),
                    }
                }
            }
            let (tun, counters) = (&self.tun, &self.counters);
            coalescer.drain(|b| match tun.write(b) {
                Ok(_) => Counters::add(&counters.tun_writes, 1),
                Err(_) => Counters::add(&counters.tun_write_errors, 1),
            });
        }
    }

    /// A packet from a peer: a well-formed IPv4 packet with hop limit left (the sender decremented it).
    fn accept(&self, packet: &[u8]) -> Result<IpHeader, DropReason> {
        let header = IpHeader::parse(packet)?;
        if header.family != Family::V4 {
            return Err(DropReason::WrongFamily);
        }
        if header.hop_limit == 0 {
            return Err(DropReason::TtlExpired);
        }
        Ok(header)
    }

    fn write_tun(&self, packet: &[u8]) {
        match self.tun.write(packet) {
            Ok(_) => Counters::add(&self.counters.tun_writes, 1),
            Err(_) => Counters::add(&self.counters.tun_write_errors, 1),
        }
    }
}

/// Whether the wire packets just appended at `start` (`segment_len` each, the last possibly shorter) may extend
/// `last`: same peer, directly behind it, same segment size, and `last` not ending in a shorter packet.
fn joins_train(last: &Train, peer: SocketAddr, start: usize, segment_len: usize) -> bool {
    last.peer == peer
        && last.start + last.len == start
        && last.segment_len == segment_len
        && segment_len > 0
        && last.len % segment_len == 0
}

/// Control-message space for one u16 (UDP_SEGMENT) or one int (UDP_GRO), 8-byte aligned.
type CmsgBuf = [u64; 4];

/// `sendmmsg` over `batch`; returns how many messages the kernel took.
fn send_mmsg(fd: i32, out: &[u8], trains: &[Train], batch: &[(usize, usize, usize, u16)]) -> io::Result<usize> {
    let batch = &batch[..batch.len().min(1024)];
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(batch.len());
    let mut cmsgs: Vec<CmsgBuf> = vec![[0; 4]; batch.len()];
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(batch.len());
    for &(_, at, len, _) in batch {
        iovs.push(libc::iovec { iov_base: out[at..].as_ptr() as *mut libc::c_void, iov_len: len });
    }
    for (i, &(t, _, _, gso)) in batch.iter().enumerate() {
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = trains[t].dst.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = trains[t].dst.len();
        msg.msg_iov = &mut iovs[i];
        msg.msg_iovlen = 1;
        if gso != 0 {
            let space = size_of::<CmsgBuf>();
            msg.msg_control = cmsgs[i].as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is arithmetic.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
            debug_assert!(msg.msg_controllen <= space);
            // SAFETY: msg_control points at `space` bytes, enough for one header and a u16.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), gso);
            }
        }
        hdrs.push(libc::mmsghdr { msg_hdr: msg, msg_len: 0 });
    }
    // SAFETY: every header points at live iovecs, addresses and control buffers of this frame.
    let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as u32, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Preallocated `recvmmsg` slots: buffers, source addresses and control space.
struct RecvSlots {
    bufs: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvSlots {
    fn new(size: usize) -> RecvSlots {
        let mut bufs: Vec<Vec<u8>> = (0..RX_BATCH).map(|_| vec![0u8; size]).collect();
        let iovs = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: all-zero sockaddr_storage and mmsghdr are valid values.
        let names = (0..RX_BATCH).map(|_| unsafe { zeroed() }).collect();
        let hdrs = (0..RX_BATCH).map(|_| unsafe { zeroed() }).collect();
        RecvSlots { bufs, names, cmsgs: vec![[0; 4]; RX_BATCH], iovs, hdrs }
    }

    /// Blocks until at least one datagram is there; returns how many slots were filled.
    fn receive(&mut self, fd: i32) -> io::Result<usize> {
        for i in 0..RX_BATCH {
            let msg = &mut self.hdrs[i].msg_hdr;
            msg.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            msg.msg_iov = &mut self.iovs[i];
            msg.msg_iovlen = 1;
            msg.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            msg.msg_controllen = size_of::<CmsgBuf>();
            msg.msg_flags = 0;
        }
        // SAFETY: every slot points at its own live buffer, name and control space.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), RX_BATCH as u32, libc::MSG_WAITFORONE, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Slot `i`: the data, the sender, and the GRO segment size (0 when the datagram was not coalesced).
    fn message(&self, i: usize) -> (&[u8], Option<SocketAddr>, usize) {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.bufs[i].len());
        let source = socket_addr(&self.names[i]);
        let mut segment = 0;
        // SAFETY: walking the control messages the kernel wrote, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    segment = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) as usize;
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        (&self.bufs[i][..len], source, segment)
    }
}

/// The sender recvmmsg wrote into a `sockaddr_storage`.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and aligned enough for.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(peer: &str, start: usize, len: usize, segment_len: usize) -> Train {
        let peer: SocketAddr = peer.parse().unwrap();
        Train { peer, dst: peer.into(), start, len, segment_len }
    }

    #[test]
    fn consecutive_reads_for_one_peer_extend_a_train_only_while_it_stays_valid_for_udp_segment() {
        let a: SocketAddr = "198.18.0.2:8285".parse().unwrap();
        let b: SocketAddr = "198.18.0.3:8285".parse().unwrap();
        let full = train("198.18.0.2:8285", 0, 2 * 1472, 1472);
        assert!(joins_train(&full, a, 2 * 1472, 1472), "equal packets right behind it");
        assert!(!joins_train(&full, b, 2 * 1472, 1472), "another peer");
        assert!(!joins_train(&full, a, 2 * 1472, 52), "another segment size");
        assert!(!joins_train(&full, a, 3 * 1472, 1472), "not directly behind it");
        let short_end = train("198.18.0.2:8285", 0, 1472 + 600, 1472);
        assert!(!joins_train(&short_end, a, 1472 + 600, 1472), "a train ends at its shorter packet");
    }
}
