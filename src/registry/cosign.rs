//! cosign signatures stored under the tag `sha256-<hex>.sig` of the image's repository: the
//! manifest's layers are simple-signing payloads, each with its base64 signature in the
//! `dev.cosignproject.cosign/signature` annotation.
//!
//! [`fetch`] reads the manifest and the payloads once for every verifier (within the limits of
//! DESIGN §2.1); [`judge`] then decides, for one verifier, whether one layer verifies as a whole
//! (`signature::cosign::verify_layer`: its signature under the key, over a payload naming this
//! digest).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::client::{Client, Fault, printable};
use crate::evidence::{Outcome, SignatureFormat};
use crate::signature::Verifier;
use crate::signature::cosign::{
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, signature_tag, verify_layer,
};

/// At most this many signatures are read per digest (DESIGN §2.1). A manifest listing more is
/// an over-limit artifact: unavailable, as no one signs an image 65 times.
pub const MAX_SIGNATURES: usize = 64;
/// The largest signature payload read (DESIGN §2.1): a simple-signing payload is a few hundred
/// bytes, and even with large optional claims far under 1 MiB.
pub const MAX_SIGNATURE_BYTES: usize = 1024 * 1024;
/// At most this many distinct reasons are listed in a not-verified message.
const MAX_REASONS: usize = 3;

/// The manifest media types a signature manifest may have.
const IMAGE_MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// One layer of a signature manifest, as read.
#[derive(Debug, Clone)]
pub enum Layer {
    /// A simple-signing payload (its digest checked) and its signature annotation.
    Payload {
        payload: Vec<u8>,
        signature: Option<String>,
    },
    /// Not a signature this format knows (another media type): why.
    Foreign(String),
    /// Could not be read (over the limit, a registry fault, content not matching its digest).
    Unreadable(String),
}

/// The signatures of one digest.
#[derive(Debug, Clone)]
pub enum Signatures {
    /// There is no signature tag.
    None,
    /// The layers of the signature manifest (at most [`MAX_SIGNATURES`]).
    Found(Vec<Layer>),
}

/// The parts of a manifest that matter (unknown fields are ignored, as the OCI specification
/// requires of readers).
#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// `REGISTRY/REPOSITORY`, as messages name a repository.
pub fn repository_name(registry: &str, repository: &str) -> String {
    format!("{registry}/{repository}")
}

/// Reads the signatures of `digest` in `registry/repository`: the manifest tagged
/// `sha256-<hex>.sig`, then each layer's payload. A registry fault on the manifest, a manifest
/// that is not one, or over [`MAX_SIGNATURES`] layers, is a fault (unavailable); a layer that
/// cannot be read is kept as [`Layer::Unreadable`], so that another layer may still verify.
pub async fn fetch(
    client: &Client,
    registry: &str,
    repository: &str,
    digest: &str,
) -> Result<Signatures, Fault> {
    let tag = signature_tag(digest);
    let repo = repository_name(registry, repository);
    let Some(manifest) = client.manifest(registry, repository, &tag).await? else {
        return Ok(Signatures::None);
    };
    let malformed = |why: String| {
        Fault::Unavailable(format!(
            "the signature manifest {repo}:{tag} is malformed: {why}"
        ))
    };
    let doc: ManifestDoc = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| malformed(printable(&e.to_string(), 200)))?;
    if doc.schema_version != 2 {
        return Err(malformed(format!(
            "schemaVersion is {}, not 2",
            doc.schema_version
        )));
    }
    let media_type = doc.media_type.as_deref().or(manifest.media_type.as_deref());
    if let Some(t) = media_type
        && !IMAGE_MANIFEST_TYPES.contains(&t)
    {
        return Err(malformed(format!(
            "it is {}, not an image manifest",
            printable(t, 100)
        )));
    }
    let Some(descriptors) = doc.layers else {
        return Err(malformed("it has no layers".to_owned()));
    };
    if descriptors.len() > MAX_SIGNATURES {
        return Err(Fault::Unavailable(format!(
            "the signature manifest {repo}:{tag} lists {} signatures; at most {MAX_SIGNATURES} are read",
            descriptors.len()
        )));
    }
    let mut layers = Vec::with_capacity(descriptors.len());
    for (i, d) in descriptors.into_iter().enumerate() {
        layers.push(read_layer(client, registry, repository, &repo, &tag, i, d).await);
    }
    Ok(Signatures::Found(layers))
}

async fn read_layer(
    client: &Client,
    registry: &str,
    repository: &str,
    repo: &str,
    tag: &str,
    index: usize,
    d: Descriptor,
) -> Layer {
    let n = index + 1;
    if d.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
        return Layer::Foreign(format!(
            "layer {n} is {}, not a simple-signing payload",
            printable(&d.media_type, 100)
        ));
    }
    if crate::reference::validate_digest(&d.digest).is_err() {
        return Layer::Unreadable(format!(
            "layer {n} of {repo}:{tag} has an invalid digest {:?}",
            printable(&d.digest, 100)
        ));
    }
    if d.size < 0 || d.size as u64 > MAX_SIGNATURE_BYTES as u64 {
        return Layer::Unreadable(format!(
            "layer {n} of {repo}:{tag} is {} bytes, over the limit of {MAX_SIGNATURE_BYTES} bytes per signature",
            d.size
        ));
    }
    match client
        .blob(registry, repository, &d.digest, MAX_SIGNATURE_BYTES)
        .await
    {
        Ok(payload) if payload.len() as i64 != d.size => Layer::Unreadable(format!(
            "layer {n} of {repo}:{tag} is {} bytes, not the {} its manifest says",
            payload.len(),
            d.size
        )),
        Ok(payload) => Layer::Payload {
            payload,
            signature: d.annotations.get(SIGNATURE_ANNOTATION).cloned(),
        },
        Err(f) => Layer::Unreadable(format!("layer {n} of {repo}:{tag}: {}", f.message())),
    }
}

/// The outcome for one verifier: [`Outcome::Verified`] by the first layer that verifies as a
/// whole; otherwise unavailable when some layer could not be read (it might have been the one),
/// else not verified, saying why.
pub fn judge(
    signatures: &Signatures,
    verifier: &Verifier,
    registry: &str,
    repository: &str,
    digest: &str,
) -> Outcome {
    let repo = repository_name(registry, repository);
    let layers = match signatures {
        Signatures::None => {
            return Outcome::NotVerified {
                reason: format!("no signature for {digest} in {repo}"),
            };
        }
        Signatures::Found(layers) => layers,
    };
    if layers.is_empty() {
        return Outcome::NotVerified {
            reason: format!(
                "no signature for {digest} in {repo} (its signature manifest has no layers)"
            ),
        };
    }
    let mut reasons: Vec<String> = Vec::new();
    let mut unreadable: Vec<&str> = Vec::new();
    for layer in layers {
        match layer {
            Layer::Payload { payload, signature } => {
                match verify_layer(payload, signature.as_deref(), verifier, digest) {
                    Ok(()) => {
                        return Outcome::Verified {
                            digest: digest.to_owned(),
                            format: SignatureFormat::CosignTag,
                            signer: verifier.describe(),
                        };
                    }
                    Err(r) => reasons.push(r.to_string()),
                }
            }
            Layer::Foreign(why) => reasons.push(why.clone()),
            Layer::Unreadable(why) => unreadable.push(why),
        }
    }
    if let Some(first) = unreadable.first() {
        let more = match unreadable.len() {
            1 => String::new(),
            2 => " (and 1 more layer)".to_owned(),
            n => format!(" (and {} more layers)", n - 1),
        };
        return Outcome::Unavailable {
            reason: format!("{first}{more}; no other signature for {digest} in {repo} verifies"),
        };
    }
    let count = match layers.len() {
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
            signature: Some(signature),
        }
    }

    fn judged(layers: Vec<Layer>, verifier: &Verifier) -> Outcome {
        judge(
            &Signatures::Found(layers),
            verifier,
            "r.example",
            "team/app",
            DIGEST,
        )
    }

    #[test]
    fn the_first_layer_that_verifies_as_a_whole_decides() {
        let (pair, pem) = p256();
        let (other, _) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let outcome = judged(
            vec![
                signed(&other, DIGEST),
                Layer::Unreadable("layer 2: 503".into()),
                signed(&pair, DIGEST),
            ],
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
        assert_eq!(
            judge(
                &Signatures::None,
                &verifier,
                "r.example",
                "team/app",
                DIGEST
            ),
            Outcome::NotVerified {
                reason: format!("no signature for {DIGEST} in r.example/team/app")
            }
        );
        let other = "sha256:4a0000000000000000000000000000000000000000000000000000000000b2";
        let Outcome::NotVerified { reason } = judged(
            vec![signed(&pair, other), Layer::Foreign("layer 2 is x".into())],
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
            judged(vec![], &verifier),
            Outcome::NotVerified { .. }
        ));
    }

    #[test]
    fn an_unreadable_layer_makes_it_unavailable_when_nothing_verifies() {
        let (_, pem) = p256();
        let (other, _) = p256();
        let verifier = Verifier::key(PublicKey::from_pem(&pem).unwrap());
        let outcome = judged(
            vec![
                Layer::Unreadable("layer 1 is too big".into()),
                signed(&other, DIGEST),
                Layer::Unreadable("layer 3: 503".into()),
            ],
            &verifier,
        );
        assert_eq!(
            outcome,
            Outcome::Unavailable {
                reason: format!(
                    "layer 1 is too big (and 1 more layer); no other signature for {DIGEST} in r.example/team/app verifies"
                )
            }
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
