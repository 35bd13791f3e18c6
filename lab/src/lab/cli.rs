//! `weftctl lab up|status|down`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Lab, LabError, LabSpec, DEFAULT_BACKEND, DEFAULT_NETWORK, DEFAULT_STATE_ROOT};

/// Which lab a command is about.
#[derive(Debug, Clone, clap::Args)]
pub struct LabRef {
    /// Lab name: letters, digits and '-', at most 16 characters
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Directory holding the state of all labs
    #[arg(long, env = "WEFT_LAB_STATE_ROOT", default_value = DEFAULT_STATE_ROOT)]
    pub state_root: PathBuf,
}

/// A multi-host lab in network namespaces, with etcd and one weftd per host
/// (needs root).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LabCommand {
    /// Create namespaces, start etcd and weftd on every host, attach one
    /// container per host
    Up {
        #[command(flatten)]
        lab: LabRef,
        /// Number of hosts (1-200)
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Backend type written to the network config
        #[arg(long, default_value = DEFAULT_BACKEND)]
        backend: String,
        /// Overlay network written to the network config
        #[arg(long, default_value = DEFAULT_NETWORK)]
        network: String,
        /// weftd binary [default: the weftd next to this weftctl]
        #[arg(long)]
        weftd: Option<PathBuf>,
        /// Only build namespaces and etcd: start no weftd, attach no containers
        #[arg(long)]
        no_weftd: bool,
        /// Kubernetes mode: the test API server instead of etcd, a Node per host, weftd with --kube-subnet-mgr
        #[arg(long)]
        kube: bool,
        /// The test API server for --kube [default: the weft-kube-testserver next to weftd]
        #[arg(long, requires = "kube")]
        kube_api_server: Option<PathBuf>,
        /// Extra weftd arguments, after `--`
        #[arg(last = true)]
        weftd_args: Vec<String>,
    },
    /// Show hosts, weftd processes, subnets, leases and a ping matrix
    Status {
        #[command(flatten)]
        lab: LabRef,
        /// Skip the ping matrix
        #[arg(long)]
        no_ping: bool,
        /// Exit with an error unless every container reaches every other
        #[arg(long, conflicts_with = "no_ping")]
        check: bool,
    },
    /// Stop the lab's processes and delete its namespaces and state
    Down {
        #[command(flatten)]
        lab: LabRef,
    },
}

/// Runs a `weftctl lab` subcommand, printing to stdout.
pub fn run(command: LabCommand) -> Result<(), LabError> {
    match command {
        LabCommand::Up { lab, hosts, backend, network, weftd, no_weftd, kube, kube_api_server, weftd_args } => {
            let weftd = weftd.map_or_else(default_weftd, Ok)?;
            let kube_api_server =
                kube.then(|| kube_api_server.unwrap_or_else(|| weftd.with_file_name("weft-kube-testserver")));
            let spec = LabSpec {
                hosts,
                backend,
                network,
                weftd,
                kube_api_server,
                state_root: lab.state_root,
                extra_weftd_args: weftd_args,
                start_weftd: !no_weftd,
                ..LabSpec::new(lab.name, hosts, PathBuf::new())
            };
            up(spec)
        }
        LabCommand::Status { lab, no_ping, check } => status(&lab, no_ping, check),
        LabCommand::Down { lab } => {
            Lab::load(&lab.state_root, &lab.name)?.down_with_progress()?;
            emit(&format!("lab {} is down\n", lab.name))
        }
    }
}

fn up(spec: LabSpec) -> Result<(), LabError> {
    let lab = Lab::up_with_progress(spec)?;
    let mut text = format!("{}\n", lab.quick_status()?);
    if let Some(ip) = (lab.hosts() > 1).then(|| lab.container_ip(2)).flatten() {
        text += &format!("try: ip netns exec {} ping -c 3 {ip}\n", lab.container_ns(1));
    }
    let mut lab_args = format!("--name {}", lab.name());
    if lab.spec().state_root != Path::new(DEFAULT_STATE_ROOT) {
        lab_args += &format!(" --state-root {}", lab.spec().state_root.display());
    }
    text += &format!("check: weftctl lab status {lab_args}\nremove: weftctl lab down {lab_args}\n");
    emit(&text)
}

/// Prints to stdout; a closed pipe (`weftctl lab status | head`) is not
/// an error worth a panic.
fn emit(text: &str) -> Result<(), LabError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(LabError::io("writing to stdout", e)),
        _ => Ok(()),
    }
}

fn status(lab: &LabRef, no_ping: bool, check: bool) -> Result<(), LabError> {
    let lab = Lab::load(&lab.state_root, &lab.name)?;
    let status = if no_ping { lab.quick_status()? } else { lab.status()? };
    emit(&status.to_string())?;
    match (&status.connectivity, check) {
        (Some(c), true) if !c.all_connected() => {
            Err(LabError::Disconnected { failed: c.failures().len(), total: c.tested() })
        }
        _ => Ok(()),
    }
}

/// The weftd installed next to the running weftctl.
fn default_weftd() -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().map_err(|e| LabError::io("finding the weftctl executable", e))?;
    let weftd = exe.with_file_name("weftd");
    if weftd.is_file() {
        Ok(weftd)
    } else {
        Err(LabError::InvalidSpec(format!(
            "no weftd next to weftctl ({} does not exist); pass --weftd <path>",
            weftd.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        lab: LabCommand,
    }

    #[test]
    fn parses_up_with_trailing_weftd_args() {
        let cli = Cli::try_parse_from([
            "weftctl",
            "up",
            "--name",
            "demo",
            "--hosts",
            "5",
            "--weftd",
            "/bin/w",
            "--",
            "--ip-masq",
            "-v",
        ])
        .unwrap();
        let LabCommand::Up { lab, hosts, weftd, weftd_args, no_weftd, .. } = cli.lab else {
            panic!("not up: {:?}", cli.lab);
        };
        assert_eq!(lab.name, "demo");
        assert_eq!(hosts, 5);
        assert_eq!(weftd, Some(PathBuf::from("/bin/w")));
        assert_eq!(weftd_args, ["--ip-masq", "-v"]);
        assert!(!no_weftd);
    }

    #[test]
    fn parses_status_and_down() {
        let cli = Cli::try_parse_from(["weftctl", "status", "--no-ping"]).unwrap();
        assert!(matches!(cli.lab, LabCommand::Status { no_ping: true, .. }));
        let cli = Cli::try_parse_from(["weftctl", "down", "--name", "x"]).unwrap();
        assert!(matches!(cli.lab, LabCommand::Down { lab } if lab.name == "x"));
        assert!(Cli::try_parse_from(["weftctl", "status", "--no-ping", "--check"]).is_err());
    }
}
