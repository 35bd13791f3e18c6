//! The seam between the reconcile logic and the OS: observe what we own, apply one operation.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_netlink::route::MAIN_TABLE;

use crate::diff::{diff_kind, diff_links, Op};
use crate::model::{KernelState, MacAddr, ObjectKind, Scope};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: {source}")]
    Apply {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("observing kernel state ({what}): {source}")]
    Observe {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The device an operation needs is missing (ENODEV). Both kernels report it so, before sending anything.
    #[error("{op}: device {device} does not exist")]
    NoSuchDevice { op: String, device: String },
    /// A TUN device is created by the data plane opening /dev/net/tun, never over rtnetlink.
    #[error("{op}: TUN device {device} does not exist; the data plane creates it by opening /dev/net/tun")]
    TunNotOpened { op: String, device: String },
    /// Devices weft only references are never created, changed or deleted.
    #[error("{op}: device {device} is not weft's to change")]
    NotOurs { op: String, device: String },
    #[error("{op}: {source}")]
    InvalidRoute {
        op: String,
        #[source]
        source: crate::model::InvalidRoute,
    },
    #[error("netlink: {0}")]
    Netlink(String),
}

impl KernelError {
    pub fn apply(op: &Op, source: std::io::Error) -> KernelError {
        KernelError::Apply { op: op.to_string(), source }
    }

    pub fn no_such_device(op: &Op, device: &str) -> KernelError {
        KernelError::NoSuchDevice { op: op.to_string(), device: device.to_string() }
    }

    /// What went wrong, without the operation: the same for every route through a device that is missing, so
    /// that many failures can be told as one.
    pub fn cause(&self) -> String {
        match self {
            KernelError::Apply { source, .. } => source.to_string(),
            KernelError::NoSuchDevice { device, .. } => format!("device {device} does not exist"),
            KernelError::TunNotOpened { device, .. } => format!("TUN device {device} is not open"),
            KernelError::NotOurs { device, .. } => format!("device {device} is not weft's to change"),
            KernelError::InvalidRoute { source, .. } => source.to_string(),
            KernelError::Observe { .. } | KernelError::Netlink(_) => self.to_string(),
        }
    }

    /// The errno this error stands for, when it stands for one (ENODEV for a missing device of either kind).
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Apply { source, .. } | KernelError::Observe { source, .. } => source.raw_os_error(),
            KernelError::NoSuchDevice { .. } | KernelError::TunNotOpened { .. } => Some(libc::ENODEV),
            KernelError::InvalidRoute { .. } => Some(libc::EINVAL),
            KernelError::NotOurs { .. } => Some(libc::EPERM),
            KernelError::Netlink(_) => None,
        }
    }
}

/// The checks both kernels make before touching anything, so that they refuse an op the same way.
pub fn precheck(op: &Op) -> Result<(), KernelError> {
    match op {
        Op::ReplaceRoute(r) => r.check().map_err(|source| KernelError::InvalidRoute { op: op.to_string(), source }),
        Op::CreateLink(l) | Op::UpdateLink(l) if !l.is_owned() => {
            Err(KernelError::NotOurs { op: op.to_string(), device: l.name.clone() })
        }
        _ => Ok(()),
    }
}

/// A network namespace's kernel, as far as weft is concerned.
/// Something of ours that the kernel removed or disabled behind our back: a reason to reconcile soon. The
/// controller treats every value alike (one pass for a burst); the variants say what happened, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    LinkDeleted {
        device: String,
    },
    LinkDown {
        device: String,
    },
    /// One of our devices was renamed away from the name we own it by.
    LinkRenamed {
        device: String,
    },
    RouteDeleted {
        dst: IpNetwork,
        table: u32,
    },
    NeighbourDeleted {
        device: String,
        ip: IpAddr,
    },
    FdbDeleted {
        device: String,
        mac: MacAddr,
    },
    /// The notification socket overflowed: anything may have changed.
    NotificationsLost,
    /// The notification socket failed; no further drift is reported (the periodic resync still runs).
    WatchClosed,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::LinkDeleted { device } => write!(f, "link {device} deleted"),
            Drift::LinkDown { device } => write!(f, "link {device} went down"),
            Drift::LinkRenamed { device } => write!(f, "link {device} renamed"),
            Drift::RouteDeleted { dst, table: MAIN_TABLE } => write!(f, "route {dst} deleted"),
            Drift::RouteDeleted { dst, table } => write!(f, "route {dst} (table {table}) deleted"),
            Drift::NeighbourDeleted { device, ip } => write!(f, "neighbour {ip} dev {device} deleted"),
            Drift::FdbDeleted { device, mac } => write!(f, "fdb entry {mac} dev {device} deleted"),
            Drift::NotificationsLost => f.write_str("netlink notifications were lost (overrun)"),
            Drift::WatchClosed => f.write_str("netlink notification socket closed"),
        }
    }
}

pub trait Kernel: Send {
    /// Everything inside `scope` that exists now.
    fn observe(&mut self, scope: &Scope) -> impl Future<Output = Result<KernelState, KernelError>> + Send;

    /// Only the objects of `kind` inside `scope`, the rest of the state left empty: a full pass holds one kind's
    /// observation at a time. The default observes everything and keeps that kind.
    fn observe_kind(
        &mut self,
        scope: &Scope,
        kind: ObjectKind,
    ) -> impl Future<Output = Result<KernelState, KernelError>> + Send {
        async move {
            let mut state = self.observe(scope).await?;
            state.keep_only(kind);
            Ok(state)
        }
    }

    /// Applies one operation. Replace and delete operations are idempotent: deleting what is already gone succeeds.
    fn apply(&mut self, op: &Op) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// Applies operations that do not depend on each other and returns one result per op, in order. The default
    /// applies them one by one; a kernel may overlap them (many requests in flight on one socket).
    fn apply_all(&mut self, ops: &[Op]) -> impl Future<Output = Vec<Result<(), KernelError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(self.apply(op).await);
            }
            results
        }
    }
}

/// The outcome of one reconcile pass: kernel operations, then rule operations.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: Vec<Op>,
    pub failed: Vec<(Op, KernelError)>,
    pub rules: crate::rules::RulesReport,
}

impl ApplyReport {
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty() && self.rules.failed.is_empty()
    }

    /// Kernel and rule operations applied.
    pub fn applied_count(&self) -> usize {
        self.applied.len() + self.rules.applied.len()
    }

    pub fn failed_count(&self) -> usize {
        self.failed.len() + self.rules.failed.len()
    }

    /// Adds the kernel operations of a later stage of the same pass.
    fn append(&mut self, later: ApplyReport) {
        self.applied.extend(later.applied);
        self.failed.extend(later.failed);
    }
}

/// Observes, diffs against `desired` and applies every operation, carrying on past failures so one bad peer does
/// not hold up the others. Returns what was done and what failed.
pub async fn reconcile<K: Kernel>(
    kernel: &mut K,
    scope: &Scope,
    desired: &KernelState,
) -> Result<ApplyReport, KernelError> {
    // One kind at a time: a kind's observation is diffed and dropped, and its additions applied, before the next
    // kind is read, so a full pass never holds the whole kernel state beside the whole desired state (at 10,000
    // peers each is megabytes). The order is the diff's: devices, additions kind by kind, deletions in reverse,
    // stale devices last. Reading a kind after the devices changed sees a re-created device empty, as it is.
    let links = diff_links(desired, &kernel.observe_kind(scope, ObjectKind::Links).await?.links);
    let mut report = ApplyReport::default();
    // Room for the most a pass can add (every desired object) at once: growing the list stage by stage would
    // copy a cold start's 30,000 operations twice. Pages never written are never resident.
    report.applied.reserve(desired.object_count());
    report.append(apply_in_order(kernel, links.first).await);
    let mut deletions = Vec::new();
    for kind in ObjectKind::ON_DEVICES {
        let (additions, stale) = diff_kind(desired, &kernel.observe_kind(scope, kind).await?, kind);
        report.append(apply_in_order(kernel, additions).await);
        deletions.push(stale);
    }
    for stale in deletions.into_iter().rev() {
        report.append(apply_in_order(kernel, stale).await);
    }
    report.append(apply_in_order(kernel, links.last).await);
    Ok(report)
}

/// Applies `ops` (a diff's output, in its order), carrying on past failures.
pub async fn apply_in_order<K: Kernel>(kernel: &mut K, ops: Vec<Op>) -> ApplyReport {
    // A run of operations of one kind touches distinct keys, so its operations are independent and may overlap.
    // The runs themselves stay in the diff's order: links first, a route after its neighbour and FDB entry,
    // every addition before any deletion. The runs are applied from `ops` in place and the report takes `ops`
    // itself: a cold start's 30,000 operations exist once, not once per stage.
    let mut failures: Vec<(usize, KernelError)> = Vec::new();
    let mut start = 0;
    while let Some(first) = ops.get(start) {
        let kind = first.kind();
        let end = start + ops[start..].iter().take_while(|op| op.kind() == kind).count();
        let results = kernel.apply_all(&ops[start..end]).await;
        failures.extend(results.into_iter().enumerate().filter_map(|(i, r)| r.err().map(|e| (start + i, e))));
        start = end;
    }
    let mut report = ApplyReport::default();
    if failures.is_empty() {
        report.applied = ops;
        return report;
    }
    let mut failures = failures.into_iter().peekable();
    for (position, op) in ops.into_iter().enumerate() {
        match failures.next_if(|(at, _)| *at == position) {
            Some((_, e)) => report.failed.push((op, e)),
            None => report.applied.push(op),
        }
    }
    report
}
