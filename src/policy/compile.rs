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
}

/// Which pattern list of a policy: what a snapshot's [`Matcher`](super::matcher::Matcher)
/// reports a match in. Another list of patterns matched with the others (say, per entry of a
/// rule) is another variant here, with a code of its own, listed by
/// [`CompiledPolicy::pattern_lists`] and read back by [`CompiledPolicy::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListId {
    /// `spec.images`.
    Images,
    /// `spec.allowedImages`.
    AllowedImages,
    /// `spec.deniedImages`.
    DeniedImages,
}

impl ListId {
    /// The list as one byte, as the matcher keeps it.
    pub(crate) fn code(self) -> u8 {
        match self {
            ListId::Images => 0,
            ListId::AllowedImages => 1,
            ListId::DeniedImages => 2,
        }
    }

    /// The list a byte of [`ListId::code`] stands for.
    pub(crate) fn from_code(code: u8) -> Option<ListId> {
        match code {
            0 => Some(ListId::Images),
            1 => Some(ListId::AllowedImages),
            2 => Some(ListId::DeniedImages),
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
    /// `spec.breakGlass`.
    pub break_glass: Option<BreakGlassRule>,
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

    /// Every pattern list of the policy, for the snapshot's matcher.
    pub fn pattern_lists(&self) -> impl Iterator<Item = (ListId, &PatternList)> {
        [
            (ListId::Images, Some(&self.images)),
            (ListId::AllowedImages, self.allowed_images.as_ref()),
            (ListId::DeniedImages, Some(&self.denied_images)),
        ]
        .into_iter()
        .filter_map(|(id, list)| Some((id, list?)))
    }

    /// One pattern list of the policy; `None` when unset.
    pub fn list(&self, id: ListId) -> Option<&PatternList> {
        match id {
            ListId::Images => Some(&self.images),
            ListId::AllowedImages => self.allowed_images.as_ref(),
            ListId::DeniedImages => Some(&self.denied_images),
        }
    }
}

/// What compiling many policies can share: each distinct ticket pattern is compiled once. A
/// compiled regular expression takes several kilobytes, more than all the rest of a small
/// policy, and policies generated for many teams usually share their ticket pattern.
#[derive(Debug, Default)]
pub struct CompileCache {
    tickets: HashMap<String, Arc<Regex>>,
}

impl CompileCache {
    /// A cache that starts with the ticket patterns of these policies.
    pub fn of<'a>(policies: impl IntoIterator<Item = &'a CompiledPolicy>) -> CompileCache {
        let tickets = policies
            .into_iter()
            .filter_map(|p| p.break_glass.as_ref())
            .map(|bg| (bg.ticket_source.clone(), Arc::clone(&bg.ticket)))
            .collect();
        CompileCache { tickets }
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

/// Compiles a policy, or says which field is wrong and why.
pub fn compile(policy: &ImagePolicy) -> Result<CompiledPolicy, CompileError> {
    compile_with(policy, &mut CompileCache::default())
}

/// Compiles a policy as [`compile`] does, sharing what it can with the other policies compiled
/// with the same cache.
pub fn compile_with(
    policy: &ImagePolicy,
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
        if list.len() > MAX_PATTERNS_PER_LIST {
            return Err(err(
                format!("spec.{field}"),
                format!(
                    "{} patterns are more than one list may hold ({MAX_PATTERNS_PER_LIST}); split the policy",
                    list.len()
                ),
            ));
        }
        let mut out = PatternList {
            patterns: Vec::with_capacity(list.len()),
        };
        for (i, source) in list.iter().enumerate() {
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
        || spec.require_pull_policy_always.is_some();
    if !has_rule {
        return Err(err(
            "spec".into(),
            "the policy sets no rule; set at least one of allowedImages, deniedImages, requireDigest, deniedTags or requirePullPolicyAlways".into(),
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
        break_glass,
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
