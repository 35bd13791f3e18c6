//! The CNI plugin `weft` in the lab, run exactly as a container runtime runs it: CNI_* variables, the network
//! config on stdin, the result on stdout, from inside a lab host's netns. Pods are netns of our own (`wct<pid>-*`),
//! removed by a guard; every IPAM store lives in a temp dir. Root only.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{require_root, TestLab};
use serde_json::{json, Value};
use weft_backends::rules::cni_masq;
use weft_backends::Family;
use weft_lab::lab::LabSpec;

const PLUGIN: &str = env!("CARGO_BIN_EXE_weft");
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn unique(tag: &str) -> String {
    format!("wct{}-{tag}{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A pod: a netns of our own, deleted on drop.
struct Pod {
    ns: String,
}

impl Pod {
    fn new() -> Pod {
        let ns = unique("p");
        let out = Command::new("ip").args(["netns", "add", &ns]).output().unwrap();
        assert!(out.status.success(), "ip netns add {ns}: {}", String::from_utf8_lossy(&out.stderr));
        Pod { ns }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.ns)
    }

    fn id(&self) -> String {
        self.ns.replace('-', "_")
    }

    fn sh(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip").args(["netns", "exec", &self.ns]).args(args).output().unwrap()
    }

    fn ping(&self, ip: &str) -> bool {
        self.sh(&["ping", "-c1", "-W1", "-q", ip]).status.success()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A temp dir for IPAM stores, subnet files and plugin copies, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("d"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one plugin run printed.
struct Run {
    ok: bool,
    json: Value,
    raw: String,
}

/// Runs `plugin` in host `h`'s netns with the given CNI_COMMAND, container and netns, `conf` on stdin.
fn cni(lab: &TestLab, h: usize, plugin: &Path, command: &str, id: &str, netns: &str, conf: &Value) -> Run {
    cni_with_path(lab, h, plugin, command, (id, netns), conf, None)
}

/// [`cni`] with the plugin's PATH replaced by `path` (the test's own PATH when None).
fn cni_with_path(
    lab: &TestLab,
    h: usize,
    plugin: &Path,
    command: &str,
    (id, netns): (&str, &str),
    conf: &Value,
    path: Option<&Path>,
) -> Run {
    let mut cmd = lab.command_in(&lab.host_ns(h), [plugin]).unwrap();
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let cni_path = format!("{}:{REFERENCE_PLUGINS}", plugin.parent().unwrap().display());
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    Run { ok: out.status.success(), json: serde_json::from_str(&raw).unwrap_or(Value::Null), raw }
}

#[track_caller]
fn ok(run: Run) -> Value {
    assert!(run.ok, "plugin failed: {}", run.raw);
    run.json
}

/// A `weft` netconf with its own network name and IPAM store.
fn conf(subnet_file: &Path, store: &TempDir) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": unique("n"),
        "type": "weft",
        "subnetFile": subnet_file,
        "ipMasq": false,
        "ipam": {"dataDir": store.0.join("ipam")},
    })
}

fn address_of(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no address in {result}"));
    a.split('/').next().unwrap().to_string()
}

/// Files in the network's IPAM store that are allocations (named by an address).
fn allocations(conf: &Value) -> Vec<String> {
    let dir = Path::new(conf["ipam"]["dataDir"].as_str().unwrap()).join(conf["name"].as_str().unwrap());
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    found.retain(|n| n.parse::<std::net::IpAddr>().is_ok());
    found.sort();
    found
}

fn host_veths(lab: &TestLab, h: usize) -> usize {
    lab.host_sh(h, &["ip", "-o", "link", "show", "type", "veth"]).lines().filter(|l| l.contains(": veth")).count()
}

/// A lab whose hosts run weftd but have no lab container, so every address in the subnet is ours to hand out.
fn lab_with_weftd(hosts: usize) -> TestLab {
    let lab = TestLab::without_weftd(hosts);
    for h in 1..=hosts {
        lab.start_weftd(h).unwrap();
    }
    for h in 1..=hosts {
        lab.wait_for_subnet_env(h, Duration::from_secs(20)).unwrap();
    }
    lab
}

/// A lab host with a subnet file we write ourselves (no weftd needed for single-host plugin behaviour).
fn lab_with_subnet(subnet: &str, dir: &TempDir) -> (TestLab, PathBuf) {
    let lab = TestLab::without_weftd(1);
    let file = dir.0.join("subnet.env");
    std::fs::write(
        &file,
        format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"),
    )
    .unwrap();
    (lab, file)
}

#[test]
fn pods_on_three_hosts_reach_each_other_and_check_and_del_behave() {
    require_root();
    let lab = lab_with_weftd(3);
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new()).collect();
    let name = unique("n");
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let confs: Vec<Value> = (1..=3)
        .map(|h| {
            let mut c = conf(&lab.subnet_file(h), &dirs[h - 1]);
            c["name"] = json!(name);
            c
        })
        .collect();
    let results: Vec<Value> = (1..=3)
        .map(|h| ok(cni(&lab, h, Path::new(PLUGIN), "ADD", &pods[h - 1].id(), &pods[h - 1].path(), &confs[h - 1])))
        .collect();
    for (h, r) in results.iter().enumerate() {
        let subnet = lab.subnet_env(h + 1).unwrap().subnet.unwrap();
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][2]["sandbox"], json!(pods[h].path()));
        assert_eq!(r["ips"][0]["gateway"], json!(subnet.ip().to_string()), "{r}");
        assert_eq!(r["routes"], json!([{"dst":"10.244.0.0/16"},{"dst":"0.0.0.0/0","gw":subnet.ip().to_string()}]));
        let mtu = pods[h].sh(&["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1450");
    }
    common::eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        for (from, pod) in pods.iter().enumerate() {
            for (to, result) in results.iter().enumerate() {
                let ip = address_of(result);
                if from != to && !pod.ping(&ip) {
                    return Err(format!("pod on h{} cannot ping h{}'s pod {ip}", from + 1, to + 1));
                }
            }
        }
        Ok(())
    });

    // CHECK passes on an intact pod and reports a removed address.
    let mut check = confs[0].clone();
    check["prevResult"] = results[0].clone();
    ok(cni(&lab, 1, Path::new(PLUGIN), "CHECK", &pods[0].id(), &pods[0].path(), &check));
    let ip = results[0]["ips"][0]["address"].as_str().unwrap();
    assert!(pods[0].sh(&["ip", "addr", "del", ip, "dev", "eth0"]).status.success());
    let run = cni(&lab, 1, Path::new(PLUGIN), "CHECK", &pods[0].id(), &pods[0].path(), &check);
    assert!(!run.ok);
    assert_eq!(run.json["code"], 100, "{}", run.raw);
    assert!(run.raw.contains(&format!("address {ip} is missing on eth0")), "{}", run.raw);

    // DEL twice succeeds; the interface and the allocation are gone.
    for _ in 0..2 {
        ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &pods[0].id(), &pods[0].path(), &confs[0]));
    }
    assert!(!pods[0].sh(&["ip", "link", "show", "eth0"]).status.success(), "eth0 is gone");
    assert!(allocations(&confs[0]).is_empty());
    assert_eq!(host_veths(&lab, 1), 0);

    // containerd's DEL after the task is gone: the netns was deleted and CNI_NETNS is empty.
    assert_eq!(allocations(&confs[1]).len(), 1);
    let id = pods[1].id();
    drop(pods.into_iter().nth(1));
    ok(cni(&lab, 2, Path::new(PLUGIN), "DEL", &id, "", &confs[1]));
    assert!(allocations(&confs[1]).is_empty(), "DEL with an empty CNI_NETNS releases the address");
    assert_eq!(host_veths(&lab, 2), 0);
}

#[test]
fn a_hundred_concurrent_adds_get_distinct_addresses_and_dels_clean_up() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/24", &dir);
    let conf = conf(&subnet_file, &dir);
    let pods: Vec<Pod> = (0..100).map(|_| Pod::new()).collect();
    let addresses: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                s.spawn(|| address_of(&ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &pod.id(), &pod.path(), &conf))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 100, "{addresses:?}");
    assert_eq!(allocations(&conf).len(), 100);
    assert_eq!(host_veths(&lab, 1), 100);
    assert!(pods[0].ping(&addresses[99]), "pods on one bridge reach each other");
    std::thread::scope(|s| {
        for pod in &pods {
            s.spawn(|| ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &pod.id(), &pod.path(), &conf)));
        }
    });
    assert!(allocations(&conf).is_empty());
    assert_eq!(host_veths(&lab, 1), 0);
}

#[test]
fn add_past_the_last_free_address_fails_clearly_and_leaks_nothing() {
    require_root();
    let dir = TempDir::new();
    // A /29: .1 is the gateway, .7 the broadcast address, so .2-.6 are the 5 container addresses.
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/29", &dir);
    let conf = conf(&subnet_file, &dir);
    let pods: Vec<Pod> = (0..6).map(|_| Pod::new()).collect();
    for pod in &pods[..5] {
        ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &pod.id(), &pod.path(), &conf));
    }
    let before = (allocations(&conf), host_veths(&lab, 1));
    let run = cni(&lab, 1, Path::new(PLUGIN), "ADD", &pods[5].id(), &pods[5].path(), &conf);
    assert!(!run.ok);
    assert_eq!(run.json["code"], 101, "{}", run.raw);
    assert!(run.raw.contains("no free address left in 10.244.9.0/29"), "{}", run.raw);
    assert_eq!((allocations(&conf), host_veths(&lab, 1)), before, "nothing leaked");
    assert!(!pods[5].sh(&["ip", "link", "show", "eth0"]).status.success(), "no half veth in the pod");
    // A failure after the address was taken (the pod already has an eth0) gives it back and leaves no veth.
    ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &pods[0].id(), &pods[0].path(), &conf));
    assert!(pods[5].sh(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]).status.success());
    let run = cni(&lab, 1, Path::new(PLUGIN), "ADD", &pods[5].id(), &pods[5].path(), &conf);
    assert!(!run.ok, "{}", run.raw);
    assert_eq!(allocations(&conf).len(), 4, "the address taken for the failed ADD was released: {}", run.raw);
    assert_eq!(host_veths(&lab, 1), 4);
    // DEL needs no subnet file (weftd may be gone already).
    std::fs::remove_file(&subnet_file).unwrap();
    for pod in &pods[1..5] {
        ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &pod.id(), &pod.path(), &conf));
    }
    assert!(allocations(&conf).is_empty());
    assert_eq!(host_veths(&lab, 1), 0);
}

#[test]
fn gc_releases_stale_allocations() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/24", &dir);
    let mut conf = conf(&subnet_file, &dir);
    conf["cniVersion"] = json!("1.1.0");
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let kept = address_of(&ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &pods[0].id(), &pods[0].path(), &conf)));
    for pod in &pods[1..] {
        ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &pod.id(), &pod.path(), &conf));
    }
    assert_eq!(allocations(&conf).len(), 3);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": pods[0].id(), "ifname": "eth0"}]);
    ok(cni(&lab, 1, Path::new(PLUGIN), "GC", "", "", &gc));
    assert_eq!(allocations(&conf), vec![kept]);
}

#[test]
fn chained_portmap_and_tuning_accept_the_result_as_prev_result() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/24", &dir);
    let base = conf(&subnet_file, &dir);
    let name = base["name"].clone();
    let pod = Pod::new();
    // The conflist's plugins, each run with the previous result as prevResult, as libcni does.
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
                         "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}});
    let tuning = json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "1"}});
    let ours = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &pod.id(), &pod.path(), &base));
    let mut prev = ours.clone();
    for plugin in [&portmap, &tuning] {
        let mut c = plugin.clone();
        c["cniVersion"] = json!("1.0.0");
        c["name"] = name.clone();
        c["prevResult"] = prev.clone();
        let binary = Path::new(REFERENCE_PLUGINS).join(c["type"].as_str().unwrap());
        prev = ok(cni(&lab, 1, &binary, "ADD", &pod.id(), &pod.path(), &c));
    }
    assert_eq!(address_of(&prev), address_of(&ours), "the final result still carries our address");
    let rp = pod.sh(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"]);
    assert_eq!(String::from_utf8_lossy(&rp.stdout).trim(), "1", "tuning found eth0 through our result");
    let nat = lab.host_sh(1, &["iptables-save", "-t", "nat"]);
    assert!(nat.contains("--dport 18080") && nat.contains(&address_of(&prev)), "portmap used our address:\n{nat}");
    // DEL in reverse order, also through the chain.
    for plugin in [&tuning, &portmap] {
        let mut c = plugin.clone();
        c["cniVersion"] = json!("1.0.0");
        c["name"] = name.clone();
        let binary = Path::new(REFERENCE_PLUGINS).join(c["type"].as_str().unwrap());
        ok(cni(&lab, 1, &binary, "DEL", &pod.id(), &pod.path(), &c));
    }
    ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &pod.id(), &pod.path(), &base));
    assert!(!lab.host_sh(1, &["iptables-save", "-t", "nat"]).contains("--dport 18080"));
    assert!(allocations(&base).is_empty());
}

#[test]
fn a_flannel_conflist_works_with_the_binary_named_flannel() {
    require_root();
    let lab = lab_with_weftd(1);
    let dir = TempDir::new();
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let flannel = bin.join("flannel");
    std::fs::copy(PLUGIN, &flannel).unwrap();
    // The upstream kube-flannel network config, with our own name and store.
    let conf = json!({
        "cniVersion": "0.3.1",
        "name": unique("cbr"),
        "type": "flannel",
        "subnetFile": lab.subnet_file(1),
        "dataDir": dir.0.join("flannel"),
        "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        "ipam": {"dataDir": dir.0.join("ipam")},
    });
    // flannel's own per-container state from before the switch is cleaned up by DEL.
    std::fs::create_dir_all(dir.0.join("flannel")).unwrap();
    let pod = Pod::new();
    std::fs::write(dir.0.join("flannel").join(pod.id()), "{}").unwrap();
    let result = ok(cni(&lab, 1, &flannel, "ADD", &pod.id(), &pod.path(), &conf));
    let subnet = lab.subnet_env(1).unwrap().subnet.unwrap();
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(result["ips"][0]["version"], "4", "0.3.x results name the IP version: {result}");
    let routes = String::from_utf8_lossy(&pod.sh(&["ip", "route"]).stdout).into_owned();
    assert!(routes.contains(&format!("default via {}", subnet.ip())), "isDefaultGateway: {routes}");
    let link = lab.host_sh(1, &["ip", "-d", "link", "show", result["interfaces"][1]["name"].as_str().unwrap()]);
    assert!(link.contains("hairpin on") && link.contains("master cni0"), "{link}");
    // ipMasq defaults to !FLANNEL_IPMASQ (false here), so the subnet is masqueraded, once, by the plugin: through
    // iptables, which this host has.
    let name = conf["name"].as_str().unwrap();
    let chain = format!("{}-MASQ", cni_masq::table_id(name, Family::V4).name.to_ascii_uppercase());
    let nat = lab.host_sh(1, &["iptables-save", "-t", "nat"]);
    let base = format!("{}/{}", subnet.network(), subnet.prefix());
    assert!(nat.contains(&format!("-A POSTROUTING -j {chain}")), "{nat}");
    assert!(
        nat.contains(&format!(
            "-A {chain} -s {base} -d 10.244.0.0/16 -m comment --comment \"weft-cni {name}\" -j RETURN"
        )),
        "{nat}"
    );
    assert!(
        nat.contains(&format!(
            "-A {chain} -s {base} ! -d 224.0.0.0/4 -m comment --comment \"weft-cni {name}\" -j MASQUERADE"
        )),
        "{nat}"
    );
    ok(cni(&lab, 1, &flannel, "DEL", &pod.id(), &pod.path(), &conf));
    assert!(!dir.0.join("flannel").join(pod.id()).exists());
    // The network's last container is gone, and so are its chain and the jump into it.
    assert!(!lab.host_sh(1, &["iptables-save", "-t", "nat"]).contains(&chain));
    assert_eq!(host_veths(&lab, 1), 0);
}

/// A directory holding only a link to `nft`: as PATH, a host with nftables and no iptables program.
fn nft_only_path(dir: &TempDir) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let nft = std::env::split_paths(&path).map(|d| d.join("nft")).find(|p| p.is_file()).expect("nft is installed");
    let bin = dir.0.join("nft-only");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(nft, bin.join("nft")).unwrap();
    bin
}

/// ipMasq on a host with nftables and no iptables program: the plugin's table (the rule model rendered for nft)
/// masquerades the pods (the lab's etcd address, which has no route back to the pods, answers them), a flushed
/// table comes back on CHECK, and the table goes with the network's last container.
#[test]
fn ip_masq_without_iptables_goes_through_nftables_comes_back_on_check_and_leaves_with_the_last_pod() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.7.1/24", &dir);
    let path = nft_only_path(&dir);
    let mut conf = conf(&subnet_file, &dir);
    conf["ipMasq"] = json!(true);
    let name = conf["name"].as_str().unwrap().to_string();
    let table = cni_masq::table_id(&name, Family::V4).name;
    let pods = [Pod::new(), Pod::new()];
    let plugin = Path::new(PLUGIN);
    let run = |command: &str, pod: &Pod, conf: &Value| {
        cni_with_path(&lab, 1, plugin, command, (&pod.id(), &pod.path()), conf, Some(&path))
    };
    let results: Vec<Value> = pods.iter().map(|pod| ok(run("ADD", pod, &conf))).collect();
    let listing = lab.host_sh(1, &["nft", "list", "table", "ip", &table]);
    assert!(
        listing.contains("ip saddr 10.244.7.0/24 ip daddr != 224.0.0.0/4 masquerade")
            && listing.contains(&format!("weft-cni {name}")),
        "{listing}"
    );
    assert!(!lab.host_sh(1, &["iptables-save", "-t", "nat"]).contains("WEFT-CNI"), "nothing went to iptables");
    const OUTSIDE: &str = "198.18.0.254";
    common::eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        pods[0].ping(OUTSIDE).then_some(()).ok_or_else(|| "no answer from outside the cluster network".to_string())
    });

    lab.host_sh(1, &["nft", "flush", "table", "ip", &table]);
    assert!(!lab.host_sh(1, &["nft", "list", "table", "ip", &table]).contains("masquerade"));
    let mut check = conf.clone();
    check["prevResult"] = results[0].clone();
    ok(run("CHECK", &pods[0], &check));
    assert_eq!(lab.host_sh(1, &["nft", "list", "table", "ip", &table]), listing, "CHECK put the table back");

    ok(run("DEL", &pods[0], &conf));
    assert!(lab.host_sh(1, &["nft", "list", "tables"]).contains(&table), "one pod of the network is left");
    ok(run("DEL", &pods[1], &conf));
    assert!(!lab.host_sh(1, &["nft", "list", "tables"]).contains(&table), "the last pod took the table along");
    ok(run("DEL", &pods[1], &conf));
}

/// The plugin's ipMasq with weftd running and not masquerading (FLANNEL_IPMASQ=false): weftd reads the plugin's
/// record on each resync and puts a flushed table back without any CHECK, through iptables on a host that has it
/// and through nftables where the plugin's PATH has only `nft`; after the network's last DEL the record is gone
/// and weftd leaves the table gone.
#[test]
fn weftd_restores_a_flushed_plugin_masquerade_table_and_leaves_it_gone_after_the_last_del() {
    require_root();
    let lab = TestLab::from_spec(LabSpec {
        start_weftd: false,
        extra_weftd_args: ["--resync-interval", "1s"].map(String::from).to_vec(),
        ..TestLab::spec(1)
    });
    lab.start_weftd(1).unwrap();
    lab.wait_for_subnet_env(1, Duration::from_secs(20)).unwrap();
    assert!(!lab.subnet_env(1).unwrap().ipmasq, "weftd leaves masquerading to the plugin");
    let dir = TempDir::new();
    let nft_only = nft_only_path(&dir);
    let plugin = Path::new(PLUGIN);
    for path in [None, Some(nft_only.as_path())] {
        let mut conf = conf(&lab.subnet_file(1), &dir);
        // ipMasq's default, !FLANNEL_IPMASQ.
        conf.as_object_mut().unwrap().remove("ipMasq");
        let name = conf["name"].as_str().unwrap().to_string();
        let table = cni_masq::table_id(&name, Family::V4).name;
        let chain = format!("{}-MASQ", table.to_ascii_uppercase());
        // What the host holds of the network's masquerade rules, in whichever firewall the plugin chose.
        let rules = || match path {
            None => lab
                .host_sh(1, &["iptables-save", "-t", "nat"])
                .lines()
                .filter(|l| l.contains(&chain))
                .collect::<Vec<_>>()
                .join("\n"),
            Some(_) => {
                let tables = lab.host_sh(1, &["nft", "list", "tables"]);
                if tables.contains(&table) {
                    lab.host_sh(1, &["nft", "list", "table", "ip", &table])
                } else {
                    String::new()
                }
            }
        };
        let pod = Pod::new();
        ok(cni_with_path(&lab, 1, plugin, "ADD", (&pod.id(), &pod.path()), &conf, path));
        let wanted = rules();
        assert!(wanted.contains("masquerade") || wanted.contains("MASQUERADE"), "{path:?}: {wanted}");

        match path {
            None => lab.host_sh(1, &["iptables", "-w", "-t", "nat", "-F", &chain]),
            Some(_) => lab.host_sh(1, &["nft", "flush", "table", "ip", &table]),
        };
        assert_ne!(rules(), wanted, "flushed");
        common::eventually(Duration::from_secs(10), Duration::from_millis(200), || {
            (rules() == wanted).then_some(()).ok_or_else(|| format!("{path:?}: not restored: {}", rules()))
        });

        ok(cni_with_path(&lab, 1, plugin, "DEL", (&pod.id(), &pod.path()), &conf, path));
        assert_eq!(rules(), "", "{path:?}: the last pod took the table along");
        // Three resyncs later weftd still has not put it back.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(rules(), "", "{path:?}: weftd recreated a table the plugin removed");
    }
    assert!(lab.weftd_running(1), "{}", lab.log_tails());
}

#[test]
fn a_dual_stack_subnet_file_gives_pods_ipv6_too() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/24", &dir);
    let mut text = std::fs::read_to_string(&subnet_file).unwrap();
    text += "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:9::1/64\n";
    std::fs::write(&subnet_file, text).unwrap();
    let conf = conf(&subnet_file, &dir);
    let pods = [Pod::new(), Pod::new()];
    let results: Vec<Value> =
        pods.iter().map(|p| ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &p.id(), &p.path(), &conf))).collect();
    let v6 = |r: &Value| r["ips"][1]["address"].as_str().unwrap().split('/').next().unwrap().to_string();
    assert_eq!(results[0]["ips"][1]["gateway"], "fd00:10:244:9::1", "{}", results[0]);
    assert!(v6(&results[0]).starts_with("fd00:10:244:9::"));
    assert_eq!(allocations(&conf).len(), 4, "an IPv4 and an IPv6 address per pod");
    let routes = String::from_utf8_lossy(&pods[0].sh(&["ip", "-6", "route"]).stdout).into_owned();
    assert!(routes.contains("default via fd00:10:244:9::1") && routes.contains("fd00:10:244::/56 via"), "{routes}");
    let ping = pods[0].sh(&["ping", "-6", "-c1", "-W2", &v6(&results[1])]);
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));
    let gw = pods[0].sh(&["ping", "-6", "-c1", "-W2", "fd00:10:244:9::1"]);
    assert!(gw.status.success(), "the IPv6 gateway on cni0 answers");
    for p in &pods {
        ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &p.id(), &p.path(), &conf));
    }
    assert!(allocations(&conf).is_empty());
}

#[test]
fn another_ipam_type_is_run_from_cni_path() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/24", &dir);
    let mut conf = conf(&subnet_file, &dir);
    // The reference `static` IPAM plugin, found through CNI_PATH; it ignores the ranges flannel-style IPAM gets.
    conf["ipam"] = json!({"type": "static", "addresses": [{"address": "10.244.9.77/24", "gateway": "10.244.9.1"}]});
    let pod = Pod::new();
    let result = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &pod.id(), &pod.path(), &conf));
    assert_eq!(result["ips"][0]["address"], "10.244.9.77/24", "{result}");
    let addr = String::from_utf8_lossy(&pod.sh(&["ip", "-4", "-o", "addr", "show", "eth0"]).stdout).into_owned();
    assert!(addr.contains("10.244.9.77/24"), "{addr}");
    assert!(pod.ping("10.244.9.1"), "the gateway answers");
    ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &pod.id(), &pod.path(), &conf));
    assert_eq!(host_veths(&lab, 1), 0);
    // An IPAM plugin that is not on CNI_PATH is named.
    conf["ipam"]["type"] = json!("no-such-ipam");
    let run = cni(&lab, 1, Path::new(PLUGIN), "ADD", &pod.id(), &pod.path(), &conf);
    assert_eq!(run.json["code"], 7, "{}", run.raw);
    assert!(run.raw.contains("no-such-ipam") && run.raw.contains("CNI_PATH"), "{}", run.raw);
}

/// A node rolled back from weft's plugin to flannel's: flannel's DEL runs the delegate with the netconf stored
/// under `dataDir` at ADD. weft stores flannel's netconf, so the reference bridge plugin (what flannel's plugin
/// runs) removes the container's interface and host-local releases its address: nothing leaks.
#[test]
fn a_container_weft_added_is_deleted_by_flannels_delegate_without_leaks() {
    require_root();
    let lab = lab_with_weftd(1);
    let dir = TempDir::new();
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let flannel = bin.join("flannel");
    std::fs::copy(PLUGIN, &flannel).unwrap();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": unique("cbr"),
        "type": "flannel",
        "subnetFile": lab.subnet_file(1),
        "dataDir": dir.0.join("flannel"),
        "delegate": {"hairpinMode": true, "isDefaultGateway": true, "ipMasq": false},
        "ipam": {"dataDir": dir.0.join("ipam")},
        "runtimeConfig": {"portMappings": []},
    });
    let pod = Pod::new();
    let result = ok(cni(&lab, 1, &flannel, "ADD", &pod.id(), &pod.path(), &conf));
    assert_eq!(allocations(&conf), vec![address_of(&result)]);
    let state_path = dir.0.join("flannel").join(pod.id());
    let stored: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let subnet = lab.subnet_env(1).unwrap().subnet.unwrap();
    assert_eq!(stored["type"], "bridge");
    assert_eq!(stored["name"], conf["name"]);
    assert_eq!(stored["runtimeConfig"], json!({"portMappings": []}));
    assert_eq!(stored["ipam"]["ranges"][0][0]["subnet"], format!("{}/{}", subnet.network(), subnet.prefix()));
    assert_eq!(stored["ipam"]["dataDir"], conf["ipam"]["dataDir"]);
    assert_eq!(host_veths(&lab, 1), 1);

    // What flannel's plugin does on DEL: the stored netconf, handed to the delegate it names.
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    ok(cni(&lab, 1, &bridge, "DEL", &pod.id(), &pod.path(), &stored));
    assert!(allocations(&conf).is_empty(), "host-local released weft's allocation");
    assert_eq!(host_veths(&lab, 1), 0, "the bridge plugin removed weft's veth");
    // weft's own DEL afterwards (a runtime retrying) finds nothing to do and succeeds.
    ok(cni(&lab, 1, &flannel, "DEL", &pod.id(), &pod.path(), &conf));
    assert!(!state_path.exists());
}

/// What weft does not do in process is delegated exactly as flannel's plugin does: a macvlan delegate and bridge
/// options weft does not implement run the reference plugins from CNI_PATH with flannel's delegate netconf, whose
/// stored copy drives DEL. Nothing leaks.
#[test]
fn delegates_weft_does_not_implement_run_from_cni_path() {
    require_root();
    let lab = lab_with_weftd(1);
    let dir = TempDir::new();
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let flannel = bin.join("flannel");
    std::fs::copy(PLUGIN, &flannel).unwrap();
    let subnet = lab.subnet_env(1).unwrap().subnet.unwrap();
    for delegate in [
        json!({"type": "macvlan", "master": "eth0", "mode": "bridge", "ipMasq": false}),
        json!({"promiscMode": true, "isDefaultGateway": true, "ipMasq": false}),
    ] {
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": unique("dlg"),
            "type": "flannel",
            "subnetFile": lab.subnet_file(1),
            "dataDir": dir.0.join("flannel"),
            "delegate": delegate,
            "ipam": {"dataDir": dir.0.join("ipam")},
        });
        let pod = Pod::new();
        let result = ok(cni(&lab, 1, &flannel, "ADD", &pod.id(), &pod.path(), &conf));
        let address = address_of(&result);
        assert!(subnet.contains(address.parse().unwrap()), "{address} from the host's subnet {subnet}");
        assert_eq!(allocations(&conf), vec![address.clone()], "{delegate}");
        let stored: Value =
            serde_json::from_slice(&std::fs::read(dir.0.join("flannel").join(pod.id())).unwrap()).unwrap();
        let link = String::from_utf8_lossy(&pod.sh(&["ip", "-d", "link", "show", "eth0"]).stdout).into_owned();
        if stored["type"] == "macvlan" {
            assert!(link.contains("macvlan mode bridge"), "{link}");
        } else {
            assert_eq!(stored["promiscMode"], true);
            let bridge = lab.host_sh(1, &["ip", "-d", "link", "show", "cni0"]);
            assert!(bridge.contains("PROMISC"), "promiscMode reached the bridge plugin: {bridge}");
        }
        ok(cni(&lab, 1, &flannel, "DEL", &pod.id(), &pod.path(), &conf));
        assert!(allocations(&conf).is_empty(), "{delegate}: the delegate's IPAM released the address");
        assert!(!dir.0.join("flannel").join(pod.id()).exists());
    }
    assert_eq!(host_veths(&lab, 1), 0);
}

/// The other way round: a container flannel's plugin ADDed (the reference bridge and host-local plugins with
/// flannel's delegate netconf, stored under dataDir) is DELeted by weft without leaking.
#[test]
fn a_container_flannels_delegate_added_is_deleted_by_weft_without_leaks() {
    require_root();
    let lab = lab_with_weftd(1);
    let dir = TempDir::new();
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let flannel = bin.join("flannel");
    std::fs::copy(PLUGIN, &flannel).unwrap();
    let env = lab.subnet_env(1).unwrap();
    let subnet = env.subnet.unwrap();
    let name = unique("cbr");
    let conf = json!({
        "cniVersion": "1.0.0", "name": name, "type": "flannel", "subnetFile": lab.subnet_file(1),
        "dataDir": dir.0.join("flannel"), "delegate": {"hairpinMode": true, "ipMasq": false},
        "ipam": {"dataDir": dir.0.join("ipam")},
    });
    // The netconf flannel's plugin builds for this conflist and stores before running the bridge plugin.
    let flannels = json!({
        "cniVersion": "1.0.0", "name": name, "type": "bridge", "hairpinMode": true, "ipMasq": false,
        "isGateway": true, "mtu": env.mtu,
        "ipam": {"type": "host-local", "dataDir": dir.0.join("ipam"),
                 "ranges": [[{"subnet": format!("{}/{}", subnet.network(), subnet.prefix())}]],
                 "routes": [{"dst": "10.244.0.0/16"}]},
    });
    let pod = Pod::new();
    std::fs::create_dir_all(dir.0.join("flannel")).unwrap();
    std::fs::write(dir.0.join("flannel").join(pod.id()), flannels.to_string()).unwrap();
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    ok(cni(&lab, 1, &bridge, "ADD", &pod.id(), &pod.path(), &flannels));
    assert_eq!(allocations(&conf).len(), 1);
    assert_eq!(host_veths(&lab, 1), 1);
    ok(cni(&lab, 1, &flannel, "DEL", &pod.id(), &pod.path(), &conf));
    assert!(allocations(&conf).is_empty(), "weft released host-local's allocation");
    assert_eq!(host_veths(&lab, 1), 0, "weft removed the bridge plugin's veth");
    assert!(!dir.0.join("flannel").join(pod.id()).exists());
}

/// A runtime repeating ADD (after a timeout, or a restart) gets the earlier result back when the attachment is the
/// same; the same container ID and interface with another netns are refused, and the first pod keeps its eth0 and
/// its one address, whichever IPAM holds it.
#[test]
fn a_repeated_add_returns_the_existing_result_and_never_touches_another_netns() {
    require_root();
    let dir = TempDir::new();
    let (lab, subnet_file) = lab_with_subnet("10.244.9.1/24", &dir);
    let conf = conf(&subnet_file, &dir);
    let (first, other) = (Pod::new(), Pod::new());
    let id = first.id();
    let added = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &first.path(), &conf));
    let again = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &first.path(), &conf));
    assert_eq!(again, added, "the same result, interfaces and MACs included");
    assert_eq!((allocations(&conf).len(), host_veths(&lab, 1)), (1, 1), "no second address, no second veth");
    assert!(first.ping("10.244.9.1"), "the pod still reaches its gateway");

    let eth0 = |pod: &Pod| String::from_utf8_lossy(&pod.sh(&["ip", "-o", "addr", "show", "eth0"]).stdout).into_owned();
    let before = eth0(&first);
    // The first pod pings its gateway every 50 ms while the repeats run: not one reply may go missing.
    let pinging = Command::new("ip")
        .args(["netns", "exec", &first.ns, "ping", "-i", "0.05", "-W", "1", "-q", "-c", "100000", "10.244.9.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let run = cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &other.path(), &conf);
    assert!(!run.ok, "{}", run.raw);
    assert_eq!(run.json["code"], 4, "{}", run.raw);
    let ip = address_of(&added);
    for part in [format!("container {id} already has eth0 with {ip}"), "another network namespace".to_string()] {
        assert!(run.raw.contains(&part), "{part:?} not in {}", run.raw);
    }
    assert_eq!(eth0(&first), before, "the first pod's eth0 is untouched");
    assert!(!other.sh(&["ip", "link", "show", "eth0"]).status.success(), "nothing was made in the other netns");
    assert_eq!((allocations(&conf).len(), host_veths(&lab, 1)), (1, 1));
    let again = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &first.path(), &conf));
    assert_eq!(again, added);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill on the pid of a child we spawned and have not waited for yet (SIGINT: ping prints its summary).
    unsafe { libc::kill(pinging.id() as i32, libc::SIGINT) };
    let summary = String::from_utf8_lossy(&pinging.wait_with_output().unwrap().stdout).into_owned();
    let line = summary.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{summary}"));
    let counts: Vec<&str> = line.split(", ").map(|part| part.split(' ').next().unwrap()).collect();
    assert!(counts[0].parse::<u32>().unwrap() >= 5, "{line}");
    assert_eq!(counts[0], counts[1], "the first pod lost pings during the repeated ADDs: {line}");
    ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &id, &first.path(), &conf));
    assert_eq!((allocations(&conf).len(), host_veths(&lab, 1)), (0, 0));

    // An IPAM plugin keeps its own records: the host end tells whether the attachment is here or elsewhere.
    let mut with_static = conf.clone();
    with_static["ipam"] =
        json!({"type": "static", "addresses": [{"address": "10.244.9.77/24", "gateway": "10.244.9.1"}]});
    let added = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &first.path(), &with_static));
    let before = eth0(&first);
    let again = ok(cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &first.path(), &with_static));
    assert_eq!(again, added, "the same netns again: the existing result");
    assert_eq!(eth0(&first), before, "and nothing was made again");
    let run = cni(&lab, 1, Path::new(PLUGIN), "ADD", &id, &other.path(), &with_static);
    assert_eq!(run.json["code"], 4, "{}", run.raw);
    assert!(run.raw.contains("lives in another network namespace"), "{}", run.raw);
    assert_eq!(eth0(&first), before, "the first pod's eth0 is untouched");
    assert!(!other.sh(&["ip", "link", "show", "eth0"]).status.success());
    assert!(first.ping("10.244.9.1"));
    ok(cni(&lab, 1, Path::new(PLUGIN), "DEL", &id, &first.path(), &with_static));
    assert_eq!(host_veths(&lab, 1), 0);
}
