//! The ValidatingWebhookConfiguration reconcile against a mock API server: creation, no write
//! when up to date, drift repair, the unmanaged annotation, the owner reference.

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
