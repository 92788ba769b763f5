//! The Helm chart's operator identity in a real cluster: the chart rendered by `helm template`
//! with the test's names, its ServiceAccount and RBAC applied, a token of that ServiceAccount
//! from the TokenRequest API, and a kubeconfig holding it, so `imagegate run` works with
//! exactly the permissions the chart grants.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::harness::{E2e, from_json};

/// How long the operator's token is valid: longer than any test (the API server's minimum is
/// 10 minutes).
const TOKEN_LIFETIME_SECONDS: i64 = 3600;
/// The chart's annotation on hook objects (the uninstall cleanup Job and its RBAC), which an
/// install does not create with the release.
const HOOK_ANNOTATION: &str = "helm.sh/hook";

/// The helm binary: `$IMAGEGATE_HELM` or `helm` (as `tests/chart.rs` finds it). The end-to-end
/// suite needs it; without it the test fails saying so.
fn helm() -> PathBuf {
    let bin = PathBuf::from(std::env::var_os("IMAGEGATE_HELM").unwrap_or_else(|| "helm".into()));
    let runs = Command::new(&bin)
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        runs,
        "the end-to-end tests need helm to render the chart's RBAC, and {} does not run: \
         install it with `bash .ci/install-helm.sh` or set IMAGEGATE_HELM to a helm binary",
        bin.display()
    );
    bin
}

/// The chart's manifests as a release named `release` in the operator namespace would install
/// them (hooks left out), with `--set` values `set`.
pub fn render(e2e: &E2e, release: &str, set: &[(&str, &str)]) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/imagegate");
    let namespace = e2e.operator_namespace();
    let mut args = vec![
        "template".to_owned(),
        release.to_owned(),
        chart.display().to_string(),
        "--namespace".to_owned(),
        namespace,
    ];
    for (key, value) in set {
        args.extend(["--set".to_owned(), format!("{key}={value}")]);
    }
    let home = e2e.dir().join("helm");
    let out = Command::new(helm())
        .args(&args)
        // No user configuration or repositories may change what is rendered.
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("helm template output is not YAML: {e}\n{text}"));
    docs.into_iter()
        .filter(|d| !d.is_null())
        .filter(|d| d["metadata"]["annotations"][HOOK_ANNOTATION].is_null())
        .collect()
}

/// The resource of each kind of the operator's identity: its ServiceAccount and RBAC.
fn identity_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "ClusterRole" => ApiResource::erase::<ClusterRole>(&()),
        "ClusterRoleBinding" => ApiResource::erase::<ClusterRoleBinding>(&()),
        "Role" => ApiResource::erase::<Role>(&()),
        "RoleBinding" => ApiResource::erase::<RoleBinding>(&()),
        _ => return None,
    })
}

/// Applies the ServiceAccount, ClusterRoles, Roles and bindings among `objects`; the
/// cluster-scoped ones are registered for removal (the namespaced ones go with their
/// namespace). Returns how many objects of each kind were applied, for messages.
pub async fn apply_identity(e2e: &E2e, objects: &[Value]) -> Vec<String> {
    let mut applied = Vec::new();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let Some(resource) = identity_resource(kind) else {
            continue;
        };
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a rendered object has a name");
        let api = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::<DynamicObject>::namespaced_with(e2e.client(), ns, &resource),
            None => {
                e2e.register_delete_of(resource.clone(), None, name);
                Api::<DynamicObject>::all_with(e2e.client(), &resource)
            }
        };
        e2e.apply(&api, object).await;
        applied.push(format!("{kind} {name}"));
    }
    applied
}

/// The one object of `kind` among `objects`.
pub fn the<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "the chart should render one {kind} besides hooks"
    );
    found[0]
}

/// The arguments of the imagegate container of the chart's Deployment (after `run`).
pub fn operator_args(objects: &[Value]) -> Vec<String> {
    let deployment = the(objects, "Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("the Deployment has containers");
    let container = containers
        .iter()
        .find(|c| c["name"] == "imagegate")
        .expect("the Deployment has a container named imagegate");
    container["args"]
        .as_array()
        .expect("the imagegate container has args")
        .iter()
        .map(|a| a.as_str().expect("every argument is a string").to_owned())
        .collect()
}

/// A kubeconfig for the cluster of the administrator's current context, authenticating with
/// a fresh token of the ServiceAccount `namespace/name` (TokenRequest API). Written into the
/// test's directory, readable by its owner only.
pub async fn service_account_kubeconfig(e2e: &E2e, namespace: &str, name: &str) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(e2e.client(), namespace);
    let request: TokenRequest = from_json(json!({
        "spec": {"audiences": [], "expirationSeconds": TOKEN_LIFETIME_SECONDS}
    }));
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot get a token of the ServiceAccount {namespace}/{name}: {e}")
        })
        .status
        .expect("a TokenRequest answer has a status")
        .token;

    let admin = e2e.kubeconfig();
    let context_name = admin
        .current_context
        .as_deref()
        .expect("the kubeconfig has a current-context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_else(|| panic!("the kubeconfig has no context {context_name:?}"));
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .unwrap_or_else(|| panic!("the kubeconfig has no cluster {cluster_name:?}"));
    // JSON is YAML: kube and kubectl read it as a kubeconfig.
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [serde_json::to_value(cluster).expect("a cluster entry as JSON")],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {
            "cluster": cluster_name, "user": name, "namespace": namespace
        }}],
        "current-context": name
    });
    let path = e2e.dir().join(format!("kubeconfig-{name}.json"));
    write_private(&path, &kubeconfig.to_string());
    path
}

/// Writes a file only its owner may read (it holds a token).
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
