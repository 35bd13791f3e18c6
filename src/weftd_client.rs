//! Asking the local weftd for its status: `GET /status` on its health endpoint (`--healthz-ip:--healthz-port`).
//!
//! One request with `Connection: close`, read to the end: the same minimal HTTP/1.1 the daemon's responder speaks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::status::DaemonStatus;

/// Where weftctl looks for weftd unless told (`--healthz-port 8081` as docs/operations.md suggests).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:8081";
/// How long weftd gets to answer; it answers from memory, so a longer wait means it is stuck or stopped.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// /status answers are a few KiB per hundred peers; this bounds what a wrong endpoint can make us read.
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WeftdError {
    #[error("weftd endpoint {0:?} is not HOST:PORT (or http://HOST:PORT)")]
    BadEndpoint(String),
    #[error("nothing answers at {endpoint}: {source} (is weftd running with --healthz-port?)")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint} did not answer within {timeout:?} (weftd stopped or stuck?)")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("reading the answer of {endpoint}: {source}")]
    Read {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{endpoint} answered {status:?} to GET /status (a weftd older than weftctl, or not weftd)")]
    Status { endpoint: String, status: String },
    #[error("{endpoint} answered GET /status with something that is not weftd's status: {source}")]
    Parse {
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `host:port` from `host:port`, `http://host:port` or `http://host:port/`.
pub fn authority(endpoint: &str) -> Result<&str, WeftdError> {
    let bare = endpoint.strip_prefix("http://").unwrap_or(endpoint).trim_end_matches('/');
    let valid = bare.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid && !bare.contains('/') {
        Ok(bare)
    } else {
        Err(WeftdError::BadEndpoint(endpoint.to_string()))
    }
}

/// weftd's status from `endpoint`.
pub async fn fetch_status(endpoint: &str) -> Result<DaemonStatus, WeftdError> {
    let authority = authority(endpoint)?;
    let endpoint = authority.to_string();
    let exchange = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|source| WeftdError::Connect { endpoint: endpoint.clone(), source })?;
        let request = format!("GET /status HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        let read = |source| WeftdError::Read { endpoint: endpoint.clone(), source };
        stream.write_all(request.as_bytes()).await.map_err(read)?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await.map_err(read)?;
        Ok(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| WeftdError::Timeout { endpoint: endpoint.clone(), timeout: TIMEOUT })??;
    parse_answer(&endpoint, &answer)
}

/// The status in an HTTP answer: a 200 with a JSON body.
pub fn parse_answer(endpoint: &str, answer: &[u8]) -> Result<DaemonStatus, WeftdError> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(WeftdError::Status { endpoint: endpoint.to_string(), status: status_line.to_string() });
    }
    serde_json::from_str(body).map_err(|source| WeftdError::Parse { endpoint: endpoint.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_and_port() {
        assert_eq!(authority("127.0.0.1:8081").unwrap(), "127.0.0.1:8081");
        assert_eq!(authority("http://[::1]:8081/").unwrap(), "[::1]:8081");
        for bad in ["127.0.0.1", "http://x:80/status", ":80", "host:port"] {
            assert!(matches!(authority(bad), Err(WeftdError::BadEndpoint(_))), "{bad}");
        }
    }

    #[test]
    fn answers_are_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ready\":true}\n";
        assert!(parse_answer("e", ok).unwrap().ready);
        let missing = b"HTTP/1.1 404 Not Found\r\n\r\ntry /healthz\n";
        assert!(matches!(parse_answer("e", missing), Err(WeftdError::Status { .. })));
        let garbage = b"HTTP/1.1 200 OK\r\n\r\nnot json";
        assert!(matches!(parse_answer("e", garbage), Err(WeftdError::Parse { .. })));
    }

    #[tokio::test]
    async fn the_daemons_responder_and_this_client_agree() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let metrics = std::sync::Arc::new(crate::http::Metrics::default());
        metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        metrics.status.update(|s| s.subnet_file = "/run/flannel/subnet.env".into());
        let (_stop, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::http::serve(listener, metrics, stop));
        let status = fetch_status(&format!("http://{addr}")).await.unwrap();
        assert!(status.ready);
        assert_eq!(status.subnet_file, "/run/flannel/subnet.env");
    }
}
