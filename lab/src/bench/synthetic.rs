//! Synthetic peers: valid flannel VXLAN leases for hosts that do not exist.
//!
//! Peer `i` holds 10.(1 + i/256).(i%256).0/24 of a 10.0.0.0/8 network (weftd itself leases from the first 100
//! free subnets, all in 10.0.x.0, so they never collide), publishes 198.18.1.0 + i (inside 198.18.0.0/15 but
//! outside the lab's 198.18.0.0/24 hosts) and VTEP MAC 0e:<generation>:<i as 24 bits>:42. Changing the
//! generation changes every MAC, which is how churn makes weftd replace neighbours and FDB entries.
//!
//! For Kubernetes mode the same peers are Nodes ([`flannel_node`]): the subnet as the Node's pod CIDR, the rest as
//! the annotations flanneld's Kubernetes subnet manager writes, spelled out here byte for byte as flanneld does
//! (not through weft's own encoder, so that the benchmark reads what a flannel cluster holds).

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};
use weft_backends::model::MacAddr;

use weft::lease::{LeaseAttrs, SubnetKey};

/// The overlay network the control-plane benchmarks configure: room for 65,535 /24 leases.
pub const NETWORK: &str = "10.0.0.0/8";
/// How many synthetic peers fit in 10.1.0.0 .. 10.254.255.0.
pub const MAX_PEERS: usize = 65_000;

pub fn subnet(i: usize) -> Ipv4Network {
    assert!(i < MAX_PEERS, "synthetic peer {i} is out of range");
    let third = 1 + i / 256;
    Ipv4Network::new(Ipv4Addr::new(10, third as u8, (i % 256) as u8, 0), 24).expect("a /24 is valid")
}

pub fn public_ip(i: usize) -> Ipv4Addr {
    assert!(i < MAX_PEERS, "synthetic peer {i} is out of range");
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i as u32)
}

pub fn mac(i: usize, generation: u8) -> MacAddr {
    let b = (i as u32).to_be_bytes();
    // 0x0e: locally administered, unicast.
    MacAddr([0x0e, generation, b[1], b[2], b[3], 0x42])
}

/// The route destination weftd programs for peer `i`.
pub fn route_dst(i: usize) -> IpNetwork {
    IpNetwork::V4(subnet(i))
}

/// The etcd key (below `prefix`, e.g. /coreos.com/network) and value of peer `i`'s lease.
pub fn lease(prefix: &str, i: usize, generation: u8) -> (String, String) {
    let key = SubnetKey::new(Some(IpNetwork::V4(subnet(i))), None);
    let attrs = LeaseAttrs {
        public_ip: Some(public_ip(i)),
        backend_type: weft_backends::vxlan::BACKEND_TYPE.into(),
        backend_data: Some(weft_backends::vxlan::lease_data(1, mac(i, generation)).into()),
        ..LeaseAttrs::default()
    };
    (format!("{prefix}/subnets/{key}"), attrs.to_json())
}

/// Peer `i`'s Node name.
pub fn node_name(i: usize) -> String {
    format!("synthetic-{i}")
}

/// Peer `i` as a Node of a flannel cluster running the vxlan backend: its pod CIDR from the controller manager,
/// its annotations (default prefix) as flanneld publishes them.
pub fn flannel_node(i: usize, generation: u8) -> Value {
    let cidr = subnet(i).to_string();
    let annotation = |name: &str| format!("flannel.alpha.coreos.com/{name}");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name(i),
            "annotations": {
                // Go's encoding/json of flannel's vxlan lease attributes: field order VNI, VtepMAC.
                annotation("backend-data"): format!(r#"{{"VNI":1,"VtepMAC":"{}"}}"#, mac(i, generation)),
                annotation("backend-type"): "vxlan",
                annotation("kube-subnet-manager"): "true",
                annotation("public-ip"): public_ip(i).to_string(),
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// Peers `0..n` as one `List` of Nodes, the form the test API server's `--load` reads.
pub fn flannel_node_list(n: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": (0..n).map(|i| flannel_node(i, 1)).collect::<Vec<_>>()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_valid_and_distinct() {
        let (key, value) = lease("/coreos.com/network", 257, 1);
        assert_eq!(key, "/coreos.com/network/subnets/10.2.1.0-24");
        let attrs = LeaseAttrs::from_json(&value).unwrap();
        assert_eq!(attrs.public_ip, Some(Ipv4Addr::new(198, 18, 2, 1)));
        assert_eq!(mac(257, 1).to_string(), "0e:01:00:01:01:42");
        assert_ne!(mac(257, 1), mac(257, 2));
        assert_ne!(mac(1, 1), mac(2, 1));
        assert_eq!(subnet(MAX_PEERS - 1).ip(), Ipv4Addr::new(10, 254, 231, 0));
    }

    #[test]
    fn public_ips_stay_outside_the_lab_hosts() {
        assert_eq!(public_ip(0), Ipv4Addr::new(198, 18, 1, 0));
        assert!(Ipv4Network::new(Ipv4Addr::new(198, 18, 0, 0), 15).unwrap().contains(public_ip(MAX_PEERS - 1)));
    }

    #[test]
    fn nodes_carry_the_same_peer_in_flannels_annotation_format() {
        let node = flannel_node(257, 1);
        assert_eq!(node["metadata"]["name"], "synthetic-257");
        assert_eq!(node["spec"]["podCIDR"], "10.2.1.0/24");
        assert_eq!(node["spec"]["podCIDRs"], json!(["10.2.1.0/24"]));
        let annotations = &node["metadata"]["annotations"];
        assert_eq!(annotations["flannel.alpha.coreos.com/backend-data"], r#"{"VNI":1,"VtepMAC":"0e:01:00:01:01:42"}"#);
        assert_eq!(annotations["flannel.alpha.coreos.com/backend-type"], "vxlan");
        assert_eq!(annotations["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        assert_eq!(annotations["flannel.alpha.coreos.com/public-ip"], "198.18.2.1");
        // The etcd lease of the same peer carries the same data.
        let (_, value) = lease("/coreos.com/network", 257, 1);
        let attrs = LeaseAttrs::from_json(&value).unwrap();
        let data = annotations["flannel.alpha.coreos.com/backend-data"].as_str().unwrap();
        assert_eq!(attrs.backend_data(weft_backends::Family::V4), Some(serde_json::from_str::<Value>(data).unwrap()));
        assert_eq!(flannel_node_list(3)["items"].as_array().map(Vec::len), Some(3));
    }
}
