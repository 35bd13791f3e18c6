//! A multi-host lab on one machine: network namespaces for an underlay
//! switch, N hosts and one container per host, a real etcd, and one weftd
//! per host. Used by `weftctl lab`, the integration tests and benchmarks.
//!
//! Topology (lab `x`, host N, 1-based):
//!
//! ```text
//! wl-x-u   br0 198.18.0.254/24, etcd on 198.18.0.254:2379 and 127.0.0.1:2379
//!   | vethN (enslaved to br0)
//! wl-x-hN  eth0 198.18.0.N/24, ip_forward=1, weftd, cni0 = FLANNEL_SUBNET's address
//!   | veth… (enslaved to cni0), made by the CNI plugin `weft`
//! wl-x-cN  eth0 = an address from the host's subnet, default route via the gateway
//! ```
//!
//! Everything lives in namespaces the lab creates: nothing is ever added to
//! the root namespace, and lab addresses are only ever contacted from inside
//! lab namespaces. Processes are stopped only by their recorded pid, after
//! checking that the pid still is the lab's process.
//!
//! State lives in `<state_root>/<name>/`: `state.json` (what exists, for
//! [`Lab::load`] and [`Lab::down`]), `etcd-data/`, `etcd.log`, and per host
//! `h<N>/subnet.env` and `h<N>/weftd.log`.
//!
//! All calls are synchronous and `Lab` is `Sync`, so tests may share it
//! between threads.

mod addr;
pub mod cli;
mod cmd;
mod error;
mod etcd;
mod kube;
mod process;
mod state;
mod status;
mod topology;
mod weftd;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub use addr::{validate_name, ETCD_IP, MAX_HOSTS, MAX_NAME_LEN};
pub use cmd::check_tools;
pub use error::LabError;
pub use etcd::NETWORK_CONFIG_KEY;
pub use process::log_tail;
pub use status::{Connectivity, HostStatus, LabStatus, Lease, SUBNETS_PREFIX};

use cmd::Tool;
use state::Runtime;
use weft::term::Progress;

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// The overlay network written to etcd unless the spec says otherwise.
pub const DEFAULT_NETWORK: &str = "10.244.0.0/16";
/// The backend type written to etcd unless the spec says otherwise.
pub const DEFAULT_BACKEND: &str = "vxlan";
/// Where labs keep their state unless the spec says otherwise.
pub const DEFAULT_STATE_ROOT: &str = "/run/weft-lab";
/// How long etcd gets to answer `endpoint health` after starting.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long each weftd gets to write its subnet.env during `up`.
pub const SUBNET_ENV_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What lab to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Letters, digits and '-', at most [`MAX_NAME_LEN`]; see [`validate_name`].
    pub name: String,
    /// Number of hosts, 1..=[`MAX_HOSTS`].
    pub hosts: usize,
    /// Backend type written to the network config, e.g. "vxlan".
    pub backend: String,
    /// Overlay network (IPv4 CIDR) written to the network config.
    pub network: String,
    /// The weftd binary.
    pub weftd: PathBuf,
    /// The CNI plugin binary `weft` that attaches the containers (run exactly as a runtime runs it). Empty means
    /// the `weft` next to weftd, where cargo and `cargo install` put it.
    #[serde(default)]
    pub cni_plugin: PathBuf,
    /// Parent of the lab's state directory.
    pub state_root: PathBuf,
    /// Appended to every weftd command line.
    pub extra_weftd_args: Vec<String>,
    /// Start weftd on every host during `up` and attach containers once
    /// subnet.env exists. When false, `up` stops after etcd and the network
    /// config; use [`Lab::start_weftd`] and [`Lab::attach_container`] later.
    #[serde(default = "default_true")]
    pub start_weftd: bool,
    /// Kubernetes mode: this test API server binary (`weft-kube-testserver`) runs instead of etcd, with a Node
    /// per host, and weftd runs with `--kube-subnet-mgr`. None: etcd mode.
    #[serde(default)]
    pub kube_api_server: Option<PathBuf>,
    /// Kubernetes mode: JSON files of more objects (one object or a `List` each, e.g. the benchmark's thousands of
    /// flannel Nodes) the test API server loads at start, after the hosts' Nodes. The server answers before it
    /// has loaded them all: whoever needs them waits until it lists them.
    #[serde(default)]
    pub kube_objects: Vec<PathBuf>,
}

fn default_true() -> bool {
    true
}

/// The `weft` CNI plugin next to `weftd`.
pub fn default_cni_plugin(weftd: &Path) -> PathBuf {
    weftd.with_file_name("weft")
}

impl LabSpec {
    /// A spec with the default backend, network and state root.
    pub fn new(name: impl Into<String>, hosts: usize, weftd: impl Into<PathBuf>) -> LabSpec {
        LabSpec {
            name: name.into(),
            hosts,
            backend: DEFAULT_BACKEND.to_string(),
            network: DEFAULT_NETWORK.to_string(),
            weftd: weftd.into(),
            cni_plugin: PathBuf::new(),
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            extra_weftd_args: Vec::new(),
            start_weftd: true,
            kube_api_server: None,
            kube_objects: Vec::new(),
        }
    }

    /// The CNI plugin this lab runs: `cni_plugin`, or the `weft` next to weftd.
    pub fn cni_plugin_path(&self) -> PathBuf {
        if self.cni_plugin.as_os_str().is_empty() {
            default_cni_plugin(&self.weftd)
        } else {
            self.cni_plugin.clone()
        }
    }

    /// Checks everything that can be checked without touching the system
    /// (plus that the weftd binary exists when it is going to be started).
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let invalid = |msg: String| Err(LabError::InvalidSpec(msg));
        if !(1..=MAX_HOSTS).contains(&self.hosts) {
            return invalid(format!("hosts must be in 1..={MAX_HOSTS}, got {}", self.hosts));
        }
        if let Err(e) = Ipv4Network::from_str(&self.network) {
            return invalid(format!("network {:?} is not an IPv4 CIDR: {e}", self.network));
        }
        if self.backend.trim().is_empty() {
            return invalid("backend type is empty".to_string());
        }
        if self.start_weftd && !self.weftd.is_file() {
            return invalid(format!("weftd binary {} does not exist", self.weftd.display()));
        }
        if let Some(server) = self.kube_api_server.as_ref().filter(|s| !s.is_file()) {
            return invalid(format!(
                "test API server {} does not exist (build it: cargo build -p weft-kube-testserver)",
                server.display()
            ));
        }
        if self.start_weftd && !self.cni_plugin_path().is_file() {
            return invalid(format!(
                "CNI plugin {} does not exist (build it: cargo build --bin weft)",
                self.cni_plugin_path().display()
            ));
        }
        Ok(())
    }
}

/// A running (or partly built) lab. Dropping it leaves the lab running;
/// call [`Lab::down`] to remove it.
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    dir: PathBuf,
    runtime: Mutex<Runtime>,
}

impl Lab {
    /// Builds the lab described by `spec`. Fails if a lab of that name
    /// already exists under the state root; on any failure midway, removes
    /// what it created before returning the error.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        Lab::up_reporting(spec, false)
    }

    /// [`Lab::up`] with a progress line on stderr while it builds, when stderr is a terminal (`weftctl lab up`:
    /// a lab of 200 hosts takes a while).
    pub fn up_with_progress(spec: LabSpec) -> Result<Lab> {
        Lab::up_reporting(spec, true)
    }

    fn up_reporting(spec: LabSpec, show_progress: bool) -> Result<Lab> {
        spec.validate()?;
        check_root()?;
        cmd::require(&[Tool::Ip, Tool::Etcd, Tool::Etcdctl, Tool::Sysctl])?;
        // Namespaces per host, etcd, then weftd and a container per host.
        let steps = spec.hosts + 1 + if spec.start_weftd { 2 * spec.hosts } else { 0 };
        let mut progress =
            if show_progress { Progress::new("lab up", steps) } else { Progress::hidden("lab up", steps) };
        let lab = Lab::claim(spec)?;
        let built = lab.build(&mut progress);
        progress.finish();
        match built {
            Ok(()) => Ok(lab),
            Err(error) => match lab.down() {
                Ok(()) => Err(error),
                Err(teardown) => {
                    Err(LabError::UpAndTeardownFailed { error: Box::new(error), teardown: Box::new(teardown) })
                }
            },
        }
    }

    /// Re-opens lab `name` created by an earlier process.
    pub fn load(state_root: impl AsRef<Path>, name: &str) -> Result<Lab> {
        validate_name(name)?;
        let dir = state_root.as_ref().join(name);
        // Absolute, so that paths handed to a restarted weftd stay valid.
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        let (spec, runtime) = state::load(&dir, name)?;
        Ok(Lab { spec, dir, runtime: Mutex::new(runtime) })
    }

    /// Stops every recorded weftd and etcd, deletes every recorded
    /// namespace and removes the state directory. Idempotent; keeps going
    /// after individual failures and reports them all, keeping the state
    /// file so that a retry knows what is left.
    pub fn down(&self) -> Result<()> {
        self.down_reporting(false)
    }

    /// [`Lab::down`] with a progress line on stderr when stderr is a terminal (`weftctl lab down`).
    pub fn down_with_progress(&self) -> Result<()> {
        self.down_reporting(true)
    }

    fn down_reporting(&self, show_progress: bool) -> Result<()> {
        let namespaces = self.lock().namespaces.clone();
        let steps = namespaces.len() + 1;
        let mut progress =
            if show_progress { Progress::new("lab down", steps) } else { Progress::hidden("lab down", steps) };
        progress.step("stopping weftd and etcd");
        let mut problems = self.stop_weftds_collecting_errors();
        if let Err(e) = self.stop_etcd() {
            problems.push(e.to_string());
        }
        if let Err(e) = self.stop_kube_api() {
            problems.push(e.to_string());
        }
        progress.advance("deleting namespaces");
        for ns in namespaces.iter().rev() {
            progress.step(&format!("deleting {ns}"));
            if let Err(e) = self.delete_namespace(ns) {
                problems.push(e.to_string());
            }
            progress.advance("");
        }
        progress.finish();
        if !problems.is_empty() {
            return Err(LabError::Teardown { name: self.spec.name.clone(), problems });
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io(format!("removing {}", self.dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Creates the state directory, which claims the lab name.
    fn claim(mut spec: LabSpec) -> Result<Lab> {
        let root = &spec.state_root;
        std::fs::create_dir_all(root).map_err(|e| LabError::io(format!("creating {}", root.display()), e))?;
        // Absolute paths keep working for a later process in another cwd.
        spec.state_root =
            std::fs::canonicalize(root).map_err(|e| LabError::io(format!("resolving {}", root.display()), e))?;
        if spec.start_weftd || spec.weftd.exists() {
            spec.weftd = std::fs::canonicalize(&spec.weftd)
                .map_err(|e| LabError::io(format!("resolving {}", spec.weftd.display()), e))?;
        }
        if let Ok(plugin) = std::fs::canonicalize(spec.cni_plugin_path()) {
            spec.cni_plugin = plugin;
        }
        let dir = spec.state_root.join(&spec.name);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(LabError::AlreadyExists {
                    name: spec.name.clone(),
                    dir,
                    state_root: spec.state_root.clone(),
                })
            }
            Err(e) => return Err(LabError::io(format!("creating {}", dir.display()), e)),
            Ok(()) => {}
        }
        let lab = Lab {
            runtime: Mutex::new(Runtime { hosts: vec![Default::default(); spec.hosts], ..Default::default() }),
            spec,
            dir,
        };
        let claimed = lab.refuse_leftover_namespaces().and_then(|()| lab.save());
        if let Err(e) = claimed {
            // Nothing was created yet apart from the directory.
            let _ = std::fs::remove_dir_all(&lab.dir);
            return Err(e);
        }
        Ok(lab)
    }

    /// A namespace with one of our names but no state means an earlier lab
    /// lost its state; never adopt or delete it, ask the user instead.
    fn refuse_leftover_namespaces(&self) -> Result<()> {
        let names = std::iter::once(self.underlay_ns())
            .chain((1..=self.spec.hosts).flat_map(|h| [self.host_ns(h), self.container_ns(h)]));
        for ns in names {
            if topology::netns_file(&ns).exists() {
                return Err(LabError::NamespaceExists(ns));
            }
        }
        Ok(())
    }

    fn build(&self, progress: &mut Progress) -> Result<()> {
        progress.step("underlay switch");
        self.create_underlay()?;
        for host in 1..=self.spec.hosts {
            progress.step(&format!("namespaces of h{host}"));
            self.create_host(host)?;
            progress.advance(&format!("namespaces of h{host}"));
        }
        self.connect_hosts_to_underlay()?;
        if self.is_kube() {
            progress.step("starting the test Kubernetes API server");
            self.start_kube_api()?;
            progress.advance("API server up");
        } else {
            progress.step("starting etcd");
            self.start_etcd()?;
            self.put_network_config()?;
            progress.advance("etcd up");
        }
        if self.spec.start_weftd {
            self.start_all_weftds_and_attach(progress)?;
        }
        Ok(())
    }

    fn start_all_weftds_and_attach(&self, progress: &mut Progress) -> Result<()> {
        // Start them all first so that they come up in parallel.
        for host in 1..=self.spec.hosts {
            self.start_weftd(host)?;
            progress.advance(&format!("started weftd on h{host}"));
        }
        let deadline = Instant::now() + SUBNET_ENV_TIMEOUT;
        for host in 1..=self.spec.hosts {
            progress.step(&format!("waiting for h{host}'s subnet.env"));
            let env = self.subnet_env_by(host, deadline)?;
            self.attach_container_with(host, &env)?;
            progress.advance(&format!("attached h{host}'s container"));
        }
        Ok(())
    }

    // ----- accessors -----

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Number of hosts; valid host indices are 1..=hosts().
    pub fn hosts(&self) -> usize {
        self.spec.hosts
    }

    /// The lab's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn underlay_ns(&self) -> String {
        addr::underlay_ns(&self.spec.name)
    }

    /// Namespace of host `host` (1-based). Panics on an index out of range.
    pub fn host_ns(&self, host: usize) -> String {
        self.assert_host(host);
        addr::host_ns(&self.spec.name, host)
    }

    /// Namespace of host `host`'s container (it exists once attached).
    pub fn container_ns(&self, host: usize) -> String {
        self.assert_host(host);
        addr::container_ns(&self.spec.name, host)
    }

    /// Underlay address of host `host`: 198.18.0.<host>.
    pub fn host_ip(&self, host: usize) -> Ipv4Addr {
        self.assert_host(host);
        addr::host_ip(host)
    }

    /// etcd's client URL, reachable only from inside the lab's namespaces.
    pub fn etcd_endpoint(&self) -> String {
        addr::etcd_endpoint()
    }

    /// The container's address, once attached.
    pub fn container_ip(&self, host: usize) -> Option<Ipv4Addr> {
        self.assert_host(host);
        self.lock().hosts[host - 1].container_ip
    }

    pub fn subnet_file(&self, host: usize) -> PathBuf {
        self.host_dir(host).join("subnet.env")
    }

    pub fn weftd_log(&self, host: usize) -> PathBuf {
        self.host_dir(host).join("weftd.log")
    }

    pub fn etcd_log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn etcd_data_dir(&self) -> PathBuf {
        self.dir.join("etcd-data")
    }

    fn host_dir(&self, host: usize) -> PathBuf {
        self.assert_host(host);
        self.dir.join(format!("h{host}"))
    }

    /// The recorded weftd pid of host `host` (it may have exited since).
    pub fn weftd_pid(&self, host: usize) -> Option<u32> {
        self.assert_host(host);
        self.lock().hosts[host - 1].weftd_pid
    }

    /// The recorded etcd pid (it may have exited since).
    pub fn etcd_pid(&self) -> Option<u32> {
        self.lock().etcd_pid
    }

    // ----- commands inside the lab -----

    /// Runs `args` inside namespace `ns` (`ip netns exec <ns> ...`) and
    /// returns its output whatever its exit status. `ns` must be one of
    /// this lab's namespaces.
    pub fn exec_in<S: AsRef<OsStr>>(&self, ns: &str, args: impl IntoIterator<Item = S>) -> Result<Output> {
        self.command_in(ns, args).and_then(cmd::output)
    }

    /// The `Command` that [`Lab::exec_in`] would run, for callers that
    /// need to spawn it in the background or feed it stdin.
    pub fn command_in<S: AsRef<OsStr>>(&self, ns: &str, args: impl IntoIterator<Item = S>) -> Result<Command> {
        if !addr::is_lab_namespace(&self.spec.name, self.spec.hosts, ns) {
            return Err(LabError::ForeignNamespace { ns: ns.to_string(), lab: self.spec.name.clone() });
        }
        let mut args = args.into_iter();
        let program = args.next().ok_or_else(|| LabError::InvalidSpec(format!("no command given to run in {ns}")))?;
        let mut command = cmd::in_netns(ns, program)?;
        command.args(args);
        Ok(command)
    }

    /// One ping (1 s timeout) from host `from`'s container to `to`.
    pub fn ping(&self, from: usize, to: Ipv4Addr) -> bool {
        let ns = self.container_ns(from);
        let Ok(ping) = Tool::Ping.path() else {
            return false;
        };
        let target = to.to_string();
        let args = [ping.as_os_str(), "-c1".as_ref(), "-W1".as_ref(), "-q".as_ref(), target.as_ref()];
        match self.command_in(&ns, args) {
            Ok(mut command) => command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success()),
            Err(_) => false,
        }
    }

    // ----- internals -----

    fn assert_host(&self, host: usize) {
        assert!(
            (1..=self.spec.hosts).contains(&host),
            "host index {host} is out of range: lab {:?} has hosts 1..={}",
            self.spec.name,
            self.spec.hosts
        );
    }

    fn check_host(&self, host: usize) -> Result<()> {
        if (1..=self.spec.hosts).contains(&host) {
            Ok(())
        } else {
            Err(LabError::NoSuchHost { index: host, hosts: self.spec.hosts })
        }
    }

    /// The runtime state; a panic elsewhere must not stop a later teardown,
    /// hence the tolerance of poisoning.
    fn lock(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the runtime state and writes it to disk at once, so that the
    /// file always covers everything that exists.
    fn update(&self, change: impl FnOnce(&mut Runtime)) -> Result<()> {
        let mut runtime = self.lock();
        change(&mut runtime);
        state::save(&self.dir, &self.spec, &runtime)
    }

    fn save(&self) -> Result<()> {
        self.update(|_| {})
    }
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_for(mut condition: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabSpec {
        LabSpec { start_weftd: false, ..LabSpec::new("unit", 3, "/nonexistent/weftd") }
    }

    #[test]
    fn spec_defaults() {
        let spec = LabSpec::new("x", 2, "/bin/weftd");
        assert_eq!(spec.network, "10.244.0.0/16");
        assert_eq!(spec.backend, "vxlan");
        assert_eq!(spec.state_root, Path::new("/run/weft-lab"));
        assert!(spec.start_weftd);
    }

    #[test]
    fn spec_validation() {
        assert!(spec().validate().is_ok());
        let bad = [
            LabSpec { hosts: 0, ..spec() },
            LabSpec { hosts: MAX_HOSTS + 1, ..spec() },
            LabSpec { network: "10.244.0.0/33".into(), ..spec() },
            LabSpec { backend: " ".into(), ..spec() },
            LabSpec { name: "bad name".into(), ..spec() },
            LabSpec { start_weftd: true, ..spec() },
            LabSpec { kube_api_server: Some("/nonexistent/weft-kube-testserver".into()), ..spec() },
        ];
        for spec in bad {
            assert!(spec.validate().is_err(), "{spec:?}");
        }
    }

    #[test]
    fn lab_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Lab>();
    }

    #[test]
    fn wait_for_polls_until_true_or_timeout() {
        let mut calls = 0;
        assert!(wait_for(
            || {
                calls += 1;
                calls == 3
            },
            Duration::from_secs(5)
        ));
        assert_eq!(calls, 3);
        assert!(!wait_for(|| false, Duration::from_millis(60)));
    }

    #[test]
    fn exec_in_refuses_other_namespaces() {
        let lab = Lab { spec: spec(), dir: PathBuf::from("/nonexistent"), runtime: Mutex::new(Runtime::default()) };
        for ns in ["", "underlay", "wl-unit-h4", "wl-other-u"] {
            assert!(matches!(lab.exec_in(ns, ["true"]), Err(LabError::ForeignNamespace { .. })));
        }
    }
}
