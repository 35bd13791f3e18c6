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
    for op in ops {
        match kernel.apply(&op).await {
            Ok(()) => report.applied.push(op),
            Err(e) => report.failed.push((op, e)),
        }
    }
    Ok(report)
}
