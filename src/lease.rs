//! Subnet leases as flannel stores them: the key names the subnet(s), the value is `LeaseAttrs` JSON.
//!
//! Keys: `10.244.3.0-24`, or `10.244.3.0-24&fc00:0:0:3::-64` with IPv6 (`0.0.0.0-0&...` when IPv4 is off).
//! Values: `{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{...}}`, field for field
//! in the order and spelling Go's encoder writes them, so a flanneld reading our lease sees its own format.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};
use weft_backends::{Family, Peer, PerFamily};

/// The subnet(s) a lease is for; also its etcd key below `<prefix>/subnets/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub ipv4: Option<Ipv4Network>,
    pub ipv6: Option<Ipv6Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet key {key:?}: {problem}")]
pub struct InvalidKey {
    pub key: String,
    pub problem: KeyProblem,
}

/// What is wrong with one half (`ADDRESS-PREFIXLEN`) of a subnet key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("the {family} half is not ADDRESS-PREFIXLEN")]
    NoPrefixLength { family: Family },
    #[error("the {family} half does not start with an {family} address")]
    NotAnAddress { family: Family },
    #[error("the {family} prefix length is not a number")]
    PrefixLengthNotANumber { family: Family },
    #[error("the {family} prefix length is over {max}")]
    PrefixLengthTooLong { family: Family, max: u8 },
    #[error("the {family} address is not the subnet's base address")]
    NotTheBaseAddress { family: Family },
}

/// Parses one half of a key, `10.244.3.0-24` or `fc00::-64`: the same rules for both families.
fn parse_half(half: &str, family: Family) -> Result<IpNetwork, KeyProblem> {
    let (ip, len) = half.rsplit_once('-').ok_or(KeyProblem::NoPrefixLength { family })?;
    let ip: IpAddr =
        ip.parse().ok().filter(|ip| Family::of(*ip) == family).ok_or(KeyProblem::NotAnAddress { family })?;
    let len: u8 = len.parse().map_err(|_| KeyProblem::PrefixLengthNotANumber { family })?;
    let net =
        IpNetwork::new(ip, len).map_err(|_| KeyProblem::PrefixLengthTooLong { family, max: family.host_prefix() })?;
    if net.network() != ip {
        return Err(KeyProblem::NotTheBaseAddress { family });
    }
    Ok(net)
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
        let invalid = |problem| InvalidKey { key: key.to_string(), problem };
        let (v4_half, v6_half) = match key.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (key, None),
        };
        let v4 = parse_half(v4_half, Family::V4).map_err(invalid)?;
        let v6 = v6_half.map(|half| parse_half(half, Family::V6)).transpose().map_err(invalid)?;
        // `0.0.0.0-0&...` is how flannel writes a key without IPv4.
        let no_ipv4 = v6.is_some() && v4.prefix() == 0 && v4.ip().is_unspecified();
        Ok(SubnetKey::new((!no_ipv4).then_some(v4), v6))
    }
}

/// The lease value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseAttrs {
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_type: BackendType,
    pub backend_data: Option<BackendData>,
    pub backend_v6_data: Option<BackendData>,
}

/// A lease's BackendType. Nearly every lease names one of flannel's backends: those names are kept as static
/// text, so that 10,000 leases do not carry 10,000 copies of "vxlan" (32 heap bytes each); any other name is kept
/// whole, as written.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BackendType(std::borrow::Cow<'static, str>);

impl BackendType {
    const KNOWN: [&'static str; 9] =
        ["vxlan", "host-gw", "udp", "wireguard", "ipip", "extension", "alloc", "ipsec", "tencent-vpc"];

    pub fn new(name: &str) -> BackendType {
        match Self::KNOWN.iter().find(|known| **known == name) {
            Some(known) => BackendType(std::borrow::Cow::Borrowed(known)),
            None => BackendType(std::borrow::Cow::Owned(name.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for BackendType {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for BackendType {
    fn from(name: &str) -> BackendType {
        BackendType::new(name)
    }
}

impl From<String> for BackendType {
    fn from(name: String) -> BackendType {
        BackendType::new(&name)
    }
}

impl PartialEq<str> for BackendType {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for BackendType {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

/// One family's BackendData, held as its canonical compact JSON text: the parsed value written back by serde_json
/// (no spaces, object keys sorted). weftd keeps a lease value per peer, and a vxlan `{"VNI":1,"VtepMAC":".."}`
/// held as a decoded map costs over 600 heap bytes (a B-tree node with room for 11 entries, a String per key)
/// where its text costs 38. It is decoded only where a value is read: a changed peer handed to the backend, the
/// trust screen, status. Canonical text keeps equality meaning value equality: two leases whose data differ only
/// in spacing or key order compare equal, so a rewrite that changes nothing is not a change.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendData(Box<str>);

impl BackendData {
    pub fn new(value: &Value) -> BackendData {
        BackendData(value.to_string().into_boxed_str())
    }

    /// The decoded value; a fresh one each call.
    pub fn to_value(&self) -> Value {
        // The text is serde_json's own writing of a value it parsed or was given, so it always parses back.
        serde_json::from_str(&self.0).expect("BackendData holds JSON serde_json wrote")
    }

    /// The canonical JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Writes the data as flanneld's Go encoder does: the fields named in `order` first, in that order, then any
    /// others in sorted order. The canonical text already is that when there is no order to follow.
    fn write_in_order(&self, out: &mut String, order: &[&str]) {
        if order.is_empty() {
            out.push_str(&self.0);
        } else {
            write_backend_data(out, &self.to_value(), order);
        }
    }
}

impl From<Value> for BackendData {
    fn from(value: Value) -> BackendData {
        BackendData::new(&value)
    }
}

impl From<&Value> for BackendData {
    fn from(value: &Value) -> BackendData {
        BackendData::new(value)
    }
}

impl fmt::Debug for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendData({})", self.0)
    }
}

impl fmt::Display for BackendData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a lease value is not flannel's `LeaseAttrs` JSON.
#[derive(Debug, thiserror::Error)]
pub enum InvalidAttrs {
    #[error("invalid lease value: not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("invalid lease value: not a JSON object")]
    NotAnObject,
    #[error("invalid lease value: {field} is {value}, not a string")]
    NotAString { field: &'static str, value: Value },
    #[error("invalid lease value: {field} {text:?} is not an {family} address")]
    NotAnAddress { field: &'static str, text: String, family: Family },
}

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
                out.push_str(&format!(",\"{name}\":"));
                data.write_in_order(&mut out, backend_data_field_order(&self.backend_type));
            }
        }
        out.push('}');
        out
    }

    /// The public IP of `family`.
    pub fn public_ip(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.public_ip.map(IpAddr::V4),
            Family::V6 => self.public_ipv6.map(IpAddr::V6),
        }
    }

    /// The BackendData of `family`, decoded (a fresh value each call: the lease keeps only its text).
    pub fn backend_data(&self, family: Family) -> Option<Value> {
        match family {
            Family::V4 => self.backend_data.as_ref(),
            Family::V6 => self.backend_v6_data.as_ref(),
        }
        .map(BackendData::to_value)
    }

    pub fn from_json(text: &str) -> Result<LeaseAttrs, InvalidAttrs> {
        // Nearly every value is in flanneld's own shape: read it straight into the fields, without a JSON tree of
        // the whole object (this halves the cost of listing 10,000 leases). Anything else takes the general
        // path, which gives the same result wherever this one gives one (`fuzz_checks` holds them to it).
        // Only an object: serde would read a struct from an array too, field by field.
        let object = text.trim_start().starts_with('{');
        let shaped = || serde_json::from_str::<FlannelShape>(text).ok().and_then(FlannelShape::into_attrs);
        if let Some(attrs) = object.then(shaped).flatten() {
            return Ok(attrs);
        }
        LeaseAttrs::from_json_general(text)
    }

    /// [`from_json`](Self::from_json) for any value: Go's case-insensitive field names, and the error that names
    /// what is wrong.
    pub fn from_json_general(text: &str) -> Result<LeaseAttrs, InvalidAttrs> {
        let value: Value = serde_json::from_str(text).map_err(InvalidAttrs::NotJson)?;
        let obj = value.as_object().ok_or(InvalidAttrs::NotAnObject)?;
        let get = |name: &str| -> Option<&Value> {
            obj.get(name)
                .or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
                .filter(|v| !v.is_null())
        };
        let text_field = |field: &'static str| -> Result<Option<&str>, InvalidAttrs> {
            match get(field) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(v) => Err(InvalidAttrs::NotAString { field, value: v.clone() }),
            }
        };
        let address_field = |field: &'static str, family: Family| -> Result<Option<IpAddr>, InvalidAttrs> {
            let Some(text) = text_field(field)? else { return Ok(None) };
            let not_an_address = || InvalidAttrs::NotAnAddress { field, text: text.to_string(), family };
            let ip: IpAddr = text.parse().map_err(|_| not_an_address())?;
            if Family::of(ip) != family {
                return Err(not_an_address());
            }
            Ok(Some(ip))
        };
        let public_ip = match address_field("PublicIP", Family::V4)? {
            // Go writes 0.0.0.0 for "no IPv4".
            Some(IpAddr::V4(ip)) if !ip.is_unspecified() => Some(ip),
            _ => None,
        };
        let public_ipv6 = match address_field("PublicIPv6", Family::V6)? {
            Some(IpAddr::V6(ip)) => Some(ip),
            _ => None,
        };
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: BackendType::new(text_field("BackendType")?.unwrap_or_default()),
            backend_data: get("BackendData").map(BackendData::new),
            backend_v6_data: get("BackendV6Data").map(BackendData::new),
        })
    }
}

/// A lease value exactly as flanneld writes one: only its five fields, spelled as Go's encoder spells them, each
/// once (anything else fails to read here and goes the general way).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlannelShape<'a> {
    #[serde(rename = "PublicIP", borrow, default)]
    public_ip: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "PublicIPv6", borrow, default)]
    public_ipv6: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "BackendType", borrow, default)]
    backend_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<Value>,
    #[serde(rename = "BackendV6Data", default)]
    backend_v6_data: Option<Value>,
}

impl FlannelShape<'_> {
    /// The attributes, or None when an address does not read as one of its family (the general path says why).
    fn into_attrs(self) -> Option<LeaseAttrs> {
        let public_ip = match self.public_ip.as_deref().map(str::parse::<Ipv4Addr>) {
            None => None,
            Some(Ok(ip)) => (!ip.is_unspecified()).then_some(ip),
            Some(Err(_)) => return None,
        };
        let public_ipv6 = match self.public_ipv6.as_deref().map(str::parse::<Ipv6Addr>) {
            None => None,
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => return None,
        };
        // A JSON null reads as None here, as the general path leaves out null fields.
        Some(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: BackendType::new(self.backend_type.as_deref().unwrap_or_default()),
            backend_data: self.backend_data.as_ref().map(BackendData::new),
            backend_v6_data: self.backend_v6_data.as_ref().map(BackendData::new),
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
    /// Shared: the lease set, the value grace and the screen's cache each hold a lease, and a copy-on-write of the
    /// set (10,000 leases) must copy pointers, not values.
    pub attrs: Arc<LeaseAttrs>,
    /// The etcd lease the key is attached to; 0 means a reservation, which never expires.
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

impl Lease {
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }

    /// Which of two conflicting leases is kept: the one written at the older store revision, then the lower key.
    /// The trust boundary and the claim check order by this same value, so a host yields exactly when its peers
    /// would reject it.
    pub fn precedence(&self) -> (i64, SubnetKey) {
        (self.mod_revision, self.key)
    }

    /// The backend's view of this lease.
    pub fn to_peer(&self) -> Peer {
        Peer {
            subnets: PerFamily::from_fn(|family| self.key.subnet(family)),
            public_ips: PerFamily::new(self.attrs.public_ip.map(IpAddr::V4), self.attrs.public_ipv6.map(IpAddr::V6)),
            backend_type: self.attrs.backend_type.to_string(),
            backend_data: PerFamily::from_fn(|family| self.attrs.backend_data(family)),
        }
    }
}

/// The field order flanneld's Go struct for this backend's BackendData declares, where it differs from the sorted
/// order serde_json's map keeps (vxlan's `VNI`,`VtepMAC` and host-gw's empty data are already sorted).
fn backend_data_field_order(backend_type: &str) -> &'static [&'static str] {
    match backend_type {
        "wireguard" => weft_backends::wireguard::LEASE_DATA_FIELD_ORDER,
        _ => &[],
    }
}

/// Writes BackendData with the fields named in `order` first, in that order, then any others in sorted order.
fn write_backend_data(out: &mut String, data: &Value, order: &[&str]) {
    let Value::Object(map) = data else {
        out.push_str(&data.to_string());
        return;
    };
    let ordered = order.iter().filter_map(|name| map.get_key_value(*name));
    let rest = map.iter().filter(|(key, _)| !order.contains(&key.as_str()));
    out.push('{');
    for (i, (key, value)) in ordered.chain(rest).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(key));
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
}

/// One family's BackendData as flanneld's Go encoder writes it (`null` when there is none): the text flannel's
/// Kubernetes subnet manager stores in a Node's backend-data annotation.
pub fn backend_data_json(backend_type: &str, data: Option<&BackendData>) -> String {
    let mut out = String::new();
    match data {
        Some(data) => data.write_in_order(&mut out, backend_data_field_order(backend_type)),
        None => out.push_str("null"),
    }
    out
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
    fn flanneld_shaped_values_read_the_same_both_ways() {
        let values = [
            FLANNEL_VXLAN,
            FLANNEL_WIREGUARD,
            r#"{}"#,
            r#"{"PublicIP":null,"PublicIPv6":null,"BackendType":null,"BackendData":null}"#,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"::","BackendType":"host-gw"}"#,
            r#"{"PublicIP":"198.18.0.\u0032","BackendType":"vx\"lan","BackendData":{"VtepMAC":"x","VNI":1}}"#,
            r#"{"publicip":"198.18.0.2","BackendType":"vxlan"}"#,
            r#"{"PublicIP":"198.18.0.2","PublicIP":"198.18.0.3"}"#,
            r#"{"PublicIP":"198.18.0.2","Extra":1}"#,
            r#"{"PublicIP":"fd00::1"}"#,
            r#"{"PublicIPv6":"198.18.0.1"}"#,
            r#"{"PublicIP":5}"#,
            r#"{"BackendType":["vxlan"]}"#,
            r#"{"PublicIP":"198.18.0.2"} trailing"#,
            r#"[1,2]"#,
            "[\t]",
            r#"["198.18.0.2","::1","vxlan"]"#,
            r#"not json"#,
        ];
        for text in values {
            crate::fuzz_checks::lease_value(text.as_bytes());
        }
        // The duplicate field and the other spelling are the general path's: Go's decoder takes the last and
        // matches names regardless of case.
        let dup = LeaseAttrs::from_json(values[7]).unwrap();
        assert_eq!(dup.public_ip, Some("198.18.0.3".parse().unwrap()));
        assert_eq!(LeaseAttrs::from_json(values[6]).unwrap().public_ip, Some("198.18.0.2".parse().unwrap()));
    }

    #[test]
    fn flannel_lease_json_round_trips_byte_for_byte() {
        let attrs = LeaseAttrs::from_json(FLANNEL_VXLAN).unwrap();
        assert_eq!(attrs.public_ip, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(attrs.backend_data(Family::V4).unwrap()["VtepMAC"], "c6:d2:32:6f:8f:44");
        assert_eq!(attrs.to_json(), FLANNEL_VXLAN);
    }

    #[test]
    fn our_vxlan_lease_is_what_flannel_writes() {
        let mac = "c6:d2:32:6f:8f:44".parse().unwrap();
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            backend_type: "vxlan".into(),
            backend_data: Some(weft_backends::vxlan::lease_data(1, mac).into()),
            ..Default::default()
        };
        assert_eq!(attrs.to_json(), FLANNEL_VXLAN);
    }

    /// A dual-stack wireguard lease as flanneld writes it: Go's encoder follows `wireguardLeaseAttrs`'s declaration
    /// order, PublicKey before Port (pkg/backend/wireguard/wireguard_network.go), each family with its own port.
    const FLANNEL_WIREGUARD: &str = r#"{"PublicIP":"198.18.0.4","PublicIPv6":"fd00::4","BackendType":"wireguard","BackendData":{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":51820},"BackendV6Data":{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":51821}}"#;

    #[test]
    fn flannel_wireguard_lease_round_trips_byte_for_byte() {
        let attrs = LeaseAttrs::from_json(FLANNEL_WIREGUARD).unwrap();
        let data = weft_backends::wireguard::parse_lease_data(attrs.backend_data(Family::V4).as_ref()).unwrap();
        assert_eq!(
            weft_backends::wireguard::keys::encode_key(&data.public_key),
            "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
        );
        assert_eq!(data.port, Some(51820));
        let v6 = weft_backends::wireguard::parse_lease_data(attrs.backend_data(Family::V6).as_ref()).unwrap();
        assert_eq!(v6.port, Some(51821));
        assert_eq!(attrs.to_json(), FLANNEL_WIREGUARD);
    }

    #[test]
    fn our_wireguard_lease_is_what_flannel_writes() {
        // The backend builds its data with serde_json (keys sorted: Port first); the writer restores Go's order.
        let data =
            |port: u16| serde_json::json!({"PublicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "Port": port});
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(198, 18, 0, 4)),
            public_ipv6: Some("fd00::4".parse().unwrap()),
            backend_type: "wireguard".into(),
            backend_data: Some(data(51820).into()),
            backend_v6_data: Some(data(51821).into()),
        };
        assert_eq!(attrs.to_json(), FLANNEL_WIREGUARD);
    }

    #[test]
    fn backend_data_is_held_in_one_canonical_form() {
        // Spaces and key order differ; the values are equal, so the leases must be too (a rewrite that changes
        // nothing is not a change), and both are written back as flanneld writes them.
        let spaced = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{ "VtepMAC" : "c6:d2:32:6f:8f:44", "VNI" : 1 }}"#;
        let compact = LeaseAttrs::from_json(FLANNEL_VXLAN).unwrap();
        let canonical = LeaseAttrs::from_json(spaced).unwrap();
        assert_eq!(canonical, compact);
        assert_eq!(canonical.backend_data.as_ref().unwrap().as_json(), r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#);
        assert_eq!(canonical.to_json(), FLANNEL_VXLAN);
        // Built in code or read from a lease: the same data.
        let built: BackendData = weft_backends::vxlan::lease_data(1, "c6:d2:32:6f:8f:44".parse().unwrap()).into();
        assert_eq!(canonical.backend_data, Some(built));
        // Go's field order for wireguard comes back from any input order.
        let reordered = FLANNEL_WIREGUARD.replace(
            r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":51821}"#,
            r#"{"Port":51821, "PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="}"#,
        );
        assert_ne!(reordered, FLANNEL_WIREGUARD);
        assert_eq!(LeaseAttrs::from_json(&reordered).unwrap().to_json(), FLANNEL_WIREGUARD);
        // A different value is a different lease.
        let other_vni = FLANNEL_VXLAN.replace(r#""VNI":1"#, r#""VNI":2"#);
        assert_ne!(LeaseAttrs::from_json(&other_vni).unwrap(), compact);
    }

    #[test]
    fn backend_types_are_kept_whole_and_flannels_without_a_copy_each() {
        let vxlan = LeaseAttrs::from_json(r#"{"PublicIP":"198.18.0.2","BackendType":"vxlan"}"#).unwrap();
        assert!(matches!(vxlan.backend_type.0, std::borrow::Cow::Borrowed("vxlan")));
        let odd = LeaseAttrs::from_json(r#"{"PublicIP":"198.18.0.2","BackendType":"vxlan2 ü"}"#).unwrap();
        assert!(matches!(&odd.backend_type.0, std::borrow::Cow::Owned(t) if t == "vxlan2 ü"));
        assert_eq!(odd.to_json(), r#"{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan2 ü"}"#);
        assert_eq!(format!("{:?} {}", vxlan.backend_type, vxlan.backend_type), r#""vxlan" vxlan"#);
        let (udp, udp_owned) = (BackendType::from("udp"), BackendType::from("udp".to_string()));
        assert!(vxlan.backend_type == "vxlan" && udp == udp_owned);
    }

    #[test]
    fn backend_data_that_is_not_an_object_round_trips() {
        let with_data = |data: &str| {
            format!(r#"{{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{data}}}"#)
        };
        for data in ["7", "-1.5", r#""a string""#, "true", "[]", r#"[1,{"b":[],"a":"\u00e9\n"}]"#, "{}", r#"{"":{}}"#] {
            let attrs = LeaseAttrs::from_json(&with_data(data)).unwrap();
            let value: Value = serde_json::from_str(data).unwrap();
            assert_eq!(attrs.backend_data(Family::V4), Some(value.clone()), "{data}");
            assert_eq!(attrs.to_json(), with_data(&value.to_string()), "{data}");
            assert_eq!(LeaseAttrs::from_json(&attrs.to_json()).unwrap(), attrs, "{data}");
        }
        // A null BackendData is no BackendData, as Go reads it.
        let null = LeaseAttrs::from_json(&with_data("null")).unwrap();
        assert_eq!((null.backend_data(Family::V4), null.backend_data(Family::V6)), (None, None));
        assert_eq!(null.to_json(), r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan"}"#);
    }

    #[test]
    fn a_lease_value_holds_backend_data_as_text() {
        // Both families' data fit in two pointer-sized words each: a boxed str, with None in its null niche. A
        // serde_json::Value is 32 bytes inline plus a map node of over 600 bytes on the heap.
        assert_eq!(std::mem::size_of::<Option<BackendData>>(), 2 * std::mem::size_of::<usize>());
        // The addresses (5 and 17 bytes), the BackendType String (24) and the two data (16 each), padded: 80 on a
        // 64-bit target; with Value it was 112.
        assert!(std::mem::size_of::<LeaseAttrs>() <= 80, "LeaseAttrs is {} bytes", std::mem::size_of::<LeaseAttrs>());
        // On the heap, a vxlan lease's data is its 39 bytes of text, nothing more.
        let attrs = LeaseAttrs::from_json(FLANNEL_VXLAN).unwrap();
        assert_eq!(attrs.backend_data.as_ref().map(|d| d.as_json().len()), Some(39));
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
        let error = |text: &str| LeaseAttrs::from_json(text).unwrap_err().to_string();
        assert!(error("{").contains("not JSON"));
        assert!(error("[1]").contains("not a JSON object"));
        assert!(error(r#"{"PublicIP":"x"}"#).contains("PublicIP \"x\""));
        assert!(error(r#"{"PublicIP":7}"#).contains("not a string"));
        assert!(error(r#"{"PublicIP":"fd00::1"}"#).contains("is not an IPv4 address"));
        assert!(error(r#"{"PublicIPv6":"198.18.0.1"}"#).contains("is not an IPv6 address"));
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
    fn both_halves_of_a_key_follow_the_same_rules() {
        let problem = |key: &str| key.parse::<SubnetKey>().unwrap_err().problem;
        for family in [Family::V4, Family::V6] {
            let key = |half: &str| match family {
                Family::V4 => half.to_string(),
                Family::V6 => format!("10.244.3.0-24&{half}"),
            };
            let (base, inside, too_long) = match family {
                Family::V4 => ("10.244.3.0", "10.244.3.1", "33"),
                Family::V6 => ("fc00::", "fc00::1", "129"),
            };
            assert_eq!(problem(&key(base)), KeyProblem::NoPrefixLength { family });
            assert_eq!(problem(&key("x-24")), KeyProblem::NotAnAddress { family });
            assert_eq!(problem(&key(&format!("{base}-x"))), KeyProblem::PrefixLengthNotANumber { family });
            assert_eq!(
                problem(&key(&format!("{base}-{too_long}"))),
                KeyProblem::PrefixLengthTooLong { family, max: family.host_prefix() }
            );
            assert_eq!(problem(&key(&format!("{inside}-24"))), KeyProblem::NotTheBaseAddress { family });
        }
        // An address of the other family in a half is not accepted either.
        assert_eq!(problem("fc00::-64"), KeyProblem::NotAnAddress { family: Family::V4 });
        assert_eq!(problem("10.244.3.0-24&10.244.4.0-24"), KeyProblem::NotAnAddress { family: Family::V6 });
        let err = "10.244.3.1-24".parse::<SubnetKey>().unwrap_err().to_string();
        assert_eq!(err, "invalid subnet key \"10.244.3.1-24\": the IPv4 address is not the subnet's base address");
    }

    #[test]
    fn a_zero_ipv4_half_means_no_ipv4_only_in_a_dual_key() {
        let v6_only: SubnetKey = "0.0.0.0-0&fc00::-64".parse().unwrap();
        assert_eq!((v6_only.ipv4, v6_only.ipv6.map(|n| n.to_string())), (None, Some("fc00::/64".to_string())));
        let whole: SubnetKey = "0.0.0.0-0".parse().unwrap();
        assert_eq!(whole.ipv4.map(|n| n.to_string()), Some("0.0.0.0/0".to_string()));
    }

    #[test]
    fn bad_subnet_keys_are_rejected() {
        for key in ["", "10.244.3.0", "10.244.3.0-33", "10.244.3.1-24", "10.244.3-24", "10.244.3.0-24&zz-64", "x-24"] {
            assert!(key.parse::<SubnetKey>().is_err(), "{key} should be rejected");
        }
    }
}
