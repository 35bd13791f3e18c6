//! The reconcile loop: desired state from our lease and the peers, diffed against what the kernel has, applied.
//!
//! It wakes when the lease set or our own lease changes, when the kernel reports that something of ours was
//! deleted, on a periodic resync, and to retry failures with backoff. Every pass computes the whole desired state,
//! so there is no event ordering to get wrong, and a pass with nothing to do performs no operations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use weft_backends::kernel::{reconcile, ApplyReport, Kernel, KernelError};
use weft_backends::vxlan::VxlanBackend;

use crate::http::Metrics;
use crate::lease::{Lease, SubnetKey};
use crate::registry::{Backoff, LeaseSet};

fn public_ip(lease: &Lease) -> String {
    let ip = lease.attrs.public_ip.map(std::net::IpAddr::V4).or(lease.attrs.public_ipv6.map(std::net::IpAddr::V6));
    ip.map_or("-".to_string(), |ip| ip.to_string())
}

/// Why a pass runs; decides how its changes are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    LeasesChanged,
    OwnLeaseChanged,
    KernelEvent,
    Resync,
    Retry,
}

pub struct Controller<K: Kernel> {
    kernel: K,
    backend: VxlanBackend,
    /// Peers as of the last pass, to log additions and removals.
    known_peers: BTreeMap<SubnetKey, Lease>,
    /// Peers the backend refused, to warn once per distinct reason.
    known_skipped: BTreeSet<String>,
    metrics: Arc<Metrics>,
}

impl<K: Kernel> Controller<K> {
    pub fn new(kernel: K, backend: VxlanBackend, metrics: Arc<Metrics>) -> Self {
        Controller { kernel, backend, known_peers: BTreeMap::new(), known_skipped: BTreeSet::new(), metrics }
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// What the backend owns in the kernel.
    pub fn scope(&self) -> weft_backends::model::Scope {
        self.backend.scope()
    }

    /// One pass. Returns the report; errors observing the kernel are returned as is.
    pub async fn pass(&mut self, own: &Lease, set: &LeaseSet, trigger: Trigger) -> Result<ApplyReport, KernelError> {
        let peers: BTreeMap<SubnetKey, Lease> =
            set.leases.iter().filter(|(k, _)| **k != own.key).map(|(k, l)| (*k, l.clone())).collect();
        self.log_peer_changes(&peers);
        let peer_views: Vec<_> = peers.values().map(Lease::to_peer).collect();
        let desired = self.backend.desired(&own.to_peer(), &peer_views);
        self.log_skipped(&desired.skipped);

        let started = std::time::Instant::now();
        let m = &self.metrics;
        m.peers.store(peers.len() as i64, Ordering::Relaxed);
        m.skipped_peers.store(desired.skipped.len() as i64, Ordering::Relaxed);
        m.reconcile_passes.fetch_add(1, Ordering::Relaxed);
        let report = match reconcile(&mut self.kernel, &self.backend.scope(), &desired.state).await {
            Ok(report) => report,
            Err(e) => {
                m.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        *m.last_reconcile_seconds.lock().unwrap_or_else(|e| e.into_inner()) = started.elapsed().as_secs_f64();
        m.kernel_ops.fetch_add(report.applied.len() as u64, Ordering::Relaxed);
        m.kernel_op_failures.fetch_add(report.failed.len() as u64, Ordering::Relaxed);
        if !report.applied.is_empty() {
            let ops: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
            match trigger {
                Trigger::KernelEvent | Trigger::Resync => {
                    m.drift_repairs.fetch_add(1, Ordering::Relaxed);
                    info!(count = ops.len(), ops = ?ops, "repaired drift in the kernel state")
                }
                _ => debug!(count = ops.len(), ops = ?ops, ?trigger, "applied kernel changes"),
            }
        }
        for (op, err) in &report.failed {
            warn!(%op, error = %err, "kernel operation failed; will retry");
        }
        Ok(report)
    }

    fn log_peer_changes(&mut self, peers: &BTreeMap<SubnetKey, Lease>) {
        for (key, lease) in peers {
            match self.known_peers.get(key) {
                None => {
                    info!(subnet = %key, public_ip = %public_ip(lease), backend = %lease.attrs.backend_type, "peer added")
                }
                Some(old) if old.attrs != lease.attrs => {
                    info!(subnet = %key, public_ip = %public_ip(lease), "peer changed")
                }
                _ => {}
            }
        }
        for key in self.known_peers.keys().filter(|k| !peers.contains_key(k)) {
            info!(subnet = %key, "peer removed");
        }
        self.known_peers = peers.clone();
    }

    fn log_skipped(&mut self, skipped: &[weft_backends::vxlan::SkippedPeer]) {
        let now: BTreeSet<String> = skipped.iter().map(|s| format!("{}: {}", s.subnet, s.reason)).collect();
        for s in now.difference(&self.known_skipped) {
            warn!("ignoring peer lease {s}");
        }
        self.known_skipped = now;
    }

    /// Runs until shutdown.
    pub async fn run(
        mut self,
        mut own: watch::Receiver<Lease>,
        mut leases: watch::Receiver<Arc<LeaseSet>>,
        mut kernel_events: mpsc::UnboundedReceiver<String>,
        resync: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry = Backoff::new(Duration::from_millis(200), resync.max(Duration::from_millis(200)));
        let mut next_resync = Instant::now() + resync;
        let mut retry_at: Option<Instant> = None;
        let mut events_open = true;
        loop {
            let wake = retry_at.map_or(next_resync, |r| r.min(next_resync));
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                r = own.changed() => { if r.is_err() { return; } Trigger::OwnLeaseChanged }
                r = leases.changed() => { if r.is_err() { return; } Trigger::LeasesChanged }
                event = kernel_events.recv(), if events_open => match event {
                    Some(what) => {
                        debug!(%what, "kernel event");
                        // A burst of deletions (a device takes its routes along) needs one pass, not one each.
                        while kernel_events.try_recv().is_ok() {}
                        Trigger::KernelEvent
                    }
                    None => { events_open = false; continue; }
                },
                _ = tokio::time::sleep_until(wake) => {
                    if retry_at.is_some_and(|r| r <= Instant::now()) { Trigger::Retry } else { Trigger::Resync }
                }
            };
            if trigger == Trigger::Resync {
                next_resync = Instant::now() + resync;
            }
            let own_lease = own.borrow_and_update().clone();
            let set = leases.borrow_and_update().clone();
            match self.pass(&own_lease, &set, trigger).await {
                Ok(report) if report.is_clean() => {
                    retry.reset();
                    retry_at = None;
                }
                Ok(_) => retry_at = Some(Instant::now() + retry.next_delay()),
                Err(e) => {
                    warn!(error = %e, "could not observe the kernel state; will retry");
                    retry_at = Some(Instant::now() + retry.next_delay());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use weft_backends::fake::FakeKernel;
    use weft_backends::model::{KernelState, WEFT_ROUTE_PROTOCOL};
    use weft_backends::vxlan::VxlanConfig;
    use weft_backends::{Family, Underlay};

    fn lease(key: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: Some(weft_backends::vxlan::lease_data(1, mac.parse().unwrap())),
                ..Default::default()
            },
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn controller() -> Controller<FakeKernel> {
        let underlay = Underlay {
            name: "eth0".into(),
            index: 2,
            mtu: 1500,
            addresses: vec!["198.18.0.1/24".parse().unwrap()],
            public_ipv4: None,
            public_ipv6: None,
        };
        let backend = VxlanBackend::prepare(
            VxlanConfig::default(),
            underlay,
            &[Family::V4],
            &KernelState::default(),
            WEFT_ROUTE_PROTOCOL,
        )
        .unwrap();
        Controller::new(FakeKernel::new(), backend, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn a_pass_programs_peers_but_not_ourselves_and_counts_what_it_did() {
        let mut c = controller();
        let own = lease("10.244.1.0-24", "198.18.0.1", "0e:00:00:00:00:01");
        let mut set = LeaseSet::default();
        for l in [own.clone(), lease("10.244.2.0-24", "198.18.0.2", "0e:00:00:00:00:02")] {
            set.leases.insert(l.key, l);
        }
        let report = c.pass(&own, &set, Trigger::Startup).await.unwrap();
        assert_eq!(report.applied.len(), 5, "link, address, neighbour, fdb, route");
        assert!(!c.kernel().state.routes.contains_key(&"10.244.1.0/24".parse().unwrap()), "no route to ourselves");
        assert_eq!(c.metrics.peers.load(Ordering::Relaxed), 1);
        assert_eq!(c.metrics.kernel_ops.load(Ordering::Relaxed), 5);
        assert_eq!(c.metrics.drift_repairs.load(Ordering::Relaxed), 0, "startup work is not drift");

        // Drift: a route vanishes; the resync pass restores it and counts a repair.
        c.kernel().state.routes.clear();
        let report = c.pass(&own, &set, Trigger::Resync).await.unwrap();
        assert_eq!(report.applied.len(), 1);
        assert_eq!(c.metrics.drift_repairs.load(Ordering::Relaxed), 1);

        // Nothing changed: nothing done, nothing counted as a repair.
        let report = c.pass(&own, &set, Trigger::Resync).await.unwrap();
        assert!(report.applied.is_empty());
        assert_eq!(c.metrics.drift_repairs.load(Ordering::Relaxed), 1);
        assert_eq!(c.metrics.reconcile_passes.load(Ordering::Relaxed), 3);
    }
}
