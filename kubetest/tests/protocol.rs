//! The wire protocol of the test API server with raw HTTP: conflicts, expired watches, bookmarks, paging,
//! selectors, validation, dry run, and the fault injection tests of weft's reconnect path rely on.

mod common;

use std::time::Duration;

use common::{get, node, request, WatchEnd, WatchStream};
use serde_json::{json, Value};
use weft_kube_testserver::{ExpiredWatch, RunningServer, TestApiServer};

const WAIT: Duration = Duration::from_secs(10);

async fn start(builder: TestApiServer) -> RunningServer {
    builder.serve("127.0.0.1:0".parse().unwrap()).await.expect("start the test API server")
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).expect("a numeric resourceVersion")
}

#[tokio::test]
async fn stale_put_gets_409_conflict_status_and_fresh_put_succeeds() {
    let server = start(TestApiServer::new()).await;
    let created = server.put_node(node("n1", "10.244.1.0/24")).unwrap();
    server
        .put_node(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"moved": "on"}}}))
        .unwrap();

    let mut stale = created.clone();
    stale["metadata"]["annotations"] = json!({"a": "b"});
    let answer = request(server.addr(), "PUT", "/api/v1/nodes/n1", Some("application/json"), Some(&stale)).await;
    assert_eq!(answer.status, 409);
    let status = answer.json();
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str(), status["code"].as_u64()),
        (Some("Status"), Some("Conflict"), Some(409))
    );
    assert_eq!(status["details"], json!({"name": "n1", "kind": "nodes"}));

    let mut fresh = server.node("n1").unwrap();
    fresh["metadata"]["annotations"] = json!({"a": "b"});
    let answer = request(server.addr(), "PUT", "/api/v1/nodes/n1", Some("application/json"), Some(&fresh)).await;
    assert_eq!(answer.status, 200);
    assert!(rv(&answer.json()) > rv(&fresh));

    // A patch naming a resourceVersion is a precondition too.
    let patch = json!({"metadata": {"resourceVersion": created["metadata"]["resourceVersion"], "labels": {"x": "y"}}});
    let answer =
        request(server.addr(), "PATCH", "/api/v1/nodes/n1", Some("application/merge-patch+json"), Some(&patch)).await;
    assert_eq!(answer.status, 409);
    // So is a delete's precondition.
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "1"}});
    let answer = request(server.addr(), "DELETE", "/api/v1/nodes/n1", Some("application/json"), Some(&options)).await;
    assert_eq!(answer.status, 409);
}

#[tokio::test]
async fn watch_from_an_expired_revision_gets_410_as_an_error_event_or_as_http() {
    let server = start(TestApiServer::new().history_limit(3)).await;
    let start_rv = server.resource_version();
    for i in 1..=5 {
        server.put_node(node(&format!("n{i}"), &format!("10.244.{i}.0/24"))).unwrap();
    }
    // The history window (3 writes) no longer reaches back to start_rv.
    let mut watch =
        WatchStream::open(server.addr(), &format!("/api/v1/nodes?watch=1&resourceVersion={start_rv}")).await;
    assert_eq!(watch.status, 200);
    let event = watch.next(WAIT).await.unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!((event["object"]["code"].as_u64(), event["object"]["reason"].as_str()), (Some(410), Some("Expired")));
    assert_eq!(watch.next(WAIT).await, Err(WatchEnd::Clean));

    // Within the window, the watch replays what happened since.
    let recent = server.resource_version() - 2;
    let mut watch = WatchStream::open(server.addr(), &format!("/api/v1/nodes?watch=1&resourceVersion={recent}")).await;
    let names: Vec<Value> = vec![watch.next(WAIT).await.unwrap(), watch.next(WAIT).await.unwrap()];
    assert_eq!(
        names.iter().map(|e| e["object"]["metadata"]["name"].clone()).collect::<Vec<_>>(),
        [json!("n4"), json!("n5")]
    );

    // expire_history() compacts at the current revision: even a recent revision is now too old.
    server.expire_history();
    let mut watch = WatchStream::open(server.addr(), &format!("/api/v1/nodes?watch=1&resourceVersion={recent}")).await;
    assert_eq!(watch.next(WAIT).await.unwrap()["object"]["code"], 410);

    let http = start(TestApiServer::new().expired_watch(ExpiredWatch::HttpGone)).await;
    let old = http.resource_version();
    http.put_node(node("n1", "10.244.1.0/24")).unwrap();
    http.expire_history();
    let answer = get(http.addr(), &format!("/api/v1/nodes?watch=true&resourceVersion={old}")).await;
    assert_eq!(answer.status, 410);
    assert_eq!(answer.json()["reason"], "Expired");
}

#[tokio::test]
async fn list_then_watch_from_its_revision_with_bookmarks() {
    let server = start(TestApiServer::new().bookmark_interval(Duration::from_millis(200))).await;
    server.put_node(node("n1", "10.244.1.0/24")).unwrap();
    let list = get(server.addr(), "/api/v1/nodes").await.json();
    assert_eq!(list["kind"], "NodeList");
    let list_rv = rv(&list);
    assert_eq!(list_rv, server.resource_version());

    server.put_node(node("n2", "10.244.2.0/24")).unwrap();
    let path = format!("/api/v1/nodes?watch=1&resourceVersion={list_rv}&allowWatchBookmarks=true&timeoutSeconds=30");
    let mut watch = WatchStream::open(server.addr(), &path).await;
    assert_eq!(watch.status, 200);
    let added = watch.next(WAIT).await.unwrap();
    assert_eq!((added["type"].as_str(), added["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("n2")));

    let patch = json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/backend-type": "vxlan"}}});
    let patched = request(
        server.addr(),
        "PATCH",
        "/api/v1/nodes/n1",
        Some("application/strategic-merge-patch+json"),
        Some(&patch),
    )
    .await;
    assert_eq!(patched.status, 200);
    let modified = watch.next_change(WAIT).await.unwrap();
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-type"], "vxlan");
    assert_eq!(rv(&modified["object"]), rv(&patched.json()));

    server.delete_node("n2").unwrap();
    let deleted = watch.next_change(WAIT).await.unwrap();
    assert_eq!(
        (deleted["type"].as_str(), deleted["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("n2"))
    );
    assert_eq!(rv(&deleted["object"]), server.resource_version());

    // A ConfigMap write moves the revision without a Node event; the bookmark then carries it.
    server.put_object(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})).unwrap();
    let bookmark = loop {
        let event = watch.next(WAIT).await.unwrap();
        if event["type"] == "BOOKMARK" && rv(&event["object"]) == server.resource_version() {
            break event;
        }
    };
    assert_eq!(bookmark["object"]["kind"], "Node");
    assert_eq!(server.watch_count(), 1);
}

#[tokio::test]
async fn watch_without_revision_starts_with_the_current_objects_and_honours_timeout() {
    let server = start(TestApiServer::new()).await;
    server.put_node(node("n1", "10.244.1.0/24")).unwrap();
    let mut watch = WatchStream::open(server.addr(), "/api/v1/nodes?watch=1&timeoutSeconds=1").await;
    assert_eq!(watch.next(WAIT).await.unwrap()["type"], "ADDED");
    assert_eq!(watch.next(WAIT).await, Err(WatchEnd::Clean));

    let path =
        "/api/v1/nodes?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
    let mut watch = WatchStream::open(server.addr(), path).await;
    assert_eq!(watch.next(WAIT).await.unwrap()["type"], "ADDED");
    let end = watch.next(WAIT).await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
}

#[tokio::test]
async fn label_selected_watch_sees_objects_enter_and_leave() {
    let server = start(TestApiServer::new()).await;
    server.put_node(node("n1", "10.244.1.0/24")).unwrap();
    let from = server.resource_version();
    let mut watch = WatchStream::open(
        server.addr(),
        &format!("/api/v1/nodes?watch=1&resourceVersion={from}&labelSelector=weft%3Don"),
    )
    .await;
    let label = |value: Value| json!({"metadata": {"labels": {"weft": value}}});
    for value in [json!("on"), json!("on-still"), Value::Null] {
        let answer = request(
            server.addr(),
            "PATCH",
            "/api/v1/nodes/n1",
            Some("application/merge-patch+json"),
            Some(&label(value)),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(watch.next(WAIT).await.unwrap()["type"], "ADDED");
    assert_eq!(watch.next(WAIT).await.unwrap()["type"], "DELETED");
    assert_eq!(watch.next(Duration::from_millis(300)).await, Err(WatchEnd::Quiet));
}

#[tokio::test]
async fn paged_list_and_selectors() {
    let server = start(TestApiServer::new()).await;
    for i in 1..=5 {
        let mut n = node(&format!("n{i}"), &format!("10.244.{i}.0/24"));
        n["metadata"]["labels"]["parity"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        server.put_node(n).unwrap();
    }
    let first = get(server.addr(), "/api/v1/nodes?limit=2").await.json();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    // Pages come from the first page's snapshot, whatever changes in between.
    server.delete_node("n5").unwrap();
    let mut names = Vec::new();
    let mut next = Some(token);
    let mut pages = vec![first];
    while let Some(token) = next {
        let page = get(server.addr(), &format!("/api/v1/nodes?limit=2&continue={token}")).await.json();
        assert_eq!(page["metadata"]["resourceVersion"], pages[0]["metadata"]["resourceVersion"]);
        next = page["metadata"]["continue"].as_str().map(str::to_string);
        pages.push(page);
    }
    for page in &pages {
        names.extend(
            page["items"].as_array().unwrap().iter().map(|n| n["metadata"]["name"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(names, ["n1", "n2", "n3", "n4", "n5"]);

    let odd = get(server.addr(), "/api/v1/nodes?labelSelector=parity%3Dodd").await.json();
    assert_eq!(odd["items"].as_array().unwrap().len(), 2);
    let set = get(server.addr(), "/api/v1/nodes?labelSelector=parity+in+%28odd%2Ceven%29%2C%21gpu").await.json();
    assert_eq!(set["items"].as_array().unwrap().len(), 4);
    let by_name = get(server.addr(), "/api/v1/nodes?fieldSelector=metadata.name%3Dn2").await.json();
    assert_eq!(by_name["items"][0]["metadata"]["name"], "n2");
    let bad = get(server.addr(), "/api/v1/nodes?labelSelector=a+b").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn create_validation_dry_run_and_delete() {
    let server = start(TestApiServer::new()).await;
    let revision = server.resource_version();
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "c"}});
    let answer = request(
        server.addr(),
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        Some(&wrong_kind),
    )
    .await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.json()["reason"], "Invalid");
    assert_eq!(answer.json()["details"]["causes"][0]["field"], "kind");
    let nameless = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {}});
    let answer = request(
        server.addr(),
        "POST",
        "/apis/apps/v1/namespaces/default/daemonsets",
        Some("application/json"),
        Some(&nameless),
    )
    .await;
    assert_eq!(answer.status, 422);

    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
    let path = "/api/v1/namespaces/default/configmaps";
    let answer =
        request(server.addr(), "POST", &format!("{path}?dryRun=All"), Some("application/json"), Some(&config)).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.json()["metadata"]["namespace"], "default");
    assert_eq!(server.resource_version(), revision);
    assert_eq!(get(server.addr(), &format!("{path}/c")).await.status, 404);

    let answer = request(server.addr(), "POST", path, Some("application/json"), Some(&config)).await;
    assert_eq!(answer.status, 201);
    assert_eq!(request(server.addr(), "POST", path, Some("application/json"), Some(&config)).await.status, 409);
    let unknown =
        request(server.addr(), "PATCH", &format!("{path}/c"), Some("application/x-patch"), Some(&json!({}))).await;
    assert_eq!(unknown.status, 415);
    let deleted = request(server.addr(), "DELETE", &format!("{path}/c"), None, None).await;
    assert_eq!((deleted.status, deleted.json()["status"].as_str()), (200, Some("Success")));
    assert_eq!(request(server.addr(), "DELETE", &format!("{path}/c"), None, None).await.status, 404);
}

#[tokio::test]
async fn discovery_documents() {
    let server = start(TestApiServer::new()).await;
    assert_eq!(get(server.addr(), "/version").await.json()["major"], "1");
    assert_eq!(get(server.addr(), "/api").await.json()["versions"], json!(["v1"]));
    let core = get(server.addr(), "/api/v1").await.json();
    let nodes = core["resources"].as_array().unwrap().iter().find(|r| r["name"] == "nodes").unwrap().clone();
    assert_eq!((nodes["kind"].as_str(), nodes["namespaced"].as_bool()), (Some("Node"), Some(false)));
    assert!(nodes["verbs"].as_array().unwrap().contains(&json!("watch")));
    let groups = get(server.addr(), "/apis").await.json();
    assert_eq!(groups["kind"], "APIGroupList");
    assert_eq!(get(server.addr(), "/apis/apps/v1").await.json()["resources"][0]["name"], "daemonsets");
    assert_eq!(get(server.addr(), "/apis/batch/v1").await.status, 404);
    assert_eq!(get(server.addr(), "/api/v1/pods").await.status, 404);
}

#[tokio::test]
async fn outage_refuses_connections_and_cuts_watches_then_recovers() {
    let server = start(TestApiServer::new()).await;
    server.put_node(node("n1", "10.244.1.0/24")).unwrap();
    let from = server.resource_version();
    let mut watch = WatchStream::open(server.addr(), &format!("/api/v1/nodes?watch=1&resourceVersion={from}")).await;
    assert_eq!(watch.next(Duration::from_millis(200)).await, Err(WatchEnd::Quiet));

    server.set_outage(true).await;
    assert_eq!(watch.next(WAIT).await, Err(WatchEnd::Cut));
    let refused = tokio::net::TcpStream::connect(server.addr()).await;
    assert_eq!(refused.err().map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));
    // The store lives on through the outage (etcd behind the API server does).
    server.put_node(node("n2", "10.244.2.0/24")).unwrap();

    server.set_outage(false).await;
    let mut watch = WatchStream::open(server.addr(), &format!("/api/v1/nodes?watch=1&resourceVersion={from}")).await;
    assert_eq!(watch.next(WAIT).await.unwrap()["object"]["metadata"]["name"], "n2");

    server.drop_watches();
    assert_eq!(watch.next(WAIT).await, Err(WatchEnd::Clean));

    server.set_unavailable(true);
    let answer = get(server.addr(), "/api/v1/nodes").await;
    assert_eq!((answer.status, answer.json()["reason"].as_str()), (503, Some("ServiceUnavailable")));
    server.set_unavailable(false);
    assert_eq!(get(server.addr(), "/api/v1/nodes").await.status, 200);
    let records = server.requests();
    assert_eq!(records.len(), server.request_count());
    assert!(records.iter().any(|r| r.status == 503 && r.path == "/api/v1/nodes"));
}

#[tokio::test]
async fn json_patch_and_status_put() {
    let server = start(TestApiServer::new()).await;
    server.put_node(node("n1", "10.244.1.0/24")).unwrap();
    let ops = json!([{"op": "replace", "path": "/spec/podCIDR", "value": "10.244.7.0/24"}, {"op": "test", "path": "/spec/podCIDRs/0", "value": "10.244.1.0/24"}]);
    let answer =
        request(server.addr(), "PATCH", "/api/v1/nodes/n1", Some("application/json-patch+json"), Some(&ops)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(server.node("n1").unwrap()["spec"]["podCIDR"], "10.244.7.0/24");
    let failing = json!([{"op": "test", "path": "/spec/podCIDR", "value": "nope"}]);
    let answer =
        request(server.addr(), "PATCH", "/api/v1/nodes/n1", Some("application/json-patch+json"), Some(&failing)).await;
    assert_eq!(answer.status, 422);

    // PUT on /status replaces status and keeps spec.
    let mut whole = server.node("n1").unwrap();
    whole["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    whole["spec"]["podCIDR"] = json!("10.0.0.0/24");
    let answer = request(server.addr(), "PUT", "/api/v1/nodes/n1/status", Some("application/json"), Some(&whole)).await;
    assert_eq!(answer.status, 200);
    let stored = server.node("n1").unwrap();
    assert_eq!(stored["status"]["conditions"], json!([{"type": "Ready", "status": "False"}]));
    assert_eq!(stored["spec"]["podCIDR"], "10.244.7.0/24");
}

#[tokio::test]
async fn server_side_apply_creates_then_merges() {
    let server = start(TestApiServer::new()).await;
    let addr = server.addr();
    let apply = |body: Value, manager: &'static str| {
        let path = format!("/api/v1/nodes/n1?fieldManager={manager}");
        async move { request(addr, "PATCH", &path, Some("application/apply-patch+yaml"), Some(&body)).await }
    };
    let config = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": {"a": "1"}}});
    let created = apply(config, "weft").await;
    assert_eq!(created.status, 201);
    let more = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": {"b": "2"}}});
    assert_eq!(apply(more, "weft").await.status, 200);
    assert_eq!(server.node("n1").unwrap()["metadata"]["annotations"], json!({"a": "1", "b": "2"}));
    assert_eq!(apply(json!({"apiVersion": "v1", "kind": "Node"}), "").await.status, 400);
}
