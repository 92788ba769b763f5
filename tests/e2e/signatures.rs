//! `verifySignatures` against a real API server and a real registry that the test starts on
//! this machine: Debian's `docker-registry`, with images pushed and signed by the `sigstore`
//! crate (`tests/support/registry.rs`), and signed keyless by the Sigstore JavaScript libraries
//! (`tests/support/sigstore_js.rs`: `@sigstore/sign` against `@sigstore/mock`'s authorities, the
//! bundle attached as a referrer through the referrers tag schema).
//!
//! Only the operator, on this machine, talks to the registry: the API server calls the
//! operator, the operator reads the signatures (and pins digests, and audits what runs). A Pod that is stored stays Pending on a control
//! plane without nodes; on kind its node may try to pull the image (see docs/operator.md), but
//! nothing here waits for that.

use imagegate::operator::audit::MIN_AUDIT_INTERVAL;
use imagegate::operator::webhook_config::PODS_WEBHOOK;
use imagegate::policy::ImagePolicy;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::audit::{HOLD_GATE, audit_of, summary, violation};
use crate::harness::{
    CONVERGE, E2e, OperatorRun, admitted, dry_run, from_json, pod, refused_by, run, store,
};
use crate::registry_support::{Auth, OCI_MANIFEST, TestKey, TestRegistry};
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

/// The image of the first container of `pod`, as the API server answered or stored it.
fn image_of(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
}

/// Writes the status of the Pod `name` as a kubelet reports its started container `main`: the
/// image it runs is `image_id` (`REPO@DIGEST`).
async fn report_running(pods: &Api<Pod>, name: &str, image: &str, image_id: &str) {
    let started = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .expect("now in whole seconds");
    let status = json!({"status": {"containerStatuses": [{
        "name": "main", "image": image, "imageID": image_id,
        "ready": true, "started": true, "restartCount": 0,
        "state": {"running": {"startedAt": started.to_string()}}
    }]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("cannot write the status of Pod {name}: {e}"));
}

/// `pinDigests` with `verifySignatures`: a Pod created with a tag is stored pinned to the
/// digest its signature was verified for, and validated at it; and the audit judges
/// signatures at the digest a Pod runs: a Pod running the signed digest of a tag passes, and
/// once its status says it runs the digest the tag moved to (unsigned), it is listed under
/// `verifySignatures` with that digest.
#[tokio::test]
async fn pinned_to_the_verified_digest_and_audited_at_the_running_digest() {
    run("pin-audit", async |e2e| {
        let registry = start_registry(&e2e).await;
        let host = registry.host.clone();
        eprintln!("{}: registry {host} (images {host}/e2e/…)", e2e.name());
        let key = TestKey::new();
        let pinned_signed = registry.push_signed("e2e/pinned", "1", &[&key]).await;
        let signed = registry.push_signed("e2e/app", "1", &[&key]).await;

        // One policy verifies every image of the registry; another pins those under pinned/.
        let signing = e2e.named("signed");
        e2e.apply_policy(
            &signing,
            signed_spec(
                json!({"name": "release", "images": [format!("{host}/e2e/**")],
                "key": {"publicKey": key.public_pem}}),
            ),
        )
        .await;
        let pinning = e2e.named("pin");
        e2e.apply_policy(
            &pinning,
            json!({"images": [format!("{host}/e2e/pinned/**")], "pinDigests": true}),
        )
        .await;
        let mut args = e2e.default_operator_args();
        args.extend([
            format!("--insecure-registry={host}"),
            format!("--audit-interval={}s", MIN_AUDIT_INTERVAL.as_secs()),
        ]);
        e2e.start_operator(OperatorRun {
            args: Some(args),
            ..OperatorRun::default()
        });
        until_enforced(&e2e, &signing).await;

        // Pinned by the mutating webhook (once the operator has registered it), to the digest
        // verified, and admitted at it by the validating webhook.
        let pods: Api<Pod> = e2e.api();
        let tag = format!("{host}/e2e/pinned/app:1");
        let want = format!("{tag}@{pinned_signed}");
        let probe = pod("probe", &tag);
        e2e.eventually(
            &format!("a new Pod with {tag} to be answered pinned as {want}"),
            CONVERGE,
            async || {
                let answered = admitted(pods.create(&dry_run(), &probe).await)?;
                let image = image_of(&answered);
                (image.as_deref() == Some(want.as_str()))
                    .then_some(())
                    .ok_or_else(|| format!("answered with image {image:?}"))
            },
        )
        .await;
        let stored = store(&pods, &pod("pinned", &tag)).await;
        assert_eq!(
            image_of(&stored).as_deref(),
            Some(want.as_str()),
            "the stored Pod"
        );

        // A Pod of a tag that is not pinned, held off the nodes, reported running the signed
        // digest: the audit finds nothing wrong with it.
        let app = format!("{host}/e2e/app:1");
        let held: Pod = from_json(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tagged"},
            "spec": {"schedulingGates": [{"name": HOLD_GATE}],
                "containers": [{"name": "main", "image": app}]}
        }));
        store(&pods, &held).await;
        report_running(&pods, "tagged", &app, &format!("{host}/e2e/app@{signed}")).await;
        let policies: Api<ImagePolicy> = Api::all(e2e.client());
        let interval = MIN_AUDIT_INTERVAL;
        e2e.eventually(
            &format!("status.audit of {signing} to count Pods pinned and tagged, passing"),
            interval + CONVERGE,
            async || {
                let audit = audit_of(&policies, &signing).await?;
                (audit.pods_evaluated == 2 && audit.violating_pods == 0)
                    .then_some(())
                    .ok_or_else(|| summary(&audit))
            },
        )
        .await;

        // The tag moves to an unsigned image, and the Pod now reports running it (as after a
        // restart on a node that pulled the tag again): listed, naming the running digest.
        let unsigned = registry.push_image("e2e/app", "1").await;
        report_running(&pods, "tagged", &app, &format!("{host}/e2e/app@{unsigned}")).await;
        let audit = e2e
            .eventually(
                &format!(
                    "status.audit of {signing} to show Pod tagged running the unsigned {unsigned}"
                ),
                interval + CONVERGE,
                async || {
                    let audit = audit_of(&policies, &signing).await?;
                    violation(&audit, "tagged", "verifySignatures")
                        .map(|_| audit.clone())
                        .ok_or_else(|| summary(&audit))
                },
            )
            .await;
        assert_eq!(audit.violating_pods, 1, "{}", summary(&audit));
        let found = violation(&audit, "tagged", "verifySignatures").expect("found above");
        assert!(
            found.message.contains(&format!("which runs {unsigned}")),
            "should name the running digest: {}",
            found.message
        );
    })
    .await;
}

/// The identity `tests/sigstore-js/produce.js` signs as (the release workflow of a tag), and
/// another one.
const KEYLESS_ISSUER: &str = "https://token.actions.githubusercontent.com";
const KEYLESS_SUBJECT: &str =
    "https://github.com/corp/app/.github/workflows/release.yml@refs/tags/v1.2.3";
const OTHER_SUBJECT: &str = "https://github.com/corp/app/.github/workflows/ci.yml@refs/heads/main";
/// The media type of a Sigstore bundle v0.3, as its referrer's `artifactType`.
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The key of the trusted root in its ConfigMap.
const TRUSTED_ROOT_FIELD: &str = "trusted_root.json";

/// With a `keyless` entry whose trusted root is a ConfigMap in the operator's namespace (listed
/// in `--trusted-root-config-maps`): a Pod of an image with a keyless Sigstore bundle of the
/// release identity (attached as a referrer, found through the referrers tag schema) is stored,
/// an unsigned image is refused; after the policy is edited to want another subject, the same
/// image is refused naming the identity found and the one wanted.
#[tokio::test]
async fn keyless_signatures_with_a_trusted_root_config_map() {
    run("keyless", async |e2e| {
        let registry = start_registry(&e2e).await;
        let host = registry.host.clone();
        let image = |repository: &str| format!("{host}/e2e/{repository}:1");
        let digest = registry.push_image("e2e/keyless", "1").await;
        registry.push_image("e2e/unsigned", "1").await;

        // The Sigstore JavaScript libraries sign the image's manifest; the bundle is attached as
        // a referrer (referrers tag schema) from here, since `@sigstore/oci` speaks plain HTTP
        // only to 127.0.0.1 and the registry may listen on another address of this machine.
        let manifest = reqwest::Client::new()
            .get(format!("http://{host}/v2/e2e/keyless/manifests/1"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the manifest just pushed")
            .bytes()
            .await
            .expect("the manifest's bytes");
        let dir = e2e.dir();
        let (manifest_file, out) = (dir.join("manifest.json"), dir.join("sigstore"));
        std::fs::write(&manifest_file, &manifest).unwrap();
        let target = format!("{host}/e2e/keyless");
        let produced = crate::sigstore_js::produce(
            &out,
            &[
                "--manifest",
                manifest_file.to_str().unwrap(),
                "--image",
                &target,
                "--cases",
                "dsse-v03",
            ],
        );
        assert!(
            produced,
            "the keyless test needs node and `npm ci` in tests/sigstore-js"
        );
        let bundle = std::fs::read(out.join("dsse-v03.bundle.json")).unwrap();
        registry
            .attach_bundle("e2e/keyless", &digest, &bundle, BUNDLE_MEDIA_TYPE)
            .await;
        let trusted_root = std::fs::read_to_string(out.join("trusted_root.json")).unwrap();

        // The ConfigMap exists before the operator, which reads the ConfigMaps it lists at start.
        let namespace = e2e.operator_namespace();
        let root_map = e2e.named("sigstore-root");
        let maps: Api<ConfigMap> = Api::namespaced(e2e.client(), &namespace);
        e2e.apply(
            &maps,
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": root_map, "namespace": namespace},
                "data": {(TRUSTED_ROOT_FIELD): trusted_root}}),
        )
        .await;

        let policy = e2e.named("keyless");
        let images = format!("{host}/e2e/**");
        let entry = |subject: &str| {
            json!({"name": "release", "images": [images],
                "keyless": {"issuer": KEYLESS_ISSUER, "subject": subject,
                    "trustedRoot": {"configMapRef": {"name": root_map, "key": TRUSTED_ROOT_FIELD}}}})
        };
        e2e.apply_policy(&policy, signed_spec(entry(KEYLESS_SUBJECT)))
            .await;
        let mut args = e2e.default_operator_args();
        args.extend([
            format!("--insecure-registry={host}"),
            format!("--trusted-root-config-maps={root_map}"),
        ]);
        e2e.start_operator(OperatorRun {
            args: Some(args),
            ..OperatorRun::default()
        });
        until_enforced(&e2e, &policy).await;

        let pods: Api<Pod> = e2e.api();
        store(&pods, &pod("keyless", &image("keyless"))).await;
        assert_unsigned(
            &pods,
            &policy,
            "release",
            &image("unsigned"),
            "no signature for",
        )
        .await;

        // Another subject wanted: the same signature no longer passes, and the denial says who
        // signed and who was wanted.
        e2e.apply_policy(&policy, signed_spec(entry(OTHER_SUBJECT)))
            .await;
        let probe = pod("probe", &image("keyless"));
        let message = e2e
            .eventually(
                &format!(
                    "the edited policy {policy} to refuse {} (signed by another subject)",
                    image("keyless")
                ),
                CONVERGE,
                async || refused_by(PODS_WEBHOOK, pods.create(&dry_run(), &probe).await),
            )
            .await;
        for part in [
            format!("signed by subject {KEYLESS_SUBJECT:?} from issuer {KEYLESS_ISSUER:?}"),
            format!("not by subject {OTHER_SUBJECT:?}"),
        ] {
            assert!(message.contains(&part), "should say {part}: {message}");
        }
    })
    .await;
}
