//! flannel's plugin state: for every container it ADDs, flannel's plugin stores the delegate netconf it built in
//! `<dataDir>/<container ID>` (default `/var/lib/cni/flannel`), and its DEL runs the delegate with exactly that
//! netconf. weft writes the same file on ADD, so a node rolled back to flannel's plugin can still DEL the
//! containers weft attached: the bridge and host-local plugins release the veth and the address. This module
//! builds that netconf the way flannel's plugin does and reads and writes the file.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

/// What flannel's plugin reads from the subnet file. FLANNEL_NETWORK may list several networks (comma-separated):
/// every one becomes a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlannelEnv {
    pub networks: Vec<IpNetwork>,
    pub subnet: Option<IpNetwork>,
    pub ipv6_networks: Vec<IpNetwork>,
    pub ipv6_subnet: Option<IpNetwork>,
    pub mtu: Option<u32>,
    pub ipmasq: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("subnet file {path}: {key} {value:?} is not valid")]
    BadValue { path: PathBuf, key: &'static str, value: String },
    #[error("subnet file {path} is missing {missing}")]
    Missing { path: PathBuf, missing: String },
    #[error("flannel state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FlannelEnv {
    /// Parses the subnet file as flannel's plugin does: subnets are reduced to their network address, and
    /// FLANNEL_NETWORK, FLANNEL_SUBNET (or their IPv6 forms), FLANNEL_MTU and FLANNEL_IPMASQ must be present.
    pub fn parse(path: &Path, text: &str) -> Result<FlannelEnv, StateError> {
        let mut env = FlannelEnv::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let bad = |key: &'static str| StateError::BadValue { path: path.into(), key, value: value.into() };
            let cidr = |key: &'static str, text: &str| -> Result<IpNetwork, StateError> {
                let n: IpNetwork = text.parse().map_err(|_| bad(key))?;
                Ok(IpNetwork::new(n.network(), n.prefix()).expect("prefix was valid"))
            };
            let list = |key: &'static str| -> Result<Vec<IpNetwork>, StateError> {
                let mut out: Vec<IpNetwork> = Vec::new();
                for part in value.split(',') {
                    let n = cidr(key, part)?;
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Ok(out)
            };
            match key {
                "FLANNEL_NETWORK" => env.networks = list("FLANNEL_NETWORK")?,
                "FLANNEL_SUBNET" => env.subnet = Some(cidr("FLANNEL_SUBNET", value)?),
                "FLANNEL_IPV6_NETWORK" => env.ipv6_networks = list("FLANNEL_IPV6_NETWORK")?,
                "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = Some(cidr("FLANNEL_IPV6_SUBNET", value)?),
                "FLANNEL_MTU" => env.mtu = Some(value.parse().map_err(|_| bad("FLANNEL_MTU"))?),
                // flannel's plugin reads anything but "true" as false.
                "FLANNEL_IPMASQ" => env.ipmasq = Some(value == "true"),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        if env.networks.is_empty() && env.ipv6_networks.is_empty() {
            missing.push("FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK");
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            missing.push("FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET");
        }
        if env.mtu.is_none() {
            missing.push("FLANNEL_MTU");
        }
        if env.ipmasq.is_none() {
            missing.push("FLANNEL_IPMASQ");
        }
        if !missing.is_empty() {
            return Err(StateError::Missing { path: path.into(), missing: missing.join(", ") });
        }
        Ok(env)
    }
}

/// The netconf flannel's plugin hands its delegate for `netconf` (flannel's: `delegate`, `ipam`, `runtimeConfig`
/// at the top level): the delegate's own options, with the network name, type (bridge), ipMasq (the opposite of
/// FLANNEL_IPMASQ), mtu, isGateway (bridge) and cniVersion filled in where not given, and an IPAM section with
/// the host's subnets as ranges and every cluster network as a route.
pub fn delegate_netconf(netconf: &Map<String, Value>, env: &FlannelEnv) -> Value {
    let mut delegate = netconf.get("delegate").and_then(Value::as_object).cloned().unwrap_or_default();
    let name = netconf.get("name").cloned().unwrap_or(Value::Null);
    delegate.insert("name".into(), name);
    delegate.entry("type").or_insert_with(|| json!("bridge"));
    delegate.entry("ipMasq").or_insert_with(|| json!(!env.ipmasq.unwrap_or(false)));
    delegate.entry("mtu").or_insert_with(|| json!(env.mtu));
    if delegate.get("type").and_then(Value::as_str) == Some("bridge") {
        delegate.entry("isGateway").or_insert(json!(true));
    }
    if let Some(version) = netconf.get("cniVersion").filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
        delegate.insert("cniVersion".into(), version.clone());
    }
    let mut ipam = netconf.get("ipam").and_then(Value::as_object).cloned().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let ranges: Vec<Value> =
        [env.subnet, env.ipv6_subnet].into_iter().flatten().map(|s| json!([{ "subnet": s.to_string() }])).collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Value> = ipam.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    routes.extend(env.networks.iter().chain(&env.ipv6_networks).map(|n| json!({ "dst": n.to_string() })));
    ipam.insert("routes".into(), Value::Array(routes));
    delegate.insert("ipam".into(), Value::Object(ipam));
    if let Some(runtime) = netconf.get("runtimeConfig").filter(|v| !v.is_null()) {
        delegate.insert("runtimeConfig".into(), runtime.clone());
    }
    Value::Object(delegate)
}

/// Stores the delegate netconf for `container_id` as flannel's plugin does (directory 0700, file 0600, synced).
pub fn save(data_dir: &Path, container_id: &str, netconf: &Value) -> Result<(), StateError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io { path: path.to_path_buf(), source }
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(container_id);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(netconf.to_string().as_bytes()).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))
}

/// The stored delegate netconf of `container_id`, if flannel's plugin or weft left one.
pub fn load(data_dir: &Path, container_id: &str) -> Result<Option<Value>, StateError> {
    let path = data_dir.join(container_id);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
                              FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn env() -> FlannelEnv {
        FlannelEnv::parse(Path::new("subnet.env"), SUBNET_ENV).unwrap()
    }

    #[test]
    fn the_subnet_file_as_flannels_plugin_reads_it() {
        let e = env();
        assert_eq!(e.networks.len(), 2, "every FLANNEL_NETWORK entry");
        assert_eq!(e.subnet.unwrap().to_string(), "10.244.3.0/24", "reduced to the network address");
        assert_eq!((e.mtu, e.ipmasq), (Some(1450), Some(true)));
        let err =
            FlannelEnv::parse(Path::new("s.env"), "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("FLANNEL_MTU, FLANNEL_IPMASQ"), "a missing FLANNEL_IPMASQ is an error: {err}");
    }

    #[test]
    fn the_delegate_netconf_is_flannels() {
        let netconf: Map<String, Value> = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "delegate": {"hairpinMode": true, "isDefaultGateway": true, "promiscMode": true, "vlan": 7},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
        }))
        .unwrap();
        let got = delegate_netconf(&netconf, &env());
        let want = json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
            "hairpinMode": true, "isDefaultGateway": true, "promiscMode": true, "vlan": 7,
            "ipMasq": false, "mtu": 1450, "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.3.0/24"}]],
                "routes": [{"dst": "10.244.0.0/16"}, {"dst": "10.245.0.0/16"}]
            },
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
        });
        assert_eq!(got, want);
        // Keys in name order, as Go writes a map: the bytes match flannel's file.
        assert!(got.to_string().starts_with(r#"{"cniVersion":"1.0.0","hairpinMode":true,"#), "{got}");
    }

    #[test]
    fn given_options_win_and_other_delegates_get_no_bridge_defaults() {
        let netconf: Map<String, Value> = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "n",
            "delegate": {"type": "ipvlan", "master": "eth0", "mtu": 1400, "ipMasq": true},
            "ipam": {"routes": [{"dst": "0.0.0.0/0"}]}
        }))
        .unwrap();
        let got = delegate_netconf(&netconf, &env());
        assert_eq!(
            (got["type"].as_str(), got["mtu"].as_u64(), got["ipMasq"].as_bool()),
            (Some("ipvlan"), Some(1400), Some(true))
        );
        assert!(got.get("isGateway").is_none());
        assert_eq!(got["ipam"]["routes"][0]["dst"], "0.0.0.0/0", "the netconf's own routes first");
        assert_eq!(got["ipam"]["routes"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn state_round_trips_with_flannels_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-flannel-state-{}", std::process::id()));
        let data_dir = dir.join("flannel");
        let conf = json!({"type": "bridge", "name": "cbr0"});
        save(&data_dir, "c1", &conf).unwrap();
        assert_eq!(load(&data_dir, "c1").unwrap(), Some(conf));
        assert_eq!(load(&data_dir, "c2").unwrap(), None);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&data_dir), mode(&data_dir.join("c1"))), (0o700, 0o600));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
