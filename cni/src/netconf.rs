//! The network configuration on stdin: weft's own (`"type": "weft"`) and flannel's (`"type": "flannel"` with a
//! `delegate` holding bridge options), both resolved into one [`NetConf`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use crate::error::{CniError, Result};
use crate::{validate, version};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_BRIDGE: &str = "cni0";
/// host-local's default store, so a node switching from flannel + host-local keeps its allocations.
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cni/networks";
/// flannel's own state directory (one file per container); we only remove stale files from it.
pub const DEFAULT_FLANNEL_DATA_DIR: &str = "/var/lib/cni/flannel";

/// A route requested through `ipam.routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// Built in, with host-local's on-disk layout under `<data_dir>/<network name>/`.
    Builtin { data_dir: PathBuf },
    /// Another IPAM plugin, run from CNI_PATH.
    Plugin { plugin: String },
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub subnet_file: PathBuf,
    /// flannel's `dataDir` (flannel mode only).
    pub flannel_data_dir: Option<PathBuf>,
    /// flannel's whole netconf (flannel mode only), for the delegate netconf stored under `dataDir`.
    pub flannel_netconf: Option<Map<String, Value>>,
    /// The plugin flannel's config delegates to when weft does not do its work in process: a delegate type other
    /// than bridge, or bridge options weft does not implement. Run from CNI_PATH exactly as flannel's plugin runs it.
    pub delegate_plugin: Option<String>,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub hairpin_mode: bool,
    /// None: FLANNEL_MTU.
    pub mtu: Option<u32>,
    /// None: the opposite of FLANNEL_IPMASQ (weftd masquerades itself when that is true).
    pub ip_masq: Option<bool>,
    pub ipam: Ipam,
    /// The `ipam` object as given (passed on to a delegated IPAM plugin).
    pub ipam_raw: Map<String, Value>,
    pub extra_routes: Vec<RouteConf>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// GC: (container ID, ifname) pairs still in use.
    pub valid_attachments: Option<HashSet<(String, String)>>,
}

/// Parses stdin. Syntax errors are code 6; a missing or wrong-typed field is code 7 and names the field.
pub fn parse(stdin: &[u8]) -> Result<NetConf> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| CniError::Decoding(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(CniError::Decoding("the network configuration is not a JSON object".into()));
    };
    let top = Fields { obj: &top, at: "" };
    let cni_version = top.string("cniVersion")?.ok_or_else(|| invalid("cniVersion is missing"))?;
    version::format_of(&cni_version)?;
    let name = top.string("name")?.ok_or_else(|| invalid("name is missing"))?;
    validate::network_name(&name)?;
    let plugin_type = top.string("type")?.ok_or_else(|| invalid("type is missing"))?;

    // flannel's netconf keeps the bridge options in `delegate`; weft's has them at the top level.
    let delegate_obj = match top.obj.get("delegate") {
        None | Some(Value::Null) => None,
        Some(Value::Object(d)) => Some(d),
        Some(_) => return Err(invalid("delegate must be an object")),
    };
    let flannel_mode = plugin_type == "flannel" || delegate_obj.is_some();
    let empty = Map::new();
    let bridge_opts = if flannel_mode { Fields { obj: delegate_obj.unwrap_or(&empty), at: "delegate." } } else { top };
    if let Some(d) = delegate_obj {
        // flannel's own rules for the delegate.
        for field in ["name", "ipam"] {
            if d.contains_key(field) {
                return Err(invalid(&format!("delegate must not contain {field:?}")));
            }
        }
        match d.get("type") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(invalid("delegate.type must be a string")),
        }
    }
    let delegate_plugin = delegate_obj.and_then(delegated_plugin);
    if let Some(plugin) = &delegate_plugin {
        validate::plugin_name(plugin)
            .map_err(|_| invalid(&format!("delegate.type {plugin:?} is not a plugin name")))?;
    }

    let ipam_raw = match top.obj.get("ipam") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("ipam must be an object")),
    };
    let ipam_fields = Fields { obj: &ipam_raw, at: "ipam." };
    let ipam = match ipam_fields.string("type")?.as_deref() {
        None | Some("") | Some("host-local") | Some("weft") => Ipam::Builtin {
            data_dir: ipam_fields.string("dataDir")?.unwrap_or_else(|| DEFAULT_IPAM_DATA_DIR.into()).into(),
        },
        Some(plugin) => {
            validate::plugin_name(plugin)?;
            Ipam::Plugin { plugin: plugin.to_string() }
        }
    };
    let extra_routes = parse_routes(ipam_raw.get("routes"))?;

    let valid_attachments = match top.obj.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| {
                    let id = item.get("containerID").and_then(Value::as_str);
                    let ifname = item.get("ifname").and_then(Value::as_str);
                    match (id, ifname) {
                        (Some(id), Some(ifname)) => Ok((id.to_string(), ifname.to_string())),
                        _ => Err(invalid("cni.dev/valid-attachments entries need containerID and ifname strings")),
                    }
                })
                .collect::<Result<HashSet<_>>>()?,
        ),
        Some(_) => return Err(invalid("cni.dev/valid-attachments must be an array")),
    };

    let mtu = bridge_opts.u32("mtu")?;
    if mtu == Some(0) || mtu.is_some_and(|m| m < 68) {
        return Err(invalid(&format!("{}mtu must be at least 68", bridge_opts.at)));
    }
    let bridge = bridge_opts.string("bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.into());
    validate::interface_name(&bridge)
        .map_err(|_| invalid(&format!("{}bridge {bridge:?} is not a valid interface name", bridge_opts.at)))?;
    Ok(NetConf {
        subnet_file: top.string("subnetFile")?.unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()).into(),
        flannel_data_dir: flannel_mode
            .then(|| top.string("dataDir"))
            .transpose()?
            .map(|d| d.unwrap_or_else(|| DEFAULT_FLANNEL_DATA_DIR.into()).into()),
        flannel_netconf: flannel_mode.then(|| top.obj.clone()),
        delegate_plugin,
        bridge,
        is_gateway: bridge_opts.bool("isGateway")?.unwrap_or(true),
        // weft's own netconf gives containers a default route unless told otherwise; flannel's follows the bridge
        // plugin, where it is off unless the delegate asks (the upstream manifest does).
        is_default_gateway: bridge_opts.bool("isDefaultGateway")?.unwrap_or(!flannel_mode),
        hairpin_mode: bridge_opts.bool("hairpinMode")?.unwrap_or(false),
        mtu,
        ip_masq: bridge_opts.bool("ipMasq")?,
        ipam,
        ipam_raw,
        extra_routes,
        dns: top.obj.get("dns").filter(|v| !v.is_null()).cloned(),
        prev_result: top.obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
        valid_attachments,
        cni_version,
        name,
        plugin_type,
    })
}

/// The bridge options weft implements in process (see docs/cni.md).
const NATIVE_BRIDGE_OPTIONS: &[&str] =
    &["type", "bridge", "isGateway", "isDefaultGateway", "hairpinMode", "mtu", "ipMasq"];

/// The plugin to run for a flannel `delegate`, or None when weft does the bridge plugin's work itself.
fn delegated_plugin(delegate: &Map<String, Value>) -> Option<String> {
    let kind = delegate.get("type").and_then(Value::as_str).unwrap_or("bridge");
    let native = kind == "bridge" && delegate.keys().all(|k| NATIVE_BRIDGE_OPTIONS.contains(&k.as_str()));
    (!native).then(|| kind.to_string())
}

/// The cniVersion of stdin if it can be read at all: errors are reported in the version the runtime asked for.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_string)
}

fn parse_routes(routes: Option<&Value>) -> Result<Vec<RouteConf>> {
    let Some(routes) = routes.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let Value::Array(items) = routes else { return Err(invalid("ipam.routes must be an array")) };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let dst = item
                .get("dst")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(&format!("ipam.routes[{i}].dst is missing")))?;
            let dst = dst.parse().map_err(|_| invalid(&format!("ipam.routes[{i}].dst {dst:?} is not a CIDR")))?;
            let gw = match item.get("gw").and_then(Value::as_str) {
                None => None,
                Some(gw) => {
                    Some(gw.parse().map_err(|_| invalid(&format!("ipam.routes[{i}].gw {gw:?} is not an IP address")))?)
                }
            };
            Ok(RouteConf { dst, gw })
        })
        .collect()
}

fn invalid(msg: &str) -> CniError {
    CniError::InvalidConfig(msg.to_string())
}

/// Typed access to an object's fields; errors name the field with its path.
#[derive(Clone, Copy)]
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    at: &'static str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, what: &str) -> CniError {
        invalid(&format!("{}{key} must be {what}", self.at))
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(key, "true or false")),
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| self.wrong(key, "a number"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weft_netconf_with_defaults() {
        let c = parse(br#"{"cniVersion":"1.0.0","name":"net1","type":"weft"}"#).unwrap();
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.bridge, "cni0");
        assert!(c.is_gateway && c.is_default_gateway && !c.hairpin_mode);
        assert_eq!((c.mtu, c.ip_masq), (None, None));
        assert_eq!(c.ipam, Ipam::Builtin { data_dir: DEFAULT_IPAM_DATA_DIR.into() });
        assert!(c.flannel_data_dir.is_none());
    }

    #[test]
    fn flannel_netconf_reads_the_delegate() {
        let c = parse(
            br#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","subnetFile":"/x/subnet.env",
                 "delegate":{"hairpinMode":true,"isDefaultGateway":true,"bridge":"br9","mtu":1400,"ipMasq":false},
                 "ipam":{"routes":[{"dst":"192.168.0.0/16"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_file, PathBuf::from("/x/subnet.env"));
        assert_eq!(c.bridge, "br9");
        assert!(c.hairpin_mode && c.is_default_gateway && c.is_gateway);
        assert_eq!((c.mtu, c.ip_masq), (Some(1400), Some(false)));
        assert_eq!(c.flannel_data_dir, Some(PathBuf::from(DEFAULT_FLANNEL_DATA_DIR)));
        assert_eq!(c.extra_routes, vec![RouteConf { dst: "192.168.0.0/16".parse().unwrap(), gw: None }]);
        // Without the delegate asking, flannel's bridge gives no default route.
        let c = parse(br#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{}}"#).unwrap();
        assert!(!c.is_default_gateway);
    }

    #[test]
    fn errors_have_the_right_codes_and_name_the_field() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"{", 6, "cannot decode"),
            (b"[1]", 6, "not a JSON object"),
            (br#"{"cniVersion":"9.9.9","name":"n","type":"weft"}"#, 1, "9.9.9"),
            (br#"{"name":"n","type":"weft"}"#, 7, "cniVersion is missing"),
            (br#"{"cniVersion":"1.0.0","name":"../etc","type":"weft"}"#, 7, "network name"),
            (br#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":"big"}"#, 7, "mtu must be a number"),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"weft","hairpinMode":1}"#,
                7,
                "hairpinMode must be true or false",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"type":"../macvlan"}}"#,
                7,
                "delegate.type",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"name":"x"}}"#,
                7,
                "delegate must not contain",
            ),
            (br#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"../x"}}"#, 7, "ipam.type"),
            (br#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"routes":[{"dst":"x"}]}}"#, 7, "routes[0].dst"),
        ];
        for (input, code, text) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code(), *code, "{}: {e}", String::from_utf8_lossy(input));
            assert!(e.to_string().contains(text), "{e} should mention {text}");
        }
    }

    #[test]
    fn delegates_weft_does_not_implement_are_run_from_cni_path() {
        let conf = |delegate: &str| {
            parse(format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{delegate}}}"#).as_bytes())
                .unwrap()
        };
        assert_eq!(conf(r#"{"hairpinMode":true,"isDefaultGateway":true,"mtu":1400}"#).delegate_plugin, None);
        assert_eq!(conf(r#"{"type":"ipvlan","master":"eth0"}"#).delegate_plugin.as_deref(), Some("ipvlan"));
        assert_eq!(conf(r#"{"type":"macvlan"}"#).delegate_plugin.as_deref(), Some("macvlan"));
        for option in [r#""promiscMode":true"#, r#""vlan":7"#, r#""forceAddress":true"#, r#""macspoofchk":true"#] {
            let c = conf(&format!("{{{option}}}"));
            assert_eq!(c.delegate_plugin.as_deref(), Some("bridge"), "{option} needs the bridge plugin itself");
        }
        let weft = parse(br#"{"cniVersion":"1.0.0","name":"n","type":"weft","vlan":7}"#).unwrap();
        assert_eq!(weft.delegate_plugin, None, "weft's own config never delegates");
    }

    #[test]
    fn gc_attachments_and_external_ipam() {
        let c = parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"weft","ipam":{"type":"static"},
                 "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.ipam, Ipam::Plugin { plugin: "static".into() });
        assert!(c.valid_attachments.unwrap().contains(&("a".to_string(), "eth0".to_string())));
        assert_eq!(sniff_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(), Some("0.4.0"));
    }
}
