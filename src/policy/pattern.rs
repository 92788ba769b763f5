//! Image patterns (`registry.corp.example/team/*:1.*`): parsing, validation, normalisation, and
//! matching one pattern against one reference. Many patterns are matched at once through the
//! snapshot's [`Matcher`](super::matcher::Matcher).
//!
//! A pattern is kept as the text it was written in, with the offsets of its parts: no automaton
//! is built for it. Its wildcards are few and simple (`*` and `?` within a path component, `**`
//! for whole components), so matching walks the pattern and the name component by component
//! (see [`name_matches`]), and a snapshot's memory grows with the patterns' text.

use crate::reference::{self, Reference};

/// A compiled image pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The pattern as written.
    source: Box<str>,
    /// The name glob, normalised as references are (host lower-cased, Docker Hub's spellings
    /// and `library/`), when that differs from what was written; usually `None`, and the glob
    /// is the part of `source` before its suffix.
    normalised: Option<Box<str>>,
    /// Where the name glob ends in `source` (the suffix, if any, starts one byte later).
    name_end: u32,
    /// What follows the name glob.
    suffix: SuffixKind,
}

/// The suffix of a pattern that also constrains the tag or digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SuffixKind {
    None,
    /// `:TAG-PATTERN`: only references whose effective identity is a matching tag.
    Tag,
    /// `@ALGO:HEX`: only references pinned to exactly this digest.
    Digest,
}

/// What a valid pattern looks like, appended to every pattern error.
pub const PATTERN_HELP: &str = "a pattern is `**` or starts with a registry host, e.g. \
    `registry.corp.example/**`, `ghcr.io/corp/*`, `docker.io/library/nginx:1.*` or \
    `quay.io/org/app@sha256:<64 hex digits>`";

/// The pattern that matches every name.
const ANY_NAME: &str = "**";

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
        let normalised = if path == ANY_NAME {
            None
        } else {
            normalise_name(path)?
        };
        let name_end =
            u32::try_from(path.len()).map_err(|_| "the pattern is longer than 4 GiB".to_owned())?;
        Ok(Pattern {
            source: source.into(),
            normalised: normalised.map(String::into_boxed_str),
            name_end,
            suffix,
        })
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The normalised glob over `REGISTRY/REPOSITORY`; `None` for `**`, which matches every
    /// name.
    pub fn name_glob(&self) -> Option<&str> {
        match &self.normalised {
            Some(n) => Some(n),
            None => {
                let path = &self.source[..self.name_end as usize];
                (path != ANY_NAME).then_some(path)
            }
        }
    }

    /// The tag pattern of a `:TAG` suffix.
    pub fn tag(&self) -> Option<&str> {
        (self.suffix == SuffixKind::Tag).then(|| self.after_name())
    }

    /// The digest of an `@DIGEST` suffix.
    pub fn digest(&self) -> Option<&str> {
        (self.suffix == SuffixKind::Digest).then(|| self.after_name())
    }

    /// The suffix as written, with its `:` or `@`; empty when there is none.
    pub fn suffix_text(&self) -> &str {
        &self.source[self.name_end as usize..]
    }

    /// Whether the pattern has a tag or digest suffix.
    pub fn has_suffix(&self) -> bool {
        self.suffix != SuffixKind::None
    }

    /// Whether this is a bare `**`, which matches every reference.
    pub fn matches_all(&self) -> bool {
        self.name_glob().is_none() && !self.has_suffix()
    }

    fn after_name(&self) -> &str {
        &self.source[self.name_end as usize + 1..]
    }

    /// Whether the suffix (if any) admits `reference`. The name is matched by the glob.
    pub fn suffix_matches(&self, reference: &Reference) -> bool {
        match self.suffix {
            SuffixKind::None => true,
            SuffixKind::Tag => reference
                .effective_tag()
                .is_some_and(|t| component_matches(self.after_name().as_bytes(), t.as_bytes())),
            SuffixKind::Digest => reference.digest() == Some(self.after_name()),
        }
    }

    /// Matches one reference on its own (the snapshot matches many patterns at once instead).
    pub fn matches(&self, reference: &Reference) -> bool {
        self.name_glob()
            .is_none_or(|glob| name_matches(glob, reference.name()))
            && self.suffix_matches(reference)
    }
}

fn split_suffix(source: &str) -> Result<(&str, SuffixKind), String> {
    if let Some((path, digest)) = source.split_once('@') {
        reference::validate_digest(digest)
            .map_err(|e| format!("the digest suffix {digest:?} is invalid: {e}"))?;
        return Ok((path, SuffixKind::Digest));
    }
    let last = source.rfind('/').map_or(0, |i| i + 1);
    match source[last..].find(':') {
        // A `:` in the first component is a port, not a tag.
        Some(i) if last > 0 || source.starts_with(ANY_NAME) => {
            let (path, tag) = (&source[..last + i], &source[last + i + 1..]);
            validate_tag_pattern(tag)?;
            Ok((path, SuffixKind::Tag))
        }
        _ => Ok((source, SuffixKind::None)),
    }
}

/// Checks a tag pattern (`latest`, `1.*`, `v?`): case-sensitive, `*` and `?` wildcards.
pub fn validate_tag_pattern(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag pattern after `:` is empty".into());
    }
    if tag.len() > reference::TAG_MAX_LEN {
        return Err(format!(
            "the tag pattern is longer than {} characters",
            reference::TAG_MAX_LEN
        ));
    }
    if let Some(c) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*' | '?')))
    {
        return Err(format!(
            "the tag pattern {tag:?} contains {c:?}; tags are letters, digits, `_`, `.` and `-`, with `*` and `?` as wildcards"
        ));
    }
    Ok(())
}

/// Whether a tag matches a tag pattern checked by [`validate_tag_pattern`].
pub fn tag_matches(pattern: &str, tag: &str) -> bool {
    component_matches(pattern.as_bytes(), tag.as_bytes())
}

/// Validates the name part of a pattern and normalises it as a reference's name is; `None` when
/// nothing changes.
fn normalise_name(path: &str) -> Result<Option<String>, String> {
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
        || host.starts_with(ANY_NAME)
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
    if rest
        .split('/')
        .any(|c| c.contains(ANY_NAME) && c != ANY_NAME)
    {
        return Err(format!(
            "in {rest:?}, `**` must be a whole path component (`a/**`, `a/**/b`); use `*` within a component"
        ));
    }
    if rest.split('/').any(str::is_empty) {
        return Err(format!(
            "the repository path {rest:?} has an empty component (`//` or a trailing `/`)"
        ));
    }
    let normal_host = reference::normalize_registry(host);
    let library = normal_host == reference::DOCKER_HUB && !rest.contains('/') && rest != ANY_NAME;
    if normal_host == host && !library {
        return Ok(None);
    }
    let library = if library { "library/" } else { "" };
    Ok(Some(format!("{normal_host}/{library}{rest}")))
}

/// Whether a normalised name glob matches `name` (`REGISTRY/REPOSITORY`), component by
/// component: a component `**` matches any run of components (zero or more in the middle,
/// one or more at the end), any other component matches exactly one (see
/// [`component_matches`]).
///
/// Greedy with one point of return, as wildcard matching over characters is: each component
/// of the pattern consumes exactly one of the name, so the leftmost place for what follows a
/// `**` is always the right one, and the work is at most the product of the two lengths.
pub(crate) fn name_matches(glob: &str, name: &str) -> bool {
    let (glob, name) = (glob.as_bytes(), name.as_bytes());
    // Offsets of the current components; one past the end once every component is used.
    let (mut p, mut n) = (0, 0);
    // After a middle `**`: where the pattern resumes, and the name component it tried last.
    let mut resume: Option<(usize, usize)> = None;
    loop {
        if p <= glob.len() {
            let (component, p_next) = component_at(glob, p);
            if component == b"**" {
                if p_next > glob.len() {
                    if n <= name.len() {
                        return true; // a trailing `**` takes the one or more that are left
                    }
                } else {
                    resume = Some((p_next, n));
                    p = p_next;
                    continue;
                }
            } else if n <= name.len() {
                let (text, n_next) = component_at(name, n);
                if component_matches(component, text) {
                    (p, n) = (p_next, n_next);
                    continue;
                }
            }
        } else if n > name.len() {
            return true;
        }
        // Let the last `**` take one more component, and try again from there.
        match resume {
            Some((rp, rn)) if rn <= name.len() => {
                let (_, rn_next) = component_at(name, rn);
                resume = Some((rp, rn_next));
                (p, n) = (rp, rn_next);
            }
            _ => return false,
        }
    }
}

/// The `/`-separated component starting at `at`, and where the next one starts.
fn component_at(s: &[u8], at: usize) -> (&[u8], usize) {
    let end = s[at..]
        .iter()
        .position(|&b| b == b'/')
        .map_or(s.len(), |i| at + i);
    (&s[at..end], end + 1)
}

/// Whether one component (or a tag) matches a component pattern: `*` matches any run of
/// characters, `?` exactly one, everything else itself. Greedy with one point of return.
fn component_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    (p, t) = (sp, st + 1);
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The literal start of a normalised name glob: its components before the first one with a
/// wildcard (empty when the host has one). Every name the glob matches starts with it followed
/// by `/` or the end of the name.
pub(crate) fn literal_prefix(glob: &str) -> &str {
    let mut end = 0;
    for (i, component) in glob.split('/').enumerate() {
        if component.contains(['*', '?']) {
            break;
        }
        end = if i == 0 {
            component.len()
        } else {
            end + 1 + component.len()
        };
    }
    &glob[..end]
}

#[cfg(test)]
pub(crate) mod tests {
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

    #[test]
    fn parts_of_a_pattern() {
        let p = Pattern::parse("Docker.IO/nginx:1.*").unwrap();
        assert_eq!(p.source(), "Docker.IO/nginx:1.*");
        assert_eq!(p.name_glob(), Some("docker.io/library/nginx"));
        assert_eq!((p.tag(), p.digest()), (Some("1.*"), None));
        let p = Pattern::parse("ghcr.io/corp/*").unwrap();
        assert_eq!(p.name_glob(), Some("ghcr.io/corp/*"));
        assert!(!p.has_suffix() && !p.matches_all());
        assert!(Pattern::parse("**").unwrap().matches_all());
        let p = Pattern::parse("**:latest").unwrap();
        assert_eq!((p.name_glob(), p.tag()), (None, Some("latest")));
        assert!(!p.matches_all());
    }

    #[test]
    fn literal_prefixes() {
        for (glob, prefix) in [
            (
                "registry.corp.example/team/app",
                "registry.corp.example/team/app",
            ),
            ("registry.corp.example/team/*", "registry.corp.example/team"),
            ("registry.corp.example/**/app", "registry.corp.example"),
            ("registry.corp.example/te?m/app", "registry.corp.example"),
            ("*.corp.example/team/app", ""),
        ] {
            assert_eq!(literal_prefix(glob), prefix, "{glob}");
        }
    }

    #[test]
    fn components() {
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbb", false),
            ("*-dev", "1.2-dev", true),
            ("*-dev", "1.2-dev2", false),
            ("?", "", false),
            ("??", "ab", true),
            ("a**b", "axxb", true),
            ("*a*a*a", "aaaa", true),
            ("*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ] {
            assert_eq!(
                component_matches(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern} vs {text}"
            );
        }
    }

    /// The semantics of DESIGN §3 as globset implements them, which is how imagegate matched
    /// patterns before it had its own matcher: the normalised name glob with `[` and `]` made
    /// literal and `/` as the separator, the tag suffix as a glob of its own.
    mod oracle {
        use super::*;
        use globset::GlobBuilder;

        fn glob(text: &str) -> globset::GlobMatcher {
            let escaped: String = text
                .chars()
                .map(|c| match c {
                    '[' => "[[]".to_owned(),
                    ']' => "[]]".to_owned(),
                    c => c.to_string(),
                })
                .collect();
            GlobBuilder::new(&escaped)
                .literal_separator(true)
                .build()
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .compile_matcher()
        }

        pub fn matches(p: &Pattern, r: &Reference) -> bool {
            let name_ok = p.name_glob().is_none_or(|g| glob(g).is_match(r.name()));
            let suffix_ok = match (p.tag(), p.digest()) {
                (Some(tag), _) => r.effective_tag().is_some_and(|t| glob(tag).is_match(t)),
                (_, Some(digest)) => r.digest() == Some(digest),
                _ => true,
            };
            name_ok && suffix_ok
        }
    }

    /// Patterns and references built from pieces that meet at every rule: wildcards in the
    /// host and the path, `**` at the start, middle and end, brackets, ports, Docker Hub's
    /// spellings, tags and digests.
    pub(crate) mod generated {
        use proptest::prelude::*;

        const DIGEST: &str =
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

        pub fn pattern() -> impl Strategy<Value = String> {
            let host = prop_oneof![
                Just("registry.corp.example"),
                Just("*.corp.example"),
                Just("reg?stry.corp.example"),
                Just("*.b"),
                Just("a.b"),
                Just("a**.b"),
                Just("Docker.IO"),
                Just("docker.io"),
                Just("index.docker.io"),
                Just("localhost:5000"),
                Just("localhost:*"),
                Just("[::1]:5000"),
                Just("[::?]:5000"),
                Just("10.0.0.?"),
                Just("Foo"),
            ];
            let component = prop_oneof![
                Just("a"),
                Just("b"),
                Just("ab"),
                Just("a-b"),
                Just("library"),
                Just("*"),
                Just("?"),
                Just("a*"),
                Just("*b"),
                Just("a?b"),
                Just("**"),
                Just("**"),
            ];
            let suffix = prop_oneof![
                3 => Just(String::new()),
                1 => Just(":latest".to_owned()),
                1 => Just(":1.*".to_owned()),
                1 => Just(":*-dev".to_owned()),
                1 => Just(":v?".to_owned()),
                1 => Just(format!("@{DIGEST}")),
            ];
            let whole = prop_oneof![
                1 => suffix.clone().prop_map(|s| format!("**{s}")),
                9 => (host, proptest::collection::vec(component, 1..5), suffix)
                    .prop_map(|(h, c, s)| format!("{h}/{}{s}", c.join("/"))),
            ];
            whole
        }

        pub fn reference() -> impl Strategy<Value = String> {
            let host = prop_oneof![
                Just(""),
                Just("registry.corp.example/"),
                Just("x.corp.example/"),
                Just("x.y.corp.example/"),
                Just("regxstry.corp.example/"),
                Just("a.b/"),
                Just("aa.b/"),
                Just("ab.b/"),
                Just("docker.io/"),
                Just("index.docker.io/"),
                Just("localhost:5000/"),
                Just("[::1]:5000/"),
                Just("10.0.0.1/"),
                Just("Foo/"),
            ];
            let component = prop_oneof![
                Just("a"),
                Just("b"),
                Just("ab"),
                Just("a-b"),
                Just("axb"),
                Just("library"),
            ];
            let suffix = prop_oneof![
                Just(String::new()),
                Just(":latest".to_owned()),
                Just(":1.2".to_owned()),
                Just(":x-dev".to_owned()),
                Just(":v1".to_owned()),
                Just(format!("@{DIGEST}")),
                Just(format!(":1.2@{DIGEST}")),
            ];
            (host, proptest::collection::vec(component, 1..6), suffix)
                .prop_map(|(h, c, s)| format!("{h}{}{s}", c.join("/")))
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn a_pattern_matches_as_globset_did(
                pattern in generated::pattern(),
                image in generated::reference(),
            ) {
                let Ok(p) = Pattern::parse(&pattern) else { return Ok(()) };
                let Ok(r) = Reference::parse(&image) else { return Ok(()) };
                prop_assert_eq!(p.matches(&r), oracle::matches(&p, &r), "{} vs {}", pattern, image);
            }

            #[test]
            fn a_component_matches_as_globset_did(
                pattern in "[ab*?]{0,8}",
                text in "[ab]{0,8}",
            ) {
                let want = globset::GlobBuilder::new(&pattern)
                    .literal_separator(true)
                    .build()
                    .unwrap()
                    .compile_matcher()
                    .is_match(&text);
                prop_assert_eq!(tag_matches(&pattern, &text), want);
            }
        }
    }
}
