//! Policies: the `ImagePolicy` wire type, its compilation, and the immutable [`Snapshot`] of all
//! compiled policies that decisions read.

mod compile;
pub mod crd;
pub mod pattern;
mod selector;
mod snapshot;

pub use compile::{
    BreakGlassRule, CompileError, CompiledPolicy, PatternList, compile, parse_duration,
};
pub use crd::{
    AUDIT_VIOLATIONS_LIMIT, AuditStatus, AuditViolation, BreakGlass, ImagePolicy, ImagePolicySpec,
    ImagePolicyStatus, Mode,
};
pub use selector::Selector;
pub use snapshot::{ImageMatches, ResolvedImage, Settings, Snapshot, UnmatchedImages};
