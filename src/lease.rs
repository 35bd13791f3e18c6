//! Subnet leases as flannel stores them: the key names the subnet(s), the value is `LeaseAttrs` JSON.
//!
//! Keys: `10.244.3.0-24`, or `10.244.3.0-24&fc00:0:0:3::-64` with IPv6 (`0.0.0.0-0&...` when IPv4 is off).
//! Values: `{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}`, field for field
//! in the order and spelling Go's encoder writes them, so a flanneld reading our lease sees its own format.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};
use weft_backends::{Family, Peer};

/// The subnet(s) a lease is for; also its etcd key below `<prefix>/subnets/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet key {key:?}: {msg}")]
pub struct InvalidKey {
    pub key: String,
    pub msg: String,
}

impl SubnetKey {
    pub fn new(ipv4: Option<IpNetwork>, ipv6: Option<IpNetwork>) -> SubnetKey {
        let ipv4 = ipv4.and_then(|n| match n {
            IpNetwork::V4(v) => Some(v),
            IpNetwork::V6(_) => None,
        });
        let ipv6 = ipv6.and_then(|n| match n {
            IpNetwork::V6(v) => Some(v),
            IpNetwork::V4(_) => None,
        });
        SubnetKey { ipv4, ipv6 }
    }

    pub fn subnet(&self, family: Family) -> Option<IpNetwork> {
        match family {
            Family::V4 => self.ipv4.map(IpNetwork::V4),
            Family::V6 => self.ipv6.map(IpNetwork::V6),
        }
    }

    /// Every subnet in the key.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> {
        self.ipv4.map(IpNetwork::V4).into_iter().chain(self.ipv6.map(IpNetwork::V6))
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ipv4 {
            Some(v4) => write!(f, "{}-{}", v4.ip(), v4.prefix())?,
            None => f.write_str("0.0.0.0-0")?,
        }
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.ip(), v6.prefix())?;
        }
        Ok(())
    }
}

impl FromStr for SubnetKey {
    type Err = InvalidKey;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let fail = |msg: &str| InvalidKey { key: key.to_string(), msg: msg.to_string() };
        let (v4_part, v6_part) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let (ip, len) = v4_part.rsplit_once('-').ok_or_else(|| fail("expected ADDRESS-PREFIXLEN"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| fail("the IPv4 part is not an address"))?;
        let len: u8 = len.parse().map_err(|_| fail("the IPv4 prefix length is not a number"))?;
        let ipv4 = if ip.is_unspecified() && len == 0 && v6_part.is_some() {
            None
        } else {
            let net = Ipv4Network::new(ip, len).map_err(|_| fail("the IPv4 prefix length is over 32"))?;
            if net.network() != ip {
                return Err(fail("the IPv4 address is not the subnet's base address"));
            }
            Some(net)
        };
        let ipv6 = match v6_part {
            None => None,
            Some(part) => {
                let (ip, len) = part.rsplit_once('-').ok_or_else(|| fail("expected ADDRESS-PREFIXLEN after &"))?;
                let ip: Ipv6Addr = ip.parse().map_err(|_| fail("the IPv6 part is not an address"))?;
                let len: u8 = len.parse().map_err(|_| fail("the IPv6 prefix length is not a number"))?;
                let net = Ipv6Network::new(ip, len).map_err(|_| fail("the IPv6 prefix length is over 128"))?;
                if net.network() != ip {
                    return Err(fail("the IPv6 address is not the subnet's base address"));
                }
                Some(net)
            }
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

/// The lease value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseAttrs {
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_type: String,
    pub backend_data: Option<Value>,
    pub backend_v6_data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid lease value: {0}")]
pub struct InvalidAttrs(pub String);

impl LeaseAttrs {
    /// Go's encoding of flannel's `LeaseAttrs`: PublicIP always (0.0.0.0 when unset), PublicIPv6 always (null when
    /// unset), the rest only when non-empty.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"PublicIP\":");
        out.push_str(&json_string(&self.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string()));
        out.push_str(",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => out.push_str(&json_string(&ip.to_string())),
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&json_string(&self.backend_type));
        }
        for (name, data) in [("BackendData", &self.backend_data), ("BackendV6Data", &self.backend_v6_data)] {
            if let Some(data) = data {
                out.push_str(&format!(",\"{name}\":{data}"));
            }
        }
        out.push('}');
        out
    }

    pub fn from_json(text: &str) -> Result<LeaseAttrs, InvalidAttrs> {
        let value: Value = serde_json::from_str(text).map_err(|e| InvalidAttrs(format!("not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| InvalidAttrs("not a JSON object".into()))?;
        let get = |name: &str| -> Option<&Value> {
            obj.get(name)
                .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
                .filter(|v| !v.is_null())
        };
        let text_field = |name: &str| -> Result<Option<&str>, InvalidAttrs> {
            match get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(v) => Err(InvalidAttrs(format!("{name} is {v}, not a string"))),
            }
        };
        let public_ip = match text_field("PublicIP")? {
            None => None,
            Some(s) => {
                let ip: Ipv4Addr =
                    s.parse().map_err(|_| InvalidAttrs(format!("PublicIP {s:?} is not an IPv4 address")))?;
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        let public_ipv6 = match text_field("PublicIPv6")? {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| InvalidAttrs(format!("PublicIPv6 {s:?} is not an IPv6 address")))?),
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: text_field("BackendType")?.unwrap_or_default().to_string(),
            backend_data: get("BackendData").cloned(),
            backend_v6_data: get("BackendV6Data").cloned(),
        })
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A lease as listed from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 means a reservation, which never expires.
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

impl Lease {
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }

    /// The backend's view of this lease.
    pub fn to_peer(&self) -> Peer {
        Peer {
            subnet: self.key.subnet(Family::V4),
            ipv6_subnet: self.key.subnet(Family::V6),
            public_ip: self.attrs.public_ip.map(IpAddr::V4),
            public_ipv6: self.attrs.public_ipv6.map(IpAddr::V6),
            backend_type: self.attrs.backend_type.clone(),
            backend_data: self.attrs.backend_data.clone(),
            backend_v6_data: self.attrs.backend_v6_data.clone(),
        }
    }
}

/// Backend data as an object map, for callers that build it by hand.
pub fn backend_data(pairs: &[(&str, Value)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<Map<_, _>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value exactly as flanneld v0.28 writes it for a vxlan host.
    const FLANNEL_VXLAN: &str = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn flannel_lease_json_round_trips_byte_for_byte() {
        let attrs = LeaseAttrs::from_json(FLANNEL_VXLAN).unwrap();
        assert_eq!(attrs.public_ip, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.backend_data.as_ref().unwrap()["VtepMAC"], "c6:d2:32:6f:8f:44");
        assert_eq!(attrs.to_json(), FLANNEL_VXLAN);
    }

    #[test]
    fn our_vxlan_lease_is_what_flannel_writes() {
        let mac = "c6:d2:32:6f:8f:44".parse().unwrap();
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            backend_type: "vxlan".into(),
            backend_data: Some(weft_backends::vxlan::lease_data(1, mac)),
            ..Default::default()
        };
        assert_eq!(attrs.to_json(), FLANNEL_VXLAN);
    }

    #[test]
    fn dual_stack_and_backendless_leases() {
        let dual = r#"{"PublicIP":"198.18.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:03"}}"#;
        assert_eq!(LeaseAttrs::from_json(dual).unwrap().to_json(), dual);
        // flannel's udp backend sets no BackendType at all.
        let udp = r#"{"PublicIP":"198.18.0.3","PublicIPv6":null}"#;
        let attrs = LeaseAttrs::from_json(udp).unwrap();
        assert_eq!(attrs.backend_type, "");
        assert_eq!(attrs.to_json(), udp);
    }

    #[test]
    fn malformed_values_say_what_is_wrong() {
        assert!(LeaseAttrs::from_json("{").unwrap_err().0.contains("not JSON"));
        assert!(LeaseAttrs::from_json("[1]").unwrap_err().0.contains("not a JSON object"));
        assert!(LeaseAttrs::from_json(r#"{"PublicIP":"x"}"#).unwrap_err().0.contains("PublicIP \"x\""));
        assert!(LeaseAttrs::from_json(r#"{"PublicIP":7}"#).unwrap_err().0.contains("not a string"));
    }

    #[test]
    fn subnet_keys_round_trip() {
        for key in ["10.244.3.0-24", "10.5.52.0-24&fc00:0:0:5::-64", "0.0.0.0-0&fc00::-120"] {
            assert_eq!(key.parse::<SubnetKey>().unwrap().to_string(), key);
        }
        let k: SubnetKey = "10.5.52.0-24&fc00:0:0:5::-64".parse().unwrap();
        assert_eq!(k.subnet(Family::V4).unwrap().to_string(), "10.5.52.0/24");
        assert_eq!(k.subnet(Family::V6).unwrap().to_string(), "fc00:0:0:5::/64");
        let v6_only: SubnetKey = "0.0.0.0-0&fc00::-120".parse().unwrap();
        assert_eq!(v6_only.ipv4, None);
    }

    #[test]
    fn bad_subnet_keys_are_rejected() {
        for key in ["", "10.244.3.0", "10.244.3.0-33", "10.244.3.1-24", "10.244.3-24", "10.244.3.0-24&zz-64", "x-24"] {
            assert!(key.parse::<SubnetKey>().is_err(), "{key} should be rejected");
        }
    }
}
