//! Image references: parsed exactly as the Docker/OCI reference grammar does, then normalised to
//! `REGISTRY/REPOSITORY[:TAG][@DIGEST]` for matching.
//!
//! PLACEHOLDER: the API below is fixed; the implementation is being written.

use std::fmt;

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Placeholder variant.
    #[error("{0}")]
    Invalid(String),
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    name: String,
    tag: Option<String>,
    digest: Option<String>,
    canonical: String,
}

impl Reference {
    /// Parses and normalises `input` (`nginx` → `docker.io/library/nginx:latest`).
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        Err(ReferenceError::Invalid(format!("not implemented: {input}")))
    }
    /// The registry host, lower-cased, with port; Docker Hub spellings become `docker.io`.
    pub fn registry(&self) -> &str {
        &self.registry
    }
    /// The repository path (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.repository
    }
    /// `REGISTRY/REPOSITORY`, what patterns match.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The tag as written; `latest` when the reference has neither tag nor digest.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    /// The digest (`sha256:…`), when pinned.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
    /// The tag that decides what runs: `None` when pinned by digest (the digest runs).
    pub fn effective_tag(&self) -> Option<&str> {
        if self.digest.is_some() {
            None
        } else {
            self.tag()
        }
    }
    /// Whether the tag is the implicit `latest` of a reference written without tag or digest.
    pub fn tag_is_implicit(&self) -> bool {
        false
    }
    /// Whether the reference is pinned by digest.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }
    /// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// The canonical name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";

/// Checks a digest (`ALGO:HEX`): `sha256` (64), `sha384` (96) or `sha512` (128) lower-case hex.
pub fn validate_digest(digest: &str) -> Result<(), ReferenceError> {
    let _ = digest;
    Ok(())
}

/// Normalises a registry host as references do: lower-cased, Docker Hub spellings
/// (`index.docker.io`, `registry-1.docker.io`) become `docker.io`.
pub fn normalize_registry(host: &str) -> String {
    host.to_ascii_lowercase()
}
