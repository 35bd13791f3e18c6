//! Golden replays of random sequences, seeded so a failure names the seed that reproduces it: peer sets through
//! the VXLAN backend, general desired states (every link and route kind), and rule sets, each through desired ->
//! diff -> apply on the fakes. After every step the fake must hold exactly the desired state, and a second pass
//! must have nothing to do.

use serde_json::json;
use weft_backends::backend::{Backend, Desired};
use weft_backends::diff::diff;
use weft_backends::fake::{restrict, FakeKernel, FakeRules};
use weft_backends::kernel::{reconcile, Kernel};
use weft_backends::model::{
    Address, KernelState, Link, LinkKind, MacAddr, Route, Scope, VxlanAttrs, WEFT_ROUTE_PROTOCOL,
};
use weft_backends::rules::{
    diff_rules, reconcile_rules, BaseChain, ChainType, Hook, Match, Policy, Rule, RuleSet, Table, TableFamily, TableId,
    Verdict,
};
use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
use weft_backends::{Family, Peer, PerFamily, Underlay};

/// xorshift64: small, deterministic, good enough to pick subsets and orders.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

const SEEDS: [u64; 6] = [0x5eed, 1, 42, 0xdead_beef, 977, 0x0123_4567_89ab_cdef];

/// Applies `desired` to the fake, checks it then holds exactly that inside `scope` (and everything outside the
/// scope untouched), and that a second pass does nothing.
async fn converge(kernel: &mut FakeKernel, scope: &Scope, desired: &KernelState, seed: u64, step: usize) {
    let outside_before = outside(kernel, scope);
    let report = reconcile(kernel, scope, desired).await.unwrap();
    assert!(report.is_clean(), "seed {seed:#x} step {step}: {:?}", report.failed);
    let observed = kernel.observe(scope).await.unwrap();
    assert_eq!(observed.render(), desired.render(), "seed {seed:#x} step {step}");
    assert_eq!(restrict(&kernel.state, scope).render(), desired.render(), "seed {seed:#x} step {step}");
    assert_eq!(outside(kernel, scope), outside_before, "seed {seed:#x} step {step}: something not ours changed");
    let again = diff(desired, &kernel.observe(scope).await.unwrap());
    assert!(again.is_empty(), "seed {seed:#x} step {step}: second pass would do {again:?}");
}

/// Routes outside the scope (someone else's).
fn outside(kernel: &FakeKernel, scope: &Scope) -> Vec<String> {
    let ours = restrict(&kernel.state, scope);
    kernel.state.routes.values().filter(|r| !ours.routes.contains_key(&r.dst)).map(|r| format!("{r:?}")).collect()
}

/// Changes behind weft's back, as an operator or another program would.
fn drift(rng: &mut Rng, kernel: &mut FakeKernel, scope: &Scope) {
    match rng.below(6) {
        0 => {
            let key = kernel.state.routes.keys().nth(rng.below(kernel.state.routes.len().max(1) as u64) as usize);
            if let Some(key) = key.copied() {
                kernel.state.routes.remove(&key);
            }
        }
        1 => {
            let key = kernel.state.neighbours.keys().next().cloned();
            if let Some(key) = key {
                kernel.state.neighbours.remove(&key);
            }
        }
        2 => {
            if let Some(link) = kernel.state.links.values_mut().find(|l| l.kind != LinkKind::Tun) {
                link.up = false;
                link.mtu -= 1;
            }
        }
        3 => {
            if let Some(name) = scope.links.first() {
                if kernel.state.links.get(name).is_some_and(|l| l.kind != LinkKind::Tun) {
                    kernel.state.remove_device(name);
                }
            }
        }
        4 => {
            // A stale route of ours from an earlier run.
            let dst = format!("10.244.{}.0/24", 200 + rng.below(50)).parse().unwrap();
            kernel.state.add_route(Route::via(
                dst,
                "198.18.0.250".parse().unwrap(),
                "eth0",
                false,
                WEFT_ROUTE_PROTOCOL,
            ));
        }
        _ => {
            // Someone else's route, which must survive.
            let dst = format!("192.0.2.{}/32", rng.below(250)).parse().unwrap();
            kernel.state.add_route(Route::via(dst, "198.18.0.254".parse().unwrap(), "eth0", false, 4));
        }
    }
}

fn vxlan_peer(rng: &mut Rng, host: u8, dual: bool) -> Peer {
    // Most hosts on our L2, some behind a router; VTEP MACs change now and then (a re-created device).
    let near = rng.chance(70);
    let mac = MacAddr([0x0e, 0, 0, 0, rng.below(3) as u8, host]);
    let mut peer = Peer {
        subnets: PerFamily::new(Some(format!("10.244.{host}.0/24").parse().unwrap()), None),
        public_ips: PerFamily::new(
            Some(if near { format!("198.18.0.{host}") } else { format!("203.0.113.{host}") }.parse().unwrap()),
            None,
        ),
        backend_type: if rng.chance(5) { "host-gw".into() } else { "vxlan".into() },
        backend_data: PerFamily::new(Some(json!({"VNI": 1, "VtepMAC": mac.to_string()})), None),
    };
    if dual {
        peer.subnets.v6 = Some(format!("fd00:10:244:{host:x}::/64").parse().unwrap());
        peer.public_ips.v6 = Some(format!("fd00:198:18::{host:x}").parse().unwrap());
        peer.backend_data.v6 = Some(json!({"VNI": 1, "VtepMAC": mac.to_string()}));
    }
    peer
}

#[tokio::test]
async fn random_peer_set_sequences_through_the_vxlan_backend() {
    for seed in SEEDS {
        let mut rng = Rng(seed);
        let dual = rng.chance(50);
        let config = VxlanConfig { direct_routing: rng.chance(50), ..VxlanConfig::default() };
        let mut addresses = vec!["198.18.0.1/24".parse().unwrap()];
        let mut families = vec![Family::V4];
        if dual {
            addresses.push("fd00:198:18::1/64".parse().unwrap());
            families.push(Family::V6);
        }
        let underlay = Underlay::new("eth0", 2, 1500, addresses);
        let mut kernel = FakeKernel::new();
        let backend =
            VxlanBackend::prepare(config, underlay, &families, &KernelState::default(), WEFT_ROUTE_PROTOCOL).unwrap();
        let scope = backend.scope();
        let own = vxlan_peer(&mut Rng(1), 1, dual);
        for step in 0..80 {
            let mut peers = Vec::new();
            for host in 2..24u8 {
                if rng.chance(60) {
                    peers.push(vxlan_peer(&mut rng, host, dual));
                }
            }
            rng.shuffle(&mut peers);
            let desired = backend.desired(&own, &peers);
            // The order leases arrive in does not matter.
            let mut reordered = peers.clone();
            rng.shuffle(&mut reordered);
            assert_eq!(backend.desired(&own, &reordered).render(), desired.render(), "seed {seed:#x} step {step}");
            if step % 3 == 2 {
                drift(&mut rng, &mut kernel, &scope);
            }
            converge(&mut kernel, &scope, &desired.state, seed, step).await;
        }
    }
}

/// A random desired state over every kind the model has: VXLAN and WireGuard devices (sometimes swapping kind
/// under one name), a TUN device the data plane opened, the underlay as a referenced device, routes via a
/// gateway, out of a device only, and blackholes, plus addresses.
fn random_state(rng: &mut Rng) -> KernelState {
    let mut state = KernelState::default();
    state.add_link(Link::unowned("eth0"));
    let vxlan = LinkKind::Vxlan(VxlanAttrs {
        vni: 1 + rng.below(2) as u32,
        local: "198.18.0.1".parse().unwrap(),
        underlay_index: 2,
        port: 8472,
        learning: false,
        gbp: false,
    });
    let tunnel = if rng.chance(70) { vxlan } else { LinkKind::Wireguard };
    let mac = if tunnel.has_mac() { MacAddr([0x0e, 0, 0, 0, 0, 1]) } else { MacAddr::default() };
    let mtu = 1400 + rng.below(3) as u32 * 10;
    // A device that is down carries no routes: the kernel refuses them (ENETDOWN), and so does the fake.
    let tunnel_up = rng.chance(90);
    state.add_link(Link { name: "tunnel".into(), kind: tunnel, mac, mtu, up: tunnel_up });
    state.add_link(Link { name: "weft0".into(), kind: LinkKind::Tun, mac: MacAddr::default(), mtu, up: true });
    state.add_address(Address { device: "tunnel".into(), addr: "10.244.1.0/32".parse().unwrap() });
    if rng.chance(50) {
        state.add_address(Address { device: "weft0".into(), addr: "10.244.1.1/32".parse().unwrap() });
    }
    state.add_route(Route::blackhole("10.244.1.0/24".parse().unwrap(), WEFT_ROUTE_PROTOCOL));
    for host in 2..20u8 {
        let dst = format!("10.244.{host}.0/24").parse().unwrap();
        let gateway = format!("10.244.{host}.0").parse().unwrap();
        let route = match rng.below(5) {
            0 => continue,
            1 if tunnel_up => Route::via(dst, gateway, "tunnel", true, WEFT_ROUTE_PROTOCOL),
            1 => continue,
            2 => Route::dev(dst, "weft0", WEFT_ROUTE_PROTOCOL),
            3 => Route::via(dst, format!("198.18.0.{host}").parse().unwrap(), "eth0", false, WEFT_ROUTE_PROTOCOL),
            _ => Route::blackhole(dst, WEFT_ROUTE_PROTOCOL),
        };
        state.add_route(route);
    }
    state
}

#[tokio::test]
async fn random_general_states_converge_on_the_fake() {
    let scope = Scope {
        referenced: vec!["eth0".into()],
        ..Scope::links(vec!["tunnel".into(), "weft0".into()], WEFT_ROUTE_PROTOCOL)
    };
    for seed in SEEDS {
        let mut rng = Rng(seed);
        let mut kernel = FakeKernel::new();
        kernel.open_tun("weft0");
        for step in 0..80 {
            let desired = random_state(&mut rng);
            if step % 4 == 3 {
                drift(&mut rng, &mut kernel, &scope);
            }
            converge(&mut kernel, &scope, &desired, seed, step).await;
        }
    }
}

fn random_rules(rng: &mut Rng) -> RuleSet {
    let mut set = RuleSet::default();
    for (family, name) in [(TableFamily::Ip, "weft"), (TableFamily::Ip6, "weft"), (TableFamily::Inet, "weft-fwd")] {
        if rng.chance(30) {
            continue;
        }
        let net = match family {
            TableFamily::Ip6 => format!("fd00:10:244:{:x}::/64", rng.below(4)),
            _ => format!("10.244.{}.0/24", rng.below(4)),
        };
        let net = net.parse().unwrap();
        let mut rules = vec![Rule::new(vec![Match::Source { net, negated: rng.chance(50) }], Verdict::Return)];
        if rng.chance(50) {
            rules.push(Rule::new(vec![], Verdict::Masquerade { fully_random: rng.chance(50) }));
        }
        let chain_type = if family == TableFamily::Inet { ChainType::Filter } else { ChainType::Nat };
        if chain_type == ChainType::Filter {
            rules.retain(|r| !matches!(r, Rule::Rule { verdict: Verdict::Masquerade { .. }, .. }));
        }
        let base = BaseChain {
            chain_type,
            hook: if chain_type == ChainType::Nat { Hook::Postrouting } else { Hook::Forward },
            priority: rng.below(2) as i32 * 100,
            policy: if rng.chance(20) { Policy::Drop } else { Policy::Accept },
        };
        set.add(Table::new(TableId::new(family, name)).base_chain("main", base, rules));
    }
    set
}

#[tokio::test]
async fn random_rule_set_sequences_converge_on_the_fake() {
    let owned = vec![
        TableId::new(TableFamily::Ip, "weft"),
        TableId::new(TableFamily::Ip6, "weft"),
        TableId::new(TableFamily::Inet, "weft-fwd"),
    ];
    for seed in SEEDS {
        let mut rng = Rng(seed);
        let mut rules = FakeRules::default();
        // Someone else's table, never read, never touched.
        let foreign = Table::new(TableId::new(TableFamily::Inet, "filter"));
        rules.tables.add(foreign.clone());
        for step in 0..60 {
            let desired = Desired { rules: random_rules(&mut rng), ..Desired::default() };
            if step % 5 == 4 {
                if let Some(table) = rules.tables.tables.values_mut().find(|t| t.id.name.starts_with("weft")) {
                    table.chains.clear();
                }
            }
            let report = reconcile_rules(&mut rules, &owned, &desired.rules).await.unwrap();
            assert!(report.failed.is_empty(), "seed {seed:#x} step {step}: {:?}", report.failed);
            let mut ours = rules.tables.clone();
            ours.tables.retain(|id, _| owned.contains(id));
            assert_eq!(ours.render(), desired.rules.render(), "seed {seed:#x} step {step}");
            assert_eq!(rules.tables.tables.get(&foreign.id), Some(&foreign));
            assert!(diff_rules(&desired.rules, &ours).is_empty());
            let again = reconcile_rules(&mut rules, &owned, &desired.rules).await.unwrap();
            assert!(again.applied.is_empty(), "seed {seed:#x} step {step}: {:?}", again.applied);
        }
    }
}

#[test]
fn one_golden_text_covers_kernel_objects_rules_and_forwarding() {
    let mut desired = Desired::default();
    desired.state.add_link(Link {
        name: "weft0".into(),
        kind: LinkKind::Tun,
        mac: MacAddr::default(),
        mtu: 1472,
        up: true,
    });
    desired.state.add_route(Route::blackhole("10.244.1.0/24".parse().unwrap(), WEFT_ROUTE_PROTOCOL));
    desired.state.add_route(Route::dev("10.244.2.0/24".parse().unwrap(), "weft0", WEFT_ROUTE_PROTOCOL));
    let pods = "10.244.0.0/16".parse().unwrap();
    let accept = Rule::new(vec![Match::Destination { net: pods, negated: false }], Verdict::Accept);
    let forward = BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Accept };
    desired.rules.add(Table::new(TableId::new(TableFamily::Inet, "weft")).base_chain("forward", forward, vec![accept]));
    let mut forwarding = weft_backends::forwarding::ForwardingTable::default();
    forwarding.insert("10.244.2.0/24".parse().unwrap(), "198.18.0.2:8285".parse().unwrap());
    desired.forwarding = Some(forwarding);
    desired.skipped.push(weft_backends::backend::SkippedPeer {
        subnet: "10.244.3.0/24".parse().unwrap(),
        reason: weft_backends::trust::RejectReason::BadBackendData { detail: "lease has no BackendData".into() },
    });
    assert_eq!(
        desired.render(),
        "\
link weft0 tun mtu 1472 up
route blackhole 10.244.1.0/24 proto 87
route 10.244.2.0/24 dev weft0 proto 87
table inet weft {
\tchain forward {
\t\ttype filter hook forward priority 0; policy accept;
\t\tip daddr 10.244.0.0/16 accept
\t}
}
forward 10.244.2.0/24 to 198.18.0.2:8285
skip 10.244.3.0/24: lease has no BackendData
"
    );
}

#[tokio::test]
async fn fake_errors_name_the_situation() {
    let mut kernel = FakeKernel::new();
    let route = Route::dev("10.244.2.0/24".parse().unwrap(), "absent0", WEFT_ROUTE_PROTOCOL);
    let err = kernel.apply(&weft_backends::diff::Op::ReplaceRoute(route)).await.unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
    assert_eq!(err.to_string(), "replace route 10.244.2.0/24 dev absent0 proto 87: device absent0 does not exist");
    let tun = Link { name: "weft0".into(), kind: LinkKind::Tun, mac: MacAddr::default(), mtu: 1472, up: true };
    let err = kernel.apply(&weft_backends::diff::Op::CreateLink(tun)).await.unwrap_err();
    assert!(err.to_string().contains("the data plane creates it by opening /dev/net/tun"), "{err}");
    let nowhere = Route { device: None, ..Route::dev("10.244.2.0/24".parse().unwrap(), "x", 87) };
    let err = kernel.apply(&weft_backends::diff::Op::ReplaceRoute(nowhere)).await.unwrap_err();
    assert!(err.to_string().contains("needs a gateway or a device"), "{err}");
    let err = kernel.apply(&weft_backends::diff::Op::CreateLink(Link::unowned("eth0"))).await.unwrap_err();
    assert!(err.to_string().contains("not weft's to change"), "{err}");
}
