//! The host-gw backend end to end: three hosts on one segment route to each other's subnets through plain routes
//! via the peers' underlay addresses, over IPv4 and IPv6; a lease written by flanneld is used as it is; a route
//! deleted by hand returns; a peer on another segment is reported once and counted. Root only.

mod common;

use std::time::Duration;

use common::{eventually, through_nexthop, TestLab, SUBNETS};
use weft::lease::{LeaseAttrs, SubnetKey};
use weft_lab::lab::LabSpec;

const CONFIG: &str =
    r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}"#;
const METRICS_PORT: &str = "9111";

fn underlay_v6(h: usize) -> String {
    format!("fd00:198:18::{h}")
}

/// The address `::1` of a subnet: given to the host's loopback so that IPv6 traffic between subnets can be sent
/// and answered without containers.
fn first_v6(key: &SubnetKey) -> String {
    let mut octets = key.ipv6.unwrap().ip().octets();
    octets[15] = 1;
    std::net::Ipv6Addr::from(octets).to_string()
}

#[test]
fn three_hosts_route_over_both_families_with_flannels_leases() {
    let lab = TestLab::from_spec(LabSpec {
        backend: "host-gw".into(),
        start_weftd: false,
        extra_weftd_args: ["--resync-interval", "1s", "--healthz-port", METRICS_PORT].map(String::from).to_vec(),
        ..TestLab::spec(3)
    });
    for h in 1..=3 {
        lab.host_sh(h, &["ip", "-6", "addr", "add", &format!("{}/64", underlay_v6(h)), "dev", "eth0", "nodad"]);
    }
    lab.etcdctl_ok(["put", "/coreos.com/network/config", CONFIG]).unwrap();
    for h in 1..=3 {
        lab.start_weftd(h).unwrap();
    }
    let keys: Vec<SubnetKey> = (1..=3)
        .map(|h| {
            let env = lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
            assert_eq!(env.mtu, 1500, "host-gw adds nothing to a packet: h{h} {env:?}");
            weft::subnet_file::lease_key(&env).unwrap()
        })
        .collect();
    for h in 1..=3 {
        lab.attach_container(h).unwrap();
    }

    // Leases are flanneld's host-gw leases, byte for byte.
    for (i, key) in keys.iter().enumerate() {
        let raw = lab.etcdctl_ok(["get", "--print-value-only", &format!("{SUBNETS}{key}")]).unwrap();
        let want = format!(
            r#"{{"PublicIP":"198.18.0.{}","PublicIPv6":"{}","BackendType":"host-gw"}}"#,
            i + 1,
            underlay_v6(i + 1)
        );
        assert_eq!(raw.trim(), want);
        assert_eq!(LeaseAttrs::from_json(raw.trim()).unwrap().backend_data, None);
    }

    // Routes on h1: one per peer and family, via the peer's own address on eth0; no device of weft's.
    for (peer, key) in keys.iter().enumerate().skip(1) {
        let h = peer + 1;
        let want_v4 = format!("{} via 198.18.0.{h} dev eth0 proto 87", key.ipv4.unwrap());
        let want_v6 = format!("{} via {} dev eth0 proto 87", key.ipv6.unwrap(), underlay_v6(h));
        eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            let v4 = lab.host_sh(1, &["ip", "route", "show", &key.ipv4.unwrap().to_string()]);
            let v6 = lab.host_sh(1, &["ip", "-6", "route", "show", &key.ipv6.unwrap().to_string()]);
            if through_nexthop(&v4) == (want_v4.clone(), true) && v6.starts_with(&want_v6) {
                Ok(())
            } else {
                Err(format!("h1 routes: {v4:?} {v6:?}, want {want_v4:?} and {want_v6:?}"))
            }
        });
    }
    assert!(!lab.host_sh(1, &["ip", "link"]).contains("flannel"), "host-gw creates no device");
    eventually(Duration::from_secs(10), Duration::from_millis(200), || lab.all_containers_ping());

    // IPv6 between subnets: h1 and h2 each hold their subnet's ::1, and h1 pings h2's from its own.
    for (h, key) in keys.iter().enumerate().take(2) {
        lab.host_sh(h + 1, &["ip", "-6", "addr", "add", &format!("{}/128", first_v6(key)), "dev", "lo"]);
    }
    let (from, to) = (first_v6(&keys[0]), first_v6(&keys[1]));
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let out = lab.exec_in(&lab.host_ns(1), ["ping", "-c1", "-W1", "-I", &from, &to]).unwrap();
        out.status.success().then_some(()).ok_or_else(|| format!("{from} cannot ping {to}"))
    });

    // A route deleted by hand returns (netlink notification, or the 1 s resync).
    let subnet2 = keys[1].ipv4.unwrap().to_string();
    let before = lab.host_sh(1, &["ip", "route", "show", "proto", "87"]);
    lab.host_sh(1, &["ip", "route", "del", &subnet2]);
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let now = lab.host_sh(1, &["ip", "route", "show", "proto", "87"]);
        (now == before).then_some(()).ok_or_else(|| format!("routes now:\n{now}"))
    });
    // A nexthop object deleted by hand takes its route along without a route notification: the resync puts both
    // back (under a fresh id).
    let line = before.lines().find(|l| l.starts_with(&subnet2)).unwrap();
    assert!(through_nexthop(line).1, "{line}");
    let id = line.split_whitespace().skip_while(|w| *w != "nhid").nth(1).unwrap();
    lab.host_sh(1, &["ip", "nexthop", "del", "id", id]);
    let plain = |text: &str| text.lines().map(through_nexthop).collect::<Vec<_>>();
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let now = lab.host_sh(1, &["ip", "route", "show", "proto", "87"]);
        (plain(&now) == plain(&before)).then_some(()).ok_or_else(|| format!("routes now:\n{now}"))
    });

    // flanneld's host-gw lease of a host on the segment is routed; one on another segment is reported once (not
    // on every 1 s pass) and counted, and gets no route.
    lab.put_leased("10.244.200.0-24", r#"{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"host-gw"}"#);
    lab.put_leased("10.244.201.0-24", r#"{"PublicIP":"198.19.7.7","PublicIPv6":null,"BackendType":"host-gw"}"#);
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let route = lab.host_sh(2, &["ip", "route", "show", "10.244.200.0/24"]);
        let skipped = lab.metric(2, METRICS_PORT, "weft_peers_skipped{reason=\"not_on_segment\"}");
        if through_nexthop(&route) == ("10.244.200.0/24 via 198.18.0.77 dev eth0 proto 87".into(), true)
            && skipped.as_deref() == Some("1")
        {
            Ok(())
        } else {
            Err(format!("h2: route {route:?}, weft_peers_skipped {skipped:?}"))
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.host_sh(2, &["ip", "route", "show", "10.244.201.0/24"]), "");
    let log = std::fs::read_to_string(lab.weftd_log(2)).unwrap();
    let reports =
        log.matches("ignoring peer lease 10.244.201.0/24: public IP 198.19.7.7 is not on eth0's segment").count();
    assert_eq!(reports, 1, "reported once, not on every pass:\n{log}");
    for h in 1..=3 {
        let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
        assert!(!log.contains("kernel operation failed"), "h{h}:\n{log}");
    }
}
