//! The HTTP surface: URL routing, verbs, content types, list and watch encoding.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::discovery;
use crate::openapi;
use crate::patch::{self, PatchError};
use crate::resources::{self, ResourceType};
use crate::selector::{ObjectFilter, Selector};
use crate::server::{ExpiredWatch, Shared};
use crate::status::{self, ApiError};
use crate::store::{Event, EventType, Subresource};
use crate::table::{self, IncludeObject};

pub type Body = BoxBody<Bytes, Infallible>;

/// Server-side apply's media type.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(full(value.to_string()))
        .expect("static headers are valid")
}

pub fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

/// Decoded query parameters (`+` is a space, as in form encoding; percent escapes decoded).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let decode =
            |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        Query(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }

    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// What a resource URL names.
struct Target {
    resource: &'static ResourceType,
    /// The namespace in the URL; `None` for a cluster-scoped type or an all-namespaces collection.
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    watch_path: bool,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` resource paths.
fn parse_target(path: &str) -> Result<Option<Target>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return Ok(None),
    };
    let watch_path = rest.first() == Some(&"watch");
    if watch_path {
        rest = &rest[1..];
    }
    let not_found = || ApiError::path_not_found(path);
    let lookup = |plural: &str| resources::by_plural(group, version, plural).ok_or_else(not_found);
    let (resource, namespace, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            let resource = lookup(plural)?;
            if !resource.namespaced {
                return Err(not_found());
            }
            (resource, Some(ns.to_string()), tail.first(), tail.get(1))
        }
        [plural, tail @ ..] => (lookup(plural)?, None, tail.first(), tail.get(1)),
        [] => return Err(not_found()),
    };
    let status = match sub {
        None => false,
        Some(&"status") if resource.has_status => true,
        Some(_) => return Err(not_found()),
    };
    if rest.len() > 5 {
        return Err(not_found());
    }
    Ok(Some(Target { resource, namespace, name: name.map(|n| n.to_string()), status, watch_path }))
}

/// Answers one request.
pub async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let query = Query::parse(request.uri().query());
    let method = request.method().clone();
    let accept = request.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let content_type = request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return error_response(&ApiError::bad_request(format!("reading the request body: {e}"))),
    };
    if shared.unavailable() {
        return error_response(&ApiError::unavailable());
    }
    let address = shared.address().to_string();
    let simple = |value: Value| json_response(200, &value);
    match (method.clone(), path.trim_end_matches('/')) {
        (Method::GET, "/version") => return simple(discovery::version()),
        (Method::GET, "/api") => return simple(discovery::core_versions(&address)),
        (Method::GET, "/apis") => return simple(discovery::group_list()),
        (Method::GET, "/healthz" | "/readyz" | "/livez") => {
            return Response::builder().status(200).body(full("ok")).expect("static response");
        }
        (Method::GET, "/openapi/v3") => return simple(openapi::index()),
        (Method::GET, "/openapi/v2") => {
            if accept.contains("protobuf") {
                return Response::builder()
                    .status(200)
                    .header("Content-Type", openapi::V2_PROTOBUF_MEDIA_TYPE)
                    .body(full(openapi::v2_protobuf()))
                    .expect("static headers are valid");
            }
            return simple(openapi::v2_json());
        }
        (Method::GET, "/api/v1") => {
            return simple(discovery::resource_list("", "v1").expect("the core group is served"));
        }
        _ => {}
    }
    if method == Method::GET {
        if let Some(group_version) = path.strip_prefix("/openapi/v3/") {
            return match openapi::document(group_version.trim_end_matches('/')) {
                Some(doc) => simple(doc),
                None => error_response(&ApiError::path_not_found(&path)),
            };
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::GET {
        match segments.as_slice() {
            ["apis", group] => {
                return match discovery::group_document(group) {
                    Some(doc) => simple(doc),
                    None => error_response(&ApiError::path_not_found(&path)),
                }
            }
            ["apis", group, version] => {
                return match discovery::resource_list(group, version) {
                    Some(doc) => simple(doc),
                    None => error_response(&ApiError::path_not_found(&path)),
                }
            }
            _ => {}
        }
    }
    let target = match parse_target(&path) {
        Ok(Some(target)) => target,
        Ok(None) => return error_response(&ApiError::path_not_found(&path)),
        Err(err) => return error_response(&err),
    };
    let request = ApiRequest { shared, query, method, accept, content_type, body };
    match serve_resource(&request, target).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

struct ApiRequest {
    shared: Arc<Shared>,
    query: Query,
    method: Method,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl ApiRequest {
    fn json_body(&self) -> Result<Value, ApiError> {
        let media = self.content_type.split(';').next().unwrap_or("").trim();
        if !media.is_empty() && media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::unsupported_media_type(media));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    }

    fn filter(&self) -> Result<ObjectFilter, ApiError> {
        let parse = |key: &str, set_based: bool| {
            Selector::parse(self.query.get(key).unwrap_or(""), set_based)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        };
        Ok(ObjectFilter { labels: parse("labelSelector", true)?, fields: parse("fieldSelector", false)? })
    }

    fn wants_table(&self) -> bool {
        table::wants_table(&self.accept)
    }
}

async fn serve_resource(request: &ApiRequest, target: Target) -> Result<Response<Body>, ApiError> {
    let Target { resource, namespace, name, status, watch_path } = target;
    let store = request.shared.store();
    let dry_run = request.query.dry_run();
    let scope = if resource.namespaced { namespace.clone().unwrap_or_default() } else { String::new() };
    let subresource = if status { Subresource::Status } else { Subresource::Main };
    let name_or_body =
        |body: &Value| -> Option<String> { body.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) };
    match (&request.method, name) {
        (&Method::GET, None) if watch_path || request.query.flag("watch") => watch(request, resource, namespace).await,
        (&Method::GET, Some(name)) if watch_path => {
            let _ = name;
            Err(ApiError::method_not_allowed("watching a single object by path is not served; use a fieldSelector"))
        }
        (&Method::GET, None) => list(request, resource, namespace.as_deref()),
        (&Method::GET, Some(name)) => {
            let object = store.get(resource, &scope, &name)?;
            Ok(respond_object(request, resource, &object, 200))
        }
        (&Method::POST, None) => {
            if resource.namespaced && namespace.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "{} must be created in a namespace (POST /.../namespaces/<ns>/{})",
                    resource.plural, resource.plural
                )));
            }
            let body = request.json_body()?;
            let created = store.create(resource, &scope, body, dry_run)?;
            Ok(respond_object(request, resource, &created, 201))
        }
        (&Method::PUT, Some(name)) => {
            let body = request.json_body()?;
            if name_or_body(&body).as_deref().is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    name_or_body(&body).unwrap_or_default()
                )));
            }
            let updated = store.update(resource, &scope, &name, body, subresource, dry_run)?;
            Ok(respond_object(request, resource, &updated, 200))
        }
        (&Method::PATCH, Some(name)) => {
            let media = request.content_type.split(';').next().unwrap_or("").trim().to_string();
            let patch_body: Value = serde_json::from_slice(&request.body).map_err(|e| {
                if media == APPLY_PATCH {
                    ApiError::unsupported_media_type("application/apply-patch+yaml (only its JSON form is served)")
                } else {
                    ApiError::bad_request(format!("the patch is not valid JSON: {e}"))
                }
            })?;
            if media == APPLY_PATCH {
                if request.query.get("fieldManager").is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request("PATCH with an apply patch requires the fieldManager parameter"));
                }
                // Server-side apply creates what does not exist yet.
                if !status && store.get(resource, &scope, &name).is_err() {
                    let created = store.create(resource, &scope, patch_body, dry_run)?;
                    return Ok(respond_object(request, resource, &created, 201));
                }
            }
            let patched = store.modify(resource, &scope, &name, subresource, dry_run, |current| {
                let mut object = current.clone();
                let result = match media.as_str() {
                    "application/merge-patch+json" => {
                        patch::merge_patch(&mut object, &patch_body);
                        Ok(())
                    }
                    // Server-side apply without field ownership: the applied configuration merges as a strategic
                    // merge patch does (see README: fields dropped from a later apply are not removed).
                    "application/strategic-merge-patch+json" | APPLY_PATCH => {
                        patch::strategic_merge(&mut object, &patch_body)
                    }
                    "application/json-patch+json" => patch::json_patch(&mut object, &patch_body),
                    other => return Err(ApiError::unsupported_media_type(other)),
                };
                result.map_err(|e: PatchError| match e {
                    PatchError::TestFailed { .. } | PatchError::MissingPath { .. } => {
                        ApiError::invalid(resource.kind, &name, vec![(String::new(), e.to_string())])
                    }
                    other => ApiError::bad_request(other.to_string()),
                })?;
                Ok(object)
            })?;
            Ok(respond_object(request, resource, &patched, 200))
        }
        (&Method::DELETE, Some(name)) => {
            let precondition = if request.body.is_empty() {
                None
            } else {
                let options: Value = serde_json::from_slice(&request.body)
                    .map_err(|e| ApiError::bad_request(format!("the DeleteOptions body is not valid JSON: {e}")))?;
                options.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string)
            };
            let deleted = store.delete(resource, &scope, &name, precondition.as_deref(), dry_run)?;
            let uid = deleted.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            Ok(json_response(200, &status::success(resource.plural, &name, uid)))
        }
        (method, _) => Err(ApiError::method_not_allowed(format!("{method} is not served on this path"))),
    }
}

fn respond_object(request: &ApiRequest, resource: &ResourceType, object: &Value, code: u16) -> Response<Body> {
    if request.wants_table() {
        let include = IncludeObject::parse(request.query.get("includeObject"));
        let meta =
            json!({"resourceVersion": object.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
        return json_response(code, &table::table(resource, [object], include, meta, true));
    }
    json_response(code, object)
}

fn parse_revision(text: Option<&str>) -> Result<Option<u64>, ApiError> {
    match text {
        None | Some("") => Ok(None),
        Some(value) => value
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {value:?}: not a revision number"))),
    }
}

fn list(
    request: &ApiRequest,
    resource: &'static ResourceType,
    namespace: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let store = request.shared.store();
    let filter = request.filter()?;
    let requested = parse_revision(request.query.get("resourceVersion"))?;
    let current = store.revision();
    // A list "not older than" a revision the store has not reached would have to wait for it; the real server
    // gives up with 504 after a while, so this one says so at once.
    if let Some(r) = requested.filter(|r| *r > current) {
        return Err(ApiError::too_large_resource_version(r, current));
    }
    let limit = request.query.get("limit").and_then(|l| l.parse::<usize>().ok());
    let page = store.list(resource, namespace, &|o| filter.matches(o), limit, request.query.get("continue"))?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = page.remaining {
        metadata["remainingItemCount"] = json!(remaining);
    }
    if request.wants_table() {
        let include = IncludeObject::parse(request.query.get("includeObject"));
        let objects: Vec<&Value> = page.items.iter().map(|o| o.as_ref()).collect();
        return Ok(json_response(200, &table::table(resource, objects, include, metadata, true)));
    }
    // Written item by item from the stored objects: a list of thousands of Nodes is not deep-copied first.
    let mut body =
        json!({"kind": format!("{}List", resource.kind), "apiVersion": resource.api_version(), "metadata": metadata})
            .to_string();
    body.pop();
    body.push_str(",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&item.to_string());
    }
    body.push_str("]}");
    Ok(Response::builder()
        .status(200)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(full(body))
        .expect("static headers are valid"))
}

/// The parameters of one watch that shape each event it sends.
struct WatchEncoder {
    resource: &'static ResourceType,
    filter: ObjectFilter,
    table: Option<IncludeObject>,
    columns_sent: bool,
}

impl WatchEncoder {
    fn line(&mut self, event_type: &str, object: &Value) -> Bytes {
        let object = match self.table {
            Some(include) if event_type != "BOOKMARK" && event_type != "ERROR" => {
                let meta = json!({"resourceVersion": object.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
                let with_columns = !self.columns_sent;
                self.columns_sent = true;
                table::table(self.resource, [object], include, meta, with_columns)
            }
            _ => object.clone(),
        };
        let mut line = json!({"type": event_type, "object": object}).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    /// The event a filtered watch sees for a committed write, if any: an object entering the selector is ADDED,
    /// one leaving it DELETED.
    fn event(&mut self, event: &Event) -> Option<Bytes> {
        let now = self.filter.matches(&event.object);
        let before = event.previous.as_ref().is_some_and(|p| self.filter.matches(p));
        let event_type = match (event.event_type, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(self.line(event_type, &event.object))
    }

    fn bookmark(&mut self, revision: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": revision.to_string(), "creationTimestamp": null});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": metadata});
        self.line("BOOKMARK", &object)
    }
}

fn streaming_response(receiver: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = ReceiverStream::new(receiver).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static headers are valid")
}

/// Sends chunks in order; false once the client has gone.
async fn send_all(sender: &mpsc::Sender<Bytes>, chunks: Vec<Bytes>) -> bool {
    for chunk in chunks {
        if sender.send(chunk).await.is_err() {
            return false;
        }
    }
    true
}

async fn watch(
    request: &ApiRequest,
    resource: &'static ResourceType,
    namespace: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let shared = request.shared.clone();
    let filter = request.filter()?;
    let send_initial = request.query.flag("sendInitialEvents");
    let bookmarks = request.query.flag("allowWatchBookmarks");
    let requested = parse_revision(request.query.get("resourceVersion"))?;
    // No revision, `0`, or an explicit request for initial events: start from the current objects, as ADDED.
    let from = if send_initial { None } else { requested.filter(|r| *r != 0) };
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(shared.config().default_watch_timeout);
    let mut encoder = WatchEncoder {
        resource,
        filter,
        table: request.wants_table().then(|| IncludeObject::parse(request.query.get("includeObject"))),
        columns_sent: false,
    };
    let start = match shared.store().watch(resource, namespace.as_deref(), from) {
        Ok(start) => start,
        Err(err) if err.code == 410 && shared.config().expired_watch == ExpiredWatch::ErrorEvent => {
            // The real server accepts the watch and sends the expiry as the stream's only event.
            let (sender, receiver) = mpsc::channel(1);
            let _ = sender.try_send(encoder.line("ERROR", &err.to_status()));
            return Ok(streaming_response(receiver));
        }
        Err(err) => return Err(err),
    };
    let (sender, receiver) = mpsc::channel::<Bytes>(256);
    let bookmark_interval = shared.config().bookmark_interval;
    tokio::spawn(async move {
        let mut events = start.receiver;
        let mut first = Vec::new();
        for object in &start.initial {
            if encoder.filter.matches(object) {
                first.push(encoder.line("ADDED", object));
            }
        }
        first.extend(start.replay.iter().filter_map(|e| encoder.event(e)));
        if send_initial && bookmarks {
            first.push(encoder.bookmark(start.revision, true));
        }
        if !send_all(&sender, first).await {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            let chunks = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => encoder.event(&event).into_iter().collect(),
                    None => break,
                },
                _ = ticker.tick(), if bookmarks => {
                    let (pending, revision) = shared.store().drain_for_bookmark(&mut events);
                    let mut chunks: Vec<Bytes> = pending.iter().filter_map(|e| encoder.event(e)).collect();
                    chunks.push(encoder.bookmark(revision, false));
                    chunks
                }
                _ = &mut deadline => break,
                _ = sender.closed() => break,
            };
            if !send_all(&sender, chunks).await {
                break;
            }
        }
    });
    Ok(streaming_response(receiver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("labelSelector=a%3Db%2Cc+in+%28x%29&watch=1&dryRun=All&flag"));
        assert_eq!(q.get("labelSelector"), Some("a=b,c in (x)"));
        assert!(q.flag("watch"));
        assert!(q.dry_run());
        assert_eq!(q.get("flag"), Some(""));
    }

    #[test]
    fn resource_paths() {
        let t = parse_target("/api/v1/nodes/n1/status").unwrap().unwrap();
        assert_eq!((t.resource.plural, t.name.as_deref(), t.status), ("nodes", Some("n1"), true));
        let t = parse_target("/apis/apps/v1/namespaces/kube-system/daemonsets").unwrap().unwrap();
        assert_eq!((t.resource.kind, t.namespace.as_deref(), t.name), ("DaemonSet", Some("kube-system"), None));
        let t = parse_target("/api/v1/namespaces/weft").unwrap().unwrap();
        assert_eq!((t.resource.kind, t.name.as_deref()), ("Namespace", Some("weft")));
        let t = parse_target("/api/v1/watch/nodes").unwrap().unwrap();
        assert!(t.watch_path);
        assert_eq!(parse_target("/api/v1/pods").err().map(|e| e.code), Some(404));
        assert_eq!(parse_target("/api/v1/namespaces/x/nodes").err().map(|e| e.code), Some(404));
        assert_eq!(parse_target("/api/v1/configmaps/x/status").err().map(|e| e.code), Some(404));
        assert!(parse_target("/version").unwrap().is_none());
    }
}
