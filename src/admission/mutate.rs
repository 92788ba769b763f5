//! `POST /mutate`: the mutating webhook's `AdmissionReview` (`admission.k8s.io/v1`). The request
//! is read as for `/validate` ([`parse_admission_review`](super::parse_admission_review)); only
//! a Pod CREATE and a `pods/ephemeralcontainers` UPDATE are planned for (see
//! [`crate::mutation`]), and the answer always admits: a patch when there is something to
//! change, never a denial. An object that cannot be read gets no patch; the validating webhook,
//! which the API server calls after every mutating one, decides about it.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::json_line::JsonLine;
use super::review::{API_VERSION, KIND, ResponseOut, ReviewOut, policies_annotation};
use super::{AdmissionRequest, MAX_AUDIT_ANNOTATION_CHARS, Target, client_warnings, truncate};
use crate::evidence::EvidenceRequest;
use crate::mutation::{self, Digests, Mutation, Operation, Plan};
use crate::namespaces::Labels;
use crate::policy::Snapshot;
use crate::workload::{Workload, WorkloadKind};

/// `patchType` of every patch.
pub const PATCH_TYPE: &str = "JSONPatch";

/// What `/mutate` made of one request.
#[derive(Debug, Clone)]
pub enum MutateOutcome {
    /// Not a Pod CREATE nor a `pods/ephemeralcontainers` UPDATE: passed untouched.
    Skipped(&'static str),
    /// Planned (the patch may be empty).
    Planned(Plan),
    /// The object, or its namespace's labels, cannot be read: no patch, with the reason.
    Unread(String),
}

impl MutateOutcome {
    /// The `decision` of the record: `mutated` when the patch changes the Pod, else
    /// `unchanged`; `skipped` for requests not planned for.
    pub fn label(&self) -> &'static str {
        match self {
            MutateOutcome::Skipped(_) => "skipped",
            MutateOutcome::Planned(p) if !p.patch.is_empty() => "mutated",
            MutateOutcome::Planned(_) | MutateOutcome::Unread(_) => "unchanged",
        }
    }
}

impl AdmissionRequest {
    /// What `/mutate` may change in this request: the Pod, and the Pod as it was on
    /// `pods/ephemeralcontainers`; else why it passes untouched.
    fn mutable(&self) -> Result<(&Workload, Option<&Workload>), MutateOutcome> {
        let skip = |why| Err(MutateOutcome::Skipped(why));
        let (object, old) = match &self.target {
            Target::Workload {
                kind: WorkloadKind::Pod,
                object,
                old,
            } => (object, old),
            Target::Workload { .. } => return skip("workload templates are never mutated"),
            Target::Unreadable(why) => return Err(MutateOutcome::Unread(why.clone())),
            Target::Skip(why) => return skip(why),
            Target::Policy(_) => return skip("ImagePolicies are not mutated"),
        };
        match (self.operation.as_str(), self.sub_resource.as_str()) {
            ("CREATE", "") => Ok((object, None)),
            ("UPDATE", "ephemeralcontainers") => match old {
                Some(old) => Ok((object, Some(old))),
                // Without it the added containers cannot be told from the others.
                None => Err(MutateOutcome::Unread(
                    "the Pod as it was (oldObject) cannot be read".to_owned(),
                )),
            },
            _ => skip("only Pod CREATE and pods/ephemeralcontainers UPDATE are mutated"),
        }
    }

    /// Whether [`plan_mutation`](Self::plan_mutation) needs the namespace's labels.
    pub fn needs_mutation(&self) -> bool {
        self.mutable().is_ok()
    }

    /// What the registry adapter must gather before [`plan_mutation`](Self::plan_mutation):
    /// the digests `pinDigests` pins to (see [`mutation::digests_needed`]); empty for
    /// everything but a Pod whose tags an applying `Enforce` policy pins.
    pub fn digest_requests(&self, snapshot: &Snapshot, labels: &Labels) -> Vec<EvidenceRequest> {
        match self.mutable() {
            Ok((object, old_object)) => mutation::digests_needed(
                snapshot,
                &mutation::Input {
                    object,
                    old_object,
                    namespace_labels: labels,
                    digests: &Digests::new(),
                },
            ),
            Err(_) => Vec::new(),
        }
    }

    /// Plans the mutation of this request. `labels` is the namespace's labels, or why they are
    /// unknown (no patch then: the policies that apply are unknown); `digests` are those the
    /// registry adapter found for `pinDigests`.
    pub fn plan_mutation(
        &self,
        snapshot: &Snapshot,
        labels: Result<&Labels, &str>,
        digests: &Digests,
    ) -> MutateOutcome {
        let (object, old) = match self.mutable() {
            Ok(target) => target,
            Err(outcome) => return outcome,
        };
        match labels {
            Err(why) => MutateOutcome::Unread(format!(
                "the labels of namespace {:?} cannot be read, so the policies that apply are unknown: {why}",
                self.namespace
            )),
            Ok(labels) => MutateOutcome::Planned(mutation::plan(
                snapshot,
                &mutation::Input {
                    object,
                    old_object: old,
                    namespace_labels: labels,
                    digests,
                },
            )),
        }
    }

    /// The answer of `/mutate`: always allowed; the patch (base64 JSONPatch) when there is
    /// one, the warnings, and the audit annotations `mutated` and `would-mutate`.
    pub fn mutate_response(&self, outcome: &MutateOutcome) -> ReviewOut {
        let mut response = ResponseOut {
            uid: self.uid.clone(),
            allowed: true,
            status: None,
            patch: None,
            patch_type: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        };
        if let MutateOutcome::Planned(plan) = outcome {
            if !plan.patch.is_empty() {
                let json = patch_json(&plan.patch);
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
                response.patch_type = Some(PATCH_TYPE);
            }
            response.warnings = client_warnings(&plan.warnings);
            response.audit_annotations = audit_annotations(plan);
        }
        ReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            response,
        }
    }
}

/// The patch as JSON text: `[{"op":…,"path":…,"value":…},…]`, what `serde_json` writes for it.
pub fn patch_json(patch: &[Operation]) -> Vec<u8> {
    let size: usize = patch
        .iter()
        .map(|o| o.path.len() + o.value.len() + 40)
        .sum();
    let mut out = JsonLine::with_capacity(size + 2);
    out.begin_array();
    for o in patch {
        out.begin_object();
        out.string_field("op", o.op.as_str());
        out.string_field("path", &o.path);
        out.string_field("value", &o.value);
        out.end_object();
    }
    out.end_array();
    out.into_bytes()
}

/// `mutated` (the changes made) and `would-mutate` (those Warn and Audit policies only
/// report), each when not empty, and `policies` (the applying policies that ask for changes).
/// The API server prefixes each key with the webhook's name (`mutate.imagegate.dev/mutated`).
pub fn audit_annotations(plan: &Plan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if plan.policies.is_empty() {
        return out;
    }
    out.insert("policies".to_owned(), policies_annotation(&plan.policies));
    let made = changes(plan.mutations.iter().filter(|m| m.applied));
    if !made.is_empty() {
        out.insert("mutated".to_owned(), made);
    }
    let reported = changes(plan.mutations.iter().filter(|m| !m.applied));
    if !reported.is_empty() {
        out.insert("would-mutate".to_owned(), reported);
    }
    out
}

/// `containers/app imagePullPolicy=Always, …`, cut to [`MAX_AUDIT_ANNOTATION_CHARS`]; written
/// only that far, however many changes there are.
fn changes<'a>(mutations: impl Iterator<Item = &'a Mutation>) -> String {
    let mut out = String::new();
    for m in mutations {
        if out.len() > MAX_AUDIT_ANNOTATION_CHARS {
            break;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        m.describe(&mut out);
    }
    truncate(&out, MAX_AUDIT_ANNOTATION_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::parse_admission_review;
    use crate::mutation::{Change, Op};
    use crate::policy::{Settings, compile};
    use serde_json::json;

    fn snapshot(spec: &str) -> Snapshot {
        let yaml = format!("metadata: {{name: p, generation: 2}}\nspec: {spec}");
        let policy = compile(&serde_saphyr::from_str(&yaml).unwrap()).unwrap();
        Snapshot::new(vec![policy], Settings::default())
    }

    fn request(kind: (&str, &str), sub: &str, op: &str, old: bool) -> AdmissionRequest {
        let object = json!({"metadata": {"name": "web"}, "spec": {
            "containers": [{"name": "app", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
        }});
        let mut old_object = object.clone();
        old_object["spec"]["ephemeralContainers"] = json!([]);
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-9", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                "subResource": sub, "namespace": "shop", "operation": op, "object": object,
                "oldObject": if old { old_object } else { json!(null) }}});
        parse_admission_review(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn labels() -> Labels {
        [("kubernetes.io/metadata.name".to_owned(), "shop".to_owned())].into()
    }

    fn answer(req: &AdmissionRequest, snapshot: &Snapshot) -> serde_json::Value {
        let outcome = req.plan_mutation(snapshot, Ok(&labels()), &Digests::new());
        serde_json::from_slice(&req.mutate_response(&outcome).to_json()).unwrap()
    }

    fn patch_of(answer: &serde_json::Value) -> serde_json::Value {
        let text = answer["response"]["patch"].as_str().expect("a patch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_pod_create_gets_a_base64_json_patch_and_annotations() {
        let s = snapshot("{setPullPolicyAlways: true}");
        let out = answer(&request(("", "Pod"), "", "CREATE", false), &s);
        let r = &out["response"];
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!((&r["uid"], &r["allowed"]), (&json!("u-9"), &json!(true)));
        assert_eq!(r["patchType"], "JSONPatch");
        assert_eq!(
            patch_of(&out),
            json!([
                {"op": "replace", "path": "/spec/containers/0/imagePullPolicy", "value": "Always"},
                {"op": "add", "path": "/spec/ephemeralContainers/0/imagePullPolicy", "value": "Always"},
            ])
        );
        assert_eq!(
            r["auditAnnotations"],
            json!({"policies": "p@2:Enforce",
                   "mutated": "containers/app imagePullPolicy=Always, ephemeralContainers/debug imagePullPolicy=Always"})
        );
        assert!(r.get("warnings").is_none() && r.get("status").is_none());
    }

    #[test]
    fn ephemeral_container_updates_patch_only_the_added_container() {
        let s = snapshot("{setPullPolicyAlways: true}");
        let out = answer(
            &request(("", "Pod"), "ephemeralcontainers", "UPDATE", true),
            &s,
        );
        assert_eq!(
            patch_of(&out),
            json!([{"op": "add", "path": "/spec/ephemeralContainers/0/imagePullPolicy", "value": "Always"}])
        );
        // Without the old object, nothing can be told apart: no patch.
        let req = request(("", "Pod"), "ephemeralcontainers", "UPDATE", false);
        let outcome = req.plan_mutation(&s, Ok(&labels()), &Digests::new());
        assert!(matches!(outcome, MutateOutcome::Unread(_)), "{outcome:?}");
    }

    #[test]
    fn everything_else_passes_untouched() {
        let s = snapshot("{setPullPolicyAlways: true}");
        for (kind, sub, op) in [
            (("apps", "Deployment"), "", "CREATE"),
            (("batch", "CronJob"), "", "CREATE"),
            (("", "Pod"), "", "UPDATE"),
            (("", "Pod"), "", "DELETE"),
            (("", "Pod"), "status", "UPDATE"),
            (("", "ConfigMap"), "", "CREATE"),
            (("imagegate.dev", "ImagePolicy"), "", "CREATE"),
        ] {
            let req = request(kind, sub, op, true);
            assert!(!req.needs_mutation(), "{kind:?} {sub} {op}");
            let out = answer(&req, &s);
            assert_eq!(
                out["response"],
                json!({"uid": "u-9", "allowed": true}),
                "{kind:?} {sub} {op}"
            );
        }
    }

    #[test]
    fn unreadable_objects_and_namespaces_get_no_patch_and_are_admitted() {
        let s = snapshot("{setPullPolicyAlways: true}");
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop", "operation": "CREATE", "object": {"spec": {"containers": 5}}}});
        let req = parse_admission_review(&serde_json::to_vec(&body).unwrap()).unwrap();
        let outcome = req.plan_mutation(&s, Ok(&labels()), &Digests::new());
        assert!(matches!(outcome, MutateOutcome::Unread(_)));
        assert_eq!(outcome.label(), "unchanged");
        let out: serde_json::Value =
            serde_json::from_slice(&req.mutate_response(&outcome).to_json()).unwrap();
        assert_eq!(out["response"], json!({"uid": "u-1", "allowed": true}));

        let req = request(("", "Pod"), "", "CREATE", false);
        let outcome = req.plan_mutation(&s, Err("timed out"), &Digests::new());
        let MutateOutcome::Unread(why) = &outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            why.contains("namespace \"shop\"") && why.contains("timed out"),
            "{why}"
        );
        assert_eq!(req.mutate_response(&outcome).response.patch, None);
    }

    #[test]
    fn the_patch_is_written_as_serde_writes_it() {
        let patch = vec![
            Operation {
                op: Op::Add,
                path: "/spec/a~1b".into(),
                value: "quote \" and \\ é".into(),
            },
            Operation {
                op: Op::Replace,
                path: "/spec/containers/12/image".into(),
                value: "nginx:1.27@sha256:00".into(),
            },
        ];
        assert_eq!(
            String::from_utf8(patch_json(&patch)).unwrap(),
            serde_json::to_string(&patch).unwrap()
        );
        assert_eq!(patch_json(&[]), b"[]");
    }

    #[test]
    fn the_changes_annotation_is_bounded() {
        let mutation = |i: usize| Mutation {
            change: Change::PullPolicy,
            container_type: crate::workload::ContainerType::Containers,
            container: format!("c{i}"),
            image: "nginx".into(),
            from: None,
            to: Some("Always".into()),
            policy: "p".into(),
            mode: crate::policy::Mode::Enforce,
            applied: true,
            path: String::new(),
            image_index: 0,
        };
        let many: Vec<Mutation> = (0..5000).map(mutation).collect();
        let text = changes(many.iter());
        assert_eq!(text.chars().count(), MAX_AUDIT_ANNOTATION_CHARS);
        assert!(text.starts_with("containers/c0 imagePullPolicy=Always, containers/c1 "));
        assert!(text.ends_with('…'));
    }
}
