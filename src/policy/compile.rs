//! Compiling one `ImagePolicy` into the form decisions use, with every error tied to the field
//! path that caused it.

use std::fmt;
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use regex::Regex;

use super::crd::{ImagePolicy, Mode};
use super::pattern::{PATTERN_HELP, Pattern, tag_glob};
use super::selector::Selector;
use super::signatures::{Resolve, SecretKeys, SignatureRule, compile_entries};

/// The default for `breakGlass.maxDuration`.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The largest compiled ticket regex, so a policy cannot make every admission slow.
const TICKET_REGEX_SIZE_LIMIT: usize = 64 * 1024;

/// Why a policy does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CompileError {
    /// The policy's name.
    pub policy: String,
    /// The field path, e.g. `spec.allowedImages[2]`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// One pattern list of a policy (`images`, `allowedImages` or `deniedImages`).
#[derive(Debug, Clone, Default)]
pub struct PatternList {
    /// The patterns, in the order written.
    pub patterns: Vec<Pattern>,
}

impl PatternList {
    /// Whether the list contains a bare `**` (matches every image).
    pub fn matches_all(&self) -> bool {
        self.patterns
            .iter()
            .any(|p| p.name_glob.is_none() && p.suffix.is_none())
    }

    /// The patterns as written, for messages.
    pub fn sources(&self) -> Vec<&str> {
        self.patterns.iter().map(|p| p.source.as_str()).collect()
    }
}

/// The break-glass rule of a policy.
#[derive(Debug, Clone)]
pub struct BreakGlassRule {
    /// Allowed groups; with `allowed_users` both empty, any requester qualifies.
    pub allowed_groups: Vec<String>,
    /// Allowed users.
    pub allowed_users: Vec<String>,
    /// The ticket pattern as written.
    pub ticket_source: String,
    /// The ticket pattern, anchored to the whole value.
    pub ticket: Regex,
    /// How far ahead a `break-glass-until` time may lie.
    pub max_duration: Duration,
}

impl BreakGlassRule {
    /// Whether any requester qualifies.
    pub fn any_requester(&self) -> bool {
        self.allowed_groups.is_empty() && self.allowed_users.is_empty()
    }
}

/// A policy ready for decisions.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`, when known.
    pub generation: Option<i64>,
    /// `spec.mode`, defaulted.
    pub mode: Mode,
    /// `spec.namespaceSelector`; `None` selects every namespace.
    pub selector: Option<Selector>,
    /// `spec.images`; empty means every image.
    pub images: PatternList,
    /// `spec.allowedImages`, when set.
    pub allowed_images: Option<PatternList>,
    /// `spec.deniedImages` (empty when unset).
    pub denied_images: PatternList,
    /// `spec.requireDigest`.
    pub require_digest: bool,
    /// `spec.deniedTags` as written (empty when unset).
    pub denied_tags: Vec<String>,
    /// `spec.deniedTags`, compiled.
    pub denied_tag_set: GlobSet,
    /// `spec.requirePullPolicyAlways`.
    pub require_pull_policy_always: bool,
    /// `spec.setPullPolicyAlways`: the mutating webhook sets `imagePullPolicy: Always`.
    pub set_pull_policy_always: bool,
    /// `spec.pinDigests`: the mutating webhook pins tags to digests.
    pub pin_digests: bool,
    /// `spec.breakGlass`.
    pub break_glass: Option<BreakGlassRule>,
    /// `spec.verifySignatures` (empty when unset).
    pub signatures: Vec<SignatureRule>,
}

impl CompiledPolicy {
    /// Whether this policy governs every image (`images` unset, empty, or containing `**`).
    pub fn governs_all(&self) -> bool {
        self.images.patterns.is_empty() || self.images.matches_all()
    }

    /// Whether this policy asks the mutating webhook to change Pods (`setPullPolicyAlways` or
    /// `pinDigests`), in any mode: Warn and Audit policies report what they would change.
    pub fn mutates(&self) -> bool {
        self.set_pull_policy_always || self.pin_digests
    }
}

/// Compiles a policy, or says which field is wrong and why. A `secretRef` key cannot be read
/// here: use [`compile_with`] and the Secrets the caller has read.
pub fn compile(policy: &ImagePolicy) -> Result<CompiledPolicy, CompileError> {
    compile_with(policy, &SecretKeys::default())
}

/// Compiles a policy with `secretRef` keys read from `secrets`.
pub fn compile_with(
    policy: &ImagePolicy,
    secrets: &SecretKeys,
) -> Result<CompiledPolicy, CompileError> {
    compile_as(policy, Resolve::Fully(secrets))
}

/// Checks what a policy says by itself, as the admission webhook does when it is applied: every
/// field is valid. Whether its `secretRef` Secrets can be read, and whether this version
/// supports all it asks for, is judged when it is put in force (its `Ready` condition).
pub fn validate(policy: &ImagePolicy) -> Result<(), CompileError> {
    compile_as(policy, Resolve::Shape).map(|_| ())
}

fn compile_as(policy: &ImagePolicy, resolve: Resolve<'_>) -> Result<CompiledPolicy, CompileError> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let err = |field: String, message: String| CompileError {
        policy: name.clone(),
        field,
        message,
    };
    let spec = &policy.spec;

    let patterns = |field: &str, list: &Option<Vec<String>>| -> Result<PatternList, CompileError> {
        let mut out = PatternList::default();
        for (i, source) in list.iter().flatten().enumerate() {
            let p = Pattern::parse(source).map_err(|e| {
                err(
                    format!("spec.{field}[{i}]"),
                    format!("invalid pattern {source:?}: {e}; {PATTERN_HELP}"),
                )
            })?;
            out.patterns.push(p);
        }
        Ok(out)
    };

    let has_rule = spec.allowed_images.is_some()
        || spec.denied_images.as_ref().is_some_and(|l| !l.is_empty())
        || spec.require_digest.is_some()
        || spec.denied_tags.as_ref().is_some_and(|l| !l.is_empty())
        || spec.require_pull_policy_always.is_some()
        || spec
            .verify_signatures
            .as_ref()
            .is_some_and(|l| !l.is_empty())
        || spec.set_pull_policy_always.is_some()
        || spec.pin_digests.is_some();
    if !has_rule {
        return Err(err(
            "spec".into(),
            "the policy sets no rule; set at least one of allowedImages, deniedImages, requireDigest, deniedTags, requirePullPolicyAlways, verifySignatures, setPullPolicyAlways or pinDigests".into(),
        ));
    }

    let selector = spec
        .namespace_selector
        .as_ref()
        .map(|s| Selector::compile(s, "spec.namespaceSelector"))
        .transpose()
        .map_err(|(field, message)| err(field, message))?;

    let allowed_images = match &spec.allowed_images {
        Some(list) if list.is_empty() => {
            return Err(err(
                "spec.allowedImages".into(),
                "an empty list would allow no image at all; omit allowedImages to allow every image, or list the patterns to allow".into(),
            ));
        }
        Some(_) => Some(patterns("allowedImages", &spec.allowed_images)?),
        None => None,
    };

    let mut tags = GlobSetBuilder::new();
    for (i, tag) in spec.denied_tags.iter().flatten().enumerate() {
        let glob = tag_glob(tag).map_err(|e| {
            err(
                format!("spec.deniedTags[{i}]"),
                format!("{e}; e.g. `latest` or `*-dev`"),
            )
        })?;
        tags.add(glob);
    }
    let denied_tag_set = tags
        .build()
        .map_err(|e| err("spec.deniedTags".into(), e.to_string()))?;

    let break_glass = match &spec.break_glass {
        None => None,
        Some(bg) => {
            let ticket = regex::RegexBuilder::new(&format!("^(?:{})$", bg.ticket_pattern))
                .size_limit(TICKET_REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    err(
                        "spec.breakGlass.ticketPattern".into(),
                        format!(
                            "invalid regular expression {:?}: {e}; e.g. `^INC-[0-9]+$`",
                            bg.ticket_pattern
                        ),
                    )
                })?;
            let max_duration = match &bg.max_duration {
                None => DEFAULT_MAX_DURATION,
                Some(d) => {
                    parse_duration(d).map_err(|e| err("spec.breakGlass.maxDuration".into(), e))?
                }
            };
            Some(BreakGlassRule {
                allowed_groups: bg.allowed_groups.clone(),
                allowed_users: bg.allowed_users.clone(),
                ticket_source: bg.ticket_pattern.clone(),
                ticket,
                max_duration,
            })
        }
    };

    let signatures = compile_entries(
        &name,
        spec.verify_signatures.as_deref().unwrap_or_default(),
        resolve,
    )
    .map_err(|(field, message)| err(field, message))?;

    Ok(CompiledPolicy {
        name: name.clone(),
        generation: policy.metadata.generation,
        mode: spec.mode.unwrap_or_default(),
        selector,
        images: patterns("images", &spec.images)?,
        allowed_images,
        denied_images: patterns("deniedImages", &spec.denied_images)?,
        require_digest: spec.require_digest.unwrap_or(false),
        denied_tags: spec.denied_tags.clone().unwrap_or_default(),
        denied_tag_set,
        require_pull_policy_always: spec.require_pull_policy_always.unwrap_or(false),
        set_pull_policy_always: spec.set_pull_policy_always.unwrap_or(false),
        pin_digests: spec.pin_digests.unwrap_or(false),
        break_glass,
        signatures,
    })
}

/// Parses a duration in hours, minutes and seconds: `24h`, `1h30m`, `90m`, `45s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}; use hours, minutes and seconds such as `24h`, `1h30m` or `90m`"
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut last_unit = 0; // h=3, m=2, s=1: units must come in that order, once each
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let (rank, secs) = match c {
            'h' => (3, 3600),
            'm' => (2, 60),
            's' => (1, 1),
            _ => return Err(bad()),
        };
        if number.is_empty() || (last_unit != 0 && rank >= last_unit) {
            return Err(bad());
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
        last_unit = rank;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

impl fmt::Display for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_without_rules_is_refused_as_the_crd_does() {
        let policy: ImagePolicy = serde_saphyr::from_str(
            "metadata: {name: p}\nspec: {images: ['quay.io/**'], deniedTags: []}",
        )
        .unwrap();
        let e = compile(&policy).unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("sets no rule"), "{e}");
    }

    #[test]
    fn a_mutation_rule_alone_is_a_rule() {
        let policy: ImagePolicy =
            serde_saphyr::from_str("metadata: {name: p}\nspec: {setPullPolicyAlways: true}")
                .unwrap();
        let compiled = compile(&policy).unwrap();
        assert!(compiled.set_pull_policy_always && !compiled.pin_digests);
        assert!(compiled.mutates());
        let off: ImagePolicy =
            serde_saphyr::from_str("metadata: {name: p}\nspec: {setPullPolicyAlways: false}")
                .unwrap();
        assert!(!compile(&off).unwrap().mutates());
    }

    #[test]
    fn pin_digests_compiles() {
        let policy: ImagePolicy =
            serde_saphyr::from_str("metadata: {name: p}\nspec: {pinDigests: true}").unwrap();
        let compiled = compile(&policy).unwrap();
        assert!(compiled.pin_digests && !compiled.set_pull_policy_always);
        assert!(compiled.mutates());
        let off: ImagePolicy =
            serde_saphyr::from_str("metadata: {name: p}\nspec: {pinDigests: false}").unwrap();
        let off = compile(&off).unwrap();
        assert!(!off.pin_digests && !off.mutates());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h2m3s").unwrap(), Duration::from_secs(3723));
        for bad in [
            "",
            "h",
            "24",
            "1d",
            "30m1h",
            "1h1h",
            "-1h",
            "1.5h",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
