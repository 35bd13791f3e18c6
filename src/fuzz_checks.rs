//! What each fuzz target (fuzz/) checks, as plain functions: the cargo-fuzz targets call them on generated input,
//! and `tests/fuzz_corpus.rs` calls them on every saved corpus file and crash, so whatever the fuzzer found stays
//! a regression test in the ordinary test run. Each panics only when an invariant breaks.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use weft_backends::backend::AnyBackend;
use weft_backends::model::{KernelState, WEFT_ROUTE_PROTOCOL};
use weft_backends::trust::unusable_endpoint;
use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
use weft_backends::{Family, Underlay};

use crate::config::NetworkConfig;
use crate::ipmath;
use crate::lease::{LeaseAttrs, SubnetKey};
use crate::registry::LeaseSet;
use crate::store::{Listing, StoredLease};
use crate::trust::{judge, TrustPolicy};

/// A lease key parses or not; one that parses prints back to a key that parses to the same subnets.
pub fn lease_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = text.parse::<SubnetKey>() {
        let again: SubnetKey = key.to_string().parse().expect("a printed key parses");
        assert_eq!(again, key);
    }
}

/// A lease value parses or not; one that parses is written as flannel would and reads back the same. The fast
/// path for flanneld's shape and the general path agree on every input.
pub fn lease_value(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match (LeaseAttrs::from_json(text), LeaseAttrs::from_json_general(text)) {
        (Ok(fast), Ok(general)) => assert_eq!(fast, general, "the two paths read {text:?} differently"),
        (Err(fast), Err(general)) => assert_eq!(fast.to_string(), general.to_string()),
        (fast, general) => panic!("the two paths disagree on {text:?}: {fast:?} against {general:?}"),
    }
    if let Ok(attrs) = LeaseAttrs::from_json(text) {
        let again = LeaseAttrs::from_json(&attrs.to_json()).expect("our own encoding parses");
        assert_eq!(again.public_ip, attrs.public_ip);
        assert_eq!(again.public_ipv6, attrs.public_ipv6);
        assert_eq!(again.backend_type, attrs.backend_type);
    }
}

/// A network config validates or not, never panics; a valid one keeps every subnet bound inside its network.
pub fn network_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((config, _)) = NetworkConfig::validate(text) {
        for family in config.families() {
            let plan = config.family(family).expect("an enabled family has a plan");
            assert!(plan.network.contains(plan.subnet_min) && plan.network.contains(plan.subnet_max));
            assert!(plan.subnet_len >= plan.network.prefix());
        }
    }
}

/// subnet.env parses or not, never panics; a parsed one renders to text that parses to the same file.
pub fn subnet_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/run/flannel/subnet.env");
    if let Ok(file) = weft_cni::subnet_file::SubnetFile::parse(path, text) {
        let again = weft_cni::subnet_file::SubnetFile::parse(path, &file.render()).expect("rendered text parses");
        assert_eq!(again, file);
    }
}

/// The CNI plugin's input: environment lines (`NAME=value`), a NUL byte, then the network configuration on stdin.
/// Parsing and checking them never panics.
pub fn cni_input(data: &[u8]) {
    let (env, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let env = String::from_utf8_lossy(env);
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |name: &str| vars.iter().rev().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    let env = weft_cni::env::Env::read(&get);
    let _ = (env.container_id(), env.ifname(), env.netns());
    let _ = weft_cni::netconf::parse(stdin);
}

/// The trust boundary: lines `KEY VALUE` are the leases in etcd (written in order, so later lines are newer).
/// Whatever they say, this host never routes the underlay, its own subnet or its addresses, never has two
/// overlapping routes, and never sends to an endpoint that is no host.
pub fn trust(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut listing = Listing::default();
    let mut own = None;
    for (revision, line) in text.lines().enumerate() {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        let path = format!("/coreos.com/network/subnets/{name}");
        let stored =
            StoredLease { path: &path, name, value: value.as_bytes(), ttl_lease: 1, mod_revision: revision as i64 + 2 };
        listing.add(stored);
    }
    let config = NetworkConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .expect("the fuzz config is valid");
    let own_value = r#"{"PublicIP":"198.18.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:01"}}"#;
    let own_key = "10.244.1.0-24&fc00:0:0:1::-64";
    let stored =
        StoredLease { path: own_key, name: own_key, value: own_value.as_bytes(), ttl_lease: 1, mod_revision: 1 };
    if let (Some(lease), None) = stored.decode() {
        own = Some(lease);
    }
    let own = own.expect("our own lease decodes");
    let mut set = LeaseSet::from_listing(&listing);
    set.leases.insert(own.key, own.clone());
    let addresses: Vec<IpNetwork> = vec!["198.18.0.1/24".parse().unwrap(), "fd00::1/64".parse().unwrap()];
    let policy = TrustPolicy { host_addresses: addresses.clone(), ..TrustPolicy::outside(config).expect("vxlan") };
    let underlay = Underlay::new("eth0", 2, 1500, addresses.clone());
    let backend = VxlanBackend::prepare(
        VxlanConfig::default(),
        underlay,
        &[Family::V4, Family::V6],
        &KernelState::default(),
        WEFT_ROUTE_PROTOCOL,
    )
    .expect("the fuzz underlay is valid");
    let judged = judge(&policy, &AnyBackend::Vxlan(backend), &own, &set);
    let mut protected: Vec<IpNetwork> = own.key.subnets().collect();
    protected.extend(addresses.iter().map(|a| IpNetwork::new(a.network(), a.prefix()).unwrap()));
    let routes: Vec<IpNetwork> = judged.desired.state.routes.keys().copied().collect();
    for (i, route) in routes.iter().enumerate() {
        for p in &protected {
            assert!(!ipmath::overlaps(*route, *p), "route {route} covers {p}");
        }
        for other in &routes[i + 1..] {
            assert!(!ipmath::overlaps(*route, *other), "routes {route} and {other} overlap");
        }
    }
    let ours: Vec<IpAddr> = addresses.iter().map(|a| a.ip()).collect();
    for fdb in judged.desired.state.fdb.values() {
        assert!(unusable_endpoint(fdb.dst).is_none() && !ours.contains(&fdb.dst), "FDB entry to {}", fdb.dst);
    }
}

/// The udp backend's packet codec on a TUN read (virtio-net header, then the packet): the hop limit and ICMP
/// answer never panic; every wire packet cut from it parses with the length it was cut at; coalescing those back
/// and cutting again gives the same number of bytes.
pub fn udp_codec(data: &[u8]) {
    use weft_backends::udp::offload::{segment, Coalescer, VnetHdr, VNET_HDR_LEN};
    use weft_backends::udp::packet::{decrement_hop_limit, net_unreachable, IpHeader};

    let Ok(vnet) = VnetHdr::parse(data) else { return };
    let mut packet = data[VNET_HDR_LEN..].to_vec();
    if let Ok(header) = IpHeader::parse(&packet) {
        let source = if header.src.is_ipv4() { "10.244.1.0".parse() } else { "fd00::1".parse() };
        if let Some(icmp) = net_unreachable(&packet, &header, source.expect("a literal address")) {
            assert!(IpHeader::parse(&icmp).is_ok(), "our ICMP answer parses");
        }
        let _ = decrement_hop_limit(&mut packet, &header);
    }
    let mut out = Vec::new();
    let Ok(cut) = segment(&vnet, &packet, &mut out) else { return };
    assert_eq!(out.len(), cut.total_len);
    let mut coalescer = Coalescer::default();
    let (mut at, mut count) = (0, 0);
    while at < cut.total_len {
        let len = cut.segment_len.min(cut.total_len - at);
        let wire = &out[at..at + len];
        assert_eq!(IpHeader::parse(wire).expect("a wire packet parses").total_len, len);
        coalescer.push(wire).expect("a wire packet coalesces");
        at += len;
        count += 1;
    }
    assert_eq!(count, cut.count);
    let mut again = 0;
    coalescer.drain(|framed| {
        let vnet = VnetHdr::parse(framed).expect("our own virtio header parses");
        again += segment(&vnet, &framed[VNET_HDR_LEN..], &mut Vec::new()).expect("a coalesced packet cuts").total_len;
    });
    assert_eq!(again, cut.total_len, "coalescing and cutting again keeps every byte");
}
