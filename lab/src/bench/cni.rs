//! CNI ADD/DEL latency: weft's plugin against the plugins flannel delegates to (containernetworking-plugins bridge +
//! host-local, Debian's /usr/lib/cni), in the same run, on the same kind of setup.
//!
//! Each plugin gets its own host netns (`wcb<pid>-hw`, `wcb<pid>-hr`) and a fresh pod netns per ADD. The plugins
//! are run the way a runtime runs them (CNI_* variables, the config on stdin) from a thread of ours that entered
//! the host netns, so the time measured is the plugin's process from spawn to exit, without `ip netns exec`.
//! ADDs are interleaved (weft, reference, reference, weft, ...), then the DELs likewise; we report medians.
//! Everything is created under our own names and removed at the end, also on errors.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

/// Fewer than this many samples per operation is refused: a median of a handful says little.
pub const MIN_ITERATIONS: usize = 20;
/// Idle CPU below this before the run marks the numbers as taken on a busy machine.
pub const BUSY_IDLE_PERCENT: f64 = 80.0;
/// weft's ADD median must be at most this fraction of the reference's.
pub const TARGET_ADD_RATIO: f64 = 0.25;

const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

#[derive(Debug, Clone)]
pub struct CniBenchOptions {
    /// weft's plugin binary.
    pub weft_plugin: PathBuf,
    /// Where the reference `bridge` and `host-local` live.
    pub reference_dir: PathBuf,
    /// ADDs (and DELs) per plugin; at least [`MIN_ITERATIONS`].
    pub iterations: usize,
}

impl CniBenchOptions {
    pub fn new(weft_plugin: impl Into<PathBuf>) -> CniBenchOptions {
        CniBenchOptions {
            weft_plugin: weft_plugin.into(),
            reference_dir: PathBuf::from("/usr/lib/cni"),
            iterations: 30,
        }
    }
}

/// Samples of one plugin, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
}

impl Timings {
    pub fn add_median_ms(&self) -> f64 {
        median(&self.add_ms)
    }

    pub fn del_median_ms(&self) -> f64 {
        median(&self.del_ms)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CniBenchReport {
    pub iterations: usize,
    /// Machine idle CPU (%) over one second before the run.
    pub idle_before_percent: Option<f64>,
    pub busy: bool,
    pub weft: Timings,
    /// bridge + host-local.
    pub reference: Timings,
}

impl CniBenchReport {
    /// weft's ADD median over the reference's (lower is better; the target is at most [`TARGET_ADD_RATIO`]).
    pub fn add_ratio(&self) -> f64 {
        self.weft.add_median_ms() / self.reference.add_median_ms()
    }

    pub fn del_ratio(&self) -> f64 {
        self.weft.del_median_ms() / self.reference.del_median_ms()
    }

    pub fn target_met(&self) -> bool {
        self.add_ratio() <= TARGET_ADD_RATIO
    }

    /// (name, value) rows for the benchmark suite's table.
    pub fn rows(&self) -> Vec<(String, String)> {
        let busy = if self.busy { " (busy machine)" } else { "" };
        vec![
            (
                "CNI ADD median: weft / bridge+host-local".into(),
                format!(
                    "{:.2} ms / {:.2} ms = {:.2}x{busy}",
                    self.weft.add_median_ms(),
                    self.reference.add_median_ms(),
                    self.add_ratio()
                ),
            ),
            (
                "CNI DEL median: weft / bridge+host-local".into(),
                format!(
                    "{:.2} ms / {:.2} ms = {:.2}x{busy}",
                    self.weft.del_median_ms(),
                    self.reference.del_median_ms(),
                    self.del_ratio()
                ),
            ),
        ]
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["add_ratio"] = json!(self.add_ratio());
        v["del_ratio"] = json!(self.del_ratio());
        v["target_add_ratio"] = json!(TARGET_ADD_RATIO);
        v
    }
}

impl fmt::Display for CniBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.idle_before_percent.map_or("unknown".to_string(), |p| format!("{p:.0}%"));
        writeln!(
            f,
            "CNI ADD/DEL, {} of each per plugin, medians (idle CPU before: {idle}{})",
            self.iterations,
            if self.busy { ", BUSY: numbers are unreliable" } else { "" }
        )?;
        writeln!(f, "{:<28} {:>10} {:>10} {:>10} {:>10}", "plugin", "ADD ms", "ADD p90", "DEL ms", "DEL p90")?;
        for (name, t) in [("weft", &self.weft), ("bridge + host-local", &self.reference)] {
            writeln!(
                f,
                "{name:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                t.add_median_ms(),
                percentile(&t.add_ms, 0.9),
                t.del_median_ms(),
                percentile(&t.del_ms, 0.9)
            )?;
        }
        write!(
            f,
            "ratio weft/reference: ADD {:.2}x, DEL {:.2}x (target: ADD at most {TARGET_ADD_RATIO}x: {})",
            self.add_ratio(),
            self.del_ratio(),
            if self.target_met() { "met" } else { "NOT met" }
        )
    }
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// Nearest-rank percentile; NaN for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if p == 0.5 && sorted.len() % 2 == 0 {
        let mid = sorted.len() / 2;
        return (sorted[mid - 1] + sorted[mid]) / 2.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the comparison. Needs root.
pub fn run(opts: &CniBenchOptions) -> Result<CniBenchReport, String> {
    if opts.iterations < MIN_ITERATIONS {
        return Err(format!("at least {MIN_ITERATIONS} iterations are needed, got {}", opts.iterations));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the CNI benchmark creates network namespaces and must run as root".into());
    }
    if !opts.weft_plugin.is_file() {
        return Err(format!(
            "weft plugin {} does not exist (cargo build --release --bin weft)",
            opts.weft_plugin.display()
        ));
    }
    for plugin in ["bridge", "host-local"] {
        if !opts.reference_dir.join(plugin).is_file() {
            return Err(format!(
                "reference plugin {} is missing (apt-get install containernetworking-plugins, or scripts/deps)",
                opts.reference_dir.join(plugin).display()
            ));
        }
    }
    let idle_before_percent = idle_percent(Duration::from_secs(1));
    let scratch = Scratch::new()?;
    let plugins = [Plugin::weft(opts, &scratch)?, Plugin::reference(opts, &scratch)?];
    let n = opts.iterations;
    let mut samples =
        [Timings { add_ms: Vec::new(), del_ms: Vec::new() }, Timings { add_ms: Vec::new(), del_ms: Vec::new() }];
    // One pod netns per ADD and plugin: pods[i][p].
    let mut pods: Vec<[String; 2]> = Vec::with_capacity(n);
    for i in 0..n {
        pods.push([
            scratch.namespace(&format!("{}{i}", plugins[0].tag))?,
            scratch.namespace(&format!("{}{i}", plugins[1].tag))?,
        ]);
    }
    // Alternate which plugin goes first, so neither always runs on a cache warmed by the other.
    let order = |i: usize| if i % 2 == 0 { [0, 1] } else { [1, 0] };
    for command in ["ADD", "DEL"] {
        for (i, pair) in pods.iter().enumerate() {
            for p in order(i) {
                let ms = plugins[p].time(command, i, &pair[p])?;
                let series = if command == "ADD" { &mut samples[p].add_ms } else { &mut samples[p].del_ms };
                series.push(ms);
            }
        }
    }
    let [weft, reference] = samples;
    Ok(CniBenchReport {
        iterations: n,
        busy: idle_before_percent.is_some_and(|p| p < BUSY_IDLE_PERCENT),
        idle_before_percent,
        weft,
        reference,
    })
}

/// One plugin under test: its binary, CNI_PATH, config and host netns.
struct Plugin {
    tag: &'static str,
    binary: PathBuf,
    cni_path: String,
    config: String,
    host_netns: PathBuf,
}

impl Plugin {
    fn weft(opts: &CniBenchOptions, scratch: &Scratch) -> Result<Plugin, String> {
        let host = scratch.host("hw")?;
        let subnet_file = scratch.dir.join("subnet.env");
        std::fs::write(&subnet_file, SUBNET_ENV).map_err(|e| format!("writing {}: {e}", subnet_file.display()))?;
        let config = json!({
            "cniVersion": "1.0.0", "name": "wcb", "type": "weft", "subnetFile": subnet_file, "ipMasq": false,
            "ipam": {"dataDir": scratch.dir.join("ipam-weft")},
        });
        let dir = opts.weft_plugin.parent().unwrap_or(Path::new("/")).display().to_string();
        Ok(Plugin {
            tag: "w",
            binary: opts.weft_plugin.clone(),
            cni_path: dir,
            config: config.to_string(),
            host_netns: host,
        })
    }

    /// What flannel hands the bridge plugin: the testbed's reference config (bridge cni0 as gateway, MTU 1450,
    /// host-local on the same subnet with a default route).
    fn reference(opts: &CniBenchOptions, scratch: &Scratch) -> Result<Plugin, String> {
        let host = scratch.host("hr")?;
        let config = json!({
            "cniVersion": "1.0.0", "name": "wcb", "type": "bridge", "bridge": "cni0", "isGateway": true,
            "ipMasq": false, "mtu": 1450,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": scratch.dir.join("ipam-ref")},
        });
        Ok(Plugin {
            tag: "r",
            binary: opts.reference_dir.join("bridge"),
            cni_path: opts.reference_dir.display().to_string(),
            config: config.to_string(),
            host_netns: host,
        })
    }

    /// Runs the plugin once from inside its host netns and returns the wall time in ms.
    fn time(&self, command: &str, i: usize, pod: &str) -> Result<f64, String> {
        let netns = File::open(&self.host_netns).map_err(|e| format!("opening {}: {e}", self.host_netns.display()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("wcb{i}"))
            .env("CNI_NETNS", format!("/run/netns/{pod}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let config = self.config.clone();
        let binary = self.binary.display().to_string();
        let command = command.to_string();
        // A short-lived thread enters the host netns and spawns from there (a child inherits its creator thread's
        // netns), so no other code ever runs in that netns by accident.
        let mut timed = move || -> Result<f64, String> {
            let started = Instant::now();
            let mut child = cmd.spawn().map_err(|e| format!("running {binary}: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(config.as_bytes());
            }
            let out = child.wait_with_output().map_err(|e| format!("waiting for {binary}: {e}"))?;
            let elapsed = started.elapsed();
            if !out.status.success() {
                return Err(format!(
                    "{binary} {command} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(elapsed.as_secs_f64() * 1000.0)
        };
        weft_netlink::netns::in_netns(&netns, move || Ok(timed()))
            .map_err(|e| format!("entering the host netns: {e}"))?
    }
}

/// Namespaces and files of this run, all removed on drop.
struct Scratch {
    prefix: String,
    dir: PathBuf,
    namespaces: std::cell::RefCell<Vec<String>>,
}

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let prefix = format!("wcb{}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Scratch { prefix, dir, namespaces: Default::default() })
    }

    fn namespace(&self, suffix: &str) -> Result<String, String> {
        let ns = format!("{}-{suffix}", self.prefix);
        let out = Command::new("ip").args(["netns", "add", &ns]).output().map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            return Err(format!("ip netns add {ns}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        self.namespaces.borrow_mut().push(ns.clone());
        Ok(ns)
    }

    /// A host netns with loopback up; returns its path.
    fn host(&self, suffix: &str) -> Result<PathBuf, String> {
        let ns = self.namespace(suffix)?;
        let out =
            Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("ip -n {ns} link set lo up: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(PathBuf::from("/run/netns").join(ns))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for ns in self.namespaces.borrow().iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Idle CPU (%) over `window`, from /proc/stat.
fn idle_percent(window: Duration) -> Option<f64> {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        Some((idle, fields.iter().sum()))
    }
    let (idle0, total0) = sample()?;
    std::thread::sleep(window);
    let (idle1, total1) = sample()?;
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(100.0 * (idle1 - idle0) as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9), 9.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn report_rows_and_table() {
        let t = |add: f64, del: f64| Timings { add_ms: vec![add; 20], del_ms: vec![del; 20] };
        let report = CniBenchReport {
            iterations: 20,
            idle_before_percent: Some(97.0),
            busy: false,
            weft: t(2.0, 3.0),
            reference: t(10.0, 20.0),
        };
        assert!((report.add_ratio() - 0.2).abs() < 1e-9);
        assert!(report.target_met());
        assert_eq!(report.rows()[0].1, "2.00 ms / 10.00 ms = 0.20x");
        let table = report.to_string();
        assert!(table.contains("ADD 0.20x, DEL 0.15x"), "{table}");
        assert!(table.contains("met"), "{table}");
        assert_eq!(report.to_json()["add_ratio"], 0.2);
        assert!(CniBenchOptions { iterations: 5, ..CniBenchOptions::new("/x") }.iterations < MIN_ITERATIONS);
    }
}
