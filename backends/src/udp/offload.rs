//! Offloads between the TUN device and the wire, pure: segmentation of the kernel's TSO/USO super-packets (a
//! virtio-net header in front of up to 64 KiB) into wire-sized IP packets, and coalescing of consecutive TCP
//! segments received from peers back into super-packets for one TUN write.
//!
//! Both directions work on IP packets only; flannel's wire format has one whole IP packet per UDP datagram, so a
//! super-packet never crosses the wire. The segments of one super-packet are all the same size except the last,
//! which is exactly what one UDP GSO send (`UDP_SEGMENT`) wants.

use crate::Family;

use super::packet::{
    fold, pseudo_header_sum, set_ipv4_header_checksum, set_transport_checksum, sum_words, DropReason, IpHeader,
    MAX_IP_PACKET, PROTO_TCP, PROTO_UDP,
};

/// Bytes of `struct virtio_net_hdr` in front of every packet on a TUN opened with IFF_VNET_HDR.
pub const VNET_HDR_LEN: usize = 10;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;
pub const F_NEEDS_CSUM: u8 = 1;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr` (fields in host byte order, as TUN uses them on a little-endian host without
/// TUNSETVNETBE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(bytes: &[u8]) -> Result<VnetHdr, DropReason> {
        let b: &[u8; VNET_HDR_LEN] =
            bytes.get(..VNET_HDR_LEN).and_then(|s| s.try_into().ok()).ok_or(DropReason::Truncated)?;
        let word = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Wire packets cut from one TUN read, back to back in the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    /// The length of every segment but the last, which may be shorter (the UDP GSO segment size).
    pub segment_len: usize,
    /// All segments together.
    pub total_len: usize,
}

/// Cuts the packet read from the TUN (`vnet` is its offload header, `packet` the IP packet) into wire packets
/// appended to `out`, with every checksum complete. A packet without GSO is appended whole (its checksum finished
/// if the kernel left it partial). The IP header (TTL included) is copied from the super-packet.
pub fn segment(vnet: &VnetHdr, packet: &[u8], out: &mut Vec<u8>) -> Result<Segments, DropReason> {
    let header = IpHeader::parse(packet)?;
    let packet = &packet[..header.total_len];
    let gso = vnet.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let start = out.len();
        out.extend_from_slice(packet);
        if vnet.flags & F_NEEDS_CSUM != 0 {
            // The checksum must lie past the IP header: one inside it would overwrite the header itself.
            if usize::from(vnet.csum_start) < header.header_len {
                out.truncate(start);
                return Err(DropReason::BadOffload);
            }
            if let Err(e) = finish_partial_checksum(&mut out[start..], vnet) {
                out.truncate(start);
                return Err(e);
            }
        }
        return Ok(Segments { count: 1, segment_len: packet.len(), total_len: packet.len() });
    }
    let protocol = match (gso, header.family) {
        (GSO_TCPV4, Family::V4) | (GSO_TCPV6, Family::V6) => PROTO_TCP,
        (GSO_UDP_L4, _) => PROTO_UDP,
        _ => return Err(DropReason::BadOffload),
    };
    if header.protocol != protocol || header.fragment || usize::from(vnet.csum_start) != header.header_len {
        return Err(DropReason::BadOffload);
    }
    let l4_len = match protocol {
        PROTO_TCP => usize::from(*packet.get(header.header_len + 12).ok_or(DropReason::BadOffload)? >> 4) * 4,
        _ => 8,
    };
    let headers = header.header_len + l4_len;
    let l4_min = if protocol == PROTO_TCP { 20 } else { 8 };
    if l4_len < l4_min || headers > packet.len() || vnet.gso_size == 0 {
        return Err(DropReason::BadOffload);
    }
    let mss = usize::from(vnet.gso_size);
    let payload = &packet[headers..];
    if payload.is_empty() {
        // Nothing to cut: send the header alone, checksummed.
        let start = out.len();
        out.extend_from_slice(packet);
        set_transport_checksum(&mut out[start..], &header, packet.len());
        return Ok(Segments { count: 1, segment_len: packet.len(), total_len: packet.len() });
    }
    let count = payload.len().div_ceil(mss);
    let start_len = out.len();
    let seq = (protocol == PROTO_TCP)
        .then(|| u32::from_be_bytes(packet[header.header_len + 4..header.header_len + 8].try_into().expect("4 bytes")));
    let ip_id = u16::from_be_bytes([packet[4], packet[5]]);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let at = out.len();
        out.extend_from_slice(&packet[..headers]);
        out.extend_from_slice(chunk);
        let seg = &mut out[at..];
        let total = seg.len();
        match header.family {
            Family::V4 => {
                seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                seg[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
                set_ipv4_header_checksum(seg, header.header_len);
            }
            Family::V6 => seg[4..6].copy_from_slice(&((total - header.header_len) as u16).to_be_bytes()),
        }
        let l4 = header.header_len;
        if let Some(seq) = seq {
            let this_seq = seq.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&this_seq.to_be_bytes());
            let last = i + 1 == count;
            if !last {
                seg[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[l4 + 13] &= !TCP_CWR;
            }
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&((total - l4) as u16).to_be_bytes());
        }
        set_transport_checksum(seg, &header, total);
    }
    let total_len = out.len() - start_len;
    Ok(Segments { count, segment_len: headers + mss.min(payload.len()), total_len })
}

/// Completes a checksum the kernel left partial (CHECKSUM_PARTIAL): the field holds the pseudo-header sum, the
/// sum over everything from `csum_start` goes in.
fn finish_partial_checksum(packet: &mut [u8], vnet: &VnetHdr) -> Result<(), DropReason> {
    let start = usize::from(vnet.csum_start);
    let field = start + usize::from(vnet.csum_offset);
    if field + 2 > packet.len() {
        return Err(DropReason::BadOffload);
    }
    let c = !fold(sum_words(0, &packet[start..]));
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Merges runs of TCP segments of one flow (consecutive sequence numbers, equal headers apart from lengths, IDs
/// and checksums, equal payload sizes with a possibly shorter last one) into super-packets for the TUN. Anything
/// else passes through alone. Packets of one flow keep their order; flows are independent.
#[derive(Debug, Default)]
pub struct Coalescer {
    items: Vec<Item>,
    /// Buffers of earlier batches, reused.
    spare: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Item {
    /// Virtio header space, then the IP packet.
    buf: Vec<u8>,
    header: IpHeader,
    /// Segments merged so far; 0 for a packet that takes no more (not TCP data, or flow closed).
    segments: usize,
    mss: usize,
    next_seq: u32,
    tcp_len: usize,
}

/// The most a coalesced packet may hold: the IP length field's limit.
const MAX_COALESCED: usize = MAX_IP_PACKET;

impl Coalescer {
    /// Adds one validated IP packet (hop limit already handled) to the batch.
    pub fn push(&mut self, packet: &[u8]) -> Result<(), DropReason> {
        let header = IpHeader::parse(packet)?;
        let packet = &packet[..header.total_len];
        let tcp = tcp_data(packet, &header);
        if let Some((seq, tcp_len, payload)) = tcp {
            if let Some(item) =
                self.items.iter_mut().rev().find(|i| i.segments > 0 && same_flow(&i.buf, packet, &header))
            {
                if item.try_append(packet, &header, seq, tcp_len, payload) {
                    return Ok(());
                }
                // Out of order or different: the run ends here, and the new packet starts a new one after it.
                item.segments = 0;
            }
        } else if let Some(item) =
            self.items.iter_mut().rev().find(|i| i.segments > 0 && same_flow(&i.buf, packet, &header))
        {
            // A control segment (SYN, FIN, RST, pure ACK) of a flow being merged: nothing may join the run past it.
            item.segments = 0;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        buf.extend_from_slice(packet);
        let (segments, mss, next_seq, tcp_len) = match tcp {
            Some((seq, tcp_len, payload)) if payload > 0 && flags(packet, &header) & !TCP_PSH == TCP_ACK => {
                let closed = flags(packet, &header) & TCP_PSH != 0;
                (usize::from(!closed), payload, seq.wrapping_add(payload as u32), tcp_len)
            }
            _ => (0, 0, 0, 0),
        };
        self.items.push(Item { buf, header, segments, mss, next_seq, tcp_len });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Hands every packet of the batch, virtio header in front, to `write` in order, and empties the batch.
    pub fn drain(&mut self, mut write: impl FnMut(&[u8])) {
        for mut item in self.items.drain(..) {
            item.finish();
            write(&item.buf);
            self.spare.push(item.buf);
        }
    }
}

impl Item {
    fn ip(&self) -> &[u8] {
        &self.buf[VNET_HDR_LEN..]
    }

    fn try_append(&mut self, packet: &[u8], header: &IpHeader, seq: u32, tcp_len: usize, payload: usize) -> bool {
        let f = flags(packet, header);
        let mine = self.ip();
        let l4 = self.header.header_len;
        let fits = mine.len() + payload <= MAX_COALESCED;
        let mergeable = seq == self.next_seq
            && f & !TCP_PSH == TCP_ACK
            && payload > 0
            && payload <= self.mss
            && tcp_len == self.tcp_len
            // Acknowledgement and window, then the options (timestamps included) must match.
            && packet[l4 + 8..l4 + 12] == mine[l4 + 8..l4 + 12]
            && packet[l4 + 14..l4 + 16] == mine[l4 + 14..l4 + 16]
            && packet[l4 + 20..l4 + tcp_len] == mine[l4 + 20..l4 + tcp_len]
            && fits;
        if !mergeable {
            return false;
        }
        self.buf.extend_from_slice(&packet[l4 + tcp_len..]);
        self.segments += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        let at = VNET_HDR_LEN + l4 + 13;
        self.buf[at] |= f & TCP_PSH;
        if payload < self.mss || f & TCP_PSH != 0 {
            // A short segment or a push ends the run: nothing may follow it in the same super-packet.
            self.segments = 0;
        }
        true
    }

    /// Fixes lengths and checksums, and writes the virtio header: GSO for a merged run, none otherwise.
    fn finish(&mut self) {
        let header = self.header;
        let (vnet_len, l4) = (VNET_HDR_LEN, header.header_len);
        let total = self.buf.len() - vnet_len;
        let original = header.total_len;
        let merged = total > original;
        let vnet = if merged {
            let ip = &mut self.buf[vnet_len..];
            match header.family {
                Family::V4 => {
                    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                    set_ipv4_header_checksum(ip, l4);
                }
                Family::V6 => ip[4..6].copy_from_slice(&((total - l4) as u16).to_be_bytes()),
            }
            // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel adds the rest per segment.
            let partial = fold(pseudo_header_sum(header.src, header.dst, PROTO_TCP, total - l4));
            ip[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if header.family == Family::V4 { GSO_TCPV4 } else { GSO_TCPV6 },
                hdr_len: (l4 + self.tcp_len) as u16,
                gso_size: self.mss as u16,
                csum_start: l4 as u16,
                csum_offset: 16,
            }
        } else {
            VnetHdr::default()
        };
        self.buf[..vnet_len].copy_from_slice(&vnet.encode());
    }
}

/// For TCP (not a fragment, header complete): sequence number, TCP header length and payload length.
fn tcp_data(packet: &[u8], header: &IpHeader) -> Option<(u32, usize, usize)> {
    if header.protocol != PROTO_TCP || header.fragment {
        return None;
    }
    let l4 = header.header_len;
    let tcp_len = usize::from(*packet.get(l4 + 12)? >> 4) * 4;
    if tcp_len < 20 || l4 + tcp_len > packet.len() {
        return None;
    }
    let seq = u32::from_be_bytes(packet[l4 + 4..l4 + 8].try_into().ok()?);
    Some((seq, tcp_len, packet.len() - l4 - tcp_len))
}

fn flags(packet: &[u8], header: &IpHeader) -> u8 {
    packet[header.header_len + 13]
}

/// Same addresses and ports, and the same IP header apart from length, ID and checksum (TOS, TTL, flags and
/// options included): only then may two segments share one header.
fn same_flow(item_buf: &[u8], packet: &[u8], header: &IpHeader) -> bool {
    let mine = &item_buf[VNET_HDR_LEN..];
    let l4 = header.header_len;
    if mine.len() < l4 + 4 || packet.len() < l4 + 4 || mine[0] != packet[0] {
        return false;
    }
    let ports = mine[l4..l4 + 4] == packet[l4..l4 + 4];
    match header.family {
        Family::V4 => ports && mine[1] == packet[1] && mine[6..10] == packet[6..10] && mine[12..l4] == packet[12..l4],
        Family::V6 => ports && mine[..4] == packet[..4] && mine[6..40] == packet[6..40],
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::tests::{checksums_valid, ipv4, ipv6};
    use super::super::packet::{checksum, PROTO_ICMP};
    use super::*;

    /// A TCP header (20 bytes plus `options`) with `seq`, `flags` and zero checksum; the IP builder fills it.
    fn tcp(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&777u32.to_be_bytes());
        t[12] = (((20 + options.len()) / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t.extend_from_slice(options);
        t.extend_from_slice(payload);
        t
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// A TSO super-packet as the kernel hands it over: TCP checksum partial (pseudo-header sum only).
    fn tso_v4(options: &[u8], payload_len: usize, mss: u16, tcp_flags: u8) -> (VnetHdr, Vec<u8>) {
        let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let mut p =
            ipv4("10.244.1.2", "10.244.2.3", PROTO_TCP, options, &tcp(1000, tcp_flags, &ts, &pattern(payload_len)));
        let h = IpHeader::parse(&p).unwrap();
        let partial = fold(pseudo_header_sum(h.src, h.dst, PROTO_TCP, h.total_len - h.header_len));
        p[h.header_len + 16..h.header_len + 18].copy_from_slice(&partial.to_be_bytes());
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (h.header_len + 32) as u16,
            gso_size: mss,
            csum_start: h.header_len as u16,
            csum_offset: 16,
        };
        (vnet, p)
    }

    fn split(out: &[u8], s: &Segments) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut at = 0;
        while at < s.total_len {
            let len = s.segment_len.min(s.total_len - at);
            v.push(out[at..at + len].to_vec());
            at += len;
        }
        v
    }

    #[test]
    fn the_virtio_header_round_trips() {
        let v = VnetHdr { flags: 1, gso_type: 4, hdr_len: 74, gso_size: 1388, csum_start: 40, csum_offset: 16 };
        assert_eq!(VnetHdr::parse(&v.encode()).unwrap(), v);
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(DropReason::Truncated));
    }

    #[test]
    fn tso_is_cut_into_mss_segments_with_a_short_last_one_and_valid_checksums() {
        // IPv4 options too: every segment carries them.
        let (vnet, p) = tso_v4(&[1, 1, 1, 0], 4000, 1400, TCP_ACK | TCP_PSH | TCP_CWR);
        let mut out = Vec::new();
        let s = segment(&vnet, &p, &mut out).unwrap();
        assert_eq!((s.count, s.segment_len), (3, 24 + 32 + 1400));
        let segs = split(&out, &s);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[2].len(), 24 + 32 + 1200, "the last segment is short");
        let mut payload = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            assert!(checksums_valid(seg), "segment {i}");
            let h = IpHeader::parse(seg).unwrap();
            assert_eq!(h.total_len, seg.len());
            assert_eq!(u32::from_be_bytes(seg[28..32].try_into().unwrap()), 1000 + 1400 * i as u32);
            assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 0x1234 + i as u16, "IP IDs count up");
            let f = seg[24 + 13];
            assert_eq!(f & TCP_PSH != 0, i == 2, "PSH only on the last");
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR only on the first");
            payload.extend_from_slice(&seg[24 + 32..]);
        }
        assert_eq!(payload, pattern(4000));
    }

    #[test]
    fn tcp_over_ipv6_and_udp_segmentation_offload_are_cut_too() {
        let mut p = ipv6("fd00::1", "fd00::2", PROTO_TCP, &tcp(5, TCP_ACK, &[], &pattern(3000)));
        p[40 + 16..40 + 18].fill(0);
        let partial = fold(pseudo_header_sum("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), PROTO_TCP, 3020));
        p[56..58].copy_from_slice(&partial.to_be_bytes());
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 60,
            gso_size: 1000,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut out = Vec::new();
        let s = segment(&vnet, &p, &mut out).unwrap();
        assert_eq!((s.count, s.segment_len, s.total_len), (3, 1060, 3180));
        assert!(split(&out, &s).iter().all(|seg| checksums_valid(seg)));

        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&443u16.to_be_bytes());
        udp[2..4].copy_from_slice(&443u16.to_be_bytes());
        udp.extend_from_slice(&pattern(2500));
        let p = ipv4("10.244.1.2", "10.244.2.3", PROTO_UDP, &[], &udp);
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1200,
            csum_start: 20,
            csum_offset: 6,
        };
        out.clear();
        let s = segment(&vnet, &p, &mut out).unwrap();
        let segs = split(&out, &s);
        assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), vec![1228, 1228, 128]);
        for seg in &segs {
            assert!(checksums_valid(seg));
            assert_eq!(usize::from(u16::from_be_bytes([seg[24], seg[25]])), seg.len() - 20, "UDP length");
        }
    }

    #[test]
    fn a_plain_packet_gets_its_partial_checksum_finished_and_bad_headers_are_refused() {
        let (mut vnet, p) = tso_v4(&[], 100, 1400, TCP_ACK);
        vnet.gso_type = GSO_NONE;
        let mut out = Vec::new();
        let s = segment(&vnet, &p, &mut out).unwrap();
        assert_eq!(s.count, 1);
        assert!(checksums_valid(&out));

        let (vnet, p) = tso_v4(&[], 3000, 1400, TCP_ACK);
        let bad = |v: VnetHdr| segment(&v, &p, &mut Vec::new()).unwrap_err();
        assert_eq!(bad(VnetHdr { gso_size: 0, ..vnet }), DropReason::BadOffload);
        assert_eq!(bad(VnetHdr { gso_type: GSO_TCPV6, ..vnet }), DropReason::BadOffload);
        assert_eq!(bad(VnetHdr { csum_start: 24, ..vnet }), DropReason::BadOffload);
        let mut no_csum_room = vnet;
        no_csum_room.gso_type = GSO_NONE;
        no_csum_room.csum_offset = 4000;
        assert_eq!(bad(no_csum_room), DropReason::BadOffload);
        // Found by the fuzzer: a partial checksum "starting" inside the IP header would overwrite the header.
        let inside_ip = VnetHdr { gso_type: GSO_NONE, csum_start: 0, csum_offset: 0, ..vnet };
        let mut out = Vec::new();
        assert_eq!(segment(&inside_ip, &p, &mut out).unwrap_err(), DropReason::BadOffload);
        assert!(out.is_empty(), "nothing is left behind for a refused packet");
        assert_eq!(segment(&vnet, &p[..30], &mut Vec::new()).unwrap_err(), DropReason::Truncated);
    }

    /// Runs `packets` through a coalescer and returns what it writes, virtio headers parsed.
    fn coalesce(packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut c = Coalescer::default();
        for p in packets {
            c.push(p).unwrap();
        }
        let mut out = Vec::new();
        c.drain(|b| out.push((VnetHdr::parse(b).unwrap(), b[VNET_HDR_LEN..].to_vec())));
        assert!(c.is_empty());
        out
    }

    #[test]
    fn segments_of_one_flow_coalesce_back_into_the_super_packet() {
        let (vnet, p) = tso_v4(&[1, 1, 1, 0], 4000, 1400, TCP_ACK | TCP_PSH);
        let mut out = Vec::new();
        let s = segment(&vnet, &p, &mut out).unwrap();
        let merged = coalesce(&split(&out, &s));
        assert_eq!(merged.len(), 1);
        let (v, ip) = &merged[0];
        assert_eq!((v.gso_type, v.gso_size, v.csum_start, v.csum_offset, v.hdr_len), (GSO_TCPV4, 1400, 24, 16, 56));
        assert_eq!(ip.len(), p.len());
        assert_eq!(checksum(&ip[..24]), 0);
        assert_eq!(&ip[56..], &p[56..], "the payload in order");
        assert_ne!(ip[24 + 13] & TCP_PSH, 0, "the last segment's PSH is kept");
        // Segmenting the result again gives the same wire packets.
        let mut again = Vec::new();
        let s2 = segment(v, ip, &mut again).unwrap();
        assert_eq!((s2.count, s2.total_len), (s.count, s.total_len));
        assert_eq!(again[20..], out[20..], "same bytes past the first IP ID");
    }

    #[test]
    fn mixed_flows_gaps_and_control_segments_keep_their_order() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let a = |seq: u32, f: u8, len: usize| {
            ipv4("10.244.1.2", "10.244.2.3", PROTO_TCP, &[], &tcp(seq, f, &ts, &pattern(len)))
        };
        let b = |seq: u32| ipv4("10.244.1.9", "10.244.2.3", PROTO_TCP, &[], &tcp(seq, TCP_ACK, &ts, &pattern(100)));
        let ping = ipv4("10.244.1.2", "10.244.2.3", PROTO_ICMP, &[], &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        let packets = vec![
            a(0, TCP_ACK, 100),
            b(0),
            a(100, TCP_ACK, 100),
            b(100),
            ping.clone(),
            a(200, TCP_ACK, 50),           // short: closes flow a's run
            a(250, TCP_ACK, 100),          // starts a new run
            a(999, TCP_ACK, 100),          // a gap: a new run after it
            a(1099, TCP_ACK | TCP_FIN, 0), // control segment: alone
        ];
        let out = coalesce(&packets);
        let summary: Vec<(u8, usize)> = out.iter().map(|(v, ip)| (v.gso_type, ip.len())).collect();
        let hdr = 20 + 32;
        assert_eq!(
            summary,
            vec![
                (GSO_TCPV4, hdr + 250),
                (GSO_TCPV4, hdr + 200),
                (GSO_NONE, ping.len()),
                (GSO_NONE, hdr + 100),
                (GSO_NONE, hdr + 100),
                (GSO_NONE, hdr),
            ]
        );
        for (i, (v, ip)) in out.iter().enumerate() {
            if v.gso_type == GSO_NONE {
                assert!(checksums_valid(ip), "packet {i}: a lone packet is passed as it came");
            }
        }
    }

    #[test]
    fn different_options_ttl_or_ack_do_not_merge() {
        let seg = |seq: u32, ts: u8, ttl: u8| {
            let mut p = ipv4(
                "10.244.1.2",
                "10.244.2.3",
                PROTO_TCP,
                &[],
                &tcp(seq, TCP_ACK, &[1, 1, 8, 10, 0, 0, 0, ts, 0, 0, 0, 2], &pattern(100)),
            );
            p[8] = ttl;
            set_ipv4_header_checksum(&mut p, 20);
            p
        };
        assert_eq!(coalesce(&[seg(0, 1, 64), seg(100, 2, 64)]).len(), 2, "timestamps differ");
        assert_eq!(coalesce(&[seg(0, 1, 64), seg(100, 1, 63)]).len(), 2, "TTL differs");
        assert_eq!(coalesce(&[seg(0, 1, 64), seg(100, 1, 64)]).len(), 1);
        // Too large to merge: the IP length field caps a super-packet.
        let big = |seq: u32| ipv4("10.244.1.2", "10.244.2.3", PROTO_TCP, &[], &tcp(seq, TCP_ACK, &[], &pattern(30000)));
        assert_eq!(coalesce(&[big(0), big(30000), big(60000)]).len(), 2);
    }
}
