//! `weftctl cleanup`: removes everything weftd created on this host, so the host is as before weft (or ready for
//! another overlay). Safe to run twice, and with weftd stopped: a running weftd would put everything back.
//!
//! What goes: the VXLAN devices of any VNI (`flannel.<VNI>`, `flannel-v6.<VNI>`, with their addresses,
//! neighbours and FDB entries), the udp backend's TUN `flannel0`, every route tagged with weft's protocol (VXLAN,
//! DirectRouting and host-gw routes, the `--ip-blackhole-route` blackhole), the host rule tables in nftables and in
//! both iptables backends (with the accepts weftd put in other nftables tables' forward chains), and the subnet
//! file. etcd is left alone unless `--release-lease` is given, so a later weftd gets the same subnet back.

use std::path::PathBuf;

use clap::Args;
use weft_backends::kernel::{reconcile, KernelError};
use weft_backends::model::{KernelState, Scope, WEFT_ROUTE_PROTOCOL};
use weft_backends::netlink::NetlinkKernel;
use weft_backends::rules::traffic::table_id;
use weft_backends::rules::{reconcile_rules, IptablesRules, IptablesVariant, NftRules, Rules, RulesError};
use weft_backends::Family;

use crate::ctl::EtcdArgs;
use crate::store::etcd::EtcdStore;
use crate::store::LeaseStore;
use crate::subnet_file::{self, SubnetFile};

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// the subnet file weftd wrote
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// also delete this host's lease from etcd (found through the subnet file)
    #[arg(long)]
    pub release_lease: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("netlink socket: {0}")]
    Netlink(std::io::Error),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("firewall: {0}")]
    Rules(#[from] RulesError),
    #[error("removing {path}: {source}")]
    SubnetFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--release-lease: {0}")]
    Lease(String),
}

/// Whether `name` is a device weftd creates: `flannel.<VNI>`, `flannel-v6.<VNI>` or the udp backend's persistent
/// TUN `flannel0`.
pub fn is_weft_device(name: &str) -> bool {
    if name == weft_backends::udp::DEVICE {
        return true;
    }
    let vni = name.strip_prefix("flannel-v6.").or_else(|| name.strip_prefix("flannel."));
    vni.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes weft's objects; returns what was done, one line each.
pub async fn run(args: &CleanupArgs) -> Result<Vec<String>, CleanupError> {
    let mut done = Vec::new();
    // On a terminal only: releasing the lease waits for etcd, and iptables can take seconds on a busy host.
    let mut progress = crate::term::Progress::new("cleanup", 4);
    if args.release_lease {
        progress.step("releasing the lease in etcd");
        done.extend(release_lease(args).await?);
    }
    progress.advance("removing devices and routes");

    let mut kernel = NetlinkKernel::connect().map_err(CleanupError::Netlink)?;
    let devices: Vec<String> =
        kernel.interfaces().await?.into_iter().map(|i| i.name).filter(|n| is_weft_device(n)).collect();
    // Everything in this scope that is not desired is deleted, and nothing is desired.
    let scope = Scope::links(devices, WEFT_ROUTE_PROTOCOL);
    let report = reconcile(&mut kernel, &scope, &KernelState::default()).await?;
    done.extend(report.applied.iter().map(ToString::to_string));
    if let Some((op, e)) = report.failed.into_iter().next() {
        return Err(KernelError::Netlink(format!("{op}: {e}")).into());
    }

    progress.advance("removing nftables tables");
    let tables = [table_id(Family::V4), table_id(Family::V6)];
    done.extend(clear_tables(NftRules::system(), &tables).await?);
    for variant in [IptablesVariant::Legacy, IptablesVariant::Nft] {
        progress.step(&format!("removing iptables chains ({variant:?})"));
        done.extend(clear_tables(IptablesRules::system(variant), &tables).await?);
    }
    progress.advance("removing the subnet file");

    match std::fs::remove_file(&args.subnet_file) {
        Ok(()) => done.push(format!("removed {}", args.subnet_file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(CleanupError::SubnetFile { path: args.subnet_file.display().to_string(), source }),
    }
    Ok(done)
}

/// Deletes `tables` through one applier. A host without that firewall program has nothing to delete.
async fn clear_tables<R: Rules>(
    mut rules: R,
    tables: &[weft_backends::rules::TableId],
) -> Result<Vec<String>, RulesError> {
    let report = match reconcile_rules(&mut rules, tables, &Default::default()).await {
        Ok(report) => report,
        Err(RulesError::Spawn { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if let Some((_, e)) = report.failed.into_iter().next() {
        return Err(e);
    }
    Ok(report.applied.iter().map(ToString::to_string).collect())
}

async fn release_lease(args: &CleanupArgs) -> Result<Vec<String>, CleanupError> {
    let lease = |msg: String| CleanupError::Lease(msg);
    let Some(key) = SubnetFile::read(&args.subnet_file).ok().and_then(|f| subnet_file::lease_key(&f)) else {
        return Ok(Vec::new());
    };
    let store = EtcdStore::connect(&args.etcd.etcd_endpoints, &args.etcd.etcd_prefix, None)
        .await
        .map_err(|e| lease(e.to_string()))?;
    store.delete_lease(&key).await.map_err(|e| lease(e.to_string()))?;
    Ok(vec![format!("deleted lease {key}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flannels_device_names_are_ours() {
        for name in ["flannel.1", "flannel.4096", "flannel-v6.1", "flannel0"] {
            assert!(is_weft_device(name), "{name}");
        }
        for name in ["flannel", "flannel.", "flannel.1a", "flannel-wg", "cni0", "eth0", "xflannel.1", "flannel-v6."] {
            assert!(!is_weft_device(name), "{name}");
        }
    }
}
