//! `ipMasq`: masquerade traffic from the host's container subnet to anywhere outside the cluster network (and not
//! multicast), like the bridge plugin's rules.
//!
//! The bridge plugin adds a chain per container on every ADD, which costs two iptables runs per container. weft
//! installs one rule per subnet instead, the first time a container of that subnet is attached in this host netns,
//! and leaves a marker under /run named after the netns cookie (tmpfs, so it goes away on reboot together with the
//! rules; a cookie is never reused). The ADD fast path is then one stat().

use std::path::PathBuf;
use std::process::Command;

use ipnetwork::IpNetwork;

use crate::error::{CniError, Result};

const MARKER_DIR: &str = "/run/weft-cni/masq";

/// The nat chain that masquerades everything but multicast (iptables allows one `-d` per rule, so the cluster
/// exclusion and the multicast exclusion live in two rules).
pub const CHAIN: &str = "WEFT-CNI-MASQ";

/// The POSTROUTING rule for one subnet: traffic from it that does not stay in the cluster goes to [`CHAIN`].
pub fn rule(subnet: IpNetwork, cluster: Option<IpNetwork>, network_name: &str) -> Vec<String> {
    let mut args = vec!["POSTROUTING".to_string(), "-s".into(), subnet.to_string()];
    if let Some(cluster) = cluster {
        args.extend(["!".into(), "-d".into(), cluster.to_string()]);
    }
    args.extend(["-m".into(), "comment".into(), "--comment".into(), format!("weft-cni {network_name}")]);
    args.extend(["-j".into(), CHAIN.into()]);
    args
}

/// The rule inside [`CHAIN`].
pub fn chain_rule(ipv4: bool) -> Vec<String> {
    let multicast = if ipv4 { "224.0.0.0/4" } else { "ff00::/8" };
    [CHAIN, "!", "-d", multicast, "-j", "MASQUERADE"].map(str::to_string).to_vec()
}

fn marker(netns_id: &str, network_name: &str, subnet: IpNetwork) -> PathBuf {
    let subnet = subnet.to_string().replace(['/', ':'], "_");
    PathBuf::from(MARKER_DIR).join(format!("{netns_id}-{network_name}-{subnet}"))
}

/// Makes sure the rule exists in the current netns.
pub fn ensure(subnet: IpNetwork, cluster: Option<IpNetwork>, network_name: &str) -> Result<()> {
    let netns_id = weft_netlink::netns::current_id().map_err(|e| CniError::io("identifying the host netns", e))?;
    let marker = marker(&netns_id, network_name, subnet);
    if marker.exists() {
        return Ok(());
    }
    let tool = if subnet.is_ipv4() { "iptables" } else { "ip6tables" };
    let run = |op: &str, args: &[String]| -> Result<(bool, String)> {
        let out = Command::new(tool).args(["-w", "-t", "nat", op]).args(args).output().map_err(|e| {
            CniError::io(format!("running {tool} for ipMasq (install iptables or set \"ipMasq\": false)"), e)
        })?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
    };
    let ensure_rule = |args: &[String]| -> Result<()> {
        if run("-C", args)?.0 {
            return Ok(());
        }
        match run("-A", args)? {
            (true, _) => Ok(()),
            (false, stderr) => {
                Err(CniError::io(format!("{tool} -t nat -A {}", args.join(" ")), std::io::Error::other(stderr)))
            }
        }
    };
    // -N fails when the chain exists, which is fine; a real problem shows up in the next step.
    run("-N", &[CHAIN.to_string()])?;
    ensure_rule(&chain_rule(subnet.is_ipv4()))?;
    ensure_rule(&rule(subnet, cluster, network_name))?;
    let _ = std::fs::create_dir_all(MARKER_DIR);
    let _ = std::fs::write(&marker, b"");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_subnet() {
        let r = rule("10.244.3.0/24".parse().unwrap(), Some("10.244.0.0/16".parse().unwrap()), "cbr0");
        assert_eq!(
            r.join(" "),
            "POSTROUTING -s 10.244.3.0/24 ! -d 10.244.0.0/16 -m comment --comment weft-cni cbr0 -j WEFT-CNI-MASQ"
        );
        assert_eq!(chain_rule(true).join(" "), "WEFT-CNI-MASQ ! -d 224.0.0.0/4 -j MASQUERADE");
        assert_eq!(chain_rule(false).join(" "), "WEFT-CNI-MASQ ! -d ff00::/8 -j MASQUERADE");
        assert!(marker("c7", "n", "fd00::/64".parse().unwrap()).ends_with("c7-n-fd00___64"));
    }
}
