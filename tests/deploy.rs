//! deploy/: the Kubernetes manifests, the Dockerfile and the Grafana dashboard, checked offline so none of them
//! can rot unnoticed. Every manifest validates against pinned Kubernetes API schemas (`kubernetes-validate`), the
//! DaemonSets' command lines parse with weftd's and weftctl's own parsers and mount what those flags name, the
//! ConfigMaps hold the shipped conflist and a network config weftd accepts, the Dockerfile passes hadolint, and
//! every metric the dashboard queries is one weftd serves. No root, no cluster: the tools come from scripts/deps,
//! which installs them into a venv under /opt/weft-tools (`WEFT_TOOLS` overrides); without them these tests fail,
//! never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Parser;
use serde_json::Value;
use weft::cni_install::{check_conflist, InstallArgs, CONFLIST};
use weft::config::NetworkConfig;
use weft::flags::DaemonArgs;
use weft::http::Metrics;

/// The Kubernetes versions every manifest must validate against: the oldest release still commonly run and the
/// newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];

/// Where flanneld (and weftd's --kube-subnet-mgr) read the network config unless --net-config-path says otherwise.
const DEFAULT_NET_CONFIG_PATH: &str = "/etc/kube-flannel/net-conf.json";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from scripts/deps' venv.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEFT_TOOLS").map_or_else(|| PathBuf::from("/opt/weft-tools"), PathBuf::from);
    let path = dir.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/deps, which installs it (these tests never skip)",
        path.display()
    );
    path
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no manifests in {}", dir.display());
    found
}

/// Validates one manifest file against every pinned Kubernetes version, strictly (an unknown field is an error).
/// A resource kubernetes-validate has no schema for is only a warning there; here it fails too.
fn validate(path: &Path) -> Result<(), String> {
    let validator = tool("kubernetes-validate");
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&validator).args(["--strict", "-k", version]).arg(path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let complaints: Vec<&str> = text.lines().filter(|l| l.starts_with("WARN") || l.starts_with("ERROR")).collect();
        if !out.status.success() || !complaints.is_empty() || !text.contains(" passed for resource ") {
            return Err(format!("{} against Kubernetes {version}:\n{text}", path.display()));
        }
    }
    Ok(())
}

/// The YAML documents of a manifest as JSON, through the venv's PyYAML (kubernetes-validate's own YAML reader).
fn documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let out = Command::new(tool("python3")).args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn every_manifest_validates_against_the_pinned_kubernetes_schemas() {
    for path in manifests() {
        validate(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_broken_manifest_fails_validation() {
    let original = std::fs::read_to_string(repo().join("deploy/kubernetes/weft.yml")).unwrap();
    let dir = std::env::temp_dir().join(format!("weft-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to, says) in [
        ("readinessProbe:", "readinesProbe:", "readinesProbe"),
        ("containerPort: 8081", "containerPort: healthz-port", "containerPort"),
        ("kind: DaemonSet", "kind: DaemonSett", "DaemonSett"),
    ] {
        assert!(original.contains(from), "weft.yml has {from:?}");
        let broken = dir.join("broken.yml");
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let err = validate(&broken).expect_err(to);
        assert!(err.contains(says), "{to}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn config_maps_hold_the_shipped_conflist_and_a_network_config_weftd_accepts() {
    let shipped: Value = serde_json::from_str(CONFLIST).unwrap();
    for path in manifests() {
        let docs = documents(&path);
        let maps = of_kind(&docs, "ConfigMap");
        assert!(!maps.is_empty(), "{}: no ConfigMap", path.display());
        for map in maps {
            let name = &map["metadata"]["name"];
            let conflist = map["data"]["cni-conf.json"].as_str().unwrap_or_else(|| panic!("{name}: no cni-conf.json"));
            check_conflist(conflist).unwrap_or_else(|e| panic!("{name}: {e}"));
            let conflist: Value = serde_json::from_str(conflist).unwrap();
            assert_eq!(conflist, shipped, "{name}'s cni-conf.json is deploy/10-weft.conflist");
            if let Some(net_conf) = map["data"]["net-conf.json"].as_str() {
                NetworkConfig::validate(net_conf).unwrap_or_else(|e| panic!("{name}'s net-conf.json: {e}"));
            }
        }
    }
}

/// `volumeMounts` of a container: mount path → volume name.
fn mounts(container: &Value) -> BTreeMap<String, String> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["mountPath"].as_str().unwrap().to_string(), m["name"].as_str().unwrap().to_string()))
        .collect()
}

/// The volume a container sees `path` through, and the path inside that volume.
fn volume_for<'a>(pod: &'a Value, container: &Value, path: &Path) -> Option<(&'a Value, PathBuf)> {
    let (mount_path, name) =
        mounts(container).into_iter().filter(|(m, _)| path.starts_with(m)).max_by_key(|(m, _)| m.len())?;
    let volume = pod["volumes"].as_array()?.iter().find(|v| v["name"] == name.as_str())?;
    Some((volume, path.strip_prefix(&mount_path).unwrap().to_path_buf()))
}

/// Asserts the container sees the host's directory `host` at `path`.
fn assert_host_path(pod: &Value, container: &Value, path: &Path, host: &str) {
    let (volume, inside) =
        volume_for(pod, container, path).unwrap_or_else(|| panic!("{} is not mounted", path.display()));
    let on_host = volume["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("{volume} is no hostPath"));
    assert_eq!(Path::new(on_host).join(inside), Path::new(host), "{} is the host's {host}", path.display());
}

/// Asserts `path` is a key of a ConfigMap or Secret volume (ConfigMaps must be in `docs`).
fn assert_from_config(docs: &[Value], pod: &Value, container: &Value, path: &Path) {
    let (volume, key) = volume_for(pod, container, path).unwrap_or_else(|| panic!("{} is not mounted", path.display()));
    let key = key.to_str().unwrap();
    if let Some(map) = volume["configMap"]["name"].as_str() {
        let map = of_kind(docs, "ConfigMap").into_iter().find(|m| m["metadata"]["name"] == map).unwrap();
        assert!(map["data"][key].is_string(), "ConfigMap {} has no {key}", map["metadata"]["name"]);
    } else {
        assert!(
            volume["secret"]["secretName"].is_string(),
            "{} comes from neither a ConfigMap nor a Secret",
            path.display()
        );
    }
}

#[derive(Parser)]
struct CniInstall {
    #[command(flatten)]
    args: InstallArgs,
}

#[test]
fn daemon_sets_run_what_weftd_and_weftctl_accept_and_mount_what_their_flags_name() {
    let image = format!("weft:{}", env!("CARGO_PKG_VERSION"));
    for path in manifests() {
        let docs = documents(&path);
        let sets = of_kind(&docs, "DaemonSet");
        assert_eq!(sets.len(), 1, "{}: one DaemonSet", path.display());
        let pod = &sets[0]["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        let containers = pod["containers"].as_array().unwrap();
        let inits = pod["initContainers"].as_array().unwrap();
        for c in containers.iter().chain(inits) {
            assert_eq!(c["image"], image.as_str(), "{}: the image is this version's (Cargo.toml)", path.display());
        }

        // The init container: weftctl cni install, into the host's CNI directories, from the ConfigMap.
        let install = &inits[0];
        assert_eq!(strings(&install["command"]), ["/usr/local/bin/weftctl", "cni", "install"]);
        let argv = std::iter::once("cni-install".to_string()).chain(strings(&install["args"]));
        let args = CniInstall::try_parse_from(argv).unwrap_or_else(|e| panic!("{}: {e}", path.display())).args;
        assert_host_path(pod, install, &args.bin_dir, "/opt/cni/bin");
        assert_host_path(pod, install, &args.conf_dir, "/etc/cni/net.d");
        assert_from_config(&docs, pod, install, args.conflist.as_deref().expect("--conflist"));
        assert_eq!(args.plugin.as_deref(), Some(Path::new("/usr/local/bin/weft")));

        // weftd: its flags parse, and the files and port they name are there.
        let weftd = &containers[0];
        assert_eq!(strings(&weftd["command"]), ["/usr/local/bin/weftd"]);
        let argv: Vec<OsString> =
            std::iter::once("weftd".to_string()).chain(strings(&weftd["args"])).map(Into::into).collect();
        let args = DaemonArgs::try_parse_go_style(argv).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_host_path(pod, weftd, args.subnet_file.parent().unwrap(), "/run/flannel");
        for tls in [&args.etcd_cafile, &args.etcd_certfile, &args.etcd_keyfile].into_iter().flatten() {
            assert_from_config(&docs, pod, weftd, tls);
        }
        if args.kube.kube_subnet_mgr {
            if !strings(&weftd["args"]).iter().any(|a| a.contains("net-config-path")) {
                let default = Path::new(DEFAULT_NET_CONFIG_PATH);
                assert_eq!(args.kube.net_config_path, default, "weftd's default --net-config-path is flannel's");
            }
            assert_from_config(&docs, pod, weftd, &args.kube.net_config_path);
            let env = weftd["env"].as_array().unwrap();
            let node_name = env.iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
            assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
        } else {
            assert!(args.etcd_cafile.is_some(), "{}: etcd mode uses TLS", path.display());
        }
        let port = weftd["ports"].as_array().unwrap().iter().find(|p| p["name"] == "healthz").expect("healthz port");
        assert_eq!(port["containerPort"], u64::from(args.healthz_port), "--healthz-port is the healthz port");
        assert_ne!(args.healthz_port, 0, "the probes need --healthz-port");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(weftd[probe]["httpGet"]["path"], path);
            assert_eq!(weftd[probe]["httpGet"]["port"], "healthz");
        }
    }
}

#[test]
fn both_daemon_sets_ask_the_node_for_the_same_things() {
    let pods: Vec<Value> = manifests()
        .iter()
        .map(|p| of_kind(&documents(p), "DaemonSet")[0]["spec"]["template"]["spec"].clone())
        .collect();
    assert!(pods.len() >= 2, "the Kubernetes and the etcd DaemonSet");
    let host_paths = |pod: &Value| -> BTreeSet<String> {
        pod["volumes"].as_array().unwrap().iter().filter(|v| v["hostPath"].is_object()).map(Value::to_string).collect()
    };
    for pod in &pods[1..] {
        for field in ["hostNetwork", "priorityClassName", "tolerations", "affinity"] {
            assert_eq!(pod[field], pods[0][field], "{field}");
        }
        for field in ["securityContext", "resources", "livenessProbe", "readinessProbe", "ports"] {
            assert_eq!(pod["containers"][0][field], pods[0]["containers"][0][field], "{field}");
        }
        assert_eq!(host_paths(pod), host_paths(&pods[0]));
    }
}

#[test]
fn the_dockerfile_builds_like_ci_and_passes_hadolint() {
    let dockerfile = repo().join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(text.contains("RUN scripts/build-release"), "the image is built by CI's release build");
    for binary in ["weftd", "weftctl", "weft"] {
        assert!(text.contains(&format!("/out/{binary}")), "the image has {binary}");
    }
    let out = Command::new(tool("hadolint")).arg("--no-color").arg(&dockerfile).output().unwrap();
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric weftd can serve: a `/metrics` page with every optional part present.
fn served_metrics() -> BTreeMap<String, String> {
    let metrics = Metrics::default();
    metrics.udp.set(Arc::new(Default::default())).unwrap();
    metrics.wireguard_path.set("kernel").unwrap();
    metrics.ready.store(true, Ordering::Relaxed);
    metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect()
}

#[test]
fn the_dashboard_queries_only_metrics_weftd_serves() {
    let path = repo().join("deploy/grafana/weft.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "a current Grafana schemaVersion");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable, so the dashboard imports into any Grafana"
    );
    let uses_variable = |ds: &Value| ds["type"] == "prometheus" && ds["uid"] == "${datasource}";

    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique: {}", panel["id"]);
        if panel["type"] == "row" {
            continue;
        }
        assert!(uses_variable(&panel["datasource"]), "{}: datasource", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} queries something", panel["title"]);
        for target in targets {
            assert!(uses_variable(&target["datasource"]), "{}: datasource", panel["title"]);
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        exprs.push(variable["query"]["query"].as_str().unwrap().to_string());
    }

    let served = served_metrics();
    let name = regex::Regex::new(r"\bweft_[a-z0-9_]+").unwrap();
    for expr in &exprs {
        for found in name.find_iter(expr) {
            let metric = found.as_str();
            let kind =
                served.get(metric).unwrap_or_else(|| panic!("{metric} (in {expr:?}) is not a metric weftd serves"));
            if kind == "counter" {
                let before = &expr[..found.start()];
                assert!(
                    before.contains("rate(") || before.contains("increase("),
                    "counter {metric} is graphed as a rate: {expr}"
                );
            }
        }
    }
}
