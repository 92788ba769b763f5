//! Evidence sources other than a registry, for `check` and for servers without a registry
//! client (besides [`Offline`](crate::evidence::Offline)): [`Replay`] answers from evidence
//! written down before (a decision record's), [`NoRegistry`] fails closed. Each answers every check it is asked,
//! so a decision never has to guess what a missing outcome means. And [`gather_each`], which
//! asks any source for many images a few at a time, as a background audit pass does.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};

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

/// Gathers the evidence for `requests` from `source` one image at a time, at most `at_once`
/// images in flight, until `deadline`: for the many images of an audit pass, so that they
/// never crowd out the lookups of admission requests sharing the same registry client. Images
/// not yet asked for when the deadline passes are not asked for at all (their lookups would
/// all start at once): every check of theirs is unavailable with the deadline's reason.
pub fn gather_each<'a>(
    source: &'a dyn Gather,
    requests: &'a [EvidenceRequest],
    deadline: Deadline,
    at_once: usize,
) -> BoxFuture<'a, Evidence> {
    // Made here and run as the stream polls them: each looks at the clock when it starts.
    let asks: Vec<_> = requests
        .chunks(1)
        .map(|one| ask(source, one, deadline))
        .collect();
    let mut answers = futures::stream::iter(asks).buffer_unordered(at_once.max(1));
    async move {
        let mut out = Evidence::default();
        while let Some(found) = answers.next().await {
            out.images.extend(found.images);
        }
        out
    }
    .boxed()
}

/// One step of [`gather_each`]: `source`'s answer, or, past the deadline, unavailable without
/// asking.
async fn ask(source: &dyn Gather, requests: &[EvidenceRequest], deadline: Deadline) -> Evidence {
    if std::time::Instant::now() >= deadline.at {
        let missed = Outcome::Unavailable {
            reason: deadline.missed(),
        };
        answer_all(requests, &missed)
    } else {
        source.gather(requests, deadline).await
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::evidence::{EntryCheck, Offline};
    use crate::policy::TransparencyLog;
    use crate::policy::test_keys::P256;
    use crate::reference::Reference;
    use crate::signature::{PublicKey, Verifier};

    const D: &str = "sha256:3f4ac9e1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b77e1";

    fn request(image: &str, entries: &[&str]) -> EvidenceRequest {
        let verifier = Arc::new(Verifier::key(PublicKey::from_pem(P256).unwrap()));
        EvidenceRequest {
            image: image.to_owned(),
            reference: Reference::parse(image).unwrap(),
            checks: entries
                .iter()
                .map(|e| EntryCheck {
                    entry: (*e).to_owned(),
                    verifier: Arc::clone(&verifier),
                    transparency_log: TransparencyLog::Skip,
                })
                .collect(),
        }
    }

    fn deadline() -> Deadline {
        Deadline {
            at: Instant::now(),
            budget: Duration::ZERO,
        }
    }

    fn gather(source: &dyn Gather, requests: &[EvidenceRequest]) -> Evidence {
        futures::executor::block_on(source.gather(requests, deadline()))
    }

    fn result(e: &Evidence, image: &str, entry: &str) -> serde_json::Value {
        serde_json::to_value(&e.images[image].entries[entry].outcome).unwrap()["result"].clone()
    }

    /// A source that answers every check verified after a moment, counting how many images
    /// it is asked for at once.
    #[derive(Default)]
    struct Counting {
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        asked: std::sync::atomic::AtomicUsize,
    }

    impl Gather for Counting {
        fn gather<'a>(
            &'a self,
            requests: &'a [EvidenceRequest],
            _deadline: Deadline,
        ) -> BoxFuture<'a, Evidence> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                let n = self.now.fetch_add(requests.len(), SeqCst) + requests.len();
                self.most.fetch_max(n, SeqCst);
                self.asked.fetch_add(requests.len(), SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.now.fetch_sub(requests.len(), SeqCst);
                let verified = Outcome::Verified {
                    digest: D.to_owned(),
                    format: crate::evidence::SignatureFormat::CosignTag,
                    signer: "k".to_owned(),
                };
                answer_all(requests, &verified)
            })
        }
    }

    #[test]
    fn gather_each_asks_a_few_images_at_a_time_until_the_deadline() {
        use std::sync::atomic::Ordering::SeqCst;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let asked: Vec<EvidenceRequest> = (0..20)
            .map(|i| request(&format!("quay.io/a/b:{i}"), &["p/x"]))
            .collect();
        let source = Counting::default();
        let e = runtime.block_on(gather_each(
            &source,
            &asked,
            Deadline::after(Duration::from_secs(60)),
            4,
        ));
        assert_eq!(e.images.len(), 20);
        assert!(
            e.images
                .values()
                .all(|i| i.entries["p/x"].outcome.as_str() == "verified")
        );
        assert_eq!(
            source.most.load(SeqCst),
            4,
            "at most four at once, and four"
        );

        // Past the deadline, nothing more is asked for: every check is unavailable.
        let source = Counting::default();
        let e = runtime.block_on(gather_each(&source, &asked, deadline(), 4));
        assert_eq!(source.asked.load(SeqCst), 0);
        assert_eq!(e.images.len(), 20);
        let outcome = &e.images["quay.io/a/b:7"].entries["p/x"].outcome;
        assert_eq!(
            outcome,
            &Outcome::Unavailable {
                reason: "verification did not finish within 0s".to_owned()
            }
        );
    }

    #[test]
    fn offline_skips_and_no_registry_fails_every_check() {
        let asked = [
            request("quay.io/a/b:1", &["p/x", "q/y"]),
            request(
                "quay.io/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                &["p/x"],
            ),
        ];
        let e = gather(&Offline, &asked);
        assert_eq!(e.images.len(), 2);
        for (image, entry) in [("quay.io/a/b:1", "p/x"), ("quay.io/a/b:1", "q/y")] {
            assert_eq!(result(&e, image, entry), "skipped");
        }
        let pinned = &e.images[asked[1].image.as_str()];
        assert!(pinned.digest.as_deref().unwrap().starts_with("sha256:0123"));
        let e = gather(&NoRegistry, &asked);
        assert_eq!(result(&e, "quay.io/a/b:1", "q/y"), "unavailable");
    }

    fn record_line(evidence: &serde_json::Value) -> String {
        serde_json::json!({
            "timestamp": "2026-11-22T12:00:00Z", "target": "imagegate::decision",
            "images": [{"image": "quay.io/a/b:1", "verdict": "allowed"}],
            "evidence": evidence,
        })
        .to_string()
    }

    fn image_evidence(result: &str) -> serde_json::Value {
        let outcome = if result == "verified" {
            serde_json::json!({"result": "verified", "digest": D, "format": "cosignTag", "signer": "k"})
        } else {
            serde_json::json!({"result": result, "reason": "no signature found"})
        };
        serde_json::json!({"digest": D, "digestError": null, "digestSource": "fresh",
            "entries": {"p/x": {"outcome": outcome, "source": "cache"}}})
    }

    #[test]
    fn replay_reads_records_and_bare_evidence() {
        let first = record_line(
            &serde_json::json!({"images": {"quay.io/a/b:1": image_evidence("notVerified")}}),
        );
        let no_evidence =
            serde_json::json!({"target": "imagegate::decision", "images": []}).to_string();
        let later = record_line(
            &serde_json::json!({"images": {"quay.io/a/b:1": image_evidence("verified")}}),
        );
        let text = format!("{first}\n\n{no_evidence}\n{later}\n");
        let replay = Replay::parse(&text, "records.log").unwrap();
        let e = gather(
            &replay,
            &[
                request("quay.io/a/b:1", &["p/x", "p/other"]),
                request("quay.io/z:1", &["p/x"]),
            ],
        );
        assert_eq!(
            result(&e, "quay.io/a/b:1", "p/x"),
            "verified",
            "the later record counts"
        );
        assert_eq!(
            e.images["quay.io/a/b:1"].entries["p/x"].source,
            Source::Cache
        );
        assert_eq!(e.images["quay.io/a/b:1"].digest.as_deref(), Some(D));
        let missing =
            serde_json::to_value(&e.images["quay.io/a/b:1"].entries["p/other"].outcome).unwrap();
        assert_eq!(missing["result"], "unavailable");
        assert!(
            missing["reason"]
                .as_str()
                .unwrap()
                .contains("records.log holds no outcome"),
            "{missing}"
        );
        assert!(
            e.images["quay.io/z:1"]
                .digest_error
                .as_deref()
                .unwrap()
                .contains("no evidence for this image")
        );

        // One record, pretty-printed, and a bare evidence object.
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&later).unwrap(),
        )
        .unwrap();
        let bare = serde_json::json!({"images": {"quay.io/a/b:1": image_evidence("verified")}})
            .to_string();
        for text in [pretty, bare] {
            let replay = Replay::parse(&text, "f").unwrap();
            assert_eq!(replay.evidence().images.len(), 1, "{text}");
        }
    }

    #[test]
    fn replay_refuses_what_holds_no_evidence() {
        for (text, says) in [
            ("", "empty"),
            ("not json\n", "line 1: not a JSON decision record"),
            (
                "{\"target\": \"imagegate::decision\", \"images\": []}\n{\"target\": \"x\"}\n",
                "no line is a decision record with evidence",
            ),
            (
                "{\"evidence\": {\"images\": {\"a\": {\"entries\": 3}}}}",
                "the evidence cannot be read",
            ),
            ("[1, 2]", "not a JSON object"),
        ] {
            let e = Replay::parse(text, "f").unwrap_err().to_string();
            assert!(e.starts_with("f: "), "{e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
