//! Image references: parsed as the Docker/OCI reference grammar does (distribution's
//! `ParseNormalizedNamed`), then normalised to `REGISTRY/REPOSITORY[:TAG][@DIGEST]` for matching.
//!
//! The grammar, with imagegate's normalisation on top:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ host "/" ] path                      (at most 255 characters once normalised)
//! host       := ( dns-name | "[" [0-9A-Fa-f:]+ "]" ) [ ":" [0-9]+ ]
//! dns-name   := label ( "." label )*                   label := [A-Za-z0-9] ( [A-Za-z0-9-]* [A-Za-z0-9] )?
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := ( "sha256:" hex{64} | "sha384:" hex{96} | "sha512:" hex{128} )   hex := [0-9a-f]
//! ```
//!
//! The first component of the name is a host only when it is followed by `/` and contains `.`
//! or `:`, is `localhost`, or has an upper-case letter; otherwise the host is Docker Hub. The
//! host is lower-cased; `index.docker.io` and `registry-1.docker.io` become `docker.io`; a
//! one-component path on Docker Hub gets `library/`. With neither tag nor digest the tag is
//! `latest`. A bare 64-hex-digit string is an image ID, not a reference.
//!
//! The parser is written by hand rather than taken from a crate: `oci-spec`'s
//! `distribution::Reference` (also what `oci-client` re-exports) reads `Foo/bar` as a Docker Hub
//! path, knows neither `registry-1.docker.io` nor host case folding, accepts upper-case digest
//! hex and bare image IDs, has no `[IPv6]` hosts, and limits the length of the repository path
//! rather than of the whole name. See `docs/references.md`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// The canonical name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";

/// Other spellings of Docker Hub's host: the legacy index name, and the host the Docker client
/// actually pulls from. Both reach the same registry, so a rule on `docker.io` must cover them.
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// The namespace of Docker Hub's official images (`nginx` is `docker.io/library/nginx`).
const OFFICIAL_NAMESPACE: &str = "library";

/// The tag of a reference written with neither tag nor digest.
const IMPLICIT_TAG: &str = "latest";

/// The longest `REGISTRY/REPOSITORY` the grammar allows (distribution's `NameTotalLengthMax`);
/// registries reject longer names, so such a reference could never be pulled.
pub const NAME_MAX_LEN: usize = 255;

/// The longest tag the grammar allows (`[\w][\w.-]{0,127}`).
pub const TAG_MAX_LEN: usize = 128;

/// Length of a bare image ID (a sha256 in hex without its algorithm prefix).
const IMAGE_ID_LEN: usize = 64;

/// How a valid reference looks, quoted by the error messages.
const EXAMPLE: &str = "e.g. `nginx:1.27` or `registry.corp.example/team/app:1.4.2`";

/// The digest algorithms a reference may be pinned with, and their length in hex digits.
const DIGEST_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// Why a string is not a valid image reference. Each message says what is wrong and what a
/// valid reference looks like; it is shown to the `kubectl` user whose workload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The string is empty.
    #[error("the image reference is empty; write one, {EXAMPLE}", EXAMPLE = EXAMPLE)]
    Empty,

    /// A control character (newline, tab, NUL, …) appears somewhere.
    #[error(
        "the image reference contains the control character {code} at character {position}; \
         a reference is a single word with no control characters, {EXAMPLE}",
        code = code_point(.character),
        EXAMPLE = EXAMPLE
    )]
    ControlCharacter {
        /// The offending character.
        character: char,
        /// Its 1-based position, in characters.
        position: usize,
    },

    /// A space (or other whitespace) appears somewhere.
    #[error(
        "the image reference contains whitespace ({code}) at character {position}; \
         a reference is a single word with no spaces, {EXAMPLE}",
        code = code_point(.character),
        EXAMPLE = EXAMPLE
    )]
    Whitespace {
        /// The offending character.
        character: char,
        /// Its 1-based position, in characters.
        position: usize,
    },

    /// A bare 64-hex-digit string: an image ID, which names no repository.
    #[error(
        "`{0}` is a bare image ID, not an image reference; name the repository and pin the \
         digest instead, e.g. `registry.corp.example/team/app@sha256:<64 hex digits>`"
    )]
    ImageId(String),

    /// Nothing before the `:TAG` or `@DIGEST`.
    #[error(
        "the image reference has no repository name before its tag or digest; {EXAMPLE}",
        EXAMPLE = EXAMPLE
    )]
    MissingName,

    /// A `:` with no tag after it (`nginx:` or `nginx:@sha256:…`).
    #[error(
        "the image reference has a `:` with no tag after it; write a tag after the colon or \
         drop the colon, e.g. `app:1.4.2` or `app`"
    )]
    EmptyTag,

    /// A tag outside the tag grammar.
    #[error(
        "the tag `{0}` is invalid; a tag is 1 to 128 ASCII letters, digits, `_`, `.` and `-`, \
         not starting with `.` or `-`, e.g. `1.4.2` or `v2-alpine`"
    )]
    InvalidTag(String),

    /// An `@` with no digest after it.
    #[error(
        "the image reference ends in `@` with no digest after it; write a digest after the `@` \
         or drop the `@`, e.g. `app@sha256:<64 hex digits>` or `app:1.4.2`"
    )]
    EmptyDigest,

    /// A digest without `ALGORITHM:`.
    #[error(
        "the digest `{0}` has no algorithm and hex digits; write `ALGORITHM:HEX`, e.g. \
         `app@sha256:<64 hex digits>` (or sha384 with 96, sha512 with 128)"
    )]
    DigestMissingAlgorithm(String),

    /// A digest algorithm other than sha256, sha384 and sha512.
    #[error(
        "the digest algorithm `{0}` is not supported; pin with sha256, sha384 or sha512 \
         (lower-case), e.g. `app@sha256:<64 hex digits>`"
    )]
    UnsupportedDigestAlgorithm(String),

    /// A digest with a character other than `0-9a-f` after the algorithm.
    #[error(
        "the {algorithm} digest contains {character:?}; a digest is lower-case hexadecimal \
         (`0-9`, `a-f`), e.g. `{algorithm}:{example}…`",
        example = "0123456789abcdef"
    )]
    DigestNotLowerHex {
        /// The digest's algorithm.
        algorithm: String,
        /// The first character that is not a lower-case hex digit.
        character: char,
    },

    /// A digest with the wrong number of hex digits for its algorithm.
    #[error(
        "the {algorithm} digest has {found} hex digits but a {algorithm} digest has exactly \
         {expected}; copy the whole digest, e.g. `{algorithm}:<{expected} hex digits>`"
    )]
    DigestLength {
        /// The digest's algorithm.
        algorithm: String,
        /// The number of hex digits the algorithm has.
        expected: usize,
        /// The number of hex digits written.
        found: usize,
    },

    /// A first component read as a host (it has `.`, `:`, or upper case, or is `localhost`)
    /// that is not a valid host.
    #[error(
        "the registry host `{0}` is invalid; a host is a DNS name (letters, digits and `-` in \
         dot-separated labels), an IPv4 address or a bracketed IPv6 address, optionally with \
         `:PORT`, e.g. `registry.corp.example:5000/team/app` or `[fd00::1]:5000/app`"
    )]
    InvalidRegistry(String),

    /// An upper-case letter in the repository path.
    #[error(
        "the repository path `{0}` contains upper-case letters; repository paths are \
         lower-case, e.g. `registry.corp.example/team/app`"
    )]
    UppercaseRepository(String),

    /// An empty path component: a leading, trailing or doubled `/`.
    #[error(
        "the repository path `{0}` has an empty component (a leading, trailing or doubled `/`); \
         separate components with single slashes, e.g. `registry.corp.example/team/app`"
    )]
    EmptyPathComponent(String),

    /// A path component outside the component grammar.
    #[error(
        "the repository path component `{0}` is invalid; a component is lower-case letters and \
         digits, separated by `.`, `_`, `__` or a run of `-`, e.g. `my-app`, `app_v2` or `app.web`"
    )]
    InvalidPathComponent(String),

    /// `REGISTRY/REPOSITORY` longer than [`NAME_MAX_LEN`] once normalised.
    #[error(
        "the image name is {0} characters long once normalised to `REGISTRY/REPOSITORY`, over \
         the limit of {max}; registries refuse longer names, so shorten the repository path, \
         e.g. `registry.corp.example/team/app`",
        max = NAME_MAX_LEN
    )]
    NameTooLong(usize),
}

/// A parsed, normalised image reference.
///
/// Two references are equal when their canonical forms are: `nginx` equals
/// `docker.io/library/nginx:latest`, whether or not `latest` was written.
#[derive(Debug, Clone)]
pub struct Reference {
    registry: String,
    repository: String,
    name: String,
    tag: Option<String>,
    digest: Option<String>,
    tag_is_implicit: bool,
    canonical: String,
}

impl Reference {
    /// Parses and normalises `input` (`nginx` → `docker.io/library/nginx:latest`).
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        for (i, character) in input.chars().enumerate() {
            if character.is_control() {
                return Err(ReferenceError::ControlCharacter {
                    character,
                    position: i + 1,
                });
            }
            if character.is_whitespace() {
                return Err(ReferenceError::Whitespace {
                    character,
                    position: i + 1,
                });
            }
        }
        if is_image_id(input) {
            return Err(ReferenceError::ImageId(input.to_owned()));
        }

        // The digest is everything after the first `@`.
        let (rest, digest) = match input.split_once('@') {
            Some((_, "")) => return Err(ReferenceError::EmptyDigest),
            Some((rest, digest)) => {
                validate_digest(digest)?;
                (rest, Some(digest))
            }
            None => (input, None),
        };

        // The tag follows the first `:` of the last path component (a `:` before the last `/`
        // is a port).
        let last_component = rest.rfind('/').map_or(0, |i| i + 1);
        let (written_name, tag) = match rest[last_component..].find(':') {
            Some(i) => {
                let colon = last_component + i;
                let tag = &rest[colon + 1..];
                if tag.is_empty() {
                    return Err(ReferenceError::EmptyTag);
                }
                validate_tag(tag)?;
                (&rest[..colon], Some(tag))
            }
            None => (rest, None),
        };
        if written_name.is_empty() {
            return Err(ReferenceError::MissingName);
        }

        let (host, path) = split_host(written_name);
        let registry = match host {
            Some(host) => {
                validate_host(host)?;
                normalize_registry(host)
            }
            None => DOCKER_HUB.to_owned(),
        };
        validate_path(path)?;

        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_owned()
        };
        let name = format!("{registry}/{repository}");
        if name.len() > NAME_MAX_LEN {
            return Err(ReferenceError::NameTooLong(name.len()));
        }

        let tag_is_implicit = tag.is_none() && digest.is_none();
        let tag = match tag {
            Some(tag) => Some(tag.to_owned()),
            None if tag_is_implicit => Some(IMPLICIT_TAG.to_owned()),
            None => None,
        };
        let digest = digest.map(str::to_owned);
        let canonical = canonical_form(&registry, &repository, tag.as_deref(), digest.as_deref());
        Ok(Reference {
            registry,
            repository,
            name,
            tag,
            digest,
            tag_is_implicit,
            canonical,
        })
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
        self.tag_is_implicit
    }
    /// Whether the reference is pinned by digest.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }
    /// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`, itself a valid reference that parses back to this
    /// one.
    ///
    /// One exception to the lower-case host: a host that is a host only because of its upper
    /// case (`Foo/bar`: one label, no port, not `localhost`) is written in upper case
    /// (`FOO/bar:latest`), since `foo/bar` would name the Docker Hub repository `foo/bar`.
    /// [`Reference::registry`] and [`Reference::name`] are lower-case as always.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

impl PartialEq for Reference {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for Reference {}

impl Hash for Reference {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.canonical.hash(state);
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Checks a digest (`ALGO:HEX`): `sha256` (64), `sha384` (96) or `sha512` (128) lower-case hex.
pub fn validate_digest(digest: &str) -> Result<(), ReferenceError> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(ReferenceError::DigestMissingAlgorithm(digest.to_owned()));
    };
    let Some(&(_, expected)) = DIGEST_ALGORITHMS.iter().find(|(a, _)| *a == algorithm) else {
        return Err(ReferenceError::UnsupportedDigestAlgorithm(
            algorithm.to_owned(),
        ));
    };
    if let Some(character) = hex.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(ReferenceError::DigestNotLowerHex {
            algorithm: algorithm.to_owned(),
            character,
        });
    }
    if hex.len() != expected {
        return Err(ReferenceError::DigestLength {
            algorithm: algorithm.to_owned(),
            expected,
            found: hex.len(),
        });
    }
    Ok(())
}

/// `U+0009`, for messages about characters that do not show.
fn code_point(c: &char) -> String {
    format!("U+{:04X}", u32::from(*c))
}

/// Normalises a registry host as references do: lower-cased, Docker Hub spellings
/// (`index.docker.io`, `registry-1.docker.io`) become `docker.io`. No IDNA decoding: a host
/// that is not ASCII stays as it is (apart from ASCII case) and never equals an ASCII one.
pub fn normalize_registry(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        host
    }
}

/// A bare sha256 in hex, which distribution refuses as a name (it would be read as an image ID).
fn is_image_id(s: &str) -> bool {
    s.len() == IMAGE_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Splits `HOST/PATH` when the first component is a host (it contains `.` or `:`, is
/// `localhost`, or has an upper-case letter); otherwise the whole name is a Docker Hub path.
fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), path)
        }
        _ => (None, name),
    }
}

/// `( dns-name | "[" [0-9A-Fa-f:]+ "]" ) [ ":" [0-9]+ ]`.
fn validate_host(host: &str) -> Result<(), ReferenceError> {
    let invalid = || ReferenceError::InvalidRegistry(host.to_owned());
    let port = if let Some(bracketed) = host.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        let ipv6 =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !ipv6 {
            return Err(invalid());
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(invalid)?),
        }
    } else {
        let (address, port) = match host.split_once(':') {
            Some((address, port)) => (address, Some(port)),
            None => (host, None),
        };
        if !address.split('.').all(is_dns_label) {
            return Err(invalid());
        }
        port
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid());
    }
    Ok(())
}

/// `[A-Za-z0-9] ( [A-Za-z0-9-]* [A-Za-z0-9] )?`.
fn is_dns_label(label: &str) -> bool {
    let b = label.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        }
        _ => false,
    }
}

/// `component ( "/" component )*`, lower-case.
fn validate_path(path: &str) -> Result<(), ReferenceError> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository(path.to_owned()));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(ReferenceError::EmptyPathComponent(path.to_owned()));
        }
        if !is_path_component(component) {
            return Err(ReferenceError::InvalidPathComponent(component.to_owned()));
        }
    }
    Ok(())
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !bytes.first().is_some_and(alphanumeric) || !bytes.last().is_some_and(alphanumeric) {
        return false;
    }
    // Between runs of alphanumerics, each separator run must be one of the allowed ones.
    bytes
        .split(alphanumeric)
        .filter(|separator| !separator.is_empty())
        .all(|separator| {
            matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|b| *b == b'-')
        })
}

/// `[A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = tag.as_bytes();
    let valid = tag.len() <= TAG_MAX_LEN
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || matches!(b, b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag(tag.to_owned()))
    }
}

/// `REGISTRY/REPOSITORY[:TAG][@DIGEST]`, with the upper-case exception described at
/// [`Reference::canonical`].
fn canonical_form(
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> String {
    let host_only_by_case = !registry.contains(['.', ':']) && registry != "localhost";
    let mut out = String::with_capacity(
        registry.len()
            + repository.len()
            + tag.map_or(0, |t| t.len() + 1)
            + digest.map_or(0, |d| d.len() + 1)
            + 1,
    );
    if host_only_by_case {
        out.push_str(&registry.to_ascii_uppercase());
    } else {
        out.push_str(registry);
    }
    out.push('/');
    out.push_str(repository);
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ReferenceError as E;
    use super::*;

    const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn hex(n: usize) -> String {
        HEX64.chars().cycle().take(n).collect()
    }
    fn sha256() -> String {
        format!("sha256:{HEX64}")
    }
    fn sha384() -> String {
        format!("sha384:{}", hex(96))
    }
    fn sha512() -> String {
        format!("sha512:{}", hex(128))
    }

    /// One valid reference and what it must normalise to.
    struct Valid {
        input: String,
        registry: &'static str,
        repository: String,
        tag: Option<String>,
        digest: Option<String>,
        canonical: String,
    }

    fn ok(input: impl Into<String>, canonical: impl Into<String>) -> Valid {
        let input = input.into();
        let canonical: String = canonical.into();
        // Derive the expected parts from the expected canonical form, independently of the
        // parser: HOST/PATH[:TAG][@DIGEST].
        let (rest, digest) = match canonical.split_once('@') {
            Some((r, d)) => (r.to_owned(), Some(d.to_owned())),
            None => (canonical.clone(), None),
        };
        let slash = rest.rfind('/').unwrap();
        let (name, tag) = match rest[slash..].find(':') {
            Some(i) => (
                rest[..slash + i].to_owned(),
                Some(rest[slash + i + 1..].to_owned()),
            ),
            None => (rest.clone(), None),
        };
        let (host, repository) = name.split_once('/').unwrap();
        let registry: &'static str = Box::leak(host.to_ascii_lowercase().into_boxed_str());
        Valid {
            input,
            registry,
            repository: repository.to_owned(),
            tag,
            digest,
            canonical,
        }
    }

    fn valid_cases() -> Vec<Valid> {
        let d256 = sha256();
        vec![
            // Docker Hub: implicit host, `library/`, implicit `latest`.
            ok("nginx", "docker.io/library/nginx:latest"),
            ok("nginx:1.27", "docker.io/library/nginx:1.27"),
            ok("library/nginx", "docker.io/library/nginx:latest"),
            ok("bitnami/redis:7.2", "docker.io/bitnami/redis:7.2"),
            ok("docker.io/nginx", "docker.io/library/nginx:latest"),
            ok("Docker.IO/nginx", "docker.io/library/nginx:latest"),
            ok(
                "docker.io/library/nginx:latest",
                "docker.io/library/nginx:latest",
            ),
            ok("docker.io/a/b/c", "docker.io/a/b/c:latest"),
            ok("index.docker.io/nginx", "docker.io/library/nginx:latest"),
            ok(
                "index.docker.io/bitnami/redis:7",
                "docker.io/bitnami/redis:7",
            ),
            ok(
                "registry-1.docker.io/nginx:1.27",
                "docker.io/library/nginx:1.27",
            ),
            ok("REGISTRY-1.Docker.io/team/app", "docker.io/team/app:latest"),
            ok("a", "docker.io/library/a:latest"),
            ok("0/1", "docker.io/0/1:latest"),
            // No `/`: the first component is a path, and a `:` starts the tag.
            ok("localhost", "docker.io/library/localhost:latest"),
            ok("localhost:5000", "docker.io/library/localhost:5000"),
            ok(
                "registry.corp.example",
                "docker.io/library/registry.corp.example:latest",
            ),
            ok("test.com:tag", "docker.io/library/test.com:tag"),
            // Distribution reads `sha256:<hex>` as repository `sha256` with a tag.
            ok(
                format!("sha256:{HEX64}"),
                format!("docker.io/library/sha256:{HEX64}"),
            ),
            ok(hex(63), format!("docker.io/library/{}:latest", hex(63))),
            // Upper case makes the first component a host; the canonical form keeps that
            // reading by writing such a host in upper case.
            ok("Foo/bar", "FOO/bar:latest"),
            ok("fooBar/baz:1", "FOOBAR/baz:1"),
            ok("FOO/bar", "FOO/bar:latest"),
            ok("LocalHost/app", "localhost/app:latest"),
            // Hosts: localhost, ports, IPv4, IPv6, case.
            ok("localhost/app", "localhost/app:latest"),
            ok("localhost:5000/app:dev", "localhost:5000/app:dev"),
            ok(
                "registry.corp.example/team/app:1.4.2",
                "registry.corp.example/team/app:1.4.2",
            ),
            ok(
                "Registry.Corp.Example/team/app",
                "registry.corp.example/team/app:latest",
            ),
            ok(
                "registry.corp.example:5000/team/app",
                "registry.corp.example:5000/team/app:latest",
            ),
            ok("10.0.0.1:5000/app", "10.0.0.1:5000/app:latest"),
            ok("192.168.1.10/app:1", "192.168.1.10/app:1"),
            ok("[fd00::1]:5000/app:1", "[fd00::1]:5000/app:1"),
            ok("[FD00::1]/app", "[fd00::1]/app:latest"),
            ok("[::1]:5000/team/app", "[::1]:5000/team/app:latest"),
            ok("docker.io:443/nginx", "docker.io:443/nginx:latest"),
            // Paths: many components, every separator.
            ok("ghcr.io/org/team/sub/app:v1", "ghcr.io/org/team/sub/app:v1"),
            ok("quay.io/a/b/c/d/e", "quay.io/a/b/c/d/e:latest"),
            ok("example.com/my__app", "example.com/my__app:latest"),
            ok("example.com/my---app", "example.com/my---app:latest"),
            ok(
                "example.com/a.b_c-d/e__f",
                "example.com/a.b_c-d/e__f:latest",
            ),
            // Tags: case and punctuation as written, up to 128 characters.
            ok(
                "app:V1_Release.2-rc",
                "docker.io/library/app:V1_Release.2-rc",
            ),
            ok("app:_x", "docker.io/library/app:_x"),
            ok(
                format!("app:{}", "t".repeat(128)),
                format!("docker.io/library/app:{}", "t".repeat(128)),
            ),
            // Digests: pinned, and a tag next to a digest is kept for display.
            ok(
                format!("nginx@{d256}"),
                format!("docker.io/library/nginx@{d256}"),
            ),
            ok(
                format!("nginx:1.27@{d256}"),
                format!("docker.io/library/nginx:1.27@{d256}"),
            ),
            ok(
                format!("nginx:latest@{d256}"),
                format!("docker.io/library/nginx:latest@{d256}"),
            ),
            ok(
                format!("ghcr.io/org/app@{}", sha384()),
                format!("ghcr.io/org/app@{}", sha384()),
            ),
            ok(
                format!("ghcr.io/org/app@{}", sha512()),
                format!("ghcr.io/org/app@{}", sha512()),
            ),
            ok(
                format!("registry.corp.example:5000/app:1@{d256}"),
                format!("registry.corp.example:5000/app:1@{d256}"),
            ),
            // The longest name allowed: 255 characters once normalised.
            ok(
                format!("registry.corp.example/{}", "a".repeat(233)),
                format!("registry.corp.example/{}:latest", "a".repeat(233)),
            ),
            ok(
                format!("registry-1.docker.io/{}", "b".repeat(237)),
                format!("docker.io/library/{}:latest", "b".repeat(237)),
            ),
        ]
    }

    #[test]
    fn valid_references_normalise() {
        let cases = valid_cases();
        for case in &cases {
            let r = Reference::parse(&case.input)
                .unwrap_or_else(|e| panic!("{:?} should parse: {e}", case.input));
            let input = &case.input;
            assert_eq!(r.canonical(), case.canonical, "canonical of {input:?}");
            assert_eq!(r.to_string(), case.canonical, "Display of {input:?}");
            assert_eq!(r.registry(), case.registry, "registry of {input:?}");
            assert_eq!(r.repository(), case.repository, "repository of {input:?}");
            assert_eq!(
                r.name(),
                format!("{}/{}", case.registry, case.repository),
                "name of {input:?}"
            );
            assert_eq!(r.tag(), case.tag.as_deref(), "tag of {input:?}");
            assert_eq!(r.digest(), case.digest.as_deref(), "digest of {input:?}");
            assert_eq!(r.is_pinned(), case.digest.is_some(), "pinned {input:?}");
            let effective = if case.digest.is_some() {
                None
            } else {
                case.tag.as_deref()
            };
            assert_eq!(r.effective_tag(), effective, "effective tag of {input:?}");
            let written_without_tag = !input.rsplit('/').next().unwrap().contains([':', '@']);
            assert_eq!(
                r.tag_is_implicit(),
                written_without_tag,
                "implicit tag of {input:?}"
            );
            assert_eq!(
                input.parse::<Reference>().as_ref(),
                Ok(&r),
                "FromStr of {input:?}"
            );
        }
        assert!(cases.len() >= 50, "{} valid cases", cases.len());
    }

    #[test]
    fn digest_wins_over_tag() {
        let r = Reference::parse(&format!("nginx:1.27@{}", sha256())).unwrap();
        assert_eq!(r.tag(), Some("1.27"));
        assert_eq!(r.effective_tag(), None);
        assert!(r.is_pinned());
        assert!(!r.tag_is_implicit());
        let r = Reference::parse(&format!("nginx@{}", sha256())).unwrap();
        assert_eq!(r.tag(), None);
        assert!(!r.tag_is_implicit());
        let r = Reference::parse("nginx").unwrap();
        assert_eq!(
            (r.tag(), r.effective_tag()),
            (Some("latest"), Some("latest"))
        );
        assert!(r.tag_is_implicit() && !r.is_pinned());
    }

    fn invalid_cases() -> Vec<(String, ReferenceError)> {
        let s = |x: &str| x.to_owned();
        let d256 = sha256();
        vec![
            (s(""), E::Empty),
            (
                s(" "),
                E::Whitespace {
                    character: ' ',
                    position: 1,
                },
            ),
            (
                s("nginx "),
                E::Whitespace {
                    character: ' ',
                    position: 6,
                },
            ),
            (
                s("ngi nx"),
                E::Whitespace {
                    character: ' ',
                    position: 4,
                },
            ),
            (
                s("nginx\u{a0}"),
                E::Whitespace {
                    character: '\u{a0}',
                    position: 6,
                },
            ),
            (
                s("nginx\u{2003}:1"),
                E::Whitespace {
                    character: '\u{2003}',
                    position: 6,
                },
            ),
            (
                s("nginx\n"),
                E::ControlCharacter {
                    character: '\n',
                    position: 6,
                },
            ),
            (
                s("\tnginx"),
                E::ControlCharacter {
                    character: '\t',
                    position: 1,
                },
            ),
            (
                s("ngi\0nx"),
                E::ControlCharacter {
                    character: '\0',
                    position: 4,
                },
            ),
            (
                s("nginx\u{7f}"),
                E::ControlCharacter {
                    character: '\u{7f}',
                    position: 6,
                },
            ),
            (
                s("ñginx\r"),
                E::ControlCharacter {
                    character: '\r',
                    position: 6,
                },
            ),
            (s(HEX64), E::ImageId(s(HEX64))),
            // Trailing separators and missing parts.
            (s("nginx:"), E::EmptyTag),
            (s("registry.corp.example/app:"), E::EmptyTag),
            (format!("nginx:@{d256}"), E::EmptyTag),
            (s("nginx@"), E::EmptyDigest),
            (s("nginx:1@"), E::EmptyDigest),
            (s(":latest"), E::MissingName),
            (format!("@{d256}"), E::MissingName),
            // Digests.
            (s("nginx@sha256"), E::DigestMissingAlgorithm(s("sha256"))),
            (
                s("nginx@sha256:abc"),
                E::DigestLength {
                    algorithm: s("sha256"),
                    expected: 64,
                    found: 3,
                },
            ),
            (
                format!("nginx@sha256:{}", HEX64.to_ascii_uppercase()),
                E::DigestNotLowerHex {
                    algorithm: s("sha256"),
                    character: 'A',
                },
            ),
            (
                format!("nginx@sha256:{}", hex(65)),
                E::DigestLength {
                    algorithm: s("sha256"),
                    expected: 64,
                    found: 65,
                },
            ),
            (
                format!("nginx@sha384:{HEX64}"),
                E::DigestLength {
                    algorithm: s("sha384"),
                    expected: 96,
                    found: 64,
                },
            ),
            (
                format!("nginx@sha512:{}", hex(127)),
                E::DigestLength {
                    algorithm: s("sha512"),
                    expected: 128,
                    found: 127,
                },
            ),
            (
                format!("nginx@md5:{}", hex(32)),
                E::UnsupportedDigestAlgorithm(s("md5")),
            ),
            (
                format!("nginx@SHA256:{HEX64}"),
                E::UnsupportedDigestAlgorithm(s("SHA256")),
            ),
            (
                format!("nginx@sha256+b64:{HEX64}"),
                E::UnsupportedDigestAlgorithm(s("sha256+b64")),
            ),
            (
                format!("nginx@:{HEX64}"),
                E::UnsupportedDigestAlgorithm(s("")),
            ),
            (
                format!("nginx@{d256}@{d256}"),
                E::DigestNotLowerHex {
                    algorithm: s("sha256"),
                    character: '@',
                },
            ),
            // Tags.
            (s("nginx:1.0:2"), E::InvalidTag(s("1.0:2"))),
            (s("nginx:-dev"), E::InvalidTag(s("-dev"))),
            (s("nginx:.x"), E::InvalidTag(s(".x"))),
            (s("nginx:tæg"), E::InvalidTag(s("tæg"))),
            (s("nginx:a+b"), E::InvalidTag(s("a+b"))),
            (
                format!("nginx:{}", "t".repeat(129)),
                E::InvalidTag("t".repeat(129)),
            ),
            (s("[::1]:5000"), E::InvalidTag(s(":1]:5000"))),
            // Upper case in the repository path.
            (s("Nginx"), E::UppercaseRepository(s("Nginx"))),
            (s("docker.io/Nginx"), E::UppercaseRepository(s("Nginx"))),
            (
                s("registry.corp.example/Team/app"),
                E::UppercaseRepository(s("Team/app")),
            ),
            (s("Foo/Bar:1"), E::UppercaseRepository(s("Bar"))),
            // Empty path components.
            (s("nginx//x"), E::EmptyPathComponent(s("nginx//x"))),
            (s("/nginx"), E::EmptyPathComponent(s("/nginx"))),
            (s("nginx/"), E::EmptyPathComponent(s("nginx/"))),
            (s("registry.corp.example/"), E::EmptyPathComponent(s(""))),
            (
                s("registry.corp.example//app"),
                E::EmptyPathComponent(s("/app")),
            ),
            (s("localhost:5000/:1"), E::EmptyPathComponent(s(""))),
            // Path components.
            (s("nginx_/x"), E::InvalidPathComponent(s("nginx_"))),
            (s("my___app"), E::InvalidPathComponent(s("my___app"))),
            (s("my..app"), E::InvalidPathComponent(s("my..app"))),
            (s("my._app"), E::InvalidPathComponent(s("my._app"))),
            (s("-app"), E::InvalidPathComponent(s("-app"))),
            (s("app-"), E::InvalidPathComponent(s("app-"))),
            (s("ñginx"), E::InvalidPathComponent(s("ñginx"))),
            (s("team/app!"), E::InvalidPathComponent(s("app!"))),
            (s("[abc]/app"), E::InvalidPathComponent(s("[abc]"))),
            // Hosts.
            (
                s("reg_istry.example/app"),
                E::InvalidRegistry(s("reg_istry.example")),
            ),
            (
                s("-registry.example/app"),
                E::InvalidRegistry(s("-registry.example")),
            ),
            (
                s("registry-.example/app"),
                E::InvalidRegistry(s("registry-.example")),
            ),
            (
                s("registry..example/app"),
                E::InvalidRegistry(s("registry..example")),
            ),
            (s(".example/app"), E::InvalidRegistry(s(".example"))),
            (
                s("registry.example:/app"),
                E::InvalidRegistry(s("registry.example:")),
            ),
            (
                s("registry.example:50a0/app"),
                E::InvalidRegistry(s("registry.example:50a0")),
            ),
            (
                s("registry.example:1:2/app"),
                E::InvalidRegistry(s("registry.example:1:2")),
            ),
            (s(":5000/app"), E::InvalidRegistry(s(":5000"))),
            (s("foo:bar/baz"), E::InvalidRegistry(s("foo:bar"))),
            (s("[fd00::1/app"), E::InvalidRegistry(s("[fd00::1"))),
            (
                s("[fd00::g]:5000/app"),
                E::InvalidRegistry(s("[fd00::g]:5000")),
            ),
            (
                s("[fd00::1]5000/app"),
                E::InvalidRegistry(s("[fd00::1]5000")),
            ),
            (s("[fd00::1]:/app"), E::InvalidRegistry(s("[fd00::1]:"))),
            (s("[]:5000/app"), E::InvalidRegistry(s("[]:5000"))),
            (s("FOO_BAR/app"), E::InvalidRegistry(s("FOO_BAR"))),
            (
                s("régistry.example/app"),
                E::InvalidRegistry(s("régistry.example")),
            ),
            (
                s("xn--rgistry-bya.example/App"),
                E::UppercaseRepository(s("App")),
            ),
            // Over-long names, counted once normalised.
            (
                format!("registry.corp.example/{}", "a".repeat(234)),
                E::NameTooLong(256),
            ),
            ("b".repeat(238), E::NameTooLong(256)),
        ]
    }

    #[test]
    fn invalid_references_are_refused_with_the_intended_error() {
        let cases = invalid_cases();
        for (input, expected) in &cases {
            assert_eq!(Reference::parse(input).as_ref(), Err(expected), "{input:?}");
        }
        assert!(cases.len() >= 60, "{} invalid cases", cases.len());
    }

    #[test]
    fn every_message_shows_a_valid_form() {
        for (input, _) in invalid_cases() {
            let message = Reference::parse(&input).unwrap_err().to_string();
            assert!(
                message.contains("e.g. `"),
                "{input:?}: the message does not show a valid reference: {message}"
            );
            assert!(
                !message.contains('\n'),
                "{input:?}: one line please: {message}"
            );
        }
    }

    #[test]
    fn messages_read_as_intended() {
        let msg = |input: &str| Reference::parse(input).unwrap_err().to_string();
        assert_eq!(
            msg("nginx\t"),
            "the image reference contains the control character U+0009 at character 6; a \
             reference is a single word with no control characters, e.g. `nginx:1.27` or \
             `registry.corp.example/team/app:1.4.2`"
        );
        assert_eq!(
            msg("registry.corp.example/Team/app"),
            "the repository path `Team/app` contains upper-case letters; repository paths are \
             lower-case, e.g. `registry.corp.example/team/app`"
        );
        assert_eq!(
            msg("app@sha384:abcd"),
            "the sha384 digest has 4 hex digits but a sha384 digest has exactly 96; copy the \
             whole digest, e.g. `sha384:<96 hex digits>`"
        );
        assert!(msg(HEX64).starts_with(&format!("`{HEX64}` is a bare image ID")));
    }

    #[test]
    fn validate_digest_accepts_exactly_the_three_algorithms() {
        assert_eq!(validate_digest(&sha256()), Ok(()));
        assert_eq!(validate_digest(&sha384()), Ok(()));
        assert_eq!(validate_digest(&sha512()), Ok(()));
        for bad in [
            String::new(),
            HEX64.to_owned(),
            format!("sha256:{}", hex(63)),
            format!("sha1:{}", hex(40)),
            format!("blake3:{HEX64}"),
            format!("sha256:{}", HEX64.replace('a', "A")),
            format!("sha256:{} ", hex(63)),
        ] {
            assert!(validate_digest(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn normalize_registry_folds_case_and_docker_hub() {
        for (host, want) in [
            ("docker.io", "docker.io"),
            ("Docker.IO", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("INDEX.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("Registry-1.Docker.Io", "docker.io"),
            ("docker.io:443", "docker.io:443"),
            ("Registry.Corp.Example:5000", "registry.corp.example:5000"),
            ("[FD00::1]:5000", "[fd00::1]:5000"),
            ("xn--rgistry-bya.example", "xn--rgistry-bya.example"),
            ("RÉGISTRY.example", "rÉgistry.example"),
        ] {
            assert_eq!(normalize_registry(host), want, "{host:?}");
        }
    }

    #[test]
    fn equality_and_hash_follow_the_canonical_form() {
        use std::collections::HashSet;
        let set: HashSet<Reference> =
            ["nginx", "docker.io/library/nginx:latest", "Docker.IO/nginx"]
                .iter()
                .map(|s| Reference::parse(s).unwrap())
                .collect();
        assert_eq!(set.len(), 1);
        assert_ne!(
            Reference::parse("nginx").unwrap(),
            Reference::parse("nginx:1").unwrap()
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// A path component of the grammar, every separator included.
        fn component() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
        }

        fn random_case(s: String, mask: u64) -> String {
            s.chars()
                .enumerate()
                .map(|(i, c)| {
                    if mask >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        }

        /// References that are valid by construction, over every kind of host.
        fn valid_reference() -> impl Strategy<Value = String> {
            let host = prop_oneof![
                Just(String::new()),
                Just("docker.io/".to_owned()),
                Just("index.docker.io/".to_owned()),
                Just("registry-1.docker.io/".to_owned()),
                Just("localhost/".to_owned()),
                Just("localhost:5000/".to_owned()),
                Just("10.0.0.1:5000/".to_owned()),
                Just("[fd00::1]:5000/".to_owned()),
                Just("Foo/".to_owned()),
                "[a-z][a-z0-9-]{0,5}[a-z0-9](\\.[a-z0-9]{1,5}){1,2}(:[0-9]{1,5})?/",
            ];
            let tag = proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}");
            let digest = proptest::option::of(prop_oneof![
                "sha256:[0-9a-f]{64}",
                "sha384:[0-9a-f]{96}",
                "sha512:[0-9a-f]{128}",
            ]);
            (
                host,
                any::<u64>(),
                proptest::collection::vec(component(), 1..4),
                tag,
                digest,
            )
                .prop_map(|(host, mask, mut path, tag, digest)| {
                    // Without a host, a first component with `.` would be read as one.
                    if host.is_empty() && path.len() > 1 {
                        path[0] = path[0].replace('.', "-");
                    }
                    let mut s = random_case(host, mask);
                    s.push_str(&path.join("/"));
                    if let Some(t) = tag {
                        s.push(':');
                        s.push_str(&t);
                    }
                    if let Some(d) = digest {
                        s.push('@');
                        s.push_str(&d);
                    }
                    s
                })
        }

        /// Strings over the reference alphabet and a few troublemakers: most are invalid, many
        /// come close.
        fn near_reference() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9._:/@\\[\\]-]{0,40}"
        }

        fn assert_idempotent(input: &str) -> Result<(), TestCaseError> {
            if let Ok(first) = Reference::parse(input) {
                let again = Reference::parse(first.canonical()).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{input:?} → {:?} does not parse: {e}",
                        first.canonical()
                    ))
                })?;
                prop_assert_eq!(&again, &first);
                prop_assert_eq!(again.canonical(), first.canonical());
                prop_assert_eq!(again.registry(), first.registry());
                prop_assert_eq!(again.repository(), first.repository());
                prop_assert_eq!(again.name(), first.name());
                prop_assert_eq!(again.tag(), first.tag());
                prop_assert_eq!(again.digest(), first.digest());
                prop_assert_eq!(again.effective_tag(), first.effective_tag());
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn valid_references_parse_and_are_idempotent(input in valid_reference()) {
                prop_assert!(Reference::parse(&input).is_ok(), "{:?}", input);
                assert_idempotent(&input)?;
            }

            #[test]
            fn near_references_are_idempotent(input in near_reference()) {
                assert_idempotent(&input)?;
            }

            #[test]
            fn docker_hub_spellings_agree(
                repo in component(),
                tag in proptest::option::of("[a-z0-9][a-z0-9.-]{0,8}"),
                mask in any::<u64>(),
            ) {
                let suffix = tag.map(|t| format!(":{t}")).unwrap_or_default();
                let want = format!(
                    "docker.io/library/{repo}:{}",
                    if suffix.is_empty() { "latest" } else { &suffix[1..] }
                );
                let hosts = ["", "docker.io/", "index.docker.io/", "registry-1.docker.io/"];
                for host in hosts {
                    for library in ["", "library/"] {
                        let host = random_case(host.to_owned(), mask);
                        let spelled = format!("{host}{library}{repo}{suffix}");
                        let r = Reference::parse(&spelled)
                            .map_err(|e| TestCaseError::fail(format!("{spelled:?}: {e}")))?;
                        prop_assert_eq!(r.canonical(), want.as_str(), "{:?}", spelled);
                    }
                }
                let explicit = format!(
                    "Docker.IO/library/{repo}{}",
                    if suffix.is_empty() { ":latest" } else { &suffix }
                );
                let explicit = Reference::parse(&explicit).unwrap();
                prop_assert_eq!(explicit.canonical(), want.as_str());
            }

            #[test]
            fn host_case_does_not_matter(
                host in "[a-z][a-z0-9]{0,5}(\\.[a-z0-9]{1,5}){1,2}(:[0-9]{1,4})?",
                path in component(),
                mask in any::<u64>(),
            ) {
                let lower = Reference::parse(&format!("{host}/{path}")).unwrap();
                let mixed = random_case(host.clone(), mask);
                let mixed = Reference::parse(&format!("{mixed}/{path}")).unwrap();
                prop_assert_eq!(lower.canonical(), mixed.canonical());
                prop_assert_eq!(mixed.registry(), host.as_str());
            }

            #[test]
            fn arbitrary_strings_never_panic(input in any::<String>()) {
                let _ = Reference::parse(&input);
                let _ = validate_digest(&input);
                let _ = normalize_registry(&input);
            }

            #[test]
            fn near_references_never_panic(input in "[a-zA-Z0-9._:/@\\[\\]ñ -]{0,300}") {
                let _ = Reference::parse(&input);
            }
        }
    }
}
