//! The lab's state file: what exists, so that another process (or a retry
//! after a crash) can tear down exactly what was created and nothing else.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::addr::is_lab_namespace;
use super::{LabError, LabSpec};

/// Bumped when the file layout changes incompatibly.
const FORMAT: u32 = 1;

/// What the lab created and started, kept current on disk after each change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Runtime {
    /// Namespaces created by the lab, in creation order. Only these are
    /// ever deleted.
    pub namespaces: Vec<String>,
    pub etcd_pid: Option<u32>,
    /// The test Kubernetes API server, in Kubernetes mode.
    #[serde(default)]
    pub kube_api_pid: Option<u32>,
    /// Index 0 is host 1.
    pub hosts: Vec<HostRuntime>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct HostRuntime {
    pub weftd_pid: Option<u32>,
    /// Set once the host's container is attached.
    pub container_ip: Option<Ipv4Addr>,
}

#[derive(Serialize)]
struct StateFileRef<'a> {
    format: u32,
    spec: &'a LabSpec,
    runtime: &'a Runtime,
}

#[derive(Deserialize)]
struct StateFile {
    format: u32,
    spec: LabSpec,
    runtime: Runtime,
}

pub(crate) fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Writes the state atomically (temporary file, then rename), so a reader
/// never sees half a file.
pub(crate) fn save(dir: &Path, spec: &LabSpec, runtime: &Runtime) -> Result<(), LabError> {
    let path = state_file(dir);
    let tmp = dir.join("state.json.tmp");
    let json = serde_json::to_vec_pretty(&StateFileRef { format: FORMAT, spec, runtime })
        .map_err(|e| LabError::BadState { path: path.clone(), reason: e.to_string() })?;
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// Loads and sanity-checks the state of lab `name` stored in `dir`.
pub(crate) fn load(dir: &Path, name: &str) -> Result<(LabSpec, Runtime), LabError> {
    let path = state_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotFound { name: name.to_string(), path })
        }
        Err(e) => return Err(LabError::io(format!("reading {}", path.display()), e)),
    };
    let bad = |reason: String| LabError::BadState { path: path.clone(), reason };
    let file: StateFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    check(&file, name).map_err(bad)?;
    Ok((file.spec, file.runtime))
}

/// Refuses files that would make the lab touch things outside itself.
fn check(file: &StateFile, name: &str) -> Result<(), String> {
    if file.format != FORMAT {
        return Err(format!("format {} is not the supported format {FORMAT}", file.format));
    }
    if file.spec.name != name {
        return Err(format!("it describes lab {:?}, not {name:?}", file.spec.name));
    }
    if file.runtime.hosts.len() != file.spec.hosts {
        return Err(format!("it lists {} hosts but the spec says {}", file.runtime.hosts.len(), file.spec.hosts));
    }
    match file.runtime.namespaces.iter().find(|ns| !is_lab_namespace(name, file.spec.hosts, ns)) {
        Some(foreign) => Err(format!("namespace {foreign:?} is not one of this lab's")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-lab-state-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn runtime(namespaces: &[&str], hosts: usize) -> Runtime {
        Runtime {
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            etcd_pid: Some(42),
            kube_api_pid: None,
            hosts: vec![HostRuntime::default(); hosts],
        }
    }

    #[test]
    fn round_trips() {
        let dir = temp_dir("rt");
        let spec = LabSpec::new("rt", 2, "/bin/weftd");
        let mut rt = runtime(&["wl-rt-u", "wl-rt-h1"], 2);
        rt.hosts[1].container_ip = Some(Ipv4Addr::new(10, 244, 1, 2));
        save(&dir, &spec, &rt).unwrap();
        let (spec2, rt2) = load(&dir, "rt").unwrap();
        assert_eq!(spec2, spec);
        assert_eq!(rt2.namespaces, rt.namespaces);
        assert_eq!(rt2.etcd_pid, Some(42));
        assert_eq!(rt2.hosts[1].container_ip, rt.hosts[1].container_ip);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_foreign_namespaces_and_mismatched_names() {
        let dir = temp_dir("foreign");
        let spec = LabSpec::new("ab", 1, "/bin/weftd");
        save(&dir, &spec, &runtime(&["wl-ab-u", "underlay"], 1)).unwrap();
        let err = load(&dir, "ab").unwrap_err().to_string();
        assert!(err.contains("\"underlay\""), "{err}");
        save(&dir, &spec, &runtime(&["wl-ab-u"], 1)).unwrap();
        let err = load(&dir, "other").unwrap_err().to_string();
        assert!(err.contains("describes lab"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_state_is_not_found() {
        let dir = temp_dir("missing");
        assert!(matches!(load(&dir, "missing"), Err(LabError::NotFound { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
