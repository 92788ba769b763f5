//! `imagegate check` as a CI job runs it: exit codes, text and JSON output, bad input.

mod cli;

use std::path::Path;
use std::process::Output;

use cli::{stderr, stdout};

fn check(args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    cli::imagegate(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &all,
        stdin.unwrap_or_default(),
    )
}

#[test]
fn examples_are_denied_with_actionable_messages() {
    let out = check(
        &["--policies", "examples/policies", "examples/manifests"],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("DENIED   deployment/web-canary in shop-prod"),
        "{text}"
    );
    assert!(
        text.contains("admission webhook \"workloads.imagegate.dev\" denied the request: Deployment \"web-canary\""),
        "{text}"
    );
    assert!(
        text.contains("image \"nginx\" (docker.io/library/nginx:latest) is not from an allowed source; use an image matching one of: registry.corp.example/**, ghcr.io/corp/**"),
        "{text}"
    );
    // Another spelling of Docker Hub is still Docker Hub.
    assert!(text.contains("\"registry-1.docker.io/library/busybox:1.36\" (docker.io/library/busybox:1.36) matches the denied pattern \"docker.io/**\""), "{text}");
    assert!(
        text.contains("Warning: imagegate: [pinned-digests/requireDigest]"),
        "{text}"
    );
    assert!(
        text.contains("7 objects checked: 4 admitted, 3 denied"),
        "{text}"
    );
}

#[test]
fn admitted_manifests_exit_zero() {
    let out = check(
        &[
            "--policies",
            "examples/policies",
            "examples/manifests/namespaces.yaml",
            "examples/manifests/admitted",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains("DENIED"));
}

#[test]
fn json_output_follows_the_contract() {
    let out = check(
        &[
            "--policies",
            "examples/policies",
            "--output",
            "json",
            "examples/manifests",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let results = report["results"].as_array().unwrap();
    // Namespace objects supply labels and are not results; everything else is, in input order.
    assert_eq!(results.len(), 7);
    assert_eq!(
        results[0]["source"],
        "examples/manifests/admitted/dev-sandbox.yaml#1"
    );
    let configmap = results.iter().find(|r| r["kind"] == "ConfigMap").unwrap();
    assert_eq!(configmap["allowed"], true);
    let canary = results.iter().find(|r| r["name"] == "web-canary").unwrap();
    assert_eq!(canary["kind"], "Deployment");
    assert_eq!(canary["namespace"], "shop-prod");
    assert_eq!(canary["allowed"], false);
    let v = &canary["violations"][0];
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    // The contract's fields, and where the image is written (`file`, `line`, `column`).
    assert_eq!(
        keys,
        [
            "canonical",
            "column",
            "container",
            "containerType",
            "excused",
            "file",
            "image",
            "line",
            "message",
            "mode",
            "policy",
            "rule"
        ]
    );
    assert_eq!(v["policy"], "production");
    assert_eq!(v["mode"], "Enforce");
    assert_eq!(v["rule"], "allowedImages");
    assert_eq!(v["containerType"], "containers");
    assert_eq!(v["container"], "web");
    assert_eq!(v["image"], "nginx");
    assert_eq!(v["canonical"], "docker.io/library/nginx:latest");
    assert_eq!(v["excused"], false);
    assert_eq!(
        v["file"],
        "examples/manifests/denied/shop-web-from-docker-hub.yaml"
    );
    assert_eq!(
        (v["line"].as_u64(), v["column"].as_u64()),
        (Some(16), Some(18))
    );
    let sandbox = &results[0];
    assert_eq!(sandbox["allowed"], true);
    assert_eq!(sandbox["warnings"].as_array().unwrap().len(), 1);
}

#[test]
fn stdin_lists_and_json_documents() {
    let list = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","namespace":"shop-prod"},"spec":{"containers":[{"name":"c","image":"nginx:1.27"}]}},
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"nginx:1.27"}]}}]}"#;
    let out = check(
        &[
            "--policies",
            "examples/policies",
            "--namespace-labels",
            "shop-prod=env=prod",
            "-o",
            "json",
            "-",
        ],
        Some(list),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["results"][0]["source"], "<stdin>#1.items[0]");
    assert_eq!(report["results"][0]["allowed"], false);
    // No namespace means `default`, where no production policy applies.
    assert_eq!(report["results"][1]["namespace"], "default");
    assert_eq!(report["results"][1]["allowed"], true);
}

#[test]
fn break_glass_with_requester_and_time() {
    let pod = "apiVersion: v1
kind: Pod
metadata:
  name: hotfix
  namespace: shop-prod
  annotations:
    imagegate.image-policy.k8s.io/break-glass: INC-4711
    imagegate.image-policy.k8s.io/break-glass-until: '2026-11-22T18:00:00Z'
spec:
  containers: [{name: app, image: 'docker.io/library/nginx:1.27'}]
";
    let base = [
        "--policies",
        "examples/policies",
        "--namespace-labels",
        "shop-prod=env=prod",
        "--now",
        "2026-11-22T12:00:00Z",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.push("-");
        check(&args, Some(pod))
    };
    let out = with(&["--user", "alice", "--group", "sre-oncall"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("break-glass INC-4711 used for policy \"production\""),
        "{}",
        stdout(&out)
    );

    let out = with(&["--user", "mallory", "--group", "dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("[production/breakGlass] break-glass refused"),
        "{}",
        stdout(&out)
    );

    // Without a requester, a policy that names groups cannot honour it.
    let out = with(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("requester is unknown"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn broken_policy_is_exit_two_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(
        &file,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: ok}\nspec: {requireDigest: true}\n---\napiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: broken}\nspec:\n  allowedImages: [registry.corp.example/**, nginx]\n",
    )
    .unwrap();
    let out = check(
        &["--policies", file.to_str().unwrap(), "examples/manifests"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}#2", file.display())), "{err}");
    assert!(
        err.contains("policy \"broken\": spec.allowedImages[1]: invalid pattern \"nginx\""),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn bad_input_is_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "kind: Pod\n  metadata: [\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--policies".into(),
                "examples/policies".into(),
                bad_yaml.display().to_string(),
            ],
            "invalid YAML",
        ),
        (
            vec![
                "--policies".into(),
                "examples/policies".into(),
                "does/not/exist.yaml".into(),
            ],
            "does/not/exist.yaml: cannot read",
        ),
        (
            vec![
                "--policies".into(),
                bad_yaml.display().to_string(),
                "examples/manifests".into(),
            ],
            // The file, line and column of the syntax error.
            "bad.yaml:2:11: invalid YAML",
        ),
        (
            vec![
                "--policies".into(),
                "examples/policies".into(),
                "--now".into(),
                "yesterday".into(),
                "examples/manifests".into(),
            ],
            "not an RFC 3339 time",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = check(&args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // A workload whose containers cannot be read is bad input too.
    let out = check(
        &["--policies", "examples/policies", "-"],
        Some("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 7}\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("<stdin>#1: cannot read the Pod object"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mutations_are_shown_and_pods_are_judged_on_their_mutated_form() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("pull.yaml");
    std::fs::write(
        &policies,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: pull}\n\
         spec: {images: ['quay.io/**'], setPullPolicyAlways: true, requirePullPolicyAlways: true}\n\
         ---\n\
         apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: soon}\n\
         spec: {mode: Audit, images: ['ghcr.io/**'], setPullPolicyAlways: true}\n",
    )
    .unwrap();
    let manifests = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n\
        spec:\n  containers:\n  - {name: app, image: quay.io/a/app:1.0, imagePullPolicy: IfNotPresent}\n  - {name: side, image: ghcr.io/a/side:2}\n\
        ---\n\
        apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: shop}\n\
        spec:\n  template:\n    spec:\n      containers:\n      - {name: api, image: quay.io/a/api:3, imagePullPolicy: IfNotPresent}\n";
    let policies = policies.display().to_string();
    // Both are admitted: the Pod as the mutating webhook leaves it, the Deployment because its
    // Pods will be mutated.
    let out = check(&["--policies", &policies, "-"], Some(manifests));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(
            "  Mutated: [pull/setPullPolicyAlways] containers/app imagePullPolicy=Always"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  Would mutate: [soon/setPullPolicyAlways] containers/side imagePullPolicy=Always"
        ),
        "{text}"
    );
    assert!(
        text.contains("  Mutated (in its Pods): [pull/setPullPolicyAlways] containers/api imagePullPolicy=Always"),
        "{text}"
    );

    let out = check(
        &["--policies", &policies, "--output", "json", "-"],
        Some(manifests),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pod = &report["results"][0];
    assert_eq!(pod["allowed"], true);
    assert_eq!(
        pod["mutations"][0],
        serde_json::json!({"change": "pullPolicy", "containerType": "containers",
            "container": "app", "image": "quay.io/a/app:1.0", "from": "IfNotPresent",
            "to": "Always", "policy": "pull", "mode": "Enforce", "applied": true,
            "path": "/spec/containers/0/imagePullPolicy"})
    );
    assert_eq!(pod["mutations"][1]["applied"], false);
    assert_eq!(pod["mutations"][1]["mode"], "Audit");
    let deployment = &report["results"][1];
    assert_eq!(deployment["allowed"], true);
    assert_eq!(deployment["mutations"][0]["container"], "api");
    // The report with mutations follows the published schema.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/check-report.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::options()
        .build(&schema)
        .expect("the schema compiles");
    let errors = validator.iter_errors(&report).into_errors();
    assert!(errors.is_empty(), "{errors}");
    assert!(
        report["results"][0]["mutations"]
            .as_array()
            .is_some_and(|m| m.len() == 2),
        "{report}"
    );

    // Without the mutation the same Pod is denied by requirePullPolicyAlways.
    let strict = dir.path().join("strict.yaml");
    std::fs::write(
        &strict,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: pull}\n\
         spec: {images: ['quay.io/**'], requirePullPolicyAlways: true}\n",
    )
    .unwrap();
    let out = check(
        &["--policies", &strict.display().to_string(), "-"],
        Some(manifests),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}
