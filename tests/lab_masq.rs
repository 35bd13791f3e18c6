//! `--ip-masq` and the FORWARD accepts end to end, with flannel's iptables chains (iptables-nft and
//! iptables-legacy hosts whose FORWARD policy is DROP) and with nftables (`EnableNFTables`). A container reaching a
//! server outside the cluster network is seen with its host's address; pod-to-pod traffic keeps pod addresses; a
//! flushed rule set comes back within a resync interval. Root only.
//!
//! The server lives in a namespace this test creates (`wtsrv-<pid>-<n>`, removed by a guard), plugged into the
//! lab's underlay bridge at 198.18.0.200; it has no route to the pods, so only masqueraded pings are answered.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{eventually, TestLab};
use weft_lab::lab::LabSpec;

const SERVER_IP: &str = "198.18.0.200";
static NEXT_SERVER: AtomicUsize = AtomicUsize::new(0);

/// A server outside the cluster network, on the lab's underlay segment.
struct Server {
    ns: String,
}

impl Server {
    fn plug_into(lab: &TestLab) -> Server {
        let ns = format!("wtsrv-{}-{}", std::process::id(), NEXT_SERVER.fetch_add(1, Ordering::Relaxed));
        let server = Server { ns };
        server.ip(&["netns", "add", &server.ns]);
        server.ip(&[
            "-n",
            &server.ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "srv0",
            "netns",
            &lab.underlay_ns(),
        ]);
        lab.sh(&lab.underlay_ns(), &["ip", "link", "set", "srv0", "master", "br0", "up"]);
        server.ip(&["-n", &server.ns, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "eth0"]);
        server.ip(&["-n", &server.ns, "link", "set", "eth0", "up"]);
        server.exec(&[
            "nft",
            "add table ip seen; add chain ip seen in { type filter hook input priority 0; }; \
             add rule ip seen in ip saddr 198.18.0.0/24 counter; add rule ip seen in ip saddr 10.244.0.0/16 counter",
        ]);
        server
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.ns]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packets that arrived from source addresses in `net` (as the counter rule for it names it).
    fn packets_from(&self, net: &str) -> u64 {
        packets(&self.exec(&["nft", "list", "chain", "ip", "seen", "in"]), net)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The packet count of the counter rule whose text contains `what`.
fn packets(listing: &str, what: &str) -> u64 {
    let line = listing.lines().find(|l| l.contains(what) && l.contains("counter")).unwrap_or_default();
    let mut words = line.split_whitespace();
    words.find(|w| *w == "packets");
    words.next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A two-host lab with `--ip-masq`, `before_start` run on each host before weftd starts.
fn masq_lab(enable_nftables: bool, before_start: impl Fn(&TestLab, usize)) -> TestLab {
    let lab = TestLab::from_spec(LabSpec {
        start_weftd: false,
        extra_weftd_args: ["--ip-masq", "--resync-interval", "1s"].map(String::from).to_vec(),
        ..TestLab::spec(2)
    });
    for h in 1..=2 {
        before_start(&lab, h);
    }
    let config =
        format!(r#"{{"Network":"10.244.0.0/16","EnableNFTables":{enable_nftables},"Backend":{{"Type":"vxlan"}}}}"#);
    lab.etcdctl_ok(["put", "/coreos.com/network/config", &config]).unwrap();
    for h in 1..=2 {
        lab.start_weftd(h).unwrap();
    }
    for h in 1..=2 {
        let env = lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
        assert!(env.ipmasq, "FLANNEL_IPMASQ=true with --ip-masq: {env:?}");
        lab.attach_container(h).unwrap();
    }
    lab
}

/// What every variant must show: masquerade to the outside, pod addresses kept between pods, and a flushed rule
/// set restored (by `flush` on h1, `listing` showing it).
fn check_traffic(lab: &TestLab, flush: &[&str], listing: &[&str]) {
    let server = Server::plug_into(lab);
    eventually(Duration::from_secs(15), Duration::from_millis(200), || {
        if lab.ping(1, SERVER_IP.parse().unwrap()) {
            Ok(())
        } else {
            Err("h1's container gets no answer from the server".into())
        }
    });
    assert!(server.packets_from("198.18.0.0/24") >= 1, "the server saw the host's address");
    assert_eq!(server.packets_from("10.244.0.0/16"), 0, "no pod address left the cluster network");

    let c1 = lab.container_ip(1).unwrap().to_string();
    let c2_ns = lab.container_ns(2);
    lab.sh(&c2_ns, &["nft", &format!("add table ip seen; add chain ip seen in {{ type filter hook input priority 0; }}; add rule ip seen in ip saddr {c1} counter")]);
    eventually(Duration::from_secs(15), Duration::from_millis(200), || {
        if lab.ping(1, lab.container_ip(2).unwrap()) {
            Ok(())
        } else {
            Err("h1's container cannot ping h2's".into())
        }
    });
    let seen = lab.sh(&c2_ns, &["nft", "list", "chain", "ip", "seen", "in"]);
    assert!(packets(&seen, &c1) >= 1, "pod to pod keeps the pod's address:\n{seen}");

    let before = lab.sh(&lab.host_ns(1), listing);
    assert!(before.contains("10.244.0.0/16"), "{before}");
    lab.sh(&lab.host_ns(1), flush);
    assert_ne!(lab.sh(&lab.host_ns(1), listing), before);
    eventually(Duration::from_secs(3), Duration::from_millis(100), || {
        let now = lab.sh(&lab.host_ns(1), listing);
        (now == before).then_some(()).ok_or_else(|| format!("rules now:\n{now}"))
    });
    for h in 1..=2 {
        let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
        assert!(!log.contains("operation failed"), "h{h}:\n{log}");
    }
}

#[test]
fn iptables_nft_host_with_forward_drop() {
    let lab = masq_lab(false, |lab, h| drop(lab.sh(&lab.host_ns(h), &["iptables-nft", "-P", "FORWARD", "DROP"])));
    check_traffic(
        &lab,
        &["iptables-nft", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
        &["iptables-nft", "-t", "nat", "-S", "FLANNEL-POSTRTG"],
    );
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    assert!(log.contains("variant=Default"), "{log}");
}

#[test]
fn iptables_legacy_host_with_forward_drop() {
    let lab = masq_lab(false, |lab, h| drop(lab.sh(&lab.host_ns(h), &["iptables-legacy", "-P", "FORWARD", "DROP"])));
    check_traffic(
        &lab,
        &["iptables-legacy", "-t", "nat", "-F", "FLANNEL-POSTRTG"],
        &["iptables-legacy", "-t", "nat", "-S", "FLANNEL-POSTRTG"],
    );
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    assert!(log.contains("variant=Legacy"), "the host's legacy rules were detected:\n{log}");
}

#[test]
fn nftables_host() {
    let lab = masq_lab(true, |_, _| {});
    check_traffic(
        &lab,
        &["nft", "flush", "chain", "ip", "flannel", "POSTRTG"],
        &["nft", "list", "table", "ip", "flannel"],
    );
}

/// A plain nftables host (`EnableNFTables`: no iptables involved) whose `inet filter forward` drops by policy. An
/// accept in weft's own `ip flannel` would end only its own chain, and the other table's drop would still be final,
/// so weftd puts its accepts at the top of that chain (docs/backends.md says why). Pods reach each other, the
/// host's own rule in that chain stays below them, and accepts flushed out of the chain come back.
#[test]
fn nftables_host_with_a_drop_policy_in_another_table() {
    let lab = masq_lab(true, |lab, h| {
        let table = "add table inet filter; \
                     add chain inet filter forward { type filter hook forward priority 0; policy drop; }; \
                     add rule inet filter forward ct state established,related accept comment \"host rule\"";
        drop(lab.sh(&lab.host_ns(h), &["nft", table]))
    });
    let c2 = lab.container_ip(2).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        lab.ping(1, c2).then_some(()).ok_or_else(|| "h1's container cannot ping h2's".to_string())
    });
    let chain = || lab.sh(&lab.host_ns(1), &["nft", "list", "chain", "inet", "filter", "forward"]);
    let accepts = |listing: &str| -> Vec<String> {
        listing.lines().map(str::trim).filter(|l| l.contains("flanneld forward")).map(str::to_string).collect()
    };
    let listing = chain();
    assert_eq!(
        accepts(&listing),
        vec![
            "ip saddr 10.244.0.0/16 accept comment \"flanneld forward\"",
            "ip daddr 10.244.0.0/16 accept comment \"flanneld forward\"",
        ],
        "{listing}"
    );
    let first_rule = listing.lines().map(str::trim).find(|l| l.contains("accept")).unwrap();
    assert!(first_rule.contains("flanneld forward"), "ours come first: {listing}");
    assert!(listing.contains("host rule") && listing.contains("policy drop"), "the host's chain is kept: {listing}");

    lab.sh(&lab.host_ns(1), &["nft", "flush", "chain", "inet", "filter", "forward"]);
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        let now = chain();
        (accepts(&now).len() == 2).then_some(()).ok_or_else(|| format!("chain now:\n{now}"))
    });
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        lab.ping(1, c2).then_some(()).ok_or_else(|| "not forwarded after the repair".to_string())
    });
    for h in 1..=2 {
        let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
        assert!(!log.contains("operation failed"), "h{h}:\n{log}");
    }
}
