//! The object store: every object of every served type under one monotonic revision, like etcd behind a real
//! API server. Each write takes the next revision, which becomes the object's `metadata.resourceVersion`; the
//! last writes are kept as a history that watches resume from, and a watch from a revision older than that history
//! is told it expired (410), as after an etcd compaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::clock;
use crate::resources::{ResourceType, RESOURCES};
use crate::status::ApiError;

/// A watch event's type as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed write.
#[derive(Debug)]
pub struct Event {
    pub event_type: EventType,
    pub revision: u64,
    pub resource: &'static ResourceType,
    pub namespace: String,
    /// The object after the write (for a delete: the last state, carrying the deletion's revision).
    pub object: Arc<Value>,
    /// The object before the write, so that a filtered watch can tell an object leaving its selector.
    pub previous: Option<Arc<Value>>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The main resource: `status` is kept as it was (for types with a status subresource).
    Main,
    /// `/status`: only `status` (and labels and annotations) change; `spec` is kept.
    Status,
    /// Everything the body says, status included: the test-side API's writes (a controller's view of a Node).
    Whole,
}

type Key = (usize, String, String);

struct Watcher {
    resource: &'static ResourceType,
    namespace: Option<String>,
    sender: mpsc::UnboundedSender<Arc<Event>>,
}

/// A consistent copy of one type's objects, kept for paged lists (`limit` + `continue`).
struct Snapshot {
    revision: u64,
    resource: &'static ResourceType,
    items: Arc<Vec<(String, String, Arc<Value>)>>,
}

struct State {
    revision: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// A watch may resume from revision `r` only when `r >= compacted`: every event after `r` is still kept.
    compacted: u64,
    watchers: Vec<Watcher>,
    snapshots: VecDeque<Snapshot>,
    uid_counter: u64,
    uid_seed: u64,
}

/// How many paged-list snapshots are kept; an older `continue` token gets 410 Expired, as after compaction.
const SNAPSHOTS_KEPT: usize = 16;

/// The store, shared by the HTTP handlers and the test-side API.
pub struct Store {
    state: Mutex<State>,
}

/// Where a watch starts.
pub struct WatchStart {
    /// Objects that exist now, to send as ADDED first (a watch without a resourceVersion, or with `0`).
    pub initial: Vec<Arc<Value>>,
    /// Kept events after the requested revision.
    pub replay: Vec<Arc<Event>>,
    pub receiver: mpsc::UnboundedReceiver<Arc<Event>>,
    /// The revision the watch is at once `initial` and `replay` are sent.
    pub revision: u64,
}

/// One page of a list.
pub struct ListPage {
    pub items: Vec<Arc<Value>>,
    pub revision: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

fn index_of(resource: &ResourceType) -> usize {
    RESOURCES.iter().position(|r| r == resource).expect("resource types come from the table")
}

fn name_of(object: &Value) -> &str {
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

fn resource_version_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn set_meta(object: &mut Value, key: &str, value: Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(key.to_string(), value);
    }
}

/// A DNS-1123 subdomain, the rule for most object names.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The checks a real server makes before anything else: the object is a JSON object of this type with a name.
fn validate(resource: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let name = name_of(object);
    let mut causes = Vec::new();
    if !object.is_object() {
        return Err(ApiError::bad_request("the request body is not a JSON object"));
    }
    match object.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => causes.push(("apiVersion".to_string(), "Required value".to_string())),
        Some(v) if v != resource.api_version() => causes.push((
            "apiVersion".to_string(),
            format!("Invalid value: {v:?}: must be {:?} for {}", resource.api_version(), resource.plural),
        )),
        Some(_) => {}
    }
    match object.get("kind").and_then(Value::as_str) {
        None | Some("") => causes.push(("kind".to_string(), "Required value".to_string())),
        Some(k) if k != resource.kind => causes.push((
            "kind".to_string(),
            format!("Invalid value: {k:?}: must be {:?} for {}", resource.kind, resource.plural),
        )),
        Some(_) => {}
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        causes.push(("metadata".to_string(), "Required value".to_string()));
    } else if name.is_empty() {
        causes.push(("metadata.name".to_string(), "Required value: name or generateName is required".to_string()));
    } else if !valid_name(name) {
        causes.push((
            "metadata.name".to_string(),
            format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(resource.kind, name, causes))
    }
}

impl Store {
    pub fn new(history_limit: usize) -> Store {
        let seed = clock::now_unix() as u64 ^ (std::process::id() as u64) << 32;
        let store = Store {
            state: Mutex::new(State {
                revision: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_limit: history_limit.max(1),
                compacted: 1,
                watchers: Vec::new(),
                snapshots: VecDeque::new(),
                uid_counter: 0,
                uid_seed: seed,
            }),
        };
        // The namespaces every cluster has, so that namespaced objects can be created as in a real cluster.
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            store
                .put(crate::resources::by_kind("v1", "Namespace").expect("namespaces are served"), namespace)
                .expect("built-in namespaces are valid");
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write is a single insert), so poisoning is
        // not a reason to fail every later request.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn set_history_limit(&self, limit: usize) {
        let mut state = self.lock();
        state.history_limit = limit.max(1);
        state.trim_history();
    }

    /// Forgets all kept history, as an etcd compaction at the current revision: every watch or continue token
    /// from an older revision then gets 410 Expired.
    pub fn expire_history(&self) {
        let mut state = self.lock();
        state.history.clear();
        state.snapshots.clear();
        state.compacted = state.revision;
    }

    /// Ends every open watch (their event channels close).
    pub fn drop_watches(&self) {
        self.lock().watchers.clear();
    }

    pub fn watch_count(&self) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.sender.is_closed());
        state.watchers.len()
    }

    pub fn get(&self, resource: &'static ResourceType, namespace: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let key = (index_of(resource), namespace.to_string(), name.to_string());
        self.lock().objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(resource.plural, name))
    }

    /// Every object of one type (in one namespace, or all), in key order.
    pub fn all(&self, resource: &'static ResourceType, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let state = self.lock();
        state.items_of(resource).filter(|(ns, _, _)| namespace.is_none_or(|n| n == *ns)).map(|(_, _, o)| o).collect()
    }

    /// A page of objects: from the start, or from a `continue` token (read from the snapshot it was cut from).
    pub fn list(
        &self,
        resource: &'static ResourceType,
        namespace: Option<&str>,
        matches: &dyn Fn(&Value) -> bool,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let mut state = self.lock();
        let (revision, items, after) = match continue_token {
            Some(token) => {
                let (revision, after) = decode_continue(token)?;
                let snapshot = state
                    .snapshots
                    .iter()
                    .find(|s| s.revision == revision && std::ptr::eq(s.resource, resource))
                    .ok_or_else(|| {
                        ApiError::expired(format!(
                            "The provided continue parameter is too old to display a consistent list result. You \
                             can start a new list without the continue parameter (revision {revision})."
                        ))
                    })?;
                (revision, snapshot.items.clone(), Some(after))
            }
            None => {
                let items: Vec<(String, String, Arc<Value>)> =
                    state.items_of(resource).map(|(ns, name, o)| (ns.to_string(), name.to_string(), o)).collect();
                (state.revision, Arc::new(items), None)
            }
        };
        let selected: Vec<&(String, String, Arc<Value>)> = items
            .iter()
            .filter(|(ns, name, _)| after.as_ref().is_none_or(|a| (ns, name) > (&a.0, &a.1)))
            .filter(|(ns, _, o)| namespace.is_none_or(|n| n == ns) && matches(o))
            .collect();
        let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let page: Vec<Arc<Value>> = selected.iter().take(limit).map(|(_, _, o)| o.clone()).collect();
        let (continue_token, remaining) = if selected.len() > limit {
            let (ns, name, _) = selected[limit - 1];
            if continue_token.is_none() {
                state.snapshots.push_back(Snapshot { revision, resource, items: items.clone() });
                while state.snapshots.len() > SNAPSHOTS_KEPT {
                    state.snapshots.pop_front();
                }
            }
            (Some(encode_continue(revision, ns, name)), Some(selected.len() - limit))
        } else {
            (None, None)
        };
        Ok(ListPage { items: page, revision, continue_token, remaining })
    }

    /// Creates an object. The namespace must exist (as the NamespaceLifecycle admission plugin requires). With
    /// `dry_run` everything is checked and the would-be object returned, and nothing is stored.
    pub fn create(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        mut object: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        if object.pointer("/metadata/name").is_none() {
            if let Some(prefix) = object.pointer("/metadata/generateName").and_then(Value::as_str).map(str::to_string) {
                let suffix = state.next_uid_part() % 36u64.pow(5);
                set_meta(&mut object, "name", json!(format!("{prefix}{}", base36(suffix, 5))));
            }
        }
        validate(resource, &object)?;
        state.place_in_namespace(resource, namespace, &mut object)?;
        let name = name_of(&object).to_string();
        let key = (index_of(resource), namespace.to_string(), name.clone());
        if state.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource.plural, &name));
        }
        let uid = state.next_uid();
        let meta = object["metadata"].as_object_mut().expect("validated to be an object");
        meta.insert("uid".to_string(), json!(uid));
        meta.insert("creationTimestamp".to_string(), json!(clock::format_rfc3339(clock::now_unix())));
        meta.remove("resourceVersion");
        if resource.group == "apps" {
            meta.insert("generation".to_string(), json!(1));
        }
        defaults_on_create(resource, &mut object);
        normalize(resource, &mut object);
        if dry_run {
            return Ok(object);
        }
        Ok((*state.commit(resource, key, Some(object), EventType::Added)).clone())
    }

    /// Replaces an object. A non-empty `metadata.resourceVersion` in `object` must be the current one (else 409).
    pub fn update(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        object: Value,
        subresource: Subresource,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.modify(resource, namespace, name, subresource, dry_run, |_current| Ok(object))
    }

    /// Reads the current object, lets `change` compute the new one from it, and writes that as an update would,
    /// all under the store's lock (so a patch is atomic, as the server's read-modify-write loop is).
    pub fn modify(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        subresource: Subresource,
        dry_run: bool,
        change: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let key = (index_of(resource), namespace.to_string(), name.to_string());
        let current = state.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(resource.plural, name))?;
        let mut object = change(&current)?;
        if !object.is_object() {
            return Err(ApiError::bad_request("the object is not a JSON object"));
        }
        // Fill in what a PUT body may leave out (kubectl and kube-rs send whole objects; a patch keeps them).
        if object.get("apiVersion").is_none() {
            object["apiVersion"] = json!(resource.api_version());
        }
        if object.get("kind").is_none() {
            object["kind"] = json!(resource.kind);
        }
        validate(resource, &object)?;
        if name_of(&object) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&object)
            )));
        }
        if let Some(version) = resource_version_of(&object) {
            if Some(version) != resource_version_of(&current) {
                return Err(ApiError::conflict(resource.plural, name));
            }
        }
        state.place_in_namespace(resource, namespace, &mut object)?;
        // Fields the server owns are kept from the stored object whatever the body says.
        for field in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => set_meta(&mut object, field, v.clone()),
                None => {
                    if let Some(meta) = object["metadata"].as_object_mut() {
                        meta.remove(field);
                    }
                }
            }
        }
        match subresource {
            Subresource::Main if resource.has_status => match current.get("status") {
                Some(status) => object["status"] = status.clone(),
                None => {
                    object.as_object_mut().expect("checked above").remove("status");
                }
            },
            Subresource::Status => {
                let status = object.get("status").cloned();
                let metadata = object["metadata"].clone();
                object = (*current).clone();
                match status {
                    Some(s) => object["status"] = s,
                    None => {
                        object.as_object_mut().expect("stored objects are objects").remove("status");
                    }
                }
                for field in ["labels", "annotations"] {
                    match metadata.get(field) {
                        Some(v) => set_meta(&mut object, field, v.clone()),
                        None => {
                            if let Some(meta) = object["metadata"].as_object_mut() {
                                meta.remove(field);
                            }
                        }
                    }
                }
            }
            Subresource::Main | Subresource::Whole => {}
        }
        if resource.group == "apps" && object.get("spec") != current.get("spec") {
            let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            set_meta(&mut object, "generation", json!(generation + 1));
        }
        normalize(resource, &mut object);
        // A write that changes nothing is not a write: no new revision, no event (as the real server skips it).
        if object == *current || dry_run {
            return Ok(object);
        }
        Ok((*state.commit(resource, key, Some(object), EventType::Modified)).clone())
    }

    /// Creates or replaces an object unconditionally, status included (the test-side API). A namespaced object's
    /// namespace (`default` when unset) must exist.
    pub fn put(&self, resource: &'static ResourceType, object: Value) -> Result<Value, ApiError> {
        let namespace = if resource.namespaced {
            object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string()
        } else {
            String::new()
        };
        validate(resource, &object)?;
        let name = name_of(&object).to_string();
        let exists = self.get(resource, &namespace, &name).is_ok();
        if exists {
            let mut object = object;
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            // The test-side API writes status too: a Node's conditions are part of what tests set up.
            self.modify(resource, &namespace, &name, Subresource::Whole, false, |_| Ok(object))
        } else {
            self.create(resource, &namespace, object, false)
        }
    }

    /// Deletes an object; `precondition` is a resourceVersion that must be the current one.
    pub fn delete(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        precondition: Option<&str>,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let mut state = self.lock();
        let key = (index_of(resource), namespace.to_string(), name.to_string());
        let current = state.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(resource.plural, name))?;
        if precondition.is_some_and(|p| Some(p) != resource_version_of(&current)) {
            return Err(ApiError::conflict(resource.plural, name));
        }
        if dry_run {
            return Ok(current);
        }
        Ok(state.commit(resource, key, None, EventType::Deleted))
    }

    /// Registers a watch on one type (one namespace, or all) from `from`: `None` starts with the current objects
    /// as ADDED; `Some(r)` replays kept events after `r`, or fails with 410 when they are no longer kept.
    pub fn watch(
        &self,
        resource: &'static ResourceType,
        namespace: Option<&str>,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let mut state = self.lock();
        let (initial, replay) = match from {
            None => {
                let items =
                    state.items_of(resource).filter(|(ns, _, _)| namespace.is_none_or(|n| n == *ns)).map(|(_, _, o)| o);
                (items.collect(), Vec::new())
            }
            Some(r) if r < state.compacted => {
                return Err(ApiError::expired(format!("too old resource version: {r} ({})", state.compacted)));
            }
            Some(r) => {
                let replay = state
                    .history
                    .iter()
                    .filter(|e| e.revision > r && std::ptr::eq(e.resource, resource))
                    .filter(|e| namespace.is_none_or(|n| n == e.namespace))
                    .cloned()
                    .collect();
                (Vec::new(), replay)
            }
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        state.watchers.push(Watcher { resource, namespace: namespace.map(str::to_string), sender });
        Ok(WatchStart { initial, replay, receiver, revision: state.revision })
    }

    /// Moves the events already queued for a watcher out of its channel, with the revision the store is at: all
    /// events up to that revision are then in hand, so a bookmark at it is truthful.
    pub fn drain_for_bookmark(&self, receiver: &mut mpsc::UnboundedReceiver<Arc<Event>>) -> (Vec<Arc<Event>>, u64) {
        let state = self.lock();
        let mut events = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            events.push(event);
        }
        (events, state.revision)
    }
}

impl State {
    fn items_of(&self, resource: &ResourceType) -> impl Iterator<Item = (&str, &str, Arc<Value>)> + '_ {
        let index = index_of(resource);
        self.objects
            .range((index, String::new(), String::new())..)
            .take_while(move |((i, _, _), _)| *i == index)
            .map(|((_, ns, name), o)| (ns.as_str(), name.as_str(), o.clone()))
    }

    fn next_uid_part(&mut self) -> u64 {
        self.uid_counter += 1;
        // SplitMix64 over seed + counter: unique per server, unpredictable enough for tests to not collide.
        let mut z = self.uid_seed.wrapping_add(self.uid_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_uid(&mut self) -> String {
        let (a, b) = (self.next_uid_part(), self.next_uid_part());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }

    /// Sets or clears `metadata.namespace` for the type's scope, checking a namespaced object's namespace exists.
    fn place_in_namespace(&self, resource: &ResourceType, namespace: &str, object: &mut Value) -> Result<(), ApiError> {
        let meta = object["metadata"].as_object_mut().expect("validated to be an object");
        if !resource.namespaced {
            meta.remove("namespace");
            return Ok(());
        }
        if let Some(given) = meta.get("namespace").and_then(Value::as_str) {
            if given != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        meta.insert("namespace".to_string(), json!(namespace));
        let namespaces = crate::resources::by_kind("v1", "Namespace").expect("namespaces are served");
        if !self.objects.contains_key(&(index_of(namespaces), String::new(), namespace.to_string())) {
            return Err(ApiError::not_found("namespaces", namespace));
        }
        Ok(())
    }

    /// Takes the next revision for a write (a delete when `object` is None), records it, and tells the watchers.
    fn commit(
        &mut self,
        resource: &'static ResourceType,
        key: Key,
        object: Option<Value>,
        event_type: EventType,
    ) -> Arc<Value> {
        self.revision += 1;
        let revision = self.revision;
        let previous = self.objects.get(&key).cloned();
        let stored = match object {
            Some(mut object) => {
                set_meta(&mut object, "resourceVersion", json!(revision.to_string()));
                let stored = Arc::new(object);
                self.objects.insert(key.clone(), stored.clone());
                stored
            }
            None => {
                self.objects.remove(&key);
                let mut last = (*previous.clone().expect("deletes are of existing objects")).clone();
                set_meta(&mut last, "resourceVersion", json!(revision.to_string()));
                Arc::new(last)
            }
        };
        let event = Arc::new(Event {
            event_type,
            revision,
            resource,
            namespace: key.1.clone(),
            object: stored.clone(),
            previous,
        });
        self.watchers.retain(|w| {
            if !std::ptr::eq(w.resource, resource) || w.namespace.as_ref().is_some_and(|n| *n != key.1) {
                return !w.sender.is_closed();
            }
            w.sender.send(event.clone()).is_ok()
        });
        self.history.push_back(event);
        self.trim_history();
        stored
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.revision;
            }
        }
    }
}

/// Defaults the real server fills in on create for the types served here.
fn defaults_on_create(resource: &ResourceType, object: &mut Value) {
    if resource.kind == "Namespace" {
        object["spec"] = json!({"finalizers": ["kubernetes"]});
        object["status"] = json!({"phase": "Active"});
    }
}

/// Conversions the real server makes on every write: a Secret's `stringData` becomes base64 `data`.
fn normalize(resource: &ResourceType, object: &mut Value) {
    if resource.kind != "Secret" {
        return;
    }
    let Some(Value::Object(string_data)) = object.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let data = object.as_object_mut().expect("objects only").entry("data").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(data) = data {
        for (key, value) in string_data {
            let text = value.as_str().unwrap_or_default().to_string();
            data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(text)));
        }
    }
}

fn base36(mut n: u64, digits: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; digits];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("ascii")
}

fn encode_continue(revision: u64, namespace: &str, name: &str) -> String {
    let token = json!({"rv": revision, "ns": namespace, "name": name}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let revision = value.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = value.get("ns").and_then(Value::as_str).ok_or_else(bad)?.to_string();
    let name = value.get("name").and_then(Value::as_str).ok_or_else(bad)?.to_string();
    Ok((revision, (ns, name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{by_kind, nodes};

    fn node(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": "10.244.1.0/24"}})
    }

    #[test]
    fn revisions_are_monotonic_across_types_and_become_resource_versions() {
        let store = Store::new(100);
        let start = store.revision();
        let a = store.create(nodes(), "", node("a"), false).unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        let c = store.create(by_kind("v1", "ConfigMap").unwrap(), "default", cm, false).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], json!((start + 1).to_string()));
        assert_eq!(c["metadata"]["resourceVersion"], json!((start + 2).to_string()));
        assert_eq!(c["metadata"]["namespace"], "default");
        assert!(a["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    }

    #[test]
    fn stale_resource_version_conflicts_and_no_op_update_keeps_revision() {
        let store = Store::new(100);
        let created = store.create(nodes(), "", node("a"), false).unwrap();
        let mut changed = created.clone();
        changed["metadata"]["labels"] = json!({"x": "y"});
        let updated = store.update(nodes(), "", "a", changed, Subresource::Main, false).unwrap();
        assert_ne!(updated["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
        let stale = store.update(nodes(), "", "a", created, Subresource::Main, false).unwrap_err();
        assert_eq!(stale.code, 409);
        let revision = store.revision();
        store.update(nodes(), "", "a", updated, Subresource::Main, false).unwrap();
        assert_eq!(store.revision(), revision);
    }

    #[test]
    fn status_subresource_and_main_resource_each_keep_the_other_part() {
        let store = Store::new(100);
        store.create(nodes(), "", node("a"), false).unwrap();
        let mut with_status = node("a");
        with_status["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        with_status["spec"] = json!({"podCIDR": "10.9.9.0/24"});
        let main = store.update(nodes(), "", "a", with_status.clone(), Subresource::Main, false).unwrap();
        assert_eq!(main.get("status"), None);
        assert_eq!(main["spec"]["podCIDR"], "10.9.9.0/24");
        with_status["spec"] = json!({"podCIDR": "10.7.7.0/24"});
        let status = store.update(nodes(), "", "a", with_status, Subresource::Status, false).unwrap();
        assert_eq!(status["status"]["conditions"][0]["type"], "Ready");
        assert_eq!(status["spec"]["podCIDR"], "10.9.9.0/24");
    }

    #[test]
    fn watch_replays_kept_history_and_expires_older_revisions() {
        let store = Store::new(2);
        let start = store.revision();
        for name in ["a", "b", "c"] {
            store.create(nodes(), "", node(name), false).unwrap();
        }
        let kept = store.watch(nodes(), None, Some(start + 1)).unwrap();
        assert_eq!(kept.replay.len(), 2);
        assert_eq!(store.watch(nodes(), None, Some(start)).err().map(|e| e.code), Some(410));
        store.expire_history();
        assert_eq!(store.watch(nodes(), None, Some(start + 2)).err().map(|e| e.code), Some(410));
        let now = store.watch(nodes(), None, Some(store.revision())).unwrap();
        assert!(now.replay.is_empty());
        assert_eq!(store.watch(nodes(), None, None).unwrap().initial.len(), 3);
    }

    #[test]
    fn paged_lists_read_one_snapshot() {
        let store = Store::new(100);
        for name in ["a", "b", "c"] {
            store.create(nodes(), "", node(name), false).unwrap();
        }
        let first = store.list(nodes(), None, &|_| true, Some(2), None).unwrap();
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.remaining, Some(1));
        store.delete(nodes(), "", "c", None, false).unwrap();
        let token = first.continue_token.unwrap();
        let second = store.list(nodes(), None, &|_| true, Some(2), Some(&token)).unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0]["metadata"]["name"], "c");
        assert_eq!(second.revision, first.revision);
        assert!(second.continue_token.is_none());
        store.expire_history();
        assert_eq!(store.list(nodes(), None, &|_| true, Some(2), Some(&token)).err().map(|e| e.code), Some(410));
    }

    #[test]
    fn create_validates_kind_name_and_namespace() {
        let store = Store::new(100);
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
        assert_eq!(store.create(cm, "default", wrong_kind, false).unwrap_err().code, 422);
        let no_name = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        assert_eq!(store.create(cm, "default", no_name, false).unwrap_err().code, 422);
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert_eq!(store.create(cm, "nowhere", ok.clone(), false).unwrap_err().code, 404);
        let revision = store.revision();
        store.create(cm, "default", ok.clone(), true).unwrap();
        assert_eq!(store.revision(), revision);
        assert!(store.get(cm, "default", "x").is_err());
        store.create(cm, "default", ok.clone(), false).unwrap();
        assert_eq!(store.create(cm, "default", ok, false).unwrap_err().code, 409);
    }

    #[test]
    fn secret_string_data_becomes_base64_data() {
        let store = Store::new(100);
        let secret =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "hi"}});
        let stored = store.create(by_kind("v1", "Secret").unwrap(), "default", secret, false).unwrap();
        assert_eq!(stored["data"]["k"], "aGk=");
        assert_eq!(stored.get("stringData"), None);
    }
}
