//! What verifying one keyless signature costs, without the registry: a Sigstore bundle (DSSE,
//! v0.3, with its Rekor entry and timestamp) and a cosign keyless `.sig` layer, from
//! `tests/data/sigstore/` (made by the Sigstore JavaScript libraries). This is the CPU part of a
//! cold verification; `docs/performance.md` puts it next to the registry round trips.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use imagegate::signature::bundle::{self, Image};
use imagegate::signature::cosign::{Annotations, verify_signature_layer};
use imagegate::signature::{Match, TransparencyLog, TrustedRoot, Verifier};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/sigstore")
            .join(name),
    )
    .unwrap()
}

fn verify(c: &mut Criterion) {
    let cases: serde_json::Value = serde_json::from_slice(&data("cases.json")).unwrap();
    let digest = cases["digest"].as_str().unwrap().to_owned();
    let manifest = data("manifest.json");
    let root = Arc::new(TrustedRoot::from_json(&data("trusted_root.json")).unwrap());
    let verifier = Verifier::keyless(
        Match::Exact(cases["identity"]["issuer"].as_str().unwrap().to_owned()),
        Match::regex(
            r"https://github\.com/corp/[^/]+/\.github/workflows/release\.yml@refs/tags/v.+",
        )
        .unwrap(),
        root,
        TransparencyLog::Require,
    );
    let now = jiff::Timestamp::now().as_second();
    let image = Image {
        digest: &digest,
        manifest: Some(&manifest),
    };
    let mut group = c.benchmark_group("keyless_verify");
    for name in ["dsse-v03", "message-v02"] {
        let bytes = data(&format!("{name}.bundle.json"));
        assert!(bundle::verify(&bytes, &image, &verifier, now).is_ok());
        group.bench_function(name, |b| {
            b.iter(|| bundle::verify(black_box(&bytes), &image, &verifier, now))
        });
    }
    let layer: serde_json::Value =
        serde_json::from_slice(&data("cosign-keyless.cosign.json")).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(layer["payload"].as_str().unwrap())
        .unwrap();
    let text = |k: &str| layer[k].as_str().map(str::to_owned);
    let annotations = Annotations {
        signature: text("signature"),
        certificate: text("certificate"),
        chain: text("chain"),
        bundle: text("bundle"),
    };
    assert!(verify_signature_layer(&payload, &annotations, &verifier, &digest, now).is_ok());
    group.bench_function("cosign-keyless", |b| {
        b.iter(|| {
            verify_signature_layer(black_box(&payload), &annotations, &verifier, &digest, now)
        })
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
