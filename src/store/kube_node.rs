//! Nodes as leases, the pure half of the Kubernetes store: flannel's Node annotations, read and written byte for
//! byte as flanneld's Kubernetes subnet manager does, so weft and flannel nodes mix in one cluster.
//!
//! A Node is a peer when it carries `<prefix>/kube-subnet-manager: "true"`. Its subnet is its `spec.podCIDRs` (or
//! the older `spec.podCIDR`), assigned by the controller manager; its lease value is spread over annotations:
//! `backend-type`, `backend-data` and `backend-v6-data` (Go's JSON of the backend's data, `null` when there is
//! none), `public-ip` and `public-ipv6`. An operator's `public-ip-overwrite` (and `public-ipv6-overwrite`) replaces
//! the address a node publishes. Only the families the network config enables are read or written, as flannel
//! does.
//!
//! Everything here is untrusted input from the API server: a Node whose annotations do not parse is reported with
//! the annotation and the reason, and never programmed (the trust boundary screens the ones that do parse).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weft_backends::Family;

use crate::lease::{backend_data_json, BackendData, Lease, LeaseAttrs, SubnetKey};

/// flannel's default `--kube-annotation-prefix`.
pub const DEFAULT_ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// The full names of the annotations under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationNames {
    pub kube_subnet_manager: String,
    pub backend_type: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub public_ip: String,
    pub public_ipv6: String,
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPrefix {
    #[error("--kube-annotation-prefix {0:?} has more than one slash")]
    TooManySlashes(String),
    #[error(
        "--kube-annotation-prefix {0:?} is not a Kubernetes annotation prefix: a DNS name of lowercase letters, digits, \
         '-' and '_' (e.g. flannel.alpha.coreos.com), optionally followed by '/' and a name part"
    )]
    NotADomain(String),
}

impl AnnotationNames {
    /// The names under `prefix`, completed as flannel completes it: `example.com` becomes `example.com/`, and
    /// `example.com/weft` becomes `example.com/weft-` (so the names read `example.com/weft-public-ip`).
    pub fn new(prefix: &str) -> Result<AnnotationNames, BadPrefix> {
        let mut full = prefix.to_string();
        match prefix.matches('/').count() {
            0 => full.push('/'),
            1 => {}
            _ => return Err(BadPrefix::TooManySlashes(prefix.to_string())),
        }
        if !full.ends_with('/') && !full.ends_with('-') {
            full.push('-');
        }
        // flannel matches this unanchored at the start; anchored, it refuses prefixes the API server would refuse
        // anyway (upper case, other characters).
        let valid = regex::Regex::new(r"^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$").expect("a valid regex");
        if !valid.is_match(&full) {
            return Err(BadPrefix::NotADomain(prefix.to_string()));
        }
        let name = |suffix: &str| format!("{full}{suffix}");
        Ok(AnnotationNames {
            kube_subnet_manager: name("kube-subnet-manager"),
            backend_type: name("backend-type"),
            backend_data: name("backend-data"),
            backend_v6_data: name("backend-v6-data"),
            public_ip: name("public-ip"),
            public_ipv6: name("public-ipv6"),
            public_ip_overwrite: name("public-ip-overwrite"),
            public_ipv6_overwrite: name("public-ipv6-overwrite"),
        })
    }

    fn backend_data_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.backend_data,
            Family::V6 => &self.backend_v6_data,
        }
    }

    fn public_ip_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.public_ip,
            Family::V6 => &self.public_ipv6,
        }
    }

    fn overwrite_for(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.public_ip_overwrite,
            Family::V6 => &self.public_ipv6_overwrite,
        }
    }
}

/// The parts of a Node the store reads: its name, pod CIDRs and annotations.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    pub name: &'a str,
    /// `spec.podCIDR`, used when `spec.podCIDRs` is empty.
    pub pod_cidr: Option<&'a str>,
    pub pod_cidrs: &'a [String],
    pub annotations: &'a BTreeMap<String, String>,
}

/// What is wrong with a Node that carries flannel's annotations.
#[derive(Debug, thiserror::Error)]
pub enum NodeDefect {
    #[error("pod CIDR {text:?} is not a CIDR")]
    BadPodCidr { text: String },
    #[error("{count} pod CIDRs {cidrs:?}: at most one per family")]
    TooManyPodCidrs { count: usize, cidrs: Vec<String> },
    #[error("no {family} pod CIDR (spec.podCIDRs {cidrs:?}), but the network config enables {family}")]
    NoPodCidr { family: Family, cidrs: Vec<String> },
    #[error("annotation {name} is missing")]
    MissingAnnotation { name: String },
    #[error("annotation {name} {value:?} is not an {family} address")]
    BadPublicIp { name: String, value: String, family: Family },
    #[error("annotation {name} is not JSON ({value:?}): {source}")]
    BadBackendData {
        name: String,
        value: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A Node that claims to be a peer but cannot be one.
#[derive(Debug, thiserror::Error)]
#[error("node {node}: {defect}")]
pub struct NodeProblem {
    pub node: String,
    /// The node's subnet when its pod CIDRs parsed: it stays taken, like a lease with a bad value.
    pub key: Option<SubnetKey>,
    pub defect: NodeDefect,
}

/// What a Node is to the overlay.
#[derive(Debug)]
pub enum NodeLease {
    /// No `kube-subnet-manager: "true"` annotation: not (yet) part of the overlay.
    NotAPeer,
    /// A peer; `mod_revision` is left 0 for the store to fill in.
    Peer(Lease),
    Bad(NodeProblem),
}

/// The subnet(s) in a Node's pod CIDRs for the enabled families, masked to their base address as Go's ParseCIDR
/// does. `spec.podCIDRs` holds at most one CIDR per family; the older `spec.podCIDR` is read when it is empty.
pub fn node_subnet(node: &NodeFacts<'_>, families: &[Family]) -> Result<SubnetKey, NodeDefect> {
    let single: Vec<String> = node.pod_cidr.filter(|c| !c.is_empty()).map(str::to_string).into_iter().collect();
    let cidrs: &[String] = if node.pod_cidrs.is_empty() { &single } else { node.pod_cidrs };
    if cidrs.len() > 2 {
        return Err(NodeDefect::TooManyPodCidrs { count: cidrs.len(), cidrs: cidrs.to_vec() });
    }
    let mut v4 = None;
    let mut v6 = None;
    for text in cidrs {
        let net: IpNetwork = text.parse().map_err(|_| NodeDefect::BadPodCidr { text: text.clone() })?;
        let masked =
            IpNetwork::new(net.network(), net.prefix()).map_err(|_| NodeDefect::BadPodCidr { text: text.clone() })?;
        match masked {
            IpNetwork::V4(n) => v4 = v4.or(Some(n)),
            IpNetwork::V6(n) => v6 = v6.or(Some(n)),
        }
    }
    let need = |family: Family, present: bool| match present || !families.contains(&family) {
        true => Ok(()),
        false => Err(NodeDefect::NoPodCidr { family, cidrs: cidrs.to_vec() }),
    };
    need(Family::V4, v4.is_some())?;
    need(Family::V6, v6.is_some())?;
    let v4: Option<Ipv4Network> = v4.filter(|_| families.contains(&Family::V4));
    let v6: Option<Ipv6Network> = v6.filter(|_| families.contains(&Family::V6));
    Ok(SubnetKey { ipv4: v4, ipv6: v6 })
}

/// A Node as a lease, read as flannel reads it: only the enabled families' annotations count.
pub fn node_lease(names: &AnnotationNames, families: &[Family], node: &NodeFacts<'_>) -> NodeLease {
    if node.annotations.get(&names.kube_subnet_manager).map(String::as_str) != Some("true") {
        return NodeLease::NotAPeer;
    }
    let bad = |key, defect| NodeLease::Bad(NodeProblem { node: node.name.to_string(), key, defect });
    let key = match node_subnet(node, families) {
        Ok(key) => key,
        Err(defect) => return bad(None, defect),
    };
    match node_attrs(names, families, node.annotations) {
        Ok(attrs) => NodeLease::Peer(Lease { key, attrs: attrs.into(), etcd_lease: 0, mod_revision: 0 }),
        Err(defect) => bad(Some(key), defect),
    }
}

/// The lease value a Node's annotations spell, for the enabled families.
pub fn node_attrs(
    names: &AnnotationNames,
    families: &[Family],
    annotations: &BTreeMap<String, String>,
) -> Result<LeaseAttrs, NodeDefect> {
    let mut attrs = LeaseAttrs {
        backend_type: annotations.get(&names.backend_type).map_or_else(Default::default, |t| t.as_str().into()),
        ..LeaseAttrs::default()
    };
    for &family in families {
        let ip_name = names.public_ip_for(family);
        let text =
            annotations.get(ip_name).ok_or_else(|| NodeDefect::MissingAnnotation { name: ip_name.to_string() })?;
        let bad_ip = || NodeDefect::BadPublicIp { name: ip_name.to_string(), value: text.clone(), family };
        let ip: IpAddr = text.parse().map_err(|_| bad_ip())?;
        let data_name = names.backend_data_for(family);
        let data = match annotations.get(data_name).map(String::as_str) {
            None | Some("") | Some("null") => None,
            Some(value) => Some(BackendData::new(&serde_json::from_str(value).map_err(|source| {
                NodeDefect::BadBackendData { name: data_name.to_string(), value: value.to_string(), source }
            })?)),
        };
        match (family, ip) {
            // Go writes 0.0.0.0 for "no IPv4 address".
            (Family::V4, IpAddr::V4(ip)) => attrs.public_ip = Some(ip).filter(|ip| !ip.is_unspecified()),
            (Family::V6, IpAddr::V6(ip)) => attrs.public_ipv6 = Some(ip),
            _ => return Err(bad_ip()),
        }
        match family {
            Family::V4 => attrs.backend_data = data,
            Family::V6 => attrs.backend_v6_data = data,
        }
    }
    Ok(attrs)
}

/// The annotations our Node must carry to publish `attrs`, as flanneld writes them: each enabled family's data
/// and public IP (an operator's overwrite annotation wins over our address), the backend type, and the
/// kube-subnet-manager marker. Only the annotations whose value differs from `current` are returned (none: nothing
/// to patch).
pub fn annotations_to_publish(
    names: &AnnotationNames,
    attrs: &LeaseAttrs,
    current: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    want.insert(names.backend_type.clone(), attrs.backend_type.to_string());
    let kind = attrs.backend_type.as_str();
    for family in [Family::V4, Family::V6] {
        let (data, ip) = match family {
            Family::V4 => (attrs.backend_data.as_ref(), attrs.public_ip.map(IpAddr::V4)),
            Family::V6 => (attrs.backend_v6_data.as_ref(), attrs.public_ipv6.map(IpAddr::V6)),
        };
        // flanneld writes the IPv4 part unless a vxlan or wireguard host has no IPv4 data, and the IPv6 part for a
        // vxlan host with IPv6 data or another backend with an IPv6 address.
        let publish = match family {
            Family::V4 => !(matches!(kind, "vxlan" | "wireguard") && data.is_none()),
            Family::V6 => match kind {
                "vxlan" => data.is_some(),
                "wireguard" => data.is_some() && ip.is_some(),
                _ => ip.is_some(),
            },
        };
        if !publish {
            continue;
        }
        want.insert(names.backend_data_for(family).to_string(), backend_data_json(kind, data));
        let overwrite = current.get(names.overwrite_for(family)).filter(|v| !v.is_empty());
        let ip_text = match (overwrite, ip) {
            (Some(overwrite), _) => overwrite.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) if family == Family::V4 => Ipv4Addr::UNSPECIFIED.to_string(),
            (None, None) => continue,
        };
        want.insert(names.public_ip_for(family).to_string(), ip_text);
    }
    want.insert(names.kube_subnet_manager.clone(), "true".to_string());
    want.retain(|name, value| current.get(name) != Some(value));
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "c6:d2:32:6f:8f:44";

    fn names() -> AnnotationNames {
        AnnotationNames::new(DEFAULT_ANNOTATION_PREFIX).unwrap()
    }

    /// A Node's annotations exactly as flanneld v0.28 leaves them on a vxlan host (IPv4 only).
    fn flannel_vxlan_node() -> BTreeMap<String, String> {
        [
            ("flannel.alpha.coreos.com/backend-data", r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/public-ip", "198.18.0.1"),
            ("node.alpha.kubernetes.io/ttl", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn facts<'a>(annotations: &'a BTreeMap<String, String>, cidrs: &'a [String]) -> NodeFacts<'a> {
        NodeFacts { name: "node-1", pod_cidr: cidrs.first().map(String::as_str), pod_cidrs: cidrs, annotations }
    }

    fn our_vxlan_attrs() -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            backend_type: "vxlan".into(),
            backend_data: Some(weft_backends::vxlan::lease_data(1, MAC.parse().unwrap()).into()),
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_are_completed_and_checked_as_flannel_does() {
        assert_eq!(names().public_ip, "flannel.alpha.coreos.com/public-ip");
        assert_eq!(AnnotationNames::new("example.com/weft").unwrap().public_ip, "example.com/weft-public-ip");
        assert_eq!(AnnotationNames::new("example.com/weft-").unwrap().backend_type, "example.com/weft-backend-type");
        assert_eq!(AnnotationNames::new("a/b/c"), Err(BadPrefix::TooManySlashes("a/b/c".into())));
        assert_eq!(AnnotationNames::new("nodots"), Err(BadPrefix::NotADomain("nodots".into())));
        assert_eq!(AnnotationNames::new("Example.com"), Err(BadPrefix::NotADomain("Example.com".into())));
    }

    #[test]
    fn we_publish_the_bytes_flanneld_publishes() {
        let published = annotations_to_publish(&names(), &our_vxlan_attrs(), &BTreeMap::new());
        let mut flannel = flannel_vxlan_node();
        flannel.remove("node.alpha.kubernetes.io/ttl");
        assert_eq!(published, flannel);
        // Once published, nothing is left to patch.
        assert!(annotations_to_publish(&names(), &our_vxlan_attrs(), &flannel_vxlan_node()).is_empty());
    }

    #[test]
    fn wireguard_data_keeps_gos_field_order_and_dual_stack_publishes_both_families() {
        let data =
            |port: u16| serde_json::json!({"PublicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "Port": port});
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 4)),
            public_ipv6: Some("fd00::4".parse().unwrap()),
            backend_type: "wireguard".into(),
            backend_data: Some(data(51820).into()),
            backend_v6_data: Some(data(51821).into()),
        };
        let published = annotations_to_publish(&names(), &attrs, &BTreeMap::new());
        assert_eq!(
            published["flannel.alpha.coreos.com/backend-data"],
            r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":51820}"#
        );
        assert_eq!(published["flannel.alpha.coreos.com/public-ipv6"], "fd00::4");
        let cidrs = ["10.244.4.0/24".to_string(), "fd00:244:4::/64".to_string()];
        let NodeLease::Peer(lease) = node_lease(&names(), &[Family::V4, Family::V6], &facts(&published, &cidrs)) else {
            panic!("a dual-stack peer")
        };
        assert_eq!(lease.attrs, std::sync::Arc::new(attrs));
        assert_eq!(lease.key.to_string(), "10.244.4.0-24&fd00:244:4::-64");
    }

    #[test]
    fn host_gw_publishes_null_data_as_flanneld() {
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
            backend_type: "host-gw".into(),
            ..Default::default()
        };
        let published = annotations_to_publish(&names(), &attrs, &BTreeMap::new());
        assert_eq!(published["flannel.alpha.coreos.com/backend-data"], "null");
        assert!(!published.contains_key("flannel.alpha.coreos.com/backend-v6-data"));
    }

    #[test]
    fn an_operators_overwrite_annotation_wins_over_our_address() {
        let mut current = BTreeMap::new();
        current.insert("flannel.alpha.coreos.com/public-ip-overwrite".to_string(), "203.0.113.7".to_string());
        let published = annotations_to_publish(&names(), &our_vxlan_attrs(), &current);
        assert_eq!(published["flannel.alpha.coreos.com/public-ip"], "203.0.113.7");
    }

    #[test]
    fn a_flannel_node_is_a_lease_with_flannels_value() {
        let annotations = flannel_vxlan_node();
        let cidrs = ["10.244.1.0/24".to_string()];
        let NodeLease::Peer(lease) = node_lease(&names(), &[Family::V4], &facts(&annotations, &cidrs)) else {
            panic!("a peer")
        };
        assert_eq!(lease.key.to_string(), "10.244.1.0-24");
        assert_eq!(lease.attrs, std::sync::Arc::new(our_vxlan_attrs()));
        assert!(lease.is_reservation(), "a Node does not expire");
        // Read the older single spec.podCIDR the same way, and mask host bits as Go's ParseCIDR does.
        let single = NodeFacts { pod_cidr: Some("10.244.1.9/24"), pod_cidrs: &[], ..facts(&annotations, &cidrs) };
        let NodeLease::Peer(lease) = node_lease(&names(), &[Family::V4], &single) else { panic!("a peer") };
        assert_eq!(lease.key.to_string(), "10.244.1.0-24");
    }

    #[test]
    fn nodes_without_the_marker_are_not_peers() {
        let mut annotations = flannel_vxlan_node();
        annotations.remove("flannel.alpha.coreos.com/kube-subnet-manager");
        let cidrs = ["10.244.1.0/24".to_string()];
        assert!(matches!(node_lease(&names(), &[Family::V4], &facts(&annotations, &cidrs)), NodeLease::NotAPeer));
    }

    #[test]
    fn bad_nodes_are_rejected_with_the_annotation_and_the_reason() {
        let cidrs = ["10.244.1.0/24".to_string()];
        let problem = |edit: &dyn Fn(&mut BTreeMap<String, String>), cidrs: &[String], families: &[Family]| {
            let mut annotations = flannel_vxlan_node();
            edit(&mut annotations);
            match node_lease(&names(), families, &facts(&annotations, cidrs)) {
                NodeLease::Bad(problem) => problem,
                other => panic!("{other:?}"),
            }
        };
        let set = |name: &'static str, value: &'static str| {
            move |a: &mut BTreeMap<String, String>| {
                a.insert(format!("flannel.alpha.coreos.com/{name}"), value.to_string());
            }
        };
        let v4 = &[Family::V4][..];
        let p = problem(&set("public-ip", "198.18.0.300"), &cidrs, v4);
        assert_eq!(p.key.map(|k| k.to_string()), Some("10.244.1.0-24".into()), "the subnet stays taken");
        assert_eq!(
            p.to_string(),
            "node node-1: annotation flannel.alpha.coreos.com/public-ip \"198.18.0.300\" is not an IPv4 address"
        );
        let p = problem(&set("public-ip", "fd00::1"), &cidrs, v4);
        assert!(p.to_string().contains("is not an IPv4 address"), "{p}");
        let p = problem(&set("backend-data", "{\"VNI\":"), &cidrs, v4);
        assert!(p.to_string().starts_with("node node-1: annotation flannel.alpha.coreos.com/backend-data is not JSON"));
        let p = problem(&|a| drop(a.remove("flannel.alpha.coreos.com/public-ip")), &cidrs, v4);
        assert_eq!(p.to_string(), "node node-1: annotation flannel.alpha.coreos.com/public-ip is missing");
        let p = problem(&|_| {}, &["10.244.1.0/33".to_string()], v4);
        assert_eq!((p.key, p.to_string()), (None, "node node-1: pod CIDR \"10.244.1.0/33\" is not a CIDR".into()));
        let p = problem(&|_| {}, &cidrs, &[Family::V4, Family::V6]);
        assert!(p.to_string().contains("no IPv6 pod CIDR"), "{p}");
        let three = ["10.244.1.0/24".to_string(), "fd00::/64".to_string(), "10.244.2.0/24".to_string()];
        assert!(problem(&|_| {}, &three, v4).to_string().contains("3 pod CIDRs"));
    }
}
