//! Health, readiness and Prometheus metrics over plain HTTP (flannel's `--healthz-ip`/`--healthz-port`).
//!
//! `GET /healthz` answers 200 while the process runs; `GET /readyz` answers 200 once the subnet file is written
//! and the kernel programmed, 503 before; `GET /metrics` is Prometheus text; `GET /status` is JSON
//! ([`crate::status::DaemonStatus`]). A hand-rolled HTTP/1.1 responder:
//! four fixed GET routes do not justify an HTTP stack in the daemon.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Counters and gauges the daemon's tasks update; rendered on `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub etcd_connected: AtomicBool,
    pub peers: AtomicI64,
    /// Rejected peer leases by reason (short name), as of the last pass.
    pub skipped_peers: Mutex<std::collections::BTreeMap<&'static str, i64>>,
    pub reconcile_passes: AtomicU64,
    /// Of those, passes that re-derived and diffed only what changed (see controller.rs); the rest were full.
    pub incremental_passes: AtomicU64,
    pub reconcile_failures: AtomicU64,
    pub drift_repairs: AtomicU64,
    pub kernel_ops: AtomicU64,
    pub kernel_op_failures: AtomicU64,
    pub lease_acquisitions: AtomicU64,
    /// Times our lease value was changed by someone else and written back.
    pub own_lease_restores: AtomicU64,
    /// Times another weftd with our public IP was seen (see own_lease.rs).
    pub duplicate_public_ip: AtomicU64,
    /// Times the network config in etcd was found changed, invalid or deleted while weftd ran.
    pub config_changes: AtomicU64,
    /// Distinct bad records of the CNI plugin's ipMasq tables seen (see cni_masq_keeper.rs).
    pub cni_masq_bad_records: Arc<AtomicU64>,
    /// The subnet key we hold, as a label.
    pub subnet: Mutex<String>,
    pub last_reconcile_seconds: Mutex<f64>,
    /// What `/status` serves (`weftctl status`, `weftctl doctor`).
    pub status: crate::status::StatusBoard,
    /// The udp backend's data-plane counters, once its data plane runs.
    pub udp: std::sync::OnceLock<Arc<weft_backends::udp::counters::Counters>>,
    /// The wireguard backend's data path ("kernel" or "userspace"), once chosen.
    pub wireguard_path: std::sync::OnceLock<&'static str>,
}

impl Metrics {
    /// Replaces the rejected-lease counts with one per reason of `reasons`.
    pub fn set_skipped(&self, reasons: impl Iterator<Item = &'static str>) {
        let mut counts = std::collections::BTreeMap::new();
        for name in reasons {
            *counts.entry(name).or_insert(0) += 1;
        }
        *lock(&self.skipped_peers) = counts;
    }

    /// `/status`: the status board with the live readiness and etcd flags.
    pub fn status_json(&self) -> String {
        let status =
            self.status.snapshot(self.ready.load(Ordering::Relaxed), self.etcd_connected.load(Ordering::Relaxed));
        serde_json::to_string(&status).unwrap_or_default() + "\n"
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let flag = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed)).to_string();
        let gauges = [
            ("weft_ready", "1 once the subnet file is written and the kernel programmed.", flag(&self.ready)),
            ("weft_etcd_connected", "1 while the etcd watch is established.", flag(&self.etcd_connected)),
            (
                "weft_peers",
                "Other hosts' leases in the current lease set.",
                self.peers.load(Ordering::Relaxed).to_string(),
            ),
            (
                "weft_last_reconcile_duration_seconds",
                "Duration of the last reconcile pass.",
                lock(&self.last_reconcile_seconds).to_string(),
            ),
        ];
        for (name, help, value) in gauges {
            sample(&mut out, name, "gauge", help, "", &value);
        }
        let _ = writeln!(
            out,
            "# HELP weft_peers_skipped Peer leases not programmed, by reason (see docs/reliability.md).\n\
             # TYPE weft_peers_skipped gauge"
        );
        let skipped = lock(&self.skipped_peers);
        for reason in weft_backends::trust::RejectReason::NAMES {
            let _ = writeln!(out, "weft_peers_skipped{{reason=\"{reason}\"}} {}", skipped.get(reason).unwrap_or(&0));
        }
        drop(skipped);
        let counters = [
            ("weft_reconcile_passes_total", "Reconcile passes run.", &self.reconcile_passes),
            ("weft_reconcile_failures_total", "Passes that could not observe the kernel.", &self.reconcile_failures),
            ("weft_drift_repairs_total", "Passes that repaired state changed behind weft's back.", &self.drift_repairs),
            ("weft_kernel_operations_total", "Kernel operations applied.", &self.kernel_ops),
            ("weft_kernel_operation_failures_total", "Kernel operations that failed.", &self.kernel_op_failures),
            (
                "weft_lease_acquisitions_total",
                "Subnet leases acquired (1 at start, more after a lease was lost).",
                &self.lease_acquisitions,
            ),
            (
                "weft_own_lease_restores_total",
                "Times our lease's value was changed by someone else and written back.",
                &self.own_lease_restores,
            ),
            (
                "weft_duplicate_public_ip_total",
                "Times another weftd with our public IP was seen: keeping alive a lease we would take, or writing ours.",
                &self.duplicate_public_ip,
            ),
            (
                "weft_config_changes_total",
                "Times the network config in etcd was found changed, invalid or deleted while weftd ran.",
                &self.config_changes,
            ),
            (
                "weft_cni_masq_bad_records_total",
                "Records of the CNI plugin's ipMasq tables refused as invalid (each file and reason once).",
                &self.cni_masq_bad_records,
            ),
        ];
        for (name, help, value) in counters {
            sample(&mut out, name, "counter", help, "", &value.load(Ordering::Relaxed).to_string());
        }
        let incremental = self.incremental_passes.load(Ordering::Relaxed);
        let full = self.reconcile_passes.load(Ordering::Relaxed).saturating_sub(incremental);
        let _ = writeln!(
            out,
            "# HELP weft_passes_total Reconcile passes by kind: full (every peer, kernel dumps) or incremental (only \
             what changed).\n# TYPE weft_passes_total counter\nweft_passes_total{{kind=\"full\"}} {full}\n\
             weft_passes_total{{kind=\"incremental\"}} {incremental}"
        );
        let subnet = lock(&self.subnet).clone();
        sample(
            &mut out,
            "weft_lease_info",
            "gauge",
            "The subnet lease this host holds.",
            &format!("{{subnet=\"{subnet}\"}}"),
            "1",
        );
        if let Some(path) = self.wireguard_path.get() {
            let help = "The wireguard backend's data path (docs/backends.md, WEFT_WIREGUARD_PATH).";
            sample(&mut out, "weft_wireguard_path_info", "gauge", help, &format!("{{path=\"{path}\"}}"), "1");
        }
        if let Some(udp) = self.udp.get() {
            out.push_str(&udp.render());
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One metric in Prometheus text format: HELP, TYPE and a single sample.
fn sample(out: &mut String, name: &str, kind: &str, help: &str, labels: &str, value: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}");
}

/// Serves on a bound listener until shutdown.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        if let Err(e) = respond(stream, &metrics).await {
                            debug!(%peer, error = %e, "health/metrics request failed");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "accepting a health/metrics connection failed"),
            },
        }
    }
}

async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await.unwrap_or(Ok(0))?;
    let request = String::from_utf8_lossy(&buf[..n]);
    let (status, content_type, body) = route(request.lines().next().unwrap_or_default(), metrics);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The response for a request line such as `GET /readyz HTTP/1.1`.
pub fn route(request_line: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split('?').next().unwrap_or_default();
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/healthz") => ("200 OK", TEXT, "ok\n".into()),
        ("GET", "/readyz") if metrics.ready.load(Ordering::Relaxed) => ("200 OK", TEXT, "ready\n".into()),
        ("GET", "/readyz") => ("503 Service Unavailable", TEXT, "not ready: no subnet lease programmed yet\n".into()),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
        ("GET", "/status") => ("200 OK", "application/json", metrics.status_json()),
        ("GET", _) => ("404 Not Found", TEXT, "try /healthz, /readyz, /metrics or /status\n".into()),
        _ => ("405 Method Not Allowed", TEXT, "only GET\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(route("GET /healthz HTTP/1.1", &m).0, "200 OK");
        assert_eq!(route("GET /readyz HTTP/1.1", &m).0, "503 Service Unavailable");
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("GET /readyz?verbose HTTP/1.1", &m).0, "200 OK");
        assert_eq!(route("GET /nope HTTP/1.1", &m).0, "404 Not Found");
        let (status, content_type, body) = route("GET /status HTTP/1.1", &m);
        assert_eq!((status, content_type), ("200 OK", "application/json"));
        let parsed: crate::status::DaemonStatus = serde_json::from_str(&body).unwrap();
        assert!(parsed.ready && !parsed.version.is_empty());
        assert_eq!(route("POST /healthz HTTP/1.1", &m).0, "405 Method Not Allowed");
        assert_eq!(route("", &m).0, "405 Method Not Allowed");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = Metrics::default();
        m.peers.store(3, Ordering::Relaxed);
        m.kernel_ops.store(9, Ordering::Relaxed);
        *m.subnet.lock().unwrap() = "10.244.3.0-24".into();
        let text = m.render();
        assert!(text.contains("# TYPE weft_peers gauge\nweft_peers 3\n"), "{text}");
        assert!(text.contains("weft_kernel_operations_total 9\n"), "{text}");
        assert!(text.contains("weft_lease_info{subnet=\"10.244.3.0-24\"} 1\n"), "{text}");
        assert!(!text.contains("weft_wireguard_path_info"), "only for the wireguard backend: {text}");
        m.wireguard_path.set("userspace").unwrap();
        assert!(m.render().contains("weft_wireguard_path_info{path=\"userspace\"} 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "sample without a number: {line:?}");
        }
    }
}
