//! The webhook configurations' reconcile against a mock API server: for the validating one and
//! the mutating one, creation, no write when up to date, drift repair, the unmanaged
//! annotation, the owner reference; for the mutating one also its deletion while no policy asks
//! for mutation, and its loop following the policies and repairing drift through its watch.

mod support;

use http::Method;
use imagegate::operator::webhook_config::{
    self, Endpoint, FailurePolicy, Outcome, WebhookParams, desired,
};
use serde_json::{Value, json};
use support::{join, mock, spawn};

const VWC: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/imagegate";
const ROLE: &str = "/apis/rbac.authorization.k8s.io/v1/clusterroles/imagegate";
const CA: &str = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";

fn params() -> WebhookParams {
    WebhookParams {
        name: "imagegate".into(),
        endpoint: Endpoint::Service {
            namespace: "imagegate-system".into(),
            name: "imagegate".into(),
        },
        failure_policy: FailurePolicy::Fail,
        timeout_seconds: 10,
        excluded_namespaces: vec!["kube-system".into()],
        namespace: "imagegate-system".into(),
    }
}

/// The object as the API server would return it: the desired one plus server fields.
fn stored(ca: &str) -> Value {
    let mut v = serde_json::to_value(desired(&params(), ca, None)).unwrap();
    v["apiVersion"] = json!("admissionregistration.k8s.io/v1");
    v["kind"] = json!("ValidatingWebhookConfiguration");
    v["metadata"]["resourceVersion"] = json!("5");
    v["metadata"]["uid"] = json!("vwc-uid");
    v
}

fn ca_bundle_b64(v: &Value, hook: usize) -> String {
    v["webhooks"][hook]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn b64(s: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_apply(call: &support::Call) {
    assert_eq!(call.method, Method::PATCH);
    assert_eq!(call.path(), VWC);
    assert!(
        call.query().contains("fieldManager=imagegate"),
        "{}",
        call.uri
    );
    assert!(call.query().contains("force=true"), "{}", call.uri);
    assert_eq!(call.body["kind"], "ValidatingWebhookConfiguration");
    assert_eq!(call.body["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(call.body["webhooks"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn creates_missing_configuration_with_ca_bundle() {
    let (client, mut api) = mock();
    let task = spawn(async move { webhook_config::reconcile(client, &params(), CA, None).await });
    api.next()
        .await
        .expect(Method::GET, VWC)
        .error(404, "NotFound");
    let apply = api.next().await;
    assert_apply(&apply);
    for hook in 0..3 {
        assert_eq!(ca_bundle_b64(&apply.body, hook), b64(CA));
    }
    apply.echo("1");
    assert_eq!(join(task).await.unwrap(), Outcome::Applied);
    api.no_more().await;
}

#[tokio::test]
async fn up_to_date_configuration_is_not_written() {
    let (client, mut api) = mock();
    let task = spawn(async move { webhook_config::reconcile(client, &params(), CA, None).await });
    api.next().await.expect(Method::GET, VWC).ok(stored(CA));
    assert_eq!(join(task).await.unwrap(), Outcome::UpToDate);
    api.no_more().await;
}

async fn repaired(tamper: impl FnOnce(&mut Value)) {
    let (client, mut api) = mock();
    let task = spawn(async move { webhook_config::reconcile(client, &params(), CA, None).await });
    let mut current = stored(CA);
    tamper(&mut current);
    api.next().await.expect(Method::GET, VWC).ok(current);
    let apply = api.next().await;
    assert_apply(&apply);
    // The full desired object is applied.
    let want = serde_json::to_value(desired(&params(), CA, None)).unwrap();
    assert_eq!(apply.body["webhooks"], want["webhooks"]);
    apply.echo("6");
    assert_eq!(join(task).await.unwrap(), Outcome::Applied);
    api.no_more().await;
}

#[tokio::test]
async fn repairs_deleted_webhook() {
    repaired(|v| {
        v["webhooks"].as_array_mut().unwrap().remove(0);
    })
    .await;
}

#[tokio::test]
async fn repairs_removed_subresource_rule() {
    repaired(|v| v["webhooks"][0]["rules"][0]["resources"] = json!(["pods"])).await;
}

#[tokio::test]
async fn repairs_changed_failure_policy() {
    repaired(|v| v["webhooks"][1]["failurePolicy"] = json!("Ignore")).await;
}

#[tokio::test]
async fn repairs_wrong_ca_bundle() {
    repaired(|v| v["webhooks"][2]["clientConfig"]["caBundle"] = json!(b64("other"))).await;
}

#[tokio::test]
async fn unmanaged_annotation_is_respected() {
    let (client, mut api) = mock();
    let task = spawn(async move { webhook_config::reconcile(client, &params(), CA, None).await });
    let mut current = stored(CA);
    current["metadata"]["annotations"] = json!({"imagegate.dev/unmanaged": "true"});
    current["webhooks"][0]["failurePolicy"] = json!("Ignore");
    api.next().await.expect(Method::GET, VWC).ok(current);
    assert_eq!(join(task).await.unwrap(), Outcome::Unmanaged);
    api.no_more().await;
}

#[tokio::test]
async fn owner_reference_points_at_the_cluster_role() {
    let (client, mut api) = mock();
    let task = spawn(async move {
        webhook_config::reconcile(client, &params(), CA, Some("imagegate")).await
    });
    api.next().await.expect(Method::GET, ROLE).ok(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "imagegate", "uid": "role-uid-1"}, "rules": []
    }));
    // Present but without the owner reference: drift.
    api.next().await.expect(Method::GET, VWC).ok(stored(CA));
    let apply = api.next().await;
    assert_apply(&apply);
    assert_eq!(
        apply.body["metadata"]["ownerReferences"],
        json!([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "name": "imagegate", "uid": "role-uid-1"}])
    );
    apply.echo("2");
    assert_eq!(join(task).await.unwrap(), Outcome::Applied);
    api.no_more().await;
}

#[tokio::test]
async fn nothing_is_written_once_the_owner_is_gone() {
    let (client, mut api) = mock();
    let task = spawn(async move {
        webhook_config::reconcile(client, &params(), CA, Some("imagegate")).await
    });
    api.next()
        .await
        .expect(Method::GET, ROLE)
        .error(404, "NotFound");
    assert_eq!(join(task).await.unwrap(), Outcome::OwnerGone);
    api.no_more().await;
}

#[tokio::test]
async fn api_errors_are_reported_not_swallowed() {
    let (client, mut api) = mock();
    let task = spawn(async move { webhook_config::reconcile(client, &params(), CA, None).await });
    api.next()
        .await
        .expect(Method::GET, VWC)
        .error(503, "ServiceUnavailable");
    assert!(join(task).await.is_err());
}

// ----- the MutatingWebhookConfiguration ------------------------------------------------------

const MWC: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/imagegate";

/// The mutating configuration as the API server would return it.
fn stored_mutating(ca: &str) -> Value {
    let mut v =
        serde_json::to_value(webhook_config::desired_mutating(&params(), ca, None)).unwrap();
    v["apiVersion"] = json!("admissionregistration.k8s.io/v1");
    v["kind"] = json!("MutatingWebhookConfiguration");
    v["metadata"]["resourceVersion"] = json!("8");
    v["metadata"]["uid"] = json!("mwc-uid");
    v
}

fn reconcile_mutating(
    client: kube::Client,
    wanted: bool,
) -> tokio::task::JoinHandle<Result<Outcome, imagegate::operator::Error>> {
    spawn(
        async move { webhook_config::reconcile_mutating(client, &params(), CA, None, wanted).await },
    )
}

fn assert_mutating_apply(call: &support::Call) {
    assert_eq!(call.method, Method::PATCH);
    assert_eq!(call.path(), MWC);
    assert!(
        call.query().contains("fieldManager=imagegate") && call.query().contains("force=true"),
        "{}",
        call.uri
    );
    assert_eq!(call.body["kind"], "MutatingWebhookConfiguration");
    assert_eq!(call.body["apiVersion"], "admissionregistration.k8s.io/v1");
    let want = serde_json::to_value(webhook_config::desired_mutating(&params(), CA, None)).unwrap();
    assert_eq!(call.body["webhooks"], want["webhooks"]);
    assert_eq!(
        call.body["webhooks"][0]["clientConfig"]["caBundle"],
        b64(CA)
    );
}

#[tokio::test]
async fn mutating_configuration_is_created_when_wanted() {
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, true);
    api.next()
        .await
        .expect(Method::GET, MWC)
        .error(404, "NotFound");
    let apply = api.next().await;
    assert_mutating_apply(&apply);
    apply.echo("1");
    assert_eq!(join(task).await.unwrap(), Outcome::Applied);
    api.no_more().await;
}

#[tokio::test]
async fn mutating_configuration_up_to_date_is_not_written() {
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, true);
    api.next()
        .await
        .expect(Method::GET, MWC)
        .ok(stored_mutating(CA));
    assert_eq!(join(task).await.unwrap(), Outcome::UpToDate);
    api.no_more().await;
}

#[tokio::test]
async fn mutating_configuration_drift_is_repaired() {
    type Tamper = fn(&mut Value);
    let cases: [(&str, Tamper); 4] = [
        ("reinvocation", |v| {
            v["webhooks"][0]["reinvocationPolicy"] = json!("Never")
        }),
        ("rule", |v| {
            v["webhooks"][0]["rules"].as_array_mut().unwrap().pop();
        }),
        ("caBundle", |v| {
            v["webhooks"][0]["clientConfig"]["caBundle"] = json!(b64("other"))
        }),
        ("excluded namespaces", |v| {
            v["webhooks"][0]["namespaceSelector"] = json!({})
        }),
    ];
    for (what, tamper) in cases {
        let (client, mut api) = mock();
        let task = reconcile_mutating(client, true);
        let mut current = stored_mutating(CA);
        tamper(&mut current);
        api.next().await.expect(Method::GET, MWC).ok(current);
        let apply = api.next().await;
        assert_mutating_apply(&apply);
        apply.echo("9");
        assert_eq!(join(task).await.unwrap(), Outcome::Applied, "{what}");
        api.no_more().await;
    }
}

#[tokio::test]
async fn mutating_configuration_is_deleted_when_no_policy_asks_for_it() {
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, false);
    api.next()
        .await
        .expect(Method::GET, MWC)
        .ok(stored_mutating(CA));
    let delete = api.next().await.expect(Method::DELETE, MWC);
    // Only the object read is deleted: not one another replica re-applied meanwhile.
    assert_eq!(
        delete.body["preconditions"],
        json!({"resourceVersion": "8", "uid": "mwc-uid"}),
        "{}",
        delete.body
    );
    delete.ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}));
    assert_eq!(join(task).await.unwrap(), Outcome::Deleted);
    api.no_more().await;

    // Absent, or gone by the time of the delete: nothing to do.
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, false);
    api.next()
        .await
        .expect(Method::GET, MWC)
        .error(404, "NotFound");
    assert_eq!(join(task).await.unwrap(), Outcome::Absent);
    api.no_more().await;
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, false);
    api.next()
        .await
        .expect(Method::GET, MWC)
        .ok(stored_mutating(CA));
    api.next()
        .await
        .expect(Method::DELETE, MWC)
        .error(404, "NotFound");
    assert_eq!(join(task).await.unwrap(), Outcome::Absent);

    // Changed in between (the precondition fails): an error, so the loop looks again.
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, false);
    api.next()
        .await
        .expect(Method::GET, MWC)
        .ok(stored_mutating(CA));
    api.next()
        .await
        .expect(Method::DELETE, MWC)
        .error(409, "Conflict");
    assert!(join(task).await.is_err());
}

#[tokio::test]
async fn mutating_configuration_unmanaged_or_foreign_is_left_alone() {
    for wanted in [true, false] {
        let (client, mut api) = mock();
        let task = reconcile_mutating(client, wanted);
        let mut current = stored_mutating(CA);
        current["metadata"]["annotations"] = json!({"imagegate.dev/unmanaged": "true"});
        current["webhooks"][0]["failurePolicy"] = json!("Ignore");
        api.next().await.expect(Method::GET, MWC).ok(current);
        assert_eq!(
            join(task).await.unwrap(),
            Outcome::Unmanaged,
            "wanted {wanted}"
        );
        api.no_more().await;
    }
    // Not imagegate's (no managed-by label): never deleted.
    let (client, mut api) = mock();
    let task = reconcile_mutating(client, false);
    let mut current = stored_mutating(CA);
    current["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "someone-else"});
    api.next().await.expect(Method::GET, MWC).ok(current);
    assert_eq!(join(task).await.unwrap(), Outcome::Unmanaged);
    api.no_more().await;
}

#[tokio::test]
async fn mutating_configuration_is_owned_by_the_cluster_role_and_not_written_without_it() {
    let (client, mut api) = mock();
    let task = spawn(async move {
        webhook_config::reconcile_mutating(client, &params(), CA, Some("imagegate"), true).await
    });
    api.next().await.expect(Method::GET, ROLE).ok(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "imagegate", "uid": "role-uid-1"}, "rules": []
    }));
    api.next()
        .await
        .expect(Method::GET, MWC)
        .error(404, "NotFound");
    let apply = api.next().await.expect(Method::PATCH, MWC);
    assert_eq!(
        apply.body["metadata"]["ownerReferences"][0]["uid"],
        "role-uid-1"
    );
    apply.echo("1");
    assert_eq!(join(task).await.unwrap(), Outcome::Applied);

    let (client, mut api) = mock();
    let task = spawn(async move {
        webhook_config::reconcile_mutating(client, &params(), CA, Some("imagegate"), true).await
    });
    api.next()
        .await
        .expect(Method::GET, ROLE)
        .error(404, "NotFound");
    assert_eq!(join(task).await.unwrap(), Outcome::OwnerGone);
    api.no_more().await;
}

// ----- the mutating configuration's loop, driven by the policies -----------------------------

const MWCS: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";

/// The mock API server for the loop: answers the loop's list of the configuration (empty) and
/// keeps its watch aside, so the test can answer it with events; hands every other request to
/// the test.
struct LoopServer {
    api: support::ApiServer,
    watch: Option<support::Call>,
}

impl LoopServer {
    /// Answers a list of the configuration (empty) and keeps a watch aside; returns any other
    /// request.
    fn sort(&mut self, call: support::Call) -> Option<support::Call> {
        if call.path() != MWCS {
            return Some(call);
        }
        assert_eq!(
            call.param("fieldSelector").as_deref(),
            Some("metadata.name=imagegate"),
            "the loop watches its own object only"
        );
        if call.is_watch() {
            self.watch = Some(call);
        } else {
            call.ok(json!({"apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfigurationList",
                "metadata": {"resourceVersion": "1"}, "items": []}));
        }
        None
    }

    /// The next request that is not a list or watch of the configuration.
    async fn next(&mut self) -> support::Call {
        loop {
            let call = self.api.next().await;
            if let Some(call) = self.sort(call) {
                return call;
            }
        }
    }

    /// Asserts that nothing but list and watch requests come for a moment.
    async fn quiet(&mut self) {
        while let Some(call) = self
            .api
            .next_opt(std::time::Duration::from_millis(300))
            .await
        {
            if let Some(call) = self.sort(call) {
                panic!("unexpected request {} {}", call.method, call.uri);
            }
        }
    }
}

fn mutating_policy(name: &str) -> imagegate::policy::ImagePolicy {
    imagegate::policy::ImagePolicy::new(
        name,
        imagegate::policy::ImagePolicySpec {
            set_pull_policy_always: Some(true),
            ..Default::default()
        },
    )
}

fn validating_policy(name: &str) -> imagegate::policy::ImagePolicy {
    imagegate::policy::ImagePolicy::new(
        name,
        imagegate::policy::ImagePolicySpec {
            denied_tags: Some(vec!["latest".into()]),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn mutating_configuration_lives_while_a_policy_mutates() {
    use imagegate::operator::{self, PolicyIndex};
    use imagegate::policy::{Settings, Snapshot};
    use kube::runtime::watcher::Event;
    use std::sync::Arc;

    let (client, api) = mock();
    let mut server = LoopServer { api, watch: None };
    let snapshot = Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::empty(
        Settings::default(),
    )));
    let readiness = Arc::new(imagegate::state::Readiness::default());
    let mut index = PolicyIndex::new(Arc::clone(&snapshot), readiness, Settings::default());
    let (_ca, ca_rx) = tokio::sync::watch::channel(Some(CA.to_owned()));
    let task = tokio::spawn(operator::run_mutating_webhook_config(
        client,
        params(),
        None,
        ca_rx,
        snapshot,
        index.subscribe(),
    ));

    // Before the first complete list of policies nothing is written, not even a delete.
    server.quiet().await;
    assert!(server.watch.is_some(), "the loop watches the configuration");

    // A list with only a validating policy: not wanted, and absent.
    index.apply(&Event::Init);
    index.apply(&Event::InitApply(validating_policy("tags")));
    index.apply(&Event::InitDone);
    server
        .next()
        .await
        .expect(Method::GET, MWC)
        .error(404, "NotFound");
    server.quiet().await;

    // A policy with setPullPolicyAlways: created.
    index.apply(&Event::Apply(mutating_policy("always")));
    server
        .next()
        .await
        .expect(Method::GET, MWC)
        .error(404, "NotFound");
    let apply = server.next().await;
    assert_mutating_apply(&apply);
    apply.echo("2");
    server.quiet().await;

    // Someone edits it: the watch event brings a repair.
    let mut drifted = stored_mutating(CA);
    drifted["webhooks"][0]["failurePolicy"] = json!("Ignore");
    server
        .watch
        .take()
        .expect("a watch")
        .watch_events(&[json!({"type": "MODIFIED", "object": drifted})]);
    server.next().await.expect(Method::GET, MWC).ok(drifted);
    let repair = server.next().await;
    assert_mutating_apply(&repair);
    assert_eq!(repair.body["webhooks"][0]["failurePolicy"], "Fail");
    repair.echo("3");
    server.quiet().await;

    // The last mutating policy goes: deleted.
    index.apply(&Event::Delete(mutating_policy("always")));
    server
        .next()
        .await
        .expect(Method::GET, MWC)
        .ok(stored_mutating(CA));
    server
        .next()
        .await
        .expect(Method::DELETE, MWC)
        .ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}));
    server.quiet().await;

    // Marked unmanaged: left as it is, wanted or not.
    let mut unmanaged = stored_mutating(CA);
    unmanaged["metadata"]["annotations"] = json!({"imagegate.dev/unmanaged": "true"});
    unmanaged["webhooks"][0]["timeoutSeconds"] = json!(3);
    index.apply(&Event::Apply(mutating_policy("again")));
    server
        .next()
        .await
        .expect(Method::GET, MWC)
        .ok(unmanaged.clone());
    server.quiet().await;
    index.apply(&Event::Delete(mutating_policy("again")));
    server.next().await.expect(Method::GET, MWC).ok(unmanaged);
    server.quiet().await;
    task.abort();
}
