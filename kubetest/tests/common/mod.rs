//! Shared by the test API server's tests: a raw HTTP/1.1 client (so the wire format itself is checked, chunked
//! watch streams included) and a runner for the real `kubectl`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_kube_testserver::RunningServer;

/// A Node as a kubelet and the node controller leave it: podCIDRs, addresses, a Ready condition.
pub fn node(name: &str, cidr: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"},
            ],
            "addresses": [{"type": "InternalIP", "address": "198.18.0.10"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.31.0"},
        },
    })
}

/// Response headers: lowercased names and their values, in order.
pub type Headers = Vec<(String, String)>;

/// One answered request: the status code, the headers (lowercased names) and the body (decoded if chunked).
pub struct HttpResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn request_bytes(method: &str, path: &str, content_type: Option<&str>, body: Option<&[u8]>) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: test\r\nAccept: application/json\r\nConnection: close\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    let body = body.unwrap_or(b"");
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn split_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, end + 4))
}

/// Moves every complete chunk of a chunked body from `raw` to `out`; true once the last (empty) chunk is seen.
fn dechunk(raw: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else { return false };
        let size_text = String::from_utf8_lossy(&raw[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
        if size == 0 {
            return true;
        }
        if raw.len() < line_end + 2 + size + 2 {
            return false;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw.drain(..line_end + 2 + size + 2);
    }
}

/// Sends one request on a fresh connection and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&Value>,
) -> HttpResponse {
    let body_bytes = body.map(|b| b.to_string().into_bytes());
    let mut stream = TcpStream::connect(addr).await.expect("connect to the test API server");
    stream.write_all(&request_bytes(method, path, content_type, body_bytes.as_deref())).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the answer arrives within 10 s")
        .expect("read the answer");
    let (status, headers, start) = split_head(&raw).expect("a complete HTTP head");
    let mut rest = raw[start..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        dechunk(&mut rest, &mut out);
        out
    } else {
        rest
    };
    HttpResponse { status, headers, body }
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, None, None).await
}

/// An open watch: its chunked body read event by event.
pub struct WatchStream {
    pub status: u16,
    stream: TcpStream,
    raw: Vec<u8>,
    data: Vec<u8>,
    ended: bool,
}

/// How a watch stream stopped delivering.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// The server ended the chunked body properly (timeout, dropped watches).
    Clean,
    /// The connection closed in the middle of the body (an outage).
    Cut,
    /// Nothing arrived within the wait.
    Quiet,
}

impl WatchStream {
    pub async fn open(addr: SocketAddr, path: &str) -> WatchStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the test API server");
        stream.write_all(&request_bytes("GET", path, None, None)).await.unwrap();
        let mut raw = Vec::new();
        let (status, start) = loop {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("the watch answers within 10 s")
                .expect("read the watch head");
            assert!(n > 0, "the connection closed before the watch's head");
            raw.extend_from_slice(&buf[..n]);
            if let Some((status, _, start)) = split_head(&raw) {
                break (status, start);
            }
        };
        raw.drain(..start);
        WatchStream { status, stream, raw, data: Vec::new(), ended: false }
    }

    /// The next event, or how the stream stopped if none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Value, WatchEnd> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.ended |= dechunk(&mut self.raw, &mut self.data);
            if let Some(newline) = self.data.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.data.drain(..=newline).collect();
                return Ok(serde_json::from_slice(&line)
                    .unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {}", String::from_utf8_lossy(&line))));
            }
            if self.ended {
                return Err(WatchEnd::Clean);
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return Err(WatchEnd::Quiet),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(WatchEnd::Cut),
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self, wait: Duration) -> Result<Value, WatchEnd> {
        loop {
            let event = self.next(wait).await?;
            if event["type"] != "BOOKMARK" {
                return Ok(event);
            }
        }
    }
}

/// The real kubectl (`$WEFT_KUBECTL`, else `kubectl` on PATH: Debian's package kubernetes-client) pointed at
/// one test server through its own kubeconfig and discovery cache.
pub struct Kubectl {
    bin: String,
    dir: PathBuf,
}

pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub async fn new(server: &RunningServer, test: &str) -> Kubectl {
        let bin = std::env::var("WEFT_KUBECTL").unwrap_or_else(|_| "kubectl".to_string());
        let dir = std::env::temp_dir().join(format!("weft-kubetest-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the kubectl test directory");
        server.write_kubeconfig(&dir.join("kubeconfig")).expect("write the kubeconfig");
        let kubectl = Kubectl { bin, dir };
        let version = kubectl.run(&["version", "--client"]).await;
        assert!(
            version.success,
            "kubectl ({}) does not run: {}; install Debian's kubernetes-client (scripts/deps)",
            kubectl.bin, version.stderr
        );
        kubectl
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    pub async fn run(&self, args: &[&str]) -> KubectlOutput {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within 60 s"))
            .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", self.bin));
        KubectlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs kubectl and insists it succeeds; returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(out.success, "kubectl {args:?} failed:\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
        out.stdout
    }

    /// Starts a long-running kubectl (a watch) with stdout piped; killed on drop.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kubectl")
    }

    /// Whether `kubectl <subcommand> --help` mentions `flag` (features differ between kubectl releases).
    pub async fn supports(&self, subcommand: &str, flag: &str) -> bool {
        self.run(&[subcommand, "--help"]).await.stdout.contains(flag)
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
