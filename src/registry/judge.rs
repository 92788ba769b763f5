//! What the signatures read for one digest make of one signature entry. Both places a signature
//! may be found are judged together — the `.sig` layers ([`cosign`](super::cosign)) and the
//! bundle referrers ([`referrers`](super::referrers)) — and either suffices: the first
//! signature that verifies as a whole under the entry's verifier decides. Otherwise the outcome
//! is unavailable when something could not be read (it might have been the one), else not
//! verified, saying why.

use super::client::Fault;
use super::cosign::{Layer, Signatures, repository_name};
use super::referrers::{Bundle, Bundles};
use crate::evidence::{Outcome, SignatureFormat};
use crate::signature::Verifier;
use crate::signature::bundle::{self, Image};
use crate::signature::cosign::verify_signature_layer;

/// At most this many distinct reasons are listed in a not-verified message.
const MAX_REASONS: usize = 3;

/// Everything read for one digest, once for every verifier.
#[derive(Debug, Clone)]
pub struct Found {
    /// The `.sig` layers.
    pub cosign: Result<Signatures, Fault>,
    /// The bundle referrers.
    pub bundles: Result<Bundles, Fault>,
}

/// The outcome for `verifier`; `now` is the current Unix time (a keyless signature's signing
/// time when nothing proves one).
pub fn judge(
    found: &Found,
    verifier: &Verifier,
    registry: &str,
    repository: &str,
    digest: &str,
    now: i64,
) -> Outcome {
    let repo = repository_name(registry, repository);
    let verified = |format, signer| Outcome::Verified {
        digest: digest.to_owned(),
        format,
        signer,
    };
    let mut seen = 0;
    let mut reasons: Vec<String> = Vec::new();
    let mut unavailable: Vec<&str> = Vec::new();
    let mut empty_manifest = false;

    match &found.cosign {
        Err(fault) => unavailable.push(fault.message()),
        Ok(Signatures::None) => {}
        Ok(Signatures::Found(layers)) => {
            empty_manifest = layers.is_empty();
            for layer in layers {
                seen += 1;
                match layer {
                    Layer::Payload {
                        payload,
                        annotations,
                    } => {
                        match verify_signature_layer(payload, annotations, verifier, digest, now) {
                            Ok(signer) => return verified(SignatureFormat::CosignTag, signer),
                            Err(r) => reasons.push(r.to_string()),
                        }
                    }
                    Layer::Foreign(why) => reasons.push(why.clone()),
                    Layer::Unreadable(why) => unavailable.push(why),
                }
            }
        }
    }

    match &found.bundles {
        Err(fault) => unavailable.push(fault.message()),
        Ok(bundles) => {
            let manifest = match &bundles.manifest {
                Some(Ok(bytes)) => Some(bytes.as_slice()),
                _ => None,
            };
            for b in &bundles.read {
                seen += 1;
                match b {
                    Bundle::Read { message: true, .. } if manifest.is_none() => {
                        if let Some(Err(why)) = &bundles.manifest {
                            unavailable.push(why);
                        }
                    }
                    Bundle::Read { bytes, .. } => {
                        let image = Image { digest, manifest };
                        match bundle::verify(bytes, &image, verifier, now) {
                            Ok(signer) => return verified(SignatureFormat::Bundle, signer),
                            Err(r) => reasons.push(r.to_string()),
                        }
                    }
                    Bundle::Foreign(why) => reasons.push(why.clone()),
                    Bundle::Unreadable(why) => unavailable.push(why),
                }
            }
            // Bundles left unread explain the outcome best: first.
            if let Some(why) = &bundles.unread {
                unavailable.insert(0, why);
            }
        }
    }

    if let Some(first) = unavailable.first() {
        let more = match unavailable.len() {
            1 => String::new(),
            2 => " (and 1 more)".to_owned(),
            n => format!(" (and {} more)", n - 1),
        };
        return Outcome::Unavailable {
            reason: format!("{first}{more}; no other signature for {digest} in {repo} verifies"),
        };
    }
    if seen == 0 {
        let why = if empty_manifest {
            " (its signature manifest has no layers)"
        } else {
            ""
        };
        return Outcome::NotVerified {
            reason: format!("no signature for {digest} in {repo}{why}"),
        };
    }
    let count = match seen {
        1 => "1 signature".to_owned(),
        n => format!("{n} signatures"),
    };
    Outcome::NotVerified {
        reason: format!(
            "{count} for {digest} in {repo}, none valid: {}",
            summarize(reasons)
        ),
    }
}

/// The distinct reasons, at most [`MAX_REASONS`], with how many others there were.
fn summarize(mut reasons: Vec<String>) -> String {
    let total = reasons.len();
    let mut seen = std::collections::HashSet::new();
    reasons.retain(|r| seen.insert(r.clone()));
    let distinct = reasons.len();
    reasons.truncate(MAX_REASONS);
    let mut out = reasons.join("; ");
    if distinct > MAX_REASONS {
        out.push_str(&format!("; and {} other reasons", distinct - MAX_REASONS));
    }
    if total > 1 && distinct == 1 {
        out.push_str(" (each)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::PublicKey;
    use crate::signature::cosign::Annotations;
    use crate::signature::sigstore_tests::Cases;
    use crate::signature::tests::{p256, sign};
    use base64::Engine as _;

    const DIGEST: &str = "sha256:3f0000000000000000000000000000000000000000000000000000000000e1";

    fn payload(digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r.example/team/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn signed(pair: &ring::signature::EcdsaKeyPair, digest: &str) -> Layer {
        let payload = payload(digest);
        let signature = base64::engine::general_purpose::STANDARD.encode(sign(pair, &payload));
        Layer::Payload {
            payload,
            annotations: Annotations {
                signature: Some(signature),
                ..Annotations::default()
            },
        }
    }

    fn layers(layers: Vec<Layer>) -> Found {
        Found {
            cosign: Ok(Signatures::Found(layers)),
            bundles: Ok(Bundles::default()),
        }
    }

    fn judged(found: &Found, verifier: &Verifier) -> Outcome {
        judge(found, verifier, "r.example", "team/app", DIGEST, 0)
    }

    #[test]
    fn the_first_layer_that_verifies_as_a_whole_decides() {
        let (pair, pem) = p256();
        let (other, _) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let outcome = judged(
            &layers(vec![
                signed(&other, DIGEST),
                Layer::Unreadable("layer 2: 503".into()),
                signed(&pair, DIGEST),
            ]),
            &verifier,
        );
        assert_eq!(
            outcome,
            Outcome::Verified {
                digest: DIGEST.to_owned(),
                format: SignatureFormat::CosignTag,
                signer: verifier.describe(),
            }
        );
    }

    #[test]
    fn no_layer_that_verifies() {
        let (pair, pem) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let nothing = Found {
            cosign: Ok(Signatures::None),
            bundles: Ok(Bundles::default()),
        };
        assert_eq!(
            judged(&nothing, &verifier),
            Outcome::NotVerified {
                reason: format!("no signature for {DIGEST} in r.example/team/app")
            }
        );
        let other = "sha256:4a0000000000000000000000000000000000000000000000000000000000b2";
        let Outcome::NotVerified { reason } = judged(
            &layers(vec![
                signed(&pair, other),
                Layer::Foreign("layer 2 is x".into()),
            ]),
            &verifier,
        ) else {
            panic!("not verified")
        };
        assert!(
            reason.starts_with(&format!("2 signatures for {DIGEST} in r.example/team/app, none valid: the signature is for {other}")),
            "{reason}"
        );
        assert!(reason.ends_with("; layer 2 is x"), "{reason}");
        assert!(matches!(
            judged(&layers(vec![]), &verifier),
            Outcome::NotVerified { reason } if reason.ends_with("(its signature manifest has no layers)")
        ));
    }

    #[test]
    fn an_unreadable_layer_makes_it_unavailable_when_nothing_verifies() {
        let (_, pem) = p256();
        let (other, _) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let outcome = judged(
            &layers(vec![
                Layer::Unreadable("layer 1 is too big".into()),
                signed(&other, DIGEST),
                Layer::Unreadable("layer 3: 503".into()),
            ]),
            &verifier,
        );
        assert_eq!(
            outcome,
            Outcome::Unavailable {
                reason: format!(
                    "layer 1 is too big (and 1 more); no other signature for {DIGEST} in r.example/team/app verifies"
                )
            }
        );
    }

    /// The bundles of the committed Sigstore cases, read as the referrers of their digest.
    fn bundles(c: &Cases, names: &[&str], manifest: Option<Result<Vec<u8>, String>>) -> Bundles {
        Bundles {
            read: names
                .iter()
                .map(|n| {
                    let bytes = c.bundle(n);
                    Bundle::Read {
                        message: bundle::is_message_signature(&bytes),
                        bytes,
                    }
                })
                .collect(),
            unread: None,
            manifest,
        }
    }

    #[test]
    fn either_format_suffices_and_the_signer_is_the_identity_found() {
        let c = Cases::committed();
        let release = c.release();
        let judge_at = |found: &Found| {
            judge(
                found,
                &release,
                "r.example",
                "corp/app",
                &c.digest,
                crate::signature::sigstore_tests::now(),
            )
        };
        // A bad `.sig` layer and a good bundle: verified, by the bundle's identity.
        let (pair, _) = p256();
        let found = Found {
            cosign: Ok(Signatures::Found(vec![signed(&pair, &c.digest)])),
            bundles: Ok(bundles(&c, &["dsse-other-subject", "dsse-v03"], None)),
        };
        let Outcome::Verified { format, signer, .. } = judge_at(&found) else {
            panic!("{:?}", judge_at(&found))
        };
        assert_eq!(format, SignatureFormat::Bundle);
        assert!(
            signer.contains(crate::signature::sigstore_tests::SUBJECT),
            "{signer}"
        );

        // Bundles only, none for this identity: every reason is given.
        let found = Found {
            cosign: Ok(Signatures::None),
            bundles: Ok(bundles(
                &c,
                &["dsse-other-subject", "dsse-other-issuer"],
                None,
            )),
        };
        let Outcome::NotVerified { reason } = judge_at(&found) else {
            panic!("not verified")
        };
        assert!(reason.starts_with("2 signatures for "), "{reason}");
        assert!(reason.contains("https://github.com/evil/app/"), "{reason}");
        assert!(reason.contains("https://accounts.example.com"), "{reason}");

        // A message signature whose manifest could not be read: unavailable, saying why.
        let found = Found {
            cosign: Ok(Signatures::None),
            bundles: Ok(bundles(
                &c,
                &["message-v02"],
                Some(Err("503 for the manifest".into())),
            )),
        };
        assert!(
            matches!(judge_at(&found), Outcome::Unavailable { reason } if reason.starts_with("503 for the manifest"))
        );
        let found = Found {
            cosign: Ok(Signatures::None),
            bundles: Ok(bundles(&c, &["message-v02"], Some(Ok(c.manifest.clone())))),
        };
        assert!(matches!(
            judge_at(&found),
            Outcome::Verified {
                format: SignatureFormat::Bundle,
                ..
            }
        ));

        // More bundles than are read, none verifying: unavailable, saying so.
        let mut over = bundles(&c, &["dsse-untrusted-ca"], None);
        over.unread = Some("r.example/corp/app lists 65 signature bundles".into());
        let found = Found {
            cosign: Ok(Signatures::None),
            bundles: Ok(over),
        };
        assert!(
            matches!(judge_at(&found), Outcome::Unavailable { reason } if reason.starts_with("r.example/corp/app lists 65"))
        );
    }

    #[test]
    fn summaries_list_distinct_reasons() {
        assert_eq!(summarize(vec!["a".into()]), "a");
        assert_eq!(summarize(vec!["a".into(), "a".into()]), "a (each)");
        assert_eq!(
            summarize(vec![
                "a".into(),
                "b".into(),
                "c".into(),
                "d".into(),
                "e".into()
            ]),
            "a; b; c; and 2 other reasons"
        );
    }
}
