//! Gathering the facts: weftd's `/status`, etcd, the subnet file, /proc/sys, the kernel through weft's netlink
//! layer, the firewall through weft's rule appliers, the CNI directories. Nothing here judges; a fact that cannot
//! be read is recorded with the reason, so a check can say so.
//!
//! The kernel state weft wants is worked out the way weftd does it: the backend prepared from the network config
//! for the underlay, the leases judged by the trust boundary, the backend's desired state for the accepted ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weft_backends::backend::Backend;
use weft_backends::kernel::Kernel;
use weft_backends::model::{Scope, WEFT_ROUTE_PROTOCOL};
use weft_backends::netlink::{Interface, NetlinkKernel};
use weft_backends::rules::traffic::{TrafficRules, WithTrafficRules};
use weft_backends::rules::{AnyRules, Hook, IptablesRules, IptablesVariant, NftRules, RuleSet, Rules};
use weft_backends::{Family, PerFamily, Underlay};

use super::facts::{
    BridgeNf, CniConfigFile, CniFacts, Facts, FileState, FirewallFacts, HostFacts, KernelFacts, PluginBinary,
    StoreFacts, SubnetFileFact,
};
use super::DoctorArgs;
use crate::config::NetworkConfig;
use crate::lease::Lease;
use crate::registry::LeaseSet;
use crate::status::DaemonStatus;
use crate::store::LeaseStore;
use crate::subnet_file::{self, SubnetFile};
use crate::trust::{self, TrustPolicy};

/// Where weftd writes the subnet file unless told otherwise (flannel's path).
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

pub async fn gather(args: &DoctorArgs) -> Facts {
    let weftd = crate::weftd_client::fetch_status(&args.weftd).await.map_err(|e| e.to_string());
    let reported = weftd.as_ref().ok().map(|s| PathBuf::from(&s.subnet_file)).filter(|p| !p.as_os_str().is_empty());
    let path = args.subnet_file.clone().or(reported).unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE));
    let subnet_file = read_subnet_file(&path);
    let store = read_store(args).await;
    let mut host = read_host().await;
    let (kernel, firewall) = match plan_inputs(&subnet_file, &store, weftd.as_ref().ok()) {
        Ok((config, own)) => {
            let (kernel, firewall, host_addresses) =
                read_kernel(&config, own, &store, weftd.as_ref().ok(), &subnet_file, &host.interfaces).await;
            host.host_addresses = host_addresses;
            (kernel, firewall)
        }
        Err(why) => (Err(why.clone()), Some(Err(why))),
    };
    host.kube_proxy = kube_proxy_present().await;
    let cni = read_cni(&args.cni_conf_dir, &args.cni_bin_dir).await;
    Facts {
        version: env!("CARGO_PKG_VERSION").to_string(),
        weftd_endpoint: args.weftd.clone(),
        weftd,
        subnet_file,
        store,
        host,
        kernel,
        firewall,
        cni,
    }
}

fn read_subnet_file(path: &Path) -> SubnetFileFact {
    let state = if !path.exists() {
        FileState::Missing
    } else {
        match SubnetFile::read(path) {
            Ok(file) => FileState::Present(file),
            Err(e) => FileState::Invalid(e.to_string()),
        }
    };
    SubnetFileFact { path: path.display().to_string(), state }
}

async fn read_store(args: &DoctorArgs) -> Result<StoreFacts, String> {
    let store = crate::ctl::store(&args.etcd).await.map_err(|e| e.to_string())?;
    let config = store.get_config().await.map_err(|e| e.to_string())?;
    let listing = store.list_leases().await.map_err(|e| e.to_string())?;
    let mut ttls = BTreeMap::new();
    for lease in listing.leases.iter().filter(|l| !l.is_reservation()) {
        if let Ok(Some(ttl)) = store.lease_time_to_live(lease.etcd_lease).await {
            ttls.insert(lease.etcd_lease, ttl);
        }
    }
    Ok(StoreFacts { endpoints: store.endpoints().to_string(), config_key: store.config_key(), config, listing, ttls })
}

async fn read_host() -> HostFacts {
    let mut host = HostFacts::default();
    match NetlinkKernel::connect() {
        Ok(mut kernel) => host.interfaces = kernel.interfaces().await.unwrap_or_default(),
        Err(e) => tracing::debug!(error = %e, "no netlink socket"),
    }
    let sysctl = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    host.forwarding.insert(Family::V4, sysctl("/proc/sys/net/ipv4/ip_forward"));
    host.forwarding.insert(Family::V6, sysctl("/proc/sys/net/ipv6/conf/all/forwarding"));
    if Path::new("/proc/sys/net/bridge").is_dir() {
        host.bridge_nf = Some(BridgeNf {
            call_iptables: sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables").ok(),
            call_ip6tables: sysctl("/proc/sys/net/bridge/bridge-nf-call-ip6tables").ok(),
        });
    }
    host
}

/// The network config and our lease, which the desired state is built from; or why there is none.
fn plan_inputs<'a>(
    subnet_file: &SubnetFileFact,
    store: &'a Result<StoreFacts, String>,
    weftd: Option<&DaemonStatus>,
) -> Result<(NetworkConfig, &'a Lease), String> {
    let store = store.as_ref().map_err(|_| "etcd could not be read (see the etcd check)".to_string())?;
    let text = store.config.as_ref().ok_or("there is no network config (see the etcd check)")?;
    let (config, _) = NetworkConfig::validate(text).map_err(|e| format!("the network config is invalid: {e}"))?;
    let key = match &subnet_file.state {
        FileState::Present(file) => subnet_file::lease_key(file),
        _ => None,
    }
    .or_else(|| weftd.and_then(|s| s.lease.as_ref()).and_then(|l| l.key.parse().ok()))
    .ok_or("this host holds no subnet (see the subnet-file check)")?;
    let own = store
        .listing
        .leases
        .iter()
        .find(|l| l.key == key)
        .ok_or_else(|| format!("etcd holds no lease for this host's subnet {key} (see the subnet-file check)"))?;
    Ok((config, own))
}

/// The underlay weftd uses: the one it reports, else the interface holding our lease's public IP, else the one
/// the default route leaves through.
fn pick_underlay(
    interfaces: &[Interface],
    own: &Lease,
    weftd: Option<&DaemonStatus>,
    default_route: Option<u32>,
) -> Option<Underlay> {
    let reported = weftd.and_then(|s| s.backend.as_ref()).map(|b| b.underlay.name.clone());
    let public: Vec<std::net::IpAddr> = own.to_peer().public_ips.iter().map(|(_, ip)| *ip).collect();
    let found = reported
        .and_then(|name| interfaces.iter().find(|i| i.name == name))
        .or_else(|| interfaces.iter().find(|i| i.addresses.iter().any(|a| public.contains(&a.ip()))))
        .or_else(|| default_route.and_then(|index| interfaces.iter().find(|i| i.index == index)))?;
    let mut underlay = Underlay::new(found.name.clone(), found.index, found.mtu, found.addresses.clone());
    // A public IP the interface does not own is a NAT address, published as weftd was told.
    underlay.public_ips = PerFamily::from_fn(|family| {
        own.to_peer().public_ip(family).filter(|ip| !found.addresses.iter().any(|a| a.ip() == *ip))
    });
    Some(underlay)
}

type KernelAndFirewall =
    (Result<KernelFacts, String>, Option<Result<FirewallFacts, String>>, Vec<ipnetwork::IpNetwork>);

async fn read_kernel(
    config: &NetworkConfig,
    own: &Lease,
    store: &Result<StoreFacts, String>,
    weftd: Option<&DaemonStatus>,
    subnet_file: &SubnetFileFact,
    interfaces: &[Interface],
) -> KernelAndFirewall {
    let fail = |why: String| (Err(why.clone()), Some(Err(why)), Vec::new());
    let Ok(store) = store else { return fail("etcd could not be read".into()) };
    let mut kernel = match NetlinkKernel::connect() {
        Ok(k) => k,
        Err(e) => return fail(format!("netlink socket: {e} (run weftctl doctor as root)")),
    };
    let families = config.families();
    let identity = families.first().copied().unwrap_or(Family::V4);
    let default_route = kernel.default_route_interface(identity).await.ok().flatten();
    let Some(underlay) = pick_underlay(interfaces, own, weftd, default_route) else {
        return fail("no interface holds this host's public IP and there is no default route".into());
    };
    let backend_config = match weft_backends::backend::BackendConfig::parse(&config.backend.kind, &config.backend.raw) {
        Ok(b) => b,
        Err(e) => return fail(format!("the network config's backend: {e}")),
    };
    let existing = match kernel.observe(&backend_config.existing_scope(&families, WEFT_ROUTE_PROTOCOL)).await {
        Ok(state) => state,
        Err(e) => return fail(format!("reading the kernel: {e}")),
    };
    let host_addresses = crate::daemon::host_addresses(&underlay);
    let policy =
        TrustPolicy { config: config.clone(), backend: backend_config.clone(), host_addresses: host_addresses.clone() };
    let (underlay_name, underlay_mtu) = (underlay.name.clone(), underlay.mtu);
    let prepared = match backend_config.prepare(underlay, &families, &existing, WEFT_ROUTE_PROTOCOL) {
        Ok(b) => b,
        Err(e) => return fail(format!("preparing the backend as weftd would: {e}")),
    };
    // The rules weftd keeps: as it reports them, else flannel's defaults with FLANNEL_IPMASQ from the subnet file.
    let ipmasq = matches!(&subnet_file.state, FileState::Present(f) if f.ipmasq);
    let reported = weftd.and_then(|s| s.rules.as_ref());
    let traffic = TrafficRules {
        masquerade: reported.map_or(ipmasq, |r| r.masquerade),
        forward: reported.is_none_or(|r| r.forward),
        fully_random: true,
    };
    let networks: Vec<(Family, ipnetwork::IpNetwork)> =
        families.iter().filter_map(|f| config.family(*f).map(|c| (*f, c.network))).collect();
    let backend = WithTrafficRules { backend: prepared, rules: traffic, networks: networks.clone() };
    let set = LeaseSet::from_listing(&store.listing);
    let judgement = trust::judge(&policy, &backend, own, &set);
    let route_networks: Vec<ipnetwork::IpNetwork> = networks.iter().map(|(_, n)| *n).collect();
    let scope = Scope { route_networks: route_networks.clone(), ..backend.scope() };
    let observed = match kernel.observe(&scope).await {
        Ok(state) => state,
        Err(e) => return fail(format!("reading the kernel: {e}")),
    };
    let kernel_facts = KernelFacts {
        backend: backend.backend_type().to_string(),
        underlay: underlay_name,
        underlay_mtu,
        mtu: backend.mtu(),
        desired: judgement.desired.state.clone(),
        observed,
        networks: route_networks.clone(),
        rejected: judgement.rejected.clone(),
    };
    let firewall = if scope.tables.is_empty() {
        None
    } else {
        Some(read_firewall(config, &scope, &judgement.desired.rules, traffic.forward, route_networks, reported).await)
    };
    (Ok(kernel_facts), firewall, host_addresses)
}

async fn read_firewall(
    config: &NetworkConfig,
    scope: &Scope,
    desired: &RuleSet,
    forward_rules: bool,
    networks: Vec<ipnetwork::IpNetwork>,
    reported: Option<&crate::status::RulesStatus>,
) -> Result<FirewallFacts, String> {
    let mut facts = FirewallFacts { desired: desired.clone(), forward_rules, networks, ..FirewallFacts::default() };
    let (mut rules, variant) = if config.enable_nftables {
        facts.firewall = "nftables".to_string();
        (AnyRules::Nft(NftRules::system()), None)
    } else {
        // The variant weftd reported, else the one it would detect.
        let variant = match reported.map(|r| r.firewall.as_str()) {
            Some("iptables (Legacy)") => IptablesVariant::Legacy,
            Some("iptables (Nft)") => IptablesVariant::Nft,
            Some(_) => IptablesVariant::Default,
            None => IptablesRules::system(IptablesVariant::Default).detect_variant().await,
        };
        facts.firewall = format!("iptables ({variant:?})");
        (AnyRules::Iptables(IptablesRules::system(variant).expecting(desired)), Some(variant))
    };
    facts.observed = rules.observe(&scope.tables).await.map_err(|e| e.to_string())?;
    match variant {
        Some(variant) => {
            for family in config.families() {
                let program = variant.program(family, "-save");
                if let Some(policy) = run(&program, &["-t", "filter"]).await.and_then(|t| forward_policy(&t)) {
                    facts.forward_policy.insert(family, policy);
                }
            }
        }
        None => {
            facts.foreign_chains =
                rules.observe_foreign(Hook::Forward, &scope.tables).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(facts)
}

/// Runs a program; its stdout when it succeeded.
async fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = tokio::process::Command::new(program).args(args).kill_on_drop(true).output().await.ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The FORWARD policy in `iptables-save -t filter` output (`:FORWARD DROP [0:0]`).
pub fn forward_policy(save: &str) -> Option<String> {
    save.lines()
        .find_map(|l| l.strip_prefix(":FORWARD "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(String::from)
}

/// Whether kube-proxy's chains are in the firewall (iptables or nftables mode).
async fn kube_proxy_present() -> bool {
    if let Some(text) = run("iptables-save", &["-t", "nat"]).await {
        if text.contains(":KUBE-SERVICES") {
            return true;
        }
    }
    run("nft", &["list", "tables"]).await.is_some_and(|t| t.contains("kube-proxy"))
}

async fn read_cni(conf_dir: &Path, bin_dir: &Path) -> CniFacts {
    let configs = read_cni_configs(conf_dir);
    let mut plugins = Vec::new();
    for name in ["weft", "flannel"] {
        let path = bin_dir.join(name);
        let version = if !path.is_file() {
            Err(format!("{} does not exist", path.display()))
        } else {
            match tokio::process::Command::new(&path).arg("--version").kill_on_drop(true).output().await {
                Ok(out) if out.status.success() => {
                    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string())
                }
                Ok(out) => Err(format!("--version exited with {}", out.status)),
                Err(e) => Err(e.to_string()),
            }
        };
        plugins.push(PluginBinary { name: name.to_string(), path: path.display().to_string(), version });
    }
    CniFacts { conf_dir: conf_dir.display().to_string(), bin_dir: bin_dir.display().to_string(), configs, plugins }
}

/// The network configs in `dir` in the order libcni loads them: `.conf`, `.conflist` and `.json` files by name.
fn read_cni_configs(dir: &Path) -> Result<Vec<CniConfigFile>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conf" | "conflist" | "json")))
        .collect();
    paths.sort();
    Ok(paths.iter().map(|p| parse_cni_config(&p.display().to_string(), std::fs::read_to_string(p))).collect())
}

/// One network config file: its plugin types, and the subnet file and bridge of its weft plugin.
pub fn parse_cni_config(path: &str, text: std::io::Result<String>) -> CniConfigFile {
    let mut file = CniConfigFile { path: path.to_string(), ..CniConfigFile::default() };
    let value = match text
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            file.error = Some(e);
            return file;
        }
    };
    // A conflist chains plugins; a single .conf is one plugin.
    let plugins = value["plugins"].as_array().cloned().unwrap_or_else(|| vec![value.clone()]);
    for plugin in &plugins {
        let kind = plugin["type"].as_str().unwrap_or_default().to_string();
        if (kind == "weft" || kind == "flannel") && file.subnet_file.is_none() {
            file.subnet_file = plugin["subnetFile"].as_str().map(String::from);
            file.bridge = plugin["bridge"].as_str().or(plugin["delegate"]["bridge"].as_str()).map(String::from);
        }
        file.types.push(kind);
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, index: u32, addrs: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            index,
            mtu: 1500,
            up: true,
            mac: None,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            master: None,
        }
    }

    #[test]
    fn the_underlay_is_weftds_else_the_public_ips_else_the_default_routes() {
        let interfaces = [iface("eth0", 2, &["198.18.0.1/24"]), iface("eth1", 3, &["192.0.2.7/24"])];
        let mut own = Lease {
            key: "10.244.1.0-24".parse().unwrap(),
            attrs: std::sync::Arc::new(crate::lease::LeaseAttrs {
                public_ip: Some("192.0.2.7".parse().unwrap()),
                ..Default::default()
            }),
            etcd_lease: 1,
            mod_revision: 1,
        };
        let reported = DaemonStatus {
            backend: Some(crate::status::BackendStatus {
                underlay: crate::status::UnderlayStatus { name: "eth0".into(), ..Default::default() },
                ..Default::default()
            }),
            ..Default::default()
        };
        let weftds = pick_underlay(&interfaces, &own, Some(&reported), Some(3)).unwrap();
        assert_eq!(weftds.name, "eth0");
        assert_eq!(weftds.public_ip(Family::V4), Some("192.0.2.7".parse().unwrap()), "a NAT address is published");
        assert_eq!(pick_underlay(&interfaces, &own, None, Some(2)).unwrap().name, "eth1", "the one with our IP");
        std::sync::Arc::make_mut(&mut own.attrs).public_ip = Some("203.0.113.9".parse().unwrap());
        assert_eq!(pick_underlay(&interfaces, &own, None, Some(2)).unwrap().name, "eth0", "the default route's");
        assert!(pick_underlay(&interfaces, &own, None, None).is_none());
    }

    #[test]
    fn reads_the_forward_policy_from_iptables_save() {
        let save = "# Generated\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [3:180]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(forward_policy(save).as_deref(), Some("DROP"));
        assert_eq!(forward_policy("*filter\nCOMMIT\n"), None);
    }

    #[test]
    fn reads_cni_configs_as_libcni_does() {
        let conflist =
            parse_cni_config("/etc/cni/net.d/10-weft.conflist", Ok(crate::cni_install::CONFLIST.to_string()));
        assert_eq!(conflist.types, ["weft", "portmap"]);
        assert_eq!(conflist.subnet_file.as_deref(), Some("/run/flannel/subnet.env"));
        assert!(conflist.uses_weft() && conflist.error.is_none());
        let flannel = parse_cni_config("x.conf", Ok(r#"{"type":"flannel","delegate":{"bridge":"cbr0"}}"#.into()));
        assert_eq!((flannel.types.as_slice(), flannel.bridge.as_deref()), (&["flannel".to_string()][..], Some("cbr0")));
        assert!(parse_cni_config("y.conf", Ok("{".into())).error.is_some());
    }
}
