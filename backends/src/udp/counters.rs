//! The udp data plane's counters: packets and bytes each way, ICMP errors sent, drops by reason and I/O errors.
//! Workers add to them with relaxed atomics (each counter is independent); `/metrics` renders them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::packet::DropReason;

#[derive(Debug, Default)]
pub struct Counters {
    /// Reads from the TUN (one per super-packet).
    pub tun_reads: AtomicU64,
    /// Wire packets sent to peers, and their bytes (the UDP payload).
    pub sent_packets: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Wire packets received from peers, and their bytes.
    pub received_packets: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Writes to the TUN (one per coalesced super-packet).
    pub tun_writes: AtomicU64,
    pub icmp_unreachable: AtomicU64,
    pub send_errors: AtomicU64,
    pub tun_write_errors: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    pub fn dropped(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text for every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP weft_udp_packets_total Packets the udp data plane moved, by direction (tx: to peers, rx: from peers; \
             wire packets, not super-packets).\n# TYPE weft_udp_packets_total counter\n\
             weft_udp_packets_total{{direction=\"tx\"}} {}\nweft_udp_packets_total{{direction=\"rx\"}} {}",
            load(&self.sent_packets),
            load(&self.received_packets)
        );
        let _ = writeln!(
            out,
            "# HELP weft_udp_bytes_total Inner IP bytes the udp data plane moved, by direction.\n\
             # TYPE weft_udp_bytes_total counter\n\
             weft_udp_bytes_total{{direction=\"tx\"}} {}\nweft_udp_bytes_total{{direction=\"rx\"}} {}",
            load(&self.sent_bytes),
            load(&self.received_bytes)
        );
        let _ = writeln!(
            out,
            "# HELP weft_udp_tun_operations_total TUN reads and writes (a super-packet counts once).\n\
             # TYPE weft_udp_tun_operations_total counter\n\
             weft_udp_tun_operations_total{{op=\"read\"}} {}\nweft_udp_tun_operations_total{{op=\"write\"}} {}",
            load(&self.tun_reads),
            load(&self.tun_writes)
        );
        let _ = writeln!(
            out,
            "# HELP weft_udp_drops_total Packets the udp data plane dropped, by reason.\n# TYPE weft_udp_drops_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(out, "weft_udp_drops_total{{reason=\"{}\"}} {}", reason.name(), self.drops(reason));
        }
        let _ = writeln!(
            out,
            "# HELP weft_udp_icmp_unreachable_total ICMP net-unreachable answers for destinations no peer holds.\n\
             # TYPE weft_udp_icmp_unreachable_total counter\nweft_udp_icmp_unreachable_total {}",
            load(&self.icmp_unreachable)
        );
        let _ = writeln!(
            out,
            "# HELP weft_udp_io_errors_total Failed sends to peers and failed TUN writes.\n\
             # TYPE weft_udp_io_errors_total counter\n\
             weft_udp_io_errors_total{{op=\"send\"}} {}\nweft_udp_io_errors_total{{op=\"tun_write\"}} {}",
            load(&self.send_errors),
            load(&self.tun_write_errors)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_rendered_with_its_count() {
        let c = Counters::default();
        c.dropped(DropReason::NotFromPeer);
        c.dropped(DropReason::NotFromPeer);
        Counters::add(&c.sent_packets, 3);
        let text = c.render();
        assert!(text.contains("weft_udp_drops_total{reason=\"not_from_peer\"} 2\n"), "{text}");
        assert!(text.contains("weft_udp_drops_total{reason=\"ttl_expired\"} 0\n"), "{text}");
        assert!(text.contains("weft_udp_packets_total{direction=\"tx\"} 3\n"), "{text}");
        let names: std::collections::BTreeSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len(), "names are unique");
    }
}
