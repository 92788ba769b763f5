//! Sigstore bundles (v0.1 to v0.3), as `cosign sign` and other Sigstore clients attach them to
//! an image as OCI 1.1 referrers: one signature with what verifies it — the certificate (or a
//! key hint), the Rekor entries and RFC 3161 timestamps — over either
//!
//! - a DSSE envelope holding an in-toto statement whose subject is the image's digest and whose
//!   predicate type is cosign's image signature (`https://sigstore.dev/cosign/sign/v1`); other
//!   predicate types are attestations (provenance, SBOMs), not signatures, and verify nothing
//!   here; or
//! - a message signature over the image manifest itself, whose digest the bundle states.
//!
//! [`verify`] judges one bundle as a whole, like a `.sig` layer: the signature, its signer, its
//! log entry and the digest it names all belong to this one bundle.

use base64::Engine as _;
use serde::Deserialize;

use super::keyless::{Material, judge};
use super::rekor::{Content, InclusionProof, LogEntry};
use super::trust::{ChainDoc, RawDoc};
use super::{Rejection, Verifier, hex, unhex};

/// What the media type of a bundle starts with (`…+json;version=0.1`, `…+json;version=0.2`,
/// `…+json;version=0.3`, `….v0.3+json`).
pub const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// The bundle media types read.
pub const BUNDLE_MEDIA_TYPES: &[&str] = &[
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
];
/// The largest bundle read, as for any signature artifact (DESIGN: 1 MiB per artifact).
pub const BUNDLE_MAX_BYTES: usize = 1024 * 1024;
/// The most certificates a bundle's chain may hold: Fulcio's chains have two or three.
pub const MAX_CHAIN_CERTIFICATES: usize = 8;
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement types read.
pub const IN_TOTO_STATEMENT_TYPES: &[&str] = &[
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];
/// The predicate type of an image signature in a bundle, as `cosign sign` writes it.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Whether an OCI artifact type or layer media type is a Sigstore bundle.
pub fn is_bundle_media_type(media_type: &str) -> bool {
    media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX)
}

/// Whether a bundle holds a message signature, which is verified over the image manifest: the
/// caller then fetches the manifest for [`Image::manifest`].
pub fn is_message_signature(bundle: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        message_signature: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Peek>(bundle).is_ok_and(|p| p.message_signature.is_some())
}

/// The image a bundle must sign.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// `sha256:<hex>`.
    pub digest: &'a str,
    /// The manifest the digest names (its bytes hash to `digest`), needed for message
    /// signatures only.
    pub manifest: Option<&'a [u8]>,
}

/// Verifies one bundle for `image` under `verifier` (`now`: the current Unix time, used only
/// when nothing proves when a keyless signature was made) and returns who signed.
pub fn verify(
    bundle: &[u8],
    image: &Image<'_>,
    verifier: &Verifier,
    now: i64,
) -> Result<String, Rejection> {
    if bundle.len() > BUNDLE_MAX_BYTES {
        return Err(Rejection::Encoding(format!(
            "the bundle is {} bytes long, more than {BUNDLE_MAX_BYTES}",
            bundle.len()
        )));
    }
    let doc: BundleDoc = serde_json::from_slice(bundle)
        .map_err(|e| Rejection::Encoding(format!("not a Sigstore bundle: {e}")))?;
    if !BUNDLE_MEDIA_TYPES.contains(&doc.media_type.as_str()) {
        return Err(Rejection::Encoding(format!(
            "the bundle's media type {:?} is not one of {}",
            doc.media_type,
            BUNDLE_MEDIA_TYPES.join(", ")
        )));
    }
    let material = doc
        .verification_material
        .ok_or_else(|| Rejection::Encoding("the bundle has no verificationMaterial".to_owned()))?;
    let (certificate, chain) = material.certificates()?;
    let log_entries = material
        .tlog_entries
        .iter()
        .map(TlogEntryDoc::entry)
        .collect::<Result<Vec<_>, _>>()?;
    let timestamps = material
        .timestamp_verification_data
        .iter()
        .flat_map(|t| &t.rfc3161_timestamps)
        .map(|t| b64(&t.signed_timestamp, "rfc3161Timestamps[].signedTimestamp"))
        .collect::<Result<Vec<_>, _>>()?;
    let (algorithm, image_hex) = image
        .digest
        .split_once(':')
        .ok_or_else(|| Rejection::Encoding(format!("{:?} is not a digest", image.digest)))?;

    match (doc.message_signature, doc.dsse_envelope) {
        (Some(message), None) => {
            let stated = message.message_digest.ok_or_else(|| {
                Rejection::Encoding("the message signature states no digest".to_owned())
            })?;
            let digest = b64(&stated.digest, "messageSignature.messageDigest.digest")?;
            if algorithm != "sha256" || stated.algorithm != "SHA2_256" {
                return Err(Rejection::Payload(format!(
                    "the message signature is over a {} digest; message signatures are read for sha256 images only",
                    stated.algorithm
                )));
            }
            if unhex(image_hex).as_deref() != Some(digest.as_slice()) {
                return Err(Rejection::OtherDigest {
                    signed: format!("sha256:{}", hex(&digest)),
                });
            }
            let manifest = image.manifest.ok_or_else(|| {
                Rejection::Payload(
                    "a message signature is verified over the image manifest, which was not fetched"
                        .to_owned(),
                )
            })?;
            if ring::digest::digest(&ring::digest::SHA256, manifest).as_ref() != digest {
                return Err(Rejection::Payload(
                    "the manifest fetched does not hash to the image digest".to_owned(),
                ));
            }
            let signature = b64(&message.signature, "messageSignature.signature")?;
            judge(
                &Material {
                    signed: manifest,
                    signature: &signature,
                    certificate,
                    chain,
                    log_entries,
                    timestamps,
                    content: Content::Digest(&digest),
                },
                verifier,
                now,
            )
        }
        (None, Some(envelope)) => {
            let [one] = envelope.signatures.as_slice() else {
                return Err(Rejection::Encoding(format!(
                    "the DSSE envelope has {} signatures; a bundle holds exactly one",
                    envelope.signatures.len()
                )));
            };
            let payload = b64(&envelope.payload, "dsseEnvelope.payload")?;
            let signature = b64(&one.sig, "dsseEnvelope.signatures[0].sig")?;
            let signed = pae(&envelope.payload_type, &payload);
            let signer = judge(
                &Material {
                    signed: &signed,
                    signature: &signature,
                    certificate,
                    chain,
                    log_entries,
                    timestamps,
                    content: Content::Dsse {
                        payload: &payload,
                        payload_type: &envelope.payload_type,
                    },
                },
                verifier,
                now,
            )?;
            // Only now, verified, is the statement read.
            statement_names(&envelope.payload_type, &payload, algorithm, image_hex)?;
            Ok(signer)
        }
        _ => Err(Rejection::Encoding(
            "the bundle holds neither exactly a message signature nor a DSSE envelope".to_owned(),
        )),
    }
}

/// DSSE's pre-authentication encoding: what a DSSE signature is over.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Checks that a verified DSSE payload is cosign's image-signature statement for this digest.
fn statement_names(
    payload_type: &str,
    payload: &[u8],
    algorithm: &str,
    image_hex: &str,
) -> Result<(), Rejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Statement {
        #[serde(rename = "_type")]
        kind: String,
        #[serde(default)]
        subject: Vec<Subject>,
        #[serde(default)]
        predicate_type: String,
    }
    #[derive(Deserialize)]
    struct Subject {
        #[serde(default)]
        digest: std::collections::BTreeMap<String, String>,
    }
    if payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(Rejection::NotASignature(format!(
            "the DSSE envelope holds {payload_type:?}, not an in-toto statement"
        )));
    }
    let statement: Statement = serde_json::from_slice(payload)
        .map_err(|e| Rejection::Payload(format!("the in-toto statement is unreadable: {e}")))?;
    if !IN_TOTO_STATEMENT_TYPES.contains(&statement.kind.as_str()) {
        return Err(Rejection::Payload(format!(
            "the statement's _type is {:?}, not an in-toto statement",
            statement.kind
        )));
    }
    if statement.predicate_type != COSIGN_SIGN_PREDICATE {
        return Err(Rejection::NotASignature(format!(
            "the bundle is an attestation of type {:?}, not an image signature ({COSIGN_SIGN_PREDICATE})",
            statement.predicate_type
        )));
    }
    if statement.subject.iter().any(|s| {
        s.digest
            .get(algorithm)
            .is_some_and(|h| h.eq_ignore_ascii_case(image_hex))
    }) {
        return Ok(());
    }
    Err(Rejection::OtherDigest {
        signed: statement
            .subject
            .iter()
            .flat_map(|s| s.digest.iter())
            .map(|(a, h)| format!("{a}:{h}"))
            .next()
            .unwrap_or_else(|| "no subject".to_owned()),
    })
}

fn b64(text: &str, field: &str) -> Result<Vec<u8>, Rejection> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| Rejection::Encoding(format!("the bundle's {field} is not base64")))
}

// The bundle, as protobuf's JSON mapping writes it (camelCase, bytes in base64, 64-bit
// integers as strings or numbers).

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleDoc {
    #[serde(default)]
    media_type: String,
    verification_material: Option<MaterialDoc>,
    message_signature: Option<MessageDoc>,
    dsse_envelope: Option<EnvelopeDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MaterialDoc {
    x509_certificate_chain: Option<ChainDoc>,
    certificate: Option<RawDoc>,
    #[serde(default)]
    tlog_entries: Vec<TlogEntryDoc>,
    timestamp_verification_data: Option<TimestampsDoc>,
}

impl MaterialDoc {
    /// The signing certificate and the rest of the chain; none for a public-key bundle.
    #[allow(clippy::type_complexity)]
    fn certificates(&self) -> Result<(Option<Vec<u8>>, Vec<Vec<u8>>), Rejection> {
        if let Some(cert) = &self.certificate {
            return Ok((
                Some(b64(&cert.raw_bytes, "certificate.rawBytes")?),
                Vec::new(),
            ));
        }
        let Some(chain) = &self.x509_certificate_chain else {
            return Ok((None, Vec::new()));
        };
        if chain.certificates.len() > MAX_CHAIN_CERTIFICATES {
            return Err(Rejection::Encoding(format!(
                "the bundle's certificate chain has {} certificates, more than {MAX_CHAIN_CERTIFICATES}",
                chain.certificates.len()
            )));
        }
        let mut ders = chain
            .certificates
            .iter()
            .map(|c| b64(&c.raw_bytes, "x509CertificateChain.certificates[].rawBytes"))
            .collect::<Result<Vec<_>, _>>()?;
        if ders.is_empty() {
            return Err(Rejection::Encoding(
                "the bundle's certificate chain is empty".to_owned(),
            ));
        }
        let leaf = ders.remove(0);
        Ok((Some(leaf), ders))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampsDoc {
    #[serde(default)]
    rfc3161_timestamps: Vec<SignedTimestampDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedTimestampDoc {
    signed_timestamp: String,
}

/// A 64-bit integer, which protobuf's JSON mapping writes as a string (and leaves out when 0).
#[derive(Deserialize)]
#[serde(untagged)]
enum Int {
    Number(i64),
    Text(String),
}

impl Default for Int {
    fn default() -> Int {
        Int::Number(0)
    }
}

impl Int {
    fn get(&self, field: &str) -> Result<i64, Rejection> {
        match self {
            Int::Number(n) => Ok(*n),
            Int::Text(t) => t.parse().map_err(|_| {
                Rejection::Encoding(format!("the bundle's {field} {t:?} is not an integer"))
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlogEntryDoc {
    #[serde(default)]
    log_index: Int,
    log_id: LogIdDoc,
    kind_version: Option<KindVersionDoc>,
    integrated_time: Option<Int>,
    inclusion_promise: Option<PromiseDoc>,
    inclusion_proof: Option<ProofDoc>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogIdDoc {
    key_id: String,
}

#[derive(Deserialize)]
struct KindVersionDoc {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromiseDoc {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProofDoc {
    #[serde(default)]
    log_index: Int,
    root_hash: String,
    #[serde(default)]
    tree_size: Int,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: Option<CheckpointDoc>,
}

#[derive(Deserialize)]
struct CheckpointDoc {
    envelope: String,
}

impl TlogEntryDoc {
    fn entry(&self) -> Result<LogEntry, Rejection> {
        let proof = match &self.inclusion_proof {
            Some(p) => Some(InclusionProof {
                log_index: p.log_index.get("inclusionProof.logIndex")?,
                tree_size: p.tree_size.get("inclusionProof.treeSize")?,
                root_hash: b64(&p.root_hash, "inclusionProof.rootHash")?,
                hashes: p
                    .hashes
                    .iter()
                    .map(|h| b64(h, "inclusionProof.hashes[]"))
                    .collect::<Result<_, _>>()?,
                checkpoint: p
                    .checkpoint
                    .as_ref()
                    .map(|c| c.envelope.clone())
                    .ok_or_else(|| {
                        Rejection::Encoding(
                            "the bundle's inclusion proof has no checkpoint".to_owned(),
                        )
                    })?,
            }),
            None => None,
        };
        Ok(LogEntry {
            log_index: self.log_index.get("tlogEntries[].logIndex")?,
            log_id: b64(&self.log_id.key_id, "tlogEntries[].logId.keyId")?,
            integrated_time: match &self.integrated_time {
                Some(t) => t.get("tlogEntries[].integratedTime")?,
                None => 0,
            },
            body: b64(&self.canonicalized_body, "tlogEntries[].canonicalizedBody")?,
            kind_version: self
                .kind_version
                .as_ref()
                .map(|k| (k.kind.clone(), k.version.clone())),
            signed_entry_timestamp: self
                .inclusion_promise
                .as_ref()
                .map(|p| {
                    b64(
                        &p.signed_entry_timestamp,
                        "inclusionPromise.signedEntryTimestamp",
                    )
                })
                .transpose()?,
            inclusion_proof: proof,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageDoc {
    message_digest: Option<DigestDoc>,
    signature: String,
}

#[derive(Deserialize)]
struct DigestDoc {
    #[serde(default)]
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeDoc {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignatureDoc>,
}

#[derive(Deserialize)]
struct EnvelopeSignatureDoc {
    sig: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_authentication_encoding() {
        assert_eq!(
            pae("application/vnd.in-toto+json", b"{}"),
            b"DSSEv1 28 application/vnd.in-toto+json 2 {}".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn media_types() {
        for t in BUNDLE_MEDIA_TYPES {
            assert!(is_bundle_media_type(t));
        }
        assert!(!is_bundle_media_type(
            "application/vnd.oci.image.manifest.v1+json"
        ));
    }
}
