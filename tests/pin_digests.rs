//! `pinDigests` end to end against a real registry (Debian's `docker-registry` on 127.0.0.1,
//! behind a fault-injecting proxy that counts what imagegate asks; see `support/registry.rs`):
//! `/mutate` of a running `serve` pins a governed tag to the digest the registry serves (to the
//! verified digest where `verifySignatures` applies too), leaves the image with a warning when
//! the digest cannot be had, looks nothing up for Pods no Enforce policy pins, and the
//! validating webhook then judges the pinned Pod; `imagegate check` pins online and reports
//! the pins it would make offline.

mod cli;
mod common;
#[path = "support/registry.rs"]
mod registry_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{TestServer, pod_review, policy, warnings};
use registry_support::{Fault, FaultProxy, TestKey, TestRegistry};
use serde_json::{Value, json};

/// A registry with a signed and an unsigned image, reached through a proxy.
struct World {
    _registry: TestRegistry,
    proxy: FaultProxy,
    release: TestKey,
    dir: tempfile::TempDir,
    /// `PROXY/team/app:1.0`, signed by `release`, and its digest.
    signed: String,
    signed_digest: String,
    /// `PROXY/team/unsigned:1.0`, not signed, and its digest.
    unsigned: String,
    unsigned_digest: String,
    /// The digest of `PROXY/team/unsigned:latest`, another image.
    latest_digest: String,
}

impl World {
    async fn new() -> Option<World> {
        let registry = TestRegistry::plain().await?;
        let release = TestKey::new();
        let signed_digest = registry.push_signed("team/app", "1.0", &[&release]).await;
        let unsigned_digest = registry.push_image("team/unsigned", "1.0").await;
        let latest_digest = registry.push_image("team/unsigned", "latest").await;
        let proxy = FaultProxy::start(&registry.host).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("docker.json"), r#"{"auths": {}}"#).unwrap();
        let host = proxy.host.clone();
        Some(World {
            _registry: registry,
            proxy,
            release,
            dir,
            signed: format!("{host}/team/app:1.0"),
            signed_digest,
            unsigned: format!("{host}/team/unsigned:1.0"),
            unsigned_digest,
            latest_digest,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The flags that let imagegate reach the registry through the proxy, and no other logins.
    fn flags(&self) -> Vec<String> {
        vec![
            "--insecure-registry".into(),
            self.proxy.host.clone(),
            "--docker-config".into(),
            self.path("docker.json").display().to_string(),
        ]
    }

    /// `pin` in `mode`, pinning the registry's `team/**` images.
    fn pin(&self, mode: &str) -> String {
        policy(
            "pin",
            &format!(
                "mode: {mode}\nimages: ['{}/team/**']\npinDigests: true",
                self.proxy.host
            ),
        )
    }

    /// `sig`, enforcing the release key on the registry's `team/**` images.
    fn sig(&self) -> String {
        let key: String = self
            .release
            .public_pem
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect();
        policy(
            "sig",
            &format!(
                "images: ['{}/team/**']\nverifySignatures:\n- name: release\n  key:\n    publicKey: |\n{key}",
                self.proxy.host
            ),
        )
    }

    async fn serve(&self, policies: &str, extra: &[&str]) -> TestServer {
        let mut flags = self.flags();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        TestServer::start(policies, &flags).await
    }
}

fn pod(containers: Value) -> Value {
    pod_review("team", "alice", &["dev"], json!({}), containers)
}

/// POSTs the review to `/mutate` with the API server's `?timeout=`; asserts it is admitted and
/// returns `response`.
async fn mutate(server: &TestServer, review: &Value, timeout: &str) -> Value {
    let (status, out) = server
        .post(
            &format!("/mutate?timeout={timeout}"),
            serde_json::to_vec(review).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let r = out["response"].clone();
    assert_eq!(r["allowed"], true, "the mutating webhook never denies: {r}");
    r
}

/// The response's patch as JSON; `None` when it has none.
fn patch(response: &Value) -> Option<Value> {
    let text = response.get("patch")?.as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// The review with the response's patch applied to its object (as the API server stores it).
fn patched(review: &Value, response: &Value) -> Value {
    let ops: json_patch::Patch = serde_json::from_value(patch(response).expect("a patch")).unwrap();
    let mut out = review.clone();
    json_patch::patch(&mut out["request"]["object"], &ops).unwrap();
    out
}

/// The registry paths the proxy saw since its last reset, without the `/v2/` ping.
fn lookups(world: &World) -> Vec<String> {
    world
        .proxy
        .paths()
        .into_iter()
        .filter(|p| !p.ends_with(" /v2/"))
        .collect()
}

#[tokio::test]
async fn a_governed_tag_is_pinned_to_the_digest_the_registry_serves() {
    let Some(world) = World::new().await else {
        return;
    };
    let server = world.serve(&world.pin("Enforce"), &[]).await;
    let host = &world.proxy.host;
    let review = pod(json!([
        {"name": "app", "image": world.unsigned},
        {"name": "implicit", "image": format!("{host}/team/unsigned")},
        {"name": "pinned", "image": format!("{host}/team/app@{}", world.signed_digest)},
        {"name": "web", "image": "nginx:1.27"},
    ]));
    let r = mutate(&server, &review, "10s").await;
    assert!(r.get("warnings").is_none(), "{r}");
    assert_eq!(
        patch(&r).unwrap(),
        json!([
            {"op": "replace", "path": "/spec/containers/0/image",
             "value": format!("{}@{}", world.unsigned, world.unsigned_digest)},
            {"op": "replace", "path": "/spec/containers/1/image",
             "value": format!("{host}/team/unsigned:latest@{}", world.latest_digest)},
        ]),
        "the tags in scope are pinned; a pinned image and one out of scope are untouched"
    );
    assert_eq!(
        r["auditAnnotations"]["mutated"],
        format!(
            "containers/app image={}@{}, containers/implicit image={host}/team/unsigned:latest@{}",
            world.unsigned, world.unsigned_digest, world.latest_digest
        )
    );
    let asked = lookups(&world);
    assert!(!asked.is_empty(), "the tags were looked up");
    assert!(
        asked.iter().all(|p| p.contains("/team/unsigned/")),
        "only the tags to pin are looked up: {asked:?}"
    );

    // Reinvocation: the API server calls again with the pinned Pod; nothing more to change,
    // and nothing to look up.
    world.proxy.reset();
    let mutated = patched(&review, &r);
    let again = mutate(&server, &mutated, "10s").await;
    assert!(patch(&again).is_none(), "{again}");
    assert!(lookups(&world).is_empty(), "{:?}", lookups(&world));

    // The validating webhook judges the Pod as stored: pinned.
    assert_eq!(server.review(&mutated).await["allowed"], true);

    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("imagegate_pods_mutated_total{change=\"digest\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn with_verify_signatures_the_pin_is_the_verified_digest() {
    let Some(world) = World::new().await else {
        return;
    };
    let policies = format!("{}---\n{}", world.pin("Enforce"), world.sig());
    let server = world.serve(&policies, &[]).await;

    // Signed: pinned to the digest its signature was verified for.
    let review = pod(json!([{"name": "app", "image": world.signed}]));
    let r = mutate(&server, &review, "10s").await;
    let pinned = format!("{}@{}", world.signed, world.signed_digest);
    assert_eq!(
        patch(&r).unwrap(),
        json!([{"op": "replace", "path": "/spec/containers/0/image", "value": pinned}])
    );
    // The validating call verifies the pinned image at its digest, from what the mutating
    // call found: no registry request.
    world.proxy.reset();
    let validated = server.review(&patched(&review, &r)).await;
    assert_eq!(validated["allowed"], true, "{validated}");
    assert!(lookups(&world).is_empty(), "{:?}", lookups(&world));

    // Unsigned: pinned to the tag's digest (nothing verified), then denied at that digest.
    let review = pod(json!([{"name": "app", "image": world.unsigned}]));
    let r = mutate(&server, &review, "10s").await;
    let pinned = format!("{}@{}", world.unsigned, world.unsigned_digest);
    assert_eq!(patch(&r).unwrap()[0]["value"], pinned);
    let denied = server.review(&patched(&review, &r)).await;
    assert_eq!(denied["allowed"], false, "{denied}");
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "[sig/verifySignatures] container \"app\": image \"{pinned}\""
        )),
        "{message}"
    );
    assert!(message.contains("release: no signature"), "{message}");
    server.stop().await;
}

#[tokio::test]
async fn without_a_digest_the_image_is_left_as_written_with_a_warning() {
    let Some(world) = World::new().await else {
        return;
    };
    let server = world
        .serve(&world.pin("Enforce"), &["--tag-cache-ttl", "1s"])
        .await;
    let review = pod(json!([{"name": "app", "image": world.unsigned}]));

    // The registry answers 503: no pin, a warning saying why, admitted.
    world.proxy.set(Fault::Status(503));
    let r = mutate(&server, &review, "10s").await;
    assert!(patch(&r).is_none(), "{r}");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!(
            "imagegate: [pin/pinDigests] container \"app\": image \"{}\" was left unpinned: ",
            world.unsigned
        )),
        "{w:?}"
    );
    assert!(w[0].contains("503"), "{w:?}");

    // Slower than the API server's deadline: the answer leaves in time, unpinned; the lookup
    // goes on and fills the cache, so the API server's retry is pinned.
    world.proxy.set(Fault::Delay(Duration::from_secs(3)));
    let started = Instant::now();
    let r = mutate(&server, &review, "2s").await;
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert!(patch(&r).is_none(), "{r}");
    assert!(
        warnings(&r)[0].ends_with("was left unpinned: verification did not finish within 1s"),
        "{:?}",
        warnings(&r)
    );
    world.proxy.set(Fault::Pass);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = mutate(&server, &review, "2s").await;
    assert!(
        patch(&r).is_some(),
        "the retry is pinned from the cache: {r}"
    );

    // A resolution from before an outage is not pinned to: the tag may have moved.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world.proxy.set(Fault::Drop);
    let r = mutate(&server, &review, "10s").await;
    assert!(patch(&r).is_none(), "{r}");
    assert!(
        warnings(&r)[0].contains("the registry did not answer, and the digest it gave for this tag before may no longer be what the tag names"),
        "{:?}",
        warnings(&r)
    );
    server.stop().await;
}

#[tokio::test]
async fn warn_audit_and_out_of_scope_pods_look_nothing_up() {
    let Some(world) = World::new().await else {
        return;
    };
    let review = pod(json!([{"name": "app", "image": world.unsigned}]));

    // Warn: a warning, no patch, no lookup.
    let server = world.serve(&world.pin("Warn"), &[]).await;
    world.proxy.reset();
    let r = mutate(&server, &review, "10s").await;
    assert!(patch(&r).is_none(), "{r}");
    assert_eq!(
        warnings(&r),
        [format!(
            "imagegate: [pin/pinDigests] container \"app\": image \"{}\" would be pinned to its digest; the policy is in Warn mode, so the Pod is stored as written",
            world.unsigned
        )]
    );
    assert_eq!(world.proxy.requests(), 0);
    server.stop().await;

    // Audit: recorded only.
    let server = world.serve(&world.pin("Audit"), &[]).await;
    let r = mutate(&server, &review, "10s").await;
    assert!(patch(&r).is_none() && r.get("warnings").is_none(), "{r}");
    assert_eq!(
        r["auditAnnotations"]["would-mutate"],
        "containers/app image=(digest)"
    );
    assert_eq!(world.proxy.requests(), 0);
    server.stop().await;

    // Enforce, in a namespace the policy does not select: untouched, no lookup.
    let scoped = policy(
        "pin",
        &format!(
            "namespaceSelector:\n  matchLabels: {{env: prod}}\nimages: ['{}/team/**']\npinDigests: true",
            world.proxy.host
        ),
    );
    let server = world.serve(&scoped, &[]).await;
    let r = mutate(&server, &review, "10s").await;
    assert_eq!(r, json!({"uid": review["request"]["uid"], "allowed": true}));
    assert_eq!(world.proxy.requests(), 0);
    server.stop().await;
}

/// `imagegate ARGS…` in the world's folder, off the runtime (whose thread runs the proxy).
async fn check(world: &World, args: &[&str]) -> std::process::Output {
    let dir = world.dir.path().to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli::imagegate(&dir, &args, "")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn check_pins_online_and_reports_the_pins_it_would_make_offline() {
    let Some(world) = World::new().await else {
        return;
    };
    let policies = format!(
        "{}---\n{}",
        policy(
            "pin",
            &format!(
                "images: ['{}/team/**']\npinDigests: true\nrequireDigest: true",
                world.proxy.host
            ),
        ),
        world.sig()
    );
    std::fs::write(world.path("policies.yaml"), policies).unwrap();
    let manifests = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: signed, namespace: team}}\nspec:\n  containers:\n  - {{name: app, image: {signed}}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: team}}\nspec:\n  template:\n    spec:\n      containers:\n      - {{name: app, image: {signed}}}\n",
        signed = world.signed
    );
    std::fs::write(world.path("app.yaml"), manifests).unwrap();
    let mut args = vec!["check", "--policies", "policies.yaml", "--output", "json"];
    let flags = world.flags();
    args.extend(flags.iter().map(String::as_str));
    args.push("app.yaml");

    // Online: the Pod is pinned to the verified digest and admitted on its pinned form; the
    // Deployment's Pods will be, so requireDigest has nothing to deny in its template.
    let out = check(&world, &args).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\n{}",
        cli::stderr(&out)
    );
    let pinned = format!("{}@{}", world.signed, world.signed_digest);
    for (i, result) in report["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(result["allowed"], true, "{result:#}");
        let m = &result["mutations"][0];
        assert_eq!(
            (&m["change"], &m["to"], &m["applied"]),
            (&json!("digest"), &json!(pinned), &json!(true)),
            "result {i}: {result:#}"
        );
    }

    // Offline: the pins are reported without their digest; the Pod, judged unpinned, is
    // denied by requireDigest, and its signature is not verified.
    args.insert(1, "--offline");
    let out = check(&world, &args).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let pod = &report["results"][0];
    let m = &pod["mutations"][0];
    assert_eq!(
        (&m["to"], &m["applied"]),
        (&Value::Null, &json!(false)),
        "{pod:#}"
    );
    let rules: Vec<&str> = pod["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["requireDigest"], "{pod:#}");
    assert!(
        pod["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("signature not verified (offline)")),
        "{pod:#}"
    );
    args.retain(|a| *a != "--output" && *a != "json");
    let out = check(&world, &args).await;
    let text = cli::stdout(&out);
    assert!(
        text.contains("  Would mutate: [pin/pinDigests] containers/app image=(digest)"),
        "{text}"
    );
    assert!(
        text.contains(
            "  Would mutate (in its Pods): [pin/pinDigests] containers/app image=(digest)"
        ),
        "{text}"
    );
}
