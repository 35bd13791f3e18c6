//! The Kubernetes store (`--kube-subnet-mgr`): leases are Nodes, as in flannel's Kubernetes subnet manager.
//!
//! Our subnet is our Node's pod CIDR(s), which the controller manager assigns; we only publish our lease value
//! into our Node's annotations (through the `nodes/status` subresource, the one write kube-flannel's RBAC allows).
//! Peers are the Nodes that carry flannel's annotations ([`super::kube_node`] reads and writes them). The network
//! config is a file (`--net-config-path`, kube-flannel's ConfigMap mounted as `net-conf.json`).
//!
//! The API server's resourceVersion is the store's revision and "410 Gone" its compaction, so [`super::LeaseFeed`]
//! lists and watches Nodes exactly as it lists and watches etcd keys: a list, then a watch from the listed
//! resourceVersion (with bookmarks, so a watch the server ends is resumed where it was), and a fresh list after a
//! 410 or a broken connection. A Node's lease never expires; it goes away with the Node or its annotations.
//!
//! Node resourceVersions move with every kubelet status update. A lease's `mod_revision` is therefore the
//! resourceVersion at which this store first saw the Node's lease as it is now, and updates that change nothing
//! the overlay uses are not reported as changes at all (flannel filters them the same way).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};

use serde_json::json;
use tracing::{debug, info};
use weft_backends::Family;

use super::kube_node::{annotations_to_publish, node_lease, AnnotationNames, BadPrefix, NodeFacts, NodeLease};
use super::{Change, ChangeStream, LeaseProblem, LeaseStore, Listing, StoreError, TimeToLive, WatchBatch};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

/// How long one request may take before the API server counts as unreachable (watches excepted).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server keeps one watch open; it is then resumed from the last resourceVersion seen.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// What a Node's lease answers for its TTL: it has none, it lives as long as the Node.
const NODE_LIFETIME: Duration = Duration::from_secs(u32::MAX as u64);

/// Where to find the API server and what to read and write there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// `--kube-api-url`: the API server's URL (overrides a kubeconfig's server).
    pub api_url: Option<String>,
    /// `--kubeconfig-file`; without it and without an URL, the pod's service account (in-cluster config).
    pub kubeconfig: Option<PathBuf>,
    pub annotation_prefix: String,
    pub net_config_path: PathBuf,
    /// This host's Node; None: the `NODE_NAME` environment variable, else the Node of the pod `POD_NAMESPACE`/
    /// `POD_NAME` (as flanneld finds it).
    pub node_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeStoreError {
    #[error(transparent)]
    Prefix(#[from] BadPrefix),
    #[error("--kube-api-url {url:?} is not a URL")]
    BadApiUrl { url: String },
    #[error("cannot read --kubeconfig-file {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no --kube-api-url or --kubeconfig-file, and not running in a pod with a service account: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot tell which Node this is: set NODE_NAME (kube-flannel.yml sets it from spec.nodeName), or POD_NAME and POD_NAMESPACE")]
    NoNodeName,
    #[error("cannot read pod {namespace}/{name} to find its Node: {source}")]
    Pod {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot read pod {namespace}/{name} to find its Node: no answer within {timeout:?}")]
    PodTimeout { namespace: String, name: String, timeout: Duration },
    #[error("pod {namespace}/{name} is not scheduled on a Node (spec.nodeName is empty)")]
    PodWithoutNode { namespace: String, name: String },
    #[error("cannot read the network config {path}: {source}")]
    NetConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node} does not exist (yet)")]
    NoNode { node: String },
    #[error(
        "node {node} has no pod CIDR yet: the controller manager assigns one when it runs with --allocate-node-cidrs"
    )]
    NotAssigned { node: String },
    #[error("node {node}: {problem}")]
    BadOwnNode { node: String, problem: super::kube_node::NodeDefect },
    #[error("node {node}'s pod CIDR {subnet} is not inside the network config's {network}: the controller manager's --cluster-cidr and the config must agree")]
    OutsideNetwork { node: String, subnet: ipnetwork::IpNetwork, network: ipnetwork::IpNetwork },
    #[error("subnet {key} is not node {node}'s pod CIDR ({assigned}): a Node's subnet is assigned by Kubernetes")]
    NotOurs { node: String, key: SubnetKey, assigned: SubnetKey },
    #[error(
        "{what} is not possible with --kube-subnet-mgr: subnets are the Nodes' pod CIDRs and the config is {path}"
    )]
    ReadOnly { what: &'static str, path: PathBuf },
}

/// The store's view of one peer Node, kept so that updates which change nothing for the overlay are skipped and a
/// Node that stops being a peer is reported as a delete.
#[derive(Debug, Clone)]
struct Seen {
    key: SubnetKey,
    attrs: std::sync::Arc<LeaseAttrs>,
    revision: i64,
}

#[derive(Clone)]
pub struct KubeStore {
    nodes: Api<Node>,
    node_name: String,
    names: Arc<AnnotationNames>,
    /// The families the network config enables: only their annotations are read or written.
    families: Vec<Family>,
    /// The network config's networks: our pod CIDR must lie inside them.
    networks: Vec<ipnetwork::IpNetwork>,
    net_config_path: PathBuf,
    server: String,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl KubeStore {
    /// Builds the client (nothing is sent yet except, without NODE_NAME, the read of our pod).
    pub async fn connect(settings: &KubeSettings) -> Result<KubeStore, StoreError> {
        let names = AnnotationNames::new(&settings.annotation_prefix).map_err(KubeStoreError::from)?;
        let config = client_config(settings).await?;
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(KubeStoreError::Client)?;
        let node_name = match &settings.node_name {
            Some(name) => name.clone(),
            None => node_name_from_env(&client).await?,
        };
        Ok(KubeStore {
            nodes: Api::all(client),
            node_name,
            names: Arc::new(names),
            families: vec![Family::V4],
            networks: Vec::new(),
            net_config_path: settings.net_config_path.clone(),
            server: server.trim_end_matches('/').to_string(),
            seen: Arc::default(),
        })
    }

    /// The same store for a network config: only the annotations of its families are read or written, and our
    /// pod CIDR must lie inside its networks.
    pub fn for_config(mut self, config: &crate::config::NetworkConfig) -> KubeStore {
        self.families = config.families();
        self.networks = config.networks.iter().map(|(_, family)| family.network).collect();
        self
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn net_config_path(&self) -> &Path {
        &self.net_config_path
    }

    fn name(&self) -> String {
        format!("Kubernetes API at {}", self.server)
    }

    fn failure(&self, source: kube::Error) -> StoreError {
        StoreError::Unavailable { store: self.name(), source: source.into() }
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failure(e)),
            Err(_) => Err(StoreError::Timeout { store: self.name(), timeout: REQUEST_TIMEOUT }),
        }
    }

    fn revision(&self, text: Option<&str>) -> Result<i64, StoreError> {
        text.and_then(|t| t.parse().ok())
            .ok_or_else(|| StoreError::Malformed { store: self.name(), what: "a resourceVersion that is not a number" })
    }

    fn read_only(&self, what: &'static str) -> StoreError {
        KubeStoreError::ReadOnly { what, path: self.net_config_path.clone() }.into()
    }

    /// Our Node, fresh from the API server.
    async fn own_node(&self) -> Result<Node, StoreError> {
        match self.bounded(self.nodes.get_opt(&self.node_name)).await? {
            Some(node) => Ok(node),
            None => Err(KubeStoreError::NoNode { node: self.node_name.clone() }.into()),
        }
    }

    /// Our Node's subnet, as the controller manager assigned it.
    fn own_subnet(&self, node: &Node) -> Result<SubnetKey, StoreError> {
        let facts = facts(node);
        if facts.pod_cidrs.is_empty() && facts.pod_cidr.is_none_or(str::is_empty) {
            return Err(KubeStoreError::NotAssigned { node: self.node_name.clone() }.into());
        }
        let key = super::kube_node::node_subnet(&facts, &self.families)
            .map_err(|problem| KubeStoreError::BadOwnNode { node: self.node_name.clone(), problem })?;
        for subnet in key.subnets() {
            let inside = |n: &ipnetwork::IpNetwork| n.contains(subnet.network()) && n.prefix() <= subnet.prefix();
            if let Some(network) = self.networks.iter().find(|n| n.is_ipv4() == subnet.is_ipv4() && !inside(n)) {
                let (node, network) = (self.node_name.clone(), *network);
                return Err(KubeStoreError::OutsideNetwork { node, subnet, network }.into());
            }
        }
        Ok(key)
    }

    /// A Node as the changes it makes, remembering what it was.
    fn node_changes(&self, node: &Node, deleted: bool, revision: i64) -> Vec<Change> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = if deleted { NodeLease::NotAPeer } else { node_lease(&self.names, &self.families, &facts(node)) };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let before = seen.get(&name).cloned();
        let mut changes = Vec::new();
        let gone = |changes: &mut Vec<Change>, seen: &mut HashMap<String, Seen>| {
            if let Some(before) = seen.remove(&name) {
                changes.push(Change::Delete(before.key));
            }
        };
        match now {
            NodeLease::NotAPeer => gone(&mut changes, &mut seen),
            NodeLease::Peer(lease) => {
                if before.as_ref().is_some_and(|b| b.key == lease.key && b.attrs == lease.attrs) {
                    return changes;
                }
                if before.as_ref().is_some_and(|b| b.key != lease.key) {
                    gone(&mut changes, &mut seen);
                }
                seen.insert(name.clone(), Seen { key: lease.key, attrs: lease.attrs.clone(), revision });
                changes.push(Change::DeleteUnparsable(node_path(&name)));
                changes.push(Change::Put(Lease { mod_revision: revision, ..lease }));
            }
            NodeLease::Bad(problem) => {
                if before.as_ref().is_some_and(|b| Some(b.key) != problem.key) {
                    gone(&mut changes, &mut seen);
                }
                if let Some(key) = problem.key {
                    // Like a lease with a bad value: the subnet stays taken, nothing is programmed for it.
                    let attrs = std::sync::Arc::new(LeaseAttrs::default());
                    seen.insert(name.clone(), Seen { key, attrs: attrs.clone(), revision });
                    changes.push(Change::Put(Lease { key, attrs, etcd_lease: 0, mod_revision: revision }));
                }
                changes.push(Change::Problem(LeaseProblem::BadNode { path: node_path(&name), problem }));
            }
        }
        changes
    }

    /// Clears the NodeNetworkUnavailable condition of our Node, as flanneld does once its network is up.
    pub async fn clear_network_unavailable(&self) -> Result<(), StoreError> {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::chrono::Utc::now());
        let patch = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "WeftIsUp",
            "message": "weft is running on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        let params = PatchParams::default();
        self.bounded(self.nodes.patch_status(&self.node_name, &params, &Patch::Strategic(patch))).await?;
        Ok(())
    }

    /// Opens a watch of every Node after `resource_version`.
    async fn open_watch(&self, resource_version: i64) -> Result<NodeEvents, StoreError> {
        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
        let version = resource_version.to_string();
        match self.bounded(self.nodes.watch(&params, &version)).await {
            Ok(stream) => Ok(stream.boxed()),
            Err(StoreError::Unavailable { source, .. }) if is_gone(&source) => {
                Err(StoreError::Compacted { store: self.name(), compact_revision: resource_version })
            }
            Err(e) => Err(e),
        }
    }
}

type NodeEvents = Pin<Box<dyn Stream<Item = Result<WatchEvent<Node>, kube::Error>> + Send>>;

/// Whether an API error is "410 Gone": the resourceVersion asked for is older than the history kept.
fn is_gone(error: &super::BoxError) -> bool {
    matches!(error.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 410)
}

/// How a Node is named in problem reports (and in the set of bad keys).
fn node_path(name: &str) -> String {
    format!("node/{name}")
}

fn facts(node: &Node) -> NodeFacts<'_> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    let spec = node.spec.as_ref();
    NodeFacts {
        name: node.metadata.name.as_deref().unwrap_or(""),
        pod_cidr: spec.and_then(|s| s.pod_cidr.as_deref()),
        pod_cidrs: spec.and_then(|s| s.pod_cidrs.as_deref()).unwrap_or(&[]),
        annotations: node.metadata.annotations.as_ref().unwrap_or(&NONE),
    }
}

async fn client_config(settings: &KubeSettings) -> Result<Config, KubeStoreError> {
    let url = match &settings.api_url {
        Some(url) => Some(url.parse::<http::Uri>().map_err(|_| KubeStoreError::BadApiUrl { url: url.clone() })?),
        None => None,
    };
    let mut config = match (&settings.kubeconfig, url.clone()) {
        (Some(path), _) => {
            let kubeconfig_error = |source| KubeStoreError::Kubeconfig { path: path.clone(), source };
            let file = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(file, &Default::default()).await.map_err(kubeconfig_error)?
        }
        (None, Some(url)) => Config::new(url),
        (None, None) => Config::incluster().map_err(KubeStoreError::InCluster)?,
    };
    if let Some(url) = url {
        config.cluster_url = url;
    }
    Ok(config)
}

/// flanneld's way of finding its Node: `NODE_NAME`, else the Node its own pod runs on.
async fn node_name_from_env(client: &Client) -> Result<String, KubeStoreError> {
    if let Some(name) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return Ok(name);
    }
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let (Some(name), Some(namespace)) = (var("POD_NAME"), var("POD_NAMESPACE")) else {
        return Err(KubeStoreError::NoNodeName);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod_error = |source| KubeStoreError::Pod { namespace: namespace.clone(), name: name.clone(), source };
    let pod = match tokio::time::timeout(REQUEST_TIMEOUT, pods.get(&name)).await {
        Ok(result) => result.map_err(pod_error)?,
        Err(_) => return Err(KubeStoreError::PodTimeout { namespace, name, timeout: REQUEST_TIMEOUT }),
    };
    pod.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or(KubeStoreError::PodWithoutNode { namespace, name })
}

impl LeaseStore for KubeStore {
    type Changes = KubeChanges;

    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        match tokio::fs::read_to_string(&self.net_config_path).await {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KubeStoreError::NetConf { path: self.net_config_path.clone(), source }.into()),
        }
    }

    async fn put_config(&self, _text: &str) -> Result<(), StoreError> {
        Err(self.read_only("writing the network config"))
    }

    async fn list_leases(&self) -> Result<Listing, StoreError> {
        let list = self.bounded(self.nodes.list(&ListParams::default())).await?;
        let revision = self.revision(list.metadata.resource_version.as_deref())?;
        let mut listing = Listing { revision, ..Default::default() };
        // A listing replaces everything known: start from nothing, but keep the revision a lease was first seen
        // at when it did not change.
        let before = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        for node in &list.items {
            let node_revision = self.revision(node.metadata.resource_version.as_deref())?;
            let name = node.metadata.name.as_deref().unwrap_or("");
            for change in self.node_changes(node, false, node_revision) {
                match change {
                    Change::Put(mut lease) => {
                        if let Some(b) = before.get(name).filter(|b| b.key == lease.key && b.attrs == lease.attrs) {
                            lease.mod_revision = b.revision;
                            if let Some(seen) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
                                seen.revision = b.revision;
                            }
                        }
                        listing.leases.push(lease);
                    }
                    Change::Problem(problem) => listing.problems.push(problem),
                    Change::Delete(_) | Change::DeleteUnparsable(_) => {}
                }
            }
        }
        Ok(listing)
    }

    /// Publishes `attrs` in our Node's annotations. `key` must be our Node's pod CIDR(s): nobody else's Node
    /// can be claimed, and ours is never contended.
    async fn create_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, _ttl: Duration) -> Result<Lease, StoreError> {
        let node = self.own_node().await?;
        let assigned = self.own_subnet(&node)?;
        if assigned != *key {
            return Err(KubeStoreError::NotOurs { node: self.node_name.clone(), key: *key, assigned }.into());
        }
        let current = facts(&node).annotations.clone();
        let patch = annotations_to_publish(&self.names, attrs, &current);
        let node = if patch.is_empty() {
            debug!(node = %self.node_name, "our Node already carries our annotations");
            node
        } else {
            info!(node = %self.node_name, annotations = patch.len(), "publishing our lease in our Node's annotations");
            let body = json!({"metadata": {"annotations": patch}});
            let params = PatchParams::default();
            self.bounded(self.nodes.patch_status(&self.node_name, &params, &Patch::Strategic(body))).await?
        };
        let revision = self.revision(node.metadata.resource_version.as_deref())?;
        self.node_changes(&node, false, revision);
        // As the watch will report it: at the revision our current value was first seen.
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&self.node_name).cloned();
        match seen {
            Some(Seen { key: seen_key, attrs, revision }) if seen_key == *key => {
                Ok(Lease { key: *key, attrs, etcd_lease: 0, mod_revision: revision })
            }
            _ => Err(StoreError::Conflict { key: *key }),
        }
    }

    async fn renew_lease(&self, lease: &Lease, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        self.create_lease(&lease.key, attrs, ttl).await
    }

    async fn keep_alive(&self, _lease: &Lease) -> Result<Duration, StoreError> {
        Ok(NODE_LIFETIME)
    }

    async fn time_to_live(&self, _lease: &Lease) -> Result<Option<TimeToLive>, StoreError> {
        Ok(None)
    }

    async fn delete_lease(&self, _key: &SubnetKey) -> Result<(), StoreError> {
        Err(self.read_only("deleting a lease"))
    }

    async fn put_reservation(&self, _key: &SubnetKey, _attrs: &LeaseAttrs) -> Result<(), StoreError> {
        Err(self.read_only("writing a reservation"))
    }

    async fn watch_changes(&self, revision: i64) -> Result<KubeChanges, StoreError> {
        // Our revisions are inclusive; a resourceVersion given to a watch means "after this one".
        let after = revision - 1;
        let events = self.open_watch(after).await?;
        Ok(KubeChanges { store: self.clone(), events, after })
    }

    async fn assigned_subnet(&self) -> Result<Option<SubnetKey>, StoreError> {
        let node = self.own_node().await?;
        self.own_subnet(&node).map(Some)
    }
}

/// A watch of every Node.
pub struct KubeChanges {
    store: KubeStore,
    events: NodeEvents,
    /// The resourceVersion everything up to is reported (bookmarks move it too).
    after: i64,
}

impl ChangeStream for KubeChanges {
    async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        let store = &self.store;
        loop {
            let event = match self.events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(store.failure(e)),
                None => {
                    // The server ends every watch after its timeout: resume from where this one was.
                    debug!(resource_version = self.after, "the Node watch ended; resuming it");
                    self.events = store.open_watch(self.after).await?;
                    continue;
                }
            };
            let (node, deleted) = match event {
                WatchEvent::Added(node) | WatchEvent::Modified(node) => (node, false),
                WatchEvent::Deleted(node) => (node, true),
                WatchEvent::Bookmark(bookmark) => {
                    self.after = store.revision(Some(&bookmark.metadata.resource_version))?;
                    continue;
                }
                WatchEvent::Error(status) if status.code == 410 => {
                    return Err(StoreError::Compacted { store: store.name(), compact_revision: self.after });
                }
                WatchEvent::Error(status) => return Err(store.failure(kube::Error::Api(status))),
            };
            let revision = store.revision(node.metadata.resource_version.as_deref())?;
            self.after = revision;
            let changes = store.node_changes(&node, deleted, revision);
            if !changes.is_empty() {
                return Ok(WatchBatch { changes, revision });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use weft_kube_testserver::{RunningServer, TestApiServer};

    use super::*;
    use crate::store::{ResyncCause, WatchEvent};

    const FLANNEL_NODE_DATA: &str = r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#;

    fn node(name: &str, cidr: &str, annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        })
    }

    /// As flanneld leaves a node it runs on.
    fn flannel_annotations(public_ip: &str) -> Value {
        json!({
            "flannel.alpha.coreos.com/backend-data": FLANNEL_NODE_DATA,
            "flannel.alpha.coreos.com/backend-type": "vxlan",
            "flannel.alpha.coreos.com/kube-subnet-manager": "true",
            "flannel.alpha.coreos.com/public-ip": public_ip,
        })
    }

    async fn store_for(server: &RunningServer, node_name: &str) -> KubeStore {
        let settings = KubeSettings {
            api_url: Some(server.url()),
            kubeconfig: None,
            annotation_prefix: "flannel.alpha.coreos.com".into(),
            net_config_path: "/nonexistent/net-conf.json".into(),
            node_name: Some(node_name.into()),
        };
        let config = crate::config::NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        KubeStore::connect(&settings).await.unwrap().for_config(&config.unwrap())
    }

    fn our_attrs() -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Some("198.18.0.1".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}).into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn our_lease_is_our_nodes_pod_cidr_published_in_flannels_annotations() {
        let server = TestApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        server.put_node(node("ours", "10.244.1.0/24", json!({}))).unwrap();
        server.put_node(node("flannel", "10.244.2.0/24", flannel_annotations("198.18.0.2"))).unwrap();
        let store = store_for(&server, "ours").await;
        let key = store.assigned_subnet().await.unwrap().unwrap();
        assert_eq!(key.to_string(), "10.244.1.0-24");
        let own = store.create_lease(&key, &our_attrs(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(own.attrs, std::sync::Arc::new(our_attrs()));
        let annotations = &server.node("ours").unwrap()["metadata"]["annotations"];
        assert_eq!(annotations["flannel.alpha.coreos.com/backend-data"], r#"{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}"#);
        assert_eq!(annotations["flannel.alpha.coreos.com/public-ip"], "198.18.0.1");
        assert_eq!(annotations["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        let listing = store.list_leases().await.unwrap();
        let mut leases = listing.leases.clone();
        leases.sort_by_key(|l| l.key);
        let keys: Vec<String> = leases.iter().map(|l| l.key.to_string()).collect();
        assert_eq!(keys, ["10.244.1.0-24", "10.244.2.0-24"]);
        assert_eq!(leases[0].mod_revision, own.mod_revision, "our lease as we wrote it");
        assert_eq!(leases[1].attrs.backend_data(Family::V4).unwrap()["VtepMAC"], "c6:d2:32:6f:8f:44");
        // Publishing again changes nothing, and a subnet that is not ours cannot be claimed.
        let again = store.renew_lease(&own, &our_attrs(), Duration::from_secs(1)).await.unwrap();
        assert_eq!(again, own);
        let theirs: SubnetKey = "10.244.2.0-24".parse().unwrap();
        let err = store.create_lease(&theirs, &our_attrs(), Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("is not node ours's pod CIDR"), "{err}");
        store.clear_network_unavailable().await.unwrap();
        let conditions = server.node("ours").unwrap()["status"]["conditions"].clone();
        let unavailable = conditions.as_array().unwrap().iter().find(|c| c["type"] == "NetworkUnavailable").cloned();
        assert_eq!(unavailable.unwrap()["status"], "False");
    }

    #[tokio::test]
    async fn a_node_without_a_pod_cidr_waits_for_one() {
        let server = TestApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        server.put_node(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "new"}, "spec": {}})).unwrap();
        let store = store_for(&server, "new").await;
        let err = store.assigned_subnet().await.unwrap_err();
        assert!(err.to_string().contains("node new has no pod CIDR yet"), "{err}");
        server.put_node(node("elsewhere", "10.99.1.0/24", json!({}))).unwrap();
        let err = store_for(&server, "elsewhere").await.assigned_subnet().await.unwrap_err();
        assert!(err.to_string().contains("10.99.1.0/24 is not inside the network config's 10.244.0.0/16"), "{err}");
        let err = store_for(&server, "missing").await.assigned_subnet().await.unwrap_err();
        assert!(err.to_string().contains("node missing does not exist"), "{err}");
    }

    async fn next(feed: &mut crate::store::LeaseFeed<KubeStore>) -> Result<WatchEvent, StoreError> {
        tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("an event in time")
    }

    #[tokio::test]
    async fn the_watch_reports_lease_changes_only_and_resyncs_after_410_and_outages() {
        let server = TestApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        server.put_node(node("a", "10.244.1.0/24", flannel_annotations("198.18.0.1"))).unwrap();
        let store = store_for(&server, "a").await;
        let listing = store.list_leases().await.unwrap();
        let mut feed = store.watch(listing.revision);

        // A kubelet status update changes nothing the overlay uses: no event. A new flannel node does.
        let mut status_only = node("a", "10.244.1.0/24", flannel_annotations("198.18.0.1"));
        status_only["status"]["conditions"][0]["status"] = json!("False");
        server.put_node(status_only).unwrap();
        server.put_node(node("b", "10.244.2.0/24", flannel_annotations("198.18.0.2"))).unwrap();
        match next(&mut feed).await.unwrap() {
            WatchEvent::Changes { changes, .. } => {
                let puts: Vec<String> = changes
                    .iter()
                    .filter_map(|c| match c {
                        Change::Put(l) => Some(l.key.to_string()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(puts, ["10.244.2.0-24"]);
            }
            other => panic!("{other:?}"),
        }
        // Bad annotations: the subnet stays taken, the reason names the annotation.
        server.put_node(node("b", "10.244.2.0/24", flannel_annotations("not-an-ip"))).unwrap();
        match next(&mut feed).await.unwrap() {
            WatchEvent::Changes { changes, .. } => {
                let problem = changes.iter().find_map(|c| match c {
                    Change::Problem(p) => Some(p.to_string()),
                    _ => None,
                });
                let problem = problem.expect("a problem");
                assert!(problem.contains("flannel.alpha.coreos.com/public-ip \"not-an-ip\""), "{problem}");
            }
            other => panic!("{other:?}"),
        }
        // A deleted Node's lease goes away.
        server.delete_node("b");
        match next(&mut feed).await.unwrap() {
            WatchEvent::Changes { changes, .. } => {
                assert!(matches!(changes.as_slice(), [Change::Delete(k)] if k.to_string() == "10.244.2.0-24"))
            }
            other => panic!("{other:?}"),
        }
        // The server ends the watch (its timeout): resumed from where it was, no relist.
        server.drop_watches();
        server.put_node(node("c", "10.244.3.0/24", flannel_annotations("198.18.0.3"))).unwrap();
        assert!(matches!(next(&mut feed).await.unwrap(), WatchEvent::Changes { .. }));
        // An outage: an error, then a fresh listing once the server is back.
        server.set_outage(true).await;
        assert!(next(&mut feed).await.is_err());
        server.set_outage(false).await;
        match next(&mut feed).await.unwrap() {
            WatchEvent::Resync { listing, cause } => {
                assert_eq!(cause, ResyncCause::Reconnected);
                assert_eq!(listing.leases.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // The watch broke, and the server forgot the writes made meanwhile: 410, then a fresh listing.
        server.drop_watches();
        server.put_node(node("d", "10.244.4.0/24", flannel_annotations("198.18.0.4"))).unwrap();
        server.expire_history();
        match next(&mut feed).await.unwrap() {
            WatchEvent::Resync { listing, cause } => {
                assert!(matches!(cause, ResyncCause::Compacted { .. }), "{cause:?}");
                assert_eq!(listing.leases.len(), 3);
            }
            other => panic!("{other:?}"),
        }
    }
}
