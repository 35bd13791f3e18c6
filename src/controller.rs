//! The reconcile loop: desired state from our lease and the peers, diffed against what the kernel and the
//! firewall have, applied; a userspace data plane's forwarding table published.
//!
//! The loop knows no backend: it asks a [`Backend`] for the [`Desired`](weft_backends::backend::Desired) state and
//! hands its parts to the [`Kernel`], the [`Rules`] and the forwarding channel.
//!
//! It wakes when the lease set or our own lease changes, when the kernel reports that something of ours was
//! deleted, on a periodic resync, and to retry failures with backoff. A lease change or a named deletion costs
//! the change (an incremental pass: only the changed leases are judged, derived and diffed); the startup, the
//! resync, retries and anything the incremental pass cannot do exactly run a full pass over the whole set, the
//! safety net. A pass with nothing to do performs no operations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use weft_backends::backend::{AnyBackend, Backend};
use weft_backends::diff::Op;
use weft_backends::forwarding::ForwardingTable;
use weft_backends::forwarding::{ForwardingPublisher, ForwardingReceiver};
use weft_backends::kernel::{apply_in_order, reconcile, ApplyReport, Drift, Kernel, KernelError};
use weft_backends::parts::{ObjectKey, Touched};
use weft_backends::rules::{reconcile_rules, Rules, RulesError};

use crate::backoff::Backoff;
use crate::http::Metrics;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::pass_failures::PassFailures;
use crate::registry::{LeaseSet, Version};
use crate::status::PeerChanges;
use crate::trust::{self, IndexedJudgement, PeerIndex, Rejected, Screener, Screening, TrustPolicy};
use crate::value_grace::ValueGrace;

fn public_ip(lease: &Lease) -> String {
    let ip = lease.attrs.public_ip.map(std::net::IpAddr::V4).or(lease.attrs.public_ipv6.map(std::net::IpAddr::V6));
    ip.map_or("-".to_string(), |ip| ip.to_string())
}

/// After passes over this many objects or operations in all (a full pass with hundreds of peers, or a burst of
/// lease changes), hand freed memory back once passes have stopped for
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

/// A pass that adds, changes or removes more peers than this logs one line for all of them at info, and each at
/// debug.
const PEERS_LOGGED_ONE_BY_ONE: usize = 20;

/// Warns of a pass's failed `what` (kernel or firewall) operations: the first few one by one, the rest in one
/// line by cause.
fn log_failures(failures: &PassFailures, what: &str) {
    for failure in &failures.shown {
        warn!(%failure, "{what} operation failed; will retry");
    }
    if let Some(more) = failures.more_line() {
        warn!(count = failures.total - failures.shown.len(), "{more}; will retry");
    }
}

/// How the programmed peers differ from `known` at `keys` (each with its lease when it is programmed now).
fn peer_changes<'a>(
    known: &BTreeMap<SubnetKey, i64>,
    keys: impl Iterator<Item = (SubnetKey, Option<&'a Lease>)>,
) -> PeerChanges<'a> {
    let mut changes = PeerChanges::default();
    for (key, programmed) in keys {
        match (programmed, known.get(&key)) {
            (Some(lease), Some(revision)) if *revision == lease.mod_revision => {}
            (Some(lease), _) => changes.put.push(lease),
            (None, Some(_)) => changes.removed.push(key),
            (None, None) => {}
        }
    }
    changes
}

/// The periodic resync (a full pass: 30,000 objects dumped and compared at 10,000 peers) and the memory release
/// wait while lease events keep coming closer together than this, so a burst of changes is not held up behind
/// them; the resync waits one more interval at most, then runs whatever comes.
const YIELD_TO_EVENTS: Duration = Duration::from_millis(100);

/// glibc gives each thread that allocates under contention an arena of its own (up to eight per core), and memory
/// freed in one arena serves only that arena: the registry, the reconcile loop and the blocking netlink pool,
/// each on its own thread, would each keep the high-water mark of what they once held. weftd allocates little
/// outside its passes, so one shared arena costs no measurable contention and keeps the resident size to what
/// is in use. Call before any thread exists.
pub fn share_one_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a malloc tunable; it is called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
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

impl Trigger {
    /// The name `/status` reports.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::LeasesChanged => "leases_changed",
            Trigger::OwnLeaseChanged => "own_lease_changed",
            Trigger::KernelEvent => "kernel_event",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
        }
    }
}

/// Why a pass could not run: the current state could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Rules(#[from] RulesError),
}

pub struct Controller<K: Kernel, R: Rules, B: Backend = AnyBackend> {
    kernel: K,
    rules: R,
    backend: B,
    /// What peer leases are judged against before anything of theirs reaches the backend.
    policy: TrustPolicy,
    /// The latest forwarding table, for a userspace data plane (unused by kernel data planes).
    forwarding: ForwardingPublisher,
    /// The accepted peers (with the store revision of their value) as of the last pass, to log additions, changes
    /// and removals.
    known: BTreeMap<SubnetKey, i64>,
    /// Rejected leases as of the last pass, to warn once per lease and distinct reason.
    known_rejected: BTreeSet<(String, String)>,
    /// Whether the status board holds the rejected leases yet.
    rejected_recorded: bool,
    /// Remembers the last screen's verdicts, so a lease event judges only the leases that changed.
    screener: Screener,
    /// The version of the lease set the last pass saw, to ask the set's journal what changed since.
    seen: Option<Version>,
    metrics: Arc<Metrics>,
    /// Objects the last pass compared (desired plus observed are built and dropped each pass).
    last_pass_objects: usize,
    /// The cluster networks: routes with weft's protocol are ours only inside them (see [`Scope::route_networks`]).
    route_networks: Vec<ipnetwork::IpNetwork>,
    /// Holds a rewritten peer value back until it has stood for a while (see [`ValueGrace`]).
    grace: ValueGrace,
    /// The desired state by peer, as of the last pass, when that pass left the kernel equal to it; None when the
    /// next pass must be a full one (see [`Controller::incremental_pass`]).
    index: Option<Indexed>,
}

/// The desired state a clean pass left in the kernel, by peer, and the own lease it was derived for.
struct Indexed {
    own: Lease,
    index: PeerIndex,
}

impl<K: Kernel, R: Rules, B: Backend> Controller<K, R, B> {
    pub fn new(kernel: K, rules: R, backend: B, policy: TrustPolicy, metrics: Arc<Metrics>) -> Self {
        Controller {
            kernel,
            rules,
            backend,
            policy,
            forwarding: ForwardingPublisher::new(),
            known: BTreeMap::new(),
            known_rejected: BTreeSet::new(),
            rejected_recorded: false,
            screener: Screener::default(),
            seen: None,
            metrics,
            last_pass_objects: 0,
            route_networks: Vec::new(),
            grace: ValueGrace::default(),
            index: None,
        }
    }

    /// Claims only the routes into `networks` among those with weft's protocol, so another weftd on this host
    /// (another prefix and network) keeps its own.
    pub fn claim_routes_into(&mut self, networks: Vec<ipnetwork::IpNetwork>) {
        self.route_networks = networks;
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    pub fn rules(&mut self) -> &mut R {
        &mut self.rules
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The peers the last pass programmed (with their revisions) and the leases it rejected, with the reasons.
    pub fn peers_reported(&self) -> String {
        format!("programmed {:?}\nrejected {:?}\n", self.known, self.known_rejected)
    }

    /// The forwarding table as of the latest pass, for a userspace data plane to follow.
    pub fn forwarding(&self) -> ForwardingReceiver {
        self.forwarding.subscribe()
    }

    /// What this weftd owns in the kernel: the backend's scope, narrowed to our networks.
    pub fn scope(&self) -> weft_backends::model::Scope {
        weft_backends::model::Scope { route_networks: self.route_networks.clone(), ..self.backend.scope() }
    }

    /// One pass. Returns the report; errors observing the kernel are returned as is.
    pub async fn pass(&mut self, own: &Lease, set: &Arc<LeaseSet>, trigger: Trigger) -> Result<ApplyReport, PassError> {
        debug!(
            ?trigger,
            incremental_possible = self.index.is_some(),
            "full pass: judging every lease, observing the kernel"
        );
        self.index = None;
        // The full pass is the safety net: it judges every lease afresh.
        self.screener = Screener::default();
        let IndexedJudgement { index: desired, accepted, rejected } =
            trust::judge_indexed(&self.policy, &self.backend, own, set, &mut self.screener);
        // Whatever changed before this pass, it sees the whole set.
        self.seen = set.version();
        let changes = self.log_peer_changes(&accepted);
        self.record_peers(own, set, changes, &rejected);
        self.last_pass_objects = desired.state.object_count();
        self.publish_forwarding(desired.forwarding.as_ref());

        let started = std::time::Instant::now();
        let m = &self.metrics;
        m.reconcile_passes.fetch_add(1, Ordering::Relaxed);
        let scope = self.scope();
        let mut report = match reconcile(&mut self.kernel, &scope, &desired.state).await {
            Ok(report) => report,
            Err(e) => {
                m.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                m.status.record_pass(trigger.name(), started.elapsed(), 0, 0, vec![e.to_string()]);
                return Err(e.into());
            }
        };
        // Rules after the kernel objects: a rule may name a device the kernel pass just created.
        report.rules = match reconcile_rules(&mut self.rules, &scope.tables, &desired.rules).await {
            Ok(rules) => rules,
            Err(e) => {
                m.reconcile_failures.fetch_add(1, Ordering::Relaxed);
                let failures = PassFailures::of(report.failed.iter().map(|(op, e)| (op, e.cause())));
                let lines = failures.lines().chain([e.to_string()]).collect();
                m.status.record_pass(trigger.name(), started.elapsed(), report.applied.len(), failures.total, lines);
                log_failures(&failures, "kernel");
                return Err(e.into());
            }
        };
        let for_drift = matches!(trigger, Trigger::KernelEvent | Trigger::Resync);
        self.record_report(&report, trigger, started, |_| for_drift);
        if report.is_clean() {
            // The kernel now holds exactly the desired state: later changes can be applied against it.
            self.index = Some(Indexed { own: own.clone(), index: desired });
        }
        Ok(report)
    }

    /// The startup pass, over the value grace's view of `set`: the loop then follows the view's journal from
    /// here, instead of walking the whole set once on the first lease event.
    pub async fn startup_pass(&mut self, own: &Lease, set: &LeaseSet) -> Result<ApplyReport, PassError> {
        let (view, _) = self.grace.view(set, &own.key, Instant::now());
        self.pass(own, &view, Trigger::Startup).await
    }

    /// The pass `trigger` calls for. Lease changes and deleted objects a notification named (`gone`; None when a
    /// notification named none: a device went, notifications were lost) are applied alone
    /// ([`incremental_pass`](Self::incremental_pass)); the periodic resync, retries, a change of our own lease and
    /// whatever the incremental pass cannot do exactly run a full pass, the safety net.
    pub async fn step(
        &mut self,
        own: &Lease,
        set: &Arc<LeaseSet>,
        trigger: Trigger,
        gone: Option<Vec<ObjectKey>>,
    ) -> Result<ApplyReport, PassError> {
        let incremental = match (trigger, gone) {
            (Trigger::LeasesChanged, _) => self.incremental_pass(own, set, &[], trigger).await,
            (Trigger::KernelEvent, Some(keys)) => self.incremental_pass(own, set, &keys, trigger).await,
            _ => None,
        };
        match incremental {
            Some(report) => Ok(report),
            None => self.pass(own, set, trigger).await,
        }
    }

    /// Records what a pass did in the metrics and the status, and logs it.
    fn record_report(
        &self,
        report: &ApplyReport,
        trigger: Trigger,
        started: std::time::Instant,
        is_repair: impl Fn(&Op) -> bool,
    ) {
        let kernel = PassFailures::of(report.failed.iter().map(|(op, e)| (op, e.cause())));
        let rules = PassFailures::of(report.rules.failed.iter().map(|(op, e)| (op, e.cause())));
        let m = &self.metrics;
        let lines = kernel.lines().chain(rules.lines()).collect();
        m.status.record_pass(
            trigger.name(),
            started.elapsed(),
            report.applied_count(),
            kernel.total + rules.total,
            lines,
        );
        *m.last_reconcile_seconds.lock().unwrap_or_else(|e| e.into_inner()) = started.elapsed().as_secs_f64();
        m.kernel_ops.fetch_add(report.applied.len() as u64, Ordering::Relaxed);
        m.kernel_op_failures.fetch_add(report.failed.len() as u64, Ordering::Relaxed);
        self.log_report(report, trigger, is_repair);
        log_failures(&kernel, "kernel");
        log_failures(&rules, "firewall");
    }

    /// Logs what a pass did: drift repairs at info, other changes at debug. A full
    /// pass run for drift (a resync, a kernel event) repairs whatever it changes; an incremental pass repairs the
    /// objects `is_repair` names (those a notification said were deleted) and applies lease changes besides.
    fn log_report(&self, report: &ApplyReport, trigger: Trigger, is_repair: impl Fn(&Op) -> bool) {
        let for_drift = matches!(trigger, Trigger::KernelEvent | Trigger::Resync);
        // Rendering every op costs as much as applying it at 30,000 ops: only when the line is written.
        let render = |repairs: bool| {
            let kernel = report.applied.iter().filter(|op| is_repair(op) == repairs).map(ToString::to_string);
            let rules = report.rules.applied.iter().filter(|_| for_drift == repairs).map(ToString::to_string);
            kernel.chain(rules).collect::<Vec<String>>()
        };
        let rules = report.rules.applied.len();
        let repaired = report.applied.iter().filter(|op| is_repair(op)).count() + if for_drift { rules } else { 0 };
        if repaired > 0 {
            self.metrics.drift_repairs.fetch_add(1, Ordering::Relaxed);
            info!(count = repaired, ops = ?render(true), "repaired drift in the kernel state");
        }
        let changed = report.applied_count() - repaired;
        if changed > 0 && tracing::enabled!(tracing::Level::DEBUG) {
            debug!(count = changed, ops = ?render(false), ?trigger, "applied kernel changes");
        }
    }

    /// Records how the programmed peers changed (already logged) and the leases a pass does not program.
    fn record_peers(&mut self, own: &Lease, set: &LeaseSet, changes: PeerChanges, rejected: &[Rejected]) {
        let rejected_changed = self.log_rejected(rejected);
        let in_store = set.leases.len() + set.bad_keys.len() - usize::from(set.leases.contains_key(&own.key));
        let m = &self.metrics;
        m.status.record_peers(own, in_store, &changes, rejected_changed.then_some(rejected));
        m.peers.store(self.known.len() as i64, Ordering::Relaxed);
        m.set_skipped(rejected.iter().map(|r| r.reason.name()));
    }

    fn publish_forwarding(&self, table: Option<&ForwardingTable>) {
        if let Some(table) = table {
            // Published before the kernel is touched: the data plane needs no kernel object to forward.
            if self.forwarding.publish(table) {
                debug!(entries = table.entries.len(), "forwarding table published");
            }
        }
    }

    /// Applies a change of the lease set, or objects a notification said were deleted (`gone`), in time and
    /// memory proportional to the change: only the leases whose accepted value changed since the last pass are
    /// judged and re-derived, and only their objects (and the `gone` ones) are diffed, against the values the
    /// last pass left in the kernel; no kernel state is dumped. Which leases changed comes from the set's journal
    /// (the value grace's view journals its own changes, held-back and released values included); when the
    /// journal cannot tell, or a conflict between leases makes the screen judge the whole set, one walk of the
    /// set beside the index finds them instead. Returns None when this cannot be done exactly and a full pass
    /// must run instead: no clean pass before it, our own lease changed, or a notification that names no single
    /// object.
    pub async fn incremental_pass(
        &mut self,
        own: &Lease,
        set: &LeaseSet,
        gone: &[ObjectKey],
        trigger: Trigger,
    ) -> Option<ApplyReport> {
        let Indexed { own: indexed_own, index } = self.index.as_mut()?;
        if indexed_own != own {
            return None;
        }
        let started = std::time::Instant::now();
        let keys = set.changed_since(self.seen);
        self.seen = set.version();
        let mut touched = Touched::default();
        for key in gone {
            touched.gone(key.clone());
        }
        let mut changed: Vec<&Lease> = Vec::new();
        let mut removed: Vec<SubnetKey> = Vec::new();
        let screen_alone = match &keys {
            Some(keys) => self.screener.screen_keys(&self.policy, Some(own), set, keys),
            None => false,
        };
        // What the index holds against what the screen accepts: a lease whose revision differs (or that is new)
        // is re-derived, a part without an accepted lease goes.
        let walked = match (&keys, screen_alone) {
            (Some(keys), true) => {
                for key in keys {
                    match set.leases.get(key).filter(|_| self.screener.is_accepted(key)) {
                        Some(lease) if index.revision(key) != Some(lease.mod_revision) => changed.push(lease),
                        Some(_) => {}
                        None if index.revision(key).is_some() => removed.push(*key),
                        None => {}
                    }
                }
                None
            }
            (Some(_), false) => Some(self.screener.screening(set)),
            (None, _) => Some(self.screener.screen(&self.policy, Some(own), set)),
        };
        if let Some(Screening { accepted, .. }) = &walked {
            let mut parts = index.revisions().peekable();
            let mut leases = accepted.iter().peekable();
            loop {
                match (leases.peek(), parts.peek()) {
                    (Some(l), Some((k, revision))) if l.key == **k => {
                        if l.mod_revision != *revision {
                            changed.push(l);
                        }
                        leases.next();
                        parts.next();
                    }
                    (Some(l), Some((k, _))) if l.key < **k => {
                        changed.push(l);
                        leases.next();
                    }
                    (Some(l), None) => {
                        changed.push(l);
                        leases.next();
                    }
                    (_, Some((k, _))) => {
                        removed.push(**k);
                        parts.next();
                    }
                    (None, None) => break,
                }
            }
        }
        let protected = self.policy.protected(Some(own));
        let own_peer = own.to_peer();
        let derive = |key: &SubnetKey, attrs: &Arc<LeaseAttrs>| {
            trust::judge_part(&self.backend, &own_peer, key, attrs, &protected)
        };
        for key in &removed {
            index.remove(key, &mut touched, derive);
        }
        for lease in &changed {
            index.remove(&lease.key, &mut touched, derive);
            let part = trust::judge_peer(&self.backend, &own_peer, lease, &protected);
            if let Err(e) = index.insert(lease.key, lease.mod_revision, lease.attrs.clone(), part, &mut touched) {
                debug!(lease = %lease.key, error = %e, "cannot apply the change alone; running a full pass");
                self.index = None;
                return None;
            }
        }
        let ops = touched.ops(index);
        if touched.forwarding_changed() {
            let table = index.forwarding.clone();
            self.publish_forwarding(table.as_ref());
        }
        let Indexed { index, .. } = self.index.as_ref()?;
        match (walked, keys) {
            (Some(Screening { accepted, rejected }), _) => {
                let (accepted, rejected) = trust::accepted_and_rejected(accepted, rejected, index);
                let changes = self.log_peer_changes(&accepted);
                self.record_peers(own, set, changes, &rejected);
            }
            (None, Some(keys)) => {
                let (_, rejected) = trust::accepted_and_rejected(Vec::new(), self.screener.rejected(set), index);
                let programmed = |key: &SubnetKey| {
                    let lease = set.leases.get(key).filter(|_| self.screener.is_accepted(key));
                    lease.filter(|_| !index.has_skipped(key))
                };
                let changes = peer_changes(&self.known, keys.iter().map(|key| (*key, programmed(key))));
                self.note_peer_changes(&changes);
                self.record_peers(own, set, changes, &rejected);
            }
            (None, None) => unreachable!("without the journal's keys the screen walks the set"),
        }
        self.last_pass_objects = touched.keys.len();

        let m = &self.metrics;
        m.reconcile_passes.fetch_add(1, Ordering::Relaxed);
        m.incremental_passes.fetch_add(1, Ordering::Relaxed);
        let report = apply_in_order(&mut self.kernel, ops).await;
        self.record_report(&report, trigger, started, |op| touched.repairs(op));
        if !report.is_clean() {
            // The kernel may now differ from the index anywhere the failed ops touched: the retry is a full pass.
            self.index = None;
        }
        Some(report)
    }

    /// The peers added, changed and removed since the last pass, logged and taken into the known peers;
    /// `accepted` (the programmed peers) is in key order. One walk beside the known peers.
    fn log_peer_changes<'a>(&mut self, accepted: &[&'a Lease]) -> PeerChanges<'a> {
        debug_assert!(accepted.windows(2).all(|w| w[0].key < w[1].key), "accepted leases come in key order");
        let mut changes = PeerChanges::default();
        let mut known = self.known.iter().peekable();
        for lease in accepted {
            while let Some((key, _)) = known.next_if(|(key, _)| **key < lease.key) {
                changes.removed.push(*key);
            }
            match known.next_if(|(key, _)| **key == lease.key) {
                Some((_, revision)) if *revision == lease.mod_revision => {}
                _ => changes.put.push(lease),
            }
        }
        changes.removed.extend(known.map(|(key, _)| *key));
        self.note_peer_changes(&changes);
        changes
    }

    /// Logs peer changes and takes them into the known peers.
    fn note_peer_changes(&mut self, changes: &PeerChanges) {
        // A node joining or leaving is worth a line at info; a startup or a burst over thousands of peers is
        // worth one line for all, the peers themselves at debug.
        let one_by_one = changes.put.len() + changes.removed.len() <= PEERS_LOGGED_ONE_BY_ONE;
        let (mut added, mut changed) = (0, 0);
        // The fields are written inside the macros: tracing renders them only for a line it writes, and a startup
        // over 10,000 peers writes none of these at info.
        for lease in &changes.put {
            let (subnet, backend) = (lease.key, &lease.attrs.backend_type);
            if self.known.insert(lease.key, lease.mod_revision).is_none() {
                added += 1;
                match one_by_one {
                    true => info!(%subnet, public_ip = %public_ip(lease), %backend, "peer added"),
                    false => debug!(%subnet, public_ip = %public_ip(lease), %backend, "peer added"),
                }
            } else {
                changed += 1;
                match one_by_one {
                    true => info!(%subnet, public_ip = %public_ip(lease), "peer changed"),
                    false => debug!(%subnet, public_ip = %public_ip(lease), "peer changed"),
                }
            }
        }
        for subnet in &changes.removed {
            match one_by_one {
                true => info!(%subnet, "peer removed"),
                false => debug!(%subnet, "peer removed"),
            }
            self.known.remove(subnet);
        }
        if !one_by_one {
            let (removed, peers) = (changes.removed.len(), self.known.len());
            info!(added, changed, removed, peers, "peers changed (each one at debug level)");
        }
        if changes.is_large(self.known.len()) {
            weft_backends::dense::repack_map(&mut self.known);
        }
    }

    /// Warns once per rejected lease and reason; true when the rejected leases differ from the last pass's.
    fn log_rejected(&mut self, rejected: &[Rejected]) -> bool {
        let now: BTreeSet<(String, String)> = rejected.iter().map(|r| (r.name.clone(), r.reason.to_string())).collect();
        for r in rejected {
            if !self.known_rejected.contains(&(r.name.clone(), r.reason.to_string())) {
                // The subnets as CIDRs where the key has them, the raw name where it is no key at all.
                let shown = r
                    .name
                    .parse::<SubnetKey>()
                    .map_or(r.name.clone(), |k| k.subnets().map(|s| s.to_string()).collect::<Vec<_>>().join(" & "));
                warn!(lease = %r.name, reason = r.reason.name(), "ignoring peer lease {shown}: {}", r.reason);
            }
        }
        let changed = now != self.known_rejected || !self.rejected_recorded;
        self.known_rejected = now;
        self.rejected_recorded = true;
        changed
    }

    /// Runs until shutdown.
    pub async fn run(
        mut self,
        mut own: watch::Receiver<Lease>,
        mut leases: watch::Receiver<Arc<LeaseSet>>,
        mut kernel_events: mpsc::UnboundedReceiver<Drift>,
        resync: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry = Backoff::new(Duration::from_millis(200), resync.max(Duration::from_millis(200)));
        let mut next_resync = Instant::now() + resync;
        let mut retry_at: Option<Instant> = None;
        let mut events_open = true;
        let mut release_at: Option<Instant> = None;
        let mut work_since_release = 0;
        let mut grace_at: Option<Instant> = None;
        // Objects notifications said were deleted, for an incremental repair; None: a notification named none
        // (a device went, notifications were lost), so the repair is a full pass.
        let mut gone: Option<Vec<ObjectKey>> = Some(Vec::new());
        // When lease events last came, and when the resync was due: see YIELD_TO_EVENTS.
        let mut last_event: Option<Instant> = None;
        let mut resync_due = next_resync;
        loop {
            let wake = [retry_at, release_at, grace_at].into_iter().flatten().fold(next_resync, Instant::min);
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                r = own.changed() => { if r.is_err() { return; } Trigger::OwnLeaseChanged }
                r = leases.changed() => {
                    if r.is_err() { return; }
                    last_event = Some(Instant::now());
                    Trigger::LeasesChanged
                }
                event = kernel_events.recv(), if events_open => match event {
                    Some(drift) => {
                        debug!(%drift, "kernel event");
                        // A burst of deletions (a device takes its routes along) needs one pass, not one each.
                        let mut note = |drift: &Drift| match (ObjectKey::of_drift(drift), gone.as_mut()) {
                            (Some(key), Some(keys)) => keys.push(key),
                            _ => gone = None,
                        };
                        note(&drift);
                        while let Ok(drift) = kernel_events.try_recv() {
                            note(&drift);
                        }
                        Trigger::KernelEvent
                    }
                    None => { events_open = false; continue; }
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let busy = last_event.is_some_and(|e| now < e + YIELD_TO_EVENTS);
                    if release_at.is_some_and(|r| r <= now) {
                        if busy {
                            release_at = Some(now + YIELD_TO_EVENTS);
                        } else {
                            release_freed_memory();
                            release_at = None;
                        }
                        continue;
                    }
                    if grace_at.is_some_and(|g| g <= now) {
                        Trigger::LeasesChanged
                    } else if retry_at.is_some_and(|r| r <= now) {
                        Trigger::Retry
                    } else if busy && now < resync_due + resync {
                        next_resync = now + YIELD_TO_EVENTS;
                        continue;
                    } else {
                        Trigger::Resync
                    }
                }
            };
            if trigger == Trigger::Resync {
                next_resync = Instant::now() + resync;
                resync_due = next_resync;
            }
            let own_lease = own.borrow_and_update().clone();
            // The registry's set is let go at once: while we hold it, its next change would copy it.
            let (set, grace_ends) = self.grace.view(&leases.borrow_and_update(), &own_lease.key, Instant::now());
            grace_at = grace_ends;
            let mut applied = 0;
            match self.step(&own_lease, &set, trigger, gone.replace(Vec::new())).await {
                Ok(report) if report.is_clean() => {
                    applied = report.applied_count();
                    retry.reset();
                    retry_at = None;
                }
                Ok(report) => {
                    applied = report.applied_count();
                    retry_at = Some(Instant::now() + retry.next_delay());
                }
                Err(e) => {
                    warn!(error = %e, "could not observe the kernel or firewall state; will retry");
                    retry_at = Some(Instant::now() + retry.next_delay());
                }
            }
            // Many small passes (a burst of lease changes) churn the heap as much as one big one.
            work_since_release += applied.max(self.last_pass_objects);
            if work_since_release >= RELEASE_MEMORY_AFTER_OPS {
                work_since_release = 0;
                release_at = Some(Instant::now() + RELEASE_MEMORY_WHEN_QUIET);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use weft_backends::backend::Desired;
    use weft_backends::fake::{FakeKernel, FakeRules};
    use weft_backends::forwarding::ForwardingTable;
    use weft_backends::model::{KernelState, Link, LinkKind, MacAddr, Route, Scope, WEFT_ROUTE_PROTOCOL};
    use weft_backends::rules::{BaseChain, ChainType, Hook, Match, Policy, Rule, Table, TableFamily, TableId, Verdict};
    use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
    use weft_backends::{Family, Peer, Underlay};

    fn lease(key: &str, ip: &str, mac: &str) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: Some(weft_backends::vxlan::lease_data(1, mac.parse().unwrap()).into()),
                ..Default::default()
            }),
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn policy() -> TrustPolicy {
        let config =
            crate::config::NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        TrustPolicy { host_addresses: vec!["198.18.0.1/24".parse().unwrap()], ..TrustPolicy::outside(config).unwrap() }
    }

    fn controller() -> Controller<FakeKernel, FakeRules> {
        let underlay = Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        let backend = VxlanBackend::prepare(
            VxlanConfig::default(),
            underlay,
            &[Family::V4],
            &KernelState::default(),
            WEFT_ROUTE_PROTOCOL,
        )
        .unwrap();
        Controller::new(
            FakeKernel::new(),
            FakeRules::default(),
            AnyBackend::Vxlan(backend),
            policy(),
            Arc::new(Metrics::default()),
        )
    }

    /// A backend shaped like a userspace one: a TUN device the data plane opens, device routes, a blackhole for
    /// our own subnet, a firewall table and a forwarding table. Shows the loop needs nothing backend-specific.
    struct TunLike;

    fn tables() -> TableId {
        TableId::new(TableFamily::Inet, "weft")
    }

    impl Backend for TunLike {
        fn backend_type(&self) -> &'static str {
            "vxlan"
        }
        fn scope(&self) -> Scope {
            Scope { tables: vec![tables()], ..Scope::links(vec!["weft0".into()], WEFT_ROUTE_PROTOCOL) }
        }
        fn base(&self, own: &Peer) -> Desired {
            let mut desired = Desired::default();
            let tun = Link { name: "weft0".into(), kind: LinkKind::Tun, mac: MacAddr::default(), mtu: 1472, up: true };
            desired.state.add_link(tun);
            let own_subnet = own.subnet(Family::V4).unwrap();
            desired.state.add_route(Route::blackhole(own_subnet, WEFT_ROUTE_PROTOCOL));
            desired.forwarding = Some(ForwardingTable::default());
            let accept = Rule::new(vec![Match::Source { net: own_subnet, negated: false }], Verdict::Accept);
            let forward =
                BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Accept };
            desired.rules.add(Table::new(tables()).base_chain("forward", forward, vec![accept]));
            desired
        }
        fn peer(&self, _own: &Peer, peer: &Peer) -> Desired {
            let mut part = Desired::default();
            let subnet = peer.subnet(Family::V4).unwrap();
            part.state.add_route(Route::dev(subnet, "weft0", WEFT_ROUTE_PROTOCOL));
            let mut forwarding = ForwardingTable::default();
            forwarding.insert(subnet, std::net::SocketAddr::new(peer.public_ip(Family::V4).unwrap(), 8285));
            part.forwarding = Some(forwarding);
            part
        }
        fn lease_data(&self, _: Family) -> Option<serde_json::Value> {
            None
        }
        fn mtu(&self) -> u32 {
            1472
        }
        fn notes(&self) -> &[String] {
            &[]
        }
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

        // A notification of a change we made ourselves (a stale FDB entry going) arrives with a lease change: the
        // lease change is applied, and nothing counts as a repair, for nothing was put back.
        let mut journaled = LeaseSet::journaled(1);
        journaled.apply(&set.leases.values().cloned().map(crate::store::Change::Put).collect::<Vec<_>>(), 1);
        let journaled = Arc::new(journaled);
        c.pass(&own, &journaled, Trigger::Resync).await.unwrap();
        let mut next = (*journaled).clone();
        next.apply(&[crate::store::Change::Put(lease("10.244.3.0-24", "198.18.0.3", "0e:00:00:00:00:03"))], 2);
        let next = Arc::new(next);
        let echo = ObjectKey::Fdb("flannel.1".into(), "0e:00:00:00:00:09".parse().unwrap());
        let report = c.step(&own, &next, Trigger::KernelEvent, Some(vec![echo])).await.unwrap();
        assert_eq!(report.applied.len(), 3, "the new peer's neighbour, FDB entry and route");
        assert_eq!(c.metrics.incremental_passes.load(Ordering::Relaxed), 1);
        assert_eq!(c.metrics.drift_repairs.load(Ordering::Relaxed), 1, "a lease change is no repair");

        // A real deletion behind our back, notified: put back, and counted.
        let route = ObjectKey::Route("10.244.3.0/24".parse().unwrap());
        c.kernel().state.routes.remove(&"10.244.3.0/24".parse().unwrap());
        let report = c.step(&own, &next, Trigger::KernelEvent, Some(vec![route])).await.unwrap();
        assert_eq!(report.applied.len(), 1);
        assert_eq!(c.metrics.drift_repairs.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_missing_device_is_told_in_a_few_lines_however_many_ops_fail() {
        let metrics = Arc::new(Metrics::default());
        let mut c = Controller::new(FakeKernel::new(), FakeRules::default(), TunLike, policy(), metrics);
        let own = lease("10.244.1.0-24", "198.18.0.1", "0e:00:00:00:00:01");
        let mut set = LeaseSet::default();
        set.leases.insert(own.key, own.clone());
        for n in 2..=200 {
            let l = lease(&format!("10.244.{n}.0-24"), &format!("198.18.0.{n}"), &format!("0e:00:00:00:00:{n:02x}"));
            set.leases.insert(l.key, l);
        }
        // The TUN device is not open: its update and the route to every peer through it fail.
        let report = c.pass(&own, &Arc::new(set), Trigger::Startup).await.unwrap();
        assert_eq!(report.failed.len(), 200);
        let status = c.metrics.status.snapshot(true, true);
        let pass = status.last_reconcile.unwrap();
        assert_eq!(pass.ops_failed, 200);
        assert_eq!(pass.failures.len(), crate::pass_failures::SHOWN + 1, "{:#?}", pass.failures);
        assert_eq!(pass.failures[crate::pass_failures::SHOWN], "195 more failed: device weft0 does not exist (195)");
    }

    #[tokio::test]
    async fn rules_and_forwarding_go_through_the_same_pass() {
        let metrics = Arc::new(Metrics::default());
        let mut c = Controller::new(FakeKernel::new(), FakeRules::default(), TunLike, policy(), metrics);
        let mut plane = c.forwarding();
        let own = lease("10.244.1.0-24", "198.18.0.1", "0e:00:00:00:00:01");
        let mut set = LeaseSet::default();
        for l in [own.clone(), lease("10.244.2.0-24", "198.18.0.2", "0e:00:00:00:00:02")] {
            set.leases.insert(l.key, l);
        }
        let set = Arc::new(set);

        // The data plane has not opened its TUN device yet: the pass says so, and still installs the rest.
        let report = c.pass(&own, &set, Trigger::Startup).await.unwrap();
        assert!(
            matches!(report.failed.as_slice(), [
                (_, KernelError::TunNotOpened { device: tun, .. }),
                (_, KernelError::NoSuchDevice { device: route_dev, .. }),
            ] if tun == "weft0" && route_dev == "weft0"),
            "{:?}",
            report.failed
        );
        assert_eq!(report.rules.applied.len(), 1, "the table is created");
        assert!(plane.has_changed().unwrap());
        assert_eq!(plane.borrow_and_update().render(), "forward 10.244.2.0/24 to 198.18.0.2:8285\n");

        c.kernel().open_tun("weft0");
        let report = c.pass(&own, &set, Trigger::Retry).await.unwrap();
        assert!(report.is_clean(), "{:?}", report.failed);
        let ops: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            vec!["update link weft0 tun mtu 1472 up", "replace route 10.244.2.0/24 dev weft0 proto 87"],
            "the blackhole went in on the first pass"
        );
        assert!(!plane.has_changed().unwrap(), "an unchanged forwarding table wakes nobody");

        // Someone deletes our table: the resync pass puts it back and counts a repair.
        c.rules().tables.tables.clear();
        let report = c.pass(&own, &set, Trigger::Resync).await.unwrap();
        assert_eq!((report.applied.len(), report.rules.applied.len()), (0, 1));
        assert_eq!(c.metrics.drift_repairs.load(Ordering::Relaxed), 1);
        let report = c.pass(&own, &set, Trigger::Resync).await.unwrap();
        assert_eq!(report.applied_count(), 0);
    }
}
