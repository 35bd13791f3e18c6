//! What `weftctl doctor` found on the host, as plain values: the checks are pure functions over these, so each one
//! is tested with hand-made facts and no root. [`super::gather`] fills them in from the kernel, files, the
//! firewall, etcd and weftd.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use weft_backends::model::KernelState;
use weft_backends::netlink::Interface;
use weft_backends::rules::foreign::ForeignChain;
use weft_backends::rules::RuleSet;
use weft_backends::Family;

use crate::status::DaemonStatus;
use crate::store::Listing;
use crate::store::TimeToLive;
use crate::subnet_file::SubnetFile;

/// Everything the checks look at.
#[derive(Debug)]
pub struct Facts {
    /// weftctl's own version (the plugin and weftd should match it).
    pub version: String,
    pub weftd_endpoint: String,
    /// weftd's `/status`, or why it did not answer.
    pub weftd: Result<DaemonStatus, String>,
    pub subnet_file: SubnetFileFact,
    /// What etcd holds, or why it could not be read.
    pub store: Result<StoreFacts, String>,
    pub host: HostFacts,
    /// The kernel state weft wants next to what the kernel has, or why it could not be worked out.
    pub kernel: Result<KernelFacts, String>,
    /// The firewall rules weft wants next to what the firewall has, or why they could not be read. None when weft
    /// keeps no rules on this host.
    pub firewall: Option<Result<FirewallFacts, String>>,
    pub cni: CniFacts,
}

#[derive(Debug, Clone)]
pub struct SubnetFileFact {
    pub path: String,
    pub state: FileState<SubnetFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState<T> {
    Missing,
    /// Present but unreadable or invalid, with the error.
    Invalid(String),
    Present(T),
}

#[derive(Debug, Default)]
pub struct StoreFacts {
    pub endpoints: String,
    /// The network config's key and text (None: no config).
    pub config_key: String,
    pub config: Option<String>,
    pub listing: Listing,
    /// The TTL of each etcd lease a listed lease is attached to, by etcd lease id.
    pub ttls: BTreeMap<i64, TimeToLive>,
}

/// The host itself: interfaces and the kernel switches weft depends on.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub interfaces: Vec<Interface>,
    /// The forwarding sysctl of each family: `net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`, as read (or the
    /// read error).
    pub forwarding: BTreeMap<Family, Result<String, String>>,
    /// `net.bridge.bridge-nf-call-iptables` and `-ip6tables`; None when br_netfilter is not loaded (no
    /// /proc/sys/net/bridge).
    pub bridge_nf: Option<BridgeNf>,
    /// kube-proxy's chains are in the firewall (then bridged pod traffic must pass iptables).
    pub kube_proxy: bool,
    /// This host's addresses as weftd protects them (underlay and public IPs); empty when the underlay is unknown.
    pub host_addresses: Vec<IpNetwork>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNf {
    pub call_iptables: Option<String>,
    pub call_ip6tables: Option<String>,
}

/// What weft wants in the kernel and what is there, over the same scope.
#[derive(Debug, Clone, Default)]
pub struct KernelFacts {
    pub backend: String,
    /// The underlay interface the desired state was built for.
    pub underlay: String,
    pub underlay_mtu: u32,
    /// The MTU containers should get (FLANNEL_MTU).
    pub mtu: u32,
    pub desired: KernelState,
    pub observed: KernelState,
    /// The cluster networks, IPv4 first.
    pub networks: Vec<IpNetwork>,
    /// The leases this host does not program, as weftd judges them: the trust boundary's reasons and the
    /// backend's (a host-gw peer off our segment).
    pub rejected: Vec<crate::trust::Rejected>,
}

/// What weft wants in the firewall and what is there.
#[derive(Debug, Clone, Default)]
pub struct FirewallFacts {
    /// `nftables` or `iptables (Variant)`.
    pub firewall: String,
    pub desired: RuleSet,
    pub observed: RuleSet,
    /// weft adds FORWARD accepts for the cluster network (`--iptables-forward-rules`).
    pub forward_rules: bool,
    /// The policy of iptables' FORWARD chain by family, where iptables is the firewall (`ACCEPT`, `DROP`).
    pub forward_policy: BTreeMap<Family, String>,
    /// Forward base chains of nftables tables that are not weft's, where weftd puts its accepts atop a drop
    /// policy (nftables only).
    pub foreign_chains: Vec<ForeignChain>,
    pub networks: Vec<IpNetwork>,
}

/// The CNI set-up: the runtime's network configs and the plugin binaries.
#[derive(Debug, Clone)]
pub struct CniFacts {
    pub conf_dir: String,
    pub bin_dir: String,
    /// The network configs in `conf_dir`, in the order runtimes load them (by file name), or why it is unreadable.
    pub configs: Result<Vec<CniConfigFile>, String>,
    /// `weft` and `flannel` in `bin_dir`.
    pub plugins: Vec<PluginBinary>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniConfigFile {
    pub path: String,
    /// The plugin types it chains, in order.
    pub types: Vec<String>,
    /// The subnet file its weft (or flannel) plugin reads.
    pub subnet_file: Option<String>,
    /// The bridge its weft plugin attaches containers to (default cni0).
    pub bridge: Option<String>,
    /// Why it could not be read as a network config.
    pub error: Option<String>,
}

impl CniConfigFile {
    /// Whether the runtime gets weft from it (type `weft`, or `flannel`, which weft can be installed as).
    pub fn uses_weft(&self) -> bool {
        self.types.iter().any(|t| t == "weft" || t == "flannel")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginBinary {
    pub name: String,
    pub path: String,
    /// The first line of `<plugin> --version`; Err when the file is missing or did not answer.
    pub version: Result<String, String>,
}
