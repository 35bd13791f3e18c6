//! etcd endpoint failover: the lab's etcd grows into a 3-member cluster, weftd is given all three endpoints, and
//! the member it talks to is killed. Leases keep being watched and programmed through the others. Root only.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, TestLab};

/// Extra etcd members started by this test, stopped by pid when the test ends (even on panic).
struct Members {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn underlay(lab: &TestLab, args: &[&str]) -> String {
    let out = lab.exec_in(&lab.underlay_ns(), args).unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etcdctl_at(lab: &TestLab, endpoint: &str, args: &[&str]) -> String {
    try_etcdctl_at(lab, endpoint, args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_etcdctl_at(lab: &TestLab, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["env", "ETCDCTL_API=3", "etcdctl", "--dial-timeout=1s", "--command-timeout=3s"];
    let endpoints = format!("--endpoints={endpoint}");
    full.push(&endpoints);
    full.extend_from_slice(args);
    let out = lab.exec_in(&lab.underlay_ns(), &full).unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{full:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Adds member `name` (client on `ip`:2379 and 127.0.0.1:`local_port`, peers on loopback `peer_port`) to the
/// running cluster `cluster` and starts it.
fn add_member(
    lab: &TestLab,
    members: &mut Members,
    cluster: &mut Vec<String>,
    name: &str,
    ip: &str,
    local_port: u16,
    peer_port: u16,
) {
    let peer = format!("http://127.0.0.1:{peer_port}");
    // etcd refuses a reconfiguration until the previous new member has been connected for a few seconds.
    eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let args = ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints=http://127.0.0.1:2379", "member", "add", name];
        let out = lab
            .exec_in(&lab.underlay_ns(), args.iter().copied().chain([format!("--peer-urls={peer}").as_str()]))
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    cluster.push(format!("{name}={peer}"));
    let data = members.dir.join(name);
    let log = std::fs::File::create(members.dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.underlay_ns(), "etcd", "--name", name])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", &format!("http://{ip}:2379,http://127.0.0.1:{local_port}")])
        .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "existing"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    members.children.push(child);
    let local = format!("http://127.0.0.1:{local_port}");
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let out = lab
            .exec_in(
                &lab.underlay_ns(),
                ["env", "ETCDCTL_API=3", "etcdctl", &format!("--endpoints={local}"), "endpoint", "health"],
            )
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("member {name} not healthy yet"))
        }
    });
}

#[test]
fn weftd_fails_over_to_the_remaining_etcd_members() {
    let lab = TestLab::from_spec(weft_lab::lab::LabSpec {
        start_weftd: false,
        extra_weftd_args: vec!["--etcd-endpoints".into(), "http://198.18.0.253:2379,http://198.18.0.252:2379".into()],
        ..TestLab::spec(2)
    });
    let dir = std::env::temp_dir().join(format!("weft-etcd-members-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut members = Members { children: Vec::new(), dir };
    for ip in ["198.18.0.253/24", "198.18.0.252/24"] {
        underlay(&lab, &["ip", "addr", "add", ip, "dev", "br0"]);
    }
    let mut cluster = vec!["lab=http://127.0.0.1:2380".to_string()];
    add_member(&lab, &mut members, &mut cluster, "m2", "198.18.0.253", 2389, 2381);
    add_member(&lab, &mut members, &mut cluster, "m3", "198.18.0.252", 2399, 2382);
    let list = etcdctl_at(&lab, "http://127.0.0.1:2389", &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");

    for h in 1..=2 {
        lab.start_weftd(h).unwrap();
        lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
    }

    // The first endpoint (the lab's own member) dies; the cluster keeps quorum with the other two.
    lab.stop_etcd().unwrap();
    let value = r#"{"PublicIP":"198.18.0.88","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:88"}}"#;
    // The stopped member may have led the cluster: the survivors need an election before a write goes through.
    eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        try_etcdctl_at(&lab, "http://127.0.0.1:2389", &["put", "/coreos.com/network/subnets/10.244.240.0-24", value])
            .map(drop)
    });
    for h in 1..=2 {
        eventually(Duration::from_secs(30), Duration::from_millis(200), || {
            let out = lab.exec_in(&lab.host_ns(h), ["ip", "route", "show", "10.244.240.0/24"]).unwrap();
            let route = String::from_utf8_lossy(&out.stdout).into_owned();
            if route.contains("via 10.244.240.0 dev flannel.1") {
                Ok(())
            } else {
                Err(format!("h{h} has not programmed the lease put through the surviving members"))
            }
        });
        assert!(lab.weftd_running(h));
    }
    // Our own leases are still there, and renewable through the survivors.
    let leases =
        etcdctl_at(&lab, "http://127.0.0.1:2399", &["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"]);
    assert_eq!(leases.lines().filter(|l| !l.is_empty()).count(), 3, "{leases}");
}
