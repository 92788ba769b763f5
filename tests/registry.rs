//! The registry adapter against a real registry (Debian's `docker-registry`, distribution 2.8)
//! on 127.0.0.1, with images pushed by `oci-client` and signed by the `sigstore` crate: every
//! result goes through `Registry::gather`, as the webhook's does.

#[path = "support/registry.rs"]
mod registry_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegate::evidence::{
    Deadline, EntryEvidence, Evidence, EvidenceRequest, Gather, Outcome, SignatureFormat, Source,
};
use imagegate::registry::{ClientConfig, Config, Credentials, Login, Registry};
use registry_support::*;

/// A deadline no healthy loopback lookup comes near.
const GENEROUS: Duration = Duration::from_secs(15);

fn adapter(client: ClientConfig, credentials: Credentials) -> Registry {
    adapter_with(client, credentials, |_| {})
}

fn adapter_with(
    client: ClientConfig,
    credentials: Credentials,
    tweak: impl FnOnce(&mut Config),
) -> Registry {
    let mut config = Config {
        client,
        credentials,
        ..Config::default()
    };
    tweak(&mut config);
    Registry::new(config, None).unwrap()
}

async fn gather(registry: &Registry, requests: &[EvidenceRequest], budget: Duration) -> Evidence {
    registry.gather(requests, Deadline::after(budget)).await
}

fn entry<'a>(evidence: &'a Evidence, image: &str, entry: &str) -> &'a EntryEvidence {
    evidence
        .images
        .get(image)
        .unwrap_or_else(|| panic!("no evidence for {image}: {evidence:#?}"))
        .entries
        .get(entry)
        .unwrap_or_else(|| panic!("no outcome for {entry} of {image}: {evidence:#?}"))
}

#[track_caller]
fn assert_verified(e: &EntryEvidence, digest: &str, key: &TestKey, source: Source) {
    let fingerprint = imagegate::signature::PublicKey::from_pem(&key.public_pem)
        .unwrap()
        .fingerprint()
        .to_owned();
    assert_eq!(
        e,
        &EntryEvidence {
            outcome: Outcome::Verified {
                digest: digest.to_owned(),
                format: SignatureFormat::CosignTag,
                signer: fingerprint,
            },
            source,
        }
    );
}

#[track_caller]
fn assert_not_verified(e: &EntryEvidence, contains: &str) {
    match &e.outcome {
        Outcome::NotVerified { reason } => {
            assert!(reason.contains(contains), "{reason:?} lacks {contains:?}")
        }
        other => panic!("expected not verified ({contains}), got {other:?}"),
    }
}

#[track_caller]
fn assert_unavailable(e: &EntryEvidence, contains: &str) {
    match &e.outcome {
        Outcome::Unavailable { reason } => {
            assert!(reason.contains(contains), "{reason:?} lacks {contains:?}")
        }
        other => panic!("expected unavailable ({contains}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_unsigned_and_other_key_over_tls() {
    let Some(reg) = TestRegistry::tls().await else {
        return;
    };
    let (release, other) = (TestKey::new(), TestKey::new());
    let signed = reg.push_signed("team/app", "1.0", &[&release]).await;
    let unsigned = reg.push_image("team/app", "2.0").await;
    let foreign = reg.push_signed("team/app", "3.0", &[&other]).await;

    let registry = adapter(reg.client_config(), Credentials::anonymous());
    let (v_release, v_other) = (release.verifier(), other.verifier());
    let tagged = format!("{}/team/app:1.0", reg.host);
    let pinned = format!("{}/team/app@{signed}", reg.host);
    let bare = format!("{}/team/app:2.0", reg.host);
    let foreign_image = format!("{}/team/app:3.0", reg.host);
    let requests = [
        request(
            &tagged,
            &[("prod/release", &v_release), ("prod/ci", &v_other)],
        ),
        request(&pinned, &[("prod/release", &v_release)]),
        request(&bare, &[("prod/release", &v_release)]),
        request(&foreign_image, &[("prod/release", &v_release)]),
    ];
    let evidence = gather(&registry, &requests, GENEROUS).await;

    let image = &evidence.images[&tagged];
    assert_eq!(image.digest.as_deref(), Some(signed.as_str()));
    assert_eq!(image.digest_source, Some(Source::Fresh));
    assert_verified(
        entry(&evidence, &tagged, "prod/release"),
        &signed,
        &release,
        Source::Fresh,
    );
    assert_not_verified(entry(&evidence, &tagged, "prod/ci"), "does not verify");

    let image = &evidence.images[&pinned];
    assert_eq!(image.digest.as_deref(), Some(signed.as_str()));
    assert_eq!(image.digest_source, None);
    let e = entry(&evidence, &pinned, "prod/release");
    assert!(matches!(e.outcome, Outcome::Verified { .. }), "{e:?}");

    assert_eq!(
        evidence.images[&bare].digest.as_deref(),
        Some(unsigned.as_str())
    );
    assert_not_verified(
        entry(&evidence, &bare, "prod/release"),
        &format!("no signature for {unsigned} in {}/team/app", reg.host),
    );
    assert_eq!(
        evidence.images[&foreign_image].digest.as_deref(),
        Some(foreign.as_str())
    );
    assert_not_verified(
        entry(&evidence, &foreign_image, "prod/release"),
        "1 signature for",
    );

    // Asked again: everything from the cache.
    let again = gather(&registry, &requests, GENEROUS).await;
    assert_eq!(again.images[&tagged].digest_source, Some(Source::Cache));
    assert_verified(
        entry(&again, &tagged, "prod/release"),
        &signed,
        &release,
        Source::Cache,
    );
    assert_eq!(entry(&again, &bare, "prod/release").source, Source::Cache);
    assert_eq!(registry.cache_sizes(), (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_verified_at_its_own_digest() {
    let Some(reg) = TestRegistry::tls().await else {
        return;
    };
    let key = TestKey::new();
    let amd = reg.push_image("multi/app", "amd64").await;
    let arm = reg.push_image("multi/app", "arm64").await;
    let index = reg.push_index("multi/app", "1.0", &[&amd, &arm]).await;
    assert_eq!(reg.sign("multi/app:1.0", &[&key]).await, index);

    let registry = adapter(reg.client_config(), Credentials::anonymous());
    let image = format!("{}/multi/app:1.0", reg.host);
    let v = key.verifier();
    let evidence = gather(&registry, &[request(&image, &[("p/e", &v)])], GENEROUS).await;
    assert_eq!(
        evidence.images[&image].digest.as_deref(),
        Some(index.as_str())
    );
    assert_verified(entry(&evidence, &image, "p/e"), &index, &key, Source::Fresh);
    // A platform manifest of the index is another digest, with no signature of its own.
    let platform = format!("{}/multi/app@{amd}", reg.host);
    let evidence = gather(&registry, &[request(&platform, &[("p/e", &v)])], GENEROUS).await;
    assert_not_verified(entry(&evidence, &platform, "p/e"), "no signature for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_of_another_image_verifies_nothing() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let key = TestKey::new();
    let a = reg.push_image("team/app", "a").await;
    let b = reg.push_image("team/app", "b").await;
    let c = reg.push_image("team/app", "c").await;
    // Replay: image B's valid signature copied to image A's signature tag.
    reg.sign("team/app:b", &[&key]).await;
    reg.copy_signatures("team/app", &b, &a).await;
    // A payload naming B, signed with the right key, pushed as C's signature.
    let payload_for_b = key.raw_layer(&format!("{}/team/app", reg.host), &b);
    reg.push_signature_manifest("team/app", &c, &[payload_for_b])
        .await;

    let registry = adapter(reg.client_config(), Credentials::anonymous());
    let v = key.verifier();
    let (image_a, image_b, image_c) = (
        format!("{}/team/app@{a}", reg.host),
        format!("{}/team/app@{b}", reg.host),
        format!("{}/team/app@{c}", reg.host),
    );
    let evidence = gather(
        &registry,
        &[
            request(&image_a, &[("p/e", &v)]),
            request(&image_b, &[("p/e", &v)]),
            request(&image_c, &[("p/e", &v)]),
        ],
        GENEROUS,
    )
    .await;
    assert_not_verified(
        entry(&evidence, &image_a, "p/e"),
        &format!("for {b}, not for this image"),
    );
    assert_not_verified(
        entry(&evidence, &image_c, "p/e"),
        &format!("for {b}, not for this image"),
    );
    assert_verified(entry(&evidence, &image_b, "p/e"), &b, &key, Source::Fresh);
}

/// A hand-made signature manifest, and what it must come to.
#[derive(Clone, Copy, Debug)]
enum Bad {
    MalformedBase64,
    NoAnnotation,
    TruncatedPayload,
    SignatureOverOtherBytes,
    ForeignMediaType,
    OverSizeLayer,
    ThousandSignatures,
    NoLayers,
    BrokenThenValid,
    OverSizeAndNoValid,
}

/// What a case must come to: not verified, unavailable (with a text in the reason), or verified.
enum Expect {
    NotVerified(&'static str),
    Unavailable(&'static str),
    Verified,
}

impl Bad {
    const ALL: [Bad; 10] = [
        Bad::MalformedBase64,
        Bad::NoAnnotation,
        Bad::TruncatedPayload,
        Bad::SignatureOverOtherBytes,
        Bad::ForeignMediaType,
        Bad::OverSizeLayer,
        Bad::ThousandSignatures,
        Bad::NoLayers,
        Bad::BrokenThenValid,
        Bad::OverSizeAndNoValid,
    ];

    fn layers(self, key: &TestKey, repo: &str, digest: &str) -> Vec<RawLayer> {
        let good = || key.raw_layer(repo, digest);
        let over_size = |n: usize| RawLayer {
            payload: vec![b' '; 1024 * 1024 + n],
            signature: Some(b64(b"x")),
            media_type: SIMPLE_SIGNING.into(),
            size: None,
        };
        let with = |f: &dyn Fn(&mut RawLayer)| {
            let mut l = good();
            f(&mut l);
            l
        };
        match self {
            Bad::MalformedBase64 => {
                vec![with(&|l| l.signature = Some("%%% not base64 %%%".into()))]
            }
            Bad::NoAnnotation => vec![with(&|l| l.signature = None)],
            Bad::TruncatedPayload => vec![with(&|l| {
                // Cut short, and signed as it is: the signature verifies, the payload does not read.
                l.payload.truncate(l.payload.len() / 2);
                l.signature = Some(key.sign_bytes(&l.payload));
            })],
            Bad::SignatureOverOtherBytes => {
                vec![with(&|l| {
                    l.signature = Some(key.sign_bytes(b"something else"))
                })]
            }
            Bad::ForeignMediaType => {
                vec![with(&|l| {
                    l.media_type = "application/vnd.in-toto+json".into()
                })]
            }
            Bad::OverSizeLayer => vec![over_size(1)],
            Bad::ThousandSignatures => vec![good(); 1000],
            Bad::NoLayers => vec![],
            Bad::BrokenThenValid => vec![with(&|l| l.signature = Some("!".into())), good()],
            Bad::OverSizeAndNoValid => {
                vec![with(&|l| l.signature = Some("!".into())), over_size(7)]
            }
        }
    }

    fn expect(self) -> Expect {
        match self {
            Bad::MalformedBase64 => Expect::NotVerified("not base64"),
            Bad::NoAnnotation => Expect::NotVerified("annotation"),
            Bad::TruncatedPayload => Expect::NotVerified("simple-signing"),
            Bad::SignatureOverOtherBytes => Expect::NotVerified("does not verify"),
            Bad::ForeignMediaType => Expect::NotVerified("not a simple-signing payload"),
            Bad::OverSizeLayer => Expect::Unavailable("over the limit of 1048576 bytes"),
            Bad::ThousandSignatures => {
                Expect::Unavailable("lists 1000 signatures; at most 64 are read")
            }
            Bad::NoLayers => Expect::NotVerified("no signature for"),
            Bad::BrokenThenValid => Expect::Verified,
            Bad::OverSizeAndNoValid => Expect::Unavailable("no other signature for"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_artifacts_never_verify() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let key = TestKey::new();
    let repo = format!("{}/bad/app", reg.host);
    let registry = adapter(reg.client_config(), Credentials::anonymous());
    let v = key.verifier();
    let mut requests = Vec::new();
    for (i, case) in Bad::ALL.iter().enumerate() {
        let digest = reg.push_image("bad/app", &format!("case-{i}")).await;
        reg.push_signature_manifest("bad/app", &digest, &case.layers(&key, &repo, &digest))
            .await;
        requests.push(request(&format!("{repo}@{digest}"), &[("p/e", &v)]));
    }
    let evidence = gather(&registry, &requests, GENEROUS).await;
    for (case, req) in Bad::ALL.iter().zip(&requests) {
        let e = entry(&evidence, &req.image, "p/e");
        match (case.expect(), &e.outcome) {
            (Expect::Verified, Outcome::Verified { .. }) => {}
            (Expect::NotVerified(text), Outcome::NotVerified { reason })
                if reason.contains(text) => {}
            (Expect::Unavailable(text), Outcome::Unavailable { reason })
                if reason.contains(text) => {}
            (_, other) => panic!("{case:?}: got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_are_unavailable() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let key = TestKey::new();
    let digest = reg.push_signed("team/app", "1.0", &[&key]).await;
    let proxy = FaultProxy::start(&reg.host).await;
    let v = key.verifier();
    let image = format!("{}/team/app@{digest}", proxy.host);
    let sig_path = format!("/manifests/{}", signature_tag(&digest));
    let config = ClientConfig {
        extra_roots: vec![],
        insecure: vec![proxy.host.clone()],
    };
    // Each case with a fresh adapter, so that nothing is cached.
    let check = |fault: Fault| {
        proxy.set(fault);
        let registry = adapter(config.clone(), Credentials::anonymous());
        let image = image.clone();
        let v = v.clone();
        async move {
            let evidence = gather(&registry, &[request(&image, &[("p/e", &v)])], GENEROUS).await;
            entry(&evidence, &image, "p/e").clone()
        }
    };

    assert!(matches!(
        check(Fault::Pass).await.outcome,
        Outcome::Verified { .. }
    ));
    let garbage = Fault::Answer {
        path: sig_path.clone(),
        status: 200,
        headers: vec![(
            "Content-Type".into(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        body: b"\x00\xffnot json at all{{{".to_vec(),
    };
    assert_unavailable(&check(garbage).await, "is malformed");
    let wrong_shape = Fault::Answer {
        path: sig_path.clone(),
        status: 200,
        headers: vec![],
        body: br#"{"schemaVersion":2,"layers":{"not":"a list"}}"#.to_vec(),
    };
    assert_unavailable(&check(wrong_shape).await, "is malformed");
    let lying_digest = Fault::Answer {
        path: sig_path.clone(),
        status: 200,
        headers: vec![(
            "Docker-Content-Digest".into(),
            format!("sha256:{}", "0".repeat(64)),
        )],
        body: br#"{"schemaVersion":2,"layers":[]}"#.to_vec(),
    };
    assert_unavailable(&check(lying_digest).await, "but its content is");
    let huge = Fault::Answer {
        path: sig_path.clone(),
        status: 200,
        headers: vec![],
        body: vec![b' '; 5 * 1024 * 1024],
    };
    assert_unavailable(&check(huge).await, "larger than the limit");
    let truncated_blob = Fault::Answer {
        path: "/blobs/".into(),
        status: 200,
        headers: vec![],
        body: b"{\"critical\":".to_vec(),
    };
    assert_unavailable(&check(truncated_blob).await, "with content whose digest is");
    let off_https = Fault::Answer {
        path: "/blobs/".into(),
        status: 307,
        headers: vec![("Location".into(), "http://127.0.0.2:9/elsewhere".into())],
        body: vec![],
    };
    assert_unavailable(&check(off_https).await, "redirects must stay on HTTPS");
    assert_unavailable(
        &check(Fault::Status(500)).await,
        "answered 500 Internal Server Error",
    );
    assert_unavailable(&check(Fault::Status(403)).await, "403 Forbidden");
    assert_unavailable(&check(Fault::Drop).await, "cannot reach");
    // A tag whose HEAD has a broken digest header is read by GET instead.
    proxy.set(Fault::Answer {
        path: "/manifests/1.0".into(),
        status: 200,
        headers: vec![("Docker-Content-Digest".into(), "sha256:nothex".into())],
        body: vec![],
    });
    let registry = adapter(config.clone(), Credentials::anonymous());
    let tagged = format!("{}/team/app:1.0", proxy.host);
    let evidence = gather(&registry, &[request(&tagged, &[("p/e", &v)])], GENEROUS).await;
    // The GET is answered the same way (an empty body): its digest is not the image's.
    assert_ne!(
        evidence.images[&tagged].digest.as_deref(),
        Some(digest.as_str())
    );
    assert!(!matches!(
        entry(&evidence, &tagged, "p/e").outcome,
        Outcome::Verified { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_http_only_as_configured() {
    let (Some(tls), Some(plain)) = (TestRegistry::tls().await, TestRegistry::plain().await) else {
        return;
    };
    let key = TestKey::new();
    let v = key.verifier();
    let d_tls = tls.push_signed("team/app", "1.0", &[&key]).await;
    let d_plain = plain.push_signed("team/app", "1.0", &[&key]).await;
    let image_tls = format!("{}/team/app@{d_tls}", tls.host);
    let image_plain = format!("{}/team/app@{d_plain}", plain.host);
    let requests = [
        request(&image_tls, &[("p/e", &v)]),
        request(&image_plain, &[("p/e", &v)]),
    ];

    // Neither the CA nor the plain host configured: both fail closed.
    let none = adapter(ClientConfig::default(), Credentials::anonymous());
    let evidence = gather(&none, &requests, GENEROUS).await;
    assert_unavailable(entry(&evidence, &image_tls, "p/e"), "certificate");
    assert_unavailable(entry(&evidence, &image_plain, "p/e"), "cannot reach");

    // As the flags configure them: --registry-ca-file and --insecure-registry.
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        registry: imagegate::registry::RegistryArgs,
    }
    let ca_file = tls.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca.pair.cert_pem).unwrap();
    let flags = Flags::parse_from([
        "x".to_owned(),
        "--registry-ca-file".to_owned(),
        ca_file.display().to_string(),
        "--insecure-registry".to_owned(),
        plain.host.clone(),
    ]);
    let registry = Registry::new(
        flags.registry.config(Credentials::anonymous()).unwrap(),
        None,
    )
    .unwrap();
    let evidence = gather(&registry, &requests, GENEROUS).await;
    assert_verified(
        entry(&evidence, &image_tls, "p/e"),
        &d_tls,
        &key,
        Source::Fresh,
    );
    assert_verified(
        entry(&evidence, &image_plain, "p/e"),
        &d_plain,
        &key,
        Source::Fresh,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_unavailable() {
    install_crypto();
    let key = TestKey::new();
    let v = key.verifier();
    let host = format!("127.0.0.1:{}", free_port());
    let registry = adapter(
        ClientConfig {
            extra_roots: vec![],
            insecure: vec![host.clone()],
        },
        Credentials::anonymous(),
    );
    let image = format!("{host}/team/app:1.0");
    let evidence = gather(&registry, &[request(&image, &[("p/e", &v)])], GENEROUS).await;
    let found = &evidence.images[&image];
    assert_eq!(found.digest, None);
    assert!(
        found
            .digest_error
            .as_deref()
            .unwrap()
            .contains("cannot reach"),
        "{found:?}"
    );
    assert_unavailable(entry(&evidence, &image, "p/e"), "cannot reach");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_needs_the_docker_config() {
    let auth = Auth::Htpasswd {
        user: "ci".into(),
        password: "s3cret".into(),
    };
    let Some(reg) = TestRegistry::start(true, auth).await else {
        return;
    };
    let key = TestKey::new();
    let v = key.verifier();
    let digest = reg.push_signed("team/app", "1.0", &[&key]).await;
    let image = format!("{}/team/app:1.0", reg.host);
    let requests = [request(&image, &[("p/e", &v)])];

    let anonymous = adapter(reg.client_config(), Credentials::anonymous());
    let evidence = gather(&anonymous, &requests, GENEROUS).await;
    assert_unavailable(
        entry(&evidence, &image, "p/e"),
        "requires authentication (401 Unauthorized)",
    );

    let wrong = adapter(
        reg.client_config(),
        Credentials::anonymous().with_login(&reg.host, Login::new("ci", "wrong")),
    );
    let evidence = gather(&wrong, &requests, GENEROUS).await;
    assert_unavailable(
        entry(&evidence, &image, "p/e"),
        "refused the configured credentials",
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}},"credHelpers":{{"gcr.io":"gcloud"}}}}"#,
            reg.host,
            b64(b"ci:s3cret")
        ),
    )
    .unwrap();
    let credentials = imagegate::registry::DockerConfigArgs {
        docker_config: Some(config),
    }
    .credentials()
    .unwrap();
    let registry = adapter(reg.client_config(), credentials);
    let evidence = gather(&registry, &requests, GENEROUS).await;
    assert_verified(
        entry(&evidence, &image, "p/e"),
        &digest,
        &key,
        Source::Fresh,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_as_real_registries_use_it() {
    let auth = Auth::Token {
        user: "puller".into(),
        password: "pa55".into(),
    };
    let Some(reg) = TestRegistry::start(true, auth).await else {
        return;
    };
    let key = TestKey::new();
    let v = key.verifier();
    let first = reg.push_signed("team/app", "1.0", &[&key]).await;
    let second = reg.push_signed("team/app", "2.0", &[&key]).await;
    let token = reg.token.as_ref().unwrap();
    let image = format!("{}/team/app:1.0", reg.host);

    let anonymous = adapter(reg.client_config(), Credentials::anonymous());
    let evidence = gather(&anonymous, &[request(&image, &[("p/e", &v)])], GENEROUS).await;
    assert_unavailable(entry(&evidence, &image, "p/e"), "requires authentication");

    let registry = adapter(
        reg.client_config(),
        Credentials::anonymous().with_login(&reg.host, Login::new("puller", "pa55")),
    );
    let before = token.requests();
    let evidence = gather(&registry, &[request(&image, &[("p/e", &v)])], GENEROUS).await;
    assert_verified(entry(&evidence, &image, "p/e"), &first, &key, Source::Fresh);
    assert_eq!(token.requests(), before + 1, "one token for the repository");
    // Another image of the same repository: the token is reused.
    let other = format!("{}/team/app@{second}", reg.host);
    let evidence = gather(&registry, &[request(&other, &[("p/e", &v)])], GENEROUS).await;
    assert_verified(
        entry(&evidence, &other, "p/e"),
        &second,
        &key,
        Source::Fresh,
    );
    assert_eq!(token.requests(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_the_deadline() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let key = TestKey::new();
    let v = key.verifier();
    let digest = reg.push_signed("team/app", "1.0", &[&key]).await;
    let proxy = FaultProxy::start(&reg.host).await;
    let registry = adapter(
        ClientConfig {
            extra_roots: vec![],
            insecure: vec![proxy.host.clone()],
        },
        Credentials::anonymous(),
    );
    let image = format!("{}/team/app:1.0", proxy.host);
    let requests = [request(&image, &[("p/e", &v)])];

    proxy.set(Fault::Status(500));
    let evidence = gather(&registry, &requests, GENEROUS).await;
    assert!(
        evidence.images[&image]
            .digest_error
            .as_deref()
            .unwrap()
            .contains("answered 500"),
        "{evidence:?}"
    );
    assert_unavailable(entry(&evidence, &image, "p/e"), "answered 500");

    // Slower than the deadline: unavailable at the deadline, while the lookup goes on.
    proxy.set(Fault::Delay(Duration::from_millis(400)));
    proxy.reset();
    let budget = Duration::from_millis(300);
    let started = Instant::now();
    let evidence = gather(&registry, &requests, budget).await;
    let took = started.elapsed();
    assert!(
        took < budget + Duration::from_millis(250),
        "answered after {took:?}"
    );
    assert_unavailable(
        entry(&evidence, &image, "p/e"),
        "verification did not finish within 300ms",
    );
    assert_eq!(evidence.images[&image].digest, None);
    // The lookup finishes in the background (five requests, each delayed: the tag, the `.sig`
    // manifest and its layer, the referrers API and the referrers tag) and fills the cache.
    let until = Instant::now() + GENEROUS;
    while proxy.requests() < 5 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seen = proxy.requests();
    let evidence = gather(&registry, &requests, budget).await;
    assert_verified(
        entry(&evidence, &image, "p/e"),
        &digest,
        &key,
        Source::Cache,
    );
    assert_eq!(
        proxy.requests(),
        seen,
        "the retry asked the registry nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_a_verification_is_stale_until_the_stale_ttl() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let key = TestKey::new();
    let v = key.verifier();
    let digest = reg.push_signed("team/app", "1.0", &[&key]).await;
    let unverified = reg.push_image("team/app", "new").await;
    let proxy = FaultProxy::start(&reg.host).await;
    let ttl = Duration::from_millis(200);
    // Wide enough that a loaded CI machine (the whole suite on two cores) still sees the
    // outage inside the window; the test waits it out only once.
    let stale = Duration::from_millis(4000);
    let registry = adapter_with(
        ClientConfig {
            extra_roots: vec![],
            insecure: vec![proxy.host.clone()],
        },
        Credentials::anonymous(),
        |c| {
            c.signature_cache_ttl = ttl;
            c.not_verified_ttl = ttl;
            c.tag_cache_ttl = ttl;
            c.signature_stale_ttl = stale;
        },
    );
    let tagged = format!("{}/team/app:1.0", proxy.host);
    let pinned = format!("{}/team/app@{digest}", proxy.host);
    let new = format!("{}/team/app@{unverified}", proxy.host);
    let requests = [
        request(&tagged, &[("p/e", &v)]),
        request(&pinned, &[("p/e", &v)]),
        request(&new, &[("p/e", &v)]),
    ];
    // The known-good is recorded somewhere between these two instants: the outage must be
    // seen before `asked + stale`, and is past the stale window only after `verified_at + stale`.
    let asked = Instant::now();
    let evidence = gather(&registry, &requests, GENEROUS).await;
    let verified_at = Instant::now();
    assert_verified(
        entry(&evidence, &tagged, "p/e"),
        &digest,
        &key,
        Source::Fresh,
    );
    assert_not_verified(entry(&evidence, &new, "p/e"), "no signature");

    // The registry goes down; past the cache's time to live the known-good stands as stale.
    proxy.set(Fault::Status(503));
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let evidence = gather(&registry, &requests, GENEROUS).await;
    assert!(
        asked.elapsed() < stale,
        "the machine was too slow for this test: {:?} passed before the outage was seen",
        asked.elapsed()
    );
    let image = &evidence.images[&tagged];
    assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(image.digest_source, Some(Source::Stale));
    assert_verified(
        entry(&evidence, &tagged, "p/e"),
        &digest,
        &key,
        Source::Stale,
    );
    assert_verified(
        entry(&evidence, &pinned, "p/e"),
        &digest,
        &key,
        Source::Stale,
    );
    // A digest that never verified fails closed.
    assert_unavailable(entry(&evidence, &new, "p/e"), "answered 503");

    // Past --signature-stale-ttl, the outage fails closed too.
    tokio::time::sleep(stale.saturating_sub(verified_at.elapsed()) + Duration::from_millis(50))
        .await;
    let evidence = gather(&registry, &requests, GENEROUS).await;
    assert_unavailable(entry(&evidence, &tagged, "p/e"), "answered 503");
    assert_unavailable(entry(&evidence, &pinned, "p/e"), "answered 503");

    // Back up: verified afresh.
    proxy.set(Fault::Pass);
    let evidence = gather(&registry, &requests, GENEROUS).await;
    assert_verified(
        entry(&evidence, &pinned, "p/e"),
        &digest,
        &key,
        Source::Fresh,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_lookup() {
    let Some(reg) = TestRegistry::plain().await else {
        return;
    };
    let (release, ci) = (TestKey::new(), TestKey::new());
    let digest = reg.push_signed("team/app", "1.0", &[&release]).await;
    let proxy = FaultProxy::start(&reg.host).await;
    let registry = adapter(
        ClientConfig {
            extra_roots: vec![],
            insecure: vec![proxy.host.clone()],
        },
        Credentials::anonymous(),
    );
    let image = format!("{}/team/app:1.0", proxy.host);
    let (v_release, v_ci) = (release.verifier(), ci.verifier());
    // Each request wants its own entries; all share the tag's lookup and the digest's.
    let requests: Vec<Vec<EvidenceRequest>> = (0..200)
        .map(|i| {
            let entries: Vec<(&str, &Arc<_>)> = match i % 3 {
                0 => vec![("p/release", &v_release)],
                1 => vec![("p/ci", &v_ci)],
                _ => vec![("p/release", &v_release), ("p/ci", &v_ci)],
            };
            vec![request(&image, &entries)]
        })
        .collect();
    proxy.set(Fault::Delay(Duration::from_millis(100)));
    let results =
        futures::future::join_all(requests.iter().map(|r| gather(&registry, r, GENEROUS))).await;
    for (i, evidence) in results.iter().enumerate() {
        if i % 3 != 1 {
            assert_verified(
                entry(evidence, &image, "p/release"),
                &digest,
                &release,
                Source::Fresh,
            );
        }
        if i % 3 != 0 {
            assert_not_verified(entry(evidence, &image, "p/ci"), "does not verify");
        }
    }
    // The tag's manifest, the signature manifest and its one layer, and the referrers: the API
    // (404 on distribution 2.8), then the referrers tag (404: none).
    let paths = proxy.paths();
    assert_eq!(paths.len(), 5, "{paths:#?}");
    let hex = digest.trim_start_matches("sha256:");
    for wanted in [
        "/v2/team/app/manifests/1.0".to_owned(),
        format!("/v2/team/app/manifests/sha256-{hex}.sig"),
        format!("/v2/team/app/referrers/{digest}"),
        format!("/v2/team/app/manifests/sha256-{hex}"),
    ] {
        assert!(
            paths.iter().any(|p| p.ends_with(&wanted)),
            "{wanted}: {paths:#?}"
        );
    }
}
