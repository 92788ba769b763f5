//! Image patterns (`registry.corp.example/team/*:1.*`): parsing, validation, and the glob that
//! matches `REGISTRY/REPOSITORY`. Many patterns are matched at once through one
//! [`globset::GlobSet`] per snapshot (see [`super::Snapshot`]).

use std::sync::OnceLock;

use globset::{Glob, GlobBuilder, GlobMatcher};

use crate::reference::{self, Reference};

/// The suffix of a pattern that also constrains the tag or digest.
#[derive(Debug, Clone)]
pub enum Suffix {
    /// `:TAG-PATTERN`: only references whose effective identity is a matching tag.
    Tag(GlobMatcher),
    /// `@ALGO:HEX`: only references pinned to exactly this digest.
    Digest(String),
}

/// A compiled image pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The pattern as written.
    pub source: String,
    /// The glob over `REGISTRY/REPOSITORY`, normalised; `None` for `**`, which matches every name.
    pub name_glob: Option<Glob>,
    /// The same glob compiled on its own, for matching one pattern at a time; built on first
    /// use, since snapshots match through their set and most patterns never need it.
    name_matcher: OnceLock<Option<GlobMatcher>>,
    /// The optional tag or digest constraint.
    pub suffix: Option<Suffix>,
}

/// What a valid pattern looks like, appended to every pattern error.
pub const PATTERN_HELP: &str = "a pattern is `**` or starts with a registry host, e.g. \
    `registry.corp.example/**`, `ghcr.io/corp/*`, `docker.io/library/nginx:1.*` or \
    `quay.io/org/app@sha256:<64 hex digits>`";

impl Pattern {
    /// Parses and normalises a pattern. The error says what is wrong (without the help text).
    pub fn parse(source: &str) -> Result<Pattern, String> {
        if source.is_empty() {
            return Err("the pattern is empty".into());
        }
        if let Some(c) = source.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "the pattern contains {c:?}; patterns contain no spaces or control characters"
            ));
        }
        let (path, suffix) = split_suffix(source)?;
        let name_glob = if path == "**" {
            None
        } else {
            Some(name_glob(path)?)
        };
        Ok(Pattern {
            source: source.to_owned(),
            name_glob,
            name_matcher: OnceLock::new(),
            suffix,
        })
    }

    /// Whether the suffix (if any) admits `reference`. The name is matched by the glob.
    pub fn suffix_matches(&self, reference: &Reference) -> bool {
        match &self.suffix {
            None => true,
            Some(Suffix::Tag(tag)) => reference.effective_tag().is_some_and(|t| tag.is_match(t)),
            Some(Suffix::Digest(d)) => reference.digest() == Some(d.as_str()),
        }
    }

    /// Matches one reference on its own (the snapshot matches many patterns at once instead).
    pub fn matches(&self, reference: &Reference) -> bool {
        let matcher = self
            .name_matcher
            .get_or_init(|| self.name_glob.as_ref().map(Glob::compile_matcher));
        let name_ok = matcher
            .as_ref()
            .is_none_or(|m| m.is_match(reference.name()));
        name_ok && self.suffix_matches(reference)
    }
}

fn split_suffix(source: &str) -> Result<(&str, Option<Suffix>), String> {
    if let Some((path, digest)) = source.split_once('@') {
        reference::validate_digest(digest)
            .map_err(|e| format!("the digest suffix {digest:?} is invalid: {e}"))?;
        return Ok((path, Some(Suffix::Digest(digest.to_owned()))));
    }
    let last = source.rfind('/').map_or(0, |i| i + 1);
    match source[last..].find(':') {
        // A `:` in the first component is a port, not a tag.
        Some(i) if last > 0 || source.starts_with("**") => {
            let (path, tag) = (&source[..last + i], &source[last + i + 1..]);
            Ok((path, Some(Suffix::Tag(tag_glob(tag)?.compile_matcher()))))
        }
        _ => Ok((source, None)),
    }
}

/// Compiles a tag pattern (`latest`, `1.*`, `v?`): case-sensitive, `*` and `?` wildcards.
pub fn tag_glob(tag: &str) -> Result<Glob, String> {
    if tag.is_empty() {
        return Err("the tag pattern after `:` is empty".into());
    }
    if tag.len() > 128 {
        return Err("the tag pattern is longer than 128 characters".into());
    }
    if let Some(c) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*' | '?')))
    {
        return Err(format!(
            "the tag pattern {tag:?} contains {c:?}; tags are letters, digits, `_`, `.` and `-`, with `*` and `?` as wildcards"
        ));
    }
    GlobBuilder::new(tag)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("the tag pattern {tag:?} is invalid: {}", e.kind()))
}

fn name_glob(path: &str) -> Result<Glob, String> {
    let (host, rest) = path.split_once('/').ok_or_else(|| {
        format!(
            "{path:?} names no registry host; write the host first, e.g. `docker.io/library/{path}`"
        )
    })?;
    // As in references: a first component is a host when it has `.` or `:`, is `localhost`,
    // or has an upper-case letter (it is lower-cased below, as a reference's host is).
    if !(host.contains('.')
        || host.contains(':')
        || host.starts_with('[')
        || host == "localhost"
        || host.chars().any(|c| c.is_ascii_uppercase()))
        || host.starts_with("**")
    {
        return Err(format!(
            "{host:?} is not a registry host (a host contains `.` or `:`, or is `localhost`); write the registry first, e.g. `docker.io/{path}`"
        ));
    }
    if rest.is_empty() {
        return Err(format!(
            "{path:?} ends after the host; add the repository, e.g. `{host}/**`"
        ));
    }
    if let Some(c) = host.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '*' | '?'))
    }) {
        return Err(format!("the host {host:?} contains {c:?}"));
    }
    if rest.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "the repository path {rest:?} has upper-case letters; repository paths are lower-case, so it could never match"
        ));
    }
    if let Some(c) = rest.chars().find(|c| {
        !(c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, '.' | '_' | '-' | '/' | '*' | '?'))
    }) {
        return Err(format!("the repository path {rest:?} contains {c:?}"));
    }
    if rest.split('/').any(|c| c.contains("**") && c != "**") {
        return Err(format!(
            "in {rest:?}, `**` must be a whole path component (`a/**`, `a/**/b`); use `*` within a component"
        ));
    }
    if rest.split('/').any(str::is_empty) {
        return Err(format!(
            "the repository path {rest:?} has an empty component (`//` or a trailing `/`)"
        ));
    }
    let host = reference::normalize_registry(host);
    let rest = if host == reference::DOCKER_HUB && !rest.contains('/') && rest != "**" {
        format!("library/{rest}")
    } else {
        rest.to_owned()
    };
    let normalised = format!("{host}/{rest}");
    // `[` and `]` are literal (IPv6 hosts); globset would read them as a class.
    let escaped = escape_brackets(&normalised);
    GlobBuilder::new(&escaped)
        .literal_separator(true)
        .build()
        .map_err(|e| match e.kind() {
            globset::ErrorKind::InvalidRecursive => {
                "`**` must be a whole path component (`a/**`, `a/**/b`)".to_owned()
            }
            kind => format!("{kind}"),
        })
}

fn escape_brackets(normalised: &str) -> String {
    let mut out = String::with_capacity(normalised.len() + 8);
    for c in normalised.chars() {
        match c {
            '[' => out.push_str("[[]"),
            ']' => out.push_str("[]]"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, image: &str) -> bool {
        let p = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        let r = Reference::parse(image).unwrap_or_else(|e| panic!("{image}: {e}"));
        p.matches(&r)
    }

    #[test]
    fn pattern_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("**", "nginx", true),
            ("registry.corp.example/**", "registry.corp.example/a", true),
            (
                "registry.corp.example/**",
                "registry.corp.example/a/b/c:1",
                true,
            ),
            (
                "registry.corp.example/**",
                "registry.corp.example.evil.io/x",
                false,
            ),
            (
                "registry.corp.example/**",
                "evil.io/registry.corp.example/x",
                false,
            ),
            ("ghcr.io/corp/*", "ghcr.io/corp/app:1", true),
            ("ghcr.io/corp/*", "ghcr.io/corp/team/app:1", false),
            ("ghcr.io/corp/**/app", "ghcr.io/corp/app", true),
            ("ghcr.io/corp/**/app", "ghcr.io/corp/x/y/app", true),
            ("*.corp.example/**", "a.b.corp.example/x", true),
            ("*.corp.example/**", "evil.io/x.corp.example/y", false),
            ("docker.io/**", "nginx", true),
            ("docker.io/**", "index.docker.io/library/nginx", true),
            ("docker.io/**", "registry-1.docker.io/x/y", true),
            ("Docker.IO/nginx", "nginx:1", true),
            ("index.docker.io/nginx", "docker.io/library/nginx", true),
            ("docker.io/library/nginx:1.*", "nginx:1.27", true),
            ("docker.io/library/nginx:1.*", "nginx:2.0", false),
            (
                "docker.io/library/nginx:1.*",
                "nginx:1.27@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                false,
            ),
            ("docker.io/library/nginx:latest", "nginx", true),
            (
                "docker.io/library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                true,
            ),
            (
                "docker.io/library/nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "nginx:1",
                false,
            ),
            ("localhost:5000/**", "localhost:5000/app", true),
            ("localhost/**", "localhost:5000/app", false),
            ("[::1]:5000/**", "[::1]:5000/app", true),
            ("10.0.0.?/app", "10.0.0.1/app", true),
            (
                "registry.corp.example/te?m/*",
                "registry.corp.example/team/x",
                true,
            ),
            ("**:latest", "nginx", true),
            ("**:latest", "nginx:1", false),
            ("Foo/**", "Foo/bar:1", true),
            ("Foo/**", "FOO/bar:1", true),
            ("Foo/**", "foo/bar:1", false),
        ];
        for (pattern, image, want) in cases {
            assert_eq!(m(pattern, image), *want, "{pattern} vs {image}");
        }
    }

    #[test]
    fn invalid_patterns() {
        for bad in [
            "",
            "nginx",
            "library/nginx",
            "*/nginx",
            "**/nginx",
            "registry.corp.example",
            "registry.corp.example/",
            "registry.corp.example//x",
            "registry.corp.example/Team/*",
            "registry.corp.example/a**",
            "registry.corp.example/x:",
            "registry.corp.example/x@sha256:abc",
            "registry.corp.example/x y",
            "registry.corp.example/{a,b}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
