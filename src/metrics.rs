//! Prometheus metrics, all in one `prometheus-client` registry with the prefix `imagegate_`.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `imagegate_admissions_total` | counter | `endpoint` (validate, mutate, imagereview), `result` (allowed, denied, skipped, bad_request) |
//! | `imagegate_decisions_total` | counter | `policy`, `mode`, `result` (allowed, denied, warned, audited, excused): one per applying policy per decision |
//! | `imagegate_violations_total` | counter | `rule`, `mode` |
//! | `imagegate_break_glass_total` | counter | `policy` |
//! | `imagegate_pods_mutated_total` | counter | `change` (pullPolicy, digest): Pods whose patch made that change |
//! | `imagegate_request_duration_seconds` | histogram | `endpoint` |
//! | `imagegate_policies` | gauge | – policies in force |
//! | `imagegate_policy_errors` | gauge | – policies left out because they do not compile |
//! | `imagegate_snapshot_created_timestamp_seconds` | gauge | – when the snapshot in force was built (age = `time() - …`) |
//! | `imagegate_certificate_not_after_timestamp_seconds` | gauge | – when the serving certificate expires |
//! | `imagegate_audit_violating_pods` | gauge | `policy`, `mode`: running Pods that violate the policy, as the last audit pass found |
//! | `imagegate_audit_pods` | gauge | – Pods the last audit pass decided |
//! | `imagegate_audit_passes_total` | counter | – audit passes run |
//! | `imagegate_audit_last_pass_timestamp_seconds` | gauge | – when the last audit pass ran |
//! | `imagegate_signature_verifications_total` | counter | `result` (verified, not_verified, unavailable), `source` (fresh, cache, stale): one per signature entry judged for an image |
//! | `imagegate_registry_request_duration_seconds` | histogram | `registry`, `outcome` (ok, not_found, unauthorized, client_error, server_error, error) |
//! | `imagegate_registry_cache_entries` | gauge | `cache` (tags, signatures) |

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::decision::{Decision, Verdict};
use crate::evidence::{Outcome, Source};
use crate::mutation::{Change, Plan};
use crate::policy::Mode;

/// Request latency buckets: 100 µs doubling to about 3.3 s. A decision takes microseconds; the
/// upper buckets catch namespace lookups and overload, up to the API server's webhook timeout.
const LATENCY_BUCKET_START_SECONDS: f64 = 0.000_1;
const LATENCY_BUCKET_FACTOR: f64 = 2.0;
const LATENCY_BUCKET_COUNT: u16 = 16;

/// Registry request latency buckets: 1 ms doubling to about 16 s. A registry on the same
/// network answers in milliseconds; the upper buckets catch slow registries up to the request
/// timeout.
const REGISTRY_BUCKET_START_SECONDS: f64 = 0.001;
const REGISTRY_BUCKET_COUNT: u16 = 15;
/// At most this many registries get series of their own; requests to any further registry are
/// counted under `registry="other"`. Which registries are asked depends on the images that Pods
/// name, so the label's values must be bounded.
pub const MAX_REGISTRY_LABELS: usize = 64;

/// The HTTP endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Endpoint {
    validate,
    imagereview,
    mutate,
}

impl Endpoint {
    const COUNT: usize = 3;
}

/// What became of one admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AdmissionResult {
    /// Checked and admitted.
    allowed,
    /// Checked and denied (fail-closed denials of unreadable objects included).
    denied,
    /// A kind, subresource or operation imagegate does not check: admitted unchecked.
    skipped,
    /// Not a valid review: answered with HTTP 4xx.
    bad_request,
}

impl AdmissionResult {
    const COUNT: usize = 4;
}

/// What one policy made of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PolicyResult {
    allowed,
    denied,
    warned,
    audited,
    excused,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdmissionLabels {
    endpoint: Endpoint,
    result: AdmissionResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    mode: &'static str,
    result: PolicyResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ViolationLabels {
    rule: &'static str,
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuditLabels {
    policy: String,
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChangeLabel {
    change: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: Endpoint,
}

/// The result of one signature entry for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum VerificationResult {
    verified,
    not_verified,
    unavailable,
}

/// Where a signature outcome came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum VerificationSource {
    fresh,
    cache,
    stale,
}

/// How one registry request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RegistryOutcome {
    /// 2xx (and 3xx not followed).
    ok,
    /// 404.
    not_found,
    /// 401 or 403 (a 401 before a token is fetched is the normal Bearer handshake).
    unauthorized,
    /// Another 4xx.
    client_error,
    /// 5xx.
    server_error,
    /// No answer: refused, TLS failure, timeout, a redirect refused.
    error,
}

impl RegistryOutcome {
    /// The outcome of an answer with `status`.
    pub fn of_status(status: u16) -> RegistryOutcome {
        match status {
            404 => RegistryOutcome::not_found,
            401 | 403 => RegistryOutcome::unauthorized,
            400..=499 => RegistryOutcome::client_error,
            500..=599 => RegistryOutcome::server_error,
            _ => RegistryOutcome::ok,
        }
    }
}

/// One of the registry adapter's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RegistryCache {
    /// Tag resolutions.
    tags,
    /// Signature outcomes (per repository, digest and verifier).
    signatures,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerificationLabels {
    result: VerificationResult,
    source: VerificationSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RegistryRequestLabels {
    registry: String,
    outcome: RegistryOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabel {
    cache: RegistryCache,
}

type LatencyFamily = Family<EndpointLabel, Histogram, fn() -> Histogram>;
type RegistryLatencyFamily = Family<RegistryRequestLabels, Histogram, fn() -> Histogram>;

/// The metrics of one process. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    violations: Family<ViolationLabels, Counter>,
    break_glass: Family<PolicyLabel, Counter>,
    pods_mutated: Family<ChangeLabel, Counter>,
    latency: LatencyFamily,
    /// The series of `admissions` and `latency` that every request updates, by endpoint and
    /// result, each taken from its family the first time it is used (so the exposition is the
    /// same as without them): a request then updates them without a lock or a hash.
    admission_series: [[OnceLock<Counter>; AdmissionResult::COUNT]; Endpoint::COUNT],
    latency_series: [OnceLock<Histogram>; Endpoint::COUNT],
    policies: Gauge,
    policy_errors: Gauge,
    snapshot_created: Gauge<f64, AtomicU64>,
    cert_not_after: Gauge<f64, AtomicU64>,
    audit_violating: Family<AuditLabels, Gauge>,
    audit_pods: Gauge,
    audit_passes: Counter,
    audit_last_pass: Gauge<f64, AtomicU64>,
    signature_verifications: Family<VerificationLabels, Counter>,
    registry_latency: RegistryLatencyFamily,
    /// The registries that have series of their own (at most [`MAX_REGISTRY_LABELS`]).
    registry_labels: Mutex<HashSet<String>>,
    registry_cache_entries: Family<CacheLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        LATENCY_BUCKET_START_SECONDS,
        LATENCY_BUCKET_FACTOR,
        LATENCY_BUCKET_COUNT,
    ))
}

fn registry_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        REGISTRY_BUCKET_START_SECONDS,
        LATENCY_BUCKET_FACTOR,
        REGISTRY_BUCKET_COUNT,
    ))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("imagegate");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let violations = Family::<ViolationLabels, Counter>::default();
        let break_glass = Family::<PolicyLabel, Counter>::default();
        let pods_mutated = Family::<ChangeLabel, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let policies = Gauge::default();
        let policy_errors = Gauge::default();
        let snapshot_created = Gauge::<f64, AtomicU64>::default();
        let cert_not_after = Gauge::<f64, AtomicU64>::default();
        let audit_violating = Family::<AuditLabels, Gauge>::default();
        let audit_pods = Gauge::default();
        let audit_passes = Counter::default();
        let audit_last_pass = Gauge::<f64, AtomicU64>::default();
        let signature_verifications = Family::<VerificationLabels, Counter>::default();
        let registry_latency: RegistryLatencyFamily =
            Family::new_with_constructor(registry_latency_histogram);
        let registry_cache_entries = Family::<CacheLabel, Gauge>::default();
        registry.register(
            "admissions",
            "Admission requests by endpoint and result",
            admissions.clone(),
        );
        registry.register(
            "decisions",
            "Decisions by applying policy, its mode and what it made of the object",
            decisions.clone(),
        );
        registry.register(
            "violations",
            "Policy violations by rule and mode",
            violations.clone(),
        );
        registry.register(
            "break_glass",
            "Honoured break-glass exceptions by policy",
            break_glass.clone(),
        );
        registry.register(
            "pods_mutated",
            "Pods the mutating webhook changed, by change (pullPolicy, digest)",
            pods_mutated.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's body being read to its answer",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        registry.register("policies", "Policies in force", policies.clone());
        registry.register(
            "policy_errors",
            "Policies left out of the snapshot because they do not compile",
            policy_errors.clone(),
        );
        registry.register(
            "snapshot_created_timestamp_seconds",
            "When the policy snapshot in force was built (Unix time)",
            snapshot_created.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "When the serving certificate expires (Unix time; 0 when none is loaded)",
            cert_not_after.clone(),
        );
        registry.register(
            "audit_violating_pods",
            "Running Pods that violate a policy, as the last audit pass found, by policy and mode",
            audit_violating.clone(),
        );
        registry.register(
            "audit_pods",
            "Pods the last audit pass decided",
            audit_pods.clone(),
        );
        registry.register("audit_passes", "Audit passes run", audit_passes.clone());
        registry.register(
            "audit_last_pass_timestamp_seconds",
            "When the last audit pass ran (Unix time; 0 before the first)",
            audit_last_pass.clone(),
        );
        registry.register(
            "signature_verifications",
            "Signature entries judged for an image, by result and by where the outcome came from",
            signature_verifications.clone(),
        );
        registry.register_with_unit(
            "registry_request_duration",
            "Time of one request to a registry (or its token service), by registry and outcome",
            prometheus_client::registry::Unit::Seconds,
            registry_latency.clone(),
        );
        registry.register(
            "registry_cache_entries",
            "Entries in the registry adapter's caches",
            registry_cache_entries.clone(),
        );
        Metrics {
            registry,
            admissions,
            decisions,
            violations,
            break_glass,
            pods_mutated,
            latency,
            admission_series: Default::default(),
            latency_series: Default::default(),
            policies,
            policy_errors,
            snapshot_created,
            cert_not_after,
            audit_violating,
            audit_pods,
            audit_passes,
            audit_last_pass,
            signature_verifications,
            registry_latency,
            registry_labels: Mutex::new(HashSet::new()),
            registry_cache_entries,
        }
    }

    /// Sets how many running Pods violate `policy` (in `mode`).
    pub fn set_audit_violating_pods(&self, policy: &str, mode: Mode, pods: u64) {
        self.audit_violating
            .get_or_create(&AuditLabels {
                policy: policy.to_owned(),
                mode: mode.as_str(),
            })
            .set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// Removes the series of `policy` in `mode` (the policy is gone, or its mode changed).
    pub fn remove_audit_violating_pods(&self, policy: &str, mode: Mode) {
        self.audit_violating.remove(&AuditLabels {
            policy: policy.to_owned(),
            mode: mode.as_str(),
        });
    }

    /// Records an audit pass at `at` that decided `pods` Pods.
    pub fn set_audit_pass(&self, pods: u64, at: jiff::Timestamp) {
        self.audit_pods.set(i64::try_from(pods).unwrap_or(i64::MAX));
        self.audit_passes.inc();
        self.audit_last_pass.set(seconds(at));
    }

    /// Counts the outcome of one signature entry for one image (skipped ones are not counted:
    /// no registry was asked).
    pub fn record_signature_verification(&self, outcome: &Outcome, source: Source) {
        let result = match outcome {
            Outcome::Verified { .. } => VerificationResult::verified,
            Outcome::NotVerified { .. } => VerificationResult::not_verified,
            Outcome::Unavailable { .. } => VerificationResult::unavailable,
            Outcome::Skipped { .. } => return,
        };
        let source = match source {
            Source::Fresh => VerificationSource::fresh,
            Source::Cache => VerificationSource::cache,
            Source::Stale => VerificationSource::stale,
        };
        self.signature_verifications
            .get_or_create(&VerificationLabels { result, source })
            .inc();
    }

    /// Records one registry request's latency and outcome.
    pub fn record_registry_request(
        &self,
        registry: &str,
        outcome: RegistryOutcome,
        latency: std::time::Duration,
    ) {
        let registry = {
            let mut seen = self
                .registry_labels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if seen.contains(registry) {
                registry.to_owned()
            } else if seen.len() < MAX_REGISTRY_LABELS {
                seen.insert(registry.to_owned());
                registry.to_owned()
            } else {
                "other".to_owned()
            }
        };
        self.registry_latency
            .get_or_create(&RegistryRequestLabels { registry, outcome })
            .observe(latency.as_secs_f64());
    }

    /// Sets the number of entries in one of the registry adapter's caches.
    pub fn set_registry_cache_size(&self, cache: RegistryCache, entries: usize) {
        self.registry_cache_entries
            .get_or_create(&CacheLabel { cache })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Sets the number of policies in force.
    pub fn set_policy_count(&self, count: usize) {
        self.policies.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the number of policies that do not compile.
    pub fn set_policy_errors(&self, count: usize) {
        self.policy_errors
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets when the snapshot in force was built.
    pub fn set_snapshot_created(&self, at: jiff::Timestamp) {
        self.snapshot_created.set(seconds(at));
    }

    /// Sets when the serving certificate expires (`None`: no certificate).
    pub fn set_cert_not_after(&self, at: Option<jiff::Timestamp>) {
        self.cert_not_after.set(at.map_or(0.0, seconds));
    }

    /// Counts one honoured break-glass exception.
    pub fn record_break_glass(&self, policy: &str) {
        self.break_glass
            .get_or_create(&PolicyLabel {
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Counts one answered request and its latency.
    pub fn record_admission(
        &self,
        endpoint: Endpoint,
        result: AdmissionResult,
        latency: std::time::Duration,
    ) {
        self.admission_series[endpoint as usize][result as usize]
            .get_or_init(|| {
                self.admissions
                    .get_or_create(&AdmissionLabels { endpoint, result })
                    .clone()
            })
            .inc();
        self.latency_series[endpoint as usize]
            .get_or_init(|| {
                self.latency
                    .get_or_create(&EndpointLabel { endpoint })
                    .clone()
            })
            .observe(latency.as_secs_f64());
    }

    /// Counts a decision per applying policy, its violations and break-glass uses.
    pub fn record_decision(&self, decision: &Decision) {
        for p in &decision.policies {
            let mine = decision.violations.iter().filter(|v| v.policy == p.name);
            let mut result = PolicyResult::allowed;
            for v in mine {
                let this = if v.denies() {
                    PolicyResult::denied
                } else if v.excused {
                    PolicyResult::excused
                } else if v.unchanged || v.mode == Mode::Warn {
                    PolicyResult::warned
                } else {
                    PolicyResult::audited
                };
                result = result.max_severity(this);
            }
            self.decisions
                .get_or_create(&DecisionLabels {
                    policy: p.name.clone(),
                    mode: p.mode.as_str(),
                    result,
                })
                .inc();
        }
        for v in &decision.violations {
            self.violations
                .get_or_create(&ViolationLabels {
                    rule: v.rule.as_str(),
                    mode: v.mode.as_str(),
                })
                .inc();
        }
        for used in &decision.break_glass {
            self.record_break_glass(&used.policy);
        }
    }

    /// Counts a Pod whose patch changes it, once per kind of change the patch makes.
    pub fn record_mutation(&self, plan: &Plan) {
        for change in Change::ALL {
            if plan.applies(change) {
                self.pods_mutated
                    .get_or_create(&ChangeLabel {
                        change: change.as_str(),
                    })
                    .inc();
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl PolicyResult {
    fn rank(self) -> u8 {
        match self {
            PolicyResult::allowed => 0,
            PolicyResult::audited => 1,
            PolicyResult::warned => 2,
            PolicyResult::excused => 3,
            PolicyResult::denied => 4,
        }
    }

    fn max_severity(self, other: PolicyResult) -> PolicyResult {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// The overall verdict of a decision, as the `decision` audit annotation says it.
pub fn decision_label(decision: &Decision) -> &'static str {
    if !decision.allowed {
        return "denied";
    }
    let worst = decision
        .images
        .iter()
        .map(|i| i.verdict)
        .max_by_key(|v| match v {
            Verdict::Allowed => 0,
            Verdict::Audited => 1,
            Verdict::Warned => 2,
            Verdict::Excused => 3,
            Verdict::Denied => 4,
        });
    if !decision.break_glass.is_empty() {
        return "excused";
    }
    match worst {
        Some(Verdict::Warned) => "warned",
        Some(Verdict::Audited) => "audited",
        Some(Verdict::Excused) => "excused",
        _ => "allowed",
    }
}

fn seconds(at: jiff::Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix() {
        let m = Metrics::new();
        m.set_policy_count(3);
        m.record_break_glass("prod");
        m.record_admission(
            Endpoint::validate,
            AdmissionResult::denied,
            std::time::Duration::from_millis(1),
        );
        m.set_cert_not_after(Some(jiff::Timestamp::from_second(1_000).unwrap()));
        let text = m.encode();
        assert!(text.contains("imagegate_policies 3"), "{text}");
        assert!(
            text.contains("imagegate_break_glass_total{policy=\"prod\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imagegate_admissions_total{endpoint=\"validate\",result=\"denied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imagegate_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("imagegate_certificate_not_after_timestamp_seconds 1000"),
            "{text}"
        );
    }

    #[test]
    fn registry_metrics() {
        let m = Metrics::new();
        m.record_signature_verification(
            &Outcome::NotVerified { reason: "x".into() },
            Source::Cache,
        );
        m.record_signature_verification(&Outcome::Skipped { reason: "x".into() }, Source::Fresh);
        m.set_registry_cache_size(RegistryCache::signatures, 7);
        for i in 0..MAX_REGISTRY_LABELS + 2 {
            m.record_registry_request(
                &format!("r{i}.example"),
                RegistryOutcome::of_status(503),
                std::time::Duration::from_millis(3),
            );
        }
        let text = m.encode();
        assert!(
            text.contains(
                "imagegate_signature_verifications_total{result=\"not_verified\",source=\"cache\"} 1"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("imagegate_signature_verifications_total{")
                .count(),
            1
        );
        assert!(
            text.contains("imagegate_registry_cache_entries{cache=\"signatures\"} 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "imagegate_registry_request_duration_seconds_count{registry=\"r0.example\",outcome=\"server_error\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "imagegate_registry_request_duration_seconds_count{registry=\"other\",outcome=\"server_error\"} 2"
            ),
            "{text}"
        );
        assert_eq!(RegistryOutcome::of_status(200), RegistryOutcome::ok);
        assert_eq!(
            RegistryOutcome::of_status(401),
            RegistryOutcome::unauthorized
        );
        assert_eq!(RegistryOutcome::of_status(404), RegistryOutcome::not_found);
        assert_eq!(
            RegistryOutcome::of_status(429),
            RegistryOutcome::client_error
        );
    }

    #[test]
    fn request_series_appear_when_first_used_and_keep_counting() {
        let m = Metrics::new();
        assert!(!m.encode().contains("imagegate_admissions_total{"));
        let latency = std::time::Duration::from_micros(50);
        for _ in 0..3 {
            m.record_admission(Endpoint::validate, AdmissionResult::allowed, latency);
        }
        m.record_admission(Endpoint::imagereview, AdmissionResult::denied, latency);
        let text = m.encode();
        let mut series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("imagegate_admissions_total{"))
            .collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                "imagegate_admissions_total{endpoint=\"imagereview\",result=\"denied\"} 1",
                "imagegate_admissions_total{endpoint=\"validate\",result=\"allowed\"} 3",
            ],
            "{text}"
        );
        assert!(
            text.contains("imagegate_request_duration_seconds_count{endpoint=\"validate\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn pods_mutated_count_each_change_a_patch_makes() {
        use crate::mutation::{Mutation, Plan};
        use crate::workload::ContainerType;
        let change = |change, applied| Mutation {
            change,
            container_type: ContainerType::Containers,
            container: "app".into(),
            image: "nginx".into(),
            from: None,
            to: Some("x".into()),
            policy: "p".into(),
            mode: if applied { Mode::Enforce } else { Mode::Warn },
            applied,
            path: String::new(),
            image_index: 0,
        };
        let m = Metrics::new();
        let both = Plan {
            mutations: vec![
                change(Change::PullPolicy, true),
                change(Change::PullPolicy, true),
                change(Change::Digest, true),
            ],
            ..Plan::default()
        };
        let reported = Plan {
            mutations: vec![change(Change::Digest, false)],
            ..Plan::default()
        };
        m.record_mutation(&both);
        m.record_mutation(&reported);
        m.record_mutation(&Plan::default());
        let text = m.encode();
        assert!(
            text.contains("imagegate_pods_mutated_total{change=\"pullPolicy\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("imagegate_pods_mutated_total{change=\"digest\"} 1"),
            "{text}"
        );
    }
}
