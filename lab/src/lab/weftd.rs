//! One weftd per host.

use std::time::{Duration, Instant};

use super::addr::etcd_endpoint;
use super::cmd::in_netns;
use super::process::{self, is_our_daemon, log_marker, log_tail, Daemon};
use super::topology::netns_file;
use super::{Lab, LabError, Result, STOP_GRACE};
use weft::subnet_file::SubnetFile;

/// Lines of weftd's log quoted in errors.
const LOG_TAIL_LINES: usize = 40;

impl Lab {
    fn weftd_daemon(&self, host: usize) -> Daemon {
        Daemon {
            what: format!("weftd on host {host}"),
            // The subnet file path is unique to this lab and host.
            cmdline_marker: self.subnet_file(host).display().to_string(),
            netns_file: netns_file(&self.host_ns(host)),
        }
    }

    /// weftd's arguments on host `host` (after the binary).
    pub fn weftd_args(&self, host: usize) -> Vec<String> {
        let store = match self.is_kube() {
            true => self.kube_weftd_args(),
            false => vec!["--etcd-endpoints".to_string(), etcd_endpoint()],
        };
        let mut args = store;
        args.extend([
            "--iface".to_string(),
            "eth0".to_string(),
            "--subnet-file".to_string(),
            self.subnet_file(host).display().to_string(),
        ]);
        args.extend(self.spec.extra_weftd_args.iter().cloned());
        args
    }

    /// Host `host`'s WireGuard private key file (the wireguard backend's `WIREGUARD_KEY_FILE`).
    pub fn wireguard_key_file(&self, host: usize) -> std::path::PathBuf {
        self.dir().join(format!("h{host}-wgkey"))
    }

    /// Starts weftd in host `host`'s namespace, its output appended to
    /// [`Lab::weftd_log`]; returns its pid. Does not wait for subnet.env.
    pub fn start_weftd(&self, host: usize) -> Result<u32> {
        self.check_host(host)?;
        if let Some(pid) = self.weftd_pid(host).filter(|_| self.weftd_running(host)) {
            return Err(LabError::AlreadyRunning { what: format!("weftd on host {host}"), pid });
        }
        let mut command = in_netns(&self.host_ns(host), &self.spec.weftd)?;
        command.args(self.weftd_args(host));
        // Every host its own WireGuard key (flannel's default path would be one file shared by all lab hosts).
        command.env("WIREGUARD_KEY_FILE", self.wireguard_key_file(host));
        if self.is_kube() {
            command.env("NODE_NAME", self.node_name(host));
        }
        let log = self.weftd_log(host);
        log_marker(&log, "starting weftd")?;
        let pid = process::spawn_daemon(command, &log)?;
        self.update(|rt| rt.hosts[host - 1].weftd_pid = Some(pid))?;
        process::settle(pid, &self.weftd_daemon(host));
        Ok(pid)
    }

    /// Stops host `host`'s weftd: SIGTERM, then SIGKILL after
    /// [`STOP_GRACE`]. A no-op when it is not running.
    pub fn stop_weftd(&self, host: usize) -> Result<()> {
        self.check_host(host)?;
        let Some(pid) = self.weftd_pid(host) else {
            return Ok(());
        };
        process::terminate(pid, &self.weftd_daemon(host), STOP_GRACE)?;
        self.update(|rt| rt.hosts[host - 1].weftd_pid = None)
    }

    /// Stops every host's weftd, all at once (see [`Lab::stop_weftd`]).
    pub fn stop_all_weftds(&self) -> Result<()> {
        let problems = self.stop_weftds_collecting_errors();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown { name: self.spec.name.clone(), problems })
        }
    }

    /// Stops every recorded weftd in parallel and returns what went wrong.
    pub(crate) fn stop_weftds_collecting_errors(&self) -> Vec<String> {
        let targets: Vec<(usize, u32)> =
            (1..=self.spec.hosts).filter_map(|host| self.weftd_pid(host).map(|pid| (host, pid))).collect();
        let daemons: Vec<(u32, Daemon)> = targets.iter().map(|&(host, pid)| (pid, self.weftd_daemon(host))).collect();
        let results = process::terminate_all(&daemons, STOP_GRACE);
        let mut problems = Vec::new();
        for (&(host, _), result) in targets.iter().zip(results) {
            let forgotten = result.and_then(|_| self.update(|rt| rt.hosts[host - 1].weftd_pid = None));
            if let Err(e) = forgotten {
                problems.push(e.to_string());
            }
        }
        problems
    }

    /// Stops and starts host `host`'s weftd; returns the new pid.
    pub fn restart_weftd(&self, host: usize) -> Result<u32> {
        self.stop_weftd(host)?;
        self.start_weftd(host)
    }

    /// True if host `host`'s recorded weftd is alive.
    pub fn weftd_running(&self, host: usize) -> bool {
        self.weftd_pid(host).is_some_and(|pid| is_our_daemon(pid, &self.weftd_daemon(host)))
    }

    /// Host `host`'s subnet.env as it is now.
    pub fn subnet_env(&self, host: usize) -> Result<SubnetFile> {
        self.check_host(host)?;
        let path = self.subnet_file(host);
        SubnetFile::read(&path).map_err(|e| LabError::SubnetEnv { path, reason: e.to_string() })
    }

    /// Waits until host `host`'s subnet.env exists and parses. Note that a
    /// restarted weftd finds its previous file in place.
    pub fn wait_for_subnet_env(&self, host: usize, timeout: Duration) -> Result<SubnetFile> {
        self.check_host(host)?;
        self.subnet_env_by(host, Instant::now() + timeout)
    }

    /// Polls for host `host`'s subnet.env until `deadline`, failing early
    /// if weftd is not running; errors quote the end of weftd's log.
    pub(crate) fn subnet_env_by(&self, host: usize, deadline: Instant) -> Result<SubnetFile> {
        let started = Instant::now();
        loop {
            let last_error = match self.subnet_env(host) {
                Ok(env) => return Ok(env),
                Err(e) => e.to_string(),
            };
            // Checked after reading: weftd may write the file and exit.
            let alive = self.weftd_pid(host).is_some_and(process::is_alive);
            let reason = if !alive {
                Some("weftd is not running".to_string())
            } else if Instant::now() >= deadline {
                Some(format!("timed out; last problem: {last_error}"))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(LabError::WeftdNotReady {
                    host,
                    reason,
                    subnet_file: self.subnet_file(host),
                    waited: started.elapsed(),
                    log: self.weftd_log(host),
                    tail: log_tail(&self.weftd_log(host), LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
