//! Bad input on weftd's command line and in its environment: a clear error that names the input, and a non-zero
//! exit. These need no root and no etcd: every case fails before weftd would connect anywhere. weftctl's cases are
//! in its own package (weftctl/tests/cli.rs).

use std::process::{Command, Output};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_malformed_flag_names_the_flag() {
    let out = run(WEFTD, &["--subnet-lease-ttl", "forever"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("--subnet-lease-ttl") && err.contains("\"forever\" is not a duration"), "{err}");
}

#[test]
fn a_malformed_environment_variable_is_rejected_whichever_name_it_uses() {
    for var in ["WEFTD_RESYNC_INTERVAL", "FLANNELD_RESYNC_INTERVAL"] {
        let out = run(WEFTD, &[], &[(var, "often")]);
        assert_eq!(out.status.code(), Some(2), "{var}");
        let err = stderr(&out);
        assert!(err.contains("--resync-interval") && err.contains("\"often\" is not a duration"), "{var}: {err}");
    }
    let out = run(WEFTD, &[], &[("FLANNELD_PUBLIC_IP", "10.0.0.300")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--public-ip"), "{}", stderr(&out));
}

#[test]
fn weftd_names_the_weftd_variable_over_flannels() {
    // WEFTD_ wins when both are set: the valid flannel value is ignored and the bad weft one reported.
    let out = run(WEFTD, &[], &[("WEFTD_LOG_FORMAT", "xml"), ("FLANNELD_LOG_FORMAT", "json")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'xml'"), "{}", stderr(&out));
}

#[test]
fn a_bad_log_filter_is_named() {
    let out = run(WEFTD, &["--log-level", "weft=loud"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--log-level \"weft=loud\""), "{}", stderr(&out));
}

#[test]
fn a_bad_etcd_endpoint_is_named() {
    let out = run(WEFTD, &["--etcd-endpoints", "127.0.0.1:2379"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid etcd endpoint \"127.0.0.1:2379\""), "{}", stderr(&out));
}

#[test]
fn flanneld_variables_take_gos_boolean_spellings() {
    for yes in ["1", "t", "T", "TRUE", "true", "True"] {
        // The Kubernetes subnet manager, outside a pod and without a kubeconfig: it says how to reach the API.
        let out = run(WEFTD, &[], &[("FLANNELD_KUBE_SUBNET_MGR", yes)]);
        assert_eq!(out.status.code(), Some(1), "{yes}");
        assert!(stderr(&out).contains("no --kube-api-url or --kubeconfig-file"), "{yes}: {}", stderr(&out));
    }
    for no in ["0", "f", "F", "FALSE", "false", "False"] {
        // false keeps etcd, and the refusal of an out-of-range margin comes first either way.
        let out = run(WEFTD, &["-subnet-lease-renew-margin=0"], &[("FLANNELD_KUBE_SUBNET_MGR", no)]);
        assert_eq!(out.status.code(), Some(1), "{no}");
        assert!(stderr(&out).contains("--subnet-lease-renew-margin=0 is out of range"), "{no}: {}", stderr(&out));
    }
    let out = run(WEFTD, &[], &[("FLANNELD_IP_MASQ", "yes")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"yes\" is not a boolean"), "{}", stderr(&out));
}

#[test]
fn a_single_dash_flanneld_command_line_reaches_the_daemon() {
    let out =
        run(WEFTD, &["-etcd-endpoints=http://127.0.0.1:1", "-kube-subnet-mgr", "-kube-annotation-prefix", "Bad"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--kube-annotation-prefix \"Bad\""), "{}", stderr(&out));
    let out = run(WEFTD, &["-version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("weftd "));
}
