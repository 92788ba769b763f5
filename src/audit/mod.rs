//! The audit of running Pods (DESIGN §6.1): every Pod of the [`PodIndex`] decided against the
//! policy snapshot by the same [`decide`] as admission, at the time of the audit, and judged on
//! what its containers actually run.
//!
//! A pass is a pure function of the snapshot, the Pods, the namespaces' labels and the time
//! ([`audit`]); the operator runs it and writes what it found (`status.audit`, the gauge,
//! Events, PolicyReports), and `imagegate audit` prints it.
//!
//! How a Pod is decided:
//!
//! - as a CREATE of the Pod as it is now: every image is judged, not only changed ones;
//! - with its own annotations, which for a Pod of a workload are the pod template's;
//! - break-glass is judged at the time of the audit, so an exception whose
//!   `break-glass-until` has passed no longer covers anything, and the Pod shows with its
//!   violations and a `breakGlass` violation saying when the exception expired;
//! - the requester is the one that created the Pod where the Pod says: a Pod whose controller
//!   is a ReplicaSet, StatefulSet, DaemonSet, Job or ReplicationController was created by that
//!   built-in controller's service account in `kube-system`, so it is judged as that requester
//!   (a trusted workload controller with the default `--trusted-controller-namespaces`: the
//!   exception's users and groups were checked on the workload, and ticket and time still
//!   are). Any other Pod's creator is unknown, and only an exception open to any requester
//!   (both `allowedGroups` and `allowedUsers` empty) covers it, as for ImageReview;
//! - each container's image is also judged on the digest the kubelet reports it runs: a
//!   pinned reference that runs another digest is a `runningDigest` violation, a tag's digest
//!   patterns are matched on the digest that runs, and `verifySignatures` entries are judged
//!   on it too: the evidence ([`evidence_requests`], gathered by the caller through the
//!   registry adapter) is asked for `NAME@RUNNING-DIGEST`, so a tag that moved after admission
//!   to an unsigned digest shows up as the Pod running an unsigned digest. Where the kubelet
//!   has reported no registry digest, the image is judged as written (a pinned digest, or what
//!   its tag names now).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::decision::{self, Decision, Input, NO_POLICY, Requester, Violation};
use crate::evidence::{Evidence, EvidenceRequest, Outcome};
use crate::namespaces::Labels;
use crate::policy::{
    AUDIT_VIOLATIONS_LIMIT, AuditStatus, AuditViolation, Mode, ResolvedImage, Snapshot,
    UnmatchedImages,
};
use crate::reference::Reference;
use crate::verification;
use crate::workload::{ContainerType, ImageUse, Workload};

pub mod pods;
pub mod running;

pub use pods::{CONTROLLER_NAMESPACE, PodEntry, PodIndex, PodObject, PodShape, Running};

/// What one distinct Pod (a shape in a namespace) came to.
#[derive(Debug)]
pub struct Evaluated {
    /// The decision, as admission would make it now.
    pub decision: Decision,
    /// What the audit could not judge, for people to read (an image known only by a local ID).
    pub notes: Vec<String>,
    /// The snapshot positions of the policies with a violation no break-glass covers.
    violating: Vec<usize>,
    /// Whether `(unmatched-images)` has a violation.
    unmatched: bool,
    /// The snapshot positions of the policies governing an image known only by a local ID.
    local_images: Vec<usize>,
}

/// One Pod and what it came to (kept when the pass is asked to: PolicyReports, the CLI).
#[derive(Debug, Clone)]
pub struct PodResult {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The controller (or first owner) as `Kind/name`.
    pub owner: Option<String>,
    pub evaluated: Arc<Evaluated>,
}

/// The order in which `status.audit.violations` lists violations, and what makes two of them
/// one entry: the replicas of a workload with the same violation are listed once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SampleKey {
    namespace: Arc<str>,
    /// The owner (`Kind/name`), else the Pod's name.
    workload: String,
    container_type: ContainerType,
    container: String,
    rule: &'static str,
    image: String,
}

/// What a pass found for one policy.
#[derive(Debug, Clone)]
pub struct PolicyAudit {
    pub name: String,
    pub mode: Mode,
    /// Pods in namespaces the policy applies to.
    pub pods_evaluated: u64,
    /// Pods with a violation of the policy that no break-glass covers.
    pub violating_pods: u64,
    /// Pods with a governed image known only by a local image ID.
    pub pods_with_local_images: u64,
    samples: BTreeMap<SampleKey, AuditViolation>,
}

impl PolicyAudit {
    fn new(name: &str, mode: Mode) -> PolicyAudit {
        PolicyAudit {
            name: name.to_owned(),
            mode,
            pods_evaluated: 0,
            violating_pods: 0,
            pods_with_local_images: 0,
            samples: BTreeMap::new(),
        }
    }

    /// Up to [`AUDIT_VIOLATIONS_LIMIT`] violations, in order.
    pub fn violations(&self) -> impl Iterator<Item = &AuditViolation> {
        self.samples.values()
    }

    /// `status.audit` as of `at`.
    pub fn status(&self, at: jiff::Timestamp) -> AuditStatus {
        AuditStatus {
            last_audit_time: Some(Time(at)),
            pods_evaluated: count(self.pods_evaluated),
            violating_pods: count(self.violating_pods),
            pods_with_local_images: count(self.pods_with_local_images),
            violations: self.samples.values().cloned().collect(),
        }
    }

    fn sample(&mut self, key: SampleKey, make: impl FnOnce() -> AuditViolation) {
        if self.samples.contains_key(&key) {
            return;
        }
        if self.samples.len() >= AUDIT_VIOLATIONS_LIMIT
            && self
                .samples
                .last_key_value()
                .is_some_and(|(last, _)| key > *last)
        {
            return;
        }
        self.samples.insert(key, make());
        if self.samples.len() > AUDIT_VIOLATIONS_LIMIT {
            self.samples.pop_last();
        }
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Everything one pass found.
#[derive(Debug)]
pub struct AuditOutcome {
    /// The moment of the pass (the `now` of every decision).
    pub at: jiff::Timestamp,
    /// One per policy of the snapshot, in the snapshot's order (by name).
    pub policies: Vec<PolicyAudit>,
    /// `(unmatched-images)`, when the snapshot denies unmatched images.
    pub unmatched: Option<PolicyAudit>,
    /// Every Pod decided, when asked for.
    pub pods: Vec<PodResult>,
    /// How many Pods were decided.
    pub pods_evaluated: u64,
    /// Pods left for the next pass because their namespace's labels are not known yet.
    pub pods_skipped: u64,
    /// Images (at the digest they run) whose signatures the registry could not answer for:
    /// they are judged as failing (a `verifySignatures` violation saying so), never as
    /// passing.
    pub signatures_unavailable: u64,
}

impl AuditOutcome {
    /// Every policy's findings, `(unmatched-images)` last.
    pub fn all_policies(&self) -> impl Iterator<Item = &PolicyAudit> {
        self.policies.iter().chain(&self.unmatched)
    }
}

/// Decides every Pod of `pods` (sorted by namespace and name, as [`PodIndex::entries`] gives
/// them) against `snapshot` at `now`. `labels` gives a namespace's labels (with its name
/// label), or `None` for a namespace not known yet, whose Pods are skipped. With `keep_pods`,
/// the outcome lists every Pod's result. Without evidence, every image a signature entry
/// governs fails closed: see [`audit_with`].
pub fn audit(
    snapshot: &Snapshot,
    pods: &[PodEntry],
    labels: &dyn Fn(&str) -> Option<Labels>,
    now: jiff::Timestamp,
    keep_pods: bool,
) -> AuditOutcome {
    audit_with(snapshot, pods, labels, now, keep_pods, None)
}

/// As [`audit`], with the signature evidence gathered for [`evidence_requests`] of the same
/// snapshot and Pods (keyed by [`evidence_key`]).
pub fn audit_with(
    snapshot: &Snapshot,
    pods: &[PodEntry],
    labels: &dyn Fn(&str) -> Option<Labels>,
    now: jiff::Timestamp,
    keep_pods: bool,
    evidence: Option<&Evidence>,
) -> AuditOutcome {
    let mut outcome = AuditOutcome {
        at: now,
        policies: snapshot
            .policies()
            .iter()
            .map(|p| PolicyAudit::new(&p.name, p.mode))
            .collect(),
        unmatched: (snapshot.settings().unmatched_images == UnmatchedImages::Deny)
            .then(|| PolicyAudit::new(NO_POLICY, Mode::Enforce)),
        pods: Vec::new(),
        pods_evaluated: 0,
        pods_skipped: 0,
        signatures_unavailable: evidence.map_or(0, unavailable_images),
    };
    for in_namespace in pods.chunk_by(|a, b| a.namespace == b.namespace) {
        let namespace = &in_namespace[0].namespace;
        let Some(labels) = labels(namespace) else {
            outcome.pods_skipped += in_namespace.len() as u64;
            continue;
        };
        let applying = snapshot.applying(&labels);
        // Pods of one shape in one namespace are decided once.
        let mut decided: HashMap<*const PodShape, Arc<Evaluated>> = HashMap::new();
        for pod in in_namespace {
            let evaluated = decided
                .entry(Arc::as_ptr(&pod.shape))
                .or_insert_with(|| {
                    Arc::new(evaluate(snapshot, &applying, &labels, pod, now, evidence))
                })
                .clone();
            account(&mut outcome, &applying, pod, &evaluated);
            if keep_pods {
                outcome.pods.push(PodResult {
                    namespace: Arc::clone(&pod.namespace),
                    name: Arc::clone(&pod.name),
                    owner: pod.shape.owner.as_ref().map(pods::Owner::display),
                    evaluated,
                });
            }
        }
    }
    outcome
}

/// The requester the built-in controller `creator` (a service account name) sends requests as.
pub fn controller_requester(creator: &str) -> Requester {
    Requester {
        username: format!("system:serviceaccount:{CONTROLLER_NAMESPACE}:{creator}"),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{CONTROLLER_NAMESPACE}"),
            "system:authenticated".to_owned(),
        ],
    }
}

/// The workload the decision reads for a Pod of this shape in `namespace`.
pub fn workload_of(namespace: &str, shape: &PodShape) -> Workload {
    Workload {
        // No decision reads the name; Pods of one shape share the decision.
        name: String::new(),
        namespace: Some(namespace.to_owned()),
        annotations: shape
            .annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        images: shape
            .images
            .iter()
            .map(|i| ImageUse {
                container_type: i.container_type,
                container: i.container.to_string(),
                image: i.image.to_string(),
                pull_policy: i.pull_policy.as_deref().map(str::to_owned),
                field_path: String::new(),
            })
            .collect(),
    }
}

/// By position in the shape's images, the registry digest each runs, where the node said.
pub fn running_digests(shape: &PodShape) -> Vec<Option<String>> {
    shape
        .images
        .iter()
        .map(|i| match &i.running {
            Running::Digest(d) => Some(d.to_string()),
            Running::Local(_) | Running::Unreported => None,
        })
        .collect()
}

/// The reference a running image's signatures are judged on: `NAME@DIGEST` of the digest the
/// kubelet reports it runs, where that is not the digest written; else the reference as
/// written (a pinned digest, or a tag, resolved by the registry adapter).
pub fn audited_reference(written: &Reference, running: Option<&str>) -> Reference {
    running
        .and_then(|digest| decision::running_reference(written, digest))
        .unwrap_or_else(|| written.clone())
}

/// The key of a running image's evidence among everything a pass gathered: the canonical
/// form of its [`audited_reference`]. Pods of many shapes run the same image at the same
/// digest; one tag may run several digests in different Pods.
pub fn evidence_key(written: &Reference, running: Option<&str>) -> String {
    audited_reference(written, running).canonical().to_owned()
}

/// What the registry adapter must gather for an audit pass of `pods` (as [`audit`] takes
/// them): one request per distinct image at the digest it runs (see [`audited_reference`]),
/// named by [`evidence_key`], with the signature entries that govern it in some namespace.
/// Empty, without any work, when the snapshot has no signature entries.
pub fn evidence_requests(
    snapshot: &Snapshot,
    pods: &[PodEntry],
    labels: &dyn Fn(&str) -> Option<Labels>,
) -> Vec<EvidenceRequest> {
    if !snapshot.has_signature_rules() {
        return Vec::new();
    }
    let mut out: Vec<EvidenceRequest> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for in_namespace in pods.chunk_by(|a, b| a.namespace == b.namespace) {
        let namespace = &in_namespace[0].namespace;
        let Some(labels) = labels(namespace) else {
            continue;
        };
        let mut shapes: HashSet<*const PodShape> = HashSet::new();
        for pod in in_namespace {
            if !shapes.insert(Arc::as_ptr(&pod.shape)) {
                continue;
            }
            let workload = workload_of(namespace, &pod.shape);
            let running = running_digests(&pod.shape);
            for request in verification::requests(snapshot, &workload, None, &labels) {
                let same = workload.images.iter().enumerate();
                for (i, _) in same.filter(|(_, image)| image.image == request.image) {
                    let reference = audited_reference(&request.reference, running[i].as_deref());
                    let key = reference.canonical().to_owned();
                    let at = *by_key.entry(key.clone()).or_insert_with(|| {
                        out.push(EvidenceRequest {
                            image: key,
                            reference,
                            checks: Vec::new(),
                        });
                        out.len() - 1
                    });
                    let checks = &mut out[at].checks;
                    for check in &request.checks {
                        if !checks.iter().any(|c| c.entry == check.entry) {
                            checks.push(check.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// The images of `gathered` whose digest or a signature entry the registry could not answer
/// for.
fn unavailable_images(gathered: &Evidence) -> u64 {
    let unavailable = gathered.images.values().filter(|e| {
        e.entries
            .values()
            .any(|x| matches!(x.outcome, Outcome::Unavailable { .. }))
    });
    unavailable.count() as u64
}

/// The evidence of one Pod shape, keyed by image as written (as the decision reads it), from
/// what a pass gathered. Where one image is written twice and runs two digests, the first
/// container's counts, and the other fails closed (its digest is not the one verified).
fn shape_evidence(
    snapshot: &Snapshot,
    workload: &Workload,
    running: &[Option<String>],
    gathered: &Evidence,
) -> Evidence {
    let mut out = Evidence::default();
    for (image, running) in workload.images.iter().zip(running) {
        if out.images.contains_key(&image.image) {
            continue;
        }
        if let ResolvedImage::Valid { reference, .. } = &*snapshot.resolve(&image.image)
            && let Some(found) = gathered
                .images
                .get(&evidence_key(reference, running.as_deref()))
        {
            out.images.insert(image.image.clone(), found.clone());
        }
    }
    out
}

fn evaluate(
    snapshot: &Snapshot,
    applying: &[usize],
    labels: &Labels,
    pod: &PodEntry,
    now: jiff::Timestamp,
    gathered: Option<&Evidence>,
) -> Evaluated {
    let shape = &pod.shape;
    let workload = workload_of(&pod.namespace, shape);
    let requester = shape
        .owner
        .as_ref()
        .and_then(|o| o.creator)
        .map(controller_requester);
    let running = running_digests(shape);
    let evidence = gathered
        .filter(|_| snapshot.has_signature_rules())
        .map(|g| shape_evidence(snapshot, &workload, &running, g));
    let decision = decision::decide_running(
        snapshot,
        &Input {
            object: &workload,
            old_object: None,
            namespace_labels: labels,
            requester: requester.as_ref(),
            now,
            evidence: evidence.as_ref(),
        },
        &running,
    );
    let mut violating: Vec<usize> = decision
        .violations
        .iter()
        .filter(|v| !v.excused)
        .filter_map(|v| v.policy_index)
        .collect();
    violating.sort_unstable();
    violating.dedup();
    let unmatched = decision
        .violations
        .iter()
        .any(|v| v.policy_index.is_none() && !v.excused);

    let mut notes = Vec::new();
    let mut local_images = Vec::new();
    for image in &shape.images {
        let Running::Local(id) = &image.running else {
            continue;
        };
        let resolved = snapshot.resolve(&image.image);
        let ResolvedImage::Valid { matches, .. } = &*resolved else {
            continue;
        };
        let before = local_images.len();
        local_images.extend(applying.iter().copied().filter(|&pi| matches.governed(pi)));
        if local_images.len() > before {
            notes.push(format!(
                "{} {:?}: the node reports only the local image ID {id} (an image built or loaded on the node, without a registry digest), so what runs could not be compared with {:?}",
                image.container_type.noun(),
                image.container,
                image.image
            ));
        }
    }
    local_images.sort_unstable();
    local_images.dedup();
    Evaluated {
        decision,
        notes,
        violating,
        unmatched,
        local_images,
    }
}

fn account(outcome: &mut AuditOutcome, applying: &[usize], pod: &PodEntry, e: &Evaluated) {
    outcome.pods_evaluated += 1;
    for &pi in applying {
        outcome.policies[pi].pods_evaluated += 1;
    }
    for &pi in &e.local_images {
        outcome.policies[pi].pods_with_local_images += 1;
    }
    for &pi in &e.violating {
        outcome.policies[pi].violating_pods += 1;
    }
    if let Some(unmatched) = &mut outcome.unmatched {
        unmatched.pods_evaluated += 1;
        if e.unmatched {
            unmatched.violating_pods += 1;
        }
    }
    let owner = pod.shape.owner.as_ref().map(pods::Owner::display);
    for v in e.decision.violations.iter().filter(|v| !v.excused) {
        let target = match v.policy_index {
            Some(pi) => &mut outcome.policies[pi],
            None => match &mut outcome.unmatched {
                Some(u) => u,
                None => continue,
            },
        };
        let key = SampleKey {
            namespace: Arc::clone(&pod.namespace),
            workload: owner.clone().unwrap_or_else(|| pod.name.to_string()),
            container_type: v.container_type,
            container: v.container.clone(),
            rule: v.rule.as_str(),
            image: v.image.clone(),
        };
        target.sample(key, || sample(pod, owner.as_deref(), v));
    }
}

fn sample(pod: &PodEntry, owner: Option<&str>, v: &Violation) -> AuditViolation {
    AuditViolation {
        namespace: pod.namespace.to_string(),
        pod: pod.name.to_string(),
        owner: owner.map(str::to_owned),
        container_type: v.container_type.as_str().to_owned(),
        container: v.container.clone(),
        image: v.image.clone(),
        rule: v.rule.as_str().to_owned(),
        message: v.message.clone(),
    }
}

/// Whether a policy's `status.audit` (`current`) must be replaced by `desired`: when what they
/// say differs apart from the time, or when `current` is `refresh` old or older (so that
/// `lastAuditTime` says the audit is alive, without a write per pass).
pub fn needs_write(
    current: Option<&AuditStatus>,
    desired: &AuditStatus,
    refresh: Duration,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    let same = AuditStatus {
        last_audit_time: desired.last_audit_time.clone(),
        ..current.clone()
    } == *desired;
    let fresh = match (&current.last_audit_time, &desired.last_audit_time) {
        (Some(Time(then)), Some(Time(now))) => {
            now.duration_since(*then) < jiff::SignedDuration::try_from(refresh).unwrap_or_default()
        }
        _ => false,
    };
    !(same && fresh)
}

#[cfg(test)]
mod tests;
