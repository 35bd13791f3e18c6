//! weftctl: the operator CLI. All logic lives in libraries: the product commands (config, leases, installing the CNI
//! plugin) in `weft`, the lab and the benchmarks in `weft-lab`.

use clap::{Parser, Subcommand};
use weft::cleanup::{self, CleanupArgs};
use weft::cni_install::{self, InstallArgs};
use weft::ctl::{self, ConfigCommand, EtcdArgs, LeaseCommand};
use weft::docker_opts::{self, DockerOptsArgs};
use weft::doctor::{self, DoctorArgs};
use weft::status_cmd::{self, StatusArgs};
use weft_lab::bench::cli::{self as bench_cli, BenchArgs, CniBenchArgs};
use weft_lab::lab::cli::{self as lab_cli, LabCommand};

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "weft operator CLI: network config, leases, and the multi-host lab")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The network config in etcd
    Config {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Subnet leases and reservations in etcd
    Lease {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// A multi-host lab in network namespaces with a real etcd
    #[command(subcommand)]
    Lab(LabCommand),
    /// The CNI plugin: install it, or time it against bridge + host-local
    #[command(subcommand)]
    Cni(CniCommand),
    /// Run the benchmark suite in lab namespaces (root): one table, raw JSON and a convergence plot
    Bench(BenchArgs),
    /// Remove everything weftd created on this host (devices, routes, firewall rules, the subnet file); stop weftd
    /// first. etcd is left alone unless --release-lease
    Cleanup(CleanupArgs),
    /// This host as weftd sees it: lease, backend, peers programmed and rejected, last reconcile, etcd
    Status(StatusArgs),
    /// Check this host (kernel, firewall, files, CNI, etcd, weftd) and explain each problem with its fix; exits 1
    /// when a check fails
    Doctor(DoctorArgs),
    /// Docker daemon options from the subnet file (flannel's mk-docker-opts.sh: -f, -d, -i, -c, -k, -m)
    DockerOpts(DockerOptsArgs),
}

#[derive(Debug, Subcommand)]
enum CniCommand {
    /// Install the plugin binary (as `weft`, optionally also as `flannel`) and a conflist
    Install(InstallArgs),
    /// Time ADD and DEL of weft against bridge + host-local (root; uses its own namespaces)
    Bench(CniBenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Lab(cmd) => lab_cli::run(cmd.clone()).map_err(|e| e.to_string()),
        Command::Cni(CniCommand::Install(args)) => cni_install::run_install(args),
        Command::Cni(CniCommand::Bench(args)) => bench_cli::run_cni(args),
        Command::Bench(args) => bench_cli::run(args),
        Command::Config { etcd, command } => block_on(ctl::config(etcd, command)),
        Command::Lease { etcd, command } => block_on(ctl::lease(etcd, command)),
        Command::Cleanup(args) => run_cleanup(args),
        Command::DockerOpts(args) => docker_opts::run(args).map_err(|e| e.to_string()),
        Command::Doctor(args) => match runtime().and_then(|rt| rt.block_on(doctor::run(args))) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(status_cmd::run(args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

fn block_on(fut: impl std::future::Future<Output = Result<(), ctl::CtlError>>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(fut).map_err(|e| e.to_string())
}

fn run_cleanup(args: &CleanupArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let done = runtime.block_on(cleanup::run(args)).map_err(|e| e.to_string())?;
    if done.is_empty() {
        println!("nothing of weft's left on this host");
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}
