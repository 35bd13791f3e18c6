//! The lab's error type: every variant names the thing that failed and why.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),

    #[error("the lab must run as root: creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN")]
    NotRoot,

    #[error(
        "`{tool}` not found in PATH (or /usr/sbin, /sbin, /usr/bin, /bin); install it with `apt-get install {package}`"
    )]
    MissingTool { tool: &'static str, package: &'static str },

    #[error("a lab named {name:?} already exists ({}); tear it down first with `weftctl lab down --name {name} --state-root {}`", .dir.display(), .state_root.display())]
    AlreadyExists { name: String, dir: PathBuf, state_root: PathBuf },

    #[error("network namespace {0} already exists but belongs to no lab recorded here; if it is a leftover, remove it with `ip netns del {0}`")]
    NamespaceExists(String),

    #[error("no lab named {name:?}: state file {path} does not exist")]
    NotFound { name: String, path: PathBuf },

    #[error("lab state file {path} is invalid: {reason}")]
    BadState { path: PathBuf, reason: String },

    #[error("host {index} does not exist: this lab has hosts 1..={hosts}")]
    NoSuchHost { index: usize, hosts: usize },

    #[error("namespace {ns:?} does not belong to lab {lab:?}; the lab only runs commands in its own namespaces")]
    ForeignNamespace { ns: String, lab: String },

    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed { command: String, status: String, stderr: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("etcd in the lab is not ready ({reason}) after {waited:?}; last lines of {log}:\n{tail}")]
    EtcdNotReady { reason: String, waited: Duration, log: PathBuf, tail: String },

    #[error("weftd on host {host} did not write a valid {subnet_file} ({reason}) after {waited:?}; last lines of {log}:\n{tail}")]
    WeftdNotReady { host: usize, reason: String, subnet_file: PathBuf, waited: Duration, log: PathBuf, tail: String },

    #[error("{path}: {reason}")]
    SubnetEnv { path: PathBuf, reason: String },

    #[error("{what} is already running (pid {pid})")]
    AlreadyRunning { what: String, pid: u32 },

    #[error("{what} (pid {pid}) did not exit after SIGKILL")]
    Unkillable { what: String, pid: u32 },

    #[error("not every container reaches every other: {failed} of {total} pings failed")]
    Disconnected { failed: usize, total: usize },

    #[error("tearing down lab {name:?} left things behind (state kept for a retry):\n  {}", .problems.join("\n  "))]
    Teardown { name: String, problems: Vec<String> },

    #[error("{error}\nand the teardown after that failure was incomplete too: {teardown}")]
    UpAndTeardownFailed { error: Box<LabError>, teardown: Box<LabError> },
}

impl LabError {
    /// Wraps an I/O error with what was being done to which path.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> LabError {
        LabError::Io { context: context.into(), source }
    }
}
