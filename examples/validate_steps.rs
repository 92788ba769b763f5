//! Runs one step of `POST /validate` N times, for counting its instructions: on a shared
//! machine, timings move by 15 % from one run to the next, and instruction counts do not.
//! `benches/count.sh` runs it under cachegrind twice and prints the instructions per request.
//!
//! `validate_steps STEP N`, where STEP is `read`, `decide`, `answer`, `record`, `metrics` or
//! `all`, optionally prefixed with `denied-` for the Pod in a namespace where the `production`
//! example policy denies it (as in `benches/admission.rs` and `benches/load/run.sh`); or
//! `mutate`: all of `POST /mutate` for the same Pod, with one more policy that sets
//! `imagePullPolicy: Always` (a patch of four operations, as in the load script's `mutated`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use imagegate::admission::{self, MutateOutcome, Outcome, record};
use imagegate::metrics::{AdmissionResult, Endpoint, Metrics};
use imagegate::mutation::Digests;
use imagegate::policy::{Settings, Snapshot};

// As in the binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FIXTURE: &str = include_str!("../tests/data/pod-create.json");

fn main() -> anyhow::Result<()> {
    let usage = "usage: validate_steps ([denied-](read|decide|answer|record|metrics|all)|mutate) N";
    let mut args = std::env::args().skip(1);
    let step = args.next().context(usage)?;
    let n: usize = args.next().context(usage)?.parse().context(usage)?;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut policies: Vec<_> =
        imagegate::manifests::load_policies(&[root.join("examples/policies")])?
            .into_iter()
            .map(|p| p.policy)
            .collect();
    if step == "mutate" {
        policies.push(serde_saphyr::from_str(
            "metadata: {name: always-pull}\nspec: {setPullPolicyAlways: true}",
        )?);
    }
    let (snapshot, errors) = Snapshot::compile(&policies, Settings::default());
    if !errors.is_empty() {
        bail!("the example policies do not compile");
    }
    let (step, namespace) = match step.strip_prefix("denied-") {
        Some(step) => (step.to_owned(), "shop-prod"),
        None => (step, "wh-test"),
    };
    let body = FIXTURE.replace(
        "\"namespace\":\"wh-test\"",
        &format!("\"namespace\":\"{namespace}\""),
    );
    let mut labels: BTreeMap<String, String> = [(
        "kubernetes.io/metadata.name".to_owned(),
        namespace.to_owned(),
    )]
    .into();
    if namespace == "shop-prod" {
        labels.insert("env".to_owned(), "prod".to_owned());
    }

    let request = admission::parse_admission_review(body.as_bytes())?;
    let now = jiff::Timestamp::now();
    let outcome = request.decide(&snapshot, Ok(&labels), now);
    let Outcome::Decided(decision) = &outcome else {
        bail!("a Pod is decided");
    };
    let latency = Duration::from_micros(10);
    let ctx = request.record_context(Some(&labels), now, latency);
    let metrics = Metrics::new();
    for _ in 0..n {
        match step.as_str() {
            "read" => {
                black_box(admission::parse_admission_review(black_box(
                    body.as_bytes(),
                ))?);
            }
            "decide" => {
                black_box(request.decide(&snapshot, Ok(&labels), now));
            }
            "answer" => {
                black_box(request.response(black_box(&outcome)).to_json());
            }
            "record" => {
                black_box(record::decision_line(&ctx, decision, outcome.label()));
            }
            "metrics" => {
                metrics.record_decision(decision);
                metrics.record_admission(Endpoint::validate, outcome.result(), latency);
            }
            "all" => {
                let request = admission::parse_admission_review(black_box(body.as_bytes()))?;
                // As the handler: registry evidence only when a signature entry governs an
                // image (never with the example policies).
                if snapshot.has_signature_rules() {
                    black_box(request.evidence_requests(&snapshot, &labels));
                }
                let outcome = request.decide(&snapshot, Ok(&labels), now);
                black_box(request.response(&outcome).to_json());
                if let Outcome::Decided(d) = &outcome {
                    let ctx = request.record_context(Some(&labels), now, latency);
                    black_box(record::decision_line(&ctx, d, outcome.label()));
                    metrics.record_decision(d);
                }
                metrics.record_admission(Endpoint::validate, outcome.result(), latency);
            }
            "mutate" => {
                let request = admission::parse_admission_review(black_box(body.as_bytes()))?;
                let outcome = request.plan_mutation(&snapshot, Ok(&labels), &Digests::new());
                black_box(request.mutate_response(&outcome).to_json());
                if let MutateOutcome::Planned(plan) = &outcome {
                    let ctx = record::RecordContext {
                        endpoint: "mutate",
                        ..request.record_context(Some(&labels), now, latency)
                    };
                    black_box(record::mutation_line(&ctx, plan, outcome.label()));
                    metrics.record_mutation(plan);
                }
                metrics.record_admission(Endpoint::mutate, AdmissionResult::allowed, latency);
            }
            _ => bail!(usage),
        }
    }
    Ok(())
}
