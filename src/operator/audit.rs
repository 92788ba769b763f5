//! The audit in `imagegate run` (DESIGN §6.1): the Pod index kept by a watch of Pods, and the
//! passes that decide every Pod against the snapshot in force and write what they found.
//!
//! A pass runs once the policies, the namespaces and the Pods have been listed, then whenever
//! the snapshot is rebuilt, a namespace's labels change, and every `--audit-interval`. Changes
//! that come in a burst (a GitOps sync applying twenty policies) make one pass: a pass starts
//! [`AUDIT_DEBOUNCE`] after the first of them. The decisions run on a blocking thread, off the
//! runtime that serves admission.
//!
//! What a pass writes:
//!
//! - each policy's `status.audit`, by server-side apply with the field manager
//!   [`AUDIT_FIELD_MANAGER`], and only when what it says changed (the time apart) or its
//!   `lastAuditTime` is about one interval old: a pass over an unchanged cluster writes nothing
//!   but that refresh. The field manager is not the status writer's (`imagegate`): an apply
//!   removes the fields its manager owned and left out, so the conditions and the audit each
//!   have a manager of their own and never remove each other;
//! - the gauge `imagegate_audit_violating_pods{policy,mode}`;
//! - a Warning Event `AuditViolations` on a policy whose violating Pods go from none to some;
//! - with `--policy-reports`, one PolicyReport per namespace ([`policy_reports`]).
//!
//! Replicas audit side by side without a leader: each compares with the status the API server
//! holds, so the first replica to see a change writes it and the others find it written.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::index::Rebuilt;
use super::policy_reports;
use super::status::{EVENT_NOTE_LIMIT, truncate};
use super::{Error, RETRY_DELAY};
use crate::audit::{
    AuditOutcome, PodEntry, PodIndex, PodObject, PolicyAudit, audit_with, evidence_requests,
    needs_write,
};
use crate::evidence::{Deadline, Evidence, Gather};
use crate::gather::{NoRegistry, gather_each};
use crate::metrics::Metrics;
use crate::namespaces::{Labels, with_name_label};
use crate::policy::{AuditStatus, ImagePolicy, Mode, Snapshot};
use crate::state::{Readiness, SharedSnapshot};

/// The field manager of everything the audit writes (`status.audit`, PolicyReports).
pub const AUDIT_FIELD_MANAGER: &str = "imagegate-audit";
/// How long a pass waits after the first change that asks for it, so that a burst of changes
/// (a GitOps sync, a namespace relabelled by a script) makes one pass. Short next to the audit
/// interval, long next to the milliseconds between the events of one sync.
pub const AUDIT_DEBOUNCE: Duration = Duration::from_secs(2);
/// The default `--audit-interval`.
pub const DEFAULT_AUDIT_INTERVAL: Duration = Duration::from_secs(600);
/// The shortest `--audit-interval`: below it, passes over a large cluster would follow each
/// other with little rest, and `status.audit` refreshes would become frequent writes.
pub const MIN_AUDIT_INTERVAL: Duration = Duration::from_secs(30);
/// How often the first pass looks again whether the policies are loaded: readiness is set a
/// moment after the rebuild that announces it; a second is nothing next to the first list.
pub const READY_POLL: Duration = Duration::from_secs(1);
/// How long one pass may spend gathering signature evidence for what runs. A background pass
/// has no API server waiting on it, so it can wait far longer than an admission request for a
/// slow registry, but not so long that its findings come late: well under the default
/// `--audit-interval` (and the shortest, 30 s, is unaffected when the cache answers). What is
/// not found by then is reported as unavailable, and the lookups still running fill the
/// cache for the next pass.
pub const AUDIT_EVIDENCE_DEADLINE: Duration = Duration::from_secs(120);
/// How many images one pass looks up in a registry at once: enough to verify a few hundred
/// distinct images within a few seconds of a near registry, few enough that admission
/// requests, which share the registry client and its connections, never wait behind an
/// audit.
pub const AUDIT_LOOKUPS_AT_ONCE: usize = 8;

/// How often imagegate looks again for the PolicyReport CRD while it is absent, so that
/// installing it later takes effect without a restart. A list of one resource every few
/// minutes costs the API server nothing.
pub const CRD_RECHECK: Duration = Duration::from_secs(300);

/// How the audit runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// `--audit-interval`.
    pub interval: Duration,
    /// `--policy-reports`.
    pub policy_reports: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            interval: DEFAULT_AUDIT_INTERVAL,
            policy_reports: false,
        }
    }
}

impl AuditConfig {
    /// How old `lastAuditTime` may grow before a pass refreshes it although nothing changed:
    /// a little under one interval, so that each interval's pass refreshes it even when it
    /// starts a moment early.
    pub fn refresh(&self) -> Duration {
        self.interval.mul_f64(0.9)
    }
}

/// The Pod index shared by its watch and the passes. The watch holds the lock for one event;
/// a pass only to copy the list of Pods out.
pub type SharedPods = Arc<Mutex<PodIndex>>;

/// Feeds Pod watch events into `index` for as long as the process runs, and says on `ready`
/// once the first list is complete. Watch errors are logged and retried with backoff; the
/// index keeps what it has meanwhile.
pub async fn run_pod_index(client: Client, index: SharedPods, ready: watch::Sender<bool>) {
    let api: Api<PodObject> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let done = matches!(event, watcher::Event::InitDone);
                let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
                index.apply(event);
                if done {
                    tracing::debug!(pods = index.len(), "Pod index listed");
                    ready.send_if_modified(|r| !std::mem::replace(r, true));
                }
            }
            Err(e) => tracing::warn!(error = %e, "Pod watch failed; retrying"),
        }
    }
}

/// What a pass reads: the operator's stores and the Pod index.
#[derive(Clone)]
pub struct Sources {
    /// The policy snapshot in force.
    pub snapshot: SharedSnapshot,
    /// The ImagePolicies as the API server has them (their `status.audit` included).
    pub policies: Store<ImagePolicy>,
    /// The Namespaces, for their labels.
    pub namespaces: Store<Namespace>,
    /// The running Pods.
    pub pods: SharedPods,
}

/// Everything a pass reads and writes.
pub struct Auditor {
    client: Client,
    config: AuditConfig,
    sources: Sources,
    metrics: Arc<Metrics>,
    /// What this process last wrote to each policy's `status.audit` (by name, with the
    /// policy's uid), until the watch shows it.
    written: HashMap<String, (Option<String>, AuditStatus)>,
    /// The gauge's series set by the last pass.
    series: HashSet<(String, Mode)>,
    reports: Option<policy_reports::Writer>,
    /// Where signature evidence for what runs comes from (the registry adapter in `run`).
    evidence: Arc<dyn Gather>,
}

impl Auditor {
    /// An auditor over the stores the operator keeps.
    pub fn new(
        client: Client,
        config: AuditConfig,
        sources: Sources,
        metrics: Arc<Metrics>,
    ) -> Auditor {
        let reports = config
            .policy_reports
            .then(|| policy_reports::Writer::new(client.clone()));
        Auditor {
            client,
            config,
            sources,
            metrics,
            written: HashMap::new(),
            series: HashSet::new(),
            reports,
            evidence: Arc::new(NoRegistry),
        }
    }

    /// Gathers signature evidence from `evidence` (without it, every image a signature entry
    /// governs fails closed, saying no registry client is configured).
    pub fn with_evidence(mut self, evidence: Arc<dyn Gather>) -> Auditor {
        self.evidence = evidence;
        self
    }

    /// Looks for an absent PolicyReport CRD again after `recheck` instead of [`CRD_RECHECK`].
    pub fn crd_recheck(mut self, recheck: Duration) -> Auditor {
        self.reports = self.reports.map(|w| w.recheck_after(recheck));
        self
    }

    /// One pass: decides every indexed Pod and writes what changed. Returns whether every
    /// write succeeded (a failed one is retried by the next pass).
    pub async fn pass(&mut self) -> bool {
        let snapshot = self.sources.snapshot.load_full();
        let entries = self
            .sources
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries();
        let namespaces = self.sources.namespaces.clone();
        let keep_pods = self.reports.is_some();
        let started = std::time::Instant::now();
        let (snapshot, entries, evidence) = match self.gather_evidence(snapshot, entries).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "the audit pass failed");
                return false;
            }
        };
        let now = jiff::Timestamp::now();
        let decided = tokio::task::spawn_blocking(move || {
            audit_with(
                &snapshot,
                &entries,
                &|ns| labels_of(&namespaces, ns),
                now,
                keep_pods,
                evidence.as_ref(),
            )
        })
        .await;
        let outcome = match decided {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "the audit pass failed");
                return false;
            }
        };
        if outcome.signatures_unavailable > 0 {
            tracing::warn!(
                images = outcome.signatures_unavailable,
                "the registry could not answer for the signatures of some running images; they are reported as verifySignatures violations until it does"
            );
        }
        tracing::info!(
            pods = outcome.pods_evaluated,
            skipped = outcome.pods_skipped,
            signatures_unavailable = outcome.signatures_unavailable,
            policies = outcome.policies.len(),
            violating = outcome
                .all_policies()
                .filter(|p| p.violating_pods > 0)
                .count(),
            seconds = started.elapsed().as_secs_f64(),
            "audit pass"
        );
        self.metrics.set_audit_pass(outcome.pods_evaluated, now);
        self.set_gauge(&outcome);

        let mut ok = true;
        for found in &outcome.policies {
            match self.write_status(found, outcome.at).await {
                Ok(_) => {}
                Err(e) => {
                    ok = false;
                    tracing::warn!(policy = %found.name, error = %e, "cannot write the audit status");
                }
            }
        }
        if let Some(reports) = &mut self.reports {
            let existing: BTreeSet<String> = self
                .sources
                .namespaces
                .state()
                .iter()
                .map(|n| n.name_any())
                .collect();
            ok &= reports.sync(&outcome, &existing).await;
        }
        ok
    }

    /// The signature evidence of a pass over `entries`: none when no policy has signature
    /// entries; else gathered for each image at the digest it runs (see
    /// [`evidence_requests`]), a few at a time, within [`AUDIT_EVIDENCE_DEADLINE`]. The
    /// requests are worked out on a blocking thread, like the pass.
    async fn gather_evidence(
        &self,
        snapshot: Arc<Snapshot>,
        entries: Vec<PodEntry>,
    ) -> Result<(Arc<Snapshot>, Vec<PodEntry>, Option<Evidence>), tokio::task::JoinError> {
        if !snapshot.has_signature_rules() {
            return Ok((snapshot, entries, None));
        }
        let namespaces = self.sources.namespaces.clone();
        let (snapshot, entries, requests) = tokio::task::spawn_blocking(move || {
            let requests = evidence_requests(&snapshot, &entries, &|ns| labels_of(&namespaces, ns));
            (snapshot, entries, requests)
        })
        .await?;
        let deadline = Deadline::after(AUDIT_EVIDENCE_DEADLINE);
        let evidence =
            gather_each(&*self.evidence, &requests, deadline, AUDIT_LOOKUPS_AT_ONCE).await;
        Ok((snapshot, entries, Some(evidence)))
    }

    fn set_gauge(&mut self, outcome: &AuditOutcome) {
        let mut now = HashSet::new();
        for p in outcome.all_policies() {
            self.metrics
                .set_audit_violating_pods(&p.name, p.mode, p.violating_pods);
            now.insert((p.name.clone(), p.mode));
        }
        for (policy, mode) in self.series.difference(&now) {
            self.metrics.remove_audit_violating_pods(policy, *mode);
        }
        self.series = now;
    }

    /// Writes one policy's `status.audit` when it needs it; returns whether it wrote.
    async fn write_status(
        &mut self,
        found: &PolicyAudit,
        at: jiff::Timestamp,
    ) -> Result<bool, Error> {
        // Gone meanwhile, or left out of the snapshot: nothing to write on.
        let Some(policy) = self.sources.policies.get(&ObjectRef::new(&found.name)) else {
            return Ok(false);
        };
        let uid = policy.metadata.uid.clone();
        let stored = policy.status.as_ref().and_then(|s| s.audit.as_ref());
        let mine = self
            .written
            .get(&found.name)
            .filter(|(written_uid, _)| *written_uid == uid)
            .map(|(_, status)| status);
        let current = newest(stored, mine);
        let desired = found.status(at);
        if !needs_write(current, &desired, self.config.refresh()) {
            return Ok(false);
        }
        let before = current.map_or(0, |c| c.violating_pods);
        let api: Api<ImagePolicy> = Api::all(self.client.clone());
        api.patch_status(
            &found.name,
            &PatchParams::apply(AUDIT_FIELD_MANAGER).force(),
            &Patch::Apply(apply_body(&found.name, &desired)),
        )
        .await?;
        self.written
            .insert(found.name.clone(), (uid, desired.clone()));
        if before == 0 && desired.violating_pods > 0 {
            self.publish_event(&policy, &desired).await;
        }
        Ok(true)
    }

    async fn publish_event(&self, policy: &ImagePolicy, status: &AuditStatus) {
        let event = Event {
            type_: EventType::Warning,
            reason: "AuditViolations".to_owned(),
            note: Some(event_note(status)),
            action: "Audit".to_owned(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), super::FIELD_MANAGER.into());
        if let Err(e) = recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(policy = %policy.name_any(), error = %e, "cannot publish the audit event");
        }
    }
}

/// The later of two `status.audit`s by `lastAuditTime`; the API server's on a tie.
fn newest<'a>(
    stored: Option<&'a AuditStatus>,
    mine: Option<&'a AuditStatus>,
) -> Option<&'a AuditStatus> {
    match (stored, mine) {
        (Some(s), Some(m)) if m.last_audit_time > s.last_audit_time => Some(m),
        (Some(s), _) => Some(s),
        (None, m) => m,
    }
}

/// The server-side apply body of `status.audit` alone.
pub fn apply_body(name: &str, audit: &AuditStatus) -> serde_json::Value {
    json!({
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": { "name": name },
        "status": { "audit": audit },
    })
}

/// The note of the Event on a policy whose running Pods went from none to some violating.
pub fn event_note(status: &AuditStatus) -> String {
    let pods = status.violating_pods;
    let mut note = format!(
        "The audit found {pods} running Pod{} violating this policy",
        if pods == 1 { "" } else { "s" }
    );
    if let Some(v) = status.violations.first() {
        let owner = v
            .owner
            .as_deref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        note.push_str(&format!(
            ", e.g. Pod {}/{}{owner}: [{}] {}",
            v.namespace, v.pod, v.rule, v.message
        ));
    } else {
        note.push('.');
    }
    note.push_str(" See status.audit of the policy.");
    truncate(&note, EVENT_NOTE_LIMIT)
}

fn labels_of(store: &Store<Namespace>, namespace: &str) -> Option<Labels> {
    store
        .get(&ObjectRef::new(namespace))
        .map(|ns| with_name_label(namespace, ns.metadata.labels.clone().unwrap_or_default()))
}

/// Why the audit should run another pass.
pub struct Triggers {
    /// A new value after every snapshot rebuild.
    pub rebuilt: watch::Receiver<Rebuilt>,
    /// A new value whenever a namespace's labels change.
    pub namespaces: watch::Receiver<u64>,
    /// True once the Pod index has its first list.
    pub pods_ready: watch::Receiver<bool>,
    /// Says when the first list of policies is in.
    pub readiness: Arc<Readiness>,
}

/// Runs passes for as long as the process runs: the first once policies, namespaces and Pods
/// are listed, then on every trigger (debounced) and every interval; a pass whose writes
/// failed is repeated after [`RETRY_DELAY`].
pub async fn run_audit(mut auditor: Auditor, mut triggers: Triggers) {
    if triggers.pods_ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    if auditor.sources.namespaces.wait_until_ready().await.is_err() {
        return;
    }
    // The index marks the policies loaded just after the rebuild it announces: look again a
    // moment later rather than wait for a rebuild that may never come.
    while !triggers.readiness.policies_loaded() {
        tokio::select! {
            r = triggers.rebuilt.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(READY_POLL) => {}
        }
    }
    let interval = auditor.config.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        triggers.rebuilt.borrow_and_update();
        triggers.namespaces.borrow_and_update();
        let retry = !auditor.pass().await;
        tokio::select! {
            _ = tokio::time::sleep(RETRY_DELAY), if retry => {}
            _ = tick.tick() => {}
            r = triggers.rebuilt.changed() => {
                if r.is_err() { return }
                tokio::time::sleep(AUDIT_DEBOUNCE).await;
            }
            r = triggers.namespaces.changed() => {
                if r.is_err() { return }
                tokio::time::sleep(AUDIT_DEBOUNCE).await;
            }
        }
    }
}

/// Starts the Pod index and the audit passes; they run for the life of the process.
/// Signature evidence for what runs comes from `evidence` (the registry adapter, whose cache
/// admission shares).
pub fn start(
    client: Client,
    config: AuditConfig,
    state: AuditState,
    metrics: Arc<Metrics>,
    evidence: Arc<dyn Gather>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let pods: SharedPods = Arc::new(Mutex::new(PodIndex::new()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let auditor = Auditor::new(
        client.clone(),
        config,
        Sources {
            snapshot: state.snapshot,
            policies: state.policies,
            namespaces: state.namespaces,
            pods: Arc::clone(&pods),
        },
        metrics,
    )
    .with_evidence(evidence);
    let triggers = Triggers {
        rebuilt: state.rebuilt,
        namespaces: state.namespace_changes,
        pods_ready: ready_rx,
        readiness: state.readiness,
    };
    vec![
        tokio::spawn(run_pod_index(client, pods, ready_tx)),
        tokio::spawn(run_audit(auditor, triggers)),
    ]
}

/// What the audit reads of the operator's state.
pub struct AuditState {
    pub snapshot: SharedSnapshot,
    pub readiness: Arc<Readiness>,
    pub policies: Store<ImagePolicy>,
    pub rebuilt: watch::Receiver<Rebuilt>,
    pub namespaces: Store<Namespace>,
    pub namespace_changes: watch::Receiver<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AuditViolation;

    #[test]
    fn event_note_names_the_count_and_an_example() {
        let mut status = AuditStatus {
            violating_pods: 3,
            ..AuditStatus::default()
        };
        assert_eq!(
            event_note(&status),
            "The audit found 3 running Pods violating this policy. See status.audit of the policy."
        );
        status.violations.push(AuditViolation {
            namespace: "shop".into(),
            pod: "web-1".into(),
            owner: Some("ReplicaSet/web-7d".into()),
            rule: "allowedImages".into(),
            message: "x".repeat(2000),
            ..AuditViolation::default()
        });
        let note = event_note(&status);
        assert!(
            note.starts_with("The audit found 3 running Pods violating this policy, e.g. Pod shop/web-1 (ReplicaSet/web-7d): [allowedImages] xxx"),
            "{note}"
        );
        assert!(note.len() <= EVENT_NOTE_LIMIT);
    }

    #[test]
    fn newest_status_wins() {
        let at = |s: i64| AuditStatus {
            last_audit_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(s).unwrap(),
            )),
            ..AuditStatus::default()
        };
        let (old, new) = (at(1), at(2));
        assert_eq!(newest(Some(&old), Some(&new)), Some(&new));
        assert_eq!(newest(Some(&new), Some(&old)), Some(&new));
        assert_eq!(newest(None, Some(&old)), Some(&old));
        assert_eq!(newest(Some(&old), None), Some(&old));
    }

    #[test]
    fn refresh_is_a_little_under_the_interval() {
        let config = AuditConfig::default();
        assert_eq!(config.refresh(), Duration::from_secs(540));
    }
}
