//! weftd from start to stop.
//!
//! Startup: network config from etcd -> interface -> backend devices prepared -> lease acquired -> kernel state for
//! the current peers -> subnet file written. Then the lease keeper, the lease-set watcher and the reconcile loop
//! run side by side. Shutdown leaves the kernel state and the lease in place, so a restart changes nothing on the
//! wire.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use weft_backends::backend::{Backend, BackendConfig};
use weft_backends::blackhole::WithBlackholeRoute;
use weft_backends::kernel::Kernel;
use weft_backends::model::WEFT_ROUTE_PROTOCOL;
use weft_backends::netlink::{self, NetlinkKernel};
use weft_backends::rules::traffic::{TrafficRules, WithTrafficRules};
use weft_backends::rules::{AnyRules, IptablesRules, IptablesVariant, NftRules};
use weft_backends::{Family, Peer, PerFamily, Underlay};

use crate::backoff::Backoff;
use crate::config::NetworkConfig;
use crate::controller::Controller;
use crate::flags::DaemonArgs;
use crate::http::{self, Metrics};
use crate::iface::{self, HostFacts, IfaceOptions};
use crate::lease::{BackendData, LeaseAttrs};
use crate::own_lease::LeaseManager;
use crate::registry::{self, LeaseSet};
use crate::status::{BackendStatus, RulesStatus};
use crate::store::any::AnyStore;
use crate::store::etcd::EtcdStore;
use crate::store::kubernetes::KubeStore;
use crate::store::{LeaseStore, Listing};
use crate::subnet_file::{self, SubnetFile};
use crate::trust::TrustPolicy;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Iface(#[from] iface::IfaceError),
    #[error(transparent)]
    Backend(#[from] weft_backends::BackendError),
    #[error(transparent)]
    Kernel(#[from] weft_backends::kernel::KernelError),
    #[error(transparent)]
    SubnetFile(#[from] crate::subnet_file::SubnetFileError),
    #[error("--subnet-file {path}: cannot write there: {source}")]
    SubnetFileNotWritable {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink socket: {0}")]
    Netlink(std::io::Error),
    #[error("weftd stops: one of its tasks panicked ({0}); the kernel state and the lease stay for the next start")]
    TaskPanicked(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    UdpPlane(#[from] weft_backends::udp::plane::PlaneError),
    #[error(transparent)]
    WgPlane(#[from] weft_backends::wireguard::plane::WgPlaneError),
    #[error(transparent)]
    WgPath(#[from] weft_backends::wireguard::kernel_device::WgPathError),
    #[error("--healthz-port: cannot listen on {addr}: {source}")]
    Healthz {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the daemon until SIGTERM/SIGINT. Returns an error only for problems an operator must fix first.
pub async fn run(args: DaemonArgs) -> Result<(), StartupError> {
    for warning in args.flannel.check().map_err(StartupError::Unsupported)? {
        warn!("{warning}");
    }
    let (shutdown_tx, mut shutdown) = watch::channel(false);
    tokio::spawn(wait_for_signal(shutdown_tx));
    let metrics = Arc::new(Metrics::default());
    let mut tasks = tokio::task::JoinSet::new();
    if args.healthz_port != 0 {
        // Bound before anything else, so /healthz answers while weftd waits for etcd or its config.
        let addr = std::net::SocketAddr::new(args.healthz_ip, args.healthz_port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| StartupError::Healthz { addr, source })?;
        tasks.spawn(http::serve(listener, metrics.clone(), shutdown.clone()));
    }

    // The Kubernetes client first: its settings (kubeconfig, in-cluster account, Node name) are checked without
    // touching the host.
    let kube = match args.kube.kube_subnet_mgr {
        true => Some(KubeStore::connect(&args.kube.settings()).await?),
        false => None,
    };
    // Before etcd, so nothing is claimed for a host that could not use it: the subnet file can be written and
    // the interface exists.
    subnet_file::check_writable(&args.subnet_file)
        .map_err(|source| StartupError::SubnetFileNotWritable { path: args.subnet_file.clone(), source })?;
    let mut kernel = NetlinkKernel::connect().map_err(StartupError::Netlink)?;
    if !args.route_nexthops {
        kernel.use_plain_routes();
    }
    iface::check_present(&args.iface, &kernel.interfaces().await?)?;

    let store = if let Some(store) = kube {
        info!(api = %store.server(), node = %store.node_name(), "weftd starting with the Kubernetes subnet manager");
        AnyStore::Kube(store)
    } else {
        let user = args.etcd_username.clone().zip(args.etcd_password.clone());
        let store = EtcdStore::connect_secured(&args.etcd_endpoints, &args.etcd_prefix, user, &args.etcd_tls()).await?;
        info!(endpoints = %store.endpoints(), prefix = %args.etcd_prefix, "weftd starting");
        AnyStore::Etcd(store)
    };
    metrics.status.update(|s| {
        s.store.endpoints = store.endpoints();
        s.subnet_file = args.subnet_file.display().to_string();
    });

    let Some((config, backend_config)) = wait_for_config(&store, &mut shutdown).await else { return Ok(()) };
    let store = match store {
        // Only the enabled families' annotations are read and written, as flanneld does.
        AnyStore::Kube(kube) => AnyStore::Kube(kube.for_config(&config)),
        etcd => etcd,
    };
    let identity_family = if config.networks.v4.is_some() { Family::V4 } else { Family::V6 };
    let underlay = pick_underlay(&mut kernel, &args, identity_family).await?;
    let address = underlay.address(identity_family).map_or("-".to_string(), |a| a.to_string());
    info!(interface = %underlay.name, %address, mtu = underlay.mtu, "using interface");

    let families = config.families();
    // Everything backend-specific is behind the Backend seam from here on: what it owns, its devices, its lease
    // data and MTU.
    let existing = kernel.observe(&backend_config.existing_scope(&families, WEFT_ROUTE_PROTOCOL)).await?;
    let policy = TrustPolicy {
        config: config.clone(),
        backend: backend_config.clone(),
        host_addresses: host_addresses(&underlay),
    };
    let mut backend = backend_config.prepare(underlay.clone(), &families, &existing, WEFT_ROUTE_PROTOCOL)?;
    crate::wg_plane::choose_path(&mut backend, &metrics)?;
    for note in backend.notes() {
        warn!("{note}");
    }
    let devices = backend.desired(&Peer::default(), &[]).state.links;
    for link in devices.values().filter(|l| l.is_owned()) {
        info!(device = %link.name, mac = %link.mac, mtu = link.mtu, backend = backend.backend_type(), "device prepared");
    }

    let attrs = LeaseAttrs {
        public_ip: underlay.public_ip(Family::V4).filter(|_| config.networks.v4.is_some()).and_then(v4),
        public_ipv6: underlay.public_ip(Family::V6).filter(|_| config.networks.v6.is_some()).and_then(v6),
        backend_type: backend.backend_type().into(),
        backend_data: backend.lease_data(Family::V4).map(BackendData::from),
        backend_v6_data: backend.lease_data(Family::V6).map(BackendData::from),
    };
    let previous = SubnetFile::read(&args.subnet_file).ok().and_then(|f| subnet_file::lease_key(&f));
    let manager = Arc::new(LeaseManager {
        store: store.clone(),
        config: config.clone(),
        attrs,
        ttl: args.subnet_lease_ttl,
        metrics: metrics.clone(),
    });
    let Some((own, listed)) = manager.acquire_listed(previous.as_slice(), &mut shutdown).await else { return Ok(()) };

    // Program the current peers before announcing readiness, so the first container has a working network. The
    // claim's check listed every lease after our write: that listing is as good as a new one (the watch starts
    // after its revision), and at 10,000 peers a listing is tens of milliseconds of the cold start.
    let listing = match listed {
        Some(listing) => Some(listing),
        None => list_with_retry(&store, &mut shutdown).await,
    };
    let Some(mut listing) = listing else { return Ok(()) };
    let mtu = backend.mtu();
    let udp_plane = crate::udp_plane::plane_config(&backend, &own, &args);
    let wg_planes = crate::wg_plane::plane_configs(&backend, &args);
    let wg_kernel_devices = crate::wg_plane::kernel_devices(&backend);
    let backend = WithTrafficRules {
        backend: WithBlackholeRoute { backend, enabled: args.ip_blackhole_route },
        rules: TrafficRules {
            masquerade: args.ip_masq,
            forward: args.iptables_forward_rules,
            fully_random: !args.ip_masq_fully_random_disable,
        },
        networks: families.iter().filter_map(|f| config.family(*f).map(|c| (*f, c.network))).collect(),
    };
    // flannel's EnableNFTables: nftables tables of our own; otherwise flannel's iptables chains, in the iptables
    // backend the host's other tools use (docs/backends.md explains why that is where a FORWARD accept counts).
    let (rules, firewall) = if config.enable_nftables {
        (AnyRules::Nft(NftRules::system()), "nftables".to_string())
    } else {
        let iptables = IptablesRules::system(IptablesVariant::Default);
        let variant = iptables.detect_variant().await;
        info!(?variant, "firewall rules go through iptables");
        (AnyRules::Iptables(iptables.with_variant(variant)), format!("iptables ({variant:?})"))
    };
    metrics.status.update(|s| {
        s.backend = Some(BackendStatus::of(backend.backend.backend_type(), mtu, &underlay, devices.values()));
        s.rules = Some(RulesStatus { firewall, masquerade: args.ip_masq, forward: args.iptables_forward_rules });
    });
    let mut controller = Controller::new(kernel, rules, backend, policy, metrics.clone());
    controller.claim_routes_into(config.networks.iter().map(|(_, family)| family.network).collect());
    if let Some(plane) = udp_plane {
        // Before the first pass: the pass configures the TUN the data plane opens.
        crate::udp_plane::start(&plane, controller.forwarding(), &metrics)?;
    }
    crate::wg_plane::start(&wg_planes, &controller.forwarding(), &metrics)?;
    crate::wg_plane::start_kernel(wg_kernel_devices, &controller.forwarding())?;
    // One copy of the set serves the startup pass and then the watch channel: the leases move out of the listing.
    let peers = listing.leases.len().saturating_sub(1);
    let initial_set = Arc::new(LeaseSet::take_from_listing(&mut listing));
    let (leases_tx, leases_rx) = watch::channel(initial_set.clone());
    // The watch starts before the kernel is programmed, so changes made meanwhile are on their way when the loop
    // starts (etcd catches up a watch that starts in the past only every 100 ms).
    tasks.spawn(registry::run(store.clone(), listing, leases_tx, metrics.clone(), shutdown.clone()));
    let applied = match controller.startup_pass(&own, &initial_set).await {
        Ok(report) if report.is_clean() => report.applied.len(),
        Ok(report) => {
            warn!("some kernel or firewall operations failed at startup; the reconcile loop retries them");
            report.applied.len()
        }
        Err(e) => {
            warn!(error = %e, "could not program the kernel at startup; the reconcile loop retries");
            0
        }
    };
    if applied >= crate::controller::RELEASE_MEMORY_AFTER_OPS {
        crate::controller::release_freed_memory();
    }
    subnet_file::for_lease(&config, &own.key, mtu, args.ip_masq).write(&args.subnet_file)?;
    metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = crate::sd_notify::notify("READY=1") {
        warn!(error = %e, "cannot notify systemd of readiness");
    }
    info!(subnet = %own.key, file = %args.subnet_file.display(), peers, "weftd ready");
    if let (AnyStore::Kube(kube), true) = (&store, args.kube.set_node_network_unavailable) {
        tasks.spawn(clear_network_unavailable(kube.clone(), shutdown.clone()));
    }

    drop(initial_set);
    let (own_tx, own_rx) = watch::channel(own.clone());
    let kernel_events = netlink::watch_deletions(controller.scope()).unwrap_or_else(|e| {
        warn!(error = %e, "cannot subscribe to netlink notifications; drift is repaired on the periodic resync only");
        mpsc::unbounded_channel().1
    });

    let every = args.resync_interval;
    tasks.spawn(crate::config_watch::run(store.clone(), config.clone(), every, metrics.clone(), shutdown.clone()));
    tasks.spawn(manager.clone().keep(own, own_tx, leases_rx.clone(), shutdown.clone()));
    tasks.spawn(rewrite_subnet_file_on_change(config.clone(), args.clone(), mtu, own_rx.clone(), shutdown.clone()));
    tasks.spawn(controller.run(own_rx, leases_rx, kernel_events, args.resync_interval, shutdown.clone()));
    if let Some(keeper) = crate::cni_masq_keeper::for_this_netns(metrics.cni_masq_bad_records.clone()) {
        tasks.spawn(crate::cni_masq_keeper::run(keeper, every, shutdown.clone()));
    }
    while let Some(ended) = tasks.join_next().await {
        // One task gone by a panic would leave the others running a host that no longer does its job (a lease
        // kept alive that nobody programs routes for): stop, and let the service manager start weftd again, which
        // changes nothing in the data plane. Release builds abort on a panic (Cargo.toml); this covers the others.
        if let Some(panic) = ended.err().and_then(|e| e.try_into_panic().ok()) {
            return Err(StartupError::TaskPanicked(panic_message(panic.as_ref())));
        }
    }
    info!("weftd stopped; kernel state and lease left in place for the next start");
    Ok(())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    text.unwrap_or("(no message)").to_string()
}

fn v4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

fn v6(ip: IpAddr) -> Option<std::net::Ipv6Addr> {
    match ip {
        IpAddr::V6(v) => Some(v),
        IpAddr::V4(_) => None,
    }
}

async fn wait_for_signal(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("cannot install signal handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!("{name} received; shutting down");
    let _ = tx.send(true);
}

/// This host's addresses as the trust boundary protects them: the underlay's, with their connected prefixes, and
/// the public IPs published in our lease (as single addresses, when they differ: NAT).
pub fn host_addresses(underlay: &Underlay) -> Vec<IpNetwork> {
    let mut addresses = underlay.addresses.clone();
    for (_, &ip) in underlay.public_ips.iter() {
        if !addresses.iter().any(|a| a.ip() == ip) {
            addresses.push(IpNetwork::new(ip, Family::of(ip).host_prefix()).expect("a host prefix is valid"));
        }
    }
    addresses
}

/// Reads the network config, waiting while it is missing or invalid: both are fixed by writing the key, and a
/// daemon that stays up picks the fix up without a restart loop.
async fn wait_for_config(
    store: &AnyStore,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(NetworkConfig, BackendConfig)> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
    let mut last_complaint = String::new();
    loop {
        let complaint = match store.get_config().await {
            Ok(Some(text)) => match NetworkConfig::validate(&text) {
                Ok((config, backend)) => {
                    for w in &config.warnings {
                        warn!("network config: {w}");
                    }
                    info!(config = %text.trim(), "network config loaded");
                    return Some((config, backend));
                }
                Err(e) => format!("{e}; fix the network config ({})", store.config_location()),
            },
            Ok(None) => format!("no network config ({}); {}", store.config_location(), store.config_hint()),
            Err(e) => format!("cannot read the network config: {e}"),
        };
        if complaint != last_complaint {
            warn!("{complaint}; waiting");
            last_complaint = complaint;
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Clears our Node's NetworkUnavailable condition once the network is up (flanneld's
/// --set-node-network-unavailable), retrying while the API server is unreachable.
async fn clear_network_unavailable(store: KubeStore, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::store();
    loop {
        match store.clear_network_unavailable().await {
            Ok(()) => {
                info!(node = %store.node_name(), "cleared the Node's NetworkUnavailable condition");
                return;
            }
            Err(e) => warn!(error = %e, "cannot clear the Node's NetworkUnavailable condition yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn pick_underlay(
    kernel: &mut NetlinkKernel,
    args: &DaemonArgs,
    family: Family,
) -> Result<Underlay, StartupError> {
    let interfaces = kernel.interfaces().await?;
    let default_route_index = kernel.default_route_interface(family).await?;
    // No route to the target only fails --iface-can-reach, which comes after --iface and --iface-regex.
    let can_reach_source = args.iface_can_reach.and_then(|target| iface::source_address_towards(target).ok());
    let opts = IfaceOptions {
        ifaces: args.iface.clone(),
        regexes: args.iface_regex.clone(),
        can_reach: args.iface_can_reach,
        public_ips: PerFamily::new(args.public_ip.map(IpAddr::V4), args.public_ipv6.map(IpAddr::V6)),
    };
    let facts = HostFacts { interfaces: &interfaces, default_route_index, can_reach_source };
    Ok(iface::select(&opts, &facts, family)?)
}

async fn list_with_retry(store: &impl LeaseStore, shutdown: &mut watch::Receiver<bool>) -> Option<Listing> {
    let mut backoff = Backoff::store();
    loop {
        match store.list_leases().await {
            Ok(listing) => return Some(listing),
            Err(e) => warn!(error = %e, "cannot list leases; retrying"),
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Keeps the subnet file in step with our lease when it had to be re-acquired.
async fn rewrite_subnet_file_on_change(
    config: NetworkConfig,
    args: DaemonArgs,
    mtu: u32,
    mut own: watch::Receiver<crate::lease::Lease>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = own.changed() => {
                if changed.is_err() { return; }
                let key = own.borrow_and_update().key;
                let file = subnet_file::for_lease(&config, &key, mtu, args.ip_masq);
                match file.write(&args.subnet_file) {
                    Ok(()) => info!(subnet = %key, file = %args.subnet_file.display(), "subnet file updated"),
                    Err(e) => error!(error = %e, "cannot update the subnet file"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_panic_is_told_with_its_message() {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async { panic!("lease {} is gone", "10.244.1.0-24") });
        tasks.spawn(async { panic!("plain") });
        let mut messages = Vec::new();
        while let Some(ended) = tasks.join_next().await {
            let panic = ended.unwrap_err().try_into_panic().unwrap();
            messages.push(panic_message(panic.as_ref()));
        }
        messages.sort();
        assert_eq!(messages, ["lease 10.244.1.0-24 is gone", "plain"]);
    }
}
