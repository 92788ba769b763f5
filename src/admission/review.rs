//! `AdmissionReview` (`admission.k8s.io/v1`): what the API server asks on `POST /validate`, and
//! the answer. The request envelope is read with `object` and `oldObject` left as raw JSON; only
//! the kinds imagegate checks are then read, and only as far as a decision needs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json_line::JsonLine;
use super::{
    BadRequest, MAX_AUDIT_ANNOTATION_CHARS, MAX_CAUSES, MAX_MESSAGE_CHARS, client_warnings,
    truncate,
};
use crate::decision::{AppliedPolicy, Decision, Input, Requester, decide};
use crate::evidence::{Evidence, EvidenceRequest};
use crate::metrics::{AdmissionResult, decision_label};
use crate::namespaces::Labels;
use crate::policy::crd::GROUP as POLICY_GROUP;
use crate::policy::{ImagePolicy, Snapshot, validate};
use crate::skim::{Skim, Skimmed};
use crate::verification;
use crate::workload::{Workload, WorkloadKind, WorkloadObject};

/// The only AdmissionReview version imagegate speaks.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The kind of the review.
pub const KIND: &str = "AdmissionReview";
const WHAT: &str = "admission.k8s.io/v1 AdmissionReview";

/// The review envelope; `O` is how `object` and `oldObject` are read (see
/// [`parse_admission_review`]).
#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct ReviewIn<O> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: Option<RequestIn<O>>,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize, Default, Debug, PartialEq)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    groups: Option<Vec<String>>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct RequestIn<O> {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    user_info: Option<UserInfo>,
    #[serde(default)]
    object: Option<O>,
    #[serde(default)]
    old_object: Option<O>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// What a request asks imagegate to check.
#[derive(Debug, Clone)]
pub enum Target {
    /// A kind, subresource or operation that imagegate does not check: admitted; the reason.
    Skip(&'static str),
    /// A Pod or workload; `old` on UPDATE.
    Workload {
        kind: WorkloadKind,
        object: Workload,
        old: Option<Workload>,
    },
    /// An ImagePolicy to validate.
    Policy(Box<ImagePolicy>),
    /// The object cannot be read: denied with this reason (fail closed).
    Unreadable(String),
}

/// One AdmissionReview request, read.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub uid: String,
    /// `request.kind.group` and `.kind`, e.g. `apps`, `Deployment`.
    pub group: String,
    pub version: String,
    pub kind: String,
    pub sub_resource: String,
    /// `request.name`, else the object's name or `generateName`.
    pub name: String,
    /// `request.namespace`, else the object's, else `default`.
    pub namespace: String,
    pub operation: String,
    pub requester: Requester,
    pub dry_run: bool,
    pub target: Target,
}

/// Reads an AdmissionReview body. Only a body that is not an AdmissionReview with a `uid`,
/// `kind` and `operation` is an error; an unreadable object is a [`Target::Unreadable`].
pub fn parse_admission_review(body: &[u8]) -> Result<AdmissionRequest, BadRequest> {
    // Fast path: the envelope and the object skimmed in one pass, every field a decision does
    // not need jumped over (see `crate::skim`). It serves Pods and workloads; anything else
    // (ImagePolicies, other kinds, bodies the skimmer gives up on) takes the careful path, which
    // reads the envelope with serde_json, then the object, and says what is wrong.
    //
    // The body is checked to be UTF-8 once, with the standard library's fast validation, so
    // that neither reader need check every string again.
    let text = utf8(body)?;
    if let Ok(review) = skim_review(text)
        && let Some(request) = &review.request
        && let Some(gvk) = &request.kind
        && WorkloadKind::from_group_kind(&gvk.group, &gvk.kind).is_some()
    {
        return from_review(review, |gvk, sub, op, object, old| {
            workload_target(gvk, sub, op, object, old, |kind, o: WorkloadObject| {
                Ok(o.into_workload(kind))
            })
        });
    }
    parse_carefully(text)
}

/// The review read with [`Skim`], the objects as [`WorkloadObject`]s: what
/// `serde_json::from_str::<ReviewIn<WorkloadObject>>` reads, or [`Decline`](crate::skim::Decline).
fn skim_review(text: &str) -> Skimmed<ReviewIn<WorkloadObject>> {
    let mut s = Skim::new(text);
    let mut out = ReviewIn {
        api_version: String::new(),
        kind: String::new(),
        request: None,
    };
    s.fields(&["apiVersion", "kind", "request"], |s, field| {
        match field {
            0 => out.api_version = s.owned_string()?,
            1 => out.kind = s.owned_string()?,
            _ => out.request = s.optional(skim_request)?,
        }
        Ok(())
    })?;
    s.finish()?;
    Ok(out)
}

fn skim_request(s: &mut Skim<'_>) -> Skimmed<RequestIn<WorkloadObject>> {
    let mut out = RequestIn {
        uid: None,
        kind: None,
        sub_resource: None,
        name: None,
        namespace: None,
        operation: None,
        user_info: None,
        object: None,
        old_object: None,
        dry_run: None,
    };
    let keys = [
        "uid",
        "kind",
        "subResource",
        "name",
        "namespace",
        "operation",
        "userInfo",
        "object",
        "oldObject",
        "dryRun",
    ];
    s.fields(&keys, |s, field| {
        match field {
            0 => out.uid = s.optional(Skim::owned_string)?,
            1 => out.kind = s.optional(skim_group_version_kind)?,
            2 => out.sub_resource = s.optional(Skim::owned_string)?,
            3 => out.name = s.optional(Skim::owned_string)?,
            4 => out.namespace = s.optional(Skim::owned_string)?,
            5 => out.operation = s.optional(Skim::owned_string)?,
            6 => out.user_info = s.optional(skim_user_info)?,
            7 => out.object = s.optional(WorkloadObject::skim)?,
            8 => out.old_object = s.optional(WorkloadObject::skim)?,
            _ => out.dry_run = s.optional(Skim::bool)?,
        }
        Ok(())
    })?;
    Ok(out)
}

fn skim_group_version_kind(s: &mut Skim<'_>) -> Skimmed<GroupVersionKind> {
    let mut out = GroupVersionKind::default();
    s.fields(&["group", "version", "kind"], |s, field| {
        match field {
            0 => out.group = s.owned_string()?,
            1 => out.version = s.owned_string()?,
            _ => out.kind = s.owned_string()?,
        }
        Ok(())
    })?;
    Ok(out)
}

fn skim_user_info(s: &mut Skim<'_>) -> Skimmed<UserInfo> {
    let mut out = UserInfo::default();
    s.fields(&["username", "groups"], |s, field| {
        match field {
            0 => out.username = s.optional(Skim::owned_string)?,
            _ => out.groups = s.optional(|s| s.list(Skim::owned_string))?,
        }
        Ok(())
    })?;
    Ok(out)
}

/// Reads an AdmissionReview body with `serde_json` alone: the envelope with the objects left
/// as raw JSON, then each object on its own. [`parse_admission_review`] answers the same for
/// every body that is JSON, faster; it is tested and fuzzed against this.
pub fn parse_admission_review_carefully(body: &[u8]) -> Result<AdmissionRequest, BadRequest> {
    let text = utf8(body)?;
    parse_carefully(text)
}

/// The body as text. `simdutf8` checks it with the CPU's widest compares (AVX2 where there is
/// one) at several times the speed of `std`'s check, which then only explains a body that is
/// not UTF-8.
fn utf8(body: &[u8]) -> Result<&str, BadRequest> {
    simdutf8::basic::from_utf8(body).map_err(|_| BadRequest::Malformed {
        expected: WHAT,
        message: match std::str::from_utf8(body) {
            Err(e) => format!("the body is not UTF-8: {e}"),
            Ok(_) => "the body is not UTF-8".to_owned(),
        },
    })
}

/// Reads the envelope with the objects left as raw JSON, then each object on its own.
fn parse_carefully(body: &str) -> Result<AdmissionRequest, BadRequest> {
    let review: ReviewIn<Box<RawValue>> =
        serde_json::from_str(body).map_err(|e| BadRequest::Malformed {
            expected: WHAT,
            message: e.to_string(),
        })?;
    from_review(review, target)
}

fn from_review<O>(
    review: ReviewIn<O>,
    target: impl FnOnce(&GroupVersionKind, &str, &str, Option<O>, Option<O>) -> Target,
) -> Result<AdmissionRequest, BadRequest> {
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(BadRequest::WrongType {
            expected_api_version: API_VERSION,
            expected_kind: KIND,
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let missing = |field| BadRequest::Missing {
        expected: WHAT,
        field,
    };
    let request = review.request.ok_or_else(|| missing("request"))?;
    let uid = request
        .uid
        .filter(|u| !u.is_empty())
        .ok_or_else(|| missing("request.uid"))?;
    let gvk = request
        .kind
        .filter(|k| !k.kind.is_empty())
        .ok_or_else(|| missing("request.kind"))?;
    let operation = request
        .operation
        .filter(|o| !o.is_empty())
        .ok_or_else(|| missing("request.operation"))?;
    let sub_resource = request.sub_resource.unwrap_or_default();
    let user = request.user_info.unwrap_or_default();
    let requester = Requester {
        username: user.username.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
    };

    let target = target(
        &gvk,
        &sub_resource,
        &operation,
        request.object,
        request.old_object,
    );
    let (object_name, object_namespace) = match &target {
        Target::Workload { object, .. } => (object.name.clone(), object.namespace.clone()),
        Target::Policy(p) => (p.metadata.name.clone().unwrap_or_default(), None),
        _ => (String::new(), None),
    };
    let name = request
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or(object_name);
    // ImagePolicies are cluster-scoped: they have no namespace to name.
    let default_namespace = if matches!(target, Target::Policy(_)) {
        ""
    } else {
        "default"
    };
    let namespace = request
        .namespace
        .filter(|n| !n.is_empty())
        .or(object_namespace)
        .unwrap_or_else(|| default_namespace.to_owned());
    Ok(AdmissionRequest {
        uid,
        group: gvk.group,
        version: gvk.version,
        kind: gvk.kind,
        sub_resource,
        name,
        namespace,
        operation,
        requester,
        dry_run: request.dry_run.unwrap_or(false),
        target,
    })
}

fn target(
    gvk: &GroupVersionKind,
    sub_resource: &str,
    operation: &str,
    object: Option<Box<RawValue>>,
    old_object: Option<Box<RawValue>>,
) -> Target {
    if gvk.group == POLICY_GROUP && gvk.kind == "ImagePolicy" {
        if operation != "CREATE" && operation != "UPDATE" {
            return Target::Skip("only CREATE and UPDATE are checked");
        }
        if !sub_resource.is_empty() {
            return Target::Skip("ImagePolicy subresources are not checked");
        }
        let Some(object) = object else {
            return Target::Unreadable("the request carries no ImagePolicy object".to_owned());
        };
        return match serde_json::from_str::<ImagePolicy>(object.get()) {
            Ok(p) => Target::Policy(Box::new(p)),
            Err(e) => Target::Unreadable(format!("cannot read the ImagePolicy: {e}")),
        };
    }
    workload_target(
        gvk,
        sub_resource,
        operation,
        object,
        old_object,
        |kind, o: Box<RawValue>| Workload::from_json(kind, o.get()).map_err(|e| e.to_string()),
    )
}

/// The target for a Pod or workload, reading its objects with `read`.
fn workload_target<O>(
    gvk: &GroupVersionKind,
    sub_resource: &str,
    operation: &str,
    object: Option<O>,
    old_object: Option<O>,
    read: impl Fn(WorkloadKind, O) -> Result<Workload, String>,
) -> Target {
    if operation != "CREATE" && operation != "UPDATE" {
        return Target::Skip("only CREATE and UPDATE are checked");
    }
    let Some(kind) = WorkloadKind::from_group_kind(&gvk.group, &gvk.kind) else {
        return Target::Skip("this kind has no images to check");
    };
    let checked_subresource = sub_resource.is_empty()
        || (kind == WorkloadKind::Pod && sub_resource == "ephemeralcontainers");
    if !checked_subresource {
        return Target::Skip("this subresource cannot change images");
    }
    let Some(object) = object else {
        return Target::Unreadable(format!(
            "the request carries no {} object to check",
            kind.as_str()
        ));
    };
    let object = match read(kind, object) {
        Ok(w) => w,
        Err(e) => return Target::Unreadable(e),
    };
    // On UPDATE only new or changed images may deny. An old object that cannot be read counts
    // as absent: every image is then checked, which can only deny more, never less.
    let old = if operation == "UPDATE" {
        old_object.and_then(|o| read(kind, o).ok())
    } else {
        None
    };
    Target::Workload { kind, object, old }
}

/// The result of checking one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not checked: admitted.
    Skipped(&'static str),
    /// A workload decision.
    Decided(Decision),
    /// A policy that compiles (`Ok`) or not (`Err`: field path and message).
    Policy(Result<(), crate::policy::CompileError>),
    /// Denied without a decision: the object or its namespace cannot be read.
    Refused(String),
}

impl Outcome {
    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        match self {
            Outcome::Skipped(_) => true,
            Outcome::Decided(d) => d.allowed,
            Outcome::Policy(r) => r.is_ok(),
            Outcome::Refused(_) => false,
        }
    }

    /// The result label for metrics.
    pub fn result(&self) -> AdmissionResult {
        match self {
            Outcome::Skipped(_) => AdmissionResult::skipped,
            _ if self.allowed() => AdmissionResult::allowed,
            _ => AdmissionResult::denied,
        }
    }

    /// The `decision` audit annotation and decision record value.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Skipped(_) => "skipped",
            Outcome::Decided(d) => decision_label(d),
            Outcome::Policy(Ok(())) => "allowed",
            Outcome::Policy(Err(_)) | Outcome::Refused(_) => "denied",
        }
    }
}

impl AdmissionRequest {
    /// The imagegate annotations of the object, for a Pod or workload.
    pub fn annotations(&self) -> Option<&BTreeMap<String, String>> {
        match &self.target {
            Target::Workload { object, .. } => Some(&object.annotations),
            _ => None,
        }
    }

    /// What the decision record says about this request besides the decision.
    pub fn record_context<'a>(
        &'a self,
        namespace_labels: Option<&'a Labels>,
        now: jiff::Timestamp,
        latency: std::time::Duration,
    ) -> super::record::RecordContext<'a> {
        super::record::RecordContext {
            endpoint: "validate",
            uid: &self.uid,
            kind: &self.kind,
            namespace: &self.namespace,
            name: &self.name,
            operation: &self.operation,
            requester: Some(&self.requester),
            dry_run: self.dry_run,
            namespace_labels,
            annotations: self.annotations(),
            now,
            latency,
            evidence: None,
        }
    }

    /// Whether [`decide`](Self::decide) needs the namespace's labels.
    pub fn needs_namespace_labels(&self) -> bool {
        matches!(self.target, Target::Workload { .. })
    }

    /// Decides the request without registry evidence (see [`decide_with`](Self::decide_with)).
    pub fn decide(
        &self,
        snapshot: &Snapshot,
        labels: Result<&Labels, &str>,
        now: jiff::Timestamp,
    ) -> Outcome {
        self.decide_with(snapshot, labels, now, None)
    }

    /// What the registry adapter must gather before [`decide_with`](Self::decide_with): empty
    /// for everything but a Pod or workload with images that signature entries govern.
    pub fn evidence_requests(&self, snapshot: &Snapshot, labels: &Labels) -> Vec<EvidenceRequest> {
        match &self.target {
            Target::Workload { object, old, .. } => {
                verification::requests(snapshot, object, old.as_ref(), labels)
            }
            _ => Vec::new(),
        }
    }

    /// Decides the request. `labels` is the namespace's labels, or why they are unknown (which
    /// denies a workload: labels are never assumed); `evidence` what was gathered for
    /// [`evidence_requests`](Self::evidence_requests).
    pub fn decide_with(
        &self,
        snapshot: &Snapshot,
        labels: Result<&Labels, &str>,
        now: jiff::Timestamp,
        evidence: Option<&Evidence>,
    ) -> Outcome {
        match &self.target {
            Target::Skip(why) => Outcome::Skipped(why),
            Target::Unreadable(why) => Outcome::Refused(why.clone()),
            Target::Policy(p) => Outcome::Policy(validate(p)),
            Target::Workload { object, old, .. } => match labels {
                Err(why) => Outcome::Refused(format!(
                    "the labels of namespace {:?} cannot be read, so the policies that apply are unknown: {why}",
                    self.namespace
                )),
                Ok(labels) => Outcome::Decided(decide(
                    snapshot,
                    &Input {
                        object,
                        old_object: old.as_ref(),
                        namespace_labels: labels,
                        requester: Some(&self.requester),
                        now,
                        evidence,
                    },
                )),
            },
        }
    }

    /// The AdmissionReview answer to this request.
    pub fn response(&self, outcome: &Outcome) -> ReviewOut {
        let mut response = ResponseOut {
            uid: self.uid.clone(),
            allowed: outcome.allowed(),
            status: None,
            patch: None,
            patch_type: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        };
        match outcome {
            Outcome::Skipped(_) => {}
            Outcome::Refused(why) => {
                response.status = Some(StatusOut::forbidden(
                    truncate(
                        &format!(
                            "{} {:?} in namespace {:?} is denied by image policy: {why}",
                            self.kind, self.name, self.namespace
                        ),
                        MAX_MESSAGE_CHARS,
                    ),
                    Vec::new(),
                ));
                response
                    .audit_annotations
                    .insert("decision".to_owned(), "denied".to_owned());
            }
            Outcome::Policy(Ok(())) => {
                response
                    .audit_annotations
                    .insert("decision".to_owned(), "allowed".to_owned());
            }
            Outcome::Policy(Err(e)) => {
                response.status = Some(StatusOut {
                    status: "Failure",
                    code: 422,
                    reason: "Invalid",
                    message: truncate(
                        &format!("ImagePolicy {:?} is invalid: {e}", self.name),
                        MAX_MESSAGE_CHARS,
                    ),
                    details: Some(DetailsOut {
                        causes: vec![CauseOut {
                            field: e.field.clone(),
                            reason: "FieldValueInvalid".to_owned(),
                            message: e.message.clone(),
                        }],
                    }),
                });
                response
                    .audit_annotations
                    .insert("decision".to_owned(), "denied".to_owned());
            }
            Outcome::Decided(d) => {
                if !d.allowed {
                    let causes = d
                        .denials()
                        .take(MAX_CAUSES)
                        .map(|v| CauseOut {
                            field: v.field_path.clone(),
                            reason: v.rule.as_str().to_owned(),
                            message: v.message.clone(),
                        })
                        .collect();
                    response.status = Some(StatusOut::forbidden(
                        truncate(
                            &d.denial_message(&self.kind, &self.name, &self.namespace),
                            MAX_MESSAGE_CHARS,
                        ),
                        causes,
                    ));
                }
                response.warnings = client_warnings(&d.warnings);
                response.audit_annotations = audit_annotations(d, outcome.label());
            }
        }
        ReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            response,
        }
    }
}

/// The audit annotations of a decision: `decision`, `policies`, and `break-glass` when used.
pub fn audit_annotations(d: &Decision, label: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("decision".to_owned(), label.to_owned());
    out.insert("policies".to_owned(), policies_annotation(&d.policies));
    if !d.break_glass.is_empty() {
        let uses: Vec<String> = d
            .break_glass
            .iter()
            .map(|b| format!("ticket={} policy={} until={}", b.ticket, b.policy, b.until))
            .collect();
        out.insert(
            "break-glass".to_owned(),
            truncate(&uses.join("; "), MAX_AUDIT_ANNOTATION_CHARS),
        );
    }
    out
}

/// The `policies` audit annotation: `NAME@GENERATION:MODE,…`, written in one string (it is
/// part of every answer), cut to [`MAX_AUDIT_ANNOTATION_CHARS`].
pub fn policies_annotation(applied: &[AppliedPolicy]) -> String {
    let mut policies = String::new();
    for p in applied {
        if !policies.is_empty() {
            policies.push(',');
        }
        policies.push_str(&p.name);
        if let Some(g) = p.generation {
            policies.push('@');
            policies.push_str(itoa::Buffer::new().format(g));
        }
        policies.push(':');
        policies.push_str(p.mode.as_str());
    }
    if policies.len() > MAX_AUDIT_ANNOTATION_CHARS {
        policies = truncate(&policies, MAX_AUDIT_ANNOTATION_CHARS);
    }
    policies
}

/// An AdmissionReview answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: ResponseOut,
}

impl ReviewOut {
    /// The answer as JSON text: the bytes `serde_json` writes for it (the tests hold it to
    /// that), written with the decision record's writer, which copies keys as they are and
    /// strings without escapes in one piece.
    pub fn to_json(&self) -> Vec<u8> {
        let r = &self.response;
        // Room for the texts, an eighth more for their escapes, and for the rest: the envelope,
        // keys and punctuation take under 400 bytes, and under 50 per cause.
        let causes = r
            .status
            .iter()
            .flat_map(|s| &s.details)
            .flat_map(|d| &d.causes);
        let texts = r.status.as_ref().map_or(0, |s| s.message.len())
            + causes
                .map(|c| c.field.len() + c.reason.len() + c.message.len() + 50)
                .sum::<usize>()
            + r.warnings.iter().map(|w| w.len() + 3).sum::<usize>()
            + r.patch.as_ref().map_or(0, String::len);
        let mut out = JsonLine::with_capacity(400 + texts + texts / 8);
        out.begin_object();
        out.string_field("apiVersion", self.api_version);
        out.string_field("kind", self.kind);
        out.key("response");
        out.begin_object();
        out.string_field("uid", &r.uid);
        out.key("allowed");
        out.bool(r.allowed);
        if let Some(status) = &r.status {
            out.key("status");
            out.begin_object();
            out.string_field("status", status.status);
            out.key("code");
            out.u64(u64::from(status.code));
            out.string_field("reason", status.reason);
            out.string_field("message", &status.message);
            if let Some(details) = &status.details {
                out.key("details");
                out.begin_object();
                out.key("causes");
                out.begin_array();
                for cause in &details.causes {
                    out.begin_object();
                    out.string_field("field", &cause.field);
                    out.string_field("reason", &cause.reason);
                    out.string_field("message", &cause.message);
                    out.end_object();
                }
                out.end_array();
                out.end_object();
            }
            out.end_object();
        }
        if let Some(patch) = &r.patch {
            // Base64: nothing in it needs escaping.
            out.string_field("patch", patch);
        }
        if let Some(patch_type) = r.patch_type {
            out.string_field("patchType", patch_type);
        }
        if !r.warnings.is_empty() {
            out.strings_field("warnings", r.warnings.iter().map(String::as_str));
        }
        if !r.audit_annotations.is_empty() {
            out.map_field("auditAnnotations", &r.audit_annotations);
        }
        out.end_object();
        out.end_object();
        out.into_bytes()
    }
}

/// `response` of an AdmissionReview answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
    /// A JSONPatch, base64-encoded (the mutating webhook's answer only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `JSONPatch` when `patch` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

/// `response.status`: a `metav1.Status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusOut {
    pub status: &'static str,
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<DetailsOut>,
}

impl StatusOut {
    fn forbidden(message: String, causes: Vec<CauseOut>) -> StatusOut {
        StatusOut {
            status: "Failure",
            code: 403,
            reason: "Forbidden",
            message,
            details: (!causes.is_empty()).then_some(DetailsOut { causes }),
        }
    }
}

/// `status.details`.
#[derive(Debug, Clone, Serialize)]
pub struct DetailsOut {
    pub causes: Vec<CauseOut>,
}

/// One `status.details.causes` entry.
#[derive(Debug, Clone, Serialize)]
pub struct CauseOut {
    pub field: String,
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {

    #[test]
    fn fast_and_careful_paths_read_every_fixture_alike() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with("imagereview") {
                continue;
            }
            let body = std::fs::read(&path).unwrap();
            let fast = format!("{:?}", parse_admission_review(&body).unwrap());
            let careful = format!(
                "{:?}",
                parse_carefully(std::str::from_utf8(&body).unwrap()).unwrap()
            );
            assert_eq!(fast, careful, "{name}");
            assert!(fast.contains("Workload"), "{name} is a workload review");
            checked += 1;
        }
        assert!(checked >= 7, "only {checked} fixtures");
    }

    use super::*;
    use crate::policy::{Settings, Snapshot};
    use proptest::prelude::*;

    #[test]
    fn the_policies_annotation_names_each_policy_with_its_generation_and_mode() {
        use crate::decision::AppliedPolicy;
        use crate::policy::Mode;
        let policy = |name: &str, generation, mode| AppliedPolicy {
            name: name.to_owned(),
            generation,
            mode,
        };
        let d = Decision {
            policies: vec![
                policy("prod", Some(7), Mode::Enforce),
                policy("local", None, Mode::Warn),
            ],
            ..Decision::default()
        };
        let annotations = audit_annotations(&d, "allowed");
        assert_eq!(annotations["policies"], "prod@7:Enforce,local:Warn");
        assert_eq!(annotations["decision"], "allowed");

        let many = Decision {
            policies: (0..400)
                .map(|i| policy(&format!("policy-{i}"), Some(i), Mode::Audit))
                .collect(),
            ..Decision::default()
        };
        let cut = &audit_annotations(&many, "allowed")["policies"];
        assert_eq!(cut.chars().count(), MAX_AUDIT_ANNOTATION_CHARS);
        assert!(cut.starts_with("policy-0@0:Audit,policy-1@1:Audit,") && cut.ends_with('…'));
    }

    fn review(request: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request
        }))
        .unwrap()
    }

    fn pod(images: &[&str]) -> serde_json::Value {
        let containers: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, im)| serde_json::json!({"name": format!("c{i}"), "image": im}))
            .collect();
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    fn request(
        kind: (&str, &str),
        sub: &str,
        op: &str,
        object: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "uid": "u-1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
            "subResource": sub, "namespace": "ns", "operation": op,
            "userInfo": {"username": "alice", "groups": ["dev"]}, "object": object
        })
    }

    #[test]
    fn bad_envelopes_are_bad_requests() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not a valid"),
            (b"[]".to_vec(), "expected apiVersion"),
            (b"{\"apiVersion\": 1}".to_vec(), "not a valid"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#.to_vec(), "expected apiVersion"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"ImageReview"}"#.to_vec(), "expected apiVersion"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "no request"),
            (review(serde_json::json!({"kind": {"kind": "Pod"}, "operation": "CREATE"})), "no request.uid"),
            (review(serde_json::json!({"uid": "", "kind": {"kind": "Pod"}, "operation": "CREATE"})), "no request.uid"),
            (review(serde_json::json!({"uid": "x", "operation": "CREATE"})), "no request.kind"),
            (review(serde_json::json!({"uid": "x", "kind": {"kind": "Pod"}})), "no request.operation"),
            (review(serde_json::json!({"uid": 7, "kind": {"kind": "Pod"}, "operation": "CREATE"})), "invalid type"),
        ];
        for (body, expected) in cases {
            let e = parse_admission_review(&body).unwrap_err();
            assert!(e.to_string().contains(expected), "{e} lacks {expected:?}");
        }
        // Deep nesting never overflows the stack: the envelope is an error, a deep object is
        // unreadable (denied).
        let nest = |inner: &str| format!("{}{inner}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_admission_review(nest("").as_bytes()).is_err());
        let deep_request = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}}"#,
            nest("")
        );
        assert!(parse_admission_review(deep_request.as_bytes()).is_err());
        let deep_object = String::from_utf8(review(request(
            ("", "Pod"),
            "",
            "CREATE",
            serde_json::Value::Null,
        )))
        .unwrap()
        .replace("null", &nest("1"));
        let target = parse_admission_review(deep_object.as_bytes())
            .unwrap()
            .target;
        assert!(matches!(target, Target::Unreadable(_)), "{target:?}");
    }

    #[test]
    fn dispatches_by_kind_subresource_and_operation() {
        let p = pod(&["nginx"]);
        let target = |kind, sub, op, obj: &serde_json::Value| {
            parse_admission_review(&review(request(kind, sub, op, obj.clone())))
                .unwrap()
                .target
        };
        assert!(matches!(
            target(("", "Pod"), "", "CREATE", &p),
            Target::Workload {
                kind: WorkloadKind::Pod,
                ..
            }
        ));
        assert!(matches!(
            target(("", "Pod"), "ephemeralcontainers", "UPDATE", &p),
            Target::Workload { .. }
        ));
        assert!(matches!(
            target(("", "Pod"), "status", "UPDATE", &p),
            Target::Skip(_)
        ));
        assert!(matches!(
            target(("", "Pod"), "", "DELETE", &p),
            Target::Skip(_)
        ));
        assert!(matches!(
            target(("", "Pod"), "", "CONNECT", &p),
            Target::Skip(_)
        ));
        assert!(matches!(
            target(("", "ConfigMap"), "", "CREATE", &p),
            Target::Skip(_)
        ));
        assert!(matches!(
            target(("apps", "Deployment"), "scale", "UPDATE", &p),
            Target::Skip(_)
        ));
        assert!(matches!(
            target(("", "Pod"), "", "CREATE", &serde_json::Value::Null),
            Target::Unreadable(_)
        ));
        assert!(matches!(
            target(
                ("", "Pod"),
                "",
                "CREATE",
                &serde_json::json!({"spec": {"containers": 5}})
            ),
            Target::Unreadable(_)
        ));
        for (g, k) in [
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "StatefulSet"),
            ("apps", "DaemonSet"),
            ("batch", "Job"),
            ("batch", "CronJob"),
            ("", "ReplicationController"),
        ] {
            assert!(
                matches!(
                    target((g, k), "", "CREATE", &serde_json::json!({})),
                    Target::Workload { .. }
                ),
                "{k}"
            );
        }
        let policy = serde_json::json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy", "metadata": {"name": "x"}, "spec": {"deniedTags": ["latest"]}});
        assert!(matches!(
            target(("imagegate.dev", "ImagePolicy"), "", "CREATE", &policy),
            Target::Policy(_)
        ));
        assert!(matches!(
            target(
                ("imagegate.dev", "ImagePolicy"),
                "status",
                "UPDATE",
                &policy
            ),
            Target::Skip(_)
        ));
    }

    #[test]
    fn refusals_and_invalid_policies_deny_with_the_reason() {
        let snapshot = Snapshot::empty(Settings::default());
        let labels = Labels::new();
        let now = jiff::Timestamp::now();
        let req = parse_admission_review(&review(request(
            ("", "Pod"),
            "",
            "CREATE",
            serde_json::Value::Null,
        )))
        .unwrap();
        let outcome = req.decide(&snapshot, Ok(&labels), now);
        let out = serde_json::to_value(req.response(&outcome)).unwrap();
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 403);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("no Pod object")
        );

        let req = parse_admission_review(&review(request(("", "Pod"), "", "CREATE", pod(&["a"]))))
            .unwrap();
        let outcome = req.decide(&snapshot, Err("timed out"), now);
        assert!(!outcome.allowed());
        let out = serde_json::to_value(req.response(&outcome)).unwrap();
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("timed out")
        );

        let policy = serde_json::json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy", "metadata": {"name": "x"}, "spec": {"allowedImages": ["not a pattern"]}});
        let req = parse_admission_review(&review(request(
            ("imagegate.dev", "ImagePolicy"),
            "",
            "CREATE",
            policy,
        )))
        .unwrap();
        let outcome = req.decide(&snapshot, Ok(&labels), now);
        let out = serde_json::to_value(req.response(&outcome)).unwrap();
        assert_eq!(out["response"]["allowed"], false, "{out}");
        assert_eq!(
            out["response"]["status"]["details"]["causes"][0]["field"], "spec.allowedImages[0]",
            "{out}"
        );
    }

    #[test]
    fn skipped_requests_are_admitted_quietly() {
        let snapshot = Snapshot::empty(Settings::default());
        let req = parse_admission_review(&review(request(
            ("", "Pod"),
            "",
            "DELETE",
            serde_json::Value::Null,
        )))
        .unwrap();
        let outcome = req.decide(&snapshot, Ok(&Labels::new()), jiff::Timestamp::now());
        let out = serde_json::to_value(req.response(&outcome)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u-1", "allowed": true}})
        );
    }

    fn any_answer() -> impl Strategy<Value = ReviewOut> {
        let text = || prop_oneof![any::<String>(), "[a-z \"\\\\\n\u{1}é]{0,40}"];
        let cause = (text(), text(), text()).prop_map(|(field, reason, message)| CauseOut {
            field,
            reason,
            message,
        });
        let status = (
            any::<u16>(),
            text(),
            proptest::option::of(proptest::collection::vec(cause, 0..4)),
        )
            .prop_map(|(code, message, causes)| StatusOut {
                status: "Failure",
                code,
                reason: "Forbidden",
                message,
                details: causes.map(|causes| DetailsOut { causes }),
            });
        (
            text(),
            any::<bool>(),
            proptest::option::of(status),
            proptest::option::of("[A-Za-z0-9+/]{0,40}={0,2}"),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::btree_map(text(), text(), 0..3),
        )
            .prop_map(
                |(uid, allowed, status, patch, warnings, audit_annotations)| ReviewOut {
                    api_version: API_VERSION,
                    kind: KIND,
                    response: ResponseOut {
                        uid,
                        allowed,
                        status,
                        patch_type: patch.as_ref().map(|_| "JSONPatch"),
                        patch,
                        warnings,
                        audit_annotations,
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn answers_are_written_as_serde_writes_them(answer in any_answer()) {
            prop_assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
    }

    /// What serde_json reads from a body into the fast path's shapes.
    fn serde_review(text: &str) -> serde_json::Result<ReviewIn<WorkloadObject>> {
        serde_json::from_str(text)
    }

    static FIXTURES: std::sync::OnceLock<Vec<serde_json::Value>> = std::sync::OnceLock::new();

    fn fixture_values() -> Vec<serde_json::Value> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.starts_with("imagereview") {
                out.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            }
        }
        out
    }

    #[test]
    fn skimming_reads_every_fixture_as_serde_does() {
        for value in fixture_values() {
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                let skimmed = skim_review(&text).expect("a fixture is skimmed");
                assert_eq!(skimmed, serde_review(&text).unwrap());
            }
        }
    }

    #[test]
    fn a_repeated_wanted_key_is_left_to_serde_which_refuses_it() {
        let base = String::from_utf8(review(request(
            ("", "Pod"),
            "",
            "CREATE",
            pod(&["nginx:1.27"]),
        )))
        .unwrap();
        for (once, twice) in [
            (
                "\"image\":\"nginx:1.27\"",
                "\"image\":\"evil:1\",\"image\":\"nginx:1.27\"",
            ),
            ("\"uid\":\"u-1\"", "\"uid\":\"u-1\",\"uid\":\"u-2\""),
            ("\"containers\":[", "\"containers\":[],\"containers\":["),
            (
                "\"operation\":\"CREATE\"",
                "\"operation\":\"DELETE\",\"operation\":\"CREATE\"",
            ),
        ] {
            assert!(base.contains(once), "{once} in {base}");
            let text = base.replacen(once, twice, 1);
            assert_eq!(skim_review(&text), Err(crate::skim::Decline), "{text}");
            assert!(serde_review(&text).is_err(), "{text}");
            // And the body as a whole: the careful path says why.
            let read = parse_admission_review(text.as_bytes());
            let refused = match &read {
                Err(e) => e.to_string(),
                Ok(r) => match &r.target {
                    Target::Unreadable(why) => why.clone(),
                    other => panic!("{text} read as {other:?}"),
                },
            };
            assert!(refused.contains("duplicate field"), "{refused}");
        }
    }

    /// An edit at a place in a review, chosen by the indexes in `path`.
    #[derive(Debug, Clone)]
    enum Edit {
        Set(serde_json::Value),
        Insert(&'static str, serde_json::Value),
        Remove(prop::sample::Index),
    }

    /// Names the fast path looks for, and some it does not.
    const KEYS: &[&str] = &[
        "apiVersion",
        "kind",
        "request",
        "uid",
        "subResource",
        "name",
        "namespace",
        "operation",
        "userInfo",
        "username",
        "groups",
        "object",
        "oldObject",
        "dryRun",
        "group",
        "version",
        "metadata",
        "generateName",
        "annotations",
        "spec",
        "containers",
        "initContainers",
        "ephemeralContainers",
        "volumes",
        "template",
        "jobTemplate",
        "image",
        "imagePullPolicy",
        "reference",
        "pullPolicy",
        "imagegate.image-policy.k8s.io/break-glass",
        "imagegate.image-policy.k8s.io/reason",
        // Last, two the fast path does not look for.
        "managedFields",
        "other",
    ];

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "[a-z:/@.\"\\\\{}\\[\\] é\u{0}-\u{1f}]{0,24}".prop_map(serde_json::Value::String),
            Just(serde_json::json!("nginx:1.27")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..4).prop_map(
                    |m| serde_json::Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                    )
                ),
            ]
        })
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            // `null` is where readers most often differ: as a default, as absent, as an error.
            2 => Just(Edit::Set(serde_json::Value::Null)),
            3 => value().prop_map(Edit::Set),
            2 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| Edit::Insert(k, v)),
            1 => any::<prop::sample::Index>().prop_map(Edit::Remove),
        ]
    }

    /// The JSON pointers of the places the fast path reads: every value under a wanted key,
    /// the elements of arrays there, and the annotation maps' entries.
    fn wanted_places(value: &serde_json::Value) -> Vec<String> {
        fn walk(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let wanted = KEYS[..KEYS.len() - 2].contains(&k.as_str())
                            || at.ends_with("/annotations");
                        if wanted {
                            let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                            out.push(here.clone());
                            walk(v, here, out);
                        }
                    }
                }
                serde_json::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        let here = format!("{at}/{i}");
                        out.push(here.clone());
                        walk(v, here, out);
                    }
                }
                _ => {}
            }
        }
        let mut out = vec![String::new()];
        walk(value, String::new(), &mut out);
        out
    }

    fn apply(value: &mut serde_json::Value, place: &prop::sample::Index, edit: &Edit) {
        let places = wanted_places(value);
        let Some(node) = value.pointer_mut(&places[place.index(places.len())]) else {
            return;
        };
        match (edit, node) {
            (Edit::Set(v), node) => *node = v.clone(),
            (Edit::Insert(k, v), serde_json::Value::Object(m)) => {
                m.insert((*k).to_owned(), v.clone());
            }
            (Edit::Remove(i), serde_json::Value::Object(m)) if !m.is_empty() => {
                let key = m.keys().nth(i.index(m.len())).unwrap().clone();
                m.remove(&key);
            }
            _ => {}
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// The contract of the fast path: whatever it reads, serde_json reads alike.
        #[test]
        fn skimming_an_edited_review_reads_as_serde_does_or_declines(
            fixture in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), edit()), 1..4),
            pretty in any::<bool>(),
        ) {
            let fixtures = FIXTURES.get_or_init(fixture_values);
            let mut value = fixtures[fixture.index(fixtures.len())].clone();
            for (place, edit) in &edits {
                apply(&mut value, place, edit);
            }
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            if let Ok(skimmed) = skim_review(&text) {
                proptest::prop_assert_eq!(Ok(skimmed), serde_review(&text).map_err(|e| e.to_string()));
            }
        }
    }
}
