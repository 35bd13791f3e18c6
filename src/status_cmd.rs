//! `weftctl status`: this host as weftd sees it (its `/status`), plus what the store says about our lease (its TTL
//! left) and the peers there. A table on a terminal, JSON with `--output json`.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::ctl::EtcdArgs;
use crate::status::DaemonStatus;
use crate::store::etcd::EtcdStore;
use crate::store::LeaseStore;
use crate::term::Style;
use crate::weftd_client;

/// How `weftctl status` and `weftctl doctor` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For a person (coloured on a terminal unless NO_COLOR is set)
    Table,
    /// One JSON document
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// weftd's health endpoint: its --healthz-ip and --healthz-port
    #[arg(long, env = "WEFTCTL_WEFTD", default_value = weftd_client::DEFAULT_ENDPOINT)]
    pub weftd: String,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// What `weftctl status` shows; also its JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub weftd_endpoint: String,
    /// weftd's own status; None when it did not answer (`weftd_error` says why).
    pub weftd: Option<DaemonStatus>,
    pub weftd_error: Option<String>,
    pub store: StoreView,
}

/// The store as weftctl reaches it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreView {
    pub endpoints: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Leases and reservations in the store (malformed ones included).
    pub leases: usize,
    /// Our lease's etcd TTL: granted and left, in seconds (None for a reservation or when unknown).
    pub lease_ttl_granted_seconds: Option<u64>,
    pub lease_ttl_left_seconds: Option<u64>,
}

/// Gathers the status: weftd first (it names our etcd lease), then the store.
pub async fn gather(args: &StatusArgs) -> HostStatus {
    let (weftd, weftd_error) = match weftd_client::fetch_status(&args.weftd).await {
        Ok(status) => (Some(status), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut store = StoreView { endpoints: args.etcd.etcd_endpoints.join(","), ..StoreView::default() };
    match crate::ctl::store(&args.etcd).await {
        Ok(etcd) => fill_store_view(&etcd, weftd.as_ref(), &mut store).await,
        Err(e) => store.error = Some(e.to_string()),
    }
    HostStatus { weftd_endpoint: args.weftd.clone(), weftd, weftd_error, store }
}

async fn fill_store_view(etcd: &EtcdStore, weftd: Option<&DaemonStatus>, view: &mut StoreView) {
    match etcd.list_leases().await {
        Ok(listing) => {
            view.reachable = true;
            view.leases = listing.leases.len() + listing.problems.len();
        }
        Err(e) => {
            view.error = Some(e.to_string());
            return;
        }
    }
    let Some(lease) = weftd.and_then(|s| s.lease.as_ref()).filter(|l| !l.reservation) else { return };
    match etcd.lease_time_to_live(lease.etcd_lease).await {
        Ok(Some(ttl)) => {
            view.lease_ttl_granted_seconds = Some(ttl.granted.as_secs());
            view.lease_ttl_left_seconds = Some(ttl.remaining.as_secs());
        }
        Ok(None) => view.error = Some(format!("our etcd lease {:x} no longer exists", lease.etcd_lease)),
        Err(e) => view.error = Some(e.to_string()),
    }
}

/// `weftctl status`: prints and fails when weftd did not answer or is not ready.
pub async fn run(args: &StatusArgs) -> Result<(), String> {
    let status = gather(args).await;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?),
        OutputFormat::Table => print!("{}", render(&status, &Style::stdout(), now_unix_ms())),
    }
    match &status.weftd {
        Some(s) if s.ready => Ok(()),
        Some(_) => Err("weftd is not ready".to_string()),
        None => Err(status.weftd_error.unwrap_or_default()),
    }
}

/// Milliseconds since the Unix epoch, as `/status` reports times.
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1h02m`, `3m05s`, `42s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The table: one section per line, peers and failures indented below.
pub fn render(status: &HostStatus, style: &Style, now_ms: u64) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("{:<10} {text}\n", style.bold(label)));
    let Some(d) = &status.weftd else {
        line("weftd", format!("{} at {}", style.bad("not answering"), status.weftd_endpoint));
        line("", status.weftd_error.clone().unwrap_or_default());
        line("store", store_line(&status.store, style));
        return out;
    };
    let ready = if d.ready { style.good("ready") } else { style.bad("not ready") };
    line("weftd", format!("{} at {}, version {}", ready, status.weftd_endpoint, d.version));
    match &d.lease {
        Some(l) => {
            let ttl = match (status.store.lease_ttl_left_seconds, status.store.lease_ttl_granted_seconds) {
                _ if l.reservation => "reservation (no TTL)".to_string(),
                (Some(left), Some(granted)) => {
                    format!("TTL left {} of {}", human_duration(left), human_duration(granted))
                }
                _ => "TTL unknown".to_string(),
            };
            let ips: Vec<&str> = [&l.public_ip, &l.public_ipv6].into_iter().flatten().map(String::as_str).collect();
            line(
                "lease",
                format!("{}  public IP {}  etcd lease {:x}  {ttl}", l.subnets.join(" "), ips.join(" "), l.etcd_lease),
            );
            for data in [&l.backend_data, &l.backend_v6_data].into_iter().flatten() {
                line("", format!("backend data {data}"));
            }
        }
        None => line("lease", style.warn("none yet")),
    }
    if let Some(b) = &d.backend {
        let u = &b.underlay;
        line(
            "backend",
            format!("{}  MTU {}  underlay {} (MTU {}, {})", b.kind, b.mtu, u.name, u.mtu, u.addresses.join(" ")),
        );
        for dev in &b.devices {
            line("", format!("device {}  mac {}  MTU {}", dev.name, dev.mac, dev.mtu));
        }
    }
    if let Some(r) = &d.rules {
        let on = |b: bool| if b { "on" } else { "off" };
        line("firewall", format!("{}: masquerade {}, forward accepts {}", r.firewall, on(r.masquerade), on(r.forward)));
    }
    line("store", store_line(&status.store, style));
    if !d.store.connected {
        line("", style.bad("weftd's etcd watch is down"));
    }
    let p = &d.peers;
    let rejected = if p.rejected.is_empty() {
        "0 rejected".to_string()
    } else {
        style.bad(&format!("{} rejected", p.rejected.len()))
    };
    line("peers", format!("{} in store, {} programmed, {rejected}", p.in_store, p.programmed.len()));
    for peer in &p.programmed {
        line(
            "",
            format!("{:<36} {:<16} {}", peer.key, peer.public_ip.as_deref().unwrap_or("-"), style.good("programmed")),
        );
    }
    for r in &p.rejected {
        line(
            "",
            format!("{:<36} {:<16} {}", r.lease, "", style.bad(&format!("rejected: {} ({})", r.reason, r.detail))),
        );
    }
    match &d.last_reconcile {
        Some(r) => {
            let ago = human_duration(now_ms.saturating_sub(r.finished_unix_ms) / 1000);
            let failed = if r.ops_failed == 0 && r.failures.is_empty() {
                "0 failed".to_string()
            } else {
                style.bad(&format!("{} failed", r.ops_failed.max(r.failures.len())))
            };
            line(
                "reconcile",
                format!(
                    "{ago} ago ({}), {:.1} ms, {} ops applied, {failed}; {} passes",
                    r.trigger,
                    r.duration_micros as f64 / 1000.0,
                    r.ops_applied,
                    r.passes
                ),
            );
            for f in &r.failures {
                line("", style.bad(f));
            }
        }
        None => line("reconcile", style.warn("no pass yet")),
    }
    out
}

fn store_line(store: &StoreView, style: &Style) -> String {
    match (&store.error, store.reachable) {
        (None, true) => format!("{} {}, {} leases", store.endpoints, style.good("reachable"), store.leases),
        (Some(e), true) => {
            format!("{} {}, {} leases; {}", store.endpoints, style.good("reachable"), store.leases, style.warn(e))
        }
        (e, false) => format!("{} {}: {}", store.endpoints, style.bad("unreachable"), e.clone().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{LeaseStatus, PeerStatus, PeersStatus, ReconcileStatus, RejectedStatus};

    #[test]
    fn the_table_shows_lease_peers_and_the_last_pass() {
        let status = HostStatus {
            weftd_endpoint: "127.0.0.1:8081".into(),
            weftd: Some(DaemonStatus {
                version: "0.1.0".into(),
                ready: true,
                lease: Some(LeaseStatus {
                    key: "10.244.1.0-24".into(),
                    subnets: vec!["10.244.1.0/24".into()],
                    public_ip: Some("198.18.0.1".into()),
                    etcd_lease: 255,
                    ..Default::default()
                }),
                peers: PeersStatus {
                    in_store: 2,
                    programmed: vec![PeerStatus { key: "10.244.2.0-24".into(), public_ip: Some("198.18.0.2".into()) }],
                    rejected: vec![RejectedStatus {
                        lease: "10.244.9.0-24".into(),
                        reason: "wrong_vni".into(),
                        detail: "BackendData.VNI is 2, ours is 1".into(),
                    }],
                },
                last_reconcile: Some(ReconcileStatus {
                    finished_unix_ms: 100_000,
                    trigger: "resync".into(),
                    duration_micros: 1500,
                    ops_applied: 2,
                    passes: 9,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            weftd_error: None,
            store: StoreView {
                endpoints: "http://198.18.0.254:2379".into(),
                reachable: true,
                leases: 3,
                lease_ttl_granted_seconds: Some(86400),
                lease_ttl_left_seconds: Some(86395),
                ..Default::default()
            },
        };
        let text = render(&status, &Style::plain(), 165_000);
        assert!(text.contains("weftd      ready at 127.0.0.1:8081, version 0.1.0"), "{text}");
        assert!(
            text.contains("10.244.1.0/24  public IP 198.18.0.1  etcd lease ff  TTL left 23h59m of 24h00m"),
            "{text}"
        );
        assert!(text.contains("2 in store, 1 programmed, 1 rejected"), "{text}");
        assert!(text.contains("rejected: wrong_vni (BackendData.VNI is 2, ours is 1)"), "{text}");
        assert!(text.contains("reconcile  1m05s ago (resync), 1.5 ms, 2 ops applied, 0 failed; 9 passes"), "{text}");
        assert!(!text.contains('\x1b'), "no colour in plain style");

        let down = HostStatus { weftd: None, weftd_error: Some("nothing answers".into()), ..status };
        assert!(render(&down, &Style::plain(), 0).contains("not answering at 127.0.0.1:8081"));
    }
}
