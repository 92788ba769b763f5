//! Keyless signatures end to end against a real registry (Debian's `docker-registry`,
//! distribution 2.8, on 127.0.0.1 — it has no referrers API, so bundles are found through the
//! referrers tag schema): signatures and Sigstore bundles made by the Sigstore JavaScript
//! libraries (`@sigstore/sign` against `@sigstore/mock`'s Fulcio, Rekor and timestamp
//! authority; `tests/sigstore-js/produce.js`), bundles attached to the images by `@sigstore/oci`,
//! keyless `.sig` layers pushed through the registry API. Judged by `/validate`, `/imagereview`
//! and `imagegate check`, with the trusted root of those authorities given by
//! `--sigstore-trusted-root` and by a ConfigMap (`--trusted-root-dir`).

mod cli;
mod common;
#[path = "support/registry.rs"]
mod registry_support;
#[path = "support/sigstore_js.rs"]
mod sigstore_js;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, pod_review};
use imagegate::evidence::{Deadline, Gather as _, Outcome, SignatureFormat};
use imagegate::registry::{Config, Credentials, Registry};
use imagegate::signature::{Match, TransparencyLog, TrustedRoot, Verifier};
use registry_support::{
    FaultProxy, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, SIMPLE_SIGNING, TestRegistry, random_bytes,
    request, sha256, signature_tag,
};
use serde_json::{Value, json};
use sigstore_js::produce;

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const SUBJECT: &str = "https://github.com/corp/app/.github/workflows/release.yml@refs/tags/v1.2.3";
const OTHER_SUBJECT: &str =
    "https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main";
const OTHER_ISSUER: &str = "https://accounts.example.com";
/// The artifact type of a Sigstore bundle referrer, as cosign and `@sigstore/oci` write it.
const BUNDLE_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Where each signature goes: a repository (every one holds the same image, so every case
/// signs the same digest), the bundle cases attached to it, and the `.sig` layer cases pushed.
const REPOSITORIES: &[(&str, &[&str], &[&str])] = &[
    ("keyless/bundle", &["dsse-v03"], &[]),
    ("keyless/intoto", &["dsse-v02-intoto"], &[]),
    ("keyless/message", &["message-v02"], &[]),
    ("keyless/sig", &[], &["cosign-keyless"]),
    ("keyless/both", &["dsse-v03"], &["cosign-keyless"]),
    (
        "keyless/bad-sig-good-bundle",
        &["dsse-v03"],
        &["cosign-other-digest"],
    ),
    (
        "keyless/good-sig-bad-bundle",
        &["dsse-untrusted-ca"],
        &["cosign-keyless"],
    ),
    ("keyless/other-subject", &["dsse-other-subject"], &[]),
    ("keyless/other-issuer", &["dsse-other-issuer"], &[]),
    ("keyless/untrusted-ca", &["dsse-untrusted-ca"], &[]),
    ("keyless/expired-logged", &["dsse-expired-logged"], &[]),
    ("keyless/expired-unlogged", &["dsse-expired-unlogged"], &[]),
    ("keyless/timestamp-only", &["dsse-tsa-only"], &[]),
    ("keyless/sig-no-log", &[], &["cosign-no-bundle"]),
    (
        "keyless/other-digest",
        &["dsse-other-digest"],
        &["cosign-other-digest"],
    ),
    // One signature of the release identity for another digest, one of another identity for
    // this digest: neither verifies as a whole, so together they must not pass.
    (
        "keyless/split",
        &["dsse-other-digest", "dsse-other-subject"],
        &[],
    ),
    (
        "keyless/split-formats",
        &["dsse-other-subject"],
        &["cosign-other-digest"],
    ),
    ("keyless/attestation", &["dsse-attestation"], &[]),
    ("keyless/unsigned", &[], &[]),
    // Attached by `TestRegistry::attach_bundle` (which the end-to-end suite uses), not by
    // `@sigstore/oci`.
    ("keyless/attached-by-rust", &[], &[]),
    ("keyless/crowded", &["dsse-v03"], &[]),
    ("keyless/crowded-bundles", &[], &[]),
    ("skip/expired-unlogged", &["dsse-expired-unlogged"], &[]),
    ("skip/timestamp-only", &["dsse-tsa-only"], &[]),
    ("prefix/bundle", &["dsse-v03"], &[]),
];

/// Unknown referrers added beside the bundle of `keyless/crowded`, and bundle referrers listed
/// in `keyless/crowded-bundles` (one more than are read).
const UNKNOWN_REFERRERS: usize = 500;
const LISTED_BUNDLES: usize = 65;

/// Pushes into the plain-HTTP test registry through the distribution API with one client
/// (setting up the world pushes about 700 objects).
#[derive(Clone)]
struct Pusher {
    http: reqwest::Client,
    base: String,
}

impl Pusher {
    fn new(registry: &TestRegistry) -> Pusher {
        assert!(!registry.tls);
        Pusher {
            http: reqwest::Client::new(),
            base: format!("http://{}", registry.host),
        }
    }

    /// Uploads a blob into `repo` (monolithically: a POST, then a PUT); its digest.
    async fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let started = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202, "start an upload to {repo}");
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let mut url = reqwest::Url::parse(&self.base)
            .unwrap()
            .join(&location)
            .unwrap();
        url.query_pairs_mut().append_pair("digest", &digest);
        let done = self
            .http
            .put(url)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 201, "upload {digest} to {repo}");
        digest
    }

    /// Puts a manifest as `repo:reference` (a tag or its digest); its digest.
    async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        body: Vec<u8>,
        media_type: &str,
    ) -> String {
        let digest = sha256(&body);
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            status,
            201,
            "{repo}:{reference}: {}",
            r.text().await.unwrap_or_default()
        );
        digest
    }

    /// The manifest `repo:reference`.
    async fn get(&self, repo: &str, reference: &str, accept: &str) -> Vec<u8> {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{repo}:{reference}");
        r.bytes().await.unwrap().to_vec()
    }
}

/// The signed world: a registry holding the image in every repository, and the producer's
/// output (the trusted root, the cases).
struct World {
    registry: TestRegistry,
    dir: tempfile::TempDir,
    digest: String,
}

impl World {
    async fn new() -> Option<World> {
        let registry = TestRegistry::plain().await?;
        let push = Pusher::new(&registry);
        let dir = tempfile::tempdir().unwrap();
        let cases = dir.path().join("cases");

        // One image, pushed into every repository: the same manifest, the same digest.
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = random_bytes(64);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer), "size": layer.len()}],
        }))
        .unwrap();
        for (repo, _, _) in REPOSITORIES {
            push.blob(repo, config).await;
            push.blob(repo, &layer).await;
            push.manifest(repo, "1.0", manifest.clone(), OCI_MANIFEST)
                .await;
        }
        let digest = sha256(&manifest);
        std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();

        // The Sigstore JavaScript libraries sign it and attach the bundles.
        let plan: Vec<Value> = REPOSITORIES
            .iter()
            .filter(|(_, bundles, _)| !bundles.is_empty())
            .map(|(repo, bundles, _)| json!({"image": format!("{}/{repo}", registry.host), "cases": bundles}))
            .collect();
        std::fs::write(
            dir.path().join("plan.json"),
            serde_json::to_vec(&plan).unwrap(),
        )
        .unwrap();
        let manifest_file = dir.path().join("manifest.json");
        let image = format!("{}/keyless/app", registry.host);
        let plan_file = dir.path().join("plan.json");
        if !produce(
            &cases,
            &[
                "--manifest",
                manifest_file.to_str().unwrap(),
                "--image",
                &image,
                "--attach-plan",
                plan_file.to_str().unwrap(),
            ],
        ) {
            return None;
        }
        let index: Value =
            serde_json::from_slice(&std::fs::read(cases.join("cases.json")).unwrap()).unwrap();
        assert_eq!(
            index["digest"],
            digest.as_str(),
            "the producer signed the image pushed"
        );
        // The keyless `.sig` layers, as cosign pushes them.
        for (repo, _, layers) in REPOSITORIES {
            if !layers.is_empty() {
                push_sig_layers(&push, repo, &digest, &cases, layers).await;
            }
        }
        let bundle = std::fs::read(cases.join("dsse-v03.bundle.json")).unwrap();
        registry
            .attach_bundle("keyless/attached-by-rust", &digest, &bundle, BUNDLE_TYPE)
            .await;
        // Referrer indexes with many entries.
        crowd(&push, "keyless/crowded", &digest).await;
        crowd_bundles(&push, "keyless/crowded-bundles", &digest, &cases).await;
        std::fs::write(dir.path().join("docker.json"), r#"{"auths": {}}"#).unwrap();
        Some(World {
            registry,
            dir,
            digest,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:1.0", self.registry.host)
    }

    /// Three policies over three groups of repositories: the release identity with the
    /// transparency log required (the default), the same with `Skip`, and a subject regex
    /// that matches only a prefix of the release identity. `trusted_root` is added to every
    /// keyless entry (none: the root of `--sigstore-trusted-root`).
    fn policies(&self, trusted_root: &str) -> String {
        let host = &self.registry.host;
        let entry = |name: &str, subject: &str, extra: &str| {
            format!(
                "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec:\n  images: ['{host}/{name}/**']\n  verifySignatures:\n  - name: ci\n    keyless:\n      issuer: {ISSUER}\n      {subject}\n{trusted_root}{extra}"
            )
        };
        [
            entry("keyless", &format!("subject: '{SUBJECT}'"), ""),
            entry(
                "skip",
                &format!("subject: '{SUBJECT}'"),
                "    transparencyLog: Skip\n",
            ),
            entry(
                "prefix",
                r"subjectRegExp: 'https://github\.com/corp/app/\.github/workflows/release\.yml'",
                "",
            ),
        ]
        .join("---\n")
    }

    /// The flags that let imagegate reach the registry and trust the test authorities.
    fn flags(&self) -> Vec<String> {
        vec![
            "--insecure-registry".into(),
            self.registry.host.clone(),
            "--docker-config".into(),
            self.path("docker.json").display().to_string(),
            "--sigstore-trusted-root".into(),
            self.path("cases/trusted_root.json").display().to_string(),
        ]
    }

    fn trusted_root(&self) -> Arc<TrustedRoot> {
        let bytes = std::fs::read(self.path("cases/trusted_root.json")).unwrap();
        Arc::new(TrustedRoot::from_json(&bytes).unwrap())
    }
}

/// Pushes the `.sig` manifest of `digest` in `repo` with the producer's cosign layers: the
/// simple-signing payload, and the signature, certificate, chain and Rekor-entry annotations.
async fn push_sig_layers(push: &Pusher, repo: &str, digest: &str, cases: &Path, names: &[&str]) {
    let config =
        br#"{"architecture":"","config":{},"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push.blob(repo, config).await;
    let mut layers = Vec::new();
    for name in names {
        let layer: Value = serde_json::from_slice(
            &std::fs::read(cases.join(format!("{name}.cosign.json"))).unwrap(),
        )
        .unwrap();
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(layer["payload"].as_str().unwrap())
            .unwrap();
        push.blob(repo, &payload).await;
        let mut annotations = BTreeMap::new();
        for (field, annotation) in [
            ("signature", "dev.cosignproject.cosign/signature"),
            ("certificate", "dev.sigstore.cosign/certificate"),
            ("chain", "dev.sigstore.cosign/chain"),
            ("bundle", "dev.sigstore.cosign/bundle"),
        ] {
            if let Some(value) = layer[field].as_str() {
                annotations.insert(annotation, value.to_owned());
            }
        }
        layers.push(json!({"mediaType": SIMPLE_SIGNING, "digest": sha256(&payload), "size": payload.len(), "annotations": annotations}));
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": config.len()},
        "layers": layers});
    push.manifest(
        repo,
        &signature_tag(digest),
        serde_json::to_vec(&manifest).unwrap(),
        OCI_MANIFEST,
    )
    .await;
}

/// The referrers tag of `digest` (`sha256-<hex>`).
fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Pushes `count` referrers of `digest` into `repo`, each an artifact manifest of
/// `artifact_type(i)` (none: a plain image manifest) whose layer is `blob` of `blob_type`; their
/// descriptors for a referrers index.
async fn push_referrers(
    push: &Pusher,
    repo: &str,
    digest: &str,
    count: usize,
    artifact_type: impl Fn(usize) -> Option<&'static str>,
    (blob, blob_type): (&[u8], &str),
) -> Vec<Value> {
    use futures::StreamExt as _;
    /// Manifests pushed at once: the registry takes them in parallel.
    const IN_FLIGHT: usize = 8;
    const EMPTY: &[u8] = b"{}";
    push.blob(repo, EMPTY).await;
    push.blob(repo, blob).await;
    let referrers: Vec<(Vec<u8>, Value)> = (0..count)
        .map(|i| {
            let mut manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(EMPTY), "size": EMPTY.len()},
                "layers": [{"mediaType": blob_type, "digest": sha256(blob), "size": blob.len()}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 0},
                "annotations": {"org.example.index": i.to_string()}});
            let mut descriptor = json!({"mediaType": OCI_MANIFEST,
                "annotations": {"org.example.index": i.to_string()}});
            if let Some(t) = artifact_type(i) {
                manifest["artifactType"] = json!(t);
                descriptor["artifactType"] = json!(t);
            }
            let bytes = serde_json::to_vec(&manifest).unwrap();
            descriptor["size"] = json!(bytes.len());
            descriptor["digest"] = json!(sha256(&bytes));
            (bytes, descriptor)
        })
        .collect();
    futures::stream::iter(referrers)
        .map(|(bytes, descriptor)| async move {
            push.manifest(repo, &sha256(&bytes), bytes, OCI_MANIFEST)
                .await;
            descriptor
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// Adds [`UNKNOWN_REFERRERS`] referrers of artifact types imagegate does not read (SBOMs, scan
/// results, none at all) to the referrers index `@sigstore/oci` made in `repo`, before its
/// bundle.
async fn crowd(push: &Pusher, repo: &str, digest: &str) {
    let mut index: Value =
        serde_json::from_slice(&push.get(repo, &referrers_tag(digest), OCI_INDEX).await).unwrap();
    let types = [
        Some("application/spdx+json"),
        Some("application/vnd.cyclonedx+json"),
        Some("application/vnd.example.scan.v1+json"),
        None,
    ];
    let mut listed = push_referrers(
        push,
        repo,
        digest,
        UNKNOWN_REFERRERS,
        |i| types[i % types.len()],
        (b"{\"scan\":\"clean\"}", "application/json"),
    )
    .await;
    let attached = index["manifests"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "the bundle @sigstore/oci attached");
    listed.extend(attached.iter().cloned());
    index["manifests"] = json!(listed);
    push.manifest(
        repo,
        &referrers_tag(digest),
        serde_json::to_vec(&index).unwrap(),
        OCI_INDEX,
    )
    .await;
}

/// A referrers index listing [`LISTED_BUNDLES`] bundle referrers (one more than are read), each
/// holding a bundle of another identity.
async fn crowd_bundles(push: &Pusher, repo: &str, digest: &str, cases: &Path) {
    let bundle = std::fs::read(cases.join("dsse-other-subject.bundle.json")).unwrap();
    let listed = push_referrers(
        push,
        repo,
        digest,
        LISTED_BUNDLES,
        |_| Some(BUNDLE_TYPE),
        (&bundle, BUNDLE_TYPE),
    )
    .await;
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed});
    push.manifest(
        repo,
        &referrers_tag(digest),
        serde_json::to_vec(&index).unwrap(),
        OCI_INDEX,
    )
    .await;
}

fn pod(image: &str) -> Value {
    pod_review(
        "team",
        "alice",
        &["dev"],
        json!({}),
        json!([{"name": "app", "image": image}]),
    )
}

/// What each image must come to: admitted, or denied with every one of these in the message.
fn expectations(host: &str, digest: &str) -> Vec<(&'static str, Result<(), Vec<String>>)> {
    let identity =
        |subject: &str, issuer: &str| format!("subject {subject:?} from issuer {issuer:?}");
    let release = identity(SUBJECT, ISSUER);
    let wanted = format!("not by {release}");
    vec![
        ("keyless/bundle", Ok(())),
        ("keyless/intoto", Ok(())),
        ("keyless/message", Ok(())),
        ("keyless/sig", Ok(())),
        ("keyless/both", Ok(())),
        ("keyless/bad-sig-good-bundle", Ok(())),
        ("keyless/good-sig-bad-bundle", Ok(())),
        ("keyless/expired-logged", Ok(())),
        ("keyless/crowded", Ok(())),
        ("keyless/attached-by-rust", Ok(())),
        ("skip/timestamp-only", Ok(())),
        (
            "keyless/other-subject",
            Err(vec![
                format!("signed by {}", identity(OTHER_SUBJECT, ISSUER)),
                wanted.clone(),
                format!("; sign {}/keyless/other-subject@{digest} (the digest the tag 1.0 names now) as this entry's identity", host),
            ]),
        ),
        (
            "keyless/other-issuer",
            Err(vec![
                format!("signed by {}", identity(SUBJECT, OTHER_ISSUER)),
                wanted.clone(),
            ]),
        ),
        (
            "prefix/bundle",
            Err(vec![
                format!("signed by {release}"),
                r#"not by subject matching /https://github\.com/corp/app/\.github/workflows/release\.yml/ from issuer"#.to_owned(),
            ]),
        ),
        (
            "keyless/untrusted-ca",
            Err(vec!["the certificate does not chain to a Fulcio CA of the trusted root".to_owned()]),
        ),
        (
            "keyless/expired-unlogged",
            Err(vec!["the signature has no transparency-log entry (transparencyLog: Require)".to_owned()]),
        ),
        (
            "skip/expired-unlogged",
            Err(vec![format!("the certificate of {release} was valid from"), "nothing proves the signature was made then".to_owned()]),
        ),
        (
            "keyless/timestamp-only",
            Err(vec!["the signature has no transparency-log entry (transparencyLog: Require)".to_owned()]),
        ),
        (
            "keyless/sig-no-log",
            Err(vec!["the signature has no transparency-log entry (transparencyLog: Require)".to_owned()]),
        ),
        (
            "keyless/other-digest",
            Err(vec![format!("2 signatures for {digest}"), "the signature is for sha256:".to_owned(), "(each)".to_owned()]),
        ),
        (
            "keyless/split",
            Err(vec![format!("2 signatures for {digest}"), format!("signed by {}", identity(OTHER_SUBJECT, ISSUER)), "the signature is for sha256:".to_owned()]),
        ),
        (
            "keyless/split-formats",
            Err(vec![format!("2 signatures for {digest}"), format!("signed by {}", identity(OTHER_SUBJECT, ISSUER)), "the signature is for sha256:".to_owned()]),
        ),
        (
            "keyless/attestation",
            Err(vec![format!("no signature for {digest}")]),
        ),
        (
            "keyless/unsigned",
            Err(vec![format!("no signature for {digest}")]),
        ),
        (
            "keyless/crowded-bundles",
            Err(vec![
                format!("lists {LISTED_BUNDLES} signature bundles for {digest}; only the first 64 are read"),
                "imagegate fails closed".to_owned(),
            ]),
        ),
    ]
}

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_signatures_through_the_webhook_and_check() {
    let Some(world) = World::new().await else {
        return;
    };
    let flags = world.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start(&world.policies(""), &flags).await;

    for (repo, want) in expectations(&world.registry.host, &world.digest) {
        let image = world.image(repo);
        let (status, out) = server
            .post(
                "/validate?timeout=10s",
                serde_json::to_vec(&pod(&image)).unwrap(),
            )
            .await;
        assert_eq!(status, 200);
        let r = &out["response"];
        match want {
            Ok(()) => assert_eq!(r["allowed"], true, "{repo}: {}", message(r)),
            Err(says) => {
                assert_eq!(r["allowed"], false, "{repo} is admitted");
                let m = message(r);
                assert!(
                    m.contains(&format!(
                        "image \"{image}\" ({image}) has no verified signature: ci: "
                    )),
                    "{repo}: {m}"
                );
                for s in says {
                    assert!(m.contains(&s), "{repo}: {m}\nwanted: {s}");
                }
            }
        }
    }

    // The legacy ImageReview: one image denied denies the review, naming that container.
    let review = json!({"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview",
        "spec": {"containers": [{"image": world.image("keyless/bundle")}, {"image": world.image("keyless/other-subject")}, {"image": world.image("keyless/sig")}], "namespace": "team"}});
    let (status, out) = server
        .post("/imagereview", serde_json::to_vec(&review).unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["status"]["allowed"], false, "{out}");
    let reason = out["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("container \"#1\""), "{reason}");
    assert!(reason.contains(OTHER_SUBJECT), "{reason}");
    assert!(
        !reason.contains("container \"#0\"") && !reason.contains("container \"#2\""),
        "{reason}"
    );
    server.stop().await;

    // check, with the trusted root from a ConfigMap (as mounted: DIR/CONFIGMAP/KEY) and no
    // --sigstore-trusted-root.
    let roots = world.path("config-maps/sigstore");
    std::fs::create_dir_all(&roots).unwrap();
    std::fs::copy(
        world.path("cases/trusted_root.json"),
        roots.join("trusted_root.json"),
    )
    .unwrap();
    std::fs::write(
        world.path("policies.yaml"),
        world.policies(
            "      trustedRoot: {configMapRef: {name: sigstore, key: trusted_root.json}}\n",
        ),
    )
    .unwrap();
    let manifests: String = ["keyless/bundle", "keyless/sig", "keyless/other-subject", "keyless/other-digest"]
        .iter()
        .enumerate()
        .map(|(i, repo)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: team}}\nspec:\n  containers:\n  - {{name: app, image: '{}'}}\n---\n",
                world.image(repo)
            )
        })
        .collect();
    std::fs::write(world.path("pods.yaml"), manifests).unwrap();
    let host = world.registry.host.clone();
    let trusted_root_dir = world.path("config-maps").display().to_string();
    let out = cli::imagegate(
        world.dir.path(),
        &[
            "check",
            "--policies",
            "policies.yaml",
            "--insecure-registry",
            &host,
            "--docker-config",
            "docker.json",
            "--trusted-root-dir",
            &trusted_root_dir,
            "--output",
            "json",
            "pods.yaml",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", cli::stderr(&out));
    let report: Value = serde_json::from_str(&cli::stdout(&out)).unwrap();
    let allowed: Vec<(String, bool)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        allowed,
        [
            ("p0".into(), true),
            ("p1".into(), true),
            ("p2".into(), false),
            ("p3".into(), false)
        ],
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains(OTHER_SUBJECT) && text.contains("the signature is for sha256:"),
        "{text}"
    );

    // Without any trusted root, a keyless policy is bad input, saying what to give.
    std::fs::write(world.path("no-root.yaml"), world.policies("")).unwrap();
    let out = cli::imagegate(
        world.dir.path(),
        &["check", "--policies", "no-root.yaml", "pods.yaml"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        cli::stderr(&out).contains("--sigstore-trusted-root FILE"),
        "{}",
        cli::stderr(&out)
    );

    // A referrers index of 500 unknown artifacts costs no request per artifact: the adapter
    // reads the index, passes them over, and reads the one bundle.
    let proxy = FaultProxy::start(&world.registry.host).await;
    let registry = Registry::new(
        Config {
            client: imagegate::registry::ClientConfig {
                extra_roots: vec![],
                insecure: vec![proxy.host.clone()],
            },
            credentials: Credentials::anonymous(),
            ..Config::default()
        },
        None,
    )
    .unwrap();
    let verifier = Arc::new(Verifier::keyless(
        Match::Exact(ISSUER.into()),
        Match::Exact(SUBJECT.into()),
        world.trusted_root(),
        TransparencyLog::Require,
    ));
    let image = format!("{}/keyless/crowded@{}", proxy.host, world.digest);
    let evidence = registry
        .gather(
            &[request(&image, &[("p/ci", &verifier)])],
            Deadline::after(Duration::from_secs(20)),
        )
        .await;
    let outcome = &evidence.images[&image].entries["p/ci"].outcome;
    let Outcome::Verified { format, signer, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*format, SignatureFormat::Bundle);
    assert!(signer.contains(SUBJECT), "{signer}");
    // The `.sig` tag (none), the referrers API (none: distribution 2.8), the referrers index,
    // the bundle's manifest and its blob.
    let paths = proxy.paths();
    assert_eq!(paths.len(), 5, "{paths:#?}");
}
