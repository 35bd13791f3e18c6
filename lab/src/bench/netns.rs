//! Running code inside a network namespace, and scratch namespaces that remove themselves.
//!
//! The bench process stays in the root namespace, which must never talk to lab addresses. Work that needs
//! sockets inside a lab (the etcd client) runs on an [`NsRuntime`]: a dedicated thread that entered the
//! namespace and drives its own current-thread tokio runtime, so every socket its tasks open belongs to that
//! namespace and no shared worker thread ever changes namespace.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::sync::oneshot;

use super::error::{fail, Context, Result};

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread and enters namespace `ns` (a name under /run/netns).
    pub fn start(ns: &str) -> Result<NsRuntime> {
        let path = netns_path(ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weft-bench-netns".into())
            .spawn(move || {
                let runtime = enter(&path).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread().enable_all().build().context("building a runtime")
                });
                match runtime {
                    Ok(runtime) => {
                        let (stop_tx, stop_rx) = oneshot::channel::<()>();
                        let _ = ready_tx.send(Ok((runtime.handle().clone(), stop_tx)));
                        // Tasks spawned through the handle run while this blocks.
                        runtime.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("spawning the netns thread")?;
        let (handle, stop) = ready_rx.recv().context("the netns thread exited")??;
        Ok(NsRuntime { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Runs `fut` on the namespace's thread and waits for its result.
    pub async fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.context("a task in the namespace failed")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves this thread, which exists only to run the namespace's runtime, into the namespace for good.
fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).context(format!("opening {}", path.display()))?;
    weft_netlink::netns::enter_for_good(&file).context(format!("entering {}", path.display()))
}

/// Network namespaces created by the benchmark, deleted when dropped (also on errors and panics). Names carry
/// the bench's pid so that concurrent runs and other users' namespaces are never touched.
pub struct ScratchNamespaces {
    names: Vec<String>,
}

impl ScratchNamespaces {
    pub fn new() -> ScratchNamespaces {
        ScratchNamespaces { names: Vec::new() }
    }

    /// Creates `wbn<pid>-<suffix>` and returns its name.
    pub fn create(&mut self, suffix: &str) -> Result<String> {
        let name = format!("wbn{}-{suffix}", std::process::id());
        if netns_path(&name).exists() {
            return fail(format!("namespace {name} already exists; refusing to reuse it"));
        }
        run_ip(&["netns", "add", &name])?;
        super::interrupt::hold_namespace(&name);
        self.names.push(name.clone());
        run_ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }
}

impl Drop for ScratchNamespaces {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            if let Err(e) = run_ip(&["netns", "del", &name]) {
                eprintln!("weftctl bench: removing namespace {name}: {e}");
            }
            super::interrupt::release_namespace(&name);
        }
    }
}

/// Runs `ip` with `args`; fails with its stderr.
pub fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip")?;
    if !out.status.success() {
        return fail(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// Feeds `script` to `<program> [-n ns] -batch -` and returns how long the whole process took.
pub fn batch(program: &str, ns: &str, script: &str) -> Result<std::time::Duration> {
    use std::io::Write;
    let started = std::time::Instant::now();
    let mut child = Command::new(program)
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(format!("running {program} -batch"))?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(script.as_bytes()));
    let out = child.wait_with_output().context(format!("waiting for {program} -batch"))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        return fail(format!("{program} -n {ns} -batch: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    if let Some(Err(e)) = written {
        return fail(format!("writing to {program} -batch: {e}"));
    }
    Ok(elapsed)
}
