//! Leases written by an attacker or a careless operator, on a live three-host lab, while containers ping: the
//! legitimate hosts lose no packet, the underlay keeps its routes, and every bad lease is reported and counted.
//! Root only; every test builds and removes its own lab.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{eventually, TestLab, SUBNETS};
use weft_lab::lab::LabSpec;

/// weftd's /metrics port inside each host's namespace.
const METRICS_PORT: &str = "9471";

/// Every route of host `h` that weft does not own (proto 87 is weft's): the underlay's and the bridge's.
fn foreign_routes(lab: &TestLab, h: usize) -> Vec<String> {
    let text = lab.host_sh(h, &["ip", "-d", "route", "show", "table", "main"]);
    text.lines().filter(|l| !l.contains("proto 87")).map(str::to_string).collect()
}

/// A ping of `count` packets every 50 ms from `from`'s container to `to`'s, running in the background.
fn start_ping(lab: &TestLab, from: usize, to: usize, count: u32) -> Child {
    let ip = lab.container_ip(to).unwrap().to_string();
    let count = count.to_string();
    let args = ["ping", "-i", "0.05", "-W", "1", "-q", "-c", &count, &ip];
    let mut command = lab.command_in(&lab.container_ns(from), args).unwrap();
    command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
}

/// (transmitted, received) of a finished ping.
fn ping_result(child: Child) -> (u32, u32) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let number = |word: &str| -> u32 {
        let before = line.split(word).next().unwrap();
        before.trim_end().rsplit([' ', ',']).next().unwrap().parse().unwrap()
    };
    (number("packets transmitted"), number("received"))
}

fn value(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

#[test]
fn bad_leases_are_refused_while_containers_keep_talking() {
    let spec = TestLab::spec(3);
    let args = vec!["--healthz-port".to_string(), METRICS_PORT.to_string()];
    let lab = TestLab::from_spec(LabSpec { extra_weftd_args: args, ..spec });
    let all_ping = || {
        for (from, to) in [(1, 2), (2, 3), (3, 1)] {
            if !lab.ping(from, lab.container_ip(to).unwrap()) {
                return Err(format!("h{from} cannot reach h{to}"));
            }
        }
        Ok(())
    };
    eventually(Duration::from_secs(20), Duration::from_millis(200), all_ping);
    let before: Vec<Vec<String>> = (1..=3).map(|h| foreign_routes(&lab, h)).collect();
    let h2_mac = lab.host_sh(2, &["cat", "/sys/class/net/flannel.1/address"]).trim().to_string();
    let h2_subnet = lab.lease_key(2);
    let h2_base = h2_subnet.split('-').next().unwrap().to_string();
    let h2_upper = {
        let mut octets: Vec<u8> = h2_base.split('.').map(|o| o.parse().unwrap()).collect();
        octets[3] = 128;
        octets.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
    };
    let underlay = {
        let ip = lab.host_ip(1).octets();
        format!("{}.{}.{}.0-24", ip[0], ip[1], ip[2])
    };

    let pings: Vec<Child> = [(1, 2), (2, 3), (3, 1)].iter().map(|(f, t)| start_ping(&lab, *f, *t, 160)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let good_mac = "0e:77:00:00:00:";
    let bad: Vec<(String, String, &str)> = vec![
        (underlay.clone(), value("198.18.0.90", &format!("{good_mac}01")), "outside_network"),
        ("10.99.0.0-24".into(), value("198.18.0.91", &format!("{good_mac}02")), "outside_network"),
        ("0.0.0.0-0".into(), value("198.18.0.92", &format!("{good_mac}03")), "outside_network"),
        ("10.244.0.0-16".into(), value("198.18.0.93", &format!("{good_mac}04")), "wrong_length"),
        (format!("{h2_base}-25"), value("198.18.0.94", &format!("{good_mac}05")), "wrong_length"),
        (format!("{h2_upper}-25"), value("198.18.0.95", &format!("{good_mac}06")), "wrong_length"),
        ("10.244.200.0-24".into(), value("198.18.0.96", &h2_mac), "duplicate_vtep_mac"),
        ("10.244.201.0-24".into(), value("127.0.0.1", &format!("{good_mac}07")), "bad_public_ip"),
        ("10.244.202.0-24".into(), value("224.0.0.1", &format!("{good_mac}08")), "bad_public_ip"),
        ("10.244.203.0-24".into(), value("255.255.255.255", &format!("{good_mac}09")), "bad_public_ip"),
        ("10.244.204.0-24".into(), "{this is not json".into(), "bad_value"),
    ];
    for (key, value, _) in &bad {
        lab.etcdctl_ok(["put", &format!("{SUBNETS}{key}"), value]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }

    // Every host reports and counts every bad lease.
    for h in 1..=3 {
        eventually(Duration::from_secs(20), Duration::from_millis(300), || {
            let text = lab.metrics(h, METRICS_PORT);
            for (reason, count) in [
                ("outside_network", 3),
                ("wrong_length", 3),
                ("duplicate_vtep_mac", 1),
                ("bad_public_ip", 3),
                ("bad_value", 1),
            ] {
                let line = format!("weft_peers_skipped{{reason=\"{reason}\"}} {count}");
                if !text.lines().any(|l| l == line) {
                    return Err(format!("h{h}: no {line:?} in\n{text}"));
                }
            }
            text.lines().any(|l| l == "weft_peers 2").then_some(()).ok_or_else(|| format!("h{h}: {text}"))
        });
        let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
        for (key, _, reason) in &bad {
            let lines =
                log.lines().filter(|l| l.contains("ignoring peer lease") && l.contains(&format!("lease={key} ")));
            assert_eq!(lines.filter(|l| l.contains(reason)).count(), 1, "h{h} reports {key} ({reason}) once:\n{log}");
        }
    }
    for ping in pings {
        let (sent, received) = ping_result(ping);
        assert_eq!(sent, received, "pings between legitimate hosts were lost while bad leases were written");
    }

    for h in 1..=3 {
        assert_eq!(foreign_routes(&lab, h), before[h - 1], "h{h}'s underlay and bridge routes are untouched");
        let fdb = lab.host_sh(h, &["bridge", "fdb", "show", "dev", "flannel.1"]);
        for ip in ["127.0.0.1", "224.0.0.1", "255.255.255.255", "198.18.0.96"] {
            assert!(!fdb.contains(&format!("dst {ip} ")), "h{h} FDB has {ip}:\n{fdb}");
        }
        let ours = lab.host_sh(h, &["ip", "route", "show", "proto", "87"]);
        assert_eq!(ours.lines().count(), 2, "h{h} routes exactly its two peers:\n{ours}");
    }
    eventually(Duration::from_secs(10), Duration::from_millis(300), all_ping);

    // weftctl shows why.
    let weftctl = common::weftctl();
    let list = lab.host_sh(1, &[weftctl.to_str().unwrap(), "lease", "list", "--etcd-endpoints", &lab.etcd_endpoint()]);
    for (key, _, reason) in &bad {
        assert!(
            list.lines().any(|l| l.starts_with(key.as_str()) && l.contains(&format!("skipped: {reason}"))),
            "{list}"
        );
    }
}
