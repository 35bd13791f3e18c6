use super::*;
use crate::model::WEFT_ROUTE_PROTOCOL;
use serde_json::json;

const KEY: Key = [0x11; 32];

fn underlay() -> Underlay {
    Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap(), "fd18::1/64".parse().unwrap()])
}

fn networks(v6: bool) -> PerFamily<IpNetwork> {
    PerFamily::new(Some("10.244.0.0/16".parse().unwrap()), v6.then(|| "fd00:10::/56".parse().unwrap()))
}

fn backend(options: Value, v6: bool) -> WireguardBackend {
    let config = WireguardConfig::from_json(&options).unwrap().for_networks(&networks(v6));
    let families = networks(v6).families();
    WireguardBackend::with_key(config, underlay(), &families, WEFT_ROUTE_PROTOCOL, KEY).unwrap()
}

fn lease_data(key: Key, port: Option<u16>) -> Value {
    match port {
        Some(p) => json!({"PublicKey": keys::encode_key(&key), "Port": p}),
        None => json!({"PublicKey": keys::encode_key(&key)}),
    }
}

fn peer(n: u8, v6: bool, backend_type: &str, port: Option<u16>) -> Peer {
    Peer {
        subnets: PerFamily::new(
            Some(format!("10.244.{n}.0/24").parse().unwrap()),
            v6.then(|| format!("fd00:10:0:{n}::/64").parse().unwrap()),
        ),
        public_ips: PerFamily::new(
            Some(format!("198.18.0.{n}").parse().unwrap()),
            v6.then(|| format!("fd18::{n}").parse().unwrap()),
        ),
        backend_type: backend_type.into(),
        backend_data: PerFamily::new(
            Some(lease_data([n; 32], port)),
            v6.then(|| lease_data([n; 32], port.map(|p| p + 1))),
        ),
    }
}

#[test]
fn config_takes_flannels_options_with_its_defaults() {
    let cfg = WireguardConfig::from_json(&json!({"Type": "wireguard"})).unwrap();
    assert_eq!((cfg.listen_port, cfg.listen_port_v6, cfg.mode), (51820, 51821, Mode::Separate));
    assert_eq!((cfg.mtu, cfg.psk, cfg.persistent_keepalive), (None, None, 0));
    let psk = keys::encode_key(&[5; 32]);
    let cfg = WireguardConfig::from_json(&json!({
        "Type": "wireguard", "listenPort": 7000, "ListenPortV6": 7001, "MTU": 1400, "PSK": psk,
        "PersistentKeepaliveInterval": 25, "Mode": "auto", "Bogus": true
    }))
    .unwrap();
    assert_eq!((cfg.listen_port, cfg.listen_port_v6, cfg.mode), (7000, 7001, Mode::Auto));
    assert_eq!((cfg.mtu, cfg.psk, cfg.persistent_keepalive), (Some(1400), Some([5; 32]), 25));
    assert_eq!(cfg.ignored, vec!["Bogus"]);
}

#[test]
fn bad_options_are_refused_by_name() {
    let err = |v: Value| WireguardConfig::from_json(&v).unwrap_err().to_string();
    assert_eq!(
        err(json!({"Mode": "both"})),
        "invalid network config field Backend.Mode: \"both\" is no mode: use \"separate\", \"auto\", \"ipv4\" or \"ipv6\""
    );
    assert_eq!(err(json!({"ListenPort": 0})), "invalid network config field Backend.ListenPort: 0 is not a UDP port");
    assert_eq!(
        err(json!({"ListenPortV6": "x"})),
        "invalid network config field Backend.ListenPortV6: \"x\" is not a whole number"
    );
    assert!(err(json!({"PSK": "short"}))
        .starts_with("invalid network config field Backend.PSK: PSK \"short\" is not a WireGuard key"));
    assert!(err(json!({"MTU": 100})).contains("Backend.MTU: 100 leaves no room"));
    assert!(err(json!({"PersistentKeepaliveInterval": 70000})).contains("70000 seconds is more than 65535"));
}

#[test]
fn lease_data_is_flanneld_s_per_family() {
    let b = backend(json!({"Type": "wireguard"}), true);
    let public = keys::encode_key(&keys::public_key(&KEY));
    assert_eq!(b.lease_data(Family::V4), Some(json!({"PublicKey": public, "Port": 51820})));
    assert_eq!(b.lease_data(Family::V6), Some(json!({"PublicKey": public, "Port": 51821})));
    let v4_only = backend(json!({}), false);
    assert_eq!(v4_only.lease_data(Family::V6), None);
    // flanneld's own lease reads back: the key and the port.
    let flanneld = json!({"PublicKey": public, "Port": 51820});
    assert_eq!(
        parse_lease_data(Some(&flanneld)).unwrap(),
        LeaseData { public_key: keys::public_key(&KEY), port: Some(51820) }
    );
    let err = parse_lease_data(Some(&json!({"Port": 1}))).unwrap_err();
    assert_eq!(err, RejectReason::BadBackendData { detail: "BackendData has no PublicKey".into() });
    assert!(parse_lease_data(Some(&json!({"PublicKey": public, "Port": 70000}))).is_err());
}

#[test]
fn separate_mode_has_a_device_per_family_and_keyed_forwarding() {
    let b = backend(json!({"Type": "wireguard"}), true);
    assert_eq!((b.mtu(), b.backend_type()), (1420, "wireguard"));
    assert_eq!(b.scope().links, vec!["flannel-wg", "flannel-wg-v6"]);
    assert_eq!(b.bind_address(b.device_for(Family::V6).unwrap()).to_string(), "[fd18::1]:51821");
    let own = peer(1, true, "wireguard", Some(51820));
    let peers = vec![
        peer(3, true, "wireguard", None),
        own.clone(),
        peer(2, true, "wireguard", Some(7000)),
        peer(4, false, "vxlan", None),
    ];
    let k2 = "02".repeat(32);
    let k3 = "03".repeat(32);
    let expected = format!(
        "\
link flannel-wg tun mtu 1420 up
link flannel-wg-v6 tun mtu 1420 up
addr 10.244.1.0/16 dev flannel-wg
addr fd00:10:0:1::/56 dev flannel-wg-v6
forward 10.244.2.0/24 to 198.18.0.2:7000 key {k2}
forward 10.244.3.0/24 to 198.18.0.3:51820 key {k3}
forward fd00:10:0:2::/64 to [fd18::2]:7001 key {k2}
forward fd00:10:0:3::/64 to [fd18::3]:51821 key {k3}
skip 10.244.4.0/24: BackendType is \"vxlan\", not \"wireguard\"
"
    );
    let desired = b.desired(&own, &peers);
    assert_eq!(desired.render(), expected);
    let mut reversed = peers.clone();
    reversed.reverse();
    assert_eq!(b.desired(&own, &reversed), desired, "peer order does not matter");
    crate::backend::assert_parts_add_up(&b, &own, &peers);
    let mut broken = peer(5, true, "wireguard", None);
    broken.backend_data = PerFamily::new(Some(json!({"Port": 51820})), None);
    let mut peers = peers;
    peers.push(broken);
    for mode in ["auto", "ipv4", "ipv6"] {
        crate::backend::assert_parts_add_up(&backend(json!({"Mode": mode}), true), &own, &peers);
    }
}

#[test]
fn single_device_modes_pick_the_endpoint_family() {
    let own = peer(1, true, "wireguard", Some(51820));
    let other = peer(2, true, "wireguard", Some(51820));
    let v6 = backend(json!({"Mode": "ipv6"}), true);
    assert_eq!(v6.scope().links, vec!["flannel-wg"]);
    let rendered = v6.desired(&own, std::slice::from_ref(&other)).render();
    assert!(rendered.contains("forward 10.244.2.0/24 to [fd18::2]:51821"), "{rendered}");
    assert!(rendered.contains("forward fd00:10:0:2::/64 to [fd18::2]:51821"), "{rendered}");
    // auto: both peers' addresses are private, so IPv4, as flannel chooses.
    let auto = backend(json!({"Mode": "auto"}), true);
    let rendered = auto.desired(&own, &[other]).render();
    assert!(rendered.contains("forward fd00:10:0:2::/64 to 198.18.0.2:51820"), "{rendered}");
}

#[test]
fn a_peer_without_a_key_is_skipped_with_the_reason() {
    let b = backend(json!({}), false);
    let mut broken = peer(2, false, "wireguard", None);
    broken.backend_data = PerFamily::new(Some(json!({"Port": 51820})), None);
    let rendered = b.desired(&peer(1, false, "wireguard", None), &[broken]).render();
    assert!(rendered.ends_with("skip 10.244.2.0/24: BackendData has no PublicKey\n"), "{rendered}");
    assert!(!rendered.contains("forward"));
}

#[test]
fn the_kernel_path_wants_wireguard_devices_and_writes_the_same_peers() {
    let mut b = backend(json!({"Type": "wireguard", "PersistentKeepaliveInterval": 25}), true);
    b.data_path = DataPath::Kernel;
    let own = peer(1, true, "wireguard", Some(51820));
    let desired = b.desired(&own, &[own.clone(), peer(2, true, "wireguard", Some(7000))]);
    let rendered = desired.render();
    assert!(rendered.starts_with("link flannel-wg wireguard mtu 1420 up\nlink flannel-wg-v6 wireguard mtu 1420 up\n"));
    // Each device takes its own family's peers from the same forwarding table the userspace plane reads.
    let devices = b.kernel_devices();
    assert_eq!(
        devices.iter().map(|d| (d.name.as_str(), d.listen_port)).collect::<Vec<_>>(),
        [("flannel-wg", 51820), ("flannel-wg-v6", 51821)]
    );
    let table = desired.forwarding.unwrap();
    let v6 = devices[1].update(None, &devices[1].wanted(&table)).unwrap();
    let [genl::PeerUpdate::Set { public_key, endpoint, allowed_ips, persistent_keepalive: 25, .. }] =
        v6.peers.as_slice()
    else {
        panic!("{v6:?}")
    };
    assert_eq!((public_key, endpoint.to_string()), (&[2; 32], "[fd18::2]:7001".to_string()));
    assert_eq!(allowed_ips, &["fd00:10:0:2::/64".parse::<IpNetwork>().unwrap()]);
}
