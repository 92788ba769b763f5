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

/// Why one signature layer does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature annotation is missing, too long or not base64.
    #[error("the signature is unreadable: {0}")]
    Encoding(String),
    /// The signature does not verify over the payload under the entry's key.
    #[error("the signature does not verify under {0}")]
    Signature(String),
    /// The payload (verified) is not a simple-signing document.
    #[error("{0}")]
    Payload(String),
    /// The payload (verified) signs another image.
    #[error("the signature is for {signed}, not for this image's digest")]
    OtherDigest { signed: String },
}

/// Verifies one cosign signature layer for the image whose digest is `digest`: `payload` is the
/// layer's blob (its digest already checked against the manifest by the caller) and
/// `signature_b64` the layer's [`SIGNATURE_ANNOTATION`]. Both checks are made on this one layer:
/// the signature verifies over exactly these bytes, and these bytes name `digest`.
pub fn verify_layer(
    payload: &[u8],
    signature_b64: Option<&str>,
    verifier: &Verifier,
    digest: &str,
) -> Result<(), Rejection> {
    use base64::Engine as _;
    let b64 = signature_b64.ok_or_else(|| {
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
    match verifier {
        Verifier::Key(k) => {
            if !k.key.verify(payload, &signature) {
                return Err(Rejection::Signature(format!(
                    "the key {}",
                    k.key.fingerprint()
                )));
            }
        }
    }
    // Only a payload whose signature verified is read: its claims mean nothing otherwise.
    let signed = SimpleSigning::parse(payload).map_err(Rejection::Payload)?;
    if signed.digest() != digest {
        return Err(Rejection::OtherDigest {
            signed: signed.digest().to_owned(),
        });
    }
    Ok(())
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
