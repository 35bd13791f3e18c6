//! CHECK: compares the container's network with prevResult and reports every difference at once.

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;

use super::plan::host_veth_name;
use crate::env::Env;
use crate::error::{CniError, Result};
use crate::ipam::Store;
use crate::netconf::{Ipam, NetConf};
use crate::result::CniResult;
use crate::{netlink, version};
use weft_netlink::blocking::Socket;

pub fn check(conf: &NetConf, env: &Env) -> Result<()> {
    if !version::at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::IncompatibleVersion(format!("{} (CHECK needs 0.4.0 or later)", conf.cni_version)));
    }
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::InvalidConfig("CHECK needs prevResult".into()))?;
    let prev = CniResult::from_json(prev)?;
    let netns = std::fs::File::open(netns_path)
        .map_err(|e| CniError::UnknownContainer(format!("CNI_NETNS {}: {e}", netns_path.display())))?;
    let mut container = Socket::open_in_on_this_thread(&netns)
        .map_err(|e| CniError::netlink("opening a netlink socket inside CNI_NETNS", e))?;
    let mut host = Socket::open().map_err(|e| CniError::netlink("opening a netlink socket", e))?;
    let mut diffs = kernel_differences(&mut container, &mut host, &prev, conf, id, ifname, netns_path)?;
    if let Ipam::Builtin { data_dir } = &conf.ipam {
        let held: Vec<IpAddr> = Store::open(data_dir, &conf.name)?.find(id, ifname)?;
        for ip in &prev.ips {
            if !held.contains(&ip.address.ip()) {
                diffs.push(format!("address {} is not allocated to {id}/{ifname} in the IPAM store", ip.address.ip()));
            }
        }
    }
    // CHECK is where a flushed ipMasq table comes back (see masq.rs): repaired, not reported.
    if let Ok(file) = super::read_subnet_file(&conf.subnet_file) {
        let plan = super::Plan::new(conf, &file)?;
        if plan.ip_masq {
            crate::masq::ensure(&conf.name, &plan.masqueraded())?;
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::CheckMismatch(diffs))
    }
}

/// What the kernel shows that differs from prevResult: the container's interface, its MAC, addresses and routes,
/// and the host end in the bridge.
fn kernel_differences(
    container: &mut Socket,
    host: &mut Socket,
    prev: &CniResult,
    conf: &NetConf,
    id: &str,
    ifname: &str,
    netns_path: &Path,
) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    let Some(link) = netlink::get_link(container, ifname)? else {
        diffs.push(format!("interface {ifname} is missing in {}", netns_path.display()));
        return Ok(diffs);
    };
    let ours = prev.interfaces.iter().position(|i| i.name == ifname && i.sandbox.is_some());
    if let Some(i) = ours {
        let want = &prev.interfaces[i].mac;
        let mac = link.mac.map(|mac| netlink::format_mac(&mac)).unwrap_or_default();
        if !want.is_empty() && !want.eq_ignore_ascii_case(&mac) {
            diffs.push(format!("{ifname} has MAC {mac} instead of {want}"));
        }
    }
    let present = netlink::addresses(container, link.index)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none() || ip.interface == ours) {
        if !present.iter().any(|p| p.ip() == ip.address.ip() && p.prefix() == ip.address.prefix()) {
            diffs.push(format!("address {} is missing on {ifname}", ip.address));
        }
    }
    let routes = netlink::routes(container, link.index)?;
    for r in &prev.routes {
        if !routes.iter().any(|(dst, gw)| same_net(*dst, r.dst) && r.gw.is_none_or(|want| *gw == Some(want))) {
            diffs.push(format!(
                "route to {}{} is missing",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
        }
    }
    let host_name = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name.starts_with("veth"))
        .map(|i| i.name.clone())
        .unwrap_or_else(|| host_veth_name(id, ifname));
    let bridge = netlink::get_link(host, &conf.bridge)?;
    match (netlink::get_link(host, &host_name)?, &bridge) {
        (None, _) => diffs.push(format!("host interface {host_name} is missing")),
        (_, None) => diffs.push(format!("bridge {} is missing", conf.bridge)),
        (Some(v), Some(b)) if v.master != Some(b.index) => {
            diffs.push(format!("host interface {host_name} is not in bridge {}", conf.bridge))
        }
        _ => {}
    }
    Ok(diffs)
}

fn same_net(a: IpNetwork, b: IpNetwork) -> bool {
    a.prefix() == b.prefix() && a.network() == b.network()
}
