//! Where honoured break-glass exceptions are reported besides the decision record: the operator
//! writes a Kubernetes Event on the ImagePolicy; `serve` has no cluster, so the decision record
//! (log line), warning, audit annotation and metric are the trail.

use crate::decision::BreakGlassUse;

/// The object a decision was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// Receives every honoured break-glass exception of a non-dry-run admission. Must not block:
/// it is called on the request path.
pub trait EventSink: Send + Sync + 'static {
    /// `object` was admitted thanks to `used`.
    fn break_glass(&self, object: &ObjectRef, used: &BreakGlassUse);
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn break_glass(&self, _object: &ObjectRef, _used: &BreakGlassUse) {}
}
