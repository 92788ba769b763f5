//! What a container runs, from the `imageID` the kubelet reports in a Pod's container
//! statuses. Container runtimes spell it differently:
//!
//! | runtime | `imageID` |
//! | --- | --- |
//! | containerd | `docker.io/library/nginx@sha256:<digest>` |
//! | CRI-O | `quay.io/org/app@sha256:<digest>` |
//! | dockershim, cri-dockerd | `docker-pullable://nginx@sha256:<digest>` |
//! | any, for an image built or loaded on the node | `sha256:<id>` or `docker://sha256:<id>` |
//!
//! The digest after `@` is a registry digest: the manifest (or multi-platform index) the node
//! pulled. The repository before it is not trusted: a runtime that holds one image under
//! several names reports any one of them. A bare `sha256:<id>` is the image's configuration
//! digest, which no registry reference names: it cannot be compared with a reference's digest.

use crate::reference::validate_digest;

/// What an `imageID` says about the image that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageId<'a> {
    /// A registry digest (`sha256:…`): what the node pulled.
    Digest(&'a str),
    /// A local image ID (`sha256:…`) without a registry digest: an image built or loaded on
    /// the node. What runs cannot be compared with a reference.
    Local(&'a str),
    /// Empty (the container has not started) or not a form the audit knows.
    Unknown,
}

/// Reads an `imageID` as the kubelet reports it.
pub fn parse_image_id(image_id: &str) -> ImageId<'_> {
    let id = image_id.trim();
    // `docker-pullable://REPO@DIGEST`, `docker://sha256:ID`: a scheme before the reference.
    let id = id.split_once("://").map_or(id, |(_, rest)| rest);
    if id.is_empty() {
        return ImageId::Unknown;
    }
    match id.rsplit_once('@') {
        Some((repository, digest)) if !repository.is_empty() && validate_digest(digest).is_ok() => {
            ImageId::Digest(digest)
        }
        Some(_) => ImageId::Unknown,
        None if validate_digest(id).is_ok() => ImageId::Local(id),
        None => ImageId::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn reads_every_runtime_s_spelling() {
        let digest = format!("sha256:{HEX}");
        let cases: Vec<(String, ImageId<'_>)> = vec![
            // containerd
            (
                format!("docker.io/library/nginx@{digest}"),
                ImageId::Digest(&digest),
            ),
            // CRI-O, a registry with a port
            (
                format!("registry.corp.example:5000/team/app@{digest}"),
                ImageId::Digest(&digest),
            ),
            // dockershim and cri-dockerd
            (
                format!("docker-pullable://nginx@{digest}"),
                ImageId::Digest(&digest),
            ),
            // an image built or loaded on the node
            (digest.clone(), ImageId::Local(&digest)),
            (format!("docker://{digest}"), ImageId::Local(&digest)),
            // not started yet, or nothing the audit can read
            (String::new(), ImageId::Unknown),
            ("  ".to_owned(), ImageId::Unknown),
            ("nginx:1.25".to_owned(), ImageId::Unknown),
            ("nginx@sha256:short".to_owned(), ImageId::Unknown),
            (format!("@{digest}"), ImageId::Unknown),
            (format!("nginx@SHA256:{HEX}"), ImageId::Unknown),
            (HEX.to_owned(), ImageId::Unknown),
        ];
        for (id, want) in &cases {
            assert_eq!(parse_image_id(id), *want, "{id:?}");
        }
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(
            parse_image_id(&format!("ghcr.io/a/b@{sha512}")),
            ImageId::Digest(&sha512)
        );
    }
}
