//! Stand-in for the shared evidence types until they land on main (same shapes as agreed);
//! replaced wholesale by the real module on merge.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::TransparencyLog;
use crate::reference::Reference;
use crate::signature::Verifier;

/// One signature entry that governs an image.
#[derive(Debug, Clone)]
pub struct EntryCheck {
    /// `POLICY/ENTRY`.
    pub entry: String,
    pub verifier: Arc<Verifier>,
    pub transparency_log: TransparencyLog,
}

/// What the adapter must find out about one image.
#[derive(Debug, Clone)]
pub struct EvidenceRequest {
    pub image: String,
    pub reference: Reference,
    pub checks: Vec<EntryCheck>,
}

/// Everything gathered for one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub images: BTreeMap<String, ImageEvidence>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEvidence {
    pub digest: Option<String>,
    pub digest_error: Option<String>,
    pub digest_source: Option<Source>,
    pub entries: BTreeMap<String, EntryEvidence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryEvidence {
    pub outcome: Outcome,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Outcome {
    Verified {
        digest: String,
        format: SignatureFormat,
        signer: String,
    },
    NotVerified {
        reason: String,
    },
    Unavailable {
        reason: String,
    },
    Skipped {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    Fresh,
    Cache,
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignatureFormat {
    CosignTag,
    Bundle,
}

/// When registry work for a request must end.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: std::time::Instant,
    pub budget: std::time::Duration,
}

/// Where evidence comes from.
pub trait Gather: Send + Sync {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        deadline: Deadline,
    ) -> futures::future::BoxFuture<'a, Evidence>;
}
