//! The registry adapter: evidence about images from OCI registries (DESIGN §2.1), gathered
//! before the pure decision.
//!
//! [`Registry`] implements [`Gather`]: for each image it resolves a tag to the digest the
//! registry serves now (or takes the reference's own digest), reads the signatures stored for
//! that digest — the cosign signature tag `sha256-<hex>.sig` in the image's repository
//! ([`cosign`]) and the Sigstore bundles attached to it as OCI referrers ([`referrers`]), side
//! by side — and judges them for each signature entry ([`judge`]): one signature verifying as a
//! whole, in either place, verifies the entry. Around that:
//!
//! - **Cache**: tag resolutions for `--tag-cache-ttl`, verified outcomes for
//!   `--signature-cache-ttl`, not-verified ones for 30 s (per repository, digest and verifier).
//! - **Known-good**: while the registry is unavailable, an outcome verified within
//!   `--signature-stale-ttl` stands, with the source `stale`.
//! - **Single flight**: concurrent requests for the same tag, or the same repository and
//!   digest, share one lookup.
//! - **Deadline**: `gather` returns by the request's deadline; what has not finished is
//!   unavailable ("verification did not finish within 9s") while the lookup goes on in the
//!   background and fills the cache, so that a retry passes.
//!
//! Every registry answer is untrusted input: bounded in size and count, digests checked
//! against content, redirects kept on HTTPS, and no answer can turn a failure into a pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::evidence::{
    Deadline, EntryCheck, EntryEvidence, Evidence, EvidenceRequest, Gather, ImageEvidence, Outcome,
    Source,
};
use crate::metrics::Metrics;
use crate::signature::Verifier;

mod args;
pub mod cache;
pub mod client;
pub mod cosign;
pub mod credentials;
mod flight;
pub mod judge;
pub mod referrers;

pub use args::{DockerConfigArgs, RegistryArgs, RegistryCredentialSecretArgs};
pub use cache::NOT_VERIFIED_TTL;
pub use client::ClientConfig;
pub use credentials::{Credentials, CredentialsError, Login};

use cache::{Cached, Caches, Ttls, outcome_key, tag_key};
use client::{Client, Fault};
use flight::{Flights, Joined, Ticket};

/// Default `--signature-cache-ttl`: how long a verified outcome is used without asking again.
pub const DEFAULT_SIGNATURE_CACHE_TTL: Duration = Duration::from_secs(10 * 60);
/// Default `--signature-stale-ttl`: how long a verification stands while the registry is
/// unavailable. A day rides out a registry outage overnight; new digests still fail closed.
pub const DEFAULT_SIGNATURE_STALE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default `--tag-cache-ttl`: how long a tag's resolution is used; short, because tags move.
pub const DEFAULT_TAG_CACHE_TTL: Duration = Duration::from_secs(30);
/// Default `--verify-timeout`: the deadline of requests that carry none (ImageReview, `check`).
/// Under the API server's default webhook timeout of 10 s, with room for the answer.
pub const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(8);

/// The reason of an entry whose lookup ended without an answer (a bug, not a registry fault).
const LOOKUP_LOST: &str = "the registry lookup ended without an answer";

/// How the adapter behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a verified outcome is cached.
    pub signature_cache_ttl: Duration,
    /// How long a verification stands while the registry is unavailable.
    pub signature_stale_ttl: Duration,
    /// How long a tag resolution is cached.
    pub tag_cache_ttl: Duration,
    /// How long a not-verified outcome is cached ([`NOT_VERIFIED_TTL`]).
    pub not_verified_ttl: Duration,
    /// Trust and plain-HTTP hosts.
    pub client: ClientConfig,
    /// Logins by registry.
    pub credentials: Credentials,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            signature_cache_ttl: DEFAULT_SIGNATURE_CACHE_TTL,
            signature_stale_ttl: DEFAULT_SIGNATURE_STALE_TTL,
            tag_cache_ttl: DEFAULT_TAG_CACHE_TTL,
            not_verified_ttl: NOT_VERIFIED_TTL,
            client: ClientConfig::default(),
            credentials: Credentials::anonymous(),
        }
    }
}

/// The registry adapter. Cheap to clone: clones share the client, the caches and the flights.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Outcomes by verifier id, as one signature lookup found them.
type Outcomes = Arc<HashMap<String, Outcome>>;

struct Inner {
    client: Client,
    caches: Caches,
    tags: Arc<Flights<String, (), Result<String, Fault>>>,
    signatures: Arc<Flights<String, Vec<Arc<Verifier>>, Outcomes>>,
    metrics: Option<Arc<Metrics>>,
    /// Where lookups run: the runtime `new` was called in, so that lookups outlive the
    /// request (and the HTTP worker) that started them.
    runtime: Option<tokio::runtime::Handle>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A request's progress is plain data: whatever panicked, what is there is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// An adapter with `config`; lookups run on the Tokio runtime this is called in (or, outside
    /// one, on the runtime of whoever calls [`Gather::gather`]).
    pub fn new(config: Config, metrics: Option<Arc<Metrics>>) -> Result<Registry, String> {
        let client = Client::new(&config.client, config.credentials, metrics.clone())?;
        let caches = Caches::new(Ttls {
            verified: config.signature_cache_ttl,
            not_verified: config.not_verified_ttl,
            stale: config.signature_stale_ttl,
            tag: config.tag_cache_ttl,
        });
        Ok(Registry {
            inner: Arc::new(Inner {
                client,
                caches,
                tags: Arc::new(Flights::new()),
                signatures: Arc::new(Flights::new()),
                metrics,
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        })
    }

    /// Replaces the registry logins (a credentials Secret changed).
    pub fn set_credentials(&self, credentials: Credentials) {
        self.inner.client.set_credentials(credentials);
    }

    /// Reads the named `kubernetes.io/dockerconfigjson` Secrets of `namespace` now and every
    /// [`credentials::SECRET_REFRESH_INTERVAL`], replacing the logins when they change. Runs
    /// until dropped.
    pub async fn refresh_credentials(
        self,
        client: kube::Client,
        namespace: String,
        secrets: Vec<String>,
    ) {
        let mut current: Option<Credentials> = None;
        loop {
            let read = credentials::read_secrets(&client, &namespace, &secrets).await;
            if current.as_ref() != Some(&read) {
                tracing::info!(
                    namespace = %namespace,
                    registries = ?read.registries().collect::<Vec<_>>(),
                    "registry credentials loaded"
                );
                self.set_credentials(read.clone());
                current = Some(read);
            }
            tokio::time::sleep(credentials::SECRET_REFRESH_INTERVAL).await;
        }
    }

    /// (tag resolutions, signature outcomes) in the caches.
    pub fn cache_sizes(&self) -> (usize, usize) {
        self.inner.caches.sizes()
    }
}

impl Gather for Registry {
    fn gather<'a>(
        &'a self,
        requests: &'a [EvidenceRequest],
        deadline: Deadline,
    ) -> BoxFuture<'a, Evidence> {
        Box::pin(self.inner.clone().gather(requests, deadline))
    }
}

/// One image whose lookup runs in the background: what it has found so far.
struct Pending<'a> {
    request: &'a EvidenceRequest,
    progress: Arc<Mutex<ImageEvidence>>,
    task: tokio::task::JoinHandle<()>,
}

impl Inner {
    async fn gather(self: Arc<Self>, requests: &[EvidenceRequest], deadline: Deadline) -> Evidence {
        let now = Instant::now();
        let mut evidence = Evidence::default();
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for request in requests {
            if let Some(found) = self.cached(request, now) {
                evidence.images.insert(request.image.clone(), found);
                continue;
            }
            let progress = Arc::new(Mutex::new(ImageEvidence::default()));
            let task = self.spawn(self.clone().lookup(request.clone(), progress.clone()));
            pending.push(Pending {
                request,
                progress,
                task,
            });
        }
        if !pending.is_empty() {
            let all = futures::future::join_all(pending.iter_mut().map(|p| &mut p.task));
            // On time or not, what the lookups found is in their progress; the tasks go on.
            let _ = tokio::time::timeout_at(deadline.at.into(), all).await;
            for p in pending {
                let mut found = lock(&p.progress).clone();
                let reason = if p.task.is_finished() {
                    LOOKUP_LOST.to_owned()
                } else {
                    deadline.missed()
                };
                self.complete(p.request, &mut found, &reason);
                evidence.images.insert(p.request.image.clone(), found);
            }
        }
        if let Some(m) = &self.metrics {
            for image in evidence.images.values() {
                for e in image.entries.values() {
                    m.record_signature_verification(&e.outcome, e.source);
                }
            }
        }
        evidence
    }

    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(rt) => rt.spawn(fut),
            None => tokio::spawn(fut),
        }
    }

    /// The evidence for `request` when the caches hold all of it (fresh), without a task.
    fn cached(&self, request: &EvidenceRequest, now: Instant) -> Option<ImageEvidence> {
        let reference = &request.reference;
        let mut found = ImageEvidence::default();
        let digest = match reference.digest() {
            Some(d) => d.to_owned(),
            None => {
                let key = tag_key(
                    reference.registry(),
                    reference.repository(),
                    tag_of(request),
                );
                match self.caches.tag(&key, now)? {
                    Cached::Fresh(d) => {
                        found.digest_source = Some(Source::Cache);
                        d
                    }
                    Cached::Stale(_) => return None,
                }
            }
        };
        for check in &request.checks {
            let key = outcome_key(
                reference.registry(),
                reference.repository(),
                &digest,
                check.verifier.id(),
            );
            let outcome = match self.caches.outcome(&key, now)? {
                Cached::Fresh(o) => o,
                Cached::Stale(_) => return None,
            };
            found.entries.insert(
                check.entry.clone(),
                EntryEvidence {
                    outcome,
                    source: Source::Cache,
                },
            );
        }
        found.digest = Some(digest);
        Some(found)
    }

    /// Finds the evidence for one image, writing it into `progress` as it goes.
    async fn lookup(
        self: Arc<Self>,
        request: EvidenceRequest,
        progress: Arc<Mutex<ImageEvidence>>,
    ) {
        let reference = &request.reference;
        let (registry, repository) = (reference.registry(), reference.repository());
        let digest = match reference.digest() {
            Some(d) => d.to_owned(),
            None => match self.resolve(registry, repository, tag_of(&request)).await {
                Ok((digest, source)) => {
                    let mut p = lock(&progress);
                    p.digest = Some(digest.clone());
                    p.digest_source = Some(source);
                    digest
                }
                Err(reason) => {
                    let mut p = lock(&progress);
                    for check in &request.checks {
                        p.entries.insert(check.entry.clone(), unavailable(&reason));
                    }
                    p.digest_error = Some(reason);
                    return;
                }
            },
        };
        lock(&progress).digest = Some(digest.clone());

        let now = Instant::now();
        let mut missing: Vec<&EntryCheck> = Vec::new();
        for check in &request.checks {
            let key = outcome_key(registry, repository, &digest, check.verifier.id());
            match self.caches.outcome(&key, now) {
                Some(Cached::Fresh(outcome)) => {
                    lock(&progress).entries.insert(
                        check.entry.clone(),
                        EntryEvidence {
                            outcome,
                            source: Source::Cache,
                        },
                    );
                }
                _ => missing.push(check),
            }
        }
        if missing.is_empty() {
            return;
        }
        let verifiers: Vec<Arc<Verifier>> = missing.iter().map(|c| c.verifier.clone()).collect();
        let outcomes = self
            .signatures(registry, repository, &digest, verifiers)
            .await;
        let now = Instant::now();
        let mut p = lock(&progress);
        for check in missing {
            let outcome = outcomes
                .as_ref()
                .and_then(|o| o.get(check.verifier.id()).cloned())
                .unwrap_or_else(|| Outcome::Unavailable {
                    reason: LOOKUP_LOST.to_owned(),
                });
            let evidence = match outcome {
                Outcome::Unavailable { reason } => {
                    let key = outcome_key(registry, repository, &digest, check.verifier.id());
                    match self.caches.stale_verified(&key, now) {
                        Some(known_good) => EntryEvidence {
                            outcome: known_good,
                            source: Source::Stale,
                        },
                        None => unavailable(&reason),
                    }
                }
                outcome => EntryEvidence {
                    outcome,
                    source: Source::Fresh,
                },
            };
            p.entries.insert(check.entry.clone(), evidence);
        }
    }

    /// Fills in what a lookup did not find by the deadline (or at all): a digest and outcomes
    /// verified within `--signature-stale-ttl` stand as stale; the rest is unavailable with
    /// `reason`.
    fn complete(&self, request: &EvidenceRequest, found: &mut ImageEvidence, reason: &str) {
        let reference = &request.reference;
        let (registry, repository) = (reference.registry(), reference.repository());
        let now = Instant::now();
        if found.digest.is_none() && found.digest_error.is_none() {
            if let Some(d) = reference.digest() {
                found.digest = Some(d.to_owned());
            } else {
                let key = tag_key(registry, repository, tag_of(request));
                match self.caches.tag(&key, now) {
                    Some(Cached::Fresh(d)) => {
                        found.digest = Some(d);
                        found.digest_source = Some(Source::Cache);
                    }
                    Some(Cached::Stale(d)) => {
                        found.digest = Some(d);
                        found.digest_source = Some(Source::Stale);
                    }
                    None => found.digest_error = Some(reason.to_owned()),
                }
            }
        }
        for check in &request.checks {
            if found.entries.contains_key(&check.entry) {
                continue;
            }
            let known_good = found.digest.as_deref().and_then(|digest| {
                let key = outcome_key(registry, repository, digest, check.verifier.id());
                self.caches.stale_verified(&key, now)
            });
            let evidence = match known_good {
                Some(outcome) => EntryEvidence {
                    outcome,
                    source: Source::Stale,
                },
                None => unavailable(reason),
            };
            found.entries.insert(check.entry.clone(), evidence);
        }
    }

    /// The digest `registry/repository:tag` points to, and where that came from: the cache, one
    /// lookup shared by concurrent requests, or — while the registry is unavailable — a
    /// resolution from within `--signature-stale-ttl`.
    async fn resolve(
        self: &Arc<Self>,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(String, Source), String> {
        let key = tag_key(registry, repository, tag);
        if let Some(Cached::Fresh(d)) = self.caches.tag(&key, Instant::now()) {
            return Ok((d, Source::Cache));
        }
        let recheck = || match self.caches.tag(&key, Instant::now()) {
            Some(Cached::Fresh(d)) => Some(Ok(d)),
            _ => None,
        };
        let joined = self.tags.join(key.clone(), (), recheck, |ticket| {
            let inner = self.clone();
            let (registry, repository, tag, key) = (
                registry.to_owned(),
                repository.to_owned(),
                tag.to_owned(),
                key.clone(),
            );
            self.spawn(async move {
                let result = inner.client.resolve_tag(&registry, &repository, &tag).await;
                if let Ok(digest) = &result {
                    let n = inner.caches.put_tag(key, digest.clone(), Instant::now());
                    if let Some(m) = &inner.metrics {
                        m.set_registry_cache_size(crate::metrics::RegistryCache::tags, n);
                    }
                }
                ticket.finish(result);
            })
        });
        let (result, source) = match joined {
            Joined::Ready(r) => (r, Source::Cache),
            Joined::Waiting(w) => (
                w.wait()
                    .await
                    .unwrap_or_else(|| Err(Fault::Unavailable(LOOKUP_LOST.to_owned()))),
                Source::Fresh,
            ),
        };
        match result {
            Ok(d) => Ok((d, source)),
            Err(Fault::NotFound(m)) => Err(m),
            Err(Fault::Unavailable(m)) => match self.caches.tag(&key, Instant::now()) {
                Some(Cached::Fresh(d) | Cached::Stale(d)) => Ok((d, Source::Stale)),
                None => Err(m),
            },
        }
    }

    /// The outcome of each of `verifiers` for the signatures of `digest`: one lookup for
    /// concurrent requests of the same repository and digest, judged for every verifier its
    /// requests ask for, and cached. `None` when the lookup ended without an answer.
    async fn signatures(
        self: &Arc<Self>,
        registry: &str,
        repository: &str,
        digest: &str,
        verifiers: Vec<Arc<Verifier>>,
    ) -> Option<Outcomes> {
        let key = format!("{registry}/{repository}@{digest}");
        let recheck = || {
            let now = Instant::now();
            let mut out = HashMap::new();
            for v in &verifiers {
                let k = outcome_key(registry, repository, digest, v.id());
                match self.caches.outcome(&k, now) {
                    Some(Cached::Fresh(o)) => {
                        out.insert(v.id().to_owned(), o);
                    }
                    _ => return None,
                }
            }
            Some(Arc::new(out))
        };
        let joined = self
            .signatures
            .join(key, verifiers.clone(), recheck, |ticket| {
                let inner = self.clone();
                let (registry, repository, digest) = (
                    registry.to_owned(),
                    repository.to_owned(),
                    digest.to_owned(),
                );
                self.spawn(async move {
                    inner
                        .signature_lookup(ticket, &registry, &repository, &digest)
                        .await;
                })
            });
        match joined {
            Joined::Ready(o) => Some(o),
            Joined::Waiting(w) => w.wait().await,
        }
    }

    /// One signature lookup: read the signatures once, judge them for every verifier asked for
    /// (including those asked for while it ran), cache the outcomes, then answer.
    async fn signature_lookup(
        &self,
        mut ticket: Ticket<String, Vec<Arc<Verifier>>, Outcomes>,
        registry: &str,
        repository: &str,
        digest: &str,
    ) {
        let (cosign, bundles) = futures::join!(
            cosign::fetch(&self.client, registry, repository, digest),
            referrers::fetch(&self.client, registry, repository, digest),
        );
        let found = judge::Found { cosign, bundles };
        let now = jiff::Timestamp::now().as_second();
        let mut outcomes: HashMap<String, Outcome> = HashMap::new();
        let mut todo: Vec<Arc<Verifier>> = ticket.take().into_iter().flatten().collect();
        let mut cached = 0;
        loop {
            for verifier in todo.drain(..) {
                if outcomes.contains_key(verifier.id()) {
                    continue;
                }
                let outcome = judge::judge(&found, &verifier, registry, repository, digest, now);
                let key = outcome_key(registry, repository, digest, verifier.id());
                cached = self.caches.put_outcome(&key, &outcome, Instant::now());
                outcomes.insert(verifier.id().to_owned(), outcome);
            }
            match ticket.leave_unless_new() {
                Ok(()) => break,
                Err(more) => todo = more.into_iter().flatten().collect(),
            }
        }
        if let Some(m) = &self.metrics {
            m.set_registry_cache_size(crate::metrics::RegistryCache::signatures, cached);
        }
        ticket.finish(Arc::new(outcomes));
    }
}

/// An entry the registry could not answer for, now.
fn unavailable(reason: &str) -> EntryEvidence {
    EntryEvidence {
        outcome: Outcome::Unavailable {
            reason: reason.to_owned(),
        },
        source: Source::Fresh,
    }
}

/// The tag a reference without a digest is resolved by (`latest` when none is written).
fn tag_of(request: &EvidenceRequest) -> &str {
    request.reference.effective_tag().unwrap_or("latest")
}
