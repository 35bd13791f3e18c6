//! Finding the external tools the lab drives and running them.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::LabError;

/// External programs the lab runs, each with the Debian package providing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    Ip,
    Etcd,
    Etcdctl,
    Sysctl,
    Ping,
}

impl Tool {
    const ALL: [Tool; 5] = [Tool::Ip, Tool::Etcd, Tool::Etcdctl, Tool::Sysctl, Tool::Ping];

    fn name(self) -> &'static str {
        match self {
            Tool::Ip => "ip",
            Tool::Etcd => "etcd",
            Tool::Etcdctl => "etcdctl",
            Tool::Sysctl => "sysctl",
            Tool::Ping => "ping",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Tool::Ip => "iproute2",
            Tool::Etcd => "etcd-server etcd-client",
            Tool::Etcdctl => "etcd-server etcd-client",
            Tool::Sysctl => "procps",
            Tool::Ping => "iputils-ping",
        }
    }

    /// Absolute path of the tool. It is resolved once per process: absolute
    /// paths keep working when `ip netns exec` runs them, and a root shell
    /// without /usr/sbin in PATH still finds `ip`.
    pub(crate) fn path(self) -> Result<&'static Path, LabError> {
        static RESOLVED: [OnceLock<Option<PathBuf>>; 5] = [const { OnceLock::new() }; 5];
        let slot = &RESOLVED[Tool::ALL.iter().position(|t| *t == self).unwrap_or(0)];
        slot.get_or_init(|| find_program(self.name()))
            .as_deref()
            .ok_or(LabError::MissingTool { tool: self.name(), package: self.package() })
    }
}

/// Checks that every tool the lab and its tests use is installed
/// (ip, etcd, etcdctl, sysctl, ping).
pub fn check_tools() -> Result<(), LabError> {
    require(&Tool::ALL)
}

pub(crate) fn require(tools: &[Tool]) -> Result<(), LabError> {
    tools.iter().try_for_each(|tool| tool.path().map(drop))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let fallbacks = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path_var)
        .chain(fallbacks)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// `ip netns exec <ns> <program>`, ready for more arguments.
pub(crate) fn in_netns(ns: &str, program: impl AsRef<OsStr>) -> Result<Command, LabError> {
    let mut command = Command::new(Tool::Ip.path()?);
    command.args(["netns", "exec", ns]).arg(program);
    Ok(command)
}

/// The command line, for error messages.
pub(crate) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` to completion, collecting its output whatever its status.
pub(crate) fn output(mut command: Command) -> Result<Output, LabError> {
    command.stdin(Stdio::null());
    command.output().map_err(|source| LabError::Spawn { command: describe(&command), source })
}

/// Runs `command` and fails unless it exits successfully.
pub(crate) fn run(command: Command) -> Result<Output, LabError> {
    let text = describe(&command);
    let out = output(command)?;
    check_status(text, out)
}

fn check_status(command: String, out: Output) -> Result<Output, LabError> {
    if out.status.success() {
        return Ok(out);
    }
    Err(LabError::CommandFailed {
        command,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs one `ip` command in the root namespace (only ever to create or
/// delete namespaces and veths whose ends live in lab namespaces).
pub(crate) fn ip<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Result<(), LabError> {
    let mut command = Command::new(Tool::Ip.path()?);
    command.args(args);
    run(command).map(drop)
}

/// Runs several `ip` commands in one process (`ip [-n ns] -batch -`); this
/// matters for labs with hundreds of hosts. `netns: None` means the root
/// namespace, where only namespace-creating commands are sent.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut command = Command::new(Tool::Ip.path()?);
    if let Some(ns) = netns {
        command.args(["-n", ns]);
    }
    command.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let text = format!("{} <<< '{}'", describe(&command), lines.join("; "));
    let spawn_error = |source| LabError::Spawn { command: text.clone(), source };
    let mut child = command.spawn().map_err(spawn_error)?;
    let script = lines.join("\n") + "\n";
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(script.as_bytes())).unwrap_or(Ok(()));
    let out = child.wait_with_output().map_err(spawn_error)?;
    // A failed command makes ip stop reading, so its status and stderr
    // explain a broken pipe better than the write error does.
    let out = check_status(text.clone(), out)?;
    written.map_err(spawn_error)?;
    drop(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_joins_program_and_args() {
        let mut command = Command::new("ip");
        command.args(["-n", "wl-x-u", "link"]);
        assert_eq!(describe(&command), "ip -n wl-x-u link");
    }

    #[test]
    fn finds_sh_but_not_nonsense() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-weft-lab").is_none());
    }

    #[test]
    fn failed_commands_report_status_and_stderr() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo oops >&2; exit 3"]);
        let err = run(command).unwrap_err().to_string();
        assert!(err.contains("sh -c"), "{err}");
        assert!(err.contains("oops"), "{err}");
        assert!(err.contains('3'), "{err}");
    }
}
