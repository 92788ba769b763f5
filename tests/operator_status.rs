//! ImagePolicy status against a mock API server: Ready=True for a good policy, Ready=False
//! with the field path for a broken one (SSA body checked), no write when up to date.

mod support;

use http::Method;
use imagegate::operator::status;
use imagegate::policy::{ImagePolicy, ImagePolicySpec, compile};
use serde_json::json;
use support::{join, mock, spawn};

const STATUS: &str = "/apis/imagegate.dev/v1alpha1/imagepolicies/prod/status";

fn policy(allowed: &str) -> ImagePolicy {
    let mut p = ImagePolicy::new(
        "prod",
        ImagePolicySpec {
            allowed_images: Some(vec![allowed.to_owned()]),
            ..ImagePolicySpec::default()
        },
    );
    p.metadata.generation = Some(2);
    p.metadata.uid = Some("pol-uid".into());
    p
}

async fn reconcile_and_capture(p: ImagePolicy) -> serde_json::Value {
    let (client, mut api) = mock();
    let mut stored = serde_json::to_value(&p).unwrap();
    let task = spawn(async move {
        let compiled = compile(&p);
        status::reconcile(client, &p, compiled.as_ref().map(|_| ()), None).await
    });
    let call = api.next().await.expect(Method::PATCH, STATUS);
    assert!(
        call.query().contains("fieldManager=imagegate"),
        "{}",
        call.uri
    );
    assert!(call.query().contains("force=true"), "{}", call.uri);
    let body = call.body.clone();
    // The API server answers with the whole object.
    stored["status"] = body["status"].clone();
    call.ok(stored);
    assert!(join(task).await.unwrap(), "a write was reported");
    api.no_more().await;
    body
}

#[tokio::test]
async fn good_policy_is_ready() {
    let body = reconcile_and_capture(policy("registry.corp.example/**")).await;
    assert_eq!(body["apiVersion"], "imagegate.dev/v1alpha1");
    assert_eq!(body["kind"], "ImagePolicy");
    assert_eq!(body["metadata"], json!({"name": "prod"}));
    assert!(
        body.get("spec").is_none(),
        "status apply must not carry spec"
    );
    assert_eq!(body["status"]["observedGeneration"], 2);
    let c = &body["status"]["conditions"][0];
    assert_eq!(c["type"], "Ready");
    assert_eq!(c["status"], "True");
    assert_eq!(c["reason"], "Compiled");
    assert_eq!(c["observedGeneration"], 2);
    assert!(c["lastTransitionTime"].is_string());
}

#[tokio::test]
async fn broken_policy_is_not_ready_with_field_path() {
    let p = policy("no-registry-here");
    let err = compile(&p).expect_err("the pattern is invalid");
    let body = reconcile_and_capture(p).await;
    let c = &body["status"]["conditions"][0];
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "CompileError");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains(&err.field), "{message}");
    assert!(
        message.starts_with("The policy is not in force: spec.allowedImages"),
        "{message}"
    );
}

#[tokio::test]
async fn up_to_date_status_is_not_written() {
    let mut p = policy("registry.corp.example/**");
    p.status = Some(status::desired(&p, Ok(()), jiff::Timestamp::now()));
    let (client, mut api) = mock();
    let task = spawn(async move { status::reconcile(client, &p, Ok(()), None).await });
    assert!(!join(task).await.unwrap());
    api.no_more().await;
}
