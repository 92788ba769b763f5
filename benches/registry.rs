//! The registry adapter against a real `docker-registry` on 127.0.0.1 (DESIGN §10):
//!
//! - cold verification: a tag resolved and its cosign signature read and verified with nothing
//!   cached, p50/p99 over many images, once with a new client per image (TLS handshake
//!   included) and once with the connection pool warm (target: p99 under 30 ms);
//! - 1,000 concurrent requests for one uncached image: how many requests reach the registry
//!   (target: one lookup, i.e. the tag's manifest, the signature manifest and its layer);
//! - `gather` when everything is cached: the adapter's share of the 5 µs that a decision with
//!   cached signature outcomes may cost over one without a signature rule.
//!
//! Run with `cargo bench --bench registry` (needs Debian's `docker-registry`).

#[path = "../tests/support/registry.rs"]
mod registry_support;

use std::time::{Duration, Instant};

use imagegate::evidence::{Deadline, EvidenceRequest, Gather, Outcome};
use imagegate::registry::{ClientConfig, Config, Registry};
use registry_support::{FaultProxy, TestKey, TestRegistry, request};

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
    for (name, req) in [("tag", &r), ("digest", &pinned)] {
        let requests = std::slice::from_ref(req);
        let started = Instant::now();
        for _ in 0..CACHED_ROUNDS {
            let e = registry.gather(requests, Deadline::after(DEADLINE)).await;
            std::hint::black_box(e);
        }
        let per = started.elapsed() / CACHED_ROUNDS;
        println!("gather, one image by {name} and one entry, all cached: {per:.2?} per call");
    }
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
    runtime.block_on(async {
        cold_verification().await;
        concurrent_requests().await;
    });
}
