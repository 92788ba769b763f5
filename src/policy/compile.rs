//! Compiling one `ImagePolicy` into the form decisions use, with every error tied to the field
//! path that caused it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::crd::{ImagePolicy, Mode};
use super::matcher::MAX_PATTERNS_PER_LIST;
use super::pattern::{PATTERN_HELP, Pattern, tag_matches, validate_tag_pattern};
use super::selector::Selector;
use super::signatures::{
    MAX_ENTRIES, Resolve, SecretKeys, SignatureRule, Verifiers, compile_entries,
};

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternList {
    /// The patterns, in the order written.
    pub patterns: Vec<Pattern>,
}

impl PatternList {
    /// Whether the list contains a bare `**` (matches every image).
    pub fn matches_all(&self) -> bool {
        self.patterns.iter().any(Pattern::matches_all)
    }

    /// The patterns as written, for messages.
    pub fn sources(&self) -> Vec<&str> {
        self.patterns.iter().map(Pattern::source).collect()
    }

    /// Parses the list written at `field` (`spec.allowedImages`), in which `split` (the policy,
    /// the entry) is what to split when it is too long; the error is the field path of the
    /// first wrong pattern, and what is wrong.
    pub(super) fn parse(
        field: &str,
        list: &[String],
        split: &str,
    ) -> Result<PatternList, (String, String)> {
        if list.len() > MAX_PATTERNS_PER_LIST {
            return Err((
                field.to_owned(),
                format!(
                    "{} patterns are more than one list may hold ({MAX_PATTERNS_PER_LIST}); split the {split}",
                    list.len()
                ),
            ));
        }
        // Exactly as long as the list: a collected `Result` could not know the length, and
        // its doubling would leave up to half the 40-byte slots unused in every snapshot.
        let mut patterns = Vec::with_capacity(list.len());
        for (i, source) in list.iter().enumerate() {
            patterns.push(Pattern::parse(source).map_err(|e| {
                (
                    format!("{field}[{i}]"),
                    format!("invalid pattern {source:?}: {e}; {PATTERN_HELP}"),
                )
            })?);
        }
        Ok(PatternList { patterns })
    }
}

/// Which pattern list of a policy: what a snapshot's [`Matcher`](super::matcher::Matcher)
/// reports a match in. Another list of patterns matched with the others is another variant
/// here, with a code of its own, listed by [`CompiledPolicy::pattern_lists`] and read back by
/// [`CompiledPolicy::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListId {
    /// `spec.images`.
    Images,
    /// `spec.allowedImages`.
    AllowedImages,
    /// `spec.deniedImages`.
    DeniedImages,
    /// `spec.verifySignatures[N].images`, by the entry's position `N`.
    SignatureImages(u8),
}

/// The code of the first signature entry's list; entry `N` has `SIGNATURE_CODES + N`.
const SIGNATURE_CODES: u8 = 3;

// Every entry's list has a code of its own in one byte, and a use of the snapshot's matches
// names the entries of a policy in one 32-bit word (see `ImageMatches::signature_entries`).
const _: () = assert!(MAX_ENTRIES <= 32 && SIGNATURE_CODES as usize + MAX_ENTRIES <= 256);

impl ListId {
    /// The list as one byte, as the matcher keeps it.
    pub(crate) fn code(self) -> u8 {
        match self {
            ListId::Images => 0,
            ListId::AllowedImages => 1,
            ListId::DeniedImages => 2,
            ListId::SignatureImages(entry) => SIGNATURE_CODES + entry,
        }
    }

    /// The list a byte of [`ListId::code`] stands for.
    pub(crate) fn from_code(code: u8) -> Option<ListId> {
        match code {
            0 => Some(ListId::Images),
            1 => Some(ListId::AllowedImages),
            2 => Some(ListId::DeniedImages),
            c if usize::from(c - SIGNATURE_CODES) < MAX_ENTRIES => {
                Some(ListId::SignatureImages(c - SIGNATURE_CODES))
            }
            _ => None,
        }
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
    /// The ticket pattern, anchored to the whole value; shared by the policies that write the
    /// same pattern (see [`CompileCache`]).
    pub ticket: Arc<Regex>,
    /// How far ahead a `break-glass-until` time may lie.
    pub max_duration: Duration,
}

impl BreakGlassRule {
    /// Whether any requester qualifies.
    pub fn any_requester(&self) -> bool {
        self.allowed_groups.is_empty() && self.allowed_users.is_empty()
    }
}

/// Equal when written the same: the ticket regex is compiled from `ticket_source`.
impl PartialEq for BreakGlassRule {
    fn eq(&self, other: &Self) -> bool {
        self.allowed_groups == other.allowed_groups
            && self.allowed_users == other.allowed_users
            && self.ticket_source == other.ticket_source
            && self.max_duration == other.max_duration
    }
}

/// A policy ready for decisions. Two are equal when they decide alike and carry the same name
/// and generation, so a snapshot can keep the one it has.
#[derive(Debug, Clone, PartialEq)]
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
    /// `spec.deniedTags` as written (empty when unset); each is matched as it is written (see
    /// [`CompiledPolicy::denies_tag`]).
    pub denied_tags: Vec<String>,
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

    /// Whether `spec.deniedTags` denies this tag.
    pub fn denies_tag(&self, tag: &str) -> bool {
        self.denied_tags.iter().any(|t| tag_matches(t, tag))
    }

    /// Whether this policy asks the mutating webhook to change Pods (`setPullPolicyAlways` or
    /// `pinDigests`), in any mode: Warn and Audit policies report what they would change.
    pub fn mutates(&self) -> bool {
        self.set_pull_policy_always || self.pin_digests
    }

    /// Every pattern list of the policy, for the snapshot's matcher: `images`,
    /// `allowedImages`, `deniedImages`, and the `images` of each signature entry that has
    /// patterns of its own (one without covers every image the policy governs; see
    /// [`SignatureRule::covers_all`]).
    pub fn pattern_lists(&self) -> impl Iterator<Item = (ListId, &PatternList)> {
        let entries = self
            .signatures
            .iter()
            .zip(0u8..)
            .filter(|(rule, _)| !rule.covers_all())
            .map(|(rule, n)| (ListId::SignatureImages(n), Some(&rule.images)));
        [
            (ListId::Images, Some(&self.images)),
            (ListId::AllowedImages, self.allowed_images.as_ref()),
            (ListId::DeniedImages, Some(&self.denied_images)),
        ]
        .into_iter()
        .chain(entries)
        .filter_map(|(id, list)| Some((id, list?)))
    }

    /// One pattern list of the policy; `None` when unset.
    pub fn list(&self, id: ListId) -> Option<&PatternList> {
        match id {
            ListId::Images => Some(&self.images),
            ListId::AllowedImages => self.allowed_images.as_ref(),
            ListId::DeniedImages => Some(&self.denied_images),
            ListId::SignatureImages(n) => self.signatures.get(usize::from(n)).map(|r| &r.images),
        }
    }
}

/// What compiling many policies can share: each distinct ticket pattern is compiled once, and
/// each distinct signature key parsed once. A compiled regular expression takes several
/// kilobytes, more than all the rest of a small policy, and policies generated for many teams
/// usually share their ticket pattern and their release key.
#[derive(Debug, Default)]
pub struct CompileCache {
    tickets: HashMap<String, Arc<Regex>>,
    verifiers: Verifiers,
}

impl CompileCache {
    /// A cache that starts with the ticket patterns of these policies.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a CompiledPolicy>) -> CompileCache {
        let tickets = policies
            .into_iter()
            .filter_map(|p| p.break_glass.as_ref())
            .map(|bg| (bg.ticket_source.clone(), Arc::clone(&bg.ticket)))
            .collect();
        CompileCache {
            tickets,
            verifiers: Verifiers::default(),
        }
    }

    /// The compiled ticket pattern, anchored to the whole value.
    fn ticket(&mut self, source: &str) -> Result<Arc<Regex>, regex::Error> {
        if let Some(regex) = self.tickets.get(source) {
            return Ok(Arc::clone(regex));
        }
        let regex = Arc::new(
            regex::RegexBuilder::new(&format!("^(?:{source})$"))
                .size_limit(TICKET_REGEX_SIZE_LIMIT)
                .build()?,
        );
        self.tickets.insert(source.to_owned(), Arc::clone(&regex));
        Ok(regex)
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
    compile_shared(policy, secrets, &mut CompileCache::default())
}

/// Compiles a policy as [`compile_with`] does, sharing what it can with the other policies
/// compiled with the same cache.
pub fn compile_shared(
    policy: &ImagePolicy,
    secrets: &SecretKeys,
    cache: &mut CompileCache,
) -> Result<CompiledPolicy, CompileError> {
    compile_as(policy, Resolve::Fully(secrets), cache)
}

/// Checks what a policy says by itself, as the admission webhook does when it is applied: every
/// field is valid. Whether its `secretRef` Secrets can be read, and whether this version
/// supports all it asks for, is judged when it is put in force (its `Ready` condition).
pub fn validate(policy: &ImagePolicy) -> Result<(), CompileError> {
    compile_as(policy, Resolve::Shape, &mut CompileCache::default()).map(|_| ())
}

fn compile_as(
    policy: &ImagePolicy,
    resolve: Resolve<'_>,
    cache: &mut CompileCache,
) -> Result<CompiledPolicy, CompileError> {
    let name = policy.metadata.name.clone().unwrap_or_default();
    let err = |field: String, message: String| CompileError {
        policy: name.clone(),
        field,
        message,
    };
    let spec = &policy.spec;

    let patterns = |field: &str, list: &Option<Vec<String>>| -> Result<PatternList, CompileError> {
        let list = list.as_deref().unwrap_or_default();
        PatternList::parse(&format!("spec.{field}"), list, "policy").map_err(|(at, e)| err(at, e))
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

    for (i, tag) in spec.denied_tags.iter().flatten().enumerate() {
        validate_tag_pattern(tag).map_err(|e| {
            err(
                format!("spec.deniedTags[{i}]"),
                format!("{e}; e.g. `latest` or `*-dev`"),
            )
        })?;
    }

    let break_glass = match &spec.break_glass {
        None => None,
        Some(bg) => {
            let ticket = cache.ticket(&bg.ticket_pattern).map_err(|e| {
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
        &mut cache.verifiers,
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
