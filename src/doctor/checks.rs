//! The checks: pure functions from [`Facts`] to a [`Check`], each problem with what is wrong, why it matters and
//! the fix. [`all`] runs them in the order a person would look: the daemon and etcd first, then this host's files
//! and kernel switches, then the kernel state and firewall weft keeps, then the CNI set-up, then the leases.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use weft_backends::diff::{diff, Op};
use weft_backends::model::{render_link, render_route, LinkKind};
use weft_backends::rules::foreign::diff_foreign;
use weft_backends::rules::traffic::FORWARD_COMMENT;
use weft_backends::rules::{diff_rules, Hook, Policy, RuleOp};
use weft_backends::trust::RejectReason;
use weft_backends::Family;

use super::facts::{Facts, FileState, KernelFacts};
use crate::config::NetworkConfig;
use crate::lease::{Lease, SubnetKey};
use crate::registry::LeaseSet;
use crate::status_cmd::human_duration;
use crate::subnet_file;
use crate::trust::{self, TrustPolicy};

/// How a check came out; also a problem's severity. Ordered: the worst is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    /// The facts it needs could not be gathered (said in `detail`), and another check reports why.
    Skipped,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Outcome,
    /// What is wrong and what it breaks.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A stable name (`ip-forward`), for scripts and docs/troubleshooting.md.
    pub id: &'static str,
    pub title: &'static str,
    pub outcome: Outcome,
    /// What was found when nothing is wrong, or why the check was skipped.
    pub detail: String,
    pub problems: Vec<Problem>,
}

impl Check {
    fn new(id: &'static str, title: &'static str) -> Check {
        Check { id, title, outcome: Outcome::Ok, detail: String::new(), problems: Vec::new() }
    }

    fn fail(&mut self, problem: impl Into<String>, fix: impl Into<String>) {
        self.add(Outcome::Fail, problem.into(), fix.into());
    }

    fn warn(&mut self, problem: impl Into<String>, fix: impl Into<String>) {
        self.add(Outcome::Warn, problem.into(), fix.into());
    }

    fn add(&mut self, severity: Outcome, problem: String, fix: String) {
        self.outcome = self.outcome.max(severity);
        self.problems.push(Problem { severity, problem, fix });
    }

    fn skipped(mut self, why: impl Into<String>) -> Check {
        self.outcome = Outcome::Skipped;
        self.detail = why.into();
        self
    }

    fn detail(mut self, detail: impl Into<String>) -> Check {
        self.detail = detail.into();
        self
    }
}

/// Every check, in order.
pub fn all(facts: &Facts) -> Vec<Check> {
    vec![
        weftd(facts),
        etcd(facts),
        subnet_file_check(facts),
        ip_forward(facts),
        mtu(facts),
        tunnel_device(facts),
        routes(facts),
        neighbours(facts),
        fdb(facts),
        firewall(facts),
        br_netfilter(facts),
        cni(facts),
        leases(facts),
    ]
}

/// The worst outcome (Ok for no checks).
pub fn worst(checks: &[Check]) -> Outcome {
    checks.iter().map(|c| c.outcome).max().unwrap_or(Outcome::Ok)
}

// ----- shared views of the facts -----

fn config(facts: &Facts) -> Option<NetworkConfig> {
    let text = facts.store.as_ref().ok()?.config.as_ref()?;
    NetworkConfig::validate(text).ok().map(|(c, _)| c)
}

/// The subnet this host holds: the subnet file's, else weftd's.
fn own_key(facts: &Facts) -> Option<SubnetKey> {
    if let FileState::Present(file) = &facts.subnet_file.state {
        if let Some(key) = subnet_file::lease_key(file) {
            return Some(key);
        }
    }
    facts.weftd.as_ref().ok()?.lease.as_ref()?.key.parse().ok()
}

fn own_lease(facts: &Facts) -> Option<&Lease> {
    let key = own_key(facts)?;
    facts.store.as_ref().ok()?.listing.leases.iter().find(|l| l.key == key)
}

fn weftd_runs(facts: &Facts) -> bool {
    facts.weftd.is_ok()
}

/// The fix for kernel state weft owns: weftd puts it back.
fn repair_fix(facts: &Facts) -> String {
    if weftd_runs(facts) {
        "weftd puts it back on its next pass (at once on a netlink event, else within --resync-interval); if it \
         stays, weftd's log says why (\"operation failed\"), or something keeps undoing it (\"repaired drift\")"
            .to_string()
    } else {
        "start weftd (systemctl start weftd): its first pass programs the kernel and the firewall as the leases say"
            .to_string()
    }
}

// ----- the checks -----

pub fn weftd(facts: &Facts) -> Check {
    let mut c = Check::new("weftd", "weftd runs and is ready");
    let status = match &facts.weftd {
        Ok(status) => status,
        Err(e) => {
            c.fail(
                format!("weftd does not answer at {}: {e}", facts.weftd_endpoint),
                "start weftd (systemctl start weftd). weftctl asks weftd's health endpoint: run weftd with \
                 --healthz-port 8081 (and --healthz-ip 127.0.0.1), or point weftctl at it with --weftd HOST:PORT",
            );
            return c;
        }
    };
    if !status.ready {
        c.fail(
            "weftd runs but is not ready: it is waiting for etcd, a network config or a subnet lease, and the CNI \
             plugin has no subnet file to work with",
            "weftd's log says what it waits for (journalctl -u weftd); the etcd and subnet-file checks below say more",
        );
    }
    if let Some(pass) = &status.last_reconcile {
        for failure in &pass.failures {
            c.fail(
                format!("weftd's last reconcile pass ({}) failed: {failure}", pass.trigger),
                "weftd retries with backoff; the error says what the kernel or firewall refused (a device someone \
                 else owns, a missing iptables or nft program, a full table)",
            );
        }
    }
    if status.version != facts.version {
        c.warn(
            format!("weftd is version {}, weftctl {}", status.version, facts.version),
            "install weftd, weftctl and the plugin from the same release",
        );
    }
    let pass = status.last_reconcile.as_ref().map_or("no reconcile pass yet".to_string(), |p| {
        format!("{} passes, the last one applied {} operations", p.passes, p.ops_applied)
    });
    c.detail(format!("version {}, {pass}", status.version))
}

pub fn etcd(facts: &Facts) -> Check {
    let mut c = Check::new("etcd", "etcd is reachable and holds a valid network config");
    let store = match &facts.store {
        Ok(store) => store,
        Err(e) => {
            c.fail(
                format!("cannot read etcd: {e}"),
                "check --etcd-endpoints and the TLS flags (--etcd-cafile, --etcd-certfile, --etcd-keyfile) and etcd \
                 itself: etcdctl --endpoints <endpoints> endpoint health",
            );
            return c;
        }
    };
    match &store.config {
        None => c.fail(
            format!("there is no network config at {}: weftd waits for one and programs nothing", store.config_key),
            "weftctl config set '{\"Network\":\"10.244.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}}'",
        ),
        Some(text) => {
            if let Err(e) = NetworkConfig::validate(text) {
                c.fail(
                    format!("the network config at {} is invalid: {e}", store.config_key),
                    "write a valid one with weftctl config set (it validates as weftd does)",
                );
            }
        }
    }
    if let Ok(status) = &facts.weftd {
        if status.ready && !status.store.connected {
            c.fail(
                "weftd has lost its etcd watch: lease changes (hosts joining, leaving, moving) are not programmed \
                 until it is back",
                "weftd reconnects with backoff by itself; check the network path from this host to etcd and etcd's \
                 health",
            );
        }
    }
    let leases = store.listing.leases.len() + store.listing.problems.len();
    c.detail(format!("{} answers, {leases} leases", store.endpoints))
}

pub fn subnet_file_check(facts: &Facts) -> Check {
    let mut c = Check::new("subnet-file", "the subnet file is present and matches the lease");
    let path = &facts.subnet_file.path;
    let file = match &facts.subnet_file.state {
        FileState::Missing => {
            c.fail(
                format!(
                    "{path} does not exist: weftd writes it once it holds a lease and has programmed the kernel; \
                         until then the CNI plugin cannot give containers an address"
                ),
                "start weftd; if it runs, its log says what it waits for. If weftd writes another path, pass that \
                 path with --subnet-file",
            );
            return c;
        }
        FileState::Invalid(e) => {
            c.fail(format!("{path} cannot be used: {e}"), "restart weftd: it rewrites the file from its lease");
            return c;
        }
        FileState::Present(file) => file,
    };
    let Some(key) = subnet_file::lease_key(file) else {
        c.fail(format!("{path} names no subnet"), "restart weftd: it rewrites the file from its lease");
        return c;
    };
    if let Ok(store) = &facts.store {
        if !store.listing.leases.iter().any(|l| l.key == key) {
            c.fail(
                format!(
                    "{path} says this host has {key}, but etcd holds no lease for it: another host may be given \
                         that subnet, and containers here would clash with its"
                ),
                "restart weftd: it re-acquires a lease, preferring the subnet in the file",
            );
        }
    }
    if let Some(held) = facts.weftd.as_ref().ok().and_then(|s| s.lease.as_ref()) {
        if held.key != key.to_string() {
            c.fail(
                format!(
                    "{path} says {key}, but weftd holds {}: new containers get addresses of the wrong subnet",
                    held.key
                ),
                format!(
                    "weftd rewrites the file when its lease changes; is {path} the file this weftd writes \
                         (its --subnet-file)? If so, restart weftd"
                ),
            );
        }
    }
    if let Some(config) = config(facts) {
        for family in Family::ALL {
            let (written, configured) = match family {
                Family::V4 => (file.network, config.networks.v4.as_ref().map(|c| c.network)),
                Family::V6 => (file.ipv6_network, config.networks.v6.as_ref().map(|c| c.network)),
            };
            if written != configured {
                let show = |n: Option<ipnetwork::IpNetwork>| n.map_or("none".to_string(), |n| n.to_string());
                c.fail(
                    format!(
                        "{path} has the {family} network {}, the network config {}: the CNI plugin and weftd \
                             disagree about the cluster network",
                        show(written),
                        show(configured)
                    ),
                    "restart weftd: it reads the config at startup and rewrites the file",
                );
            }
        }
    }
    c.detail(format!("{path}: {key}, FLANNEL_MTU {}", file.mtu))
}

pub fn ip_forward(facts: &Facts) -> Check {
    let mut c = Check::new("ip-forward", "the kernel forwards packets");
    let families = match config(facts) {
        Some(config) => config.families(),
        None => match &facts.subnet_file.state {
            FileState::Present(f) => Family::ALL
                .into_iter()
                .filter(|f2| if *f2 == Family::V4 { f.subnet.is_some() } else { f.ipv6_subnet.is_some() })
                .collect(),
            _ => vec![Family::V4],
        },
    };
    let mut seen = Vec::new();
    for family in families {
        let name = match family {
            Family::V4 => "net.ipv4.ip_forward",
            Family::V6 => "net.ipv6.conf.all.forwarding",
        };
        match facts.host.forwarding.get(&family) {
            Some(Ok(value)) if value.trim() == "1" => seen.push(format!("{name} = 1")),
            Some(Ok(value)) => c.fail(
                format!(
                    "{name} is {}: this host does not forward {family} packets between its pods and the \
                         tunnel, so no pod here reaches a pod on another host (and none there reaches one here)",
                    value.trim()
                ),
                format!(
                    "sysctl -w {name}=1, and keep it across reboots: echo '{name} = 1' > \
                         /etc/sysctl.d/90-weft.conf"
                ),
            ),
            Some(Err(e)) => c.warn(format!("cannot read {name}: {e}"), "run weftctl doctor as root"),
            None => c.warn(format!("{name} was not read"), "run weftctl doctor as root"),
        }
    }
    c.detail(seen.join(", "))
}

pub fn mtu(facts: &Facts) -> Check {
    let mut c = Check::new("mtu", "pods, bridge, tunnel and underlay MTUs fit together");
    let kernel = match &facts.kernel {
        Ok(k) => k,
        Err(e) => return c.skipped(e.clone()),
    };
    let want = kernel.mtu;
    for (name, link) in kernel.desired.links.iter().filter(|(_, l)| l.is_owned()) {
        let Some(now) = kernel.observed.links.get(name) else { continue };
        if now.mtu > link.mtu {
            c.fail(
                format!(
                    "{name} has MTU {}, but underlay {} (MTU {}) carries only {} after encapsulation: pod \
                         packets larger than {} are dropped on the way to other hosts",
                    now.mtu, kernel.underlay, kernel.underlay_mtu, link.mtu, link.mtu
                ),
                format!(
                    "restart weftd: it sizes {name} and FLANNEL_MTU for the underlay's MTU at startup; then \
                         recreate the pods, which keep the MTU they were created with"
                ),
            );
        } else if now.mtu < link.mtu {
            c.warn(
                format!(
                    "{name} has MTU {}, smaller than the {} the underlay {} allows",
                    now.mtu, link.mtu, kernel.underlay
                ),
                format!("restart weftd: it sets {name}'s MTU from the underlay's (or Backend.MTU)"),
            );
        }
    }
    if let FileState::Present(file) = &facts.subnet_file.state {
        if file.mtu > want {
            c.fail(
                format!(
                    "FLANNEL_MTU is {} in {}, but the tunnel carries {want}: containers created now get an \
                         MTU whose largest packets are dropped",
                    file.mtu, facts.subnet_file.path
                ),
                "restart weftd: it rewrites the subnet file with the MTU the underlay allows; then recreate the \
                 pods",
            );
        }
    }
    let bridge_name = weft_cni_config(facts).and_then(|f| f.bridge.clone()).unwrap_or_else(|| "cni0".to_string());
    if let Some(bridge) = facts.host.interfaces.iter().find(|i| i.name == bridge_name) {
        if bridge.mtu > want {
            c.fail(
                format!(
                    "bridge {bridge_name} has MTU {}, above the tunnel's {want}: packets it forwards to other \
                         hosts can be too big for the tunnel",
                    bridge.mtu
                ),
                format!("ip link set {bridge_name} mtu {want}"),
            );
        }
        for port in facts.host.interfaces.iter().filter(|i| i.master == Some(bridge.index) && i.mtu > want) {
            c.fail(
                format!(
                    "pod interface {} on {bridge_name} has MTU {}, above the tunnel's {want}: that pod's \
                         packets over {want} bytes to other hosts are dropped",
                    port.name, port.mtu
                ),
                format!(
                    "recreate the pod (the CNI plugin gives it FLANNEL_MTU), or set both ends: ip link set {} \
                         mtu {want}, and eth0 inside the pod",
                    port.name
                ),
            );
        }
    }
    if let Some(started) = facts.weftd.as_ref().ok().and_then(|s| s.backend.as_ref()) {
        if started.underlay.name == kernel.underlay && started.underlay.mtu != kernel.underlay_mtu {
            c.fail(
                format!(
                    "{}'s MTU changed from {} to {} since weftd started; weftd keeps the tunnel and FLANNEL_MTU \
                         it chose then",
                    kernel.underlay, started.underlay.mtu, kernel.underlay_mtu
                ),
                "restart weftd, then recreate the pods",
            );
        }
    }
    c.detail(format!("underlay {} {}, tunnel and pods {want}", kernel.underlay, kernel.underlay_mtu))
}

/// The kernel operations weftd would apply now.
fn kernel_ops(kernel: &KernelFacts) -> Vec<Op> {
    diff(&kernel.desired, &kernel.observed)
}

pub fn tunnel_device(facts: &Facts) -> Check {
    let mut c = Check::new("tunnel-device", "weft's devices exist, are up and have the right attributes");
    let kernel = match &facts.kernel {
        Ok(k) => k,
        Err(e) => return c.skipped(e.clone()),
    };
    let fix = repair_fix(facts);
    for op in kernel_ops(kernel) {
        match op {
            Op::CreateLink(want) => match kernel.observed.links.get(&want.name) {
                Some(now) => c.fail(
                    format!(
                        "{} is not the device weft wants: it is `{}`, weft wants `{}`; traffic to other hosts \
                             leaves with the wrong attributes or not at all",
                        want.name,
                        render_link(now),
                        render_link(&want)
                    ),
                    fix.clone(),
                ),
                None => {
                    c.fail(format!("{} is missing: no pod here reaches a pod on another host", want.name), fix.clone())
                }
            },
            Op::UpdateLink(want) => {
                let Some(now) = kernel.observed.links.get(&want.name) else { continue };
                if !now.up && want.up {
                    c.fail(format!("{} is down: no pod here reaches a pod on another host", want.name), fix.clone());
                }
                if now.mac != want.mac && want.kind.has_mac() {
                    c.fail(
                        format!(
                            "{} has MAC {}, but the lease publishes {}: other hosts send to a MAC it does not \
                                 answer",
                            want.name, now.mac, want.mac
                        ),
                        fix.clone(),
                    );
                }
                // MTU differences are the mtu check's.
            }
            Op::DeleteLink(name) => {
                c.warn(format!("{name} is a stray device of weft's (no lease wants it)"), fix.clone())
            }
            Op::AddAddress(a) => c.fail(format!("{} lacks its address {}", a.device, a.addr), fix.clone()),
            Op::DeleteAddress(a) => c.warn(format!("{} has a stray address {}", a.device, a.addr), fix.clone()),
            _ => {}
        }
    }
    let devices: Vec<String> = kernel
        .desired
        .links
        .values()
        .filter(|l| l.is_owned())
        .map(|l| match &l.kind {
            LinkKind::Vxlan(v) => format!("{} (vxlan id {} port {}, mac {}, up)", l.name, v.vni, v.port, l.mac),
            _ => l.name.clone(),
        })
        .collect();
    let detail =
        if devices.is_empty() { format!("the {} backend has no devices", kernel.backend) } else { devices.join(", ") };
    c.detail(detail)
}

/// One check over one kind of kernel object: missing, different and extra ones.
fn object_check(
    facts: &Facts,
    id: &'static str,
    title: &'static str,
    what: &str,
    pick: impl Fn(&Op, &KernelFacts) -> Option<(bool, String)>,
    count: impl Fn(&KernelFacts) -> usize,
) -> Check {
    let mut c = Check::new(id, title);
    let kernel = match &facts.kernel {
        Ok(k) => k,
        Err(e) => return c.skipped(e.clone()),
    };
    let fix = repair_fix(facts);
    for op in kernel_ops(kernel) {
        if let Some((missing, text)) = pick(&op, kernel) {
            if missing {
                c.fail(text, fix.clone());
            } else {
                c.warn(text, fix.clone());
            }
        }
    }
    c.detail(format!("{} {what} as the leases want", count(kernel)))
}

pub fn routes(facts: &Facts) -> Check {
    object_check(
        facts,
        "routes",
        "every peer subnet has its route, and no stale route is left",
        "routes",
        |op, k| match op {
            Op::ReplaceRoute(r) => Some(match k.observed.routes.get(&r.dst) {
                Some(now) => (
                    true,
                    format!("the route to {} is `{}`, weft wants `{}`", r.dst, render_route(now), render_route(r)),
                ),
                None => (
                    true,
                    format!(
                        "the route to {} is missing (`{}`): pods here cannot reach that subnet's pods",
                        r.dst,
                        render_route(r)
                    ),
                ),
            }),
            Op::DeleteRoute(r) => Some((false, format!("stale route `{}`: no lease wants it", render_route(r)))),
            _ => None,
        },
        |k| k.desired.routes.len(),
    )
}

pub fn neighbours(facts: &Facts) -> Check {
    object_check(
        facts,
        "neighbours",
        "every peer has its neighbour (ARP/NDP) entry",
        "neighbour entries",
        |op, _| {
            match op {
            Op::ReplaceNeighbour(n) => Some((true, format!("neighbour {} lladdr {} dev {} is missing or wrong: packets to that peer's pods are not encapsulated to it", n.ip, n.mac, n.device))),
            Op::DeleteNeighbour(n) => Some((false, format!("stale neighbour {} dev {}: no lease wants it", n.ip, n.device))),
            _ => None,
        }
        },
        |k| k.desired.neighbours.len(),
    )
}

pub fn fdb(facts: &Facts) -> Check {
    object_check(
        facts,
        "fdb",
        "every peer has its forwarding-database entry",
        "FDB entries",
        |op, _| {
            match op {
            Op::ReplaceFdb(e) => Some((true, format!("FDB entry {} dev {} dst {} is missing or wrong: frames for that peer are not sent to its public IP", e.mac, e.device, e.dst))),
            Op::DeleteFdb(e) => Some((false, format!("stale FDB entry {} dev {} dst {}: no lease wants it", e.mac, e.device, e.dst))),
            _ => None,
        }
        },
        |k| k.desired.fdb.len(),
    )
}

pub fn firewall(facts: &Facts) -> Check {
    let mut c = Check::new("firewall", "masquerade and FORWARD rules are present and effective");
    let fw = match &facts.firewall {
        None => return c.detail("weft keeps no firewall rules here (--ip-masq off, --iptables-forward-rules=false)"),
        Some(Err(e)) => {
            c.warn(
                format!("cannot read the firewall: {e}"),
                "run weftctl doctor as root, with nft or iptables installed",
            );
            return c;
        }
        Some(Ok(fw)) => fw,
    };
    let fix = repair_fix(facts);
    let mut broken_tables = Vec::new();
    for op in diff_rules(&fw.desired, &fw.observed) {
        match op {
            RuleOp::ReplaceTable(table) => {
                let state = if fw.observed.tables.contains_key(&table.id) {
                    "differ from what weft wants (changed or flushed)"
                } else {
                    "are missing"
                };
                let chains: Vec<&str> = table.chains.keys().map(String::as_str).collect();
                c.fail(
                    format!("weft's rules in {} ({}, chains {}) {state}", table.id, fw.firewall, chains.join(", ")),
                    fix.clone(),
                );
                broken_tables.push(table.id.clone());
            }
            RuleOp::DeleteTable(id) => c.warn(format!("{id} holds rules weft no longer wants"), fix.clone()),
            // diff_rules compares weft's own tables only; other tables' chains are checked below.
            RuleOp::RewriteForeign(_) => {}
        }
    }
    let networks = |family: Family| -> Vec<String> {
        fw.networks.iter().filter(|n| Family::of(n.ip()) == family).map(|n| n.to_string()).collect()
    };
    for (family, policy) in &fw.forward_policy {
        if policy != "DROP" {
            continue;
        }
        let nets = networks(*family).join(" ");
        let program = if *family == Family::V4 { "iptables" } else { "ip6tables" };
        let table = weft_backends::rules::traffic::table_id(*family);
        let accepts_in_place = fw.forward_rules && !broken_tables.contains(&table);
        if !fw.forward_rules {
            c.warn(
                format!(
                    "{program}'s FORWARD policy is DROP and weftd adds no accepts (--iptables-forward-rules=false): \
                         your own rules must accept {nets}, or pods on different hosts cannot reach each other"
                ),
                format!(
                    "{program} -I FORWARD -s {nets} -j ACCEPT; {program} -I FORWARD -d {nets} -j ACCEPT (or run \
                         weftd with --iptables-forward-rules)"
                ),
            );
        } else if !accepts_in_place {
            c.fail(
                format!("{program}'s FORWARD policy is DROP and weft's accepts for {nets} are not in place: packets \
                         between pods on different hosts are dropped (and between pods on this host where \
                         br_netfilter passes bridged traffic to {program})"),
                format!("{fix}. Until then: {program} -I FORWARD -s {nets} -j ACCEPT; {program} -I FORWARD -d {nets} -j ACCEPT"),
            );
        }
    }
    // weftd puts its accepts atop every other table's forward chain whose policy is drop: an accept in its own
    // table would not override that drop. Checked the way weftd applies them.
    let nets: Vec<String> = fw.networks.iter().map(|n| n.to_string()).collect();
    for op in diff_foreign(&fw.desired.foreign_forward, Hook::Forward, &fw.foreign_chains, FORWARD_COMMENT) {
        let RuleOp::RewriteForeign(rewrite) = op else { continue };
        let at = format!("nftables chain {} {}", rewrite.table, rewrite.chain);
        if rewrite.insert.is_empty() {
            c.warn(format!("{at} holds accepts weft no longer wants"), fix.clone());
        } else {
            c.fail(
                format!(
                    "{at} hooks forward with policy drop and weft's accepts for {} are not at its top: packets \
                     between pods on different hosts are dropped",
                    nets.join(" ")
                ),
                fix.clone(),
            );
        }
    }
    if !fw.forward_rules {
        for chain in fw.foreign_chains.iter().filter(|ch| ch.hook == Hook::Forward && ch.policy == Policy::Drop) {
            c.warn(
                format!(
                    "nftables chain {} {} hooks forward with policy drop and weftd adds no accepts \
                     (--iptables-forward-rules=false): pod traffic is dropped unless that chain accepts {}",
                    chain.table,
                    chain.chain,
                    nets.join(" ")
                ),
                format!(
                    "add to that chain: ip saddr {0} accept; ip daddr {0} accept (or run weftd with \
                     --iptables-forward-rules; docs/backends.md)",
                    nets.join(", ")
                ),
            );
        }
    }
    let policies: Vec<String> = fw.forward_policy.iter().map(|(f, p)| format!("{f} FORWARD policy {p}")).collect();
    c.detail(format!(
        "{}: {} tables as weft wants{}",
        fw.firewall,
        fw.desired.tables.len(),
        if policies.is_empty() { String::new() } else { format!("; {}", policies.join(", ")) }
    ))
}

pub fn br_netfilter(facts: &Facts) -> Check {
    let mut c = Check::new("br-netfilter", "br_netfilter and bridge-nf-call-iptables where kube-proxy needs them");
    let fix = "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/br_netfilter.conf; sysctl -w \
               net.bridge.bridge-nf-call-iptables=1 (and -ip6tables=1 with IPv6), kept in /etc/sysctl.d/";
    let on = |v: &Option<String>| v.as_deref().map(str::trim) == Some("1");
    let detail = match &facts.host.bridge_nf {
        None if facts.host.kube_proxy => {
            c.fail(
                "br_netfilter is not loaded, but kube-proxy's rules are here: traffic between pods on this host's \
                 bridge skips iptables, so a pod reaching a Service whose backend is on this host gets no answer",
                fix,
            );
            String::new()
        }
        None => "br_netfilter is not loaded; it matters only with kube-proxy, whose rules are not here".to_string(),
        Some(nf) => {
            if facts.host.kube_proxy && !on(&nf.call_iptables) {
                c.fail(
                    "net.bridge.bridge-nf-call-iptables is not 1, but kube-proxy's rules are here: traffic between \
                     pods on this host's bridge skips iptables, so Services with a backend on this host fail",
                    fix,
                );
            }
            format!(
                "br_netfilter loaded, bridge-nf-call-iptables = {}",
                nf.call_iptables.as_deref().map_or("?", str::trim)
            )
        }
    };
    c.detail(detail)
}

/// The first network config that uses weft, as the runtime would load it.
fn weft_cni_config(facts: &Facts) -> Option<&super::facts::CniConfigFile> {
    facts.cni.configs.as_ref().ok()?.iter().find(|f| f.uses_weft())
}

pub fn cni(facts: &Facts) -> Check {
    let mut c = Check::new("cni", "the CNI network config and plugin are installed and match weftd");
    let dirs =
        |flag: &str, dir: &str, default: &str| if dir == default { String::new() } else { format!(" {flag} {dir}") };
    let install = format!(
        "weftctl cni install{}{} (--as-flannel for flannel's conflists)",
        dirs("--conf-dir", &facts.cni.conf_dir, "/etc/cni/net.d"),
        dirs("--bin-dir", &facts.cni.bin_dir, "/opt/cni/bin"),
    );
    let install = install.as_str();
    let configs = match &facts.cni.configs {
        Ok(configs) => configs,
        Err(e) => {
            c.fail(format!("cannot read {}: {e}", facts.cni.conf_dir), install);
            return c;
        }
    };
    let Some(first) = configs.first() else {
        c.fail(
            format!(
                "there is no CNI network config in {}: the container runtime cannot attach containers to weft",
                facts.cni.conf_dir
            ),
            format!("{install}; it writes 10-weft.conflist"),
        );
        return c;
    };
    let Some(ours) = weft_cni_config(facts) else {
        c.fail(
            format!(
                "no network config in {} uses weft (the runtime loads {}, which chains {})",
                facts.cni.conf_dir,
                first.path,
                first.types.join(", ")
            ),
            install,
        );
        return c;
    };
    if first.path != ours.path {
        c.warn(
            format!("the runtime loads {} first, which does not use weft; {} does", first.path, ours.path),
            format!("remove {} if weft is the pod network, or rename {} to sort first", first.path, ours.path),
        );
    }
    if let Some(e) = &ours.error {
        c.fail(format!("{} is not a valid network config: {e}", ours.path), install);
    }
    let reads = ours.subnet_file.clone().unwrap_or_else(|| "/run/flannel/subnet.env".to_string());
    if reads != facts.subnet_file.path {
        c.fail(
            format!(
                "{} makes the plugin read {reads}, but weftd's subnet file is {}: containers get no address, or \
                     one from a stale file",
                ours.path, facts.subnet_file.path
            ),
            format!(
                "set \"subnetFile\": \"{}\" in {} (or pass doctor the --subnet-file weftd uses)",
                facts.subnet_file.path, ours.path
            ),
        );
    }
    let kind = ours.types.iter().find(|t| *t == "weft" || *t == "flannel").cloned().unwrap_or_default();
    let expected = facts.weftd.as_ref().map_or(facts.version.clone(), |s| s.version.clone());
    match facts.cni.plugins.iter().find(|p| p.name == kind) {
        None => c.fail(format!("the plugin {kind} was not looked for in {}", facts.cni.bin_dir), install),
        Some(p) => match &p.version {
            Err(e) => c.fail(
                format!("{} (type {kind} in {}) cannot run: {e}; the runtime fails every pod", p.path, ours.path),
                install,
            ),
            Ok(line) if !line.starts_with("weft CNI plugin") => c.warn(
                format!(
                    "{} is not weft's plugin ({line:?}): flannel's own plugin delegates to bridge and \
                         host-local instead",
                    p.path
                ),
                format!("{install}, if weft's plugin is wanted"),
            ),
            Ok(line) => {
                let version = line.trim_start_matches("weft CNI plugin ").split_whitespace().next().unwrap_or_default();
                if version != expected {
                    c.warn(
                        format!("{} is version {version}, weftd {expected}", p.path),
                        format!("{install} from the release weftd came from"),
                    );
                }
            }
        },
    }
    c.detail(format!("{} uses {kind}; {}/{kind} is version {expected}", ours.path, facts.cni.bin_dir))
}

/// What to do about a lease rejected for `reason`.
fn rejection_fix(reason: &RejectReason, name: &str, prefix: &str) -> String {
    let delete = match name.parse::<SubnetKey>() {
        Ok(key) => format!("weftctl lease delete {}", key.subnets().next().map_or(name.to_string(), |s| s.to_string())),
        Err(_) => format!("etcdctl del {prefix}/subnets/{name}"),
    };
    match reason {
        RejectReason::BadKey { .. } | RejectReason::BadValue { .. } => {
            format!("no host can use it; delete it: {delete}")
        }
        RejectReason::OutsideNetwork { .. } | RejectReason::WrongLength { .. } => {
            format!("it was written for another network config; delete it ({delete}), and check the host that wrote it (another config or --etcd-prefix?)")
        }
        RejectReason::OverlapsOwn { .. }
        | RejectReason::OverlapsPeer { .. }
        | RejectReason::DuplicateVtepMac { .. } => {
            format!("two leases claim one subnet or VTEP; the older wins. Delete the newer one ({delete}): its host acquires a free subnet")
        }
        RejectReason::NoPublicIp { .. } | RejectReason::BadPublicIp { .. } => {
            format!("its host publishes an address no other host can reach: fix that host's --public-ip or --iface and restart its weftd; if that host is gone: {delete}")
        }
        RejectReason::OurPublicIp { .. } => {
            format!("it claims this host's address: a leftover lease of this host, or two hosts with one --public-ip. Delete the one that is not in this host's subnet file ({delete})")
        }
        RejectReason::WrongBackendType { .. } | RejectReason::WrongVni { .. } | RejectReason::BadBackendData { .. } => {
            format!("its host runs another backend or VNI: every host must run with the same network config; restart that host's weftd (or flanneld) after fixing it; if that host is gone: {delete}")
        }
        RejectReason::ProtectedRoute { .. } => {
            format!("it would route over this host's own addresses; delete it: {delete}")
        }
        RejectReason::NotOnSegment(_) => {
            format!("host-gw needs every host on one L2 segment: use vxlan (with DirectRouting) or move the host onto the segment; if that host is gone: {delete}")
        }
    }
}

/// A lease whose host stopped renewing it: less than half its TTL and less than 30 minutes left. weftd keeps its
/// lease near the full TTL; flanneld renews an hour before expiry; so either would have renewed by then.
pub fn is_stale(granted: Duration, remaining: Duration) -> bool {
    remaining < (granted / 2).min(Duration::from_secs(30 * 60))
}

pub fn leases(facts: &Facts) -> Check {
    let mut c = Check::new("leases", "no lease in etcd is rejected, stale or duplicated");
    let Ok(store) = &facts.store else { return c.skipped("etcd could not be read (see the etcd check)") };
    let Some(config) = config(facts) else { return c.skipped("no valid network config (see the etcd check)") };
    let policy = match TrustPolicy::outside(config) {
        Ok(p) => TrustPolicy { host_addresses: facts.host.host_addresses.clone(), ..p },
        Err(e) => return c.skipped(format!("the network config's backend: {e}")),
    };
    let prefix = store.config_key.trim_end_matches("/config");
    let set = LeaseSet::from_listing(&store.listing);
    let own = own_lease(facts);
    let screening = trust::screen(&policy, own, &set);
    // Plus weftd's judgement where the kernel facts have it: it adds what the backend refuses (host-gw peers off
    // our segment).
    let mut rejected = screening.rejected.clone();
    for r in facts.kernel.as_ref().map(|k| k.rejected.as_slice()).unwrap_or_default() {
        if !rejected.iter().any(|seen| seen.name == r.name) {
            rejected.push(r.clone());
        }
    }
    for r in &rejected {
        let waiting = matches!(&r.reason, RejectReason::WrongBackendType { theirs, .. } if theirs.is_empty())
            && set.leases.values().any(|l| l.key.to_string() == r.name && l.is_reservation());
        if waiting {
            continue;
        }
        c.fail(
            format!(
                "lease {} is not programmed here ({}: {}): pods here cannot reach that host's pods",
                r.name,
                r.reason.name(),
                r.reason
            ),
            rejection_fix(&r.reason, &r.name, prefix),
        );
    }
    let mut by_ip: BTreeMap<String, Vec<&Lease>> = BTreeMap::new();
    for lease in store.listing.leases.iter().filter(|l| !l.is_reservation()) {
        for ip in [lease.attrs.public_ip.map(|i| i.to_string()), lease.attrs.public_ipv6.map(|i| i.to_string())]
            .into_iter()
            .flatten()
        {
            by_ip.entry(ip).or_default().push(lease);
        }
    }
    for (ip, holders) in by_ip.iter().filter(|(_, h)| h.len() > 1) {
        let names: Vec<String> = holders.iter().map(|l| l.key.to_string()).collect();
        c.fail(
            format!(
                "leases {} all name the public IP {ip}: one host holds two subnets (a leftover lease) or two \
                     hosts share one --public-ip",
                names.join(", ")
            ),
            format!(
                "on the host with {ip}, FLANNEL_SUBNET in its subnet file names the lease it uses; delete the \
                     other with weftctl lease delete"
            ),
        );
    }
    for lease in &store.listing.leases {
        let Some(ttl) = store.ttls.get(&lease.etcd_lease) else { continue };
        if is_stale(ttl.granted, ttl.remaining) {
            let subnet = lease.key.subnets().next().map_or(lease.key.to_string(), |s| s.to_string());
            c.warn(
                format!(
                    "lease {} expires in {} of {}: its host has stopped renewing it (the host is down, or its \
                         weftd or flanneld stopped)",
                    lease.key,
                    human_duration(ttl.remaining.as_secs()),
                    human_duration(ttl.granted.as_secs())
                ),
                format!(
                    "start the daemon on that host; if the host is gone for good, free the subnet now: weftctl \
                         lease delete {subnet}"
                ),
            );
        }
    }
    c.detail(format!("{} leases, {} rejected from here", store.listing.leases.len(), rejected.len()))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use weft_backends::model::{FdbEntry, KernelState, Link, MacAddr, Neighbour, Route, VxlanAttrs};
    use weft_backends::netlink::Interface;
    use weft_backends::rules::foreign::ForeignChain;
    use weft_backends::rules::traffic::TrafficRules;
    use weft_backends::rules::{Rule, RuleSet, TableFamily, TableId};

    use super::*;
    use crate::doctor::facts::{
        BridgeNf, CniConfigFile, CniFacts, FirewallFacts, HostFacts, PluginBinary, StoreFacts, SubnetFileFact,
    };
    use crate::lease::LeaseAttrs;
    use crate::status::{BackendStatus, DaemonStatus, UnderlayStatus};
    use crate::store::Listing;
    use crate::store::TimeToLive;

    const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const OWN_MAC: &str = "0e:00:00:00:00:01";
    const PEER_MAC: &str = "0e:00:00:00:00:02";

    fn lease(key: &str, ip: &str, mac: &str, etcd_lease: i64) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: Some(weft_backends::vxlan::lease_data(1, mac.parse().unwrap()).into()),
                ..Default::default()
            }),
            etcd_lease,
            mod_revision: etcd_lease,
        }
    }

    fn iface(name: &str, index: u32, mtu: u32, master: Option<u32>, addrs: &[&str]) -> Interface {
        Interface {
            name: name.into(),
            index,
            mtu,
            up: true,
            mac: None,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            master,
        }
    }

    /// The kernel state of a healthy VXLAN host with one peer.
    fn vxlan_state() -> KernelState {
        let mut state = KernelState::default();
        let vxlan = VxlanAttrs {
            vni: 1,
            local: "198.18.0.1".parse().unwrap(),
            underlay_index: 2,
            port: 8472,
            learning: false,
            gbp: false,
        };
        let mac: MacAddr = OWN_MAC.parse().unwrap();
        state.add_link(Link { name: "flannel.1".into(), kind: LinkKind::Vxlan(vxlan), mac, mtu: 1450, up: true });
        let peer_mac: MacAddr = PEER_MAC.parse().unwrap();
        let gateway: IpAddr = "10.244.2.0".parse().unwrap();
        state.add_neighbour(Neighbour { device: "flannel.1".into(), ip: gateway, mac: peer_mac });
        state.add_fdb(FdbEntry { device: "flannel.1".into(), mac: peer_mac, dst: "198.18.0.2".parse().unwrap() });
        state.add_route(Route::via("10.244.2.0/24".parse().unwrap(), gateway, "flannel.1", true, 87));
        state
    }

    fn forward_rules() -> RuleSet {
        let rules = TrafficRules { masquerade: false, forward: true, fully_random: true };
        let nets = weft_backends::rules::traffic::FamilyNetworks {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        };
        rules.rule_set(&[(Family::V4, nets)])
    }

    fn healthy() -> Facts {
        let listing = Listing {
            leases: vec![
                lease("10.244.1.0-24", "198.18.0.1", OWN_MAC, 1),
                lease("10.244.2.0-24", "198.18.0.2", PEER_MAC, 2),
            ],
            ..Default::default()
        };
        let day = Duration::from_secs(86400);
        let ttls =
            [(1, TimeToLive { granted: day, remaining: day }), (2, TimeToLive { granted: day, remaining: day })].into();
        let subnet_file = crate::subnet_file::for_lease(
            &NetworkConfig::parse(CONFIG).unwrap(),
            &"10.244.1.0-24".parse().unwrap(),
            1450,
            false,
        );
        let status = DaemonStatus {
            version: "0.1.0".into(),
            ready: true,
            lease: Some(crate::status::LeaseStatus::of(&listing.leases[0])),
            backend: Some(BackendStatus {
                kind: "vxlan".into(),
                mtu: 1450,
                underlay: UnderlayStatus { name: "eth0".into(), mtu: 1500, addresses: vec!["198.18.0.1/24".into()] },
                devices: Vec::new(),
            }),
            store: crate::status::StoreStatus { endpoints: "http://198.18.0.254:2379".into(), connected: true },
            ..Default::default()
        };
        Facts {
            version: "0.1.0".into(),
            weftd_endpoint: "127.0.0.1:8081".into(),
            weftd: Ok(status),
            subnet_file: SubnetFileFact {
                path: "/run/flannel/subnet.env".into(),
                state: FileState::Present(subnet_file),
            },
            store: Ok(StoreFacts {
                endpoints: "http://198.18.0.254:2379".into(),
                config_key: "/coreos.com/network/config".into(),
                config: Some(CONFIG.into()),
                listing,
                ttls,
            }),
            host: HostFacts {
                interfaces: vec![
                    iface("eth0", 2, 1500, None, &["198.18.0.1/24"]),
                    iface("flannel.1", 3, 1450, None, &["10.244.1.0/32"]),
                    iface("cni0", 4, 1450, None, &["10.244.1.1/24"]),
                    iface("veth0a1b2c3d", 5, 1450, Some(4), &[]),
                ],
                forwarding: [(Family::V4, Ok("1\n".to_string())), (Family::V6, Ok("0\n".to_string()))].into(),
                bridge_nf: Some(BridgeNf { call_iptables: Some("1\n".into()), call_ip6tables: Some("1\n".into()) }),
                kube_proxy: false,
                host_addresses: vec!["198.18.0.1/24".parse().unwrap()],
            },
            kernel: Ok(KernelFacts {
                backend: "vxlan".into(),
                underlay: "eth0".into(),
                underlay_mtu: 1500,
                mtu: 1450,
                desired: vxlan_state(),
                observed: vxlan_state(),
                networks: vec!["10.244.0.0/16".parse().unwrap()],
                rejected: Vec::new(),
            }),
            firewall: Some(Ok(FirewallFacts {
                firewall: "iptables (Default)".into(),
                desired: forward_rules(),
                observed: forward_rules(),
                forward_rules: true,
                forward_policy: [(Family::V4, "DROP".to_string())].into(),
                foreign_chains: Vec::new(),
                networks: vec!["10.244.0.0/16".parse().unwrap()],
            })),
            cni: CniFacts {
                conf_dir: "/etc/cni/net.d".into(),
                bin_dir: "/opt/cni/bin".into(),
                configs: Ok(vec![CniConfigFile {
                    path: "/etc/cni/net.d/10-weft.conflist".into(),
                    types: vec!["weft".into(), "portmap".into()],
                    subnet_file: Some("/run/flannel/subnet.env".into()),
                    bridge: None,
                    error: None,
                }]),
                plugins: vec![PluginBinary {
                    name: "weft".into(),
                    path: "/opt/cni/bin/weft".into(),
                    version: Ok("weft CNI plugin 0.1.0 (CNI spec versions 1.0.0)".into()),
                }],
            },
        }
    }

    /// The failing checks' ids, and every problem and fix as one text.
    fn failures(facts: &Facts) -> (Vec<&'static str>, String) {
        let checks = all(facts);
        let ids = checks.iter().filter(|c| c.outcome == Outcome::Fail).map(|c| c.id).collect();
        let text = checks.iter().flat_map(|c| &c.problems).map(|p| format!("{} | {}\n", p.problem, p.fix)).collect();
        (ids, text)
    }

    fn kernel(facts: &mut Facts) -> &mut KernelFacts {
        facts.kernel.as_mut().unwrap()
    }

    #[test]
    fn a_healthy_host_passes_every_check() {
        let checks = all(&healthy());
        assert_eq!(checks.len(), 13);
        for c in &checks {
            assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        }
        assert_eq!(worst(&checks), Outcome::Ok);
    }

    #[test]
    fn ip_forward_off_is_named_with_the_sysctl_that_fixes_it() {
        let mut facts = healthy();
        facts.host.forwarding.insert(Family::V4, Ok("0\n".into()));
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["ip-forward"]);
        assert!(
            text.contains("net.ipv4.ip_forward is 0") && text.contains("sysctl -w net.ipv4.ip_forward=1"),
            "{text}"
        );
    }

    #[test]
    fn a_deleted_route_neighbour_or_fdb_entry_is_missing() {
        let mut facts = healthy();
        kernel(&mut facts).observed.routes.clear();
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["routes"]);
        assert!(text.contains("the route to 10.244.2.0/24 is missing"), "{text}");
        assert!(text.contains("weftd puts it back"), "weftd runs, so it repairs: {text}");

        let mut facts = healthy();
        kernel(&mut facts).observed.neighbours.clear();
        kernel(&mut facts).observed.fdb.clear();
        facts.weftd = Err("nothing answers".into());
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["weftd", "neighbours", "fdb"]);
        assert!(text.contains("start weftd (systemctl start weftd): its first pass"), "{text}");
    }

    #[test]
    fn a_stale_route_is_a_warning() {
        let mut facts = healthy();
        let stale = Route::via("10.244.9.0/24".parse().unwrap(), "10.244.9.0".parse().unwrap(), "flannel.1", true, 87);
        kernel(&mut facts).observed.add_route(stale);
        let checks = all(&facts);
        let routes = checks.iter().find(|c| c.id == "routes").unwrap();
        assert_eq!(routes.outcome, Outcome::Warn);
        assert!(routes.problems[0].problem.contains("stale route `route 10.244.9.0/24"), "{routes:?}");
    }

    #[test]
    fn a_tunnel_that_is_down_or_has_the_wrong_mac_is_named() {
        let mut facts = healthy();
        let link = kernel(&mut facts).observed.links.get_mut("flannel.1").unwrap();
        link.up = false;
        link.mac = "0e:00:00:00:00:99".parse().unwrap();
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["tunnel-device"]);
        assert!(text.contains("flannel.1 is down") && text.contains("has MAC 0e:00:00:00:00:99"), "{text}");

        let mut facts = healthy();
        kernel(&mut facts).observed.links.clear();
        let (ids, text) = failures(&facts);
        assert!(ids.contains(&"tunnel-device") && text.contains("flannel.1 is missing"), "{ids:?} {text}");
    }

    #[test]
    fn mtus_must_fit_the_underlay() {
        // The underlay shrank to 1400 under a running weftd: the tunnel wants 1350.
        let mut facts = healthy();
        let k = kernel(&mut facts);
        k.underlay_mtu = 1400;
        k.mtu = 1350;
        k.desired.links.get_mut("flannel.1").unwrap().mtu = 1350;
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["mtu"]);
        for expected in [
            "flannel.1 has MTU 1450, but underlay eth0 (MTU 1400) carries only 1350",
            "FLANNEL_MTU is 1450",
            "bridge cni0 has MTU 1450, above the tunnel's 1350",
            "pod interface veth0a1b2c3d on cni0 has MTU 1450",
            "eth0's MTU changed from 1500 to 1400 since weftd started",
            "restart weftd",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
        // A pod with a bigger MTU than the tunnel on a healthy host.
        let mut facts = healthy();
        facts.host.interfaces[3].mtu = 1500;
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["mtu"]);
        assert!(text.contains("ip link set veth0a1b2c3d mtu 1450"), "{text}");
    }

    #[test]
    fn flushed_forward_rules_under_a_drop_policy_break_forwarding() {
        let mut facts = healthy();
        let Some(Ok(fw)) = facts.firewall.as_mut() else { panic!() };
        fw.observed = RuleSet::default();
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["firewall"]);
        assert!(text.contains("weft's rules in ip flannel (iptables (Default), chains FWD) are missing"), "{text}");
        assert!(
            text.contains("FORWARD policy is DROP and weft's accepts for 10.244.0.0/16 are not in place"),
            "{text}"
        );
        assert!(text.contains("iptables -I FORWARD -s 10.244.0.0/16 -j ACCEPT"), "{text}");

        // Under ACCEPT the missing table is still named, without the DROP consequence.
        let Some(Ok(fw)) = facts.firewall.as_mut() else { panic!() };
        fw.forward_policy.insert(Family::V4, "ACCEPT".into());
        let (_, text) = failures(&facts);
        assert!(text.contains("are missing") && !text.contains("policy is DROP"), "{text}");

        // Without weft's accepts by choice, a DROP policy is the operator's to open.
        let mut facts = healthy();
        let Some(Ok(fw)) = facts.firewall.as_mut() else { panic!() };
        fw.forward_rules = false;
        fw.desired = RuleSet::default();
        fw.observed = RuleSet::default();
        let checks = all(&facts);
        let c = checks.iter().find(|c| c.id == "firewall").unwrap();
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
    }

    fn drop_chain(rules: Vec<Rule>) -> ForeignChain {
        ForeignChain {
            table: TableId::new(TableFamily::Inet, "filter"),
            chain: "forward".into(),
            hook: Hook::Forward,
            policy: Policy::Drop,
            rules: (1..).zip(rules).collect(),
        }
    }

    #[test]
    fn an_nftables_drop_chain_elsewhere_needs_weft_accepts_at_its_top() {
        let mut facts = healthy();
        let Some(Ok(fw)) = facts.firewall.as_mut() else { panic!() };
        fw.forward_policy.clear();
        fw.foreign_chains = vec![drop_chain(Vec::new())];
        let c = firewall(&facts);
        assert_eq!(c.outcome, Outcome::Fail, "{c:?}");
        assert!(c.problems[0].problem.contains("inet filter forward"), "{c:?}");

        let Some(Ok(fw)) = facts.firewall.as_mut() else { panic!() };
        let mut accepts = fw.desired.foreign_forward.clone();
        accepts.push(Rule::Unknown("counter drop".into()));
        fw.foreign_chains = vec![drop_chain(accepts)];
        let c = firewall(&facts);
        assert!(c.problems.is_empty(), "{c:?}");
    }

    #[test]
    fn an_nftables_drop_chain_elsewhere_without_forward_rules_is_explained() {
        let mut facts = healthy();
        let Some(Ok(fw)) = facts.firewall.as_mut() else { panic!() };
        fw.forward_policy.clear();
        fw.forward_rules = false;
        fw.desired = RuleSet::default();
        fw.observed = RuleSet::default();
        fw.foreign_chains = vec![drop_chain(Vec::new())];
        let c = firewall(&facts);
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        assert!(c.problems[0].fix.contains("ip saddr 10.244.0.0/16 accept"), "{c:?}");
    }

    #[test]
    fn a_missing_conflist_or_plugin_is_named_with_cni_install() {
        let mut facts = healthy();
        facts.cni.configs = Ok(Vec::new());
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["cni"]);
        assert!(
            text.contains("there is no CNI network config in /etc/cni/net.d") && text.contains("weftctl cni install")
        );

        let mut facts = healthy();
        facts.cni.plugins[0].version = Err("/opt/cni/bin/weft does not exist".into());
        let (ids, _) = failures(&facts);
        assert_eq!(ids, ["cni"]);

        let mut facts = healthy();
        facts.cni.plugins[0].version = Ok("weft CNI plugin 0.0.9 (CNI spec versions 1.0.0)".into());
        let c = cni(&facts);
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(c.problems[0].problem.contains("version 0.0.9, weftd 0.1.0"), "{c:?}");

        let mut facts = healthy();
        if let Ok(configs) = facts.cni.configs.as_mut() {
            configs[0].subnet_file = Some("/elsewhere/subnet.env".into());
        }
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["cni"]);
        assert!(text.contains("makes the plugin read /elsewhere/subnet.env"), "{text}");
    }

    #[test]
    fn rejected_stale_and_duplicated_leases_are_reported() {
        let mut facts = healthy();
        let store = facts.store.as_mut().unwrap();
        let mut udp = lease("10.244.9.0-24", "198.18.0.9", "0e:00:00:00:00:09", 9);
        std::sync::Arc::make_mut(&mut udp.attrs).backend_type = "udp".into();
        store.listing.leases.push(udp);
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["leases"]);
        assert!(text.contains("lease 10.244.9.0-24 is not programmed here (wrong_backend_type"), "{text}");
        assert!(text.contains("weftctl lease delete 10.244.9.0/24"), "{text}");

        // What only the backend refuses comes from weftd's judgement in the kernel facts.
        let mut facts = healthy();
        let off_segment = crate::trust::Rejected {
            name: "10.244.2.0-24".into(),
            reason: RejectReason::ProtectedRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                protected: "198.18.0.0/24".parse().unwrap(),
                what: "the underlay's prefix",
            },
        };
        kernel(&mut facts).rejected.push(off_segment);
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["leases"]);
        assert!(text.contains("lease 10.244.2.0-24 is not programmed here (protected_route"), "{text}");

        let mut facts = healthy();
        let store = facts.store.as_mut().unwrap();
        store.listing.leases.push(lease("10.244.5.0-24", "198.18.0.2", "0e:00:00:00:00:05", 5));
        let (ids, text) = failures(&facts);
        assert_eq!(ids, ["leases"]);
        assert!(text.contains("leases 10.244.2.0-24, 10.244.5.0-24 all name the public IP 198.18.0.2"), "{text}");

        let mut facts = healthy();
        let store = facts.store.as_mut().unwrap();
        store.ttls.insert(2, TimeToLive { granted: Duration::from_secs(86400), remaining: Duration::from_secs(600) });
        let c = leases(&facts);
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(c.problems[0].problem.contains("expires in 10m00s of 24h00m"), "{c:?}");
        assert!(is_stale(Duration::from_secs(60), Duration::from_secs(20)));
        assert!(!is_stale(Duration::from_secs(86400), Duration::from_secs(3600)), "flanneld renews an hour ahead");
    }

    #[test]
    fn the_subnet_file_must_exist_and_match_the_lease_and_config() {
        let mut facts = healthy();
        facts.subnet_file.state = FileState::Missing;
        let (ids, text) = failures(&facts);
        assert!(ids.contains(&"subnet-file"), "{ids:?}");
        assert!(text.contains("/run/flannel/subnet.env does not exist"), "{text}");

        let mut facts = healthy();
        facts.store.as_mut().unwrap().listing.leases.remove(0);
        let (ids, text) = failures(&facts);
        assert!(ids.contains(&"subnet-file"), "{ids:?}");
        assert!(text.contains("etcd holds no lease for it"), "{text}");

        let mut facts = healthy();
        facts.store.as_mut().unwrap().config = Some(r#"{"Network":"10.250.0.0/16","Backend":{"Type":"vxlan"}}"#.into());
        let (ids, text) = failures(&facts);
        assert!(ids.contains(&"subnet-file"), "{ids:?}");
        assert!(text.contains("IPv4 network 10.244.0.0/16, the network config 10.250.0.0/16"), "{text}");
    }

    #[test]
    fn weftd_and_etcd_problems_come_first() {
        let mut facts = healthy();
        facts.store = Err("etcd at http://198.18.0.254:2379: connection refused".into());
        facts.kernel = Err("etcd could not be read (see the etcd check)".into());
        let checks = all(&facts);
        let etcd = checks.iter().find(|c| c.id == "etcd").unwrap();
        assert_eq!(etcd.outcome, Outcome::Fail);
        assert!(etcd.problems[0].fix.contains("endpoint health"));
        assert_eq!(checks.iter().find(|c| c.id == "routes").unwrap().outcome, Outcome::Skipped);
        assert_eq!(checks.iter().find(|c| c.id == "leases").unwrap().outcome, Outcome::Skipped);

        let mut facts = healthy();
        if let Ok(s) = facts.weftd.as_mut() {
            s.ready = false;
            s.store.connected = false;
        }
        let (ids, _) = failures(&facts);
        assert_eq!(ids, ["weftd"], "a weftd that is not ready has no etcd watch yet either");
    }

    #[test]
    fn br_netfilter_matters_with_kube_proxy() {
        let mut facts = healthy();
        facts.host.bridge_nf = None;
        assert_eq!(br_netfilter(&facts).outcome, Outcome::Ok);
        facts.host.kube_proxy = true;
        let c = br_netfilter(&facts);
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.problems[0].fix.contains("modprobe br_netfilter"));
    }
}
