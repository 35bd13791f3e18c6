//! The lab in Kubernetes mode: the test API server instead of etcd, a Node per host with its pod CIDR, weftd with
//! `--kube-subnet-mgr`. Root only; every test builds and removes its own lab.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{eventually, TestLab, WEFTD};
use serde_json::{json, Value};
use weft_lab::lab::LabSpec;

fn kube_lab(hosts: usize) -> TestLab {
    let server = Path::new(WEFTD).with_file_name("weft-kube-testserver");
    assert!(server.is_file(), "{} is not built; build it with `cargo build -p weft-kube-testserver`", server.display());
    TestLab::from_spec(LabSpec { kube_api_server: Some(server), ..TestLab::spec(hosts) })
}

fn all_ping(lab: &TestLab) -> Result<(), String> {
    for from in 1..=lab.hosts() {
        for to in 1..=lab.hosts() {
            let ip = lab.container_ip(to).unwrap();
            if from != to && !lab.ping(from, ip) {
                return Err(format!("container on h{from} cannot ping h{to}'s container {ip}"));
            }
        }
    }
    Ok(())
}

fn node(lab: &TestLab, name: &str) -> Value {
    serde_json::from_str(&lab.kube_api(&["-sf", "-m", "5"], &format!("/api/v1/nodes/{name}"), None).unwrap()).unwrap()
}

fn route(lab: &TestLab, on: usize, subnet: &str) -> String {
    let out = lab.exec_in(&lab.host_ns(on), ["ip", "route", "show", subnet]).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Node as a flanneld host leaves it (its annotations written by hand here, byte for byte as flanneld does).
fn flannel_node(name: &str, octet: u8) -> Value {
    let cidr = format!("10.244.{octet}.0/24");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {
            "flannel.alpha.coreos.com/backend-data": format!(r#"{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{octet:02x}"}}"#),
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": format!("198.18.0.{octet}"),
        }},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    })
}

#[test]
fn kubernetes_mode_pings_mixes_with_flannel_nodes_and_rides_out_an_api_outage() {
    let lab = kube_lab(3);
    eventually(Duration::from_secs(30), Duration::from_millis(200), || all_ping(&lab));

    // Each weftd published flannel's annotations on its own Node and cleared NetworkUnavailable.
    for h in 1..=3 {
        let n = node(&lab, &format!("h{h}"));
        let annotations = &n["metadata"]["annotations"];
        assert_eq!(annotations["flannel.alpha.coreos.com/public-ip"], lab.host_ip(h).to_string());
        assert_eq!(annotations["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        let data = annotations["flannel.alpha.coreos.com/backend-data"].as_str().unwrap();
        assert!(data.starts_with(r#"{"VNI":1,"VtepMAC":""#), "{data}");
        let conditions = n["status"]["conditions"].as_array().cloned().unwrap_or_default();
        assert!(
            conditions.iter().any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"),
            "{conditions:?}"
        );
    }

    // A flanneld node joins: every weftd programs it; deleted, its routes go away.
    lab.put_node(&flannel_node("flanneld-a", 200)).unwrap();
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        (1..=3).try_for_each(|h| match route(&lab, h, "10.244.200.0/24") {
            r if r.contains("flannel.1") => Ok(()),
            r => Err(format!("h{h}: no route to the flanneld node yet: {r:?}")),
        })
    });
    lab.delete_node("flanneld-a").unwrap();
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        (1..=3).try_for_each(|h| match route(&lab, h, "10.244.200.0/24") {
            r if r.is_empty() => Ok(()),
            r => Err(format!("h{h} still routes the deleted node: {r:?}")),
        })
    });

    // The API server stops answering for 30 s: no ping is lost meanwhile.
    let target = lab.container_ip(2).unwrap().to_string();
    lab.freeze_kube_api(true).unwrap();
    let ping = lab.exec_in(&lab.container_ns(1), ["ping", "-c", "60", "-i", "0.5", "-W", "1", "-q", target.as_str()]);
    lab.freeze_kube_api(false).unwrap();
    let ping = ping.unwrap();
    let summary = String::from_utf8_lossy(&ping.stdout).into_owned();
    println!("pings during a 30 s API server outage: {}", summary.lines().find(|l| l.contains("loss")).unwrap_or(""));
    assert!(summary.contains(" 0% packet loss"), "pings were lost during the outage: {summary}");

    // And the watch is back: a node that joins after the outage is programmed.
    lab.put_node(&flannel_node("flanneld-b", 201)).unwrap();
    eventually(Duration::from_secs(60), Duration::from_millis(500), || match route(&lab, 1, "10.244.201.0/24") {
        r if r.contains("flannel.1") => Ok(()),
        r => Err(format!("h1: no route to the node that joined after the outage: {r:?}")),
    });
    all_ping(&lab).unwrap();
}
