//! Policies: the `ImagePolicy` wire type, its compilation, and the immutable [`Snapshot`] of all
//! compiled policies that decisions read.

mod compile;
pub mod crd;
mod matcher;
pub mod pattern;
mod selector;
mod signatures;
mod snapshot;

pub use compile::{
    BreakGlassRule, CompileCache, CompileError, CompiledPolicy, ListId, PatternList, compile,
    compile_shared, compile_with, parse_duration, validate,
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
#[cfg(test)]
pub(crate) use snapshot::assert_rebuilt;
pub use snapshot::{
    ImageMatches, ResolvedImage, Settings, Snapshot, SnapshotBuilder, UnmatchedImages,
};
