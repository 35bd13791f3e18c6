//! Namespaces, veths and bridges. Every veth is created with both ends
//! already in lab namespaces, so no interface ever shows up in the root
//! namespace.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::addr::{ETCD_IP, UNDERLAY_PREFIX_LEN};
use super::cmd::{self, ip_batch, Tool};
use super::{Lab, LabError, Result};
use crate::subnet_file::SubnetFile;

/// The file `ip netns add` bind-mounts for a named namespace.
pub(crate) fn netns_file(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Host-side name of the veth leading to host `host`'s container.
fn container_peer(host: usize) -> String {
    format!("veth-c{host}")
}

impl Lab {
    /// Creates namespace `ns`, recording it first: if this process dies
    /// right after `ip netns add`, a later `down` still finds it. Names
    /// are unique to the lab and none of them existed when the lab claimed
    /// its name, so a recorded name can only be ours. If `ip netns add`
    /// fails (say, a clash), the name is forgotten again and left alone.
    fn create_namespace(&self, ns: &str) -> Result<()> {
        self.update(|rt| rt.namespaces.push(ns.to_string()))?;
        if let Err(e) = cmd::ip(["netns", "add", ns]) {
            self.update(|rt| rt.namespaces.retain(|known| known != ns))?;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes a namespace the lab recorded and forgets it.
    pub(crate) fn delete_namespace(&self, ns: &str) -> Result<()> {
        if netns_file(ns).exists() {
            cmd::ip(["netns", "del", ns])?;
        }
        self.update(|rt| rt.namespaces.retain(|known| known != ns))
    }

    fn owns_namespace(&self, ns: &str) -> bool {
        self.lock().namespaces.iter().any(|known| known == ns)
    }

    /// The underlay switch: br0 with etcd's address.
    pub(crate) fn create_underlay(&self) -> Result<()> {
        let ns = self.underlay_ns();
        self.create_namespace(&ns)?;
        ip_batch(
            Some(&ns),
            &[
                "link set lo up".to_string(),
                "link add br0 type bridge".to_string(),
                format!("addr add {ETCD_IP}/{UNDERLAY_PREFIX_LEN} dev br0"),
                "link set br0 up".to_string(),
            ],
        )
    }

    /// Host `host`: its namespace, eth0 cabled to the underlay, its address
    /// and forwarding (off by default in a new namespace, and needed to
    /// route between cni0 and the overlay).
    pub(crate) fn create_host(&self, host: usize) -> Result<()> {
        let dir = self.host_dir(host);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let ns = self.host_ns(host);
        self.create_namespace(&ns)?;
        let sysctl = Tool::Sysctl.path()?.display().to_string();
        ip_batch(
            None,
            &[
                format!("link add eth0 netns {ns} type veth peer name veth{host} netns {}", self.underlay_ns()),
                format!("netns exec {ns} {sysctl} -qw net.ipv4.ip_forward=1"),
            ],
        )?;
        ip_batch(
            Some(&ns),
            &[
                "link set lo up".to_string(),
                format!("addr add {}/{UNDERLAY_PREFIX_LEN} dev eth0", self.host_ip(host)),
                "link set eth0 up".to_string(),
            ],
        )
    }

    /// Plugs every host's cable into br0, in one `ip` run.
    pub(crate) fn connect_hosts_to_underlay(&self) -> Result<()> {
        let lines: Vec<String> =
            (1..=self.spec.hosts).map(|host| format!("link set veth{host} master br0 up")).collect();
        ip_batch(Some(&self.underlay_ns()), &lines)
    }

    /// (Re)creates host `host`'s container from its current subnet.env and
    /// returns the container's address. Any earlier container of that host
    /// is removed first, so this also follows a subnet change.
    pub fn attach_container(&self, host: usize) -> Result<Ipv4Addr> {
        self.check_host(host)?;
        let env = self.subnet_env(host)?;
        self.attach_container_with(host, &env)
    }

    /// The one place that knows how a container is attached (a bridge
    /// cni0 on the host, a veth into the container namespace), so that it
    /// can be swapped for the CNI plugin later.
    pub(crate) fn attach_container_with(&self, host: usize, env: &SubnetFile) -> Result<Ipv4Addr> {
        self.detach_container(host)?;
        let (gateway, len, ip) =
            container_address(env).map_err(|reason| LabError::SubnetEnv { path: self.subnet_file(host), reason })?;
        let (host_ns, container_ns) = (self.host_ns(host), self.container_ns(host));
        let mtu = env.mtu;
        let peer = container_peer(host);
        ip_batch(
            Some(&host_ns),
            &[
                "link add cni0 type bridge".to_string(),
                format!("link set cni0 mtu {mtu}"),
                format!("addr add {gateway}/{len} dev cni0"),
                "link set cni0 up".to_string(),
            ],
        )?;
        self.create_namespace(&container_ns)?;
        cmd::ip([
            "link",
            "add",
            "eth0",
            "netns",
            &container_ns,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &host_ns,
        ])?;
        ip_batch(Some(&host_ns), &[format!("link set {peer} mtu {mtu} master cni0 up")])?;
        ip_batch(
            Some(&container_ns),
            &[
                "link set lo up".to_string(),
                format!("link set eth0 mtu {mtu}"),
                format!("addr add {ip}/{len} dev eth0"),
                "link set eth0 up".to_string(),
                format!("route add default via {gateway}"),
            ],
        )?;
        self.update(|rt| rt.hosts[host - 1].container_ip = Some(ip))?;
        Ok(ip)
    }

    /// Removes host `host`'s container namespace (which takes its veth
    /// along) and the host's cni0 bridge. A no-op when nothing is attached.
    pub fn detach_container(&self, host: usize) -> Result<()> {
        self.check_host(host)?;
        let container_ns = self.container_ns(host);
        if self.owns_namespace(&container_ns) {
            self.delete_namespace(&container_ns)?;
        }
        self.update(|rt| rt.hosts[host - 1].container_ip = None)?;
        let host_ns = self.host_ns(host);
        if self.owns_namespace(&host_ns) && self.has_link(&host_ns, "cni0")? {
            cmd::ip(["-n", host_ns.as_str(), "link", "del", "cni0"])?;
        }
        Ok(())
    }

    fn has_link(&self, ns: &str, link: &str) -> Result<bool> {
        let mut command = std::process::Command::new(Tool::Ip.path()?);
        command.args(["-n", ns, "link", "show", "dev", link]);
        Ok(cmd::output(command)?.status.success())
    }
}

/// The host's gateway on cni0 (FLANNEL_SUBNET's address), its prefix length, and the address of the host's one
/// container: the address after the gateway, which must still be a host address of the subnet.
pub(crate) fn container_address(env: &SubnetFile) -> std::result::Result<(Ipv4Addr, u8, Ipv4Addr), String> {
    let Some(ipnetwork::IpNetwork::V4(subnet)) = env.subnet else {
        return Err("FLANNEL_SUBNET is missing or not IPv4".into());
    };
    let gateway = subnet.ip();
    let container =
        u32::from(gateway).checked_add(1).map(Ipv4Addr::from).ok_or("the gateway is the last IPv4 address")?;
    if subnet.contains(container) && container != subnet.broadcast() && subnet.prefix() < 31 {
        Ok((gateway, subnet.prefix(), container))
    } else {
        Err(format!("subnet {subnet} has no room for a container after gateway {gateway}"))
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    fn file(subnet: &str) -> SubnetFile {
        let text = format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\n");
        SubnetFile::parse(std::path::Path::new("subnet.env"), &text).unwrap()
    }

    #[test]
    fn the_container_takes_the_address_after_the_gateway() {
        assert_eq!(
            container_address(&file("10.244.3.1/24")).unwrap(),
            ("10.244.3.1".parse().unwrap(), 24, "10.244.3.2".parse().unwrap())
        );
        assert!(container_address(&file("10.244.3.254/24")).unwrap_err().contains("no room"));
        assert!(container_address(&file("10.244.3.1/31")).is_err());
    }
}
