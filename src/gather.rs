//! Evidence sources other than a registry, for `check` and for servers without a registry
//! client: [`Offline`] looks at nothing, [`Replay`] answers from evidence written down before
//! (a decision record's), [`NoRegistry`] fails closed. Each answers every check it is asked,
//! so a decision never has to guess what a missing outcome means.

use std::collections::BTreeMap;

use futures::FutureExt as _;
use futures::future::BoxFuture;

use crate::evidence::{
    Deadline, EntryEvidence, Evidence, EvidenceRequest, Gather, ImageEvidence, Outcome, Source,
};

/// Answers every check with `outcome`, without a digest.
fn answer_all(requests: &[EvidenceRequest], outcome: &Outcome) -> Evidence {
    let mut evidence = Evidence::default();
    for request in requests {
        let image = evidence
            .images
            .entry(request.image.clone())
            .or_insert_with(|| ImageEvidence {
                digest: request.reference.digest().map(str::to_owned),
                digest_error: None,
                digest_source: None,
                entries: BTreeMap::new(),
            });
        for check in &request.checks {
            image.entries.insert(
                check.entry.clone(),
                EntryEvidence {
                    outcome: outcome.clone(),
                    source: Source::Fresh,
                },
            );
        }
    }
    evidence
}

/// `check --offline`: no registry is contacted, and every check is skipped (a warning, no
/// violation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

impl Gather for Offline {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        _deadline: Deadline,
    ) -> BoxFuture<'a, Evidence> {
        let outcome = Outcome::Skipped {
            reason: "offline: no registry was contacted".to_owned(),
        };
        futures::future::ready(answer_all(requests, &outcome)).boxed()
    }
}

/// A server or command built without a registry client: every check is unavailable, so every
/// image a signature entry governs fails closed.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRegistry;

impl Gather for NoRegistry {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        _deadline: Deadline,
    ) -> BoxFuture<'a, Evidence> {
        let outcome = Outcome::Unavailable {
            reason: "no registry client is configured".to_owned(),
        };
        futures::future::ready(answer_all(requests, &outcome)).boxed()
    }
}

/// `check --evidence FILE`: the evidence of earlier decisions, read from their records. A
/// check it holds no outcome for is unavailable, saying so.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    evidence: Evidence,
    /// Where the evidence came from, for messages.
    origin: String,
}

/// Why a text holds no evidence to replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(String);

impl Replay {
    /// Replays `evidence`, read from `origin`.
    pub fn new(evidence: Evidence, origin: impl Into<String>) -> Replay {
        Replay {
            evidence,
            origin: origin.into(),
        }
    }

    /// Reads the evidence in `text`: decision records, one JSON object per line (as imagegate
    /// logs them with `--log-format json`; lines without `evidence` are passed over), or one
    /// evidence object `{"images": {…}}` (a record's `evidence` field on its own, pretty-printed
    /// or not). When several records hold the same image, the later one counts. Anything else
    /// is an error naming the line.
    pub fn parse(text: &str, origin: &str) -> Result<Replay, ReplayError> {
        let bad = |what: String| ReplayError(format!("{origin}: {what}"));
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Err(bad(
                "the file is empty; give a decision record line or an evidence object".into(),
            ));
        }
        // One JSON value (possibly over several lines): a record or a bare evidence object.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
            return Self::from_value(value)
                .map_err(bad)?
                .map(|evidence| Replay::new(evidence, origin))
                .ok_or_else(|| bad("the JSON object is neither a decision record with evidence nor an evidence object {\"images\": …}".into()));
        }
        let mut evidence = Evidence::default();
        let mut records = 0;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| bad(format!("line {}: not a JSON decision record: {e}", i + 1)))?;
            if let Some(found) =
                Self::from_value(value).map_err(|e| bad(format!("line {}: {e}", i + 1)))?
            {
                records += 1;
                evidence.images.extend(found.images);
            }
        }
        if records == 0 {
            return Err(bad("no line is a decision record with evidence (records carry `evidence` only when a signature entry governed an image)".into()));
        }
        Ok(Replay::new(evidence, origin))
    }

    /// The evidence in one JSON value: a record's `evidence`, or the value itself when it is an
    /// evidence object; `None` for a record without evidence.
    fn from_value(value: serde_json::Value) -> Result<Option<Evidence>, String> {
        let serde_json::Value::Object(mut object) = value else {
            return Err("not a JSON object".into());
        };
        let evidence = match object.remove("evidence") {
            Some(e) => e,
            // A record without evidence has `images` too (its verdicts), and a `target`.
            None if object.contains_key("images") && !object.contains_key("target") => {
                serde_json::Value::Object(object)
            }
            None => return Ok(None),
        };
        serde_json::from_value(evidence)
            .map(Some)
            .map_err(|e| format!("the evidence cannot be read: {e}"))
    }

    /// The evidence replayed.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }
}

impl Gather for Replay {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        _deadline: Deadline,
    ) -> BoxFuture<'a, Evidence> {
        let mut out = Evidence::default();
        for request in requests {
            let recorded = self.evidence.images.get(&request.image);
            let image = out
                .images
                .entry(request.image.clone())
                .or_insert_with(|| ImageEvidence {
                    entries: BTreeMap::new(),
                    ..recorded.cloned().unwrap_or_else(|| ImageEvidence {
                        digest: request.reference.digest().map(str::to_owned),
                        digest_error: Some(format!(
                            "{} holds no evidence for this image",
                            self.origin
                        )),
                        digest_source: None,
                        entries: BTreeMap::new(),
                    })
                });
            for check in &request.checks {
                let entry = recorded
                    .and_then(|r| r.entries.get(&check.entry))
                    .cloned()
                    .unwrap_or_else(|| EntryEvidence {
                        outcome: Outcome::Unavailable {
                            reason: format!(
                                "{} holds no outcome of this entry for this image",
                                self.origin
                            ),
                        },
                        source: Source::Fresh,
                    });
                image.entries.insert(check.entry.clone(), entry);
            }
        }
        futures::future::ready(out).boxed()
    }
}
