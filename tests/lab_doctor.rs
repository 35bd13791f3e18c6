//! `weftctl status` and `weftctl doctor` on lab hosts, in one two-host lab (root, real etcd):
//!
//! - on healthy hosts doctor passes and `status --output json` agrees with the lab's truth (subnet file, etcd,
//!   the kernel's flannel.1, the peer);
//! - a lease in etcd that hosts reject shows in status with its reason and fails doctor's lease check;
//! - host 2 is broken every way doctor checks while its weftd is stopped (SIGSTOP, so nothing is repaired):
//!   ip_forward off, a deleted route, a smaller underlay MTU, flushed FORWARD rules under a DROP policy, no
//!   conflist. Doctor exits non-zero and names each problem with its fix;
//! - once weftd runs again it repairs what it owns (route, rules) and doctor says so, while what only the operator
//!   can fix is still reported.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, weftctl, TestLab};
use serde_json::Value;
use weft_lab::lab::LabSpec;

/// weftd's health endpoint inside each host's namespace.
const HEALTHZ: &str = "127.0.0.1:8081";

fn host_dir(lab: &TestLab, h: usize) -> PathBuf {
    lab.subnet_file(h).parent().unwrap().to_path_buf()
}

fn conf_dir(lab: &TestLab, h: usize) -> PathBuf {
    host_dir(lab, h).join("net.d")
}

fn bin_dir(lab: &TestLab, h: usize) -> PathBuf {
    host_dir(lab, h).join("cni-bin")
}

/// What a runtime on host `h` would find: weft's plugin and a conflist that reads this host's subnet file.
fn install_cni(lab: &TestLab, h: usize) {
    let plugin = PathBuf::from(common::WEFTD).with_file_name("weft");
    std::fs::create_dir_all(bin_dir(lab, h)).unwrap();
    std::fs::create_dir_all(conf_dir(lab, h)).unwrap();
    std::fs::copy(&plugin, bin_dir(lab, h).join("weft")).unwrap();
    let mut conflist: Value = serde_json::from_str(weft::cni_install::CONFLIST).unwrap();
    conflist["plugins"][0]["subnetFile"] = lab.subnet_file(h).display().to_string().into();
    std::fs::write(conf_dir(lab, h).join(weft::cni_install::CONFLIST_NAME), conflist.to_string()).unwrap();
}

/// `weftctl <command> --output json` on host `h`: whether it exited 0, and its JSON.
fn weftctl_json(lab: &TestLab, h: usize, command: &str) -> (bool, Value) {
    let weftctl = weftctl();
    let etcd = lab.etcd_endpoint();
    let mut args = vec![weftctl.display().to_string(), command.into(), "--output".into(), "json".into()];
    args.extend(["--etcd-endpoints".into(), etcd, "--weftd".into(), HEALTHZ.into()]);
    if command == "doctor" {
        args.extend(["--subnet-file".into(), lab.subnet_file(h).display().to_string()]);
        args.extend(["--cni-conf-dir".into(), conf_dir(lab, h).display().to_string()]);
        args.extend(["--cni-bin-dir".into(), bin_dir(lab, h).display().to_string()]);
    }
    let out = lab.exec_in(&lab.host_ns(h), &args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{command} on h{h} printed no JSON ({e}): {stdout}{}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), json)
}

/// The checks of a doctor report with the given outcome, by id.
fn checks_with<'a>(report: &'a Value, outcome: &str) -> Vec<&'a str> {
    let checks = report["checks"].as_array().unwrap();
    checks.iter().filter(|c| c["outcome"] == outcome).map(|c| c["id"].as_str().unwrap()).collect()
}

/// Asserts that check `id` failed with a problem containing `problem` and a fix containing `fix`.
#[track_caller]
fn assert_names(report: &Value, id: &str, problem: &str, fix: &str) {
    let check = report["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap();
    assert_eq!(check["outcome"], "fail", "{id}: {check:#}");
    let found = check["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["problem"].as_str().unwrap().contains(problem) && p["fix"].as_str().unwrap().contains(fix));
    assert!(found, "{id}: no problem with {problem:?} and fix {fix:?}: {check:#}");
}

/// Waits until doctor passes on every host (each has programmed the others by then).
fn doctor_passes_everywhere(lab: &TestLab) {
    for h in 1..=lab.hosts() {
        eventually(Duration::from_secs(20), Duration::from_millis(300), || {
            let (passed, report) = weftctl_json(lab, h, "doctor");
            let failed = checks_with(&report, "fail");
            (passed && failed.is_empty()).then_some(()).ok_or(format!("h{h}: {report:#}"))
        });
    }
}

/// Continues a stopped weftd when dropped, so a failing test still tears its lab down quickly.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        // SAFETY: kill on a pid this lab started and recorded.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn doctor_names_each_broken_thing_and_status_matches_the_lab() {
    let lab = TestLab::from_spec(LabSpec {
        extra_weftd_args: ["--healthz-ip", "127.0.0.1", "--healthz-port", "8081", "--resync-interval", "1s"]
            .map(String::from)
            .to_vec(),
        ..TestLab::spec(2)
    });
    for h in 1..=2 {
        install_cni(&lab, h);
    }

    // Healthy: doctor passes on both hosts.
    doctor_passes_everywhere(&lab);

    // status agrees with the lab's truth.
    let (ok, status) = weftctl_json(&lab, 1, "status");
    assert!(ok, "{status:#}");
    let env = lab.subnet_env(1).unwrap();
    let key = weft::subnet_file::lease_key(&env).unwrap().to_string();
    let peer_key = weft::subnet_file::lease_key(&lab.subnet_env(2).unwrap()).unwrap().to_string();
    let d = &status["weftd"];
    assert_eq!(d["ready"], true);
    assert_eq!(d["subnet_file"], lab.subnet_file(1).display().to_string());
    assert_eq!(d["lease"]["key"], key);
    assert_eq!(d["lease"]["public_ip"], lab.host_ip(1).to_string());
    assert_eq!(d["backend"]["kind"], "vxlan");
    assert_eq!(d["backend"]["mtu"], env.mtu);
    assert_eq!(d["backend"]["underlay"]["name"], "eth0");
    assert_eq!(d["backend"]["underlay"]["mtu"], 1500);
    let mac = lab.host_sh(1, &["cat", "/sys/class/net/flannel.1/address"]);
    assert_eq!(d["backend"]["devices"][0]["name"], "flannel.1");
    assert_eq!(d["backend"]["devices"][0]["mac"], mac.trim());
    assert_eq!(d["lease"]["backend_data"]["VtepMAC"], mac.trim());
    assert_eq!(d["peers"]["programmed"].as_array().unwrap().len(), 1, "{d:#}");
    assert_eq!(d["peers"]["programmed"][0]["key"], peer_key);
    assert_eq!(d["peers"]["programmed"][0]["public_ip"], lab.host_ip(2).to_string());
    assert_eq!(d["peers"]["rejected"], Value::Array(Vec::new()));
    assert_eq!(d["last_reconcile"]["failures"], Value::Array(Vec::new()));
    assert!(d["last_reconcile"]["passes"].as_u64().unwrap() >= 1);
    assert_eq!(d["store"]["connected"], true);
    assert_eq!(status["store"]["reachable"], true);
    assert_eq!(status["store"]["leases"], 2);
    assert_eq!(status["store"]["lease_ttl_granted_seconds"], 86400);
    assert!(status["store"]["lease_ttl_left_seconds"].as_u64().unwrap() > 86000, "{status:#}");
    let etcd_lease = lab.etcdctl_ok(["get", &format!("/coreos.com/network/subnets/{key}"), "-w", "json"]).unwrap();
    let etcd_lease: Value = serde_json::from_str(&etcd_lease).unwrap();
    assert_eq!(d["lease"]["etcd_lease"], etcd_lease["kvs"][0]["lease"]);

    // A lease every host rejects: status says why, doctor fails the lease check with the delete command.
    let bad = "/coreos.com/network/subnets/10.244.250.0-24";
    lab.etcdctl_ok(["put", bad, r#"{"PublicIP":"198.18.0.250","BackendType":"udp"}"#]).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let (_, status) = weftctl_json(&lab, 1, "status");
        let rejected = &status["weftd"]["peers"]["rejected"][0];
        (rejected["lease"] == "10.244.250.0-24" && rejected["reason"] == "wrong_backend_type")
            .then_some(())
            .ok_or(format!("{status:#}"))
    });
    let (passed, report) = weftctl_json(&lab, 1, "doctor");
    assert!(!passed, "{report:#}");
    assert_eq!(checks_with(&report, "fail"), ["leases"], "{report:#}");
    assert_names(
        &report,
        "leases",
        "lease 10.244.250.0-24 is not programmed here (wrong_backend_type",
        "weftctl lease delete 10.244.250.0/24",
    );
    lab.etcdctl_ok(["del", bad]).unwrap();

    // Host 2 broken every way, with weftd stopped so that nothing is put back.
    let stopped = Stopped::stop(lab.weftd_pid(2).unwrap());
    let h1_subnet =
        env.subnet.map(|s| ipnetwork::IpNetwork::new(s.network(), s.prefix()).unwrap()).unwrap().to_string();
    lab.host_sh(2, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    lab.host_sh(2, &["ip", "route", "del", &h1_subnet]);
    lab.host_sh(2, &["ip", "link", "set", "eth0", "mtu", "1400"]);
    lab.host_sh(2, &["iptables", "-P", "FORWARD", "DROP"]);
    lab.host_sh(2, &["iptables", "-F", "FORWARD"]);
    std::fs::remove_file(conf_dir(&lab, 2).join(weft::cni_install::CONFLIST_NAME)).unwrap();

    let (passed, report) = weftctl_json(&lab, 2, "doctor");
    assert!(!passed, "doctor must exit non-zero: {report:#}");
    assert_eq!(report["outcome"], "fail");
    assert_names(&report, "weftd", "weftd does not answer at 127.0.0.1:8081", "start weftd");
    assert_names(&report, "ip-forward", "net.ipv4.ip_forward is 0", "sysctl -w net.ipv4.ip_forward=1");
    assert_names(&report, "routes", &format!("the route to {h1_subnet} is missing"), "start weftd");
    assert_names(&report, "mtu", "underlay eth0 (MTU 1400) carries only 1350", "restart weftd");
    assert_names(&report, "mtu", "FLANNEL_MTU is 1450", "restart weftd");
    assert_names(
        &report,
        "firewall",
        "FORWARD policy is DROP and weft's accepts for 10.244.0.0/16 are not in place",
        "iptables -I FORWARD -s 10.244.0.0/16 -j ACCEPT",
    );
    assert_names(&report, "cni", "there is no CNI network config", "weftctl cni install");
    for healthy in ["etcd", "subnet-file", "tunnel-device", "neighbours", "fdb", "leases"] {
        assert!(checks_with(&report, "ok").contains(&healthy), "{healthy}: {report:#}");
    }

    // weftd running again repairs what it owns; doctor still names what only the operator can fix.
    drop(stopped);
    eventually(Duration::from_secs(15), Duration::from_millis(300), || {
        let (_, report) = weftctl_json(&lab, 2, "doctor");
        let failed = checks_with(&report, "fail");
        (failed == ["ip-forward", "mtu", "cni"]).then_some(()).ok_or(format!("{failed:?}: {report:#}"))
    });
}

/// The same checks through other code paths: host-gw (no device, routes via the peer), dual stack (IPv6 routes and
/// forwarding), nftables with masquerade. Healthy hosts pass; broken IPv6 forwarding, a deleted IPv6 route and a
/// flushed nftables chain are named.
#[test]
fn doctor_checks_host_gw_dual_stack_with_nftables() {
    const CONFIG: &str = r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableNFTables":true,"Backend":{"Type":"host-gw"}}"#;
    let lab = TestLab::from_spec(LabSpec {
        start_weftd: false,
        extra_weftd_args: ["--healthz-ip", "127.0.0.1", "--healthz-port", "8081", "--ip-masq"]
            .map(String::from)
            .to_vec(),
        ..TestLab::spec(2)
    });
    for h in 1..=2 {
        lab.host_sh(h, &["ip", "-6", "addr", "add", &format!("fd00:198:18::{h}/64"), "dev", "eth0", "nodad"]);
        lab.host_sh(h, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }
    lab.etcdctl_ok(["put", "/coreos.com/network/config", CONFIG]).unwrap();
    for h in 1..=2 {
        lab.start_weftd(h).unwrap();
    }
    for h in 1..=2 {
        lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
        lab.attach_container(h).unwrap();
        install_cni(&lab, h);
    }
    doctor_passes_everywhere(&lab);
    let (_, report) = weftctl_json(&lab, 1, "doctor");
    let tunnel = report["checks"].as_array().unwrap().iter().find(|c| c["id"] == "tunnel-device").unwrap();
    assert!(tunnel["detail"].as_str().unwrap().contains("host-gw backend has no devices"), "{tunnel:#}");

    let stopped = Stopped::stop(lab.weftd_pid(2).unwrap());
    let h1_v6 = weft::subnet_file::lease_key(&lab.subnet_env(1).unwrap()).unwrap().ipv6.unwrap().to_string();
    lab.host_sh(2, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
    lab.host_sh(2, &["ip", "-6", "route", "del", &h1_v6]);
    lab.host_sh(2, &["nft", "flush", "chain", "ip", "flannel", "POSTRTG"]);
    let (passed, report) = weftctl_json(&lab, 2, "doctor");
    assert!(!passed, "{report:#}");
    assert_names(
        &report,
        "ip-forward",
        "net.ipv6.conf.all.forwarding is 0",
        "sysctl -w net.ipv6.conf.all.forwarding=1",
    );
    assert_names(&report, "routes", &format!("the route to {h1_v6} is missing"), "start weftd");
    assert_names(
        &report,
        "firewall",
        "weft's rules in ip flannel (nftables, chains FWD, POSTRTG) differ",
        "start weftd",
    );
    drop(stopped);
    eventually(Duration::from_secs(15), Duration::from_millis(300), || {
        let (_, report) = weftctl_json(&lab, 2, "doctor");
        let failed = checks_with(&report, "fail");
        (failed == ["ip-forward"]).then_some(()).ok_or(format!("{failed:?}: {report:#}"))
    });
}
