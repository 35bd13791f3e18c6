//! Data-plane throughput: iperf3 TCP between two hosts of a weft lab (the underlay), container to container in
//! two-host labs of weft's VXLAN, host-gw and udp backends (the udp backend five times: its default, every
//! technique off, and each technique off alone, to see what each contributes), and between the containers of a
//! hand-built kernel VXLAN setup with the same topology, MTU and device options (the physical limit for VXLAN).
//! Runs are interleaved and repeated; idle CPU is recorded before each run and runs on a busy machine are flagged.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::{fail, Context, Result};
use super::netns::{run_ip, ScratchNamespaces};
use super::stats::median;
use super::{procfs, LabGuard};
use crate::lab::{Lab, LabSpec};

/// Idle CPU below this before a run, or an iperf3 client below `STARVED_CLIENT_CPU`, flags the run as busy.
const BUSY_IDLE_PERCENT: f64 = 85.0;
const STARVED_CLIENT_CPU: f64 = 85.0;
const PORT: &str = "5201";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// Host to host over the lab's veth + bridge underlay.
    Underlay,
    /// Container to container through weftd's VXLAN.
    WeftVxlan,
    /// Container to container through weftd's host-gw routes (no encapsulation: the underlay's ceiling).
    WeftHostGw,
    /// Container to container through a hand-built kernel VXLAN setup.
    KernelVxlan,
    /// Container to container through weftd's udp backend (userspace, offloads on: the default).
    WeftUdp,
    /// The same with `--udp-offloads=false`: one packet per system call, flanneld's udp data path.
    WeftUdpPlain,
    /// The udp backend with every technique but TUN offloads (`--udp-tun-offloads=false`).
    WeftUdpNoTun,
    /// ... but UDP GSO (`--udp-gso=false`).
    WeftUdpNoGso,
    /// ... but UDP GRO (`--udp-gro=false`).
    WeftUdpNoGro,
}

impl Path {
    /// Every path, in the order of the table.
    pub const ALL: [Path; 9] = [
        Path::Underlay,
        Path::WeftHostGw,
        Path::WeftVxlan,
        Path::KernelVxlan,
        Path::WeftUdp,
        Path::WeftUdpPlain,
        Path::WeftUdpNoTun,
        Path::WeftUdpNoGso,
        Path::WeftUdpNoGro,
    ];

    /// The udp backend's breakdown (`weftctl bench --only udp`): each technique turned off alone, all on, all off,
    /// against kernel VXLAN and the underlay.
    pub const UDP_BREAKDOWN: [Path; 7] = [
        Path::Underlay,
        Path::KernelVxlan,
        Path::WeftUdp,
        Path::WeftUdpPlain,
        Path::WeftUdpNoTun,
        Path::WeftUdpNoGso,
        Path::WeftUdpNoGro,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Underlay => "underlay host-host",
            Path::WeftVxlan => "weft vxlan c-c",
            Path::WeftHostGw => "weft host-gw c-c",
            Path::KernelVxlan => "hand-built vxlan c-c",
            Path::WeftUdp => "weft udp c-c",
            Path::WeftUdpPlain => "weft udp no offloads",
            Path::WeftUdpNoTun => "weft udp no TUN offloads",
            Path::WeftUdpNoGso => "weft udp no GSO",
            Path::WeftUdpNoGro => "weft udp no GRO",
        }
    }

    /// The weftd lab a container-to-container path runs in: its name prefix, backend and extra weftd flags. None
    /// for the underlay (any lab's hosts) and the hand-built VXLAN.
    fn weft_lab(self) -> Option<(&'static str, &'static str, &'static [&'static str])> {
        use weft_backends::{hostgw, udp};
        match self {
            Path::Underlay | Path::KernelVxlan => None,
            Path::WeftVxlan => Some(("d", weft_backends::vxlan::BACKEND_TYPE, &[])),
            Path::WeftHostGw => Some(("g", hostgw::BACKEND_TYPE, &[])),
            Path::WeftUdp => Some(("u", udp::BACKEND_TYPE, &[])),
            Path::WeftUdpPlain => Some(("p", udp::BACKEND_TYPE, &["--udp-offloads=false"])),
            Path::WeftUdpNoTun => Some(("t", udp::BACKEND_TYPE, &["--udp-tun-offloads=false"])),
            Path::WeftUdpNoGso => Some(("s", udp::BACKEND_TYPE, &["--udp-gso=false"])),
            Path::WeftUdpNoGro => Some(("r", udp::BACKEND_TYPE, &["--udp-gro=false"])),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub path: Path,
    pub streams: usize,
    pub rep: usize,
    pub gbps: f64,
    pub client_cpu_percent: f64,
    pub idle_before_percent: f64,
    pub busy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub path: Path,
    pub streams: usize,
    pub median_gbps: f64,
    /// The median of the runs not flagged busy (NaN when all were).
    pub quiet_median_gbps: f64,
    pub runs: usize,
    pub busy_runs: usize,
    pub vs_underlay: f64,
    pub vs_kernel_vxlan: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataplaneResults {
    pub seconds: u64,
    pub reps: usize,
    pub runs: Vec<Run>,
    pub summary: Vec<Summary>,
    /// weft vxlan / hand-built vxlan, single stream (the target is >= 0.95).
    pub weft_vs_kernel_p1: f64,
    pub weft_vs_kernel_p2: f64,
    /// The same ratios over quiet runs only (NaN when a path had none).
    pub quiet_weft_vs_kernel_p1: f64,
    pub quiet_weft_vs_kernel_p2: f64,
    /// weft udp / hand-built (kernel) vxlan (the target is >= 0.5 single stream).
    pub udp_vs_kernel_p1: f64,
    pub udp_vs_kernel_p2: f64,
}

impl DataplaneResults {
    /// The paths measured, in the order of the table.
    pub fn paths(&self) -> Vec<Path> {
        Path::ALL.into_iter().filter(|p| self.summary.iter().any(|s| s.path == *p)).collect()
    }
}

/// Where one path's server and client run.
pub(super) struct Endpoints {
    pub(super) server_ns: String,
    pub(super) server_ip: Ipv4Addr,
    pub(super) client_ns: String,
}

/// Measures `paths` (a subset of [`Path::ALL`]; the underlay and hand-built VXLAN are the baselines of the
/// ratios). Each weft path is its own two-host lab, all up at once so the runs can be interleaved.
pub fn run(
    weftd: std::path::PathBuf,
    state_root: std::path::PathBuf,
    reps: usize,
    seconds: u64,
    paths: &[Path],
) -> Result<DataplaneResults> {
    let paths: Vec<Path> = Path::ALL.into_iter().filter(|p| paths.contains(p)).collect();
    let mut labs: Vec<(Path, LabGuard)> = Vec::new();
    for &path in &paths {
        if let Some((prefix, backend, args)) = path.weft_lab() {
            labs.push((path, weft_lab(&weftd, &state_root, prefix, backend, args)?));
        }
    }
    // The underlay is host to host in any of the labs (all have the same topology).
    if paths.contains(&Path::Underlay) && labs.is_empty() {
        labs.push((Path::WeftVxlan, weft_lab(&weftd, &state_root, "d", weft_backends::vxlan::BACKEND_TYPE, &[])?));
    }
    let mut scratch = ScratchNamespaces::new();
    let mut measured = Vec::new();
    for &path in &paths {
        let ends = match path {
            Path::Underlay => {
                let lab = &labs[0].1;
                Endpoints { server_ns: lab.host_ns(2), server_ip: lab.host_ip(2), client_ns: lab.host_ns(1) }
            }
            Path::KernelVxlan => build_kernel_vxlan(&mut scratch)?,
            _ => {
                let (_, lab) = labs.iter().find(|(p, _)| *p == path).expect("every weft path has its lab");
                container_ends(lab)?
            }
        };
        measured.push((path, ends));
    }
    let paths = measured;

    let mut runs = Vec::new();
    let mut progress = weft::term::Progress::new("data plane", reps.max(1) * 2 * paths.len());
    for rep in 0..reps.max(1) {
        for streams in [1, 2] {
            for (path, ends) in &paths {
                progress.step(&format!("iperf3 over {} -P {streams} rep {rep}", path.label()));
                let run = iperf(ends, streams, seconds).context(format!("iperf3 over {}", path.label()))?;
                progress.advance("");
                let busy = run.idle_before < BUSY_IDLE_PERCENT || run.client_cpu < STARVED_CLIENT_CPU;
                progress.note(&format!(
                    "  {:<24} -P {streams} rep {rep}: {:6.2} Gbit/s (idle before {:.0}%, client cpu {:.0}%){}",
                    path.label(),
                    run.gbps,
                    run.idle_before,
                    run.client_cpu,
                    if busy { " BUSY" } else { "" }
                ));
                runs.push(Run {
                    path: *path,
                    streams,
                    rep,
                    gbps: run.gbps,
                    client_cpu_percent: run.client_cpu,
                    idle_before_percent: run.idle_before,
                    busy,
                });
            }
        }
    }
    let summary = summarize(&runs);
    let ratio = |streams, quiet: bool| {
        let get = |p| {
            summary.iter().find(|s: &&Summary| s.path == p && s.streams == streams).map_or(f64::NAN, |s| {
                if quiet {
                    s.quiet_median_gbps
                } else {
                    s.median_gbps
                }
            })
        };
        (get(Path::WeftVxlan) / get(Path::KernelVxlan), get(Path::WeftUdp) / get(Path::KernelVxlan))
    };
    Ok(DataplaneResults {
        seconds,
        reps,
        weft_vs_kernel_p1: ratio(1, false).0,
        weft_vs_kernel_p2: ratio(2, false).0,
        quiet_weft_vs_kernel_p1: ratio(1, true).0,
        quiet_weft_vs_kernel_p2: ratio(2, true).0,
        udp_vs_kernel_p1: ratio(1, false).1,
        udp_vs_kernel_p2: ratio(2, false).1,
        runs,
        summary,
    })
}

/// A two-host lab with `backend` and extra weftd flags, its containers able to reach each other.
fn weft_lab(
    weftd: &std::path::Path,
    state_root: &std::path::Path,
    prefix: &str,
    backend: &str,
    args: &[&str],
) -> Result<LabGuard> {
    let spec = LabSpec {
        backend: backend.to_string(),
        state_root: state_root.to_path_buf(),
        extra_weftd_args: args.iter().map(|a| a.to_string()).collect(),
        ..LabSpec::new(format!("{prefix}{}", std::process::id()), 2, weftd)
    };
    let lab = LabGuard::up(spec).context(format!("building the {backend} {args:?} data-plane lab"))?;
    let c2 =
        lab.container_ip(2).ok_or_else(|| super::error::BenchError(format!("{backend} container 2 has no address")))?;
    crate::lab::wait_for(|| lab.ping(1, c2), Duration::from_secs(10)).then_some(()).ok_or_else(|| {
        super::error::BenchError(format!("{backend} {args:?} lab containers cannot reach each other"))
    })?;
    Ok(lab)
}

fn container_ends(lab: &Lab) -> Result<Endpoints> {
    let server_ip =
        lab.container_ip(2).ok_or_else(|| super::error::BenchError("lab container 2 has no address".into()))?;
    Ok(Endpoints { server_ns: lab.container_ns(2), server_ip, client_ns: lab.container_ns(1) })
}

fn summarize(runs: &[Run]) -> Vec<Summary> {
    let med = |path: Path, streams: usize| {
        let v: Vec<f64> = runs.iter().filter(|r| r.path == path && r.streams == streams).map(|r| r.gbps).collect();
        median(&v).unwrap_or(f64::NAN)
    };
    let mut out = Vec::new();
    for streams in [1, 2] {
        for path in Path::ALL.into_iter().filter(|p| runs.iter().any(|r| r.path == *p)) {
            let of_path: Vec<&Run> = runs.iter().filter(|r| r.path == path && r.streams == streams).collect();
            let m = med(path, streams);
            let quiet: Vec<f64> = of_path.iter().filter(|r| !r.busy).map(|r| r.gbps).collect();
            out.push(Summary {
                path,
                streams,
                median_gbps: m,
                quiet_median_gbps: median(&quiet).unwrap_or(f64::NAN),
                runs: of_path.len(),
                busy_runs: of_path.iter().filter(|r| r.busy).count(),
                vs_underlay: m / med(Path::Underlay, streams),
                vs_kernel_vxlan: m / med(Path::KernelVxlan, streams),
            });
        }
    }
    out
}

pub(super) struct Measured {
    pub(super) gbps: f64,
    pub(super) client_cpu: f64,
    pub(super) idle_before: f64,
}

/// Kills a server we started if it is still there (it normally exits by itself after one test, `-1`).
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

pub(super) fn iperf(ends: &Endpoints, streams: usize, seconds: u64) -> Result<Measured> {
    let idle_before = procfs::idle_percent(Duration::from_secs(1)).unwrap_or(f64::NAN);
    let start_server = || -> Result<ServerGuard> {
        let server = Command::new("ip")
            .args(["netns", "exec", &ends.server_ns, "iperf3", "-s", "-1", "-p", PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?;
        Ok(ServerGuard(server))
    };
    let mut server = start_server()?;
    // The server needs a moment to listen; the client retries its connection meanwhile.
    let target = ends.server_ip.to_string();
    let (secs, p) = (seconds.to_string(), streams.to_string());
    let started = Instant::now();
    let out = loop {
        std::thread::sleep(Duration::from_millis(200));
        // A one-off server (`-1`) exits after a failed attempt too (a client that connected and then timed out on
        // a loaded machine), and every retry would then be refused: start another.
        if !matches!(server.0.try_wait(), Ok(None)) {
            server = start_server()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = Command::new("ip")
            .args(["netns", "exec", &ends.client_ns, "iperf3", "-c", &target, "-p", PORT, "-t", &secs, "-P", &p, "-J"])
            .stdin(Stdio::null())
            .output()
            .context("running the iperf3 client")?;
        // Generous: starting two processes in namespaces can take seconds on a loaded 2-core machine.
        if out.status.success() || started.elapsed() > Duration::from_secs(20) {
            break out;
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading iperf3 -J output")?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        return fail(format!("iperf3: {error}"));
    }
    let bps = json.pointer("/end/sum_received/bits_per_second").and_then(|v| v.as_f64());
    let cpu = json.pointer("/end/cpu_utilization_percent/host_total").and_then(|v| v.as_f64());
    let Some(bps) = bps else { return fail("iperf3 output has no end.sum_received.bits_per_second") };
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(server.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    Ok(Measured { gbps: bps / 1e9, client_cpu: cpu.unwrap_or(f64::NAN), idle_before })
}

/// Two hosts with flannel-style VXLAN built by hand, exactly as the lab builds its topology and weftd its
/// device: underlay bridge, host veths, flannel.1 (VNI 1, port 8472, nolearning, MTU 1450), cni0 and a container
/// per host with MTU 1450, one permanent neighbour, FDB entry and onlink route per remote host.
pub(super) fn build_kernel_vxlan(scratch: &mut ScratchNamespaces) -> Result<Endpoints> {
    let underlay = scratch.create("u")?;
    run_ip(&["-n", &underlay, "link", "add", "br0", "type", "bridge"])?;
    run_ip(&["-n", &underlay, "link", "set", "br0", "up"])?;
    let mac = |n: usize| format!("0e:bb:00:00:00:{n:02x}");
    let mut hosts = Vec::new();
    for n in 1..=2usize {
        let host = scratch.create(&format!("h{n}"))?;
        let container = scratch.create(&format!("c{n}"))?;
        let veth = format!("veth{n}");
        run_ip(&["link", "add", "eth0", "netns", &host, "type", "veth", "peer", "name", &veth, "netns", &underlay])?;
        run_ip(&["-n", &underlay, "link", "set", &veth, "master", "br0", "up"])?;
        let sysctl = Command::new("ip")
            .args(["netns", "exec", &host, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .status()
            .context("sysctl")?;
        if !sysctl.success() {
            return fail(format!("enabling forwarding in {host}"));
        }
        let h = |args: &str| run_ip(&[&["-n", host.as_str()], args.split(' ').collect::<Vec<_>>().as_slice()].concat());
        h(&format!("addr add 198.18.0.{n}/24 dev eth0"))?;
        h("link set eth0 up")?;
        h(&format!(
            "link add flannel.1 address {} type vxlan id 1 local 198.18.0.{n} dev eth0 dstport 8472 nolearning",
            mac(n)
        ))?;
        h("link set flannel.1 mtu 1450")?;
        h(&format!("addr add 10.244.{n}.0/32 dev flannel.1"))?;
        h("link set flannel.1 up")?;
        h("link add cni0 type bridge")?;
        h("link set cni0 mtu 1450")?;
        h(&format!("addr add 10.244.{n}.1/24 dev cni0"))?;
        h("link set cni0 up")?;
        let peer = format!("veth-c{n}");
        run_ip(&["link", "add", "eth0", "netns", &container, "type", "veth", "peer", "name", &peer, "netns", &host])?;
        h(&format!("link set {peer} mtu 1450 master cni0 up"))?;
        let c = |args: &str| {
            run_ip(&[&["-n", container.as_str()], args.split(' ').collect::<Vec<_>>().as_slice()].concat())
        };
        c("link set eth0 mtu 1450")?;
        c(&format!("addr add 10.244.{n}.2/24 dev eth0"))?;
        c("link set eth0 up")?;
        c(&format!("route add default via 10.244.{n}.1"))?;
        hosts.push((host, container));
    }
    for (n, (host, _)) in hosts.iter().enumerate().map(|(i, h)| (i + 1, h)) {
        let m = 3 - n;
        let h = |args: &str| run_ip(&[&["-n", host.as_str()], args.split(' ').collect::<Vec<_>>().as_slice()].concat());
        h(&format!("neigh replace 10.244.{m}.0 lladdr {} dev flannel.1 nud permanent", mac(m)))?;
        let fdb = Command::new("bridge")
            .args([
                "-n",
                host,
                "fdb",
                "replace",
                &mac(m),
                "dev",
                "flannel.1",
                "dst",
                &format!("198.18.0.{m}"),
                "self",
                "permanent",
            ])
            .status()
            .context("bridge fdb")?;
        if !fdb.success() {
            return fail(format!("adding the FDB entry in {host}"));
        }
        h(&format!("route replace 10.244.{m}.0/24 via 10.244.{m}.0 dev flannel.1 onlink"))?;
    }
    Ok(Endpoints {
        server_ns: hosts[1].1.clone(),
        server_ip: Ipv4Addr::new(10, 244, 2, 2),
        client_ns: hosts[0].1.clone(),
    })
}
