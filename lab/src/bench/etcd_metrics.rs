//! How many requests etcd served: its Prometheus counters, read from the lab's underlay namespace.
//!
//! etcd counts every gRPC message it receives per method (`grpc_server_msg_received_total`): one per unary call
//! (Range, Put, Txn, LeaseGrant) and one per message on a stream (each LeaseKeepAlive, each Watch create or
//! cancel). That is the load a fleet puts on the etcd every host shares.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{fail, Context, Result};
use super::netns::NsRuntime;

/// The counter of received gRPC messages, labelled by service and method.
const RECEIVED: &str = "grpc_server_msg_received_total";
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Received gRPC messages per method ("LeaseKeepAlive", "Watch", "Range", ...), summed over services.
pub type Requests = BTreeMap<String, f64>;

/// Reads etcd's `/metrics` on the loopback of the namespace `runtime` runs in.
pub struct EtcdMetrics {
    runtime: NsRuntime,
    address: String,
}

impl EtcdMetrics {
    /// For the etcd listening on `address` (host:port) inside the namespace `ns`.
    pub fn in_namespace(ns: &str, address: &str) -> Result<EtcdMetrics> {
        Ok(EtcdMetrics { runtime: NsRuntime::start(ns)?, address: address.to_string() })
    }

    /// The received-message counters now.
    pub async fn requests(&self) -> Result<Requests> {
        let address = self.address.clone();
        let body = self
            .runtime
            .run(async move { tokio::time::timeout(SCRAPE_TIMEOUT, get_metrics(address)).await })
            .await?
            .context(format!("reading etcd's metrics within {SCRAPE_TIMEOUT:?}"))??;
        let requests = received_by_method(&body);
        if requests.is_empty() {
            return fail(format!("etcd's /metrics has no {RECEIVED} counters"));
        }
        Ok(requests)
    }
}

/// One plain HTTP/1.0 GET of `/metrics` (etcd answers HTTP on its client port); returns the body.
async fn get_metrics(address: String) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(&address).await.context(format!("connecting to {address}"))?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("sending the metrics request")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.context("reading the metrics")?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return fail(format!("etcd's /metrics answered {:?}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// The `grpc_server_msg_received_total` counters of a Prometheus text exposition, summed per `grpc_method`.
pub fn received_by_method(exposition: &str) -> Requests {
    let mut out = Requests::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(RECEIVED).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let (Some(method), Ok(value)) = (label(labels, "grpc_method"), value.trim().parse::<f64>()) else {
            continue;
        };
        *out.entry(method.to_string()).or_default() += value;
    }
    out
}

/// The value of label `name` in `a="x",b="y"` (etcd's label values hold no quotes or commas).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"'))
}

/// Per-method growth from `before` to `after` (methods new in `after` count from zero).
pub fn growth(before: &Requests, after: &Requests) -> Requests {
    after.iter().map(|(method, &n)| (method.clone(), n - before.get(method).copied().unwrap_or(0.0))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP grpc_server_msg_received_total Total number of RPC stream messages received on the server.
# TYPE grpc_server_msg_received_total counter
grpc_server_msg_received_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"} 42
grpc_server_msg_received_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 7
grpc_server_msg_received_total{grpc_method="Range",grpc_service="other.KV",grpc_type="unary"} 1
grpc_server_msg_received_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 3.5e+01
grpc_server_msg_sent_total{grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 99
grpc_server_msg_received_total_bogus{grpc_method="Put"} 5
grpc_server_msg_received_total{grpc_service="etcdserverpb.KV"} 5
"#;

    #[test]
    fn counts_received_messages_per_method() {
        let requests = received_by_method(SAMPLE);
        let expected: Requests =
            [("LeaseKeepAlive", 42.0), ("Range", 8.0), ("Watch", 35.0)].map(|(m, n)| (m.to_string(), n)).into();
        assert_eq!(requests, expected);
    }

    #[test]
    fn growth_is_per_method_and_counts_new_methods_from_zero() {
        let before: Requests = [("Range".to_string(), 8.0)].into();
        let after: Requests = [("Range".to_string(), 10.0), ("Put".to_string(), 3.0)].into();
        let expected: Requests = [("Range".to_string(), 2.0), ("Put".to_string(), 3.0)].into();
        assert_eq!(growth(&before, &after), expected);
    }

    #[test]
    fn labels_are_read_by_name() {
        assert_eq!(label(r#"a="x",grpc_method="Txn""#, "grpc_method"), Some("Txn"));
        assert_eq!(label(r#"grpc_methods="no""#, "grpc_method"), None);
    }
}
