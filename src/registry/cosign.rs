//! cosign signatures stored under the tag `sha256-<hex>.sig` of the image's repository: the
//! manifest's layers are simple-signing payloads, each with its base64 signature in the
//! `dev.cosignproject.cosign/signature` annotation.
//!
//! [`fetch`] reads the manifest and the payloads once for every verifier (within the limits of
//! DESIGN §2.1), with each layer's annotations: the signature, and for keyless or logged
//! signatures the certificate, its chain and the Rekor entry. The judge (`super::judge`) then
//! decides, for one verifier, whether one layer verifies as a whole
//! (`signature::cosign::verify_signature_layer`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::client::{Client, Fault, printable};
use crate::signature::cosign::{Annotations, SIMPLE_SIGNING_MEDIA_TYPE, signature_tag};

/// At most this many signatures are read per digest (DESIGN §2.1). A manifest listing more is
/// an over-limit artifact: unavailable, as no one signs an image 65 times.
pub const MAX_SIGNATURES: usize = 64;
/// The largest signature payload read (DESIGN §2.1): a simple-signing payload is a few hundred
/// bytes, and even with large optional claims far under 1 MiB.
pub const MAX_SIGNATURE_BYTES: usize = 1024 * 1024;

/// The manifest media types a signature manifest may have.
const IMAGE_MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// One layer of a signature manifest, as read.
#[derive(Debug, Clone)]
pub enum Layer {
    /// A simple-signing payload (its digest checked) and the annotations that carry its
    /// signature.
    Payload {
        payload: Vec<u8>,
        annotations: Annotations,
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
    let what = format!("layer {n} of {repo}:{tag}");
    match client
        .descriptor_blob(
            (registry, repository),
            (&d.digest, d.size),
            MAX_SIGNATURE_BYTES,
            &what,
        )
        .await
    {
        Ok(payload) => Layer::Payload {
            payload,
            annotations: Annotations::from_lookup(|name| {
                d.annotations.get(name).map(String::as_str)
            }),
        },
        Err(why) => Layer::Unreadable(why),
    }
}
