//! Ctrl-C (SIGINT) or SIGTERM in the middle of a benchmark: the labs and scratch namespaces this process holds are
//! removed before it exits, as their guards remove them on a normal return. Without this the signal's default
//! action ends the process at once and leaves its etcd, weftd processes and namespaces behind.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

use crate::lab::Lab;

/// What this process holds: labs by state directory, scratch namespaces by name.
struct Held {
    labs: Vec<PathBuf>,
    namespaces: Vec<String>,
}

static HELD: Mutex<Held> = Mutex::new(Held { labs: Vec::new(), namespaces: Vec::new() });

fn held() -> MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn hold_lab(dir: &Path) {
    held().labs.push(dir.to_path_buf());
}

pub(crate) fn release_lab(dir: &Path) {
    held().labs.retain(|d| d != dir);
}

pub(crate) fn hold_namespace(name: &str) {
    held().namespaces.push(name.to_string());
}

pub(crate) fn release_namespace(name: &str) {
    held().namespaces.retain(|n| n != name);
}

/// Starts the thread that waits for SIGINT and SIGTERM (once per process; later calls do nothing). Returns once
/// the signals are caught, so that none arriving afterwards takes the default action.
pub(crate) fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("weftctl bench: cannot watch for Ctrl-C ({e}); an interrupted run leaves its labs");
                    let _ = ready_tx.send(());
                    return;
                }
            };
            let signal = runtime.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut interrupt), Ok(mut terminate)) =
                    (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                else {
                    eprintln!("weftctl bench: cannot watch for Ctrl-C; an interrupted run leaves its labs");
                    let _ = ready_tx.send(());
                    return None;
                };
                let _ = ready_tx.send(());
                tokio::select! {
                    _ = interrupt.recv() => Some("interrupted"),
                    _ = terminate.recv() => Some("terminated"),
                }
            });
            if let Some(what) = signal {
                remove_everything_held(what);
                // 128 + SIGINT, as a shell reports a process ended by Ctrl-C.
                std::process::exit(130);
            }
        });
        let _ = ready_rx.recv();
    });
}

/// Takes the labs and namespaces down, holding the list so that nothing new is added meanwhile.
fn remove_everything_held(what: &str) {
    let held = held();
    eprintln!(
        "weftctl bench: {what}; removing {} lab(s) and {} scratch namespace(s) before exiting",
        held.labs.len(),
        held.namespaces.len()
    );
    for dir in &held.labs {
        let (Some(root), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else { continue };
        match Lab::load(root, name).and_then(|lab| lab.down()) {
            Ok(()) => {}
            Err(e) => eprintln!("weftctl bench: removing lab {name}: {e}"),
        }
    }
    for name in held.namespaces.iter().rev() {
        if let Err(e) = super::netns::run_ip(&["netns", "del", name]) {
            eprintln!("weftctl bench: removing namespace {name}: {e}");
        }
    }
}
