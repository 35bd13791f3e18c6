//! `weftctl cni install`: installing the CNI plugin and its network config.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::subnet_file::write_atomically;

/// The conflist `weftctl cni install` writes (also shipped as deploy/10-weft.conflist): weft, then portmap for
/// hostPort, as flannel's upstream manifest chains it.
pub const CONFLIST: &str = include_str!("../deploy/10-weft.conflist");
pub const CONFLIST_NAME: &str = "10-weft.conflist";

/// `weftctl cni install`: the plugin binary (as `weft`, optionally also as `flannel`) and a conflist. (`weftctl cni
/// bench` is benchmark code and lives in the `weft-lab` crate.)
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Where runtimes look for plugins
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Where runtimes look for network configs
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The plugin binary to install (default: the `weft` next to this weftctl)
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Also install the binary as `flannel`, so existing flannel conflists keep working unchanged
    #[arg(long)]
    pub as_flannel: bool,
    /// Install only the binary, no conflist
    #[arg(long, conflicts_with = "conflist")]
    pub no_conflist: bool,
    /// Write this conflist (a Kubernetes ConfigMap's, say) instead of the built-in one; it is checked first, so a
    /// broken file fails the install instead of every pod's network set-up
    #[arg(long)]
    pub conflist: Option<PathBuf>,
}

/// Installs as `args` say and prints what it did, one line each.
pub fn run_install(args: &InstallArgs) -> Result<(), String> {
    let InstallArgs { bin_dir, conf_dir, plugin, as_flannel, no_conflist, conflist } = args;
    let plugin = plugin.clone().map_or_else(default_plugin, Ok)?;
    let conflist = match conflist {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("reading conflist {}: {e}", path.display()))?;
            check_conflist(&text).map_err(|e| format!("conflist {}: {e}", path.display()))?;
            text
        }
        None => CONFLIST.to_string(),
    };
    let conf = (!no_conflist).then_some((conf_dir.as_path(), conflist.as_str()));
    for line in install(&plugin, bin_dir, conf, *as_flannel)? {
        println!("{line}");
    }
    Ok(())
}

/// The `weft` plugin next to the running executable (cargo and `cargo install` put them together).
pub fn default_plugin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding weftctl's own path: {e}"))?;
    Ok(exe.with_file_name("weft"))
}

/// Checks a conflist the way a runtime and the plugin will read it: a JSON object with `name`, `cniVersion` and a
/// non-empty `plugins` list whose entries name their `type`, and every `weft` or `flannel` entry a valid netconf
/// for the plugin once it inherits `name` and `cniVersion` (as libcni passes them).
pub fn check_conflist(text: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let top = value.as_object().ok_or("not a JSON object")?;
    for field in ["name", "cniVersion"] {
        if !top.get(field).is_some_and(serde_json::Value::is_string) {
            return Err(format!("{field} is missing or not a string"));
        }
    }
    let plugins = top.get("plugins").and_then(serde_json::Value::as_array).ok_or("plugins is missing or not a list")?;
    if plugins.is_empty() {
        return Err("plugins is empty".into());
    }
    for (i, plugin) in plugins.iter().enumerate() {
        let kind =
            plugin.get("type").and_then(serde_json::Value::as_str).ok_or(format!("plugins[{i}].type is missing"))?;
        if kind == "weft" || kind == "flannel" {
            let mut netconf = plugin.clone();
            netconf["name"] = top["name"].clone();
            netconf["cniVersion"] = top["cniVersion"].clone();
            weft_cni::netconf::parse(netconf.to_string().as_bytes())
                .map_err(|e| format!("plugins[{i}] ({kind}): {e}"))?;
        }
    }
    Ok(())
}

/// Copies the plugin into `bin_dir` (atomically: a runtime may be executing the old one) and writes `conf`'s
/// conflist text into its directory. Returns what it did, one line each.
pub fn install(
    plugin: &Path,
    bin_dir: &Path,
    conf: Option<(&Path, &str)>,
    as_flannel: bool,
) -> Result<Vec<String>, String> {
    let binary = std::fs::read(plugin).map_err(|e| format!("reading plugin {}: {e}", plugin.display()))?;
    let mut done = Vec::new();
    let names: &[&str] = if as_flannel { &["weft", "flannel"] } else { &["weft"] };
    for name in names {
        let target = bin_dir.join(name);
        write_atomically(&target, &binary, 0o755).map_err(|e| format!("installing {}: {e}", target.display()))?;
        done.push(format!("installed {}", target.display()));
    }
    if let Some((conf_dir, conflist)) = conf {
        let target = conf_dir.join(CONFLIST_NAME);
        write_atomically(&target, conflist.as_bytes(), 0o644)
            .map_err(|e| format!("writing {}: {e}", target.display()))?;
        done.push(format!("wrote {}", target.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_conflist_names_weft_and_chains_portmap() {
        let v: serde_json::Value = serde_json::from_str(CONFLIST).unwrap();
        assert_eq!(v["plugins"][0]["type"], "weft");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        // It is also a valid weft netconf once libcni adds name and cniVersion.
        let mut first = v["plugins"][0].clone();
        first["name"] = v["name"].clone();
        first["cniVersion"] = v["cniVersion"].clone();
        weft_cni::netconf::parse(first.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn install_copies_the_binary_and_writes_the_conflist() {
        let dir = std::env::temp_dir().join(format!("weft-cni-install-{}", std::process::id()));
        let src = dir.join("src-weft");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        let done = install(&src, &dir.join("bin"), Some((&dir.join("net.d"), CONFLIST)), true).unwrap();
        assert_eq!(done.len(), 3, "{done:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("bin/flannel")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read_to_string(dir.join("net.d/10-weft.conflist")).unwrap(), CONFLIST);
        assert!(install(&dir.join("missing"), &dir.join("bin"), None, false).unwrap_err().contains("missing"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_given_conflist_is_checked_before_it_is_written() {
        check_conflist(CONFLIST).unwrap();
        let flannels = r#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[
            {"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},
            {"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        check_conflist(flannels).unwrap();
        for (text, says) in [
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"weft"}]}"#, "name is missing"),
            (r#"{"name":"weft","cniVersion":"1.0.0"}"#, "plugins is missing"),
            (r#"{"name":"weft","cniVersion":"1.0.0","plugins":[]}"#, "plugins is empty"),
            (r#"{"name":"weft","cniVersion":"1.0.0","plugins":[{"capabilities":{}}]}"#, "plugins[0].type"),
            (r#"{"name":"weft","cniVersion":"1.0.0","plugins":[{"type":"weft","mtu":"big"}]}"#, "plugins[0] (weft)"),
        ] {
            let err = check_conflist(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
        let dir = std::env::temp_dir().join(format!("weft-cni-conflist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("weft"), b"#!/bin/true\n").unwrap();
        std::fs::write(dir.join("bad.conflist"), b"{").unwrap();
        let args = |conflist: &str| InstallArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            plugin: Some(dir.join("weft")),
            as_flannel: false,
            no_conflist: false,
            conflist: Some(dir.join(conflist)),
        };
        let err = run_install(&args("bad.conflist")).unwrap_err();
        assert!(err.contains("bad.conflist") && err.contains("not JSON"), "{err}");
        assert!(!dir.join("bin/weft").exists(), "nothing is installed when the conflist is bad");
        std::fs::write(dir.join("good.conflist"), flannels).unwrap();
        run_install(&args("good.conflist")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("net.d").join(CONFLIST_NAME)).unwrap(), flannels);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
