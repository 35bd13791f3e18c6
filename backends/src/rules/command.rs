//! Running the firewall front ends (nft, iptables-restore, iptables-save): one way for both appliers.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::RulesError;

/// Runs `command` (program first, e.g. `ip netns exec NS nft`) with `args`, feeding `input` on stdin (closed after
/// it, which tells nft and iptables-restore the script is complete); returns stdout. `what` names the request in
/// errors, which also carry the whole command line and, on failure, its stderr.
pub(super) async fn run(
    what: &str,
    command: &[&str],
    args: &[&str],
    input: Option<&str>,
) -> Result<String, RulesError> {
    let shown = command.iter().chain(args).copied().collect::<Vec<_>>().join(" ");
    let spawn_error = |source| RulesError::Spawn { op: what.to_string(), program: shown.clone(), source };
    let mut child = tokio::process::Command::new(command[0])
        .args(&command[1..])
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).await.map_err(spawn_error)?;
    }
    let output = child.wait_with_output().await.map_err(spawn_error)?;
    if !output.status.success() {
        return Err(RulesError::Failed {
            op: what.to_string(),
            program: shown,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
