//! Namespaces, veths and bridges. Every veth is created with both ends
//! already in lab namespaces, so no interface ever shows up in the root
//! namespace. Containers are attached by the CNI plugin, run like a runtime
//! runs it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;

use super::addr::{ETCD_IP, UNDERLAY_PREFIX_LEN};
use super::cmd::{self, ip_batch, Tool};
use super::{Lab, LabError, Result};
use weft::subnet_file::SubnetFile;

/// The file `ip netns add` bind-mounts for a named namespace.
pub(crate) fn netns_file(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// The CNI network name the lab's containers are attached to.
pub const CNI_NETWORK: &str = "weft-lab";
/// Where Debian's containernetworking-plugins live; on CNI_PATH as a runtime would have it.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

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

    /// The one place that knows how a container is attached: the lab creates the container's netns and runs the
    /// CNI plugin `weft` in the host's netns exactly as a container runtime does (CNI_* variables, the network
    /// config on stdin, the result on stdout). The plugin reads the host's subnet.env itself.
    pub(crate) fn attach_container_with(&self, host: usize, env: &SubnetFile) -> Result<Ipv4Addr> {
        self.detach_container(host)?;
        if !matches!(env.subnet, Some(ipnetwork::IpNetwork::V4(_))) {
            return Err(LabError::SubnetEnv {
                path: self.subnet_file(host),
                reason: "FLANNEL_SUBNET is missing or not IPv4".into(),
            });
        }
        let container_ns = self.container_ns(host);
        self.create_namespace(&container_ns)?;
        let result = self.run_cni(host, "ADD")?;
        let ip = container_ipv4(&result).ok_or_else(|| LabError::CommandFailed {
            command: format!("CNI ADD for {container_ns}"),
            status: "exit status: 0".into(),
            stderr: format!("the result has no IPv4 address: {result}"),
        })?;
        ip_batch(Some(&container_ns), &["link set lo up".to_string()])?;
        self.update(|rt| rt.hosts[host - 1].container_ip = Some(ip))?;
        Ok(ip)
    }

    /// Removes host `host`'s container: CNI DEL as a runtime would send it, then its namespace, then the host's
    /// cni0 bridge (so that a new subnet gets a fresh gateway address). A no-op when nothing is attached.
    pub fn detach_container(&self, host: usize) -> Result<()> {
        self.check_host(host)?;
        let container_ns = self.container_ns(host);
        if self.owns_namespace(&container_ns) {
            let deleted = self.run_cni(host, "DEL");
            self.delete_namespace(&container_ns)?;
            deleted?;
        }
        self.update(|rt| rt.hosts[host - 1].container_ip = None)?;
        let host_ns = self.host_ns(host);
        if self.owns_namespace(&host_ns) && self.has_link(&host_ns, "cni0")? {
            cmd::ip(["-n", host_ns.as_str(), "link", "del", "cni0"])?;
        }
        Ok(())
    }

    /// The network config the lab hands the plugin: host `host`'s subnet.env, and the IPAM store in the host's
    /// state directory (so the lab never writes to /var/lib/cni).
    fn cni_config(&self, host: usize) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "type": "weft",
            "subnetFile": self.subnet_file(host),
            "ipMasq": false,
            "ipam": {"dataDir": self.host_dir(host).join("cni-ipam")},
        })
        .to_string()
    }

    /// Runs the CNI plugin for host `host`'s container with `CNI_COMMAND=command`; returns its stdout.
    fn run_cni(&self, host: usize, command: &str) -> Result<String> {
        let plugin = self.spec.cni_plugin_path();
        let cni_path =
            std::env::join_paths(plugin.parent().into_iter().chain([std::path::Path::new(REFERENCE_PLUGINS)]))
                .map_err(|e| LabError::InvalidSpec(format!("CNI plugin path {}: {e}", plugin.display())))?;
        let mut child = cmd::in_netns(&self.host_ns(host), &plugin)?;
        child
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("{}-h{host}", self.spec.name))
            .env("CNI_NETNS", netns_file(&self.container_ns(host)))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let text = format!("CNI {command}: {}", cmd::describe(&child));
        let spawn_error = |source| LabError::Spawn { command: text.clone(), source };
        let mut running = child.spawn().map_err(spawn_error)?;
        let written = running.stdin.take().map(|mut stdin| stdin.write_all(self.cni_config(host).as_bytes()));
        let out = running.wait_with_output().map_err(spawn_error)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(LabError::CommandFailed {
                command: text,
                status: out.status.to_string(),
                stderr: format!("{}{}", stdout.trim(), String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        written.unwrap_or(Ok(())).map_err(spawn_error)?;
        Ok(stdout)
    }

    fn has_link(&self, ns: &str, link: &str) -> Result<bool> {
        let mut command = std::process::Command::new(Tool::Ip.path()?);
        command.args(["-n", ns, "link", "show", "dev", link]);
        Ok(cmd::output(command)?.status.success())
    }
}

/// The first IPv4 address of a CNI result.
fn container_ipv4(result: &str) -> Option<Ipv4Addr> {
    let value: serde_json::Value = serde_json::from_str(result).ok()?;
    value["ips"].as_array()?.iter().find_map(|ip| {
        let address = ip["address"].as_str()?;
        address.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod result_tests {
    use super::*;

    #[test]
    fn the_container_address_comes_from_the_cni_result() {
        let result =
            r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::2/64"},{"address":"10.244.3.2/24","interface":2}]}"#;
        assert_eq!(container_ipv4(result), Some("10.244.3.2".parse().unwrap()));
        assert_eq!(container_ipv4(r#"{"ips":[]}"#), None);
        assert_eq!(container_ipv4("not json"), None);
    }
}
