//! A Kubernetes API server for tests, speaking the real HTTP protocol for what weft uses, so that weft's
//! `--kube-subnet-mgr` client (kube-rs) and Debian's `kubectl` can be run against it on machines where no real API
//! server can be installed.
//!
//! What it serves (plain HTTP; no authentication or authorization):
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>[/<version>]` for the types below;
//! - Nodes: get, list (`labelSelector`, `fieldSelector`, `limit`/`continue`, `resourceVersion`), watch (chunked
//!   JSON events, bookmarks, `sendInitialEvents`, 410 Expired for a revision older than the kept history), create,
//!   update (409 on a stale `metadata.resourceVersion`), merge / strategic-merge / JSON patch, delete, and the
//!   `status` subresource;
//! - the same verbs on Namespaces, ServiceAccounts, ConfigMaps, Secrets, DaemonSets, ClusterRoles,
//!   ClusterRoleBindings, Roles and RoleBindings, with `dryRun=All`, so `kubectl apply --dry-run=server` of a
//!   DaemonSet deployment works;
//! - `Table` responses for `kubectl get`.
//!
//! Every write takes the next value of one revision counter (etcd's model), which is the written object's
//! `metadata.resourceVersion`. See kubetest/README.md for what is not implemented.
//!
//! The test-side API:
//! ```no_run
//! # async fn example() -> Result<(), weft_kube_testserver::Error> {
//! use weft_kube_testserver::TestApiServer;
//! let server = TestApiServer::start("127.0.0.1:0".parse().unwrap()).await?;
//! server.put_node(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Node",
//!     "metadata": {"name": "node-1"},
//!     "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
//! }))?;
//! let client_url = server.url(); // http://127.0.0.1:<port>
//! # let _ = client_url;
//! server.set_outage(true).await; // connections refused, open watches cut
//! server.set_outage(false).await;
//! server.expire_history(); // the next watch from an old resourceVersion gets 410
//! let annotated = server.node("node-1");
//! # let _ = annotated;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//! Start it inside the network namespace the clients run in (the lab runs it in a lab namespace).

mod api;
mod clock;
mod discovery;
mod openapi;
pub mod patch;
pub mod resources;
pub mod selector;
mod server;
mod status;
mod store;
mod table;

pub use server::{Error, ExpiredWatch, RequestRecord, RunningServer, ServerConfig, TestApiServer};
pub use status::ApiError;
