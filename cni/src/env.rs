//! The CNI_* environment variables, as the runtime sets them.

use std::path::PathBuf;

use crate::error::{CniError, Result};
use crate::validate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: Option<String>,
    /// None when unset or empty: containerd sends an empty CNI_NETNS on DEL once the task is gone.
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// CNI_PATH split on ':'; only needed to run a delegated IPAM plugin.
    pub path: Vec<PathBuf>,
}

/// Reads CNI_COMMAND. Anything else is error 4, naming what was found.
pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command> {
    match get("CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("GC") => Ok(Command::Gc),
        Some("STATUS") => Ok(Command::Status),
        Some("VERSION") => Ok(Command::Version),
        Some(other) => Err(CniError::InvalidEnv(format!(
            "CNI_COMMAND {other:?} is unknown (expected ADD, DEL, CHECK, GC, STATUS or VERSION)"
        ))),
        None => Err(CniError::InvalidEnv("CNI_COMMAND is not set".into())),
    }
}

impl Env {
    pub fn read(get: &dyn Fn(&str) -> Option<String>) -> Env {
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        Env {
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            path: non_empty("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        }
    }

    /// The container ID, present and safe to use in a path.
    pub fn container_id(&self) -> Result<&str> {
        let id =
            self.container_id.as_deref().ok_or_else(|| CniError::InvalidEnv("CNI_CONTAINERID is not set".into()))?;
        validate::container_id(id)?;
        Ok(id)
    }

    /// The interface name, present and acceptable to the kernel.
    pub fn ifname(&self) -> Result<&str> {
        let name = self.ifname.as_deref().ok_or_else(|| CniError::InvalidEnv("CNI_IFNAME is not set".into()))?;
        validate::interface_name(name)?;
        Ok(name)
    }

    pub fn netns(&self) -> Result<&std::path::Path> {
        self.netns.as_deref().ok_or_else(|| CniError::InvalidEnv("CNI_NETNS is not set".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_and_validates() {
        let get = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        assert_eq!(command(&get).unwrap(), Command::Add);
        let env = Env::read(&get);
        assert_eq!(env.container_id().unwrap(), "abc");
        assert_eq!(env.ifname().unwrap(), "eth0");
        assert!(env.netns.is_none(), "an empty CNI_NETNS is no netns");
        assert_eq!(env.netns().unwrap_err().code(), 4);
        assert_eq!(env.path.len(), 2);
    }

    #[test]
    fn missing_or_bad_variables_are_error_4() {
        assert!(command(&vars(&[])).unwrap_err().to_string().contains("CNI_COMMAND is not set"));
        assert_eq!(command(&vars(&[("CNI_COMMAND", "FOO")])).unwrap_err().code(), 4);
        let env = Env::read(&vars(&[("CNI_CONTAINERID", "../x"), ("CNI_IFNAME", "a/b")]));
        assert_eq!(env.container_id().unwrap_err().code(), 4);
        assert_eq!(env.ifname().unwrap_err().code(), 4);
        let env = Env::read(&vars(&[]));
        assert!(env.container_id().unwrap_err().to_string().contains("CNI_CONTAINERID is not set"));
    }
}
