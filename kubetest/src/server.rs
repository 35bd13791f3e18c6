//! The listener, connections and fault injection, and the test-side API ([`RunningServer`]).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_netlink::netns::in_netns;

use crate::api;
use crate::resources::{self, ResourceType};
use crate::status::ApiError;
use crate::store::Store;

/// How a watch from an expired resourceVersion is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredWatch {
    /// As kube-apiserver does: HTTP 200 and a single `ERROR` event whose object is a 410 `Status`.
    ErrorEvent,
    /// HTTP 410 with the `Status` as the body (what a proxy or an older server may do).
    HttpGone,
}

/// Tunables of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How many writes (of all types together) are kept for watches to resume from; older revisions get 410.
    pub history_limit: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    pub expired_watch: ExpiredWatch,
    /// How long a watch without `timeoutSeconds` lasts (the real server picks 30 to 60 minutes).
    pub default_watch_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(5),
            expired_watch: ExpiredWatch::ErrorEvent,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// A failure of the test-side API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the test API server to {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the test API server does not serve {api_version} {kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("the object was rejected: {0}")]
    Rejected(#[from] ApiError),
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: io::Error },
}

/// One request the server answered, for tests that check what a client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    pub status: u16,
}

/// State the connections share.
pub struct Shared {
    store: Store,
    config: ServerConfig,
    address: SocketAddr,
    unavailable: AtomicBool,
    requests: Mutex<Vec<RequestRecord>>,
}

impl Shared {
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(crate) fn unavailable(&self) -> bool {
        self.unavailable.load(Ordering::SeqCst)
    }
}

/// A server to start: [`TestApiServer::start`] with defaults, or the builder methods then [`TestApiServer::serve`].
#[derive(Debug, Clone, Default)]
pub struct TestApiServer {
    config: ServerConfig,
}

impl TestApiServer {
    pub fn new() -> TestApiServer {
        TestApiServer::default()
    }

    pub fn with_config(config: ServerConfig) -> TestApiServer {
        TestApiServer { config }
    }

    /// Starts a server with the default configuration on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr) -> Result<RunningServer, Error> {
        TestApiServer::new().serve(addr).await
    }

    pub fn history_limit(mut self, writes: usize) -> TestApiServer {
        self.config.history_limit = writes;
        self
    }

    pub fn bookmark_interval(mut self, interval: Duration) -> TestApiServer {
        self.config.bookmark_interval = interval;
        self
    }

    pub fn expired_watch(mut self, mode: ExpiredWatch) -> TestApiServer {
        self.config.expired_watch = mode;
        self
    }

    pub fn default_watch_timeout(mut self, timeout: Duration) -> TestApiServer {
        self.config.default_watch_timeout = timeout;
        self
    }

    /// Binds `addr` and serves until the [`RunningServer`] is shut down or dropped. Must run inside a tokio runtime.
    pub async fn serve(self, addr: SocketAddr) -> Result<RunningServer, Error> {
        let home = HomeNetns::of_this_thread();
        let listener = bind_here(addr).map_err(|source| Error::Bind { addr, source })?;
        let address = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            store: Store::new(self.config.history_limit),
            config: self.config,
            address,
            unavailable: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
        });
        let (control, control_rx) = watch::channel(false);
        let (listening_tx, listening) = watch::channel(true);
        let accept_task = tokio::spawn(accept_loop(shared.clone(), home, listener, control_rx, listening_tx));
        Ok(RunningServer { shared, control, listening, accept_task })
    }
}

/// The network namespace a server was started in, so that it listens there again after an outage: the accept
/// loop runs on whatever tokio worker is free, and a worker may be in another namespace (the lab starts servers
/// from a thread inside a lab namespace; the workers stay in the root one).
struct HomeNetns {
    file: Option<Arc<File>>,
}

const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

fn netns_identity(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl HomeNetns {
    fn of_this_thread() -> HomeNetns {
        HomeNetns { file: File::open(THREAD_NETNS).ok().map(Arc::new) }
    }

    /// Binds `addr` in the home namespace: on this thread when it is already there (no privilege needed),
    /// else on a short-lived thread that enters it.
    async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = match &self.file {
            Some(home) if Some(home_identity(home)?) != netns_identity(THREAD_NETNS) => {
                let home = home.clone();
                tokio::task::spawn_blocking(move || in_netns(&home, || std::net::TcpListener::bind(addr)))
                    .await
                    .map_err(|_| io::Error::other("the bind thread panicked"))??
            }
            _ => std::net::TcpListener::bind(addr)?,
        };
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    }
}

fn home_identity(file: &File) -> io::Result<(u64, u64)> {
    file.metadata().map(|m| (m.dev(), m.ino()))
}

/// Binds on the calling thread (std's bind sets SO_REUSEADDR, so the port can be bound again after an outage
/// while cut connections sit in TIME_WAIT).
fn bind_here(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Accepts connections while not in an outage; in an outage the listener is closed, so connecting is refused.
async fn accept_loop(
    shared: Arc<Shared>,
    home: HomeNetns,
    listener: TcpListener,
    mut outage: watch::Receiver<bool>,
    listening: watch::Sender<bool>,
) {
    let mut listener = Some(listener);
    loop {
        if *outage.borrow_and_update() {
            listener = None;
            listening.send_replace(false);
            if outage.changed().await.is_err() {
                return;
            }
            continue;
        }
        let active = match &listener {
            Some(active) => active,
            None => match home.bind(shared.address).await {
                Ok(rebound) => {
                    listening.send_replace(true);
                    listener.insert(rebound)
                }
                Err(_) => {
                    // Someone else holds the port for a moment; try again shortly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = active.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(shared.clone(), stream, outage.clone()));
                }
            }
            changed = outage.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves one connection until it closes, an outage starts, or the server shuts down.
async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, mut outage: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or("").to_string();
            let response = api::handle(shared.clone(), request).await;
            let status = response.status().as_u16();
            shared.requests.lock().unwrap_or_else(|p| p.into_inner()).push(RequestRecord {
                method,
                path,
                query,
                status,
            });
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = outage.wait_for(|in_outage| *in_outage) => {}
    }
}

/// A serving test API server and the test-side API to it. Dropping it stops the server.
pub struct RunningServer {
    shared: Arc<Shared>,
    control: watch::Sender<bool>,
    listening: watch::Receiver<bool>,
    accept_task: JoinHandle<()>,
}

fn resource_of(object: &Value) -> Result<&'static ResourceType, Error> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    resources::by_kind(api_version, kind)
        .ok_or_else(|| Error::UnknownKind { api_version: api_version.to_string(), kind: kind.to_string() })
}

impl RunningServer {
    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.shared.address
    }

    /// `http://<addr>`: what `kubectl --server` and a kubeconfig's `server` take.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.address)
    }

    /// Writes a kubeconfig whose current context points at this server (no credentials: it checks none).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: weft-test\n  cluster:\n    server: {}\ncontexts:\n- name: \
             weft-test\n  context:\n    cluster: weft-test\n    user: weft-test\ncurrent-context: weft-test\nusers:\n- \
             name: weft-test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).map_err(|source| Error::Kubeconfig { path: path.display().to_string(), source })
    }

    /// Creates or replaces a Node (status included), as a kubelet and the node controller would. Returns the
    /// stored object with its new resourceVersion.
    pub fn put_node(&self, node: Value) -> Result<Value, Error> {
        Ok(self.shared.store.put(resources::nodes(), node)?)
    }

    /// The Node named `name`, if it exists.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.store.get(resources::nodes(), "", name).ok().map(|n| (*n).clone())
    }

    /// Every Node, by name.
    pub fn nodes(&self) -> Vec<Value> {
        self.shared.store.all(resources::nodes(), None).into_iter().map(|n| (*n).clone()).collect()
    }

    /// Deletes a Node; returns its last state, or None if there was none.
    pub fn delete_node(&self, name: &str) -> Option<Value> {
        self.shared.store.delete(resources::nodes(), "", name, None, false).ok().map(|n| (*n).clone())
    }

    /// Creates or replaces any served object (its `apiVersion` and `kind` pick the type; a namespaced object
    /// without a namespace goes to `default`).
    pub fn put_object(&self, object: Value) -> Result<Value, Error> {
        let resource = resource_of(&object)?;
        Ok(self.shared.store.put(resource, object)?)
    }

    /// An object by type, namespace (None for cluster-scoped types) and name.
    pub fn object(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let resource = resources::by_kind(api_version, kind)?;
        self.shared.store.get(resource, namespace.unwrap_or(""), name).ok().map(|o| (*o).clone())
    }

    /// Deletes an object by type, namespace and name; returns its last state.
    pub fn delete_object(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let resource = resources::by_kind(api_version, kind)?;
        self.shared.store.delete(resource, namespace.unwrap_or(""), name, None, false).ok().map(|o| (*o).clone())
    }

    /// The store's current revision (the resourceVersion of the latest write).
    pub fn resource_version(&self) -> u64 {
        self.shared.store.revision()
    }

    /// Starts or ends an outage. In an outage the listener is closed (connecting is refused) and every open
    /// connection, watches included, is cut without a goodbye, as when an API server dies. Returns once the
    /// listener is closed or listening again.
    pub async fn set_outage(&self, outage: bool) {
        self.control.send_replace(outage);
        let mut listening = self.listening.clone();
        let _ = listening.wait_for(|l| *l != outage).await;
    }

    /// While set, every request is answered 503 ServiceUnavailable (connections stay up; open watches continue).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Ends every open watch cleanly (the chunked stream ends), as the server does at a watch's timeout.
    pub fn drop_watches(&self) {
        self.shared.store.drop_watches();
    }

    /// How many watches are open now.
    pub fn watch_count(&self) -> usize {
        self.shared.store.watch_count()
    }

    /// Forgets all history: every watch and continue token from an older resourceVersion gets 410 Expired.
    pub fn expire_history(&self) {
        self.shared.store.expire_history();
    }

    /// Sets how many writes are kept for watches to resume from.
    pub fn set_history_limit(&self, writes: usize) {
        self.shared.store.set_history_limit(writes);
    }

    /// How many requests have been answered.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every answered request, oldest first (a watch is recorded when its stream starts).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops serving: the listener closes and every connection is cut.
    pub async fn shutdown(self) {
        self.control.send_replace(true);
        let mut listening = self.listening.clone();
        let _ = listening.wait_for(|l| !*l).await;
        self.accept_task.abort();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.control.send_replace(true);
        self.accept_task.abort();
    }
}
