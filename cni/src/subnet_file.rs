//! `subnet.env`: the whole contract between the daemon and the CNI plugin, in flannel's variables.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_IPV6_NETWORK=...       (when IPv6 is enabled)
//! FLANNEL_IPV6_SUBNET=...
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//! The subnet variables carry the first usable address, not the base address.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

/// What the file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    pub network: Option<IpNetwork>,
    /// First usable address with the subnet's prefix, e.g. 10.244.3.1/24.
    pub subnet: Option<IpNetwork>,
    pub ipv6_network: Option<IpNetwork>,
    pub ipv6_subnet: Option<IpNetwork>,
    pub mtu: u32,
    pub ipmasq: bool,
    /// Further entries of a comma-separated FLANNEL_NETWORK or FLANNEL_IPV6_NETWORK: every one is a cluster
    /// network, as flannel's plugin reads them.
    pub more_networks: Vec<IpNetwork>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubnetFileError {
    #[error("subnet file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("subnet file {path} line {line}: {msg}")]
    Parse { path: PathBuf, line: usize, msg: String },
}

/// The smallest MTU an IPv4 link may have (RFC 791) and the largest the kernel takes.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

impl SubnetFile {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let list = |first: IpNetwork| {
            let more = self.more_networks.iter().filter(|n| n.is_ipv4() == first.is_ipv4());
            std::iter::once(first).chain(more.copied()).map(|n| n.to_string()).collect::<Vec<_>>().join(",")
        };
        if let (Some(net), Some(sub)) = (self.network, self.subnet) {
            out.push_str(&format!("FLANNEL_NETWORK={}\nFLANNEL_SUBNET={sub}\n", list(net)));
        }
        if let (Some(net), Some(sub)) = (self.ipv6_network, self.ipv6_subnet) {
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={sub}\n", list(net)));
        }
        out.push_str(&format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq));
        out
    }

    /// Parses the file. Unknown variables are ignored; a comma-separated network list keeps every entry (the first
    /// in `network`/`ipv6_network`, the rest in `more_networks`); a subnet list uses its first entry.
    pub fn parse(path: &Path, text: &str) -> Result<SubnetFile, SubnetFileError> {
        let mut file = SubnetFile {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 0,
            ipmasq: false,
            more_networks: Vec::new(),
        };
        let mut saw_mtu = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |msg: String| SubnetFileError::Parse { path: path.to_path_buf(), line: i + 1, msg };
            let (name, value) = line.split_once('=').ok_or_else(|| fail(format!("{line:?} is not NAME=VALUE")))?;
            let value = value.trim().trim_matches('"');
            let cidr = || -> Result<IpNetwork, SubnetFileError> {
                let first = value.split(',').next().unwrap_or_default();
                first.parse().map_err(|_| fail(format!("{name}={value:?} is not a CIDR")))
            };
            let all = || -> Result<Vec<IpNetwork>, SubnetFileError> {
                value
                    .split(',')
                    .map(|v| v.parse().map_err(|_| fail(format!("{name}={value:?} is not a CIDR"))))
                    .collect()
            };
            match name.trim() {
                "FLANNEL_NETWORK" | "FLANNEL_IPV6_NETWORK" => {
                    let mut nets = all()?.into_iter();
                    let first = nets.next();
                    if name.trim() == "FLANNEL_NETWORK" {
                        file.network = first;
                    } else {
                        file.ipv6_network = first;
                    }
                    file.more_networks.extend(nets.filter(|n| Some(*n) != first));
                }
                "FLANNEL_SUBNET" => file.subnet = Some(cidr()?),
                "FLANNEL_IPV6_SUBNET" => file.ipv6_subnet = Some(cidr()?),
                "FLANNEL_MTU" => {
                    file.mtu = value.parse().map_err(|_| fail(format!("FLANNEL_MTU={value:?} is not a number")))?;
                    saw_mtu = true;
                }
                "FLANNEL_IPMASQ" => file.ipmasq = value == "true",
                _ => {}
            }
        }
        let invalid = |msg: String| SubnetFileError::Parse { path: path.to_path_buf(), line: 0, msg };
        if !saw_mtu {
            return Err(invalid("FLANNEL_MTU is missing".into()));
        }
        // The values go into containers' interfaces and routes: checked here, so a bad file is refused up front.
        if !(MIN_MTU..=MAX_MTU).contains(&file.mtu) {
            return Err(invalid(format!("FLANNEL_MTU={} is outside {MIN_MTU}..{MAX_MTU}", file.mtu)));
        }
        for (net_name, network, sub_name, subnet) in [
            ("FLANNEL_NETWORK", file.network, "FLANNEL_SUBNET", file.subnet),
            ("FLANNEL_IPV6_NETWORK", file.ipv6_network, "FLANNEL_IPV6_SUBNET", file.ipv6_subnet),
        ] {
            if network.is_some() != subnet.is_some() {
                // flannel writes both or neither; half a pair would be dropped or half-used.
                return Err(invalid(format!("{net_name} and {sub_name} must be set together")));
            }
            if let (Some(network), Some(subnet)) = (network, subnet) {
                let inside = network.is_ipv4() == subnet.is_ipv4()
                    && network.contains(subnet.ip())
                    && subnet.prefix() >= network.prefix();
                if !inside {
                    return Err(invalid(format!("{sub_name}={subnet} is not inside {net_name}={network}")));
                }
            }
        }
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<SubnetFile, SubnetFileError> {
        let text =
            fs::read_to_string(path).map_err(|source| SubnetFileError::Io { path: path.to_path_buf(), source })?;
        SubnetFile::parse(path, &text)
    }

    /// Writes the file atomically: a reader sees the old content or the new, never half a file.
    pub fn write(&self, path: &Path) -> Result<(), SubnetFileError> {
        write_atomically(path, self.render().as_bytes(), 0o644)
            .map_err(|source| SubnetFileError::Io { path: path.to_path_buf(), source })
    }
}

/// Writes to a temporary file in the same directory, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_variables_in_order_and_parses_back() {
        let file = SubnetFile {
            network: Some("10.42.0.0/16".parse().unwrap()),
            subnet: Some("10.42.5.1/24".parse().unwrap()),
            ipv6_network: Some("fd42::/56".parse().unwrap()),
            ipv6_subnet: Some("fd42:0:0:5::1/64".parse().unwrap()),
            mtu: 1450,
            ipmasq: true,
            more_networks: Vec::new(),
        };
        let text = file.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.5.1/24\nFLANNEL_IPV6_NETWORK=fd42::/56\nFLANNEL_IPV6_SUBNET=fd42:0:0:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetFile::parse(Path::new("x"), &text).unwrap(), file);
    }

    #[test]
    fn every_network_of_a_list_is_kept() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n";
        let file = SubnetFile::parse(Path::new("x"), text).unwrap();
        assert_eq!(file.network.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(file.more_networks, vec!["10.245.0.0/16".parse::<IpNetwork>().unwrap()]);
        assert!(file.render().starts_with("FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\n"));
    }

    #[test]
    fn parse_errors_name_file_and_line() {
        let p = Path::new("/run/flannel/subnet.env");
        let e =
            SubnetFile::parse(p, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=nope\nFLANNEL_MTU=1450\n").unwrap_err();
        assert_eq!(e.to_string(), "subnet file /run/flannel/subnet.env line 2: FLANNEL_SUBNET=\"nope\" is not a CIDR");
        let e = SubnetFile::parse(p, "FLANNEL_SUBNET=10.244.3.1/24\n").unwrap_err();
        assert!(e.to_string().contains("FLANNEL_MTU is missing"));
        let e = SubnetFile::parse(p, "garbage\nFLANNEL_MTU=1\n").unwrap_err();
        assert!(e.to_string().contains("line 1"));
    }

    #[test]
    fn values_that_would_break_a_container_are_refused() {
        let p = Path::new("/run/flannel/subnet.env");
        let err = |text: &str| SubnetFile::parse(p, text).unwrap_err().to_string();
        assert!(err("FLANNEL_MTU=0\n").contains("FLANNEL_MTU=0 is outside 68..65535"));
        assert!(err("FLANNEL_MTU=70000\n").contains("outside"));
        let outside = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.99.3.1/24\nFLANNEL_MTU=1450\n";
        assert!(err(outside).contains("FLANNEL_SUBNET=10.99.3.1/24 is not inside FLANNEL_NETWORK=10.244.0.0/16"));
        let wider = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.0.1/8\nFLANNEL_MTU=1450\n";
        assert!(err(wider).contains("is not inside"));
        let v6 = "FLANNEL_IPV6_NETWORK=fd42::/56\nFLANNEL_IPV6_SUBNET=fd43::1/64\nFLANNEL_MTU=1450\n";
        assert!(err(v6).contains("FLANNEL_IPV6_SUBNET=fd43::1/64 is not inside"));
        assert!(SubnetFile::parse(
            p,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n"
        )
        .is_ok());
    }

    #[test]
    fn atomic_write_replaces_and_creates_dirs() {
        let dir = std::env::temp_dir().join(format!("weft-sf-{}", std::process::id()));
        let path = dir.join("a/b/subnet.env");
        write_atomically(&path, b"one", 0o644).unwrap();
        write_atomically(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left behind");
        fs::remove_dir_all(dir).unwrap();
    }
}
