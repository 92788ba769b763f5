//! `verifySignatures` through the HTTPS server: `/validate` and `/imagereview` gather evidence
//! before deciding, only for images that an entry governs, within the API server's deadline.
//! Evidence comes from a stand-in for the registry adapter that answers with fixed outcomes
//! and remembers what it was asked; the registry adapter itself is tested against a real
//! registry in its own tests.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, cause_fields, fixture, policy, warnings};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use imagegate::evidence::{
    Deadline, EntryEvidence, Evidence, EvidenceRequest, Gather, ImageEvidence, Outcome,
    SignatureFormat, Source,
};
use serde_json::{Value, json};

const KEY: &str = include_str!("data/keys/p256.pub");
const DIGEST: &str = "sha256:3f4ac9e1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b77e1";

/// What one gather call was asked: the images with their entries, and the deadline's budget.
type Asked = (Vec<(String, Vec<String>)>, Duration);

/// Answers every check from a table of outcomes per entry (tags resolve to [`DIGEST`], and a
/// verified outcome is for the image's digest); a check the table does not know is not
/// verified.
#[derive(Default)]
struct FixedEvidence {
    outcomes: BTreeMap<String, Outcome>,
    asked: Mutex<Vec<Asked>>,
}

impl FixedEvidence {
    fn new(outcomes: &[(&str, Outcome)]) -> Arc<FixedEvidence> {
        Arc::new(FixedEvidence {
            outcomes: outcomes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            asked: Mutex::default(),
        })
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

impl Gather for FixedEvidence {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        deadline: Deadline,
    ) -> BoxFuture<'a, Evidence> {
        self.asked.lock().unwrap().push((
            requests
                .iter()
                .map(|r| {
                    (
                        r.image.clone(),
                        r.checks.iter().map(|c| c.entry.clone()).collect(),
                    )
                })
                .collect(),
            deadline.budget,
        ));
        let mut evidence = Evidence::default();
        for r in requests {
            let digest = r.reference.digest().unwrap_or(DIGEST);
            let entries = r
                .checks
                .iter()
                .map(|c| {
                    let outcome = match self.outcomes.get(&c.entry) {
                        Some(Outcome::Verified { format, signer, .. }) => Outcome::Verified {
                            digest: digest.to_owned(),
                            format: *format,
                            signer: signer.clone(),
                        },
                        Some(other) => other.clone(),
                        None => Outcome::NotVerified {
                            reason: "no signature found".into(),
                        },
                    };
                    (
                        c.entry.clone(),
                        EntryEvidence {
                            outcome,
                            source: Source::Fresh,
                        },
                    )
                })
                .collect();
            evidence.images.insert(
                r.image.clone(),
                ImageEvidence {
                    digest: Some(digest.to_owned()),
                    digest_error: None,
                    digest_source: Some(Source::Fresh),
                    entries,
                },
            );
        }
        futures::future::ready(evidence).boxed()
    }
}

fn verified() -> Outcome {
    Outcome::Verified {
        digest: DIGEST.into(),
        format: SignatureFormat::CosignTag,
        signer: "sha256:key".into(),
    }
}

/// A policy with one key entry `release` for `images` (in `mode`).
fn signing_policy(name: &str, mode: &str, images: &str) -> String {
    let key: String = KEY.lines().map(|l| format!("      {l}\n")).collect();
    policy(
        name,
        &format!(
            "mode: {mode}\nverifySignatures:\n- name: release\n  images: [{images}]\n  key:\n    publicKey: |\n{key}"
        ),
    )
}

async fn server(policies: &str, evidence: &Arc<FixedEvidence>, extra: &[&str]) -> TestServer {
    let gather: Arc<dyn Gather> = evidence.clone();
    TestServer::start_with(policies, extra, Some(gather)).await
}

/// A server with the policy `sig` (in `mode`) whose entry `release` is for the sidecar's
/// registry, `ghcr.io/example/**`, and evidence from `outcomes`.
async fn sidecar_server(
    mode: &str,
    outcomes: &[(&str, Outcome)],
) -> (TestServer, Arc<FixedEvidence>) {
    let evidence = FixedEvidence::new(outcomes);
    let s = server(
        &signing_policy("sig", mode, "'ghcr.io/example/**'"),
        &evidence,
        &[],
    )
    .await;
    (s, evidence)
}

async fn review_at(server: &TestServer, path: &str, body: &Value) -> Value {
    let (status, out) = server.post(path, serde_json::to_vec(body).unwrap()).await;
    assert_eq!(status, 200, "{out}");
    out["response"].clone()
}

#[tokio::test]
async fn signed_images_are_admitted_and_unsigned_ones_denied_naming_the_entry() {
    let (s, evidence) = sidecar_server("Enforce", &[("sig/release", verified())]).await;
    let review = fixture("pod-create.json");
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    // Only the image an entry governs was asked for.
    let asked = evidence.asked();
    assert_eq!(
        asked[0].0,
        [(
            "ghcr.io/example/sidecar:v2.3.1".to_owned(),
            vec!["sig/release".to_owned()]
        )]
    );
    s.stop().await;

    let (s, _) = sidecar_server("Enforce", &[]).await;
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "[sig/verifySignatures] container \"sidecar\": image \"ghcr.io/example/sidecar:v2.3.1\""
        ),
        "{message}"
    );
    assert!(
        message.contains("has no verified signature: release: no signature found;"),
        "{message}"
    );
    assert!(
        message.contains(&format!("sign ghcr.io/example/sidecar@{DIGEST}")),
        "{message}"
    );
    assert_eq!(
        r["status"]["details"]["causes"][0]["reason"],
        "verifySignatures"
    );
    assert_eq!(cause_fields(&r), ["spec.containers[1].image"]);
    s.stop().await;
}

#[tokio::test]
async fn the_deadline_is_the_api_servers_timeout_less_a_second_else_verify_timeout() {
    let evidence = FixedEvidence::new(&[("sig/release", verified())]);
    let s = server(
        &signing_policy("sig", "Enforce", "'**'"),
        &evidence,
        &["--verify-timeout", "3s"],
    )
    .await;
    let review = fixture("pod-create.json");
    let r = review_at(&s, "/validate?timeout=10s", &review).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = review_at(&s, "/validate", &review).await;
    assert_eq!(r["allowed"], true, "{r}");
    let budgets: Vec<Duration> = evidence.asked().iter().map(|a| a.1).collect();
    assert_eq!(budgets, [Duration::from_secs(9), Duration::from_secs(3)]);
    s.stop().await;
}

#[tokio::test]
async fn objects_that_no_entry_governs_never_reach_the_registry() {
    let evidence = FixedEvidence::new(&[]);
    let policies = format!(
        "{}---\n{}",
        signing_policy("sig", "Enforce", "'registry.corp.example/**'"),
        policy("tags", "deniedTags: [latest]")
    );
    let s = server(&policies, &evidence, &[]).await;
    for name in [
        "pod-create.json",
        "deployment-create.json",
        "pod-update.json",
        "pod-ephemeralcontainers-update.json",
    ] {
        let r = s.review(&fixture(name)).await;
        assert_eq!(r["allowed"], true, "{name}: {r}");
    }
    let (status, out) = s
        .post(
            "/imagereview",
            serde_json::to_vec(&fixture("imagereview-pod-create.json")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["status"]["allowed"], true, "{out}");
    assert!(evidence.asked().is_empty(), "{:?}", evidence.asked());
    s.stop().await;
}

#[tokio::test]
async fn every_entry_point_and_image_kind_is_verified() {
    let evidence = FixedEvidence::new(&[]);
    let s = server(&signing_policy("sig", "Enforce", "'**'"), &evidence, &[]).await;

    // A workload's pod template.
    let r = s.review(&fixture("deployment-create.json")).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(
        cause_fields(&r),
        [
            "spec.template.spec.initContainers[0].image",
            "spec.template.spec.containers[0].image",
            "spec.template.spec.containers[1].image",
        ]
    );

    // `kubectl debug`: the new ephemeral container only; the Pod's other images are unchanged.
    let r = s
        .review(&fixture("pod-ephemeralcontainers-update.json"))
        .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(cause_fields(&r), ["spec.ephemeralContainers[0].image"]);
    let last = evidence.asked().pop().unwrap();
    assert_eq!(last.0.len(), 1, "{last:?}");
    assert_eq!(last.0[0].0, "busybox:1.36");

    // An image volume.
    let mut review = common::pod_review(
        "team",
        "alice",
        &[],
        json!({}),
        json!([{"name": "app", "image": "registry.corp.example/app@".to_owned() + DIGEST}]),
    );
    review["request"]["object"]["spec"]["volumes"] =
        json!([{"name": "models", "image": {"reference": "registry.corp.example/models:3"}}]);
    let evidence_for = |images: &[(String, Vec<String>)]| {
        images.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>()
    };
    let r = s.review(&review).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(
        cause_fields(&r),
        [
            "spec.containers[0].image",
            "spec.volumes[0].image.reference"
        ]
    );
    assert_eq!(
        evidence_for(&evidence.asked().pop().unwrap().0),
        [
            format!("registry.corp.example/app@{DIGEST}"),
            "registry.corp.example/models:3".to_owned()
        ]
    );

    // The legacy plugin's ImageReview.
    let (status, out) = s
        .post(
            "/imagereview",
            serde_json::to_vec(&fixture("imagereview-pod-create.json")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["status"]["allowed"], false);
    let reason = out["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("[sig/verifySignatures] container \"#0\": image \"nginx:1.27\""),
        "{reason}"
    );
    assert_eq!(evidence.asked().pop().unwrap().0.len(), 4);
    s.stop().await;
}

#[tokio::test]
async fn warn_mode_admits_with_a_warning_and_unavailable_fails_closed() {
    let unavailable = Outcome::Unavailable {
        reason: "verification did not finish within 9s".into(),
    };
    let (s, _) = sidecar_server("Warn", &[("sig/release", unavailable.clone())]).await;
    let r = s.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], true, "{r}");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("imagegate: [sig/verifySignatures]"),
        "{w:?}"
    );
    assert_eq!(r["auditAnnotations"]["decision"], "warned");
    s.stop().await;

    let (s, _) = sidecar_server("Enforce", &[("sig/release", unavailable)]).await;
    let r = s.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("release: could not be checked: verification did not finish within 9s; imagegate fails closed"),
        "{message}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_decision_counts_the_rule_in_the_metrics() {
    let (s, _) = sidecar_server("Enforce", &[]).await;
    let r = s.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], false);
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics
            .contains("imagegate_violations_total{rule=\"verifySignatures\",mode=\"Enforce\"} 1"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test]
async fn serve_reads_secret_ref_keys_from_the_key_secret_dir() {
    let spec = "verifySignatures:\n- name: release\n  key:\n    secretRef: {name: cosign, key: cosign.pub}";
    let policies = policy("sig", spec);

    // Without the folder the policy cannot compile, and serve says why.
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        serve: imagegate::cli::serve::ServeArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, &policies).unwrap();
    let certs = dir.path().join("certs");
    let argv = [
        "serve",
        "--policies",
        file.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "off",
        "--cert-dir",
        certs.to_str().unwrap(),
    ];
    let args = <Args as clap::Parser>::try_parse_from(argv).unwrap().serve;
    let e = format!("{:#}", imagegate::cli::serve::prepare(&args).unwrap_err());
    assert!(
        e.contains("spec.verifySignatures[0].key.secretRef: the Secret \"cosign\" cannot be read")
            && e.contains("--key-secret-dir"),
        "{e}"
    );

    // With it, the key is read from DIR/cosign/cosign.pub.
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(keys.join("cosign")).unwrap();
    std::fs::write(keys.join("cosign/cosign.pub"), KEY).unwrap();
    let evidence = FixedEvidence::new(&[("sig/release", verified())]);
    let s = server(
        &policies,
        &evidence,
        &["--key-secret-dir", keys.to_str().unwrap()],
    )
    .await;
    let r = s.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(evidence.asked()[0].0.len(), 4, "every image of the Pod");
    s.stop().await;
}
