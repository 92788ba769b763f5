//! `secretRef` keys in the operator, against a mock API server: the Secrets named by
//! `--key-secrets` are watched by name; policies compile with their keys once they have been
//! read (not before: a policy is never left out only because its key was not read yet); a
//! changed or deleted key re-compiles them; a Secret imagegate may not read makes its policy
//! `Ready=False` saying so. The same for the ConfigMaps of keyless entries' trusted roots
//! (`--trusted-root-config-maps`).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Method;
use imagegate::metrics::Metrics;
use imagegate::operator::key_secrets::{KeySecrets, run_key_secrets};
use imagegate::operator::{self, PolicyIndex};
use imagegate::policy::{Settings, Snapshot};
use imagegate::state::{Readiness, SharedSnapshot};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use support::{Call, REQUEST_WAIT, mock};
use tokio::sync::{mpsc, watch};

const POLICIES: &str = "/apis/imagegate.dev/v1alpha1/imagepolicies";
const SECRETS: &str = "/api/v1/namespaces/gate/secrets";
const CONFIG_MAPS: &str = "/api/v1/namespaces/gate/configmaps";
/// Two trusted roots: the test authorities', and Sigstore's public instance's.
const ROOT: &str = include_str!("data/sigstore/trusted_root.json");
const PUBLIC_ROOT: &str = include_str!("data/sigstore/public_trusted_root.json");
const P256: &str = include_str!("data/keys/p256.pub");
const ED25519: &str = include_str!("data/keys/ed25519.pub");

/// Routes the mock API server's requests: policy reads, Secret reads, and writes (answered at
/// once and kept).
struct Router {
    policies: mpsc::UnboundedReceiver<Call>,
    secrets: mpsc::UnboundedReceiver<Call>,
    config_maps: mpsc::UnboundedReceiver<Call>,
    writes: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Router {
    fn new(mut api: support::ApiServer) -> Router {
        let (policies_tx, policies) = mpsc::unbounded_channel();
        let (secrets_tx, secrets) = mpsc::unbounded_channel();
        let (config_maps_tx, config_maps) = mpsc::unbounded_channel();
        let writes = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&writes);
        let task = tokio::spawn(async move {
            while let Some(call) = api.next_opt(Duration::from_secs(600)).await {
                if call.method == Method::GET && call.path() == POLICIES {
                    let _ = policies_tx.send(call);
                } else if call.method == Method::GET && call.path() == SECRETS {
                    let _ = secrets_tx.send(call);
                } else if call.method == Method::GET && call.path() == CONFIG_MAPS {
                    let _ = config_maps_tx.send(call);
                } else {
                    kept.lock()
                        .unwrap()
                        .push((call.path().to_owned(), call.body.clone()));
                    let body = call.body.clone();
                    call.respond(201, body);
                }
            }
        });
        Router {
            policies,
            secrets,
            config_maps,
            writes,
            task,
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Call>) -> Call {
        tokio::time::timeout(REQUEST_WAIT, rx.recv())
            .await
            .expect("a request in time")
            .expect("the router runs")
    }

    /// The newest `Ready` condition written for `policy`, once one satisfies `check`.
    async fn ready_condition(&self, policy: &str, check: impl Fn(&Value) -> bool) -> Value {
        let path = format!("{POLICIES}/{policy}/status");
        eventually(&format!("a status of {policy} as expected"), || {
            self.writes
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(p, _)| *p == path)
                .is_some_and(|(_, body)| check(&body["status"]["conditions"][0]))
        })
        .await;
        let writes = self.writes.lock().unwrap();
        let (_, body) = writes.iter().rev().find(|(p, _)| *p == path).unwrap();
        body["status"]["conditions"][0].clone()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn policy(name: &str, secret: &str) -> Value {
    json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
    "metadata": {"name": name, "uid": format!("{name}-uid"), "generation": 1, "resourceVersion": "5"},
    "spec": {"verifySignatures": [
        {"name": "release", "key": {"secretRef": {"name": secret, "key": "cosign.pub"}}}
    ]}})
}

fn secret(pem: &str, rv: &str) -> Value {
    let mut s = Secret::default();
    s.metadata.name = Some("cosign".into());
    s.metadata.namespace = Some("gate".into());
    s.metadata.resource_version = Some(rv.into());
    s.data = Some([("cosign.pub".to_owned(), ByteString(pem.as_bytes().to_vec()))].into());
    let mut v = serde_json::to_value(s).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

fn names(snapshot: &SharedSnapshot) -> Vec<String> {
    snapshot
        .load()
        .policies()
        .iter()
        .map(|p| p.name.clone())
        .collect()
}

/// The id of the verifier of the policy `name`'s only entry.
fn verifier(snapshot: &SharedSnapshot, name: &str) -> Option<String> {
    let s = snapshot.load();
    let p = s.policies().iter().find(|p| p.name == name)?;
    Some(p.signatures[0].check.verifier.id().to_owned())
}

/// The operator's policy index and its key Secret and trusted-root ConfigMap watch, started
/// against the mock API server.
struct Running {
    router: Router,
    snapshot: SharedSnapshot,
    readiness: Arc<Readiness>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start(secrets: KeySecrets) -> Running {
    let (client, api) = mock();
    let router = Router::new(api);
    let snapshot: SharedSnapshot =
        Arc::new(ArcSwap::from_pointee(Snapshot::empty(Settings::default())));
    let readiness = Arc::new(Readiness::default());
    let mut index = PolicyIndex::new(
        Arc::clone(&snapshot),
        Arc::clone(&readiness),
        Settings::default(),
    );
    let (keys_tx, keys_rx) = watch::channel(None);
    index.follow_secrets(keys_rx);
    let mut tasks = operator::start_policies(client.clone(), index, None, Arc::new(Metrics::new()));
    tasks.push(tokio::spawn(run_key_secrets(client, secrets, keys_tx)));
    Running {
        router,
        snapshot,
        readiness,
        tasks,
    }
}

/// Answers the policy list with `items`, gives the index a moment to act on them, and returns
/// the watch that follows (held open by the caller, as a quiet API server does).
async fn list_policies(router: &mut Router, items: Value) -> Call {
    let list = Router::next(&mut router.policies).await;
    assert!(!list.is_watch());
    list.ok(
        json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicyList",
        "metadata": {"resourceVersion": "10"}, "items": items}),
    );
    let policy_watch = Router::next(&mut router.policies).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    policy_watch
}

#[tokio::test]
async fn key_secrets_are_watched_by_name_and_recompile_their_policies() {
    let Running {
        mut router,
        snapshot,
        readiness,
        tasks,
    } = start(KeySecrets::new("gate", &["cosign".to_owned()]));

    // The policies are listed first; nothing is in force until the key Secret has been read.
    let _policy_watch = list_policies(
        &mut router,
        json!([policy("signed", "cosign"), policy("elsewhere", "vendor")]),
    )
    .await;
    assert!(
        !readiness.policies_loaded(),
        "ready before the key was read"
    );
    assert!(names(&snapshot).is_empty());

    // The Secret is read by name only.
    let list = Router::next(&mut router.secrets).await;
    assert!(!list.is_watch());
    assert_eq!(
        list.param("fieldSelector").as_deref(),
        Some("metadata.name=cosign")
    );
    list.ok(json!({"apiVersion": "v1", "kind": "SecretList",
        "metadata": {"resourceVersion": "20"}, "items": [secret(P256, "19")]}));
    eventually("the policies are in force", || readiness.policies_loaded()).await;
    assert_eq!(names(&snapshot), ["signed"]);
    let first = verifier(&snapshot, "signed").unwrap();
    let ready = router
        .ready_condition("signed", |c| c["status"] == "True")
        .await;
    assert_eq!(ready["reason"], "Compiled");
    let refused = router
        .ready_condition("elsewhere", |c| c["status"] == "False")
        .await;
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("spec.verifySignatures[0].key.secretRef: the Secret \"vendor\" cannot be read: imagegate may read only the Secrets named in --key-secrets (Helm value signatures.keySecrets: cosign); add it there"),
        "{message}"
    );

    // A rotated key re-compiles the policy.
    let watch = Router::next(&mut router.secrets).await;
    assert!(watch.is_watch());
    assert_eq!(
        watch.param("fieldSelector").as_deref(),
        Some("metadata.name=cosign")
    );
    watch.watch_events(&[json!({"type": "MODIFIED", "object": secret(ED25519, "21")})]);
    eventually("the rotated key is in force", || {
        verifier(&snapshot, "signed").is_some_and(|v| v != first)
    })
    .await;

    // A deleted Secret takes the policy out of force, and its status says why.
    let watch = Router::next(&mut router.secrets).await;
    assert_eq!(watch.param("resourceVersion").as_deref(), Some("21"));
    watch.watch_events(&[json!({"type": "DELETED", "object": secret(ED25519, "22")})]);
    eventually("the policy is out of force", || names(&snapshot).is_empty()).await;
    let gone = router
        .ready_condition("signed", |c| c["status"] == "False")
        .await;
    assert!(
        gone["message"].as_str().unwrap().contains(
            "the Secret \"cosign\" cannot be read: it does not exist in namespace \"gate\""
        ),
        "{gone}"
    );
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn a_secret_imagegate_may_not_read_is_reported_not_waited_for() {
    let (client, api) = mock();
    let mut router = Router::new(api);
    let (keys_tx, mut keys_rx) = watch::channel(None);
    let task = tokio::spawn(run_key_secrets(
        client,
        KeySecrets::new("gate", &["cosign".to_owned()]),
        keys_tx,
    ));
    Router::next(&mut router.secrets)
        .await
        .error(403, "Forbidden");
    tokio::time::timeout(REQUEST_WAIT, keys_rx.changed())
        .await
        .unwrap()
        .unwrap();
    let keys = keys_rx.borrow().clone().unwrap();
    let why = keys.get("cosign", "cosign.pub").unwrap_err();
    assert!(
        why.contains("the API server refused to let imagegate read it"),
        "{why}"
    );
    task.abort();
}

fn keyless_policy(name: &str, config_map: &str) -> Value {
    json!({"apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
    "metadata": {"name": name, "uid": format!("{name}-uid"), "generation": 1, "resourceVersion": "5"},
    "spec": {"verifySignatures": [
        {"name": "ci", "keyless": {
            "issuer": "https://token.actions.githubusercontent.com",
            "subjectRegExp": "https://github\\.com/corp/.+",
            "trustedRoot": {"configMapRef": {"name": config_map, "key": "trusted_root.json"}}}}
    ]}})
}

fn config_map(root: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "sigstore", "namespace": "gate", "resourceVersion": rv},
        "data": {"trusted_root.json": root}})
}

#[tokio::test]
async fn trusted_root_config_maps_are_watched_by_name_and_recompile_their_policies() {
    let Running {
        mut router,
        snapshot,
        readiness,
        tasks,
    } = start(KeySecrets::new("gate", &[]).with_config_maps(&["sigstore".to_owned()]));

    let _policy_watch = list_policies(
        &mut router,
        json!([
            keyless_policy("ci", "sigstore"),
            keyless_policy("elsewhere", "other")
        ]),
    )
    .await;
    assert!(
        !readiness.policies_loaded(),
        "ready before the trusted root was read"
    );

    // The ConfigMap is read by name only.
    let list = Router::next(&mut router.config_maps).await;
    assert_eq!(
        list.param("fieldSelector").as_deref(),
        Some("metadata.name=sigstore")
    );
    list.ok(json!({"apiVersion": "v1", "kind": "ConfigMapList",
        "metadata": {"resourceVersion": "20"}, "items": [config_map(ROOT, "19")]}));
    eventually("the policies are in force", || readiness.policies_loaded()).await;
    assert_eq!(names(&snapshot), ["ci"]);
    let first = verifier(&snapshot, "ci").unwrap();
    let refused = router
        .ready_condition("elsewhere", |c| c["status"] == "False")
        .await;
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("spec.verifySignatures[0].keyless.trustedRoot.configMapRef: the ConfigMap \"other\" cannot be read: imagegate may read only the ConfigMaps named in --trusted-root-config-maps (Helm value signatures.trustedRootConfigMaps: sigstore)"),
        "{message}"
    );

    // A refreshed root re-compiles the policy: the verifier names the new root.
    let watch = Router::next(&mut router.config_maps).await;
    assert!(watch.is_watch());
    watch.watch_events(&[json!({"type": "MODIFIED", "object": config_map(PUBLIC_ROOT, "21")})]);
    eventually("the new root is in force", || {
        verifier(&snapshot, "ci").is_some_and(|v| v != first)
    })
    .await;

    // A document that is not a trusted root takes the policy out of force, saying why.
    let watch = Router::next(&mut router.config_maps).await;
    watch.watch_events(&[json!({"type": "MODIFIED", "object": config_map("{}", "22")})]);
    eventually("the policy is out of force", || names(&snapshot).is_empty()).await;
    let bad = router
        .ready_condition("ci", |c| c["status"] == "False")
        .await;
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("the key \"trusted_root.json\" of the ConfigMap \"sigstore\": the trusted root is not usable"),
        "{bad}"
    );
    for task in tasks {
        task.abort();
    }
}
