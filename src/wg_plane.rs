//! weftd's glue for the wireguard backend's data paths. At start the kernel is probed for WireGuard devices
//! ([`choose_path`]; `WEFT_WIREGUARD_PATH` forces one). Userspace: one plane per device, started before the first
//! reconcile pass (which configures the TUN the plane opens), following the forwarding table after. Kernel: one
//! thread writing the forwarding table's peers into the kernel devices over generic netlink ([`start_kernel`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_backends::backend::AnyBackend;
use weft_backends::forwarding::ForwardingReceiver;
use weft_backends::udp::counters::Counters;
use weft_backends::wireguard::kernel_device::{self, DataPath, GenlSocket, KernelDevice, PathChoice, WgPathError};
use weft_backends::wireguard::keys::Key;
use weft_backends::wireguard::plane::{self, PeerSpec, WgPlaneConfig, WgPlaneError};

use crate::flags::DaemonArgs;
use crate::http::Metrics;
use crate::udp_plane::SOCKET_BUFFER;

/// The data planes a wireguard backend needs (one per device), or none for other backends.
pub fn plane_configs(backend: &AnyBackend, args: &DaemonArgs) -> Vec<WgPlaneConfig> {
    let AnyBackend::Wireguard(wg) = backend else { return Vec::new() };
    if wg.data_path == DataPath::Kernel {
        return Vec::new();
    }
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
            offloads: crate::udp_plane::offloads(args),
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

/// For a wireguard backend: reads [`PATH_ENV`], probes the kernel in weftd's netns, sets the backend's data path
/// (which decides the device kind in the desired state), logs the decision and shows it in /metrics.
pub fn choose_path(backend: &mut AnyBackend, metrics: &Metrics) -> Result<(), WgPathError> {
    let AnyBackend::Wireguard(wg) = backend else { return Ok(()) };
    let choice = PathChoice::from_env()?;
    let decision = kernel_device::choose_here(choice)?;
    tracing::info!(path = %decision.path, "WireGuard data path: {decision}");
    wg.data_path = decision.path;
    let _ = metrics.wireguard_path.set(decision.path.name());
    Ok(())
}

/// The kernel path's devices, or none (another backend, or the userspace path).
pub fn kernel_devices(backend: &AnyBackend) -> Vec<KernelDevice> {
    match backend {
        AnyBackend::Wireguard(wg) if wg.data_path == DataPath::Kernel => wg.kernel_devices(),
        _ => Vec::new(),
    }
}

/// How long a failed device write waits before the whole set is written again (the device may not exist yet:
/// the reconcile loop creates it on its first pass).
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts the thread that writes the forwarding table's peers into the kernel devices. The "wireguard" family is
/// resolved here, so a kernel without it fails the start with the reason.
pub fn start_kernel(devices: Vec<KernelDevice>, forwarding: &ForwardingReceiver) -> Result<(), WgPathError> {
    if devices.is_empty() {
        return Ok(());
    }
    let mut socket = GenlSocket::open()?;
    let mut forwarding = forwarding.clone();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("wg-kernel-peers".into())
        .spawn(move || {
            let mut written: Vec<Option<BTreeMap<Key, PeerSpec>>> = vec![None; devices.len()];
            loop {
                let table = forwarding.borrow_and_update().clone();
                let mut failed = false;
                for (device, previous) in devices.iter().zip(written.iter_mut()) {
                    let wanted = device.wanted(&table);
                    let Some(update) = device.update(previous.as_ref(), &wanted) else { continue };
                    match socket.write(&update) {
                        Ok(()) => {
                            tracing::info!(device = %device.name, peers = wanted.len(), "kernel WireGuard peers written");
                            *previous = Some(wanted);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kernel WireGuard device not written; the whole set is written again");
                            *previous = None;
                            failed = true;
                        }
                    }
                }
                let next = async {
                    if failed {
                        tokio::time::sleep(RETRY_AFTER).await;
                        Ok(())
                    } else {
                        forwarding.changed().await
                    }
                };
                if runtime.block_on(next).is_err() {
                    return;
                }
            }
        })
        .map_err(WgPathError::Spawn)?;
    Ok(())
}
