//! The reconcile loop: desired state from our lease and the peers, diffed against what the kernel has, applied.
//!
//! It wakes when the lease set or our own lease changes, when the kernel reports that something of ours was
//! deleted, on a periodic resync, and to retry failures with backoff. Every pass computes the whole desired state,
//! so there is no event ordering to get wrong, and a pass with nothing to do performs no operations.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use weft_backends::kernel::{reconcile, ApplyReport, Kernel, KernelError};
use weft_backends::vxlan::VxlanBackend;

use crate::backoff::Backoff;
use crate::http::Metrics;
use crate::lease::{Lease, SubnetKey};
use crate::registry::LeaseSet;

fn public_ip(lease: &Lease) -> String {
    let ip = lease.attrs.public_ip.map(std::net::IpAddr::V4).or(lease.attrs.public_ipv6.map(std::net::IpAddr::V6));
    ip.map_or("-".to_string(), |ip| ip.to_string())
}

/// After a pass over this many objects or operations (any pass with hundreds of peers: every pass dumps the
/// kernel state and builds the desired one), hand freed memory back once passes have stopped for
/// [`RELEASE_MEMORY_WHEN_QUIET`]. Not after every pass: returned pages fault back in on the next pass, which
/// would add milliseconds to every lease change during a burst.
pub const RELEASE_MEMORY_AFTER_OPS: usize = 256;
const RELEASE_MEMORY_WHEN_QUIET: Duration = Duration::from_secs(2);

/// Large passes allocate and free tens of MiB (dumps, the desired state, the op list), interleaved with what
/// stays (the lease set). glibc keeps freed memory mapped for reuse, so without this weftd's resident size would
/// stay near its startup peak for good. Call it once the pass's report is dropped.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
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
    /// The lease set and our own key as of the last pass, to log additions and removals. Shared with the
    /// registry rather than copied: with 10,000 peers a copy of the set is megabytes.
    known: Option<(Arc<LeaseSet>, SubnetKey)>,
    /// Peers the backend refused, to warn once per distinct reason.
    known_skipped: BTreeSet<String>,
    metrics: Arc<Metrics>,
    /// Objects the last pass compared (desired plus observed are built and dropped each pass).
    last_pass_objects: usize,
}

impl<K: Kernel> Controller<K> {
    pub fn new(kernel: K, backend: VxlanBackend, metrics: Arc<Metrics>) -> Self {
        Controller { kernel, backend, known: None, known_skipped: BTreeSet::new(), metrics, last_pass_objects: 0 }
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// What the backend owns in the kernel.
    pub fn scope(&self) -> weft_backends::model::Scope {
        self.backend.scope()
    }

    /// One pass. Returns the report; errors observing the kernel are returned as is.
    pub async fn pass(
        &mut self,
        own: &Lease,
        set: &Arc<LeaseSet>,
        trigger: Trigger,
    ) -> Result<ApplyReport, KernelError> {
        self.log_peer_changes(&own.key, set);
        let peer_views: Vec<_> = set.leases.iter().filter(|(k, _)| **k != own.key).map(|(_, l)| l.to_peer()).collect();
        let desired = self.backend.desired(&own.to_peer(), &peer_views);
        self.log_skipped(&desired.skipped);
        self.last_pass_objects = desired.state.object_count();

        let started = std::time::Instant::now();
        let m = &self.metrics;
        m.peers.store(peer_views.len() as i64, Ordering::Relaxed);
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
            // Rendering every op costs as much as applying it at 30,000 ops: only when the line is written.
            let ops = || report.applied.iter().map(ToString::to_string).collect::<Vec<String>>();
            match trigger {
                Trigger::KernelEvent | Trigger::Resync => {
                    m.drift_repairs.fetch_add(1, Ordering::Relaxed);
                    info!(count = report.applied.len(), ops = ?ops(), "repaired drift in the kernel state")
                }
                _ if tracing::enabled!(tracing::Level::DEBUG) => {
                    debug!(count = report.applied.len(), ops = ?ops(), ?trigger, "applied kernel changes")
                }
                _ => {}
            }
        }

        for (op, err) in &report.failed {
            warn!(%op, error = %err, "kernel operation failed; will retry");
        }
        Ok(report)
    }

    fn log_peer_changes(&mut self, own: &SubnetKey, set: &Arc<LeaseSet>) {
        let empty = LeaseSet::default();
        let (old, old_own) = match &self.known {
            // The same set for the same lease: nothing to compare (a resync or a kernel event).
            Some((known, known_own)) if Arc::ptr_eq(known, set) && known_own == own => return,
            Some((known, known_own)) => (&**known, *known_own),
            None => (&empty, *own),
        };
        for (key, lease) in set.leases.iter().filter(|(k, _)| *k != own) {
            match old.leases.get(key).filter(|_| *key != old_own) {
                None => {
                    info!(subnet = %key, public_ip = %public_ip(lease), backend = %lease.attrs.backend_type, "peer added")
                }
                Some(previous) if previous.attrs != lease.attrs => {
                    info!(subnet = %key, public_ip = %public_ip(lease), "peer changed")
                }
                _ => {}
            }
        }
        for key in old.leases.keys().filter(|k| **k != old_own && (*k == own || !set.leases.contains_key(k))) {
            info!(subnet = %key, "peer removed");
        }
        self.known = Some((set.clone(), *own));
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
        let mut release_at: Option<Instant> = None;
        loop {
            let wake = [retry_at, release_at].into_iter().flatten().fold(next_resync, Instant::min);
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
                    if release_at.is_some_and(|r| r <= Instant::now()) {
                        release_freed_memory();
                        release_at = None;
                        continue;
                    }
                    if retry_at.is_some_and(|r| r <= Instant::now()) { Trigger::Retry } else { Trigger::Resync }
                }
            };
            if trigger == Trigger::Resync {
                next_resync = Instant::now() + resync;
            }
            let own_lease = own.borrow_and_update().clone();
            let set = leases.borrow_and_update().clone();
            let mut applied = 0;
            match self.pass(&own_lease, &set, trigger).await {
                Ok(report) if report.is_clean() => {
                    applied = report.applied.len();
                    retry.reset();
                    retry_at = None;
                }
                Ok(report) => {
                    applied = report.applied.len();
                    retry_at = Some(Instant::now() + retry.next_delay());
                }
                Err(e) => {
                    warn!(error = %e, "could not observe the kernel state; will retry");
                    retry_at = Some(Instant::now() + retry.next_delay());
                }
            }
            if applied.max(self.last_pass_objects) >= RELEASE_MEMORY_AFTER_OPS {
                release_at = Some(Instant::now() + RELEASE_MEMORY_WHEN_QUIET);
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
        let underlay = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
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
        let set = Arc::new(set);
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
