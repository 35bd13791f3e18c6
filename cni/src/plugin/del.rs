//! DEL: idempotent and forgiving, as the spec asks. The container, its netns, CNI_NETNS itself (containerd sends
//! it empty once the task is gone) or the subnet file may all be missing; what exists is removed.

use super::plan::{host_veth_name, ipam_plugin_conf};
use crate::env::Env;
use crate::error::{CniError, Result};
use crate::ipam::{exec, Store};
use crate::netconf::{Ipam, NetConf};
use crate::netlink;
use weft_netlink::blocking::Socket;

pub fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let id = env.container_id()?;
    let ifname = env.ifname()?;
    remove_interfaces(env, id, ifname)?;
    match &conf.ipam {
        Ipam::Builtin { data_dir } => {
            let store = Store::open(data_dir, &conf.name)?;
            store.release_by_id(id, ifname)?;
            // The network's last container on this host is gone: so is the reason for its ipMasq tables.
            if store.allocations()?.is_empty() {
                crate::masq::remove(&conf.name)?;
            }
        }
        Ipam::Plugin { plugin } => {
            let binary = exec::find(plugin, &env.path)?;
            let file = super::read_subnet_file(&conf.subnet_file).ok();
            exec::run(&binary, plugin, "DEL", &ipam_plugin_conf(conf, file.as_ref()))?;
        }
    }
    // A node switched from flannel keeps flannel's per-container state files; they are of no use any more.
    if let Some(dir) = &conf.flannel_data_dir {
        let _ = std::fs::remove_file(dir.join(id));
    }
    Ok(())
}

fn remove_interfaces(env: &Env, id: &str, ifname: &str) -> Result<()> {
    // A netns that is gone (or is no netns) has taken the container's interface with it.
    let container_socket = env
        .netns
        .as_deref()
        .and_then(|p| std::fs::File::open(p).ok())
        .and_then(|f| Socket::open_in_on_this_thread(&f).ok());
    if let Some(mut socket) = container_socket {
        if netlink::remove_link(&mut socket, ifname)? {
            // Deleting one end of the veth removed the host end too.
            return Ok(());
        }
    }
    // No netns, or no interface in it: remove our host end if something left it behind.
    let mut host = Socket::open().map_err(|e| CniError::netlink("opening a netlink socket", e))?;
    netlink::remove_link(&mut host, &host_veth_name(id, ifname)).map(drop)
}
