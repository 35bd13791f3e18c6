//! A delegated IPAM plugin (`ipam.type` other than host-local/weft), run from CNI_PATH as the spec says: same
//! environment, the network configuration on stdin, the result (or a CNI error) on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{CniError, Result};
use crate::result::CniResult;

pub fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf> {
    cni_path.iter().map(|dir| dir.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::InvalidConfig(format!(
            "IPAM plugin {plugin:?} was not found in CNI_PATH ({})",
            cni_path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
        ))
    })
}

/// Runs `binary` with CNI_COMMAND=`command` (the other CNI_* variables are inherited) and returns its stdout.
pub fn run(binary: &Path, plugin: &str, command: &str, conf: &Value) -> Result<Option<CniResult>> {
    let mut child = Command::new(binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("running IPAM plugin {}", binary.display()), e))?;
    let input = conf.to_string();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that fails early closes stdin; its output explains more than the broken pipe.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| CniError::io(format!("waiting for IPAM plugin {plugin}"), e))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (code, msg) = match &parsed {
            Some(v) => (
                v.get("code").and_then(Value::as_u64).unwrap_or(0) as u32,
                v.get("msg").and_then(Value::as_str).unwrap_or("failed").to_string(),
            ),
            None => (0, format!("{} with output {:?}", out.status, String::from_utf8_lossy(&out.stdout))),
        };
        return Err(CniError::IpamPlugin { plugin: plugin.to_string(), code, msg });
    }
    match (command, parsed) {
        ("ADD", Some(v)) => Ok(Some(CniResult::from_json(&v)?)),
        ("ADD", None) => Err(CniError::IpamPlugin { plugin: plugin.into(), code: 0, msg: "printed no result".into() }),
        _ => Ok(None),
    }
}
