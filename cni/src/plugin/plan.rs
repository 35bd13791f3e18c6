//! What an ADD is going to do, worked out from the netconf and the subnet file before anything is touched.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use crate::error::{CniError, Result};
use crate::ipam::Range;
use crate::netconf::NetConf;
use crate::result::Route;
use crate::subnet_file::SubnetFile;

#[derive(Debug, Clone)]
pub struct Plan {
    /// IPv4 first (when present), then IPv6; the index is host-local's range-set index.
    pub ranges: Vec<Range>,
    /// The cluster networks (FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK).
    pub networks: Vec<IpNetwork>,
    pub mtu: u32,
    pub ip_masq: bool,
    /// Routes for the container, in result order; a route without gw goes via its family's gateway.
    pub routes: Vec<Route>,
}

impl Plan {
    /// The subnets `ipMasq` masquerades, each with its family's cluster network.
    pub fn masqueraded(&self) -> Vec<weft_backends::rules::cni_masq::MasqueradedSubnet> {
        let subnets: Vec<IpNetwork> = self.ranges.iter().map(|r| r.subnet).collect();
        crate::masq::subnets(&subnets, &self.networks)
    }

    pub fn new(conf: &NetConf, file: &SubnetFile) -> Result<Plan> {
        let mut ranges = Vec::new();
        let mut networks = Vec::new();
        for (subnet, network, what) in [
            (file.subnet, file.network, "FLANNEL_SUBNET"),
            (file.ipv6_subnet, file.ipv6_network, "FLANNEL_IPV6_SUBNET"),
        ] {
            if let Some(subnet) = subnet {
                ranges.push(Range::for_subnet(subnet).map_err(|e| CniError::InvalidConfig(format!("{what}: {e}")))?);
            }
            networks.extend(network);
        }
        // Every entry of a FLANNEL_NETWORK list is a cluster network the container routes to the overlay.
        networks.extend(file.more_networks.iter().filter(|n| ranges.iter().any(|r| r.subnet.is_ipv4() == n.is_ipv4())));
        if ranges.is_empty() {
            return Err(CniError::InvalidConfig(format!(
                "subnet file {} has neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET",
                conf.subnet_file.display()
            )));
        }
        let mut routes: Vec<Route> = networks.iter().map(|n| Route { dst: *n, gw: None }).collect();
        routes.extend(conf.extra_routes.iter().map(|r| Route { dst: r.dst, gw: r.gw }));
        if conf.is_default_gateway {
            for r in &ranges {
                let any = if r.subnet.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                routes.push(Route { dst: any.parse().expect("literal"), gw: Some(r.gateway) });
            }
        }
        // The same destination twice (say, an ipam route repeating the cluster network) is installed once.
        let mut seen = Vec::new();
        routes.retain(|r| {
            let new = !seen.contains(&r.dst);
            seen.push(r.dst);
            new
        });
        Ok(Plan {
            ranges,
            networks,
            mtu: conf.mtu.unwrap_or(file.mtu),
            // flannel's rule: when weftd/flanneld masquerades itself (FLANNEL_IPMASQ=true), the bridge must not.
            ip_masq: conf.ip_masq.unwrap_or(!file.ipmasq),
            routes,
        })
    }

    pub fn gateway_for(&self, ip: IpAddr) -> Option<IpAddr> {
        self.ranges.iter().find(|r| r.subnet.is_ipv4() == ip.is_ipv4()).map(|r| r.gateway)
    }
}

/// The host end of the veth: derived from the attachment, so DEL finds it even without the container's netns, and
/// two attachments never share it. "veth" + 11 hex digits = 15 bytes, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: tiny, stable across releases (a std Hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:011x}", hash >> 20)
}

/// The configuration a delegated IPAM plugin gets: the netconf's name and version, and its `ipam` object with
/// flannel's additions (the host's subnets as ranges, the cluster networks as routes) when it does not say itself.
pub fn ipam_plugin_conf(conf: &NetConf, file: Option<&SubnetFile>) -> Value {
    let mut ipam = conf.ipam_raw.clone();
    if let Some(file) = file {
        if !ipam.contains_key("ranges") && !ipam.contains_key("subnet") {
            let ranges: Vec<Value> = [file.subnet, file.ipv6_subnet]
                .into_iter()
                .flatten()
                .map(|s| json!([{"subnet": IpNetwork::new(s.network(), s.prefix()).expect("valid").to_string()}]))
                .collect();
            ipam.insert("ranges".into(), Value::Array(ranges));
        }
        let mut routes = ipam.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
        for n in [file.network, file.ipv6_network].into_iter().flatten().chain(file.more_networks.iter().copied()) {
            routes.push(json!({"dst": n.to_string()}));
        }
        ipam.insert("routes".into(), Value::Array(routes));
    }
    json!({"cniVersion": conf.cni_version, "name": conf.name, "ipam": ipam})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(text: &str) -> SubnetFile {
        SubnetFile::parse(Path::new("subnet.env"), text).unwrap()
    }

    const V4: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn weft_defaults_route_the_network_and_default_via_the_gateway() {
        let conf = crate::netconf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#).unwrap();
        let plan = Plan::new(&conf, &file(V4)).unwrap();
        assert_eq!((plan.mtu, plan.ip_masq), (1450, true));
        let routes: Vec<String> = plan.routes.iter().map(|r| format!("{} {:?}", r.dst, r.gw)).collect();
        assert_eq!(routes, ["10.244.0.0/16 None", "0.0.0.0/0 Some(10.244.3.1)"]);
        assert_eq!(plan.gateway_for("10.244.3.9".parse().unwrap()), Some("10.244.3.1".parse().unwrap()));
    }

    #[test]
    fn every_entry_of_a_network_list_is_routed() {
        let conf = crate::netconf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft"}"#).unwrap();
        let plan = Plan::new(&conf, &file(&V4.replace("10.244.0.0/16", "10.244.0.0/16,10.245.0.0/16"))).unwrap();
        let routes: Vec<String> = plan.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(routes, ["10.244.0.0/16", "10.245.0.0/16", "0.0.0.0/0"]);
    }

    #[test]
    fn dual_stack_and_overrides() {
        let text = format!("{V4}FLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:3::1/64\n");
        let conf = crate::netconf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":1400,"ipMasq":false,"isDefaultGateway":false,
                 "ipam":{"routes":[{"dst":"10.244.0.0/16"},{"dst":"192.168.0.0/16","gw":"10.244.3.254"}]}}"#,
        )
        .unwrap();
        let plan = Plan::new(&conf, &file(&text)).unwrap();
        assert_eq!((plan.mtu, plan.ip_masq), (1400, false));
        assert_eq!(plan.ranges.len(), 2);
        assert_eq!(plan.ranges[1].gateway.to_string(), "fd00:10:0:3::1");
        let routes: Vec<String> = plan.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(routes, ["10.244.0.0/16", "fd00:10::/56", "192.168.0.0/16"]);
    }

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
    }

    #[test]
    fn delegated_ipam_gets_flannels_ranges_and_routes() {
        let conf =
            crate::netconf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"static"}}"#)
                .unwrap();
        let v = ipam_plugin_conf(&conf, Some(&file(V4)));
        assert_eq!(v["ipam"]["ranges"], json!([[{"subnet":"10.244.3.0/24"}]]));
        assert_eq!(v["ipam"]["routes"], json!([{"dst":"10.244.0.0/16"}]));
        assert_eq!(v["ipam"]["type"], "static");
    }
}
