//! The lab's single-member etcd in the underlay namespace.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use super::addr::{etcd_endpoint, ETCD_CLIENT_PORT};
use super::cmd::{self, in_netns, Tool};
use super::process::{self, is_alive, is_our_daemon, log_marker, log_tail, Daemon};
use super::topology::netns_file;
use super::{Lab, LabError, Result, ETCD_READY_TIMEOUT, STOP_GRACE};

/// Key of flannel's network configuration.
pub const NETWORK_CONFIG_KEY: &str = "/coreos.com/network/config";

/// Local client URL inside the underlay namespace.
fn local_client_url() -> String {
    format!("http://127.0.0.1:{ETCD_CLIENT_PORT}")
}

/// etcd's command line. The peer URL stays on loopback: there is only one
/// member, and nothing outside the underlay namespace needs it.
fn etcd_args(data_dir: &Path) -> Vec<String> {
    let peer = "http://127.0.0.1:2380";
    vec![
        "--name".into(),
        "lab".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        format!("{},{}", etcd_endpoint(), local_client_url()),
        "--advertise-client-urls".into(),
        etcd_endpoint(),
        "--listen-peer-urls".into(),
        peer.into(),
        "--initial-advertise-peer-urls".into(),
        peer.into(),
        "--initial-cluster".into(),
        format!("lab={peer}"),
    ]
}

/// The network configuration flannel expects under [`NETWORK_CONFIG_KEY`].
fn network_config(network: &str, backend: &str) -> String {
    serde_json::json!({ "Network": network, "Backend": { "Type": backend } }).to_string()
}

impl Lab {
    fn etcd_daemon(&self) -> Daemon {
        Daemon {
            what: "etcd".to_string(),
            // The data dir is unique to this lab, unlike the word "etcd".
            cmdline_marker: self.etcd_data_dir().display().to_string(),
            netns_file: netns_file(&self.underlay_ns()),
        }
    }

    /// Starts etcd (on the existing data dir, so data survives a
    /// stop/start) and waits until it reports healthy.
    pub fn start_etcd(&self) -> Result<()> {
        if let Some(pid) = self.etcd_pid().filter(|&pid| is_our_daemon(pid, &self.etcd_daemon())) {
            return Err(LabError::AlreadyRunning { what: "etcd".to_string(), pid });
        }
        let mut command = in_netns(&self.underlay_ns(), Tool::Etcd.path()?)?;
        command.args(etcd_args(&self.etcd_data_dir()));
        log_marker(&self.etcd_log(), "starting etcd")?;
        let pid = process::spawn_daemon(command, &self.etcd_log())?;
        self.update(|rt| rt.etcd_pid = Some(pid))?;
        process::settle(pid, &self.etcd_daemon());
        self.wait_for_etcd(pid)
    }

    /// Stops etcd (SIGTERM, then SIGKILL after [`STOP_GRACE`]); a no-op
    /// when it is not running.
    pub fn stop_etcd(&self) -> Result<()> {
        let Some(pid) = self.etcd_pid() else {
            return Ok(());
        };
        process::terminate(pid, &self.etcd_daemon(), STOP_GRACE)?;
        self.update(|rt| rt.etcd_pid = None)
    }

    /// True if the recorded etcd process is alive.
    pub fn etcd_running(&self) -> bool {
        self.etcd_pid().is_some_and(|pid| is_our_daemon(pid, &self.etcd_daemon()))
    }

    /// Runs `etcdctl` (API v3) against the lab's etcd from inside the
    /// underlay namespace and returns its output whatever its exit status.
    pub fn etcdctl<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Result<Output> {
        let mut command = in_netns(&self.underlay_ns(), Tool::Etcdctl.path()?)?;
        command.env("ETCDCTL_API", "3").arg(format!("--endpoints={}", local_client_url())).args(args);
        cmd::output(command)
    }

    /// Like [`Lab::etcdctl`] but fails unless etcdctl succeeds; returns stdout.
    pub fn etcdctl_ok<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Result<String> {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.etcdctl(&args)?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        Err(LabError::CommandFailed {
            command: format!("etcdctl {}", shown.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    pub(crate) fn put_network_config(&self) -> Result<()> {
        let config = network_config(&self.spec.network, &self.spec.backend);
        self.etcdctl_ok(["put", NETWORK_CONFIG_KEY, config.as_str()]).map(drop)
    }

    fn etcd_healthy(&self) -> bool {
        self.etcdctl(["--dial-timeout=500ms", "--command-timeout=1s", "endpoint", "health"])
            .is_ok_and(|out| out.status.success())
    }

    fn wait_for_etcd(&self, pid: u32) -> Result<()> {
        let started = Instant::now();
        let not_ready = |reason: &str| LabError::EtcdNotReady {
            reason: reason.to_string(),
            waited: started.elapsed(),
            log: self.etcd_log(),
            tail: log_tail(&self.etcd_log(), 30),
        };
        loop {
            if self.etcd_healthy() {
                return Ok(());
            }
            if !is_alive(pid) {
                return Err(not_ready("etcd exited"));
            }
            if started.elapsed() > ETCD_READY_TIMEOUT {
                return Err(not_ready("`etcdctl endpoint health` kept failing"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_listens_on_the_bridge_and_loopback() {
        let args = etcd_args(Path::new("/x/etcd-data")).join(" ");
        assert!(args.contains("--data-dir /x/etcd-data"), "{args}");
        assert!(args.contains("--listen-client-urls http://198.18.0.254:2379,http://127.0.0.1:2379"), "{args}");
        assert!(args.contains("--advertise-client-urls http://198.18.0.254:2379"), "{args}");
        assert!(args.contains("--initial-cluster lab=http://127.0.0.1:2380"), "{args}");
    }

    #[test]
    fn network_config_is_flannel_json() {
        let value: serde_json::Value = serde_json::from_str(&network_config("10.244.0.0/16", "vxlan")).unwrap();
        assert_eq!(value, serde_json::json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}));
    }
}
