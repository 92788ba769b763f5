//! The `verifySignatures` rule, without I/O: which images of an object need which signature
//! entries ([`requests`], for the registry adapter to gather), and what the gathered evidence
//! makes of one image ([`judge`], for the decision). Both follow the same snapshot, so the
//! decision looks only for evidence that was asked for.

use std::collections::BTreeMap;

use crate::decision::OldImages;
use crate::evidence::{EntryEvidence, EvidenceRequest, ImageEvidence, Outcome};
use crate::policy::{CompiledPolicy, ImageMatches, ResolvedImage, SignatureRule, Snapshot};
use crate::reference::Reference;
use crate::workload::Workload;

/// The entries of `policy` (at position `pi` in the snapshot) that are for an image it governs
/// with these `matches`: those without patterns of their own, and those whose patterns the
/// snapshot's matcher found the image in. No pattern is matched here.
pub fn candidates<'a>(
    policy: &'a CompiledPolicy,
    pi: usize,
    matches: &ImageMatches,
) -> impl Iterator<Item = &'a SignatureRule> {
    let named = matches.signature_entries(pi);
    policy
        .signatures
        .iter()
        .zip(0u32..)
        .filter(move |(rule, n)| rule.covers_all() || named & (1 << n) != 0)
        .map(|(rule, _)| rule)
}

/// What the registry adapter must find out for the object: per image as written, the
/// signature entries of the applying policies that govern it. Images that no entry governs are
/// not asked for, nor are images an UPDATE leaves as they were (their violations could only
/// warn; the audit judges what runs), nor references that do not parse. Empty, without any
/// work per image, when no applying policy has signature entries.
pub fn requests(
    snapshot: &Snapshot,
    object: &Workload,
    old_object: Option<&Workload>,
    namespace_labels: &BTreeMap<String, String>,
) -> Vec<EvidenceRequest> {
    if !snapshot.has_signature_rules() {
        return Vec::new();
    }
    let signing: Vec<usize> = snapshot
        .applying(namespace_labels)
        .into_iter()
        .filter(|&pi| !snapshot.policies()[pi].signatures.is_empty())
        .collect();
    if signing.is_empty() {
        return Vec::new();
    }
    let old = OldImages::new(old_object);
    let mut out: Vec<EvidenceRequest> = Vec::new();
    for image in &object.images {
        if old.contains(image) {
            continue;
        }
        let resolved = snapshot.resolve(&image.image);
        let ResolvedImage::Valid { reference, matches } = &*resolved else {
            continue;
        };
        for &pi in &signing {
            if !matches.governed(pi) {
                continue;
            }
            for rule in candidates(&snapshot.policies()[pi], pi, matches) {
                let at = match out.iter().position(|r| r.image == image.image) {
                    Some(at) => at,
                    None => {
                        out.push(EvidenceRequest {
                            image: image.image.clone(),
                            reference: reference.clone(),
                            checks: Vec::new(),
                        });
                        out.len() - 1
                    }
                };
                let checks = &mut out[at].checks;
                if !checks.iter().any(|c| c.entry == rule.check.entry) {
                    checks.push(rule.check.clone());
                }
            }
        }
    }
    out
}

/// What the evidence makes of one image under one policy's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// One entry verified a signature over this image's digest.
    Verified,
    /// Not looked at (offline), and nothing verified: a warning, no violation.
    Offline,
    /// Nothing verified: why, per entry (the text after the image in the violation's message).
    NotVerified(String),
}

/// Judges one image (`reference`, as written `image`) against `entries` (non-empty), the
/// entries of one policy that are for it: verified when at least one entry verified a signature
/// over the image's digest. Missing evidence is a failure (fail closed), as is an outcome that
/// claims a digest other than the image's.
pub fn judge<'a>(
    entries: impl Iterator<Item = &'a SignatureRule>,
    reference: &Reference,
    evidence: Option<&ImageEvidence>,
) -> Judgement {
    let digest = reference
        .digest()
        .or_else(|| evidence.and_then(|e| e.digest.as_deref()));
    let mut offline = false;
    let mut reasons: Vec<(&str, String)> = Vec::new();
    let mut all_unavailable = true;
    let (mut keys, mut identities) = (false, false);
    for rule in entries {
        match rule.check.verifier.public_key() {
            Some(_) => keys = true,
            None => identities = true,
        }
        let found: Option<&EntryEvidence> = evidence.and_then(|e| e.entries.get(&rule.check.entry));
        let why = match found.map(|f| &f.outcome) {
            None => "no evidence was gathered for it".to_owned(),
            Some(Outcome::Verified { digest: signed, .. }) => match digest {
                Some(d) if d == signed => return Judgement::Verified,
                Some(d) => {
                    all_unavailable = false;
                    format!(
                        "the verified signature is for {}, not for this image's {}",
                        short(signed),
                        short(d)
                    )
                }
                None => "the evidence says verified, but names no digest of the image".to_owned(),
            },
            Some(Outcome::Skipped { .. }) => {
                offline = true;
                continue;
            }
            Some(Outcome::NotVerified { reason }) => {
                all_unavailable = false;
                reason.clone()
            }
            Some(Outcome::Unavailable { reason }) => format!("could not be checked: {reason}"),
        };
        reasons.push((rule.name.as_str(), why));
    }
    if offline {
        return Judgement::Offline;
    }
    let how = match (keys, identities, reasons.len()) {
        (_, false, 1) => " with this entry's key",
        (_, false, _) => " with the key of one of these entries",
        (false, _, 1) => " as this entry's identity",
        (false, _, _) => " as the identity of one of these entries",
        _ => " with the key, or as the identity, of one of these entries",
    };
    Judgement::NotVerified(failure(
        reference,
        evidence,
        digest,
        &reasons,
        all_unavailable,
        how,
    ))
}

/// The message of a failed judgement, after the image: where it looked, why each entry did not
/// verify, and what would pass.
fn failure(
    reference: &Reference,
    evidence: Option<&ImageEvidence>,
    digest: Option<&str>,
    reasons: &[(&str, String)],
    all_unavailable: bool,
    how: &str,
) -> String {
    // The reasons name the digest and repository themselves ("no signature for sha256:3f…e1 in
    // registry.corp.example/team/app"), and the pinned form at the end gives the digest whole.
    let mut out = String::from("has no verified signature");
    if digest.is_none()
        && let Some(why) = evidence.and_then(|e| e.digest_error.as_deref())
    {
        out.push_str(" (its tag could not be resolved to a digest: ");
        out.push_str(why);
        out.push(')');
    }
    out.push_str(": ");
    for (i, (entry, why)) in reasons.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(entry);
        out.push_str(": ");
        out.push_str(why);
    }
    if all_unavailable {
        out.push_str("; imagegate fails closed: retry once the registry answers");
    } else if let Some(d) = digest {
        out.push_str("; sign ");
        out.push_str(reference.name());
        out.push('@');
        out.push_str(d);
        if let (None, Some(tag)) = (reference.digest(), reference.effective_tag()) {
            out.push_str(" (the digest the tag ");
            out.push_str(tag);
            out.push_str(" names now)");
        }
        out.push_str(how);
    }
    out
}

/// `sha256:3f4ac9…77e1`: enough of a digest to tell it apart in a message.
pub fn short(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 && hex.is_ascii() => {
            format!("{algorithm}:{}…{}", &hex[..6], &hex[hex.len() - 4..])
        }
        _ => digest.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::decision::{Decision, Input, Rule, Verdict, decide};
    use crate::evidence::{Evidence, SignatureFormat, Source};
    use crate::policy::test_keys::{ED25519, P256};
    use crate::policy::{ImagePolicy, Mode, Settings, compile};
    use crate::workload::ContainerType;

    const D1: &str = "sha256:3f4ac9e1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b77e1";
    const D2: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const APP: &str = "registry.corp.example/team/app:1.0";
    const NOW: &str = "2026-11-22T12:00:00Z";

    /// A policy named `name` in `mode` with one key entry per `(entry, key, images)`.
    fn signing(name: &str, mode: &str, entries: &[(&str, &str, Option<&str>)]) -> String {
        let mut yaml =
            format!("metadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  verifySignatures:\n");
        for (entry, key, images) in entries {
            yaml.push_str(&format!("  - name: {entry}\n"));
            if let Some(images) = images {
                yaml.push_str(&format!("    images: [{images}]\n"));
            }
            yaml.push_str("    key:\n      publicKey: |\n");
            for line in key.lines() {
                yaml.push_str(&format!("        {line}\n"));
            }
        }
        yaml
    }

    fn snapshot(policies: &[String]) -> Snapshot {
        let compiled = policies
            .iter()
            .map(|y| compile(&serde_saphyr::from_str::<ImagePolicy>(y).unwrap()).unwrap())
            .collect();
        Snapshot::new(compiled, Settings::default())
    }

    /// A Pod from `(container type, name, image)`.
    fn pod(images: &[(&str, &str, &str)]) -> Workload {
        let images: Vec<_> = images.iter().map(|&(t, n, i)| (t, n, i, None)).collect();
        crate::decision::tests::pod(&images, &[])
    }

    fn labels() -> BTreeMap<String, String> {
        [("kubernetes.io/metadata.name".to_owned(), "prod".to_owned())].into()
    }

    fn decide_on(
        s: &Snapshot,
        object: &Workload,
        old: Option<&Workload>,
        evidence: Option<&Evidence>,
    ) -> Decision {
        decide(
            s,
            &Input {
                object,
                old_object: old,
                namespace_labels: &labels(),
                requester: None,
                now: NOW.parse().unwrap(),
                evidence,
            },
        )
    }

    fn verified(digest: &str) -> EntryEvidence {
        EntryEvidence {
            outcome: Outcome::Verified {
                digest: digest.to_owned(),
                format: SignatureFormat::CosignTag,
                signer: "sha256:key".to_owned(),
            },
            source: Source::Fresh,
        }
    }

    fn outcome(o: Outcome) -> EntryEvidence {
        EntryEvidence {
            outcome: o,
            source: Source::Fresh,
        }
    }

    fn not_verified(reason: &str) -> EntryEvidence {
        outcome(Outcome::NotVerified {
            reason: reason.to_owned(),
        })
    }

    fn unavailable(reason: &str) -> EntryEvidence {
        outcome(Outcome::Unavailable {
            reason: reason.to_owned(),
        })
    }

    fn skipped() -> EntryEvidence {
        outcome(Outcome::Skipped {
            reason: "offline".to_owned(),
        })
    }

    /// Evidence for one image at `digest` (resolved from its tag), with outcomes per entry.
    fn evidence(image: &str, digest: Option<&str>, entries: &[(&str, EntryEvidence)]) -> Evidence {
        let mut e = Evidence::default();
        e.images.insert(
            image.to_owned(),
            ImageEvidence {
                digest: digest.map(str::to_owned),
                digest_error: digest
                    .is_none()
                    .then(|| "the registry answered 503".to_owned()),
                digest_source: Some(Source::Fresh),
                entries: entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            },
        );
        e
    }

    fn rules(d: &Decision) -> Vec<&'static str> {
        d.violations.iter().map(|v| v.rule.as_str()).collect()
    }

    #[test]
    fn outcomes_table() {
        let one = snapshot(&[signing("prod", "Enforce", &[("release", P256, None)])]);
        let two = snapshot(&[signing(
            "prod",
            "Enforce",
            &[("release", P256, None), ("old", ED25519, None)],
        )]);
        let stale = EntryEvidence {
            source: Source::Stale,
            ..verified(D1)
        };
        let sign = format!(
            "sign registry.corp.example/team/app@{D1} (the digest the tag 1.0 names now) with this entry's key"
        );
        let not_verified_says = [
            "container \"app\": image \"registry.corp.example/team/app:1.0\"",
            "(registry.corp.example/team/app:1.0) has no verified signature: release: no signature found; sign",
            sign.as_str(),
        ];
        // snapshot, evidence entries, allowed, violation rules, message parts, warning parts
        type Case<'a> = (
            &'a Snapshot,
            Vec<(&'a str, EntryEvidence)>,
            bool,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let cases: Vec<Case> = vec![
            (
                &one,
                vec![("prod/release", verified(D1))],
                true,
                &[],
                &[],
                &[],
            ),
            (
                &one,
                vec![("prod/release", stale.clone())],
                true,
                &[],
                &[],
                &[],
            ),
            (
                &one,
                vec![("prod/release", not_verified("no signature found"))],
                false,
                &["verifySignatures"],
                &not_verified_says,
                &[],
            ),
            (
                &one,
                vec![("prod/release", unavailable("the registry answered 503"))],
                false,
                &["verifySignatures"],
                &[
                    "release: could not be checked: the registry answered 503",
                    "imagegate fails closed",
                ],
                &[],
            ),
            (
                &one,
                vec![("prod/release", skipped())],
                true,
                &[],
                &[],
                &[
                    "[prod/verifySignatures]",
                    "signature not verified (offline)",
                ],
            ),
            (
                &one,
                vec![],
                false,
                &["verifySignatures"],
                &["release: no evidence was gathered for it"],
                &[],
            ),
            (
                &one,
                vec![("prod/release", verified(D2))],
                false,
                &["verifySignatures"],
                &[
                    "the verified signature is for sha256:012345…cdef, not for this image's sha256:3f4ac9…77e1",
                ],
                &[],
            ),
            // Any of: one entry verifying is enough, whatever the others say.
            (
                &two,
                vec![
                    ("prod/release", unavailable("timeout")),
                    ("prod/old", verified(D1)),
                ],
                true,
                &[],
                &[],
                &[],
            ),
            (
                &two,
                vec![
                    ("prod/release", not_verified("no signature found")),
                    ("prod/old", unavailable("timeout")),
                ],
                false,
                &["verifySignatures"],
                &[
                    "release: no signature found; old: could not be checked: timeout",
                    "with the key of one of these entries",
                ],
                &[],
            ),
            // Offline with another entry failing: nothing can be said, so only a warning.
            (
                &two,
                vec![
                    ("prod/release", not_verified("no signature found")),
                    ("prod/old", skipped()),
                ],
                true,
                &[],
                &[],
                &["signature not verified (offline)"],
            ),
        ];
        for (i, (s, entries, allowed, want_rules, says, warns)) in cases.into_iter().enumerate() {
            let e = evidence(APP, Some(D1), &entries);
            let d = decide_on(s, &pod(&[("containers", "app", APP)]), None, Some(&e));
            assert_eq!(d.allowed, allowed, "case {i}: {:?}", d.violations);
            assert_eq!(rules(&d), want_rules, "case {i}");
            for part in says {
                assert!(
                    d.violations[0].message.contains(part),
                    "case {i}: {}",
                    d.violations[0].message
                );
            }
            assert_eq!(
                d.warnings.len(),
                warns.len().min(1),
                "case {i}: {:?}",
                d.warnings
            );
            for part in warns {
                assert!(d.warnings[0].contains(part), "case {i}: {:?}", d.warnings);
            }
        }
    }

    #[test]
    fn no_evidence_at_all_fails_closed_and_a_tag_that_did_not_resolve_says_so() {
        let s = snapshot(&[signing("prod", "Enforce", &[("release", P256, None)])]);
        let d = decide_on(&s, &pod(&[("containers", "app", APP)]), None, None);
        assert!(!d.allowed);
        assert_eq!(rules(&d), ["verifySignatures"]);

        let e = evidence(
            APP,
            None,
            &[("prod/release", unavailable("the registry answered 503"))],
        );
        let d = decide_on(&s, &pod(&[("containers", "app", APP)]), None, Some(&e));
        let m = &d.violations[0].message;
        assert!(
            m.contains("has no verified signature (its tag could not be resolved to a digest: the registry answered 503)"),
            "{m}"
        );
        assert!(!m.contains("sign "), "no digest, no pinned form: {m}");
    }

    #[test]
    fn a_pinned_image_is_judged_at_its_own_digest() {
        let s = snapshot(&[signing("prod", "Enforce", &[("release", P256, None)])]);
        let pinned = format!("registry.corp.example/team/app@{D1}");
        let e = evidence(&pinned, Some(D1), &[("prod/release", verified(D1))]);
        assert!(decide_on(&s, &pod(&[("containers", "app", &pinned)]), None, Some(&e)).allowed);
        // Evidence claiming the image is another digest cannot make a signature of that one count.
        let e = evidence(&pinned, Some(D2), &[("prod/release", verified(D2))]);
        let d = decide_on(&s, &pod(&[("containers", "app", &pinned)]), None, Some(&e));
        assert!(!d.allowed);
        let m = &d.violations[0].message;
        assert!(
            m.contains("sign registry.corp.example/team/app@sha256:3f4a"),
            "{m}"
        );
        assert!(!m.contains("names now"), "{m}");
    }

    #[test]
    fn modes_judge_signature_violations_like_any_other() {
        let failing =
            |name: &str| evidence(APP, Some(D1), &[(name, not_verified("no signature found"))]);
        let warn = snapshot(&[signing("w", "Warn", &[("release", P256, None)])]);
        let d = decide_on(
            &warn,
            &pod(&[("containers", "app", APP)]),
            None,
            Some(&failing("w/release")),
        );
        assert!(d.allowed);
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0].starts_with("imagegate: [w/verifySignatures]"),
            "{:?}",
            d.warnings
        );
        assert_eq!(d.images[0].verdict, Verdict::Warned);

        let audit = snapshot(&[signing("a", "Audit", &[("release", P256, None)])]);
        let d = decide_on(
            &audit,
            &pod(&[("containers", "app", APP)]),
            None,
            Some(&failing("a/release")),
        );
        assert!(d.allowed && d.warnings.is_empty());
        assert_eq!(d.violations[0].mode, Mode::Audit);
        assert_eq!(d.images[0].verdict, Verdict::Audited);
    }

    #[test]
    fn two_policies_each_need_their_own_entry_to_verify() {
        let s = snapshot(&[
            signing("a", "Enforce", &[("release", P256, None)]),
            signing("b", "Enforce", &[("vendor", ED25519, None)]),
        ]);
        let object = pod(&[("containers", "app", APP)]);
        let requested = requests(&s, &object, None, &labels());
        assert_eq!(requested.len(), 1, "one request per image");
        let entries: Vec<&str> = requested[0]
            .checks
            .iter()
            .map(|c| c.entry.as_str())
            .collect();
        assert_eq!(entries, ["a/release", "b/vendor"]);

        let e = evidence(
            APP,
            Some(D1),
            &[
                ("a/release", verified(D1)),
                ("b/vendor", not_verified("no signature found")),
            ],
        );
        let d = decide_on(&s, &object, None, Some(&e));
        assert!(!d.allowed, "policies compose by intersection");
        assert_eq!(d.violations.len(), 1);
        assert_eq!(d.violations[0].policy, "b");
    }

    #[test]
    fn only_images_an_entry_governs_are_requested_and_judged() {
        let s = snapshot(&[
            signing(
                "prod",
                "Enforce",
                &[("release", P256, Some("'registry.corp.example/**'"))],
            ),
            "metadata: {name: tags}\nspec: {deniedTags: [latest]}".to_owned(),
        ]);
        let vendor = "quay.io/vendor/tool:2";
        let volume = "registry.corp.example/models/m:3";
        let object = pod(&[
            ("initContainers", "init", APP),
            ("containers", "app", APP),
            ("containers", "tool", vendor),
            ("containers", "broken", "registry.corp.example/A"),
            ("volumes", "models", volume),
        ]);
        let requested = requests(&s, &object, None, &labels());
        let images: Vec<&str> = requested.iter().map(|r| r.image.as_str()).collect();
        assert_eq!(
            images,
            [APP, volume],
            "same image once; no entry for quay.io; unparseable skipped"
        );
        assert!(requested.iter().all(|r| r.checks.len() == 1));
        assert_eq!(requested[0].reference.canonical(), APP);

        // No evidence for the volume: it fails alone, as an image volume.
        let e = evidence(APP, Some(D1), &[("prod/release", verified(D1))]);
        let d = decide_on(&s, &object, None, Some(&e));
        let signature: Vec<_> = d
            .violations
            .iter()
            .filter(|v| v.rule == Rule::VerifySignatures)
            .map(|v| (v.container_type, v.container.as_str()))
            .collect();
        assert_eq!(signature, [(ContainerType::ImageVolumes, "models")]);

        // A snapshot without signature entries asks for nothing.
        let plain = snapshot(&["metadata: {name: tags}\nspec: {deniedTags: [latest]}".to_owned()]);
        assert!(!plain.has_signature_rules());
        assert!(requests(&plain, &object, None, &labels()).is_empty());
    }

    #[test]
    fn policies_that_do_not_apply_ask_for_nothing() {
        let mut yaml = signing("prod", "Enforce", &[("release", P256, None)]);
        yaml = yaml.replace(
            "spec:\n",
            "spec:\n  namespaceSelector: {matchLabels: {env: prod}}\n",
        );
        let s = snapshot(&[yaml]);
        let object = pod(&[("containers", "app", APP)]);
        assert!(requests(&s, &object, None, &labels()).is_empty());
        assert!(decide_on(&s, &object, None, None).allowed);
    }

    #[test]
    fn an_update_looks_up_only_new_or_changed_images() {
        let s = snapshot(&[signing("prod", "Enforce", &[("release", P256, None)])]);
        let next = "registry.corp.example/team/app:1.1";
        let old = pod(&[("containers", "app", APP), ("containers", "side", APP)]);
        let new = pod(&[("containers", "app", next), ("containers", "side", APP)]);
        let requested = requests(&s, &new, Some(&old), &labels());
        let images: Vec<&str> = requested.iter().map(|r| r.image.as_str()).collect();
        assert_eq!(images, [next]);
        // The unchanged image is not judged (no evidence was asked for it); the changed one is.
        let e = evidence(next, Some(D2), &[("prod/release", verified(D2))]);
        let d = decide_on(&s, &new, Some(&old), Some(&e));
        assert!(
            d.allowed && d.violations.is_empty() && d.warnings.is_empty(),
            "{d:?}"
        );
        // A label-only update asks for nothing and passes.
        assert!(requests(&s, &old, Some(&old), &labels()).is_empty());
        assert!(decide_on(&s, &old, Some(&old), None).allowed);
    }

    #[test]
    fn short_digests() {
        assert_eq!(short(D1), "sha256:3f4ac9…77e1");
        assert_eq!(short("sha256:abc"), "sha256:abc");
        assert_eq!(short("nonsense"), "nonsense");
    }
}
