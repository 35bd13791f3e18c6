//! weftd's glue for the udp backend's userspace data plane: its settings from the flags and our lease, and its
//! start before the first reconcile pass (which configures the TUN the data plane opens). The data plane follows
//! the controller's forwarding table from then on; nothing here runs per packet.

use std::sync::Arc;

use weft_backends::backend::AnyBackend;
use weft_backends::forwarding::ForwardingReceiver;
use weft_backends::udp::counters::Counters;
use weft_backends::udp::plane::{self, PlaneConfig, PlaneError};
use weft_backends::udp::switches::Offloads;
use weft_backends::udp::{icmp_source, DEVICE};
use weft_backends::Family;

use crate::flags::DaemonArgs;
use crate::http::Metrics;
use crate::lease::Lease;

/// Socket buffers: wireguard-go measured 7 MB as the point past which larger buffers stop helping.
pub const SOCKET_BUFFER: usize = 7 << 20;

/// The techniques the userspace data planes (udp and wireguard) use: `--udp-offloads` for each one whose own
/// switch (`--udp-tun-offloads`, `--udp-gso`, `--udp-gro`) was not given.
pub fn offloads(args: &DaemonArgs) -> Offloads {
    Offloads::resolve(args.udp_offloads, args.udp_tun_offloads, args.udp_gso, args.udp_gro)
}

/// The data plane a udp backend needs, or None for kernel backends.
pub fn plane_config(backend: &AnyBackend, own: &Lease, args: &DaemonArgs) -> Option<PlaneConfig> {
    let AnyBackend::Udp(udp) = backend else { return None };
    let queues = match args.udp_queues {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    Some(PlaneConfig {
        device: DEVICE.to_string(),
        queues,
        bind: udp.bind_address(),
        icmp_source: icmp_source(udp.tun_address(&own.to_peer()), Family::V4),
        offloads: offloads(args),
        socket_buffer: SOCKET_BUFFER,
    })
}

/// Opens the TUN queues and sockets and starts the workers; their counters go to `/metrics`.
pub fn start(config: &PlaneConfig, forwarding: ForwardingReceiver, metrics: &Metrics) -> Result<(), PlaneError> {
    let counters = metrics.udp.get_or_init(|| Arc::new(Counters::default())).clone();
    plane::start(config, forwarding, counters)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn offloads_of(argv: &[&str]) -> Offloads {
        offloads(&DaemonArgs::try_parse_from([&["weftd"], argv].concat()).unwrap())
    }

    #[test]
    fn each_technique_has_its_switch_and_udp_offloads_sets_the_rest() {
        assert_eq!(offloads_of(&[]), Offloads::ALL);
        assert_eq!(offloads_of(&["--udp-offloads=false"]), Offloads::NONE);
        assert_eq!(offloads_of(&["--udp-gso=false"]), Offloads { tun: true, gso: false, gro: true });
        assert_eq!(offloads_of(&["--udp-tun-offloads=false"]), Offloads { tun: false, gso: true, gro: true });
        assert_eq!(offloads_of(&["--udp-gro=0"]), Offloads { tun: true, gso: true, gro: false });
        let tun_alone = offloads_of(&["--udp-offloads=false", "--udp-tun-offloads"]);
        assert_eq!(tun_alone, Offloads { tun: true, gso: false, gro: false });
        let err = DaemonArgs::try_parse_from(["weftd", "--udp-gso=maybe"]).unwrap_err().to_string();
        assert!(err.contains("--udp-gso"), "{err}");
    }
}
