//! weftd: the host daemon. All logic lives in the library (`weft::daemon`).

use weft::flags::{self, DaemonArgs};

fn main() -> std::process::ExitCode {
    // Before any thread exists: setting environment variables is only safe while single-threaded.
    flags::adopt_flannel_env();
    let args = DaemonArgs::parse_go_style(std::env::args_os());
    if args.version {
        println!("weftd {}", env!("CARGO_PKG_VERSION"));
        return std::process::ExitCode::SUCCESS;
    }
    if let Err(e) = weft::logging::init(args.log_format, &args.log_level) {
        eprintln!("weftd: {e}");
        return std::process::ExitCode::from(2);
    }
    weft::controller::share_one_heap();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(weft::daemon::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
