// THROWAWAY: exercises weft::lab with a fake weftd; removed after verification.
mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{eventually, require_root, TestLab};
use weft::lab::{Lab, LabError, LabSpec};

const FAKE: &str = "/tmp/weft-lab-scratch/fake-weftd";

fn fake_spec(hosts: usize) -> LabSpec {
    LabSpec { weftd: FAKE.into(), ..TestLab::spec(hosts) }
}

fn ns_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

fn add_host_gw_routes(lab: &Lab) {
    for n in 1..=lab.hosts() {
        for m in 1..=lab.hosts() {
            if n != m {
                let dst = format!("10.244.{m}.0/24");
                let via = lab.host_ip(m).to_string();
                let out = lab.exec_in(&lab.host_ns(n), ["ip", "route", "replace", &dst, "via", &via]).unwrap();
                assert!(out.status.success(), "{out:?}");
            }
        }
    }
}

#[test]
fn without_weftd_builds_underlay_and_etcd() {
    let lab = TestLab::without_weftd(3);
    for ns in [lab.underlay_ns(), lab.host_ns(1), lab.host_ns(3)] {
        assert!(ns_exists(&ns), "{ns}");
    }
    assert!(!ns_exists(&lab.container_ns(1)));
    assert!(lab.etcd_running());
    let cfg = lab.etcdctl_ok(["get", "/coreos.com/network/config"]).unwrap();
    assert!(cfg.contains(r#""Network":"10.244.0.0/16""#), "{cfg}");
    // etcd reachable from a host over the underlay.
    let out =
        lab.exec_in(&lab.host_ns(2), ["etcdctl", "--endpoints", &lab.etcd_endpoint(), "endpoint", "health"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    // host to host over br0
    let out = lab.exec_in(&lab.host_ns(1), ["ping", "-c1", "-W1", "198.18.0.3"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let fwd = lab.exec_in(&lab.host_ns(1), ["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    // etcd restart keeps data
    lab.etcdctl_ok(["put", "/k", "v"]).unwrap();
    let pid = lab.etcd_pid().unwrap();
    lab.stop_etcd().unwrap();
    assert!(!lab.etcd_running());
    assert!(lab.etcdctl_ok(["--dial-timeout=300ms", "--command-timeout=500ms", "get", "/k"]).is_err());
    lab.start_etcd().unwrap();
    assert_ne!(lab.etcd_pid(), Some(pid));
    assert!(lab.etcdctl_ok(["get", "/k"]).unwrap().contains('v'));
    assert!(matches!(lab.start_etcd(), Err(LabError::AlreadyRunning { .. })));
    let status = lab.status().unwrap();
    println!("{status}");
    assert!(!status.all_connected());
    // A second handle (like another process) can find it.
    let other = Lab::load(&lab.spec().state_root, lab.name()).unwrap();
    assert_eq!(other.etcd_pid(), lab.etcd_pid());
    // Name clash
    let again = Lab::up(LabSpec { start_weftd: false, ..lab.spec().clone() });
    assert!(matches!(again, Err(LabError::AlreadyExists { .. })), "{again:?}");
    println!("{}", again.unwrap_err());
}

#[test]
fn fake_weftd_containers_and_host_gw_connectivity() {
    let t = Instant::now();
    let lab = TestLab::from_spec(fake_spec(3));
    println!("up took {:?}", t.elapsed());
    for h in 1..=3 {
        assert!(lab.weftd_running(h), "h{h}");
        assert_eq!(lab.container_ip(h), Some(Ipv4Addr::new(10, 244, h as u8, 2)));
        let mtu = lab.exec_in(&lab.container_ns(h), ["cat", "/sys/class/net/eth0/mtu"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1450");
    }
    assert!(lab.ping(1, Ipv4Addr::new(10, 244, 1, 1)));
    assert!(!lab.status().unwrap().all_connected());
    add_host_gw_routes(&lab);
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        let s = lab.status().map_err(|e| e.to_string())?;
        if s.all_connected() {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    println!("{}", lab.status().unwrap());
    // restart
    let old = lab.weftd_pid(2).unwrap();
    let t = Instant::now();
    let new = lab.restart_weftd(2).unwrap();
    println!("restart took {:?}", t.elapsed());
    assert_ne!(old, new);
    assert!(lab.weftd_running(2));
    lab.stop_weftd(2).unwrap();
    assert!(!lab.weftd_running(2));
    assert_eq!(lab.weftd_pid(2), None);
    lab.stop_weftd(2).unwrap();
    // re-attach follows subnet.env
    std::fs::write(lab.subnet_file(3), "FLANNEL_SUBNET=10.244.33.1/24\nFLANNEL_MTU=1400\n").unwrap();
    assert_eq!(lab.attach_container(3).unwrap(), Ipv4Addr::new(10, 244, 33, 2));
    let mtu = lab.exec_in(&lab.container_ns(3), ["cat", "/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1400");
    lab.detach_container(3).unwrap();
    assert!(!ns_exists(&lab.container_ns(3)));
    assert_eq!(lab.container_ip(3), None);
    println!("{}", lab.status().unwrap());
}

#[test]
fn stubborn_weftd_is_killed() {
    let lab =
        TestLab::from_spec(LabSpec { extra_weftd_args: vec!["--fake-mode".into(), "stubborn".into()], ..fake_spec(1) });
    let pid = lab.weftd_pid(1).unwrap();
    let t = Instant::now();
    lab.stop_weftd(1).unwrap();
    let took = t.elapsed();
    println!("stop took {took:?}");
    assert!(took >= Duration::from_secs(9), "{took:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn failing_weftd_makes_up_fail_with_log_and_cleans_up() {
    require_root();
    let spec = LabSpec { extra_weftd_args: vec!["--fake-mode".into(), "fail".into()], ..fake_spec(2) };
    let name = spec.name.clone();
    let dir = spec.state_root.join(&name);
    let err = Lab::up(spec).unwrap_err();
    let text = err.to_string();
    println!("{text}");
    assert!(text.contains("pretend failure"), "{text}");
    assert!(!dir.exists());
    for ns in ["u", "h1", "h2", "c1"] {
        assert!(!ns_exists(&format!("wl-{name}-{ns}")));
    }
}

#[test]
fn bad_specs_fail_clearly() {
    require_root();
    let e = Lab::up(LabSpec { name: "no_underscores".into(), ..fake_spec(1) }).unwrap_err();
    println!("{e}");
    let e = Lab::up(LabSpec { weftd: "/nope/weftd".into(), ..fake_spec(1) }).unwrap_err();
    println!("{e}");
    let e = Lab::load(std::env::temp_dir(), "nolab").unwrap_err();
    println!("{e}");
}

#[test]
fn cli_up_status_down() {
    require_root();
    use weft::lab::cli::{run, LabCommand, LabRef};
    let spec = fake_spec(2);
    let lab = LabRef { name: spec.name.clone(), state_root: spec.state_root.clone() };
    run(LabCommand::Up {
        lab: lab.clone(),
        hosts: 2,
        backend: "host-gw".into(),
        network: "10.244.0.0/16".into(),
        weftd: Some(FAKE.into()),
        no_weftd: false,
        weftd_args: vec![],
    })
    .unwrap();
    let r = run(LabCommand::Status { lab: lab.clone(), no_ping: false, check: true });
    println!("check result: {r:?}");
    assert!(matches!(r, Err(LabError::Disconnected { failed: 2, total: 2 })));
    run(LabCommand::Down { lab: lab.clone() }).unwrap();
    assert!(run(LabCommand::Down { lab }).is_err());
}

#[test]
fn big_lab_timing() {
    let n: usize = std::env::var("BIG").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if n == 0 {
        return;
    }
    let t = Instant::now();
    let lab = TestLab::from_spec(fake_spec(n));
    println!("up {n} hosts took {:?}", t.elapsed());
    let t = Instant::now();
    let s = lab.quick_status().unwrap();
    println!("quick status took {:?}", t.elapsed());
    assert_eq!(s.hosts.len(), n);
    let t = Instant::now();
    drop(lab);
    println!("down took {:?}", t.elapsed());
}
