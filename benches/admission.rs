//! Everything `POST /validate` and `POST /mutate` do between receiving the body and sending the
//! answer, without the network: read the AdmissionReview, decide (or plan the patch) against the
//! example policies, write the answer and the record. This is the work the load benchmark
//! (`benches/load/run.sh`) measures on top of a bare server, in a form that gives stable numbers.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use imagegate::admission::{self, MutateOutcome, Outcome, record};
use imagegate::evidence::{EntryEvidence, Evidence, ImageEvidence, SignatureFormat, Source};
use imagegate::mutation::{self, Digests};
use imagegate::policy::{ImagePolicy, Settings, Snapshot};

// As in the binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURE: &str = include_str!("../tests/data/pod-create.json");

fn snapshot() -> Snapshot {
    snapshot_with(&[])
}

/// The example policies and `more`.
fn snapshot_with(more: &[ImagePolicy]) -> Snapshot {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut policies: Vec<_> =
        imagegate::manifests::load_policies(&[root.join("examples/policies")])
            .expect("example policies")
            .into_iter()
            .map(|p| p.policy)
            .collect();
    policies.extend_from_slice(more);
    let (snapshot, errors) = Snapshot::compile(&policies, Settings::default());
    assert!(errors.is_empty(), "example policies compile");
    snapshot
}

/// One request, as the handler serves it: the answer's bytes and the record's bytes.
fn serve(
    body: &[u8],
    snapshot: &Snapshot,
    labels: &BTreeMap<String, String>,
) -> (Vec<u8>, Vec<u8>) {
    let request = admission::parse_admission_review(body).expect("review");
    let now = jiff::Timestamp::now();
    let outcome = request.decide(snapshot, Ok(labels), now);
    let answer = request.response(&outcome).to_json();
    let Outcome::Decided(decision) = &outcome else {
        panic!("a Pod is decided")
    };
    let ctx = request.record_context(Some(labels), now, Duration::from_micros(10));
    let line = record::decision_line(&ctx, decision, outcome.label());
    (answer, line)
}

fn bench_validate(c: &mut Criterion) {
    let snapshot = snapshot();
    let admitted = FIXTURE.as_bytes().to_vec();
    // The same Pod in a namespace where the production example policy denies it.
    let denied = FIXTURE
        .replace("\"namespace\":\"wh-test\"", "\"namespace\":\"shop-prod\"")
        .into_bytes();
    let labels = |ns: &str, env: Option<&str>| {
        let mut l: BTreeMap<String, String> =
            [("kubernetes.io/metadata.name".to_owned(), ns.to_owned())].into();
        if let Some(env) = env {
            l.insert("env".to_owned(), env.to_owned());
        }
        l
    };
    let mut group = c.benchmark_group("validate");
    for (name, body, labels) in [
        ("admitted", &admitted, labels("wh-test", None)),
        ("denied", &denied, labels("shop-prod", Some("prod"))),
    ] {
        let (answer, _) = serve(body, &snapshot, &labels);
        let allowed = String::from_utf8_lossy(&answer).contains("\"allowed\":true");
        assert_eq!(
            allowed,
            name == "admitted",
            "{name}: {}",
            String::from_utf8_lossy(&answer)
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(serve(black_box(body), &snapshot, &labels)))
        });
    }
    group.finish();

    // The admitted request, step by step.
    let labels = labels("wh-test", None);
    let request = admission::parse_admission_review(&admitted).expect("review");
    let now = jiff::Timestamp::now();
    let outcome = request.decide(&snapshot, Ok(&labels), now);
    let Outcome::Decided(decision) = &outcome else {
        panic!("a Pod is decided")
    };
    let ctx = request.record_context(Some(&labels), now, Duration::from_micros(10));
    let mut group = c.benchmark_group("validate_steps");
    group.bench_function("read", |b| {
        b.iter(|| black_box(admission::parse_admission_review(black_box(&admitted))))
    });
    group.bench_function("decide", |b| {
        b.iter(|| black_box(request.decide(&snapshot, Ok(&labels), now)))
    });
    group.bench_function("answer", |b| {
        b.iter(|| black_box(request.response(black_box(&outcome)).to_json()))
    });
    group.bench_function("record", |b| {
        b.iter(|| black_box(record::decision_line(&ctx, decision, outcome.label())))
    });
    group.finish();
}

/// One request governed by a signature entry whose outcomes are all cached, as the handler
/// serves it: the evidence requests, the decision with the evidence the adapter's cache gives
/// (cloned, as the adapter returns a new one each call), the answer and the record with its
/// evidence. The adapter's own cost of answering from its cache is `benches/registry.rs`'s
/// "gather … everything cached".
fn serve_signed(
    body: &[u8],
    snapshot: &Snapshot,
    labels: &BTreeMap<String, String>,
    cached: &Evidence,
) -> (Vec<u8>, Vec<u8>) {
    let request = admission::parse_admission_review(body).expect("review");
    let now = jiff::Timestamp::now();
    let requests = request.evidence_requests(snapshot, labels);
    assert!(!requests.is_empty(), "the signing policy governs the Pod");
    let evidence = cached.clone();
    let outcome = request.decide_with(snapshot, Ok(labels), now, Some(&evidence));
    let answer = request.response(&outcome).to_json();
    let Outcome::Decided(decision) = &outcome else {
        panic!("a Pod is decided")
    };
    let ctx = record::RecordContext {
        evidence: Some(&evidence),
        ..request.record_context(Some(labels), now, Duration::from_micros(10))
    };
    let line = record::decision_line(&ctx, decision, outcome.label());
    (answer, line)
}

/// DESIGN §10: a decision whose signature outcomes are all cached costs at most 5 µs more than
/// one without a signature rule. The same admitted fixture Pod, once against the example
/// policies and once with a policy that makes every one of its four images verify a cosign key.
fn bench_signed(c: &mut Criterion) {
    let key: String = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys/p256.pub"),
    )
    .expect("test key")
    .lines()
    .map(|l| format!("          {l}\n"))
    .collect();
    let signing: ImagePolicy = serde_saphyr::from_str(&format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  verifySignatures:\n    - name: release\n      images: ['**']\n      key:\n        publicKey: |\n{key}"
    ))
    .expect("signing policy");
    let plain = snapshot();
    let signed = snapshot_with(&[signing]);
    let body = FIXTURE.as_bytes();
    let labels: BTreeMap<String, String> = [(
        "kubernetes.io/metadata.name".to_owned(),
        "wh-test".to_owned(),
    )]
    .into();

    // What the adapter's cache answers: every image's digest and the entry verified.
    let request = admission::parse_admission_review(body).expect("review");
    let requests = request.evidence_requests(&signed, &labels);
    assert_eq!(
        requests.len(),
        4,
        "the four images of the fixture are governed"
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cached = Evidence {
        images: requests
            .iter()
            .map(|r| {
                // A pinned image's own digest; a tag's resolution otherwise.
                let digest = match r.image.split_once('@') {
                    Some((_, pinned)) => pinned.to_owned(),
                    None => digest.clone(),
                };
                let entries = r
                    .checks
                    .iter()
                    .map(|check| {
                        let verified = EntryEvidence {
                            outcome: imagegate::evidence::Outcome::Verified {
                                digest: digest.clone(),
                                format: SignatureFormat::CosignTag,
                                signer: "sha256:4f1c…".to_owned(),
                            },
                            source: Source::Cache,
                        };
                        (check.entry.clone(), verified)
                    })
                    .collect();
                let found = ImageEvidence {
                    digest: Some(digest.clone()),
                    digest_source: Some(Source::Cache),
                    entries,
                    ..ImageEvidence::default()
                };
                (r.image.clone(), found)
            })
            .collect(),
    };
    let (answer, _) = serve_signed(body, &signed, &labels, &cached);
    assert!(
        String::from_utf8_lossy(&answer).contains("\"allowed\":true"),
        "verified images are admitted: {}",
        String::from_utf8_lossy(&answer)
    );

    let mut group = c.benchmark_group("validate_signed");
    group.bench_function("no-signature-rule", |b| {
        b.iter(|| black_box(serve(black_box(body), &plain, &labels)))
    });
    group.bench_function("all-cached", |b| {
        b.iter(|| black_box(serve_signed(black_box(body), &signed, &labels, &cached)))
    });
    group.finish();
}

/// One `/mutate` request, as the handler serves it: the answer's bytes and the record's bytes.
/// With `pins`, the evidence the registry adapter's cache gives for the digests to pin (the
/// adapter's own cost is `benches/registry.rs`'s "gather … all cached").
fn serve_mutate(
    body: &[u8],
    snapshot: &Snapshot,
    labels: &BTreeMap<String, String>,
    pins: Option<&Evidence>,
) -> (Vec<u8>, Vec<u8>) {
    let request = admission::parse_admission_review(body).expect("review");
    let now = jiff::Timestamp::now();
    let requests = if snapshot.pins_digests() {
        request.digest_requests(snapshot, labels)
    } else {
        Vec::new()
    };
    let (digests, evidence) = match pins {
        Some(evidence) if !requests.is_empty() => {
            (mutation::digests_from(evidence), Some(evidence))
        }
        _ => (Digests::new(), None),
    };
    let outcome = request.plan_mutation(snapshot, Ok(labels), &digests);
    let answer = request.mutate_response(&outcome).to_json();
    let MutateOutcome::Planned(plan) = &outcome else {
        panic!("a Pod CREATE is planned for")
    };
    let ctx = record::RecordContext {
        endpoint: "mutate",
        evidence,
        ..request.record_context(Some(labels), now, Duration::from_micros(10))
    };
    (answer, record::mutation_line(&ctx, plan, outcome.label()))
}

fn bench_mutate(c: &mut Criterion) {
    let always: ImagePolicy = serde_saphyr::from_str(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: always-pull}\nspec: {setPullPolicyAlways: true}",
    )
    .expect("policy");
    let snapshot = snapshot_with(&[always]);
    let labels: BTreeMap<String, String> = [(
        "kubernetes.io/metadata.name".to_owned(),
        "wh-test".to_owned(),
    )]
    .into();
    // The captured Pod (four containers), and the same Pod with 5,000 containers.
    let pod = FIXTURE.as_bytes().to_vec();
    let mut large: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
    large["request"]["object"]["spec"]["containers"] = (0..5000)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": format!("reg.example/app:{i}"), "imagePullPolicy": "IfNotPresent"}))
        .collect();
    let large = serde_json::to_vec(&large).expect("JSON");
    // The same policy pinning digests too, with the digests of the Pod's three tags as the
    // adapter's cache has them.
    let pinning: ImagePolicy = serde_saphyr::from_str(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: always-pull}\nspec: {setPullPolicyAlways: true, pinDigests: true}",
    )
    .expect("policy");
    let pinning = snapshot_with(&[pinning]);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cached = Evidence {
        images: [
            "busybox:1.36",
            "nginx:1.27",
            "ghcr.io/example/sidecar:v2.3.1",
        ]
        .into_iter()
        .map(|image| {
            let found = ImageEvidence {
                digest: Some(digest.clone()),
                digest_source: Some(Source::Cache),
                ..ImageEvidence::default()
            };
            (image.to_owned(), found)
        })
        .collect(),
    };
    let mut group = c.benchmark_group("mutate");
    for (name, body, snapshot, pins, changes) in [
        ("pod", &pod, &snapshot, None, 4),
        ("5000-containers", &large, &snapshot, None, 5002),
        ("pod-pinned", &pod, &pinning, Some(&cached), 7),
    ] {
        let (answer, _) = serve_mutate(body, snapshot, &labels, pins);
        let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().expect("a patch"))
            .expect("base64");
        let patch: Vec<serde_json::Value> = serde_json::from_slice(&patch).expect("JSON");
        assert_eq!(patch.len(), changes, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| black_box(serve_mutate(black_box(body), snapshot, &labels, pins)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_validate, bench_signed, bench_mutate);
criterion_main!(benches);
