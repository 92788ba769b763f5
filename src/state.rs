//! State shared between the policy sources (files, operator) and the webhook: the current
//! policy snapshot and readiness. A request reads both without taking a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::policy::Snapshot;

/// The snapshot of compiled policies in force; swapped whole on every change.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// What `/readyz` reports: ready once policies are loaded, not ready while draining. The serving
/// certificate's presence is read from the TLS resolver.
#[derive(Debug, Default)]
pub struct Readiness {
    policies_loaded: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Marks the first full set of policies as loaded.
    pub fn set_policies_loaded(&self) {
        self.policies_loaded.store(true, Ordering::Release);
    }
    /// Whether the first full set of policies is loaded.
    pub fn policies_loaded(&self) -> bool {
        self.policies_loaded.load(Ordering::Acquire)
    }
    /// Marks the process as shutting down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
    /// Whether the process is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
