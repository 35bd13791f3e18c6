//! The wireguard benchmark section works: a quick run measures weft's wireguard, Debian's wireguard-go and kernel
//! VXLAN in one run and reports a median and a ratio for each. It checks that numbers exist, never how fast they
//! are: speed is for `scripts/bench` on a quiet machine. Root only.

mod common;

use std::path::PathBuf;

use weft_lab::bench::{self, BenchOptions};

#[test]
fn quick_wireguard_benchmark_reports_every_path() {
    common::require_root();
    let out = std::env::temp_dir().join(format!("weft-bench-wg-{}", std::process::id()));
    let options = BenchOptions {
        quick: true,
        only: ["wireguard"].map(String::from).into(),
        out: out.clone(),
        state_root: std::env::temp_dir().join("weft-bench-wg-labs"),
        ..BenchOptions::new(PathBuf::from(common::WEFTD))
    };
    let (report, written) = bench::run(&options).unwrap_or_else(|e| panic!("benchmark failed: {e}"));
    let wg = report.wireguard.as_ref().expect("wireguard results");
    let runs = wg.raw["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "3 paths x 1 and 2 streams x 1 repetition: {runs:?}");
    for run in runs {
        let gbps = run["gbps"].as_f64().unwrap();
        assert!(gbps.is_finite() && gbps > 0.0, "{run}");
    }
    let labels: Vec<&str> = wg.rows.iter().map(|(name, _)| name.as_str()).collect();
    for label in [
        "weft wireguard c-c -P 1",
        "wireguard-go h-h -P 1",
        "kernel vxlan c-c -P 1",
        "weft wireguard / wireguard-go -P 1",
    ] {
        assert!(labels.contains(&label), "no row {label}: {labels:?}");
    }
    assert!(bench::table(&report).contains("wireguard (iperf3 TCP, medians)"));
    assert!(written.json.is_file());
    std::fs::remove_dir_all(&out).unwrap();
}
