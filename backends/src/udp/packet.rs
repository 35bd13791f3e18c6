//! Inner IP packets as the udp backend carries them (flannel's format: the whole UDP payload is one raw IPv4 or
//! IPv6 packet, no header of its own). Pure functions over byte slices: header parsing and validation, the hop
//! limit, ICMP "net unreachable" and the Internet checksum. No I/O here; the data plane calls these per packet.
//!
//! Hand-rolled rather than pnet's packet types: the data path needs in-place incremental checksum updates and
//! header rewrites over one reused buffer (see `offload`), which pnet's accessor structs do not save any code for,
//! and a few dozen lines of offsets keep the hot path free of a dependency that is barely maintained.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::Family;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const IPV4_HEADER_MIN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
/// The largest IP packet either family's length field can describe without jumbograms.
pub const MAX_IP_PACKET: usize = 65535;

/// Why a packet was not forwarded. Each has a metric label ([`DropReason::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum DropReason {
    #[error("shorter than an IP header, or shorter than its own length field says")]
    Truncated,
    #[error("IP version is neither 4 nor 6")]
    BadVersion,
    #[error("IPv4 header length is under 20 bytes or past the packet")]
    BadHeaderLength,
    #[error("the hop limit ran out")]
    TtlExpired,
    #[error("no peer holds the destination's subnet")]
    NoPeer,
    #[error("the datagram did not come from a peer's public IP")]
    NotFromPeer,
    #[error("the offload (virtio-net) header does not describe the packet")]
    BadOffload,
    #[error("the packet's family is not carried by this backend")]
    WrongFamily,
}

impl DropReason {
    /// Every reason, in metric order.
    pub const ALL: [DropReason; 8] = [
        DropReason::Truncated,
        DropReason::BadVersion,
        DropReason::BadHeaderLength,
        DropReason::TtlExpired,
        DropReason::NoPeer,
        DropReason::NotFromPeer,
        DropReason::BadOffload,
        DropReason::WrongFamily,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVersion => "bad_version",
            DropReason::BadHeaderLength => "bad_header_length",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoPeer => "no_peer",
            DropReason::NotFromPeer => "not_from_peer",
            DropReason::BadOffload => "bad_offload",
            DropReason::WrongFamily => "wrong_family",
        }
    }

    pub fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).expect("every reason is listed")
    }
}

/// The parts of an IP header the data path looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    pub family: Family,
    /// Bytes up to the transport header: IPv4 with options, or IPv6's fixed 40 (extension headers count as
    /// the transport then, which only means such packets are neither segmented nor coalesced).
    pub header_len: usize,
    /// The packet's length by its own header (bytes after it in the buffer are padding).
    pub total_len: usize,
    /// IPv4 protocol, or IPv6 next header.
    pub protocol: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub hop_limit: u8,
    /// An IPv4 fragment other than the first: it has no transport header.
    pub later_fragment: bool,
    /// An IPv4 packet that is a fragment at all (more fragments or an offset).
    pub fragment: bool,
}

impl IpHeader {
    /// Parses and checks the header at the start of `packet`.
    pub fn parse(packet: &[u8]) -> Result<IpHeader, DropReason> {
        let first = *packet.first().ok_or(DropReason::Truncated)?;
        match first >> 4 {
            4 => Self::parse_v4(packet),
            6 => Self::parse_v6(packet),
            _ => Err(DropReason::BadVersion),
        }
    }

    fn parse_v4(p: &[u8]) -> Result<IpHeader, DropReason> {
        if p.len() < IPV4_HEADER_MIN {
            return Err(DropReason::Truncated);
        }
        let header_len = usize::from(p[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if header_len < IPV4_HEADER_MIN || header_len > total_len {
            return Err(DropReason::BadHeaderLength);
        }
        if total_len > p.len() {
            return Err(DropReason::Truncated);
        }
        let frag = u16::from_be_bytes([p[6], p[7]]);
        let offset = frag & 0x1fff;
        let more = frag & 0x2000 != 0;
        Ok(IpHeader {
            family: Family::V4,
            header_len,
            total_len,
            protocol: p[9],
            src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
            dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
            hop_limit: p[8],
            later_fragment: offset != 0,
            fragment: offset != 0 || more,
        })
    }

    fn parse_v6(p: &[u8]) -> Result<IpHeader, DropReason> {
        if p.len() < IPV6_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let total_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([p[4], p[5]]));
        if total_len > p.len() {
            return Err(DropReason::Truncated);
        }
        let addr = |at: usize| {
            let bytes: [u8; 16] = p[at..at + 16].try_into().expect("16 bytes");
            IpAddr::V6(Ipv6Addr::from(bytes))
        };
        Ok(IpHeader {
            family: Family::V6,
            header_len: IPV6_HEADER_LEN,
            total_len,
            protocol: p[6],
            src: addr(8),
            dst: addr(24),
            hop_limit: p[7],
            later_fragment: false,
            fragment: false,
        })
    }
}

/// Decrements the TTL (IPv4, checksum patched per RFC 1624) or hop limit (IPv6) of the packet `header` was
/// parsed from. A packet that would leave with 0 is not forwarded.
pub fn decrement_hop_limit(packet: &mut [u8], header: &IpHeader) -> Result<(), DropReason> {
    if header.hop_limit <= 1 {
        return Err(DropReason::TtlExpired);
    }
    match header.family {
        Family::V4 => {
            let old = u16::from_be_bytes([packet[8], packet[9]]);
            packet[8] -= 1;
            let new = u16::from_be_bytes([packet[8], packet[9]]);
            let check = u16::from_be_bytes([packet[10], packet[11]]);
            packet[10..12].copy_from_slice(&update_checksum(check, old, new).to_be_bytes());
        }
        Family::V6 => packet[7] -= 1,
    }
    Ok(())
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data changed from `old` to `new`.
pub fn update_checksum(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Adds `data` as big-endian 16-bit words to a one's-complement running sum (an odd last byte is padded). The
/// result is folded to 16 bits, so callers may add small values to it. Eight bytes at a time: 2^16 = 1 modulo
/// 0xffff, so summing 32-bit halves and folding at the end gives the same sum as summing 16-bit words.
pub fn sum_words(sum: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        // Two 32-bit halves per step: 64 KiB of them stays far below 2^64.
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Folds a running sum into 16 bits (not complemented).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (what goes into a header's checksum field).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(0, data))
}

/// The running sum of the TCP/UDP pseudo-header for `len` transport bytes.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(sum_words(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(sum_words(0, &s.octets()), &d.octets()),
        _ => 0,
    };
    sum += u32::from(protocol);
    sum += (len as u32) >> 16;
    sum += (len as u32) & 0xffff;
    sum
}

/// Writes the IPv4 header checksum of `packet` (whose header is `header_len` bytes).
pub fn set_ipv4_header_checksum(packet: &mut [u8], header_len: usize) {
    packet[10..12].fill(0);
    let c = checksum(&packet[..header_len]);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Computes and writes a TCP or UDP checksum over `packet[header.header_len..total]` with the pseudo-header.
/// UDP's zero result is sent as 0xffff (zero means "no checksum").
pub fn set_transport_checksum(packet: &mut [u8], header: &IpHeader, total: usize) {
    let start = header.header_len;
    let field = start + checksum_offset(header.protocol);
    packet[field..field + 2].fill(0);
    let sum = pseudo_header_sum(header.src, header.dst, header.protocol, total - start);
    let mut c = !fold(sum_words(sum, &packet[start..total]));
    if header.protocol == PROTO_UDP && c == 0 {
        c = 0xffff;
    }
    packet[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// Where the checksum field sits in a TCP (16) or UDP (6) header.
pub fn checksum_offset(protocol: u8) -> usize {
    if protocol == PROTO_TCP {
        16
    } else {
        6
    }
}

/// The ICMP "destination unreachable: net unreachable" (ICMPv6: "no route to destination") answer to `offender`,
/// sent from `source`, or None where RFC 1122/4443 forbid an error: about an ICMP error, about a later fragment,
/// to an address that is no single host. IPv4 quotes the offender's header and 8 bytes of payload (as flannel
/// does); IPv6 quotes as much as keeps the answer within the 1280-byte minimum MTU.
pub fn net_unreachable(offender: &[u8], header: &IpHeader, source: IpAddr) -> Option<Vec<u8>> {
    if header.later_fragment || Family::of(source) != header.family || !is_unicast(header.src) {
        return None;
    }
    let transport = offender.get(header.header_len..header.total_len).unwrap_or(&[]);
    match header.family {
        Family::V4 => {
            // An ICMP error (anything but echo, timestamp, information and address-mask requests/replies).
            if header.protocol == PROTO_ICMP && !matches!(transport.first(), Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18))
            {
                return None;
            }
            let quoted = &offender[..(header.header_len + 8).min(header.total_len)];
            let len = IPV4_HEADER_MIN + 8 + quoted.len();
            let mut out = vec![0u8; len];
            out[0] = 0x45;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[8] = 64;
            out[9] = PROTO_ICMP;
            out[12..16].copy_from_slice(&octets(source));
            out[16..20].copy_from_slice(&octets(header.src));
            set_ipv4_header_checksum(&mut out, IPV4_HEADER_MIN);
            out[20] = 3; // destination unreachable
            out[21] = 0; // net unreachable
            out[28..].copy_from_slice(quoted);
            let c = checksum(&out[20..]);
            out[22..24].copy_from_slice(&c.to_be_bytes());
            Some(out)
        }
        Family::V6 => {
            if header.protocol == PROTO_ICMPV6 && transport.first().is_none_or(|t| *t < 128) {
                return None;
            }
            let quoted = &offender[..header.total_len.min(1280 - IPV6_HEADER_LEN - 8)];
            let payload = 8 + quoted.len();
            let mut out = vec![0u8; IPV6_HEADER_LEN + payload];
            out[0] = 0x60;
            out[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
            out[6] = PROTO_ICMPV6;
            out[7] = 64;
            out[8..24].copy_from_slice(&octets(source));
            out[24..40].copy_from_slice(&octets(header.src));
            out[40] = 1; // destination unreachable
            out[41] = 0; // no route to destination
            out[48..].copy_from_slice(quoted);
            let sum = pseudo_header_sum(source, header.src, PROTO_ICMPV6, payload);
            let c = !fold(sum_words(sum, &out[40..]));
            out[42..44].copy_from_slice(&c.to_be_bytes());
            Some(out)
        }
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 packet with `options` (a multiple of 4 bytes), `protocol` and `payload`, checksums valid.
    pub fn ipv4(src: &str, dst: &str, protocol: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let header_len = IPV4_HEADER_MIN + options.len();
        let total = header_len + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x40 | (header_len / 4) as u8;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&src.parse::<Ipv4Addr>().unwrap().octets());
        p[16..20].copy_from_slice(&dst.parse::<Ipv4Addr>().unwrap().octets());
        p[20..header_len].copy_from_slice(options);
        p[header_len..].copy_from_slice(payload);
        set_ipv4_header_checksum(&mut p, header_len);
        let l4_min = if protocol == PROTO_TCP { 20 } else { 8 };
        if (protocol == PROTO_TCP || protocol == PROTO_UDP) && payload.len() >= l4_min {
            let h = IpHeader::parse(&p).unwrap();
            set_transport_checksum(&mut p, &h, total);
        }
        p
    }

    pub fn ipv6(src: &str, dst: &str, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HEADER_LEN + payload.len()];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = protocol;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        p[40..].copy_from_slice(payload);
        if protocol == PROTO_TCP || protocol == PROTO_UDP {
            let h = IpHeader::parse(&p).unwrap();
            let total = p.len();
            set_transport_checksum(&mut p, &h, total);
        }
        p
    }

    /// Whether the IPv4 header checksum and the TCP/UDP checksum of `p` verify.
    pub fn checksums_valid(p: &[u8]) -> bool {
        let h = IpHeader::parse(p).unwrap();
        let ip_ok = h.family == Family::V6 || checksum(&p[..h.header_len]) == 0;
        let l4_ok = match h.protocol {
            PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => {
                let sum = pseudo_header_sum(h.src, h.dst, h.protocol, h.total_len - h.header_len);
                fold(sum_words(sum, &p[h.header_len..h.total_len])) == 0xffff
            }
            PROTO_ICMP => checksum(&p[h.header_len..h.total_len]) == 0,
            _ => true,
        };
        ip_ok && l4_ok
    }

    #[test]
    fn headers_parse_and_bad_ones_are_named() {
        let p = ipv4("10.244.1.2", "10.244.2.3", PROTO_UDP, &[1, 1, 1, 0], &[0; 12]);
        let h = IpHeader::parse(&p).unwrap();
        assert_eq!((h.family, h.header_len, h.total_len, h.protocol), (Family::V4, 24, 36, PROTO_UDP));
        assert_eq!((h.src.to_string(), h.dst.to_string(), h.hop_limit), ("10.244.1.2".into(), "10.244.2.3".into(), 64));
        assert!(!h.fragment);

        // Trailing padding is allowed (the header says where the packet ends).
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(IpHeader::parse(&padded).unwrap().total_len, 36);

        assert_eq!(IpHeader::parse(&[]), Err(DropReason::Truncated));
        assert_eq!(IpHeader::parse(&p[..19]), Err(DropReason::Truncated));
        assert_eq!(IpHeader::parse(&p[..30]), Err(DropReason::Truncated), "shorter than its length field");
        let mut bad = p.clone();
        bad[0] = 0x44;
        assert_eq!(IpHeader::parse(&bad), Err(DropReason::BadHeaderLength));
        bad[0] = 0x5f;
        assert_eq!(IpHeader::parse(&bad), Err(DropReason::BadVersion));
        let mut later = p.clone();
        later[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
        assert!(IpHeader::parse(&later).unwrap().later_fragment);

        let v6 = ipv6("fd00::1", "fd00::2", PROTO_TCP, &[0; 20]);
        let h = IpHeader::parse(&v6).unwrap();
        assert_eq!((h.family, h.header_len, h.total_len, h.protocol), (Family::V6, 40, 60, PROTO_TCP));
        assert_eq!(IpHeader::parse(&v6[..50]), Err(DropReason::Truncated));
    }

    #[test]
    fn hop_limit_decrement_keeps_the_checksum_valid_and_expires_at_one() {
        for ttl in [2u8, 64, 255, 128] {
            let mut p = ipv4("10.244.1.2", "10.244.2.3", PROTO_UDP, &[], &[7; 9]);
            p[8] = ttl;
            set_ipv4_header_checksum(&mut p, 20);
            let h = IpHeader::parse(&p).unwrap();
            decrement_hop_limit(&mut p, &h).unwrap();
            assert_eq!(p[8], ttl - 1);
            assert_eq!(checksum(&p[..20]), 0, "ttl {ttl}: header checksum still verifies");
        }
        let mut p = ipv4("10.244.1.2", "10.244.2.3", PROTO_UDP, &[], &[]);
        p[8] = 1;
        let h = IpHeader::parse(&p).unwrap();
        assert_eq!(decrement_hop_limit(&mut p, &h), Err(DropReason::TtlExpired));
        let mut v6 = ipv6("fd00::1", "fd00::2", PROTO_UDP, &[0; 8]);
        let h = IpHeader::parse(&v6).unwrap();
        decrement_hop_limit(&mut v6, &h).unwrap();
        assert_eq!(v6[7], 63);
    }

    #[test]
    fn the_checksum_update_matches_a_full_recomputation_for_every_word_pair() {
        let mut header = ipv4("10.0.0.1", "10.0.0.2", PROTO_TCP, &[], &[]);
        header.truncate(20);
        for (old, new) in [(0x4006u16, 0x3f06u16), (0x0106, 0x0006), (0xffff, 0x0000), (0x0000, 0xffff)] {
            header[8..10].copy_from_slice(&old.to_be_bytes());
            set_ipv4_header_checksum(&mut header, 20);
            let check = u16::from_be_bytes([header[10], header[11]]);
            header[8..10].copy_from_slice(&new.to_be_bytes());
            let patched = update_checksum(check, old, new);
            header[10..12].copy_from_slice(&patched.to_be_bytes());
            assert_eq!(checksum(&header), 0, "{old:#x} -> {new:#x}");
        }
    }

    #[test]
    fn the_wide_sum_equals_the_word_by_word_sum_at_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 131 + 7) as u8).collect();
        for len in 0..data.len() {
            let mut naive: u32 = 0x1234;
            for w in data[..len].chunks(2) {
                naive += u32::from(w[0]) << 8 | w.get(1).map_or(0, |b| u32::from(*b));
            }
            assert_eq!(fold(sum_words(0x1234, &data[..len])), fold(naive), "length {len}");
        }
        // The largest packet: 32767 words of 0xffff and a padded 0xff00 sum to 0xff00 after folding.
        assert_eq!(fold(sum_words(0, &[0xff; 65535])), 0xff00);
    }

    #[test]
    fn net_unreachable_quotes_the_offender_and_respects_the_rfcs() {
        let src: IpAddr = "10.244.1.0".parse().unwrap();
        let offender = ipv4("10.244.1.5", "10.244.9.9", PROTO_UDP, &[], &[1; 30]);
        let h = IpHeader::parse(&offender).unwrap();
        let icmp = net_unreachable(&offender, &h, src).unwrap();
        let ih = IpHeader::parse(&icmp).unwrap();
        assert_eq!((ih.protocol, ih.src, ih.dst), (PROTO_ICMP, src, h.src));
        assert_eq!((icmp[20], icmp[21]), (3, 0));
        assert_eq!(&icmp[28..], &offender[..28], "the offender's header and 8 bytes of payload");
        assert!(checksums_valid(&icmp));

        let echo = ipv4("10.244.1.5", "10.244.9.9", PROTO_ICMP, &[], &[8, 0, 0, 0, 0, 1, 0, 1]);
        assert!(net_unreachable(&echo, &IpHeader::parse(&echo).unwrap(), src).is_some(), "a ping gets an answer");
        let error = ipv4("10.244.1.5", "10.244.9.9", PROTO_ICMP, &[], &[3, 1, 0, 0, 0, 0, 0, 0]);
        assert!(net_unreachable(&error, &IpHeader::parse(&error).unwrap(), src).is_none(), "never about an error");
        let mut later = offender.clone();
        later[6..8].copy_from_slice(&0x0020u16.to_be_bytes());
        assert!(net_unreachable(&later, &IpHeader::parse(&later).unwrap(), src).is_none(), "not for later fragments");
        let bcast = ipv4("255.255.255.255", "10.244.9.9", PROTO_UDP, &[], &[0; 8]);
        assert!(net_unreachable(&bcast, &IpHeader::parse(&bcast).unwrap(), src).is_none());

        let v6 = ipv6("fd00:244:1::5", "fd00:244:9::9", PROTO_TCP, &[0; 20]);
        let v6h = IpHeader::parse(&v6).unwrap();
        assert!(net_unreachable(&v6, &v6h, src).is_none(), "an IPv4 source cannot answer IPv6");
        let answer = net_unreachable(&v6, &v6h, "fd00:244:1::".parse().unwrap()).unwrap();
        assert_eq!((answer[6], answer[40], &answer[48..]), (PROTO_ICMPV6, 1, &v6[..]));
        assert!(checksums_valid(&answer));
    }
}
