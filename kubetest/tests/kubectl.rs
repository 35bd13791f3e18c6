//! The test API server's fidelity, proven with the real `kubectl` (Debian's kubernetes-client, or
//! `$WEFT_KUBECTL`): what kubectl accepts as an API server is what weft's client is tested against.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{node, Kubectl};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use weft_kube_testserver::{RunningServer, TestApiServer};

async fn server_with_nodes(names: &[&str]) -> RunningServer {
    let server = TestApiServer::start("127.0.0.1:0".parse().unwrap()).await.expect("start the test API server");
    for (i, name) in names.iter().enumerate() {
        server.put_node(node(name, &format!("10.244.{}.0/24", i + 1))).unwrap();
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_lists_nodes_as_the_server_side_table_and_as_json() {
    let server = server_with_nodes(&["node-a", "node-b"]).await;
    let kubectl = Kubectl::new(&server, "get").await;

    let table = kubectl.ok(&["get", "nodes"]).await;
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0][..3], ["NAME", "STATUS", "ROLES"], "{table}");
    assert_eq!(rows[1][..3], ["node-a", "Ready", "<none>"], "{table}");
    assert_eq!(rows[2][0], "node-b", "{table}");
    let wide = kubectl.ok(&["get", "nodes", "-o", "wide"]).await;
    assert!(wide.contains("INTERNAL-IP") && wide.contains("198.18.0.10"), "{wide}");

    let one: Value = serde_json::from_str(&kubectl.ok(&["get", "node", "node-a", "-o", "json"]).await).unwrap();
    assert_eq!(one, server.node("node-a").unwrap());
    let list: Value = serde_json::from_str(&kubectl.ok(&["get", "nodes", "-o", "json"]).await).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));

    let selected = kubectl.ok(&["get", "nodes", "-l", "kubernetes.io/hostname=node-b", "-o", "name"]).await;
    assert_eq!(selected.trim(), "node/node-b");
    let by_field = kubectl.ok(&["get", "nodes", "--field-selector", "metadata.name=node-a", "-o", "name"]).await;
    assert_eq!(by_field.trim(), "node/node-a");

    let missing = kubectl.run(&["get", "node", "node-z"]).await;
    assert!(!missing.success);
    assert!(missing.stderr.contains(r#"Error from server (NotFound): nodes "node-z" not found"#), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotate_and_label_write_through_merge_patches() {
    let server = server_with_nodes(&["node-a"]).await;
    let kubectl = Kubectl::new(&server, "annotate").await;
    let before = server.resource_version();

    kubectl.ok(&["annotate", "node", "node-a", "flannel.alpha.coreos.com/public-ip=198.18.0.1"]).await;
    let annotated = server.node("node-a").unwrap();
    assert_eq!(annotated["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"], "198.18.0.1");
    assert!(server.resource_version() > before);

    // Changing a value needs --overwrite, as against a real server (kubectl checks the object it read).
    let refused = kubectl.run(&["annotate", "node", "node-a", "flannel.alpha.coreos.com/public-ip=198.18.0.2"]).await;
    assert!(!refused.success);
    kubectl.ok(&["annotate", "--overwrite", "node", "node-a", "flannel.alpha.coreos.com/public-ip=198.18.0.2"]).await;
    kubectl.ok(&["label", "node", "node-a", "weft.test/role=worker"]).await;
    let node = server.node("node-a").unwrap();
    assert_eq!(node["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"], "198.18.0.2");
    assert_eq!(node["metadata"]["labels"]["weft.test/role"], "worker");

    kubectl.ok(&["annotate", "node", "node-a", "flannel.alpha.coreos.com/public-ip-"]).await;
    let node = server.node("node-a").unwrap();
    assert!(node["metadata"]["annotations"].get("flannel.alpha.coreos.com/public-ip").is_none(), "{node}");

    let patches: Vec<_> = server.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 4, "{patches:?}");
    assert!(patches.iter().all(|r| r.path == "/api/v1/nodes/node-a" && r.status == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_merge_strategic_json_and_the_status_subresource() {
    let server = server_with_nodes(&["node-a"]).await;
    let kubectl = Kubectl::new(&server, "patch").await;

    // Merge patch: null deletes, lists replace.
    kubectl
        .ok(&[
            "patch",
            "node",
            "node-a",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"kubernetes.io/hostname":null,"a":"b"}},"spec":{"podCIDRs":["10.244.9.0/24"]}}"#,
        ])
        .await;
    let node = server.node("node-a").unwrap();
    assert_eq!(node["metadata"]["labels"], json!({"a": "b"}));
    assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.9.0/24"]));

    // Strategic merge: podCIDRs is a merged set; a status change through the main resource is ignored.
    kubectl
        .ok(&["patch", "node", "node-a", "--type", "strategic", "-p", r#"{"spec":{"podCIDRs":["fd00:10:244:9::/64"]},"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#])
        .await;
    let node = server.node("node-a").unwrap();
    assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.9.0/24", "fd00:10:244:9::/64"]));
    assert_eq!(node["status"]["conditions"][0], json!({"type": "Ready", "status": "True", "reason": "KubeletReady"}));

    kubectl
        .ok(&[
            "patch",
            "node",
            "node-a",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/spec/unschedulable","value":true}]"#,
        ])
        .await;
    assert_eq!(server.node("node-a").unwrap()["spec"]["unschedulable"], true);
    let table = kubectl.ok(&["get", "node", "node-a"]).await;
    assert!(table.contains("Ready,SchedulingDisabled"), "{table}");

    // The status subresource, as flannel's --set-node-network-unavailable writes it: conditions merge by type.
    let condition =
        r#"{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}"#;
    if kubectl.supports("patch", "--subresource").await {
        kubectl
            .ok(&["patch", "node", "node-a", "--subresource", "status", "--type", "strategic", "-p", condition])
            .await;
    } else {
        // kubectl before 1.24 has no --subresource: the same request by hand.
        let answer = common::request(
            server.addr(),
            "PATCH",
            "/api/v1/nodes/node-a/status",
            Some("application/strategic-merge-patch+json"),
            Some(&serde_json::from_str(condition).unwrap()),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    let conditions = server.node("node-a").unwrap()["status"]["conditions"].clone();
    assert_eq!(
        conditions,
        json!([
            {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
        ])
    );
}

/// Everything a child process writes to its stdout, collected as it arrives.
fn collect_stdout(child: &mut tokio::process::Child) -> Arc<Mutex<Vec<u8>>> {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let collected = Arc::new(Mutex::new(Vec::new()));
    let sink = collected.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    collected
}

/// The complete JSON documents in `bytes` (kubectl prints one indented document per watch event).
fn json_documents(bytes: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(bytes).into_iter::<Value>().map_while(Result::ok).collect()
}

/// Polls of 50 ms: up to 30 s for kubectl to start, discover and watch on a loaded machine.
const POLLS: usize = 600;

async fn wait_for_watch(server: &RunningServer) {
    for _ in 0..POLLS {
        if server.watch_count() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("kubectl did not open a watch within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_added_modified_and_deleted() {
    let server = server_with_nodes(&["node-a"]).await;
    let kubectl = Kubectl::new(&server, "watch").await;
    let mut child = kubectl.spawn(&["get", "nodes", "--watch", "--output-watch-events", "-o", "json"]);
    let output = collect_stdout(&mut child);
    wait_for_watch(&server).await;

    kubectl.ok(&["annotate", "node", "node-a", "weft.test/seen=yes"]).await;
    server.put_node(node("node-b", "10.244.2.0/24")).unwrap();
    server.delete_node("node-b").unwrap();

    let wanted = [("ADDED", "node-a"), ("MODIFIED", "node-a"), ("ADDED", "node-b"), ("DELETED", "node-b")];
    let mut seen: Vec<(String, String)> = Vec::new();
    for _ in 0..POLLS {
        seen = json_documents(&output.lock().unwrap())
            .iter()
            .map(|e| {
                let name = e["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
                (e["type"].as_str().unwrap_or("").to_string(), name)
            })
            .collect();
        if seen.len() >= wanted.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.expect("stop the kubectl we started");
    let seen: Vec<(&str, &str)> = seen.iter().map(|(t, n)| (t.as_str(), n.as_str())).collect();
    assert_eq!(seen, wanted);
    let events = json_documents(&output.lock().unwrap());
    assert_eq!(events[1]["object"]["metadata"]["annotations"]["weft.test/seen"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_table_rows_for_changes() {
    let server = server_with_nodes(&["node-a"]).await;
    let kubectl = Kubectl::new(&server, "watch-table").await;
    let mut child = kubectl.spawn(&["get", "nodes", "--watch"]);
    let output = collect_stdout(&mut child);
    wait_for_watch(&server).await;
    server.put_node(node("node-b", "10.244.2.0/24")).unwrap();
    let mut text = String::new();
    for _ in 0..POLLS {
        text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
        if text.contains("node-b") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.expect("stop the kubectl we started");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[1].starts_with("node-a"), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("node-b") && l.contains("Ready")), "{text}");
    // Column headers are printed once: later rows come from watch events without column definitions.
    assert_eq!(lines.iter().filter(|l| l.starts_with("NAME")).count(), 1, "{text}");
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/deployment.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_server_dry_run_checks_every_kind_and_stores_nothing() {
    let server = server_with_nodes(&[]).await;
    let kubectl = Kubectl::new(&server, "apply").await;

    // As against a real server, a dry run cannot put objects into a namespace it only pretends to create.
    let no_namespace = kubectl.run(&["apply", "--dry-run=server", "-f", FIXTURE]).await;
    assert!(!no_namespace.success);
    assert!(no_namespace.stderr.contains(r#"namespaces "kubetest-fixture" not found"#), "{}", no_namespace.stderr);

    kubectl.ok(&["create", "namespace", "kubetest-fixture"]).await;
    let revision = server.resource_version();
    let requests_before = server.request_count();
    let out = kubectl.ok(&["apply", "--dry-run=server", "-f", FIXTURE]).await;
    for object in [
        "serviceaccount/fixture-agent created (server dry run)",
        "clusterrole.rbac.authorization.k8s.io/fixture-agent created (server dry run)",
        "clusterrolebinding.rbac.authorization.k8s.io/fixture-agent created (server dry run)",
        "configmap/fixture-config created (server dry run)",
        "secret/fixture-secret created (server dry run)",
        "daemonset.apps/fixture-agent created (server dry run)",
    ] {
        assert!(out.contains(object), "missing {object:?} in:\n{out}");
    }
    assert_eq!(server.resource_version(), revision, "a dry run wrote something");
    assert!(server.object("apps/v1", "DaemonSet", Some("kubetest-fixture"), "fixture-agent").is_none());
    let requests = server.requests();
    let dry_posts = requests[requests_before..].iter().filter(|r| r.method == "POST" && r.query.contains("dryRun=All"));
    // Six creates; the namespace exists, so kubectl patches it (dry) instead.
    assert_eq!(dry_posts.count(), 6);

    // For real, then again: applying the same manifests changes nothing.
    kubectl.ok(&["apply", "-f", FIXTURE]).await;
    let daemonset = server.object("apps/v1", "DaemonSet", Some("kubetest-fixture"), "fixture-agent").unwrap();
    assert_eq!(daemonset["spec"]["template"]["spec"]["containers"][0]["name"], "agent");
    assert!(daemonset["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());
    let secret = server.object("v1", "Secret", Some("kubetest-fixture"), "fixture-secret").unwrap();
    assert_eq!(secret["data"]["token"], "bm90LWEtcmVhbC1zZWNyZXQ=");
    let again = kubectl.ok(&["apply", "--dry-run=server", "-f", FIXTURE]).await;
    assert!(again.contains("daemonset.apps/fixture-agent unchanged (server dry run)"), "{again}");
    assert!(again.contains("configmap/fixture-config unchanged (server dry run)"), "{again}");
}

/// Manifest sets that must pass `kubectl apply --dry-run=server`: a file or a directory of YAML/JSON files each.
/// Paths are relative to the workspace root; add weft's own deployment manifests here.
const MANIFEST_SETS: &[&str] = &["kubetest/tests/fixtures/deployment.yaml"];

/// kubectl's name for an object's type in its messages: `daemonset.apps`, `configmap`.
fn kubectl_type(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
    match object["apiVersion"].as_str().unwrap_or_default().split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind,
    }
}

/// Dry-runs one manifest set against a fresh server: the namespaces it creates are created first (for real: a
/// dry run cannot place objects in a namespace it only pretends to create), then every other object must be
/// reported created by the server's dry run, and nothing may be stored.
async fn assert_server_dry_run_passes(manifests: &str) {
    let path = format!("{}/../{manifests}", env!("CARGO_MANIFEST_DIR"));
    let server = server_with_nodes(&[]).await;
    let kubectl = Kubectl::new(&server, "manifests").await;
    // kubectl parses the YAML; the client-side dry run prints each object as JSON without sending anything.
    let parsed = kubectl.ok(&["create", "--dry-run=client", "-o", "json", "-f", &path]).await;
    let mut objects = Vec::new();
    for document in json_documents(parsed.as_bytes()) {
        match document["items"].as_array() {
            Some(items) if document["kind"] == "List" => objects.extend(items.iter().cloned()),
            _ => objects.push(document),
        }
    }
    assert!(!objects.is_empty(), "no objects in {manifests}");
    for namespace in objects.iter().filter(|o| o["kind"] == "Namespace") {
        server.put_object(namespace.clone()).unwrap_or_else(|e| panic!("namespace in {manifests}: {e}"));
    }
    let revision = server.resource_version();
    let out = kubectl.run(&["apply", "--dry-run=server", "-f", &path]).await;
    assert!(out.success, "{manifests} fails a server-side dry run:\n{}\n{}", out.stdout, out.stderr);
    for object in objects.iter().filter(|o| o["kind"] != "Namespace") {
        let line = format!(
            "{}/{} created (server dry run)",
            kubectl_type(object),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
        assert!(out.stdout.contains(&line), "{manifests}: missing {line:?} in:\n{}", out.stdout);
    }
    assert_eq!(server.resource_version(), revision, "a dry run of {manifests} stored something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_sets_pass_a_server_side_dry_run() {
    for manifests in MANIFEST_SETS {
        assert_server_dry_run_passes(manifests).await;
    }
}
