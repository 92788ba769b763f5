//! Keyless verification against signatures made by the Sigstore JavaScript libraries
//! (`@sigstore/sign` with `@sigstore/mock`'s Fulcio, Rekor and timestamp authority), kept in
//! `tests/data/sigstore/` (made by `node tests/sigstore-js/produce.js --out tests/data/sigstore`;
//! `tests/keyless.rs` makes a fresh set on every run and checks it the same way).

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;

use super::bundle::{self, Image};
use super::cosign::{Annotations, verify_signature_layer};
use super::{Match, PublicKey, Rejection, TransparencyLog, TrustedRoot, Verifier};

pub(crate) const ISSUER: &str = "https://token.actions.githubusercontent.com";
pub(crate) const SUBJECT: &str =
    "https://github.com/corp/app/.github/workflows/release.yml@refs/tags/v1.2.3";
const OTHER_SUBJECT: &str =
    "https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main";

/// A set of cases made by the producer.
pub(crate) struct Cases {
    dir: PathBuf,
    pub root: Arc<TrustedRoot>,
    pub digest: String,
    pub manifest: Vec<u8>,
}

impl Cases {
    pub(crate) fn open(dir: PathBuf) -> Cases {
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
        let root =
            TrustedRoot::from_json(&std::fs::read(dir.join("trusted_root.json")).unwrap()).unwrap();
        Cases {
            root: Arc::new(root),
            digest: index["digest"].as_str().unwrap().to_owned(),
            manifest: std::fs::read(dir.join("manifest.json")).unwrap(),
            dir,
        }
    }

    pub(crate) fn committed() -> Cases {
        Cases::open(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigstore"))
    }

    pub(crate) fn bundle(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(format!("{name}.bundle.json"))).unwrap()
    }

    pub(crate) fn json(&self, name: &str) -> Value {
        serde_json::from_slice(&self.bundle(name)).unwrap()
    }

    pub(crate) fn layer(&self, name: &str) -> (Vec<u8>, Annotations) {
        let layer: Value = serde_json::from_slice(
            &std::fs::read(self.dir.join(format!("{name}.cosign.json"))).unwrap(),
        )
        .unwrap();
        let text = |k: &str| layer[k].as_str().map(str::to_owned);
        let payload = base64::engine::general_purpose::STANDARD
            .decode(layer["payload"].as_str().unwrap())
            .unwrap();
        (
            payload,
            Annotations {
                signature: text("signature"),
                certificate: text("certificate"),
                chain: text("chain"),
                bundle: text("bundle"),
            },
        )
    }

    pub(crate) fn public_key(&self, name: &str) -> PublicKey {
        PublicKey::from_pem(&std::fs::read_to_string(self.dir.join(format!("{name}.pub"))).unwrap())
            .unwrap()
    }

    pub(crate) fn image(&self) -> Image<'_> {
        Image {
            digest: &self.digest,
            manifest: Some(&self.manifest),
        }
    }

    pub(crate) fn keyless(&self, subject: Match, tlog: TransparencyLog) -> Verifier {
        Verifier::keyless(
            Match::Exact(ISSUER.into()),
            subject,
            self.root.clone(),
            tlog,
        )
    }

    /// The release identity, transparency log required.
    pub(crate) fn release(&self) -> Verifier {
        self.keyless(Match::Exact(SUBJECT.into()), TransparencyLog::Require)
    }

    pub(crate) fn verify(
        &self,
        name: &str,
        verifier: &Verifier,
        now: i64,
    ) -> Result<String, Rejection> {
        bundle::verify(&self.bundle(name), &self.image(), verifier, now)
    }

    /// When a bundle's certificate was issued, plus a minute: a time at which it was valid.
    pub(crate) fn while_valid(&self, name: &str) -> i64 {
        let b = self.json(name);
        let material = &b["verificationMaterial"];
        let raw = material["certificate"]["rawBytes"]
            .as_str()
            .or(material["x509CertificateChain"]["certificates"][0]["rawBytes"].as_str())
            .unwrap();
        let der = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .unwrap();
        let cert = x509_parser::parse_x509_certificate(&der).unwrap().1;
        cert.validity().not_before.timestamp() + 60
    }
}

pub(crate) fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

const YEAR: i64 = 365 * 24 * 3600;

/// Every check a fresh or committed set of cases must pass.
pub(crate) fn check_all(c: &Cases) {
    let release = c.release();
    let found = format!("subject {SUBJECT:?} from issuer {ISSUER:?}");

    // The release workflow's signatures verify, in every bundle version and content, and long
    // after their certificates expired: the log proves when each was made.
    for name in [
        "dsse-v03",
        "dsse-v02-intoto",
        "message-v02",
        "message-v01",
        "dsse-expired-logged",
        "dsse-issuer-v1-only",
        "dsse-issuer-v2-only",
    ] {
        for at in [now(), now() + YEAR] {
            assert_eq!(c.verify(name, &release, at), Ok(found.clone()), "{name}");
        }
    }
    let (payload, annotations) = c.layer("cosign-keyless");
    assert_eq!(
        verify_signature_layer(&payload, &annotations, &release, &c.digest, now()),
        Ok(found.clone())
    );

    // Regular expressions must match the whole value.
    let pattern = r"https://github\.com/corp/[^/]+/\.github/workflows/release\.yml@refs/tags/v.+";
    let by_regex = c.keyless(Match::regex(pattern).unwrap(), TransparencyLog::Require);
    assert_eq!(c.verify("dsse-v03", &by_regex, now()), Ok(found.clone()));
    let prefix = c.keyless(
        Match::regex(r"https://github\.com/corp/").unwrap(),
        TransparencyLog::Require,
    );
    let e = c.verify("dsse-v03", &prefix, now()).unwrap_err();
    assert_eq!(
        e,
        Rejection::Identity {
            found: found.clone(),
            wanted: format!(r"subject matching /https://github\.com/corp// from issuer {ISSUER:?}"),
        }
    );
    assert!(
        e.to_string()
            .starts_with(&format!("signed by {found}, not by subject matching")),
        "{e}"
    );

    // Another subject or issuer, wanted or found.
    let other = c.keyless(Match::Exact(OTHER_SUBJECT.into()), TransparencyLog::Require);
    assert!(matches!(
        c.verify("dsse-v03", &other, now()),
        Err(Rejection::Identity { .. })
    ));
    let other_issuer = Verifier::keyless(
        Match::Exact("https://accounts.example.com".into()),
        Match::Exact(SUBJECT.into()),
        c.root.clone(),
        TransparencyLog::Require,
    );
    assert!(matches!(
        c.verify("dsse-v03", &other_issuer, now()),
        Err(Rejection::Identity { .. })
    ));
    match c.verify("dsse-other-subject", &release, now()) {
        Err(Rejection::Identity { found, wanted }) => {
            assert!(found.contains(OTHER_SUBJECT), "{found}");
            assert!(wanted.contains(SUBJECT), "{wanted}");
        }
        other => panic!("{other:?}"),
    }
    match c.verify("dsse-other-issuer", &release, now()) {
        Err(Rejection::Identity { found, .. }) => {
            assert!(found.contains("https://accounts.example.com"), "{found}")
        }
        other => panic!("{other:?}"),
    }

    // A certificate from a CA the trusted root does not hold.
    let e = c.verify("dsse-untrusted-ca", &release, now()).unwrap_err();
    assert!(
        matches!(&e, Rejection::Certificate(m) if m.contains("does not chain to a Fulcio CA of the trusted root")),
        "{e}"
    );

    // No log entry: required → denied; skipped → the certificate must be valid now, unless a
    // timestamp proves when it was used.
    let skip = c.keyless(Match::Exact(SUBJECT.into()), TransparencyLog::Skip);
    for name in ["dsse-no-witness", "dsse-tsa-only", "dsse-expired-unlogged"] {
        let e = c.verify(name, &release, now()).unwrap_err();
        assert!(
            matches!(&e, Rejection::TransparencyLog(m) if m.contains("no transparency-log entry")),
            "{name}: {e}"
        );
    }
    let valid = c.while_valid("dsse-no-witness");
    assert_eq!(c.verify("dsse-no-witness", &skip, valid), Ok(found.clone()));
    let e = c
        .verify("dsse-no-witness", &skip, valid + YEAR)
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Certificate(m) if m.contains("nothing proves the signature was made then")),
        "{e}"
    );
    let e = c.verify("dsse-expired-unlogged", &skip, now()).unwrap_err();
    assert!(matches!(&e, Rejection::Certificate(_)), "{e}");
    assert_eq!(
        c.verify("dsse-tsa-only", &skip, now() + YEAR),
        Ok(found.clone())
    );
    assert_eq!(c.verify("dsse-v03", &skip, now() + YEAR), Ok(found.clone()));
    // With Skip, a log entry is not consulted: the v02 case has no timestamp.
    assert!(c.verify("dsse-v02-intoto", &skip, now() + YEAR).is_err());

    // The log saw the signature after the certificate had expired.
    let e = c
        .verify("dsse-signed-after-expiry", &release, now())
        .unwrap_err();
    assert!(
        matches!(&e, Rejection::Certificate(m) if m.contains("but the signature was made at")),
        "{e}"
    );

    // Signed by the right identity, for another image, or not as a signature.
    assert!(matches!(
        c.verify("dsse-other-digest", &release, now()),
        Err(Rejection::OtherDigest { .. })
    ));
    let other_image = Image {
        digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        manifest: None,
    };
    for name in ["dsse-v03", "message-v02"] {
        assert_eq!(
            bundle::verify(&c.bundle(name), &other_image, &release, now()),
            Err(Rejection::OtherDigest {
                signed: c.digest.clone()
            }),
            "{name}"
        );
    }
    let e = c.verify("dsse-attestation", &release, now()).unwrap_err();
    assert!(
        matches!(&e, Rejection::NotASignature(m) if m.contains("slsa.dev")),
        "{e}"
    );
    let (payload, annotations) = c.layer("cosign-other-digest");
    assert!(matches!(
        verify_signature_layer(&payload, &annotations, &release, &c.digest, now()),
        Err(Rejection::OtherDigest { .. })
    ));
    let (payload, annotations) = c.layer("cosign-no-bundle");
    assert!(matches!(
        verify_signature_layer(&payload, &annotations, &release, &c.digest, now()),
        Err(Rejection::TransparencyLog(_))
    ));

    // A bundle under a key entry, with and without its log entry required.
    let key = c.public_key("message-key");
    let fingerprint = key.fingerprint().to_owned();
    assert_eq!(
        c.verify("message-key", &Verifier::key(key.clone()), now()),
        Ok(fingerprint.clone())
    );
    assert_eq!(
        c.verify(
            "message-key",
            &Verifier::key_in_log(key, c.root.clone()),
            now()
        ),
        Ok(fingerprint)
    );
    let (_, other_pem) = super::tests::p256();
    let other_key = Verifier::key(PublicKey::from_pem(&other_pem).unwrap());
    assert!(matches!(
        c.verify("message-key", &other_key, now()),
        Err(Rejection::Signature(_))
    ));
    assert!(matches!(
        c.verify("message-key", &release, now()),
        Err(Rejection::Certificate(m)) if m.contains("no certificate")
    ));
    // A keyless bundle under a key entry: the signature is not by that key.
    assert!(matches!(
        c.verify("dsse-v03", &other_key, now()),
        Err(Rejection::Signature(_))
    ));

    forged_log_entries(c);
    forged_timestamps(c);
}

fn with(c: &Cases, name: &str, change: impl Fn(&mut Value)) -> Vec<u8> {
    let mut b = c.json(name);
    change(&mut b);
    serde_json::to_vec(&b).unwrap()
}

fn log_error(c: &Cases, bundle: &[u8], want: &str) {
    match bundle::verify(bundle, &c.image(), &c.release(), now()) {
        Err(Rejection::TransparencyLog(m)) if m.contains(want) => {}
        other => panic!("wanted a transparency-log rejection with {want:?}, got {other:?}"),
    }
}

/// A valid log entry of another signature, or a tampered one, proves nothing.
fn forged_log_entries(c: &Cases) {
    let entries = |name: &str| c.json(name)["verificationMaterial"]["tlogEntries"].clone();
    // The entry of another signature by the same identity.
    let b = with(c, "dsse-v03", |b| {
        b["verificationMaterial"]["tlogEntries"] = entries("dsse-other-digest")
    });
    log_error(c, &b, "records another signature");
    let b = with(c, "message-v02", |b| {
        b["verificationMaterial"]["tlogEntries"] = entries("message-v01")
    });
    log_error(c, &b, "records another signature");
    // The certificate of another signature with its entry (the signature then fails first).
    let b = with(c, "dsse-v03", |b| {
        b["verificationMaterial"]["tlogEntries"] = entries("dsse-issuer-v2-only")
    });
    log_error(c, &b, "another");
    // A tampered signed entry timestamp, inclusion proof, checkpoint, or log id.
    let b = with(c, "message-v02", |b| {
        let set = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionPromise"]["signedEntryTimestamp"];
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(set.as_str().unwrap())
            .unwrap();
        let last = raw.len() - 2;
        raw[last] ^= 1;
        *set = base64::engine::general_purpose::STANDARD.encode(raw).into();
    });
    log_error(c, &b, "signed entry timestamp does not verify");
    let b = with(c, "message-v02", |b| {
        let e = &mut b["verificationMaterial"]["tlogEntries"][0];
        e["integratedTime"] = (e["integratedTime"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            - 60)
            .to_string()
            .into();
    });
    log_error(c, &b, "signed entry timestamp does not verify");
    let b = with(c, "message-v02", |b| {
        b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["rootHash"] =
            base64::engine::general_purpose::STANDARD
                .encode([7u8; 32])
                .into();
    });
    log_error(c, &b, "does not lead to its root hash");
    let b = with(c, "message-v02", |b| {
        let cp = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]["envelope"];
        *cp = cp
            .as_str()
            .unwrap()
            .replacen("Timestamp", "Timestamq", 1)
            .into();
    });
    log_error(c, &b, "checkpoint is not signed by the log's key");
    let b = with(c, "message-v02", |b| {
        b["verificationMaterial"]["tlogEntries"][0]["logId"]["keyId"] =
            base64::engine::general_purpose::STANDARD
                .encode([1u8; 32])
                .into();
    });
    log_error(c, &b, "a log the trusted root does not hold");
    // An inclusion proof alone proves inclusion, not time; no timestamp either here.
    let b = with(c, "message-v01", |b| {
        b["verificationMaterial"]["tlogEntries"][0]
            .as_object_mut()
            .unwrap()
            .remove("inclusionPromise");
    });
    log_error(c, &b, "proves inclusion but not when");
    // The body's kind must be what the entry says it is.
    let b = with(c, "message-v02", |b| {
        b["verificationMaterial"]["tlogEntries"][0]["kindVersion"]["kind"] = "dsse".into();
    });
    log_error(c, &b, "says it is a dsse");
}

fn forged_timestamps(c: &Cases) {
    let timestamps =
        |name: &str| c.json(name)["verificationMaterial"]["timestampVerificationData"].clone();
    let b = with(c, "dsse-v03", |b| {
        b["verificationMaterial"]["timestampVerificationData"] = timestamps("message-v02")
    });
    match bundle::verify(&b, &c.image(), &c.release(), now()) {
        Err(Rejection::Timestamp(m)) if m.contains("for other data than this signature") => {}
        other => panic!("{other:?}"),
    }
    // A root without the timestamp authority.
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(c.dir.join("trusted_root.json")).unwrap()).unwrap();
    doc["timestampAuthorities"] = serde_json::json!([]);
    let root = Arc::new(TrustedRoot::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap());
    let skip = Verifier::keyless(
        Match::Exact(ISSUER.into()),
        Match::Exact(SUBJECT.into()),
        root,
        TransparencyLog::Skip,
    );
    match c.verify("dsse-tsa-only", &skip, now()) {
        Err(Rejection::Timestamp(m)) if m.contains("trusted root does not hold") => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn committed_sigstore_js_cases() {
    check_all(&Cases::committed());
}

#[test]
fn another_trusted_root_trusts_none_of_them() {
    let c = Cases::committed();
    // The same document with the timestamp authority's root in place of Fulcio's.
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(c.dir.join("trusted_root.json")).unwrap()).unwrap();
    doc["certificateAuthorities"][0]["certChain"] =
        doc["timestampAuthorities"][0]["certChain"].clone();
    let root = Arc::new(TrustedRoot::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap());
    let v = Verifier::keyless(
        Match::Exact(ISSUER.into()),
        Match::Exact(SUBJECT.into()),
        root,
        TransparencyLog::Require,
    );
    let e = c.verify("dsse-v03", &v, now()).unwrap_err();
    assert!(matches!(&e, Rejection::Certificate(_)), "{e}");
}

#[test]
fn malformed_bundles_say_why() {
    let c = Cases::committed();
    let release = c.release();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not a Sigstore bundle"),
        (
            with(&c, "dsse-v03", |b| {
                b["mediaType"] = "application/json".into()
            }),
            "media type",
        ),
        (
            with(&c, "dsse-v03", |b| {
                let s = b["dsseEnvelope"]["signatures"][0].clone();
                b["dsseEnvelope"]["signatures"] = serde_json::json!([s.clone(), s]);
            }),
            "2 signatures",
        ),
        (
            with(&c, "dsse-v03", |b| {
                b["dsseEnvelope"]["payload"] = "%%".into()
            }),
            "dsseEnvelope.payload is not base64",
        ),
        (
            with(&c, "dsse-v03", |b| {
                b.as_object_mut().unwrap().remove("dsseEnvelope");
            }),
            "neither",
        ),
        (
            with(&c, "dsse-v03", |b| {
                b["verificationMaterial"]["tlogEntries"][0]["logIndex"] = "ten".into()
            }),
            "not an integer",
        ),
        (vec![b' '; bundle::BUNDLE_MAX_BYTES + 1], "bytes long"),
    ];
    for (bytes, want) in cases {
        let e = bundle::verify(&bytes, &c.image(), &release, now())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e} (wanted {want:?})");
    }
    // The payload and signature of one bundle with the certificate of another.
    let cert = c.json("dsse-issuer-v1-only")["verificationMaterial"]["certificate"].clone();
    let b = with(&c, "dsse-v03", |b| {
        b["verificationMaterial"]["certificate"] = cert.clone()
    });
    assert!(matches!(
        bundle::verify(&b, &c.image(), &release, now()),
        Err(Rejection::Signature(_))
    ));
    // A message signature needs the manifest.
    let no_manifest = Image {
        digest: &c.digest,
        manifest: None,
    };
    assert!(bundle::is_message_signature(&c.bundle("message-v02")));
    assert!(!bundle::is_message_signature(&c.bundle("dsse-v03")));
    assert!(matches!(
        bundle::verify(&c.bundle("message-v02"), &no_manifest, &release, now()),
        Err(Rejection::Payload(m)) if m.contains("not fetched")
    ));
}

#[test]
fn keyless_ids_name_identity_root_and_log() {
    let c = Cases::committed();
    let a = c.release();
    assert_eq!(a.id(), c.release().id());
    assert!(a.id().starts_with("keyless:"), "{}", a.id());
    assert!(a.id().contains(c.root.fingerprint()));
    let ids = [
        a.id().to_owned(),
        c.keyless(Match::Exact(SUBJECT.into()), TransparencyLog::Skip)
            .id()
            .to_owned(),
        c.keyless(Match::regex(SUBJECT).unwrap(), TransparencyLog::Require)
            .id()
            .to_owned(),
        c.keyless(Match::Exact(OTHER_SUBJECT.into()), TransparencyLog::Require)
            .id()
            .to_owned(),
    ];
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    assert_eq!(
        a.describe(),
        format!("subject {SUBJECT:?} from issuer {ISSUER:?}")
    );
    assert_eq!(a.transparency_log(), TransparencyLog::Require);
    let key = c.public_key("message-key");
    assert_ne!(
        Verifier::key(key.clone()).id(),
        Verifier::key_in_log(key.clone(), c.root.clone()).id()
    );
    assert_eq!(Verifier::key(key).transparency_log(), TransparencyLog::Skip);
    // A regex is anchored.
    let m = Match::regex("a|b").unwrap();
    assert!(m.matches("a") && m.matches("b") && !m.matches("ab") && !m.matches("xa"));
    assert!(Match::regex("(").is_err());
}

#[path = "../../tests/support/sigstore_js.rs"]
mod sigstore_js;
use sigstore_js::produce;

#[test]
fn fresh_sigstore_js_cases() {
    let dir = tempfile::tempdir().unwrap();
    if produce(dir.path(), &[]) {
        check_all(&Cases::open(dir.path().to_owned()));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// A bundle with any byte changed is refused with a reason (never a panic), unless the
    /// change is one JSON cannot see (whitespace, a field order).
    #[test]
    fn bent_bundles_never_panic(name in proptest::sample::select(vec!["dsse-v03", "message-v02", "message-key"]), at in 0usize..8192, byte: u8) {
        let c = Cases::committed();
        let mut b = c.bundle(name);
        let at = at % b.len();
        b[at] = byte;
        let _ = bundle::verify(&b, &c.image(), &c.release(), now());
    }

    /// Arbitrary bytes as a timestamp are refused.
    #[test]
    fn arbitrary_timestamps_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let c = Cases::committed();
        proptest::prop_assert!(super::timestamp::verify(&bytes, b"sig", &c.root).is_err());
    }
}
