//! Which batching techniques the userspace data planes (udp and wireguard) use, one switch each, so each can be
//! measured alone. `--udp-offloads` sets all three at once (its documented meaning); a technique's own switch,
//! when given, overrides it for that technique. Every combination works; what one technique does without another
//! is documented on each field.

use std::fmt;

/// The techniques in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// The TUN carries virtio-net headers with TSO/USO: reads are super-packets of up to 64 KiB, cut into wire
    /// packets in userspace, and received packets are merged by the coalescer into super-packets, one TUN write
    /// each. Off: one packet per TUN read and per TUN write.
    pub tun: bool,
    /// UDP GSO (`UDP_SEGMENT`): the wire packets of one destination leave as one send, which the kernel cuts. It
    /// needs several equal-sized packets in a row: with TUN offloads those of a super-packet, without them those
    /// of consecutive reads in a batch (the udp backend; the wireguard plane sends a plain read alone). Off: one
    /// datagram per `sendmmsg` slot.
    pub gso: bool,
    /// UDP GRO on the receiving socket: one receive holds a train of datagrams from one sender. Off: one datagram
    /// per `recvmmsg` slot (the coalescer still merges a batch's packets when TUN offloads are on).
    pub gro: bool,
}

impl Offloads {
    pub const ALL: Offloads = Offloads { tun: true, gso: true, gro: true };
    pub const NONE: Offloads = Offloads { tun: false, gso: false, gro: false };

    /// The techniques from the switches: `all` (`--udp-offloads`) for each one whose own switch was not given.
    pub fn resolve(all: bool, tun: Option<bool>, gso: Option<bool>, gro: Option<bool>) -> Offloads {
        Offloads { tun: tun.unwrap_or(all), gso: gso.unwrap_or(all), gro: gro.unwrap_or(all) }
    }
}

/// "tun+gso+gro", "gso", "none": for logs and benchmark labels.
impl fmt::Display for Offloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = [(self.tun, "tun"), (self.gso, "gso"), (self.gro, "gro")]
            .into_iter()
            .filter(|t| t.0)
            .map(|t| t.1)
            .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join("+"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_switch_sets_what_the_own_switches_leave_open() {
        assert_eq!(Offloads::resolve(true, None, None, None), Offloads::ALL);
        assert_eq!(Offloads::resolve(false, None, None, None), Offloads::NONE);
        let no_gso = Offloads::resolve(true, None, Some(false), None);
        assert_eq!(no_gso, Offloads { tun: true, gso: false, gro: true });
        let gro_alone = Offloads::resolve(false, None, None, Some(true));
        assert_eq!(gro_alone, Offloads { tun: false, gso: false, gro: true });
        let explicit = Offloads::resolve(false, Some(true), Some(true), Some(false));
        assert_eq!(explicit, Offloads { tun: true, gso: true, gro: false });
    }

    #[test]
    fn display_names_the_techniques_in_effect() {
        assert_eq!(Offloads::ALL.to_string(), "tun+gso+gro");
        assert_eq!(Offloads::NONE.to_string(), "none");
        assert_eq!(Offloads { tun: false, gso: true, gro: false }.to_string(), "gso");
        assert_eq!(Offloads { tun: true, gso: false, gro: true }.to_string(), "tun+gro");
    }
}
