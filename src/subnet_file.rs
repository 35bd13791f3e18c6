//! The subnet file weftd writes for the CNI plugin. The format itself belongs to the plugin's crate
//! ([`weft_cni::subnet_file`]); this module fills it from our lease.

use std::io;
use std::path::Path;

use ipnetwork::IpNetwork;
use weft_backends::Family;
pub use weft_cni::subnet_file::{write_atomically, SubnetFile, SubnetFileError};

use crate::config::NetworkConfig;
use crate::ipmath;
use crate::lease::SubnetKey;

/// The file for our lease: the subnet variables carry the first usable address (flannel's convention).
pub fn for_lease(config: &NetworkConfig, key: &SubnetKey, mtu: u32, ipmasq: bool) -> SubnetFile {
    let first_usable =
        |family| key.subnet(family).map(|s| IpNetwork::new(ipmath::nth(s, 1), s.prefix()).expect("prefix is valid"));
    SubnetFile {
        network: config.networks.v4.as_ref().map(|c| c.network),
        subnet: config.networks.v4.as_ref().and(first_usable(Family::V4)),
        ipv6_network: config.networks.v6.as_ref().map(|c| c.network),
        ipv6_subnet: config.networks.v6.as_ref().and(first_usable(Family::V6)),
        mtu,
        ipmasq,
        more_networks: Vec::new(),
    }
}

/// The leased subnets a subnet file records, as a key (base addresses); how a restarted weftd finds its subnet.
pub fn lease_key(file: &SubnetFile) -> Option<SubnetKey> {
    let base = |n: Option<IpNetwork>| n.map(|n| IpNetwork::new(n.network(), n.prefix()).expect("prefix is valid"));
    let key = SubnetKey::new(base(file.subnet), base(file.ipv6_subnet));
    (key.ipv4.is_some() || key.ipv6.is_some()).then_some(key)
}

/// Whether weftd can write `path` the way it will (a temporary file in its directory, renamed over it). Checked
/// before any lease is claimed, so a wrong path fails before anything in etcd or the kernel changes.
pub fn check_writable(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory"));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let probe = dir.join(format!(".{}.probe-{}", name.to_string_lossy(), std::process::id()));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writability_is_checked_where_the_file_goes() {
        let dir = std::env::temp_dir().join(format!("weft-subnet-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("run/subnet.env");
        check_writable(&file).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("run")).unwrap().count(), 0, "the probe is removed");
        assert_eq!(check_writable(&dir.join("run")).unwrap_err().kind(), io::ErrorKind::IsADirectory);
        std::fs::write(dir.join("plain"), "").unwrap();
        assert!(check_writable(&dir.join("plain/subnet.env")).is_err(), "a parent that is a file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_carries_the_first_usable_address() {
        let config = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let key: SubnetKey = "10.244.3.0-24".parse().unwrap();
        let file = for_lease(&config, &key, 1450, false);
        assert_eq!(
            file.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(lease_key(&file), Some(key));
    }

    #[test]
    fn dual_stack_adds_the_ipv6_pair() {
        let config =
            NetworkConfig::parse(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd42::/56"}"#).unwrap();
        let key: SubnetKey = "10.42.5.0-24&fd42:0:0:5::-64".parse().unwrap();
        let file = for_lease(&config, &key, 1450, true);
        assert_eq!(file.ipv6_subnet.unwrap().to_string(), "fd42:0:0:5::1/64");
        assert_eq!(lease_key(&file), Some(key));
    }
}
