//! Bad input to the CNI plugin: each case gets the spec's error code, a message naming what is wrong, a non-zero
//! exit, and changes nothing (the IPAM store is never created). These runs fail before touching the kernel, so they
//! need no namespace; they run as whatever user runs the tests.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_weft");

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wci{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the plugin with exactly `vars` in its environment and `stdin`; returns (exit ok, stdout JSON).
fn run(vars: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    run_via(Command::new(PLUGIN), vars, stdin)
}

/// [`run`] through `command` (the plugin, or a wrapper that runs it).
fn run_via(mut command: Command, vars: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut child = command
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"));
    (out.status.success(), json)
}

/// A valid config whose subnet file exists, so that only the one broken thing can fail.
fn setup(tag: &str) -> (TempDir, Value) {
    let dir = TempDir::new(tag);
    let subnet = dir.0.join("subnet.env");
    std::fs::write(
        &subnet,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "wci", "type": "weft", "subnetFile": subnet,
                      "ipam": {"dataDir": dir.0.join("ipam")}});
    (dir, conf)
}

const ADD: [(&str, &str); 5] = [
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "ctr1"),
    ("CNI_NETNS", "/nonexistent/netns"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/usr/lib/cni"),
];

fn with(
    vars: &[(&'static str, &'static str)],
    key: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = vars.iter().copied().filter(|(k, _)| *k != key).collect();
    if !value.is_empty() {
        v.push((key, value));
    }
    v
}

#[track_caller]
fn expect_error(vars: &[(&str, &str)], stdin: &str, code: u64, names: &str, dir: &TempDir) {
    let before = dir.entries();
    let (ok, out) = run(vars, stdin);
    assert!(!ok, "must fail: {out}");
    assert_eq!(out["code"], code, "{out}");
    let msg = out["msg"].as_str().unwrap();
    assert!(msg.contains(names), "message {msg:?} should name {names:?}");
    assert_eq!(dir.entries(), before, "nothing changed on disk");
}

#[test]
fn malformed_stdin_is_a_decoding_error() {
    let (dir, _) = setup("stdin");
    expect_error(&ADD, "{\"cniVersion\": ", 6, "cannot decode", &dir);
    expect_error(&ADD, "", 6, "cannot decode", &dir);
    expect_error(&ADD, "[]", 6, "not a JSON object", &dir);
}

#[test]
fn missing_variables_are_named() {
    let (dir, conf) = setup("vars");
    let conf = conf.to_string();
    expect_error(&with(&ADD, "CNI_COMMAND", ""), &conf, 4, "CNI_COMMAND is not set", &dir);
    expect_error(&with(&ADD, "CNI_COMMAND", "EXPLODE"), &conf, 4, "EXPLODE", &dir);
    expect_error(&with(&ADD, "CNI_CONTAINERID", ""), &conf, 4, "CNI_CONTAINERID is not set", &dir);
    expect_error(&with(&ADD, "CNI_IFNAME", ""), &conf, 4, "CNI_IFNAME is not set", &dir);
    expect_error(&with(&ADD, "CNI_NETNS", ""), &conf, 4, "CNI_NETNS is not set", &dir);
    for command in ["DEL", "CHECK"] {
        expect_error(
            &with(&with(&ADD, "CNI_COMMAND", command), "CNI_CONTAINERID", ""),
            &conf,
            4,
            "CNI_CONTAINERID",
            &dir,
        );
    }
}

#[test]
fn unknown_cni_version_is_incompatible() {
    let (dir, mut conf) = setup("version");
    conf["cniVersion"] = json!("0.2.0");
    expect_error(&ADD, &conf.to_string(), 1, "0.2.0", &dir);
    conf["cniVersion"] = json!("7.0.0");
    expect_error(&ADD, &conf.to_string(), 1, "7.0.0", &dir);
    let (ok, out) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#);
    assert!(ok);
    assert_eq!(out["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
}

#[test]
fn traversal_attempts_never_reach_a_path() {
    let (dir, conf) = setup("traversal");
    let text = conf.to_string();
    for id in ["../../../etc", "a/b", "..", ".hidden"] {
        let vars: Vec<(&str, &str)> =
            ADD.iter().copied().map(|(k, v)| if k == "CNI_CONTAINERID" { (k, id) } else { (k, v) }).collect();
        expect_error(&vars, &text, 4, "CNI_CONTAINERID", &dir);
        let vars: Vec<(&str, &str)> =
            vars.iter().map(|(k, v)| if *k == "CNI_COMMAND" { (*k, "DEL") } else { (*k, *v) }).collect();
        expect_error(&vars, &text, 4, "CNI_CONTAINERID", &dir);
    }
    for ifname in ["../eth0", "..", "a/b", "x234567890123456"] {
        let vars: Vec<(&str, &str)> =
            ADD.iter().copied().map(|(k, v)| if k == "CNI_IFNAME" { (k, ifname) } else { (k, v) }).collect();
        expect_error(&vars, &text, 4, "CNI_IFNAME", &dir);
    }
    for name in ["../../etc", "..", "a/b"] {
        let mut bad = conf.clone();
        bad["name"] = json!(name);
        expect_error(&ADD, &bad.to_string(), 7, "network name", &dir);
        expect_error(&with(&ADD, "CNI_COMMAND", "DEL"), &bad.to_string(), 7, "network name", &dir);
    }
    let mut bad = conf.clone();
    bad["ipam"]["type"] = json!("../../bin/sh");
    expect_error(&ADD, &bad.to_string(), 7, "ipam.type", &dir);
}

#[test]
fn missing_subnet_file_says_weftd_is_not_there() {
    let (dir, mut conf) = setup("subnet");
    conf["subnetFile"] = json!(dir.0.join("missing.env"));
    expect_error(&ADD, &conf.to_string(), 11, "weftd is not running", &dir);
    conf["cniVersion"] = json!("1.1.0");
    expect_error(&[("CNI_COMMAND", "STATUS")], &conf.to_string(), 50, "weftd is not running", &dir);
    // With the file in place STATUS is ready: exit 0, nothing on stdout.
    let (_ok_dir, good) = setup("subnet-ok");
    let out = Command::new(PLUGIN)
        .env_clear()
        .env("CNI_COMMAND", "STATUS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(good.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    // A malformed subnet file is named too.
    std::fs::write(dir.0.join("bad.env"), "FLANNEL_SUBNET=nope\n").unwrap();
    conf["subnetFile"] = json!(dir.0.join("bad.env"));
    expect_error(&with(&ADD, "CNI_COMMAND", "STATUS"), &conf.to_string(), 50, "bad.env", &dir);
}

#[test]
fn subnet_file_values_that_would_break_a_container_are_invalid_config() {
    for (name, text, names) in [
        ("mtu0", "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=0\n", "FLANNEL_MTU=0"),
        (
            "outside",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.99.9.1/24\nFLANNEL_MTU=1450\n",
            "is not inside FLANNEL_NETWORK",
        ),
    ] {
        let (dir, conf) = setup(name);
        std::fs::write(dir.0.join("subnet.env"), text).unwrap();
        expect_error(&ADD, &conf.to_string(), 7, names, &dir);
    }
}

#[test]
fn the_plugins_own_netns_is_never_a_containers() {
    let (dir, conf) = setup("ownns");
    // /proc/self is the plugin process itself: its own netns. The plugin runs in a throwaway user and network
    // namespace, so even a plugin that failed this check would only touch that namespace, never the host's.
    let vars = with(&ADD, "CNI_NETNS", "/proc/self/ns/net");
    let mut unshare = Command::new("/usr/bin/unshare");
    unshare.args(["--user", "--map-root-user", "--net", PLUGIN]);
    let before = dir.entries();
    let (ok, out) = run_via(unshare, &vars, &conf.to_string());
    assert!(!ok, "must fail: {out}");
    assert_eq!(out["code"], 4, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("is the plugin's own network namespace"), "{out}");
    assert_eq!(dir.entries(), before, "nothing changed on disk");
}

#[test]
fn a_repeated_add_for_the_same_container_and_interface_is_refused_before_anything_changes() {
    let (dir, conf) = setup("repeat");
    // An earlier ADD of ctr1/eth0 holds 10.244.9.2 in the built-in IPAM's records.
    let records = dir.0.join("ipam/wci");
    std::fs::create_dir_all(&records).unwrap();
    std::fs::write(records.join("lock"), "").unwrap();
    std::fs::write(records.join("10.244.9.2"), "ctr1\r\neth0").unwrap();
    let before: Vec<_> = std::fs::read_dir(&records).unwrap().flatten().map(|e| e.file_name()).collect();
    expect_error(&ADD, &conf.to_string(), 4, "container ctr1 already has eth0 with 10.244.9.2", &dir);
    let after: Vec<_> = std::fs::read_dir(&records).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(after.len(), before.len(), "no second address");
    // Another interface of the same container is a different attachment (it fails later, at the missing netns).
    let (ok, out) = run(&with(&ADD, "CNI_IFNAME", "eth1"), &conf.to_string());
    assert!(!ok && !out["msg"].as_str().unwrap().contains("already has"), "{out}");
}
