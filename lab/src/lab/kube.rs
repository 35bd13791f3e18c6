//! The lab's Kubernetes mode: the test API server (`weft-kube-testserver`) in the underlay namespace instead of
//! etcd, one Node per host with its pod CIDR (10.244.<host>.0/24, as a controller manager with --cluster-cidr
//! 10.244.0.0/16 would assign), the network config in a file, and weftd with `--kube-subnet-mgr` on every host.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::addr::ETCD_IP;
use super::cmd::in_netns;
use super::process::{self, is_our_daemon, log_marker, log_tail, Daemon};
use super::topology::netns_file;
use super::{Lab, LabError, Result, STOP_GRACE};

/// The API server's port on the underlay's service address (where etcd listens in etcd mode).
pub const KUBE_API_PORT: u16 = 6443;
/// How long the API server gets to answer after starting.
const KUBE_API_READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Lab {
    /// Whether this lab runs weftd on the Kubernetes API instead of etcd.
    pub fn is_kube(&self) -> bool {
        self.spec().kube_api_server.is_some()
    }

    /// The API server's URL as the hosts reach it.
    pub fn kube_api_url(&self) -> String {
        format!("http://{ETCD_IP}:{KUBE_API_PORT}")
    }

    /// The network config file weftd reads in Kubernetes mode (`--net-config-path`).
    pub fn net_config_file(&self) -> std::path::PathBuf {
        self.dir().join("net-conf.json")
    }

    pub fn kube_api_log(&self) -> std::path::PathBuf {
        self.dir().join("kube-api.log")
    }

    /// Host `host`'s Node name.
    pub fn node_name(&self, host: usize) -> String {
        format!("h{host}")
    }

    /// Host `host`'s Node as the kubelet and the controller manager leave it: a pod CIDR, no annotations yet.
    pub fn node_object(&self, host: usize) -> Value {
        let cidr = format!("10.244.{host}.0/24");
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node_name(host)},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    fn kube_api_daemon(&self) -> Daemon {
        Daemon {
            what: "the test Kubernetes API server".to_string(),
            // The log path is unique to this lab.
            cmdline_marker: self.dir().join("nodes.json").display().to_string(),
            netns_file: netns_file(&self.underlay_ns()),
        }
    }

    /// Writes the Nodes and the network config, starts the API server and waits until it answers.
    pub(crate) fn start_kube_api(&self) -> Result<()> {
        let Some(binary) = self.spec().kube_api_server.clone() else { return Ok(()) };
        let nodes: Vec<Value> = (1..=self.hosts()).map(|h| self.node_object(h)).collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": nodes});
        let nodes_file = self.dir().join("nodes.json");
        let write = |path: &std::path::Path, text: String| {
            std::fs::write(path, text).map_err(|e| LabError::io(format!("writing {}", path.display()), e))
        };
        write(&nodes_file, list.to_string())?;
        let config =
            format!(r#"{{"Network":"{}","Backend":{{"Type":"{}"}}}}"#, self.spec().network, self.spec().backend);
        write(&self.net_config_file(), config)?;
        let mut command = in_netns(&self.underlay_ns(), &binary)?;
        command.arg("--listen").arg(format!("{ETCD_IP}:{KUBE_API_PORT}")).arg("--load").arg(&nodes_file);
        for objects in &self.spec().kube_objects {
            command.arg("--load").arg(objects);
        }
        log_marker(&self.kube_api_log(), "starting the test API server")?;
        let pid = process::spawn_daemon(command, &self.kube_api_log())?;
        self.update(|rt| rt.kube_api_pid = Some(pid))?;
        process::settle(pid, &self.kube_api_daemon());
        let started = Instant::now();
        while !self.kube_api_answers() {
            if started.elapsed() > KUBE_API_READY_TIMEOUT || !is_our_daemon(pid, &self.kube_api_daemon()) {
                return Err(LabError::CommandFailed {
                    command: "weft-kube-testserver".to_string(),
                    status: format!("not answering after {:?}", started.elapsed()),
                    stderr: log_tail(&self.kube_api_log(), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kube_api_answers(&self) -> bool {
        self.kube_api(&["-sf", "-m", "1"], "/version", None).is_ok()
    }

    /// One request to the API server with curl from the underlay namespace; the response body.
    pub fn kube_api(&self, curl_args: &[&str], path: &str, body: Option<&str>) -> Result<String> {
        let url = format!("{}{path}", self.kube_api_url());
        let mut args: Vec<String> = curl_args.iter().map(|a| a.to_string()).collect();
        if let Some(body) = body {
            args.extend(["-d".to_string(), body.to_string()]);
        }
        args.push(url.clone());
        let out = self.exec_in(&self.underlay_ns(), std::iter::once("curl".to_string()).chain(args))?;
        if !out.status.success() {
            return Err(LabError::CommandFailed {
                command: format!("curl {url}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates or replaces a Node (a JSON Node object).
    pub fn put_node(&self, node: &Value) -> Result<()> {
        let body = node.to_string();
        let json = ["-sf", "-m", "5", "-H", "Content-Type: application/json"];
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let replaced =
            self.kube_api(&[&json[..], &["-X", "PUT"]].concat(), &format!("/api/v1/nodes/{name}"), Some(&body));
        match replaced {
            Ok(_) => Ok(()),
            Err(_) => self.kube_api(&[&json[..], &["-X", "POST"]].concat(), "/api/v1/nodes", Some(&body)).map(drop),
        }
    }

    /// How many Nodes the API server holds: one list of one item, plus the `remainingItemCount` it reports.
    pub fn kube_node_count(&self) -> Result<usize> {
        let text = self.kube_api(&["-sf", "-m", "5"], "/api/v1/nodes?limit=1", None)?;
        let list: Value = serde_json::from_str(&text).map_err(|e| LabError::CommandFailed {
            command: format!("curl {}/api/v1/nodes?limit=1", self.kube_api_url()),
            status: "answered something other than JSON".to_string(),
            stderr: e.to_string(),
        })?;
        let listed = list["items"].as_array().map_or(0, Vec::len);
        let remaining = list["metadata"]["remainingItemCount"].as_u64().unwrap_or(0);
        Ok(listed + remaining as usize)
    }

    /// Deletes a Node.
    pub fn delete_node(&self, name: &str) -> Result<()> {
        self.kube_api(&["-sf", "-m", "5", "-X", "DELETE"], &format!("/api/v1/nodes/{name}"), None).map(drop)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the API server: an outage in which connections hang, as with an API
    /// server that stopped answering.
    pub fn freeze_kube_api(&self, frozen: bool) -> Result<()> {
        let Some(pid) = self.lock().kube_api_pid else { return Ok(()) };
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) with a pid this lab started (checked against its command line first).
        if is_our_daemon(pid, &self.kube_api_daemon()) && unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(LabError::io("signalling the test API server".to_string(), std::io::Error::last_os_error()));
        }
        Ok(())
    }

    pub(crate) fn stop_kube_api(&self) -> Result<()> {
        let Some(pid) = self.lock().kube_api_pid else { return Ok(()) };
        let _ = self.freeze_kube_api(false);
        process::terminate(pid, &self.kube_api_daemon(), STOP_GRACE)?;
        self.update(|rt| rt.kube_api_pid = None)
    }

    /// weftd's store arguments on host `host` in Kubernetes mode.
    pub(crate) fn kube_weftd_args(&self) -> Vec<String> {
        vec![
            "--kube-subnet-mgr".to_string(),
            "--kube-api-url".to_string(),
            self.kube_api_url(),
            "--net-config-path".to_string(),
            self.net_config_file().display().to_string(),
        ]
    }
}
