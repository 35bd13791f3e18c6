//! flannel's delegation, for what weft does not do in process (another delegate type such as ipvlan or macvlan,
//! or bridge options weft does not implement): ADD builds and stores the delegate netconf exactly as flannel's
//! plugin does and runs the delegate from CNI_PATH, printing its result; DEL runs the delegate with the stored
//! netconf and then removes it. The state file is flannel's own, so either plugin can DEL what the other ADDed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::env::Env;
use crate::error::{CniError, Result};
use crate::flannel_state::{self, StateError};
use crate::netconf::NetConf;

fn state_error(e: StateError) -> CniError {
    match e {
        StateError::Io { path, source } => CniError::io(format!("flannel state {}", path.display()), source),
        other => CniError::InvalidConfig(other.to_string()),
    }
}

/// The delegate netconf for this ADD (flannel's rules), stored before the delegate runs.
pub fn add(conf: &NetConf, env: &Env, plugin: &str) -> Result<String> {
    let id = env.container_id()?;
    let (Some(dir), Some(netconf)) = (&conf.flannel_data_dir, &conf.flannel_netconf) else {
        return Err(CniError::InvalidConfig("a delegate is only run for flannel's config".into()));
    };
    let text = std::fs::read_to_string(&conf.subnet_file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CniError::SubnetFileMissing { path: conf.subnet_file.display().to_string() },
        _ => CniError::io(format!("reading subnet file {}", conf.subnet_file.display()), e),
    })?;
    let fenv = flannel_state::FlannelEnv::parse(&conf.subnet_file, &text).map_err(state_error)?;
    let delegate = flannel_state::delegate_netconf(netconf, &fenv);
    flannel_state::save(dir, id, &delegate).map_err(state_error)?;
    run(plugin, "ADD", &delegate, &env.path)
}

/// DEL through the stored delegate netconf, when one is stored for a delegate weft does not run in process.
/// Returns false when weft's own DEL has to do the work.
pub fn del_if_delegated(conf: &NetConf, env: &Env) -> Result<bool> {
    let (Some(dir), Ok(id)) = (&conf.flannel_data_dir, env.container_id()) else { return Ok(false) };
    let Some(stored) = flannel_state::load(dir, id).map_err(state_error)? else { return Ok(false) };
    let Some(plugin) = stored_plugin(&stored) else { return Ok(false) };
    run(&plugin, "DEL", &stored, &env.path)?;
    // As flannel's plugin: the state goes only once the delegate's DEL succeeded, so a retry can run it again.
    let _ = std::fs::remove_file(dir.join(id));
    Ok(true)
}

/// The plugin a stored netconf needs: its type, unless it is a bridge whose options weft implements.
fn stored_plugin(stored: &Value) -> Option<String> {
    let obj = stored.as_object()?;
    let kind = obj.get("type").and_then(Value::as_str)?;
    // weft's own bridge ADDs store these keys too; anything beyond them came from a delegate weft does not run.
    const WRITTEN_FOR_BRIDGE: &[&str] = &[
        "type",
        "name",
        "cniVersion",
        "bridge",
        "isGateway",
        "isDefaultGateway",
        "hairpinMode",
        "mtu",
        "ipMasq",
        "ipam",
        "runtimeConfig",
    ];
    let native = kind == "bridge" && obj.keys().all(|k| WRITTEN_FOR_BRIDGE.contains(&k.as_str()));
    (!native).then(|| kind.to_string())
}

/// Runs `plugin` from CNI_PATH with CNI_COMMAND=`command` (the other CNI_* variables are inherited) and the
/// netconf on stdin; returns its stdout. A failure passes the plugin's own error code and message on.
fn run(plugin: &str, command: &str, netconf: &Value, cni_path: &[std::path::PathBuf]) -> Result<String> {
    let binary = find(plugin, cni_path)?;
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("running delegate plugin {}", binary.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that fails early closes stdin; its output explains more than the broken pipe.
        let _ = stdin.write_all(netconf.to_string().as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| CniError::io(format!("waiting for delegate plugin {plugin}"), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let parsed: Option<Value> = serde_json::from_str(&stdout).ok();
        let code = parsed.as_ref().and_then(|v| v.get("code")).and_then(Value::as_u64).unwrap_or(0) as u32;
        let msg = parsed
            .as_ref()
            .and_then(|v| v.get("msg"))
            .and_then(Value::as_str)
            .map_or_else(|| format!("{} with output {stdout:?}", out.status), str::to_string);
        return Err(CniError::DelegatePlugin { plugin: plugin.to_string(), code, msg });
    }
    Ok(stdout)
}

fn find(plugin: &str, cni_path: &[std::path::PathBuf]) -> Result<std::path::PathBuf> {
    cni_path.iter().map(|dir| dir.join(plugin)).find(|p| Path::new(p).is_file()).ok_or_else(|| {
        CniError::InvalidConfig(format!(
            "delegate plugin {plugin:?} was not found in CNI_PATH ({})",
            cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weft_runs_only_the_bridges_it_stored_itself() {
        let weft_bridge = json!({"type": "bridge", "name": "cbr0", "mtu": 1450, "ipMasq": false, "isGateway": true,
                                 "hairpinMode": true, "ipam": {}, "cniVersion": "1.0.0"});
        assert_eq!(stored_plugin(&weft_bridge), None);
        let vlan_bridge = json!({"type": "bridge", "name": "cbr0", "vlan": 7});
        assert_eq!(stored_plugin(&vlan_bridge).as_deref(), Some("bridge"));
        assert_eq!(stored_plugin(&json!({"type": "ipvlan", "master": "eth0"})).as_deref(), Some("ipvlan"));
        assert_eq!(stored_plugin(&json!({})), None, "flannel's empty leftovers are weft's to clean up");
    }
}
