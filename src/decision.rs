//! Decisions: a workload against a snapshot. [`decide`] is a pure function of the snapshot, the
//! object (and the old object on UPDATE), the namespace's labels, the requester and the time.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::BuildHasher as _;

use serde::Serialize;

use crate::evidence::Evidence;
use crate::mutation::Change;
use crate::policy::{
    CompiledPolicy, ImageMatches, Mode, ResolvedImage, Settings, Snapshot, UnmatchedImages,
};
use crate::reference::Reference;
use crate::verification::{self, Judgement};
use crate::workload::{ContainerType, ImageUse, Workload};

/// The annotation that asks for a break-glass exception; its value is the ticket.
pub const BREAK_GLASS_ANNOTATION: &str = "imagegate.image-policy.k8s.io/break-glass";
/// The annotation that says until when the exception holds (RFC 3339).
pub const BREAK_GLASS_UNTIL_ANNOTATION: &str = "imagegate.image-policy.k8s.io/break-glass-until";

/// Who sent the request (AdmissionReview `userInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Requester {
    pub username: String,
    pub groups: Vec<String>,
}

/// Everything a decision depends on besides the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The object as it would be stored.
    pub object: &'a Workload,
    /// On UPDATE, the object as it was: only new or changed images can be denied.
    pub old_object: Option<&'a Workload>,
    /// The namespace's labels (with `kubernetes.io/metadata.name`).
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// Who asks; `None` when unknown (ImageReview, `check` without `--user`).
    pub requester: Option<&'a Requester>,
    /// The moment of the decision.
    pub now: jiff::Timestamp,
    /// What the registry adapter found for the images that signature entries govern (see
    /// [`verification::requests`]); `None` when nothing was gathered, which fails every image
    /// that needed it (fail closed).
    pub evidence: Option<&'a Evidence>,
}

/// The rule a violation breaks, named as the policy field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    /// The image reference does not parse.
    Reference,
    AllowedImages,
    DeniedImages,
    RequireDigest,
    DeniedTags,
    RequirePullPolicyAlways,
    /// A break-glass exception was asked for and refused.
    BreakGlass,
    /// No applying policy governs the image, and `--unmatched-images deny` is set.
    UnmatchedImages,
    /// No signature entry that governs the image verified a signature over its digest.
    VerifySignatures,
    /// A Pod's digest-pinned image runs another digest, as the kubelet reports it (audit only).
    RunningDigest,
}

impl Rule {
    /// The rule's name, as the policy field.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Reference => "reference",
            Rule::AllowedImages => "allowedImages",
            Rule::DeniedImages => "deniedImages",
            Rule::RequireDigest => "requireDigest",
            Rule::DeniedTags => "deniedTags",
            Rule::RequirePullPolicyAlways => "requirePullPolicyAlways",
            Rule::BreakGlass => "breakGlass",
            Rule::UnmatchedImages => "unmatchedImages",
            Rule::VerifySignatures => "verifySignatures",
            Rule::RunningDigest => "runningDigest",
        }
    }

    /// Every rule, for metrics.
    pub const ALL: [Rule; 10] = [
        Rule::Reference,
        Rule::AllowedImages,
        Rule::DeniedImages,
        Rule::RequireDigest,
        Rule::DeniedTags,
        Rule::RequirePullPolicyAlways,
        Rule::BreakGlass,
        Rule::UnmatchedImages,
        Rule::VerifySignatures,
        Rule::RunningDigest,
    ];
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy name used for violations that no policy owns (`--unmatched-images deny`).
pub const NO_POLICY: &str = "(unmatched-images)";

/// One failed rule for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    pub policy: String,
    pub mode: Mode,
    pub rule: Rule,
    pub container_type: ContainerType,
    pub container: String,
    /// The image as written.
    pub image: String,
    /// The canonical form; `None` when the reference does not parse.
    pub canonical: Option<String>,
    /// What failed and what would pass.
    pub message: String,
    /// A break-glass exception covers it.
    pub excused: bool,
    /// On UPDATE: the image was already there, so the violation only warns.
    #[serde(skip)]
    pub unchanged: bool,
    /// The field path of the image (for AdmissionReview causes).
    #[serde(skip)]
    pub field_path: String,
    /// The image's position in [`Workload::images`].
    #[serde(skip)]
    pub image_index: usize,
    /// The policy's position in the snapshot; `None` for [`NO_POLICY`].
    #[serde(skip)]
    pub policy_index: Option<usize>,
}

impl Violation {
    /// Whether this violation denies the object.
    pub fn denies(&self) -> bool {
        self.mode == Mode::Enforce && !self.excused && !self.unchanged
    }
}

/// An honoured break-glass exception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakGlassUse {
    pub policy: String,
    pub ticket: String,
    pub until: jiff::Timestamp,
    /// The requester's username, when known.
    pub requester: Option<String>,
    /// How many violations it excused.
    pub excused: usize,
}

/// The verdict on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// No violation.
    Allowed,
    /// An Enforce violation denies it.
    Denied,
    /// Violations only warn (Warn mode, or unchanged on UPDATE).
    Warned,
    /// Violations only recorded (Audit mode).
    Audited,
    /// Violations excused by break-glass.
    Excused,
}

impl Verdict {
    /// The verdict as written in records and `check` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Warned => "warned",
            Verdict::Audited => "audited",
            Verdict::Excused => "excused",
        }
    }
}

/// One image of the object and what was decided for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVerdict {
    pub container_type: ContainerType,
    pub container: String,
    pub image: String,
    pub canonical: Option<String>,
    /// The pull policy as written (absent: Kubernetes' default applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
    pub verdict: Verdict,
}

/// A policy that applied to the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedPolicy {
    pub name: String,
    pub generation: Option<i64>,
    pub mode: Mode,
}

impl AppliedPolicy {
    /// The policy as the decision record names it.
    pub fn of(policy: &CompiledPolicy) -> AppliedPolicy {
        AppliedPolicy {
            name: policy.name.clone(),
            generation: policy.generation,
            mode: policy.mode,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// False exactly when a violation denies the object.
    pub allowed: bool,
    /// Every violation of every applying policy, excused and unchanged ones included.
    pub violations: Vec<Violation>,
    /// The warnings a `kubectl` user sees: one per Warn-mode or unchanged violation, one per
    /// honoured break-glass.
    pub warnings: Vec<String>,
    /// Honoured break-glass exceptions.
    pub break_glass: Vec<BreakGlassUse>,
    /// Every image with its verdict.
    pub images: Vec<ImageVerdict>,
    /// Warnings for images whose signatures were not looked at (offline), in the order found;
    /// part of [`warnings`](Self::warnings), and no violation.
    #[serde(skip)]
    pub unverified: Vec<String>,
    /// The policies that applied.
    pub policies: Vec<AppliedPolicy>,
}

impl Decision {
    /// The violations that deny the object.
    pub fn denials(&self) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(|v| v.denies())
    }

    /// A message for the person whose request was denied: one line per denying violation.
    pub fn denial_message(&self, kind: &str, name: &str, namespace: &str) -> String {
        let denials: Vec<&Violation> = self.denials().collect();
        // Written piece by piece: the general formatter was half the cost of a denied answer.
        let lines: usize = denials
            .iter()
            .map(|v| v.policy.len() + v.message.len() + 32)
            .sum();
        let mut out = String::with_capacity(kind.len() + name.len() + namespace.len() + 80 + lines);
        out.push_str(kind);
        if !name.is_empty() {
            // Quoted as `{:?}` quotes, so that a name with odd characters reads unambiguously.
            let _ = write!(out, " {name:?}");
        }
        let _ = write!(out, " in namespace {namespace:?} violates image policy (");
        out.push_str(itoa::Buffer::new().format(denials.len()));
        out.push_str(if denials.len() == 1 {
            " violation):"
        } else {
            " violations):"
        });
        for v in denials {
            out.push_str("\n- ");
            // Writing to a String cannot fail.
            let _ = v.write_line(&mut out);
        }
        out
    }
}

impl Violation {
    /// Writes `[policy/rule] message` piece by piece, without the formatting machinery.
    fn write_line(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str("[")?;
        out.write_str(&self.policy)?;
        out.write_str("/")?;
        out.write_str(self.rule.as_str())?;
        out.write_str("] ")?;
        out.write_str(&self.message)
    }
}

/// `[policy/rule] message`: one line for lists and warnings.
impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_line(f)
    }
}

/// Decides whether the object's images are allowed.
pub fn decide(snapshot: &Snapshot, input: &Input<'_>) -> Decision {
    decide_running(snapshot, input, &[])
}

/// Decides a running Pod: as [`decide`], knowing also, by position in the object's images, the
/// digest the kubelet reports each image runs (`sha256:…`; `None` where it has not reported one
/// that names a registry digest). A pinned reference's digest is judged against it (rule
/// `runningDigest`) and a tag's digest patterns on it. The audit of running Pods decides with
/// it; admission, where nothing runs yet, with [`decide`]. Evidence about an image that runs
/// (its signatures) is to be gathered for its running digest, not for what its tag resolves to
/// now.
pub fn decide_running(
    snapshot: &Snapshot,
    input: &Input<'_>,
    running: &[Option<String>],
) -> Decision {
    let applying = snapshot.applying(input.namespace_labels);
    let mut decision = Decision {
        policies: applying
            .iter()
            .map(|&i| AppliedPolicy::of(&snapshot.policies()[i]))
            .collect(),
        ..Decision::default()
    };

    let old_images = OldImages::new(input.old_object);
    let mut canonicals = Vec::with_capacity(input.object.images.len());
    for (index, image) in input.object.images.iter().enumerate() {
        let target = Target {
            index,
            image,
            unchanged: old_images.contains(image),
            running: running.get(index).and_then(Option::as_deref),
        };
        canonicals.push(check_image(
            snapshot,
            &applying,
            &target,
            input.evidence,
            &mut decision.violations,
            &mut decision.unverified,
        ));
    }

    let asks_break_glass = input
        .object
        .annotations
        .contains_key(BREAK_GLASS_ANNOTATION)
        || input
            .object
            .annotations
            .contains_key(BREAK_GLASS_UNTIL_ANNOTATION);
    if asks_break_glass {
        // The violations each policy may excuse: those of new or changed images.
        let mut by_policy: Vec<Vec<usize>> = vec![Vec::new(); snapshot.policies().len()];
        for (vi, v) in decision.violations.iter().enumerate() {
            if let Some(pi) = v.policy_index
                && !v.unchanged
            {
                by_policy[pi].push(vi);
            }
        }
        for (pi, mine) in by_policy.iter().enumerate().filter(|(_, m)| !m.is_empty()) {
            apply_break_glass(
                &snapshot.policies()[pi],
                snapshot.settings(),
                input,
                mine,
                &mut decision,
            );
        }
    }

    decision.allowed = !decision.violations.iter().any(Violation::denies);
    decision.warnings = warnings(&decision);
    decision.images = image_verdicts(input.object, canonicals, &decision.violations);
    decision
}

/// The images of the old object on UPDATE, by what makes an image the same: container type,
/// container (or volume) name and image string.
pub(crate) struct OldImages<'a>(HashSet<(ContainerType, &'a str, &'a str)>);

impl<'a> OldImages<'a> {
    /// The old object's images (none without one: an empty set does not allocate).
    pub(crate) fn new(old: Option<&'a Workload>) -> OldImages<'a> {
        OldImages(
            old.iter()
                .flat_map(|old| &old.images)
                .map(|o| (o.container_type, o.container.as_str(), o.image.as_str()))
                .collect(),
        )
    }

    /// Whether `image` was in the old object as it is now.
    pub(crate) fn contains(&self, image: &ImageUse) -> bool {
        !self.0.is_empty()
            && self.0.contains(&(
                image.container_type,
                image.container.as_str(),
                image.image.as_str(),
            ))
    }
}

/// One image being checked, with its position in the object.
struct Target<'a> {
    index: usize,
    image: &'a ImageUse,
    unchanged: bool,
    /// The digest the image runs, when known (the audit of running Pods).
    running: Option<&'a str>,
}

/// Checks one image against every applying policy; returns its canonical form.
fn check_image(
    snapshot: &Snapshot,
    applying: &[usize],
    target: &Target<'_>,
    evidence: Option<&Evidence>,
    out: &mut Vec<Violation>,
    unverified: &mut Vec<String>,
) -> Option<String> {
    let image = target.image;
    let resolved = snapshot.resolve(&image.image);
    let (reference, matches) = match &*resolved {
        ResolvedImage::Valid { reference, matches } => (reference, matches),
        ResolvedImage::Invalid(e) => {
            let message = format!(
                "{} {:?}: image {:?} is not a valid image reference: {e}",
                image.container_type.noun(),
                image.container,
                image.image
            );
            for &pi in applying {
                out.push(target.violation(
                    snapshot,
                    Some(pi),
                    Rule::Reference,
                    None,
                    message.clone(),
                ));
            }
            if applying.is_empty() && snapshot.settings().unmatched_images == UnmatchedImages::Deny
            {
                out.push(target.violation(snapshot, None, Rule::Reference, None, message));
            }
            return None;
        }
    };
    let canonical = reference.canonical();
    let judged = Judged {
        target,
        reference,
        matches,
    };
    // What runs, where the kubelet has said (the audit of running Pods). Admission never says,
    // and its judge is `NotRunning`, whose answers are constants: its code is the rules alone.
    let running = target
        .running
        .and_then(|digest| Running::of(snapshot, reference, digest));
    let sink = Sink {
        violations: out,
        unverified,
    };
    let governed = match &running {
        None => judged.rules(snapshot, applying, &NotRunning, evidence, sink),
        Some(running) => judged.rules(snapshot, applying, running, evidence, sink),
    };

    if !governed && snapshot.settings().unmatched_images == UnmatchedImages::Deny {
        let message = remembered_message(snapshot, None, Rule::UnmatchedImages, image, &|| {
            format!(
                "{} is governed by no image policy that applies here, and imagegate denies unmatched images; ask your platform team which registries are allowed",
                judged.shown()
            )
        });
        out.push(target.violation(
            snapshot,
            None,
            Rule::UnmatchedImages,
            Some(canonical),
            message,
        ));
    }
    Some(canonical.to_owned())
}

impl Target<'_> {
    /// A violation of `rule` by this image, of the snapshot's policy `policy` (`None`: no
    /// policy).
    fn violation(
        &self,
        snapshot: &Snapshot,
        policy: Option<usize>,
        rule: Rule,
        canonical: Option<&str>,
        message: String,
    ) -> Violation {
        let (name, mode) = match policy {
            Some(pi) => (
                snapshot.policies()[pi].name.as_str(),
                snapshot.policies()[pi].mode,
            ),
            None => (NO_POLICY, Mode::Enforce),
        };
        let image = self.image;
        Violation {
            policy: name.to_owned(),
            mode,
            rule,
            container_type: image.container_type,
            container: image.container.clone(),
            image: image.image.clone(),
            canonical: canonical.map(str::to_owned),
            message,
            excused: false,
            unchanged: self.unchanged,
            field_path: image.field_path.clone(),
            image_index: self.index,
            policy_index: policy,
        }
    }
}

/// An image whose reference parsed, with what it matches.
struct Judged<'a> {
    target: &'a Target<'a>,
    reference: &'a Reference,
    matches: &'a ImageMatches,
}

impl Judged<'_> {
    /// `container "app": image "nginx" (docker.io/library/nginx:latest)`.
    fn shown(&self) -> String {
        let image = self.target.image;
        format!(
            "{} {:?}: image {:?} ({})",
            image.container_type.noun(),
            image.container,
            image.image,
            self.reference.canonical()
        )
    }

    /// Checks every rule of every applying policy that governs the image, knowing of what runs
    /// what `runs` knows; returns whether any policy governs it.
    fn rules<R: WhatRuns>(
        &self,
        snapshot: &Snapshot,
        applying: &[usize],
        runs: &R,
        evidence: Option<&Evidence>,
        sink: Sink<'_>,
    ) -> bool {
        let Judged {
            target,
            reference,
            matches,
        } = *self;
        let Sink {
            violations: out,
            unverified,
        } = sink;
        let image = target.image;
        let canonical = reference.canonical();
        let mut governed = false;
        for &pi in applying {
            if !matches.governed(pi) && !runs.governed(pi) {
                continue;
            }
            governed = true;
            let p = &snapshot.policies()[pi];
            let mut fail = |rule, write: &dyn Fn() -> String| {
                let message = if R::REMEMBER {
                    remembered_message(snapshot, Some(pi), rule, image, write)
                } else {
                    write()
                };
                out.push(target.violation(snapshot, Some(pi), rule, Some(canonical), message));
            };

            if let Some(digest) = runs.mismatch() {
                fail(Rule::RunningDigest, &|| {
                    format!(
                        "{} is pinned to {}, but the node reports that it runs {digest}; find out how another image came to run (a node that pulled it under another digest, a multi-platform index and its platform manifest, a tampered registry or node), then recreate the Pod",
                        self.shown(),
                        reference.digest().unwrap_or_default()
                    )
                });
            }
            if let Some(allowed) = &p.allowed_images
                && !matches.allowed(pi)
                && !runs.allowed(pi)
            {
                fail(Rule::AllowedImages, &|| {
                    format!(
                        "{}{} is not from an allowed source; use an image matching one of: {}",
                        self.shown(),
                        runs.note(),
                        allowed.sources().join(", ")
                    )
                });
            }
            if matches.denied(pi) {
                fail(Rule::DeniedImages, &|| {
                    denied_message(&self.shown(), "", p, reference)
                });
            } else if let Some(ran) = runs.denied(pi) {
                fail(Rule::DeniedImages, &|| {
                    denied_message(&self.shown(), &runs.note(), p, ran)
                });
            }
            if p.require_digest
                && !reference.is_pinned()
                && !changed_once_mutated(snapshot, applying, matches, image, Change::Digest)
            {
                fail(Rule::RequireDigest, &|| {
                    format!(
                        "{} is not pinned by digest; refer to it as {}@sha256:<digest>",
                        self.shown(),
                        reference.name()
                    )
                });
            }
            if let Some(tag) = reference.effective_tag()
                && p.denies_tag(tag)
            {
                let implicit = if reference.tag_is_implicit() {
                    " (no tag means latest)"
                } else {
                    ""
                };
                fail(Rule::DeniedTags, &|| {
                    format!(
                        "{} uses the tag {tag:?}{implicit}, which is denied (denied tags: {}); use a specific version tag or pin a digest",
                        self.shown(),
                        p.denied_tags.join(", ")
                    )
                });
            }
            if p.require_pull_policy_always && !reference.is_pinned() {
                let (effective, defaulted) = effective_pull_policy(image, reference);
                if effective != "Always"
                    && !changed_once_mutated(snapshot, applying, matches, image, Change::PullPolicy)
                {
                    let how = if defaulted {
                        " (the default for this tag)"
                    } else {
                        ""
                    };
                    let field = if image.container_type == ContainerType::ImageVolumes {
                        "pullPolicy"
                    } else {
                        "imagePullPolicy"
                    };
                    fail(Rule::RequirePullPolicyAlways, &|| {
                        format!(
                            "{} has {field} {effective}{how}; set {field}: Always, or pin the image by digest",
                            self.shown()
                        )
                    });
                }
            }
            // An image an UPDATE leaves as it was is not looked up again (see
            // `verification::requests`): it is judged by what was admitted, and by the audit.
            // A running image's signatures are judged on the digest that runs (the audit
            // gathers its evidence for that digest); the entries are those of the image as
            // written, as the requests for the evidence chose them.
            if !p.signatures.is_empty() && !target.unchanged {
                let mut entries = verification::candidates(p, pi, matches).peekable();
                if entries.peek().is_some() {
                    let found = evidence.and_then(|e| e.images.get(&image.image));
                    let (judged, runs_note) = match runs.running() {
                        Some(ran) => (
                            ran,
                            format!(", which runs {},", ran.digest().unwrap_or_default()),
                        ),
                        None => (reference, String::new()),
                    };
                    match verification::judge(entries, judged, found) {
                        Judgement::Verified => {}
                        Judgement::Offline => unverified.push(format!(
                            "imagegate: [{}/{}] {}: {}",
                            p.name,
                            Rule::VerifySignatures,
                            self.shown(),
                            crate::evidence::OFFLINE
                        )),
                        Judgement::NotVerified(why) => out.push(target.violation(
                            snapshot,
                            Some(pi),
                            Rule::VerifySignatures,
                            Some(canonical),
                            format!("{}{runs_note} {why}", self.shown()),
                        )),
                    }
                }
            }
        }
        governed
    }
}

/// Where the rules put what they find: violations, and the warnings of images whose
/// signatures were not looked at (offline).
struct Sink<'a> {
    violations: &'a mut Vec<Violation>,
    unverified: &'a mut Vec<String>,
}

/// What the decision knows of what an image runs.
trait WhatRuns {
    /// Whether a message may be remembered by what it was written from: not when it names a
    /// running digest, which is not part of that.
    const REMEMBER: bool;
    /// Whether policy `pi` governs the image as it runs.
    fn governed(&self, pi: usize) -> bool;
    /// Whether policy `pi` allows the image as it runs.
    fn allowed(&self, pi: usize) -> bool;
    /// The image as it runs, when policy `pi` denies that.
    fn denied(&self, pi: usize) -> Option<&Reference>;
    /// The digest that runs instead of the pinned one.
    fn mismatch(&self) -> Option<&str>;
    /// The image as it runs (`NAME@DIGEST`), when that is not the reference as written.
    fn running(&self) -> Option<&Reference>;
    /// `, which runs sha256:…,` for messages about a tag.
    fn note(&self) -> String;
}

/// Nothing is known of what runs (admission, and a running Pod whose pinned digest is what
/// runs): every answer is a constant.
struct NotRunning;

impl WhatRuns for NotRunning {
    const REMEMBER: bool = true;
    fn governed(&self, _: usize) -> bool {
        false
    }
    fn allowed(&self, _: usize) -> bool {
        false
    }
    fn denied(&self, _: usize) -> Option<&Reference> {
        None
    }
    fn mismatch(&self) -> Option<&str> {
        None
    }
    fn running(&self) -> Option<&Reference> {
        None
    }
    fn note(&self) -> String {
        String::new()
    }
}

/// The message of a `deniedImages` violation: `shown` is the image, `note` what runs (or
/// empty), `judged` the reference that matched a denied pattern.
fn denied_message(shown: &str, note: &str, policy: &CompiledPolicy, judged: &Reference) -> String {
    let hit = policy
        .denied_images
        .patterns
        .iter()
        .find(|pat| pat.matches(judged))
        .map_or("", |pat| pat.source());
    format!(
        "{shown}{note} matches the denied pattern {hit:?}; use an image from another registry or repository"
    )
}

/// What a running Pod's image runs, compared with what it says.
enum Running<'a> {
    /// A digest-pinned reference runs another digest; `reference` is the image's name at it.
    Mismatch {
        digest: &'a str,
        reference: Reference,
    },
    /// A tag runs `digest`: `reference` is the image's name at that digest, and `matches` what
    /// it matches (digest patterns are judged on it).
    Tag {
        digest: &'a str,
        reference: Reference,
        matches: ImageMatches,
    },
}

impl<'a> Running<'a> {
    /// `None` when there is nothing to judge: a pinned reference that runs its own digest, or
    /// a running digest that does not make a valid reference.
    fn of(snapshot: &Snapshot, written: &Reference, digest: &'a str) -> Option<Running<'a>> {
        match written.digest() {
            Some(pinned) if pinned == digest => None,
            Some(_) => Some(Running::Mismatch {
                digest,
                reference: running_reference(written, digest)?,
            }),
            None => {
                let reference = running_reference(written, digest)?;
                let matches = snapshot.match_image(&reference);
                Some(Running::Tag {
                    digest,
                    reference,
                    matches,
                })
            }
        }
    }
}

impl WhatRuns for Running<'_> {
    const REMEMBER: bool = false;
    fn governed(&self, pi: usize) -> bool {
        matches!(self, Running::Tag { matches, .. } if matches.governed(pi))
    }
    fn allowed(&self, pi: usize) -> bool {
        matches!(self, Running::Tag { matches, .. } if matches.allowed(pi))
    }
    fn denied(&self, pi: usize) -> Option<&Reference> {
        match self {
            Running::Tag {
                reference, matches, ..
            } if matches.denied(pi) => Some(reference),
            _ => None,
        }
    }
    fn mismatch(&self) -> Option<&str> {
        match self {
            Running::Mismatch { digest, .. } => Some(digest),
            Running::Tag { .. } => None,
        }
    }
    fn running(&self) -> Option<&Reference> {
        match self {
            Running::Mismatch { reference, .. } | Running::Tag { reference, .. } => Some(reference),
        }
    }
    fn note(&self) -> String {
        match self {
            Running::Tag { digest, .. } => format!(", which runs {digest},"),
            Running::Mismatch { .. } => String::new(),
        }
    }
}

/// The image `written` names, at the digest that runs (`NAME@DIGEST`): what a running image is
/// judged on when the kubelet reports a digest other than the one written (or a tag's). `None`
/// when the two do not make a valid reference. The audit gathers signature evidence for it.
pub fn running_reference(written: &Reference, digest: &str) -> Option<Reference> {
    match written.digest() {
        Some(pinned) if pinned == digest => None,
        _ => Reference::parse(&format!("{}@{digest}", written.name())).ok(),
    }
}

/// The most violation messages a thread remembers per snapshot (see [`remembered_message`]);
/// past it the memory is forgotten, as for resolved images.
const MESSAGES_PER_THREAD: usize = 1024;

/// A violation message, with everything it was written from besides the snapshot.
struct Message {
    policy: Option<usize>,
    rule: Rule,
    container_type: ContainerType,
    container: String,
    image: String,
    pull_policy: Option<String>,
    text: String,
}

impl Message {
    fn is_for(&self, policy: Option<usize>, rule: Rule, image: &ImageUse) -> bool {
        self.policy == policy
            && self.rule == rule
            && self.container_type == image.container_type
            && self.container == image.container
            && self.image == image.image
            && self.pull_policy == image.pull_policy
    }
}

/// The messages this thread has written for the snapshot with id `snapshot`, by the hash of
/// what they were written from.
#[derive(Default)]
struct Messages {
    snapshot: u64,
    hasher: foldhash::fast::RandomState,
    by_hash: HashMap<u64, Message, foldhash::fast::RandomState>,
}

thread_local! {
    static MESSAGES: RefCell<Messages> = RefCell::default();
}

/// The message of a violation of `rule` by `image` under the snapshot's policy `policy`
/// (`None`: no policy), written by `write` unless this thread has written it before.
///
/// A message is a function of the snapshot and of the image as the Pod uses it (its name, the
/// container's type and name, the pull policy), so a Pod denied again — a ReplicaSet retries
/// its Pods, every replica has the same images — gets the same messages without formatting
/// them; formatting was most of the time of deciding on a denied Pod.
fn remembered_message(
    snapshot: &Snapshot,
    policy: Option<usize>,
    rule: Rule,
    image: &ImageUse,
    write: &dyn Fn() -> String,
) -> String {
    let key = |memo: &Messages| {
        memo.hasher.hash_one((
            policy,
            rule,
            image.container_type,
            &image.container,
            &image.image,
            &image.pull_policy,
        ))
    };
    let (hash, found) = MESSAGES.with_borrow_mut(|memo| {
        if memo.snapshot != snapshot.id() {
            memo.snapshot = snapshot.id();
            memo.by_hash.clear();
        }
        let hash = key(memo);
        let found = memo
            .by_hash
            .get(&hash)
            .filter(|m| m.is_for(policy, rule, image))
            .map(|m| m.text.clone());
        (hash, found)
    });
    if let Some(text) = found {
        return text;
    }
    // Written outside the borrow, so that nothing `write` does can meet it.
    let text = write();
    MESSAGES.with_borrow_mut(|memo| {
        if memo.by_hash.len() >= MESSAGES_PER_THREAD {
            memo.by_hash.clear();
        }
        // Two uses with the same hash: the later one is remembered.
        memo.by_hash.insert(
            hash,
            Message {
                policy,
                rule,
                container_type: image.container_type,
                container: image.container.clone(),
                image: image.image.clone(),
                pull_policy: image.pull_policy.clone(),
                text: text.clone(),
            },
        );
    });
    text
}

/// Whether the Pods made from a workload's template will get `change` from the mutating
/// webhook anyway: the image is in a pod template (workload templates are never mutated, their
/// Pods are) and an applying `Enforce` policy asking for it governs the image. The rule the
/// change satisfies (`requirePullPolicyAlways` for `setPullPolicyAlways`, `requireDigest` for
/// `pinDigests`) then has nothing to deny in the template; each Pod is judged on its mutated
/// form, and one that reaches the API server unchanged (unmutated, or its digest not to be had
/// while the registry is down) is denied then. Only asked on the way to a violation, so it
/// costs nothing on an admitted request.
fn changed_once_mutated(
    snapshot: &Snapshot,
    applying: &[usize],
    matches: &crate::policy::ImageMatches,
    image: &ImageUse,
    change: Change,
) -> bool {
    image.in_pod_template()
        && applying.iter().any(|&q| {
            let p = &snapshot.policies()[q];
            let asks = match change {
                Change::PullPolicy => p.set_pull_policy_always,
                Change::Digest => p.pin_digests,
            };
            asks && p.mode == Mode::Enforce && matches.governed(q)
        })
}

/// The pull policy Kubernetes would use: as written, else `Always` for `latest` (or no tag)
/// and `IfNotPresent` otherwise. The flag says whether it was defaulted.
fn effective_pull_policy<'a>(image: &'a ImageUse, reference: &Reference) -> (&'a str, bool) {
    match image.pull_policy.as_deref() {
        Some(p) if !p.is_empty() => (p, false),
        _ if reference.effective_tag() == Some("latest") => ("Always", true),
        _ => ("IfNotPresent", true),
    }
}

/// Applies the object's break-glass request to one policy's violations (`mine`, indices into
/// `decision.violations`, non-empty).
fn apply_break_glass(
    policy: &CompiledPolicy,
    settings: &Settings,
    input: &Input<'_>,
    mine: &[usize],
    decision: &mut Decision,
) {
    let ticket = input.object.annotations.get(BREAK_GLASS_ANNOTATION);
    let until = input.object.annotations.get(BREAK_GLASS_UNTIL_ANNOTATION);
    match check_break_glass(policy, settings, ticket, until, input) {
        Ok((ticket, until)) => {
            for &vi in mine {
                decision.violations[vi].excused = true;
            }
            decision.break_glass.push(BreakGlassUse {
                policy: policy.name.clone(),
                ticket,
                until,
                requester: input.requester.map(|r| r.username.clone()),
                excused: mine.len(),
            });
        }
        Err(why) => {
            // One `breakGlass` violation per policy, carried by the first image it concerns.
            let first = decision.violations[mine[0]].clone();
            decision.violations.push(Violation {
                rule: Rule::BreakGlass,
                message: format!("break-glass refused by policy {:?}: {why}", policy.name),
                ..first
            });
        }
    }
}

fn check_break_glass(
    policy: &CompiledPolicy,
    settings: &Settings,
    ticket: Option<&String>,
    until: Option<&String>,
    input: &Input<'_>,
) -> Result<(String, jiff::Timestamp), String> {
    let Some(rule) = &policy.break_glass else {
        return Err(
            "this policy permits no break-glass exception; change the image instead".into(),
        );
    };
    let ticket = ticket.ok_or_else(|| {
        format!("the annotation {BREAK_GLASS_ANNOTATION} (the ticket) is missing")
    })?;
    if !rule.ticket.is_match(ticket) {
        return Err(format!(
            "ticket {ticket:?} does not match {:?}",
            rule.ticket_source
        ));
    }
    let until_text = until.ok_or_else(|| {
        format!("the annotation {BREAK_GLASS_UNTIL_ANNOTATION} is missing; set it to an RFC 3339 time, e.g. 2026-01-02T15:04:05Z")
    })?;
    let until: jiff::Timestamp = until_text.parse().map_err(|_| {
        format!("{BREAK_GLASS_UNTIL_ANNOTATION} {until_text:?} is not an RFC 3339 time such as 2026-01-02T15:04:05Z")
    })?;
    if until <= input.now {
        // Without the time of the decision: the audit re-judges running Pods over and over,
        // and writes what it found only when a message changes.
        return Err(format!(
            "the exception expired at {until}; remove the break-glass annotations, or set a new ticket and time if the exception is still needed"
        ));
    }
    let ahead = until.duration_since(input.now).unsigned_abs();
    if ahead > rule.max_duration {
        return Err(format!(
            "{until} is further ahead than the policy's maxDuration of {}; set an earlier time",
            jiff::SignedDuration::try_from(rule.max_duration)
                .map(|d| format!("{d:#}"))
                .unwrap_or_default()
        ));
    }
    if !rule.any_requester() {
        match input.requester {
            None => return Err(
                "the requester is unknown here, and the policy allows only some users or groups"
                    .into(),
            ),
            Some(r)
                if is_trusted_controller(&r.username, &settings.trusted_controller_namespaces) => {}
            Some(r)
                if rule.allowed_users.contains(&r.username)
                    || r.groups.iter().any(|g| rule.allowed_groups.contains(g)) => {}
            Some(r) => {
                return Err(format!(
                    "user {:?} is not among the allowed users ({}) and in none of the allowed groups ({})",
                    r.username,
                    rule.allowed_users.join(", "),
                    rule.allowed_groups.join(", ")
                ));
            }
        }
    }
    Ok((ticket.clone(), until))
}

/// Whether `username` is a service account in one of the trusted controller namespaces.
pub fn is_trusted_controller(username: &str, namespaces: &[String]) -> bool {
    username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(ns, _)| namespaces.iter().any(|t| t == ns))
}

fn warnings(decision: &Decision) -> Vec<String> {
    let mut out = decision.unverified.clone();
    for v in &decision.violations {
        if v.excused || v.mode == Mode::Audit {
            continue;
        }
        if v.unchanged {
            out.push(format!("imagegate: {v} (unchanged image, still admitted)"));
        } else if v.mode == Mode::Warn {
            out.push(format!("imagegate: {v}"));
        }
    }
    for b in &decision.break_glass {
        out.push(format!(
            "imagegate: break-glass {} used for policy {:?} until {}{}: {} violation{} excused",
            b.ticket,
            b.policy,
            b.until,
            b.requester
                .as_deref()
                .map(|u| format!(" by {u}"))
                .unwrap_or_default(),
            b.excused,
            if b.excused == 1 { "" } else { "s" }
        ));
    }
    out
}

fn image_verdicts(
    object: &Workload,
    canonicals: Vec<Option<String>>,
    violations: &[Violation],
) -> Vec<ImageVerdict> {
    let mut verdicts = vec![Verdict::Allowed; object.images.len()];
    for v in violations {
        let this = if v.denies() {
            Verdict::Denied
        } else if v.excused {
            Verdict::Excused
        } else if v.unchanged || v.mode == Mode::Warn {
            Verdict::Warned
        } else {
            Verdict::Audited
        };
        if let Some(verdict) = verdicts.get_mut(v.image_index) {
            *verdict = verdict.max_with(this);
        }
    }
    object
        .images
        .iter()
        .zip(canonicals)
        .zip(verdicts)
        .map(|((image, canonical), verdict)| ImageVerdict {
            container_type: image.container_type,
            container: image.container.clone(),
            image: image.image.clone(),
            canonical,
            pull_policy: image.pull_policy.clone(),
            verdict,
        })
        .collect()
}

impl Verdict {
    fn rank(self) -> u8 {
        match self {
            Verdict::Allowed => 0,
            Verdict::Audited => 1,
            Verdict::Excused => 2,
            Verdict::Warned => 3,
            Verdict::Denied => 4,
        }
    }
    fn max_with(self, other: Verdict) -> Verdict {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::{ImagePolicy, Settings, compile};
    use crate::workload::WorkloadKind;

    const NOW: &str = "2026-11-22T12:00:00Z";
    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn policy(yaml: &str) -> ImagePolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn snapshot(policies: &[&str], settings: Settings) -> Snapshot {
        let compiled = policies
            .iter()
            .map(|y| compile(&policy(y)).unwrap())
            .collect();
        Snapshot::new(compiled, settings)
    }

    /// A Pod from `(container type, name, image, pull policy)` and annotations.
    pub(crate) fn pod(
        images: &[(&str, &str, &str, Option<&str>)],
        annotations: &[(&str, &str)],
    ) -> Workload {
        let mut spec = serde_json::json!({});
        for (ty, name, image, pull) in images {
            let entry = if *ty == "volumes" {
                serde_json::json!({"name": name, "image": {"reference": image, "pullPolicy": pull}})
            } else {
                serde_json::json!({"name": name, "image": image, "imagePullPolicy": pull})
            };
            spec.as_object_mut()
                .unwrap()
                .entry(ty.to_string())
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .unwrap()
                .push(entry);
        }
        let annotations: BTreeMap<_, _> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let object = serde_json::json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec});
        Workload::from_value(WorkloadKind::Pod, &object).unwrap()
    }

    fn app(image: &str) -> Workload {
        pod(&[("containers", "app", image, None)], &[])
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn decide_with(
        snapshot: &Snapshot,
        object: &Workload,
        requester: Option<&Requester>,
    ) -> Decision {
        let ns = labels(&[("kubernetes.io/metadata.name", "prod"), ("env", "prod")]);
        decide(
            snapshot,
            &Input {
                object,
                old_object: None,
                namespace_labels: &ns,
                requester,
                now: NOW.parse().unwrap(),
                evidence: None,
            },
        )
    }

    fn rules(d: &Decision) -> Vec<&'static str> {
        d.violations.iter().map(|v| v.rule.as_str()).collect()
    }

    const PROD: &str = "
metadata: {name: prod}
spec:
  allowedImages: [registry.corp.example/**, ghcr.io/corp/*]
  deniedImages: [registry.corp.example/sandbox/**]
  deniedTags: [latest, '*-dev']
";

    #[test]
    fn break_glass_annotations_are_read_from_objects() {
        for key in [BREAK_GLASS_ANNOTATION, BREAK_GLASS_UNTIL_ANNOTATION] {
            assert!(key.starts_with(crate::workload::ANNOTATION_PREFIX), "{key}");
        }
        let w = pod(
            &[],
            &[
                (BREAK_GLASS_ANNOTATION, "INC-1"),
                ("example.com/other", "x"),
            ],
        );
        assert_eq!(
            w.annotations.len(),
            1,
            "only imagegate's annotations are kept"
        );
    }

    #[test]
    fn rule_table() {
        let digest_pinned = format!("registry.corp.example/app@{DIGEST}");
        let tagged_and_pinned = format!("registry.corp.example/app:latest@{DIGEST}");
        let cases: Vec<(&str, &str, &[&str])> = vec![
            // policy, image, expected rules
            (PROD, "registry.corp.example/team/app:1.0", &[]),
            (PROD, "ghcr.io/corp/app:1.0", &[]),
            (PROD, "ghcr.io/corp/team/app:1.0", &["allowedImages"]),
            (
                PROD,
                "registry.corp.example.evil.io/app:1.0",
                &["allowedImages"],
            ),
            (PROD, "nginx:1.27", &["allowedImages"]),
            (PROD, "registry.corp.example/sandbox/x:1", &["deniedImages"]),
            (PROD, "registry.corp.example/app", &["deniedTags"]),
            (PROD, "registry.corp.example/app:latest", &["deniedTags"]),
            (
                PROD,
                "registry.corp.example/app:feature-dev",
                &["deniedTags"],
            ),
            (PROD, "registry.corp.example/app:LATEST", &[]),
            (PROD, &tagged_and_pinned, &[]),
            (PROD, "Registry.Corp.Example/app:1", &[]),
            (PROD, "registry.corp.example/App:1", &["reference"]),
            (PROD, "", &["reference"]),
            (
                "metadata: {name: d}\nspec: {requireDigest: true}",
                "registry.corp.example/app:1",
                &["requireDigest"],
            ),
            (
                "metadata: {name: d}\nspec: {requireDigest: true}",
                &digest_pinned,
                &[],
            ),
            (
                "metadata: {name: d}\nspec: {requireDigest: true}",
                &tagged_and_pinned,
                &[],
            ),
            (
                "metadata: {name: h}\nspec: {deniedImages: ['docker.io/**']}",
                "registry-1.docker.io/library/nginx:1",
                &["deniedImages"],
            ),
            (
                "metadata: {name: h}\nspec: {deniedImages: ['docker.io/**']}",
                "index.docker.io/nginx:1",
                &["deniedImages"],
            ),
            (
                "metadata: {name: h}\nspec: {deniedImages: ['docker.io/**']}",
                "Docker.IO/nginx",
                &["deniedImages"],
            ),
            (
                "metadata: {name: h}\nspec: {deniedImages: ['docker.io/**']}",
                "quay.io/nginx:1",
                &[],
            ),
            (
                "metadata: {name: s}\nspec: {images: ['quay.io/**'], requireDigest: true}",
                "nginx:1",
                &[],
            ),
            (
                "metadata: {name: s}\nspec: {images: ['quay.io/**'], requireDigest: true}",
                "quay.io/x/y:1",
                &["requireDigest"],
            ),
            // An unparseable reference is a violation of every applying policy, whatever its `images`.
            (
                "metadata: {name: s}\nspec: {images: ['quay.io/**'], requireDigest: true}",
                "quay.io/X:1",
                &["reference"],
            ),
        ];
        for (p, image, want) in cases {
            let s = snapshot(&[p], Settings::default());
            let d = decide_with(&s, &app(image), None);
            assert_eq!(rules(&d), want, "image {image:?} under {p}");
            assert_eq!(d.allowed, want.is_empty(), "image {image:?}");
        }
    }

    #[test]
    fn pull_policy_uses_kubernetes_defaulting() {
        let s = snapshot(
            &["metadata: {name: pp}\nspec: {requirePullPolicyAlways: true}"],
            Settings::default(),
        );
        let pinned = format!("quay.io/a/b@{DIGEST}");
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("quay.io/a/b:1.0", None, false),
            ("quay.io/a/b:1.0", Some("IfNotPresent"), false),
            ("quay.io/a/b:1.0", Some("Never"), false),
            ("quay.io/a/b:1.0", Some("Always"), true),
            ("quay.io/a/b", None, true),
            ("quay.io/a/b:latest", None, true),
            (&pinned, Some("IfNotPresent"), true),
        ];
        for (image, pull, ok) in cases {
            let d = decide_with(&s, &pod(&[("containers", "c", image, *pull)], &[]), None);
            assert_eq!(d.allowed, *ok, "{image} {pull:?}: {:?}", d.violations);
        }
        // Image volumes use their own pullPolicy with the same defaulting.
        let d = decide_with(
            &s,
            &pod(&[("volumes", "models", "quay.io/a/models:2", None)], &[]),
            None,
        );
        assert_eq!(rules(&d), ["requirePullPolicyAlways"]);
        assert_eq!(d.violations[0].container_type, ContainerType::ImageVolumes);
        assert!(
            d.violations[0]
                .message
                .contains("pullPolicy IfNotPresent (the default for this tag)")
        );
    }

    #[test]
    fn every_container_type_is_checked() {
        let s = snapshot(&[PROD], Settings::default());
        let w = pod(
            &[
                ("initContainers", "init", "busybox:1", None),
                ("containers", "app", "registry.corp.example/app:1", None),
                ("ephemeralContainers", "debugger", "busybox:1", None),
                ("volumes", "data", "docker.io/library/data:1", None),
            ],
            &[],
        );
        let d = decide_with(&s, &w, None);
        let types: Vec<_> = d
            .violations
            .iter()
            .map(|v| (v.container_type, v.container.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                (ContainerType::InitContainers, "init"),
                (ContainerType::EphemeralContainers, "debugger"),
                (ContainerType::ImageVolumes, "data"),
            ]
        );
        assert_eq!(
            d.violations[1].field_path,
            "spec.ephemeralContainers[0].image"
        );
        assert_eq!(
            d.violations[2].field_path,
            "spec.volumes[0].image.reference"
        );
    }

    #[test]
    fn violation_carries_what_failed_and_what_would_pass() {
        let s = snapshot(&[PROD], Settings::default());
        let d = decide_with(&s, &app("nginx"), None);
        let v = &d.violations[0];
        assert_eq!(v.policy, "prod");
        assert_eq!(v.mode, Mode::Enforce);
        assert_eq!(v.image, "nginx");
        assert_eq!(
            v.canonical.as_deref(),
            Some("docker.io/library/nginx:latest")
        );
        assert!(v.message.contains("container \"app\""), "{}", v.message);
        assert!(
            v.message
                .contains("registry.corp.example/**, ghcr.io/corp/*"),
            "{}",
            v.message
        );
        let msg = d.denial_message("Pod", "p", "prod");
        assert!(
            msg.starts_with(
                "Pod \"p\" in namespace \"prod\" violates image policy (2 violations):"
            ),
            "{msg}"
        );
        assert!(msg.contains("(no tag means latest)"), "{msg}");
        // One line per denial, each as the violation displays itself.
        let lines: Vec<&str> = msg.lines().skip(1).collect();
        let shown: Vec<String> = d.denials().map(|v| format!("- {v}")).collect();
        assert_eq!(lines, shown);
        let one = decide_with(&s, &app("registry.corp.example/app:latest"), None);
        assert_eq!(
            one.denial_message("Pod", "", "prod").lines().next(),
            Some("Pod in namespace \"prod\" violates image policy (1 violation):")
        );
    }

    #[test]
    fn modes_and_composition() {
        let warn = "metadata: {name: w}\nspec: {mode: Warn, requireDigest: true}";
        let audit = "metadata: {name: a}\nspec: {mode: Audit, deniedTags: [latest]}";
        let s = snapshot(&[warn, audit], Settings::default());
        let d = decide_with(&s, &app("quay.io/a/b"), None);
        assert!(d.allowed);
        assert_eq!(rules(&d), ["deniedTags", "requireDigest"]);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].contains("[w/requireDigest]"));
        assert_eq!(d.images[0].verdict, Verdict::Warned);

        // Intersection: one Enforce violation denies, whatever the others say.
        let s = snapshot(&[warn, audit, PROD], Settings::default());
        let d = decide_with(&s, &app("quay.io/a/b"), None);
        assert!(!d.allowed);
        assert_eq!(d.denials().count(), 2, "{:?}", d.violations);
        assert_eq!(d.images[0].verdict, Verdict::Denied);
        assert_eq!(d.policies.len(), 3);
    }

    #[test]
    fn namespace_selector_decides_where_a_policy_applies() {
        let p = "metadata: {name: p}\nspec:\n  namespaceSelector: {matchLabels: {env: prod}}\n  requireDigest: true";
        let q = "metadata: {name: q}\nspec:\n  namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}\n  requireDigest: true";
        let s = snapshot(&[p, q], Settings::default());
        let d = decide_with(&s, &app("quay.io/a/b:1"), None);
        assert_eq!(
            d.violations
                .iter()
                .map(|v| v.policy.as_str())
                .collect::<Vec<_>>(),
            ["p"]
        );
        let dev = labels(&[("kubernetes.io/metadata.name", "dev")]);
        let d = decide(
            &s,
            &Input {
                object: &app("quay.io/a/b:1"),
                old_object: None,
                namespace_labels: &dev,
                requester: None,
                now: NOW.parse().unwrap(),
                evidence: None,
            },
        );
        assert_eq!(
            d.violations
                .iter()
                .map(|v| v.policy.as_str())
                .collect::<Vec<_>>(),
            ["q"]
        );
    }

    #[test]
    fn unmatched_images() {
        let p = "metadata: {name: quay}\nspec: {images: ['quay.io/**'], requireDigest: true}";
        let deny = Settings {
            unmatched_images: UnmatchedImages::Deny,
            ..Settings::default()
        };
        let d = decide_with(&snapshot(&[p], deny.clone()), &app("nginx:1"), None);
        assert_eq!(rules(&d), ["unmatchedImages"]);
        assert!(!d.allowed);
        let d = decide_with(&snapshot(&[p], Settings::default()), &app("nginx:1"), None);
        assert!(d.allowed && d.violations.is_empty());
        // Governed images are judged by their policies, not by the unmatched rule.
        let d = decide_with(
            &snapshot(&[p], deny),
            &app(&format!("quay.io/a@{DIGEST}")),
            None,
        );
        assert!(d.allowed, "{:?}", d.violations);
    }

    #[test]
    fn update_checks_only_new_or_changed_images() {
        let s = snapshot(&[PROD], Settings::default());
        let old = pod(
            &[
                ("containers", "app", "nginx:1.27", None),
                ("containers", "side", "nginx:1.27", None),
            ],
            &[],
        );
        let new = pod(
            &[
                ("containers", "app", "nginx:1.28", None),
                ("containers", "side", "nginx:1.27", None),
            ],
            &[],
        );
        let ns = labels(&[("env", "prod")]);
        let input = Input {
            object: &new,
            old_object: Some(&old),
            namespace_labels: &ns,
            requester: None,
            now: NOW.parse().unwrap(),
            evidence: None,
        };
        let d = decide(&s, &input);
        assert!(!d.allowed);
        assert_eq!(
            d.denials()
                .map(|v| v.container.as_str())
                .collect::<Vec<_>>(),
            ["app"]
        );
        assert_eq!(d.warnings.len(), 1);
        assert!(
            d.warnings[0].contains("unchanged image"),
            "{:?}",
            d.warnings
        );

        // A label-only update of a violating Pod is admitted with a warning.
        let input = Input {
            object: &old,
            old_object: Some(&old),
            ..input
        };
        let d = decide(&s, &input);
        assert!(d.allowed);
        assert_eq!(d.warnings.len(), 2);
    }

    fn glass(ticket: &str, until: &str) -> Workload {
        let mut ann = vec![];
        if !ticket.is_empty() {
            ann.push((BREAK_GLASS_ANNOTATION, ticket));
        }
        if !until.is_empty() {
            ann.push((BREAK_GLASS_UNTIL_ANNOTATION, until));
        }
        pod(&[("containers", "app", "nginx:1.27", None)], &ann)
    }

    const GLASS: &str = "
metadata: {name: prod}
spec:
  allowedImages: [registry.corp.example/**]
  breakGlass: {allowedGroups: [sre], allowedUsers: [alice], ticketPattern: 'INC-[0-9]+', maxDuration: 8h}
";

    #[test]
    fn break_glass_honoured() {
        let s = snapshot(&[GLASS], Settings::default());
        let sre = Requester {
            username: "bob".into(),
            groups: vec!["sre".into()],
        };
        let d = decide_with(&s, &glass("INC-42", "2026-11-22T18:00:00Z"), Some(&sre));
        assert!(d.allowed, "{:?}", d.violations);
        assert!(d.violations.iter().all(|v| v.excused));
        assert_eq!(d.break_glass.len(), 1);
        assert_eq!(d.break_glass[0].ticket, "INC-42");
        assert_eq!(d.break_glass[0].requester.as_deref(), Some("bob"));
        assert!(
            d.warnings.iter().any(|w| w.contains("break-glass INC-42")),
            "{:?}",
            d.warnings
        );
        assert_eq!(d.images[0].verdict, Verdict::Excused);

        let alice = Requester {
            username: "alice".into(),
            groups: vec![],
        };
        assert!(decide_with(&s, &glass("INC-42", "2026-11-22T18:00:00Z"), Some(&alice)).allowed);
        // A workload controller carries the exception the webhook already checked on the workload.
        let rs = Requester {
            username: "system:serviceaccount:kube-system:replicaset-controller".into(),
            groups: vec![],
        };
        assert!(decide_with(&s, &glass("INC-42", "2026-11-22T18:00:00Z"), Some(&rs)).allowed);
        // ... but only from the trusted namespaces.
        let other = Requester {
            username: "system:serviceaccount:team:deployer".into(),
            groups: vec![],
        };
        assert!(!decide_with(&s, &glass("INC-42", "2026-11-22T18:00:00Z"), Some(&other)).allowed);
    }

    #[test]
    fn break_glass_refused() {
        let s = snapshot(&[GLASS], Settings::default());
        let sre = Requester {
            username: "bob".into(),
            groups: vec!["sre".into()],
        };
        let eve = Requester {
            username: "eve".into(),
            groups: vec!["dev".into()],
        };
        let cases: &[(&str, &str, Option<&Requester>, &str)] = &[
            (
                "INC-42",
                "2026-11-22T18:00:00Z",
                Some(&eve),
                "is not among the allowed users",
            ),
            (
                "INC-42",
                "2026-11-22T18:00:00Z",
                None,
                "requester is unknown",
            ),
            (
                "INC-42x",
                "2026-11-22T18:00:00Z",
                Some(&sre),
                "does not match",
            ),
            (
                "see INC-42",
                "2026-11-22T18:00:00Z",
                Some(&sre),
                "does not match",
            ),
            (
                "",
                "2026-11-22T18:00:00Z",
                Some(&sre),
                "(the ticket) is missing",
            ),
            ("INC-42", "", Some(&sre), "break-glass-until is missing"),
            ("INC-42", "tomorrow", Some(&sre), "is not an RFC 3339 time"),
            ("INC-42", "2026-11-22T11:00:00Z", Some(&sre), "expired"),
            ("INC-42", NOW, Some(&sre), "expired"),
            (
                "INC-42",
                "2026-11-22T20:00:01Z",
                Some(&sre),
                "further ahead than the policy's maxDuration of 8h",
            ),
        ];
        for (ticket, until, who, why) in cases {
            let d = decide_with(&s, &glass(ticket, until), *who);
            assert!(!d.allowed, "{ticket} {until}");
            let bg: Vec<_> = d
                .violations
                .iter()
                .filter(|v| v.rule == Rule::BreakGlass)
                .collect();
            assert_eq!(bg.len(), 1, "{ticket} {until}: {:?}", d.violations);
            assert!(
                bg[0].message.contains(why),
                "{ticket} {until}: {}",
                bg[0].message
            );
            assert!(d.break_glass.is_empty());
        }
    }

    #[test]
    fn break_glass_needs_a_break_glass_section_and_any_requester_without_userinfo() {
        let s = snapshot(&[PROD], Settings::default());
        let d = decide_with(&s, &glass("INC-1", "2026-11-22T13:00:00Z"), None);
        assert!(!d.allowed);
        assert!(d.violations.iter().any(|v| v.rule == Rule::BreakGlass
            && v.message.contains("permits no break-glass exception")));

        let open = "metadata: {name: open}\nspec:\n  allowedImages: [quay.io/**]\n  breakGlass: {ticketPattern: 'INC-[0-9]+'}";
        let s = snapshot(&[open], Settings::default());
        assert!(decide_with(&s, &glass("INC-1", "2026-11-23T11:59:59Z"), None).allowed);
        assert!(
            !decide_with(&s, &glass("INC-1", "2026-11-23T12:00:01Z"), None).allowed,
            "default maxDuration 24h"
        );
        // Without a violation, the annotations change nothing.
        let ok = pod(
            &[("containers", "app", "quay.io/a:1", None)],
            &[(BREAK_GLASS_ANNOTATION, "INC-1")],
        );
        let d = decide_with(&s, &ok, None);
        assert!(d.allowed && d.violations.is_empty() && d.break_glass.is_empty());
    }

    #[test]
    fn what_a_thread_remembers_of_an_image_follows_the_snapshot() {
        // The same image, decided on one thread against snapshots that disagree about it, and
        // back again: each decision follows its own snapshot.
        let allows = snapshot(
            &["metadata: {name: a}\nspec: {allowedImages: [quay.io/**]}"],
            Settings::default(),
        );
        let denies = snapshot(
            &["metadata: {name: a}\nspec: {allowedImages: [ghcr.io/**]}"],
            Settings::default(),
        );
        let image = app("quay.io/team/app:1.0");
        for _ in 0..2 {
            assert!(decide_with(&allows, &image, None).allowed);
            let d = decide_with(&denies, &image, None);
            assert_eq!(rules(&d), ["allowedImages"]);
            assert!(!d.allowed);
        }
        // An invalid reference stays invalid when seen again.
        for _ in 0..2 {
            assert_eq!(
                rules(&decide_with(&allows, &app("quay.io/A"), None)),
                ["reference"]
            );
        }
    }

    #[test]
    fn templates_whose_pods_will_be_mutated_meet_require_pull_policy_always() {
        let pods_mutated = [
            "metadata: {name: require}\nspec: {requirePullPolicyAlways: true}",
            "metadata: {name: set}\nspec: {images: ['quay.io/**'], setPullPolicyAlways: true}",
        ];
        let s = snapshot(&pods_mutated, Settings::default());
        let deployment = |image: &str| {
            let object = serde_json::json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"}]}}}});
            Workload::from_value(WorkloadKind::Deployment, &object).unwrap()
        };
        // The template: its Pods will be stored with Always.
        assert!(decide_with(&s, &deployment("quay.io/a/b:1.0"), None).allowed);
        // An image the mutating policy does not govern: still denied.
        let d = decide_with(&s, &deployment("ghcr.io/a/b:1.0"), None);
        assert_eq!(rules(&d), ["requirePullPolicyAlways"]);
        // A Pod is judged as it is: one that arrives unmutated is denied.
        let pod = pod(
            &[("containers", "app", "quay.io/a/b:1.0", Some("IfNotPresent"))],
            &[],
        );
        assert_eq!(
            rules(&decide_with(&s, &pod, None)),
            ["requirePullPolicyAlways"]
        );
        // A Warn-mode mutation changes nothing, so it excuses nothing.
        let warn_only = [
            pods_mutated[0],
            "metadata: {name: set}\nspec: {mode: Warn, setPullPolicyAlways: true}",
        ];
        let s = snapshot(&warn_only, Settings::default());
        assert!(!decide_with(&s, &deployment("quay.io/a/b:1.0"), None).allowed);
    }

    #[test]
    fn templates_whose_pods_will_be_pinned_meet_require_digest() {
        let pinned = [
            "metadata: {name: require}\nspec: {requireDigest: true}",
            "metadata: {name: pin}\nspec: {images: ['quay.io/**'], pinDigests: true}",
        ];
        let s = snapshot(&pinned, Settings::default());
        let deployment = |image: &str| {
            let object = serde_json::json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": image}]}}}});
            Workload::from_value(WorkloadKind::Deployment, &object).unwrap()
        };
        // The template: its Pods will be stored pinned.
        assert!(decide_with(&s, &deployment("quay.io/a/b:1.0"), None).allowed);
        // An image the pinning policy does not govern: still denied.
        let d = decide_with(&s, &deployment("ghcr.io/a/b:1.0"), None);
        assert_eq!(rules(&d), ["requireDigest"]);
        // A Pod is judged as it is: one that arrives unpinned (its digest not to be had) is
        // denied.
        let pod = pod(&[("containers", "app", "quay.io/a/b:1.0", None)], &[]);
        assert_eq!(rules(&decide_with(&s, &pod, None)), ["requireDigest"]);
        // A pinning policy in Audit mode pins nothing, so it excuses nothing.
        let audit_only = [
            pinned[0],
            "metadata: {name: pin}\nspec: {mode: Audit, pinDigests: true}",
        ];
        let s = snapshot(&audit_only, Settings::default());
        assert!(!decide_with(&s, &deployment("quay.io/a/b:1.0"), None).allowed);
    }

    #[test]
    fn a_remembered_message_is_only_reused_for_the_same_image_use_and_snapshot() {
        let strict =
            "metadata: {name: s}\nspec: {deniedTags: [latest], requirePullPolicyAlways: true}";
        let s = snapshot(&[strict], Settings::default());
        let messages = |w: &Workload, s: &Snapshot| -> Vec<String> {
            decide_with(s, w, None)
                .violations
                .into_iter()
                .map(|v| v.message)
                .collect()
        };
        let first = pod(
            &[("containers", "web", "nginx:latest", Some("IfNotPresent"))],
            &[],
        );
        let written = messages(&first, &s);
        assert_eq!(written.len(), 2, "{written:?}");
        // Seen again on this thread: the very same messages.
        assert_eq!(messages(&first, &s), written);
        // The same image in another container, with another pull policy, as an init
        // container: each message says so.
        let other_name = pod(
            &[("containers", "api", "nginx:latest", Some("IfNotPresent"))],
            &[],
        );
        assert!(
            messages(&other_name, &s)
                .iter()
                .all(|m| m.contains("\"api\""))
        );
        let other_pull = pod(&[("containers", "web", "nginx:latest", Some("Never"))], &[]);
        let m = messages(&other_pull, &s);
        assert!(m[1].contains("imagePullPolicy Never;"), "{m:?}");
        let init = pod(
            &[(
                "initContainers",
                "web",
                "nginx:latest",
                Some("IfNotPresent"),
            )],
            &[],
        );
        assert!(
            messages(&init, &s)
                .iter()
                .all(|m| m.starts_with("init container"))
        );
        // A new snapshot whose policy at the same place says otherwise.
        let changed = snapshot(
            &["metadata: {name: s}\nspec: {deniedTags: [latest, edge]}"],
            Settings::default(),
        );
        let m = messages(&first, &changed);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("(denied tags: latest, edge)"), "{m:?}");
        // And back: what the first snapshot said.
        assert_eq!(messages(&first, &s), written);
    }

    #[test]
    fn more_distinct_denied_images_than_a_thread_remembers_get_their_own_messages() {
        let s = snapshot(&[PROD], Settings::default());
        for round in 0..2 {
            for i in 0..1500 {
                let image = format!("docker.io/library/app-{i}:1.{round}");
                let d = decide_with(&s, &app(&image), None);
                assert_eq!(rules(&d), ["allowedImages"], "{image}");
                assert!(d.violations[0].message.contains(&image), "{image}");
            }
        }
    }

    #[test]
    fn more_distinct_images_than_a_thread_remembers_are_still_decided() {
        let s = snapshot(&[PROD], Settings::default());
        for round in 0..2 {
            for i in 0..3000 {
                let (image, allowed) = if i % 2 == 0 {
                    (format!("registry.corp.example/app-{i}:1.{round}"), true)
                } else {
                    (format!("docker.io/library/app-{i}:1.{round}"), false)
                };
                let d = decide_with(&s, &app(&image), None);
                assert_eq!(d.allowed, allowed, "{image}");
                assert_eq!(
                    d.images[0].canonical.as_deref(),
                    Some(image.as_str()),
                    "the canonical form is this image's"
                );
            }
        }
    }
}
