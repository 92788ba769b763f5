//! The immutable snapshot of all compiled policies. Every pattern of every policy is filed in
//! one [`Matcher`], so matching an image costs a few lookups by the prefixes of its name
//! however many policies there are, plus work proportional to the patterns filed there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::compile::{CompileCache, CompileError, CompiledPolicy, ListId, compile_shared};
use super::crd::ImagePolicy;
use super::matcher::{Matcher, PatternKey, Use};
use super::pattern::Pattern;
use super::selector::{Selector, SelectorSet};
use super::signatures::SecretKeys;
use crate::reference::{Reference, ReferenceError};

/// What happens to an image that no applying policy governs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnmatchedImages {
    /// Admit it (the default).
    #[default]
    Allow,
    /// Deny it (rule `unmatchedImages`).
    Deny,
}

/// Engine settings that are not part of any policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--unmatched-images`.
    pub unmatched_images: UnmatchedImages,
    /// Service accounts in these namespaces are trusted workload controllers: break-glass
    /// `allowedGroups`/`allowedUsers` are not applied to them.
    pub trusted_controller_namespaces: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            unmatched_images: UnmatchedImages::Allow,
            trusted_controller_namespaces: vec!["kube-system".to_owned()],
        }
    }
}

/// All policies in force, compiled, with their patterns in one [`Matcher`].
///
/// Policies are shared (`Arc`) with the snapshots built before and after this one: a rebuild
/// keeps every policy that did not change (see [`SnapshotBuilder`]), so that while a new
/// snapshot is built beside the one in force, only the matcher and the changed policies exist
/// twice.
#[derive(Debug)]
pub struct Snapshot {
    policies: Vec<Arc<CompiledPolicy>>,
    settings: Settings,
    /// Every pattern of every list of every policy, but a bare `**`.
    matcher: Matcher,
    /// Per policy, the flags that hold for every image (lists containing a bare `**`).
    base: Vec<u8>,
    /// The distinct namespace selectors, indexed for matching all at once.
    selectors: SelectorSet,
    /// The policies without a selector (they apply in every namespace), ascending.
    everywhere: Vec<usize>,
    /// Per distinct selector, the policies that have it, ascending.
    selected: Vec<Vec<usize>>,
    /// Whether some policy has `verifySignatures` entries.
    signing: bool,
    /// Whether some `Enforce` policy has `pinDigests`.
    pinning: bool,
    created: jiff::Timestamp,
    /// Unique to this snapshot, so that what a thread remembers of images (see
    /// [`Snapshot::resolve`]) is never used with another one.
    id: u64,
    /// How many images a thread remembers for this snapshot.
    remembered: usize,
}

/// The flag of [`ImageMatches`] that a match in a list sets (none for a signature entry's
/// list: those are kept apart, see [`ImageMatches::signature_entries`]).
fn flag(list: ListId) -> u8 {
    match list {
        ListId::Images => ImageMatches::GOVERNED,
        ListId::AllowedImages => ImageMatches::ALLOWED,
        ListId::DeniedImages => ImageMatches::DENIED,
        ListId::SignatureImages(_) => 0,
    }
}

/// The source of snapshot ids.
static NEXT_SNAPSHOT_ID: AtomicU64 = AtomicU64::new(1);

/// An image reference as written, parsed and matched against a snapshot's patterns.
#[derive(Debug)]
pub enum ResolvedImage {
    /// It does not parse.
    Invalid(ReferenceError),
    /// It parses; what it matches.
    Valid {
        reference: Reference,
        matches: ImageMatches,
    },
}

/// The most images a thread remembers per snapshot (see [`Snapshot::resolve`]). A cluster runs
/// far fewer distinct images than this at any moment; past it the memory is simply forgotten,
/// so a stream of distinct images costs a re-parse, never unbounded memory.
const RESOLVED_PER_THREAD: usize = 1024;

/// The most bytes of match flags a thread remembers per snapshot. A remembered image holds a
/// byte per policy, so with more than 4,096 policies fewer than [`RESOLVED_PER_THREAD`] images
/// are remembered: 4 MiB per thread stays small beside such a snapshot (over 100 MiB with 100
/// patterns per policy), where 1,024 images of 10,000 policies would be 10 MiB per thread.
const RESOLVED_FLAGS_PER_THREAD: usize = 4 << 20;

/// The fewest images a thread remembers, however many policies there are: the images of a few
/// Deployments being scaled up at once.
const RESOLVED_AT_LEAST: usize = 64;

/// What this thread has resolved, for the snapshot with id `snapshot`. Hashed with `foldhash`
/// (randomly seeded per process, as `hashbrown`'s default): several times faster than std's
/// SipHash on short strings, and a map bounded by [`RESOLVED_PER_THREAD`] leaves crafted
/// collisions little to gain.
#[derive(Default)]
struct Resolved {
    snapshot: u64,
    images: HashMap<String, Rc<ResolvedImage>, foldhash::fast::RandomState>,
}

thread_local! {
    static RESOLVED: RefCell<Resolved> = RefCell::default();
}

/// Which lists of which policies an image matches.
#[derive(Debug, Clone)]
pub struct ImageMatches {
    flags: Vec<u8>,
    /// The signature entries with patterns of their own that the image matches: per policy
    /// (ascending, each once), one bit per entry. Few images are named by signature entries, so
    /// this is kept sparse rather than beside every policy's flags; empty, and never allocated,
    /// in a snapshot without such entries.
    entries: Vec<(u32, u32)>,
}

impl ImageMatches {
    const GOVERNED: u8 = 1;
    const ALLOWED: u8 = 2;
    const DENIED: u8 = 4;

    /// Whether policy `i` governs the image.
    pub fn governed(&self, i: usize) -> bool {
        self.flags[i] & Self::GOVERNED != 0
    }
    /// Whether the image matches one of policy `i`'s `allowedImages`.
    pub fn allowed(&self, i: usize) -> bool {
        self.flags[i] & Self::ALLOWED != 0
    }
    /// Whether the image matches one of policy `i`'s `deniedImages`.
    pub fn denied(&self, i: usize) -> bool {
        self.flags[i] & Self::DENIED != 0
    }

    /// Which of policy `i`'s signature entries with patterns of their own name the image: bit
    /// `N` for `verifySignatures[N]`. An entry without patterns (or with `**`) is for every image
    /// its policy governs, and has no bit here (see [`SignatureRule::covers_all`]).
    ///
    /// [`SignatureRule::covers_all`]: super::SignatureRule::covers_all
    pub fn signature_entries(&self, i: usize) -> u32 {
        let Ok(i) = u32::try_from(i) else { return 0 };
        self.entries
            .binary_search_by_key(&i, |&(policy, _)| policy)
            .map_or(0, |at| self.entries[at].1)
    }
}

impl Snapshot {
    /// A snapshot with no policy.
    pub fn empty(settings: Settings) -> Snapshot {
        Snapshot::new(Vec::new(), settings)
    }

    /// Compiles every policy; the ones that fail are left out and their errors returned.
    pub fn compile<'a>(
        policies: impl IntoIterator<Item = &'a ImagePolicy>,
        settings: Settings,
    ) -> (Snapshot, Vec<CompileError>) {
        Snapshot::compile_with(policies, settings, &SecretKeys::default())
    }

    /// As [`compile`](Self::compile), with `secretRef` keys read from `secrets`.
    pub fn compile_with<'a>(
        policies: impl IntoIterator<Item = &'a ImagePolicy>,
        settings: Settings,
        secrets: &SecretKeys,
    ) -> (Snapshot, Vec<CompileError>) {
        let mut builder = SnapshotBuilder::new(None, secrets);
        let errors = policies
            .into_iter()
            .filter_map(|p| builder.add(p).err())
            .collect();
        (builder.build(settings), errors)
    }

    /// Builds the snapshot (sorted by policy name) and its matcher.
    pub fn new(policies: Vec<CompiledPolicy>, settings: Settings) -> Snapshot {
        Snapshot::from_shared(policies.into_iter().map(Arc::new).collect(), settings)
    }

    /// Builds the snapshot (sorted by policy name) and its matcher from policies that other
    /// snapshots may hold too.
    pub fn from_shared(mut policies: Vec<Arc<CompiledPolicy>>, settings: Settings) -> Snapshot {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut base = vec![0u8; policies.len()];
        let mut filed = 0;
        for (pi, policy) in policies.iter().enumerate() {
            if policy.governs_all() {
                base[pi] |= ImageMatches::GOVERNED;
            }
            for (u, pattern) in uses_of(pi, policy) {
                if pattern.matches_all() {
                    base[pi] |= flag(u.list);
                } else {
                    filed += 1;
                }
            }
        }
        let uses = policies.iter().enumerate().flat_map(|(pi, policy)| {
            uses_of(pi, policy).filter_map(|(u, pattern)| (!pattern.matches_all()).then_some(u))
        });
        let matcher = Matcher::build(filed, uses, |u| pattern_key(&policies, u));
        let mut selectors: Vec<Selector> = Vec::new();
        let mut selected: Vec<Vec<usize>> = Vec::new();
        let mut everywhere = Vec::new();
        let mut selector_ids: HashMap<&Selector, usize> = HashMap::new();
        for (pi, policy) in policies.iter().enumerate() {
            let Some(s) = policy.selector.as_ref() else {
                everywhere.push(pi);
                continue;
            };
            let id = *selector_ids.entry(s).or_insert_with(|| {
                selectors.push(s.clone());
                selected.push(Vec::new());
                selectors.len() - 1
            });
            selected[id].push(pi);
        }
        let remembered = (RESOLVED_FLAGS_PER_THREAD / policies.len().max(1))
            .clamp(RESOLVED_AT_LEAST, RESOLVED_PER_THREAD);
        let signing = policies.iter().any(|p| !p.signatures.is_empty());
        let pinning = policies
            .iter()
            .any(|p| p.pin_digests && p.mode == super::Mode::Enforce);
        Snapshot {
            signing,
            pinning,
            policies,
            settings,
            matcher,
            base,
            selectors: SelectorSet::new(&selectors),
            everywhere,
            selected,
            created: jiff::Timestamp::now(),
            id: NEXT_SNAPSHOT_ID.fetch_add(1, Ordering::Relaxed),
            remembered,
        }
    }

    /// The compiled policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.policies[i])
    }

    /// How many distinct patterns the snapshot's matcher holds, and how many uses of them (a
    /// pattern written in many policies is one pattern with many uses, matched once per image).
    pub fn matcher_size(&self) -> (usize, usize) {
        (self.matcher.patterns(), self.matcher.uses())
    }

    /// The compiled policies, sorted by name.
    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
        &self.policies
    }

    /// The snapshot's identity: no two snapshots of a process share one, so what a thread
    /// remembers about one can be told apart from what it remembers about another.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether some policy has signature entries: when not, no request needs evidence, and
    /// deciding costs this one test more than before signatures existed.
    pub fn has_signature_rules(&self) -> bool {
        self.signing
    }

    /// Whether some `Enforce` policy pins digests: when not, no mutation needs a digest, and
    /// `/mutate` costs this one test more than before `pinDigests` existed.
    pub fn pins_digests(&self) -> bool {
        self.pinning
    }

    /// The engine settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// When the snapshot was built.
    pub fn created(&self) -> jiff::Timestamp {
        self.created
    }

    /// The indices of the policies that apply in a namespace with these labels, ascending.
    /// The work follows the policies that apply and the selectors the labels touch, not the
    /// number of policies.
    pub fn applying(
        &self,
        namespace_labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<usize> {
        let matched = self.selectors.matching(namespace_labels);
        let mut out = Vec::with_capacity(
            self.everywhere.len()
                + matched
                    .iter()
                    .map(|&s| self.selected[s].len())
                    .sum::<usize>(),
        );
        out.extend_from_slice(&self.everywhere);
        for &s in &matched {
            out.extend_from_slice(&self.selected[s]);
        }
        if !matched.is_empty() {
            // Ascending runs, one per list: the stable sort merges them.
            out.sort();
        }
        out
    }

    /// Parses an image reference as written and matches it with [`match_image`]
    /// (Self::match_image). The result depends only on the string and this snapshot, and a
    /// cluster's workloads share few distinct images (every Pod of a Deployment has the same
    /// ones), so each thread remembers it for the images it has seen, without locking: a
    /// decision then costs a hash lookup per image instead of a parse and a match.
    pub fn resolve(&self, image: &str) -> Rc<ResolvedImage> {
        RESOLVED.with(|cell| {
            // Not re-entered: nothing below calls back into `resolve`.
            let mut cache = cell.borrow_mut();
            if cache.snapshot != self.id {
                cache.snapshot = self.id;
                cache.images.clear();
            }
            if let Some(found) = cache.images.get(image) {
                return Rc::clone(found);
            }
            let resolved = Rc::new(match Reference::parse(image) {
                Ok(reference) => ResolvedImage::Valid {
                    matches: self.match_image(&reference),
                    reference,
                },
                Err(e) => ResolvedImage::Invalid(e),
            });
            if cache.images.len() >= self.remembered {
                cache.images.clear();
            }
            cache.images.insert(image.to_owned(), Rc::clone(&resolved));
            resolved
        })
    }

    /// Matches an image against every pattern of every policy at once: the policies' lists
    /// and their signature entries' `images`.
    pub fn match_image(&self, reference: &Reference) -> ImageMatches {
        let mut flags = self.base.clone();
        let mut entries: Vec<(u32, u32)> = Vec::new();
        self.matcher.for_each_match(
            reference.name(),
            |u| pattern_key(&self.policies, u),
            |found| {
                // The same pattern in every use: its suffix is checked once.
                let first = found.first().and_then(|u| self.pattern(u));
                if first.is_some_and(|p| p.suffix_matches(reference)) {
                    for u in found.uses() {
                        match u.list {
                            ListId::SignatureImages(n) => entries.push((u.policy, 1 << n)),
                            list => flags[u.policy as usize] |= flag(list),
                        }
                    }
                }
            },
        );
        if !entries.is_empty() {
            // One word per policy: the bits of its entries merged.
            entries.sort_unstable_by_key(|&(policy, _)| policy);
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 |= later.1;
                }
                same
            });
        }
        ImageMatches { flags, entries }
    }

    fn pattern(&self, u: Use) -> Option<&Pattern> {
        pattern(&self.policies, u)
    }
}

/// Every pattern of a policy, with its use.
fn uses_of(pi: usize, policy: &CompiledPolicy) -> impl Iterator<Item = (Use, &Pattern)> {
    policy.pattern_lists().flat_map(move |(list, patterns)| {
        patterns
            .patterns
            .iter()
            .enumerate()
            .map(move |(ti, pattern)| {
                let u = Use {
                    policy: position(pi),
                    index: position(ti),
                    list,
                };
                (u, pattern)
            })
    })
}

/// The pattern a use refers to.
fn pattern(policies: &[Arc<CompiledPolicy>], u: Use) -> Option<&Pattern> {
    policies
        .get(u.policy as usize)?
        .list(u.list)?
        .patterns
        .get(u.index as usize)
}

/// The pattern a use refers to, as the matcher files it: the normalised name glob (`**` for a
/// suffix alone) and the suffix as written.
fn pattern_key(policies: &[Arc<CompiledPolicy>], u: Use) -> PatternKey<'_> {
    pattern(policies, u).map_or(("", ""), |p| {
        (p.name_glob().unwrap_or("**"), p.suffix_text())
    })
}

/// A position in the policies or a pattern list, as the matcher keeps it (see
/// [`super::matcher`]: fewer than 4 billion of either fit in any snapshot).
fn position(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Builds a snapshot one policy at a time, keeping the compiled form of every policy that is
/// the same in the previous snapshot: unchanged policies are then shared by both, and a policy
/// source can stream its policies (read, compile, drop) instead of holding them all.
#[derive(Debug)]
pub struct SnapshotBuilder<'a> {
    previous: Option<&'a Snapshot>,
    secrets: &'a SecretKeys,
    cache: CompileCache,
    policies: Vec<Arc<CompiledPolicy>>,
}

impl<'a> SnapshotBuilder<'a> {
    /// A builder that reuses what it can of `previous`, and compiles `secretRef` keys from
    /// `secrets`.
    pub fn new(previous: Option<&'a Snapshot>, secrets: &'a SecretKeys) -> Self {
        SnapshotBuilder {
            previous,
            secrets,
            cache: CompileCache::of(
                previous
                    .iter()
                    .flat_map(|s| s.policies.iter().map(|p| &**p)),
            ),
            policies: Vec::new(),
        }
    }

    /// Compiles a policy and adds it, or says why it does not compile.
    pub fn add(&mut self, policy: &ImagePolicy) -> Result<(), CompileError> {
        let compiled = self.compile(policy)?;
        self.policies.push(compiled);
        Ok(())
    }

    /// Compiles a policy without adding it: the previous snapshot's copy when it compiles to
    /// the same, and sharing what it can with the policies compiled before.
    pub fn compile(&mut self, policy: &ImagePolicy) -> Result<Arc<CompiledPolicy>, CompileError> {
        let compiled = compile_shared(policy, self.secrets, &mut self.cache)?;
        let kept = self
            .previous
            .and_then(|s| s.policy(&compiled.name))
            .filter(|p| ***p == compiled);
        Ok(match kept {
            Some(p) => Arc::clone(p),
            None => Arc::new(compiled),
        })
    }

    /// Adds a policy compiled before (shared, not copied).
    pub fn add_shared(&mut self, compiled: Arc<CompiledPolicy>) {
        self.policies.push(compiled);
    }

    /// The policies added so far.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether no policy was added.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Builds the snapshot.
    pub fn build(self, settings: Settings) -> Snapshot {
        Snapshot::from_shared(self.policies, settings)
    }
}

/// Asserts that `second`, rebuilt from `first` with policy `changed` edited to allow only
/// `allowed`, shares policy `kept` with `first` and has compiled `changed` anew.
#[cfg(test)]
pub(crate) fn assert_rebuilt(
    first: &Snapshot,
    second: &Snapshot,
    kept: &str,
    changed: &str,
    allowed: &str,
) {
    let policy = |s: &Snapshot, name| Arc::as_ptr(s.policy(name).unwrap());
    assert_eq!(
        policy(first, kept),
        policy(second, kept),
        "unchanged: shared"
    );
    assert_ne!(
        policy(first, changed),
        policy(second, changed),
        "changed: compiled anew"
    );
    let edited = second.policy(changed).unwrap();
    assert_eq!(edited.allowed_images.as_ref().unwrap().sources(), [allowed]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ImagePolicySpec;

    fn policy(name: &str, allowed: &[&str], denied: &[&str]) -> ImagePolicy {
        let list = |l: &[&str]| Some(l.iter().map(|s| (*s).to_owned()).collect());
        ImagePolicy::new(
            name,
            ImagePolicySpec {
                images: list(&["registry.corp.example/**", "docker.io/**"]),
                allowed_images: list(allowed),
                denied_images: list(denied),
                ..ImagePolicySpec::default()
            },
        )
    }

    /// A `verifySignatures` entry `e{n}` under the test key, for `images` (every governed
    /// image when `None`).
    fn signature_entry(n: usize, images: Option<Vec<String>>) -> crate::policy::SignatureEntry {
        crate::policy::SignatureEntry {
            name: format!("e{n}"),
            images,
            key: Some(crate::policy::KeyVerifier {
                public_key: Some(crate::policy::test_keys::P256.to_owned()),
                ..crate::policy::KeyVerifier::default()
            }),
            ..crate::policy::SignatureEntry::default()
        }
    }

    #[test]
    fn identical_patterns_across_many_policies_are_compiled_once() {
        let patterns = [
            "registry.corp.example/team/*",
            "docker.io/library/alpine:3.*",
        ];
        let one = policy("p0", &patterns, &["docker.io/library/busybox"]);
        let many: Vec<ImagePolicy> = (0..1000)
            .map(|i| policy(&format!("p{i}"), &patterns, &["docker.io/library/busybox"]))
            .collect();
        let (single, errors) = Snapshot::compile([&one], Settings::default());
        assert!(errors.is_empty());
        let (shared, errors) = Snapshot::compile(&many, Settings::default());
        assert!(errors.is_empty());
        // Five distinct patterns (two in `images`, two allowed, one denied), whether one policy
        // writes them or a thousand do; only the uses grow with the policies.
        assert_eq!(single.matcher_size(), (5, 5));
        assert_eq!(shared.matcher_size(), (5, 5000));

        let image = Reference::parse("registry.corp.example/team/app:1").unwrap();
        let matches = shared.match_image(&image);
        assert!((0..1000).all(|i| matches.governed(i) && matches.allowed(i) && !matches.denied(i)));
        let image = Reference::parse("busybox").unwrap();
        let matches = shared.match_image(&image);
        assert!((0..1000).all(|i| matches.governed(i) && !matches.allowed(i) && matches.denied(i)));
    }

    #[test]
    fn identical_signature_entries_across_many_policies_are_filed_once_and_share_their_key() {
        let signed = |i: usize| {
            let mut p = policy(&format!("p{i}"), &["registry.corp.example/**"], &[]);
            p.spec.verify_signatures = Some(vec![
                signature_entry(0, None),
                signature_entry(1, Some(vec!["registry.corp.example/team/*".into()])),
                signature_entry(
                    2,
                    Some(vec![
                        "registry.corp.example/team/*".into(),
                        format!("registry.corp.example/team-{i}/**"),
                    ]),
                ),
            ]);
            p
        };
        let many: Vec<ImagePolicy> = (0..1000).map(signed).collect();
        let (snapshot, errors) = Snapshot::compile(&many, Settings::default());
        assert!(errors.is_empty(), "{errors:?}");
        // Two distinct patterns in the policies' lists (`registry.corp.example/**` is in
        // `images` and `allowedImages`, one pattern with two uses each); the entries add
        // `registry.corp.example/team/*` once for all 2,000 uses, and each policy's own pattern.
        // Entry 0 has no patterns.
        assert_eq!(snapshot.matcher_size(), (2 + 1 + 1000, 3000 + 2000 + 1000));
        // One verifier for the 3,000 entries that name the same key.
        let first = &snapshot.policies()[0].signatures[0].check.verifier;
        assert!(snapshot.policies().iter().all(|p| {
            p.signatures
                .iter()
                .all(|e| Arc::ptr_eq(&e.check.verifier, first))
        }));

        let names = |image: &str, pi: usize| -> Vec<String> {
            let r = Reference::parse(image).unwrap();
            let matches = snapshot.match_image(&r);
            crate::verification::candidates(&snapshot.policies()[pi], pi, &matches)
                .map(|e| e.name.clone())
                .collect()
        };
        let p7 = snapshot
            .policies()
            .iter()
            .position(|p| p.name == "p7")
            .unwrap();
        assert_eq!(
            names("registry.corp.example/team/app:1", p7),
            ["e0", "e1", "e2"]
        );
        assert_eq!(
            names("registry.corp.example/team-7/app:1", p7),
            ["e0", "e2"]
        );
        assert_eq!(names("registry.corp.example/team-8/app:1", p7), ["e0"]);
    }

    #[test]
    fn a_ticket_pattern_shared_by_many_policies_is_compiled_once_and_kept_across_a_rebuild() {
        let with_ticket = |i: usize, ticket: &str| {
            let mut p = policy(&format!("p{i}"), &["registry.corp.example/**"], &[]);
            p.spec.break_glass = Some(crate::policy::BreakGlass {
                ticket_pattern: ticket.to_owned(),
                ..crate::policy::BreakGlass::default()
            });
            p
        };
        let ticket = |s: &Snapshot, i: usize| {
            Arc::clone(&s.policies()[i].break_glass.as_ref().unwrap().ticket)
        };
        let many: Vec<ImagePolicy> = (0..1000).map(|i| with_ticket(i, "INC-[0-9]+")).collect();
        let (first, errors) = Snapshot::compile(&many, Settings::default());
        assert!(errors.is_empty(), "{errors:?}");
        let regex = ticket(&first, 0);
        assert!((0..1000).all(|i| Arc::ptr_eq(&ticket(&first, i), &regex)));

        // A rebuild with one policy changed (another pattern list, the same ticket): the
        // changed policy is compiled anew, and reuses the regex the snapshot in force holds.
        let secrets = SecretKeys::default();
        let mut builder = SnapshotBuilder::new(Some(&first), &secrets);
        let mut changed = with_ticket(0, "INC-[0-9]+");
        changed.spec.allowed_images = Some(vec!["registry.corp.example/other/**".into()]);
        builder.add(&changed).unwrap();
        for p in &many[1..] {
            builder.add(p).unwrap();
        }
        let second = builder.build(Settings::default());
        let p0 = |s: &Snapshot| Arc::as_ptr(s.policy("p0").unwrap());
        assert_ne!(p0(&first), p0(&second), "changed: compiled anew");
        assert!((0..1000).all(|i| Arc::ptr_eq(&ticket(&second, i), &regex)));
        assert_eq!(
            second.matcher_size(),
            (3, 3000),
            "two shared patterns, and p0's own"
        );

        // A different ticket pattern is another regex.
        let (other, _) = Snapshot::compile([&with_ticket(0, "CHG-[0-9]+")], Settings::default());
        assert!(!Arc::ptr_eq(&ticket(&other, 0), &regex));
    }

    #[test]
    fn the_policies_that_apply_are_those_whose_selector_matches_in_order() {
        let with = |name: &str, selector: Option<&str>| {
            let mut p = policy(name, &["registry.corp.example/**"], &[]);
            p.spec.namespace_selector = selector.map(|s| serde_saphyr::from_str(s).unwrap());
            p
        };
        let policies = [
            with("a", Some("matchLabels: {team: t1}")),
            with("b", None),
            with("c", Some("matchLabels: {team: t1, env: prod}")),
            with(
                "d",
                Some("matchExpressions: [{key: env, operator: In, values: [prod]}]"),
            ),
            with("e", Some("matchLabels: {team: t2}")),
            with("f", None),
            with("g", Some("matchLabels: {team: t1}")),
            with("h", Some("{}")),
        ];
        let (snapshot, errors) = Snapshot::compile(&policies, Settings::default());
        assert!(errors.is_empty());
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        for (pairs, want) in [
            (&[][..], vec![1, 5, 7]),
            (&[("team", "t1")][..], vec![0, 1, 5, 6, 7]),
            (
                &[("team", "t1"), ("env", "prod")][..],
                vec![0, 1, 2, 3, 5, 6, 7],
            ),
            (&[("team", "t2"), ("env", "prod")][..], vec![1, 3, 4, 5, 7]),
        ] {
            assert_eq!(snapshot.applying(&labels(pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn a_rebuild_keeps_the_policies_that_did_not_change() {
        let a = policy("a", &["registry.corp.example/a/*"], &[]);
        let b = policy("b", &["registry.corp.example/b/*"], &[]);
        let (first, _) = Snapshot::compile([&a, &b], Settings::default());

        let b2 = policy("b", &["registry.corp.example/b/**"], &[]);
        let secrets = SecretKeys::default();
        let mut builder = SnapshotBuilder::new(Some(&first), &secrets);
        builder.add(&b2).unwrap();
        builder.add(&a).unwrap();
        let second = builder.build(Settings::default());

        assert_rebuilt(&first, &second, "a", "b", "registry.corp.example/b/**");
        let names: Vec<&str> = second.policies().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "sorted by name");
    }

    mod properties {
        use super::*;
        use crate::policy::pattern::tests::generated;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// What the matcher finds for an image is what matching each pattern on its own
            /// finds (which the pattern tests hold to globset).
            #[test]
            fn the_matcher_finds_exactly_the_patterns_that_match(
                lists in proptest::collection::vec(
                    (
                        proptest::collection::vec(generated::pattern(), 0..4),
                        proptest::collection::vec(generated::pattern(), 1..4),
                        proptest::collection::vec(generated::pattern(), 0..4),
                    ),
                    1..6,
                ),
                images in proptest::collection::vec(generated::reference(), 1..8),
            ) {
                let policies: Vec<ImagePolicy> = lists
                    .iter()
                    .enumerate()
                    .map(|(i, (images, allowed, denied))| {
                        let own = |l: &Vec<String>| Some(l.clone());
                        ImagePolicy::new(&format!("p{i}"), ImagePolicySpec {
                            images: own(images),
                            allowed_images: own(allowed),
                            denied_images: own(denied),
                            ..ImagePolicySpec::default()
                        })
                    })
                    .collect();
                let (snapshot, _) = Snapshot::compile(&policies, Settings::default());
                for image in &images {
                    let Ok(r) = Reference::parse(image) else { continue };
                    let got = snapshot.match_image(&r);
                    for (i, p) in snapshot.policies().iter().enumerate() {
                        let any = |l: Option<&crate::policy::PatternList>| {
                            l.is_some_and(|l| l.patterns.iter().any(|pat| pat.matches(&r)))
                        };
                        let governed = p.images.patterns.is_empty() || any(Some(&p.images));
                        prop_assert_eq!(got.governed(i), governed, "governed {} {}", p.name, image);
                        prop_assert_eq!(got.allowed(i), any(p.allowed_images.as_ref()), "allowed {} {}", p.name, image);
                        prop_assert_eq!(got.denied(i), any(Some(&p.denied_images)), "denied {} {}", p.name, image);
                    }
                }
            }

            /// Which signature entries the matcher finds for an image is what matching each
            /// entry's patterns on its own finds ([`SignatureRule::covers`]), and the entries
            /// [`candidates`](crate::verification::candidates) gives are those.
            ///
            /// [`SignatureRule::covers`]: crate::policy::SignatureRule::covers
            #[test]
            fn the_matcher_finds_exactly_the_signature_entries_that_match(
                policies in proptest::collection::vec(
                    (
                        proptest::collection::vec(generated::pattern(), 1..3),
                        proptest::collection::vec(
                            proptest::option::of(proptest::collection::vec(generated::pattern(), 1..4)),
                            1..4,
                        ),
                    ),
                    1..5,
                ),
                images in proptest::collection::vec(generated::reference(), 1..8),
            ) {
                let policies: Vec<ImagePolicy> = policies
                    .iter()
                    .enumerate()
                    .map(|(i, (allowed, entries))| {
                        ImagePolicy::new(&format!("p{i}"), ImagePolicySpec {
                            allowed_images: Some(allowed.clone()),
                            verify_signatures: Some(
                                entries.iter().enumerate().map(|(e, images)| signature_entry(e, images.clone())).collect(),
                            ),
                            ..ImagePolicySpec::default()
                        })
                    })
                    .collect();
                let (snapshot, errors) = Snapshot::compile(&policies, Settings::default());
                prop_assert!(errors.is_empty(), "{:?}", errors);
                for image in &images {
                    let Ok(r) = Reference::parse(image) else { continue };
                    let got = snapshot.match_image(&r);
                    for (i, p) in snapshot.policies().iter().enumerate() {
                        let want: Vec<&str> = p.signatures.iter().filter(|e| e.covers(&r)).map(|e| e.name.as_str()).collect();
                        let found: Vec<&str> = crate::verification::candidates(p, i, &got).map(|e| e.name.as_str()).collect();
                        prop_assert_eq!(found, want, "{} {}", p.name, image);
                    }
                }
            }
        }
    }
}
