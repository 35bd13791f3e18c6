//! Two weftd per host, as flannel's docs describe for several networks: different etcd prefixes, networks, VNIs
//! and subnet files. Both tag their routes with weft's protocol; each must keep its own and leave the other's
//! alone, through several resync passes of both. Root only; the lab is this test's own.

mod common;

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, TestLab, WEFTD};

const SECOND_PREFIX: &str = "/weft-second/network";
const SECOND_CONFIG: &str = r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#;

/// The second weftd of a host, stopped by its pid when the test ends (also on failure).
struct SecondWeftd(Child);

impl Drop for SecondWeftd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn routes(lab: &TestLab, h: usize) -> String {
    let out = lab.exec_in(&lab.host_ns(h), ["ip", "route", "show", "proto", "87"]).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ok when host `h` has a route into each network through its own VTEP.
fn both_networks_routed(lab: &TestLab, h: usize) -> Result<(), String> {
    let table = routes(lab, h);
    let has =
        |prefix: &str, dev: &str| table.lines().any(|l| l.starts_with(prefix) && l.contains(&format!("dev {dev} ")));
    if has("10.244.", "flannel.1") && has("10.245.", "flannel.2") {
        Ok(())
    } else {
        Err(format!("h{h} lacks a route of one network:\n{table}"))
    }
}

#[test]
fn two_weftd_on_one_host_keep_their_own_routes() {
    let lab = TestLab::new(2);
    lab.etcdctl_ok(["put", &format!("{SECOND_PREFIX}/config"), SECOND_CONFIG]).unwrap();
    let mut second = Vec::new();
    for h in 1..=2 {
        let subnet_file = lab.dir().join(format!("second-h{h}.env"));
        let log = File::create(lab.dir().join(format!("second-weftd-h{h}.log"))).unwrap();
        let args = [
            WEFTD.to_string(),
            format!("-etcd-endpoints={}", lab.etcd_endpoint()),
            format!("-etcd-prefix={SECOND_PREFIX}"),
            "-iface=eth0".to_string(),
            format!("-subnet-file={}", subnet_file.display()),
            "--resync-interval=1s".to_string(),
        ];
        let mut command = lab.command_in(&lab.host_ns(h), &args).unwrap();
        second.push(SecondWeftd(command.stdout(Stdio::null()).stderr(log).spawn().unwrap()));
        eventually(Duration::from_secs(20), Duration::from_millis(100), || {
            subnet_file.is_file().then_some(()).ok_or_else(|| format!("no {}", subnet_file.display()))
        });
    }
    for h in 1..=2 {
        eventually(Duration::from_secs(15), Duration::from_millis(200), || both_networks_routed(&lab, h));
    }
    // The lab's weftd resyncs every 10 s, the second ones every second: each pass of either would delete the
    // other's routes if it claimed every protocol-87 route.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        for h in 1..=2 {
            if let Err(e) = both_networks_routed(&lab, h) {
                panic!("after {:?}: {e}", started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(second);
}
