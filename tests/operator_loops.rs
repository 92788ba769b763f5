//! The operator's long-running parts against a mock API server: the namespace cache (its
//! reflector, and the GET of a namespace it does not know), break-glass Events, the ImagePolicy
//! watch end to end (snapshot, readiness, status, metrics), the certificate expiry metric, and
//! an API server outage.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Method;
use imagegate::decision::BreakGlassUse;
use imagegate::events::{EventSink, ObjectRef};
use imagegate::metrics::Metrics;
use imagegate::namespaces::{Labels, NAME_LABEL, NamespaceLabels};
use imagegate::operator::certificates::{self, CertParams, Material, service_sans};
use imagegate::operator::{self, FIELD_MANAGER, NamespaceCache, PolicyIndex, RETRY_DELAY, events};
use imagegate::policy::{ImagePolicy, ImagePolicySpec, Settings, Snapshot};
use imagegate::state::{Readiness, SharedSnapshot};
use imagegate::tls::CertResolver;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::runtime::events::Recorder;
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};
use support::{ApiServer, Call, REQUEST_WAIT, join, mock};
use tokio::sync::{mpsc, watch};

const NAMESPACES: &str = "/api/v1/namespaces";
const POLICIES: &str = "/apis/imagegate.dev/v1alpha1/imagepolicies";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const SECRETS: &str = "/api/v1/namespaces/imagegate-system/secrets";
const SECRET: &str = "/api/v1/namespaces/imagegate-system/secrets/imagegate-tls";

const POLICY_COUNT: &str = "imagegate_policies";
const POLICY_ERRORS: &str = "imagegate_policy_errors";
const SNAPSHOT_CREATED: &str = "imagegate_snapshot_created_timestamp_seconds";
const CERT_NOT_AFTER: &str = "imagegate_certificate_not_after_timestamp_seconds";

const DAY: u64 = 24 * 3600;

// ----- helpers -------------------------------------------------------------------------------

/// Polls `check` until it holds; fails the test after [`REQUEST_WAIT`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of an unlabelled metric, as `/metrics` shows it.
fn metric(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

fn seconds(at: jiff::Timestamp) -> f64 {
    at.as_millisecond() as f64 / 1000.0
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ----- namespace cache -----------------------------------------------------------------------

fn namespace(name: &str, labels: Option<Value>, rv: &str) -> Value {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "resourceVersion": rv}});
    if let Some(labels) = labels {
        ns["metadata"]["labels"] = labels;
    }
    ns
}

#[tokio::test]
async fn namespace_cache_answers_from_its_reflector_without_requests() {
    let (client, mut api) = mock();
    let (store, writer) = reflector::store();
    let cache = NamespaceCache::new(store, client.clone());
    let task = tokio::spawn(operator::run_namespace_reflector(client, writer));

    let list = api.next().await.expect(Method::GET, NAMESPACES);
    assert!(!list.is_watch(), "{}", list.uri);
    assert_eq!(cache.cached("shop"), None, "known before the list");
    list.ok(json!({"apiVersion": "v1", "kind": "NamespaceList",
    "metadata": {"resourceVersion": "10"},
    "items": [
        namespace("shop", Some(json!({"team": "shop", NAME_LABEL: "shop"})), "3"),
        // Without the name label (an old API server): the cache adds it.
        namespace("bare", None, "4"),
    ]}));

    // The watch starts once the list is in the store.
    let watch = api.next().await.expect(Method::GET, NAMESPACES);
    assert!(watch.is_watch(), "{}", watch.uri);
    assert_eq!(watch.param("resourceVersion").as_deref(), Some("10"));
    assert_eq!(
        cache.cached("shop"),
        Some(labels(&[("team", "shop"), (NAME_LABEL, "shop")]))
    );
    assert_eq!(cache.cached("bare"), Some(labels(&[(NAME_LABEL, "bare")])));
    assert_eq!(cache.cached("unknown"), None);
    // Reading the cache made no request.
    api.no_more().await;

    // Watch events: a new namespace, changed labels, a deleted namespace.
    watch.watch_events(&[
        json!({"type": "ADDED", "object": namespace("fresh", Some(json!({"env": "dev"})), "11")}),
        json!({"type": "MODIFIED", "object": namespace("shop", Some(json!({"team": "payments"})), "12")}),
        json!({"type": "DELETED", "object": namespace("bare", None, "13")}),
    ]);
    let rewatch = api.next().await.expect(Method::GET, NAMESPACES);
    assert!(rewatch.is_watch(), "{}", rewatch.uri);
    assert_eq!(rewatch.param("resourceVersion").as_deref(), Some("13"));
    assert_eq!(
        cache.cached("fresh"),
        Some(labels(&[("env", "dev"), (NAME_LABEL, "fresh")]))
    );
    assert_eq!(
        cache.cached("shop"),
        Some(labels(&[("team", "payments"), (NAME_LABEL, "shop")]))
    );
    assert_eq!(cache.cached("bare"), None);
    api.no_more().await;
    task.abort();
}

#[tokio::test]
async fn lookup_of_an_unknown_namespace_reads_it() {
    let (client, mut api) = mock();
    let (store, _writer) = reflector::store::<Namespace>();
    let cache = NamespaceCache::new(store, client);
    assert_eq!(cache.cached("fresh"), None);
    let task = tokio::spawn(cache.lookup("fresh"));
    api.next()
        .await
        .expect(Method::GET, "/api/v1/namespaces/fresh")
        .ok(namespace("fresh", Some(json!({"env": "prod"})), "4"));
    assert_eq!(
        join(task).await,
        Ok(labels(&[("env", "prod"), (NAME_LABEL, "fresh")]))
    );
    api.no_more().await;
}

#[tokio::test]
async fn lookup_failures_are_errors_with_the_reason() {
    // (answer, what the reason must say); `None`: the connection fails without an answer.
    let cases: [(Option<(u16, &str)>, &str); 4] = [
        (Some((404, "NotFound")), "namespace fresh does not exist"),
        (
            Some((500, "InternalError")),
            "it answered 500 InternalError: InternalError (mock)",
        ),
        (
            Some((403, "Forbidden")),
            "it answered 403 Forbidden: Forbidden (mock)",
        ),
        (None, "service closed"),
    ];
    for (answer, reason) in cases {
        let (client, mut api) = mock();
        let (store, _writer) = reflector::store::<Namespace>();
        let cache = NamespaceCache::new(store, client);
        let task = tokio::spawn(cache.lookup("fresh"));
        let call = api
            .next()
            .await
            .expect(Method::GET, "/api/v1/namespaces/fresh");
        match answer {
            Some((code, name)) => call.error(code, name),
            None => drop(call),
        }
        let error = join(task)
            .await
            .expect_err("a failed lookup is an error, not an empty set of labels");
        assert!(error.contains(reason), "{answer:?}: {error}");
        assert!(!error.contains("Status {"), "a debug dump: {error}");
        if answer.is_none_or(|(code, _)| code != 404) {
            assert!(
                error
                    .starts_with("cannot read the labels of namespace fresh from the API server: "),
                "{error}"
            );
        }
        api.no_more().await;
    }
}

// ----- break-glass Events --------------------------------------------------------------------

fn break_glass(policy: &str, ticket: &str, requester: &str) -> BreakGlassUse {
    BreakGlassUse {
        policy: policy.into(),
        ticket: ticket.into(),
        until: "2031-05-04T12:00:00Z".parse().unwrap(),
        requester: Some(requester.into()),
        excused: 2,
    }
}

fn object(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn image_policy(name: &str, allowed: &str, generation: i64, rv: &str) -> ImagePolicy {
    let mut p = ImagePolicy::new(
        name,
        ImagePolicySpec {
            allowed_images: Some(vec![allowed.to_owned()]),
            ..ImagePolicySpec::default()
        },
    );
    p.metadata.generation = Some(generation);
    p.metadata.uid = Some(format!("{name}-uid"));
    p.metadata.resource_version = Some(rv.to_owned());
    p
}

/// Asserts that `call` creates a break-glass Event on the policy `policy` and returns its note.
fn assert_break_glass_event(call: &Call, policy: &str, uid: Option<&str>) -> String {
    assert_eq!(
        (call.method.as_str(), call.path()),
        ("POST", EVENTS),
        "a new Event is created: {} {} {}",
        call.method,
        call.uri,
        call.body
    );
    let e = &call.body;
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["kind"], "Event");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "BreakGlass");
    assert_eq!(e["action"], "Admit");
    assert_eq!(e["reportingController"], FIELD_MANAGER);
    assert!(e["eventTime"].is_string(), "{e}");
    let regarding = &e["regarding"];
    assert_eq!(regarding["apiVersion"], "imagegate.dev/v1alpha1");
    assert_eq!(regarding["kind"], "ImagePolicy");
    assert_eq!(regarding["name"], policy);
    assert_eq!(regarding["uid"].as_str(), uid);
    e["note"].as_str().expect("a note").to_owned()
}

#[tokio::test]
async fn break_glass_is_published_as_an_event_on_the_policy() {
    let (client, mut api) = mock();
    let (store, mut writer) = reflector::store::<ImagePolicy>();
    writer.apply_watcher_event(&watcher::Event::Apply(image_policy(
        "prod",
        "registry.corp.example/**",
        1,
        "7",
    )));
    let (sink, queue) = events::KubeEventSink::new();
    let task = tokio::spawn(events::run_event_publisher(
        client,
        FIELD_MANAGER.into(),
        store,
        queue,
    ));

    let used = break_glass("prod", "INC-1", "alice");
    sink.break_glass(&object("Pod", "shop", "web"), &used);
    let post = api.next().await;
    let note = assert_break_glass_event(&post, "prod", Some("prod-uid"));
    for part in [
        "ticket INC-1",
        "Pod shop/web",
        "for alice",
        "2 violation(s)",
        "until 2031-05-04T12:00:00Z",
    ] {
        assert!(note.contains(part), "{part:?} missing from {note:?}");
    }
    let body = post.body.clone();
    post.respond(201, body);

    // Another exception on the same policy a moment later is an Event of its own, with its own
    // ticket, object and requester.
    sink.break_glass(
        &object("Deployment", "shop", "api"),
        &break_glass("prod", "INC-2", "bob"),
    );
    let post = api.next().await;
    let note = assert_break_glass_event(&post, "prod", Some("prod-uid"));
    for part in ["ticket INC-2", "Deployment shop/api", "for bob"] {
        assert!(note.contains(part), "{part:?} missing from {note:?}");
    }
    let body = post.body.clone();
    post.respond(201, body);

    // A policy the store does not know (deleted meanwhile) is referred to by name.
    sink.break_glass(
        &object("Pod", "shop", "db"),
        &break_glass("gone", "INC-3", "carol"),
    );
    let post = api.next().await;
    let note = assert_break_glass_event(&post, "gone", None);
    assert!(note.contains("ticket INC-3"), "{note}");
    // A failed publish is logged; the publisher goes on.
    post.error(500, "InternalError");
    sink.break_glass(
        &object("Pod", "shop", "db"),
        &break_glass("prod", "INC-4", "carol"),
    );
    let post = api.next().await;
    assert!(assert_break_glass_event(&post, "prod", Some("prod-uid")).contains("INC-4"));
    let body = post.body.clone();
    post.respond(201, body);

    // The publisher ends when the sink is dropped.
    drop(sink);
    join(task).await;
    api.no_more().await;
}

/// Log lines written by a test's own tracing subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn full_event_queue_drops_with_a_warning_without_blocking() {
    let (sink, mut queue) = events::KubeEventSink::new();
    let logs = Logs::default();
    let writer = logs.clone();
    let (done, finished) = std::sync::mpsc::channel();
    // On a thread of its own, so that a call that blocks fails the test instead of hanging it.
    std::thread::spawn(move || {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..=events::EVENT_QUEUE {
                sink.break_glass(
                    &object("Pod", "shop", "web"),
                    &break_glass("prod", &format!("INC-{i}"), "alice"),
                );
            }
        });
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(REQUEST_WAIT)
        .expect("break_glass returned while the queue was full");

    // The queue holds the first EVENT_QUEUE events in order; the one beyond was dropped.
    let mut queued = 0;
    while let Ok(e) = queue.try_recv() {
        assert!(
            e.note.contains(&format!("ticket INC-{queued} admitted")),
            "{}",
            e.note
        );
        queued += 1;
    }
    assert_eq!(queued, events::EVENT_QUEUE);
    let logs = logs.text();
    assert_eq!(
        logs.matches("break-glass event queue full; Event dropped")
            .count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("WARN"), "{logs}");
}

// ----- the ImagePolicy watch, end to end -----------------------------------------------------

/// A write the policy tasks made.
#[derive(Debug, Clone)]
struct Written {
    method: Method,
    uri: String,
    path: String,
    body: Value,
    at: tokio::time::Instant,
}

/// The API server for the policy tasks. A background task answers writes and records them:
/// a status patch gets the stored policy with the new status (or a 500 while writes are made
/// to fail), an Event is answered as written. Reads (list, watch) go to the test, which
/// scripts them.
struct Cluster {
    reads: mpsc::UnboundedReceiver<Call>,
    writes: Arc<Mutex<Vec<Written>>>,
    policies: Arc<Mutex<BTreeMap<String, Value>>>,
    failing_writes: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Cluster {
    fn new(mut api: ApiServer) -> Cluster {
        let (reads_tx, reads) = mpsc::unbounded_channel();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let policies = Arc::new(Mutex::new(BTreeMap::<String, Value>::new()));
        let failing_writes = Arc::new(AtomicUsize::new(0));
        let server = {
            let (writes, policies, failing) = (
                Arc::clone(&writes),
                Arc::clone(&policies),
                Arc::clone(&failing_writes),
            );
            tokio::spawn(async move {
                // The test aborts this task; the wait only bounds a forgotten one.
                while let Some(call) = api.next_opt(Duration::from_secs(600)).await {
                    if call.method == Method::GET {
                        if reads_tx.send(call).is_err() {
                            break; // The test is over.
                        }
                        continue;
                    }
                    writes.lock().unwrap().push(Written {
                        method: call.method.clone(),
                        uri: call.uri.clone(),
                        path: call.path().to_owned(),
                        body: call.body.clone(),
                        at: tokio::time::Instant::now(),
                    });
                    let fail = failing
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        call.error(500, "InternalError");
                    } else if let Some(name) = call
                        .path()
                        .strip_prefix(POLICIES)
                        .and_then(|rest| rest.strip_prefix('/'))
                        .and_then(|rest| rest.strip_suffix("/status"))
                    {
                        let stored = policies.lock().unwrap().get(name).cloned();
                        match stored {
                            Some(mut p) => {
                                p["status"] = call.body["status"].clone();
                                call.ok(p);
                            }
                            None => call.error(404, "NotFound"),
                        }
                    } else {
                        let body = call.body.clone();
                        call.respond(201, body);
                    }
                }
            })
        };
        Cluster {
            reads,
            writes,
            policies,
            failing_writes,
            server,
        }
    }

    /// The next list or watch request.
    async fn read(&mut self) -> Call {
        tokio::time::timeout(REQUEST_WAIT, self.reads.recv())
            .await
            .expect("another list or watch request in time")
            .expect("the mock API server is running")
            .expect(Method::GET, POLICIES)
    }

    /// The next list request (not a watch).
    async fn list_request(&mut self) -> Call {
        let call = self.read().await;
        assert!(!call.is_watch(), "expected a list: {}", call.uri);
        call
    }

    /// The next watch request, which must resume from `resource_version`.
    async fn watch_request(&mut self, resource_version: &str) -> Call {
        let call = self.read().await;
        assert!(call.is_watch(), "expected a watch: {}", call.uri);
        assert_eq!(
            call.param("resourceVersion").as_deref(),
            Some(resource_version),
            "{}",
            call.uri
        );
        call
    }

    /// Makes the policies known to the answers of status patches, as the API server knows
    /// them; returns their JSON.
    fn store(&self, policies: &[&ImagePolicy]) -> Vec<Value> {
        let mut stored = self.policies.lock().unwrap();
        policies
            .iter()
            .map(|p| {
                let v = serde_json::to_value(p).unwrap();
                stored.insert(p.metadata.name.clone().unwrap(), v.clone());
                v
            })
            .collect()
    }

    /// The writes so far with this method and path.
    fn writes(&self, method: Method, path: &str) -> Vec<Written> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.method == method && w.path == path)
            .cloned()
            .collect()
    }

    /// Waits for the `n`th write (from 1) with this method and path.
    async fn written(&self, n: usize, method: Method, path: &str) -> Written {
        eventually(&format!("{method} {path} was written {n} time(s)"), || {
            self.writes(method.clone(), path).len() >= n
        })
        .await;
        self.writes(method, path).swap_remove(n - 1)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn status_path(name: &str) -> String {
    format!("{POLICIES}/{name}/status")
}

fn policy_list(items: Vec<Value>, rv: &str, continue_token: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicyList",
           "metadata": metadata, "items": items})
}

fn names(snapshot: &SharedSnapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .load()
        .policies()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    names.sort();
    names
}

/// The shared state `imagegate run` hands to the webhook, and the index that fills it.
fn shared_state() -> (SharedSnapshot, Arc<Readiness>, PolicyIndex) {
    let snapshot: SharedSnapshot =
        Arc::new(ArcSwap::from_pointee(Snapshot::empty(Settings::default())));
    let readiness = Arc::new(Readiness::default());
    let index = PolicyIndex::new(
        Arc::clone(&snapshot),
        Arc::clone(&readiness),
        Settings::default(),
    );
    (snapshot, readiness, index)
}

fn good() -> ImagePolicy {
    image_policy("good", "registry.corp.example/**", 2, "5")
}

/// Its pattern has no registry host: it does not compile.
fn bad() -> ImagePolicy {
    image_policy("bad", "no-registry-here", 1, "6")
}

/// Waits until the policy metrics say `count` policies in force and `errors` left out, and
/// checks that the snapshot time is the one of the snapshot in force.
async fn assert_policy_metrics(
    metrics: &Metrics,
    snapshot: &SharedSnapshot,
    count: f64,
    errors: f64,
) {
    eventually(&format!("{count} policies and {errors} errors"), || {
        metric(metrics, POLICY_COUNT) == count && metric(metrics, POLICY_ERRORS) == errors
    })
    .await;
    let created = seconds(snapshot.load().created());
    eventually("the snapshot time is the one in force", || {
        (metric(metrics, SNAPSHOT_CREATED) - created).abs() < 0.001
    })
    .await;
}

#[tokio::test]
async fn policy_watch_end_to_end() {
    let (client, api) = mock();
    let mut cluster = Cluster::new(api);
    let (snapshot, readiness, index) = shared_state();
    let metrics = Arc::new(Metrics::new());
    let recorder = Recorder::new(client.clone(), FIELD_MANAGER.into());
    let tasks = operator::start_policies(client, index, Some(recorder), Arc::clone(&metrics));
    let (good, bad) = (good(), bad());
    let stored = cluster.store(&[&good, &bad]);

    // The list comes in two pages; nothing is in force and nothing is ready until both are in.
    let initial = snapshot.load_full();
    let page = cluster.list_request().await;
    assert!(!readiness.policies_loaded(), "ready before the list");
    page.ok(policy_list(vec![stored[0].clone()], "10", Some("page-2")));
    let page = cluster.list_request().await;
    assert_eq!(page.param("continue").as_deref(), Some("page-2"));
    assert!(!readiness.policies_loaded(), "ready after one page of two");
    assert!(
        Arc::ptr_eq(&initial, &snapshot.load_full()),
        "half a list was swapped in: {:?}",
        names(&snapshot)
    );
    page.ok(policy_list(vec![stored[1].clone()], "10", None));

    // Once the list is complete the watch starts, with the good policy in force.
    let watch = cluster.watch_request("10").await;
    assert!(readiness.policies_loaded());
    assert_eq!(names(&snapshot), ["good"]);
    assert_policy_metrics(&metrics, &snapshot, 1.0, 1.0).await;

    // Status of both, by server-side apply.
    let status = cluster
        .written(1, Method::PATCH, &status_path("good"))
        .await;
    assert!(
        status.uri.contains("fieldManager=imagegate"),
        "{}",
        status.uri
    );
    assert!(status.uri.contains("force=true"), "{}", status.uri);
    assert_eq!(status.body["metadata"], json!({"name": "good"}));
    assert_eq!(status.body["status"]["observedGeneration"], 2);
    let ready = &status.body["status"]["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (&json!("Ready"), &json!("True"), &json!("Compiled"))
    );
    let status = cluster.written(1, Method::PATCH, &status_path("bad")).await;
    assert_eq!(status.body["status"]["observedGeneration"], 1);
    let ready = &status.body["status"]["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (&json!("Ready"), &json!("False"), &json!("CompileError"))
    );
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("The policy is not in force: spec.allowedImages[0]: "),
        "{message}"
    );
    // ... and a Warning Event on the broken one.
    let event = cluster.written(1, Method::POST, EVENTS).await;
    assert_eq!(event.body["reason"], "CompileError");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["regarding"]["name"], "bad");
    assert_eq!(event.body["regarding"]["uid"], "bad-uid");

    // A policy added: in force at once; the watch resumes after the last event.
    let second = image_policy("second", "ghcr.io/corp/**", 1, "11");
    let added = cluster.store(&[&second]);
    watch.watch_events(&[json!({"type": "ADDED", "object": added[0]})]);
    let watch = cluster.watch_request("11").await;
    assert_eq!(names(&snapshot), ["good", "second"]);
    assert_policy_metrics(&metrics, &snapshot, 2.0, 1.0).await;
    let status = cluster
        .written(1, Method::PATCH, &status_path("second"))
        .await;
    assert_eq!(status.body["status"]["conditions"][0]["status"], "True");

    // A policy deleted: out of force at once.
    let mut deleted = stored[0].clone();
    deleted["metadata"]["resourceVersion"] = json!("12");
    watch.watch_events(&[json!({"type": "DELETED", "object": deleted})]);
    let watch = cluster.watch_request("12").await;
    assert_eq!(names(&snapshot), ["second"]);
    assert_policy_metrics(&metrics, &snapshot, 1.0, 1.0).await;
    // The broken one deleted too: no errors left.
    let mut deleted = stored[1].clone();
    deleted["metadata"]["resourceVersion"] = json!("13");
    watch.watch_events(&[json!({"type": "DELETED", "object": deleted})]);
    let _watch = cluster.watch_request("13").await;
    assert_eq!(names(&snapshot), ["second"]);
    assert_policy_metrics(&metrics, &snapshot, 1.0, 0.0).await;

    for task in tasks {
        task.abort();
    }
}

// ----- API server outage ---------------------------------------------------------------------

/// The snapshot in force is still `before` (not even rebuilt).
fn assert_unchanged(before: &Arc<Snapshot>, snapshot: &SharedSnapshot, readiness: &Readiness) {
    assert!(
        Arc::ptr_eq(before, &snapshot.load_full()),
        "the snapshot was replaced during the outage: now {:?}",
        names(snapshot)
    );
    assert!(readiness.policies_loaded(), "not ready during the outage");
}

#[tokio::test]
async fn outage_keeps_the_snapshot_in_force_and_the_watch_resumes() {
    let (client, api) = mock();
    let mut cluster = Cluster::new(api);
    let (snapshot, readiness, index) = shared_state();
    let metrics = Arc::new(Metrics::new());
    let tasks = operator::start_policies(client, index, None, Arc::clone(&metrics));
    let good = good();
    let third = image_policy("third", "quay.io/corp/**", 1, "15");
    let stored = cluster.store(&[&good, &third]);

    // Down from the start: not ready, nothing in force; the list is retried.
    cluster
        .list_request()
        .await
        .error(503, "ServiceUnavailable");
    let list = cluster.list_request().await;
    assert!(!readiness.policies_loaded());
    assert!(names(&snapshot).is_empty());
    list.ok(policy_list(vec![stored[0].clone()], "10", None));
    let watch = cluster.watch_request("10").await;
    assert_eq!(names(&snapshot), ["good"]);
    assert_policy_metrics(&metrics, &snapshot, 1.0, 0.0).await;
    let before = snapshot.load_full();
    let created = metric(&metrics, SNAPSHOT_CREATED);

    // The watch cannot be started: it is retried from the same resourceVersion.
    watch.error(500, "InternalError");
    let watch = cluster.watch_request("10").await;
    assert_unchanged(&before, &snapshot, &readiness);

    // The watch breaks with 410 Gone: a re-list, whose second page fails.
    watch.watch_events(&[json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})]);
    let page = cluster.list_request().await;
    assert_unchanged(&before, &snapshot, &readiness);
    page.ok(policy_list(vec![stored[1].clone()], "20", Some("page-2")));
    let page = cluster.list_request().await;
    assert_eq!(page.param("continue").as_deref(), Some("page-2"));
    assert_unchanged(&before, &snapshot, &readiness);
    page.error(503, "ServiceUnavailable");

    // The re-list is retried from the start; until it is complete nothing changes.
    let page = cluster.list_request().await;
    assert_eq!(page.param("continue"), None, "{}", page.uri);
    assert_unchanged(&before, &snapshot, &readiness);
    assert_eq!(metric(&metrics, POLICY_COUNT), 1.0);
    assert_eq!(metric(&metrics, SNAPSHOT_CREATED), created);

    // Back: the complete re-list replaces the snapshot, and the watch resumes after it.
    page.ok(policy_list(stored.clone(), "20", None));
    let _watch = cluster.watch_request("20").await;
    assert_eq!(names(&snapshot), ["good", "third"]);
    assert_policy_metrics(&metrics, &snapshot, 2.0, 0.0).await;

    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn failed_status_write_is_retried() {
    let (client, api) = mock();
    let mut cluster = Cluster::new(api);
    let (_snapshot, _readiness, index) = shared_state();
    let tasks = operator::start_policies(client, index, None, Arc::new(Metrics::new()));
    let good = good();
    let stored = cluster.store(&[&good]);
    cluster.failing_writes.store(1, Ordering::SeqCst);

    cluster
        .list_request()
        .await
        .ok(policy_list(stored, "10", None));
    let _watch = cluster.watch_request("10").await;
    let path = status_path("good");
    let failed = cluster.written(1, Method::PATCH, &path).await;
    // The same status again, after the retry delay, without any watch event.
    let retried = tokio::time::timeout(
        RETRY_DELAY + REQUEST_WAIT,
        cluster.written(2, Method::PATCH, &path),
    )
    .await
    .expect("the status write was retried");
    assert!(
        retried.at - failed.at >= RETRY_DELAY - Duration::from_millis(50),
        "retried after {:?}",
        retried.at - failed.at
    );
    assert_eq!(retried.body["status"]["conditions"][0]["status"], "True");
    assert_eq!(
        retried.body["status"]["conditions"][0]["reason"],
        failed.body["status"]["conditions"][0]["reason"]
    );

    for task in tasks {
        task.abort();
    }
}

// ----- certificate expiry metric -------------------------------------------------------------

fn cert_params(validity_days: u64) -> CertParams {
    CertParams {
        sans: service_sans("imagegate", "imagegate-system"),
        cert_validity: Duration::from_secs(validity_days * DAY),
        ca_validity: Duration::from_secs(3650 * DAY),
    }
}

fn not_after_of(secret: &Value) -> jiff::Timestamp {
    let secret: Secret = serde_json::from_value(secret.clone()).unwrap();
    let material = Material::from_secret(&secret).unwrap();
    certificates::validity(&material.serving.cert_pem)
        .unwrap()
        .1
}

#[tokio::test]
async fn certificate_expiry_metric_follows_the_serving_certificate() {
    let (client, mut api) = mock();
    let tls = CertResolver::new();
    let metrics = Arc::new(Metrics::new());
    assert_eq!(metric(&metrics, CERT_NOT_AFTER), 0.0, "no certificate yet");
    let (ca_tx, ca_rx) = watch::channel(None);
    let task = tokio::spawn(operator::run_certificates(
        client,
        "imagegate-system".into(),
        "imagegate-tls".into(),
        cert_params(90),
        Arc::clone(&tls),
        ca_tx,
        Some(Arc::clone(&metrics)),
    ));

    // First start: the Secret is created, and its serving certificate served and measured.
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .error(404, "NotFound");
    let create = api.next().await.expect(Method::POST, SECRETS);
    let first = not_after_of(&create.body);
    create.echo("1");
    let list = api.next().await.expect(Method::GET, SECRETS);
    assert_eq!(
        list.param("fieldSelector").as_deref(),
        Some("metadata.name=imagegate-tls")
    );
    assert_eq!(tls.not_after(), Some(first));
    assert_eq!(metric(&metrics, CERT_NOT_AFTER), seconds(first));
    let ninety_days = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90 * DAY as i64);
    assert!(
        (seconds(first) - seconds(ninety_days)).abs() < 3600.0,
        "the serving certificate's expiry, not the CA's: {first}"
    );
    assert!(
        ca_rx
            .borrow()
            .as_deref()
            .is_some_and(|b| b.contains("BEGIN CERTIFICATE"))
    );

    // Another replica replaced the Secret meanwhile: the list after it shows the change and the
    // metric follows the certificate now served.
    let other = match certificates::plan(None, &cert_params(30), jiff::Timestamp::now()).unwrap() {
        certificates::Plan::Write(m, _) => m,
        certificates::Plan::Keep(_) => unreachable!("no Secret means a write"),
    };
    let mut replaced = serde_json::to_value(certificates::new_secret(
        "imagegate-tls",
        "imagegate-system",
        &other,
    ))
    .unwrap();
    replaced["apiVersion"] = json!("v1");
    replaced["kind"] = json!("Secret");
    replaced["metadata"]["resourceVersion"] = json!("2");
    list.ok(json!({"apiVersion": "v1", "kind": "SecretList",
                   "metadata": {"resourceVersion": "2"}, "items": [replaced.clone()]}));
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(replaced.clone());
    let watch = api.next().await.expect(Method::GET, SECRETS);
    assert!(watch.is_watch(), "{}", watch.uri);
    let second = not_after_of(&replaced);
    assert_ne!(first, second);
    assert_eq!(tls.not_after(), Some(second));
    assert_eq!(metric(&metrics, CERT_NOT_AFTER), seconds(second));
    task.abort();
}
