//! Policies: the `ImagePolicy` wire type, its compilation, and the immutable [`Snapshot`] of all
//! compiled policies that decisions read.

mod compile;
pub mod crd;
pub mod pattern;
mod selector;
mod signatures;
mod snapshot;

pub use compile::{
    BreakGlassRule, CompileError, CompiledPolicy, PatternList, compile, compile_with,
    parse_duration, validate,
};
pub use crd::{
    AUDIT_VIOLATIONS_LIMIT, AuditStatus, AuditViolation, BreakGlass, ImagePolicy, ImagePolicySpec,
    ImagePolicyStatus, KeyVerifier, KeylessVerifier, Mode, SecretKeyRef, SignatureEntry,
    TransparencyLog,
};
pub use selector::Selector;
#[cfg(test)]
pub(crate) use signatures::test_keys;
pub use signatures::{SecretKeys, SignatureRule, TrustedRoots};
pub use snapshot::{ImageMatches, ResolvedImage, Settings, Snapshot, UnmatchedImages};
