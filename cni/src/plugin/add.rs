//! ADD: the container's netlink socket first (nothing to undo if that fails), then the address (under the store's
//! lock, released before any netlink work so concurrent ADDs overlap), the bridge, the veth pair straight into the
//! container, its addresses and routes. Netlink requests go out in batches, one round trip each. Any failure undoes
//! what was done: no half veth, no leaked address.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;

use super::plan::{host_veth_name, ipam_plugin_conf, Plan};
use super::{read_subnet_file, repeat};
use crate::env::Env;
use crate::error::{CniError, Result};
use crate::ipam::{exec, Range, Store};
use crate::netconf::{Ipam, NetConf};
use crate::netlink;
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::subnet_file::SubnetFile;
use crate::{flannel_state, masq, trace, version};
use weft_netlink::blocking::Socket;
use weft_netlink::link::{self, Link, LinkRef, VethPair};
use weft_netlink::Request;

/// Index of the container's interface in the result's `interfaces` (bridge, host veth, container end).
const CONTAINER_INTERFACE: usize = 2;

pub fn add(conf: &NetConf, env: &Env) -> Result<String> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let format = version::format_of(&conf.cni_version)?;
    let file = read_subnet_file(&conf.subnet_file)?;
    let plan = Plan::new(conf, &file)?;
    let held = held_addresses(conf, id, ifname)?;
    if held.is_empty() {
        // Stored before anything is attached, as flannel's plugin does, so a DEL after a failed ADD finds it too.
        save_flannel_state(conf, id)?;
    }
    trace::mark("config and subnet file read");
    let netns = match std::fs::File::open(netns_path) {
        Ok(netns) => netns,
        Err(e) if !held.is_empty() => {
            return Err(repeat::refusal(
                id,
                ifname,
                &held,
                &[format!("{} cannot be opened: {e}", netns_path.display())],
            ))
        }
        Err(e) => return Err(CniError::io(format!("opening CNI_NETNS {}", netns_path.display()), e)),
    };
    let own = weft_netlink::netns::is_current(&netns)
        .map_err(|e| CniError::io(format!("inspecting CNI_NETNS {}", netns_path.display()), e))?;
    if own {
        return Err(CniError::InvalidEnv(format!(
            "CNI_NETNS {} is the plugin's own network namespace (the host's), not a container's",
            netns_path.display()
        )));
    }
    // First, so that a failure has nothing to undo.
    let mut container_socket = Socket::open_in_on_this_thread(&netns)
        .map_err(|e| CniError::netlink("opening a netlink socket inside CNI_NETNS", e))?;
    trace::mark("container socket open");
    let target = Target { id, ifname, netns: &netns, netns_path };
    if !held.is_empty() {
        let result = existing_result(conf, &plan, container_socket, &target, &held)?;
        return Ok(result.to_json(&conf.cni_version, format).to_string());
    }
    let ips = allocate(conf, env, &file, &plan, id, ifname)?;
    trace::mark("address allocated");
    if let Ipam::Plugin { .. } = conf.ipam {
        if let Some(result) = existing_with_ipam_plugin(conf, &plan, &mut container_socket, &target, &ips)? {
            return Ok(result.to_json(&conf.cni_version, format).to_string());
        }
    }
    match attach(conf, &plan, container_socket, &target, &ips) {
        Ok(result) => Ok(result.to_json(&conf.cni_version, format).to_string()),
        Err(e) => {
            // The error that made ADD fail is what the runtime needs to see; a failed release is secondary.
            let _ = release(conf, env, &file, &ips);
            Err(e)
        }
    }
}

/// In flannel mode, writes the delegate netconf flannel's plugin would have stored for this container, so that
/// flannel's plugin can DEL it after a roll-back (see [`flannel_state`]).
fn save_flannel_state(conf: &NetConf, id: &str) -> Result<()> {
    let (Some(dir), Some(netconf)) = (&conf.flannel_data_dir, &conf.flannel_netconf) else { return Ok(()) };
    let text = std::fs::read_to_string(&conf.subnet_file)
        .map_err(|e| CniError::io(format!("reading subnet file {}", conf.subnet_file.display()), e))?;
    let env = flannel_state::FlannelEnv::parse(&conf.subnet_file, &text)
        .map_err(|e| CniError::InvalidConfig(e.to_string()))?;
    flannel_state::save(dir, id, &flannel_state::delegate_netconf(netconf, &env)).map_err(|e| match e {
        flannel_state::StateError::Io { path, source } => {
            CniError::io(format!("writing flannel's state {}", path.display()), source)
        }
        other => CniError::InvalidConfig(other.to_string()),
    })
}

/// The addresses the built-in IPAM holds for (container ID, ifname): any means an earlier ADD made this attachment
/// (see [`repeat`]). An IPAM plugin keeps its own records and answers a repeat itself.
fn held_addresses(conf: &NetConf, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
    let Ipam::Builtin { data_dir } = &conf.ipam else { return Ok(Vec::new()) };
    // No records yet: nothing was ever added (and nothing is created on disk just to find that out).
    if !data_dir.join(&conf.name).is_dir() {
        return Ok(Vec::new());
    }
    Store::open(data_dir, &conf.name)?.find(id, ifname)
}

/// A repeated ADD: the earlier attachment's result when it is whole and in this CNI_NETNS, else the refusal naming
/// every difference. Only reads; nothing is changed either way.
fn existing_result(
    conf: &NetConf,
    plan: &Plan,
    mut container: Socket,
    target: &Target<'_>,
    held: &[IpAddr],
) -> Result<CniResult> {
    let mut diffs = Vec::new();
    let mut ips = Vec::new();
    for ip in held {
        match plan.ranges.iter().find(|r| r.contains(*ip)) {
            Some(range) => ips.push(ip_config(*ip, range)),
            None => diffs.push(format!("{ip} is outside the subnet file's subnets now")),
        }
    }
    let mut host = Socket::open().map_err(|e| CniError::netlink("opening a netlink socket", e))?;
    let observed = observe(conf, &mut container, &mut host, target)?;
    diffs.extend(differences(conf, target, &observed, &ips));
    match (diffs.is_empty(), existing(conf, plan, target, &observed, &ips)) {
        (true, Some(result)) => Ok(result),
        _ => Err(repeat::refusal(target.id, target.ifname, held, &diffs)),
    }
}

/// With an IPAM plugin (which keeps its own records): when our host end of this attachment exists already and
/// its peer is CNI_IFNAME in this very CNI_NETNS with the addresses the plugin answered, the existing result.
/// None sends the ADD on as usual (an attachment elsewhere is refused there; a partial one here is made again).
fn existing_with_ipam_plugin(
    conf: &NetConf,
    plan: &Plan,
    container: &mut Socket,
    target: &Target<'_>,
    ips: &[IpConfig],
) -> Result<Option<CniResult>> {
    let mut host = Socket::open().map_err(|e| CniError::netlink("opening a netlink socket", e))?;
    if netlink::get_link(&mut host, &host_veth_name(target.id, target.ifname))?.is_none() {
        return Ok(None);
    }
    let observed = observe(conf, container, &mut host, target)?;
    if !differences(conf, target, &observed, ips).is_empty() {
        return Ok(None);
    }
    Ok(existing(conf, plan, target, &observed, ips))
}

/// The attachment's parts as the kernel shows them now.
fn observe(conf: &NetConf, container: &mut Socket, host: &mut Socket, target: &Target<'_>) -> Result<repeat::Observed> {
    let container_link = netlink::get_link(container, target.ifname)?;
    let container_addresses = match &container_link {
        Some(link) => netlink::addresses(container, link.index)?,
        None => Vec::new(),
    };
    Ok(repeat::Observed {
        container: container_link,
        container_addresses,
        host_veth: netlink::get_link(host, &host_veth_name(target.id, target.ifname))?,
        bridge: netlink::get_link(host, &conf.bridge)?,
    })
}

fn differences(conf: &NetConf, target: &Target<'_>, observed: &repeat::Observed, ips: &[IpConfig]) -> Vec<String> {
    let addresses: Vec<IpNetwork> = ips.iter().map(|ip| ip.address).collect();
    let (netns, host_veth) = (target.netns_path.display().to_string(), host_veth_name(target.id, target.ifname));
    let expected = repeat::Expected {
        ifname: target.ifname,
        netns: &netns,
        host_veth: &host_veth,
        bridge: &conf.bridge,
        addresses: &addresses,
    };
    repeat::differences(&expected, observed)
}

/// The result of the attachment `observed` shows (None when a part is missing).
fn existing(
    conf: &NetConf,
    plan: &Plan,
    target: &Target<'_>,
    observed: &repeat::Observed,
    ips: &[IpConfig],
) -> Option<CniResult> {
    let (Some(bridge), Some(host_end), Some(container_end)) =
        (&observed.bridge, &observed.host_veth, &observed.container)
    else {
        return None;
    };
    let mac = |link: &Link| link.mac.map(|mac| netlink::format_mac(&mac)).unwrap_or_default();
    let ends = [
        Interface { name: host_end.name.clone(), mac: mac(host_end), sandbox: None, mtu: host_end.mtu },
        Interface {
            name: target.ifname.to_string(),
            mac: mac(container_end),
            sandbox: Some(target.netns_path.display().to_string()),
            mtu: container_end.mtu,
        },
    ];
    Some(result(conf, plan, bridge, ends, ips.to_vec()))
}

fn allocate(
    conf: &NetConf,
    env: &Env,
    file: &SubnetFile,
    plan: &Plan,
    id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    match &conf.ipam {
        Ipam::Builtin { data_dir } => {
            let store = Store::open(data_dir, &conf.name)?;
            let mut got = Vec::new();
            for (index, range) in plan.ranges.iter().enumerate() {
                match store.reserve(id, ifname, range, index) {
                    Ok(ip) => got.push(ip_config(ip, range)),
                    Err(e) => {
                        for ip in &got {
                            let _ = store.release(ip.address.ip());
                        }
                        return Err(e);
                    }
                }
            }
            Ok(got)
        }
        Ipam::Plugin { plugin } => {
            let binary = exec::find(plugin, &env.path)?;
            let conf_json = ipam_plugin_conf(conf, Some(file));
            let result = exec::run(&binary, plugin, "ADD", &conf_json)?.unwrap_or_default();
            let ips: Vec<IpConfig> = result
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    interface: Some(CONTAINER_INTERFACE),
                    gateway: ip.gateway.or_else(|| plan.gateway_for(ip.address.ip())),
                    address: ip.address,
                })
                .collect();
            if ips.is_empty() {
                let _ = exec::run(&binary, plugin, "DEL", &conf_json);
                return Err(CniError::IpamPlugin {
                    plugin: plugin.clone(),
                    code: 0,
                    msg: "returned no address".into(),
                });
            }
            Ok(ips)
        }
    }
}

fn ip_config(ip: IpAddr, range: &Range) -> IpConfig {
    IpConfig {
        interface: Some(CONTAINER_INTERFACE),
        address: IpNetwork::new(ip, range.subnet.prefix()).expect("prefix of the range"),
        gateway: Some(range.gateway),
    }
}

fn release(conf: &NetConf, env: &Env, file: &SubnetFile, ips: &[IpConfig]) -> Result<()> {
    match &conf.ipam {
        Ipam::Builtin { data_dir } => {
            let store = Store::open(data_dir, &conf.name)?;
            ips.iter().try_for_each(|ip| store.release(ip.address.ip()))
        }
        Ipam::Plugin { plugin } => {
            let binary = exec::find(plugin, &env.path)?;
            exec::run(&binary, plugin, "DEL", &ipam_plugin_conf(conf, Some(file))).map(drop)
        }
    }
}

/// The attachment being made: the container, its interface name and its netns.
#[derive(Clone, Copy)]
struct Target<'a> {
    id: &'a str,
    ifname: &'a str,
    netns: &'a std::fs::File,
    netns_path: &'a Path,
}

fn attach(
    conf: &NetConf,
    plan: &Plan,
    mut container_socket: Socket,
    target: &Target<'_>,
    ips: &[IpConfig],
) -> Result<CniResult> {
    let Target { id, ifname, netns, netns_path } = *target;
    if conf.is_gateway {
        enable_forwarding(plan)?;
    }
    if plan.ip_masq {
        masq::ensure_once(&conf.name, &plan.masqueraded())?;
    }
    let mut host = Socket::open().map_err(|e| CniError::netlink("opening a netlink socket", e))?;
    trace::mark("netlink socket ready");
    let bridge = netlink::ensure_bridge(&mut host, &conf.bridge, plan.mtu)?;
    trace::mark("bridge ready");
    let host_name = host_veth_name(id, ifname);
    let (host_mac, container_mac) = (netlink::random_mac(), netlink::random_mac());
    let veth = VethPair {
        host: &host_name,
        host_mac,
        peer: ifname,
        peer_mac: container_mac,
        mtu: plan.mtu,
        master: bridge.index,
        peer_netns_fd: std::os::fd::AsRawFd::as_raw_fd(netns),
    };
    let peer_index = create_veth(conf, plan, &mut host, &mut container_socket, &veth, target)?;
    trace::mark("veth created");
    if let Err(e) = configure_container(plan, container_socket, peer_index, target, ips) {
        let _ = netlink::remove_link(&mut host, &host_name);
        return Err(e);
    }
    trace::mark("container configured");
    let ends = [
        Interface { name: host_name, mac: netlink::format_mac(&host_mac), sandbox: None, mtu: Some(plan.mtu) },
        Interface {
            name: ifname.to_string(),
            mac: netlink::format_mac(&container_mac),
            sandbox: Some(netns_path.display().to_string()),
            mtu: Some(plan.mtu),
        },
    ];
    Ok(result(conf, plan, &bridge, ends, ips.to_vec()))
}

/// The ADD result: the bridge, the two ends of the veth (host, container), the addresses and the routes.
fn result(conf: &NetConf, plan: &Plan, bridge: &Link, ends: [Interface; 2], ips: Vec<IpConfig>) -> CniResult {
    let bridge = Interface {
        name: conf.bridge.clone(),
        mac: bridge.mac.map(|mac| netlink::format_mac(&mac)).unwrap_or_default(),
        sandbox: None,
        mtu: bridge.mtu,
    };
    let [host_end, container_end] = ends;
    CniResult {
        interfaces: vec![bridge, host_end, container_end],
        ips,
        routes: plan
            .routes
            .iter()
            .map(|r| Route {
                dst: r.dst,
                gw: r.gw.or_else(|| (r.dst.prefix() == 0).then(|| plan.gateway_for(r.dst.ip())).flatten()),
            })
            .collect(),
        dns: conf.dns.clone(),
    }
}

/// The bridge's gateway addresses, the veth pair and its hairpin setting, in one batch, which also reads the host end
/// back for the container end's index (saving a round trip inside the container). On failure nothing of the pair is
/// left behind.
fn create_veth(
    conf: &NetConf,
    plan: &Plan,
    host: &mut Socket,
    container: &mut Socket,
    veth: &VethPair<'_>,
    target: &Target<'_>,
) -> Result<Option<u32>> {
    let gateways: Vec<IpNetwork> =
        if conf.is_gateway { plan.ranges.iter().map(Range::gateway_with_prefix).collect() } else { Vec::new() };
    let mut requests: Vec<Request> = gateways.iter().map(|gw| netlink::address_request(veth.master, *gw)).collect();
    let mut what: Vec<String> = gateways.iter().map(|gw| format!("adding address {gw} to {}", conf.bridge)).collect();
    let veth_at = requests.len();
    requests.extend(pair_requests(conf, veth));
    what.push("creating the veth pair".into());
    if conf.hairpin_mode {
        what.push("enabling hairpin mode".into());
    }
    let socket_error = |e| CniError::netlink("creating the veth pair", e);
    let mut answers = host.batch(requests).map_err(socket_error)?;
    let exists = answers[veth_at].as_ref().is_err_and(weft_netlink::Error::is_exists);
    if exists {
        refuse_another_netns(host, container, veth, target)?;
    }
    if exists && netlink::remove_link(host, veth.host)? {
        // Our host-side name is derived from the attachment, so an existing one is a leftover of an interrupted
        // ADD for this very attachment: it is gone now, so ours can be created (the gateways were answered).
        let retried = host.batch(pair_requests(conf, veth)).map_err(socket_error)?;
        answers.splice(veth_at.., retried);
    }
    if let Err(e) = &answers[veth_at] {
        return Err(veth_error(veth, target, e));
    }
    // Only a shortcut: without it, the container end is looked up from inside.
    let read_back = answers.pop().map(|answer| netlink::link_of(answer, veth.host));
    let peer_index = read_back.and_then(|link| link.ok().flatten()).and_then(|link| link.link);
    // The pair exists; any other failure removes it again.
    netlink::first_failure(answers, &what).inspect_err(|_| {
        let _ = netlink::remove_link(host, veth.host);
    })?;
    Ok(peer_index)
}

/// Our host end exists already (an IPAM plugin answered a repeated ADD, or the built-in records were lost): it may
/// be removed and made again only when its peer is CNI_IFNAME in this very CNI_NETNS (an interrupted ADD of this
/// attachment). A peer anywhere else belongs to a container that still runs, and is left alone.
fn refuse_another_netns(
    host: &mut Socket,
    container: &mut Socket,
    veth: &VethPair<'_>,
    target: &Target<'_>,
) -> Result<()> {
    let Some(host_end) = netlink::get_link(host, veth.host)? else { return Ok(()) };
    let here = netlink::get_link(container, veth.peer)?;
    if here.is_some_and(|c| c.link == Some(host_end.index) && host_end.link == Some(c.index)) {
        return Ok(());
    }
    Err(CniError::InvalidEnv(format!(
        "host interface {} of container {} and {} exists, and its peer is not {} in {}: that attachment lives in \
         another network namespace; DEL it before adding it again",
        veth.host,
        target.id,
        target.ifname,
        target.ifname,
        target.netns_path.display()
    )))
}

/// The veth pair, hairpin mode on its host end when asked for, and the host end read back.
fn pair_requests(conf: &NetConf, veth: &VethPair<'_>) -> Vec<Request> {
    let mut requests = vec![link::create_veth(veth)];
    if conf.hairpin_mode {
        requests.push(link::set_hairpin(LinkRef::Name(veth.host), true));
    }
    requests.push(link::get(LinkRef::Name(veth.host)));
    requests
}

fn veth_error(veth: &VethPair<'_>, target: &Target<'_>, e: &weft_netlink::Error) -> CniError {
    let VethPair { host, peer: container, .. } = *veth;
    let what = format!(
        "creating veth {host} <-> {container} in {} (does {container} exist there already?)",
        target.netns_path.display()
    );
    match e.errno() {
        Some(errno) => CniError::Netlink { what, errno: std::io::Error::from_raw_os_error(errno) },
        None => CniError::io(what, std::io::Error::other(e.to_string())),
    }
}

/// Inside the container: everything in one batch, on the link `peer_index` (or, when the host end did not tell,
/// the one found by name).
fn configure_container(
    plan: &Plan,
    mut container: Socket,
    peer_index: Option<u32>,
    target: &Target<'_>,
    ips: &[IpConfig],
) -> Result<()> {
    let Target { ifname, netns_path, .. } = *target;
    let missing = || {
        CniError::io(format!("{ifname} in {}", netns_path.display()), std::io::Error::other("missing after creation"))
    };
    let index = match peer_index {
        Some(index) => index,
        None => netlink::get_link(&mut container, ifname)?.ok_or_else(missing)?.index,
    };
    let addresses: Vec<IpNetwork> = ips.iter().map(|ip| ip.address).collect();
    let routes: Vec<(IpNetwork, Option<IpAddr>)> =
        plan.routes.iter().map(|r| (r.dst, r.gw.or_else(|| plan.gateway_for(r.dst.ip())))).collect();
    netlink::configure_container(&mut container, index, &addresses, &routes)
}

/// A gateway host forwards; a fresh netns does not by default. Read first: writing costs more than reading.
fn enable_forwarding(plan: &Plan) -> Result<()> {
    for range in &plan.ranges {
        let path = if range.subnet.is_ipv4() {
            "/proc/sys/net/ipv4/ip_forward"
        } else {
            "/proc/sys/net/ipv6/conf/all/forwarding"
        };
        let on = std::fs::read_to_string(path).map(|v| v.trim() == "1").unwrap_or(false);
        if !on {
            std::fs::write(path, b"1").map_err(|e| CniError::io(format!("enabling forwarding ({path})"), e))?;
        }
    }
    Ok(())
}
