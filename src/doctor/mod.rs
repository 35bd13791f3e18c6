//! `weftctl doctor`: checks this host the way an operator would by hand (iptables, routes, FDB tables, etcd) and
//! says, for each problem, what is wrong, what it breaks and the fix. It works with weftd stopped too: the kernel
//! state weft wants is worked out from etcd as weftd would, so a host weftd cannot repair is diagnosed as well.
//!
//! [`gather`] reads the facts; [`checks`] judges them (pure, tested without root); this module prints the result
//! and turns it into the exit code: 0 when every check passed or only warned, 1 when one failed.

pub mod checks;
pub mod facts;
pub mod gather;

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use crate::ctl::EtcdArgs;
use crate::status_cmd::OutputFormat;
use crate::term::Style;
use checks::{Check, Outcome};

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// weftd's health endpoint: its --healthz-ip and --healthz-port
    #[arg(long, env = "WEFTCTL_WEFTD", default_value = crate::weftd_client::DEFAULT_ENDPOINT)]
    pub weftd: String,
    /// The subnet file weftd writes (its --subnet-file) [default: the one weftd reports, else
    /// /run/flannel/subnet.env]
    #[arg(long)]
    pub subnet_file: Option<PathBuf>,
    /// Where the container runtime reads CNI network configs
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where the container runtime finds CNI plugins
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// The JSON document `--output json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `ok`, `warn` or `fail`: the worst outcome of any check.
    pub outcome: Outcome,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn of(checks: Vec<Check>) -> Report {
        Report { outcome: checks::worst(&checks), checks }
    }

    /// Whether the host is healthy enough for the exit code: nothing failed.
    pub fn passed(&self) -> bool {
        self.outcome < Outcome::Fail
    }
}

/// Runs every check and prints the report; Ok(true) when nothing failed.
pub async fn run(args: &DoctorArgs) -> Result<bool, String> {
    let facts = gather::gather(args).await;
    let report = Report::of(checks::all(&facts));
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?),
        OutputFormat::Table => print!("{}", render(&report, &Style::stdout())),
    }
    Ok(report.passed())
}

/// One line per check; below a check that found something, each problem and its fix.
pub fn render(report: &Report, style: &Style) -> String {
    let mut out = String::new();
    for check in &report.checks {
        let mark = match check.outcome {
            Outcome::Ok => style.good("ok  "),
            Outcome::Skipped => style.dim("skip"),
            Outcome::Warn => style.warn("warn"),
            Outcome::Fail => style.bad("FAIL"),
        };
        let detail = if check.detail.is_empty() || !check.problems.is_empty() {
            String::new()
        } else {
            style.dim(&format!(": {}", check.detail))
        };
        out.push_str(&format!("{mark} {:<14} {}{detail}\n", check.id, check.title));
        for p in &check.problems {
            let label = if p.severity == Outcome::Fail { style.bad("problem") } else { style.warn("warning") };
            out.push_str(&format!("       {label}: {}\n", p.problem));
            out.push_str(&format!("       {}: {}\n", style.bold("fix"), p.fix));
        }
    }
    let failed = report.checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    let warned = report.checks.iter().filter(|c| c.outcome == Outcome::Warn).count();
    let summary = match (failed, warned) {
        (0, 0) => style.good("all checks passed"),
        (0, w) => style.warn(&format!("no check failed, {w} warned")),
        (f, w) => style.bad(&format!("{f} checks failed, {w} warned")),
    };
    out.push_str(&format!("{summary}\n"));
    out
}
