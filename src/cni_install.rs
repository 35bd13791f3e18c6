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
    #[arg(long)]
    pub no_conflist: bool,
}

/// Installs as `args` say and prints what it did, one line each.
pub fn run_install(args: &InstallArgs) -> Result<(), String> {
    let InstallArgs { bin_dir, conf_dir, plugin, as_flannel, no_conflist } = args;
    let plugin = plugin.clone().map_or_else(default_plugin, Ok)?;
    for line in install(&plugin, bin_dir, (!no_conflist).then_some(conf_dir.as_path()), *as_flannel)? {
        println!("{line}");
    }
    Ok(())
}

/// The `weft` plugin next to the running executable (cargo and `cargo install` put them together).
pub fn default_plugin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding weftctl's own path: {e}"))?;
    Ok(exe.with_file_name("weft"))
}

/// Copies the plugin into `bin_dir` (atomically: a runtime may be executing the old one) and writes the conflist
/// into `conf_dir`. Returns what it did, one line each.
pub fn install(
    plugin: &Path,
    bin_dir: &Path,
    conf_dir: Option<&Path>,
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
    if let Some(conf_dir) = conf_dir {
        let target = conf_dir.join(CONFLIST_NAME);
        write_atomically(&target, CONFLIST.as_bytes(), 0o644)
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
        let done = install(&src, &dir.join("bin"), Some(&dir.join("net.d")), true).unwrap();
        assert_eq!(done.len(), 3, "{done:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("bin/flannel")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read_to_string(dir.join("net.d/10-weft.conflist")).unwrap(), CONFLIST);
        assert!(install(&dir.join("missing"), &dir.join("bin"), None, false).unwrap_err().contains("missing"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
