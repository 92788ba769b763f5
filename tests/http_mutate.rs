//! `POST /mutate` over real TLS with the API server's own request bodies (`tests/data/`): the
//! returned JSONPatch is applied to the request's object with a JSON Patch implementation and
//! the result compared with exactly the expected Pod; reinvocation, ephemeral containers, image
//! volumes, workloads, Pods outside a policy's scope, a Pod of 5,000 containers, and the mutated
//! Pod judged again by `/validate`.

mod common;

use base64::Engine as _;
use common::{TestServer, fixture, policy, warnings};
use serde_json::{Value, json};

const SET_ALWAYS: &str = "setPullPolicyAlways: true";

/// POSTs an AdmissionReview to `/mutate`; asserts HTTP 200, the envelope, the echoed uid and
/// `allowed: true`, and returns `response`.
async fn mutate(server: &TestServer, body: &Value) -> Value {
    let r = server.review_at("/mutate", body).await;
    assert_eq!(r["allowed"], true, "the mutating webhook never denies: {r}");
    assert!(r.get("status").is_none(), "{r}");
    r
}

/// The response's patch, decoded; `None` when it has none.
fn patch(response: &Value) -> Option<json_patch::Patch> {
    let text = response.get("patch")?.as_str().expect("base64 text");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    Some(serde_json::from_slice(&bytes).expect("a JSON Patch"))
}

/// The request's object with the response's patch applied.
fn patched(review: &Value, response: &Value) -> Value {
    let mut object = review["request"]["object"].clone();
    let patch = patch(response).expect("a patch");
    json_patch::patch(&mut object, &patch).expect("the patch applies to the object");
    object
}

/// The review with its object replaced (as the API server sends it again on reinvocation).
fn with_object(review: &Value, object: Value) -> Value {
    let mut out = review.clone();
    out["request"]["object"] = object;
    out
}

#[tokio::test]
async fn pod_create_fixture_gets_pull_policy_always_on_every_container() {
    let server = TestServer::start(&policy("always", SET_ALWAYS), &[]).await;
    let review = fixture("pod-create.json");
    let r = mutate(&server, &review).await;
    let mutated = patched(&review, &r);
    let mut want = review["request"]["object"].clone();
    for list in ["initContainers", "containers"] {
        for c in want["spec"][list].as_array_mut().unwrap() {
            c["imagePullPolicy"] = json!("Always");
        }
    }
    assert_eq!(mutated, want, "exactly the pull policies change");
    assert_eq!(patch(&r).unwrap().0.len(), 4);
    assert_eq!(r["auditAnnotations"]["policies"], "always:Enforce");
    let changes = r["auditAnnotations"]["mutated"].as_str().unwrap();
    assert_eq!(
        changes,
        "initContainers/init-config imagePullPolicy=Always, initContainers/init-migrate imagePullPolicy=Always, containers/app imagePullPolicy=Always, containers/sidecar imagePullPolicy=Always"
    );

    // Reinvocation: the API server calls again with the mutated Pod; nothing more to change.
    let again = mutate(&server, &with_object(&review, mutated)).await;
    assert!(patch(&again).is_none(), "{again}");
    assert!(
        again["auditAnnotations"].get("mutated").is_none(),
        "{again}"
    );

    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("imagegate_pods_mutated_total{change=\"pullPolicy\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imagegate_admissions_total{endpoint=\"mutate\",result=\"allowed\"} 2"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn ephemeral_container_update_changes_only_the_added_container() {
    let server = TestServer::start(&policy("always", SET_ALWAYS), &[]).await;
    let review = fixture("pod-ephemeralcontainers-update.json");
    let r = mutate(&server, &review).await;
    let mutated = patched(&review, &r);
    let mut want = review["request"]["object"].clone();
    want["spec"]["ephemeralContainers"][0]["imagePullPolicy"] = json!("Always");
    assert_eq!(mutated, want);
    assert_eq!(patch(&r).unwrap().0.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn image_volumes_and_native_sidecars_are_changed_and_absent_fields_added() {
    let server = TestServer::start(&policy("always", SET_ALWAYS), &[]).await;
    let mut review = fixture("pod-create.json");
    let spec = &mut review["request"]["object"]["spec"];
    spec["initContainers"][0]["restartPolicy"] = json!("Always");
    spec["initContainers"][0]
        .as_object_mut()
        .unwrap()
        .remove("imagePullPolicy");
    spec["containers"][1]["imagePullPolicy"] = json!("Always");
    spec["volumes"].as_array_mut().unwrap().extend([
        json!({"name": "models", "image": {"reference": "quay.io/ml/models:v3"}}),
        json!({"name": "data", "image": {"reference": "quay.io/ml/data:v1", "pullPolicy": "IfNotPresent"}}),
    ]);
    let r = mutate(&server, &review).await;
    let ops: Vec<Value> = serde_json::to_value(patch(&r).unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        ops,
        [
            json!({"op": "add", "path": "/spec/initContainers/0/imagePullPolicy", "value": "Always"}),
            json!({"op": "replace", "path": "/spec/initContainers/1/imagePullPolicy", "value": "Always"}),
            json!({"op": "replace", "path": "/spec/containers/0/imagePullPolicy", "value": "Always"}),
            json!({"op": "add", "path": "/spec/volumes/1/image/pullPolicy", "value": "Always"}),
            json!({"op": "replace", "path": "/spec/volumes/2/image/pullPolicy", "value": "Always"}),
        ]
    );
    let mutated = patched(&review, &r);
    assert_eq!(
        mutated["spec"]["volumes"][1]["image"]["pullPolicy"],
        "Always"
    );
    assert_eq!(
        mutated["spec"]["volumes"][0],
        review["request"]["object"]["spec"]["volumes"][0]
    );
    server.stop().await;
}

#[tokio::test]
async fn workloads_and_other_requests_pass_untouched() {
    let server = TestServer::start(&policy("always", SET_ALWAYS), &[]).await;
    for name in [
        "deployment-create.json",
        "deployment-update.json",
        "pod-update.json",
        "pod-update-labels.json",
    ] {
        let review = fixture(name);
        let r = mutate(&server, &review).await;
        assert_eq!(
            r,
            json!({"uid": review["request"]["uid"], "allowed": true}),
            "{name}"
        );
    }
    // An object that cannot be read gets no patch, and is still admitted here.
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["spec"]["containers"] = json!(5);
    let r = mutate(&server, &review).await;
    assert!(patch(&r).is_none(), "{r}");
    // Not an AdmissionReview at all: 400, as on /validate.
    let (status, body) = server.post("/mutate", "not json").await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_pod_outside_the_policys_scope_is_unchanged() {
    let spec = "namespaceSelector:\n  matchLabels: {env: prod}\nimages: [\"docker.io/**\"]\nsetPullPolicyAlways: true";
    let server = TestServer::start(
        &policy("prod", spec),
        &["--namespace-labels", "shop=env=prod"],
    )
    .await;
    // Namespace wh-test is not selected.
    let review = fixture("pod-create.json");
    let r = mutate(&server, &review).await;
    assert_eq!(r, json!({"uid": review["request"]["uid"], "allowed": true}));
    // In shop, only the Docker Hub images (busybox, nginx) are governed.
    let mut shop = review.clone();
    shop["request"]["namespace"] = json!("shop");
    shop["request"]["object"]["metadata"]["namespace"] = json!("shop");
    let r = mutate(&server, &shop).await;
    let paths: Vec<String> = patch(&r)
        .unwrap()
        .0
        .iter()
        .map(|op| op.path().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/initContainers/0/imagePullPolicy",
            "/spec/containers/0/imagePullPolicy"
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn warn_mode_changes_nothing_and_says_what_it_would() {
    let server = TestServer::start(
        &policy("soon", "mode: Warn\nsetPullPolicyAlways: true"),
        &[],
    )
    .await;
    let r = mutate(&server, &fixture("pod-create.json")).await;
    assert!(patch(&r).is_none(), "{r}");
    let w = warnings(&r);
    assert_eq!(w.len(), 4, "{w:?}");
    assert!(
        w[2].contains("[soon/setPullPolicyAlways] container \"app\": image \"nginx:1.27\" would get imagePullPolicy Always (now IfNotPresent)"),
        "{w:?}"
    );
    assert!(
        r["auditAnnotations"]["would-mutate"]
            .as_str()
            .unwrap()
            .contains("containers/app imagePullPolicy=Always")
    );
    server.stop().await;
}

#[tokio::test]
async fn the_mutated_pod_is_judged_by_validate_on_its_mutated_form() {
    let server = TestServer::start(
        &policy(
            "pull",
            "setPullPolicyAlways: true\nrequirePullPolicyAlways: true",
        ),
        &[],
    )
    .await;
    let review = fixture("pod-create.json");
    // As sent, the tags are pulled IfNotPresent: denied.
    let before = server.review(&review).await;
    assert_eq!(before["allowed"], false, "{before}");
    // After the mutating webhook, the API server validates the mutated Pod: admitted.
    let r = mutate(&server, &review).await;
    let after = server
        .review(&with_object(&review, patched(&review, &r)))
        .await;
    assert_eq!(after["allowed"], true, "{after}");
    server.stop().await;
}

#[tokio::test]
async fn a_pod_of_5000_containers_gets_one_patch_within_bounds() {
    let server = TestServer::start(&policy("always", SET_ALWAYS), &[]).await;
    let mut review = fixture("pod-create.json");
    let containers: Vec<Value> = (0..5000)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("reg.example/app:{i}"), "imagePullPolicy": "IfNotPresent"}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = json!(containers);
    let (status, out) = server
        .post("/mutate", serde_json::to_vec(&review).unwrap())
        .await;
    assert_eq!(status, 200);
    let r = &out["response"];
    let mutated = patched(&review, r);
    let list = mutated["spec"]["containers"].as_array().unwrap();
    assert_eq!(list.len(), 5000);
    assert!(list.iter().all(|c| c["imagePullPolicy"] == "Always"));
    // Two init containers and 5,000 containers: one operation each, about 80 bytes apiece.
    let size = r["patch"].as_str().unwrap().len();
    assert!(size < 5002 * 100 * 4 / 3, "patch of {size} bytes");
    let annotation = r["auditAnnotations"]["mutated"].as_str().unwrap();
    assert!(annotation.chars().count() <= 4096, "{}", annotation.len());
    server.stop().await;
}
