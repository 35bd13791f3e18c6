//! `weftctl bench`: every benchmark in the lab, one table, raw JSON and a convergence plot.
//!
//! - control plane ([`control`]): a one-host lab whose etcd holds N synthetic peers (10.0.0.0/8); cold-start
//!   convergence of a real weftd against the kernel's own limit (`ip -batch`), incremental latency, churn and
//!   footprint;
//! - data plane ([`dataplane`]): iperf3 over the underlay, weft's VXLAN, host-gw and udp backends (the udp backend
//!   also with each of its techniques off alone) and a hand-built kernel VXLAN setup;
//! - fleet ([`fleet`]): N lab hosts whose weftds start at once against one etcd: time to a full mesh, etcd's
//!   CPU and the requests per host per minute it serves at steady state, distinct subnets, weftd memory;
//! - Kubernetes mode ([`kube`]): weftd's cold start with N flannel Nodes on the test API server next to its cold
//!   start with N etcd leases, interleaved in one run: time and peak memory, and their ratios.
//!
//! All traffic stays in namespaces the suite creates (labs, and `wbn<pid>-*` scratch namespaces), which are
//! removed when the suite ends, also on errors. Numbers are medians of repeated, interleaved runs; the machine's
//! idle CPU is recorded so that runs on a busy machine can be told apart. Nothing here asserts speed.

pub mod cli;
pub mod cni;
pub mod control;
pub mod dataplane;
mod error;
mod etcd_load;
mod etcd_metrics;
pub mod fleet;
mod interrupt;
mod kernel_limit;
mod kernel_watch;
pub mod kube;
mod netns;
mod procfs;
pub(crate) mod report;
pub mod stats;
mod synthetic;
pub mod wireguard;

use std::collections::BTreeSet;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use error::{fail, Context};
pub use error::{BenchError, Result};

use crate::lab::Lab;

/// The benchmark groups, as named on the command line.
/// `udp` is the data plane's udp breakdown alone ([`dataplane::Path::UDP_BREAKDOWN`]); `dataplane` includes it.
pub const SECTIONS: [&str; 10] =
    ["cold", "incremental", "churn", "footprint", "dataplane", "udp", "cni", "wireguard", "fleet", "kube"];

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The smoke version: 100 peers, one short iperf3 run per path, tiny incremental and churn runs.
    pub quick: bool,
    /// Sections to run (see [`SECTIONS`]); empty means all.
    pub only: BTreeSet<String>,
    /// Where `<timestamp>.json` and `<timestamp>.svg` go.
    pub out: PathBuf,
    pub weftd: PathBuf,
    /// Cold-start sizes; empty means the default for the mode.
    pub sizes: Vec<usize>,
    /// Repetitions of each cold start and each iperf3 run; 0 means the default for the mode.
    pub reps: usize,
    /// Seconds per iperf3 run; 0 means the default for the mode.
    pub iperf_seconds: u64,
    /// Parent directory of the labs' state.
    pub state_root: PathBuf,
    /// Fleet sizes (hosts, each running weftd); empty means the default for the mode.
    pub fleet_hosts: Vec<usize>,
    /// Peers before each incremental run; empty means the default for the mode.
    pub incremental_sizes: Vec<usize>,
    /// Peers the churn run rewrites; 0 means the default for the mode.
    pub churn_peers: usize,
    /// Nodes (and leases) of the Kubernetes-mode comparison; 0 means the default for the mode.
    pub kube_nodes: usize,
}

impl BenchOptions {
    pub fn new(weftd: PathBuf) -> BenchOptions {
        BenchOptions {
            quick: false,
            only: BTreeSet::new(),
            out: PathBuf::from("bench-results"),
            weftd,
            sizes: Vec::new(),
            reps: 0,
            iperf_seconds: 0,
            state_root: std::env::temp_dir().join("weft-bench"),
            fleet_hosts: Vec::new(),
            incremental_sizes: Vec::new(),
            churn_peers: 0,
            kube_nodes: 0,
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.contains(section)
    }
}

/// One target from the issue, with what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub met: bool,
}

/// Rows another benchmark group (the CNI comparison) contributes to the table, with its raw data.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraRows {
    pub rows: Vec<(String, String)>,
    pub raw: serde_json::Value,
}

impl ExtraRows {
    pub fn rows(&self) -> Vec<(String, String)> {
        self.rows.clone()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub command: String,
    pub quick: bool,
    /// Machine idle CPU (%) over one second before the suite started.
    pub idle_at_start_percent: f64,
    pub control: Option<control::ControlResults>,
    pub dataplane: Option<dataplane::DataplaneResults>,
    pub cni: Option<ExtraRows>,
    pub cni_note: String,
    /// weft wireguard vs wireguard-go vs kernel VXLAN.
    pub wireguard: Option<ExtraRows>,
    /// One entry per fleet size run.
    pub fleet: Vec<fleet::FleetResult>,
    /// Kubernetes mode against etcd mode, cold starts at the same number of peers.
    pub kube: Option<kube::KubeResult>,
    pub targets: Vec<Target>,
}

/// Where the suite wrote its files.
#[derive(Debug, Clone)]
pub struct Written {
    pub json: PathBuf,
    pub svg: Option<PathBuf>,
}

/// A lab that is always removed, even when a benchmark fails or panics, or the run is interrupted (see
/// [`interrupt`]).
pub(crate) struct LabGuard {
    lab: Lab,
    /// The state directory as registered with [`interrupt`], from before the lab was built.
    held: PathBuf,
}

impl LabGuard {
    /// Builds the lab; an interrupt while it builds takes down what was built so far.
    pub(crate) fn up(spec: crate::lab::LabSpec) -> Result<LabGuard, crate::lab::LabError> {
        let held = spec.state_root.join(&spec.name);
        interrupt::hold_lab(&held);
        match Lab::up(spec) {
            Ok(lab) => Ok(LabGuard { lab, held }),
            Err(e) => {
                interrupt::release_lab(&held);
                Err(e)
            }
        }
    }
}

impl Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.lab.down() {
            eprintln!("weftctl bench: removing lab {}: {e}", self.lab.name());
        }
        interrupt::release_lab(&self.held);
    }
}

/// Runs the selected benchmarks, writes the JSON (and the plot when there are cold-start results) to
/// `options.out`, and returns the report with the paths written.
pub fn run(options: &BenchOptions) -> Result<(Report, Written)> {
    for section in &options.only {
        if !SECTIONS.contains(&section.as_str()) {
            return fail(format!("unknown benchmark {section:?}; choose from {}", SECTIONS.join(",")));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return fail("the benchmarks build network namespaces and must run as root");
    }
    if !options.weftd.is_file() {
        return fail(format!("weftd binary {} does not exist (build it first)", options.weftd.display()));
    }
    interrupt::install();
    let (date, stamp) = procfs::utc_now();
    let idle_at_start_percent = procfs::idle_percent(Duration::from_secs(1)).unwrap_or(f64::NAN);
    eprintln!("weftctl bench: machine idle {idle_at_start_percent:.0}% before starting");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building a runtime")?;

    let control = runtime.block_on(run_control(options))?;
    let paths: &[dataplane::Path] = if options.wants("dataplane") {
        &dataplane::Path::ALL
    } else if options.wants("udp") {
        &dataplane::Path::UDP_BREAKDOWN
    } else {
        &[]
    };
    let dataplane = if !paths.is_empty() {
        eprintln!("data plane:");
        let reps = if options.reps > 0 {
            options.reps
        } else if options.quick {
            1
        } else {
            3
        };
        let seconds = if options.iperf_seconds > 0 {
            options.iperf_seconds
        } else if options.quick {
            2
        } else {
            5
        };
        Some(dataplane::run(options.weftd.clone(), options.state_root.clone(), reps, seconds, paths)?)
    } else {
        None
    };
    let (cni, cni_note) = if options.wants("cni") { run_cni(options) } else { (None, "not selected".to_string()) };
    let wireguard = if options.wants("wireguard") {
        eprintln!("wireguard:");
        let reps = match (options.reps, options.quick) {
            (0, true) => 1,
            (0, false) => 3,
            (n, _) => n,
        };
        let seconds = match (options.iperf_seconds, options.quick) {
            (0, true) => 2,
            (0, false) => 5,
            (n, _) => n,
        };
        Some(wireguard::run(options.weftd.clone(), options.state_root.clone(), reps, seconds)?)
    } else {
        None
    };

    let fleet = if options.wants("fleet") {
        let sizes = match (options.fleet_hosts.is_empty(), options.quick) {
            (false, _) => options.fleet_hosts.clone(),
            (true, true) => vec![fleet::QUICK_HOSTS],
            (true, false) => vec![fleet::DEFAULT_HOSTS],
        };
        // A minute of steady state shows the keepalives; the smoke version only checks that counting works.
        let window = Duration::from_secs(if options.quick { 3 } else { 60 });
        eprintln!("fleet (hosts {sizes:?}, {} s at steady state):", window.as_secs());
        runtime.block_on(fleet::run(options.weftd.clone(), options.state_root.clone(), &sizes, window))?
    } else {
        Vec::new()
    };

    let kube = if options.wants("kube") {
        let nodes = match (options.kube_nodes, options.quick) {
            (0, true) => kube::QUICK_NODES,
            (0, false) => kube::DEFAULT_NODES,
            (n, _) => n,
        };
        let reps = match (options.reps, options.quick) {
            (0, true) => 1,
            (0, false) => 3,
            (n, _) => n,
        };
        // The test API server is built with the workspace, next to weftd.
        let server = options.weftd.with_file_name("weft-kube-testserver");
        eprintln!("Kubernetes mode vs etcd mode ({nodes} peers, {reps} repetitions):");
        Some(runtime.block_on(kube::run(options.weftd.clone(), server, options.state_root.clone(), nodes, reps))?)
    } else {
        None
    };

    let mut report = Report {
        date,
        kernel: procfs::kernel_release(),
        cpus: procfs::cpu_count(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: options.quick,
        idle_at_start_percent,
        control,
        dataplane,
        cni,
        cni_note,
        wireguard,
        fleet,
        kube,
        targets: Vec::new(),
    };
    report.targets = targets(&report);
    std::fs::create_dir_all(&options.out).context(format!("creating {}", options.out.display()))?;
    let json = options.out.join(format!("{stamp}.json"));
    let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
    std::fs::write(&json, text + "\n").context(format!("writing {}", json.display()))?;
    let svg = match report::convergence_svg(&report) {
        Some(plot) => {
            let path = options.out.join(format!("{stamp}.svg"));
            std::fs::write(&path, plot).context(format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    Ok((report, Written { json, svg }))
}

/// The table to print for a report.
pub fn table(report: &Report) -> String {
    report::table(report)
}

/// The CNI issue's ADD/DEL comparison ([`cni`]), with weft's plugin from next to weftd.
fn run_cni(options: &BenchOptions) -> (Option<ExtraRows>, String) {
    let plugin = options.weftd.with_file_name("weft");
    if !plugin.is_file() {
        return (None, format!("skipped: the CNI plugin {} is not built", plugin.display()));
    }
    eprintln!("CNI ADD/DEL:");
    let mut cni_options = cni::CniBenchOptions::new(plugin);
    if options.quick {
        cni_options.iterations = cni::MIN_ITERATIONS;
    }
    match cni::run(&cni_options) {
        Ok(report) => (Some(ExtraRows { rows: report.rows(), raw: report.to_json() }), String::new()),
        Err(e) => (None, format!("failed: {e}")),
    }
}

async fn run_control(options: &BenchOptions) -> Result<Option<control::ControlResults>> {
    let (cold, footprint) = (options.wants("cold"), options.wants("footprint"));
    let (incremental, churn) = (options.wants("incremental"), options.wants("churn"));
    if !(cold || footprint || incremental || churn) {
        return Ok(None);
    }
    let mut sizes = if !options.sizes.is_empty() {
        options.sizes.clone()
    } else if options.quick {
        vec![100]
    } else {
        vec![100, 1000, 5000, 10_000]
    };
    if !cold && footprint {
        // Footprint is read after cold starts: the smallest and the largest are enough.
        sizes.sort_unstable();
        sizes = [sizes.first().copied(), sizes.last().copied()].into_iter().flatten().collect();
        sizes.dedup();
    }
    let plan = control::ControlPlan {
        reps: if options.reps > 0 {
            options.reps
        } else if options.quick {
            1
        } else {
            3
        },
        cold: cold || footprint,
        incremental: incremental.then_some(if options.quick { 20 } else { 200 }),
        incremental_sizes: match (options.incremental_sizes.is_empty(), options.quick) {
            (false, _) => options.incremental_sizes.clone(),
            (true, true) => vec![100],
            (true, false) => INCREMENTAL_SIZES.to_vec(),
        },
        churn: churn.then_some(if options.quick { (200, 2) } else { (1000, 10) }),
        churn_peers: match (options.churn_peers, options.quick) {
            (0, true) => 100,
            (0, false) => TARGET_PEERS,
            (n, _) => n,
        },
        footprint_window: Duration::from_secs(if options.quick { 1 } else { 5 }),
        sizes,
    };
    eprintln!(
        "control plane (cold sizes {:?}, {} repetitions; incremental at {:?}; churn at {}):",
        plan.sizes, plan.reps, plan.incremental_sizes, plan.churn_peers
    );
    let mut lab = control::ControlLab::up(options.weftd.clone(), options.state_root.clone()).await?;
    let results = control::run(&mut lab, &plan).await;
    drop(lab);
    results.map(Some)
}

fn control_targets(control: &control::ControlResults, out: &mut Vec<Target>) {
    for peers in INCREMENTAL_SIZES {
        if let Some(i) = control.incremental_at(peers) {
            out.push(Target {
                name: format!("put -> route p99 < {INCREMENTAL_P99_MS} ms at {peers} peers"),
                measured: format!("p99 {:.2} ms (p50 {:.2} ms, {} leases)", i.p99_ms, i.p50_ms, i.leases),
                met: i.p99_ms < INCREMENTAL_P99_MS,
            });
        }
    }
    let (first, last) = (INCREMENTAL_SIZES[0], INCREMENTAL_SIZES[INCREMENTAL_SIZES.len() - 1]);
    if let (Some(a), Some(b)) = (control.incremental_at(first), control.incremental_at(last)) {
        let ratio = b.p99_ms / a.p99_ms;
        out.push(Target {
            name: format!("put -> route flat: p99 {last}/{first} peers <= {FLAT_RATIO}x"),
            measured: format!("{ratio:.2}x ({:.2} ms / {:.2} ms)", b.p99_ms, a.p99_ms),
            met: ratio <= FLAT_RATIO,
        });
        // The same, less the kernel's own cost of adding one route at each size, which grows with the peers.
        let (net_a, net_b) = (a.p99_ms - a.kernel_route_insert_ms, b.p99_ms - b.kernel_route_insert_ms);
        let ratio = net_b / net_a;
        out.push(Target {
            name: format!("flat less kernel route add: {last}/{first} <= {FLAT_RATIO}x"),
            measured: format!("{ratio:.2}x ({net_b:.2} ms / {net_a:.2} ms)"),
            met: ratio <= FLAT_RATIO,
        });
        // What weftd adds: from etcd's acknowledgement of the put (etcd's commit grows with its database) to the
        // route, less the kernel's route add; the watch's delivery is still in it.
        let (own_a, own_b) =
            (a.after_ack_p99_ms - a.kernel_route_insert_ms, b.after_ack_p99_ms - b.kernel_route_insert_ms);
        let ratio = own_b / own_a;
        out.push(Target {
            name: format!("flat after etcd's ack, less route add: {last}/{first} <= {FLAT_RATIO}x"),
            measured: format!("{ratio:.2}x ({own_b:.2} ms / {own_a:.2} ms)"),
            met: ratio <= FLAT_RATIO,
        });
    }
    if let Some(c) = &control.churn {
        out.push(Target {
            name: format!("churn {}/s at {} peers: final state exact", c.target_rate, c.peers),
            measured: format!("exact {}, {:.0}/s sent", c.final_exact, c.achieved_rate),
            met: c.final_exact,
        });
        if c.peers >= TARGET_PEERS && c.target_rate >= 1000 {
            out.push(Target {
                name: format!("churn {}/s at {} peers: weftd < {CHURN_CPU_PERCENT}% of a core", c.target_rate, c.peers),
                measured: format!("{:.0}%", c.weftd_cpu_percent),
                met: c.weftd_cpu_percent < CHURN_CPU_PERCENT,
            });
        }
    }
    let cold_at = |peers| control.cold.iter().find(|c| c.peers == peers);
    if let Some(c) = cold_at(TARGET_PEERS) {
        out.push(Target {
            name: format!("weftd idle RSS < {IDLE_RSS_MIB} MiB at {TARGET_PEERS} peers"),
            measured: format!("{:.1} MiB", c.footprint.rss_mib),
            met: c.footprint.rss_mib < IDLE_RSS_MIB,
        });
    }
    // The highest VmHWM seen at the target size: its cold start, and the bursts run there.
    let peaks: Vec<(&str, f64)> = [
        cold_at(TARGET_PEERS).map(|c| ("cold start", c.footprint.peak_rss_mib)),
        control.churn.as_ref().filter(|c| c.peers == TARGET_PEERS).map(|c| ("churn", c.weftd_peak_rss_mib)),
        control.incremental_at(TARGET_PEERS).map(|i| ("incremental", i.weftd_peak_rss_mib)),
    ]
    .into_iter()
    .flatten()
    .filter(|(_, v)| v.is_finite())
    .collect();
    if let Some(&(when, peak)) = peaks.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        out.push(Target {
            name: format!("weftd peak RSS <= {PEAK_RSS_MIB} MiB at {TARGET_PEERS} peers"),
            measured: format!("{peak:.1} MiB (highest after {when})"),
            met: peak <= PEAK_RSS_MIB,
        });
    }
    for peers in [5000, TARGET_PEERS] {
        if let Some(c) = cold_at(peers) {
            out.push(Target {
                name: format!("cold start at {peers} peers <= {COLD_RATIO}x ip -batch, same objects"),
                measured: format!(
                    "{:.2}x ({:.0} ms vs {:.0} ms; flannel's plain routes {:.0} ms, {:.2}x), verified {}",
                    c.nexthop_ratio,
                    c.weftd_median_ms,
                    c.nexthop_limit_median_ms,
                    c.kernel_limit_median_ms,
                    c.ratio,
                    c.verified
                ),
                met: c.nexthop_ratio <= COLD_RATIO && c.verified,
            });
        }
    }
}

/// The size the targets are set at.
const TARGET_PEERS: usize = 10_000;
/// Where put -> route latency is measured by default: it should be flat from the first to the last.
const INCREMENTAL_SIZES: [usize; 3] = [1000, TARGET_PEERS, 20_000];
/// put -> route p99 must stay under this at every size.
const INCREMENTAL_P99_MS: f64 = 5.0;
/// "Flat": the p99 at the largest size at most this many times the p99 at the smallest.
const FLAT_RATIO: f64 = 1.5;
const PEAK_RSS_MIB: f64 = 30.0;
const IDLE_RSS_MIB: f64 = 16.0;
const CHURN_CPU_PERCENT: f64 = 25.0;
const COLD_RATIO: f64 = 1.0;

/// The targets, checked against what this run measured (only those it measured).
fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(control) = &report.control {
        control_targets(control, &mut out);
    }
    for f in report.fleet.iter().filter(|f| f.hosts >= fleet::DEFAULT_HOSTS) {
        out.push(Target {
            name: format!("fleet of {} weftd: full mesh, distinct subnets", f.hosts),
            measured: format!(
                "mesh {} in {:.1} s, distinct {}, etcd {:.0} req/host/min",
                f.full_mesh,
                f.full_mesh_ms / 1000.0,
                f.distinct_subnets,
                f.etcd_requests_per_host_per_min
            ),
            met: f.full_mesh && f.distinct_subnets,
        });
    }
    // A target whose paths were not measured (`--only udp` has no weft vxlan) is left out.
    if let Some(d) = report.dataplane.as_ref().filter(|d| !d.weft_vs_kernel_p1.is_nan()) {
        out.push(Target {
            name: "weft vxlan >= 0.95x hand-built vxlan (-P 1)".into(),
            measured: format!(
                "{:.3}x (-P 2: {:.3}x; quiet runs only: {:.3}x / {:.3}x)",
                d.weft_vs_kernel_p1, d.weft_vs_kernel_p2, d.quiet_weft_vs_kernel_p1, d.quiet_weft_vs_kernel_p2
            ),
            met: d.weft_vs_kernel_p1 >= 0.95,
        });
    }
    if let Some(d) = report.dataplane.as_ref().filter(|d| !d.udp_vs_kernel_p1.is_nan()) {
        out.push(Target {
            name: "weft udp >= 0.5x hand-built vxlan (-P 1)".into(),
            measured: format!("{:.3}x (-P 2: {:.3}x)", d.udp_vs_kernel_p1, d.udp_vs_kernel_p2),
            met: d.udp_vs_kernel_p1 >= 0.5,
        });
    }
    out
}
