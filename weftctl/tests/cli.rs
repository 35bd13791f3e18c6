//! Bad input on weftctl's command line: a clear error that names the input, and a non-zero exit. These need no root
//! and no etcd: every case fails before weftctl would connect anywhere.

use std::process::{Command, Output};

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");

fn run(args: &[&str]) -> Output {
    Command::new(WEFTCTL).args(args).env_clear().env("PATH", "/usr/bin:/bin").output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn weftctl_validates_a_config_before_storing_it() {
    let out = run(&[
        "config",
        "set",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
        r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("field SubnetLen: 33 is longer than /30"), "{}", stderr(&out));
    let out = run(&["config", "set", "@/nonexistent/net.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reading /nonexistent/net.json"), "{}", stderr(&out));
}

#[test]
fn weftctl_rejects_a_subnet_with_host_bits() {
    let out = run(&[
        "lease",
        "reserve",
        "10.244.9.1/24",
        "--public-ip",
        "10.0.0.7",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("10.244.9.1/24 has host bits set; use 10.244.9.0/24"), "{}", stderr(&out));
}

#[test]
fn docker_opts_writes_mk_docker_opts_variables() {
    let dir = std::env::temp_dir().join(format!("weftctl-docker-opts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = dir.join("subnet.env");
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let out_file = dir.join("docker_opts.env");
    let out = run(&["docker-opts", "-f", env.to_str().unwrap(), "-d", out_file.to_str().unwrap(), "-c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "DOCKER_OPTS=\" --bip=10.244.3.1/24 --ip-masq=false --mtu=1450\"\n"
    );
    std::fs::write(&env, "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPMASQ=maybe\n").unwrap();
    let out = run(&["docker-opts", "-f", env.to_str().unwrap(), "-d", out_file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Invalid value of FLANNEL_IPMASQ"), "{}", stderr(&out));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Nothing to talk to: status says weftd does not answer and exits 1; its JSON says the same, and piped output
/// carries no colour codes.
#[test]
fn status_without_weftd_names_the_endpoint_and_fails() {
    let base = ["status", "--weftd", "127.0.0.1:1", "--etcd-endpoints", "http://127.0.0.1:1"];
    let out = run(&base);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not answering at 127.0.0.1:1"), "{text}");
    assert!(!text.contains('\x1b'), "no colour in a pipe: {text:?}");
    assert!(stderr(&out).contains("nothing answers at 127.0.0.1:1"), "{}", stderr(&out));

    let out = run(&[&base[..], &["--output", "json"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["weftd"].is_null(), "{json}");
    assert!(json["weftd_error"].as_str().unwrap().contains("127.0.0.1:1"), "{json}");
    assert_eq!(json["store"]["reachable"], false, "{json}");

    let out = run(&["status", "--weftd", "127.0.0.1", "--etcd-endpoints", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("weftd endpoint \"127.0.0.1\" is not HOST:PORT"), "{}", stderr(&out));
}
