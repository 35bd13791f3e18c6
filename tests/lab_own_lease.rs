//! Our own lease, the network config and weftd's start, attacked or misused on a live lab while containers ping:
//! a forged value in a host's own lease, another lease with its public IP, a second weftd with the same
//! `--public-ip`, `weftctl lease reserve` on a live subnet, invalid configs through `weftctl config set`, a config
//! changed and deleted at runtime, weftd started with an unwritable `--subnet-file` or a wrong `--iface`, and a
//! reservation for a running host's public IP taken at its restart. The legitimate hosts lose no ping, the
//! underlay and bridge routes stay as they were, and each bad write is reported and counted. Root only; one lab
//! for all the cases (each lab start costs seconds).

mod common;

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, TestLab, SUBNETS, WEFTD};
use weft_lab::lab::LabSpec;

const CONFIG_KEY: &str = "/coreos.com/network/config";
/// weftd's /metrics port inside each host's namespace.
const METRICS_PORT: &str = "9471";
/// A short TTL (keepalives every 4 s), so a second weftd needs only seconds to see the first keep its lease alive.
const LEASE_TTL: &str = "12s";
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);

fn etcd_value(lab: &TestLab, key: &str) -> String {
    lab.etcdctl_ok(["get", "--print-value-only", key]).unwrap().trim().to_string()
}

fn lease_keys(lab: &TestLab) -> Vec<String> {
    let text = lab.etcdctl_ok(["get", "--prefix", "--keys-only", SUBNETS]).unwrap();
    text.lines().filter(|l| !l.is_empty()).map(|l| l.trim_start_matches(SUBNETS).to_string()).collect()
}

/// Every route of host `h` that weft does not own (proto 87 is weft's): the underlay's and the bridge's.
fn foreign_routes(lab: &TestLab, h: usize) -> Vec<String> {
    let text = lab.host_sh(h, &["ip", "-d", "route", "show", "table", "main"]);
    text.lines().filter(|l| !l.contains("proto 87")).map(str::to_string).collect()
}

fn weft_routes(lab: &TestLab, h: usize) -> String {
    lab.host_sh(h, &["ip", "route", "show", "proto", "87"])
}

/// Ok when host `h`'s metric `line` (name, labels and value) is exported.
fn has_metric(lab: &TestLab, h: usize, line: &str) -> Result<(), String> {
    let text = lab.metrics(h, METRICS_PORT);
    text.lines().any(|l| l == line).then_some(()).ok_or_else(|| format!("h{h}: no {line:?} in\n{text}"))
}

/// The value of host `h`'s unlabelled metric `name`.
fn metric_value(lab: &TestLab, h: usize, name: &str) -> f64 {
    let text = lab.metrics(h, METRICS_PORT);
    let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn value(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// Pings every 50 ms from each `from` container to each `to` container while `bad` runs, and for `settle` after;
/// returns (from, to, sent, received) per pair.
fn pinging_while(lab: &TestLab, pairs: &[(usize, usize)], settle: Duration, bad: impl FnOnce()) -> Vec<String> {
    let children: Vec<(usize, usize, Child)> = pairs
        .iter()
        .map(|&(from, to)| {
            let ip = lab.container_ip(to).unwrap().to_string();
            // Far more than needed: the pings are stopped (SIGINT, so ping prints its summary) once `bad` is done.
            let args = ["ping", "-i", "0.05", "-W", "1", "-q", "-c", "100000", &ip];
            let mut command = lab.command_in(&lab.container_ns(from), args).unwrap();
            (from, to, command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    bad();
    std::thread::sleep(settle);
    let mut lost = Vec::new();
    for (from, to, child) in children {
        // SAFETY: kill on the pid of a child we spawned and have not waited for yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (sent, received) = ping_counts(&text);
        assert!(sent >= 5, "h{from}->h{to} sent only {sent}: {text}");
        eprintln!("h{from}->h{to}: {sent} sent, {received} received");
        if sent != received {
            lost.push(format!("h{from}->h{to}: {} of {sent} lost", sent - received));
        }
    }
    lost
}

/// (transmitted, received) from ping's summary line.
fn ping_counts(text: &str) -> (u32, u32) {
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let number = |word: &str| -> u32 {
        let before = line.split(word).next().unwrap();
        before.trim_end().rsplit([' ', ',']).next().unwrap().parse().unwrap()
    };
    (number("packets transmitted"), number("received"))
}

/// A weftd the test starts itself (not one of the lab's), stopped by its pid when dropped.
struct ExtraWeftd(Child);

impl ExtraWeftd {
    fn start(lab: &TestLab, h: usize, log: &std::path::Path, args: &[String]) -> ExtraWeftd {
        let mut command = lab.command_in(&lab.host_ns(h), [WEFTD]).unwrap();
        command.args(args).stdout(Stdio::null()).stderr(File::create(log).unwrap());
        ExtraWeftd(command.spawn().unwrap())
    }

    /// Waits for it to exit on its own; its exit code.
    fn exit_code(mut self, within: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("weftd was still running after {within:?}");
    }
}

impl Drop for ExtraWeftd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn weftctl(lab: &TestLab, args: &[&str]) -> std::process::Output {
    let weftctl = common::weftctl();
    let mut all = vec![weftctl.to_str().unwrap()];
    all.extend_from_slice(args);
    let endpoint = lab.etcd_endpoint();
    all.extend_from_slice(&["--etcd-endpoints", &endpoint]);
    lab.exec_in(&lab.host_ns(1), &all).unwrap()
}

#[test]
fn own_lease_config_and_start_up_misuse_never_cost_a_ping() {
    let args: Vec<String> =
        ["--healthz-port", METRICS_PORT, "--subnet-lease-ttl", LEASE_TTL, "--resync-interval", "1s"]
            .map(String::from)
            .to_vec();
    // Four hosts, weftd on the first three; the fourth is where the misconfigured weftd run.
    let lab = TestLab::from_spec(LabSpec { extra_weftd_args: args, start_weftd: false, ..TestLab::spec(4) });
    for h in 1..=3 {
        lab.start_weftd(h).unwrap();
    }
    for h in 1..=3 {
        lab.wait_for_subnet_env(h, WAIT).unwrap();
        lab.attach_container(h).unwrap();
    }
    let all_ping = |hosts: &[usize]| {
        for &from in hosts {
            for &to in hosts.iter().filter(|&&to| to != from) {
                if !lab.ping(from, lab.container_ip(to).unwrap()) {
                    return Err(format!("h{from} cannot reach h{to}"));
                }
            }
        }
        Ok(())
    };
    eventually(WAIT, POLL, || all_ping(&[1, 2, 3]));
    let before: Vec<Vec<String>> = (1..=3).map(|h| foreign_routes(&lab, h)).collect();
    let h1_key = lab.lease_key(1);
    let h1_value = etcd_value(&lab, &format!("{SUBNETS}{h1_key}"));
    let h1_ip = lab.host_ip(1).to_string();
    let h1_mac = lab.host_sh(1, &["cat", "/sys/class/net/flannel.1/address"]).trim().to_string();
    let everyone = [(1, 2), (2, 1), (2, 3), (3, 2), (3, 1), (1, 3)];

    // 1. A forged value in h1's own lease (another host's address and MAC): h1 writes its own value back.
    let lost = pinging_while(&lab, &everyone, Duration::from_secs(2), || {
        let forged = value("198.18.0.66", "0e:66:00:00:00:01");
        lab.etcdctl_ok(["put", &format!("{SUBNETS}{h1_key}"), &forged]).unwrap();
        eventually(WAIT, POLL, || {
            let now = etcd_value(&lab, &format!("{SUBNETS}{h1_key}"));
            (now == h1_value).then_some(()).ok_or(format!("h1's lease is {now}"))
        });
    });
    eventually(WAIT, POLL, || has_metric(&lab, 1, "weft_own_lease_restores_total 1"));
    assert!(log_of(&lab.weftd_log(1)).contains("our lease was changed by someone else"));
    eprintln!("own lease overwritten: {lost:?}");
    let overwrite_lost = lost;

    // 2. Another lease with h1's public IP: h1 refuses it as its own address and says so.
    let lost = pinging_while(&lab, &everyone, Duration::from_secs(1), || {
        lab.etcdctl_ok(["put", &format!("{SUBNETS}10.244.210.0-24"), &value(&h1_ip, "0e:66:00:00:00:02")]).unwrap();
        eventually(WAIT, POLL, || has_metric(&lab, 1, "weft_peers_skipped{reason=\"our_public_ip\"} 1"));
    });
    assert_eq!(lost, Vec::<String>::new(), "another lease with h1's public IP");
    assert!(log_of(&lab.weftd_log(1)).contains("carries our public IP"));
    lab.etcdctl_ok(["del", &format!("{SUBNETS}10.244.210.0-24")]).unwrap();

    // 3. A second weftd with h1's --public-ip, on h4. Its VTEP MAC is derived from the public IP, so it writes h1's
    //    very bytes into h1's lease: both see a write they did not make, report it once, and stop there. (A second
    //    weftd whose value differs is kept off a lease someone keeps alive; the unit tests cover that.)
    let dup_log = lab.dir().join("duplicate-weftd.log");
    let dup_file = lab.dir().join("duplicate-subnet.env");
    let lost = pinging_while(&lab, &everyone, Duration::from_secs(1), || {
        let args = [
            format!("--etcd-endpoints={}", lab.etcd_endpoint()),
            "--iface=eth0".to_string(),
            format!("--public-ip={h1_ip}"),
            format!("--subnet-file={}", dup_file.display()),
            format!("--healthz-port={METRICS_PORT}"),
            format!("--subnet-lease-ttl={LEASE_TTL}"),
        ];
        let duplicate = ExtraWeftd::start(&lab, 4, &dup_log, &args);
        eventually(WAIT, POLL, || {
            let log = log_of(&dup_log);
            log.contains("same --public-ip").then_some(()).ok_or(format!("no report yet:\n{log}"))
        });
        eventually(WAIT, POLL, || {
            let log = log_of(&lab.weftd_log(1));
            log.contains("another weftd with our public IP wrote our lease").then_some(()).ok_or(log)
        });
        for h in [1, 4] {
            let count = metric_value(&lab, h, "weft_duplicate_public_ip_total");
            assert_eq!(count, 1.0, "h{h} counts the second weftd once");
        }
        let h4_routes = weft_routes(&lab, 4);
        let h1_base = h1_key.split('-').next().unwrap();
        assert!(!h4_routes.contains(h1_base), "the second weftd routes its own subnet into the tunnel:\n{h4_routes}");
        assert!(!weft_routes(&lab, 1).contains(h1_base));
        drop(duplicate);
    });
    assert_eq!(lost, Vec::<String>::new(), "a second weftd with h1's public IP");
    assert_eq!(etcd_value(&lab, &format!("{SUBNETS}{h1_key}")), h1_value, "h1's lease says what it said");
    assert_eq!(lease_keys(&lab).len(), 3, "{:?}", lease_keys(&lab));
    assert_eq!(lab.host_sh(1, &["cat", "/sys/class/net/flannel.1/address"]).trim(), h1_mac);

    // 3b. The same with another value: h4 kept a VXLAN device with a MAC of its own (as after flanneld), so its value
    //     differs. It watches the lease's TTL, sees h1 refresh it, and never writes it.
    let revision = |key: &str| -> String {
        let out = lab.etcdctl_ok(["get", key, "-w", "fields"]).unwrap();
        let line = out.lines().find(|l| l.contains("\"ModRevision\""));
        line.unwrap_or_else(|| panic!("no ModRevision for {key}:\n{out}")).to_string()
    };
    let h1_revision = revision(&format!("{SUBNETS}{h1_key}"));
    let other_log = lab.dir().join("duplicate-weftd-2.log");
    let other_file = lab.dir().join("duplicate-subnet-2.env");
    let lost = pinging_while(&lab, &everyone, Duration::from_secs(1), || {
        lab.host_sh(4, &["ip", "link", "del", "flannel.1"]);
        let h4_ip = lab.host_ip(4).to_string();
        lab.host_sh(
            4,
            &["ip", "link", "add", "flannel.1", "address", "0e:44:00:00:00:04", "type", "vxlan", "id", "1", "local"]
                .into_iter()
                .chain([h4_ip.as_str(), "dev", "eth0", "dstport", "8472", "nolearning"])
                .collect::<Vec<_>>(),
        );
        let args = [
            format!("--etcd-endpoints={}", lab.etcd_endpoint()),
            "--iface=eth0".to_string(),
            format!("--public-ip={h1_ip}"),
            format!("--subnet-file={}", other_file.display()),
            format!("--healthz-port={METRICS_PORT}"),
        ];
        let duplicate = ExtraWeftd::start(&lab, 4, &other_log, &args);
        eventually(WAIT, POLL, || {
            let log = log_of(&other_log);
            log.contains("another weftd keeps it alive").then_some(()).ok_or(format!("no report yet:\n{log}"))
        });
        let count = metric_value(&lab, 4, "weft_duplicate_public_ip_total");
        assert!(count >= 1.0, "h4 counts the lease it was kept off: {count}");
        drop(duplicate);
    });
    assert_eq!(lost, Vec::<String>::new(), "a second weftd with h1's public IP and another value");
    assert_eq!(revision(&format!("{SUBNETS}{h1_key}")), h1_revision, "h1's lease was not written at all");
    assert!(!other_file.exists(), "the second weftd got no subnet");
    assert_eq!(metric_value(&lab, 1, "weft_duplicate_public_ip_total"), 1.0, "h1 saw no write");

    // 4. weftctl refuses a reservation over a live subnet and configs weftd would refuse; runtime config
    //    changes are logged and counted.
    let h2_key = lab.lease_key(2);
    let h2_value = etcd_value(&lab, &format!("{SUBNETS}{h2_key}"));
    let config = etcd_value(&lab, CONFIG_KEY);
    let lost = pinging_while(&lab, &everyone, Duration::from_secs(1), || {
        let subnet = h2_key.replace('-', "/");
        let out = weftctl(&lab, &["lease", "reserve", &subnet, "--public-ip", "198.18.0.99"]);
        assert!(!out.status.success(), "a live subnet is not reserved without --force");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{out:?}");
        for bad in [
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":10}}"#,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"no-such-backend"}}"#,
            r#"{"Network":"0.0.0.0/0","Backend":{"Type":"vxlan"}}"#,
        ] {
            let out = weftctl(&lab, &["config", "set", bad]);
            assert!(!out.status.success(), "{bad} was stored");
            assert_eq!(etcd_value(&lab, CONFIG_KEY), config, "{bad} changed the stored config");
        }
        // An endless input ends at the size limit instead of being read forever.
        let out = weftctl(&lab, &["config", "set", "@/dev/zero"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 65536 bytes"), "{out:?}");
        assert_eq!(etcd_value(&lab, CONFIG_KEY), config);
        let changed = r#"{"Network":"10.244.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#;
        lab.etcdctl_ok(["put", CONFIG_KEY, changed]).unwrap();
        for h in 1..=3 {
            eventually(WAIT, POLL, || has_metric(&lab, h, "weft_config_changes_total 1"));
        }
        lab.etcdctl_ok(["del", CONFIG_KEY]).unwrap();
        for h in 1..=3 {
            eventually(WAIT, POLL, || has_metric(&lab, h, "weft_config_changes_total 2"));
        }
        lab.etcdctl_ok(["put", CONFIG_KEY, &config]).unwrap();
    });
    assert_eq!(lost, Vec::<String>::new(), "weftctl misuse and runtime config changes");
    assert_eq!(etcd_value(&lab, &format!("{SUBNETS}{h2_key}")), h2_value);
    for h in 1..=3 {
        let log = log_of(&lab.weftd_log(h));
        assert!(log.contains("the network config in etcd changed; weftd keeps running"), "h{h}:\n{log}");
        assert!(log.contains("the network config was deleted from etcd"), "h{h}:\n{log}");
    }

    // 5. weftd with an unwritable --subnet-file or a wrong --iface fails before it claims anything.
    let never_written = lab.dir().join("failing-subnet.env");
    let not_a_dir = lab.dir().join("plain-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let keys = lease_keys(&lab);
    let cases = [
        (
            "unwritable --subnet-file",
            vec!["--iface=eth0".to_string(), format!("--subnet-file={}/subnet.env", not_a_dir.display())],
        ),
        ("wrong --iface", vec!["--iface=nope0".to_string(), format!("--subnet-file={}", never_written.display())]),
    ];
    let lost = pinging_while(&lab, &everyone, Duration::from_millis(500), || {
        for (case, args) in cases {
            let log = lab.dir().join("failing-weftd.log");
            let mut all = vec![format!("--etcd-endpoints={}", lab.etcd_endpoint())];
            all.extend(args);
            let code = ExtraWeftd::start(&lab, 4, &log, &all).exit_code(WAIT);
            assert_ne!(code, Some(0), "{case}: weftd must fail:\n{}", log_of(&log));
            assert_eq!(lease_keys(&lab), keys, "{case}: nothing claimed in etcd");
            assert!(!never_written.exists(), "{case}");
            eprintln!("{case}: {}", log_of(&log).lines().last().unwrap_or_default());
        }
    });
    assert_eq!(lost, Vec::<String>::new(), "weftd failing at its start");

    for h in 1..=3 {
        assert_eq!(foreign_routes(&lab, h), before[h - 1], "h{h}'s underlay and bridge routes are untouched");
    }
    eventually(WAIT, POLL, || all_ping(&[1, 2, 3]));

    // 6. A reservation for h3's public IP while h3 runs: weftctl warns; h3 takes it at its restart, releases its
    //    old lease, routes neither subnet into the tunnel and leaves its bridge route alone. h1 and h2 keep talking.
    let h3_key = lab.lease_key(3);
    let h3_ip = lab.host_ip(3).to_string();
    let lost = pinging_while(&lab, &[(1, 2), (2, 1)], Duration::from_secs(1), || {
        let out = weftctl(&lab, &["lease", "reserve", "10.244.220.0/24", "--public-ip", &h3_ip]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{h3_ip} is the public IP of the live lease")));
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(lab.lease_key(3), h3_key, "h3 keeps its subnet while it runs");
        lab.restart_weftd(3).unwrap();
        eventually(WAIT, POLL, || {
            let now = lab.lease_key(3);
            (now == "10.244.220.0-24").then_some(()).ok_or(format!("h3 is on {now}"))
        });
        eventually(WAIT, POLL, || {
            let keys = lease_keys(&lab);
            (!keys.contains(&h3_key)).then_some(()).ok_or(format!("h3's old lease is still there: {keys:?}"))
        });
    });
    assert_eq!(lost, Vec::<String>::new(), "h3 moving to its reservation");
    let h3_routes = weft_routes(&lab, 3);
    let old_base = h3_key.split('-').next().unwrap();
    assert!(!h3_routes.contains(old_base) && !h3_routes.contains("10.244.220.0"), "h3:\n{h3_routes}");
    assert_eq!(foreign_routes(&lab, 3), before[2], "h3's underlay and bridge routes are untouched");
    for h in 1..=2 {
        eventually(WAIT, POLL, || {
            let routes = weft_routes(&lab, h);
            (routes.contains("10.244.220.0/24") && !routes.contains(old_base))
                .then_some(())
                .ok_or(format!("h{h}:\n{routes}"))
        });
    }
    lab.attach_container(3).unwrap();
    eventually(WAIT, POLL, || all_ping(&[1, 2, 3]));
    eprintln!("own lease overwrite cost: {overwrite_lost:?}");
    assert_eq!(overwrite_lost, Vec::<String>::new(), "a forged value in h1's own lease");
}
