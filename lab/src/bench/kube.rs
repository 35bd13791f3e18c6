//! Kubernetes mode against etcd mode: cold starts of weftd with `--kube-subnet-mgr` and N flannel Nodes, next to
//! cold starts with `--etcd-endpoints` and the same N peers as etcd leases, interleaved in one run.
//!
//! Two one-host labs run side by side: the control-plane lab ([`ControlLab`], etcd holding the synthetic leases)
//! and a lab in Kubernetes mode whose test API server (in that lab's underlay namespace) loads the same peers as
//! Nodes in flannel's annotation format ([`synthetic::flannel_node`]). Each repetition cold-starts both weftds, in
//! alternating order, each timed by the control plane's own measurement ([`control::cold_start_host`]: weftd
//! process start to all N routes, neighbours and FDB entries in the kernel). A weftd's peak RSS (VmHWM) is read
//! after its convergence; every cold start is a new process, so each reading is that start's own peak.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use weft::term::Progress;

use super::control::{self, ControlLab};
use super::error::{fail, Context, Result};
use super::kernel_watch::{counts_of, observe};
use super::stats::{median, ms};
use super::{procfs, synthetic, LabGuard};
use crate::lab::LabSpec;

/// Nodes (and leases) by default, and with `--quick`.
pub const DEFAULT_NODES: usize = 5000;
pub const QUICK_NODES: usize = 100;
/// How long the test API server may take to load the Nodes (about 2 s for 5000 in a release build).
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Time after convergence before reading VmHWM, so that the startup's last allocations count.
const SETTLE: Duration = Duration::from_millis(500);

/// One store's side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// weftd process start to the last of the 3N objects in the kernel, each repetition.
    pub cold_ms: Vec<f64>,
    pub cold_median_ms: f64,
    /// weftd's VmHWM after each cold start.
    pub peak_rss_mib: Vec<f64>,
    pub peak_rss_median_mib: f64,
    /// Putting the N peers into the store before the first run: etcd's txn batches, or in Kubernetes mode the
    /// test API server's start (with the lab around it) until it lists all N Nodes it loads from a file.
    pub load_ms: f64,
    /// Notifications were lost in some repetition, which was then timed by polling dumps instead.
    pub polled: bool,
    /// A final dump found exactly N routes, neighbours and FDB entries.
    pub verified: bool,
}

impl ModeResult {
    fn new(cold_ms: Vec<f64>, peak_rss_mib: Vec<f64>, load: Duration, polled: bool, verified: bool) -> ModeResult {
        ModeResult {
            cold_median_ms: median(&cold_ms).unwrap_or(f64::NAN),
            peak_rss_median_mib: median(&peak_rss_mib).unwrap_or(f64::NAN),
            cold_ms,
            peak_rss_mib,
            load_ms: ms(load),
            polled,
            verified,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KubeResult {
    /// Peers: Nodes in Kubernetes mode, leases in etcd mode.
    pub peers: usize,
    pub reps: usize,
    pub kube: ModeResult,
    pub etcd: ModeResult,
    /// Median cold start, Kubernetes mode / etcd mode.
    pub cold_ratio: f64,
    /// Median peak RSS, Kubernetes mode / etcd mode.
    pub peak_rss_ratio: f64,
}

/// The Kubernetes-mode lab and the file of Nodes its API server loaded; both removed when dropped.
struct KubeLab {
    lab: LabGuard,
    nodes_file: PathBuf,
}

impl Drop for KubeLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.nodes_file);
    }
}

impl KubeLab {
    /// Builds the lab (no weftd yet) and waits until its API server lists the host's Node and `n` peers.
    fn up(weftd: &Path, server: &Path, state_root: &Path, n: usize) -> Result<(KubeLab, Duration)> {
        let name = format!("k{}", std::process::id());
        std::fs::create_dir_all(state_root).context(format!("creating {}", state_root.display()))?;
        let nodes_file = state_root.join(format!("{name}-nodes.json"));
        std::fs::write(&nodes_file, synthetic::flannel_node_list(n).to_string())
            .context(format!("writing {}", nodes_file.display()))?;
        let started = Instant::now();
        let spec = LabSpec {
            network: synthetic::NETWORK.to_string(),
            start_weftd: false,
            state_root: state_root.to_path_buf(),
            kube_api_server: Some(server.to_path_buf()),
            kube_objects: vec![nodes_file.clone()],
            ..LabSpec::new(name, 1, weftd)
        };
        let lab = match LabGuard::up(spec) {
            Ok(lab) => KubeLab { lab, nodes_file },
            Err(e) => {
                let _ = std::fs::remove_file(&nodes_file);
                return Err(e).context("building the Kubernetes-mode lab");
            }
        };
        let expected = n + lab.lab.hosts();
        loop {
            let listed = lab.lab.kube_node_count().context("counting the API server's Nodes")?;
            if listed >= expected {
                break;
            }
            if started.elapsed() > LOAD_TIMEOUT {
                return fail(format!(
                    "the test API server lists {listed} of {expected} Nodes after {LOAD_TIMEOUT:?}; see {}",
                    lab.lab.kube_api_log().display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((lab, started.elapsed()))
    }

    async fn exact_counts(&self, n: usize) -> Result<bool> {
        let counts = counts_of(&observe(&self.lab.host_ns(1)).await?);
        Ok(counts.routes == n && counts.neighbours == n && counts.fdb == n)
    }
}

/// weftd's peak RSS once its startup has settled (NaN when it is not running).
fn settled_peak_rss(weftd_pid: Option<u32>) -> f64 {
    std::thread::sleep(SETTLE);
    weftd_pid.and_then(procfs::peak_rss_mib).unwrap_or(f64::NAN)
}

/// Both cold starts at `n` peers, `reps` times each, interleaved. `server` is the `weft-kube-testserver` binary.
pub async fn run(weftd: PathBuf, server: PathBuf, state_root: PathBuf, n: usize, reps: usize) -> Result<KubeResult> {
    if !server.is_file() {
        return fail(format!(
            "the test API server {} is not built (cargo build [--release] -p weft-kube-testserver)",
            server.display()
        ));
    }
    if n == 0 || n > synthetic::MAX_PEERS {
        return fail(format!("--kube-nodes must be in 1..={}, got {n}", synthetic::MAX_PEERS));
    }
    let reps = reps.max(1);
    let mut progress = Progress::new("kube vs etcd", 2 + 2 * reps);
    progress.step(&format!("etcd lab with {n} leases"));
    let mut etcd = ControlLab::up_named(format!("e{}", std::process::id()), weftd.clone(), state_root.clone()).await?;
    let lease_write = etcd.grow_to(n).await?;
    progress.advance(&format!("etcd holds {n} leases"));
    progress.step(&format!("Kubernetes-mode lab with {n} Nodes"));
    let (kube, node_load) = KubeLab::up(&weftd, &server, &state_root, n)?;
    progress.advance(&format!("the API server lists {n} Nodes"));

    let (mut etcd_ms, mut etcd_rss, mut etcd_polled) = (Vec::new(), Vec::new(), false);
    let (mut kube_ms, mut kube_rss, mut kube_polled) = (Vec::new(), Vec::new(), false);
    for rep in 1..=reps {
        // Alternating which goes first, so that neither always runs right after the other's startup burst.
        for etcd_turn in if rep % 2 == 1 { [true, false] } else { [false, true] } {
            if etcd_turn {
                progress.step(&format!("etcd mode, {n} leases: run {rep}/{reps}"));
                let (took, polled) = etcd.cold_start().await?;
                etcd_ms.push(ms(took));
                etcd_polled |= polled;
                etcd_rss.push(settled_peak_rss(etcd.weftd_pid().ok()));
            } else {
                progress.step(&format!("Kubernetes mode, {n} Nodes: run {rep}/{reps}"));
                let (took, watch) = control::cold_start_host(&kube.lab, 1, n).await?;
                kube_ms.push(ms(took));
                kube_polled |= watch.overrun;
                kube_rss.push(settled_peak_rss(kube.lab.weftd_pid(1)));
            }
            progress.advance("");
        }
    }
    let etcd_verified = etcd.exact_counts().await?;
    let kube_verified = kube.exact_counts(n).await?;
    drop(kube);
    drop(etcd);

    let etcd = ModeResult::new(etcd_ms, etcd_rss, lease_write, etcd_polled, etcd_verified);
    let kube = ModeResult::new(kube_ms, kube_rss, node_load, kube_polled, kube_verified);
    let result = KubeResult {
        peers: n,
        reps,
        cold_ratio: kube.cold_median_ms / etcd.cold_median_ms,
        peak_rss_ratio: kube.peak_rss_median_mib / etcd.peak_rss_median_mib,
        kube,
        etcd,
    };
    progress.note(&format!(
        "  cold start, {n} peers: Kubernetes mode {:.0} ms, etcd mode {:.0} ms ({:.2}x); peak RSS {:.1} / {:.1} MiB",
        result.kube.cold_median_ms,
        result.etcd.cold_median_ms,
        result.cold_ratio,
        result.kube.peak_rss_median_mib,
        result.etcd.peak_rss_median_mib
    ));
    Ok(result)
}
