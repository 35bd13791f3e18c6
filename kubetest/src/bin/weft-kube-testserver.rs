//! Runs the test Kubernetes API server until interrupted: for trying kubectl or weftd against it by hand, and for
//! the lab, which starts it inside a lab namespace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft_kube_testserver::{ExpiredWatch, TestApiServer};

#[derive(Parser)]
#[command(about = "A Kubernetes API server for tests (Nodes, watches, patches, a generic store); plain HTTP")]
struct Args {
    /// Address to listen on (port 0 picks one; the chosen URL is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Writes kept for watches to resume from; a watch from an older resourceVersion gets 410 Expired.
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Seconds between watch bookmarks (for watches that allow them).
    #[arg(long, default_value_t = 5)]
    bookmark_interval: u64,
    /// Refuse an expired watch with HTTP 410 instead of kube-apiserver's 200 + ERROR event.
    #[arg(long)]
    expired_watch_http_410: bool,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// JSON files of objects (one object or a `List` per file) to create at start, e.g. Nodes.
    #[arg(long = "load")]
    load: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mode = if args.expired_watch_http_410 { ExpiredWatch::HttpGone } else { ExpiredWatch::ErrorEvent };
    let server = TestApiServer::new()
        .history_limit(args.history)
        .bookmark_interval(Duration::from_secs(args.bookmark_interval.max(1)))
        .expired_watch(mode)
        .serve(args.listen)
        .await?;
    for path in &args.load {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let objects = match value.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.clone(),
            None => vec![value],
        };
        for object in objects {
            server.put_object(object).map_err(|e| format!("loading {}: {e}", path.display()))?;
        }
    }
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path)?;
    }
    println!("{}", server.url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
