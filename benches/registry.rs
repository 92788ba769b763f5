//! The registry adapter against a real `docker-registry` on 127.0.0.1 (DESIGN §10):
//!
//! - cold verification: a tag resolved and its cosign signature read and verified with nothing
//!   cached, p50/p99 over many images, once with a new client per image (TLS handshake
//!   included) and once with the connection pool warm (target: p99 under 30 ms);
//! - 1,000 concurrent requests for one uncached image: how many requests reach the registry
//!   (target: one lookup, i.e. the tag's manifest, the signature manifest and its layer);
//! - `gather` when everything is cached: the adapter's share of the 5 µs that a decision with
//!   cached signature outcomes may cost over one without a signature rule;
//! - cold verification of a keyless Sigstore bundle found as a referrer (the referrers tag
//!   schema: distribution 2.8 has no referrers API), made by the Sigstore JavaScript libraries.
//!
//! Run with `cargo bench --bench registry` (needs Debian's `docker-registry`, and for the
//! keyless series Node with `npm ci` run in `tests/sigstore-js`); `cargo bench --bench registry
//! -- NAME` runs only the series whose name holds NAME (`cold`, `concurrent`, `cold-keyless`).

#[path = "../tests/support/registry.rs"]
mod registry_support;
#[path = "../tests/support/sigstore_js.rs"]
mod sigstore_js;

use std::time::{Duration, Instant};

use imagegate::evidence::{Deadline, EvidenceRequest, Gather, Outcome};
use imagegate::registry::{ClientConfig, Config, Registry};
use imagegate::signature::{Match, TransparencyLog, TrustedRoot, Verifier};
use registry_support::{FaultProxy, OCI_MANIFEST, TestKey, TestRegistry, request};

/// Images verified per cold series: enough for a p99 that is not just the maximum.
const IMAGES: usize = 300;
/// Concurrent requests for one image.
const CONCURRENT: usize = 1000;
const DEADLINE: Duration = Duration::from_secs(10);
/// Calls timed when everything is cached.
const CACHED_ROUNDS: u32 = 200_000;

fn adapter(client: ClientConfig) -> Registry {
    Registry::new(
        Config {
            client,
            ..Config::default()
        },
        None,
    )
    .unwrap()
}

async fn verify(registry: &Registry, request: &EvidenceRequest) -> Duration {
    let started = Instant::now();
    let evidence = registry
        .gather(std::slice::from_ref(request), Deadline::after(DEADLINE))
        .await;
    let took = started.elapsed();
    let outcome = &evidence.images[&request.image].entries["bench/release"].outcome;
    assert!(matches!(outcome, Outcome::Verified { .. }), "{outcome:?}");
    took
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{name}: n={} p50={:.2?} p90={:.2?} p99={:.2?} max={:.2?}",
        times.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        times[times.len() - 1]
    );
}

async fn cold_verification() {
    let Some(reg) = TestRegistry::tls().await else {
        return;
    };
    let key = TestKey::new();
    let verifier = key.verifier();
    let mut requests = Vec::new();
    for i in 0..2 * IMAGES {
        let tag = format!("v{i}");
        reg.push_signed("bench/app", &tag, &[&key]).await;
        requests.push(request(
            &format!("{}/bench/app:{tag}", reg.host),
            &[("bench/release", &verifier)],
        ));
    }
    // A new adapter (client, connection pool, caches) per image: TLS handshake included.
    let mut times = Vec::new();
    for r in &requests[..IMAGES] {
        let registry = adapter(reg.client_config());
        times.push(verify(&registry, r).await);
    }
    report("cold verification, new connection (TLS)", times);
    // One adapter: nothing cached for these images, connections kept alive.
    let registry = adapter(reg.client_config());
    let mut times = Vec::new();
    for r in &requests[IMAGES..] {
        times.push(verify(&registry, r).await);
    }
    report("cold verification, warm connection pool (TLS)", times);
}

/// A keyless bundle (DSSE, v0.3, with its Rekor entry) attached to one image by
/// `@sigstore/oci`, verified by a new adapter each time (nothing cached, a new connection):
/// the tag, the `.sig` tag (absent), the referrers API (absent), the referrers index, the
/// bundle's manifest and the bundle, then the Fulcio chain, the Rekor entry and the signature.
async fn cold_keyless_verification() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let digest = reg.push_image("bench/keyless", "1.0").await;
    let manifest = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/bench/keyless/manifests/1.0",
            reg.host
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (manifest_file, plan_file) = (
        dir.path().join("manifest.json"),
        dir.path().join("plan.json"),
    );
    std::fs::write(&manifest_file, &manifest).unwrap();
    let image = format!("{}/bench/keyless", reg.host);
    std::fs::write(
        &plan_file,
        serde_json::json!([{"image": image, "cases": ["dsse-v03"]}]).to_string(),
    )
    .unwrap();
    let out = dir.path().join("cases");
    let produced = sigstore_js::produce(
        &out,
        &[
            "--manifest",
            manifest_file.to_str().unwrap(),
            "--image",
            &image,
            "--cases",
            "dsse-v03",
            "--attach-plan",
            plan_file.to_str().unwrap(),
        ],
    );
    if !produced {
        return;
    }
    let root = TrustedRoot::from_json(&std::fs::read(out.join("trusted_root.json")).unwrap());
    let verifier = std::sync::Arc::new(Verifier::keyless(
        Match::Exact("https://token.actions.githubusercontent.com".into()),
        Match::regex(
            r"https://github\.com/corp/[^/]+/\.github/workflows/release\.yml@refs/tags/v.+",
        )
        .unwrap(),
        std::sync::Arc::new(root.unwrap()),
        TransparencyLog::Require,
    ));
    let r = request(
        &format!("{}/bench/keyless@{digest}", reg.host),
        &[("bench/release", &verifier)],
    );
    let mut times = Vec::new();
    for _ in 0..IMAGES {
        let registry = adapter(reg.client_config());
        times.push(verify(&registry, &r).await);
    }
    report(
        "cold keyless bundle verification, new connection (plain HTTP)",
        times,
    );
}

async fn concurrent_requests() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let key = TestKey::new();
    let verifier = key.verifier();
    reg.push_signed("bench/app", "1.0", &[&key]).await;
    let proxy = FaultProxy::start(&reg.host).await;
    let registry = adapter(ClientConfig {
        extra_roots: vec![],
        insecure: vec![proxy.host.clone()],
    });
    let r = request(
        &format!("{}/bench/app:1.0", proxy.host),
        &[("bench/release", &verifier)],
    );
    let started = Instant::now();
    let times = futures::future::join_all((0..CONCURRENT).map(|_| verify(&registry, &r))).await;
    let all = started.elapsed();
    println!(
        "{CONCURRENT} concurrent requests for one uncached image: {} registry requests ({}), all answered in {all:.2?}",
        proxy.requests(),
        proxy.paths().join(", ")
    );
    report("  per request", times);

    // Everything cached now: what a request costs the adapter without the network.
    let pinned = request(
        &format!("{}/bench/app@{}", proxy.host, {
            let e = registry
                .gather(std::slice::from_ref(&r), Deadline::after(DEADLINE))
                .await;
            e.images[&r.image].digest.clone().unwrap()
        }),
        &[("bench/release", &verifier)],
    );
    verify(&registry, &pinned).await;
    // What a cached pin asks (`pinDigests` without `verifySignatures`): the tag's digest only.
    let pin = request(&r.image, &[]);
    for (name, req) in [
        ("tag and one entry", &r),
        ("digest and one entry", &pinned),
        ("tag, digest only (a pin)", &pin),
    ] {
        let requests = std::slice::from_ref(req);
        let started = Instant::now();
        for _ in 0..CACHED_ROUNDS {
            let e = registry.gather(requests, Deadline::after(DEADLINE)).await;
            std::hint::black_box(e);
        }
        let per = started.elapsed() / CACHED_ROUNDS;
        println!("gather, one image by {name}, all cached: {per:.2?} per call");
    }

    // A Pod of four signed images (the shape of the captured fixture Pod that
    // `benches/admission.rs`'s `validate_signed` decides), everything cached: the adapter's
    // share of that request.
    let mut four = vec![r.clone()];
    for tag in ["2.0", "3.0", "4.0"] {
        reg.push_signed("bench/app", tag, &[&key]).await;
        four.push(request(
            &format!("{}/bench/app:{tag}", proxy.host),
            &[("bench/release", &verifier)],
        ));
    }
    let warm = registry.gather(&four, Deadline::after(DEADLINE)).await;
    assert!(
        warm.images
            .values()
            .all(|i| i.entries["bench/release"].outcome.as_str() == "verified"),
        "the four images verify"
    );
    let started = Instant::now();
    for _ in 0..CACHED_ROUNDS {
        std::hint::black_box(registry.gather(&four, Deadline::after(DEADLINE)).await);
    }
    let per = started.elapsed() / CACHED_ROUNDS;
    println!("gather, four images by tag and one entry each, all cached: {per:.2?} per call");
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with `cargo bench --bench registry`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo bench --bench registry -- keyless` runs only the series whose name holds "keyless".
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |series: &str| only.as_deref().is_none_or(|o| series.contains(o));
    runtime.block_on(async {
        if run("cold") {
            cold_verification().await;
        }
        if run("concurrent") {
            concurrent_requests().await;
        }
        if run("cold-keyless") {
            cold_keyless_verification().await;
        }
    });
}
