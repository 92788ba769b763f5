//! Mutation (`setPullPolicyAlways`, `pinDigests`): which JSONPatch operations a Pod gets from
//! the policies that apply to it. [`plan`] is a pure function of the snapshot, the Pod (and on
//! `pods/ephemeralcontainers`, the Pod as it was), the namespace's labels and the digests the
//! registry adapter found; it writes nothing and asks nothing.
//!
//! Applying `Enforce` policies change the Pod; `Warn` policies change nothing and say what they
//! would change in a warning; `Audit` policies change nothing and only have it recorded. The
//! patch is minimal: `add` where a pull policy is absent, `replace` where it differs, nothing
//! where it is already `Always` or the image already pinned, so a second call on a mutated Pod
//! (the API server's reinvocation) yields no patch.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::decision::AppliedPolicy;
use crate::evidence::{Evidence, EvidenceRequest, Outcome, Source};
use crate::namespaces::Labels;
use crate::policy::{CompiledPolicy, Mode, ResolvedImage, Snapshot};
use crate::reference::{Reference, validate_digest};
use crate::verification;
use crate::workload::{ContainerType, ImageUse, Workload};

/// The most operations one patch holds: the API server refuses a JSON patch of more
/// operations when it is sent one (`maxJSONPatchOperations`), and a Pod with 5,000 containers
/// needing both changes fits. Each operation is a short path and at most a valid reference
/// (well under 1 KiB), so the patch stays a few MiB at the very most. A Pod that would need
/// more is stored as written, with a warning, and the validating webhook judges it.
pub const MAX_PATCH_OPERATIONS: usize = 10_000;

/// The pull policy this module sets.
pub const ALWAYS: &str = "Always";

/// The digest the registry adapter found for each image as written (`sha256:…`), or why there
/// is none. An image that is not in the map was not looked up.
pub type Digests = HashMap<String, Result<String, String>>;

/// Everything a mutation depends on besides the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The Pod as the API server would store it.
    pub object: &'a Workload,
    /// On `pods/ephemeralcontainers`, the Pod as it was: only what it did not have (by
    /// container type and name) is changed.
    pub old_object: Option<&'a Workload>,
    /// The namespace's labels (with `kubernetes.io/metadata.name`).
    pub namespace_labels: &'a Labels,
    /// The digests to pin to, for `pinDigests`.
    pub digests: &'a Digests,
}

/// What a mutation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// `imagePullPolicy` (`pullPolicy` of an image volume) set to `Always`.
    PullPolicy,
    /// The tag pinned to a digest.
    Digest,
}

impl Change {
    /// The change's name, as in metrics and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::PullPolicy => "pullPolicy",
            Change::Digest => "digest",
        }
    }

    /// The policy field that asks for it.
    pub fn rule(self) -> &'static str {
        match self {
            Change::PullPolicy => "setPullPolicyAlways",
            Change::Digest => "pinDigests",
        }
    }

    /// Every change, for metrics.
    pub const ALL: [Change; 2] = [Change::PullPolicy, Change::Digest];
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change to one image of the Pod, made or (Warn, Audit) only reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mutation {
    pub change: Change,
    pub container_type: ContainerType,
    pub container: String,
    /// The image as written.
    pub image: String,
    /// The value before: the pull policy (absent: none was set) or the image.
    pub from: Option<String>,
    /// The value after; `None` for a pin that was only reported and whose digest is unknown.
    pub to: Option<String>,
    /// The policy that asks for it (the first by name of the deciding mode).
    pub policy: String,
    pub mode: Mode,
    /// Whether the patch makes it (an `Enforce` policy asks, and the patch is within bounds).
    pub applied: bool,
    /// The JSON Pointer of the field changed, e.g. `/spec/containers/0/imagePullPolicy`.
    pub path: String,
    /// The image's position in [`Workload::images`].
    #[serde(skip)]
    pub image_index: usize,
}

impl Mutation {
    /// `containers/app imagePullPolicy=Always`, `imageVolumes/data pullPolicy=Always`,
    /// `containers/web image=nginx:1.27@sha256:…` (`image=(digest)` for a pin only reported
    /// without its digest).
    pub fn describe(&self, out: &mut String) {
        out.push_str(self.container_type.as_str());
        out.push('/');
        out.push_str(&self.container);
        out.push(' ');
        out.push_str(match (self.change, self.container_type) {
            (Change::PullPolicy, ContainerType::ImageVolumes) => "pullPolicy",
            (Change::PullPolicy, _) => "imagePullPolicy",
            (Change::Digest, _) => "image",
        });
        out.push('=');
        out.push_str(self.to.as_deref().unwrap_or("(digest)"));
    }
}

/// A JSONPatch operation (RFC 6902) with a string value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub op: Op,
    pub path: String,
    pub value: String,
}

/// The JSONPatch operations imagegate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The member is absent.
    Add,
    /// The member is present with another value.
    Replace,
}

impl Op {
    /// The operation's name in a patch.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Replace => "replace",
        }
    }
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The JSONPatch for the Pod; empty: leave it as it is.
    pub patch: Vec<Operation>,
    /// Every change made or reported, in the Pod's image order.
    pub mutations: Vec<Mutation>,
    /// What a `kubectl` user sees: changes `Warn` policies would make, pins that could not be
    /// made, a patch beyond bounds.
    pub warnings: Vec<String>,
    /// The applying policies that ask for a change (`setPullPolicyAlways` or `pinDigests`).
    pub policies: Vec<AppliedPolicy>,
}

impl Plan {
    /// Whether the patch makes a change of this kind.
    pub fn applies(&self, change: Change) -> bool {
        self.mutations
            .iter()
            .any(|m| m.applied && m.change == change)
    }

    /// The changes the patch makes.
    pub fn applied(&self) -> impl Iterator<Item = &Mutation> {
        self.mutations.iter().filter(|m| m.applied)
    }
}

/// The first policy of each mode that asks for one change of one image.
#[derive(Default)]
struct Askers {
    enforce: Option<usize>,
    warn: Option<usize>,
    audit: Option<usize>,
}

impl Askers {
    fn note(&mut self, policy: usize, mode: Mode) {
        let slot = match mode {
            Mode::Enforce => &mut self.enforce,
            Mode::Warn => &mut self.warn,
            Mode::Audit => &mut self.audit,
        };
        slot.get_or_insert(policy);
    }

    /// The deciding policy: an Enforce one changes the Pod; else a Warn one warns; else an
    /// Audit one records.
    fn decider(&self) -> Option<usize> {
        self.enforce.or(self.warn).or(self.audit)
    }
}

/// Plans the patch for a Pod.
pub fn plan(snapshot: &Snapshot, input: &Input<'_>) -> Plan {
    let applying = applying(snapshot, input, |p| p.mutates());
    let mut out = Plan::default();
    if applying.is_empty() {
        return out;
    }
    out.policies = applying
        .iter()
        .map(|&i| AppliedPolicy::of(&snapshot.policies()[i]))
        .collect();
    for (index, image) in added(input) {
        let Some(position) = image.position() else {
            continue;
        };
        let resolved = snapshot.resolve(&image.image);
        // An image that does not parse is left alone: the validating webhook denies it.
        let ResolvedImage::Valid { reference, matches } = &*resolved else {
            continue;
        };
        let mut pull = Askers::default();
        let mut pin = Askers::default();
        for &pi in &applying {
            if !matches.governed(pi) {
                continue;
            }
            let p = &snapshot.policies()[pi];
            if p.set_pull_policy_always {
                pull.note(pi, p.mode);
            }
            if p.pin_digests && !reference.is_pinned() {
                pin.note(pi, p.mode);
            }
        }
        let target = Target {
            snapshot,
            image,
            index,
            position,
        };
        if let Some(pi) = pin.decider() {
            target.pin(pi, reference, input.digests, &mut out);
        }
        if let Some(pi) = pull.decider()
            && image.pull_policy.as_deref() != Some(ALWAYS)
        {
            target.pull_always(pi, &mut out);
        }
    }

    if out.patch.len() > MAX_PATCH_OPERATIONS {
        out.warnings.push(format!(
            "imagegate: the Pod would need {} changes, more than the {MAX_PATCH_OPERATIONS} one answer may make; it is stored as written",
            out.patch.len()
        ));
        out.patch = Vec::new();
        for m in &mut out.mutations {
            m.applied = false;
        }
    }
    out
}

/// One image of the Pod being planned for.
struct Target<'a> {
    snapshot: &'a Snapshot,
    image: &'a ImageUse,
    /// Its index in the workload's images.
    index: usize,
    /// Its index in its list.
    position: usize,
}

impl Target<'_> {
    /// `container "app": image "nginx:1.27"`, for messages.
    fn shown(&self) -> String {
        format!(
            "{} {:?}: image {:?}",
            self.image.container_type.noun(),
            self.image.container,
            self.image.image
        )
    }

    /// The JSON Pointer of the image's field `leaf` (of `image` for image volumes).
    fn pointer(&self, change: Change) -> String {
        let index = itoa::Buffer::new().format(self.position).to_owned();
        let segments: [&str; 5] = match (self.image.container_type, change) {
            (ContainerType::ImageVolumes, Change::PullPolicy) => {
                ["spec", "volumes", &index, "image", "pullPolicy"]
            }
            (ContainerType::ImageVolumes, Change::Digest) => {
                ["spec", "volumes", &index, "image", "reference"]
            }
            (list, Change::PullPolicy) => ["spec", list.as_str(), &index, "imagePullPolicy", ""],
            (list, Change::Digest) => ["spec", list.as_str(), &index, "image", ""],
        };
        json_pointer(segments.iter().copied().filter(|s| !s.is_empty()))
    }

    /// Records a change decided by policy `pi`: applied (and patched) in Enforce mode, else
    /// reported (with a warning in Warn mode).
    fn record(
        &self,
        pi: usize,
        change: Change,
        op: Op,
        values: (Option<String>, Option<String>),
        out: &mut Plan,
    ) {
        let policy = &self.snapshot.policies()[pi];
        let (from, to) = values;
        let path = self.pointer(change);
        let applied = policy.mode == Mode::Enforce && to.is_some();
        if applied && let Some(value) = &to {
            out.patch.push(Operation {
                op,
                path: path.clone(),
                value: value.clone(),
            });
        }
        if policy.mode == Mode::Warn {
            let what = match (change, &to) {
                (Change::PullPolicy, _) => format!(
                    "would get {} Always (now {})",
                    self.pull_field(),
                    from.as_deref().unwrap_or("unset")
                ),
                (Change::Digest, Some(to)) => format!("would be pinned as {to:?}"),
                (Change::Digest, None) => "would be pinned to its digest".to_owned(),
            };
            out.warnings.push(format!(
                "imagegate: [{}/{}] {} {what}; the policy is in Warn mode, so the Pod is stored as written",
                policy.name,
                change.rule(),
                self.shown()
            ));
        }
        out.mutations.push(Mutation {
            change,
            container_type: self.image.container_type,
            container: self.image.container.clone(),
            image: self.image.image.clone(),
            from,
            to,
            policy: policy.name.clone(),
            mode: policy.mode,
            applied,
            path,
            image_index: self.index,
        });
    }

    fn pull_field(&self) -> &'static str {
        if self.image.container_type == ContainerType::ImageVolumes {
            "pullPolicy"
        } else {
            "imagePullPolicy"
        }
    }

    /// Sets the pull policy to `Always` (it is not `Always` now).
    fn pull_always(&self, pi: usize, out: &mut Plan) {
        let op = match self.image.pull_policy {
            // An absent member is added; `add` also replaces a member that is `null`.
            None => Op::Add,
            Some(_) => Op::Replace,
        };
        let values = (self.image.pull_policy.clone(), Some(ALWAYS.to_owned()));
        self.record(pi, Change::PullPolicy, op, values, out);
    }

    /// Pins the image (a tag reference) to the digest found for it. An image whose digest was
    /// not looked up (`check --offline`) is reported as a pin without its digest; one whose
    /// digest could not be had is left as written, with a warning saying why.
    fn pin(&self, pi: usize, reference: &Reference, digests: &Digests, out: &mut Plan) {
        let policy = &self.snapshot.policies()[pi];
        let pinned = match digests.get(&self.image.image) {
            Some(Ok(digest)) => pinned(&self.image.image, reference, digest).map(Some),
            Some(Err(why)) => Err(why.clone()),
            None => Ok(None),
        };
        match pinned {
            Ok(to) => {
                let values = (Some(self.image.image.clone()), to);
                self.record(pi, Change::Digest, Op::Replace, values, out);
            }
            // Only an Enforce policy looks digests up; the others report the pin they would
            // make without one.
            Err(_) if policy.mode != Mode::Enforce => {
                let values = (Some(self.image.image.clone()), None);
                self.record(pi, Change::Digest, Op::Replace, values, out);
            }
            Err(why) => out.warnings.push(format!(
                "imagegate: [{}/pinDigests] {} was left unpinned: {why}",
                policy.name,
                self.shown()
            )),
        }
    }
}

/// `image` pinned to `digest`: `REPO:TAG@DIGEST` as written, with an implicit `latest` made
/// explicit. The digest comes from a registry, so it is checked like any input.
fn pinned(image: &str, reference: &Reference, digest: &str) -> Result<String, String> {
    validate_digest(digest)
        .map_err(|e| format!("the registry gave {digest:?}, which is not a digest: {e}"))?;
    let tag = if reference.tag_is_implicit() {
        ":latest"
    } else {
        ""
    };
    let out = format!("{image}{tag}@{digest}");
    match Reference::parse(&out) {
        Ok(r) if r.digest() == Some(digest) && r.name() == reference.name() => Ok(out),
        _ => Err(format!("{out:?} would not be a valid reference")),
    }
}

/// A JSON Pointer (RFC 6901) of `segments`, each escaped (`~` → `~0`, `/` → `~1`).
pub fn json_pointer<'s>(segments: impl IntoIterator<Item = &'s str>) -> String {
    let mut out = String::new();
    for segment in segments {
        out.push('/');
        for c in segment.chars() {
            match c {
                '~' => out.push_str("~0"),
                '/' => out.push_str("~1"),
                c => out.push(c),
            }
        }
    }
    out
}

/// What the evidence step must find for `pinDigests` before [`plan`]: the digest of each image
/// (as written, once each, in Pod order) that an applying `Enforce` policy asks to pin. Where
/// `verifySignatures` entries govern the same image, the request carries their checks too, so
/// that [`digests_from`] can pin to the digest a signature verified, and the validating call
/// that follows finds those outcomes cached. Empty, without any work per image, when no
/// applying policy pins.
pub fn digests_needed(snapshot: &Snapshot, input: &Input<'_>) -> Vec<EvidenceRequest> {
    if !snapshot.pins_digests() {
        return Vec::new();
    }
    let applying = applying(snapshot, input, |p| {
        p.pin_digests && p.mode == Mode::Enforce
    });
    if applying.is_empty() {
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (_, image) in added(input) {
        if let ResolvedImage::Valid { reference, matches } = &*snapshot.resolve(&image.image)
            && !reference.is_pinned()
            && applying.iter().any(|&pi| matches.governed(pi))
            && seen.insert(image.image.as_str())
        {
            out.push(EvidenceRequest {
                image: image.image.clone(),
                reference: reference.clone(),
                checks: Vec::new(),
            });
        }
    }
    if !out.is_empty() && snapshot.has_signature_rules() {
        let signed = verification::requests(
            snapshot,
            input.object,
            input.old_object,
            input.namespace_labels,
        );
        for request in &mut out {
            if let Some(found) = signed.iter().find(|s| s.image == request.image) {
                request.checks.clone_from(&found.checks);
            }
        }
    }
    out
}

/// The digests to pin to, from the evidence gathered: per image, the digest a signature entry
/// verified (so the kubelet runs exactly what was verified), else the tag's resolution when it
/// is current (fresh, or cached within `--tag-cache-ttl`), else why there is none. A
/// resolution kept from before the registry became unavailable is not pinned to: the tag may
/// have moved since, and a pin would hold the Pod to an image its tag no longer names.
pub fn digests_from(evidence: &Evidence) -> Digests {
    evidence
        .images
        .iter()
        .map(|(image, found)| {
            let verified = found.entries.values().find_map(|e| match &e.outcome {
                Outcome::Verified { digest, .. } => Some(digest.clone()),
                _ => None,
            });
            let digest = match (verified, &found.digest) {
                (Some(verified), _) => Ok(verified),
                (None, Some(_)) if found.digest_source == Some(Source::Stale) => Err(
                    "the registry did not answer, and the digest it gave for this tag before may no longer be what the tag names".to_owned(),
                ),
                (None, Some(digest)) => Ok(digest.clone()),
                (None, None) => Err(found
                    .digest_error
                    .clone()
                    .unwrap_or_else(|| "the registry gave no digest for it".to_owned())),
            };
            (image.clone(), digest)
        })
        .collect()
}

/// The indices of the policies that apply in the Pod's namespace and satisfy `wanted`.
fn applying(
    snapshot: &Snapshot,
    input: &Input<'_>,
    wanted: impl Fn(&CompiledPolicy) -> bool,
) -> Vec<usize> {
    let mut out = snapshot.applying(input.namespace_labels);
    out.retain(|&i| wanted(&snapshot.policies()[i]));
    out
}

/// The images a mutation may change: every image of a new Pod; on `pods/ephemeralcontainers`,
/// those the Pod did not have before (by container type and name).
fn added<'a>(input: &Input<'a>) -> impl Iterator<Item = (usize, &'a ImageUse)> {
    let old: HashSet<(ContainerType, &str)> = input
        .old_object
        .iter()
        .flat_map(|o| &o.images)
        .map(|i| (i.container_type, i.container.as_str()))
        .collect();
    input
        .object
        .images
        .iter()
        .enumerate()
        .filter(move |(_, i)| !old.contains(&(i.container_type, i.container.as_str())))
}

/// `workload` as the plan's patch leaves it: each applied change made to its images, so that
/// a decision can judge a Pod on its mutated form, as the API server's validation does.
pub fn apply(workload: &mut Workload, plan: &Plan) {
    for m in plan.applied() {
        let (Some(image), Some(to)) = (workload.images.get_mut(m.image_index), &m.to) else {
            continue;
        };
        match m.change {
            Change::PullPolicy => image.pull_policy = Some(to.clone()),
            Change::Digest => image.image = to.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Settings, compile};
    use crate::workload::WorkloadKind;
    use serde_json::{Value, json};

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A snapshot of policies written as `name: spec` YAML flow maps.
    fn snapshot(policies: &[(&str, &str)]) -> Snapshot {
        let compiled = policies
            .iter()
            .map(|(name, spec)| {
                let yaml = format!("metadata: {{name: {name}}}\nspec: {spec}");
                compile(&serde_saphyr::from_str(&yaml).unwrap()).unwrap()
            })
            .collect();
        Snapshot::new(compiled, Settings::default())
    }

    /// Policies as (name, spec) pairs.
    type Policies<'a> = &'a [(&'a str, &'a str)];

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    }

    fn workload(pod: &Value) -> Workload {
        Workload::from_value(WorkloadKind::Pod, pod).unwrap()
    }

    fn labels(env: &str) -> Labels {
        [
            ("env".to_owned(), env.to_owned()),
            ("kubernetes.io/metadata.name".to_owned(), "shop".to_owned()),
        ]
        .into()
    }

    fn run(snapshot: &Snapshot, pod: &Value, old: Option<&Value>, digests: &Digests) -> Plan {
        let object = workload(pod);
        let old = old.map(workload);
        plan(
            snapshot,
            &Input {
                object: &object,
                old_object: old.as_ref(),
                namespace_labels: &labels("prod"),
                digests,
            },
        )
    }

    /// The patch as `op path value` lines.
    fn ops(plan: &Plan) -> Vec<String> {
        plan.patch
            .iter()
            .map(|o| format!("{} {} {}", o.op.as_str(), o.path, o.value))
            .collect()
    }

    /// `pod` with `plan`'s patch applied, by a JSON Patch implementation.
    fn patched(pod: &Value, plan: &Plan) -> Value {
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::to_value(&plan.patch).unwrap()).unwrap();
        let mut out = pod.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    fn every_kind_of_image() -> Value {
        pod(json!({
            "initContainers": [
                {"name": "init", "image": "busybox:1.36"},
                {"name": "sidecar", "image": "envoy:1.30", "restartPolicy": "Always", "imagePullPolicy": "IfNotPresent"},
            ],
            "containers": [
                {"name": "app", "image": "nginx:1.27", "imagePullPolicy": "Never"},
                {"name": "done", "image": "nginx:1.27", "imagePullPolicy": "Always"},
                {"name": "pinned", "image": format!("nginx@{DIGEST}")},
            ],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            "volumes": [
                {"name": "plain", "emptyDir": {}},
                {"name": "data", "image": {"reference": "quay.io/data/set:v1"}},
                {"name": "models", "image": {"reference": "quay.io/data/models:v2", "pullPolicy": "IfNotPresent"}},
            ],
        }))
    }

    #[test]
    fn pull_policy_is_added_replaced_or_left_on_every_kind_of_image() {
        let s = snapshot(&[("always", "{setPullPolicyAlways: true}")]);
        let pod = every_kind_of_image();
        let plan = run(&s, &pod, None, &Digests::new());
        assert_eq!(
            ops(&plan),
            [
                "add /spec/initContainers/0/imagePullPolicy Always",
                "replace /spec/initContainers/1/imagePullPolicy Always",
                "replace /spec/containers/0/imagePullPolicy Always",
                // containers/1 is already Always; containers/2 is pinned, and still pulled
                // Always, as AlwaysPullImages does.
                "add /spec/containers/2/imagePullPolicy Always",
                "add /spec/ephemeralContainers/0/imagePullPolicy Always",
                "add /spec/volumes/1/image/pullPolicy Always",
                "replace /spec/volumes/2/image/pullPolicy Always",
            ]
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        assert!(plan.applies(Change::PullPolicy) && !plan.applies(Change::Digest));
        let app = &plan.mutations[2];
        assert_eq!(
            (
                app.container.as_str(),
                app.from.as_deref(),
                app.to.as_deref()
            ),
            ("app", Some("Never"), Some("Always"))
        );
        assert_eq!(
            (app.policy.as_str(), app.mode, app.applied),
            ("always", Mode::Enforce, true)
        );
        assert_eq!(plan.policies.len(), 1);

        // Exactly the expected Pod, and a second call on it changes nothing (reinvocation).
        let mutated = patched(&pod, &plan);
        let mut want = pod.clone();
        for (list, i) in [
            ("initContainers", 0),
            ("initContainers", 1),
            ("containers", 0),
            ("containers", 2),
            ("ephemeralContainers", 0),
        ] {
            want["spec"][list][i]["imagePullPolicy"] = json!("Always");
        }
        want["spec"]["volumes"][1]["image"]["pullPolicy"] = json!("Always");
        want["spec"]["volumes"][2]["image"]["pullPolicy"] = json!("Always");
        assert_eq!(mutated, want);
        let again = run(&s, &mutated, None, &Digests::new());
        assert!(
            again.patch.is_empty() && again.mutations.is_empty(),
            "{again:?}"
        );
        // The same change made to the workload as read: what reading the patched Pod gives.
        let mut applied = workload(&pod);
        apply(&mut applied, &plan);
        assert_eq!(applied, workload(&mutated));
    }

    #[test]
    fn only_governed_images_in_applying_namespaces_change() {
        let all = every_kind_of_image();
        // Governs only quay.io/data/**: the image volumes.
        let s = snapshot(&[(
            "data",
            "{images: ['quay.io/data/**'], setPullPolicyAlways: true}",
        )]);
        let plan = run(&s, &all, None, &Digests::new());
        assert_eq!(
            ops(&plan),
            [
                "add /spec/volumes/1/image/pullPolicy Always",
                "replace /spec/volumes/2/image/pullPolicy Always"
            ]
        );
        // A namespace the policy does not select: nothing, and no policy applies.
        let s = snapshot(&[(
            "prod-only",
            "{namespaceSelector: {matchLabels: {env: staging}}, setPullPolicyAlways: true}",
        )]);
        let plan = run(&s, &all, None, &Digests::new());
        assert_eq!(plan, Plan::default());
        // A policy without mutation rules asks for nothing.
        let s = snapshot(&[("require", "{requirePullPolicyAlways: true}")]);
        assert_eq!(run(&s, &all, None, &Digests::new()), Plan::default());
        // An image that does not parse is left to the validating webhook.
        let s = snapshot(&[("always", "{setPullPolicyAlways: true}")]);
        let bad = pod(json!({"containers": [{"name": "x", "image": "Bad Image"}]}));
        assert!(run(&s, &bad, None, &Digests::new()).patch.is_empty());
    }

    #[test]
    fn warn_and_audit_policies_change_nothing_and_say_what_they_would() {
        let pod = pod(
            json!({"containers": [{"name": "app", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent"}]}),
        );
        // (policies, patch, warnings, recorded mode)
        let cases: [(Policies, usize, usize, Mode); 4] = [
            (
                &[("w", "{mode: Warn, setPullPolicyAlways: true}")],
                0,
                1,
                Mode::Warn,
            ),
            (
                &[("a", "{mode: Audit, setPullPolicyAlways: true}")],
                0,
                0,
                Mode::Audit,
            ),
            (
                &[
                    ("a", "{mode: Audit, setPullPolicyAlways: true}"),
                    ("w", "{mode: Warn, setPullPolicyAlways: true}"),
                ],
                0,
                1,
                Mode::Warn,
            ),
            // An Enforce policy makes the change: nothing is left to warn about.
            (
                &[
                    ("e", "{setPullPolicyAlways: true}"),
                    ("w", "{mode: Warn, setPullPolicyAlways: true}"),
                ],
                1,
                0,
                Mode::Enforce,
            ),
        ];
        for (policies, patch, warnings, mode) in cases {
            let plan = run(&snapshot(policies), &pod, None, &Digests::new());
            assert_eq!(plan.patch.len(), patch, "{policies:?}");
            assert_eq!(
                plan.warnings.len(),
                warnings,
                "{policies:?}: {:?}",
                plan.warnings
            );
            assert_eq!(plan.mutations.len(), 1, "{policies:?}");
            assert_eq!(plan.mutations[0].mode, mode, "{policies:?}");
            assert_eq!(plan.mutations[0].applied, mode == Mode::Enforce);
            assert_eq!(plan.policies.len(), policies.len());
        }
        let plan = run(
            &snapshot(&[("w", "{mode: Warn, setPullPolicyAlways: true}")]),
            &pod,
            None,
            &Digests::new(),
        );
        assert_eq!(
            plan.warnings,
            [
                "imagegate: [w/setPullPolicyAlways] container \"app\": image \"nginx:1.27\" would get imagePullPolicy Always (now IfNotPresent); the policy is in Warn mode, so the Pod is stored as written"
            ]
        );
    }

    #[test]
    fn ephemeral_container_updates_change_only_the_added_containers() {
        let s = snapshot(&[("always", "{setPullPolicyAlways: true}")]);
        let old = pod(json!({
            "containers": [{"name": "app", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent"}],
            "ephemeralContainers": [{"name": "debug-1", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}],
        }));
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "debug-2", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent"}));
        let plan = run(&s, &new, Some(&old), &Digests::new());
        assert_eq!(
            ops(&plan),
            ["replace /spec/ephemeralContainers/1/imagePullPolicy Always"]
        );
    }

    #[test]
    fn digests_are_pinned_from_the_evidence_given() {
        let s = snapshot(&[("pin", "{pinDigests: true}")]);
        let pod = pod(json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [
                {"name": "app", "image": "nginx:1.27"},
                {"name": "same", "image": "nginx:1.27"},
                {"name": "pinned", "image": format!("nginx:1.27@{DIGEST}")},
                {"name": "down", "image": "ghcr.io/corp/down:1"},
                {"name": "unknown", "image": "ghcr.io/corp/unknown:1"},
                {"name": "liar", "image": "ghcr.io/corp/liar:1"},
            ],
            "volumes": [{"name": "data", "image": {"reference": "quay.io/data/set:v1"}}],
        }));
        let object = workload(&pod);
        let prod = labels("prod");
        let input = |digests| Input {
            object: &object,
            old_object: None,
            namespace_labels: &prod,
            digests,
        };
        let empty = Digests::new();
        let needed: Vec<String> = digests_needed(&s, &input(&empty))
            .into_iter()
            .map(|r| r.image)
            .collect();
        assert_eq!(
            needed,
            [
                "busybox",
                "nginx:1.27",
                "ghcr.io/corp/down:1",
                "ghcr.io/corp/unknown:1",
                "ghcr.io/corp/liar:1",
                "quay.io/data/set:v1"
            ],
            "each tag once, pinned images not at all"
        );
        let digests: Digests = [
            ("busybox", Ok(DIGEST.to_owned())),
            ("nginx:1.27", Ok(DIGEST.to_owned())),
            ("quay.io/data/set:v1", Ok(DIGEST.to_owned())),
            (
                "ghcr.io/corp/down:1",
                Err("registry ghcr.io did not answer within 9s".to_owned()),
            ),
            ("ghcr.io/corp/liar:1", Ok("sha256:BAD".to_owned())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let plan = plan(&s, &input(&digests));
        assert_eq!(
            ops(&plan),
            [
                format!("replace /spec/initContainers/0/image busybox:latest@{DIGEST}"),
                format!("replace /spec/containers/0/image nginx:1.27@{DIGEST}"),
                format!("replace /spec/containers/1/image nginx:1.27@{DIGEST}"),
                format!("replace /spec/volumes/0/image/reference quay.io/data/set:v1@{DIGEST}"),
            ]
        );
        assert!(plan.applies(Change::Digest) && !plan.applies(Change::PullPolicy));
        let warnings = plan.warnings.join("\n");
        for part in [
            "[pin/pinDigests] container \"down\": image \"ghcr.io/corp/down:1\" was left unpinned: registry ghcr.io did not answer within 9s",
            "container \"liar\": image \"ghcr.io/corp/liar:1\" was left unpinned: the registry gave \"sha256:BAD\", which is not a digest",
        ] {
            assert!(warnings.contains(part), "{part:?} missing from\n{warnings}");
        }
        assert_eq!(plan.warnings.len(), 2);
        // An image whose digest was not looked up (`check --offline`) is reported as the pin it
        // would get, without a digest, and not warned about.
        let unknown: Vec<&Mutation> = plan.mutations.iter().filter(|m| !m.applied).collect();
        assert_eq!(unknown.len(), 1, "{:?}", plan.mutations);
        assert_eq!(
            (unknown[0].container.as_str(), unknown[0].to.as_deref()),
            ("unknown", None)
        );

        // Reinvocation: the pinned Pod needs nothing more.
        let mutated = workload(&patched(&pod, &plan));
        let mut applied = workload(&pod);
        apply(&mut applied, &plan);
        assert_eq!(applied, mutated);
        let again = super::plan(
            &s,
            &Input {
                object: &mutated,
                ..input(&digests)
            },
        );
        assert!(again.patch.is_empty(), "{:?}", again.patch);
    }

    #[test]
    fn pin_requests_carry_the_signature_checks_of_the_same_images() {
        let key: String = crate::policy::test_keys::P256
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect();
        let signing = format!(
            "metadata: {{name: sig}}\nspec:\n  images: ['ghcr.io/corp/**']\n  verifySignatures:\n  - name: release\n    key:\n      publicKey: |\n{key}"
        );
        let compiled = vec![
            compile(&serde_saphyr::from_str(&signing).unwrap()).unwrap(),
            compile(
                &serde_saphyr::from_str("metadata: {name: pin}\nspec: {pinDigests: true}").unwrap(),
            )
            .unwrap(),
        ];
        let s = Snapshot::new(compiled, Settings::default());
        let pod = pod(json!({"containers": [
            {"name": "app", "image": "ghcr.io/corp/app:1"},
            {"name": "web", "image": "nginx:1.27"},
            {"name": "pinned", "image": format!("ghcr.io/corp/app@{DIGEST}")},
        ]}));
        let object = workload(&pod);
        let input = Input {
            object: &object,
            old_object: None,
            namespace_labels: &labels("prod"),
            digests: &Digests::new(),
        };
        let needed = digests_needed(&s, &input);
        let asked: Vec<(&str, Vec<&str>)> = needed
            .iter()
            .map(|r| {
                (
                    r.image.as_str(),
                    r.checks.iter().map(|c| c.entry.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            asked,
            [
                ("ghcr.io/corp/app:1", vec!["sig/release"]),
                ("nginx:1.27", vec![])
            ],
            "the pinned image needs no pin, and only the signed image its entry"
        );
        // No policy pins: nothing is asked, whatever signs.
        let only_signing = Snapshot::new(
            vec![compile(&serde_saphyr::from_str(&signing).unwrap()).unwrap()],
            Settings::default(),
        );
        assert!(!only_signing.pins_digests());
        assert!(digests_needed(&only_signing, &input).is_empty());
    }

    #[test]
    fn a_warn_policy_reports_the_pin_it_would_make() {
        let s = snapshot(&[(
            "pin",
            "{mode: Warn, pinDigests: true, setPullPolicyAlways: true}",
        )]);
        let pod = pod(
            json!({"containers": [{"name": "app", "image": "nginx:1.27", "imagePullPolicy": "Always"}]}),
        );
        let object = workload(&pod);
        let input = Input {
            object: &object,
            old_object: None,
            namespace_labels: &labels("prod"),
            digests: &Digests::new(),
        };
        assert!(
            digests_needed(&s, &input).is_empty(),
            "no lookup for a Warn policy"
        );
        let plan = plan(&s, &input);
        assert!(plan.patch.is_empty());
        assert_eq!(
            plan.warnings,
            [
                "imagegate: [pin/pinDigests] container \"app\": image \"nginx:1.27\" would be pinned to its digest; the policy is in Warn mode, so the Pod is stored as written"
            ]
        );
        assert_eq!(plan.mutations[0].to, None);
    }

    #[test]
    fn digests_come_from_the_evidence_the_verified_one_first() {
        use crate::evidence::{EntryEvidence, ImageEvidence, SignatureFormat};
        let other = DIGEST.replace("0123", "4567");
        let verified = EntryEvidence {
            outcome: Outcome::Verified {
                digest: DIGEST.to_owned(),
                format: SignatureFormat::CosignTag,
                signer: "SHA256:ab".to_owned(),
            },
            source: Source::Cache,
        };
        let not_verified = EntryEvidence {
            outcome: Outcome::NotVerified {
                reason: "no signature".to_owned(),
            },
            source: Source::Fresh,
        };
        let image = |digest: Option<&str>, error: Option<&str>, entries: Vec<EntryEvidence>| {
            ImageEvidence {
                digest: digest.map(str::to_owned),
                digest_error: error.map(str::to_owned),
                digest_source: Some(Source::Fresh),
                entries: entries
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (format!("p/e{i}"), e))
                    .collect(),
            }
        };
        let evidence = Evidence {
            images: [
                (
                    "signed",
                    image(
                        Some(&other),
                        None,
                        vec![not_verified.clone(), verified.clone()],
                    ),
                ),
                ("resolved", image(Some(&other), None, vec![not_verified])),
                ("down", image(None, Some("registry unreachable"), vec![])),
                ("silent", image(None, None, vec![])),
                (
                    "stale",
                    ImageEvidence {
                        digest_source: Some(Source::Stale),
                        ..image(Some(&other), None, vec![])
                    },
                ),
                (
                    "stale-but-verified",
                    ImageEvidence {
                        digest_source: Some(Source::Stale),
                        ..image(Some(DIGEST), None, vec![verified.clone()])
                    },
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        };
        let digests = digests_from(&evidence);
        assert_eq!(digests["signed"], Ok(DIGEST.to_owned()));
        assert_eq!(digests["resolved"], Ok(other.clone()));
        assert_eq!(digests["down"], Err("registry unreachable".to_owned()));
        assert!(digests["silent"].is_err());
        // A resolution kept from before an outage is not pinned to, unless it was verified.
        let stale = digests["stale"].as_ref().unwrap_err();
        assert!(stale.contains("did not answer"), "{stale}");
        assert_eq!(digests["stale-but-verified"], Ok(DIGEST.to_owned()));
    }

    #[test]
    fn a_pod_of_5000_containers_gets_one_bounded_patch() {
        let s = snapshot(&[("both", "{setPullPolicyAlways: true, pinDigests: true}")]);
        let containers: Vec<Value> = (0..5000)
            .map(|i| json!({"name": format!("c{i}"), "image": format!("reg.example/app:{i}")}))
            .collect();
        let mut big = pod(json!({"containers": containers}));
        let digests: Digests = (0..5000)
            .map(|i| (format!("reg.example/app:{i}"), Ok(DIGEST.to_owned())))
            .collect();
        let plan = run(&s, &big, None, &digests);
        assert_eq!(plan.patch.len(), 10_000);
        assert_eq!(
            plan.patch.len(),
            MAX_PATCH_OPERATIONS,
            "exactly at the bound"
        );
        assert!(plan.warnings.is_empty());
        let mutated = patched(&big, &plan);
        assert_eq!(
            mutated["spec"]["containers"][4999]["imagePullPolicy"],
            "Always"
        );
        assert_eq!(
            mutated["spec"]["containers"][4999]["image"],
            format!("reg.example/app:4999@{DIGEST}")
        );

        // One more container needing both is past the bound: no patch, and a warning.
        big["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "extra", "image": "reg.example/app:0"}));
        let plan = run(&s, &big, None, &digests);
        assert!(plan.patch.is_empty());
        assert!(plan.mutations.iter().all(|m| !m.applied));
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("10002 changes"),
            "{:?}",
            plan.warnings
        );
    }

    /// The worked example of docs/policies.md.
    #[test]
    fn the_documented_example() {
        let s = snapshot(&[(
            "payments-always-pull",
            "{namespaceSelector: {matchLabels: {env: prod}}, images: ['registry.corp.example/payments/**'], setPullPolicyAlways: true, requirePullPolicyAlways: true}",
        )]);
        let pod = pod(json!({
            "initContainers": [{"name": "migrate", "image": "registry.corp.example/payments/migrate:2.1", "imagePullPolicy": "IfNotPresent"}],
            "containers": [
                {"name": "api", "image": "registry.corp.example/payments/api:3.4", "imagePullPolicy": "IfNotPresent"},
                {"name": "proxy", "image": "docker.io/envoyproxy/envoy:v1.30.1", "imagePullPolicy": "IfNotPresent"},
            ],
        }));
        let plan = run(&s, &pod, None, &Digests::new());
        assert_eq!(
            serde_json::to_value(&plan.patch).unwrap(),
            json!([{"op":"replace","path":"/spec/initContainers/0/imagePullPolicy","value":"Always"},
                   {"op":"replace","path":"/spec/containers/0/imagePullPolicy","value":"Always"}])
        );
        let again = run(&s, &patched(&pod, &plan), None, &Digests::new());
        assert!(again.patch.is_empty());
    }

    #[test]
    fn json_pointers_escape_their_segments() {
        assert_eq!(
            json_pointer(["spec", "containers", "0"]),
            "/spec/containers/0"
        );
        assert_eq!(json_pointer(["a/b", "m~n", ""]), "/a~1b/m~0n/");
        assert_eq!(json_pointer([]), "");
    }
}
