//! ADD: address first (under the store's lock, released before any netlink work so concurrent ADDs overlap), then
//! the bridge, the veth pair straight into the container, its addresses and routes. Any failure undoes what was done:
//! no half veth, no leaked address.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;

use ipnetwork::IpNetwork;

use super::plan::{host_veth_name, ipam_plugin_conf, Plan};
use super::read_subnet_file;
use crate::env::Env;
use crate::error::{CniError, Result};
use crate::ipam::{exec, Range, Store};
use crate::netconf::{Ipam, NetConf};
use crate::netlink::{self, Veth};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::subnet_file::SubnetFile;
use crate::{masq, netns, trace, version};

/// Index of the container's interface in the result's `interfaces` (bridge, host veth, container end).
const CONTAINER_INTERFACE: usize = 2;

pub fn add(conf: &NetConf, env: &Env) -> Result<String> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let format = version::format_of(&conf.cni_version)?;
    let file = read_subnet_file(&conf.subnet_file)?;
    let plan = Plan::new(conf, &file)?;
    trace::mark("config and subnet file read");
    let netns =
        netns::open(netns_path).map_err(|e| CniError::io(format!("opening CNI_NETNS {}", netns_path.display()), e))?;
    // The thread that opens the container's netlink socket runs while the address is allocated and the runtime
    // is built.
    let container_socket = netns::spawn_socket_in(&netns)?;
    let allocated = allocate(conf, env, &file, &plan, id, ifname);
    trace::mark("address allocated");
    let runtime = netlink_runtime();
    trace::mark("runtime built");
    let container_socket = container_socket.join();
    let ips = allocated?;
    trace::mark("container socket open");
    let target = Target { id, ifname, netns: &netns, netns_path };
    let attached = runtime.and_then(|runtime| attach(conf, &plan, &runtime, container_socket?, &target, &ips));
    match attached {
        Ok(result) => Ok(result.to_json(&conf.cni_version, format).to_string()),
        Err(e) => {
            // The error that made ADD fail is what the runtime needs to see; a failed release is secondary.
            let _ = release(conf, env, &file, &ips);
            Err(e)
        }
    }
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
    runtime: &tokio::runtime::Runtime,
    container_socket: rtnetlink::sys::Socket,
    target: &Target<'_>,
    ips: &[IpConfig],
) -> Result<CniResult> {
    let Target { id, ifname, netns, netns_path } = *target;
    if conf.is_gateway {
        enable_forwarding(plan)?;
    }
    if plan.ip_masq {
        for (range, network) in
            plan.ranges.iter().map(|r| (r, plan.networks.iter().find(|n| n.is_ipv4() == r.subnet.is_ipv4())))
        {
            masq::ensure(range.subnet, network.copied(), &conf.name)?;
        }
    }
    runtime.block_on(async {
        let host = netns::handle(None)?;
        let container = netns::handle(Some(container_socket))?;
        let gateways: Vec<IpNetwork> =
            if conf.is_gateway { plan.ranges.iter().map(Range::gateway_with_prefix).collect() } else { Vec::new() };
        trace::mark("netlink runtime ready");
        let (bridge, _) = netlink::ensure_bridge(&host, &conf.bridge, plan.mtu, &gateways).await?;
        trace::mark("bridge ready");
        let host_name = host_veth_name(id, ifname);
        let (host_mac, container_mac) = (netlink::random_mac(), netlink::random_mac());
        let veth = Veth {
            host: &host_name,
            host_mac: &host_mac,
            container: ifname,
            container_mac: &container_mac,
            mtu: plan.mtu,
            bridge_index: bridge.index,
            netns_fd: std::os::fd::AsRawFd::as_raw_fd(netns),
        };
        let veth_error = |e: rtnetlink::Error| {
            let errno = match netlink::errno(&e) {
                Some(n) => std::io::Error::from_raw_os_error(n),
                None => std::io::Error::other(e.to_string()),
            };
            CniError::Netlink {
                what: format!(
                    "creating veth {host_name} <-> {ifname} in {} (does {ifname} exist there already?)",
                    netns_path.display()
                ),
                errno,
            }
        };
        if let Err(e) = netlink::create_veth(&host, &veth).await {
            // Our host-side name is derived from the attachment, so an existing one is a leftover of an interrupted
            // ADD for this very attachment: replace it.
            let stale = netlink::errno(&e) == Some(libc::EEXIST) && netlink::delete_link(&host, &host_name).await?;
            if !stale {
                return Err(veth_error(e));
            }
            netlink::create_veth(&host, &veth).await.map_err(veth_error)?;
        }
        trace::mark("veth created");
        let configured = async {
            let link = netlink::link_by_name(&container, ifname).await?.ok_or_else(|| {
                CniError::io(
                    format!("{ifname} in {}", netns_path.display()),
                    std::io::Error::other("missing after creation"),
                )
            })?;
            // The container's requests are sent back to back without waiting for each ack: one socket delivers
            // them in order and the kernel handles each before reading the next, so a route still comes after
            // the address that makes its gateway reachable.
            let mut requests: Vec<Pin<Box<dyn Future<Output = Result<()>> + '_>>> =
                vec![Box::pin(netlink::set_up(&container, link.index))];
            for ip in ips {
                requests.push(Box::pin(netlink::add_address(&container, link.index, ip.address)));
            }
            for route in &plan.routes {
                let gw = route.gw.or_else(|| plan.gateway_for(route.dst.ip()));
                requests.push(Box::pin(netlink::add_route(&container, link.index, route.dst, gw)));
            }
            let hairpin = async {
                match conf.hairpin_mode {
                    true => netlink::set_hairpin(&host, &host_name).await,
                    false => Ok(()),
                }
            };
            futures_util::try_join!(futures_util::future::try_join_all(requests), hairpin)?;
            Ok::<_, CniError>(())
        }
        .await;
        trace::mark("container configured");
        if let Err(e) = configured {
            let _ = netlink::delete_link(&host, &host_name).await;
            return Err(e);
        }
        Ok(CniResult {
            interfaces: vec![
                Interface { name: conf.bridge.clone(), mac: bridge.mac.clone(), sandbox: None, mtu: bridge.mtu },
                Interface {
                    name: host_name.clone(),
                    mac: netlink::format_mac(&host_mac),
                    sandbox: None,
                    mtu: Some(plan.mtu),
                },
                Interface {
                    name: ifname.to_string(),
                    mac: netlink::format_mac(&container_mac),
                    sandbox: Some(netns_path.display().to_string()),
                    mtu: Some(plan.mtu),
                },
            ],
            ips: ips.to_vec(),
            routes: plan
                .routes
                .iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw.or_else(|| (r.dst.prefix() == 0).then(|| plan.gateway_for(r.dst.ip())).flatten()),
                })
                .collect(),
            dns: conf.dns.clone(),
        })
    })
}

/// The single-threaded runtime that drives both netlink sockets.
fn netlink_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("starting the netlink runtime", e))
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
