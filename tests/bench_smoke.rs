//! The benchmark suite works: a tiny run of every lab benchmark (100 peers, one 2 s iperf3 run per path, a fleet
//! of 10 hosts, 100 Nodes against 100 leases) produces complete, sane results, a JSON file, a plot and a table. It
//! checks that numbers exist, never how fast they are: speed is for `scripts/bench` on a quiet machine. The
//! Kubernetes comparison needs the test API server next to weftd (`cargo build -p weft-kube-testserver`).

mod common;

use std::path::PathBuf;

use weft_lab::bench::{self, BenchOptions};

#[test]
fn quick_benchmark_produces_complete_results() {
    common::require_root();
    let out = std::env::temp_dir().join(format!("weft-bench-smoke-{}", std::process::id()));
    let options = BenchOptions {
        quick: true,
        // The CNI comparison has its own tests; this one covers the suite's own benchmarks.
        only: ["cold", "incremental", "churn", "footprint", "dataplane", "fleet", "kube"].map(String::from).into(),
        out: out.clone(),
        state_root: std::env::temp_dir().join("weft-bench-smoke-labs"),
        ..BenchOptions::new(PathBuf::from(common::WEFTD))
    };
    let (report, written) = bench::run(&options).unwrap_or_else(|e| panic!("benchmark failed: {e}"));
    let positive = |what: &str, v: f64| assert!(v.is_finite() && v > 0.0, "{what} is {v}");

    let control = report.control.as_ref().expect("control-plane results");
    assert_eq!(control.cold.len(), 1);
    let cold = &control.cold[0];
    assert_eq!(cold.peers, 100);
    assert!(cold.verified, "a final dump must find exactly 100 routes, neighbours and FDB entries");
    positive("cold-start time", cold.weftd_median_ms);
    positive("kernel-limit time", cold.kernel_limit_median_ms);
    positive("kernel-limit time, routes through nexthop objects", cold.nexthop_limit_median_ms);
    positive("cold-start ratio to the same objects", cold.nexthop_ratio);
    positive("weftd RSS", cold.footprint.rss_mib);
    assert!(cold.footprint.idle_cpu_percent.is_finite());

    assert_eq!(control.incremental.len(), 1, "--quick runs one incremental size");
    let incremental = &control.incremental[0];
    assert_eq!(incremental.peers_before, 100);
    assert_eq!(incremental.samples_ms.len(), incremental.leases);
    assert!(incremental.samples_ms.iter().all(|v| v.is_finite() && *v >= 0.0));
    positive("incremental p99", incremental.p99_ms);
    positive("etcd's acknowledgement of a put", incremental.etcd_ack_p50_ms);
    assert!(incremental.etcd_ack_p99_ms >= incremental.etcd_ack_p50_ms);
    assert!(incremental.after_ack_p99_ms.is_finite() && incremental.after_ack_p99_ms <= incremental.max_ms);
    positive("weftd peak RSS after the incremental run", incremental.weftd_peak_rss_mib);

    let churn = control.churn.as_ref().expect("churn results");
    assert_eq!(churn.updates_sent, churn.target_rate * churn.duration_s as usize);
    assert!(churn.final_exact, "after churn the kernel must match etcd exactly");
    positive("weftd peak RSS after churn", churn.weftd_peak_rss_mib);

    assert_eq!(report.fleet.len(), 1, "--quick runs one fleet");
    let fleet = &report.fleet[0];
    assert_eq!(fleet.hosts, 10);
    assert!(fleet.full_mesh, "every host must have routes to exactly the 9 others");
    assert!(fleet.distinct_subnets, "10 hosts, 10 different subnets, 10 leases (found {})", fleet.leases_in_etcd);
    positive("time to a full mesh", fleet.full_mesh_ms);
    positive("etcd requests per host during the start", fleet.etcd_requests_per_host_startup);
    assert!(fleet.etcd_requests_per_host_per_min.is_finite() && fleet.etcd_requests_per_host_per_min >= 0.0);
    positive("weftd RSS in the fleet", fleet.weftd_rss_max_mib);

    let kube = report.kube.as_ref().expect("Kubernetes-mode results");
    assert_eq!((kube.peers, kube.reps), (100, 1));
    for (mode, m) in [("Kubernetes mode", &kube.kube), ("etcd mode", &kube.etcd)] {
        assert!(m.verified, "{mode}: a final dump must find exactly 100 routes, neighbours and FDB entries");
        assert_eq!((m.cold_ms.len(), m.peak_rss_mib.len()), (1, 1), "{mode}: one run, one reading");
        positive(&format!("{mode} cold-start time"), m.cold_median_ms);
        positive(&format!("{mode} weftd peak RSS"), m.peak_rss_median_mib);
        positive(&format!("{mode} loading the peers"), m.load_ms);
    }
    positive("kube/etcd cold-start ratio", kube.cold_ratio);
    positive("kube/etcd peak RSS ratio", kube.peak_rss_ratio);

    let dataplane = report.dataplane.as_ref().expect("data-plane results");
    assert_eq!(
        dataplane.summary.len(),
        18,
        "9 paths (underlay, host-gw, vxlan, hand-built, udp with all, none and all but one of its three techniques) \
         x 1 and 2 streams"
    );
    for s in &dataplane.summary {
        positive(&format!("{:?} -P {} throughput", s.path, s.streams), s.median_gbps);
    }

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
    assert_eq!(json["control"]["cold"][0]["peers"], 100);
    let svg = std::fs::read_to_string(written.svg.expect("a plot")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let table = bench::table(&report);
    let headings = [
        "cold-start convergence",
        "incremental",
        "churn",
        "footprint",
        "data plane",
        "fleet",
        "Kubernetes mode",
        "targets",
    ];
    for heading in headings {
        assert!(table.contains(heading), "table lacks {heading:?}:\n{table}");
    }
    for line in table.lines() {
        assert!(line.chars().count() <= 100, "wider than 100 columns: {line:?}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Ctrl-C in the middle of a run: `weftctl bench` takes its lab down (etcd, weftd, namespaces) before it exits.
#[test]
fn an_interrupted_run_leaves_nothing_behind() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    common::require_root();
    let out = std::env::temp_dir().join(format!("weft-bench-interrupted-{}", std::process::id()));
    let mut bench = Command::new(common::weftctl())
        .args(["bench", "--quick", "--only", "cold,incremental,churn", "--weftd", common::WEFTD, "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting weftctl bench");
    let pid = bench.id();
    // Its processes name the lab's state directory, /tmp/weft-bench/b<pid>/ (etcd's data, weftd's subnet file).
    let marker = format!("/weft-bench/b{pid}/");
    let running = || -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&marker))
            .collect()
    };
    let namespaces = || -> Vec<String> {
        let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
        let mine = [format!("wl-b{pid}-"), format!("wbn{pid}-")];
        String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| mine.iter().any(|m| l.starts_with(m.as_str())))
            .map(str::to_string)
            .collect()
    };
    common::eventually(Duration::from_secs(60), Duration::from_millis(100), || {
        let weftd = running().iter().any(|c| c.contains("weftd"));
        weftd.then_some(()).ok_or_else(|| format!("no weftd of the bench's lab yet (namespaces {:?})", namespaces()))
    });
    // SAFETY: kill has no memory preconditions; the pid is our own child's, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = bench.try_wait().expect("waiting for weftctl bench") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = bench.kill();
            panic!("weftctl bench still runs 60 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted; removing 1 lab(s)"), "{stderr}");
    assert_eq!(running(), Vec::<String>::new(), "processes of the interrupted bench are left");
    assert_eq!(namespaces(), Vec::<String>::new(), "namespaces of the interrupted bench are left");
    let _ = std::fs::remove_dir_all(&out);
}
