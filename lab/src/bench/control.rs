//! Control-plane benchmarks on a one-host lab whose etcd holds synthetic peers: cold-start convergence against
//! the kernel's own limit, incremental latency, churn and weftd's footprint.
//!
//! One lab serves every size: peers are only ever added (sizes ascend), and a cold start means stopping weftd,
//! deleting flannel.1 (which takes every neighbour, FDB entry and route along) and starting weftd again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};
use weft::term::Progress;

use super::error::{fail, Context, Result};
use super::etcd_load::LeaseLoader;
use super::kernel_limit::RouteForm;
use super::kernel_watch::{counts_of, observe, KernelWatch, DEVICE};
use super::netns::run_ip;
use super::stats::{median, ms, percentile};
use super::{kernel_limit, procfs, synthetic, LabGuard};
use crate::lab::{Lab, LabSpec};

/// How long a cold start may take before it counts as failed.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one incremental lease may take to show up as a route.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(10);
/// After weftd's "ready": its tasks start, and the first pass of the loop (a lease event that changes nothing)
/// runs.
const SETTLE_AFTER_READY: Duration = Duration::from_millis(300);

/// JSON has no NaN: serde_json writes it as null, and this reads null back as NaN.
fn nan() -> f64 {
    f64::NAN
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColdResult {
    pub peers: usize,
    /// weftd process start to the last of the 3N objects in the kernel, each repetition.
    pub weftd_ms: Vec<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub weftd_median_ms: f64,
    /// ip/bridge -batch for the 3N objects as flannel programs them (plain routes), each repetition.
    pub kernel_limit_ms: Vec<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub kernel_limit_median_ms: f64,
    /// weftd median / kernel-limit median (flannel's plain routes).
    #[serde(deserialize_with = "nan_if_null")]
    pub ratio: f64,
    /// ip/bridge -batch for the objects weftd programs (routes through nexthop objects), each repetition; empty
    /// in results from before weftd used nexthop objects.
    #[serde(default)]
    pub nexthop_limit_ms: Vec<f64>,
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub nexthop_limit_median_ms: f64,
    /// weftd median / the same objects' kernel limit.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub nexthop_ratio: f64,
    /// Writing the new leases into etcd (txn batches).
    #[serde(deserialize_with = "nan_if_null")]
    pub lease_write_ms: f64,
    /// Notifications were lost in some repetition, which was then timed by polling dumps instead.
    pub polled: bool,
    /// A final dump found exactly N routes, neighbours and FDB entries.
    pub verified: bool,
    pub footprint: Footprint,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Footprint {
    pub peers: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub rss_mib: f64,
    /// The most weftd was ever resident (VmHWM): the startup pass's peak, before freed memory went back.
    #[serde(deserialize_with = "nan_if_null")]
    pub peak_rss_mib: f64,
    /// weftd's CPU use at idle (after convergence), in % of one core.
    #[serde(deserialize_with = "nan_if_null")]
    pub idle_cpu_percent: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub window_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncrementalResult {
    pub peers_before: usize,
    pub leases: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples_ms: Vec<f64>,
    /// weftd's memory after the run, and the most it ever held (VmHWM: the cold start at this size included).
    pub weftd_rss_mib: f64,
    pub weftd_peak_rss_mib: f64,
    /// The kernel's own time to add one more peer route at this size, with its nexthop object as weftd adds it
    /// (`ip -batch` in a scratch namespace, measured right after the run): a floor no daemon gets under.
    pub kernel_route_insert_ms: f64,
    /// etcd's own part at this size: the put's round trip (p50, p99), before which no watcher can hear of it.
    pub etcd_ack_p50_ms: f64,
    pub etcd_ack_p99_ms: f64,
    /// From etcd's acknowledgement to the route (p99): the watch's delivery, weftd and the kernel.
    pub after_ack_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnResult {
    pub peers: usize,
    pub target_rate: usize,
    pub duration_s: f64,
    pub updates_sent: usize,
    pub achieved_rate: f64,
    /// Last put acknowledged to the kernel matching etcd exactly.
    pub catch_up_ms: f64,
    /// Every neighbour and FDB entry matched the final leases, with nothing stale left.
    pub final_exact: bool,
    pub weftd_cpu_percent: f64,
    /// weftd's memory after the run, and the most it ever held (VmHWM: the cold start at this size included).
    pub weftd_rss_mib: f64,
    pub weftd_peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ControlResults {
    pub cold: Vec<ColdResult>,
    /// One run per size of [`ControlPlan::incremental_sizes`], smallest first.
    pub incremental: Vec<IncrementalResult>,
    pub churn: Option<ChurnResult>,
}

impl ControlResults {
    /// The incremental run at `peers` (or up to 10% above: earlier runs may have added their leases).
    pub fn incremental_at(&self, peers: usize) -> Option<&IncrementalResult> {
        self.incremental.iter().find(|i| (peers..=peers + peers / 10).contains(&i.peers_before))
    }
}

/// What to run and at what scale.
#[derive(Debug, Clone)]
pub struct ControlPlan {
    /// Cold-start sizes.
    pub sizes: Vec<usize>,
    pub reps: usize,
    pub cold: bool,
    /// New leases put one at a time in each incremental run.
    pub incremental: Option<usize>,
    /// Peers programmed before each incremental run.
    pub incremental_sizes: Vec<usize>,
    /// (updates per second, seconds)
    pub churn: Option<(usize, u64)>,
    /// Peers programmed before the churn run (the updates rewrite them).
    pub churn_peers: usize,
    pub footprint_window: Duration,
}

/// What happens at one number of peers, in this order: a cold start, the churn run, an incremental run (the
/// last, as it adds leases).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stop {
    peers: usize,
    cold: bool,
    churn: bool,
    incremental: bool,
}

impl ControlPlan {
    /// Every size the plan visits, ascending (etcd only ever grows), with what runs there.
    fn stops(&self) -> Vec<Stop> {
        let mut stops: std::collections::BTreeMap<usize, Stop> = std::collections::BTreeMap::new();
        fn at(stops: &mut std::collections::BTreeMap<usize, Stop>, peers: usize) -> &mut Stop {
            stops.entry(peers).or_insert(Stop { peers, ..Stop::default() })
        }
        if self.cold {
            for &n in &self.sizes {
                at(&mut stops, n).cold = true;
            }
        }
        if self.incremental.is_some() {
            for &n in &self.incremental_sizes {
                at(&mut stops, n).incremental = true;
            }
        }
        if self.churn.is_some() {
            at(&mut stops, self.churn_peers).churn = true;
        }
        stops.into_values().collect()
    }
}

pub struct ControlLab {
    lab: LabGuard,
    loader: LeaseLoader,
    watch: Option<KernelWatch>,
    peers: usize,
    prefix: String,
}

impl ControlLab {
    pub async fn up(weftd: PathBuf, state_root: PathBuf) -> Result<ControlLab> {
        Self::up_named(format!("b{}", std::process::id()), weftd, state_root).await
    }

    /// [`ControlLab::up`] under another lab name, for a benchmark that runs next to the control-plane lab's own.
    pub(super) async fn up_named(name: String, weftd: PathBuf, state_root: PathBuf) -> Result<ControlLab> {
        let spec = LabSpec {
            network: synthetic::NETWORK.to_string(),
            start_weftd: false,
            state_root,
            ..LabSpec::new(name, 1, weftd)
        };
        let lab = LabGuard::up(spec).context("building the control-plane lab")?;
        let prefix = weft::store::etcd::DEFAULT_PREFIX.to_string();
        let loader = LeaseLoader::connect(&lab.underlay_ns(), &prefix).await?;
        Ok(ControlLab { lab, loader, watch: None, peers: 0, prefix })
    }

    fn host_ns(&self) -> String {
        self.lab.host_ns(1)
    }

    pub(super) fn weftd_pid(&self) -> Result<u32> {
        self.lab.weftd_pid(1).ok_or_else(|| super::error::BenchError("weftd is not running".into()))
    }

    /// Adds synthetic peers until etcd holds `n`; returns how long writing took.
    pub(super) async fn grow_to(&mut self, n: usize) -> Result<Duration> {
        if n <= self.peers {
            return Ok(Duration::ZERO);
        }
        let took = self.loader.put_peers(self.peers..n).await?;
        self.peers = n;
        Ok(took)
    }

    /// Stops weftd, removes everything it programmed, starts it and times convergence to the current peers.
    /// Returns (time, polled instead of notified).
    pub(super) async fn cold_start(&mut self) -> Result<(Duration, bool)> {
        self.watch = None;
        let (took, watch) = cold_start_host(&self.lab, 1, self.peers).await?;
        let polled = watch.overrun;
        self.watch = Some(watch);
        Ok((took, polled))
    }

    pub(super) async fn exact_counts(&self) -> Result<bool> {
        let counts = counts_of(&observe(&self.host_ns()).await?);
        Ok(counts.routes == self.peers && counts.neighbours == self.peers && counts.fdb == self.peers)
    }

    fn footprint(&self, window: Duration) -> Result<Footprint> {
        let pid = self.weftd_pid()?;
        // Let the startup's last allocations and log writes finish before calling it idle.
        std::thread::sleep(Duration::from_millis(500));
        let idle_cpu_percent = procfs::cpu_percent(pid, window).unwrap_or(f64::NAN);
        Ok(Footprint {
            peers: self.peers,
            rss_mib: procfs::rss_mib(pid).unwrap_or(f64::NAN),
            peak_rss_mib: procfs::peak_rss_mib(pid).unwrap_or(f64::NAN),
            idle_cpu_percent,
            window_s: window.as_secs_f64(),
        })
    }

    async fn cold(&mut self, n: usize, reps: usize, window: Duration, progress: &mut Progress) -> Result<ColdResult> {
        let lease_write = self.grow_to(n).await?;
        let (mut weftd_ms, mut limit_ms, mut nexthop_ms, mut polled) = (Vec::new(), Vec::new(), Vec::new(), false);
        let reps = reps.max(1);
        for rep in 1..=reps {
            progress.step(&format!("cold {n} peers: run {rep}/{reps}"));
            // Interleaved, so that a burst of load elsewhere hits all three about equally.
            limit_ms.push(ms(kernel_limit::ip_batch(n, RouteForm::Plain)?));
            nexthop_ms.push(ms(kernel_limit::ip_batch(n, RouteForm::Nexthop)?));
            let (took, was_polled) = self.cold_start().await?;
            weftd_ms.push(ms(took));
            polled |= was_polled;
        }
        let verified = self.exact_counts().await?;
        let footprint = self.footprint(window)?;
        let (w, k) = (median(&weftd_ms).unwrap_or(f64::NAN), median(&limit_ms).unwrap_or(f64::NAN));
        let same = median(&nexthop_ms).unwrap_or(f64::NAN);
        progress.note(&format!(
            "  cold start, {n} peers: weftd {w:.0} ms, kernel limit {same:.0} ms ({:.2}x; flannel's routes {k:.0} ms, {:.2}x)",
            w / same,
            w / k
        ));
        Ok(ColdResult {
            peers: n,
            weftd_median_ms: w,
            kernel_limit_median_ms: k,
            ratio: w / k,
            nexthop_limit_median_ms: same,
            nexthop_ratio: w / same,
            nexthop_limit_ms: nexthop_ms,
            weftd_ms,
            kernel_limit_ms: limit_ms,
            lease_write_ms: ms(lease_write),
            polled,
            verified,
            footprint,
        })
    }

    /// Makes sure weftd runs with exactly `n` peers programmed, past its startup: the incremental and churn runs
    /// measure lease events in steady state.
    async fn ensure(&mut self, n: usize) -> Result<()> {
        if self.peers < n || !self.lab.weftd_running(1) || self.watch.is_none() {
            self.grow_to(n).await?;
            self.cold_start().await?;
            self.settle_after_startup().await?;
        }
        Ok(())
    }

    /// Waits until weftd says it is ready, and then a little: the kernel holds every route a moment before weftd
    /// has written its subnet file, handed freed memory back and started watching, and a lease put in that moment
    /// would time the end of the cold start (tens of milliseconds at 10,000 peers) as if it were a lease event.
    async fn settle_after_startup(&self) -> Result<()> {
        let log = self.lab.weftd_log(1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Only the last start's lines count: each start of weftd is announced in the log.
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last_start = text.rfind("starting weftd").unwrap_or(0);
            if text[last_start..].contains("weftd ready") {
                break;
            }
            if Instant::now() >= deadline {
                return fail(format!("weftd did not say it was ready within 30 s; see {}", log.display()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(SETTLE_AFTER_READY).await;
        Ok(())
    }

    async fn incremental(&mut self, count: usize, progress: &mut Progress) -> Result<IncrementalResult> {
        let peers_before = self.peers;
        let mut samples = Vec::with_capacity(count);
        let (mut acks, mut after_ack) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for k in 1..=count {
            if k % 20 == 1 {
                progress.step(&format!("incremental at {peers_before} peers: lease {k}/{count}"));
            }
            let i = self.peers;
            let (key, value) = synthetic::lease(&self.prefix, i, 1);
            let (sent, acked) = self.loader.put_one(key, value).await?;
            self.peers += 1;
            let watch = self.watch.as_mut().expect("ensure() started the watch");
            let Some(seen) = watch.wait_for_route(synthetic::route_dst(i), ROUTE_TIMEOUT).await? else {
                return fail(format!(
                    "the route for new peer {} did not appear within {ROUTE_TIMEOUT:?}",
                    synthetic::subnet(i)
                ));
            };
            samples.push(ms(seen.saturating_duration_since(sent)));
            acks.push(ms(acked.saturating_duration_since(sent)));
            after_ack.push(ms(seen.saturating_duration_since(acked)));
            // One lease at a time: the next put waits until this one is settled.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let result = IncrementalResult {
            peers_before,
            leases: count,
            p50_ms: percentile(&samples, 50.0).unwrap_or(f64::NAN),
            p99_ms: percentile(&samples, 99.0).unwrap_or(f64::NAN),
            max_ms: percentile(&samples, 100.0).unwrap_or(f64::NAN),
            samples_ms: samples,
            weftd_rss_mib: procfs::rss_mib(self.weftd_pid()?).unwrap_or(f64::NAN),
            weftd_peak_rss_mib: procfs::peak_rss_mib(self.weftd_pid()?).unwrap_or(f64::NAN),
            kernel_route_insert_ms: ms(kernel_limit::route_insert(peers_before, RouteForm::Nexthop)?),
            etcd_ack_p50_ms: percentile(&acks, 50.0).unwrap_or(f64::NAN),
            etcd_ack_p99_ms: percentile(&acks, 99.0).unwrap_or(f64::NAN),
            after_ack_p99_ms: percentile(&after_ack, 99.0).unwrap_or(f64::NAN),
        };
        progress.note(&format!(
            "  incremental at {peers_before} peers: p50 {:.2} ms, p99 {:.2} ms (the kernel's own route insert {:.2} ms)",
            result.p50_ms, result.p99_ms, result.kernel_route_insert_ms
        ));
        Ok(result)
    }

    async fn churn(&mut self, rate: usize, seconds: u64, progress: &mut Progress) -> Result<ChurnResult> {
        let peers = self.peers;
        let total = rate * seconds as usize;
        // Update k rewrites peer k % peers with a new generation, so every update changes its VTEP MAC.
        let mut generation = vec![1u8; peers];
        let mut updates = Vec::with_capacity(total);
        for k in 0..total {
            let i = k % peers;
            generation[i] = generation[i].wrapping_add(1).max(2);
            updates.push(synthetic::lease(&self.prefix, i, generation[i]));
        }
        let pid = self.weftd_pid()?;
        let cpu_before = procfs::cpu_time(pid);
        let paced = self.loader.put_paced(updates, rate).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let final_exact = loop {
            let state = observe(&self.host_ns()).await?;
            let exact = state.fdb.len() == peers
                && (0..peers).all(|i| {
                    let mac = synthetic::mac(i, generation[i]);
                    let ip = std::net::IpAddr::V4(synthetic::subnet(i).ip());
                    state.neighbours.get(&(DEVICE.into(), ip)).is_some_and(|n| n.mac == mac)
                        && state
                            .fdb
                            .get(&(DEVICE.into(), mac))
                            .is_some_and(|e| e.dst == std::net::IpAddr::V4(synthetic::public_ip(i)))
                });
            if exact || Instant::now() >= deadline {
                break exact;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let catch_up = paced.last_ack.elapsed();
        let cpu = match (cpu_before, procfs::cpu_time(pid)) {
            (Some(a), Some(b)) => {
                100.0 * (b.saturating_sub(a)).as_secs_f64() / (paced.elapsed + catch_up).as_secs_f64()
            }
            _ => f64::NAN,
        };
        let result = ChurnResult {
            peers,
            target_rate: rate,
            duration_s: seconds as f64,
            updates_sent: paced.sent,
            achieved_rate: paced.sent as f64 / paced.elapsed.as_secs_f64(),
            catch_up_ms: if final_exact { ms(catch_up) } else { f64::NAN },
            final_exact,
            weftd_cpu_percent: cpu,
            weftd_rss_mib: procfs::rss_mib(pid).unwrap_or(f64::NAN),
            weftd_peak_rss_mib: procfs::peak_rss_mib(pid).unwrap_or(f64::NAN),
        };
        progress.note(&format!(
            "  churn: {} updates at {:.0}/s, exact: {}, caught up {:.0} ms after the last put",
            result.updates_sent, result.achieved_rate, result.final_exact, result.catch_up_ms
        ));
        Ok(result)
    }
}

/// One cold start of weftd on `host`: stops it, deletes flannel.1 (which takes every neighbour, FDB entry and
/// route along), starts it again and returns the time from the start until the kernel holds `n` of each, with the
/// watch that saw it (its `overrun` says it fell back to polling dumps). Both stores' cold starts (etcd here, the
/// Kubernetes API in [`super::kube`]) are timed by this one measurement.
pub(super) async fn cold_start_host(lab: &Lab, host: usize, n: usize) -> Result<(Duration, KernelWatch)> {
    lab.stop_weftd(host).context("stopping weftd")?;
    let ns = lab.host_ns(host);
    if observe(&ns).await?.links.contains_key(DEVICE) {
        run_ip(&["-n", &ns, "link", "del", DEVICE])?;
    }
    let mut watch = KernelWatch::start(&ns)?;
    let started = Instant::now();
    lab.start_weftd(host).context("starting weftd")?;
    let Some(done) = watch.wait_until(|c| c.all_at_least(n), CONVERGE_TIMEOUT).await? else {
        return fail(format!(
            "weftd did not program {n} peers within {CONVERGE_TIMEOUT:?} (seen {:?}); see {}",
            watch.counts(),
            lab.weftd_log(host).display()
        ));
    };
    Ok((done.saturating_duration_since(started), watch))
}

/// Runs the plan, size by size in ascending order (see [`Stop`]).
pub async fn run(lab: &mut ControlLab, plan: &ControlPlan) -> Result<ControlResults> {
    let mut results = ControlResults::default();
    let stops = plan.stops();
    let steps = stops.iter().map(|s| usize::from(s.cold) + usize::from(s.churn) + usize::from(s.incremental)).sum();
    let mut progress = Progress::new("control plane", steps);
    for stop in stops {
        let n = stop.peers;
        if stop.cold {
            if n < lab.peers {
                progress.note(&format!("  cold start at {n} peers skipped: etcd already holds {}", lab.peers));
            } else {
                progress.step(&format!("cold {n} peers"));
                results.cold.push(lab.cold(n, plan.reps, plan.footprint_window, &mut progress).await?);
            }
            progress.advance("");
        }
        if let (true, Some((rate, seconds))) = (stop.churn, plan.churn) {
            progress.step(&format!("growing etcd to {n} leases for churn"));
            lab.ensure(n).await?;
            progress.step(&format!("churn at {} peers, {rate}/s for {seconds} s", lab.peers));
            results.churn = Some(lab.churn(rate, seconds, &mut progress).await?);
            progress.advance("");
        }
        if let (true, Some(count)) = (stop.incremental, plan.incremental) {
            progress.step(&format!("growing etcd to {n} leases for incremental"));
            lab.ensure(n).await?;
            results.incremental.push(lab.incremental(count, &mut progress).await?);
            progress.advance("");
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ControlPlan {
        ControlPlan {
            sizes: vec![10_000, 100, 5000, 1000],
            reps: 1,
            cold: true,
            incremental: Some(200),
            incremental_sizes: vec![1000, 10_000, 20_000],
            churn: Some((1000, 10)),
            churn_peers: 10_000,
            footprint_window: Duration::from_secs(1),
        }
    }

    #[test]
    fn stops_ascend_and_merge_what_runs_at_each_size() {
        let stop = |peers, cold, churn, incremental| Stop { peers, cold, churn, incremental };
        assert_eq!(
            plan().stops(),
            [
                stop(100, true, false, false),
                stop(1000, true, false, true),
                stop(5000, true, false, false),
                stop(10_000, true, true, true),
                stop(20_000, false, false, true),
            ]
        );
    }

    #[test]
    fn unselected_benchmarks_add_no_stops() {
        let only_cold = ControlPlan { incremental: None, churn: None, ..plan() };
        assert!(only_cold.stops().iter().all(|s| s.cold && !s.churn && !s.incremental));
        let no_cold = ControlPlan { cold: false, churn: None, ..plan() };
        assert_eq!(no_cold.stops().iter().map(|s| s.peers).collect::<Vec<_>>(), [1000, 10_000, 20_000]);
    }

    #[test]
    fn incremental_results_are_found_by_size() {
        let run = |peers_before| IncrementalResult {
            peers_before,
            leases: 1,
            p50_ms: 1.0,
            p99_ms: 1.0,
            max_ms: 1.0,
            samples_ms: vec![1.0],
            weftd_rss_mib: 1.0,
            weftd_peak_rss_mib: 1.0,
            kernel_route_insert_ms: 0.1,
            etcd_ack_p50_ms: 0.5,
            etcd_ack_p99_ms: 0.6,
            after_ack_p99_ms: 0.5,
        };
        let results = ControlResults { incremental: vec![run(1000), run(10_200)], ..ControlResults::default() };
        assert_eq!(results.incremental_at(1000).map(|i| i.peers_before), Some(1000));
        assert_eq!(results.incremental_at(10_000).map(|i| i.peers_before), Some(10_200));
        assert!(results.incremental_at(20_000).is_none());
    }
}
