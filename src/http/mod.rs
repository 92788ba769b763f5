//! The HTTPS server (actix-web + rustls): `/validate`, `/mutate`, `/imagereview`, `/healthz`, `/readyz`,
//! `/metrics`, and `/metrics` again on an optional plain-HTTP port. Handlers only move bytes
//! and call [`crate::admission`]; the certificate comes from [`CertResolver`], so it can be
//! replaced while the server runs.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, ContentType};
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use futures::StreamExt;

use crate::admission::{self, BadRequest, record};
use crate::events::{EventSink, ObjectRef};
use crate::evidence::{Evidence, EvidenceRequest, Gather};
use crate::metrics::{AdmissionResult, Endpoint, Metrics};
use crate::mutation::{self, Digests};
use crate::namespaces::{Labels, NamespaceLabels};
use crate::state::{Readiness, SharedSnapshot};
use crate::tls::{CertResolver, server_config};

pub mod deadline;

/// The largest request body: an UPDATE carries two objects of up to 3 MiB each (etcd's default
/// object limit is 1.5 MiB, raised to 3 MiB on some clusters), plus the envelope.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How long a client may take to send the request head. The API server sends it at once; a
/// slow or idle peer must not hold a connection slot.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send the body once the head is in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle keep-alive connection stays open. Longer than the 90 s idle timeout of the
/// API server's Go HTTP client, so the client always closes first and never sends a request on
/// a connection we are closing.
pub const KEEP_ALIVE: Duration = Duration::from_secs(120);

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a closing connection waits for the client to acknowledge.
pub const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a namespace label lookup may take before the request is denied. The API server
/// waits 10 s for a webhook by default; the answer must leave in time.
pub const NAMESPACE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The default grace period for in-flight requests on shutdown: below Kubernetes' default
/// `terminationGracePeriodSeconds` of 30 s, so we exit before being killed.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub snapshot: SharedSnapshot,
    pub namespaces: Arc<dyn NamespaceLabels>,
    pub events: Arc<dyn EventSink>,
    pub tls: Arc<CertResolver>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Where evidence for signature entries comes from (the registry adapter).
    pub evidence: Arc<dyn Gather>,
    /// How long registry work may take for a request that does not say (`--verify-timeout`).
    pub verify_timeout: Duration,
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The HTTPS address.
    pub addr: SocketAddr,
    /// The plain-HTTP metrics address; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// Worker threads; `None`: one per CPU.
    pub workers: Option<usize>,
    /// After the shutdown signal, how long to keep serving (with `/readyz` at 503) before
    /// closing the listener, so load balancers stop sending first.
    pub drain_delay: Duration,
    /// How long in-flight requests may take to finish once the listener is closed.
    pub shutdown_timeout: Duration,
}

impl ServerConfig {
    /// Defaults for `addr` with metrics on `metrics_addr`.
    pub fn new(addr: SocketAddr, metrics_addr: Option<SocketAddr>) -> ServerConfig {
        ServerConfig {
            addr,
            metrics_addr,
            workers: None,
            drain_delay: Duration::ZERO,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// Bound sockets, ready to serve: bind first to learn the ports (port 0 in tests).
#[derive(Debug)]
pub struct Listeners {
    https: TcpListener,
    metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the HTTPS and metrics addresses.
    pub fn bind(config: &ServerConfig) -> anyhow::Result<Listeners> {
        let https = TcpListener::bind(config.addr)
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let metrics = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen for metrics on {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners { https, metrics })
    }

    /// The HTTPS address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.https.local_addr()
    }

    /// The metrics address actually bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then drains and returns.
    pub async fn serve(
        self,
        config: &ServerConfig,
        state: AppState,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let data = web::Data::new(state.clone());
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let https = {
            let data = data.clone();
            HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .wrap_fn(|req, srv| {
                        use actix_web::dev::Service as _;
                        let draining = req
                            .app_data::<web::Data<AppState>>()
                            .is_some_and(|s| s.readiness.draining());
                        let fut = srv.call(req);
                        async move {
                            let mut res = fut.await?;
                            // While draining, every answer closes its connection, so keep-alive
                            // clients reconnect to another replica.
                            if draining {
                                res.response_mut()
                                    .head_mut()
                                    .set_connection_type(ConnectionType::Close);
                            }
                            Ok(res)
                        }
                    })
                    .configure(routes)
            })
            .workers(workers)
            .keep_alive(KEEP_ALIVE)
            .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
            .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
            .tls_handshake_timeout(TLS_HANDSHAKE_TIMEOUT)
            .shutdown_timeout(config.shutdown_timeout.as_secs())
            .disable_signals()
            .listen_rustls_0_23(self.https, server_config(Arc::clone(&state.tls)))
            .context("cannot start the HTTPS server")?
            .run()
        };
        let metrics = match self.metrics {
            Some(listener) => {
                let data = data.clone();
                Some(
                    HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .route("/metrics", web::get().to(metrics_handler))
                    })
                    .workers(1)
                    .keep_alive(KEEP_ALIVE)
                    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                    .shutdown_timeout(config.shutdown_timeout.as_secs())
                    .disable_signals()
                    .listen(listener)
                    .context("cannot start the metrics server")?
                    .run(),
                )
            }
            None => None,
        };

        let https_handle = https.handle();
        let metrics_handle = metrics.as_ref().map(|m| m.handle());
        let readiness = Arc::clone(&state.readiness);
        let drain_delay = config.drain_delay;
        tokio::spawn(async move {
            shutdown.await;
            readiness.set_draining();
            tracing::info!("shutting down: not ready, draining in-flight requests");
            tokio::time::sleep(drain_delay).await;
            let metrics_stop = async {
                if let Some(h) = metrics_handle {
                    h.stop(true).await;
                }
            };
            tokio::join!(https_handle.stop(true), metrics_stop);
        });
        match metrics {
            Some(metrics) => {
                let (a, b) = tokio::join!(https, metrics);
                a.context("the HTTPS server failed")?;
                b.context("the metrics server failed")?;
            }
            None => https.await.context("the HTTPS server failed")?,
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Binds and serves until `shutdown` completes; returns after draining.
pub async fn run_server(
    config: ServerConfig,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Listeners::bind(&config)?
        .serve(&config, state, shutdown)
        .await
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/validate", web::post().to(validate))
        .route("/mutate", web::post().to(mutate))
        .route("/imagereview", web::post().to(image_review))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_handler));
}

fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    let mut body = message.into();
    body.push('\n');
    HttpResponse::build(status)
        .content_type(ContentType::plaintext())
        .body(body)
}

fn json(body: &impl serde::Serialize) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(bytes),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the answer: {e}"),
        ),
    }
}

/// Reads the body up to [`MAX_BODY_BYTES`] within [`BODY_READ_TIMEOUT`]; a body that cannot be
/// read is counted as a bad request of `endpoint`.
async fn read_body(
    req: &actix_web::HttpRequest,
    payload: web::Payload,
    state: &AppState,
    endpoint: Endpoint,
) -> Result<web::Bytes, HttpResponse> {
    let body = read_body_within_limits(req, payload).await;
    if body.is_err() {
        state
            .metrics
            .record_admission(endpoint, AdmissionResult::bad_request, Duration::ZERO);
    }
    body
}

async fn read_body_within_limits(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
) -> Result<web::Bytes, HttpResponse> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the limit of {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let read = async {
        // A body that arrives as one chunk (the usual case: the API server sends it in one
        // piece, and it is smaller than a TLS record) is used as it is; only one in several
        // chunks is copied together.
        let mut first: Option<web::Bytes> = None;
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            })?;
            let had = first.as_ref().map_or(0, web::Bytes::len) + body.len();
            if had + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            if had == 0 {
                first = Some(chunk);
                continue;
            }
            if let Some(first) = first.take() {
                body.reserve(declared.unwrap_or(0).max(had + chunk.len()));
                body.extend_from_slice(&first);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(first.unwrap_or_else(|| body.freeze()))
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn bad_request(
    state: &AppState,
    endpoint: Endpoint,
    started: Instant,
    e: &BadRequest,
) -> HttpResponse {
    state
        .metrics
        .record_admission(endpoint, AdmissionResult::bad_request, started.elapsed());
    tracing::warn!(?endpoint, error = %e, "bad request");
    text(StatusCode::BAD_REQUEST, e.to_string())
}

/// The namespace's labels: cached, else looked up within [`NAMESPACE_LOOKUP_TIMEOUT`].
async fn namespace_labels(state: &AppState, namespace: &str) -> Result<Labels, String> {
    if let Some(labels) = state.namespaces.cached(namespace) {
        return Ok(labels);
    }
    match tokio::time::timeout(NAMESPACE_LOOKUP_TIMEOUT, state.namespaces.lookup(namespace)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the lookup did not answer within {} s",
            NAMESPACE_LOOKUP_TIMEOUT.as_secs()
        )),
    }
}

/// Gathers the evidence `requests` ask for, within the request's deadline (see [`deadline`]).
async fn gather(
    state: &AppState,
    req: &actix_web::HttpRequest,
    arrived: Instant,
    requests: &[EvidenceRequest],
) -> Evidence {
    let deadline = deadline::deadline(req.query_string(), arrived, state.verify_timeout);
    state.evidence.gather(requests, deadline).await
}

/// Reads an AdmissionReview for `endpoint`: the request and when its body was in (what
/// latencies count from), or the answer to a body that is not one.
async fn admission_request(
    req: &actix_web::HttpRequest,
    payload: web::Payload,
    state: &AppState,
    endpoint: Endpoint,
) -> Result<(admission::AdmissionRequest, Instant), HttpResponse> {
    let body = read_body(req, payload, state, endpoint).await?;
    let started = Instant::now();
    admission::parse_admission_review(&body)
        .map(|request| (request, started))
        .map_err(|e| bad_request(state, endpoint, started, &e))
}

async fn validate(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let arrived = Instant::now();
    let (request, started) =
        match admission_request(&req, payload, &state, Endpoint::validate).await {
            Ok(read) => read,
            Err(res) => return res,
        };
    let labels = if request.needs_namespace_labels() {
        Some(namespace_labels(&state, &request.namespace).await)
    } else {
        None
    };
    let now = jiff::Timestamp::now();
    let snapshot = state.snapshot.load();
    let empty = Labels::new();
    let labels_ref = match &labels {
        Some(Ok(l)) => Ok(l),
        Some(Err(e)) => Err(e.as_str()),
        None => Ok(&empty),
    };
    // Registry evidence only when a signature entry governs an image of the object: otherwise
    // this is one test of the snapshot.
    let requests = match labels_ref {
        Ok(labels) if snapshot.has_signature_rules() => {
            request.evidence_requests(&snapshot, labels)
        }
        _ => Vec::new(),
    };
    let mut evidence = None;
    let outcome = if requests.is_empty() {
        let outcome = request.decide(&snapshot, labels_ref, now);
        drop(snapshot);
        outcome
    } else {
        // Held as an `Arc` across the wait, not as a guard: the decision uses the snapshot the
        // requests came from.
        let snapshot = arc_swap::Guard::into_inner(snapshot);
        let gathered = evidence.insert(gather(&state, &req, arrived, &requests).await);
        request.decide_with(&snapshot, labels_ref, now, Some(gathered))
    };
    let response = request.response(&outcome);
    let latency = started.elapsed();

    let ctx = record::RecordContext {
        evidence: evidence.as_ref(),
        ..request.record_context(labels_ref.ok(), now, latency)
    };
    match &outcome {
        admission::Outcome::Skipped(_) => {}
        admission::Outcome::Decided(d) => {
            record::decision(&ctx, d, outcome.label());
            state.metrics.record_decision(d);
            if !request.dry_run {
                let object = ObjectRef {
                    kind: request.kind.clone(),
                    namespace: request.namespace.clone(),
                    name: request.name.clone(),
                };
                for used in &d.break_glass {
                    state.events.break_glass(&object, used);
                }
            }
        }
        admission::Outcome::Refused(why) => record::verdict(&ctx, false, "denied", why),
        admission::Outcome::Policy(r) => {
            let reason = r
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            record::verdict(&ctx, r.is_ok(), outcome.label(), &reason);
        }
    }
    state
        .metrics
        .record_admission(Endpoint::validate, outcome.result(), latency);
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(response.to_json())
}

async fn mutate(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let arrived = Instant::now();
    let (request, started) = match admission_request(&req, payload, &state, Endpoint::mutate).await
    {
        Ok(read) => read,
        Err(res) => return res,
    };
    let labels = if request.needs_mutation() {
        Some(namespace_labels(&state, &request.namespace).await)
    } else {
        None
    };
    let now = jiff::Timestamp::now();
    let empty = Labels::new();
    let labels_ref = match &labels {
        Some(Ok(l)) => Ok(l),
        Some(Err(e)) => Err(e.as_str()),
        None => Ok(&empty),
    };
    let snapshot = state.snapshot.load();
    // Registry lookups only when an applying Enforce policy pins a governed tag of the Pod:
    // otherwise this is one test of the snapshot.
    let requests = match labels_ref {
        Ok(labels) if snapshot.pins_digests() => request.digest_requests(&snapshot, labels),
        _ => Vec::new(),
    };
    let mut evidence = None;
    let outcome = if requests.is_empty() {
        let outcome = request.plan_mutation(&snapshot, labels_ref, &Digests::new());
        drop(snapshot);
        outcome
    } else {
        // Held as an `Arc` across the wait: the plan uses the snapshot the requests came from.
        let snapshot = arc_swap::Guard::into_inner(snapshot);
        let gathered = evidence.insert(gather(&state, &req, arrived, &requests).await);
        request.plan_mutation(&snapshot, labels_ref, &mutation::digests_from(gathered))
    };
    let response = request.mutate_response(&outcome);
    let latency = started.elapsed();

    let ctx = record::RecordContext {
        endpoint: "mutate",
        evidence: evidence.as_ref(),
        ..request.record_context(labels_ref.ok(), now, latency)
    };
    let result = match &outcome {
        admission::MutateOutcome::Skipped(_) => AdmissionResult::skipped,
        admission::MutateOutcome::Planned(plan) => {
            // A Pod that no policy asks to change is not worth a record.
            if !plan.policies.is_empty() {
                record::mutation(&ctx, plan, outcome.label());
            }
            state.metrics.record_mutation(plan);
            AdmissionResult::allowed
        }
        admission::MutateOutcome::Unread(why) => {
            record::verdict(&ctx, true, outcome.label(), why);
            AdmissionResult::allowed
        }
    };
    state
        .metrics
        .record_admission(Endpoint::mutate, result, latency);
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(response.to_json())
}

async fn image_review(
    req: actix_web::HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let arrived = Instant::now();
    let body = match read_body(&req, payload, &state, Endpoint::imagereview).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    let started = Instant::now();
    let request = match admission::parse_image_review(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&state, Endpoint::imagereview, started, &e),
    };
    drop(body);
    let labels = namespace_labels(&state, &request.namespace).await;
    let now = jiff::Timestamp::now();
    let mut evidence = None;
    let decided = match &labels {
        Ok(labels) => {
            let snapshot = state.snapshot.load();
            let requests = if snapshot.has_signature_rules() {
                request.evidence_requests(&snapshot, labels)
            } else {
                Vec::new()
            };
            if requests.is_empty() {
                Ok(request.decide(&snapshot, labels, now))
            } else {
                let snapshot = arc_swap::Guard::into_inner(snapshot);
                let gathered = evidence.insert(gather(&state, &req, arrived, &requests).await);
                Ok(request.decide_with(&snapshot, labels, now, Some(gathered)))
            }
        }
        Err(why) => Err(why),
    };
    let ctx = |latency| record::RecordContext {
        endpoint: "imagereview",
        uid: "",
        kind: "Pod",
        namespace: &request.namespace,
        name: "",
        operation: "CREATE",
        requester: None,
        dry_run: false,
        namespace_labels: labels.as_ref().ok(),
        annotations: Some(&request.workload.annotations),
        now,
        latency,
        evidence: evidence.as_ref(),
    };
    let (response, result) = match decided {
        Ok(decision) => {
            let latency = started.elapsed();
            let label = crate::metrics::decision_label(&decision);
            record::decision(&ctx(latency), &decision, label);
            state.metrics.record_decision(&decision);
            let object = ObjectRef {
                kind: "Pod".to_owned(),
                namespace: request.namespace.clone(),
                name: String::new(),
            };
            for used in &decision.break_glass {
                state.events.break_glass(&object, used);
            }
            let result = if decision.allowed {
                AdmissionResult::allowed
            } else {
                AdmissionResult::denied
            };
            (request.response(&decision), result)
        }
        Err(why) => {
            record::verdict(&ctx(started.elapsed()), false, "denied", why);
            (request.refusal(why), AdmissionResult::denied)
        }
    };
    state
        .metrics
        .record_admission(Endpoint::imagereview, result, started.elapsed());
    json(&response)
}

async fn healthz() -> HttpResponse {
    text(StatusCode::OK, "ok")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let r = &state.readiness;
    if r.draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !r.policies_loaded() {
        text(StatusCode::SERVICE_UNAVAILABLE, "policies not loaded yet")
    } else if !state.tls.is_ready() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no serving certificate yet",
        )
    } else {
        text(StatusCode::OK, "ok")
    }
}

async fn metrics_handler(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = state.snapshot.load();
    state.metrics.set_policy_count(snapshot.policies().len());
    state.metrics.set_snapshot_created(snapshot.created());
    drop(snapshot);
    state.metrics.set_cert_not_after(state.tls.not_after());
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}
