//! `POST /validate` and `POST /imagereview` over real TLS with the API server's own request
//! bodies (`tests/data/`) and variations of them: every rule, every mode, break-glass.

mod common;

use common::{TestServer, cause_fields, fixture, pod_review, policy, warnings};
use serde_json::{Value, json};

const DENY_HUB: &str = "mode: Enforce\ndeniedImages: [\"docker.io/**\"]";
const DENY_NOTHING: &str = "deniedImages: [\"evil.example/**\"]";

async fn deny_hub() -> TestServer {
    TestServer::start(&policy("deny-hub", DENY_HUB), &[]).await
}

#[tokio::test]
async fn pod_create_fixture_is_denied_with_causes_and_annotations() {
    let server = deny_hub().await;
    let r = server.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 403);
    assert_eq!(r["status"]["reason"], "Forbidden");
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Pod \"multi\" in namespace \"wh-test\""),
        "{message}"
    );
    assert!(
        message.contains("nginx:1.27") && message.contains("busybox:1.36"),
        "{message}"
    );
    let mut fields = cause_fields(&r);
    fields.sort();
    assert_eq!(
        fields,
        ["spec.containers[0].image", "spec.initContainers[0].image"]
    );
    assert!(
        r["status"]["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["reason"] == "deniedImages")
    );
    assert_eq!(r["auditAnnotations"]["decision"], "denied");
    assert_eq!(r["auditAnnotations"]["policies"], "deny-hub:Enforce");
    assert!(r["auditAnnotations"].get("break-glass").is_none());
    server.stop().await;
}

#[tokio::test]
async fn pod_create_fixture_is_admitted_by_a_policy_it_meets() {
    let server = TestServer::start(&policy("fine", DENY_NOTHING), &[]).await;
    let r = server.review(&fixture("pod-create.json")).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("status").is_none(), "{r}");
    assert_eq!(r["auditAnnotations"]["decision"], "allowed");
    assert_eq!(r["auditAnnotations"]["policies"], "fine:Enforce");
    server.stop().await;
}

#[tokio::test]
async fn dry_run_is_decided_the_same() {
    let server = deny_hub().await;
    let r = server.review(&fixture("pod-create-dryrun.json")).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(cause_fields(&r).len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn update_denies_only_changed_images_and_warns_about_the_rest() {
    let server = deny_hub().await;
    let r = server.review(&fixture("pod-update.json")).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(cause_fields(&r), ["spec.containers[0].image"], "{r}");
    let w = warnings(&r);
    assert!(w.iter().any(|w| w.contains("busybox:1.36")), "{w:?}");

    // Only a label changed: nothing new, so admitted, with the standing violations as warnings.
    let r = server.review(&fixture("pod-update-labels.json")).await;
    assert_eq!(r["allowed"], true, "{r}");
    let w = warnings(&r);
    assert!(w.iter().any(|w| w.contains("nginx:1.28")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("busybox:1.36")), "{w:?}");
    assert!(w.iter().all(|w| w.chars().count() <= 256), "{w:?}");
    server.stop().await;
}

#[tokio::test]
async fn ephemeral_container_update_is_checked() {
    let server = deny_hub().await;
    let r = server
        .review(&fixture("pod-ephemeralcontainers-update.json"))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        cause_fields(&r),
        ["spec.ephemeralContainers[0].image"],
        "{r}"
    );
    server.stop().await;
}

#[tokio::test]
async fn deployment_create_and_update() {
    let server = deny_hub().await;
    let r = server.review(&fixture("deployment-create.json")).await;
    assert_eq!(r["allowed"], false, "{r}");
    let mut fields = cause_fields(&r);
    fields.sort();
    assert_eq!(
        fields,
        [
            "spec.template.spec.containers[0].image",
            "spec.template.spec.initContainers[0].image"
        ]
    );
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Deployment \"web\"")
    );
    let r = server.review(&fixture("deployment-update.json")).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(cause_fields(&r), ["spec.template.spec.containers[0].image"]);
    server.stop().await;
}

#[tokio::test]
async fn each_rule_denies_with_its_name() {
    let server = TestServer::start(
        &[
            policy("digest", "images: [\"reg.example/digest/**\"]\nrequireDigest: true"),
            policy("tags", "images: [\"reg.example/tags/**\"]\ndeniedTags: [latest, \"*-dev\"]"),
            policy("pull", "images: [\"reg.example/pull/**\"]\nrequirePullPolicyAlways: true"),
            policy("allowed", "images: [\"reg.example/allowed/**\"]\nallowedImages: [\"reg.example/allowed/good/**\"]"),
            policy("denied", "images: [\"reg.example/denied/**\"]\ndeniedImages: [\"reg.example/denied/bad/**\"]"),
        ]
        .join("---\n"),
        &[],
    )
    .await;
    let cases = [
        ("reg.example/digest/app:1.0", None, Some("requireDigest")),
        (
            "reg.example/digest/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            None,
            None,
        ),
        ("reg.example/tags/app:1.0-dev", None, Some("deniedTags")),
        ("reg.example/tags/app", None, Some("deniedTags")),
        ("reg.example/tags/app:1.0", None, None),
        (
            "reg.example/pull/app:1.0",
            None,
            Some("requirePullPolicyAlways"),
        ),
        (
            "reg.example/pull/app:1.0",
            Some("IfNotPresent"),
            Some("requirePullPolicyAlways"),
        ),
        ("reg.example/pull/app:1.0", Some("Always"), None),
        ("reg.example/pull/app:latest", None, None),
        (
            "reg.example/allowed/other/app:1",
            None,
            Some("allowedImages"),
        ),
        ("reg.example/allowed/good/app:1", None, None),
        ("reg.example/denied/bad/app:1", None, Some("deniedImages")),
        ("reg.example/denied/ok/app:1", None, None),
        ("", None, Some("reference")),
        ("reg.example/UPPER:1", None, Some("reference")),
    ];
    for (image, pull, rule) in cases {
        let mut container = json!({"name": "c", "image": image});
        if let Some(p) = pull {
            container["imagePullPolicy"] = json!(p);
        }
        let r = server
            .review(&pod_review("ns", "u", &[], json!({}), json!([container])))
            .await;
        match rule {
            None => assert_eq!(r["allowed"], true, "{image:?} {pull:?}: {r}"),
            Some(rule) => {
                assert_eq!(r["allowed"], false, "{image:?} {pull:?}: {r}");
                let causes = r["status"]["details"]["causes"].as_array().unwrap();
                assert!(causes.iter().all(|c| c["reason"] == rule), "{image:?}: {r}");
                assert!(
                    causes
                        .iter()
                        .all(|c| c["field"] == "spec.containers[0].image")
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn modes_deny_warn_or_only_record() {
    let server = TestServer::start(
        &[
            policy(
                "enforce",
                "mode: Enforce\nimages: [\"reg.example/enforce/**\"]\ndeniedTags: [latest]",
            ),
            policy(
                "warn",
                "mode: Warn\nimages: [\"reg.example/warn/**\"]\ndeniedTags: [latest]",
            ),
            policy(
                "audit",
                "mode: Audit\nimages: [\"reg.example/audit/**\"]\ndeniedTags: [latest]",
            ),
        ]
        .join("---\n"),
        &[],
    )
    .await;
    let review = |image: &str| {
        pod_review(
            "ns",
            "u",
            &[],
            json!({}),
            json!([{"name": "c", "image": image}]),
        )
    };

    let r = server.review(&review("reg.example/enforce/a:latest")).await;
    assert_eq!(r["allowed"], false, "{r}");

    let r = server.review(&review("reg.example/warn/a:latest")).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["auditAnnotations"]["decision"], "warned");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("warn") && w[0].contains("reg.example/warn/a:latest"),
        "{w:?}"
    );

    let r = server.review(&review("reg.example/audit/a:latest")).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).is_empty(), "{r}");
    assert_eq!(r["auditAnnotations"]["decision"], "audited");
    assert_eq!(
        r["auditAnnotations"]["policies"],
        "audit:Audit,enforce:Enforce,warn:Warn"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "imagegate_decisions_total{policy=\"warn\",mode=\"Warn\",result=\"warned\"} 1",
        "imagegate_decisions_total{policy=\"audit\",mode=\"Audit\",result=\"audited\"} 1",
        "imagegate_decisions_total{policy=\"enforce\",mode=\"Enforce\",result=\"denied\"} 1",
        "imagegate_violations_total{rule=\"deniedTags\",mode=\"Enforce\"} 1",
        "imagegate_admissions_total{endpoint=\"validate\",result=\"denied\"} 1",
        "imagegate_admissions_total{endpoint=\"validate\",result=\"allowed\"} 2",
        "imagegate_policies 3",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn namespace_selector_uses_the_given_labels() {
    let server = TestServer::start(
        &policy(
            "prod",
            "namespaceSelector:\n  matchLabels: {env: prod}\ndeniedTags: [latest]",
        ),
        &["--namespace-labels", "shop=env=prod,team=a"],
    )
    .await;
    let containers = json!([{"name": "c", "image": "reg.example/a:latest"}]);
    let r = server
        .review(&pod_review("shop", "u", &[], json!({}), containers.clone()))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    let r = server
        .review(&pod_review("dev", "u", &[], json!({}), containers))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        r["auditAnnotations"]["policies"], "",
        "no policy applies in dev"
    );
    server.stop().await;
}

const BREAK_GLASS: &str = "deniedTags: [latest]\nbreakGlass:\n  allowedGroups: [sre]\n  allowedUsers: [carol]\n  ticketPattern: \"INC-[0-9]+\"\n  maxDuration: 2h";

fn break_glass_review(
    user: &str,
    groups: &[&str],
    ticket: Option<&str>,
    until: Option<String>,
) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(t) = ticket {
        annotations.insert("imagegate.image-policy.k8s.io/break-glass".into(), json!(t));
    }
    if let Some(u) = until {
        annotations.insert(
            "imagegate.image-policy.k8s.io/break-glass-until".into(),
            json!(u),
        );
    }
    pod_review(
        "ns",
        user,
        groups,
        Value::Object(annotations),
        json!([{"name": "c", "image": "reg.example/a:latest"}]),
    )
}

fn in_hours(h: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(h)).to_string()
}

#[tokio::test]
async fn break_glass_is_honoured_and_never_silent() {
    let server = TestServer::start(&policy("strict", BREAK_GLASS), &[]).await;
    for (user, groups) in [("alice", vec!["sre"]), ("carol", vec![])] {
        let r = server
            .review(&break_glass_review(
                user,
                &groups,
                Some("INC-42"),
                Some(in_hours(1)),
            ))
            .await;
        assert_eq!(r["allowed"], true, "{user}: {r}");
        assert_eq!(r["auditAnnotations"]["decision"], "excused", "{r}");
        let bg = r["auditAnnotations"]["break-glass"].as_str().unwrap();
        assert!(
            bg.contains("ticket=INC-42") && bg.contains("policy=strict"),
            "{bg}"
        );
        assert!(warnings(&r).iter().any(|w| w.contains("INC-42")), "{r}");
    }
    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("imagegate_break_glass_total{policy=\"strict\"} 2"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn break_glass_is_refused_for_each_reason() {
    let server = TestServer::start(
        &[
            policy("strict", BREAK_GLASS),
            policy(
                "none",
                "images: [\"reg.example/none/**\"]\ndeniedTags: [latest]",
            ),
        ]
        .join("---\n"),
        &[],
    )
    .await;
    let cases = [
        (
            "wrong ticket",
            break_glass_review("alice", &["sre"], Some("JIRA-1"), Some(in_hours(1))),
        ),
        (
            "ticket must match whole",
            break_glass_review("alice", &["sre"], Some("xINC-1"), Some(in_hours(1))),
        ),
        (
            "no until",
            break_glass_review("alice", &["sre"], Some("INC-1"), None),
        ),
        (
            "unparseable until",
            break_glass_review("alice", &["sre"], Some("INC-1"), Some("tomorrow".into())),
        ),
        (
            "until passed",
            break_glass_review("alice", &["sre"], Some("INC-1"), Some(in_hours(-1))),
        ),
        (
            "too far",
            break_glass_review("alice", &["sre"], Some("INC-1"), Some(in_hours(3))),
        ),
        (
            "requester not allowed",
            break_glass_review("mallory", &["dev"], Some("INC-1"), Some(in_hours(1))),
        ),
    ];
    for (why, review) in cases {
        let r = server.review(&review).await;
        assert_eq!(r["allowed"], false, "{why}: {r}");
        let causes = r["status"]["details"]["causes"].as_array().unwrap();
        assert!(
            causes.iter().any(|c| c["reason"] == "breakGlass"),
            "{why}: {r}"
        );
        assert!(
            causes.iter().any(|c| c["reason"] == "deniedTags"),
            "{why}: {r}"
        );
        assert!(
            r["auditAnnotations"].get("break-glass").is_none(),
            "{why}: {r}"
        );
    }
    // A policy without breakGlass honours no exception.
    let mut r = break_glass_review("alice", &["sre"], Some("INC-1"), Some(in_hours(1)));
    r["request"]["object"]["spec"]["containers"][0]["image"] = json!("reg.example/none/a:latest");
    let r = server.review(&r).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"].as_str().unwrap().contains("none"),
        "{r}"
    );
    server.stop().await;
}

#[tokio::test]
async fn image_policy_objects_are_validated() {
    let server = deny_hub().await;
    let review = |spec: Value| {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "pol-1", "kind": {"group": "imagegate.dev", "version": "v1alpha1", "kind": "ImagePolicy"},
                "name": "p", "operation": "CREATE", "userInfo": {"username": "admin"},
                "object": {"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy", "metadata": {"name": "p"}, "spec": spec}
            }
        })
    };
    let r = server
        .review(&review(json!({"deniedTags": ["latest"]})))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = server
        .review(&review(
            json!({"allowedImages": ["registry.corp.example/**", "no-host"]}),
        ))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        r["status"]["details"]["causes"][0]["field"], "spec.allowedImages[1]",
        "{r}"
    );
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.allowedImages[1]"),
        "{r}"
    );
    let r = server
        .review(&review(
            json!({"deniedTags": ["latest"], "breakGlass": {"ticketPattern": "("}}),
        ))
        .await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        r["status"]["details"]["causes"][0]["field"], "spec.breakGlass.ticketPattern",
        "{r}"
    );
    server.stop().await;
}

#[tokio::test]
async fn other_kinds_subresources_and_operations_are_admitted() {
    let server = deny_hub().await;
    let mut delete = fixture("pod-create.json");
    delete["request"]["operation"] = json!("DELETE");
    let mut status = fixture("pod-update.json");
    status["request"]["subResource"] = json!("status");
    let mut config_map = fixture("pod-create.json");
    config_map["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let mut connect = fixture("pod-create.json");
    connect["request"]["operation"] = json!("CONNECT");
    for review in [delete, status, config_map, connect] {
        let r = server.review(&review).await;
        assert_eq!(r["allowed"], true, "{r}");
        assert!(
            r.get("warnings").is_none() && r.get("status").is_none(),
            "{r}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn image_reviews_from_the_legacy_plugin() {
    let server = TestServer::start(
        &[
            policy("deny-hub", DENY_HUB),
            policy("any-requester", "images: [\"reg.example/bg/**\"]\ndeniedTags: [latest]\nbreakGlass:\n  ticketPattern: \"INC-[0-9]+\""),
            policy("groups-only", "images: [\"reg.example/groups/**\"]\ndeniedTags: [latest]\nbreakGlass:\n  allowedGroups: [sre]\n  ticketPattern: \"INC-[0-9]+\""),
        ]
        .join("---\n"),
        &[],
    )
    .await;
    for name in [
        "imagereview-pod-create.json",
        "imagereview-pod-update.json",
        "imagereview-pod-ephemeralcontainers.json",
    ] {
        let body =
            std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        // The plugin appends ?timeout=30s.
        let (status, out) = server.post("/imagereview?timeout=30s", body).await;
        assert_eq!(status, 200, "{name}: {out}");
        assert_eq!(out["apiVersion"], "imagepolicy.k8s.io/v1alpha1");
        assert_eq!(out["kind"], "ImageReview");
        assert_eq!(out["status"]["allowed"], false, "{name}: {out}");
        let reason = out["status"]["reason"].as_str().unwrap();
        assert!(reason.contains("busybox:1.36"), "{name}: {reason}");
        assert_eq!(out["status"]["auditAnnotations"]["decision"], "denied");
    }

    let image_review = |image: &str, annotations: Value| {
        json!({"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview",
               "spec": {"containers": [{"image": image}], "annotations": annotations, "namespace": "ns"}})
    };
    let (_, out) = server
        .post(
            "/imagereview",
            serde_json::to_vec(&image_review("ghcr.io/example/a:1", json!({}))).unwrap(),
        )
        .await;
    assert_eq!(out["status"]["allowed"], true, "{out}");

    // No requester: only a policy allowing any requester honours break-glass.
    let bg = json!({
        "imagegate.image-policy.k8s.io/break-glass": "INC-7",
        "imagegate.image-policy.k8s.io/break-glass-until": in_hours(1),
    });
    let (_, out) = server
        .post(
            "/imagereview",
            serde_json::to_vec(&image_review("reg.example/bg/a:latest", bg.clone())).unwrap(),
        )
        .await;
    assert_eq!(out["status"]["allowed"], true, "{out}");
    assert!(
        out["status"]["auditAnnotations"]["break-glass"]
            .as_str()
            .unwrap()
            .contains("INC-7"),
        "{out}"
    );
    let (_, out) = server
        .post(
            "/imagereview",
            serde_json::to_vec(&image_review("reg.example/groups/a:latest", bg)).unwrap(),
        )
        .await;
    assert_eq!(out["status"]["allowed"], false, "{out}");

    // An unknown version gets HTTP 400, so the plugin applies its defaultAllow.
    let mut other = image_review("a", json!({}));
    other["apiVersion"] = json!("imagepolicy.k8s.io/v1beta1");
    let (status, out) = server
        .post("/imagereview", serde_json::to_vec(&other).unwrap())
        .await;
    assert_eq!(status, 400, "{out}");
    assert!(
        out.as_str()
            .unwrap()
            .contains("imagepolicy.k8s.io/v1alpha1"),
        "{out}"
    );
    let (status, _) = server.post("/imagereview", "{").await;
    assert_eq!(status, 400);
    server.stop().await;
}
