//! Three hosts in network namespaces, a real etcd, real weftd: the foundation's behaviour end to end.
//! Root only (CI runs as root); every test builds and removes its own lab.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{eventually, through_nexthop, TestLab, SUBNETS};
use weft::lease::LeaseAttrs;

fn vtep_mac(lab: &TestLab, h: usize) -> String {
    let text = lab.host_sh(h, &["cat", "/sys/class/net/flannel.1/address"]);
    text.trim().to_string()
}

fn etcd_get(lab: &TestLab, key: &str) -> Option<String> {
    let out = lab.etcdctl_ok(["get", "--print-value-only", key]).unwrap();
    let value = out.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Ok once `on` has no neighbour, FDB entry (for `mac`) or route left for `peer_subnet`.
fn peer_state_gone(lab: &TestLab, on: usize, peer_subnet: &str, mac: &str) -> Result<(), String> {
    match triple(lab, on, peer_subnet) {
        (n, f, r) if n.is_empty() && !f.contains(mac) && r.is_empty() => Ok(()),
        other => Err(format!("h{on} still has state for {peer_subnet}: {other:?}")),
    }
}

/// The triple weftd programs on `on` for the host `peer`: (neighbour line, fdb line, route line), each possibly empty.
fn triple(lab: &TestLab, on: usize, peer_subnet: &str) -> (String, String, String) {
    let base = peer_subnet.split('/').next().unwrap().to_string();
    let neigh = lab.host_sh(on, &["ip", "neigh", "show", "dev", "flannel.1", &base]);
    let fdb = lab.host_sh(on, &["bridge", "fdb", "show", "dev", "flannel.1"]);
    let route = lab.host_sh(on, &["ip", "route", "show", peer_subnet]);
    (neigh.trim().to_string(), fdb, route.trim().to_string())
}

#[test]
fn containers_reach_each_other_and_leases_are_flannels() {
    let lab = TestLab::new(3);
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());

    for h in 1..=3 {
        let key = lab.lease_key(h);
        let raw = etcd_get(&lab, &format!("{SUBNETS}{key}")).unwrap_or_else(|| panic!("no lease {key} for h{h}"));
        // Exactly flannel's field set and order, and our own encoder reproduces it byte for byte.
        let expected = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            lab.host_ip(h),
            vtep_mac(&lab, h)
        );
        assert_eq!(raw, expected, "lease of h{h}");
        assert_eq!(LeaseAttrs::from_json(&raw).unwrap().to_json(), raw);

        let env = std::fs::read_to_string(lab.subnet_file(h)).unwrap();
        let subnet = lab.subnet_env(h).unwrap().subnet.unwrap();
        assert_eq!(
            env,
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        );
        // The lease is an etcd lease with a TTL (24 h by default), not a reservation.
        let ttl = lab.etcdctl_ok(["get", "-w", "fields", &format!("{SUBNETS}{key}")]).unwrap();
        assert!(ttl.lines().any(|l| l.starts_with("\"Lease\" : ") && !l.ends_with(": 0")), "{ttl}");
    }

    // On h1, each other host has flannel's triple: permanent neighbour, FDB entry to its public IP, onlink route.
    for peer in [2, 3] {
        let subnet = format!("{}/24", lab.lease_key(peer).trim_end_matches("-24"));
        let base = subnet.trim_end_matches("/24");
        let mac = vtep_mac(&lab, peer);
        let (neigh, fdb, route) = triple(&lab, 1, &subnet);
        assert_eq!(neigh, format!("{base} lladdr {mac} PERMANENT"));
        assert!(fdb.contains(&format!("{mac} dst {} self permanent", lab.host_ip(peer))), "{fdb}");
        assert_eq!(through_nexthop(&route), (format!("{subnet} via {base} dev flannel.1 proto 87 onlink"), true));
    }
    let link = lab.host_sh(1, &["ip", "-d", "link", "show", "flannel.1"]);
    assert!(
        link.contains("vxlan id 1 local 198.18.0.1 dev eth0") && link.contains("dstport 8472 nolearning"),
        "{link}"
    );
    assert!(link.contains("mtu 1450"), "{link}");
}

#[test]
fn restart_keeps_subnet_and_vtep_mac_and_drops_no_packets() {
    let lab = TestLab::new(3);
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
    let key = lab.lease_key(2);
    let mac = vtep_mac(&lab, 2);
    let lease = etcd_get(&lab, &format!("{SUBNETS}{key}")).unwrap();

    // Ping h2's container from h1's at 20 Hz while h2's weftd restarts twice.
    let target = lab.container_ip(2).unwrap().to_string();
    let ping = lab
        .command_in(&lab.container_ns(1), ["ping", "-q", "-i", "0.05", "-c", "80", "-W", "1", &target])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The second restart comes only once the first weftd is ready again (its old subnet file proves nothing).
    let readies = || std::fs::read_to_string(lab.weftd_log(2)).unwrap().matches("weftd ready").count();
    let before = readies();
    lab.restart_weftd(2).unwrap();
    eventually(Duration::from_secs(15), Duration::from_millis(50), || {
        if readies() > before {
            Ok(())
        } else {
            Err("the restarted weftd on h2 is not ready".into())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    lab.restart_weftd(2).unwrap();
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("80 received, 0% packet loss"), "packets were lost across the restart:\n{summary}");

    assert_eq!(lab.lease_key(2), key, "same subnet after restart");
    assert_eq!(vtep_mac(&lab, 2), mac, "same VTEP MAC after restart");
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let now = etcd_get(&lab, &format!("{SUBNETS}{key}"));
        if now.as_deref() == Some(lease.as_str()) {
            Ok(())
        } else {
            Err(format!("lease is now {now:?}, was {lease}"))
        }
    });
    assert!(lab.weftd_running(2));
}

#[test]
fn a_deleted_lease_removes_the_peer_everywhere_and_its_owner_takes_it_back() {
    let lab = TestLab::new(3);
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
    let key3 = lab.lease_key(3);
    let subnet3 = format!("{}/24", key3.trim_end_matches("-24"));

    // A stopped host's lease is deleted (as an expired TTL would): the others drop its route, neighbour, FDB entry.
    lab.stop_weftd(3).unwrap();
    lab.etcdctl_ok(["del", &format!("{SUBNETS}{key3}")]).unwrap();
    let mac3 = vtep_mac(&lab, 3);
    for on in [1, 2] {
        eventually(Duration::from_secs(10), Duration::from_millis(100), || peer_state_gone(&lab, on, &subnet3, &mac3));
    }

    // The host comes back and gets the same subnet (its subnet file remembers it).
    lab.start_weftd(3).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        etcd_get(&lab, &format!("{SUBNETS}{key3}")).map(|_| ()).ok_or("h3 has no lease yet".into())
    });
    eventually(Duration::from_secs(10), Duration::from_millis(200), || lab.all_containers_ping());

    // Deleting a running host's lease: weftd takes the same subnet back instead of exiting (flannel exits).
    lab.etcdctl_ok(["del", &format!("{SUBNETS}{key3}")]).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        etcd_get(&lab, &format!("{SUBNETS}{key3}")).map(|_| ()).ok_or("h3 has not re-acquired".into())
    });
    assert!(lab.weftd_running(3));
    assert_eq!(lab.lease_key(3), key3);
    eventually(Duration::from_secs(10), Duration::from_millis(200), || lab.all_containers_ping());
}

#[test]
fn routes_and_the_device_deleted_by_hand_come_back() {
    let lab = TestLab::new(3);
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
    let subnet2 = format!("{}/24", lab.lease_key(2).trim_end_matches("-24"));
    let before = lab.host_sh(1, &["ip", "route", "show", "proto", "87"]);
    let mac = vtep_mac(&lab, 1);
    // A re-created device gets its routes back through fresh nexthop objects: ids aside, the same routes.
    let plain = |text: &str| text.lines().map(through_nexthop).collect::<Vec<_>>();
    let routes_restored = || {
        // Repair comes from netlink notifications; the bound covers a lost one too (the periodic resync, 10 s).
        eventually(Duration::from_secs(15), Duration::from_millis(50), || {
            let now = lab.host_sh(1, &["ip", "route", "show", "proto", "87"]);
            if plain(&now) == plain(&before) {
                Ok(())
            } else {
                Err(format!("routes now:\n{now}"))
            }
        })
    };

    lab.host_sh(1, &["ip", "route", "del", &subnet2]);
    routes_restored();

    lab.host_sh(1, &["ip", "neigh", "del", subnet2.trim_end_matches("/24"), "dev", "flannel.1"]);
    lab.host_sh(1, &["ip", "link", "del", "flannel.1"]);
    routes_restored();
    assert_eq!(vtep_mac(&lab, 1), mac, "a re-created device keeps its VTEP MAC, so peers' entries stay right");
    eventually(Duration::from_secs(10), Duration::from_millis(200), || lab.all_containers_ping());
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    assert!(log.contains("repaired drift"), "drift repair is logged at info:\n{log}");
}

#[test]
fn traffic_flows_through_a_20_second_etcd_outage_and_weftd_reconnects() {
    let lab = TestLab::new(3);
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
    lab.stop_etcd().unwrap();

    // 20 s without etcd, at 4 pings a second between two hosts' containers: none may be lost.
    let target = lab.container_ip(3).unwrap().to_string();
    let out = lab.exec_in(&lab.container_ns(1), ["ping", "-q", "-i", "0.25", "-c", "80", "-W", "1", &target]).unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("80 received, 0% packet loss"), "{summary}");
    for h in 1..=3 {
        assert!(lab.weftd_running(h), "weftd on h{h} must survive an etcd outage");
    }

    lab.start_etcd().unwrap();
    for h in 1..=3 {
        eventually(Duration::from_secs(20), Duration::from_millis(200), || {
            let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
            if log.contains("lost the etcd connection") && log.contains("etcd connection regained") {
                Ok(())
            } else {
                Err(format!("h{h} has not logged losing and regaining etcd"))
            }
        });
    }
    // The watch really resumed: a new lease put now is programmed on every host.
    put_flannel_lease(&lab, "10.244.250.0-24", "198.18.0.99", "0e:aa:bb:cc:dd:99");
    for on in 1..=3 {
        eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            let (_, _, route) = triple(&lab, on, "10.244.250.0/24");
            if route.is_empty() {
                Err(format!("h{on} has no route to the new lease"))
            } else {
                Ok(())
            }
        });
    }
}

/// Writes a lease exactly as flanneld v0.28 does: its JSON, under an etcd lease with a TTL.
fn put_flannel_lease(lab: &TestLab, key: &str, public_ip: &str, mac: &str) {
    let value = format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    );
    lab.put_leased(key, &value);
}

#[test]
fn a_lease_written_by_flanneld_is_programmed_exactly_like_flannel_does() {
    let lab = TestLab::new(2);
    put_flannel_lease(&lab, "10.244.200.0-24", "198.18.0.77", "0e:66:77:88:99:aa");
    for on in 1..=2 {
        eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            let (neigh, fdb, route) = triple(&lab, on, "10.244.200.0/24");
            let want_fdb = "0e:66:77:88:99:aa dst 198.18.0.77 self permanent";
            if neigh == "10.244.200.0 lladdr 0e:66:77:88:99:aa PERMANENT"
                && fdb.contains(want_fdb)
                && through_nexthop(&route)
                    == ("10.244.200.0/24 via 10.244.200.0 dev flannel.1 proto 87 onlink".into(), true)
            {
                Ok(())
            } else {
                Err(format!("h{on}: neigh {neigh:?}, route {route:?}, fdb:\n{fdb}"))
            }
        });
    }
    lab.etcdctl_ok(["del", &format!("{SUBNETS}10.244.200.0-24")]).unwrap();
    for on in 1..=2 {
        eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            peer_state_gone(&lab, on, "10.244.200.0/24", "0e:66:77:88:99:aa")
        });
    }
}

#[test]
fn malformed_etcd_values_are_reported_and_never_crash_or_get_allocated() {
    let lab = TestLab::without_weftd(2);
    // A network with room for exactly three subnets; one is held by a key whose value is garbage.
    lab.etcdctl_ok(["put", "/coreos.com/network/config", r#"{"Network":"10.244.0.0/26","Backend":{"Type":"vxlan"}}"#])
        .unwrap();
    lab.etcdctl_ok(["put", &format!("{SUBNETS}10.244.0.16-28"), "{not json"]).unwrap();
    lab.etcdctl_ok(["put", &format!("{SUBNETS}garbage-key"), "{}"]).unwrap();
    lab.etcdctl_ok([
        "put",
        &format!("{SUBNETS}10.244.0.32-28"),
        r#"{"PublicIP":"198.18.0.66","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"nope"}}"#,
    ])
    .unwrap();
    lab.start_weftd(1).unwrap();
    let env = lab.wait_for_subnet_env(1, Duration::from_secs(15)).unwrap();
    assert_eq!(
        env.subnet.unwrap().to_string(),
        "10.244.0.49/28",
        "the only subnet left: garbage values still hold theirs"
    );
    // The watch task reports the listing's problems once it starts, just after the subnet file is written.
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
        let want = [
            "10.244.0.16-28",
            "not JSON",
            "garbage-key",
            "ignoring peer lease 10.244.0.32/28: invalid MAC address \"nope\"",
        ];
        match want.iter().find(|w| !log.contains(*w)) {
            None => Ok(()),
            Some(missing) => Err(format!("{missing:?} not in the log:\n{log}")),
        }
    });
    assert!(lab.weftd_running(1), "bad values in etcd must not crash weftd");

    // The pool is now full: the second host says so clearly and keeps trying instead of crashing.
    lab.start_weftd(2).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let log = std::fs::read_to_string(lab.weftd_log(2)).unwrap();
        if log.contains("out of subnets: every /28 between 10.244.0.16 and 10.244.0.48 in 10.244.0.0/26") {
            Ok(())
        } else {
            Err("h2 has not reported exhaustion".into())
        }
    });
    assert!(lab.weftd_running(2));
}

#[test]
fn waits_for_a_missing_config_then_honours_a_reservation() {
    let lab = TestLab::without_weftd(1);
    lab.etcdctl_ok(["del", "/coreos.com/network/config"]).unwrap();
    lab.start_weftd(1).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
        if log.contains("no network config (etcd key /coreos.com/network/config); write one") {
            Ok(())
        } else {
            Err(log)
        }
    });
    // A reservation for this host's IP: a key without an etcd lease.
    lab.etcdctl_ok(["put", &format!("{SUBNETS}10.244.77.0-24"), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#])
        .unwrap();
    // A config without Backend means udp, as in flanneld's code: weftd says so and runs the udp backend.
    lab.etcdctl_ok(["put", "/coreos.com/network/config", r#"{"Network":"10.244.0.0/16"}"#]).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
        if log.contains("Backend is missing: flannel then uses the udp backend") {
            Ok(())
        } else {
            Err(log)
        }
    });
    let env = lab.wait_for_subnet_env(1, Duration::from_secs(15)).unwrap();
    assert_eq!(env.subnet.unwrap().to_string(), "10.244.77.1/24");
    let fields = lab.etcdctl_ok(["get", "-w", "fields", &format!("{SUBNETS}10.244.77.0-24")]).unwrap();
    assert!(fields.contains("\"Lease\" : 0"), "a reservation stays without TTL:\n{fields}");
    assert!(fields.contains(r#"\"BackendType\":\"udp\""#), "our backend data was written into it:\n{fields}");
}

#[test]
fn a_short_lease_ttl_is_kept_alive_and_json_logs_are_json() {
    let lab = TestLab::from_spec(weft_lab::lab::LabSpec {
        extra_weftd_args: vec!["--subnet-lease-ttl".into(), "3s".into(), "--log-format".into(), "json".into()],
        ..TestLab::spec(1)
    });
    let key = lab.lease_key(1);
    std::thread::sleep(Duration::from_secs(8));
    assert!(etcd_get(&lab, &format!("{SUBNETS}{key}")).is_some(), "the 3 s lease expired despite keepalives");
    let ids = lab.etcdctl_ok(["lease", "list"]).unwrap();
    let id = ids.lines().nth(1).unwrap().trim().to_string();
    let ttl = lab.etcdctl_ok(["lease", "timetolive", &id]).unwrap();
    assert!(ttl.contains("granted with TTL(3s)"), "{ttl}");

    // Every line weftd wrote (the lab adds "--- ... ---" markers of its own) is a JSON object.
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("---")).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(log.contains(r#""message":"acquired subnet lease""#), "{log}");
}

#[test]
fn weftctl_manages_config_leases_and_reservations() {
    let lab = TestLab::new(2);
    let weftctl = common::weftctl();
    let ctl = |args: &[&str]| -> String {
        let mut full = vec![weftctl.to_str().expect("a UTF-8 target dir")];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--etcd-endpoints", "http://127.0.0.1:2379"]);
        lab.sh(&lab.underlay_ns(), &full)
    };
    let config = ctl(&["config", "get"]);
    assert!(config.contains("\"Network\":\"10.244.0.0/16\""), "{config}");

    let list = ctl(&["lease", "list", "--json"]);
    assert_eq!(list.lines().count(), 2, "{list}");
    for h in 1..=2 {
        let ip = lab.host_ip(h).to_string();
        assert!(list.lines().any(|l| l.contains(&lab.lease_key(h)) && l.contains(&ip)), "{list}");
    }
    let table = ctl(&["lease", "list"]);
    assert!(table.starts_with("SUBNET") && table.contains(&vtep_mac(&lab, 1)), "{table}");

    ctl(&["lease", "reserve", "10.244.250.0/24", "--public-ip", "198.18.0.50"]);
    let fields = lab.etcdctl_ok(["get", "-w", "fields", &format!("{SUBNETS}10.244.250.0-24")]).unwrap();
    assert!(fields.contains("\"Lease\" : 0"), "{fields}");
    assert!(ctl(&["lease", "list"]).contains("never (reservation)"));

    // Deleting a live host's lease through weftctl: the host takes its subnet back.
    let key2 = lab.lease_key(2);
    let subnet2 = format!("{}/24", key2.trim_end_matches("-24"));
    ctl(&["lease", "delete", &subnet2]);
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        etcd_get(&lab, &format!("{SUBNETS}{key2}")).map(|_| ()).ok_or("h2 has not re-acquired".into())
    });
}

#[test]
fn a_dead_etcd_endpoint_in_the_list_does_not_matter() {
    // 198.18.0.253 is inside the lab's underlay but nobody answers there.
    let lab = TestLab::from_spec(weft_lab::lab::LabSpec {
        extra_weftd_args: vec!["--etcd-endpoints".into(), "http://198.18.0.253:2379".into()],
        ..TestLab::spec(2)
    });
    eventually(Duration::from_secs(20), Duration::from_millis(200), || lab.all_containers_ping());
}

#[test]
fn health_readiness_and_metrics_are_served_and_flannel_flags_accepted() {
    let lab = TestLab::from_spec(weft_lab::lab::LabSpec {
        // A flanneld command line's extra flags: accepted, reported, harmless.
        extra_weftd_args: ["--healthz-port", "9101", "--subnet-lease-renew-margin", "60", "--iptables-resync", "5"]
            .map(String::from)
            .to_vec(),
        ..TestLab::spec(2)
    });
    let get = |path: &str| -> String {
        lab.host_sh(1, &["curl", "-s", "-w", " %{http_code}", &format!("http://127.0.0.1:9101{path}")])
    };
    assert_eq!(get("/healthz"), "ok\n 200");
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let ready = get("/readyz");
        if ready != "ready\n 200" {
            return Err(format!("/readyz: {ready}"));
        }
        let metrics = get("/metrics");
        let key = lab.lease_key(1);
        let want = [
            "weft_ready 1",
            "weft_etcd_connected 1",
            "weft_peers 1",
            &format!("weft_lease_info{{subnet=\"{key}\"}} 1"),
        ];
        match want.iter().find(|w| !metrics.contains(*w)) {
            None => Ok(()),
            Some(missing) => Err(format!("{missing} not in:\n{metrics}")),
        }
    });
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    assert!(log.contains("--subnet-lease-renew-margin is ignored"), "{log}");
}
