//! The commands. [`run`] turns the environment and stdin into stdout and an exit status; every error becomes the
//! spec's error JSON with its code.

mod add;
mod check;
mod del;
mod delegate;
mod plan;
mod repeat;

use std::path::Path;

use serde_json::json;

use crate::env::{self, Command, Env};
use crate::error::{CniError, Result};
use crate::ipam::Store;
use crate::netconf::{self, Ipam, NetConf};
use crate::subnet_file::{SubnetFile, SubnetFileError};
use crate::version;

pub use plan::{host_veth_name, Plan};

pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

pub fn run(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match dispatch(get, stdin) {
        Ok(stdout) => Outcome { stdout, success: true },
        Err(e) => {
            // Answer in the version the runtime asked for when we speak it.
            let asked = netconf::sniff_version(stdin).filter(|v| version::SUPPORTED.contains(&v.as_str()));
            Outcome { stdout: e.to_json(asked.as_deref().unwrap_or(version::LATEST)), success: false }
        }
    }
}

fn dispatch(get: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String> {
    let command = env::command(get)?;
    if command == Command::Version {
        return Ok(json!({"cniVersion": version::LATEST, "supportedVersions": version::SUPPORTED}).to_string());
    }
    let conf = netconf::parse(stdin)?;
    let env = Env::read(get);
    match command {
        Command::Add => match &conf.delegate_plugin {
            Some(plugin) => delegate::add(&conf, &env, plugin),
            None => add::add(&conf, &env),
        },
        Command::Del if delegate::del_if_delegated(&conf, &env)? => Ok(String::new()),
        Command::Del => del::del(&conf, &env).map(|()| String::new()),
        // flannel's plugin answers CHECK without checking; weft cannot check what a delegate it ran set up.
        Command::Check if conf.delegate_plugin.is_some() => Ok(String::new()),
        Command::Check => check::check(&conf, &env).map(|()| String::new()),
        Command::Gc => gc(&conf, &env).map(|()| String::new()),
        Command::Status => status(&conf).map(|_| String::new()),
        Command::Version => unreachable!("answered above"),
    }
}

/// Reads the subnet file; a missing file means weftd has not (yet) written it.
pub fn read_subnet_file(path: &Path) -> Result<SubnetFile> {
    SubnetFile::read(path).map_err(|e| match e {
        SubnetFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            CniError::SubnetFileMissing { path: path.display().to_string() }
        }
        SubnetFileError::Io { path, source } => CniError::io(format!("reading subnet file {}", path.display()), source),
        parse @ SubnetFileError::Parse { .. } => CniError::InvalidConfig(parse.to_string()),
    })
}

/// STATUS: ready when the subnet file exists and parses.
fn status(conf: &NetConf) -> Result<SubnetFile> {
    read_subnet_file(&conf.subnet_file).map_err(|e| match e {
        CniError::SubnetFileMissing { .. } => CniError::NotAvailable(format!("not ready: {e}")),
        other => CniError::NotAvailable(format!(
            "not ready: weftd is not running on this node or has not written a valid {} yet: {other}",
            conf.subnet_file.display()
        )),
    })
}

/// GC: releases every allocation whose attachment the runtime no longer lists.
fn gc(conf: &NetConf, env: &Env) -> Result<()> {
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    match &conf.ipam {
        Ipam::Builtin { data_dir } => {
            let store = Store::open(data_dir, &conf.name)?;
            for a in store.allocations()? {
                let keep = match &a.ifname {
                    Some(ifname) => valid.contains(&(a.container_id.clone(), ifname.clone())),
                    // host-local's old format names no interface: keep it while the container has any attachment.
                    None => valid.iter().any(|(id, _)| *id == a.container_id),
                };
                if !keep {
                    store.release(a.ip)?;
                }
            }
            Ok(())
        }
        Ipam::Plugin { plugin } => {
            let binary = crate::ipam::exec::find(plugin, &env.path)?;
            let conf_json = plan::ipam_plugin_conf(conf, None);
            crate::ipam::exec::run(&binary, plugin, "GC", &conf_json).map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn call(vars: &[(&str, &str)], stdin: &str) -> (serde_json::Value, bool) {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let out = run(&|k| map.get(k).cloned(), stdin.as_bytes());
        (serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null), out.success)
    }

    #[test]
    fn version_lists_everything() {
        let (v, ok) = call(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
        assert!(ok);
        assert_eq!(v["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    }

    #[test]
    fn status_without_subnet_file_is_50() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"weft","subnetFile":"/nonexistent/weft/subnet.env"}"#;
        let (v, ok) = call(&[("CNI_COMMAND", "STATUS")], conf);
        assert!(!ok);
        assert_eq!(v["code"], 50);
        assert!(v["msg"].as_str().unwrap().contains("weftd is not running"), "{v}");
    }

    #[test]
    fn bad_input_codes_without_touching_anything() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"weft","subnetFile":"/nonexistent/weft/subnet.env"}"#;
        let add =
            [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/nonexistent"), ("CNI_IFNAME", "eth0")];
        let (v, _) = call(&add, "{nope");
        assert_eq!(v["code"], 6);
        let (v, _) = call(&add, &conf.replace("1.0.0", "0.0.7"));
        assert_eq!(v["code"], 1);
        let (v, _) = call(&add[..3], conf);
        assert_eq!((v["code"].as_u64(), v["msg"].as_str()), (Some(4), Some("CNI_IFNAME is not set")));
        let (v, ok) = call(&add, conf);
        assert!(!ok);
        assert_eq!(v["code"], 11, "missing subnet file during ADD: try again later: {v}");
        assert_eq!(v["cniVersion"], "1.0.0");
    }
}
