//! A small client for the reads of the OCI distribution API that verification needs: resolve a
//! tag to a digest (`HEAD`, else `GET`, of a manifest), read a manifest, read a blob, and list
//! the referrers of a digest.
//!
//! It is built on reqwest, the HTTP client the `oci-client` crate itself uses, rather than on
//! `oci-client`, because `oci-client` reads response bodies whole with no bound, follows
//! redirects wherever they lead (HTTPS to plain HTTP included), and cannot be given either
//! policy (docs/signatures.md says more). Here every body is read up to a limit, a redirect
//! never leaves HTTPS, and nothing a registry sends can panic the process.
//!
//! Authentication is the distribution protocol's: a request goes out anonymously (or with a
//! token or Basic credentials already known for that registry and repository); a `401` names
//! the scheme in `WWW-Authenticate`. For `Bearer`, a token is fetched from the challenge's
//! realm for `repository:REPO:pull` (with the registry's Basic credentials, when configured)
//! and kept until it expires; for `Basic`, the configured credentials are sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::credentials::{Credentials, Login};
use crate::metrics::{Metrics, RegistryOutcome};

/// Docker Hub's API host: `docker.io` (and its aliases, which references normalise to it) is
/// served there.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// The largest manifest read: containerd and distribution refuse manifests over 4 MiB, so no
/// real image or signature manifest is larger.
pub const MANIFEST_MAX_BYTES: usize = 4 * 1024 * 1024;
/// The largest token-service answer read: a token is a few KiB at most (a JWT with claims).
pub const TOKEN_RESPONSE_MAX_BYTES: usize = 64 * 1024;
/// The largest error body kept for a message: enough for a registry's error JSON.
const ERROR_BODY_MAX_BYTES: usize = 2 * 1024;
/// How long one connection attempt may take: a registry on the same network answers in
/// milliseconds; this only ends attempts at an address that swallows packets.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, body included. Requests for admission end at the request's
/// deadline anyway; this bounds the lookups that go on in the background to fill the cache,
/// so that a registry that hangs does not keep them forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed per request: a blob is commonly redirected once, to object storage.
pub const MAX_REDIRECTS: usize = 5;
/// How long a token lives when the token service does not say (`expires_in`): the
/// distribution token specification's default.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token is dropped this long before it expires, so that it does not expire in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// At most this many bearer tokens are kept (one per registry and repository); when full, the
/// expired ones are dropped, then all of them.
const TOKEN_CACHE_CAPACITY: usize = 1024;

/// The manifest media types a registry may answer with: OCI and Docker, manifests and indexes.
/// A tag resolves to whichever it points to (an index stays an index: `cosign sign` signs what
/// the tag points to).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The media type of an OCI image index: what the referrers API answers with.
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One page of a referrers list.
#[derive(Debug, Clone)]
pub struct ReferrersPage {
    /// The image index listing the referrers.
    pub index: Vec<u8>,
    /// The next page, when the registry's `Link` header names one on the same registry.
    pub next: Option<String>,
}

/// Why the registry could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The registry answered that the manifest or tag does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Anything else: unreachable, TLS, 401/403, 5xx, a timeout, a malformed or over-limit
    /// answer.
    #[error("{0}")]
    Unavailable(String),
}

impl Fault {
    pub fn message(&self) -> &str {
        match self {
            Fault::NotFound(m) | Fault::Unavailable(m) => m,
        }
    }
}

/// A manifest as read: its bytes, its digest (checked), and its media type.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: Option<String>,
}

/// How the client reaches registries.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Trusted in addition to the system's roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Hosts (`HOST[:PORT]`, lower case) reached over plain HTTP.
    pub insecure: Vec<String>,
}

/// A bearer token for one registry and scope.
#[derive(Clone)]
struct Token {
    header: HeaderValue,
    expires: Instant,
}

/// The distribution client. Cheap to share: one connection pool for every registry.
pub struct Client {
    http: reqwest::Client,
    insecure: Arc<HashSet<String>>,
    credentials: ArcSwap<Credentials>,
    /// Bearer tokens by (registry, scope).
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// Registries that asked for Basic credentials: those are sent with every request after.
    basic: Mutex<HashSet<String>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// The host a registry's API is served from (`docker.io` → [`DOCKER_HUB_API_HOST`]).
pub fn api_host(registry: &str) -> &str {
    if registry == crate::reference::DOCKER_HUB {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

/// `HOST[:PORT]` of a URL, as `--insecure-registry` names hosts.
fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

impl Client {
    /// A client trusting the system's roots plus `config.extra_roots`, reaching
    /// `config.insecure` over plain HTTP.
    pub fn new(
        config: &ClientConfig,
        credentials: Credentials,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "cannot read some of the system's CA certificates");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(ignored, "system CA certificates that rustls cannot use");
        }
        for (i, cert) in config.extra_roots.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| format!("registry CA certificate #{}: {e}", i + 1))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let insecure: Arc<HashSet<String>> = Arc::new(
            config
                .insecure
                .iter()
                .map(|h| crate::reference::normalize_registry(h.trim()))
                .collect(),
        );
        let policy_insecure = insecure.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                let n = attempt.previous().len();
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects ({n})"));
            }
            let next = attempt.url();
            let allowed = next.scheme() == "https"
                || (next.scheme() == "http" && policy_insecure.contains(&host_port(next)));
            if allowed {
                attempt.follow()
            } else {
                let to = format!("{}://{}", next.scheme(), host_port(next));
                attempt.error(format!(
                    "a redirect to {to} was refused: redirects must stay on HTTPS"
                ))
            }
        });
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(redirect)
            // Object storage learns nothing of the registry's URLs.
            .referer(false)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("imagegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the registry client: {}", chain(&e)))?;
        Ok(Client {
            http,
            insecure,
            credentials: ArcSwap::from_pointee(credentials),
            tokens: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// Replaces the credentials (a Secret or the docker config changed). Tokens got with the
    /// old ones are dropped.
    pub fn set_credentials(&self, credentials: Credentials) {
        self.credentials.store(Arc::new(credentials));
        lock(&self.tokens).clear();
        lock(&self.basic).clear();
    }

    fn base(&self, registry: &str) -> String {
        let scheme = if self.insecure.contains(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", api_host(registry))
    }

    /// The digest `registry/repository:tag` points to now: the `Docker-Content-Digest` of a
    /// `HEAD`, else the digest of the manifest's bytes from a `GET` (checked against the header
    /// when there is one).
    pub async fn resolve_tag(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<String, Fault> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base(registry));
        let what = || format!("{registry}/{repository}:{tag}");
        let response = self
            .send(Method::HEAD, &url, registry, repository, MANIFEST_ACCEPT)
            .await?;
        match response.status() {
            StatusCode::OK => {
                if let Some(digest) = header_digest(response.headers()) {
                    return Ok(digest);
                }
            }
            StatusCode::NOT_FOUND => {
                return Err(Fault::NotFound(format!(
                    "{} does not exist in the registry",
                    what()
                )));
            }
            // Some registries do not answer HEAD: the GET below says what is wrong.
            _ => {}
        }
        match self.manifest(registry, repository, tag).await? {
            Some(m) => Ok(m.digest),
            None => Err(Fault::NotFound(format!(
                "{} does not exist in the registry",
                what()
            ))),
        }
    }

    /// The manifest `registry/repository` has under `reference` (a tag or a digest), or `None`
    /// when there is none (404). Read up to [`MANIFEST_MAX_BYTES`]; its digest is computed from
    /// the bytes and must equal `Docker-Content-Digest` when sent, and `reference` when that is
    /// a digest.
    pub async fn manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, Fault> {
        let url = format!(
            "{}/v2/{repository}/manifests/{reference}",
            self.base(registry)
        );
        let what = format!("the manifest {registry}/{repository}:{reference}");
        let response = self
            .send(Method::GET, &url, registry, repository, MANIFEST_ACCEPT)
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.status_fault(registry, &what, response).await),
        }
        let header = header_digest(response.headers());
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let bytes = read_limited(response, MANIFEST_MAX_BYTES, registry, &what).await?;
        // The digest is computed with the algorithm the reference or the registry names, so
        // that it can be compared; sha256 otherwise.
        let pinned = crate::reference::validate_digest(reference).is_ok();
        let algorithm = if pinned {
            reference.split(':').next().unwrap_or("sha256")
        } else {
            header
                .as_deref()
                .and_then(|h| h.split(':').next())
                .unwrap_or("sha256")
        }
        .to_owned();
        let digest = digest_of(&algorithm, &bytes).ok_or_else(|| {
            Fault::Unavailable(format!(
                "{registry} named {what} by a digest of an unsupported algorithm ({algorithm})"
            ))
        })?;
        if let Some(header) = header.filter(|h| h.starts_with(&format!("{algorithm}:")))
            && header != digest
        {
            return Err(Fault::Unavailable(format!(
                "{registry} sent {what} with Docker-Content-Digest {header}, but its content is {digest}"
            )));
        }
        if pinned && reference != digest {
            return Err(Fault::Unavailable(format!(
                "{registry} answered {what} with content whose digest is {digest}"
            )));
        }
        Ok(Some(Manifest {
            bytes,
            digest,
            media_type,
        }))
    }

    /// The blob `digest` of `registry/repository`, read up to `max` bytes and checked against
    /// its digest. Redirects (to object storage, typically) are followed on HTTPS only.
    pub async fn blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        max: usize,
    ) -> Result<Vec<u8>, Fault> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base(registry));
        let what = format!("the blob {digest} of {registry}/{repository}");
        let response = self
            .send(Method::GET, &url, registry, repository, "*/*")
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(Fault::Unavailable(format!(
                    "{registry} has no {what} (404)",
                    what = what.trim_start_matches("the ")
                )));
            }
            _ => return Err(self.status_fault(registry, &what, response).await),
        }
        let bytes = read_limited(response, max, registry, &what).await?;
        let algorithm = digest.split_once(':').map(|(a, _)| a).unwrap_or_default();
        match digest_of(algorithm, &bytes) {
            Some(actual) if actual == digest => Ok(bytes),
            Some(actual) => Err(Fault::Unavailable(format!(
                "{registry} sent {what} with content whose digest is {actual} ({} bytes)",
                bytes.len()
            ))),
            None => Err(Fault::Unavailable(format!(
                "{what} is named by a digest of an unsupported algorithm"
            ))),
        }
    }

    /// The blob a manifest's descriptor names (`digest`, and `size` as the manifest says), read
    /// only when the digest is valid and the size within `max`, and then only if exactly that
    /// many bytes come (their digest checked by [`Client::blob`]). `what` names the blob in the
    /// reasons ("layer 2 of REPO:TAG"); a fault is the reason, for a layer or bundle that could
    /// not be read while others may still verify.
    pub async fn descriptor_blob(
        &self,
        (registry, repository): (&str, &str),
        (digest, size): (&str, i64),
        max: usize,
        what: &str,
    ) -> Result<Vec<u8>, String> {
        if crate::reference::validate_digest(digest).is_err() {
            return Err(format!(
                "{what} has an invalid digest {:?}",
                printable(digest, 100)
            ));
        }
        if size < 0 || size as u64 > max as u64 {
            return Err(format!(
                "{what} is {size} bytes, over the limit of {max} bytes per signature"
            ));
        }
        match self.blob(registry, repository, digest, max).await {
            Ok(bytes) if bytes.len() as i64 != size => Err(format!(
                "{what} is {} bytes, not the {size} its manifest says",
                bytes.len()
            )),
            Ok(bytes) => Ok(bytes),
            Err(f) => Err(format!("{what}: {}", f.message())),
        }
    }

    /// One page of the referrers of `digest` in `registry/repository` through the referrers API
    /// (`GET /v2/<name>/referrers/<digest>`, or the `next` URL of the previous page), read up
    /// to [`MANIFEST_MAX_BYTES`]; `None` when the registry has no referrers API (it answers
    /// 404, as the OCI distribution specification asks of registries without one).
    pub async fn referrers(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        next: Option<&str>,
    ) -> Result<Option<ReferrersPage>, Fault> {
        let url = match next {
            Some(url) => url.to_owned(),
            None => format!("{}/v2/{repository}/referrers/{digest}", self.base(registry)),
        };
        let what = format!("the referrers of {registry}/{repository}@{digest}");
        let response = self
            .send(
                Method::GET,
                &url,
                registry,
                repository,
                OCI_INDEX_MEDIA_TYPE,
            )
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND if next.is_none() => return Ok(None),
            _ => return Err(self.status_fault(registry, &what, response).await),
        }
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
            .and_then(|link| Url::parse(&url).ok()?.join(&link).ok())
            // A page elsewhere would get this registry's credentials: only the same origin.
            .filter(|u| Url::parse(&url).is_ok_and(|base| base.origin() == u.origin()))
            .map(String::from);
        let index = read_limited(response, MANIFEST_MAX_BYTES, registry, &what).await?;
        Ok(Some(ReferrersPage { index, next }))
    }

    /// Sends one request with what is known of the registry's authentication, and answers a
    /// `401` challenge once. Any status is returned (the caller judges it) except a `401` that
    /// remains, which is a fault.
    async fn send(
        &self,
        method: Method,
        url: &str,
        registry: &str,
        repository: &str,
        accept: &'static str,
    ) -> Result<reqwest::Response, Fault> {
        let scope = format!("repository:{repository}:pull");
        let known = self.known_authorization(registry, &scope);
        let response = self
            .request(method.clone(), url, registry, accept, known.clone())
            .await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(Challenge::parse)
            .unwrap_or(Challenge::None);
        drop(response);
        let login = self.credentials.load().login_for(registry);
        let authorization = match challenge {
            Challenge::Bearer { realm, service } => {
                self.token(registry, &realm, service.as_deref(), &scope, login.as_ref())
                    .await?
            }
            Challenge::Basic => match &login {
                Some(login) => {
                    lock(&self.basic).insert(registry.to_owned());
                    login.basic_header().map_err(|e| {
                        Fault::Unavailable(format!("the credentials for {registry}: {e}"))
                    })?
                }
                None => return Err(unauthorized(registry, false)),
            },
            Challenge::None => return Err(unauthorized(registry, login.is_some())),
        };
        if known.as_ref() == Some(&authorization) {
            // What was sent was refused; sending it again cannot help.
            return Err(unauthorized(registry, login.is_some()));
        }
        let response = self
            .request(method, url, registry, accept, Some(authorization))
            .await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            lock(&self.tokens).remove(&(registry.to_owned(), scope));
            return Err(unauthorized(registry, login.is_some()));
        }
        Ok(response)
    }

    /// The `Authorization` to send before any challenge: a live token for this scope, or Basic
    /// credentials for a registry that asked for them.
    fn known_authorization(&self, registry: &str, scope: &str) -> Option<HeaderValue> {
        let key = (registry.to_owned(), scope.to_owned());
        if let Some(t) = lock(&self.tokens).get(&key)
            && t.expires > Instant::now()
        {
            return Some(t.header.clone());
        }
        if lock(&self.basic).contains(registry) {
            return self
                .credentials
                .load()
                .login_for(registry)
                .and_then(|l| l.basic_header().ok());
        }
        None
    }

    /// One request, timed and counted by outcome.
    async fn request(
        &self,
        method: Method,
        url: &str,
        registry: &str,
        accept: &'static str,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, Fault> {
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        if let Some(a) = authorization {
            headers.insert(AUTHORIZATION, a);
        }
        let result = self.http.request(method, url).headers(headers).send().await;
        let outcome = match &result {
            Ok(r) => RegistryOutcome::of_status(r.status().as_u16()),
            Err(_) => RegistryOutcome::error,
        };
        if let Some(m) = &self.metrics {
            m.record_registry_request(registry, outcome, started.elapsed());
        }
        result.map_err(|e| transport_fault(registry, &e))
    }

    /// A bearer token for `scope` from the token service at `realm`, with the registry's
    /// credentials when there are some; kept until it expires.
    async fn token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        login: Option<&Login>,
    ) -> Result<HeaderValue, Fault> {
        let mut url = Url::parse(realm).map_err(|e| {
            Fault::Unavailable(format!(
                "{registry} names a token service that is not a URL ({realm:?}: {e})"
            ))
        })?;
        let plain_ok = url.scheme() == "http" && self.insecure.contains(&host_port(&url));
        if url.scheme() != "https" && !plain_ok {
            return Err(Fault::Unavailable(format!(
                "{registry} names the token service {realm}, which is not HTTPS (list its host in --insecure-registry to allow plain HTTP)"
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(s) = service {
                query.append_pair("service", s);
            }
            query.append_pair("scope", scope);
        }
        let authorization =
            match login {
                Some(l) => Some(l.basic_header().map_err(|e| {
                    Fault::Unavailable(format!("the credentials for {registry}: {e}"))
                })?),
                None => None,
            };
        let token_host = host_port(&url);
        let response = self
            .request(
                Method::GET,
                url.as_str(),
                registry,
                "application/json",
                authorization,
            )
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(unauthorized(registry, login.is_some()));
        }
        if status != StatusCode::OK {
            let what = format!("a token from {token_host}");
            return Err(self.status_fault(registry, &what, response).await);
        }
        let what = format!("the token from {token_host}");
        let body = read_limited(response, TOKEN_RESPONSE_MAX_BYTES, registry, &what).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
            Fault::Unavailable(format!(
                "{token_host} answered a token request with something that is not a token: {e}"
            ))
        })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Fault::Unavailable(format!(
                    "{token_host} answered a token request without a token"
                ))
            })?;
        let header = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Fault::Unavailable(format!(
                "{token_host} answered a token request with a token that cannot be sent in a header"
            ))
        })?;
        let lifetime = answer
            .expires_in
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .saturating_sub(TOKEN_EXPIRY_MARGIN);
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= TOKEN_CACHE_CAPACITY {
            let now = Instant::now();
            tokens.retain(|_, t| t.expires > now);
            if tokens.len() >= TOKEN_CACHE_CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(
            (registry.to_owned(), scope.to_owned()),
            Token {
                header: header.clone(),
                expires: Instant::now() + lifetime,
            },
        );
        Ok(header)
    }

    /// The fault for an unexpected status, with the start of the registry's error body.
    async fn status_fault(&self, registry: &str, what: &str, response: reqwest::Response) -> Fault {
        let status = response.status();
        let detail = read_limited(response, ERROR_BODY_MAX_BYTES, registry, what)
            .await
            .ok()
            .map(|b| error_detail(&b))
            .filter(|d| !d.is_empty())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let code = status.as_u16();
        let reason = status.canonical_reason().unwrap_or("");
        match status {
            StatusCode::FORBIDDEN => Fault::Unavailable(format!(
                "{registry} refused access to {what} (403 Forbidden){detail}; check the credentials for {registry}"
            )),
            _ => Fault::Unavailable(format!(
                "{registry} answered {code} {reason} for {what}{detail}"
            )),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps behind these locks stay consistent whatever panicked while one was held.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unauthorized(registry: &str, had_credentials: bool) -> Fault {
    if had_credentials {
        Fault::Unavailable(format!(
            "{registry} refused the configured credentials (401 Unauthorized)"
        ))
    } else {
        Fault::Unavailable(format!(
            "{registry} requires authentication (401 Unauthorized) and no credentials are configured for it (--docker-config, or --registry-credentials-secret in a cluster)"
        ))
    }
}

/// A failed request, in words: the innermost causes say what went wrong (refused, TLS, …).
fn transport_fault(registry: &str, e: &reqwest::Error) -> Fault {
    if e.is_timeout() {
        return Fault::Unavailable(format!(
            "{registry} did not answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ));
    }
    Fault::Unavailable(format!("cannot reach {registry}: {}", chain(e)))
}

/// An error and its causes, `outer: inner: innermost`, without the URL reqwest adds.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        let text = match text.split_once(" for url (") {
            Some((head, _)) => head.to_owned(),
            None => text,
        };
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The URL of a `Link` header's `rel="next"` link (`<URL>; rel="next"`), as the referrers API
/// paginates.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                p.trim()
                    .strip_prefix("rel=")
                    .is_some_and(|r| r.trim_matches('"') == "next")
            })
            .then(|| target.to_owned())
    })
}

/// The `Docker-Content-Digest` header, when it is a valid digest.
fn header_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("docker-content-digest")?.to_str().ok()?.trim();
    crate::reference::validate_digest(value)
        .ok()
        .map(|_| value.to_owned())
}

/// `ALGORITHM:HEX` of `bytes`, for the algorithms references allow.
pub fn digest_of(algorithm: &str, bytes: &[u8]) -> Option<String> {
    let alg = match algorithm {
        "sha256" => &ring::digest::SHA256,
        "sha384" => &ring::digest::SHA384,
        "sha512" => &ring::digest::SHA512,
        _ => return None,
    };
    let d = ring::digest::digest(alg, bytes);
    Some(format!("{algorithm}:{}", crate::signature::hex(d.as_ref())))
}

/// Reads a body up to `max` bytes; more is an over-limit fault.
async fn read_limited(
    mut response: reqwest::Response,
    max: usize,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>, Fault> {
    let too_large = || {
        Fault::Unavailable(format!(
            "{registry} sent {what} larger than the limit of {} bytes",
            max
        ))
    };
    let announced = response.content_length();
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(announced.map_or(0, |n| n as usize));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_fault(registry, &e))?
    {
        if out.len() + chunk.len() > max {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The first error message of a registry's error body (`{"errors":[{"code","message"}]}`), or
/// the start of the body as text.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body)
        && let Some(first) = e.errors.first()
    {
        return printable(&format!("{} {}", first.code, first.message), 200);
    }
    printable(&String::from_utf8_lossy(body), 200)
}

/// `text` with control characters replaced and cut to `max` characters: what a registry sends
/// goes into messages and logs.
pub fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.trim().chars().count() > max {
        out.push('…');
    }
    out
}

/// The JSON a token service answers with.
#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// What a `401` asks for.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
    None,
}

impl Challenge {
    /// Reads a `WWW-Authenticate` value; a Bearer challenge wins over Basic.
    fn parse(header: &str) -> Challenge {
        let Ok(challenges) = http_auth::parse_challenges(header) else {
            return Challenge::None;
        };
        let mut basic = false;
        for c in &challenges {
            if c.scheme.eq_ignore_ascii_case("bearer") {
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                if let Some(realm) = param("realm") {
                    return Challenge::Bearer {
                        realm,
                        service: param("service"),
                    };
                }
            } else if c.scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
        if basic {
            Challenge::Basic
        } else {
            Challenge::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".to_owned(),
                service: Some("registry.example".to_owned()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="basic-realm""#),
            Challenge::Basic
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="x", Bearer realm="https://t/""#),
            Challenge::Bearer {
                realm: "https://t/".to_owned(),
                service: None
            }
        );
        assert_eq!(Challenge::parse("Bearer"), Challenge::None);
        assert_eq!(Challenge::parse("\u{1}garbage\"\""), Challenge::None);
        assert_eq!(Challenge::parse(""), Challenge::None);
    }

    #[test]
    fn digests() {
        assert_eq!(
            digest_of("sha256", b"").unwrap(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(digest_of("sha512", b"x").unwrap().len() == "sha512:".len() + 128);
        assert_eq!(digest_of("md5", b""), None);
    }

    #[test]
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/a/referrers/sha256:x?n=10&last=y>; rel="next""#).as_deref(),
            Some("/v2/a/referrers/sha256:x?n=10&last=y")
        );
        assert_eq!(
            next_link(r#"<https://x/p>; rel="prev", <https://x/n>; rel=next"#).as_deref(),
            Some("https://x/n")
        );
        assert_eq!(next_link(r#"<https://x/p>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn docker_hub_is_served_from_its_api_host() {
        assert_eq!(api_host("docker.io"), DOCKER_HUB_API_HOST);
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn registry_text_is_made_printable_and_short() {
        assert_eq!(printable("a\nb\u{7}c", 10), "a b c");
        assert_eq!(printable(&"x".repeat(20), 5), "xxxxx…");
        assert_eq!(
            error_detail(
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
            ),
            "UNAUTHORIZED authentication required"
        );
    }

    #[test]
    fn error_chains_drop_urls_and_repeats() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "error sending request for url (https://x/v2/)",
            Some(Box::new(E("connection refused", None))),
        );
        assert_eq!(chain(&e), "error sending request: connection refused");
    }
}
