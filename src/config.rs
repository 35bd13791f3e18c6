//! The network config stored at `<prefix>/config`, in flannel's JSON.
//!
//! Parsing produces a checked [`NetworkConfig`]: defaults are filled in and every rule flannel enforces holds, so
//! the rest of the daemon never re-validates. Field names match case-insensitively, as Go's decoder does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use weft_backends::{Family, PerFamily};

use crate::ipmath;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config must be a JSON object")]
    NotAnObject,
    #[error("network config field {field}: {msg}")]
    Field { field: String, msg: String },
    #[error("network config is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// The largest network config weft reads or stores. A real one is a few hundred bytes; the limit keeps a wrong
/// file (or `@/dev/zero`) from being read forever or stored in etcd.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

fn field_error(field: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Field { field: field.to_string(), msg: msg.into() }
}

/// The address plan of one family: the cluster network and the range per-host subnets are taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyConfig {
    pub network: IpNetwork,
    pub subnet_len: u8,
    /// Base address of the first subnet that may be leased.
    pub subnet_min: IpAddr,
    /// Base address of the last subnet that may be leased.
    pub subnet_max: IpAddr,
}

impl FamilyConfig {
    pub fn family(&self) -> Family {
        Family::of(self.network.ip())
    }

    /// Whether `subnet` could have been leased under this plan (right length, inside [SubnetMin, SubnetMax]).
    pub fn admits(&self, subnet: IpNetwork) -> bool {
        let base = ipmath::to_u128(subnet.ip());
        subnet.prefix() == self.subnet_len
            && Family::of(subnet.ip()) == self.family()
            && base >= ipmath::to_u128(self.subnet_min)
            && base <= ipmath::to_u128(self.subnet_max)
    }
}

/// The backend section: its type, and the whole object for the backend to parse its own options from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: String,
    pub raw: Value,
    /// The config has no `Backend` at all, so `kind` is flannel's fallback (udp), not the operator's choice.
    pub implied: bool,
}

impl BackendConfig {
    /// Why a backend this weftd does not implement was asked for, in the operator's terms.
    pub fn origin(&self) -> String {
        if self.implied {
            format!("the network config has no Backend, which flannel reads as {:?}", self.kind)
        } else {
            format!("the network config asks for Backend.Type {:?}", self.kind)
        }
    }
}

/// A checked network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network` and `IPv6Network` with their subnet lengths and ranges, for the enabled families.
    pub networks: PerFamily<FamilyConfig>,
    pub enable_nftables: bool,
    pub backend: BackendConfig,
    /// Things that are accepted but probably not what the operator meant (unknown fields, host bits set).
    pub warnings: Vec<String>,
}

impl NetworkConfig {
    pub fn family(&self, family: Family) -> Option<&FamilyConfig> {
        self.networks.get(family)
    }

    /// The enabled families, IPv4 first.
    pub fn families(&self) -> Vec<Family> {
        self.networks.families()
    }

    /// The one validation weftctl runs before storing a config and weftd runs before using it: every rule of
    /// [`parse`](Self::parse), and every option of the backend the config names.
    pub fn validate(text: &str) -> Result<(NetworkConfig, weft_backends::backend::BackendConfig), ConfigError> {
        let config = NetworkConfig::parse(text)?;
        let backend = weft_backends::backend::BackendConfig::parse(&config.backend.kind, &config.backend.raw).map_err(
            |e| match e {
                weft_backends::BackendError::Config { field, msg } => ConfigError::Field { field, msg },
                // Say where the backend type came from: a config without Backend asks for udp without naming it.
                other if config.backend.implied => {
                    field_error("Backend", format!("{}: {other}", config.backend.origin()))
                }
                other => field_error("Backend.Type", other.to_string()),
            },
        )?;
        let networks = PerFamily::from_fn(|f| config.family(f).map(|c| c.network));
        let backend = backend.for_networks(&networks).map_err(|e| match e {
            weft_backends::BackendError::Config { field, msg } => ConfigError::Field { field, msg },
            other => field_error("Backend.Type", other.to_string()),
        })?;
        Ok((config, backend))
    }

    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { limit: MAX_CONFIG_BYTES });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let obj = value.as_object().ok_or(ConfigError::NotAnObject)?;
        let fields = Fields::new(obj);
        let mut warnings = fields.unknown(&[KNOWN_FIELDS, IGNORED_FIELDS].concat());

        let enable_v4 = fields.bool("EnableIPv4")?.unwrap_or(true);
        let enable_v6 = fields.bool("EnableIPv6")?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return Err(field_error("EnableIPv4", "both EnableIPv4 and EnableIPv6 are false: nothing to lease"));
        }
        for name in IGNORED_FIELDS {
            if fields.get(name).is_some() {
                warnings.push(format!(
                "{name} is ignored: flannel 0.22 to 0.24 read it only for Kubernetes' MultiClusterCIDR and dropped it \
                 with an etcd config, and later flannel does not know it; the cluster network is Network/IPv6Network"
            ));
            }
        }
        let ipv4 = if enable_v4 { Some(family_config(&fields, &V4_FIELDS, &mut warnings)?) } else { None };
        let ipv6 = if enable_v6 { Some(family_config(&fields, &V6_FIELDS, &mut warnings)?) } else { None };
        Ok(NetworkConfig {
            networks: PerFamily::new(ipv4, ipv6),
            enable_nftables: fields.bool("EnableNFTables")?.unwrap_or(false),
            backend: backend_config(fields.get("Backend"), &mut warnings)?,
            warnings,
        })
    }
}

const KNOWN_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
];

/// Fields some flannel versions define and none applies with an etcd config.
const IGNORED_FIELDS: &[&str] = &["Networks", "IPv6Networks"];

/// The field names and limits of one family, so v4 and v6 go through the same code.
struct FamilyFields {
    family: Family,
    network: &'static str,
    subnet_len: &'static str,
    subnet_min: &'static str,
    subnet_max: &'static str,
    /// Longest network prefix that still yields four subnets of the smallest useful size.
    max_network_prefix: u8,
    /// Longest subnet prefix (a subnet needs room for a tunnel address and a bridge).
    max_subnet_len: u8,
    /// Networks up to this prefix get subnets of `default_subnet_len`; longer ones are split into four.
    roomy_network_prefix: u8,
    default_subnet_len: u8,
}

const V4_FIELDS: FamilyFields = FamilyFields {
    family: Family::V4,
    network: "Network",
    subnet_len: "SubnetLen",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
    max_network_prefix: 28,
    max_subnet_len: 30,
    roomy_network_prefix: 22,
    default_subnet_len: 24,
};

const V6_FIELDS: FamilyFields = FamilyFields {
    family: Family::V6,
    network: "IPv6Network",
    subnet_len: "IPv6SubnetLen",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
    max_network_prefix: 124,
    max_subnet_len: 126,
    roomy_network_prefix: 62,
    default_subnet_len: 64,
};

fn family_config(fields: &Fields, f: &FamilyFields, warnings: &mut Vec<String>) -> Result<FamilyConfig, ConfigError> {
    let given = fields
        .cidr(f.network, f.family)?
        .ok_or_else(|| field_error(f.network, format!("is required when {} is enabled", f.family)))?;
    let network = IpNetwork::new(given.network(), given.prefix()).expect("prefix was valid");
    if network.ip() != given.ip() {
        warnings.push(format!("{} {given} has host bits set; using {network}", f.network));
    }
    if let Some(special) = special_range(network) {
        return Err(field_error(
            f.network,
            format!("{network} overlaps {special}, which is never a container network"),
        ));
    }
    let prefix = network.prefix();
    let subnet_len = match fields.uint(f.subnet_len)? {
        Some(0) | None => {
            if prefix > f.max_network_prefix {
                return Err(field_error(
                    f.network,
                    format!("{network} is too small: the smallest useful network is a /{}", f.max_network_prefix),
                ));
            } else if prefix <= f.roomy_network_prefix {
                f.default_subnet_len
            } else {
                prefix + 2
            }
        }
        Some(len) if len > u64::from(f.max_subnet_len) => {
            return Err(field_error(f.subnet_len, format!("{len} is longer than /{}", f.max_subnet_len)))
        }
        Some(len) if len < u64::from(prefix) + 2 => {
            return Err(field_error(
                f.subnet_len,
                format!("/{len} must be at least /{} so {network} holds four or more subnets", prefix + 2),
            ))
        }
        Some(len) => len as u8,
    };

    let size = ipmath::subnet_size(f.family, subnet_len);
    let first = ipmath::to_u128(network.ip());
    let last_base = ipmath::last_address(network) - (size - 1);
    let bound = |name: &str, default: u128| -> Result<IpAddr, ConfigError> {
        let Some(addr) = fields.ip(name, f.family)? else {
            return Ok(ipmath::from_u128(f.family, default));
        };
        if !network.contains(addr) {
            return Err(field_error(name, format!("{addr} is not inside {} {network}", f.network)));
        }
        if ipmath::to_u128(addr) % size != 0 {
            return Err(field_error(name, format!("{addr} is not on a /{subnet_len} boundary ({})", f.subnet_len)));
        }
        Ok(addr)
    };
    // The first subnet is skipped by default: its base address is the network address.
    let subnet_min = bound(f.subnet_min, first + size)?;
    let subnet_max = bound(f.subnet_max, last_base)?;
    if ipmath::to_u128(subnet_min) > ipmath::to_u128(subnet_max) {
        return Err(field_error(f.subnet_min, format!("{subnet_min} is above {} {subnet_max}", f.subnet_max)));
    }
    Ok(FamilyConfig { network, subnet_len, subnet_min, subnet_max })
}

/// The ranges no container network may touch: routing any of them into the overlay breaks the host itself.
fn special_range(network: IpNetwork) -> Option<&'static str> {
    const SPECIAL: &[(&str, &str)] = &[
        ("0.0.0.0/8", "0.0.0.0/8 (\"this network\")"),
        ("127.0.0.0/8", "the loopback range 127.0.0.0/8"),
        ("169.254.0.0/16", "the link-local range 169.254.0.0/16"),
        ("224.0.0.0/4", "the multicast range 224.0.0.0/4"),
        ("240.0.0.0/4", "the reserved range 240.0.0.0/4 (with the broadcast address)"),
        ("::/127", "the unspecified and loopback addresses ::/127"),
        ("fe80::/10", "the link-local range fe80::/10"),
        ("ff00::/8", "the multicast range ff00::/8"),
    ];
    SPECIAL
        .iter()
        .find(|(range, _)| ipmath::overlaps(network, range.parse().expect("a valid range")))
        .map(|(_, what)| *what)
}

/// The backend flannel's code uses when the config has no `Backend` (its documentation says vxlan, issue #1221).
/// A mixed cluster must agree on the backend, so weft follows the code.
pub const IMPLIED_BACKEND: &str = "udp";

fn backend_config(backend: Option<&Value>, warnings: &mut Vec<String>) -> Result<BackendConfig, ConfigError> {
    let Some(raw) = backend else {
        warnings.push(format!(
            "Backend is missing: flannel then uses the {IMPLIED_BACKEND} backend, and so does weft; for VXLAN write \
             \"Backend\":{{\"Type\":\"vxlan\"}}"
        ));
        return Ok(BackendConfig { kind: IMPLIED_BACKEND.into(), raw: Value::Object(Map::new()), implied: true });
    };
    let obj =
        raw.as_object().ok_or_else(|| field_error("Backend", "must be an object such as {\"Type\":\"vxlan\"}"))?;
    let kind = Fields::new(obj)
        .get("Type")
        .map(|t| t.as_str().ok_or_else(|| field_error("Backend.Type", "must be a string")))
        .transpose()?
        .ok_or_else(|| field_error("Backend.Type", "is missing (for example \"vxlan\")"))?
        .to_ascii_lowercase();
    Ok(BackendConfig { kind, raw: raw.clone(), implied: false })
}

/// Case-insensitive field access with typed errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Fields { obj }
    }

    /// Go's decoder prefers an exact match, then takes a case-insensitive one.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).or_else(|| self.obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
    }

    fn unknown(&self, known: &[&str]) -> Vec<String> {
        self.obj
            .keys()
            .filter(|k| !known.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .map(|k| format!("unknown field {k:?} is ignored"))
            .collect()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| field_error(name, format!("{v} is not true or false"))),
        }
    }

    fn uint(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| field_error(name, format!("{v} is not a whole number"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(field_error(name, format!("{v} is not a string"))),
        }
    }

    fn cidr(&self, name: &str, family: Family) -> Result<Option<IpNetwork>, ConfigError> {
        let Some(text) = self.string(name)? else { return Ok(None) };
        let net: IpNetwork = text
            .parse()
            .ok()
            .filter(|_| text.contains('/'))
            .ok_or_else(|| field_error(name, format!("{text:?} is not a CIDR such as 10.244.0.0/16")))?;
        if Family::of(net.ip()) != family {
            return Err(field_error(name, format!("{text:?} is not an {family} network")));
        }
        Ok(Some(net))
    }

    fn ip(&self, name: &str, family: Family) -> Result<Option<IpAddr>, ConfigError> {
        let Some(text) = self.string(name)? else { return Ok(None) };
        let parsed = match family {
            Family::V4 => text.parse::<Ipv4Addr>().map(IpAddr::V4).ok(),
            Family::V6 => text.parse::<Ipv6Addr>().map(IpAddr::V6).ok(),
        };
        parsed.map(Some).ok_or_else(|| field_error(name, format!("{text:?} is not an {family} address")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(c: &NetworkConfig) -> &FamilyConfig {
        c.networks.v4.as_ref().unwrap()
    }

    fn err(text: &str) -> String {
        NetworkConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn flannel_documented_example_gets_flannel_defaults() {
        let c = NetworkConfig::parse(r#"{"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0", "SubnetMax": "10.99.0.0", "Backend": {"Type": "udp", "Port": 7890}}"#).unwrap();
        assert_eq!(v4(&c).network.to_string(), "10.0.0.0/8");
        assert_eq!(v4(&c).subnet_len, 20);
        assert_eq!(v4(&c).subnet_min.to_string(), "10.10.0.0");
        assert_eq!(v4(&c).subnet_max.to_string(), "10.99.0.0");
        assert_eq!(c.backend.kind, "udp");
        assert_eq!(c.backend.raw["Port"], 7890);
    }

    #[test]
    fn defaults_skip_the_first_subnet_and_end_at_the_last() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 24);
        assert_eq!(v4(&c).subnet_min.to_string(), "10.244.1.0");
        assert_eq!(v4(&c).subnet_max.to_string(), "10.244.255.0");
        assert!(c.networks.v6.is_none());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn small_networks_are_split_in_four() {
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/26"}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 28);
        assert_eq!(v4(&c).subnet_min.to_string(), "10.1.0.16");
        assert_eq!(v4(&c).subnet_max.to_string(), "10.1.0.48");
        assert!(err(r#"{"Network":"10.1.0.0/29"}"#).contains("smallest useful network is a /28"));
    }

    #[test]
    fn missing_backend_means_udp_as_in_flannels_code() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!((c.backend.kind.as_str(), c.backend.implied), ("udp", true));
        assert!(c.warnings[0].starts_with("Backend is missing: flannel then uses the udp backend"), "{:?}", c.warnings);
        assert!(c.backend.origin().contains("has no Backend"), "{}", c.backend.origin());
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#).unwrap();
        assert!(!c.backend.implied && c.warnings.is_empty());
        assert_eq!(c.backend.origin(), "the network config asks for Backend.Type \"udp\"");
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"VXLAN"}}"#).unwrap();
        assert_eq!(c.backend.kind, "vxlan", "Type is lowercased like flannel does");
    }

    #[test]
    fn networks_lists_are_accepted_and_ignored_with_a_warning() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","Networks":["10.245.0.0/16"],"IPv6Networks":[],"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(v4(&c).network.to_string(), "10.244.0.0/16");
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings.iter().all(|w| w.contains("is ignored")), "{:?}", c.warnings);
        assert!(!c.warnings.iter().any(|w| w.contains("unknown")), "not reported as unknown: {:?}", c.warnings);
    }

    #[test]
    fn field_names_match_case_insensitively_like_go() {
        let c = NetworkConfig::parse(r#"{"network":"10.5.0.0/16","subnetlen":26,"backend":{"type":"vxlan"}}"#).unwrap();
        assert_eq!(v4(&c).subnet_len, 26);
        assert_eq!(v4(&c).subnet_min.to_string(), "10.5.0.64");
    }

    #[test]
    fn dual_stack_uses_the_same_rules_for_ipv6() {
        let c = NetworkConfig::parse(
            r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let v6 = c.networks.v6.as_ref().unwrap();
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min.to_string(), "2001:cafe:42:1::");
        assert_eq!(v6.subnet_max.to_string(), "2001:cafe:42:ff::");
        assert_eq!(c.families(), vec![Family::V4, Family::V6]);

        let c = NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120"}"#).unwrap();
        assert!(c.networks.v4.is_none());
        assert_eq!(c.networks.v6.as_ref().unwrap().subnet_len, 122);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err("[]").contains("must be a JSON object"));
        assert!(err("{}").contains("field Network: is required"));
        assert!(err(r#"{"Network":"10.244.0.0"}"#).contains("field Network: \"10.244.0.0\" is not a CIDR"));
        assert!(err(r#"{"Network":"fc00::/64"}"#).contains("not an IPv4 network"));
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#).contains("field SubnetLen: 31 is longer than /30"));
        assert!(
            err(r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#).contains("field SubnetLen: /17 must be at least /18")
        );
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#)
            .contains("field SubnetLen: \"24\" is not a whole number"));
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#)
            .contains("field SubnetMin: 10.245.0.0 is not inside"));
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.7"}"#)
            .contains("field SubnetMax: 10.244.3.7 is not on a /24 boundary"));
        assert!(err(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#)
            .contains("is above SubnetMax"));
        assert!(err(r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#).contains("field Backend: must be an object"));
        assert!(err(r#"{"Network":"10.244.0.0/16","Backend":{"VNI":2}}"#).contains("field Backend.Type: is missing"));
        assert!(err(r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#).contains("field IPv6Network: is required"));
        assert!(err(r#"{"EnableIPv4":false}"#).contains("nothing to lease"));
        assert!(err(r#"{"Network":"10.244.0.0/16","EnableIPv4":"yes"}"#).contains("field EnableIPv4"));
    }

    #[test]
    fn networks_over_special_ranges_are_refused() {
        assert!(err(r#"{"Network":"0.0.0.0/0"}"#).contains("field Network: 0.0.0.0/0 overlaps 0.0.0.0/8"));
        assert!(err(r#"{"Network":"127.0.0.0/16"}"#).contains("loopback"));
        assert!(err(r#"{"Network":"224.0.0.0/16"}"#).contains("multicast"));
        assert!(err(r#"{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"::/0"}"#).contains("field IPv6Network"));
        assert!(err(r#"{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fe80::/64"}"#).contains("link-local"));
    }

    #[test]
    fn validation_covers_every_backend_option_and_the_size() {
        let invalid = |text: &str| NetworkConfig::validate(text).unwrap_err().to_string();
        let with = |backend: &str| format!(r#"{{"Network":"10.244.0.0/16","Backend":{backend}}}"#);
        assert!(invalid(&with(r#"{"Type":"vxlan","VNI":0}"#)).contains("field Backend.VNI: 0 is outside"));
        assert!(invalid(&with(r#"{"Type":"vxlan","VNI":16777216}"#)).contains("field Backend.VNI"));
        assert!(invalid(&with(r#"{"Type":"vxlan","Port":70000}"#)).contains("field Backend.Port"));
        assert!(invalid(&with(r#"{"Type":"vxlan","MTU":10}"#)).contains("field Backend.MTU"));
        assert!(invalid(&with(r#"{"Type":"bogus"}"#)).contains("field Backend.Type: unsupported backend type"));
        let (config, backend) = NetworkConfig::validate(&with(r#"{"Type":"vxlan","VNI":4}"#)).unwrap();
        assert_eq!((config.backend.kind.as_str(), backend.backend_type()), ("vxlan", "vxlan"));
        let huge = format!(r#"{{"Network":"10.244.0.0/16","Pad":"{}"}}"#, " ".repeat(MAX_CONFIG_BYTES));
        assert_eq!(invalid(&huge), "network config is larger than 65536 bytes");
    }

    #[test]
    fn accepted_oddities_become_warnings() {
        let c =
            NetworkConfig::parse(r#"{"Network":"10.244.7.0/16","Netwrok":"x","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(v4(&c).network.to_string(), "10.244.0.0/16");
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let c = NetworkConfig::parse(include_str!("../deploy/network-config.json")).unwrap();
        assert_eq!(c.backend.kind, "vxlan");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn admits_checks_length_and_range() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let f = v4(&c);
        assert!(f.admits("10.244.3.0/24".parse().unwrap()));
        assert!(!f.admits("10.244.0.0/24".parse().unwrap()), "the first subnet is skipped");
        assert!(!f.admits("10.244.3.0/25".parse().unwrap()));
        assert!(!f.admits("10.245.3.0/24".parse().unwrap()));
    }

    #[test]
    fn validate_takes_the_wireguard_backend_and_names_its_bad_fields() {
        let ok = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","Mode":"auto","ListenPort":7000}}"#;
        let (_, backend) = NetworkConfig::validate(ok).unwrap();
        assert_eq!(backend.backend_type(), "wireguard");
        let bad = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","PSK":"nope"}}"#;
        let err = NetworkConfig::validate(bad).unwrap_err().to_string();
        assert!(err.starts_with("network config field Backend.PSK: PSK \"nope\" is not a WireGuard key"), "{err}");
    }
}
