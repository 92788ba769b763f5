//! Audit passes as tables: Pods as the API server sends them, policies as users write them.

use std::collections::BTreeMap;

use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::decision::{BREAK_GLASS_ANNOTATION, BREAK_GLASS_UNTIL_ANNOTATION, Rule};
use crate::namespaces::with_name_label;
use crate::policy::{ImagePolicy, Settings, compile};

const NOW: &str = "2026-11-22T12:00:00Z";
const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn snapshot(policies: &[&str], settings: Settings) -> Snapshot {
    let compiled = policies
        .iter()
        .map(|y| compile(&serde_saphyr::from_str::<ImagePolicy>(y).unwrap()).unwrap())
        .collect();
    Snapshot::new(compiled, settings)
}

/// A Pod whose containers are `(name, image, imageID)` (empty imageID: not reported yet).
struct Pod {
    namespace: &'static str,
    name: String,
    owner: Option<(&'static str, &'static str, &'static str)>,
    containers: Vec<(&'static str, String, String)>,
    annotations: Vec<(&'static str, String)>,
}

impl Pod {
    fn new(name: &str, image: &str, image_id: &str) -> Pod {
        Pod {
            namespace: "prod",
            name: name.to_owned(),
            owner: None,
            containers: vec![("app", image.to_owned(), image_id.to_owned())],
            annotations: Vec::new(),
        }
    }
    fn owned_by(
        mut self,
        api_version: &'static str,
        kind: &'static str,
        name: &'static str,
    ) -> Pod {
        self.owner = Some((api_version, kind, name));
        self
    }
    fn in_namespace(mut self, namespace: &'static str) -> Pod {
        self.namespace = namespace;
        self
    }
    fn break_glass(mut self, ticket: &str, until: &str) -> Pod {
        self.annotations = vec![
            (BREAK_GLASS_ANNOTATION, ticket.to_owned()),
            (BREAK_GLASS_UNTIL_ANNOTATION, until.to_owned()),
        ];
        self
    }
    fn json(&self) -> Value {
        let annotations: BTreeMap<_, _> = self.annotations.iter().cloned().collect();
        let mut meta = json!({"name": self.name, "namespace": self.namespace,
                              "annotations": annotations});
        if let Some((api_version, kind, name)) = self.owner {
            meta["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind,
                "name": name, "uid": "u", "controller": true}]);
        }
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|(n, image, _)| json!({"name": n, "image": image}))
            .collect();
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|(n, _, id)| json!({"name": n, "image": "", "imageID": id}))
            .collect();
        json!({"metadata": meta, "spec": {"containers": containers},
               "status": {"phase": "Running", "containerStatuses": statuses}})
    }
}

fn labels(namespace: &str) -> Option<Labels> {
    let extra = match namespace {
        "prod" | "prod-2" => BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        "unknown" => return None,
        _ => BTreeMap::new(),
    };
    Some(with_name_label(namespace, extra))
}

fn run(snapshot: &Snapshot, pods: &[Pod]) -> AuditOutcome {
    audit(
        snapshot,
        &entries(pods),
        &labels,
        NOW.parse().unwrap(),
        true,
    )
}

/// `(pod, rule)` of every standing violation, and whether each Pod is allowed.
fn found(outcome: &AuditOutcome) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for p in &outcome.pods {
        for v in p
            .evaluated
            .decision
            .violations
            .iter()
            .filter(|v| !v.excused)
        {
            out.push((p.name.to_string(), v.rule.as_str()));
        }
    }
    out
}

const PROD: &str = r#"
apiVersion: imagegate.dev/v1alpha1
kind: ImagePolicy
metadata: {name: prod}
spec:
  namespaceSelector: {matchLabels: {env: prod}}
  allowedImages: ["registry.corp.example/**"]
  breakGlass: {ticketPattern: "^INC-[0-9]+$"}
"#;

#[test]
fn expired_break_glass_shows_with_its_expiry() {
    let s = snapshot(&[PROD], Settings::default());
    let outcome = run(
        &s,
        &[
            Pod::new("expired", "docker.io/library/nginx:1.25", "")
                .break_glass("INC-7", "2026-11-22T11:00:00Z"),
            Pod::new("valid", "docker.io/library/nginx:1.25", "")
                .break_glass("INC-8", "2026-11-22T18:00:00Z"),
            Pod::new("bad-ticket", "docker.io/library/nginx:1.25", "")
                .break_glass("whatever", "2026-11-22T18:00:00Z"),
            Pod::new("clean", "registry.corp.example/app:1", ""),
        ],
    );
    assert_eq!(
        found(&outcome),
        [
            ("bad-ticket".to_owned(), "allowedImages"),
            ("bad-ticket".to_owned(), "breakGlass"),
            ("expired".to_owned(), "allowedImages"),
            ("expired".to_owned(), "breakGlass"),
        ]
    );
    let by_name = |n: &str| outcome.pods.iter().find(|p| &*p.name == n).unwrap();
    let expired = by_name("expired");
    let refusal = expired
        .evaluated
        .decision
        .violations
        .iter()
        .find(|v| v.rule == Rule::BreakGlass)
        .unwrap();
    assert!(
        refusal
            .message
            .contains("the exception expired at 2026-11-22T11:00:00Z"),
        "{}",
        refusal.message
    );
    // The valid exception covers its Pod, and says so.
    let valid = by_name("valid");
    assert_eq!(valid.evaluated.decision.break_glass[0].ticket, "INC-8");
    let prod = &outcome.policies[0];
    assert_eq!((prod.pods_evaluated, prod.violating_pods), (4, 2));
}

#[test]
fn requester_restricted_break_glass_trusts_the_built_in_controllers_only() {
    let restricted = r#"
metadata: {name: prod}
spec:
  allowedImages: ["registry.corp.example/**"]
  breakGlass: {ticketPattern: "^INC-[0-9]+$", allowedGroups: [sre-oncall]}
"#;
    let s = snapshot(&[restricted], Settings::default());
    let until = "2026-11-22T18:00:00Z";
    let image = "docker.io/library/nginx:1.25";
    let outcome = run(
        &s,
        &[
            Pod::new("by-replicaset", image, "")
                .owned_by("apps/v1", "ReplicaSet", "web-7d")
                .break_glass("INC-1", until),
            Pod::new("by-job", image, "")
                .owned_by("batch/v1", "Job", "migrate")
                .break_glass("INC-1", until),
            // Created by something else (an operator's own service account, a person): who it
            // was is not known, so the restricted exception cannot be confirmed.
            Pod::new("by-operator", image, "")
                .owned_by("example.com/v1", "Thing", "t")
                .break_glass("INC-1", until),
            Pod::new("bare", image, "").break_glass("INC-1", until),
        ],
    );
    assert_eq!(
        found(&outcome),
        [
            ("bare".to_owned(), "allowedImages"),
            ("bare".to_owned(), "breakGlass"),
            ("by-operator".to_owned(), "allowedImages"),
            ("by-operator".to_owned(), "breakGlass"),
        ]
    );
    let bare = outcome.pods.iter().find(|p| &*p.name == "bare").unwrap();
    let refusal = bare.evaluated.decision.violations.last().unwrap();
    assert!(
        refusal.message.contains("the requester is unknown"),
        "{}",
        refusal.message
    );
    let by_rs = outcome
        .pods
        .iter()
        .find(|p| &*p.name == "by-replicaset")
        .unwrap();
    assert_eq!(
        by_rs.evaluated.decision.break_glass[0].requester.as_deref(),
        Some("system:serviceaccount:kube-system:replicaset-controller")
    );
}

#[test]
fn what_runs_is_judged() {
    let pinned_a = format!("registry.corp.example/app@{A}");
    let digest_rules = format!(
        r#"
metadata: {{name: digests}}
spec:
  deniedImages: ["docker.io/library/nginx@{B}"]
"#
    );
    let allow_one_digest = format!(
        r#"
metadata: {{name: only-a}}
spec:
  images: ["ghcr.io/corp/**"]
  allowedImages: ["ghcr.io/corp/tool@{A}"]
"#
    );
    let any = r#"
metadata: {name: pinned}
spec:
  images: ["registry.corp.example/**"]
  deniedTags: [latest]
"#;
    let s = snapshot(
        &[&digest_rules, &allow_one_digest, any],
        Settings::default(),
    );
    let outcome = run(
        &s,
        &[
            // A pinned reference must run its digest.
            Pod::new(
                "pinned-ok",
                &pinned_a,
                &format!("registry.corp.example/app@{A}"),
            ),
            Pod::new(
                "pinned-other",
                &pinned_a,
                &format!("registry.corp.example/app@{B}"),
            ),
            // The repository of an imageID is not trusted; only its digest is compared.
            Pod::new(
                "pinned-mirror",
                &pinned_a,
                &format!("mirror.example/app@{A}"),
            ),
            // A local image ID cannot be compared: no runningDigest, but a note.
            Pod::new("pinned-local", &pinned_a, A),
            // A tag that moved to a denied digest after admission.
            Pod::new(
                "tag-denied",
                "nginx:1.25",
                &format!("docker-pullable://nginx@{B}"),
            ),
            Pod::new(
                "tag-fine",
                "nginx:1.25",
                &format!("docker.io/library/nginx@{A}"),
            ),
            // A digest allowlist judges a tag on what it runs.
            Pod::new(
                "tag-allowed",
                "ghcr.io/corp/tool:2",
                &format!("ghcr.io/corp/tool@{A}"),
            ),
            Pod::new(
                "tag-not-allowed",
                "ghcr.io/corp/tool:2",
                &format!("ghcr.io/corp/tool@{B}"),
            ),
            Pod::new("tag-not-started", "ghcr.io/corp/tool:2", ""),
        ],
    );
    assert_eq!(
        found(&outcome),
        [
            // Both policies that govern the image judged a reference that is not what runs.
            ("pinned-other".to_owned(), "runningDigest"),
            ("pinned-other".to_owned(), "runningDigest"),
            ("tag-denied".to_owned(), "deniedImages"),
            ("tag-not-allowed".to_owned(), "allowedImages"),
            ("tag-not-started".to_owned(), "allowedImages"),
        ]
    );
    let by_name = |n: &str| outcome.pods.iter().find(|p| &*p.name == n).unwrap();
    let message = |n: &str| by_name(n).evaluated.decision.violations[0].message.clone();
    let m = message("pinned-other");
    assert!(
        m.contains(&format!("pinned to {A}")) && m.contains(&format!("runs {B}")),
        "{m}"
    );
    let m = message("tag-denied");
    assert!(
        m.contains(&format!("which runs {B}")) && m.contains("denied pattern"),
        "{m}"
    );
    let local = by_name("pinned-local");
    assert_eq!(local.evaluated.notes.len(), 1);
    assert!(
        local.evaluated.notes[0].contains(&format!("local image ID {A}")),
        "{:?}",
        local.evaluated.notes
    );
    let pinned = outcome
        .policies
        .iter()
        .find(|p| p.name == "pinned")
        .unwrap();
    assert_eq!(
        (pinned.violating_pods, pinned.pods_with_local_images),
        (1, 1)
    );
}

#[test]
fn namespaces_pods_and_unknown_namespaces() {
    let s = snapshot(
        &[PROD],
        Settings {
            unmatched_images: crate::policy::UnmatchedImages::Deny,
            ..Settings::default()
        },
    );
    let outcome = run(
        &s,
        &[
            Pod::new("a", "docker.io/library/nginx:1", "").in_namespace("dev"),
            Pod::new("b", "docker.io/library/nginx:1", "").in_namespace("prod"),
            Pod::new("c", "docker.io/library/nginx:1", "").in_namespace("unknown"),
        ],
    );
    assert_eq!(outcome.pods_evaluated, 2);
    assert_eq!(outcome.pods_skipped, 1);
    let prod = &outcome.policies[0];
    assert_eq!((prod.pods_evaluated, prod.violating_pods), (1, 1));
    // In dev no policy applies: the image is unmatched.
    let unmatched = outcome.unmatched.as_ref().unwrap();
    assert_eq!(unmatched.name, "(unmatched-images)");
    assert_eq!((unmatched.pods_evaluated, unmatched.violating_pods), (2, 1));
    assert_eq!(unmatched.violations().next().unwrap().namespace, "dev");
}

#[test]
fn status_lists_twenty_violations_in_order_and_replicas_once() {
    let s = snapshot(&[PROD], Settings::default());
    let mut pods = Vec::new();
    // 30 replicas of one workload: one entry.
    for i in 0..30 {
        pods.push(
            Pod::new(&format!("web-{i:02}"), "docker.io/library/nginx:1", "").owned_by(
                "apps/v1",
                "ReplicaSet",
                "web-7d",
            ),
        );
    }
    // 25 bare Pods in two namespaces: one entry each, the first twenty in order.
    for i in 0..25 {
        let ns = if i % 2 == 0 { "prod" } else { "prod-2" };
        pods.push(
            Pod::new(&format!("bare-{i:02}"), "docker.io/library/nginx:1", "").in_namespace(ns),
        );
    }
    let outcome = run(&s, &pods);
    let prod = &outcome.policies[0];
    assert_eq!(prod.violating_pods, 55);
    let status = prod.status(NOW.parse().unwrap());
    assert_eq!(status.violations.len(), AUDIT_VIOLATIONS_LIMIT);
    let listed: Vec<String> = status
        .violations
        .iter()
        .map(|v| format!("{}/{}", v.namespace, v.owner.as_deref().unwrap_or(&v.pod)))
        .collect();
    // By namespace, then workload: an owner `Kind/name` sorts among Pod names as text.
    let mut want = vec!["prod/ReplicaSet/web-7d".to_owned()];
    want.extend(
        (0..25)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("prod/bare-{i:02}")),
    );
    want.extend(
        (0..25)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("prod-2/bare-{i:02}")),
    );
    want.truncate(AUDIT_VIOLATIONS_LIMIT);
    assert_eq!(listed, want);
    let web = status
        .violations
        .iter()
        .find(|v| v.owner.is_some())
        .unwrap();
    // The first replica in order is the example.
    assert_eq!(web.pod, "web-00");
    assert_eq!(web.rule, "allowedImages");
    assert_eq!(web.container_type, "containers");
    assert_eq!(status.violating_pods, 55);
    assert_eq!(status.pods_evaluated, 55);
}

#[test]
fn status_is_rewritten_only_when_it_changes_or_grows_old() {
    let t0: jiff::Timestamp = NOW.parse().unwrap();
    let minutes = |m: i64| t0 + jiff::SignedDuration::from_mins(m);
    let refresh = Duration::from_secs(600);
    let status = |at: jiff::Timestamp, violating: i64| AuditStatus {
        last_audit_time: Some(Time(at)),
        pods_evaluated: 10,
        violating_pods: violating,
        ..AuditStatus::default()
    };
    assert!(needs_write(None, &status(t0, 0), refresh));
    let current = status(t0, 1);
    assert!(!needs_write(
        Some(&current),
        &status(minutes(3), 1),
        refresh
    ));
    assert!(needs_write(Some(&current), &status(minutes(3), 2), refresh));
    assert!(needs_write(
        Some(&current),
        &status(minutes(10), 1),
        refresh
    ));
    let untimed = AuditStatus {
        last_audit_time: None,
        ..current
    };
    assert!(needs_write(Some(&untimed), &status(minutes(1), 1), refresh));
}

/// A policy `sig` whose entry `release` (the test P-256 key) governs `ghcr.io/corp/**`.
fn signing_policy() -> String {
    let key: String = crate::policy::test_keys::P256
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect();
    format!(
        "metadata: {{name: sig}}\nspec:\n  images: ['ghcr.io/corp/**']\n  verifySignatures:\n  - name: release\n    key:\n      publicKey: |\n{key}"
    )
}

/// Pods in the index, as a pass reads them.
fn entries(pods: &[Pod]) -> Vec<PodEntry> {
    let mut index = PodIndex::new();
    index.apply(watcher::Event::Init);
    for p in pods {
        index.apply(watcher::Event::InitApply(
            serde_json::from_value(p.json()).unwrap(),
        ));
    }
    index.apply(watcher::Event::InitDone);
    index.entries()
}

/// What a registry would have said about `image`: its digest, and the entry's outcome.
fn image_evidence(digest: &str, outcome: Outcome) -> crate::evidence::ImageEvidence {
    crate::evidence::ImageEvidence {
        digest: Some(digest.to_owned()),
        entries: [(
            "sig/release".to_owned(),
            crate::evidence::EntryEvidence {
                outcome,
                source: crate::evidence::Source::Cache,
            },
        )]
        .into(),
        ..Default::default()
    }
}

/// A pass over `pods` with `evidence`, every Pod kept.
fn with_evidence(s: &Snapshot, pods: &[PodEntry], evidence: &Evidence) -> AuditOutcome {
    audit_with(s, pods, &labels, NOW.parse().unwrap(), true, Some(evidence))
}

fn verified(digest: &str) -> Outcome {
    Outcome::Verified {
        digest: digest.to_owned(),
        format: crate::evidence::SignatureFormat::CosignTag,
        signer: "sha256:k".to_owned(),
    }
}

#[test]
fn signatures_are_judged_on_the_digest_that_runs() {
    let s = snapshot(&[&signing_policy()], Settings::default());
    let tag = "ghcr.io/corp/app:1";
    let pods = entries(&[
        // Admitted when the tag named A, which is signed.
        Pod::new("runs-signed", tag, &format!("ghcr.io/corp/app@{A}")),
        // Started after the tag moved to B, which is not.
        Pod::new("runs-unsigned", tag, &format!("ghcr.io/corp/app@{B}")),
        // Not started yet: judged on what the tag names now.
        Pod::new("not-started", tag, ""),
        // Pinned to A, but the node runs B: runningDigest, and B's signature is judged.
        Pod::new(
            "pinned-other",
            &format!("ghcr.io/corp/app@{A}"),
            &format!("ghcr.io/corp/app@{B}"),
        ),
        // Not governed by the entry: asks for nothing.
        Pod::new("ungoverned", "docker.io/library/nginx:1", ""),
    ]);

    let requests = evidence_requests(&s, &pods, &labels);
    let asked: Vec<(&str, Vec<&str>)> = requests
        .iter()
        .map(|r| {
            (
                r.image.as_str(),
                r.checks.iter().map(|c| c.entry.as_str()).collect(),
            )
        })
        .collect();
    let at_a = format!("ghcr.io/corp/app@{A}");
    let at_b = format!("ghcr.io/corp/app@{B}");
    assert_eq!(
        asked,
        [
            (tag, vec!["sig/release"]),
            (at_b.as_str(), vec!["sig/release"]),
            (at_a.as_str(), vec!["sig/release"]),
        ],
        "one request per image at the digest it runs, each once"
    );
    assert_eq!(requests[1].reference.digest(), Some(B));

    let evidence = Evidence {
        images: [
            (at_a.clone(), image_evidence(A, verified(A))),
            (
                at_b.clone(),
                image_evidence(
                    B,
                    Outcome::NotVerified {
                        reason: format!("no signature for {B} in ghcr.io/corp/app"),
                    },
                ),
            ),
            // The tag names B now.
            (
                tag.to_owned(),
                image_evidence(
                    B,
                    Outcome::NotVerified {
                        reason: "no signature".to_owned(),
                    },
                ),
            ),
        ]
        .into(),
    };
    let outcome = with_evidence(&s, &pods, &evidence);
    assert_eq!(
        found(&outcome),
        [
            ("not-started".to_owned(), "verifySignatures"),
            ("pinned-other".to_owned(), "runningDigest"),
            ("pinned-other".to_owned(), "verifySignatures"),
            ("runs-unsigned".to_owned(), "verifySignatures"),
        ]
    );
    assert_eq!(outcome.signatures_unavailable, 0);
    let by_name = |n: &str| outcome.pods.iter().find(|p| &*p.name == n).unwrap();
    let unsigned = &by_name("runs-unsigned").evaluated.decision.violations[0];
    assert!(
        unsigned.message.contains(&format!(
            "image \"{tag}\" (ghcr.io/corp/app:1), which runs {B}, has no verified signature: release: no signature for {B}"
        )),
        "{}",
        unsigned.message
    );
    assert!(
        unsigned
            .message
            .ends_with(&format!("sign ghcr.io/corp/app@{B} with this entry's key")),
        "{}",
        unsigned.message
    );
    let sig = &outcome.policies[0];
    assert_eq!((sig.pods_evaluated, sig.violating_pods), (5, 3));
    let listed = sig.status(NOW.parse().unwrap());
    assert!(
        listed.violations.iter().any(|v| v.pod == "runs-unsigned"
            && v.rule == "verifySignatures"
            && v.message.contains(B)),
        "{listed:?}"
    );

    // Without evidence, every governed image fails closed.
    let blind = audit(&s, &pods, &labels, NOW.parse().unwrap(), true);
    assert_eq!(blind.policies[0].violating_pods, 4);
}

#[test]
fn unavailable_signatures_are_reported_as_such() {
    let s = snapshot(&[&signing_policy()], Settings::default());
    let pods = entries(&[Pod::new(
        "app",
        "ghcr.io/corp/app:1",
        &format!("ghcr.io/corp/app@{A}"),
    )]);
    let key = format!("ghcr.io/corp/app@{A}");
    assert_eq!(evidence_requests(&s, &pods, &labels)[0].image, key);
    let evidence = Evidence {
        images: [(
            key,
            image_evidence(
                A,
                Outcome::Unavailable {
                    reason: "ghcr.io answered 503".to_owned(),
                },
            ),
        )]
        .into(),
    };
    let outcome = with_evidence(&s, &pods, &evidence);
    assert_eq!(outcome.signatures_unavailable, 1);
    let v = &outcome.pods[0].evaluated.decision.violations[0];
    assert_eq!(v.rule, Rule::VerifySignatures);
    assert!(
        v.message
            .contains("release: could not be checked: ghcr.io answered 503")
            && v.message.contains("imagegate fails closed"),
        "{}",
        v.message
    );
    // A snapshot without signature entries asks for nothing.
    let plain = snapshot(&[PROD], Settings::default());
    assert!(evidence_requests(&plain, &pods, &labels).is_empty());
}
