//! Dual stack: with EnableIPv6 every host leases an IPv4 and an IPv6 subnet under one key, publishes both VTEPs,
//! and programs flannel's triple on `flannel.1` and `flannel-v6.1`. Root only.

mod common;

use std::time::Duration;

use common::{eventually, TestLab};
use weft::lease::{LeaseAttrs, SubnetKey};

const CONFIG: &str =
    r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

/// The lab's underlay is IPv4; give each host an IPv6 underlay address on the same bridge (ULA, inside the lab).
fn underlay_v6(h: usize) -> String {
    format!("fd00:198:18::{h}")
}

#[test]
fn dual_stack_hosts_reach_each_other_over_both_vteps() {
    let lab = TestLab::without_weftd(2);
    for h in 1..=2 {
        lab.host_sh(h, &["ip", "-6", "addr", "add", &format!("{}/64", underlay_v6(h)), "dev", "eth0", "nodad"]);
    }
    lab.etcdctl_ok(["put", "/coreos.com/network/config", CONFIG]).unwrap();
    for h in 1..=2 {
        lab.start_weftd(h).unwrap();
    }
    let keys: Vec<SubnetKey> = (1..=2)
        .map(|h| {
            let env = lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
            assert!(env.ipv6_network.is_some() && env.ipv6_subnet.is_some(), "h{h}: {env:?}");
            weft::subnet_file::lease_key(&env).unwrap()
        })
        .collect();

    for (i, key) in keys.iter().enumerate() {
        let h = i + 1;
        assert!(key.to_string().contains("&fd00:10:244:"), "dual-stack key: {key}");
        let raw = lab.etcdctl_ok(["get", "--print-value-only", &format!("/coreos.com/network/subnets/{key}")]).unwrap();
        let attrs = LeaseAttrs::from_json(raw.trim()).unwrap();
        assert_eq!(attrs.public_ipv6.unwrap().to_string(), underlay_v6(h));
        let v6_mac = lab.host_sh(h, &["cat", "/sys/class/net/flannel-v6.1/address"]);
        assert_eq!(
            attrs.backend_data(weft_backends::Family::V6).unwrap()["VtepMAC"],
            v6_mac.trim(),
            "h{h} publishes its IPv6 VTEP"
        );
        let link = lab.host_sh(h, &["ip", "-d", "link", "show", "flannel-v6.1"]);
        assert!(
            link.contains(&format!("vxlan id 1 local {}", underlay_v6(h))) && link.contains("dstport 8472"),
            "{link}"
        );
    }

    // h1 reaches h2's IPv6 VTEP address through the overlay, and the IPv4 side works as before. h1 may have
    // written its subnet file before it heard of h2, so the route is waited for.
    let v6_base = keys[1].ipv6.unwrap().ip().to_string();
    let v4_base = keys[1].ipv4.unwrap().ip().to_string();
    let want = format!("{} via {v6_base} dev flannel-v6.1 proto 87", keys[1].ipv6.unwrap());
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let route = lab.host_sh(1, &["ip", "-6", "route", "show", &keys[1].ipv6.unwrap().to_string()]);
        if route.starts_with(&want) && route.contains(" onlink") {
            Ok(())
        } else {
            Err(format!("h1 has no route {want} onlink: {route:?}"))
        }
    });
    let fdb = lab.host_sh(1, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]);
    assert!(fdb.contains(&format!("dst {} self permanent", underlay_v6(2))), "{fdb}");

    // An IPv6 outer header is 20 bytes longer: the IPv6 VTEP gets underlay - 70 (the kernel refuses more), and
    // containers get the smaller of the two VTEP MTUs so neither family needs Path MTU discovery to get through.
    for h in 1..=2 {
        assert!(lab.host_sh(h, &["ip", "link", "show", "flannel.1"]).contains(" mtu 1450 "));
        assert!(lab.host_sh(h, &["ip", "link", "show", "flannel-v6.1"]).contains(" mtu 1430 "));
        let env = lab.wait_for_subnet_env(h, Duration::from_secs(1)).unwrap();
        assert_eq!(env.mtu, 1430, "h{h}: {env:?}");
    }
    for target in [v6_base, v4_base] {
        eventually(Duration::from_secs(10), Duration::from_millis(200), || {
            let out = lab.exec_in(&lab.host_ns(1), ["ping", "-c1", "-W1", &target]).unwrap();
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("h1 cannot ping {target}"))
            }
        });
    }
    // Every kernel operation succeeded: nothing was left to retry.
    for h in 1..=2 {
        let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
        assert!(!log.contains("kernel operation failed"), "h{h}:\n{log}");
    }
}
