//! Encrypted data planes, same run: iperf3 TCP through weft's wireguard backend (container to container in a
//! two-host lab), through Debian's `wireguard-go` (host to host in scratch namespaces with the same underlay:
//! bridge, veths, MTU 1420 tunnel), and through the hand-built kernel VXLAN of the data-plane section
//! (unencrypted: the ceiling). Single stream and two streams, interleaved and repeated; medians and ratios.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use super::dataplane::{build_kernel_vxlan, iperf, Endpoints};
use super::error::{fail, Context, Result};
use super::netns::{run_ip, ScratchNamespaces};
use super::stats::median;
use super::{ExtraRows, LabGuard};
use crate::lab::LabSpec;
use weft_backends::wireguard::keys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WgPath {
    WeftWireguard,
    WireguardGo,
    KernelVxlan,
}

impl WgPath {
    pub const ALL: [WgPath; 3] = [WgPath::WeftWireguard, WgPath::WireguardGo, WgPath::KernelVxlan];

    pub fn label(self) -> &'static str {
        match self {
            WgPath::WeftWireguard => "weft wireguard c-c",
            WgPath::WireguardGo => "wireguard-go h-h",
            WgPath::KernelVxlan => "kernel vxlan c-c",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WgRun {
    pub path: WgPath,
    pub streams: usize,
    pub rep: usize,
    pub gbps: f64,
    pub idle_before_percent: f64,
}

/// `wireguard-go` processes started here, ended by pid (SIGTERM, then SIGKILL) with their control sockets.
struct WireguardGoProcs(Vec<(Child, String)>);

impl Drop for WireguardGoProcs {
    fn drop(&mut self) {
        for (child, device) in &mut self.0 {
            // SAFETY: kill(2) on the pid of a child this bench started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{device}.sock"));
        }
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().context(format!("{args:?}"))?;
    if !out.status.success() {
        return fail(format!("{args:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Two hosts on a bridge, each running wireguard-go configured with `wg` for the other; the tunnel carries
/// 10.245.0.0/24 with MTU 1420 (underlay 1500 − 80, as the wireguard backend).
fn build_wireguard_go(
    scratch: &mut ScratchNamespaces,
    dir: &std::path::Path,
    procs: &mut WireguardGoProcs,
) -> Result<Endpoints> {
    let underlay = scratch.create("gu")?;
    run_ip(&["-n", &underlay, "link", "add", "br0", "type", "bridge"])?;
    run_ip(&["-n", &underlay, "link", "set", "br0", "up"])?;
    let private: Vec<keys::Key> =
        (0..2).map(|_| keys::generate_private_key().context("generating a key")).collect::<Result<_>>()?;
    let mut hosts = Vec::new();
    for n in 1..=2usize {
        let host = scratch.create(&format!("g{n}"))?;
        let veth = format!("vg{n}");
        run_ip(&["link", "add", "eth0", "netns", &host, "type", "veth", "peer", "name", &veth, "netns", &underlay])?;
        run_ip(&["-n", &underlay, "link", "set", &veth, "master", "br0", "up"])?;
        run_ip(&["-n", &host, "addr", "add", &format!("198.18.0.{n}/24"), "dev", "eth0"])?;
        run_ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        let device = format!("wgb{}{n}", std::process::id() % 100_000);
        let child = Command::new("ip")
            .args(["netns", "exec", &host, "wireguard-go", "-f", &device])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wireguard-go (scripts/deps installs it)")?;
        procs.0.push((child, device.clone()));
        let sock = format!("/var/run/wireguard/{device}.sock");
        if !crate::lab::wait_for(|| std::path::Path::new(&sock).exists(), Duration::from_secs(10)) {
            return fail(format!("wireguard-go did not create {sock}"));
        }
        hosts.push((host, device));
    }
    for n in 1..=2usize {
        let (host, device) = &hosts[n - 1];
        let m = 3 - n;
        let key_file = dir.join(format!("wg-go-{n}.key"));
        std::fs::write(&key_file, keys::encode_key(&private[n - 1])).context("writing a key file")?;
        let peer = keys::encode_key(&keys::public_key(&private[m - 1]));
        let (endpoint, allowed) = (format!("198.18.0.{m}:51820"), format!("10.245.0.{m}/32"));
        let key_path = key_file.display().to_string();
        in_ns(host, &["wg", "set", device, "private-key", &key_path, "listen-port", "51820"])?;
        in_ns(host, &["wg", "set", device, "peer", &peer, "endpoint", &endpoint, "allowed-ips", &allowed])?;
        run_ip(&["-n", host, "addr", "add", &format!("10.245.0.{n}/24"), "dev", device])?;
        run_ip(&["-n", host, "link", "set", device, "mtu", "1420", "up"])?;
    }
    Ok(Endpoints {
        server_ns: hosts[1].0.clone(),
        server_ip: std::net::Ipv4Addr::new(10, 245, 0, 2),
        client_ns: hosts[0].0.clone(),
    })
}

pub fn run(weftd: std::path::PathBuf, state_root: std::path::PathBuf, reps: usize, seconds: u64) -> Result<ExtraRows> {
    let spec = LabSpec {
        backend: weft_backends::wireguard::BACKEND_TYPE.to_string(),
        state_root,
        ..LabSpec::new(format!("w{}", std::process::id()), 2, weftd)
    };
    let lab = LabGuard::up(spec).context("building the wireguard lab")?;
    let c2 = lab.container_ip(2).ok_or_else(|| super::error::BenchError("container 2 has no address".into()))?;
    if !crate::lab::wait_for(|| lab.ping(1, c2), Duration::from_secs(20)) {
        return fail("wireguard lab containers cannot reach each other");
    }
    let mut scratch = ScratchNamespaces::new();
    let mut procs = WireguardGoProcs(Vec::new());
    let go = build_wireguard_go(&mut scratch, lab.dir(), &mut procs)?;
    let kernel = build_kernel_vxlan(&mut scratch)?;
    let paths = [
        (
            WgPath::WeftWireguard,
            Endpoints { server_ns: lab.container_ns(2), server_ip: c2, client_ns: lab.container_ns(1) },
        ),
        (WgPath::WireguardGo, go),
        (WgPath::KernelVxlan, kernel),
    ];
    let mut runs = Vec::new();
    for rep in 0..reps.max(1) {
        for streams in [1, 2] {
            for (path, ends) in &paths {
                let m = iperf(ends, streams, seconds).context(format!("iperf3 over {}", path.label()))?;
                eprintln!(
                    "  {:<22} -P {streams} rep {rep}: {:6.2} Gbit/s (idle before {:.0}%)",
                    path.label(),
                    m.gbps,
                    m.idle_before
                );
                runs.push(WgRun { path: *path, streams, rep, gbps: m.gbps, idle_before_percent: m.idle_before });
            }
        }
    }
    let med = |path: WgPath, streams: usize| {
        let v: Vec<f64> = runs.iter().filter(|r| r.path == path && r.streams == streams).map(|r| r.gbps).collect();
        median(&v).unwrap_or(f64::NAN)
    };
    let mut rows = Vec::new();
    for streams in [1, 2] {
        let kernel = med(WgPath::KernelVxlan, streams);
        for path in WgPath::ALL {
            let m = med(path, streams);
            rows.push((
                format!("{} -P {streams}", path.label()),
                format!("{m:.2} Gbit/s ({:.3}x kernel vxlan)", m / kernel),
            ));
        }
        let ratio = med(WgPath::WeftWireguard, streams) / med(WgPath::WireguardGo, streams);
        rows.push((format!("weft wireguard / wireguard-go -P {streams}"), format!("{ratio:.2}x")));
    }
    let raw = serde_json::json!({"seconds": seconds, "reps": reps, "runs": runs});
    Ok(ExtraRows { rows, raw })
}
