//! End-to-end tests against a real cluster, opt-in: set `IMAGEGATE_E2E_KUBECONFIG` to a
//! kubeconfig of a disposable cluster whose API server can reach this machine. The test runs
//! `imagegate run --webhook-url https://HOST:PORT` (HOST from `IMAGEGATE_E2E_WEBHOOK_HOST`,
//! default 127.0.0.1, for a cluster on this machine with host networking) and checks the
//! results through the real API server. Without the variable every test prints why it is
//! skipped and passes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// How long the operator may take to start, create its Secret and webhook configuration, and
/// have the API server call it.
const STARTUP: Duration = Duration::from_secs(90);
/// How long a policy edit, a drift repair or a Secret recreation may take ("within seconds",
/// with margin for a slow test cluster).
const CONVERGE: Duration = Duration::from_secs(30);
/// Poll interval while waiting.
const POLL: Duration = Duration::from_millis(500);

const VWC_NAME: &str = "imagegate-e2e";
const SECRET_NAME: &str = "imagegate-e2e-tls";
const POLICY: &str = "imagegate-e2e";
const PULL_POLICY: &str = "imagegate-e2e-pull";
const ALLOWED_IMAGE: &str = "registry.k8s.io/pause:3.10";
const DENIED_IMAGE: &str = "docker.io/library/busybox:1.36";

fn kubeconfig() -> Option<String> {
    match std::env::var("IMAGEGATE_E2E_KUBECONFIG") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            eprintln!(
                "skipped: set IMAGEGATE_E2E_KUBECONFIG to a disposable cluster's kubeconfig to run the end-to-end tests"
            );
            None
        }
    }
}

async fn client(path: &str) -> Client {
    let kc = Kubeconfig::read_from(path).expect("the kubeconfig is readable");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is valid");
    Client::try_from(config).expect("a client")
}

/// The operator process; killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}]}
    }))
    .expect("a Pod")
}

fn policy(denied: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "deniedImages": [denied]
        }
    })
}

async fn apply<K>(api: &Api<K>, name: &str, body: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply("imagegate-e2e").force(),
        &Patch::Apply(body),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot apply {name}: {e}"));
}

/// The denial message when `create` is refused by imagegate, or `None` when it was admitted.
fn denied_by_policy<T>(result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(s)) if s.message.contains(POLICY) => Some(s.message.clone()),
        Err(e) => panic!("unexpected error (not an imagegate denial): {e}"),
    }
}

#[tokio::test]
async fn operator_end_to_end() {
    let Some(path) = kubeconfig() else { return };
    let client = client(&path).await;
    let namespace = format!("imagegate-e2e-{}", std::process::id());
    let host = std::env::var("IMAGEGATE_E2E_WEBHOOK_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = free_port();
    let webhook_url = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };

    // The CRD and a namespace for the operator's Secret and for the test objects.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/imagepolicy.yaml"
    ))
    .expect("crds/imagepolicy.yaml (generate it with `imagegate crd`)");
    let crd: Value = serde_saphyr::from_str(&crd_yaml).expect("the CRD is YAML");
    apply(&crds, "imagepolicies.imagegate.dev", &crd).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        &namespace,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
    )
    .await;
    let policies: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("imagegate.dev", "v1alpha1", "ImagePolicy"),
            "imagepolicies",
        ),
    );
    apply(&policies, POLICY, &policy(DENIED_IMAGE, &namespace)).await;

    let operator = Operator(
        Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .args([
                "run",
                "--webhook-url",
                &webhook_url,
                "--addr",
                &format!("0.0.0.0:{port}"),
                "--metrics-addr",
                "off",
                "--namespace",
                &namespace,
                "--secret-name",
                SECRET_NAME,
                "--webhook-config-name",
                VWC_NAME,
                "--failure-policy",
                "Fail",
                "--log-format",
                "text",
            ])
            .env("KUBECONFIG", &path)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("imagegate run starts"),
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let dry = PostParams {
        dry_run: true,
        field_manager: None,
    };

    // A denied Pod is refused, with the policy in the message.
    let message = eventually("a denied Pod is refused by imagegate", STARTUP, || {
        let pods = pods.clone();
        let dry = dry.clone();
        async move { denied_by_policy(pods.create(&dry, &pod("denied", DENIED_IMAGE)).await) }
    })
    .await;
    assert!(
        message.contains(DENIED_IMAGE) || message.contains("busybox"),
        "{message}"
    );

    // An allowed Pod is created.
    pods.create(&PostParams::default(), &pod("allowed", ALLOWED_IMAGE))
        .await
        .expect("an allowed Pod is created");

    // A denied Deployment is refused.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "denied"},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "main", "image": DENIED_IMAGE}]}}}
    }))
    .expect("a Deployment");
    assert!(
        denied_by_policy(deployments.create(&dry, &deployment).await).is_some(),
        "a denied Deployment was admitted"
    );

    // A denied ephemeral container (as `kubectl debug` adds it) is refused.
    let debug = Patch::Strategic(json!({"spec": {"ephemeralContainers": [
        {"name": "debugger", "image": DENIED_IMAGE, "stdin": true, "tty": true}
    ]}}));
    assert!(
        denied_by_policy(
            pods.patch_subresource(
                "ephemeralcontainers",
                "allowed",
                &PatchParams::default(),
                &debug
            )
            .await
        )
        .is_some(),
        "a denied ephemeral container was admitted"
    );

    // A policy edit takes effect within seconds, without a restart.
    apply(&policies, POLICY, &policy("registry.k8s.io/**", &namespace)).await;
    eventually("the edited policy denies the previously allowed image", CONVERGE, || {
        let pods = pods.clone();
        let dry = dry.clone();
        async move {
            denied_by_policy(pods.create(&dry, &pod("allowed-2", ALLOWED_IMAGE)).await)
        }
    })
    .await;

    // A tampered webhook configuration is restored.
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    vwcs.patch(
        VWC_NAME,
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}
            ]))
            .expect("a JSON patch"),
        ),
    )
    .await
    .expect("the webhook configuration can be tampered with");
    eventually("the webhook configuration is repaired", CONVERGE, || {
        let vwcs = vwcs.clone();
        async move {
            let v = vwcs.get(VWC_NAME).await.ok()?;
            let hooks = v.webhooks.unwrap_or_default();
            (hooks.len() == 3
                && hooks
                    .iter()
                    .all(|h| h.failure_policy.as_deref() == Some("Fail")))
            .then_some(())
        }
    })
    .await;

    // A deleted Secret is recreated.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let old_uid = secrets
        .get(SECRET_NAME)
        .await
        .expect("the Secret exists")
        .uid();
    secrets
        .delete(SECRET_NAME, &DeleteParams::default())
        .await
        .expect("the Secret can be deleted");
    eventually("the Secret is recreated", CONVERGE, || {
        let secrets = secrets.clone();
        let old_uid = old_uid.clone();
        async move {
            let s = secrets.get_opt(SECRET_NAME).await.ok()??;
            (s.uid() != old_uid).then_some(())
        }
    })
    .await;

    // A policy with setPullPolicyAlways brings the mutating webhook: a Pod created without a
    // pull policy (the API server defaults it to IfNotPresent for a version tag) is stored with
    // Always. Without such a policy the configuration goes away again.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pull_policy = json!({
        "apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
        "metadata": {"name": PULL_POLICY},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "setPullPolicyAlways": true
        }
    });
    apply(&policies, PULL_POLICY, &pull_policy).await;
    eventually(
        "a new Pod is stored with imagePullPolicy Always",
        CONVERGE,
        || {
            let pods = pods.clone();
            let dry = dry.clone();
            async move {
                let p = pods.create(&dry, &pod("pulled", DENIED_IMAGE)).await.ok()?;
                let policy = p.spec?.containers[0].image_pull_policy.clone();
                (policy.as_deref() == Some("Always")).then_some(())
            }
        },
    )
    .await;
    let _ = policies.delete(PULL_POLICY, &DeleteParams::default()).await;
    eventually(
        "the mutating webhook configuration is deleted with its last policy",
        CONVERGE,
        || {
            let mwcs = mwcs.clone();
            async move { mwcs.get_opt(VWC_NAME).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;

    // Clean up: stop the operator first, then remove what it made.
    drop(operator);
    let _ = mwcs.delete(VWC_NAME, &DeleteParams::default()).await;
    let _ = vwcs.delete(VWC_NAME, &DeleteParams::default()).await;
    let _ = policies.delete(POLICY, &DeleteParams::default()).await;
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
}
