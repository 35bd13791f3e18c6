//! The incremental path against the full pass: random sequences of lease changes (IPv4 and IPv6, conflicting
//! leases included), kernel drift behind weft's back, notifications, overruns and resyncs, applied to two
//! controllers over two in-memory kernels. One takes the path weftd takes ([`Controller::step`]: incremental where
//! it can); the other runs a full pass for every event, as weftd did before. Whenever no drift is pending that
//! no notification reported (which only the periodic resync repairs, in both), the kernels, the forwarding
//! tables and the peers reported must be equal.

use std::sync::Arc;

use proptest::prelude::*;
use weft_backends::backend::{AnyBackend, BackendConfig};
use weft_backends::fake::{FakeKernel, FakeRules};
use weft_backends::kernel::Drift;
use weft_backends::model::{KernelState, Route, WEFT_ROUTE_PROTOCOL};
use weft_backends::parts::ObjectKey;
use weft_backends::Underlay;
use weft_netlink::route::MAIN_TABLE;

use crate::controller::{Controller, Trigger};
use crate::http::Metrics;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::LeaseSet;
use crate::store::Change;
use crate::trust::TrustPolicy;

const CONFIG_VXLAN: &str =
    r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#;
const CONFIG_UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;

/// One thing that happens to a host.
#[derive(Debug, Clone)]
enum Step {
    /// Peer `n` writes its lease: with an IPv6 half or not, one of a few MACs (so VTEP MACs collide), one of a
    /// few public IPs (ours among them).
    Put {
        n: u8,
        v6: bool,
        mac: u8,
        ip: u8,
    },
    Delete {
        n: u8,
        v6: bool,
    },
    /// The i-th route, neighbour or FDB entry is deleted behind our back, and the notification says so.
    DeleteRoute(usize),
    DeleteNeighbour(usize),
    DeleteFdb(usize),
    /// A device of ours is deleted (it takes everything on it along).
    DeleteDevice,
    /// Drift no notification reports: a route rewritten in place, a stray route with weft's protocol.
    RewriteRoute(usize),
    StrayRoute(u8),
    /// The notification socket overflowed.
    Overrun,
    Resync,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u8..9, any::<bool>(), 1u8..7, 1u8..8).prop_map(|(n, v6, mac, ip)| Step::Put { n, v6, mac, ip }),
        3 => (1u8..9, any::<bool>()).prop_map(|(n, v6)| Step::Delete { n, v6 }),
        2 => any::<usize>().prop_map(Step::DeleteRoute),
        1 => any::<usize>().prop_map(Step::DeleteNeighbour),
        1 => any::<usize>().prop_map(Step::DeleteFdb),
        1 => Just(Step::DeleteDevice),
        1 => any::<usize>().prop_map(Step::RewriteRoute),
        1 => (1u8..9).prop_map(Step::StrayRoute),
        1 => Just(Step::Overrun),
        1 => Just(Step::Resync),
    ]
}

fn key(n: u8, v6: bool) -> SubnetKey {
    let text = if v6 { format!("10.244.{n}.0-24&fc00:0:0:{n}::-64") } else { format!("10.244.{n}.0-24") };
    text.parse().unwrap()
}

fn lease(backend: &str, n: u8, v6: bool, mac: u8, ip: u8, revision: i64) -> Lease {
    let data = |family: u8| format!(r#"{{"VNI":1,"VtepMAC":"0e:00:00:00:{family:02x}:{mac:02x}"}}"#);
    let (v6_ip, v6_data) =
        if v6 { (format!(r#""fd00::{ip}""#), data(1)) } else { ("null".to_string(), "null".to_string()) };
    let text = format!(
        r#"{{"PublicIP":"198.18.0.{ip}","PublicIPv6":{v6_ip},"BackendType":"{backend}","BackendData":{},"BackendV6Data":{v6_data}}}"#,
        data(0)
    );
    Lease {
        key: key(n, v6),
        attrs: std::sync::Arc::new(LeaseAttrs::from_json(&text).unwrap()),
        etcd_lease: 1,
        mod_revision: revision,
    }
}

/// A controller over an in-memory kernel with our lease (subnet 1, public IP .1, MAC ..:01) in place.
fn controller(config: &str) -> Controller<FakeKernel, FakeRules> {
    let config = crate::config::NetworkConfig::parse(config).unwrap();
    let families = config.families();
    let policy = TrustPolicy {
        host_addresses: vec!["198.18.0.1/24".parse().unwrap(), "fd00::1/64".parse().unwrap()],
        ..TrustPolicy::outside(config.clone()).unwrap()
    };
    let underlay =
        Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap(), "fd00::1/64".parse().unwrap()]);
    let networks = weft_backends::PerFamily::from_fn(|f| config.family(f).map(|c| c.network));
    let backend = BackendConfig::parse(&config.backend.kind, &config.backend.raw)
        .unwrap()
        .for_networks(&networks)
        .unwrap()
        .prepare(underlay, &families, &KernelState::default(), WEFT_ROUTE_PROTOCOL)
        .unwrap();
    let mut kernel = FakeKernel::new();
    kernel.open_tun("flannel0");
    let mut c = Controller::new(kernel, FakeRules::default(), backend, policy, Arc::new(Metrics::default()));
    c.claim_routes_into(config.networks.iter().map(|(_, f)| f.network).collect());
    c
}

/// Everything that must come out the same: the kernel, the forwarding table and what `/status` says of peers.
fn outcome(c: &mut Controller<FakeKernel, FakeRules, AnyBackend>) -> String {
    let mut out = c.kernel().state.render();
    out.push_str(&c.forwarding().borrow().render());
    out.push_str(&c.peers_reported());
    out
}

fn pick<T: Clone>(items: impl Iterator<Item = T>, i: usize) -> Option<T> {
    let items: Vec<T> = items.collect();
    (!items.is_empty()).then(|| items[i % items.len()].clone())
}

/// Runs `steps` through both controllers; returns the first step after which they differ.
async fn run(config: &str, backend_type: &str, steps: &[Step]) -> Result<(), String> {
    let own = lease(backend_type, 1, config == CONFIG_VXLAN, 1, 1, 1);
    // Changed through the journal, as the registry changes it: the incremental side visits only what it names.
    let mut set = LeaseSet::journaled(0);
    set.apply(&[Change::Put(own.clone())], 1);
    let mut incremental = controller(config);
    let mut full = controller(config);
    let set_now = Arc::new(set.clone());
    incremental.pass(&own, &set_now, Trigger::Startup).await.map_err(|e| e.to_string())?;
    full.pass(&own, &set_now, Trigger::Startup).await.map_err(|e| e.to_string())?;
    let mut revision = 1;
    // Drift no notification reported is repaired by the next resync only, on both sides alike.
    let mut silent_drift = false;
    for (i, step) in steps.iter().enumerate() {
        // What the kernel reports, if anything, and the trigger weftd's loop would run.
        let mut notified: Option<Vec<Drift>> = None;
        let mut trigger = Trigger::KernelEvent;
        match step {
            Step::Put { n, v6, mac, ip } => {
                revision += 1;
                let l = lease(backend_type, *n, *v6, *mac, *ip, revision);
                set.apply(&[Change::Put(l)], revision);
                trigger = Trigger::LeasesChanged;
            }
            Step::Delete { n, v6 } => {
                revision += 1;
                set.apply(&[Change::Delete(key(*n, *v6))], revision);
                trigger = Trigger::LeasesChanged;
            }
            Step::Resync => trigger = Trigger::Resync,
            drift => {
                let mut gone = Vec::new();
                for kernel in [incremental.kernel(), full.kernel()] {
                    let state = &mut kernel.state;
                    match drift {
                        Step::DeleteRoute(i) => {
                            if let Some(dst) = pick(state.routes.keys().copied(), *i) {
                                state.routes.remove(&dst);
                                gone = vec![Drift::RouteDeleted { dst, table: MAIN_TABLE }];
                            }
                        }
                        Step::DeleteNeighbour(i) => {
                            if let Some(k) = pick(state.neighbours.keys().cloned(), *i) {
                                state.neighbours.remove(&k);
                                gone = vec![Drift::NeighbourDeleted { device: k.0.to_string(), ip: k.1 }];
                            }
                        }
                        Step::DeleteFdb(i) => {
                            if let Some(k) = pick(state.fdb.keys().cloned(), *i) {
                                state.fdb.remove(&k);
                                gone = vec![Drift::FdbDeleted { device: k.0.to_string(), mac: k.1 }];
                            }
                        }
                        Step::DeleteDevice => {
                            if let Some(name) = pick(state.links.keys().cloned(), 0) {
                                let on_it: Vec<_> = state.routes.values().filter(|r| r.is_on(&name)).cloned().collect();
                                state.remove_device(&name);
                                gone = vec![Drift::LinkDeleted { device: name }];
                                gone.extend(on_it.into_iter().map(|r| Drift::RouteDeleted { dst: r.dst, table: 254 }));
                            }
                        }
                        Step::RewriteRoute(i) => {
                            if let Some(dst) = pick(state.routes.keys().copied(), *i) {
                                let route = state.routes.get_mut(&dst).expect("picked");
                                route.onlink = !route.onlink;
                                silent_drift = true;
                            }
                        }
                        Step::StrayRoute(n) => {
                            let dst = format!("10.244.{}.0/24", 100 + n).parse().unwrap();
                            let via = "198.18.0.99".parse().unwrap();
                            state.add_route(Route::via(dst, via, "eth0", false, WEFT_ROUTE_PROTOCOL));
                            silent_drift = true;
                        }
                        Step::Overrun => gone = vec![Drift::NotificationsLost],
                        _ => unreachable!("leases and resyncs are handled above"),
                    }
                }
                notified = Some(gone).filter(|g| !g.is_empty());
            }
        }
        if trigger == Trigger::KernelEvent && notified.is_none() {
            // Nothing was reported: neither weftd runs a pass.
        } else {
            let gone = match &notified {
                Some(drifts) => drifts.iter().map(ObjectKey::of_drift).collect::<Option<Vec<_>>>(),
                None => Some(Vec::new()),
            };
            let set_now = Arc::new(set.clone());
            incremental.step(&own, &set_now, trigger, gone).await.map_err(|e| e.to_string())?;
            full.pass(&own, &set_now, trigger).await.map_err(|e| e.to_string())?;
        }
        if trigger == Trigger::Resync {
            silent_drift = false;
        }
        if !silent_drift {
            let (a, b) = (outcome(&mut incremental), outcome(&mut full));
            if a != b {
                return Err(format!("after step {i} ({step:?}):\nincremental:\n{a}\nfull:\n{b}"));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_incremental_path_ends_where_a_full_pass_does_vxlan(steps in prop::collection::vec(step(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(run(CONFIG_VXLAN, "vxlan", &steps));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }

    #[test]
    fn the_incremental_path_ends_where_a_full_pass_does_udp(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let outcome = runtime.block_on(run(CONFIG_UDP, "udp", &steps));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}

#[tokio::test]
async fn lease_changes_and_named_deletions_take_no_full_pass() {
    let steps = [
        Step::Put { n: 2, v6: true, mac: 2, ip: 2 },
        Step::Put { n: 3, v6: false, mac: 3, ip: 3 },
        Step::DeleteRoute(0),
        Step::Delete { n: 2, v6: true },
    ];
    run(CONFIG_VXLAN, "vxlan", &steps).await.unwrap();
    // The same sequence, counted: only the startup pass was full.
    let own = lease("vxlan", 1, true, 1, 1, 1);
    // Changed through the journal, as the registry changes it: the incremental side visits only what it names.
    let mut set = LeaseSet::journaled(0);
    set.apply(&[Change::Put(own.clone())], 1);
    let mut c = controller(CONFIG_VXLAN);
    c.pass(&own, &Arc::new(set.clone()), Trigger::Startup).await.unwrap();
    let peer = lease("vxlan", 2, true, 2, 2, 2);
    set.apply(&[Change::Put(peer)], 2);
    let report = c.step(&own, &Arc::new(set.clone()), Trigger::LeasesChanged, Some(Vec::new())).await.unwrap();
    assert_eq!(report.applied.len(), 6, "a neighbour, an FDB entry and a route per family");
    let dst = "10.244.2.0/24".parse().unwrap();
    c.kernel().state.routes.remove(&dst);
    let gone = Some(vec![ObjectKey::Route(dst)]);
    let report = c.step(&own, &Arc::new(set.clone()), Trigger::KernelEvent, gone).await.unwrap();
    assert_eq!(report.applied.len(), 1);
    let metrics = c.metrics();
    let passes = metrics.reconcile_passes.load(std::sync::atomic::Ordering::Relaxed);
    let incremental = metrics.incremental_passes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((passes, incremental), (3, 2));
    assert!(metrics.render().contains("weft_passes_total{kind=\"incremental\"} 2\n"));
}
