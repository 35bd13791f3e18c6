//! weftd's `--kube-subnet-mgr` flags, spelled and defaulted as flanneld's (kube-flannel.yml passes them).

use std::path::PathBuf;

use crate::flags::parse_go_bool;
use crate::store::kube_node::DEFAULT_ANNOTATION_PREFIX;
use crate::store::kubernetes::KubeSettings;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeArgs {
    /// lease subnets from the Kubernetes API instead of etcd: this host's subnet is its Node's pod CIDR, its lease
    /// value goes into the Node's annotations (flannel's), peers are the Nodes that carry them
    #[arg(long, env = "WEFTD_KUBE_SUBNET_MGR", default_value = "false", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub kube_subnet_mgr: bool,

    /// Kubernetes API server URL (default: the kubeconfig's server, else the pod's in-cluster config)
    #[arg(long, env = "WEFTD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,

    /// prefix of the Node annotations weftd writes and reads
    #[arg(long, env = "WEFTD_KUBE_ANNOTATION_PREFIX", default_value = DEFAULT_ANNOTATION_PREFIX)]
    pub kube_annotation_prefix: String,

    /// kubeconfig file (default: the pod's service account)
    #[arg(long, env = "WEFTD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,

    /// network config file with --kube-subnet-mgr (kube-flannel's ConfigMap key net-conf.json)
    #[arg(long, env = "WEFTD_NET_CONFIG_PATH", default_value = "/etc/kube-flannel/net-conf.json")]
    pub net_config_path: PathBuf,

    /// with --kube-subnet-mgr, clear the Node's NetworkUnavailable condition once the network is up
    #[arg(long, env = "WEFTD_SET_NODE_NETWORK_UNAVAILABLE", default_value = "true", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub set_node_network_unavailable: bool,
}

impl KubeArgs {
    /// Where the store finds the API server; the Node name comes from the environment as in flanneld.
    pub fn settings(&self) -> KubeSettings {
        KubeSettings {
            api_url: self.kube_api_url.clone(),
            kubeconfig: self.kubeconfig_file.clone(),
            annotation_prefix: self.kube_annotation_prefix.clone(),
            net_config_path: self.net_config_path.clone(),
            node_name: None,
        }
    }
}
