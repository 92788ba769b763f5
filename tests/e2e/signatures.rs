//! `verifySignatures` against a real API server and a real registry that the test starts on
//! this machine: Debian's `docker-registry`, with images pushed and signed by the `sigstore`
//! crate (`tests/support/registry.rs`).
//!
//! Only the operator, on this machine, talks to the registry: the API server calls the
//! operator, the operator reads the signatures. A Pod that is stored stays Pending on a control
//! plane without nodes; on kind its node may try to pull the image (see docs/operator.md), but
//! nothing here waits for that.

use imagegate::operator::webhook_config::PODS_WEBHOOK;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use serde_json::{Value, json};

use crate::harness::{CONVERGE, E2e, OperatorRun, admitted, dry_run, pod, refused_by, run, store};
use crate::registry_support::{Auth, TestKey, TestRegistry};
use crate::{deny_busybox, until_enforced};

/// The key in the key Secret, as `kubectl create secret generic --from-file=cosign.pub` names it.
const KEY_FIELD: &str = "cosign.pub";

/// A registry on [`E2e::registry_host`] over plain HTTP, anonymous; the test fails when the
/// registry binary is missing (the suite was asked to run).
async fn start_registry(e2e: &E2e) -> TestRegistry {
    TestRegistry::start_on(e2e.registry_host(), false, Auth::Anonymous)
        .await
        .unwrap_or_else(|| {
            panic!(
                "the signature test needs a registry on this machine: install Debian's \
                 docker-registry package (apt-get install docker-registry) or set \
                 IMAGEGATE_DOCKER_REGISTRY to its binary"
            )
        })
}

/// The policy `spec`: Pods with busybox denied (so [`until_enforced`] sees it in force), and one
/// signature entry for the test registry's images.
fn signed_spec(entry: Value) -> Value {
    let mut spec = deny_busybox();
    spec["verifySignatures"] = json!([entry]);
    spec
}

/// Asserts that the API server refuses a Pod with `image` because `pods.imagegate.dev` found
/// no verified signature for the policy's entry `entry`; `why` is the start of the entry's
/// reason. Returns the message.
async fn assert_unsigned(
    pods: &Api<Pod>,
    policy: &str,
    entry: &str,
    image: &str,
    why: &str,
) -> String {
    let message = refused_by(
        PODS_WEBHOOK,
        pods.create(&dry_run(), &pod("x", image)).await,
    )
    .unwrap_or_else(|seen| panic!("a Pod with {image} under entry {entry}: {seen}"));
    for part in [
        format!("[{policy}/verifySignatures] container \"main\": image \"{image}\""),
        format!("has no verified signature: {entry}: {why}"),
    ] {
        assert!(message.contains(&part), "should say {part:?}: {message}");
    }
    message
}

/// With a `key` entry, a Pod of an image signed by that key is stored and Pods of an unsigned
/// image or one signed by another key are refused by `pods.imagegate.dev`, naming the entry:
/// first with the key written in the policy (`publicKey`), then with the key read from a Secret
/// in the operator's namespace (`secretRef`, listed in `--key-secrets`).
#[tokio::test]
async fn signatures_verified_against_a_registry() {
    run("signatures", async |e2e| {
        let registry = start_registry(&e2e).await;
        let host = registry.host.clone();
        eprintln!("{}: registry {host} (images {host}/e2e/…)", e2e.name());
        let image = |repository: &str| format!("{host}/e2e/{repository}:1");
        let inline_key = TestKey::new();
        let secret_key = TestKey::new();
        registry
            .push_signed("e2e/inline", "1", &[&inline_key])
            .await;
        registry
            .push_signed("e2e/secret", "1", &[&secret_key])
            .await;
        let unsigned_digest = registry.push_image("e2e/unsigned", "1").await;

        // The Secret exists before the operator, which reads the Secrets it lists at start.
        let namespace = e2e.operator_namespace();
        let key_secret = e2e.named("cosign");
        let secrets: Api<Secret> = Api::namespaced(e2e.client(), &namespace);
        e2e.apply(
            &secrets,
            &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": key_secret, "namespace": namespace},
                "stringData": {(KEY_FIELD): secret_key.public_pem}}),
        )
        .await;

        let policy = e2e.named("signed");
        let images = format!("{host}/e2e/**");
        e2e.apply_policy(
            &policy,
            signed_spec(json!({"name": "inline", "images": [images],
                "key": {"publicKey": inline_key.public_pem}})),
        )
        .await;
        let mut args = e2e.default_operator_args();
        args.extend([
            format!("--insecure-registry={host}"),
            format!("--key-secrets={key_secret}"),
        ]);
        e2e.start_operator(OperatorRun {
            args: Some(args),
            ..OperatorRun::default()
        });
        until_enforced(&e2e, &policy).await;

        // The key in the policy.
        let pods: Api<Pod> = e2e.api();
        store(&pods, &pod("inline", &image("inline"))).await;
        let message = assert_unsigned(
            &pods,
            &policy,
            "inline",
            &image("unsigned"),
            "no signature for",
        )
        .await;
        assert!(
            message.contains(&format!("sign {host}/e2e/unsigned@{unsigned_digest}")),
            "should give the digest to sign: {message}"
        );
        assert_unsigned(
            &pods,
            &policy,
            "inline",
            &image("secret"),
            "1 signature for",
        )
        .await;

        // The same policy with its key in the Secret: what the Secret's key signed passes now,
        // and what only the former key signed does not.
        e2e.apply_policy(
            &policy,
            signed_spec(json!({"name": "from-secret", "images": [images],
                "key": {"secretRef": {"name": key_secret, "key": KEY_FIELD}}})),
        )
        .await;
        let probe = pod("probe", &image("secret"));
        e2e.eventually(
            &format!(
                "the edited policy {policy} to admit {} (signed by the key in Secret {namespace}/{key_secret})",
                image("secret")
            ),
            CONVERGE,
            async || admitted(pods.create(&dry_run(), &probe).await).map(drop),
        )
        .await;
        store(&pods, &pod("from-secret", &image("secret"))).await;
        assert_unsigned(
            &pods,
            &policy,
            "from-secret",
            &image("inline"),
            "1 signature for",
        )
        .await;
        assert_unsigned(
            &pods,
            &policy,
            "from-secret",
            &image("unsigned"),
            "no signature for",
        )
        .await;
    })
    .await;
}
