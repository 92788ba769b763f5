//! How long `Reference::parse` takes on the references a webhook sees most: Docker Hub short
//! names, private registries with ports, and digest-pinned images. Every admitted image is
//! parsed once per decision, so this is on the admission path.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use imagegate::reference::Reference;

const REFERENCES: &[(&str, &str)] = &[
    ("docker_hub_short", "nginx"),
    ("docker_hub_tagged", "bitnami/redis:7.2.4"),
    (
        "private_registry",
        "registry.corp.example:5000/team/payments/api:1.4.2",
    ),
    (
        "pinned",
        "ghcr.io/org/app:v2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
    ("ipv6_host", "[fd00::1]:5000/team/app:dev"),
    ("invalid_upper_case", "registry.corp.example/Team/App:1"),
];

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("reference_parse");
    for (name, input) in REFERENCES {
        group.bench_function(*name, |b| b.iter(|| Reference::parse(black_box(input))));
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
