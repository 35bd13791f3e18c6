//! The VXLAN backend and the diff against the fake kernel: every scenario as golden `ip`-like text, no root needed.

use serde_json::json;
use weft_backends::backend::Backend;
use weft_backends::diff::{diff, Op};
use weft_backends::fake::FakeKernel;
use weft_backends::kernel::{reconcile, Kernel};
use weft_backends::model::{KernelState, Route, WEFT_ROUTE_PROTOCOL};
use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
use weft_backends::{Family, Peer, PerFamily, Underlay};

fn underlay() -> Underlay {
    Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()])
}

fn backend(config: VxlanConfig, existing: &KernelState) -> VxlanBackend {
    VxlanBackend::prepare(config, underlay(), &[Family::V4], existing, WEFT_ROUTE_PROTOCOL).unwrap()
}

fn peer(subnet: &str, public_ip: &str, mac: &str) -> Peer {
    Peer {
        subnets: PerFamily::new(Some(subnet.parse().unwrap()), None),
        public_ips: PerFamily::new(Some(public_ip.parse().unwrap()), None),
        backend_type: "vxlan".into(),
        backend_data: PerFamily::new(Some(json!({"VNI": 1, "VtepMAC": mac})), None),
    }
}

fn own() -> Peer {
    peer("10.244.1.0/24", "198.18.0.1", "0e:00:00:00:00:01")
}

fn two_peers() -> Vec<Peer> {
    vec![
        peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:02"),
        peer("10.244.3.0/24", "198.18.0.3", "0e:00:00:00:00:03"),
    ]
}

/// Reconciles and checks the second pass is a no-op; returns the ops of the first pass.
async fn converge(kernel: &mut FakeKernel, backend: &VxlanBackend, peers: &[Peer]) -> Vec<Op> {
    let desired = backend.desired(&own(), peers).state;
    let report = reconcile(kernel, &backend.scope(), &desired).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.failed);
    let observed = kernel.observe(&backend.scope()).await.unwrap();
    assert_eq!(observed.render(), desired.render());
    let again = reconcile(kernel, &backend.scope(), &desired).await.unwrap();
    assert!(again.applied.is_empty(), "second pass must do nothing, did {:?}", again.applied);
    report.applied
}

fn mac_of(backend: &VxlanBackend) -> String {
    backend.vtep(Family::V4).unwrap().link.mac.to_string()
}

#[tokio::test]
async fn fresh_host_gets_flannels_triple_per_peer() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig::default(), &kernel.state);
    let ops = converge(&mut kernel, &b, &two_peers()).await;
    assert_eq!(ops.len(), 8, "link, address, and three objects per peer: {ops:#?}");
    let expected = format!(
        "\
link flannel.1 vxlan id 1 local 198.18.0.1 dev #2 dstport 8472 nolearning address {mac} mtu 1450 up
addr 10.244.1.0/32 dev flannel.1
neigh 10.244.2.0 lladdr 0e:00:00:00:00:02 dev flannel.1 PERMANENT
neigh 10.244.3.0 lladdr 0e:00:00:00:00:03 dev flannel.1 PERMANENT
fdb 0e:00:00:00:00:02 dev flannel.1 dst 198.18.0.2 self permanent
fdb 0e:00:00:00:00:03 dev flannel.1 dst 198.18.0.3 self permanent
route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 87
route 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink proto 87
",
        mac = mac_of(&b)
    );
    assert_eq!(kernel.state.render(), expected);
}

#[tokio::test]
async fn ops_add_before_they_delete_and_neighbours_before_routes() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig::default(), &kernel.state);
    converge(&mut kernel, &b, &two_peers()[..1]).await;
    // Peer 2 leaves, peer 3 joins: the newcomer's objects go in first.
    let ops = converge(&mut kernel, &b, &two_peers()[1..]).await;
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "replace neigh 10.244.3.0 lladdr 0e:00:00:00:00:03 dev flannel.1",
            "replace fdb 0e:00:00:00:00:03 dev flannel.1 dst 198.18.0.3",
            "replace route 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink proto 87",
            "delete route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink proto 87",
            "delete fdb 0e:00:00:00:00:02 dev flannel.1 dst 198.18.0.2",
            "delete neigh 10.244.2.0 dev flannel.1",
        ]
    );
}

#[tokio::test]
async fn a_peer_with_a_new_vtep_mac_is_updated_in_place() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig::default(), &kernel.state);
    converge(&mut kernel, &b, &two_peers()).await;
    let mut peers = two_peers();
    peers[0] = peer("10.244.2.0/24", "198.18.0.2", "0e:00:00:00:00:22");
    let ops = converge(&mut kernel, &b, &peers).await;
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "replace neigh 10.244.2.0 lladdr 0e:00:00:00:00:22 dev flannel.1",
            "replace fdb 0e:00:00:00:00:22 dev flannel.1 dst 198.18.0.2",
            "delete fdb 0e:00:00:00:00:02 dev flannel.1 dst 198.18.0.2",
        ]
    );
}

#[tokio::test]
async fn drift_is_repaired_with_exactly_the_missing_objects() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig::default(), &kernel.state);
    converge(&mut kernel, &b, &two_peers()).await;
    let golden = kernel.state.render();

    let dst = "10.244.2.0/24".parse().unwrap();
    kernel.state.routes.remove(&dst);
    let ops = converge(&mut kernel, &b, &two_peers()).await;
    assert_eq!(ops.len(), 1);
    assert_eq!(kernel.state.render(), golden);

    // Someone sets the device down and changes its MTU: fixed in place, nothing re-created.
    let link = kernel.state.links.get_mut("flannel.1").unwrap();
    link.up = false;
    link.mtu = 1400;
    let ops = converge(&mut kernel, &b, &two_peers()).await;
    assert!(matches!(ops.as_slice(), [Op::UpdateLink(_)]), "{ops:?}");

    // The device is deleted by hand: it comes back with the same MAC, and everything on it too.
    kernel.state.remove_device("flannel.1");
    let ops = converge(&mut kernel, &b, &two_peers()).await;
    assert_eq!(ops.len(), 8);
    assert_eq!(kernel.state.render(), golden);
}

#[tokio::test]
async fn a_device_with_other_fixed_attributes_is_replaced_keeping_its_mac() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig { port: 4789, ..Default::default() }, &kernel.state);
    converge(&mut kernel, &b, &two_peers()).await;
    let old_mac = mac_of(&b);

    // Restart with flannel's default port: the device must be re-created, and keeps the MAC peers know.
    let b = backend(VxlanConfig::default(), &kernel.state);
    assert_eq!(mac_of(&b), old_mac);
    let ops = converge(&mut kernel, &b, &two_peers()).await;
    assert!(matches!(&ops[..2], [Op::DeleteLink(n), Op::CreateLink(_)] if n == "flannel.1"), "{ops:?}");
    assert!(kernel.state.render().contains("dstport 8472"));
}

#[tokio::test]
async fn stale_state_of_an_earlier_run_is_removed_and_foreign_routes_kept() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig::default(), &kernel.state);
    converge(&mut kernel, &b, &two_peers()).await;
    // A route of ours to a host that left while we were down, and somebody else's route.
    let stale =
        Route::via("10.244.9.0/24".parse().unwrap(), "198.18.0.9".parse().unwrap(), "eth0", false, WEFT_ROUTE_PROTOCOL);
    let foreign = Route { dst: "192.0.2.0/24".parse().unwrap(), protocol: 4, ..stale.clone() };
    kernel.state.add_route(stale);
    kernel.state.add_route(foreign.clone());
    kernel.state.add_address(weft_backends::model::Address {
        device: "flannel.1".into(),
        addr: "10.244.77.0/32".parse().unwrap(),
    });

    let ops = converge(&mut kernel, &b, &two_peers()).await;
    let text: Vec<String> = ops.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec!["delete route 10.244.9.0/24 via 198.18.0.9 dev eth0 proto 87", "delete addr 10.244.77.0/32 dev flannel.1"]
    );
    assert_eq!(kernel.state.routes.get(&foreign.dst), Some(&foreign));
}

#[tokio::test]
async fn unusable_peers_are_skipped_with_a_reason() {
    let b = backend(VxlanConfig::default(), &KernelState::default());
    let mut host_gw = peer("10.244.4.0/24", "198.18.0.4", "0e:00:00:00:00:04");
    host_gw.backend_type = "host-gw".into();
    let mut bad_mac = peer("10.244.5.0/24", "198.18.0.5", "zz");
    bad_mac.backend_data.v4 = Some(json!({"VNI": 1, "VtepMAC": "not-a-mac"}));
    let other_vni = Peer {
        backend_data: PerFamily::new(Some(json!({"VNI": 7, "VtepMAC": "0e:00:00:00:00:06"})), None),
        ..peer("10.244.6.0/24", "198.18.0.6", "")
    };
    let no_data = Peer { backend_data: PerFamily::default(), ..peer("10.244.7.0/24", "198.18.0.7", "") };
    let multicast = peer("10.244.8.0/24", "198.18.0.8", "01:00:5e:00:00:01");
    let desired = b.desired(&own(), &[host_gw, bad_mac, other_vni, no_data, multicast, two_peers()[0].clone()]);
    let reasons: Vec<String> = desired.skipped.iter().map(|s| format!("{}: {}", s.subnet, s.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            "10.244.4.0/24: BackendType is \"host-gw\", not \"vxlan\"",
            "10.244.5.0/24: invalid MAC address \"not-a-mac\": expected six hex octets such as 0e:2a:4f:00:12:9c",
            "10.244.6.0/24: BackendData.VNI is 7, ours is 1",
            "10.244.7.0/24: lease has no BackendData",
            "10.244.8.0/24: BackendData.VtepMAC 01:00:5e:00:00:01 is not a unicast address",
        ]
    );
    assert_eq!(desired.state.routes.len(), 1, "the good peer is still programmed");
}

#[tokio::test]
async fn direct_routing_skips_encapsulation_on_the_same_l2() {
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig { direct_routing: true, ..Default::default() }, &kernel.state);
    let far = peer("10.244.4.0/24", "203.0.113.4", "0e:00:00:00:00:04");
    let mut peers = two_peers();
    peers.push(far);
    converge(&mut kernel, &b, &peers).await;
    let routes: Vec<String> = kernel.state.routes.values().map(weft_backends::model::render_route).collect();
    assert_eq!(
        routes,
        vec![
            "route 10.244.2.0/24 via 198.18.0.2 dev eth0 proto 87",
            "route 10.244.3.0/24 via 198.18.0.3 dev eth0 proto 87",
            "route 10.244.4.0/24 via 10.244.4.0 dev flannel.1 onlink proto 87",
        ]
    );
    assert_eq!(kernel.state.neighbours.len(), 1, "only the remote-L2 peer needs ARP and FDB entries");
}

#[tokio::test]
async fn any_order_of_peer_changes_converges_in_one_pass() {
    // A small deterministic generator: every step picks a random subset of 12 hosts, with random MACs.
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kernel = FakeKernel::new();
    let b = backend(VxlanConfig::default(), &kernel.state);
    for _ in 0..200 {
        let mut peers = Vec::new();
        for i in 2..14u8 {
            let roll = next();
            if roll % 2 == 0 {
                let mac = format!("0e:00:00:00:{:02x}:{i:02x}", (roll >> 8) % 4);
                peers.push(peer(&format!("10.244.{i}.0/24"), &format!("198.18.0.{i}"), &mac));
            }
        }
        // The order leases arrive in must not matter.
        peers.reverse();
        converge(&mut kernel, &b, &peers).await;
    }
}

#[test]
fn diff_of_equal_states_is_empty_and_prepare_is_deterministic() {
    let b1 = backend(VxlanConfig::default(), &KernelState::default());
    let b2 = backend(VxlanConfig::default(), &KernelState::default());
    assert_eq!(b1, b2, "the VTEP MAC derives from the public IP and VNI, so restarts agree");
    let d = b1.desired(&own(), &two_peers()).state;
    assert!(diff(&d, &d).is_empty());
}

#[test]
fn mtu_follows_the_interface_or_the_backend_option() {
    let b = backend(VxlanConfig::default(), &KernelState::default());
    assert_eq!(b.mtu(), 1450);
    let b = backend(VxlanConfig { mtu: Some(1400), ..Default::default() }, &KernelState::default());
    assert_eq!((b.mtu(), b.notes.len()), (1350, 0));
    // More than the interface has cannot take effect: the kernel would refuse it on every pass.
    let b = backend(VxlanConfig { mtu: Some(9001), ..Default::default() }, &KernelState::default());
    assert_eq!(b.mtu(), 1450);
    assert!(b.notes[0].contains("Backend.MTU 9001 is larger than eth0's MTU 1500"), "{:?}", b.notes);
    let config =
        VxlanConfig::from_json(&json!({"Type": "vxlan", "VNI": 42, "Port": 0, "MTU": 1400, "DirectRouting": true}))
            .unwrap();
    assert_eq!((config.vni, config.port, config.mtu, config.direct_routing), (42, 8472, Some(1400), true));
    for (bad, field) in [
        (json!({"VNI": 0}), "Backend.VNI"),
        (json!({"VNI": "1"}), "Backend.VNI"),
        (json!({"Port": 70000}), "Backend.Port"),
        (json!({"MTU": 100}), "Backend.MTU"),
        (json!({"GBP": "yes"}), "Backend.GBP"),
    ] {
        let err = VxlanConfig::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn unknown_backend_keys_are_ignored_with_a_note_as_flannel_ignores_them() {
    // Windows-only options from a config shared with Windows nodes, and a typo.
    let config =
        VxlanConfig::from_json(&json!({"Type": "vxlan", "Name": "vxlan0", "MacPrefix": "0E-2A", "Colour": "blue"}))
            .unwrap();
    let mut ignored = config.ignored.clone();
    ignored.sort();
    assert_eq!(ignored, ["Colour", "MacPrefix", "Name"]);
    assert_eq!(config.vni, 1);
    let b = backend(config, &KernelState::default());
    assert_eq!(b.notes.len(), 3, "{:?}", b.notes);
    assert!(b.notes.iter().any(|n| n.starts_with("Backend.Name is not a vxlan option on Linux")), "{:?}", b.notes);
}

#[test]
fn ipv6_vtep_mtu_pays_for_the_longer_outer_header() {
    let dual =
        Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap(), "fd00:198:18::1/64".parse().unwrap()]);
    let prepare = |config: VxlanConfig, families: &[Family]| {
        VxlanBackend::prepare(config, dual.clone(), families, &KernelState::default(), WEFT_ROUTE_PROTOCOL)
    };
    let b = prepare(VxlanConfig::default(), &[Family::V4, Family::V6]).unwrap();
    assert_eq!(b.vtep(Family::V4).unwrap().link.mtu, 1450);
    assert_eq!(b.vtep(Family::V6).unwrap().link.mtu, 1430);
    assert_eq!(b.mtu(), 1430, "containers get the MTU both tunnels can carry");
    assert_eq!(prepare(VxlanConfig::default(), &[Family::V6]).unwrap().mtu(), 1430);
    // IPv6 needs 1280 bytes on every link: an underlay of 1349 cannot carry it, 1350 can.
    let err = prepare(VxlanConfig { mtu: Some(1349), ..Default::default() }, &[Family::V6]).unwrap_err().to_string();
    assert!(err.contains("Backend.MTU") && err.contains("1280"), "{err}");
    assert_eq!(prepare(VxlanConfig { mtu: Some(1350), ..Default::default() }, &[Family::V6]).unwrap().mtu(), 1280);
    assert_eq!(prepare(VxlanConfig { mtu: Some(1349), ..Default::default() }, &[Family::V4]).unwrap().mtu(), 1299);
}

#[test]
fn lease_data_is_flannels() {
    let b = backend(VxlanConfig::default(), &KernelState::default());
    let data = b.lease_data(Family::V4).unwrap();
    assert_eq!(data.to_string(), format!("{{\"VNI\":1,\"VtepMAC\":\"{}\"}}", mac_of(&b)));
}

/// A full pass reads the kernel one kind at a time; what it does is still exactly what the diff of the whole
/// observation says, in the same order: here a device to re-create, a stale device, stale objects of every kind
/// and a changed peer, all at once.
#[tokio::test]
async fn a_pass_read_kind_by_kind_does_what_the_whole_diff_says() {
    let mut kernel = FakeKernel::new();
    let old = backend(VxlanConfig { port: 4789, ..Default::default() }, &kernel.state);
    converge(&mut kernel, &old, &two_peers()).await;
    let stale_device =
        weft_backends::model::Link { name: "flannel.2".into(), ..old.vtep(Family::V4).unwrap().link.clone() };
    kernel.state.add_link(stale_device);
    kernel.state.add_address(weft_backends::model::Address {
        device: "flannel.1".into(),
        addr: "10.244.77.0/32".parse().unwrap(),
    });
    let stale_route =
        Route::via("10.244.9.0/24".parse().unwrap(), "198.18.0.9".parse().unwrap(), "eth0", false, WEFT_ROUTE_PROTOCOL);
    kernel.state.add_route(stale_route);

    let b = backend(VxlanConfig::default(), &kernel.state);
    let peers = vec![
        peer("10.244.2.0/24", "198.18.0.22", "0e:00:00:00:00:22"),
        peer("10.244.4.0/24", "198.18.0.4", "0e:00:00:00:00:04"),
    ];
    let desired = b.desired(&own(), &peers).state;
    let scope = weft_backends::model::Scope { links: vec!["flannel.1".into(), "flannel.2".into()], ..b.scope() };
    let whole = diff(&desired, &kernel.observe(&scope).await.unwrap());
    let report = reconcile(&mut kernel, &scope, &desired).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.failed);
    let text = |ops: &[Op]| ops.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(text(&report.applied), text(&whole));
    assert!(matches!(&whole[..2], [Op::DeleteLink(n), Op::CreateLink(_)] if n == "flannel.1"), "{whole:?}");
    assert!(matches!(whole.last(), Some(Op::DeleteLink(n)) if n == "flannel.2"), "{whole:?}");
    assert_eq!(kernel.observe(&scope).await.unwrap().render(), desired.render());
}
