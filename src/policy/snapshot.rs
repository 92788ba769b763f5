//! The immutable snapshot of all compiled policies. Every pattern of every policy is compiled
//! into one [`GlobSet`], so matching an image costs one pass over its name however many
//! policies there are, plus work proportional to the patterns that actually match.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use globset::{GlobSet, GlobSetBuilder};

use super::compile::{CompileError, CompiledPolicy, PatternList, compile_with};
use super::crd::ImagePolicy;
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

/// Which pattern list a glob belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Images,
    Allowed,
    Denied,
}

impl List {
    fn flag(self) -> u8 {
        match self {
            List::Images => ImageMatches::GOVERNED,
            List::Allowed => ImageMatches::ALLOWED,
            List::Denied => ImageMatches::DENIED,
        }
    }
}

/// One use of a glob: policy index, list, pattern index.
type Use = (u32, List, u32);

/// All policies in force, compiled, with their patterns in one set matcher.
#[derive(Debug)]
pub struct Snapshot {
    policies: Vec<CompiledPolicy>,
    settings: Settings,
    names: GlobSet,
    /// For each glob of `names`, the patterns that use it.
    uses: Vec<Vec<Use>>,
    /// Patterns with no name glob but a suffix (`**:latest`): checked for every image.
    suffix_only: Vec<Use>,
    /// Per policy, the flags that hold for every image (lists containing a bare `**`).
    base: Vec<u8>,
    /// The distinct namespace selectors, indexed for matching all at once.
    selectors: SelectorSet,
    /// Per policy, its index in `selectors` (`None`: every namespace).
    selector_of: Vec<Option<usize>>,
    /// Whether some policy has `verifySignatures` entries.
    signing: bool,
    /// Whether some `Enforce` policy has `pinDigests`.
    pinning: bool,
    created: jiff::Timestamp,
    /// Unique to this snapshot, so that what a thread remembers of images (see
    /// [`Snapshot::resolve`]) is never used with another one.
    id: u64,
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
}

impl Snapshot {
    /// A snapshot with no policy.
    pub fn empty(settings: Settings) -> Snapshot {
        Snapshot::new(Vec::new(), settings)
    }

    /// Compiles every policy; the ones that fail are left out and their errors returned.
    pub fn compile(policies: &[ImagePolicy], settings: Settings) -> (Snapshot, Vec<CompileError>) {
        Snapshot::compile_with(policies, settings, &SecretKeys::default())
    }

    /// As [`compile`](Self::compile), with `secretRef` keys read from `secrets`.
    pub fn compile_with(
        policies: &[ImagePolicy],
        settings: Settings,
        secrets: &SecretKeys,
    ) -> (Snapshot, Vec<CompileError>) {
        let mut compiled = Vec::with_capacity(policies.len());
        let mut errors = Vec::new();
        for p in policies {
            match compile_with(p, secrets) {
                Ok(c) => compiled.push(c),
                Err(e) => errors.push(e),
            }
        }
        (Snapshot::new(compiled, settings), errors)
    }

    /// Builds the snapshot (sorted by policy name) and its set matcher.
    pub fn new(mut policies: Vec<CompiledPolicy>, settings: Settings) -> Snapshot {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut builder = GlobSetBuilder::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut uses: Vec<Vec<Use>> = Vec::new();
        let mut suffix_only = Vec::new();
        let mut base = vec![0u8; policies.len()];
        for (pi, policy) in policies.iter().enumerate() {
            if policy.governs_all() {
                base[pi] |= ImageMatches::GOVERNED;
            }
            let lists: [(List, Option<&PatternList>); 3] = [
                (List::Images, Some(&policy.images)),
                (List::Allowed, policy.allowed_images.as_ref()),
                (List::Denied, Some(&policy.denied_images)),
            ];
            for (list, patterns) in lists {
                for (ti, pattern) in patterns
                    .into_iter()
                    .flat_map(|l| l.patterns.iter())
                    .enumerate()
                {
                    let u = (pi as u32, list, ti as u32);
                    match (&pattern.name_glob, &pattern.suffix) {
                        (None, None) => base[pi] |= list.flag(),
                        (None, Some(_)) => suffix_only.push(u),
                        (Some(glob), _) => {
                            let id = *index.entry(glob.glob().to_owned()).or_insert_with(|| {
                                builder.add(glob.clone());
                                uses.push(Vec::new());
                                uses.len() - 1
                            });
                            uses[id].push(u);
                        }
                    }
                }
            }
        }
        // Every glob was built on its own already, so building the set cannot fail; an empty
        // set is the fallback that keeps the process up should it ever.
        let names = builder.build().unwrap_or_else(|_| GlobSet::empty());
        let mut selectors: Vec<Selector> = Vec::new();
        let mut selector_ids: HashMap<&Selector, usize> = HashMap::new();
        let selector_of = policies
            .iter()
            .map(|p| {
                let s = p.selector.as_ref()?;
                Some(*selector_ids.entry(s).or_insert_with(|| {
                    selectors.push(s.clone());
                    selectors.len() - 1
                }))
            })
            .collect();
        let signing = policies.iter().any(|p| !p.signatures.is_empty());
        let pinning = policies
            .iter()
            .any(|p| p.pin_digests && p.mode == super::Mode::Enforce);
        Snapshot {
            signing,
            pinning,
            policies,
            settings,
            names,
            uses,
            suffix_only,
            base,
            selectors: SelectorSet::new(&selectors),
            selector_of,
            created: jiff::Timestamp::now(),
            id: NEXT_SNAPSHOT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The compiled policies, sorted by name.
    pub fn policies(&self) -> &[CompiledPolicy] {
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

    /// The indices of the policies that apply in a namespace with these labels. Each distinct
    /// selector is evaluated once.
    pub fn applying(
        &self,
        namespace_labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<usize> {
        let verdicts = self.selectors.matching(namespace_labels);
        self.selector_of
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none_or(|i| verdicts[i]))
            .map(|(i, _)| i)
            .collect()
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
            if cache.images.len() >= RESOLVED_PER_THREAD {
                cache.images.clear();
            }
            cache.images.insert(image.to_owned(), Rc::clone(&resolved));
            resolved
        })
    }

    /// Matches an image against every pattern of every policy at once.
    pub fn match_image(&self, reference: &Reference) -> ImageMatches {
        let mut flags = self.base.clone();
        let mut mark = |&(pi, list, ti): &Use| {
            let policy = &self.policies[pi as usize];
            let patterns = match list {
                List::Images => &policy.images,
                List::Allowed => match &policy.allowed_images {
                    Some(l) => l,
                    None => return,
                },
                List::Denied => &policy.denied_images,
            };
            if patterns.patterns[ti as usize].suffix_matches(reference) {
                flags[pi as usize] |= list.flag();
            }
        };
        for id in self.names.matches(reference.name()) {
            self.uses[id].iter().for_each(&mut mark);
        }
        self.suffix_only.iter().for_each(&mut mark);
        ImageMatches { flags }
    }
}
