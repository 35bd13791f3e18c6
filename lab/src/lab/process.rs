//! Daemons started by the lab: spawning them detached, recognising them by
//! recorded pid, and stopping them without ever touching anyone else's.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cmd::describe;
use super::LabError;

/// How a recorded pid is recognised as still being the daemon the lab
/// started, since pids are recycled once a process is gone.
#[derive(Debug, Clone)]
pub(crate) struct Daemon {
    /// Human name for messages, e.g. "weftd on host 2".
    pub what: String,
    /// Text that must occur in /proc/<pid>/cmdline, e.g. "weftd".
    pub cmdline_marker: String,
    /// /run/netns/<ns> of the namespace the daemon was started in.
    pub netns_file: PathBuf,
}

/// Spawns `command` as a daemon: stdin from /dev/null, stdout and stderr
/// appended to `log`, and in its own process group so that it survives the
/// exit (or Ctrl-C) of the process that started it. Returns its pid.
pub(crate) fn spawn_daemon(mut command: Command, log: &Path) -> Result<u32, LabError> {
    let stdout = open_log(log)?;
    let stderr = stdout.try_clone().map_err(|e| LabError::io(format!("duplicating {}", log.display()), e))?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
    let child = command.spawn().map_err(|source| LabError::Spawn { command: describe(&command), source })?;
    // The Child handle is dropped without waiting: liveness checks reap the
    // zombie with waitpid, and a later process finds the daemon by its pid.
    Ok(child.id())
}

/// Opens `log` for appending, creating it if needed.
pub(crate) fn open_log(log: &Path) -> Result<File, LabError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(format!("opening log {}", log.display()), e))
}

/// Appends a marker line so that restarts are visible in a shared log.
pub(crate) fn log_marker(log: &Path, text: &str) -> Result<(), LabError> {
    writeln!(open_log(log)?, "--- weft lab: {text} ---")
        .map_err(|e| LabError::io(format!("writing {}", log.display()), e))
}

/// True while `pid` exists and has not exited. A zombie child of this
/// process is reaped on the way, so it does not linger.
pub(crate) fn is_alive(pid: u32) -> bool {
    reap_if_child(pid);
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which
        // may itself contain spaces or parentheses.
        Ok(stat) => !matches!(
            stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z') | Some('X') | None
        ),
        Err(_) => false,
    }
}

/// Collects the exit status if `pid` is an exited child of this process;
/// harmless (ECHILD) for anything else.
fn reap_if_child(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let mut status = 0;
    // SAFETY: plain syscall on a pid with a valid out-pointer; WNOHANG
    // makes it return at once.
    unsafe {
        libc::waitpid(pid, &mut status, libc::WNOHANG);
    }
}

/// True if `pid` is alive and still looks like `daemon`: its command line
/// contains the marker and, while the lab's namespace exists, it runs in
/// that namespace. This guards against recycled pids after `Lab::load`.
pub(crate) fn is_our_daemon(pid: u32, daemon: &Daemon) -> bool {
    is_alive(pid) && cmdline_matches(pid, &daemon.cmdline_marker) && in_netns(pid, &daemon.netns_file)
}

fn cmdline_matches(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).contains(marker))
        .unwrap_or(false)
}

fn in_netns(pid: u32, netns_file: &Path) -> bool {
    let Ok(expected) = netns_file.metadata() else {
        // Namespace already deleted: the command line check has to do.
        return true;
    };
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|actual| (actual.dev(), actual.ino()) == (expected.dev(), expected.ino()))
        .unwrap_or(false)
}

/// Waits (briefly) until a just-spawned daemon is recognisable: between
/// spawn and its `exec`, `ip netns exec` still runs in our namespace, and
/// liveness checks made in that window would wrongly say "not running".
pub(crate) fn settle(pid: u32, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_alive(pid) && !is_our_daemon(pid, daemon) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What `terminate` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// It had already exited.
    WasNotRunning,
    /// The pid now belongs to another program, which was left alone.
    PidReused,
    /// It exited after SIGTERM.
    Terminated,
    /// It ignored SIGTERM for `grace` and was killed.
    Killed,
}

/// Stops the daemon with SIGTERM, then SIGKILL after `grace`.
pub(crate) fn terminate(pid: u32, daemon: &Daemon, grace: Duration) -> Result<Stopped, LabError> {
    let mut results = terminate_all(&[(pid, daemon.clone())], grace);
    results.pop().unwrap_or(Ok(Stopped::WasNotRunning))
}

/// Stops several daemons at once: SIGTERM to all, then SIGKILL to those
/// still alive after `grace`. Signalling them together keeps a 200-host
/// teardown as slow as the slowest daemon, not as the sum of them.
pub(crate) fn terminate_all(targets: &[(u32, Daemon)], grace: Duration) -> Vec<Result<Stopped, LabError>> {
    let mut outcome: Vec<Option<Stopped>> = targets
        .iter()
        .map(|(pid, daemon)| {
            if !is_alive(*pid) {
                Some(Stopped::WasNotRunning)
            } else if !is_our_daemon(*pid, daemon) {
                Some(Stopped::PidReused)
            } else {
                send_signal(*pid, libc::SIGTERM);
                None
            }
        })
        .collect();
    wait_for_exits(targets, &mut outcome, grace, Stopped::Terminated);
    for ((pid, _), state) in targets.iter().zip(&outcome) {
        if state.is_none() {
            send_signal(*pid, libc::SIGKILL);
        }
    }
    wait_for_exits(targets, &mut outcome, Duration::from_secs(5), Stopped::Killed);
    targets
        .iter()
        .zip(outcome)
        .map(|((pid, daemon), state)| {
            state.ok_or_else(|| LabError::Unkillable { what: daemon.what.clone(), pid: *pid })
        })
        .collect()
}

fn send_signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a single positive pid that was just verified
        // to be the lab's daemon; no memory is involved.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Marks each pending target that exits before `timeout` as `exited`.
fn wait_for_exits(targets: &[(u32, Daemon)], outcome: &mut [Option<Stopped>], timeout: Duration, exited: Stopped) {
    let deadline = Instant::now() + timeout;
    loop {
        for ((pid, _), state) in targets.iter().zip(outcome.iter_mut()) {
            if state.is_none() && !is_alive(*pid) {
                *state = Some(exited);
            }
        }
        if outcome.iter().all(Option::is_some) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a log file (at most its last 64 KiB), or a
/// note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(log is empty)".to_string(),
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper_daemon() -> Daemon {
        Daemon {
            what: "test sleeper".into(),
            cmdline_marker: "sleep".into(),
            // Our own namespace: the child inherits it.
            netns_file: PathBuf::from("/proc/self/ns/net"),
        }
    }

    #[test]
    fn spawns_logs_and_terminates_a_daemon() {
        let dir = std::env::temp_dir().join(format!("weft-lab-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("d.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo hello; exec sleep 30"]);
        let pid = spawn_daemon(command, &log).unwrap();
        let daemon = sleeper_daemon();
        assert!(wait_until(|| is_our_daemon(pid, &daemon)));
        assert!(wait_until(|| log_tail(&log, 5).contains("hello")));
        assert_eq!(terminate(pid, &daemon, Duration::from_secs(5)).unwrap(), Stopped::Terminated);
        assert!(!is_alive(pid));
        assert_eq!(terminate(pid, &daemon, Duration::from_secs(5)).unwrap(), Stopped::WasNotRunning);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leaves_processes_with_other_command_lines_alone() {
        // This test process is alive but its command line lacks the marker.
        let me = std::process::id();
        let daemon = Daemon { cmdline_marker: "definitely-not-in-a-test-cmdline".into(), ..sleeper_daemon() };
        assert!(is_alive(me));
        assert_eq!(terminate(me, &daemon, Duration::from_millis(10)).unwrap(), Stopped::PidReused);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("weft-lab-tail-{}", std::process::id()));
        std::fs::write(&path, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&path, 2), "3\n4");
        std::fs::write(&path, "").unwrap();
        assert_eq!(log_tail(&path, 2), "(log is empty)");
        std::fs::remove_file(&path).unwrap();
        assert!(log_tail(&path, 2).contains("cannot read"));
    }

    fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
