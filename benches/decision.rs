//! A decision against snapshots of 1, 100 and 1,000 policies (DESIGN §10: well under 50 µs at
//! 1,000 policies), from reading the Pod of a real AdmissionReview to the Decision.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use imagegate::decision::{Input, decide};
use imagegate::policy::{ImagePolicy, Settings, Snapshot, compile};
use imagegate::workload::{Workload, WorkloadKind};

#[path = "support/generated.rs"]
mod generated;

/// A realistic cluster: a few cluster-wide baselines (one in 200 policies, Warn mode) and one
/// policy per team, selected by the namespace's `team` label and governing that team's part of
/// the company registry. With `all_apply`, every team policy applies to the namespace instead
/// (selected by `env: prod`), which is the worst case for the per-policy loop.
fn policies(n: usize, all_apply: bool) -> Vec<ImagePolicy> {
    (0..n)
        .map(|i| {
            let yaml = if i % 200 == 0 {
                format!(
                    "metadata: {{name: baseline-{i}}}\nspec:\n  mode: Warn\n  deniedTags: [latest, '*-dev']\n  deniedImages: ['docker.io/library/busybox:*']"
                )
            } else {
                let selector = if all_apply { "env: prod".to_owned() } else { format!("team: t{i}") };
                format!(
                    "metadata: {{name: team-{i}}}\nspec:\n  namespaceSelector: {{matchLabels: {{{selector}}}}}\n  images: ['registry.corp.example/team-{i}/**']\n  allowedImages: ['registry.corp.example/team-{i}/*', 'ghcr.io/corp/team-{i}/**']\n  requireDigest: true\n  breakGlass: {{allowedGroups: [sre], ticketPattern: 'INC-[0-9]+'}}"
                )
            };
            serde_saphyr::from_str(&yaml).expect("benchmark policy")
        })
        .collect()
}

fn snapshot(n: usize, all_apply: bool) -> Snapshot {
    let compiled = policies(n, all_apply)
        .iter()
        .map(|p| compile(p).expect("compiles"))
        .collect();
    Snapshot::new(compiled, Settings::default())
}

fn pod() -> Workload {
    let review: serde_json::Value =
        serde_json::from_str(include_str!("../tests/data/pod-create.json")).expect("fixture");
    Workload::from_value(WorkloadKind::Pod, &review["request"]["object"]).expect("pod")
}

fn bench_decide(c: &mut Criterion) {
    let object = pod();
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/metadata.name", "shop"),
        ("env", "prod"),
        ("team", "t7"),
    ]
    .map(|(k, v)| (k.into(), v.into()))
    .into();
    let input = Input {
        object: &object,
        old_object: None,
        namespace_labels: &labels,
        requester: None,
        now: jiff::Timestamp::now(),
        evidence: None,
    };
    for (group_name, all_apply) in [("decide", false), ("decide_all_apply", true)] {
        let mut group = c.benchmark_group(group_name);
        for n in [1, 100, 1000] {
            group.bench_with_input(
                BenchmarkId::from_parameter(n),
                &snapshot(n, all_apply),
                |b, snapshot| b.iter(|| black_box(decide(snapshot, &input))),
            );
        }
        group.finish();
    }

    // Images seen for the first time: two snapshots of the same 1,000 policies, alternated, so
    // that what the thread remembers of the images never applies (`Snapshot::resolve`).
    let pair = [snapshot(1000, false), snapshot(1000, false)];
    let mut turn = 0;
    c.bench_function("decide_first_sight/1000", |b| {
        b.iter(|| {
            turn ^= 1;
            black_box(decide(&pair[turn], &input))
        })
    });

    // The generated policies of the scale benchmarks (benches/support/generated.rs) at the
    // issue's sizes; the namespace is team t7's, so one policy applies besides none.
    let mut group = c.benchmark_group("decide_generated");
    for (n, per) in [
        (100, 3),
        (1000, 3),
        (10_000, 3),
        (100, 100),
        (1000, 100),
        (10_000, 100),
    ] {
        let (snapshot, errors) =
            Snapshot::compile(&generated::policies(n, per), Settings::default());
        assert!(errors.is_empty());
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{n}x{per}")),
            &snapshot,
            |b, snapshot| b.iter(|| black_box(decide(snapshot, &input))),
        );
        drop(snapshot);
        // First sight: two snapshots alternated, so every image is parsed and matched anew.
        let pair =
            [0, 1].map(|_| Snapshot::compile(&generated::policies(n, per), Settings::default()).0);
        let mut turn = 0;
        group.bench_function(BenchmarkId::new("first_sight", format!("{n}x{per}")), |b| {
            b.iter(|| {
                turn ^= 1;
                black_box(decide(&pair[turn], &input))
            })
        });
    }
    group.finish();

    let raw = serde_json::to_string(
        &serde_json::from_str::<serde_json::Value>(include_str!("../tests/data/pod-create.json"))
            .expect("fixture")["request"]["object"],
    )
    .expect("json");
    c.bench_function("workload/from_json pod-create", |b| {
        b.iter(|| black_box(Workload::from_json(WorkloadKind::Pod, &raw)))
    });
}

fn bench_compile(c: &mut Criterion) {
    let list = policies(1000, false);
    c.bench_function("snapshot/compile 1000 policies", |b| {
        b.iter(|| black_box(Snapshot::compile(&list, Settings::default())))
    });
}

criterion_group!(benches, bench_decide, bench_compile);
criterion_main!(benches);
