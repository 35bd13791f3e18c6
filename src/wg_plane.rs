//! weftd's glue for the wireguard backend's userspace data plane: one plane per WireGuard device, started before
//! the first reconcile pass (which configures the TUN the plane opens), following the forwarding table after.

use std::sync::Arc;

use weft_backends::backend::AnyBackend;
use weft_backends::forwarding::ForwardingReceiver;
use weft_backends::udp::counters::Counters;
use weft_backends::wireguard::plane::{self, WgPlaneConfig, WgPlaneError};

use crate::flags::DaemonArgs;
use crate::http::Metrics;
use crate::udp_plane::SOCKET_BUFFER;

/// The data planes a wireguard backend needs (one per device), or none for other backends.
pub fn plane_configs(backend: &AnyBackend, args: &DaemonArgs) -> Vec<WgPlaneConfig> {
    let AnyBackend::Wireguard(wg) = backend else { return Vec::new() };
    let queues = match args.udp_queues {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    wg.devices
        .iter()
        .map(|device| WgPlaneConfig {
            device: device.name.clone(),
            families: device.families.clone(),
            bind: wg.bind_address(device),
            private_key: wg.private_key,
            psk: wg.config.psk,
            persistent_keepalive: wg.config.persistent_keepalive,
            queues,
            offloads: args.udp_offloads,
            socket_buffer: SOCKET_BUFFER,
        })
        .collect()
}

/// Starts every device's data plane; their counters go to `/metrics` with the udp backend's names.
pub fn start(
    configs: &[WgPlaneConfig],
    forwarding: &ForwardingReceiver,
    metrics: &Metrics,
) -> Result<(), WgPlaneError> {
    let counters = metrics.udp.get_or_init(|| Arc::new(Counters::default())).clone();
    for config in configs {
        plane::start(config, forwarding.clone(), counters.clone())?;
    }
    Ok(())
}
