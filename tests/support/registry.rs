//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) started on
//! 127.0.0.1 (or another address of this machine) on a free port with its own storage folder,
//! over TLS with a CA made here, or over plain HTTP; anonymous, with htpasswd Basic
//! authentication, or with distribution's `token` authentication (Bearer tokens issued by a
//! small token service of the test's: the registry is real, the issuer is the test's). It
//! stops with its [`TestRegistry`].
//!
//! Test images are pushed with `oci-client`, and signed with the `sigstore` crate's cosign
//! signing: formats written by implementations imagegate did not write.
//!
//! [`FaultProxy`] sits in front of a plain-HTTP registry to count requests and inject faults
//! (a status, a delay, a dropped connection, a replaced answer): the registry behind it is
//! still the real one.
//!
//! Include it with `#[path = "support/registry.rs"] mod registry_support;`. Without the
//! registry binary the helpers print `SKIPPED: …` and return `None`, except when `CI` is set,
//! where they fail.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use imagegate::certs::CertPair;
use imagegate::evidence::{EntryCheck, EvidenceRequest};
use imagegate::reference::Reference;
use imagegate::signature::{PublicKey, TransparencyLog, Verifier};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::{Constraint as _, CosignCapabilities as _, SignatureLayer};
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreKeyPair;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for the registry to start or for something to happen.
pub const WAIT: Duration = Duration::from_secs(20);
/// Where Debian's `docker-registry` package puts the binary.
pub const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// The media types of what tests push.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The token service's names, as the registry's `auth.token` configuration expects them.
const TOKEN_SERVICE: &str = "imagegate-test-registry";
const TOKEN_ISSUER: &str = "imagegate-test-token-issuer";
/// The largest request the test's servers read.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The registry binary (`IMAGEGATE_DOCKER_REGISTRY`, else Debian's), or `None` (with
/// `SKIPPED: …` printed) when it is missing outside CI. In CI a missing binary fails the test.
pub fn registry_binary() -> Option<PathBuf> {
    let path = std::env::var_os("IMAGEGATE_DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REGISTRY_BINARY));
    if path.exists() {
        return Some(path);
    }
    let message = format!(
        "{} not found: install Debian's docker-registry package (apt-get install docker-registry), or set IMAGEGATE_DOCKER_REGISTRY",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

/// A free port on 127.0.0.1 (the OS's choice; another process could take it before use, so
/// starters retry).
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A free port on `ip`, an address of this machine.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"))
        .local_addr()
        .unwrap()
        .port()
}

/// A CA made for one test, and the certificates it issues.
pub struct TestCa {
    pub pair: CertPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        TestCa {
            pair: imagegate::certs::generate_ca("imagegate test CA", Duration::from_secs(86_400))
                .unwrap(),
        }
    }

    /// A serving certificate for 127.0.0.1 and localhost.
    pub fn serving(&self) -> CertPair {
        self.serving_on(Ipv4Addr::LOCALHOST)
    }

    /// A serving certificate for `ip`, 127.0.0.1 and localhost.
    pub fn serving_on(&self, ip: Ipv4Addr) -> CertPair {
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        if !ip.is_loopback() {
            names.push(ip.to_string());
        }
        imagegate::certs::issue_serving(&self.pair, &names, Duration::from_secs(86_400)).unwrap()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.pair.cert_pem.as_bytes()).unwrap()
    }
}

/// How the registry authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    Anonymous,
    /// htpasswd Basic authentication with this user.
    Htpasswd {
        user: String,
        password: String,
    },
    /// distribution's token authentication; the test's token service gives tokens to this user.
    Token {
        user: String,
        password: String,
    },
}

impl Auth {
    pub fn login(&self) -> Option<(String, String)> {
        match self {
            Auth::Anonymous => None,
            Auth::Htpasswd { user, password } | Auth::Token { user, password } => {
                Some((user.clone(), password.clone()))
            }
        }
    }
}

/// A running `docker-registry`.
pub struct TestRegistry {
    /// `127.0.0.1:PORT` (`IP:PORT`): the registry part of image references.
    pub host: String,
    pub tls: bool,
    pub ca: Arc<TestCa>,
    pub auth: Auth,
    pub dir: tempfile::TempDir,
    pub token: Option<TokenService>,
    child: Option<Child>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TestRegistry {
    /// A registry over TLS (with a CA of its own), anonymous.
    pub async fn tls() -> Option<TestRegistry> {
        TestRegistry::start(true, Auth::Anonymous).await
    }

    /// A registry over plain HTTP, anonymous.
    pub async fn plain() -> Option<TestRegistry> {
        TestRegistry::start(false, Auth::Anonymous).await
    }

    pub async fn start(tls: bool, auth: Auth) -> Option<TestRegistry> {
        TestRegistry::start_on(Ipv4Addr::LOCALHOST, tls, auth).await
    }

    /// As [`TestRegistry::start`], but listening on `ip`, an address of this machine that
    /// others reach it at (a cluster's nodes); image references then name `IP:PORT`.
    pub async fn start_on(ip: Ipv4Addr, tls: bool, auth: Auth) -> Option<TestRegistry> {
        let binary = registry_binary()?;
        install_crypto();
        let mut dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(TestCa::new());
        let mut tls_section = String::new();
        if tls {
            let serving = ca.serving_on(ip);
            write(dir.path(), "tls.crt", &serving.cert_pem);
            write(dir.path(), "tls.key", &serving.key_pem);
            tls_section = format!(
                "  tls:\n    certificate: {d}/tls.crt\n    key: {d}/tls.key\n",
                d = dir.path().display()
            );
        }
        let mut token = None;
        let auth_section = match &auth {
            Auth::Anonymous => String::new(),
            Auth::Htpasswd { user, password } => {
                let hash = bcrypt::hash(password, 4).unwrap();
                write(dir.path(), "htpasswd", &format!("{user}:{hash}\n"));
                format!(
                    "auth:\n  htpasswd:\n    realm: imagegate-test\n    path: {}/htpasswd\n",
                    dir.path().display()
                )
            }
            Auth::Token { user, password } => {
                let service = TokenService::start(&ca, user, password).await;
                write(dir.path(), "token-signer.crt", &service.signer_cert_pem);
                let section = format!(
                    "auth:\n  token:\n    realm: https://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}/token-signer.crt\n",
                    service.host,
                    dir.path().display()
                );
                token = Some(service);
                section
            }
        };
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        // The port is free when chosen, but another process may take it before the registry
        // binds it: then the registry exits, and another port is tried.
        for _ in 0..5 {
            let port = free_port_on(ip);
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n  secret: imagegate-test-secret\n{tls_section}{auth_section}",
                d = dir.path().display()
            );
            write(dir.path(), "config.yml", &config);
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut command = Command::new(&binary);
            command
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                // The registry reads REGISTRY_* variables as configuration: none from outside.
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default());
            die_with_parent(&mut command);
            let child = command.spawn().expect("start docker-registry");
            let mut registry = TestRegistry {
                host: format!("{ip}:{port}"),
                tls,
                ca: ca.clone(),
                auth: auth.clone(),
                dir,
                token,
                child: Some(child),
            };
            if registry.wait_ready().await {
                return Some(registry);
            }
            registry.stop();
            let log = std::fs::read_to_string(registry.dir.path().join("registry.log"))
                .unwrap_or_default();
            eprintln!("docker-registry did not start on port {port}: {log}");
            // Take the folder and token service back for the next try.
            dir = std::mem::replace(&mut registry.dir, tempfile::tempdir().unwrap());
            token = registry.token.take();
        }
        panic!("docker-registry did not start");
    }

    async fn wait_ready(&mut self) -> bool {
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if TcpStream::connect(&self.host).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Stops the registry (also done when dropped).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The adapter's view of this registry: the CA trusted, plain HTTP for a plain registry.
    pub fn client_config(&self) -> imagegate::registry::ClientConfig {
        imagegate::registry::ClientConfig {
            extra_roots: vec![self.ca.der()],
            insecure: if self.tls {
                vec![]
            } else {
                vec![self.host.clone()]
            },
        }
    }

    /// An `oci-client` for pushing.
    pub fn oci(&self) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: if self.tls {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(vec![self.host.clone()])
            },
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: self.ca.pair.cert_pem.clone().into_bytes(),
            }],
            ..Default::default()
        })
    }

    pub fn oci_auth(&self) -> RegistryAuth {
        match self.auth.login() {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        }
    }

    fn sigstore_auth(&self) -> sigstore::registry::Auth {
        match self.auth.login() {
            Some((u, p)) => sigstore::registry::Auth::Basic(u, p),
            None => sigstore::registry::Auth::Anonymous,
        }
    }

    fn reference(&self, image: &str) -> oci_client::Reference {
        format!("{}/{image}", self.host).parse().unwrap()
    }

    /// Pushes a small image (one random layer) as `repo:tag`; its manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str) -> String {
        let oci = self.oci();
        let reference = self.reference(&format!("{repo}:{tag}"));
        let layer = oci_client::client::ImageLayer::oci_v1(random_bytes(64), None);
        let config = oci_client::client::Config::oci_v1(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec(),
            None,
        );
        oci.push(&reference, &[layer], config, &self.oci_auth(), None)
            .await
            .unwrap_or_else(|e| panic!("push {reference}: {e}"));
        oci.fetch_manifest_digest(&reference, &self.oci_auth())
            .await
            .unwrap()
    }

    /// Pushes a small image as `repo:tag` and signs it with each of `keys`; its digest.
    pub async fn push_signed(&self, repo: &str, tag: &str, keys: &[&TestKey]) -> String {
        let digest = self.push_image(repo, tag).await;
        assert_eq!(self.sign(&format!("{repo}:{tag}"), keys).await, digest);
        digest
    }

    /// Pushes an image index of `manifests` (digests in `repo`) as `repo:tag`; its digest.
    pub async fn push_index(&self, repo: &str, tag: &str, manifests: &[&str]) -> String {
        let oci = self.oci();
        let auth = self.oci_auth();
        let mut entries = Vec::new();
        for (i, digest) in manifests.iter().enumerate() {
            let (bytes, _) = oci
                .pull_manifest_raw(
                    &self.reference(&format!("{repo}@{digest}")),
                    &auth,
                    &[OCI_MANIFEST],
                )
                .await
                .unwrap();
            let arch = ["amd64", "arm64", "riscv64"][i % 3];
            entries.push(serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
        self.push_manifest(repo, tag, serde_json::to_vec(&index).unwrap(), OCI_INDEX)
            .await
    }

    /// Pushes a manifest as `repo:reference`; the digest of its bytes.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        body: Vec<u8>,
        media_type: &str,
    ) -> String {
        let digest = sha256(&body);
        let sep = if reference.contains(':') { "@" } else { ":" };
        self.oci()
            .push_manifest_raw(
                &self.reference(&format!("{repo}{sep}{reference}")),
                body,
                media_type.parse().unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("push manifest {repo}:{reference}: {e}"));
        digest
    }

    /// Attaches a Sigstore bundle (`bundle`, of `media_type`) to `repo@digest` as an OCI 1.1
    /// referrer the way `@sigstore/oci` and cosign do on a registry without the referrers API:
    /// the referrer manifest (an empty config, the bundle as its layer, `subject` the image),
    /// then the referrers index tagged `sha256-<hex>` listing it (replaced: one bundle).
    pub async fn attach_bundle(&self, repo: &str, digest: &str, bundle: &[u8], media_type: &str) {
        const EMPTY: &[u8] = b"{}";
        self.push_blob(repo, EMPTY).await;
        self.push_blob(repo, bundle).await;
        let referrer = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": media_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(EMPTY), "size": EMPTY.len()},
            "layers": [{"mediaType": media_type, "digest": sha256(bundle), "size": bundle.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 0},
            "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
        }))
        .unwrap();
        let size = referrer.len();
        let referrer_digest = self
            .push_manifest(repo, &sha256(&referrer), referrer, OCI_MANIFEST)
            .await;
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": referrer_digest, "size": size,
                "artifactType": media_type,
                "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                    "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"}}],
        }))
        .unwrap();
        self.push_manifest(repo, &digest.replacen(':', "-", 1), index, OCI_INDEX)
            .await;
    }

    /// Pushes a blob into `repo`; its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let oci = self.oci();
        let reference = self.reference(&format!("{repo}:blobs"));
        oci.auth(
            &reference,
            &self.oci_auth(),
            oci_client::RegistryOperation::Push,
        )
        .await
        .unwrap();
        oci.push_blob(&reference, data.to_vec(), &digest)
            .await
            .unwrap_or_else(|e| panic!("push blob to {repo}: {e}"));
        digest
    }

    /// Signs `repo@digest` (or `repo:tag`) with each of `keys`, as `cosign sign --key` does:
    /// one simple-signing layer per key in the manifest tagged `sha256-<hex>.sig`, all made
    /// and pushed by the `sigstore` crate. The digest signed (what the tag points to).
    pub async fn sign(&self, image: &str, keys: &[&TestKey]) -> String {
        let mut client = sigstore::cosign::ClientBuilder::default()
            .with_oci_client_config(sigstore::registry::ClientConfig {
                protocol: if self.tls {
                    sigstore::registry::ClientProtocol::Https
                } else {
                    sigstore::registry::ClientProtocol::HttpsExcept(vec![self.host.clone()])
                },
                extra_root_certificates: vec![sigstore::registry::Certificate {
                    encoding: sigstore::registry::CertificateEncoding::Pem,
                    data: self.ca.pair.cert_pem.clone().into_bytes(),
                }],
                ..Default::default()
            })
            .build()
            .unwrap();
        let image: sigstore::registry::OciReference =
            format!("{}/{image}", self.host).parse().unwrap();
        let auth = self.sigstore_auth();
        let (signature_ref, digest) = client.triangulate(&image, &auth).await.unwrap();
        let layers = keys
            .iter()
            .map(|key| key.signed_layer(&image, &digest))
            .collect();
        client
            .push_signature(None, &auth, &signature_ref, layers)
            .await
            .unwrap_or_else(|e| panic!("push signature {signature_ref}: {e}"));
        digest
    }

    /// Pushes a signature manifest for `digest` in `repo` made of `layers` as given (for
    /// malformed and hostile signatures).
    pub async fn push_signature_manifest(&self, repo: &str, digest: &str, layers: &[RawLayer]) {
        let config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = self.push_blob(repo, config).await;
        let mut pushed = std::collections::HashSet::new();
        let mut descriptors = Vec::new();
        for layer in layers {
            let d = sha256(&layer.payload);
            if pushed.insert(d.clone()) {
                self.push_blob(repo, &layer.payload).await;
            }
            let mut annotations = BTreeMap::new();
            if let Some(s) = &layer.signature {
                annotations.insert(SIGNATURE_ANNOTATION.to_owned(), s.clone());
            }
            descriptors.push(serde_json::json!({
                "mediaType": layer.media_type,
                "digest": d,
                "size": layer.size.unwrap_or(layer.payload.len() as i64),
                "annotations": annotations,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": descriptors,
        });
        self.push_manifest(
            repo,
            &signature_tag(digest),
            serde_json::to_vec(&manifest).unwrap(),
            OCI_MANIFEST,
        )
        .await;
    }

    /// Copies the signature manifest of `from` (a digest in `repo`) to the signature tag of `to`.
    pub async fn copy_signatures(&self, repo: &str, from: &str, to: &str) {
        let (bytes, _) = self
            .oci()
            .pull_manifest_raw(
                &self.reference(&format!("{repo}:{}", signature_tag(from))),
                &self.oci_auth(),
                &[OCI_MANIFEST],
            )
            .await
            .unwrap();
        self.push_manifest(repo, &signature_tag(to), bytes.to_vec(), OCI_MANIFEST)
            .await;
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Ends the child when the test process dies without dropping its [`TestRegistry`].
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// `REGISTRY/team/app:1.0` as an audit finds it after the tag moved: first pushed and signed
/// by `key` (the digest older Pods run), then pushed again without a signature (the digest
/// newer Pods run, and the tag names now).
pub struct MovedTag {
    pub registry: TestRegistry,
    pub key: TestKey,
    /// `HOST/team/app:1.0`.
    pub tag: String,
    pub signed: String,
    pub unsigned: String,
}

impl MovedTag {
    /// On a registry over TLS; `None` where the registry binary is missing outside CI.
    pub async fn new() -> Option<MovedTag> {
        let registry = TestRegistry::tls().await?;
        let key = TestKey::new();
        let signed = registry.push_signed("team/app", "1.0", &[&key]).await;
        let unsigned = registry.push_image("team/app", "1.0").await;
        Some(MovedTag {
            tag: format!("{}/team/app:1.0", registry.host),
            registry,
            key,
            signed,
            unsigned,
        })
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom as _;
    let mut out = vec![0; n];
    ring::rand::SystemRandom::new().fill(&mut out).unwrap();
    out
}

pub fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// cosign's signature tag for a digest.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// A cosign key pair, made by the `sigstore` crate.
pub struct TestKey {
    private_pem: String,
    pub public_pem: String,
}

impl TestKey {
    /// A new ECDSA P-256 key pair (cosign's default).
    pub fn new() -> TestKey {
        TestKey::with_scheme(SigningScheme::ECDSA_P256_SHA256_ASN1)
    }

    pub fn with_scheme(scheme: SigningScheme) -> TestKey {
        let pair = scheme
            .create_signer()
            .unwrap()
            .to_sigstore_keypair()
            .unwrap();
        TestKey {
            private_pem: pair.private_key_to_pem().unwrap().to_string(),
            public_pem: pair.public_key_to_pem().unwrap(),
        }
    }

    /// The verifier of a `key` entry with this key's public key.
    pub fn verifier(&self) -> Arc<Verifier> {
        Arc::new(Verifier::key(
            PublicKey::from_pem(&self.public_pem).unwrap(),
        ))
    }

    /// The signature layer of `image` at `digest`, signed by this key with the sigstore crate.
    pub fn signed_layer(
        &self,
        image: &sigstore::registry::OciReference,
        digest: &str,
    ) -> SignatureLayer {
        let signer = SigStoreKeyPair::from_pem(self.private_pem.as_bytes())
            .unwrap()
            .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)
            .unwrap();
        let mut layer = SignatureLayer::new_unsigned(image, digest).unwrap();
        assert!(
            PrivateKeySigner::new_with_signer(signer)
                .add_constraint(&mut layer)
                .unwrap()
        );
        layer
    }

    /// A simple-signing payload for `digest` of `host/repo`, and its signature by this key,
    /// as a layer to push as given.
    pub fn raw_layer(&self, image: &str, digest: &str) -> RawLayer {
        let reference: sigstore::registry::OciReference = image.parse().unwrap();
        let layer = self.signed_layer(&reference, digest);
        RawLayer {
            payload: layer.raw_data,
            signature: layer.signature,
            media_type: SIMPLE_SIGNING.to_owned(),
            size: None,
        }
    }

    /// This key's signature (base64) over `payload`.
    pub fn sign_bytes(&self, payload: &[u8]) -> String {
        let signer = SigStoreKeyPair::from_pem(self.private_pem.as_bytes())
            .unwrap()
            .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)
            .unwrap();
        b64(&signer.sign(payload).unwrap())
    }
}

/// One layer of a hand-made signature manifest.
#[derive(Clone)]
pub struct RawLayer {
    pub payload: Vec<u8>,
    pub signature: Option<String>,
    pub media_type: String,
    /// The size the manifest claims (the payload's length when `None`).
    pub size: Option<i64>,
}

/// A request for evidence about `image` under `entries` (name, verifier).
pub fn request(image: &str, entries: &[(&str, &Arc<Verifier>)]) -> EvidenceRequest {
    EvidenceRequest {
        image: image.to_owned(),
        reference: Reference::parse(image).unwrap(),
        checks: entries
            .iter()
            .map(|(entry, verifier)| EntryCheck {
                entry: (*entry).to_owned(),
                verifier: (*verifier).clone(),
                transparency_log: TransparencyLog::Skip,
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 side for the test's servers: one request per connection.

/// One request as read.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub head: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one request (head and a `Content-Length` body); `None` when the peer closes first.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<HttpRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(HttpRequest {
        method,
        path,
        head: buf[..head_end].to_vec(),
        headers,
        body,
    })
}

/// Writes a whole response and closes.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------------------------
// The token service: issues distribution's Bearer tokens (JWT, ES256, signed by a key whose
// certificate the registry trusts) to one user.

pub struct TokenService {
    pub host: String,
    pub signer_cert_pem: String,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Issuer {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
}

impl TokenService {
    async fn start(ca: &TestCa, user: &str, password: &str) -> TokenService {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["token-signer".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imagegate test token signer");
        let cert = params.self_signed(&key).unwrap();
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let issuer = Arc::new(Issuer {
            key: signing,
            cert_der: cert.der().to_vec(),
            user: user.to_owned(),
            password: password.to_owned(),
        });
        let serving = ca.serving();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            rustls_pki_types::PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let issuer = issuer.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(req) = read_request(&mut tls).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = issuer.answer(&req);
                        respond(
                            &mut tls,
                            status,
                            &[("Content-Type", "application/json")],
                            body.as_bytes(),
                        )
                        .await;
                    }
                });
            }
        });
        TokenService {
            host,
            signer_cert_pem: cert.pem(),
            requests,
            task,
        }
    }

    /// Token requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Issuer {
    fn answer(&self, req: &HttpRequest) -> (u16, String) {
        let expected = format!(
            "Basic {}",
            b64(format!("{}:{}", self.user, self.password).as_bytes())
        );
        if req.header("authorization") != Some(expected.as_str()) {
            return (401, r#"{"details":"a login is required"}"#.to_owned());
        }
        let url = reqwest::Url::parse(&format!("https://token.test{}", req.path)).unwrap();
        let mut access = Vec::new();
        for (_, scope) in url.query_pairs().filter(|(k, _)| k == "scope") {
            // repository:NAME:ACTIONS
            let mut parts = scope.splitn(3, ':');
            let (Some(kind), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            access.push(serde_json::json!({
                "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header =
            serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [b64(&self.cert_der)]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": self.user, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": hex(&random_bytes(8)), "access": access,
        });
        let b64url = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let signing_input = format!("{}.{}", b64url(&header), b64url(&claims));
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        let token = format!(
            "{signing_input}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref())
        );
        (
            200,
            serde_json::json!({"token": token, "expires_in": 300}).to_string(),
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting proxy.

/// What the proxy does with the requests it receives.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Forward to the registry.
    Pass,
    /// Answer every request with this status.
    Status(u16),
    /// Wait this long, then forward.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
    /// Answer requests whose path contains `path` with this status, headers and body; forward
    /// the others.
    Answer {
        path: String,
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

struct ProxyState {
    fault: Mutex<Fault>,
    requests: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

/// An HTTP proxy in front of a plain-HTTP registry, on its own port.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`: use it as the registry host of image references.
    pub host: String,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(backend: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let state = Arc::new(ProxyState {
            fault: Mutex::new(Fault::Pass),
            requests: AtomicUsize::new(0),
            paths: Mutex::new(Vec::new()),
        });
        let backend: SocketAddr = backend.parse().unwrap();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(proxy_connection(conn, backend, state));
            }
        });
        FaultProxy { host, state, task }
    }

    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// Requests received since the last [`FaultProxy::reset`].
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// `METHOD PATH` of the requests received since the last reset.
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.paths.lock().unwrap().clear();
    }
}

async fn proxy_connection(mut conn: TcpStream, backend: SocketAddr, state: Arc<ProxyState>) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    state
        .paths
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.path));
    let fault = state.fault.lock().unwrap().clone();
    match fault {
        Fault::Pass => {}
        Fault::Status(code) => {
            respond(
                &mut conn,
                code,
                &[],
                b"{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"injected\"}]}",
            )
            .await;
            return;
        }
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::Drop => return,
        Fault::Answer {
            path,
            status,
            headers,
            body,
        } => {
            if req.path.contains(&path) {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                respond(&mut conn, status, &headers, &body).await;
                return;
            }
        }
    }
    // Forward with `Connection: close`, so the registry's answer ends where its stream does.
    let Ok(mut upstream) = TcpStream::connect(backend).await else {
        return;
    };
    let head = String::from_utf8_lossy(&req.head).into_owned();
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(out.as_bytes()).await.is_err()
        || upstream.write_all(&req.body).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy(&mut upstream, &mut conn).await;
    let _ = conn.shutdown().await;
}
