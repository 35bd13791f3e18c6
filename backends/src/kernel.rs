//! The seam between the reconcile logic and the OS: observe what we own, apply one operation.

use std::future::Future;

use crate::diff::Op;
use crate::model::{KernelState, Scope};

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
    #[error("device {0} does not exist")]
    NoSuchDevice(String),
    #[error("netlink: {0}")]
    Netlink(String),
}

impl KernelError {
    pub fn apply(op: &Op, source: std::io::Error) -> KernelError {
        KernelError::Apply { op: op.to_string(), source }
    }
}

/// A network namespace's kernel, as far as weft is concerned.
pub trait Kernel: Send {
    /// Everything inside `scope` that exists now.
    fn observe(&mut self, scope: &Scope) -> impl Future<Output = Result<KernelState, KernelError>> + Send;

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

/// The outcome of one reconcile pass.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: Vec<Op>,
    pub failed: Vec<(Op, KernelError)>,
}

impl ApplyReport {
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Observes, diffs against `desired` and applies every operation, carrying on past failures so one bad peer does
/// not hold up the others. Returns what was done and what failed.
pub async fn reconcile<K: Kernel>(
    kernel: &mut K,
    scope: &Scope,
    desired: &KernelState,
) -> Result<ApplyReport, KernelError> {
    let observed = kernel.observe(scope).await?;
    let ops = crate::diff::diff(desired, &observed);
    let mut report = ApplyReport::default();
    // A run of operations of one kind touches distinct keys, so its operations are independent and may overlap.
    // The runs themselves stay in the diff's order: links first, a route after its neighbour and FDB entry,
    // every addition before any deletion.
    let mut ops = ops.into_iter().peekable();
    while let Some(first) = ops.next() {
        let kind = first.kind();
        let mut phase = vec![first];
        while let Some(op) = ops.next_if(|op| op.kind() == kind) {
            phase.push(op);
        }
        let results = kernel.apply_all(&phase).await;
        for (op, result) in phase.into_iter().zip(results) {
            match result {
                Ok(()) => report.applied.push(op),
                Err(e) => report.failed.push((op, e)),
            }
        }
    }
    Ok(report)
}
