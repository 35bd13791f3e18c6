//! `weftctl bench` and `weftctl cni bench`: their arguments and the commands themselves.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use super::cni::{self, CniBenchOptions};
use super::{BenchOptions, SECTIONS};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Smoke version: 100 peers, one short iperf3 run per path, tiny incremental and churn runs
    #[arg(long)]
    pub quick: bool,
    /// Comma-separated benchmarks to run: cold,incremental,churn,footprint,dataplane,udp,cni,wireguard,fleet,kube
    /// (default: all; udp: the udp backend's per-technique breakdown alone, also part of dataplane; kube: cold
    /// start with flannel Nodes on the test API server next to etcd leases)
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Directory for <timestamp>.json and <timestamp>.svg
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Cold-start peer counts (default 100,1000,5000,10000; --quick: 100); without cold and footprint, the
    /// largest is the peer count the incremental and churn runs start from (default 1000; --quick: 100)
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Repetitions of each cold start and iperf3 run (default 3; --quick: 1)
    #[arg(long, default_value_t = 0)]
    pub reps: usize,
    /// Seconds per iperf3 run (default 5; --quick: 2)
    #[arg(long, default_value_t = 0)]
    pub iperf_seconds: u64,
    /// Peers before each incremental (put -> route) run (default 1000,10000,20000; --quick: 100)
    #[arg(long, value_delimiter = ',')]
    pub incremental_sizes: Vec<usize>,
    /// Peers the churn run rewrites (default 10000; --quick: 100)
    #[arg(long, default_value_t = 0)]
    pub churn_peers: usize,
    /// Fleet sizes: hosts, each running weftd, started at once (default 100; --quick: 10)
    #[arg(long, value_delimiter = ',')]
    pub fleet_hosts: Vec<usize>,
    /// Peers of the Kubernetes-mode comparison: Nodes there, leases in etcd mode (default 5000; --quick: 100)
    #[arg(long, default_value_t = 0)]
    pub kube_nodes: usize,
    /// The weftd binary (default: next to weftctl; the kube benchmark's weft-kube-testserver is next to it)
    #[arg(long)]
    pub weftd: Option<PathBuf>,
    /// Run nothing: redraw the convergence plot of an earlier run's JSON into --out
    #[arg(long, value_name = "JSON")]
    pub replot: Option<PathBuf>,
}

/// Runs the suite, prints the table on stdout and where the files went on stderr.
pub fn run(args: &BenchArgs) -> Result<(), String> {
    if let Some(json) = &args.replot {
        return replot(json, &args.out);
    }
    let weftd = match &args.weftd {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(|e| format!("locating weftctl: {e}"))?.with_file_name("weftd"),
    };
    let only: BTreeSet<String> = args.only.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        return Err(format!("unknown benchmark {bad:?}; choose from {}", SECTIONS.join(",")));
    }
    let options = BenchOptions {
        quick: args.quick,
        only,
        out: args.out.clone(),
        sizes: args.sizes.clone(),
        reps: args.reps,
        iperf_seconds: args.iperf_seconds,
        fleet_hosts: args.fleet_hosts.clone(),
        incremental_sizes: args.incremental_sizes.clone(),
        churn_peers: args.churn_peers,
        kube_nodes: args.kube_nodes,
        ..BenchOptions::new(weftd)
    };
    let (report, written) = super::run(&options).map_err(|e| e.to_string())?;
    println!("{}", super::table(&report));
    eprintln!("raw results: {}", written.json.display());
    if let Some(svg) = written.svg {
        eprintln!("plot: {}", svg.display());
    }
    Ok(())
}

/// `weftctl cni bench`: ADD and DEL of weft against bridge + host-local.
#[derive(Debug, Clone, Args)]
pub struct CniBenchArgs {
    /// ADDs and DELs per plugin (at least 20)
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// The plugin binary to time (default: the `weft` next to this weftctl)
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Where the reference bridge and host-local plugins are
    #[arg(long, default_value = "/usr/lib/cni")]
    pub reference_dir: PathBuf,
    /// Print the raw samples as JSON after the table
    #[arg(long)]
    pub json: bool,
}

/// Runs the CNI comparison and prints its table (and, with `--json`, the raw samples) on stdout.
pub fn run_cni(args: &CniBenchArgs) -> Result<(), String> {
    let plugin = args.plugin.clone().map_or_else(weft::cni_install::default_plugin, Ok)?;
    let options = CniBenchOptions {
        iterations: args.iterations,
        reference_dir: args.reference_dir.clone(),
        ..CniBenchOptions::new(plugin)
    };
    let report = cni::run(&options)?;
    println!("{report}");
    if args.json {
        println!("{}", report.to_json());
    }
    Ok(())
}

fn replot(json: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("reading {}: {e}", json.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let cold: Vec<super::control::ColdResult> = serde_json::from_value(report["control"]["cold"].clone())
        .map_err(|e| format!("{}: no cold-start results: {e}", json.display()))?;
    let field = |name: &str| report[name].as_str().map_or_else(|| report[name].to_string(), str::to_string);
    let caption = format!("{}, {} cores, kernel {}", field("date"), field("cpus"), field("kernel"));
    let svg = super::report::plot_cold(&cold, &caption).ok_or("the run has no cold-start results")?;
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let stem = json.file_stem().map_or_else(|| "replot".into(), |s| s.to_string_lossy().into_owned());
    let path = out.join(format!("{stem}.svg"));
    std::fs::write(&path, svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("plot: {}", path.display());
    Ok(())
}
