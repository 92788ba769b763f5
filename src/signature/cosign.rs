//! cosign's signature format: each signature is one layer of the manifest tagged
//! `sha256-<hex>.sig` in the image's repository. The layer's blob is a simple-signing payload
//! (JSON naming the signed image's digest), and its `dev.cosignproject.cosign/signature`
//! annotation holds the base64 signature over the blob's exact bytes.
//!
//! [`verify_layer`] judges one such layer as a whole: the signature must verify over those
//! bytes under the entry's key, and the same bytes must name the image's digest. A signature of
//! another image copied next to this one, or a payload signed by another key, verifies nothing.

use serde::Deserialize;

use super::Verifier;
use super::keyless::{Material, judge};
use super::rekor::{Content, LogEntry};

/// The manifest annotation of a cosign signature layer that holds its base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The `critical.type` of a cosign simple-signing payload.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";
/// The longest base64 signature accepted: an RSA-8192 signature is 1,366 base64 characters,
/// so anything far longer is not a signature.
pub const SIGNATURE_B64_MAX_LEN: usize = 4 * 1024;

/// The tag under which cosign stores the signatures of `digest` (`sha256:<hex>` →
/// `sha256-<hex>.sig`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The part of a simple-signing payload that matters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SimpleSigning {
    pub critical: Critical,
}

/// `critical` of a simple-signing payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `critical.identity`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference", default)]
    pub docker_reference: String,
}

/// `critical.image`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl SimpleSigning {
    /// Reads a payload; the error says what is wrong with it.
    pub fn parse(payload: &[u8]) -> Result<SimpleSigning, String> {
        let parsed: SimpleSigning = serde_json::from_slice(payload)
            .map_err(|e| format!("the payload is not a simple-signing document: {e}"))?;
        if parsed.critical.kind != SIMPLE_SIGNING_TYPE {
            return Err(format!(
                "the payload's critical.type is {:?}, not {SIMPLE_SIGNING_TYPE:?}",
                parsed.critical.kind
            ));
        }
        Ok(parsed)
    }

    /// The digest the payload signs.
    pub fn digest(&self) -> &str {
        &self.critical.image.docker_manifest_digest
    }
}

pub use super::Rejection;

/// The annotation of a keyless signature layer holding the signing certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The annotation holding the certificate's chain toward the Fulcio root (PEM).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// The annotation holding the signature's Rekor entry and its signed entry timestamp (JSON).
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// The longest certificate, chain or Rekor-entry annotation read: real ones are a few
/// kilobytes (the Rekor entry holds the certificate again, base64 twice over).
pub const ANNOTATION_MAX_LEN: usize = 64 * 1024;

/// The annotations of one `.sig` layer that carry its signature, and for keyless or logged
/// signatures the certificate, its chain and the Rekor entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    /// [`SIGNATURE_ANNOTATION`]: the signature, base64.
    pub signature: Option<String>,
    /// [`CERTIFICATE_ANNOTATION`].
    pub certificate: Option<String>,
    /// [`CHAIN_ANNOTATION`].
    pub chain: Option<String>,
    /// [`BUNDLE_ANNOTATION`].
    pub bundle: Option<String>,
}

impl Annotations {
    /// The annotations a layer descriptor has, looked up by name.
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Annotations {
        let own = |name| get(name).map(str::to_owned);
        Annotations {
            signature: own(SIGNATURE_ANNOTATION),
            certificate: own(CERTIFICATE_ANNOTATION),
            chain: own(CHAIN_ANNOTATION),
            bundle: own(BUNDLE_ANNOTATION),
        }
    }
}

/// Verifies one cosign signature layer under a `key` verifier that needs no more than the
/// signature annotation; see [`verify_signature_layer`].
pub fn verify_layer(
    payload: &[u8],
    signature_b64: Option<&str>,
    verifier: &Verifier,
    digest: &str,
) -> Result<(), Rejection> {
    let annotations = Annotations {
        signature: signature_b64.map(str::to_owned),
        ..Annotations::default()
    };
    verify_signature_layer(payload, &annotations, verifier, digest, 0).map(|_| ())
}

/// Verifies one cosign signature layer for the image whose digest is `digest`, and returns
/// who signed (a key fingerprint, or the certificate's identity). `payload` is the layer's blob
/// (its digest already checked against the manifest by the caller); `now` is the current Unix
/// time, which matters only for a keyless signature whose signing time nothing proves. All
/// checks are made on this one layer: the signature verifies over exactly these bytes, under
/// the entry's key or under a certificate from the trusted root for the entry's identity, its
/// Rekor entry (when required) records this signature, and these bytes name `digest`.
pub fn verify_signature_layer(
    payload: &[u8],
    annotations: &Annotations,
    verifier: &Verifier,
    digest: &str,
    now: i64,
) -> Result<String, Rejection> {
    use base64::Engine as _;
    let b64 = annotations.signature.as_deref().ok_or_else(|| {
        Rejection::Encoding(format!(
            "the layer has no {SIGNATURE_ANNOTATION} annotation"
        ))
    })?;
    if b64.len() > SIGNATURE_B64_MAX_LEN {
        return Err(Rejection::Encoding(format!(
            "the signature is {} characters long, more than {SIGNATURE_B64_MAX_LEN}",
            b64.len()
        )));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| Rejection::Encoding(format!("not base64: {e}")))?;
    for (name, value) in [
        (CERTIFICATE_ANNOTATION, &annotations.certificate),
        (CHAIN_ANNOTATION, &annotations.chain),
        (BUNDLE_ANNOTATION, &annotations.bundle),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > ANNOTATION_MAX_LEN) {
            return Err(Rejection::Encoding(format!(
                "the {name} annotation is longer than {ANNOTATION_MAX_LEN} characters"
            )));
        }
    }
    let certificate = match &annotations.certificate {
        Some(pem) => Some(
            certificates(pem, CERTIFICATE_ANNOTATION)?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    Rejection::Encoding(format!(
                        "the {CERTIFICATE_ANNOTATION} annotation holds no certificate"
                    ))
                })?,
        ),
        None => None,
    };
    let chain = match &annotations.chain {
        Some(pem) => certificates(pem, CHAIN_ANNOTATION)?,
        None => Vec::new(),
    };
    let log_entries = match &annotations.bundle {
        Some(json) => vec![rekor_bundle(json)?],
        None => Vec::new(),
    };
    let payload_digest = ring::digest::digest(&ring::digest::SHA256, payload);
    let material = Material {
        signed: payload,
        signature: &signature,
        certificate,
        chain,
        log_entries,
        timestamps: Vec::new(),
        content: Content::Digest(payload_digest.as_ref()),
    };
    let signer = judge(&material, verifier, now)?;
    // Only a payload whose signature verified is read: its claims mean nothing otherwise.
    let signed = SimpleSigning::parse(payload).map_err(Rejection::Payload)?;
    if signed.digest() != digest {
        return Err(Rejection::OtherDigest {
            signed: signed.digest().to_owned(),
        });
    }
    Ok(signer)
}

/// The certificates (DER) of a PEM annotation.
fn certificates(pem: &str, name: &str) -> Result<Vec<Vec<u8>>, Rejection> {
    let blocks = super::pem_blocks(pem)
        .map_err(|e| Rejection::Encoding(format!("the {name} annotation: {e}")))?;
    blocks
        .into_iter()
        .map(|(label, der)| {
            if label == "CERTIFICATE" {
                Ok(der)
            } else {
                Err(Rejection::Encoding(format!(
                    "the {name} annotation holds a {label} block, not a certificate"
                )))
            }
        })
        .collect()
}

/// The Rekor entry of cosign's [`BUNDLE_ANNOTATION`]: the signed entry timestamp and the
/// entry it signs (body, integrated time, log index, log id in hex).
fn rekor_bundle(json: &str) -> Result<LogEntry, Rejection> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Bundle {
        #[serde(rename = "SignedEntryTimestamp")]
        signed_entry_timestamp: String,
        #[serde(rename = "Payload")]
        payload: Payload,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload {
        body: String,
        integrated_time: i64,
        log_index: i64,
        #[serde(rename = "logID")]
        log_id: String,
    }
    let bad =
        |why: String| Rejection::Encoding(format!("the {BUNDLE_ANNOTATION} annotation {why}"));
    let bundle: Bundle =
        serde_json::from_str(json).map_err(|e| bad(format!("is not a Rekor bundle: {e}")))?;
    let b64 = |s: &str, what: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| bad(format!("has a {what} that is not base64")))
    };
    Ok(LogEntry {
        log_index: bundle.payload.log_index,
        log_id: super::unhex(&bundle.payload.log_id)
            .ok_or_else(|| bad("has a logID that is not hex".to_owned()))?,
        integrated_time: bundle.payload.integrated_time,
        body: b64(&bundle.payload.body, "body")?,
        kind_version: None,
        signed_entry_timestamp: Some(b64(&bundle.signed_entry_timestamp, "SignedEntryTimestamp")?),
        inclusion_proof: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::PublicKey;
    use crate::signature::tests::{p256, sign};
    use base64::Engine as _;

    const DIGEST: &str = "sha256:3f0000000000000000000000000000000000000000000000000000000000e1";
    const OTHER: &str = "sha256:4a0000000000000000000000000000000000000000000000000000000000b2";

    fn payload(digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"registry.corp.example/team/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn a_signature_verifies_only_as_a_whole() {
        let (pair, pem) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let good = payload(DIGEST);
        let signature = b64(&sign(&pair, &good));
        assert_eq!(
            verify_layer(&good, Some(&signature), &verifier, DIGEST),
            Ok(())
        );

        // The same signed payload for another image: a replay.
        assert_eq!(
            verify_layer(&good, Some(&signature), &verifier, OTHER),
            Err(Rejection::OtherDigest {
                signed: DIGEST.to_owned()
            })
        );

        // A payload naming this image, with the signature of another payload.
        let forged = payload(OTHER);
        assert!(matches!(
            verify_layer(&forged, Some(&signature), &verifier, OTHER),
            Err(Rejection::Signature(_))
        ));

        // Signed by another key.
        let (other_pair, _) = p256();
        let theirs = b64(&sign(&other_pair, &good));
        assert!(matches!(
            verify_layer(&good, Some(&theirs), &verifier, DIGEST),
            Err(Rejection::Signature(_))
        ));
    }

    #[test]
    fn unreadable_signatures_and_payloads() {
        let (pair, pem) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let good = payload(DIGEST);
        assert!(matches!(
            verify_layer(&good, None, &verifier, DIGEST),
            Err(Rejection::Encoding(_))
        ));
        assert!(matches!(
            verify_layer(&good, Some("%%%not base64"), &verifier, DIGEST),
            Err(Rejection::Encoding(_))
        ));
        let long = "A".repeat(SIGNATURE_B64_MAX_LEN + 4);
        assert!(matches!(
            verify_layer(&good, Some(&long), &verifier, DIGEST),
            Err(Rejection::Encoding(_))
        ));
        // Truncated payload: the signature no longer verifies.
        let signature = b64(&sign(&pair, &good));
        assert!(matches!(
            verify_layer(&good[..good.len() - 1], Some(&signature), &verifier, DIGEST),
            Err(Rejection::Signature(_))
        ));
        // A validly signed document that is not a simple-signing payload.
        for junk in [
            b"not json".to_vec(),
            br#"{"critical":{"identity":{},"image":{"docker-manifest-digest":"x"},"type":"something else"}}"#.to_vec(),
            br#"{"critical":{}}"#.to_vec(),
        ] {
            let signature = b64(&sign(&pair, &junk));
            assert!(
                matches!(
                    verify_layer(&junk, Some(&signature), &verifier, DIGEST),
                    Err(Rejection::Payload(_))
                ),
                "{}",
                String::from_utf8_lossy(&junk)
            );
        }
    }

    #[test]
    fn signature_tags() {
        assert_eq!(
            signature_tag(DIGEST),
            format!("sha256-{}.sig", &DIGEST[7..])
        );
        assert_eq!(signature_tag("sha512:ab"), "sha512-ab.sig");
    }
}
