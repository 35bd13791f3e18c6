//! weft's CNI plugin (the `weft` binary, also installable as `flannel`), and `subnet.env`: the whole contract
//! between weftd and the plugin.
//!
//! The plugin does everything in one process: no delegation to bridge/host-local binaries, one netlink socket in the
//! host netns and one opened inside the container's netns (a short-lived thread enters it only to create the
//! socket). ADD, CHECK and DEL send their requests in batches over blocking sockets (weft-netlink), with no async
//! runtime. See docs/cni.md.

pub mod env;
pub mod error;
pub mod flannel_state;
pub mod ipam;
pub mod masq;
pub mod netconf;
pub mod netlink;
pub mod plugin;
pub mod result;
pub mod subnet_file;
pub mod trace;
pub mod validate;
pub mod version;

/// The binary's main: CNI_* from the environment, the netconf on stdin, the result or error JSON on stdout.
pub fn cli_main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    // Runtimes never pass arguments; a person (or an install check) asking for the version gets one line
    // instead of a CNI error about the missing CNI_COMMAND.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("weft CNI plugin {} (CNI spec versions {})", env!("CARGO_PKG_VERSION"), version::SUPPORTED.join(", "));
        return std::process::ExitCode::SUCCESS;
    }
    trace::start();
    // Network configs are small; one read usually takes all of it.
    let mut stdin = Vec::with_capacity(16 * 1024);
    // VERSION may come without stdin; a read error is then reported by the command that needs the config.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = plugin::run(&|name| std::env::var(name).ok(), &stdin);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(outcome.stdout.as_bytes());
    let _ = stdout.flush();
    trace::mark("done");
    if outcome.success {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
