//! A fleet of real weftd processes sharing one etcd: N lab hosts whose weftds all start at once.
//!
//! Measured per fleet size: the time from the first start to a full mesh (every host's kernel holds a route,
//! a neighbour and an FDB entry for every other host), etcd's CPU over that start, whether every host got its
//! own subnet, and at steady state the requests each host sends etcd per minute (etcd's own counters, so
//! keepalives and watches included), etcd's and the weftds' CPU, and every weftd's memory.
//!
//! The lab is built without containers (only weftd is under test); it is removed when the run ends, on errors
//! too ([`LabGuard`]), and its name carries our pid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use serde::Serialize;
use weft::term::Progress;

use super::error::{fail, Context, Result};
use super::etcd_metrics::{self, EtcdMetrics, Requests};
use super::kernel_watch::{observe, KernelWatch};
use super::stats::{median, ms};
use super::{procfs, LabGuard};
use crate::lab::{Lab, LabSpec};

/// The fleet sizes run unless told otherwise.
pub const DEFAULT_HOSTS: usize = 100;
pub const QUICK_HOSTS: usize = 10;
/// A full mesh of N hosts may take this long plus [`MESH_TIMEOUT_PER_HOST`] per host.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);
const MESH_TIMEOUT_PER_HOST: Duration = Duration::from_secs(1);
/// Where etcd listens inside the lab's underlay namespace.
const ETCD_LOOPBACK: &str = "127.0.0.1:2379";
/// How long the hosts together get to write their subnet.env once the mesh is there.
const SUBNET_ENV_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct FleetResult {
    pub hosts: usize,
    /// Spawning every weftd (one thread per host).
    pub spawn_ms: f64,
    /// First start to the last host's full mesh; NaN when some host never got there.
    pub full_mesh_ms: f64,
    /// First start to each host's own full mesh, median over hosts.
    pub host_mesh_median_ms: f64,
    /// A final dump of every host found exactly the routes to the other hosts' subnets, no more, no less.
    pub full_mesh: bool,
    /// Every host's subnet.env names a different subnet, and etcd holds exactly one lease per host.
    pub distinct_subnets: bool,
    pub leases_in_etcd: usize,
    /// etcd's CPU from the first start to the full mesh, in % of one core, and in seconds.
    pub etcd_cpu_percent_startup: f64,
    pub etcd_cpu_s_startup: f64,
    /// gRPC messages etcd received from the first start to the full mesh, per host: all methods, and per method.
    pub etcd_requests_per_host_startup: f64,
    pub etcd_requests_per_host_startup_by_method: BTreeMap<String, f64>,
    /// Length of the steady-state window after the mesh.
    pub steady_window_s: f64,
    /// gRPC messages etcd received during the window, per host per minute: all methods, and per method.
    pub etcd_requests_per_host_per_min: f64,
    pub etcd_requests_per_host_per_min_by_method: BTreeMap<String, f64>,
    pub etcd_cpu_percent_steady: f64,
    /// All the weftds' CPU together during the window, in % of one core.
    pub weftd_cpu_percent_steady_total: f64,
    pub weftd_rss_median_mib: f64,
    pub weftd_rss_max_mib: f64,
    /// The largest VmHWM of any weftd: the startup peak.
    pub weftd_peak_rss_max_mib: f64,
    pub etcd_rss_mib: f64,
}

/// Runs one fleet per entry of `sizes`, each for `steady_window` at steady state.
pub async fn run(
    weftd: PathBuf,
    state_root: PathBuf,
    sizes: &[usize],
    steady_window: Duration,
) -> Result<Vec<FleetResult>> {
    let mut results = Vec::new();
    for &hosts in sizes {
        if !(2..=crate::lab::MAX_HOSTS).contains(&hosts) {
            return fail(format!("a fleet needs 2..={} hosts, got {hosts}", crate::lab::MAX_HOSTS));
        }
        results.push(run_one(weftd.clone(), state_root.clone(), hosts, steady_window).await?);
    }
    Ok(results)
}

async fn run_one(weftd: PathBuf, state_root: PathBuf, hosts: usize, steady_window: Duration) -> Result<FleetResult> {
    let mut progress = Progress::new(format!("fleet of {hosts}"), 5);
    progress.step(&format!("building {hosts} hosts"));
    let spec = LabSpec {
        start_weftd: false,
        state_root,
        ..LabSpec::new(format!("f{}-{hosts}", std::process::id()), hosts, weftd)
    };
    let lab = LabGuard::up(spec).context(format!("building a lab of {hosts} hosts"))?;
    let etcd_pid = lab.etcd_pid().ok_or_else(|| super::BenchError("the lab's etcd is not running".into()))?;
    let metrics = EtcdMetrics::in_namespace(&lab.underlay_ns(), ETCD_LOOPBACK)?;
    let mut watches = (1..=hosts).map(|h| KernelWatch::start(&lab.host_ns(h))).collect::<Result<Vec<_>>>()?;
    progress.advance(&format!("starting {hosts} weftd at once"));

    let requests_before = metrics.requests().await?;
    let etcd_cpu_before = procfs::cpu_time(etcd_pid);
    let started = Instant::now();
    // Blocking this thread is harmless: notifications queue in the sockets and are stamped when read, and no
    // host can have a full mesh before the last weftd has started and taken its lease.
    start_all(&lab)?;
    let spawn_ms = ms(started.elapsed());
    progress.advance("waiting for the full mesh");

    let deadline = MESH_TIMEOUT + MESH_TIMEOUT_PER_HOST * hosts as u32;
    let mut meshed_at = Vec::with_capacity(hosts);
    for watch in &mut watches {
        let remaining = deadline.saturating_sub(started.elapsed());
        match watch.wait_until(|c| c.all_at_least(hosts - 1), remaining).await? {
            Some(at) => meshed_at.push(ms(at.saturating_duration_since(started))),
            None => break,
        }
    }
    let everyone_meshed = meshed_at.len() == hosts;
    let full_mesh_ms = if everyone_meshed { meshed_at.iter().copied().fold(0.0, f64::max) } else { f64::NAN };
    let startup_wall = started.elapsed();
    let etcd_cpu_s_startup = match (etcd_cpu_before, procfs::cpu_time(etcd_pid)) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => f64::NAN,
    };
    let startup_requests = etcd_metrics::growth(&requests_before, &metrics.requests().await?);
    drop(watches);
    progress.advance("checking subnets and routes");

    let subnets = subnets(&lab);
    let distinct: BTreeSet<IpNetwork> = subnets.iter().flatten().copied().collect();
    let leases_in_etcd = lab.leases().context("listing the leases")?.len();
    let distinct_subnets = distinct.len() == hosts && leases_in_etcd == hosts;
    let full_mesh = everyone_meshed && exact_routes(&lab, &subnets).await?;
    progress.advance(&format!("steady state for {} s", steady_window.as_secs()));

    let (steady, requests) = steady_state(&lab, &metrics, etcd_pid, steady_window).await?;
    let per_host_per_min = |n: f64| n / hosts as f64 / (steady.window.as_secs_f64() / 60.0);
    let per_host = |requests: &Requests, scale: &dyn Fn(f64) -> f64| -> BTreeMap<String, f64> {
        requests.iter().filter(|(_, &n)| n > 0.0).map(|(m, &n)| (m.clone(), scale(n))).collect()
    };
    let rss: Vec<f64> = weftd_pids(&lab).iter().filter_map(|&pid| procfs::rss_mib(pid)).collect();
    let peaks: Vec<f64> = weftd_pids(&lab).iter().filter_map(|&pid| procfs::peak_rss_mib(pid)).collect();
    progress.advance("");
    progress.finish();

    let result = FleetResult {
        hosts,
        spawn_ms,
        full_mesh_ms,
        host_mesh_median_ms: median(&meshed_at).unwrap_or(f64::NAN),
        full_mesh,
        distinct_subnets,
        leases_in_etcd,
        etcd_cpu_percent_startup: 100.0 * etcd_cpu_s_startup / startup_wall.as_secs_f64(),
        etcd_cpu_s_startup,
        steady_window_s: steady.window.as_secs_f64(),
        etcd_requests_per_host_per_min: per_host_per_min(requests.values().sum()),
        etcd_requests_per_host_per_min_by_method: per_host(&requests, &per_host_per_min),
        etcd_requests_per_host_startup: startup_requests.values().sum::<f64>() / hosts as f64,
        etcd_requests_per_host_startup_by_method: per_host(&startup_requests, &|n| n / hosts as f64),
        etcd_cpu_percent_steady: steady.etcd_cpu_percent,
        weftd_cpu_percent_steady_total: steady.weftd_cpu_percent,
        weftd_rss_median_mib: median(&rss).unwrap_or(f64::NAN),
        weftd_rss_max_mib: rss.iter().copied().fold(f64::NAN, f64::max),
        weftd_peak_rss_max_mib: peaks.iter().copied().fold(f64::NAN, f64::max),
        etcd_rss_mib: procfs::rss_mib(etcd_pid).unwrap_or(f64::NAN),
    };
    progress.note(&format!(
        "  fleet of {hosts}: full mesh {} in {:.0} ms, subnets distinct {}, etcd {:.1} requests/host/min",
        result.full_mesh, result.full_mesh_ms, result.distinct_subnets, result.etcd_requests_per_host_per_min
    ));
    Ok(result)
}

/// Starts every host's weftd, one thread per host, so that they really start together.
fn start_all(lab: &Lab) -> Result<()> {
    std::thread::scope(|scope| {
        let started: Vec<_> = (1..=lab.hosts()).map(|h| scope.spawn(move || lab.start_weftd(h))).collect();
        for (host, thread) in (1..).zip(started) {
            match thread.join() {
                Ok(Ok(_pid)) => {}
                Ok(Err(e)) => return fail(format!("starting weftd on host {host}: {e}")),
                Err(_) => return fail(format!("starting weftd on host {host}: the thread panicked")),
            }
        }
        Ok(())
    })
}

fn weftd_pids(lab: &Lab) -> Vec<u32> {
    (1..=lab.hosts()).filter_map(|h| lab.weftd_pid(h)).collect()
}

/// Each host's subnet as its subnet.env names it (the network, host bits cleared); None where weftd wrote none
/// within [`SUBNET_ENV_WAIT`] (weftd may write the file just after programming its peers).
fn subnets(lab: &Lab) -> Vec<Option<IpNetwork>> {
    let deadline = Instant::now() + SUBNET_ENV_WAIT;
    (1..=lab.hosts())
        .map(|h| {
            let env = lab.wait_for_subnet_env(h, deadline.saturating_duration_since(Instant::now())).ok()?;
            env.subnet.and_then(|net| IpNetwork::new(net.network(), net.prefix()).ok())
        })
        .collect()
}

/// Whether every host's kernel holds weft routes to exactly the other hosts' subnets.
async fn exact_routes(lab: &Lab, subnets: &[Option<IpNetwork>]) -> Result<bool> {
    for (i, own) in subnets.iter().enumerate() {
        let expected: BTreeSet<IpNetwork> =
            subnets.iter().enumerate().filter(|&(j, _)| j != i).filter_map(|(_, s)| *s).collect();
        let state = observe(&lab.host_ns(i + 1)).await?;
        let routes: BTreeSet<IpNetwork> = state.routes.keys().copied().collect();
        if own.is_none() || routes != expected {
            return Ok(false);
        }
    }
    Ok(true)
}

struct Steady {
    window: Duration,
    etcd_cpu_percent: f64,
    weftd_cpu_percent: f64,
}

/// etcd's received requests and CPU, and the weftds' CPU, over `window` of a converged, untouched fleet.
async fn steady_state(lab: &Lab, metrics: &EtcdMetrics, etcd_pid: u32, window: Duration) -> Result<(Steady, Requests)> {
    let pids = weftd_pids(lab);
    let weftd_cpu = |pids: &[u32]| pids.iter().filter_map(|&pid| procfs::cpu_time(pid)).sum::<Duration>();
    let before = metrics.requests().await?;
    let (etcd_before, weftd_before) = (procfs::cpu_time(etcd_pid), weftd_cpu(&pids));
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = metrics.requests().await?;
    let (etcd_after, weftd_after) = (procfs::cpu_time(etcd_pid), weftd_cpu(&pids));
    let elapsed = started.elapsed();
    let percent = |d: Duration| 100.0 * d.as_secs_f64() / elapsed.as_secs_f64();
    let etcd_cpu_percent = match (etcd_before, etcd_after) {
        (Some(a), Some(b)) => percent(b.saturating_sub(a)),
        _ => f64::NAN,
    };
    let steady = Steady {
        window: elapsed,
        etcd_cpu_percent,
        weftd_cpu_percent: percent(weftd_after.saturating_sub(weftd_before)),
    };
    Ok((steady, etcd_metrics::growth(&before, &after)))
}
