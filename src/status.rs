//! weftd's view of its host, as `GET /status` serves it (JSON) and `weftctl status` and `weftctl doctor` read it.
//!
//! The daemon's tasks record into a [`StatusBoard`] as they go: the startup fills in the host (backend, devices,
//! underlay, firewall), every reconcile pass records our lease, the peers it programmed and rejected with the
//! reason, and how the pass went. The board is only written by those tasks and only read by the HTTP endpoint,
//! so a lock per write is cheap next to the pass itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use weft_backends::Family;

use crate::lease::{Lease, SubnetKey};
use crate::trust::Rejected;

/// Everything `/status` answers. Every field has a default, so an older or newer weftd's answer still parses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DaemonStatus {
    /// weftd's version (the package version).
    pub version: String,
    /// The subnet file is written and the kernel programmed (`/readyz` answers 200).
    pub ready: bool,
    pub store: StoreStatus,
    /// Where weftd writes the subnet file.
    pub subnet_file: String,
    /// The lease this host holds; None until one is acquired.
    pub lease: Option<LeaseStatus>,
    /// The backend and its devices; None until the network config is read and the backend prepared.
    pub backend: Option<BackendStatus>,
    /// Which host rules weftd keeps and through which firewall program.
    pub rules: Option<RulesStatus>,
    pub peers: PeersStatus,
    /// The latest reconcile pass; None before the first.
    pub last_reconcile: Option<ReconcileStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreStatus {
    pub endpoints: String,
    /// The lease watch is established (weft_etcd_connected).
    pub connected: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseStatus {
    /// The key below the subnets prefix, e.g. `10.244.3.0-24`.
    pub key: String,
    /// The leased subnets as CIDRs, IPv4 first.
    pub subnets: Vec<String>,
    pub public_ip: Option<String>,
    pub public_ipv6: Option<String>,
    pub backend_type: String,
    pub backend_data: Option<Value>,
    pub backend_v6_data: Option<Value>,
    /// The etcd lease id (0: a reservation, which has no TTL).
    pub etcd_lease: i64,
    pub reservation: bool,
}

impl LeaseStatus {
    pub fn of(lease: &Lease) -> LeaseStatus {
        LeaseStatus {
            key: lease.key.to_string(),
            subnets: lease.key.subnets().map(|s| s.to_string()).collect(),
            public_ip: lease.attrs.public_ip.map(|ip| ip.to_string()),
            public_ipv6: lease.attrs.public_ipv6.map(|ip| ip.to_string()),
            backend_type: lease.attrs.backend_type.to_string(),
            backend_data: lease.attrs.backend_data(Family::V4),
            backend_v6_data: lease.attrs.backend_data(Family::V6),
            etcd_lease: lease.etcd_lease,
            reservation: lease.is_reservation(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendStatus {
    /// The lease's BackendType, e.g. `vxlan`.
    pub kind: String,
    /// The MTU containers get (FLANNEL_MTU).
    pub mtu: u32,
    pub underlay: UnderlayStatus,
    /// The devices the backend owns (none for host-gw).
    pub devices: Vec<DeviceStatus>,
}

impl BackendStatus {
    /// The backend `kind` with container MTU `mtu` over `underlay`, owning the devices among `links` it owns.
    pub fn of<'a>(
        kind: &str,
        mtu: u32,
        underlay: &weft_backends::Underlay,
        links: impl IntoIterator<Item = &'a weft_backends::model::Link>,
    ) -> BackendStatus {
        BackendStatus {
            kind: kind.to_string(),
            mtu,
            underlay: UnderlayStatus {
                name: underlay.name.clone(),
                mtu: underlay.mtu,
                addresses: underlay.addresses.iter().map(|a| a.to_string()).collect(),
            },
            devices: links
                .into_iter()
                .filter(|l| l.is_owned())
                .map(|l| DeviceStatus { name: l.name.clone(), mac: l.mac.to_string(), mtu: l.mtu })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnderlayStatus {
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceStatus {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RulesStatus {
    /// `nftables`, or `iptables` with its variant, e.g. `iptables (Legacy)`.
    pub firewall: String,
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeersStatus {
    /// Other hosts' leases in the store (malformed ones included), as of the last pass.
    pub in_store: usize,
    pub programmed: Vec<PeerStatus>,
    pub rejected: Vec<RejectedStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub key: String,
    pub public_ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RejectedStatus {
    /// The lease's name below the subnets prefix.
    pub lease: String,
    /// The stable short name (the `reason` label of weft_peers_skipped).
    pub reason: String,
    /// The sentence the log says.
    pub detail: String,
}

impl RejectedStatus {
    pub fn of(r: &Rejected) -> RejectedStatus {
        RejectedStatus { lease: r.name.clone(), reason: r.reason.name().to_string(), detail: r.reason.to_string() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcileStatus {
    /// When the pass ended, in milliseconds since the Unix epoch.
    pub finished_unix_ms: u64,
    /// Why it ran: startup, leases_changed, own_lease_changed, kernel_event, resync, retry.
    pub trigger: String,
    pub duration_micros: u64,
    pub ops_applied: usize,
    pub ops_failed: usize,
    /// The first few failed operations with their causes and one line counting the rest by cause, and the error
    /// when the state could not be observed at all.
    pub failures: Vec<String>,
    /// Passes run since weftd started.
    pub passes: u64,
}

/// The status the daemon's tasks fill in; one per weftd.
#[derive(Debug, Default)]
pub struct StatusBoard {
    status: Mutex<DaemonStatus>,
    /// The programmed peers and their public IPs, kept apart and rendered only when the status is read: a lease
    /// event changes one entry, and rendering 10,000 on every event would cost more than the event itself.
    programmed: Mutex<BTreeMap<SubnetKey, Option<IpAddr>>>,
}

/// How the programmed peers changed in a pass: added or changed, and removed.
#[derive(Debug, Default)]
pub struct PeerChanges<'a> {
    pub put: Vec<&'a Lease>,
    pub removed: Vec<SubnetKey>,
}

impl PeerChanges<'_> {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.removed.is_empty()
    }

    /// Whether these changes rewrote most of a map of peers now `len` long (a startup, a full pass after a
    /// burst): worth re-packing it (see [`weft_backends::dense`]).
    pub fn is_large(&self, len: usize) -> bool {
        self.put.len() + self.removed.len() > (len / 2).max(64)
    }
}

impl StatusBoard {
    /// Changes the recorded status.
    pub fn update(&self, change: impl FnOnce(&mut DaemonStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy with the live flags filled in.
    pub fn snapshot(&self, ready: bool, store_connected: bool) -> DaemonStatus {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        status.version = env!("CARGO_PKG_VERSION").to_string();
        status.ready = ready;
        status.store.connected = store_connected;
        let programmed = self.programmed.lock().unwrap_or_else(|e| e.into_inner());
        status.peers.programmed = programmed
            .iter()
            .map(|(key, ip)| PeerStatus { key: key.to_string(), public_ip: ip.map(|ip| ip.to_string()) })
            .collect();
        status
    }

    /// Records what a pass judged: our lease, how the peers it programs changed, and the leases it rejects
    /// (None: the same as before).
    pub fn record_peers(&self, own: &Lease, in_store: usize, changes: &PeerChanges, rejected: Option<&[Rejected]>) {
        if !changes.is_empty() {
            let mut programmed = self.programmed.lock().unwrap_or_else(|e| e.into_inner());
            for key in &changes.removed {
                programmed.remove(key);
            }
            for lease in &changes.put {
                let ip = lease.attrs.public_ip(Family::V4).or(lease.attrs.public_ip(Family::V6));
                programmed.insert(lease.key, ip);
            }
            if changes.is_large(programmed.len()) {
                weft_backends::dense::repack_map(&mut programmed);
            }
        }
        self.update(|s| {
            s.lease = Some(LeaseStatus::of(own));
            s.peers.in_store = in_store;
            if let Some(rejected) = rejected {
                s.peers.rejected = rejected.iter().map(RejectedStatus::of).collect();
            }
        });
    }

    /// Records how a pass ended: the operations it applied, how many failed and what they say (a few lines however
    /// many failed, see [`crate::pass_failures`]), or why it could not run.
    pub fn record_pass(
        &self,
        trigger: &str,
        duration: Duration,
        ops_applied: usize,
        ops_failed: usize,
        failures: Vec<String>,
    ) {
        let finished = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.update(|s| {
            let passes = s.last_reconcile.as_ref().map_or(0, |r| r.passes) + 1;
            s.last_reconcile = Some(ReconcileStatus {
                finished_unix_ms: u64::try_from(finished.as_millis()).unwrap_or(u64::MAX),
                trigger: trigger.to_string(),
                duration_micros: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
                ops_applied,
                ops_failed,
                failures,
                passes,
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use weft_backends::trust::RejectReason;

    fn lease(key: &str, ip: &str) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                ..Default::default()
            }),
            etcd_lease: 7,
            mod_revision: 1,
        }
    }

    #[test]
    fn the_board_records_peers_and_passes_and_serves_them_as_json() {
        let board = StatusBoard::default();
        let own = lease("10.244.1.0-24", "198.18.0.1");
        let peer = lease("10.244.2.0-24", "198.18.0.2");
        let rejected = Rejected {
            name: "10.244.9.0-24".into(),
            reason: RejectReason::WrongBackendType { theirs: "udp".into(), ours: "vxlan".into() },
        };
        let changes = PeerChanges { put: vec![&peer], removed: Vec::new() };
        board.record_peers(&own, 2, &changes, Some(&[rejected]));
        board.record_pass("resync", Duration::from_millis(250), 3, 1, vec!["replace route: boom".into()]);
        board.record_pass("retry", Duration::from_millis(500), 0, 0, Vec::new());
        let status = board.snapshot(true, false);
        assert!(status.ready && !status.store.connected);
        assert_eq!(status.lease.as_ref().unwrap().subnets, ["10.244.1.0/24"]);
        assert_eq!(status.peers.programmed[0].public_ip.as_deref(), Some("198.18.0.2"));
        assert_eq!(status.peers.rejected[0].reason, "wrong_backend_type");
        assert_eq!(status.peers.rejected[0].detail, "BackendType is \"udp\", not \"vxlan\"");
        let last = status.last_reconcile.clone().unwrap();
        assert_eq!((last.trigger.as_str(), last.ops_applied, last.ops_failed, last.passes), ("retry", 0, 0, 2));

        let json = serde_json::to_string(&status).unwrap();
        let back: DaemonStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        // Fields a weftd of another version does not know are defaulted, not refused.
        let sparse: DaemonStatus = serde_json::from_str(r#"{"ready":true,"future":1}"#).unwrap();
        assert!(sparse.ready && sparse.lease.is_none());
    }
}
