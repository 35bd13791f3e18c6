//! The printed table and the convergence plot (a hand-written SVG: no plotting dependency).

use std::fmt::Write;

use super::Report;

/// The whole report as a plain-text table, one group of rows per benchmark.
pub fn table(report: &Report) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let group = |rows: &mut Vec<[String; 4]>, title: &str| {
        rows.push([format!("== {title}"), String::new(), String::new(), String::new()])
    };
    let row = |rows: &mut Vec<[String; 4]>, a: String, b: String, c: String, d: String| rows.push([a, b, c, d]);
    let t = &report.targets;

    if let Some(control) = &report.control {
        if !control.cold.is_empty() {
            group(&mut rows, "cold-start convergence (median ms)");
            row(&mut rows, "peers".into(), "weftd".into(), "kernel limit (ip -batch)".into(), "ratio".into());
            for c in &control.cold {
                let flags = match (c.verified, c.polled) {
                    (false, _) => " UNVERIFIED",
                    (true, true) => " (polled)",
                    _ => "",
                };
                row(
                    &mut rows,
                    c.peers.to_string(),
                    format!("{:.0}{flags}", c.weftd_median_ms),
                    format!("{:.0}", c.kernel_limit_median_ms),
                    format!("{:.2}x", c.ratio),
                );
            }
        }
        if let Some(i) = &control.incremental {
            group(
                &mut rows,
                &format!("incremental: {} new leases, one at a time, at {} peers", i.leases, i.peers_before),
            );
            row(
                &mut rows,
                "etcd put -> route".into(),
                format!("p50 {:.2} ms", i.p50_ms),
                format!("p99 {:.2} ms", i.p99_ms),
                format!("max {:.2} ms", i.max_ms),
            );
        }
        if let Some(c) = &control.churn {
            group(&mut rows, &format!("churn: {}/s for {} s over {} peers", c.target_rate, c.duration_s, c.peers));
            row(
                &mut rows,
                "updates sent".into(),
                c.updates_sent.to_string(),
                format!("{:.0}/s achieved", c.achieved_rate),
                String::new(),
            );
            row(
                &mut rows,
                "final state exact".into(),
                c.final_exact.to_string(),
                format!("caught up {:.0} ms after the last put", c.catch_up_ms),
                format!("weftd cpu {:.0}%", c.weftd_cpu_percent),
            );
        }
        if !control.cold.is_empty() {
            group(&mut rows, "footprint (weftd after convergence)");
            row(
                &mut rows,
                "peers".into(),
                "RSS MiB at idle".into(),
                "idle CPU % of a core".into(),
                "peak RSS MiB".into(),
            );
            for c in &control.cold {
                let f = &c.footprint;
                row(
                    &mut rows,
                    f.peers.to_string(),
                    format!("{:.1}", f.rss_mib),
                    format!("{:.2}", f.idle_cpu_percent),
                    format!("{:.1}", f.peak_rss_mib),
                );
            }
        }
    }
    if let Some(d) = &report.dataplane {
        group(
            &mut rows,
            &format!("data plane: iperf3 TCP, median Gbit/s of {} x {} s interleaved runs", d.reps, d.seconds),
        );
        row(
            &mut rows,
            "path".into(),
            "-P 1 (vs underlay / vs hand-built)".into(),
            "-P 2 (vs underlay / vs hand-built)".into(),
            "busy runs".into(),
        );
        for path in d.paths() {
            let cell = |streams| {
                d.summary.iter().find(|s| s.path == path && s.streams == streams).map_or(String::new(), |s| {
                    format!("{:.2} ({:.2} / {:.2})", s.median_gbps, s.vs_underlay, s.vs_kernel_vxlan)
                })
            };
            let busy: usize = d.summary.iter().filter(|s| s.path == path).map(|s| s.busy_runs).sum();
            let runs: usize = d.summary.iter().filter(|s| s.path == path).map(|s| s.runs).sum();
            row(&mut rows, path.label().into(), cell(1), cell(2), format!("{busy}/{runs}"));
        }
        for path in d.paths() {
            let cell = |streams| {
                d.summary.iter().find(|s| s.path == path && s.streams == streams).map_or(String::new(), |s| {
                    format!("{:.2} quiet runs only ({} of {})", s.quiet_median_gbps, s.runs - s.busy_runs, s.runs)
                })
            };
            row(&mut rows, path.label().into(), cell(1), cell(2), String::new());
        }
    }
    match &report.cni {
        Some(cni) => {
            group(&mut rows, "CNI ADD/DEL");
            for (name, value) in cni.rows() {
                row(&mut rows, name, value, String::new(), String::new());
            }
        }
        None => group(&mut rows, &format!("CNI ADD/DEL: {}", report.cni_note)),
    }
    if let Some(wg) = &report.wireguard {
        group(&mut rows, "wireguard (iperf3 TCP, medians)");
        for (name, value) in wg.rows() {
            row(&mut rows, name, value, String::new(), String::new());
        }
    }
    group(&mut rows, "targets");
    for target in t {
        row(
            &mut rows,
            target.name.clone(),
            target.measured.clone(),
            if target.met { "met".into() } else { "MISSED".into() },
            String::new(),
        );
    }

    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().filter(|r| !r[0].starts_with("== ")).map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("weft benchmarks, {} ({} cores, kernel {})\n", report.date, report.cpus, report.kernel);
    for r in &rows {
        if r[0].starts_with("== ") {
            let _ = writeln!(out, "\n{}", &r[0][3..]);
            continue;
        }
        let line: Vec<String> = (0..4).map(|c| format!("{:<w$}", r[c], w = widths[c])).collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    out
}

/// Convergence time against the number of peers (log-log), weftd and the kernel limit.
pub fn convergence_svg(report: &Report) -> Option<String> {
    let cold = &report.control.as_ref()?.cold;
    plot_cold(cold, &format!("{}, {} cores, kernel {}", report.date, report.cpus, report.kernel))
}

/// The plot for cold-start results, `caption` in the title (date and machine).
pub fn plot_cold(cold: &[super::control::ColdResult], caption: &str) -> Option<String> {
    if cold.is_empty() {
        return None;
    }
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let xs: Vec<f64> = cold.iter().map(|c| c.peers as f64).collect();
    let ys: Vec<f64> = cold
        .iter()
        .flat_map(|c| [c.weftd_median_ms, c.kernel_limit_median_ms])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let (x0, x1) =
        (floor_pow10(xs.iter().cloned().fold(f64::MAX, f64::min)), ceil_pow10(xs.iter().cloned().fold(0.0, f64::max)));
    let (y0, y1) =
        (floor_pow10(ys.iter().cloned().fold(f64::MAX, f64::min)), ceil_pow10(ys.iter().cloned().fold(0.0, f64::max)));
    // At least one decade per axis, so that a single point still gets one.
    let (x1, y1) = (x1.max(x0 * 10.0), y1.max(y0 * 10.0));
    let px = |x: f64| left + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()).max(1e-9) * (w - left - right);
    let py = |y: f64| h - bottom - (y.log10() - y0.log10()) / (y1.log10() - y0.log10()).max(1e-9) * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">Cold-start convergence ({})</text>\n",
        w / 2.0,
        caption
    );
    // Decade grid lines and labels.
    let mut x = x0;
    while x <= x1 * 1.001 {
        let _ = writeln!(svg, "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>", px(x), h - bottom, h - bottom + 16.0, x);
        x *= 10.0;
    }
    let mut y = y0;
    while y <= y1 * 1.001 {
        let _ = writeln!(svg, "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4} ms</text>", py(y), w - right, left - 6.0, py(y) + 4.0, y);
        y *= 10.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">peers (log scale)</text>",
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (color, value) in [
        ("#c0392b", (|c: &super::control::ColdResult| c.weftd_median_ms) as fn(&super::control::ColdResult) -> f64),
        ("#2c3e50", |c: &super::control::ColdResult| c.kernel_limit_median_ms),
    ] {
        let points: Vec<String> = cold
            .iter()
            .filter(|c| value(c).is_finite() && value(c) > 0.0)
            .map(|c| format!("{:.1},{:.1}", px(c.peers as f64), py(value(c))))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        for p in &points {
            let (cx, cy) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(svg, "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3.5\" fill=\"{color}\"/>");
        }
    }
    let _ = writeln!(svg, "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#c0392b\"/><text x=\"{}\" y=\"{}\">weftd (process start to all routes, neighbours, FDB entries)</text>", left + 10.0, top + 8.0, left + 28.0, top + 12.0);
    let _ = writeln!(svg, "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"#2c3e50\"/><text x=\"{}\" y=\"{}\">kernel limit: ip/bridge -batch, same 3N objects</text>", left + 10.0, top + 26.0, left + 28.0, top + 30.0);
    svg.push_str("</svg>\n");
    Some(svg)
}

fn floor_pow10(v: f64) -> f64 {
    10f64.powf(v.max(1e-3).log10().floor())
}

/// The smallest power of ten at or above `v`.
fn ceil_pow10(v: f64) -> f64 {
    10f64.powf(v.max(1e-3).log10().ceil())
}
