//! Evidence: what a decision needs to know about an image that the object does not say — the
//! digest a tag points to now, and whether a signature entry's signature verifies for it.
//!
//! The core stays sans-IO. The snapshot says, as a pure function of the object, which images
//! need which evidence ([`EvidenceRequest`]); an implementation of [`Gather`] (the registry
//! adapter, or `check`'s offline and replay sources) finds it; the decision then consumes the
//! [`Evidence`] as one more plain input. The evidence is written into the decision record and
//! read back from it, so a decision can be replayed without a registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::reference::Reference;
use crate::signature::{TransparencyLog, Verifier};

/// One signature entry that governs an image: how to verify, and how to name the outcome.
#[derive(Debug, Clone)]
pub struct EntryCheck {
    /// `POLICY/ENTRY`: the key of the outcome in [`ImageEvidence::entries`].
    pub entry: String,
    /// How a signature must verify.
    pub verifier: Arc<Verifier>,
    /// Whether a transparency-log entry is required.
    pub transparency_log: TransparencyLog,
}

/// What must be found out about one image.
#[derive(Debug, Clone)]
pub struct EvidenceRequest {
    /// The image as written: the key of the answer in [`Evidence::images`].
    pub image: String,
    /// The image parsed and normalised.
    pub reference: Reference,
    /// The entries to verify; empty when only the digest is wanted.
    pub checks: Vec<EntryCheck>,
}

/// Everything gathered for one object, by image as written. It is written into the decision
/// record and read back from it (`check --evidence`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub images: BTreeMap<String, ImageEvidence>,
}

/// What was found about one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEvidence {
    /// The digest the image runs as: the reference's own digest, or what its tag resolved to.
    /// `None` when the tag could not be resolved; `digest_error` then says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why the tag could not be resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_error: Option<String>,
    /// Where the tag's resolution came from; `None` for a digest-pinned reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_source: Option<Source>,
    /// The outcome of each entry, by [`EntryCheck::entry`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, EntryEvidence>,
}

/// The outcome of one entry for one image, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryEvidence {
    pub outcome: Outcome,
    pub source: Source,
}

/// The outcome of one signature entry for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Outcome {
    /// One signature verified as a whole: where it was found, who signed (a key fingerprint or
    /// an identity), and the digest it signs.
    #[serde(rename_all = "camelCase")]
    Verified {
        digest: String,
        format: SignatureFormat,
        signer: String,
    },
    /// No valid signature, and why: none found, none valid under this key, the payload names
    /// another digest, …
    NotVerified { reason: String },
    /// The registry could not tell: unreachable, TLS failure, 401/403, 5xx, timeout, a
    /// malformed or over-limit artifact, the request's deadline. Fails closed.
    Unavailable { reason: String },
    /// Not looked at (`check --offline`): a warning, no violation.
    Skipped { reason: String },
}

impl Outcome {
    /// The outcome's name, as in records and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Verified { .. } => "verified",
            Outcome::NotVerified { .. } => "notVerified",
            Outcome::Unavailable { .. } => "unavailable",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}

/// Where an outcome or a tag resolution came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// Looked up for this request.
    Fresh,
    /// From the cache, within its time to live.
    Cache,
    /// A verification from the cache past its time to live, used because the registry is
    /// unavailable (within `--signature-stale-ttl`).
    Stale,
}

impl Source {
    /// The source's name, as in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fresh => "fresh",
            Source::Cache => "cache",
            Source::Stale => "stale",
        }
    }
}

/// Where a verifying signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignatureFormat {
    /// A layer of the cosign signature manifest tagged `sha256-<hex>.sig`.
    CosignTag,
    /// A Sigstore bundle attached to the image as an OCI referrer.
    Bundle,
}

/// When the registry work for one request must end, and the time it was given, for the
/// message of what did not finish ("verification did not finish within 9s").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub budget: Duration,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// The reason given for a check that did not finish in time.
    pub fn missed(&self) -> String {
        format!(
            "verification did not finish within {}",
            jiff::SignedDuration::try_from(self.budget)
                .map(|d| format!("{d:#}"))
                .unwrap_or_else(|_| format!("{:?}", self.budget))
        )
    }
}

/// A source of evidence: the registry adapter online, or `check`'s offline and replay sources.
pub trait Gather: Send + Sync {
    /// Gathers the evidence for `requests`, returning by `deadline.at` with whatever has
    /// finished; what has not is [`Outcome::Unavailable`] with [`Deadline::missed`], while the
    /// work may go on to fill a cache, so that a retry finds it.
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        deadline: Deadline,
    ) -> futures::future::BoxFuture<'a, Evidence>;
}

/// `check --offline`: nothing is looked up; every entry is [`Outcome::Skipped`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

/// The reason of [`Offline`]'s outcomes.
pub const OFFLINE: &str = "signature not verified (offline)";

impl Offline {
    /// The evidence `check --offline` reports: nothing looked up.
    pub fn evidence(requests: &[EvidenceRequest]) -> Evidence {
        let mut out = Evidence::default();
        for request in requests {
            let image = out.images.entry(request.image.clone()).or_default();
            image.digest = request.reference.digest().map(str::to_owned);
            for check in &request.checks {
                image.entries.insert(
                    check.entry.clone(),
                    EntryEvidence {
                        outcome: Outcome::Skipped {
                            reason: OFFLINE.to_owned(),
                        },
                        source: Source::Fresh,
                    },
                );
            }
        }
        out
    }
}

impl Gather for Offline {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        _deadline: Deadline,
    ) -> futures::future::BoxFuture<'a, Evidence> {
        Box::pin(std::future::ready(Offline::evidence(requests)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_back_as_written() {
        let mut evidence = Evidence::default();
        let image = evidence
            .images
            .entry("registry.corp.example/team/app:1.0".to_owned())
            .or_default();
        image.digest = Some(format!("sha256:{}", "a".repeat(64)));
        image.digest_source = Some(Source::Cache);
        image.entries.insert(
            "prod/release".to_owned(),
            EntryEvidence {
                outcome: Outcome::Verified {
                    digest: format!("sha256:{}", "a".repeat(64)),
                    format: SignatureFormat::CosignTag,
                    signer: format!("sha256:{}", "b".repeat(64)),
                },
                source: Source::Stale,
            },
        );
        image.entries.insert(
            "prod/ci".to_owned(),
            EntryEvidence {
                outcome: Outcome::Unavailable {
                    reason: "registry.corp.example answered 503".to_owned(),
                },
                source: Source::Fresh,
            },
        );
        let json = serde_json::to_string(&evidence).unwrap();
        assert!(json.contains(r#""result":"verified""#), "{json}");
        assert!(json.contains(r#""format":"cosignTag""#), "{json}");
        assert!(json.contains(r#""source":"stale""#), "{json}");
        assert!(json.contains(r#""digestSource":"cache""#), "{json}");
        assert_eq!(serde_json::from_str::<Evidence>(&json).unwrap(), evidence);
    }

    #[test]
    fn offline_skips_every_check() {
        let (_, pem) = crate::signature::tests::p256();
        let verifier = Arc::new(Verifier::key(
            crate::signature::PublicKey::from_pem(&pem).unwrap(),
        ));
        let request = EvidenceRequest {
            image: "nginx:1.27".to_owned(),
            reference: Reference::parse("nginx:1.27").unwrap(),
            checks: vec![EntryCheck {
                entry: "prod/release".to_owned(),
                verifier,
                transparency_log: TransparencyLog::Skip,
            }],
        };
        let evidence = Offline::evidence(&[request]);
        let image = &evidence.images["nginx:1.27"];
        assert_eq!(image.digest, None);
        assert_eq!(
            image.entries["prod/release"].outcome,
            Outcome::Skipped {
                reason: OFFLINE.to_owned()
            }
        );
    }

    #[test]
    fn a_missed_deadline_names_the_budget() {
        assert_eq!(
            Deadline::after(Duration::from_secs(9)).missed(),
            "verification did not finish within 9s"
        );
        assert_eq!(
            Deadline::after(Duration::from_millis(8500)).missed(),
            "verification did not finish within 8s 500ms"
        );
    }
}
