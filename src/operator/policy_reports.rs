//! PolicyReports (`wgpolicyk8s.io/v1alpha2`, the Kubernetes Policy working group's report
//! format that Policy Reporter and similar tools read): the Rust type, written from the shape
//! of the published CRD, and the reports one audit pass makes, one per namespace.
//!
//! Each report is named `imagegate` and holds a result per Pod and applying policy: `fail` when
//! a violation no break-glass covers exists (whatever the policy's mode: the mode decides what
//! admission does, not whether the Pod complies), `warn` when a still-valid break-glass
//! exception covers every violation, `pass` otherwise. The rules broken are in `rule` and in
//! the property `rule`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::audit::{AUDIT_FIELD_MANAGER, CRD_RECHECK};
use super::status::truncate;
use crate::audit::{AuditOutcome, PodResult};
use crate::decision::{NO_POLICY, Violation};

/// The report's API group.
pub const GROUP: &str = "wgpolicyk8s.io";
/// The report's API version.
pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";
/// The report's kind.
pub const KIND: &str = "PolicyReport";
/// The name of imagegate's report in each namespace.
pub const REPORT_NAME: &str = "imagegate";
/// `source` of every result, and the value of the `app.kubernetes.io/managed-by` label.
pub const SOURCE: &str = "imagegate";
/// The label that marks imagegate's reports.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The most results one report lists: a result is about 400 bytes, so a report stays well
/// under the API server's 1.5 MiB object limit (and cheap to rewrite) however many Pods a
/// namespace has. Failures come first; `summary` counts every result, listed or not.
pub const MAX_RESULTS: usize = 1000;
/// The most bytes of a result's message: a Pod with many violations of one policy would
/// otherwise make one result as large as many.
pub const MAX_MESSAGE: usize = 1024;

/// A `wgpolicyk8s.io/v1alpha2` PolicyReport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The object the report is about; absent: the namespace's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ObjectReference>,
    #[serde(default)]
    pub summary: Summary,
    /// Always written, empty included: an apply without it would leave old results in place.
    #[serde(default)]
    pub results: Vec<ReportResult>,
}

impl k8s_openapi::Resource for PolicyReport {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = "v1alpha2";
    const URL_PATH_SEGMENT: &'static str = "policyreports";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for PolicyReport {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// How many results of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub pass: i64,
    #[serde(default)]
    pub fail: i64,
    #[serde(default)]
    pub warn: i64,
    #[serde(default)]
    pub error: i64,
    #[serde(default)]
    pub skip: i64,
}

/// The outcome of one policy for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Fail,
    Warn,
    Error,
    Skip,
    Pass,
}

/// When a result was found (protobuf `Timestamp` shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

impl From<jiff::Timestamp> for Timestamp {
    fn from(t: jiff::Timestamp) -> Self {
        Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }
    }
}

/// One result: a policy's outcome for one Pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    pub source: String,
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub result: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ObjectReference>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// The category of every result.
pub const CATEGORY: &str = "Image policy";

/// The report of `namespace` with `results` (already in order), found at `at`.
pub fn report(
    namespace: &str,
    mut results: Vec<ReportResult>,
    at: jiff::Timestamp,
) -> PolicyReport {
    let mut summary = Summary::default();
    for r in &results {
        *match r.result {
            Outcome::Pass => &mut summary.pass,
            Outcome::Fail => &mut summary.fail,
            Outcome::Warn => &mut summary.warn,
            Outcome::Error => &mut summary.error,
            Outcome::Skip => &mut summary.skip,
        } += 1;
    }
    results.truncate(MAX_RESULTS);
    let stamp = Timestamp::from(at);
    for r in &mut results {
        r.timestamp = Some(stamp);
    }
    PolicyReport {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: ObjectMeta {
            name: Some(REPORT_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                SOURCE.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        scope: None,
        summary,
        results,
    }
}

/// The results of a pass by namespace (a namespace where no policy applies to any Pod has
/// none), each list in
/// order: failures, then warnings, then passes; within each by Pod and policy. Timestamps are
/// left for [`report`].
pub fn results_by_namespace(outcome: &AuditOutcome) -> BTreeMap<String, Vec<ReportResult>> {
    let mut out: BTreeMap<String, Vec<ReportResult>> = BTreeMap::new();
    for pod in &outcome.pods {
        let decision = &pod.evaluated.decision;
        let mut policies: Vec<(&str, &str)> = decision
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.mode.as_str()))
            .collect();
        if decision.violations.iter().any(|v| v.policy == NO_POLICY) {
            policies.push((NO_POLICY, "Enforce"));
        }
        for (policy, mode) in policies {
            let mine: Vec<&Violation> = decision
                .violations
                .iter()
                .filter(|v| v.policy == policy)
                .collect();
            out.entry(pod.namespace.to_string())
                .or_default()
                .push(result(pod, policy, mode, &mine));
        }
    }
    for list in out.values_mut() {
        // Stable: Pods and policies are already in order.
        list.sort_by_key(|r| r.result);
    }
    out
}

fn result(pod: &PodResult, policy: &str, mode: &str, mine: &[&Violation]) -> ReportResult {
    let standing: Vec<&&Violation> = mine.iter().filter(|v| !v.excused).collect();
    let (outcome, shown): (Outcome, Vec<&&Violation>) = if !standing.is_empty() {
        (Outcome::Fail, standing)
    } else if !mine.is_empty() {
        (Outcome::Warn, mine.iter().collect())
    } else {
        (Outcome::Pass, Vec::new())
    };
    let mut rules: Vec<&str> = shown.iter().map(|v| v.rule.as_str()).collect();
    rules.dedup();
    let rules = rules.join(",");
    let mut properties = BTreeMap::from([("mode".to_owned(), mode.to_owned())]);
    if !rules.is_empty() {
        properties.insert("rule".to_owned(), rules.clone());
    }
    if let Some(owner) = &pod.owner {
        properties.insert("owner".to_owned(), owner.clone());
    }
    let used = pod
        .evaluated
        .decision
        .break_glass
        .iter()
        .find(|b| b.policy == policy);
    let message = match (outcome, used) {
        (Outcome::Pass, _) => "The Pod's images pass this policy.".to_owned(),
        (Outcome::Warn, Some(b)) => {
            properties.insert("breakGlass".to_owned(), b.ticket.clone());
            properties.insert("breakGlassUntil".to_owned(), b.until.to_string());
            format!(
                "Violations excused by break-glass {} until {}: {}",
                b.ticket,
                b.until,
                lines(&shown)
            )
        }
        _ => lines(&shown),
    };
    ReportResult {
        source: SOURCE.to_owned(),
        policy: policy.to_owned(),
        rule: (!rules.is_empty()).then_some(rules),
        result: outcome,
        message: Some(truncate(&message, MAX_MESSAGE)),
        scored: Some(true),
        category: Some(CATEGORY.to_owned()),
        resources: vec![ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            namespace: Some(pod.namespace.to_string()),
            name: Some(pod.name.to_string()),
            ..ObjectReference::default()
        }],
        properties,
        timestamp: None,
    }
}

fn lines(violations: &[&&Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("[{}] {}", v.rule, v.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A report's content apart from its timestamps: what decides whether it must be rewritten.
pub fn content_key(report: &PolicyReport) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut stripped = report.clone();
    for r in &mut stripped.results {
        r.timestamp = None;
    }
    // JSON text is a faithful, stable encoding of the whole report.
    serde_json::to_string(&stripped)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// Whether the PolicyReport CRD is installed, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crd {
    Unchecked,
    Absent(Instant),
    Present,
}

/// Writes the PolicyReports of each pass: creates, updates and empties them by server-side
/// apply, skipping a report whose content (timestamps apart) is what this process last wrote.
/// Writes nothing while the CRD is absent, and looks for it again every [`CRD_RECHECK`].
pub struct Writer {
    client: Client,
    crd: Crd,
    /// The content of the report this process last wrote, by namespace.
    written: HashMap<String, u64>,
    /// Namespaces that have imagegate's report: emptied, not forgotten, when their results go.
    known: BTreeSet<String>,
    /// How long an absent CRD is not looked for again.
    recheck: Duration,
}

impl Writer {
    /// A writer that has not looked for the CRD yet.
    pub fn new(client: Client) -> Writer {
        Writer {
            client,
            crd: Crd::Unchecked,
            written: HashMap::new(),
            known: BTreeSet::new(),
            recheck: CRD_RECHECK,
        }
    }

    /// Looks for an absent CRD again after `recheck` instead of [`CRD_RECHECK`].
    pub fn recheck_after(mut self, recheck: Duration) -> Writer {
        self.recheck = recheck;
        self
    }

    /// Brings every namespace's report in line with `outcome`; `namespaces` are those that
    /// exist. Returns whether every write succeeded.
    pub async fn sync(&mut self, outcome: &AuditOutcome, namespaces: &BTreeSet<String>) -> bool {
        match self.crd {
            Crd::Present => {}
            Crd::Absent(since) if since.elapsed() < self.recheck => return true,
            Crd::Absent(_) | Crd::Unchecked => match self.look_for_crd().await {
                Ok(true) => {}
                Ok(false) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list PolicyReports; retrying");
                    return false;
                }
            },
        }
        self.known.retain(|ns| namespaces.contains(ns));
        self.written.retain(|ns, _| namespaces.contains(ns));
        let mut desired = results_by_namespace(outcome);
        let targets: BTreeSet<String> = desired.keys().chain(&self.known).cloned().collect();
        let mut ok = true;
        for namespace in targets {
            let results = desired.remove(&namespace).unwrap_or_default();
            let report = report(&namespace, results, outcome.at);
            let key = content_key(&report);
            if self.written.get(&namespace) == Some(&key) {
                continue;
            }
            match self.apply(&report).await {
                Ok(()) => {
                    tracing::debug!(namespace = %namespace, results = report.results.len(), "PolicyReport written");
                    self.written.insert(namespace.clone(), key);
                    self.known.insert(namespace);
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    // The namespace went, or the CRD did.
                    match self.look_for_crd().await {
                        Ok(true) => {
                            self.known.remove(&namespace);
                        }
                        Ok(false) => return true,
                        Err(_) => ok = false,
                    }
                }
                Err(e) => {
                    ok = false;
                    tracing::warn!(namespace = %namespace, error = %e, "cannot write the PolicyReport");
                }
            }
        }
        ok
    }

    async fn apply(&self, report: &PolicyReport) -> Result<(), kube::Error> {
        let namespace = report.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<PolicyReport> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            REPORT_NAME,
            &PatchParams::apply(AUDIT_FIELD_MANAGER).force(),
            &Patch::Apply(report),
        )
        .await?;
        Ok(())
    }

    /// Lists imagegate's reports: whether the CRD is there, and where reports already are.
    async fn look_for_crd(&mut self) -> Result<bool, kube::Error> {
        match list_reports(self.client.clone()).await {
            Ok(found) => {
                if self.crd != Crd::Present {
                    tracing::info!(
                        existing = found.len(),
                        "the PolicyReport CRD ({API_VERSION}) is installed; writing a PolicyReport named {REPORT_NAME} per namespace"
                    );
                }
                self.crd = Crd::Present;
                self.known.extend(
                    found
                        .into_iter()
                        .filter(|(_, name)| name == REPORT_NAME)
                        .map(|(ns, _)| ns),
                );
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                if matches!(self.crd, Crd::Unchecked | Crd::Present) {
                    tracing::warn!(
                        "--policy-reports is on, but the PolicyReport CRD ({API_VERSION}) is not installed: no PolicyReports are written. Install it (Policy Reporter's or Kyverno's Helm chart brings it); imagegate looks for it again every {}s",
                        self.recheck.as_secs()
                    );
                }
                self.crd = Crd::Absent(Instant::now());
                self.written.clear();
                self.known.clear();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Lists the PolicyReports imagegate wrote, in every namespace, as (namespace, name); an API
/// error with code 404 when the CRD is not installed.
pub async fn list_reports(client: Client) -> Result<Vec<(String, String)>, kube::Error> {
    let api: Api<PolicyReport> = Api::all(client);
    let params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={SOURCE}"));
    let list = api.list_metadata(&params).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|m| Some((m.metadata.namespace?, m.metadata.name?)))
        .collect())
}
