//! The ADD result, rendered in the format of the requested cniVersion, and read back from `prevResult`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::error::{CniError, Result};
use crate::version::Format;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for the container's interface; None for host-side ones.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`.
    pub interface: Option<usize>,
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Option<Value>,
}

impl CniResult {
    pub fn to_json(&self, cni_version: &str, format: Format) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let (Some(mtu), Format::V11) = (i.mtu, format) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if format == Format::V03 {
                    // 0.3.x and 0.4.0 name the family; 1.0.0 dropped the field.
                    o.insert("version".into(), json!(if ip.address.is_ipv4() { "4" } else { "6" }));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        json!({
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.clone().unwrap_or_else(|| json!({})),
        })
    }

    /// Reads a result in any supported format (prevResult, or an IPAM plugin's output).
    pub fn from_json(v: &Value) -> Result<CniResult> {
        let bad = |m: String| CniError::InvalidConfig(format!("prevResult: {m}"));
        let array = |key: &str| v.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        let string = |o: &Value, key: &str| o.get(key).and_then(Value::as_str).map(str::to_string);
        let interfaces = array("interfaces")
            .iter()
            .map(|i| Interface {
                name: string(i, "name").unwrap_or_default(),
                mac: string(i, "mac").unwrap_or_default(),
                sandbox: string(i, "sandbox").filter(|s| !s.is_empty()),
                mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
            })
            .collect();
        let ips = array("ips")
            .iter()
            .map(|ip| {
                let address = string(ip, "address").ok_or_else(|| bad("an ips entry has no address".into()))?;
                Ok(IpConfig {
                    interface: ip.get("interface").and_then(Value::as_u64).map(|i| i as usize),
                    address: parse_ip_network(&address)
                        .ok_or_else(|| bad(format!("address {address:?} is not a CIDR")))?,
                    gateway: string(ip, "gateway").and_then(|g| g.parse().ok()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let routes = array("routes")
            .iter()
            .map(|r| {
                let dst = string(r, "dst").ok_or_else(|| bad("a route has no dst".into()))?;
                Ok(Route {
                    dst: dst.parse().map_err(|_| bad(format!("route dst {dst:?} is not a CIDR")))?,
                    gw: string(r, "gw").and_then(|g| g.parse().ok()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CniResult { interfaces, ips, routes, dns: v.get("dns").cloned() })
    }
}

/// "10.244.1.5/24" keeping the host part (IpNetwork's parser does that too, but refuses nothing we need).
fn parse_ip_network(s: &str) -> Option<IpNetwork> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface { name: "cni0".into(), mac: "aa:bb:cc:dd:ee:01".into(), sandbox: None, mtu: Some(1450) },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![
                IpConfig {
                    interface: Some(1),
                    address: "10.244.1.2/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                },
                IpConfig { interface: Some(1), address: "fd00::2/64".parse().unwrap(), gateway: None },
            ],
            routes: vec![
                Route { dst: "10.244.0.0/16".parse().unwrap(), gw: None },
                Route { dst: "0.0.0.0/0".parse().unwrap(), gw: Some("10.244.1.1".parse().unwrap()) },
            ],
            dns: None,
        }
    }

    #[test]
    fn renders_each_version_and_reads_back() {
        let r = sample();
        let v1 = r.to_json("1.0.0", Format::V10);
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][0].get("mtu").is_none());
        assert_eq!(v1["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(v1["interfaces"][1]["sandbox"], "/run/netns/p");
        assert!(v1["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v1["routes"][1], json!({"dst":"0.0.0.0/0","gw":"10.244.1.1"}));
        assert_eq!(v1["dns"], json!({}));
        let v03 = r.to_json("0.3.1", Format::V03);
        assert_eq!(v03["ips"][0]["version"], "4");
        assert_eq!(v03["ips"][1]["version"], "6");
        let v11 = r.to_json("1.1.0", Format::V11);
        assert_eq!(v11["interfaces"][0]["mtu"], 1450);
        for v in [v1, v03] {
            let mut back = CniResult::from_json(&v).unwrap();
            back.dns = None;
            back.interfaces.iter_mut().for_each(|i| i.mtu = Some(1450));
            assert_eq!(back, r);
        }
    }

    #[test]
    fn bad_prev_result_names_the_problem() {
        let e = CniResult::from_json(&json!({"ips":[{"address":"nope"}]})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("nope"));
    }
}
