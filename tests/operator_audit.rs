//! The audit of running Pods against a mock API server: the Pod index driven by its watch
//! (list, apply, delete, re-list), `status.audit` written by its own field manager only when it
//! changes (and the conditions surviving it), the Event when violations appear, the gauge,
//! PolicyReports created, left alone, emptied, and nothing while their CRD is absent, the
//! namespace label trigger, and debounced passes; and signatures judged on the digest a Pod
//! runs, with a real registry (Debian's `docker-registry`, see `support/registry.rs`).

#[path = "support/registry.rs"]
mod registry_support;
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Method;
use imagegate::audit::{PodIndex, PodObject};
use imagegate::metrics::Metrics;
use imagegate::operator::audit::{
    AUDIT_DEBOUNCE, AUDIT_FIELD_MANAGER, AuditConfig, Auditor, SharedPods, Sources, Triggers,
    run_audit, run_pod_index,
};
use imagegate::operator::{self, status};
use imagegate::policy::{ImagePolicy, Settings, Snapshot};
use imagegate::state::{Readiness, SharedSnapshot};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use support::{ApiServer, Call, REQUEST_WAIT, join, mock, spawn};
use tokio::sync::watch;

const PODS: &str = "/api/v1/pods";
const POLICIES: &str = "/apis/imagegate.dev/v1alpha1/imagepolicies";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const REPORTS: &str = "/apis/wgpolicyk8s.io/v1alpha2/policyreports";
const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn status_path(name: &str) -> String {
    format!("{POLICIES}/{name}/status")
}

fn report_path(namespace: &str) -> String {
    format!("/apis/wgpolicyk8s.io/v1alpha2/namespaces/{namespace}/policyreports/imagegate")
}

// ----- objects -------------------------------------------------------------------------------

fn policy(name: &str, allowed: &str) -> ImagePolicy {
    let mut p: ImagePolicy = serde_json::from_value(json!({
        "apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": name, "uid": format!("{name}-uid"), "generation": 1,
                     "resourceVersion": "1"},
        "spec": {"allowedImages": [allowed],
                 "namespaceSelector": {"matchLabels": {"env": "prod"}}},
    }))
    .unwrap();
    p.metadata.generation = Some(1);
    p
}

fn pod(namespace: &str, name: &str, image: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "web-7d", "uid": "rs", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "app", "image": image, "imageID": format!("docker.io/library/x@{DIGEST}")}]},
    })
}

fn namespace(name: &str, labels: Value, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels, "resourceVersion": rv}})
}

fn list(kind: &str, items: Vec<Value>, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv}, "items": items})
}

// ----- the Pod index -------------------------------------------------------------------------

fn names(index: &SharedPods) -> Vec<String> {
    index
        .lock()
        .unwrap()
        .entries()
        .iter()
        .map(|e| format!("{}/{}", e.namespace, e.name))
        .collect()
}

#[tokio::test]
async fn pod_index_follows_list_watch_and_relist() {
    let (client, mut api) = mock();
    let index: SharedPods = Arc::new(Mutex::new(PodIndex::new()));
    let (ready_tx, mut ready) = watch::channel(false);
    let task = tokio::spawn(run_pod_index(client, Arc::clone(&index), ready_tx));

    // The list, in two pages; nothing is in the index, and it is not ready, before both.
    let page = api.next().await.expect(Method::GET, PODS);
    assert!(!page.is_watch(), "{}", page.uri);
    let mut first = list("PodList", vec![pod("shop", "web-1", "nginx:1", "3")], "10");
    first["metadata"]["continue"] = json!("page-2");
    page.ok(first);
    let page = api.next().await.expect(Method::GET, PODS);
    assert_eq!(page.param("continue").as_deref(), Some("page-2"));
    assert!(names(&index).is_empty(), "half a list is visible");
    assert!(!*ready.borrow());
    page.ok(list(
        "PodList",
        vec![pod("shop", "web-2", "nginx:1", "4")],
        "10",
    ));

    let watch = api.next().await.expect(Method::GET, PODS);
    assert!(watch.is_watch());
    assert_eq!(watch.param("resourceVersion").as_deref(), Some("10"));
    ready.wait_for(|r| *r).await.unwrap();
    assert_eq!(names(&index), ["shop/web-1", "shop/web-2"]);
    {
        // Replicas share one shape.
        let entries = index.lock().unwrap().entries();
        assert!(Arc::ptr_eq(&entries[0].shape, &entries[1].shape));
    }

    // Applied, deleted, and finished Pods.
    let mut finished = pod("shop", "web-1", "nginx:1", "12");
    finished["status"]["phase"] = json!("Succeeded");
    let mut deleted = pod("shop", "web-2", "nginx:1", "13");
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    watch.watch_events(&[
        json!({"type": "ADDED", "object": pod("dev", "api-1", "httpd:2", "11")}),
        json!({"type": "MODIFIED", "object": finished}),
        json!({"type": "DELETED", "object": deleted}),
    ]);
    let watch = api.next().await.expect(Method::GET, PODS);
    assert_eq!(watch.param("resourceVersion").as_deref(), Some("13"));
    assert_eq!(names(&index), ["dev/api-1"]);

    // 410 Gone: a re-list, which replaces the index only once complete.
    watch.watch_events(&[json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410}})]);
    let relist = api.next().await.expect(Method::GET, PODS);
    assert!(!relist.is_watch());
    assert_eq!(names(&index), ["dev/api-1"]);
    relist.ok(list(
        "PodList",
        vec![pod("ops", "job-1", "busybox:1", "30")],
        "30",
    ));
    let _watch = api.next().await.expect(Method::GET, PODS);
    assert_eq!(names(&index), ["ops/job-1"]);
    task.abort();
}

// ----- passes --------------------------------------------------------------------------------

/// The stores a pass reads, filled as the operator's watches would fill them.
struct Cluster {
    snapshot: SharedSnapshot,
    policies: Writer<ImagePolicy>,
    /// Kept so that the namespace store stays ready.
    _namespaces: Writer<Namespace>,
    pods: SharedPods,
    metrics: Arc<Metrics>,
}

impl Cluster {
    fn new(
        policies: &[ImagePolicy],
    ) -> (
        Cluster,
        reflector::Store<ImagePolicy>,
        reflector::Store<Namespace>,
    ) {
        let (policy_store, mut policy_writer) = reflector::store();
        for p in policies {
            policy_writer.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        }
        let (ns_store, mut ns_writer) = reflector::store();
        ns_writer.apply_watcher_event(&watcher::Event::Init);
        for (name, labels) in [("prod", json!({"env": "prod"})), ("dev", json!({}))] {
            let ns: Namespace = serde_json::from_value(namespace(name, labels, "1")).unwrap();
            ns_writer.apply_watcher_event(&watcher::Event::InitApply(ns));
        }
        ns_writer.apply_watcher_event(&watcher::Event::InitDone);
        let (snapshot, errors) = Snapshot::compile(policies, Settings::default());
        assert!(errors.is_empty());
        let cluster = Cluster {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            policies: policy_writer,
            _namespaces: ns_writer,
            pods: Arc::new(Mutex::new(PodIndex::new())),
            metrics: Arc::new(Metrics::new()),
        };
        (cluster, policy_store, ns_store)
    }

    fn auditor(
        &self,
        client: kube::Client,
        policies: reflector::Store<ImagePolicy>,
        namespaces: reflector::Store<Namespace>,
        reports: bool,
    ) -> Auditor {
        Auditor::new(
            client,
            AuditConfig {
                interval: Duration::from_secs(600),
                policy_reports: reports,
            },
            Sources {
                snapshot: Arc::clone(&self.snapshot),
                policies,
                namespaces,
                pods: Arc::clone(&self.pods),
            },
            Arc::clone(&self.metrics),
        )
    }

    fn set_pods(&self, pods: &[Value]) {
        let mut index = self.pods.lock().unwrap();
        index.apply(watcher::Event::Init);
        for p in pods {
            let p: PodObject = serde_json::from_value(p.clone()).unwrap();
            index.apply(watcher::Event::InitApply(p));
        }
        index.apply(watcher::Event::InitDone);
    }

    /// Makes the policy store show `status` written on `name`, as the watch would.
    fn show_status(&mut self, name: &str, body: &Value) {
        let mut p = self
            .policies
            .as_reader()
            .get(&reflector::ObjectRef::new(name))
            .map(|p| ImagePolicy::clone(&p))
            .unwrap();
        let mut status = p.status.take().unwrap_or_default();
        status.audit = serde_json::from_value(body["status"]["audit"].clone()).unwrap();
        p.status = Some(status);
        self.policies.apply_watcher_event(&watcher::Event::Apply(p));
    }
}

fn gauge(metrics: &Metrics, policy: &str, mode: &str) -> Option<f64> {
    let wanted = format!("imagegate_audit_violating_pods{{policy=\"{policy}\",mode=\"{mode}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&wanted).map(|v| v.parse().unwrap()))
}

/// Runs one pass, handing its requests to `answer` in turn; returns the pass's result.
async fn pass(
    auditor: Auditor,
    api: &mut ApiServer,
    mut answer: impl FnMut(Call),
) -> (Auditor, bool) {
    let mut auditor = auditor;
    let task = spawn(async move {
        let ok = auditor.pass().await;
        (auditor, ok)
    });
    while let Some(call) = api.next_opt(Duration::from_millis(300)).await {
        answer(call);
    }
    join(task).await
}

/// Runs one pass that writes, answering as the API server would; returns the bodies written.
async fn pass_writes(
    auditor: Auditor,
    api: &mut ApiServer,
    stored: &ImagePolicy,
) -> (Auditor, Vec<Value>) {
    let mut bodies = Vec::new();
    let (auditor, _) = pass(auditor, api, |call| {
        bodies.push(call.body.clone());
        answer_write(call, stored);
    })
    .await;
    (auditor, bodies)
}

/// Answers a status patch with the policy as stored, an Event or a report with its body.
fn answer_write(call: Call, stored: &ImagePolicy) {
    if call.path().ends_with("/status") {
        let mut p = serde_json::to_value(stored).unwrap();
        p["status"] = call.body["status"].clone();
        call.ok(p);
    } else {
        let body = call.body.clone();
        call.respond(201, body);
    }
}

#[tokio::test]
async fn status_audit_is_written_when_it_changes_with_an_event_when_violations_appear() {
    let prod = policy("prod", "registry.corp.example/**");
    let (mut cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&prod));
    let (client, mut api) = mock();
    cluster.set_pods(&[
        pod("prod", "web-1", "nginx:1.25", "1"),
        pod("prod", "web-2", "nginx:1.25", "1"),
        pod("prod", "ok-1", "registry.corp.example/app:1", "1"),
        pod("dev", "other", "nginx:1.25", "1"),
    ]);
    let auditor = cluster.auditor(client, store, ns_store, false);

    // First pass: status.audit written by its own field manager, and an Event.
    let mut calls = Vec::new();
    let (auditor, ok) = pass(auditor, &mut api, |call| {
        calls.push((call.method.clone(), call.uri.clone(), call.body.clone()));
        answer_write(call, &prod);
    })
    .await;
    assert!(ok);
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let (method, uri, body) = &calls[0];
    assert_eq!(
        (method, uri.split('?').next().unwrap()),
        (&Method::PATCH, status_path("prod").as_str())
    );
    assert!(
        uri.contains(&format!("fieldManager={AUDIT_FIELD_MANAGER}")),
        "{uri}"
    );
    assert!(uri.contains("force=true"), "{uri}");
    assert_eq!(body["metadata"], json!({"name": "prod"}));
    let status = body["status"].as_object().unwrap();
    assert_eq!(
        status.keys().collect::<Vec<_>>(),
        ["audit"],
        "only status.audit: {body}"
    );
    let audit = &body["status"]["audit"];
    assert_eq!(audit["podsEvaluated"], 3);
    assert_eq!(audit["violatingPods"], 2);
    assert!(audit["lastAuditTime"].is_string());
    let violations = audit["violations"].as_array().unwrap();
    assert_eq!(
        violations.len(),
        1,
        "the two replicas are one entry: {audit}"
    );
    assert_eq!(
        violations[0],
        json!({"namespace": "prod", "pod": "web-1", "owner": "ReplicaSet/web-7d",
               "containerType": "containers", "container": "app", "image": "nginx:1.25",
               "rule": "allowedImages", "message": violations[0]["message"].clone()})
    );
    let (method, uri, event) = &calls[1];
    assert_eq!(
        (method, uri.split('?').next().unwrap()),
        (&Method::POST, EVENTS)
    );
    assert_eq!(event["reason"], "AuditViolations");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["name"], "prod");
    assert_eq!(event["regarding"]["uid"], "prod-uid");
    assert!(
        event["note"].as_str().unwrap().starts_with("The audit found 2 running Pods violating this policy, e.g. Pod prod/web-1 (ReplicaSet/web-7d): [allowedImages]"),
        "{event}"
    );
    assert_eq!(gauge(&cluster.metrics, "prod", "Enforce"), Some(2.0));
    let first_write = calls[0].2.clone();

    // Nothing changed: no write at all, whether or not the watch has shown the status yet.
    let (auditor, ok) = pass(auditor, &mut api, |call| {
        panic!("unexpected {} {}", call.method, call.uri)
    })
    .await;
    assert!(ok);
    cluster.show_status("prod", &first_write);
    let (auditor, _) = pass(auditor, &mut api, |call| {
        panic!("unexpected {} {}", call.method, call.uri)
    })
    .await;

    // One more violating Pod: written, but no Event (there were violations already).
    cluster.set_pods(&[
        pod("prod", "web-1", "nginx:1.25", "1"),
        pod("prod", "web-2", "nginx:1.25", "1"),
        pod("prod", "web-3", "nginx:1.25", "1"),
        pod("prod", "ok-1", "registry.corp.example/app:1", "1"),
    ]);
    let (auditor, calls) = pass_writes(auditor, &mut api, &prod).await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["status"]["audit"]["violatingPods"], 3);
    cluster.show_status("prod", &calls[0]);
    assert_eq!(gauge(&cluster.metrics, "prod", "Enforce"), Some(3.0));

    // The violations go: written with none listed.
    cluster.set_pods(&[pod("prod", "ok-1", "registry.corp.example/app:1", "1")]);
    let (auditor, calls) = pass_writes(auditor, &mut api, &prod).await;
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["status"]["audit"]["violatingPods"], 0);
    assert!(calls[0]["status"]["audit"].get("violations").is_none());
    cluster.show_status("prod", &calls[0]);

    // ... and come back: an Event again.
    cluster.set_pods(&[pod("prod", "web-9", "nginx:1.25", "1")]);
    let mut paths = Vec::new();
    let (_auditor, _) = pass(auditor, &mut api, |call| {
        paths.push(call.path().to_owned());
        answer_write(call, &prod);
    })
    .await;
    assert_eq!(paths, [status_path("prod"), EVENTS.to_owned()]);
}

#[tokio::test]
async fn gauge_series_follow_policies_and_modes() {
    let a = policy("a", "registry.corp.example/**");
    let (mut cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&a));
    let (client, mut api) = mock();
    cluster.set_pods(&[pod("prod", "web-1", "nginx:1.25", "1")]);
    let auditor = cluster.auditor(client, store, ns_store, false);
    let (auditor, _) = pass(auditor, &mut api, |call| answer_write(call, &a)).await;
    assert_eq!(gauge(&cluster.metrics, "a", "Enforce"), Some(1.0));

    // The policy switches to Audit mode: the Enforce series goes.
    let mut audit_mode = a.clone();
    audit_mode.spec.mode = Some(imagegate::policy::Mode::Audit);
    cluster
        .policies
        .apply_watcher_event(&watcher::Event::Apply(audit_mode.clone()));
    let (snapshot, _) = Snapshot::compile(&[audit_mode.clone()], Settings::default());
    cluster.snapshot.store(Arc::new(snapshot));
    let (_auditor, _) = pass(auditor, &mut api, |call| answer_write(call, &audit_mode)).await;
    assert_eq!(gauge(&cluster.metrics, "a", "Audit"), Some(1.0));
    assert_eq!(gauge(&cluster.metrics, "a", "Enforce"), None);
}

/// A mock API server that applies server-side apply as the API server does for a status
/// whose top-level fields belong to managers: an apply sets the fields in its body, and
/// removes the fields its manager set before and left out of this body.
#[derive(Default)]
struct Applied {
    status: serde_json::Map<String, Value>,
    owners: BTreeMap<String, String>,
}

impl Applied {
    fn apply(&mut self, manager: &str, status: &Value) {
        let body = status.as_object().cloned().unwrap_or_default();
        let mine: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, m)| *m == manager)
            .map(|(f, _)| f.clone())
            .collect();
        for field in mine {
            if !body.contains_key(&field) {
                self.status.remove(&field);
                self.owners.remove(&field);
            }
        }
        for (field, value) in body {
            self.owners.insert(field.clone(), manager.to_owned());
            self.status.insert(field, value);
        }
    }
}

#[tokio::test]
async fn conditions_and_audit_each_survive_the_other_writer() {
    let prod = policy("prod", "registry.corp.example/**");
    let (cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&prod));
    let (client, mut api) = mock();
    cluster.set_pods(&[pod("prod", "web-1", "nginx:1.25", "1")]);
    let mut applied = Applied::default();
    let record = |call: Call, applied: &mut Applied| {
        if call.path().ends_with("/status") {
            let manager = call.param("fieldManager").unwrap();
            applied.apply(&manager, &call.body["status"]);
        }
        answer_write(call, &prod);
    };

    // The status writer first, then the audit, then the status writer again (a new generation).
    let task = spawn({
        let (client, prod) = (client.clone(), prod.clone());
        async move { status::reconcile(client, &prod, Ok(()), None).await }
    });
    record(api.next().await, &mut applied);
    assert!(join(task).await.unwrap());
    let auditor = cluster.auditor(client.clone(), store, ns_store, false);
    let (_auditor, _) = pass(auditor, &mut api, |call| record(call, &mut applied)).await;
    let mut newer = prod.clone();
    newer.metadata.generation = Some(2);
    let task = spawn({
        let client = client.clone();
        async move { status::reconcile(client, &newer, Ok(()), None).await }
    });
    record(api.next().await, &mut applied);
    assert!(join(task).await.unwrap());

    assert_eq!(
        applied.owners.get("conditions").map(String::as_str),
        Some("imagegate")
    );
    assert_eq!(
        applied.owners.get("audit").map(String::as_str),
        Some(AUDIT_FIELD_MANAGER)
    );
    assert_eq!(applied.status["observedGeneration"], 2);
    assert_eq!(applied.status["conditions"][0]["type"], "Ready");
    assert_eq!(applied.status["audit"]["violatingPods"], 1);
}

// ----- PolicyReports -------------------------------------------------------------------------

fn report_list(namespaces: &[&str]) -> Value {
    let items: Vec<Value> = namespaces
        .iter()
        .map(|ns| {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                         "metadata": {"name": "imagegate", "namespace": ns}})
        })
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
           "metadata": {"resourceVersion": "5"}, "items": items})
}

#[tokio::test]
async fn policy_reports_are_created_left_alone_and_emptied() {
    let prod = policy("prod", "registry.corp.example/**");
    let (cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&prod));
    let (client, mut api) = mock();
    cluster.set_pods(&[
        pod("prod", "web-1", "nginx:1.25", "1"),
        pod("prod", "ok-1", "registry.corp.example/app:1", "1"),
        // No policy applies in dev: no report there.
        pod("dev", "x", "nginx:1.25", "1"),
    ]);
    // A report from before a restart, in a namespace without results now.
    let mut auditor = cluster.auditor(client, store, ns_store, true);

    let mut reports = BTreeMap::new();
    let mut listed = 0;
    (auditor, _) = pass(auditor, &mut api, |call| {
        if call.path() == REPORTS {
            listed += 1;
            assert!(
                call.param("labelSelector").as_deref()
                    == Some("app.kubernetes.io/managed-by=imagegate"),
                "{}",
                call.uri
            );
            call.ok(report_list(&["dev"]));
        } else if call.path().contains("/policyreports/") {
            assert!(
                call.uri
                    .contains(&format!("fieldManager={AUDIT_FIELD_MANAGER}"))
            );
            reports.insert(call.path().to_owned(), call.body.clone());
            let body = call.body.clone();
            call.respond(201, body);
        } else {
            answer_write(call, &prod);
        }
    })
    .await;
    assert_eq!(listed, 1);
    assert_eq!(reports.len(), 2, "{:?}", reports.keys());
    let report = &reports[&report_path("prod")];
    assert_eq!(report["apiVersion"], "wgpolicyk8s.io/v1alpha2");
    assert_eq!(report["kind"], "PolicyReport");
    assert_eq!(report["metadata"]["name"], "imagegate");
    assert_eq!(
        report["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "imagegate"
    );
    assert_eq!(
        report["summary"],
        json!({"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 0})
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0]["result"], "fail", "failures first: {results:#?}");
    assert_eq!(results[0]["policy"], "prod");
    assert_eq!(results[0]["rule"], "allowedImages");
    assert_eq!(results[0]["properties"]["rule"], "allowedImages");
    assert_eq!(results[0]["properties"]["mode"], "Enforce");
    assert_eq!(results[0]["source"], "imagegate");
    assert_eq!(
        results[0]["resources"][0],
        json!({"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "prod"})
    );
    assert!(results[0]["timestamp"]["seconds"].as_i64().unwrap() > 0);
    assert_eq!(results[1]["result"], "pass");
    assert_eq!(results[1]["resources"][0]["name"], "ok-1");
    // The old report is emptied, not left with stale results.
    let emptied = &reports[&report_path("dev")];
    assert_eq!(emptied["results"], json!([]));
    assert_eq!(emptied["summary"]["fail"], 0);

    // Nothing changed: no report written (status.audit is not written either: the pass
    // remembers what it wrote until the watch shows it).
    (auditor, _) = pass(auditor, &mut api, |call| {
        panic!("unexpected {} {}", call.method, call.uri)
    })
    .await;

    // The violating Pod goes: its namespace's report is rewritten without it.
    cluster.set_pods(&[pod("prod", "ok-1", "registry.corp.example/app:1", "1")]);
    let mut written = Vec::new();
    (_, _) = pass(auditor, &mut api, |call| {
        if call.path().contains("/policyreports/") {
            written.push(call.body.clone());
            let body = call.body.clone();
            call.respond(200, body);
        } else {
            answer_write(call, &prod);
        }
    })
    .await;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0]["summary"]["fail"], 0);
    assert_eq!(written[0]["summary"]["pass"], 1);
}

#[tokio::test]
async fn no_policy_reports_without_their_crd_until_it_is_installed() {
    let prod = policy("prod", "registry.corp.example/**");
    let (cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&prod));
    let (client, mut api) = mock();
    cluster.set_pods(&[pod("prod", "web-1", "nginx:1.25", "1")]);
    let auditor = cluster
        .auditor(client, store, ns_store, true)
        .crd_recheck(Duration::from_secs(2));

    // Absent: looked for once, nothing written, and the pass is not a failure to retry.
    let mut lists = 0;
    let (auditor, ok) = pass(auditor, &mut api, |call| {
        if call.path() == REPORTS {
            lists += 1;
            call.error(404, "NotFound");
        } else {
            assert!(!call.path().contains("policyreports"), "{}", call.uri);
            answer_write(call, &prod);
        }
    })
    .await;
    assert!(ok);
    assert_eq!(lists, 1);
    // Within the re-check delay: not even looked for.
    let (auditor, _) = pass(auditor, &mut api, |call| {
        panic!("unexpected {} {}", call.method, call.uri)
    })
    .await;

    // Installed meanwhile: after the delay it is found and the report written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut written = Vec::new();
    let (_auditor, ok) = pass(auditor, &mut api, |call| {
        if call.path() == REPORTS {
            call.ok(report_list(&[]));
        } else {
            written.push(call.path().to_owned());
            let body = call.body.clone();
            call.respond(201, body);
        }
    })
    .await;
    assert!(ok);
    assert_eq!(written, [report_path("prod")]);
}

// ----- triggers ------------------------------------------------------------------------------

#[tokio::test]
async fn namespace_label_changes_are_signalled() {
    let (client, mut api) = mock();
    let (_store, writer) = reflector::store::<Namespace>();
    let (changes_tx, mut changes) = watch::channel(0u64);
    let task = tokio::spawn(operator::watch_namespaces(client, writer, changes_tx));
    api.next()
        .await
        .expect(Method::GET, "/api/v1/namespaces")
        .ok(list(
            "NamespaceList",
            vec![namespace("prod", json!({"env": "prod"}), "3")],
            "10",
        ));
    let watch = api.next().await.expect(Method::GET, "/api/v1/namespaces");
    assert!(
        !changes.has_changed().unwrap(),
        "the first list is no change"
    );
    watch.watch_events(&[
        // Same labels (an annotation changed), and a new namespace: no change.
        json!({"type": "MODIFIED", "object": namespace("prod", json!({"env": "prod"}), "11")}),
        json!({"type": "ADDED", "object": namespace("fresh", json!({"env": "dev"}), "12")}),
    ]);
    let watch = api.next().await.expect(Method::GET, "/api/v1/namespaces");
    assert!(!changes.has_changed().unwrap());
    watch.watch_events(&[json!({"type": "MODIFIED",
                                "object": namespace("fresh", json!({"env": "prod"}), "13")})]);
    let _watch = api.next().await.expect(Method::GET, "/api/v1/namespaces");
    assert!(changes.has_changed().unwrap(), "relabelled");
    changes.borrow_and_update();
    task.abort();
}

fn passes(metrics: &Metrics) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("imagegate_audit_passes_total "))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_burst_of_changes_makes_one_pass() {
    let prod = policy("prod", "registry.corp.example/**");
    let (cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&prod));
    let (client, api) = mock();
    // Writes answered in the background; this test counts passes.
    let server = tokio::spawn(async move {
        let mut api = api;
        while let Some(call) = api.next_opt(Duration::from_secs(60)).await {
            answer_write(call, &prod);
        }
    });
    cluster.set_pods(&[pod("prod", "web-1", "nginx:1.25", "1")]);
    let readiness = Arc::new(Readiness::default());
    let (rebuilt_tx, rebuilt) = watch::channel(Default::default());
    let (ns_tx, namespaces) = watch::channel(0u64);
    let (pods_tx, pods_ready) = watch::channel(false);
    let auditor = cluster.auditor(client, store, ns_store, false);
    let task = tokio::spawn(run_audit(
        auditor,
        Triggers {
            rebuilt,
            namespaces,
            pods_ready,
            readiness: Arc::clone(&readiness),
        },
    ));

    // Nothing before policies and Pods are listed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(passes(&cluster.metrics), 0.0);
    pods_tx.send_replace(true);
    readiness.set_policies_loaded();
    rebuilt_tx.send_modify(|r: &mut operator::index::Rebuilt| r.count += 1);
    wait_for_passes(&cluster.metrics, 1.0).await;

    // A burst of policy and namespace changes: one pass, after the debounce.
    let before = tokio::time::Instant::now();
    for _ in 0..5 {
        rebuilt_tx.send_modify(|r| r.count += 1);
        ns_tx.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_passes(&cluster.metrics, 2.0).await;
    assert!(
        before.elapsed() >= AUDIT_DEBOUNCE,
        "passed before the debounce"
    );
    tokio::time::sleep(AUDIT_DEBOUNCE + Duration::from_millis(500)).await;
    assert_eq!(passes(&cluster.metrics), 2.0, "one pass per burst");
    task.abort();
    server.abort();
}

async fn wait_for_passes(metrics: &Metrics, n: f64) {
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    while passes(metrics) < n {
        assert!(tokio::time::Instant::now() < deadline, "no pass {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- signatures on what runs ---------------------------------------------------------------

#[tokio::test]
async fn signatures_are_judged_on_the_digest_each_pod_runs() {
    // The tag was signed when the first Pod started; then it moved to an unsigned image.
    let Some(moved) = registry_support::MovedTag::new().await else {
        return;
    };
    let (registry, release, tag) = (&moved.registry, &moved.key, &moved.tag);
    let (signed, unsigned) = (&moved.signed, &moved.unsigned);
    let host = registry.host.clone();

    let sig: ImagePolicy = serde_json::from_value(json!({
        "apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": "sig", "uid": "sig-uid", "generation": 1, "resourceVersion": "1"},
        "spec": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
                 "images": [format!("{host}/team/**")],
                 "verifySignatures": [{"name": "release",
                                       "key": {"publicKey": release.public_pem}}]},
    }))
    .unwrap();
    let (cluster, store, ns_store) = Cluster::new(std::slice::from_ref(&sig));
    let running = |name: &str, digest: &str| {
        let mut p = pod("prod", name, tag, "1");
        p["status"]["containerStatuses"][0]["imageID"] = json!(format!("{tag}@{digest}"));
        p
    };
    cluster.set_pods(&[running("old", signed), running("new", unsigned)]);
    let adapter = imagegate::registry::Registry::new(
        imagegate::registry::Config {
            client: registry.client_config(),
            ..Default::default()
        },
        Some(Arc::clone(&cluster.metrics)),
    )
    .unwrap();
    let (client, mut api) = mock();
    let mut auditor = cluster
        .auditor(client, store, ns_store, false)
        .with_evidence(Arc::new(adapter));
    let task = spawn(async move { auditor.pass().await });

    // The registry is asked first; then the status is written, with an Event.
    let write = api.next().await.expect(Method::PATCH, &status_path("sig"));
    let audit = write.body["status"]["audit"].clone();
    answer_write(write, &sig);
    let event = api.next().await.expect(Method::POST, EVENTS);
    answer_write(event, &sig);
    assert!(join(task).await, "the pass succeeded");
    api.no_more().await;

    assert_eq!(audit["podsEvaluated"], 2);
    assert_eq!(audit["violatingPods"], 1, "{audit:#}");
    let v = &audit["violations"][0];
    assert_eq!(
        (&v["pod"], &v["rule"], &v["image"]),
        (&json!("new"), &json!("verifySignatures"), &json!(tag)),
        "{audit:#}"
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            ", which runs {unsigned}, has no verified signature: release: "
        )),
        "{message}"
    );
    assert!(
        message.ends_with(&format!(
            "sign {host}/team/app@{unsigned} with this entry's key"
        )),
        "{message}"
    );
    // Both running digests were judged by the adapter (and counted, as admission's are).
    let metrics = cluster.metrics.encode();
    for result in ["verified", "not_verified"] {
        assert!(
            metrics.contains(&format!(
                "imagegate_signature_verifications_total{{result=\"{result}\",source=\"fresh\"}} 1"
            )),
            "{metrics}"
        );
    }
}
