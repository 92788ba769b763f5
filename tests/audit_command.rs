//! `imagegate audit` against a mock API server that answers lists only: the cluster's policies
//! or candidate ones from files, `--namespace`, pages, `check`'s output shapes, and the exit
//! codes (0 none denied, 1 some would be denied, 2 bad input or no cluster); and signatures
//! judged on the digest each Pod runs, looked up in a real registry (Debian's
//! `docker-registry`, see `support/registry.rs`), or not at all with `--offline`.

#[path = "support/registry.rs"]
mod registry_support;
mod support;

use std::io::Write as _;

use clap::Parser;
use http::Method;
use imagegate::cli::audit::{AuditArgs, exit_code, run};
use imagegate::cli::{Cli, Command};
use serde_json::{Value, json};
use support::{ApiServer, join, mock, spawn};

const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const OTHER: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn args(extra: &[&str]) -> AuditArgs {
    let cli = Cli::try_parse_from(["imagegate", "audit"].iter().chain(extra)).unwrap();
    match cli.command {
        Command::Audit(args) => args,
        other => panic!("not audit: {other:?}"),
    }
}

fn list(kind: &str, items: Vec<Value>, next: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": "9"});
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    json!({"apiVersion": "v1", "kind": kind, "metadata": metadata, "items": items})
}

fn pod(namespace: &str, name: &str, image: &str, image_id: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace},
           "spec": {"containers": [{"name": "app", "image": image}]},
           "status": {"phase": "Running",
                      "containerStatuses": [{"name": "app", "image": image, "imageID": image_id}]}})
}

fn namespace(name: &str, env: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"env": env}}})
}

const PROD_POLICY: &str = r#"{"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
    "metadata": {"name": "prod", "generation": 1},
    "spec": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
             "allowedImages": ["registry.corp.example/**"]}}"#;

/// Answers the next request, which must be a plain list (never a watch, never a write) of
/// `path`, and returns its query parameters' `continue` and `fieldSelector`.
async fn answer_list(
    api: &mut ApiServer,
    path: &str,
    body: Value,
) -> (Option<String>, Option<String>) {
    let call = api.next().await.expect(Method::GET, path);
    assert!(!call.is_watch(), "{}", call.uri);
    assert_eq!(call.param("limit").as_deref(), Some("500"), "{}", call.uri);
    let found = (call.param("continue"), call.param("fieldSelector"));
    call.ok(body);
    found
}

#[tokio::test]
async fn audits_with_the_cluster_s_policies_and_lists_only() {
    let (client, mut api) = mock();
    let args = args(&["--output", "json"]);
    let task = spawn(async move { run(client, &args).await });

    let policy: Value = serde_json::from_str(PROD_POLICY).unwrap();
    let broken = json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": "broken"}, "spec": {"allowedImages": ["no-registry"]}});
    answer_list(
        &mut api,
        "/apis/imagegate.dev/v1alpha1/imagepolicies",
        list("ImagePolicyList", vec![policy, broken], None),
    )
    .await;
    answer_list(
        &mut api,
        "/api/v1/namespaces",
        list(
            "NamespaceList",
            vec![namespace("shop", "prod"), namespace("dev", "dev")],
            None,
        ),
    )
    .await;
    // Pods in two pages.
    let (token, _) = answer_list(
        &mut api,
        "/api/v1/pods",
        list(
            "PodList",
            vec![pod(
                "shop",
                "web-1",
                "nginx:1.25",
                &format!("docker.io/library/nginx@{DIGEST}"),
            )],
            Some("next"),
        ),
    )
    .await;
    assert_eq!(token, None);
    let (token, _) = answer_list(
        &mut api,
        "/api/v1/pods",
        list(
            "PodList",
            vec![
                pod("shop", "ok-1", "registry.corp.example/app:1", ""),
                pod("dev", "anything", "nginx:1.25", ""),
            ],
            None,
        ),
    )
    .await;
    assert_eq!(token.as_deref(), Some("next"));
    let result = join(task).await;
    api.no_more().await;
    assert_eq!(exit_code(&result), 1, "a running Pod would be denied");

    let report = serde_json::to_value(result.unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pod/dev/anything", "pod/shop/ok-1", "pod/shop/web-1"]
    );
    let web = &results[2];
    assert_eq!(web["kind"], "Pod");
    assert_eq!(web["namespace"], "shop");
    assert_eq!(web["name"], "web-1");
    assert_eq!(web["allowed"], false);
    let v = &web["violations"][0];
    assert_eq!(
        (
            &v["policy"],
            &v["mode"],
            &v["rule"],
            &v["containerType"],
            &v["container"],
            &v["image"],
            &v["excused"]
        ),
        (
            &json!("prod"),
            &json!("Enforce"),
            &json!("allowedImages"),
            &json!("containers"),
            &json!("app"),
            &json!("nginx:1.25"),
            &json!(false)
        )
    );
    assert_eq!(v["canonical"], "docker.io/library/nginx:1.25");
    assert_eq!(results[0]["allowed"], true, "no policy applies in dev");
}

#[tokio::test]
async fn candidate_policies_from_files_in_one_namespace() {
    let mut file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    writeln!(
        file,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: candidate}}\nspec:\n  requireDigest: true"
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let (client, mut api) = mock();
    let args = args(&["--policies", &path, "--namespace", "shop"]);
    let task = spawn(async move { run(client, &args).await });

    // No ImagePolicy list: the candidates replace the cluster's policies.
    let (_, selector) = answer_list(
        &mut api,
        "/api/v1/namespaces",
        list("NamespaceList", vec![namespace("shop", "prod")], None),
    )
    .await;
    assert_eq!(selector.as_deref(), Some("metadata.name=shop"));
    answer_list(
        &mut api,
        "/api/v1/namespaces/shop/pods",
        list(
            "PodList",
            vec![
                pod(
                    "shop",
                    "pinned",
                    &format!("nginx@{DIGEST}"),
                    &format!("docker.io/library/nginx@{DIGEST}"),
                ),
                // Pinned, but the node runs another digest.
                pod(
                    "shop",
                    "moved",
                    &format!("nginx@{DIGEST}"),
                    &format!("docker.io/library/nginx@{OTHER}"),
                ),
                // Loaded on the node: cannot be compared, says so.
                pod("shop", "local", &format!("nginx@{DIGEST}"), DIGEST),
            ],
            None,
        ),
    )
    .await;
    let report = join(task).await.unwrap();
    api.no_more().await;
    let by_name = |n: &str| report.results.iter().find(|r| r.name == n).unwrap();
    assert!(by_name("pinned").allowed);
    let moved = by_name("moved");
    assert!(!moved.allowed);
    assert_eq!(moved.violations[0].violation.rule.as_str(), "runningDigest");
    let local = by_name("local");
    assert!(local.allowed);
    assert!(
        local.warnings.iter().any(|w| w.contains("local image ID")),
        "{:?}",
        local.warnings
    );
    let text = imagegate::report::text::render(&report);
    assert!(
        text.contains("DENIED   pod/moved in shop (pod/shop/moved)"),
        "{text}"
    );
    assert!(
        text.contains("3 objects checked: 2 admitted, 1 denied"),
        "{text}"
    );
}

#[tokio::test]
async fn no_pod_would_be_denied_exits_zero() {
    let (client, mut api) = mock();
    let args = args(&[]);
    let task = spawn(async move { run(client, &args).await });
    let policy: Value = serde_json::from_str(PROD_POLICY).unwrap();
    answer_list(
        &mut api,
        "/apis/imagegate.dev/v1alpha1/imagepolicies",
        list("ImagePolicyList", vec![policy], None),
    )
    .await;
    answer_list(
        &mut api,
        "/api/v1/namespaces",
        list("NamespaceList", vec![namespace("shop", "prod")], None),
    )
    .await;
    answer_list(
        &mut api,
        "/api/v1/pods",
        list(
            "PodList",
            vec![pod("shop", "ok", "registry.corp.example/app:1", "")],
            None,
        ),
    )
    .await;
    assert_eq!(exit_code(&join(task).await), 0);
}

#[tokio::test]
async fn a_refused_list_is_exit_two_with_the_reason() {
    let (client, mut api) = mock();
    let args = args(&[]);
    let task = spawn(async move { run(client, &args).await });
    api.next()
        .await
        .expect(Method::GET, "/apis/imagegate.dev/v1alpha1/imagepolicies")
        .error(403, "Forbidden");
    let result = join(task).await;
    assert_eq!(exit_code(&result), 2);
    let message = result.unwrap_err().to_string();
    assert!(
        message.starts_with("cannot list ImagePolicies: it answered 403 Forbidden"),
        "{message}"
    );
}

#[tokio::test]
async fn signatures_of_running_pods_are_looked_up_at_the_digest_they_run() {
    // Signed when the first Pod started; the tag then moved to an unsigned image.
    let Some(moved) = registry_support::MovedTag::new().await else {
        return;
    };
    let (registry, release, tag) = (&moved.registry, &moved.key, &moved.tag);
    let (signed, unsigned) = (&moved.signed, &moved.unsigned);
    let host = registry.host.clone();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &registry.ca.pair.cert_pem).unwrap();
    let docker = dir.path().join("docker.json");
    std::fs::write(&docker, r#"{"auths": {}}"#).unwrap();
    let policy = json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": "sig", "generation": 1},
        "spec": {"images": [format!("{host}/team/**")],
                 "verifySignatures": [{"name": "release",
                                       "key": {"publicKey": release.public_pem}}]}});
    let pods = vec![
        pod("shop", "old", tag, &format!("{tag}@{signed}")),
        pod("shop", "new", tag, &format!("{tag}@{unsigned}")),
        // Not started: judged on what the tag names now (the unsigned image).
        pod("shop", "pending", tag, ""),
    ];

    let audit_with = |extra: &[&str]| {
        let (client, api) = mock();
        let mut flags = vec![
            "--output",
            "json",
            "--registry-ca-file",
            ca.to_str().unwrap(),
            "--docker-config",
            docker.to_str().unwrap(),
        ];
        flags.extend_from_slice(extra);
        let args = args(&flags);
        (spawn(async move { run(client, &args).await }), api)
    };
    let answer = async |api: &mut ApiServer| {
        answer_list(
            api,
            "/apis/imagegate.dev/v1alpha1/imagepolicies",
            list("ImagePolicyList", vec![policy.clone()], None),
        )
        .await;
        answer_list(
            api,
            "/api/v1/namespaces",
            list("NamespaceList", vec![namespace("shop", "prod")], None),
        )
        .await;
        answer_list(api, "/api/v1/pods", list("PodList", pods.clone(), None)).await;
    };

    let (task, mut api) = audit_with(&[]);
    answer(&mut api).await;
    let result = join(task).await;
    api.no_more().await;
    assert_eq!(exit_code(&result), 1);
    let report = serde_json::to_value(result.unwrap()).unwrap();
    let by_name = |n: &str| {
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("old")["allowed"], true, "{report:#}");
    for name in ["new", "pending"] {
        let r = by_name(name);
        assert_eq!(r["allowed"], false, "{r:#}");
        let v = &r["violations"][0];
        assert_eq!(v["rule"], "verifySignatures");
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("{host}/team/app@{unsigned}")),
            "{name}: {message}"
        );
    }
    assert!(
        by_name("new")["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("which runs {unsigned}")),
        "the running digest is named"
    );

    // Offline: nothing is looked up; a warning instead of a verdict.
    let (task, mut api) = audit_with(&["--offline"]);
    answer(&mut api).await;
    let result = join(task).await;
    assert_eq!(exit_code(&result), 0);
    let report = result.unwrap();
    assert!(report.results.iter().all(|r| r.allowed));
    assert!(
        report.results.iter().all(|r| r
            .warnings
            .iter()
            .any(|w| w.contains("signature not verified (offline)"))),
        "{:?}",
        report.results
    );
}

#[test]
fn no_cluster_is_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = audit_fails(&[], &dir.path().join("missing"), dir.path());
    assert!(
        stderr.contains("imagegate audit: cannot configure the Kubernetes client"),
        "{stderr}"
    );
}

#[test]
fn a_bad_policy_file_is_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: bad}\nspec:\n  allowedImages: [no-registry]\n",
    )
    .unwrap();
    // A kubeconfig that names a server nobody listens on: the policies fail first.
    let kubeconfig = write_kubeconfig(dir.path());
    let stderr = audit_fails(
        &["--policies", file.to_str().unwrap()],
        &kubeconfig,
        dir.path(),
    );
    assert!(stderr.contains("bad.yaml"), "{stderr}");
}

/// Runs `imagegate audit ARGS…` with `kubeconfig` and `home`, outside any cluster; asserts exit
/// code 2 and returns standard error.
fn audit_fails(args: &[&str], kubeconfig: &std::path::Path, home: &std::path::Path) -> String {
    let out = assert_cmd::Command::cargo_bin("imagegate")
        .unwrap()
        .arg("audit")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n",
    )
    .unwrap();
    path
}
