//! `weftctl cleanup` on a lab host: nothing of weft's is left (device, routes and the blackhole route, firewall
//! rules, subnet file), a second run is fine, the lease stays in etcd, and weftd started afterwards rebuilds
//! everything. Root only.

mod common;

use std::time::Duration;

use common::{eventually, weftctl, TestLab};
use weft_lab::lab::LabSpec;

/// Everything of weft's on host `h`, as one text; empty when nothing is left.
fn weft_objects(lab: &TestLab, h: usize) -> String {
    let mut found = String::new();
    let links = lab.host_sh(h, &["ip", "-o", "link", "show"]);
    found += &links.lines().filter(|l| l.contains("flannel")).collect::<Vec<_>>().join("\n");
    found += &lab.host_sh(h, &["ip", "route", "show", "proto", "87"]);
    found += &lab.host_sh(h, &["ip", "-6", "route", "show", "proto", "87"]);
    found += &lab.host_sh(h, &["ip", "nexthop", "show", "protocol", "87"]);
    for save in ["iptables-nft-save", "iptables-legacy-save"] {
        found += &lab.host_sh(h, &[save]).lines().filter(|l| l.contains("FLANNEL")).collect::<Vec<_>>().join("\n");
    }
    found += &lab
        .host_sh(h, &["nft", "list", "tables"])
        .lines()
        .filter(|l| l.contains("flannel"))
        .collect::<Vec<_>>()
        .join("\n");
    if lab.subnet_file(h).exists() {
        found += "subnet file";
    }
    found
}

#[test]
fn cleanup_removes_everything_and_weftd_rebuilds_it() {
    let lab = TestLab::from_spec(LabSpec {
        extra_weftd_args: ["--ip-masq", "--ip-blackhole-route", "--resync-interval", "1s"].map(String::from).to_vec(),
        ..TestLab::spec(2)
    });
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
    let key = weft::subnet_file::lease_key(&lab.subnet_env(1).unwrap()).unwrap();
    assert!(!weft_objects(&lab, 1).is_empty());
    assert!(
        lab.host_sh(1, &["ip", "route", "show", "type", "blackhole"]).contains("proto 87"),
        "the blackhole is there"
    );

    lab.stop_weftd(1).unwrap();
    let weftctl = weftctl();
    let subnet_file = lab.subnet_file(1).display().to_string();
    let cleanup = [weftctl.to_str().unwrap(), "cleanup", "--subnet-file", &subnet_file];
    let said = lab.host_sh(1, &cleanup);
    assert!(said.contains("delete link flannel.1") || said.contains("flannel.1"), "{said}");
    assert_eq!(weft_objects(&lab, 1), "", "nothing of weft's is left");
    assert_eq!(lab.host_sh(1, &cleanup).trim(), "nothing of weft's left on this host", "a second run is fine");
    let lease = lab.etcdctl_ok(["get", "--print-value-only", &format!("/coreos.com/network/subnets/{key}")]).unwrap();
    assert!(!lease.trim().is_empty(), "the lease stays in etcd");

    lab.start_weftd(1).unwrap();
    let env = lab.wait_for_subnet_env(1, Duration::from_secs(15)).unwrap();
    assert_eq!(weft::subnet_file::lease_key(&env).unwrap(), key, "the same subnet comes back");
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
    assert!(lab.host_sh(1, &["iptables-save"]).contains("FLANNEL-POSTRTG"), "rules rebuilt");
}
