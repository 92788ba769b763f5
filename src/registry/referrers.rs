//! Sigstore bundles attached to an image as OCI 1.1 referrers (`cosign sign
//! --new-bundle-format`, `@sigstore/oci`): manifests whose `subject` is the image and whose
//! `artifactType` is a bundle media type, with the bundle as their layer.
//!
//! [`fetch`] lists the referrers of a digest through the registry's referrers API
//! (`GET /v2/<name>/referrers/<digest>`, following its pages), or, where the registry answers
//! 404 (it has no referrers API, as distribution 2.8), through the referrers tag schema: the
//! image index tagged `sha256-<hex>`. Referrers of other artifact types (SBOMs, attestations
//! named as such, anything unknown) are passed over without a request; at most
//! [`MAX_BUNDLES`] bundles are read, and when more are listed the outcome says so instead of
//! verifying nothing silently.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use serde::Deserialize;

use super::client::{Client, Fault, MANIFEST_MAX_BYTES, printable};
use super::cosign::{MAX_SIGNATURES, repository_name};
use crate::signature::bundle::{
    BUNDLE_MAX_BYTES, COSIGN_SIGN_PREDICATE, is_bundle_media_type, is_message_signature,
};

/// At most this many signature bundles are read per digest: the limit on signatures per digest
/// (DESIGN §2.1), shared with the `.sig` layers' own.
pub const MAX_BUNDLES: usize = MAX_SIGNATURES;
/// At most this many pages of the referrers API are read: a page holds hundreds of referrers,
/// and a signed image has a handful.
pub const MAX_REFERRER_PAGES: usize = 8;
/// Bundles read at the same time: a few requests in flight keep a cold verification short
/// without flooding the registry.
const CONCURRENT_READS: usize = 4;
/// The annotation cosign (and `@sigstore/oci`'s users) write on a bundle's referrer with the
/// predicate type of its DSSE statement: a bundle naming another predicate type is an
/// attestation, not a signature, and is not read.
pub const PREDICATE_TYPE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";

/// One bundle referrer, as read.
#[derive(Debug, Clone)]
pub enum Bundle {
    /// The bundle's bytes (its digest checked), and whether it is a message signature (which is
    /// verified over the image manifest).
    Read { bytes: Vec<u8>, message: bool },
    /// Not a bundle for this image after all (its manifest says otherwise): why.
    Foreign(String),
    /// Could not be read (over the limit, a registry fault, content not matching its digest).
    Unreadable(String),
}

/// The signature bundles attached to one digest.
#[derive(Debug, Clone, Default)]
pub struct Bundles {
    /// The bundles read, at most [`MAX_BUNDLES`].
    pub read: Vec<Bundle>,
    /// Why some bundle referrers were not read (more than [`MAX_BUNDLES`], or more pages than
    /// [`MAX_REFERRER_PAGES`]).
    pub unread: Option<String>,
    /// The image manifest, read when a message signature needs it: its bytes, or why not.
    pub manifest: Option<Result<Vec<u8>, String>>,
}

/// An image index, as the referrers API and the referrers tag schema hold referrers.
#[derive(Deserialize)]
struct IndexDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: i64,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The parts of a referrer manifest that matter.
#[derive(Deserialize)]
struct ReferrerDoc {
    #[serde(default)]
    subject: Option<Subject>,
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Subject {
    digest: String,
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: i64,
}

/// Reads the signature bundles attached to `digest` in `registry/repository`. A registry fault
/// on the list, or a list that is not an image index, is a fault (unavailable); a bundle that
/// cannot be read is kept as [`Bundle::Unreadable`], so that another may still verify.
pub async fn fetch(
    client: &Client,
    registry: &str,
    repository: &str,
    digest: &str,
) -> Result<Bundles, Fault> {
    let repo = repository_name(registry, repository);
    let (listed, more_pages) = list(client, registry, repository, digest, &repo).await?;
    let mut bundles: Vec<Descriptor> = listed
        .into_iter()
        .filter(|d| d.artifact_type.as_deref().is_some_and(is_bundle_media_type))
        .filter(|d| {
            d.annotations
                .get(PREDICATE_TYPE_ANNOTATION)
                .is_none_or(|t| t == COSIGN_SIGN_PREDICATE)
        })
        .collect();
    let mut unread = None;
    if bundles.len() > MAX_BUNDLES {
        unread = Some(format!(
            "{repo} lists {} signature bundles for {digest}; only the first {MAX_BUNDLES} are read",
            bundles.len()
        ));
        bundles.truncate(MAX_BUNDLES);
    } else if more_pages {
        unread = Some(format!(
            "{repo} lists the referrers of {digest} on more than {MAX_REFERRER_PAGES} pages; only those are read"
        ));
    }
    let read: Vec<Bundle> = futures::stream::iter(bundles)
        .map(|d| read_bundle(client, registry, repository, digest, &repo, d))
        .buffered(CONCURRENT_READS)
        .collect()
        .await;
    let manifest = if read
        .iter()
        .any(|b| matches!(b, Bundle::Read { message: true, .. }))
    {
        Some(match client.manifest(registry, repository, digest).await {
            Ok(Some(m)) => Ok(m.bytes),
            Ok(None) => Err(format!(
                "the manifest {repo}@{digest}, which message signatures are verified over, does not exist"
            )),
            Err(f) => Err(f.message().to_owned()),
        })
    } else {
        None
    };
    Ok(Bundles {
        read,
        unread,
        manifest,
    })
}

/// Every referrer listed for `digest`, and whether pages were left unread: from the referrers
/// API, or where it has none from the referrers tag schema.
async fn list(
    client: &Client,
    registry: &str,
    repository: &str,
    digest: &str,
    repo: &str,
) -> Result<(Vec<Descriptor>, bool), Fault> {
    let mut listed = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..MAX_REFERRER_PAGES {
        // Only the first page can be missing (no referrers API); a later page's 404 is a fault.
        let Some(found) = client
            .referrers(registry, repository, digest, next.as_deref())
            .await?
        else {
            return by_tag(client, registry, repository, digest, repo)
                .await
                .map(|l| (l, false));
        };
        listed.extend(index(
            &found.index,
            &format!("the referrers of {repo}@{digest}"),
        )?);
        match found.next {
            Some(url) => next = Some(url),
            None => return Ok((listed, false)),
        }
    }
    Ok((listed, true))
}

/// The referrers tag schema: the image index tagged `sha256-<hex>` (none: no referrers).
async fn by_tag(
    client: &Client,
    registry: &str,
    repository: &str,
    digest: &str,
    repo: &str,
) -> Result<Vec<Descriptor>, Fault> {
    let tag = digest.replacen(':', "-", 1);
    match client.manifest(registry, repository, &tag).await? {
        None => Ok(Vec::new()),
        Some(m) => index(&m.bytes, &format!("the referrers index {repo}:{tag}")),
    }
}

/// The descriptors of an image index; anything else is a fault naming `what`.
fn index(bytes: &[u8], what: &str) -> Result<Vec<Descriptor>, Fault> {
    let doc: IndexDoc = serde_json::from_slice(bytes).map_err(|e| {
        Fault::Unavailable(format!(
            "{what} is not an image index: {}",
            printable(&e.to_string(), 200)
        ))
    })?;
    if doc.schema_version != 2 {
        return Err(Fault::Unavailable(format!(
            "{what} has schemaVersion {}, not 2",
            doc.schema_version
        )));
    }
    Ok(doc.manifests)
}

/// Reads one bundle referrer: its manifest, then its bundle layer.
async fn read_bundle(
    client: &Client,
    registry: &str,
    repository: &str,
    digest: &str,
    repo: &str,
    d: Descriptor,
) -> Bundle {
    let name = format!("the bundle referrer {repo}@{}", printable(&d.digest, 100));
    if crate::reference::validate_digest(&d.digest).is_err() {
        return Bundle::Unreadable(format!("{name} has an invalid digest"));
    }
    if d.size < 0 || d.size as u64 > MANIFEST_MAX_BYTES as u64 {
        return Bundle::Unreadable(format!(
            "{name} is {} bytes, over the limit of {MANIFEST_MAX_BYTES} bytes per manifest",
            d.size
        ));
    }
    let manifest = match client.manifest(registry, repository, &d.digest).await {
        Ok(Some(m)) => m,
        Ok(None) => return Bundle::Unreadable(format!("{name} is listed but does not exist")),
        Err(f) => return Bundle::Unreadable(format!("{name}: {}", f.message())),
    };
    let doc: ReferrerDoc = match serde_json::from_slice(&manifest.bytes) {
        Ok(doc) => doc,
        Err(e) => {
            return Bundle::Unreadable(format!(
                "{name} is not a manifest: {}",
                printable(&e.to_string(), 200)
            ));
        }
    };
    match doc.subject.as_ref().map(|s| s.digest.as_str()) {
        Some(s) if s == digest => {}
        other => {
            return Bundle::Foreign(format!(
                "{name} refers to {}, not to this image",
                other.map_or("no image".to_owned(), |s| printable(s, 100))
            ));
        }
    }
    let Some(layer) = doc
        .layers
        .iter()
        .find(|l| is_bundle_media_type(&l.media_type))
    else {
        return Bundle::Foreign(format!("{name} has no bundle layer"));
    };
    match client
        .descriptor_blob(
            (registry, repository),
            (&layer.digest, layer.size),
            BUNDLE_MAX_BYTES,
            &format!("the bundle of {name}"),
        )
        .await
    {
        Ok(bytes) => Bundle::Read {
            message: is_message_signature(&bytes),
            bytes,
        },
        Err(why) => Bundle::Unreadable(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_read_leniently_and_refused_when_not_indexes() {
        let listed = index(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
                {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":10,"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","annotations":{"x":"y"}},
                {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":10}
            ]}"#,
            "the referrers",
        )
        .unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[1].artifact_type.is_none());
        for bad in [&b"{}"[..], b"[]", br#"{"schemaVersion":1}"#, b"\xff"] {
            let e = index(bad, "the referrers index r/a:sha256-x")
                .err()
                .unwrap();
            assert!(
                e.message().starts_with("the referrers index r/a:sha256-x"),
                "{e}"
            );
        }
    }
}
