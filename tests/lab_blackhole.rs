//! `--ip-blackhole-route` end to end: the blackhole for the host's own subnet is in place under the bridge's route
//! (pods on the host and across hosts still talk), packets for an unallocated address of the subnet are dropped on
//! the host instead of following its default route, and a blackhole deleted by hand comes back. Root only.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{eventually, TestLab};
use weft_lab::lab::LabSpec;

/// A next hop on the lab's underlay segment that no namespace answers for: the default route h1 is given, so
/// that a packet without the blackhole has somewhere to leave to. It never leaves the lab's namespaces.
const DEFAULT_GATEWAY: &str = "198.18.0.254";
const LAST_RESORT_METRIC: &str = "metric 4294967295";

fn blackholes(lab: &TestLab, h: usize) -> String {
    lab.host_sh(h, &["ip", "route", "show", "type", "blackhole"])
}

/// Packets forwarded on h1 towards `addr`, as counted by the probe table's counter.
fn forwarded_to(lab: &TestLab, addr: Ipv4Addr) -> u64 {
    let listing = lab.host_sh(1, &["nft", "list", "chain", "ip", "probe", "seen"]);
    let line = listing.lines().find(|l| l.contains(&addr.to_string()) && l.contains("counter")).unwrap_or_default();
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets");
    words.next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn pings(lab: &TestLab) -> Result<(), String> {
    for (from, to) in [(1, 2), (2, 1)] {
        if !lab.ping(from, lab.container_ip(to).unwrap()) {
            return Err(format!("h{from}'s container cannot ping h{to}'s"));
        }
    }
    Ok(())
}

#[test]
fn the_blackhole_sits_under_the_bridge_drops_the_rest_and_comes_back() {
    let lab = TestLab::from_spec(LabSpec {
        extra_weftd_args: ["--ip-blackhole-route", "--resync-interval", "1s"].map(String::from).to_vec(),
        ..TestLab::spec(2)
    });
    // FLANNEL_SUBNET holds the bridge's address with the subnet's length (10.244.5.1/24).
    let ipnetwork::IpNetwork::V4(bridge) = lab.subnet_env(1).unwrap().subnet.unwrap() else { panic!("not IPv4") };
    let subnet = ipnetwork::Ipv4Network::new(bridge.network(), bridge.prefix()).unwrap();
    let line = format!("blackhole {subnet} proto 87 {LAST_RESORT_METRIC}");
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let now = blackholes(&lab, 1);
        now.contains(&line).then_some(()).ok_or_else(|| format!("h1's blackholes: {now:?}"))
    });

    // Pods still talk: across hosts, and the host with its own pod (the bridge's connected route wins).
    eventually(Duration::from_secs(20), Duration::from_millis(200), || pings(&lab));
    let c1 = lab.container_ip(1).unwrap();
    assert!(lab.host_sh(1, &["ip", "route", "get", &c1.to_string()]).contains("dev cni0"));
    lab.host_sh(1, &["ping", "-c1", "-W2", &c1.to_string()]);

    // An address of the subnet that no pod holds, once the bridge is gone (no pod on the host): without the
    // blackhole h1 would forward h2's packets for it out of its default route.
    lab.detach_container(1).unwrap();
    let unallocated = subnet.nth(77).unwrap();
    if !lab.host_sh(1, &["ip", "route", "show", "default"]).contains("default") {
        lab.host_sh(1, &["ip", "route", "add", "default", "via", DEFAULT_GATEWAY]);
    }
    let probe = format!(
        "add table ip probe; add chain ip probe seen {{ type filter hook forward priority -300; }}; \
         add rule ip probe seen ip daddr {unallocated} counter"
    );
    lab.host_sh(1, &["nft", &probe]);
    for _ in 0..3 {
        assert!(!lab.ping(2, unallocated));
    }
    assert_eq!(forwarded_to(&lab, unallocated), 0, "dropped on h1, never forwarded");
    let out = lab.exec_in(&lab.host_ns(1), ["ip", "route", "get", &unallocated.to_string()]).unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"), "a blackhole lookup: {out:?}");

    // Deleted by hand while weftd runs: it comes back (netlink event or resync).
    lab.host_sh(1, &["ip", "route", "del", "blackhole", &subnet.to_string(), "proto", "87"]);
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        let now = blackholes(&lab, 1);
        now.contains(&line).then_some(()).ok_or_else(|| format!("h1's blackholes: {now:?}"))
    });

    // What the blackhole prevents: with weftd stopped and the route gone, the same packets leave by the default
    // route.
    lab.stop_weftd(1).unwrap();
    lab.host_sh(1, &["ip", "route", "del", "blackhole", &subnet.to_string(), "proto", "87"]);
    for _ in 0..3 {
        lab.ping(2, unallocated);
    }
    assert!(forwarded_to(&lab, unallocated) >= 1, "without the blackhole h1 forwards them");
    lab.start_weftd(1).unwrap();
    eventually(Duration::from_secs(15), Duration::from_millis(200), || {
        let now = blackholes(&lab, 1);
        now.contains(&line).then_some(()).ok_or_else(|| format!("h1's blackholes after a restart: {now:?}"))
    });
    lab.attach_container(1).unwrap();
    eventually(Duration::from_secs(20), Duration::from_millis(200), || pings(&lab));
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    assert!(!log.contains("operation failed"), "{log}");
}
