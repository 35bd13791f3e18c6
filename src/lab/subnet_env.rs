//! Reading the subnet.env file that weftd writes (flannel format).

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use ipnetwork::Ipv4Network;

use super::LabError;

/// The IPv4 part of a flannel subnet.env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK, the whole overlay network (absent in odd files).
    pub network: Option<Ipv4Network>,
    /// FLANNEL_SUBNET: the gateway address with the subnet's prefix,
    /// e.g. 10.244.3.1/24.
    pub subnet: Ipv4Network,
    /// FLANNEL_MTU: the MTU containers must use.
    pub mtu: u32,
    /// FLANNEL_IPMASQ, when present.
    pub ipmasq: Option<bool>,
}

impl SubnetEnv {
    /// Parses the `KEY=value` lines of a subnet.env; unknown keys, blank
    /// lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut ipmasq = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {line:?} is not KEY=value"));
            };
            let value = unquote(value.trim());
            match key.trim() {
                "FLANNEL_NETWORK" => network = Some(parse_first_cidr(key, value)?),
                "FLANNEL_SUBNET" => subnet = Some(parse_first_cidr(key, value)?),
                "FLANNEL_MTU" => mtu = Some(parse_mtu(value)?),
                "FLANNEL_IPMASQ" => ipmasq = Some(value == "true"),
                _ => {}
            }
        }
        Ok(SubnetEnv {
            network,
            subnet: subnet.ok_or("FLANNEL_SUBNET is missing")?,
            mtu: mtu.ok_or("FLANNEL_MTU is missing")?,
            ipmasq,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<SubnetEnv, LabError> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
        SubnetEnv::parse(&text).map_err(|reason| LabError::SubnetEnv { path: path.to_path_buf(), reason })
    }

    /// The host's gateway address on cni0 (FLANNEL_SUBNET's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.ip()
    }

    /// The address of the first container: the one after the gateway,
    /// which must still be a host address of the subnet.
    pub fn first_container_ip(&self) -> Result<Ipv4Addr, String> {
        let candidate = u32::from(self.gateway())
            .checked_add(1)
            .map(Ipv4Addr::from)
            .ok_or("the gateway is the last IPv4 address")?;
        let usable =
            self.subnet.contains(candidate) && candidate != self.subnet.broadcast() && self.subnet.prefix() < 31;
        if usable {
            Ok(candidate)
        } else {
            Err(format!("subnet {} has no room for a container after gateway {}", self.subnet, self.gateway()))
        }
    }
}

fn unquote(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

/// Old flannel versions wrote comma-separated lists; the first entry counts.
fn parse_first_cidr(key: &str, value: &str) -> Result<Ipv4Network, String> {
    let first = value.split(',').next().unwrap_or_default().trim();
    Ipv4Network::from_str(first).map_err(|e| format!("{key}={value:?} is not an IPv4 CIDR: {e}"))
}

fn parse_mtu(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(mtu) if (68..=65535).contains(&mtu) => Ok(mtu),
        _ => Err(format!("FLANNEL_MTU={value:?} is not an MTU in 68..=65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn parses_flannel_sample() {
        let env = SubnetEnv::parse(SAMPLE).unwrap();
        assert_eq!(env.network, Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(env.subnet.to_string(), "10.244.3.1/24");
        assert_eq!(env.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(env.mtu, 1450);
        assert_eq!(env.ipmasq, Some(false));
        assert_eq!(env.first_container_ip().unwrap(), Ipv4Addr::new(10, 244, 3, 2));
    }

    #[test]
    fn tolerates_comments_quotes_lists_and_unknown_keys() {
        let text = "# written by weftd\n\nFLANNEL_SUBNET=\"10.5.52.1/24,10.6.0.1/24\"\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1500\n";
        let env = SubnetEnv::parse(text).unwrap();
        assert_eq!(env.subnet.to_string(), "10.5.52.1/24");
        assert_eq!(env.network, None);
        assert_eq!(env.ipmasq, None);
    }

    #[test]
    fn reports_missing_and_malformed_values() {
        let missing_subnet = SubnetEnv::parse("FLANNEL_MTU=1450\n").unwrap_err();
        assert!(missing_subnet.contains("FLANNEL_SUBNET"), "{missing_subnet}");
        let missing_mtu = SubnetEnv::parse("FLANNEL_SUBNET=10.0.0.1/24\n").unwrap_err();
        assert!(missing_mtu.contains("FLANNEL_MTU"), "{missing_mtu}");
        let bad_mtu = SubnetEnv::parse("FLANNEL_SUBNET=10.0.0.1/24\nFLANNEL_MTU=12\n").unwrap_err();
        assert!(bad_mtu.contains("FLANNEL_MTU"), "{bad_mtu}");
        let garbage = SubnetEnv::parse("FLANNEL_SUBNET=nope\nFLANNEL_MTU=1450").unwrap_err();
        assert!(garbage.contains("not an IPv4 CIDR"), "{garbage}");
        let no_equals = SubnetEnv::parse("FLANNEL_SUBNET\n").unwrap_err();
        assert!(no_equals.contains("KEY=value"), "{no_equals}");
    }

    #[test]
    fn container_ip_must_fit_in_the_subnet() {
        let env = |subnet: &str| SubnetEnv { network: None, subnet: subnet.parse().unwrap(), mtu: 1450, ipmasq: None };
        assert_eq!(env("10.244.7.1/24").first_container_ip().unwrap(), Ipv4Addr::new(10, 244, 7, 2));
        assert!(env("10.244.7.254/24").first_container_ip().is_err());
        assert!(env("10.244.7.1/32").first_container_ip().is_err());
        assert!(env("10.244.7.0/31").first_container_ip().is_err());
        assert!(env("255.255.255.255/0").first_container_ip().is_err());
    }
}
