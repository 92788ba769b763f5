//! `ImageReview` (`imagepolicy.k8s.io/v1alpha1`), as the legacy `ImagePolicyWebhook` admission
//! plugin sends it on `POST /imagereview`: the images of one Pod, its namespace and its
//! `*.image-policy.k8s.io/*` annotations, and no requester.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::review::audit_annotations;
use super::{BadRequest, MAX_MESSAGE_CHARS, truncate};
use crate::decision::{Decision, Input, decide};
use crate::evidence::{Evidence, EvidenceRequest};
use crate::metrics::decision_label;
use crate::namespaces::Labels;
use crate::policy::Snapshot;
use crate::verification;
use crate::workload::{ContainerType, ImageUse, Workload};

/// The only ImageReview version.
pub const API_VERSION: &str = "imagepolicy.k8s.io/v1alpha1";
/// The kind of the review.
pub const KIND: &str = "ImageReview";
const WHAT: &str = "imagepolicy.k8s.io/v1alpha1 ImageReview";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    spec: Option<SpecIn>,
}

#[derive(Deserialize, Default)]
struct SpecIn {
    #[serde(default)]
    containers: Option<Vec<ContainerIn>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct ContainerIn {
    #[serde(default)]
    image: Option<String>,
}

/// One ImageReview, read: its images as the containers of one Pod.
#[derive(Debug, Clone)]
pub struct ImageReviewRequest {
    /// `spec.namespace`, else `default`.
    pub namespace: String,
    /// The images (container type `containers`, named by position), annotations and namespace.
    pub workload: Workload,
}

/// Reads an ImageReview body.
pub fn parse_image_review(body: &[u8]) -> Result<ImageReviewRequest, BadRequest> {
    let review: ReviewIn = serde_json::from_slice(body).map_err(|e| BadRequest::Malformed {
        expected: WHAT,
        message: e.to_string(),
    })?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(BadRequest::WrongType {
            expected_api_version: API_VERSION,
            expected_kind: KIND,
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let spec = review.spec.ok_or(BadRequest::Missing {
        expected: WHAT,
        field: "spec",
    })?;
    let namespace = spec
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let images = spec
        .containers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| ImageUse {
            container_type: ContainerType::Containers,
            // The plugin sends neither container names nor types: name them by position.
            container: format!("#{i}"),
            image: c.image.unwrap_or_default(),
            // Nor the pull policy: `requirePullPolicyAlways` cannot be judged here, and is
            // left to the AdmissionReview webhook rather than deny every correct Pod.
            pull_policy: Some("Always".to_owned()),
            field_path: format!("spec.containers[{i}].image"),
        })
        .collect();
    Ok(ImageReviewRequest {
        namespace: namespace.clone(),
        workload: Workload {
            name: String::new(),
            namespace: Some(namespace),
            annotations: spec.annotations.unwrap_or_default(),
            images,
        },
    })
}

impl ImageReviewRequest {
    /// Decides the review without registry evidence (see [`decide_with`](Self::decide_with)).
    pub fn decide(&self, snapshot: &Snapshot, labels: &Labels, now: jiff::Timestamp) -> Decision {
        self.decide_with(snapshot, labels, now, None)
    }

    /// What the registry adapter must gather before [`decide_with`](Self::decide_with).
    pub fn evidence_requests(&self, snapshot: &Snapshot, labels: &Labels) -> Vec<EvidenceRequest> {
        verification::requests(snapshot, &self.workload, None, labels)
    }

    /// Decides the review with what was gathered for
    /// [`evidence_requests`](Self::evidence_requests); there is no requester.
    pub fn decide_with(
        &self,
        snapshot: &Snapshot,
        labels: &Labels,
        now: jiff::Timestamp,
        evidence: Option<&Evidence>,
    ) -> Decision {
        decide(
            snapshot,
            &Input {
                object: &self.workload,
                old_object: None,
                namespace_labels: labels,
                requester: None,
                now,
                evidence,
            },
        )
    }

    /// The answer for a decision.
    pub fn response(&self, decision: &Decision) -> ImageReviewOut {
        let reason = if decision.allowed {
            String::new()
        } else {
            truncate(
                &decision.denial_message("Pod", "", &self.namespace),
                MAX_MESSAGE_CHARS,
            )
        };
        ImageReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            status: ImageReviewStatus {
                allowed: decision.allowed,
                reason,
                audit_annotations: audit_annotations(decision, decision_label(decision)),
            },
        }
    }

    /// The answer when the namespace's labels cannot be read: denied with the reason.
    pub fn refusal(&self, why: &str) -> ImageReviewOut {
        ImageReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            status: ImageReviewStatus {
                allowed: false,
                reason: format!(
                    "the labels of namespace {:?} cannot be read, so the image policies that apply are unknown: {why}",
                    self.namespace
                ),
                audit_annotations: BTreeMap::from([("decision".to_owned(), "denied".to_owned())]),
            },
        }
    }
}

/// An ImageReview answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub status: ImageReviewStatus,
}

/// `status` of an ImageReview answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReviewStatus {
    pub allowed: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_plugin_body() {
        let body = std::fs::read("tests/data/imagereview-pod-create.json").unwrap();
        let r = parse_image_review(&body).unwrap();
        assert_eq!(r.namespace, "ip-test");
        assert_eq!(r.workload.images.len(), 4);
        assert_eq!(r.workload.images[0].image, "nginx:1.27");
        assert_eq!(
            r.workload.annotations["alpha.image-policy.k8s.io/mode"],
            "strict"
        );
    }

    #[test]
    fn rejects_other_bodies() {
        for (body, expected) in [
            (&b"{"[..], "not a valid"),
            (
                br#"{"apiVersion":"imagepolicy.k8s.io/v1","kind":"ImageReview","spec":{}}"#,
                "expected apiVersion",
            ),
            (
                br#"{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview"}"#,
                "no spec",
            ),
        ] {
            let e = parse_image_review(body).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
    }
}
