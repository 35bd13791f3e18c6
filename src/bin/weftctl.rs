//! weftctl: the operator CLI. All logic lives in the library (`weft::ctl`, `weft::lab`).

use clap::{Parser, Subcommand};
use weft::ctl::{self, ConfigCommand, EtcdArgs, LeaseCommand};

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
    Lab(weft::lab::cli::LabCommand),
    /// The CNI plugin: install it, or time it against bridge + host-local
    #[command(subcommand)]
    Cni(weft::cni_install::CniCommand),
    /// Run the benchmark suite in lab namespaces (root): one table, raw JSON and a convergence plot
    Bench(weft::bench::cli::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Lab(cmd) => weft::lab::cli::run(cmd.clone()).map_err(|e| e.to_string()),
        Command::Cni(cmd) => weft::cni_install::run(cmd),
        Command::Bench(args) => weft::bench::cli::run(args),
        Command::Config { etcd, command } => block_on(ctl::config(etcd, command)),
        Command::Lease { etcd, command } => block_on(ctl::lease(etcd, command)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn block_on(fut: impl std::future::Future<Output = Result<(), ctl::CtlError>>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(fut).map_err(|e| e.to_string())
}
