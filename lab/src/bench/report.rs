//! The printed table (at most [`TABLE_WIDTH`] columns wide) and the convergence plot (drawn with plotters'
//! SVG backend, which writes text as SVG `<text>`: no font library is needed to build or run it).

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
            let limit = "kernel limit (ip -batch): same objects / flannel's plain routes";
            row(&mut rows, "peers".into(), "weftd".into(), limit.into(), "ratios".into());
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
                    format!("{:.0} / {:.0}", c.nexthop_limit_median_ms, c.kernel_limit_median_ms),
                    format!("{:.2}x / {:.2}x", c.nexthop_ratio, c.ratio),
                );
            }
        }
        if !control.incremental.is_empty() {
            let leases = control.incremental.iter().map(|i| i.leases).max().unwrap_or(0);
            group(&mut rows, &format!("incremental: etcd put -> route, {leases} new leases one at a time"));
            let header = "max / etcd ack p50 / kernel route add (ms) / weftd RSS";
            row(&mut rows, "peers before".into(), "p50 ms".into(), "p99 ms".into(), header.into());
            for i in &control.incremental {
                row(
                    &mut rows,
                    i.peers_before.to_string(),
                    format!("{:.2}", i.p50_ms),
                    format!("{:.2}", i.p99_ms),
                    format!(
                        "{:.2} / {:.2} / {:.2} / {:.1} MiB (peak {:.1})",
                        i.max_ms, i.etcd_ack_p50_ms, i.kernel_route_insert_ms, i.weftd_rss_mib, i.weftd_peak_rss_mib
                    ),
                );
            }
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
            row(
                &mut rows,
                "weftd RSS MiB".into(),
                format!("{:.1} after", c.weftd_rss_mib),
                format!("peak {:.1}", c.weftd_peak_rss_mib),
                String::new(),
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
    for f in &report.fleet {
        group(
            &mut rows,
            &format!(
                "fleet: {} weftd started at once, one etcd ({} s at steady state)",
                f.hosts,
                f.steady_window_s.round()
            ),
        );
        row(
            &mut rows,
            "full mesh".into(),
            format!("{} after {:.0} ms", f.full_mesh, f.full_mesh_ms),
            format!("median host {:.0} ms", f.host_mesh_median_ms),
            format!("spawning {:.0} ms", f.spawn_ms),
        );
        row(
            &mut rows,
            "subnets distinct".into(),
            f.distinct_subnets.to_string(),
            format!("{} leases in etcd", f.leases_in_etcd),
            String::new(),
        );
        row(
            &mut rows,
            "etcd CPU".into(),
            format!("start {:.0}% ({:.1} s)", f.etcd_cpu_percent_startup, f.etcd_cpu_s_startup),
            format!("steady {:.1}% of a core", f.etcd_cpu_percent_steady),
            format!("RSS {:.0} MiB", f.etcd_rss_mib),
        );
        let methods = |by_method: &std::collections::BTreeMap<String, f64>| {
            by_method.iter().map(|(method, n)| format!("{method} {n:.1}")).collect::<Vec<_>>().join(", ")
        };
        row(
            &mut rows,
            "etcd requests/host".into(),
            format!("start {:.1}", f.etcd_requests_per_host_startup),
            methods(&f.etcd_requests_per_host_startup_by_method),
            String::new(),
        );
        row(
            &mut rows,
            "etcd req/host/min".into(),
            format!("steady {:.1}", f.etcd_requests_per_host_per_min),
            methods(&f.etcd_requests_per_host_per_min_by_method),
            String::new(),
        );
        row(
            &mut rows,
            "weftd RSS MiB".into(),
            format!("median {:.1}, max {:.1}", f.weftd_rss_median_mib, f.weftd_rss_max_mib),
            format!("peak max {:.1}", f.weftd_peak_rss_max_mib),
            format!("all weftd CPU {:.1}%", f.weftd_cpu_percent_steady_total),
        );
    }
    if let Some(k) = &report.kube {
        group(
            &mut rows,
            &format!(
                "Kubernetes mode vs etcd mode: cold start with {} peers, median of {} interleaved runs",
                k.peers, k.reps
            ),
        );
        row(&mut rows, String::new(), "kube (Nodes)".into(), "etcd (leases)".into(), "kube / etcd".into());
        let flags = |m: &super::kube::ModeResult| match (m.verified, m.polled) {
            (false, _) => " UNVERIFIED",
            (true, true) => " (polled)",
            _ => "",
        };
        row(
            &mut rows,
            "cold start ms".into(),
            format!("{:.0}{}", k.kube.cold_median_ms, flags(&k.kube)),
            format!("{:.0}{}", k.etcd.cold_median_ms, flags(&k.etcd)),
            format!("{:.2}x", k.cold_ratio),
        );
        row(
            &mut rows,
            "weftd peak RSS MiB".into(),
            format!("{:.1}", k.kube.peak_rss_median_mib),
            format!("{:.1}", k.etcd.peak_rss_median_mib),
            format!("{:.2}x", k.peak_rss_ratio),
        );
        row(
            &mut rows,
            "final state exact".into(),
            k.kube.verified.to_string(),
            k.etcd.verified.to_string(),
            String::new(),
        );
        row(
            &mut rows,
            "loading the peers ms".into(),
            format!("{:.0} (API server start + load)", k.kube.load_ms),
            format!("{:.0} (etcd txns)", k.etcd.load_ms),
            String::new(),
        );
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

    let title = format!("weft benchmarks, {} ({} cores, kernel {})", report.date, report.cpus, report.kernel);
    render(&title, &rows, TABLE_WIDTH)
}

/// The widest line the table prints: it fits a 100-column terminal.
pub const TABLE_WIDTH: usize = 100;
/// Columns are never squeezed below this, however wide the others are.
const MIN_COLUMN: usize = 10;
/// Indent of a row, and the gap between columns.
const INDENT: usize = 2;
const GAP: usize = 2;

/// Lays `rows` (a row whose first cell starts with `== ` is a group title) out in at most `width` columns. Each
/// group gets its own column widths: as wide as their widest cell, the widest one narrowed while the line is too
/// long, and cells that no longer fit wrapped onto continuation lines.
fn render(title: &str, rows: &[[String; 4]], width: usize) -> String {
    let mut out = String::new();
    for line in wrap(title, width) {
        let _ = writeln!(out, "{line}");
    }
    let mut rest = rows;
    while let Some(first) = rest.first() {
        if let Some(group) = first[0].strip_prefix("== ") {
            let _ = writeln!(out);
            for line in wrap(group, width) {
                let _ = writeln!(out, "{line}");
            }
            rest = &rest[1..];
        }
        let end = rest.iter().position(|r| r[0].starts_with("== ")).unwrap_or(rest.len());
        render_group(&mut out, &rest[..end], width);
        rest = &rest[end..];
    }
    out
}

/// The rows of one group (no titles among them), see [`render`].
fn render_group(out: &mut String, rows: &[[String; 4]], width: usize) {
    let mut widths = vec![0; 4];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Columns empty in every row take no gap either.
    let used: Vec<usize> = (0..4).filter(|&c| widths[c] > 0).collect();
    let line_width =
        |widths: &[usize]| INDENT + used.iter().map(|&c| widths[c]).sum::<usize>() + GAP * used.len().saturating_sub(1);
    while line_width(&widths) > width {
        let Some(&widest) = used.iter().filter(|&&c| widths[c] > MIN_COLUMN).max_by_key(|&&c| widths[c]) else {
            break;
        };
        widths[widest] -= 1;
    }
    for r in rows {
        let wrapped: Vec<Vec<String>> = used.iter().map(|&c| wrap(&r[c], widths[c])).collect();
        let height = wrapped.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for i in 0..height {
            let parts: Vec<String> = used
                .iter()
                .zip(&wrapped)
                .map(|(&c, lines)| format!("{:<w$}", lines.get(i).map_or("", String::as_str), w = widths[c]))
                .collect();
            let _ = writeln!(out, "{}{}", " ".repeat(INDENT), parts.join(&" ".repeat(GAP)).trim_end());
        }
    }
}

/// `text` broken at spaces into lines of at most `width` characters; a word longer than that is cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        let word: String = word.into_iter().collect();
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if needed > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Convergence time against the number of peers (log-log), weftd and the kernel limit.
pub fn convergence_svg(report: &Report) -> Option<String> {
    let cold = &report.control.as_ref()?.cold;
    plot_cold(cold, &format!("{}, {} cores, kernel {}", report.date, report.cpus, report.kernel))
}

/// The plot for cold-start results, `caption` in the title (date and machine): log-log, weftd and the kernel limit.
pub fn plot_cold(cold: &[super::control::ColdResult], caption: &str) -> Option<String> {
    let usable = |v: f64| v.is_finite() && v > 0.0;
    let xs: Vec<f64> = cold.iter().map(|c| c.peers as f64).filter(|&v| usable(v)).collect();
    let ys: Vec<f64> = cold
        .iter()
        .flat_map(|c| [c.weftd_median_ms, c.kernel_limit_median_ms, c.nexthop_limit_median_ms])
        .filter(|&v| usable(v))
        .collect();
    if xs.is_empty() || ys.is_empty() {
        return None;
    }
    let (x0, x1) = decades(&xs);
    let (y0, y1) = decades(&ys);
    let mut svg = String::new();
    let drawn = draw_cold(&mut svg, cold, caption, (x0..x1, y0..y1));
    // Drawing into a String fails only on a bug in the chart's set-up; a report without a plot beats no report.
    if let Err(e) = drawn {
        eprintln!("weftctl bench: drawing the convergence plot: {e}");
        return None;
    }
    Some(svg)
}

/// Which number of a cold-start result a series plots.
type ColdValue = fn(&super::control::ColdResult) -> f64;

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_cold(
    svg: &mut String,
    cold: &[super::control::ColdResult],
    caption: &str,
    (x_range, y_range): (std::ops::Range<f64>, std::ops::Range<f64>),
) -> PlotResult {
    use plotters::prelude::*;

    let root = SVGBackend::with_string(svg, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Cold-start convergence ({caption})"), ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("peers (log scale)")
        .y_desc("median ms (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    let weftd_colour = RGBColor(192, 57, 43);
    let limit_colour = RGBColor(44, 62, 80);
    let plain_colour = RGBColor(127, 140, 141);
    let series: [(&str, RGBColor, ColdValue); 3] = [
        ("weftd (process start to all routes, neighbours, FDB entries)", weftd_colour, |c| c.weftd_median_ms),
        ("kernel limit: ip/bridge -batch, same objects", limit_colour, |c| c.nexthop_limit_median_ms),
        ("ip/bridge -batch, flannel's plain routes", plain_colour, |c| c.kernel_limit_median_ms),
    ];
    for (label, colour, value) in series {
        let points: Vec<(f64, f64)> = cold
            .iter()
            .map(|c| (c.peers as f64, value(c)))
            .filter(|&(x, y)| x > 0.0 && y.is_finite() && y > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The whole decades around `values` (all positive): at least one decade, so that a single point still gets one.
fn decades(values: &[f64]) -> (f64, f64) {
    let low = floor_pow10(values.iter().copied().fold(f64::MAX, f64::min));
    let high = ceil_pow10(values.iter().copied().fold(0.0, f64::max));
    (low, high.max(low * 10.0))
}

/// The largest power of ten at or below `v`.
fn floor_pow10(v: f64) -> f64 {
    10f64.powf(v.max(1e-3).log10().floor())
}

/// The smallest power of ten at or above `v`.
fn ceil_pow10(v: f64) -> f64 {
    10f64.powf(v.max(1e-3).log10().ceil())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(a: &str, b: &str, c: &str, d: &str) -> [String; 4] {
        [a.into(), b.into(), c.into(), d.into()]
    }

    #[test]
    fn wrapping_keeps_words_and_cuts_only_what_cannot_fit() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap("abcdefgh", 3), ["abc", "def", "gh"]);
        assert_eq!(wrap("", 5), [""]);
        assert_eq!(wrap("fits exactly", 12), ["fits exactly"]);
    }

    #[test]
    fn wide_tables_fit_the_terminal_and_lose_no_text() {
        let long = "weft vxlan >= 0.95x hand-built vxlan (-P 1) with a rather long explanation after it";
        let rows = vec![
            row(&format!("== {long} {long}"), "", "", ""),
            row(long, "1.000x (-P 2: 0.990x; quiet runs only: 1.010x / 0.980x)", "MISSED", ""),
            row("peers", "weftd", "kernel limit (ip -batch)", "ratio"),
        ];
        let table = render("title", &rows, TABLE_WIDTH);
        for line in table.lines() {
            assert!(line.chars().count() <= TABLE_WIDTH, "{} columns: {line:?}", line.chars().count());
        }
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let printed = words(&table);
        for word in words(long).iter().chain(&words("quiet runs only: 1.010x / 0.980x) MISSED ratio")) {
            assert!(printed.contains(word), "{word:?} is missing from:\n{table}");
        }
    }

    #[test]
    fn each_group_has_its_own_column_widths() {
        let rows = vec![
            row("== wide", "", "", ""),
            row(&"x".repeat(60), "a", "", ""),
            row("== narrow", "", "", ""),
            row("peers", "weftd", "", ""),
        ];
        let table = render("t", &rows, TABLE_WIDTH);
        assert!(table.ends_with("narrow\n  peers  weftd\n"), "{table}");
    }

    #[test]
    fn narrow_tables_stay_on_one_line_per_row() {
        let rows = vec![row("peers", "weftd", "", ""), row("100", "12", "", "")];
        assert_eq!(render("t", &rows, TABLE_WIDTH), "t\n  peers  weftd\n  100    12\n");
    }

    #[test]
    fn the_plot_is_an_svg_with_both_lines() {
        let cold = |peers: usize, weftd: f64, limit: f64| super::super::control::ColdResult {
            peers,
            weftd_ms: vec![weftd],
            weftd_median_ms: weftd,
            kernel_limit_ms: vec![limit],
            kernel_limit_median_ms: limit,
            ratio: weftd / limit,
            nexthop_limit_ms: vec![limit / 2.0],
            nexthop_limit_median_ms: limit / 2.0,
            nexthop_ratio: weftd / limit * 2.0,
            lease_write_ms: 1.0,
            polled: false,
            verified: true,
            footprint: super::super::control::Footprint {
                peers,
                rss_mib: 1.0,
                peak_rss_mib: 1.0,
                idle_cpu_percent: 0.0,
                window_s: 1.0,
            },
        };
        let svg = plot_cold(&[cold(100, 20.0, 10.0), cold(1000, 150.0, 90.0)], "today").unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for colour in ["#C0392B", "#2C3E50"] {
            assert!(
                svg.contains(&format!("<polyline fill=\"none\" opacity=\"1\" stroke=\"{colour}\"")),
                "{colour}: {svg}"
            );
        }
        assert!(svg.contains("Cold-start convergence (today)"));
        assert!(plot_cold(&[], "empty").is_none());
    }
}
