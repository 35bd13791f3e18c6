//! `weftctl bench`: every benchmark in the lab, one table, raw JSON and a convergence plot.
//!
//! - control plane ([`control`]): a one-host lab whose etcd holds N synthetic peers (10.0.0.0/8); cold-start
//!   convergence of a real weftd against the kernel's own limit (`ip -batch`), incremental latency, churn and
//!   footprint;
//! - data plane ([`dataplane`]): iperf3 over the underlay, weft's VXLAN, host-gw and udp backends (the udp backend
//!   also with each of its techniques off alone) and a hand-built kernel VXLAN setup;
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
mod kernel_limit;
mod kernel_watch;
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
pub const SECTIONS: [&str; 8] = ["cold", "incremental", "churn", "footprint", "dataplane", "udp", "cni", "wireguard"];

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
    pub targets: Vec<Target>,
}

/// Where the suite wrote its files.
#[derive(Debug, Clone)]
pub struct Written {
    pub json: PathBuf,
    pub svg: Option<PathBuf>,
}

/// A lab that is always removed, even when a benchmark fails or panics.
pub(crate) struct LabGuard(pub Lab);

impl Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.down() {
            eprintln!("weftctl bench: removing lab {}: {e}", self.0.name());
        }
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
        base: if options.quick { 100 } else { 1000 },
        incremental: incremental.then_some(if options.quick { 20 } else { 200 }),
        churn: churn.then_some(if options.quick { (200, 2) } else { (1000, 10) }),
        footprint_window: Duration::from_secs(if options.quick { 1 } else { 5 }),
        sizes,
    };
    eprintln!("control plane (sizes {:?}, {} repetitions):", plan.sizes, plan.reps);
    let mut lab = control::ControlLab::up(options.weftd.clone(), options.state_root.clone()).await?;
    let results = control::run(&mut lab, &plan).await;
    drop(lab);
    results.map(Some)
}

/// The targets, checked against what this run measured (only those it measured).
fn targets(report: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(control) = &report.control {
        if let Some(c) = control.cold.iter().find(|c| c.peers == 5000) {
            out.push(Target {
                name: "cold start at 5000 peers within 2x the kernel limit".into(),
                measured: format!(
                    "{:.2}x ({:.0} ms vs {:.0} ms)",
                    c.ratio, c.weftd_median_ms, c.kernel_limit_median_ms
                ),
                met: c.ratio <= 2.0 && c.verified,
            });
        }
        if let Some(c) = control.cold.iter().find(|c| c.peers == 10_000) {
            out.push(Target {
                name: "10000 peers converge".into(),
                measured: format!("{:.0} ms, verified {}", c.weftd_median_ms, c.verified),
                met: c.verified,
            });
            out.push(Target {
                name: "weftd RSS under 30 MiB at 10000 peers".into(),
                measured: format!("{:.1} MiB", c.footprint.rss_mib),
                met: c.footprint.rss_mib < 30.0,
            });
        }
        if let Some(i) = control.incremental.as_ref().filter(|i| i.peers_before >= 1000) {
            out.push(Target {
                name: "incremental p99 under 20 ms at 1000 peers".into(),
                measured: format!("{:.2} ms", i.p99_ms),
                met: i.p99_ms < 20.0,
            });
        }
        if let Some(c) = &control.churn {
            out.push(Target {
                name: "churn: final state exactly right".into(),
                measured: format!("exact {}, {:.0}/s sent", c.final_exact, c.achieved_rate),
                met: c.final_exact,
            });
        }
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
