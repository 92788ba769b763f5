//! The operator half of `imagegate run`: watches ImagePolicies and Namespaces, writes policy
//! status, keeps the TLS Secret and the Validating- and MutatingWebhookConfiguration in the
//! desired state.
//!
//! Every write is idempotent (server-side apply with field manager `imagegate`, create-or-read,
//! updates guarded by `resourceVersion`), so any number of replicas run side by side without a
//! leader. Each task reconciles from what it reads, so an API server outage only delays
//! reconciling: the last snapshot, namespace labels and certificate stay in force, and the
//! watches resume with backoff.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::policy::{ImagePolicy, SecretKeys, Settings, Snapshot};
use crate::state::{Readiness, SharedSnapshot};
use crate::tls::CertResolver;

pub mod audit;
pub mod certificates;
pub mod events;
pub mod index;
pub mod key_secrets;
pub mod namespaces;
pub mod policy_reports;
pub mod status;
pub mod webhook_config;

pub use index::PolicyIndex;
pub use namespaces::NamespaceCache;

/// The field manager of every server-side apply, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "imagegate";
/// An object with this annotation set to `"true"` is left alone by the operator.
pub const UNMANAGED_ANNOTATION: &str = "imagegate.dev/unmanaged";

/// How often the webhook configuration is re-checked even without a watch event: the watch
/// repairs drift within seconds; this bounds the delay if a watch event is ever missed, and
/// notices an owner ClusterRole that went away.
pub const WEBHOOK_RESYNC: Duration = Duration::from_secs(60);
/// How often the TLS Secret is re-read even without a watch event: renewals are due at 2/3
/// of a validity of at least an hour, so a minute is early enough, and one GET a minute per
/// replica costs the API server nothing.
pub const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Wait before retrying a failed write (the API server may be unreachable or overloaded);
/// short enough to repair quickly once it answers again.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);

/// What went wrong talking to the API server or building an object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be encoded as JSON.
    #[error("cannot encode an object as JSON: {0}")]
    Json(serde_json::Error),
    /// An object read from the API server is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// Feeds ImagePolicy watch events into `index` for as long as the process runs. Watch errors
/// are logged and retried with kube-runtime's backoff; the snapshot in force stays meanwhile.
///
/// When the index follows key Secrets ([`PolicyIndex::follow_secrets`]), their contents are fed
/// in as they change, and each change re-compiles the policies.
pub async fn run_policy_index(client: Client, mut index: PolicyIndex) {
    let api: Api<ImagePolicy> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim_policy)
        .boxed();
    let mut secret_updates = index.take_secret_updates();
    loop {
        let errors = tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(event)) => index.apply(&event),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "ImagePolicy watch failed; retrying");
                    None
                }
            },
            keys = next_secret_keys(&mut secret_updates) => index.set_secrets(keys),
        };
        if let Some(errors) = errors {
            tracing::debug!(
                policies = index.store().len(),
                left_out = errors.len(),
                "policy snapshot rebuilt"
            );
            for e in errors {
                tracing::warn!(policy = %e.policy, field = %e.field, message = %e.message,
                    "policy does not compile and is left out");
            }
        }
    }
}

/// The annotation in which client-side `kubectl apply` (and tools built on it) keeps a copy of
/// the whole object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the operator's stores never read from an ImagePolicy as it arrives: the API
/// server's record of who wrote which field (`managedFields`) and `kubectl apply`'s copy of the
/// last applied object. Together they are often larger than the policy itself, and the policy
/// index holds every policy of the cluster for the life of the process.
pub fn trim_policy(policy: &mut ImagePolicy) {
    policy.metadata.managed_fields = None;
    if let Some(annotations) = &mut policy.metadata.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            policy.metadata.annotations = None;
        }
    }
}

/// Drops what the namespace store never reads from a Namespace as it arrives: only its labels
/// are read (by policies' namespace selectors), and the audit's label-change check.
fn trim_namespace(namespace: &mut Namespace) {
    namespace.metadata.managed_fields = None;
    namespace.metadata.annotations = None;
}

/// The key Secrets' contents from `updates` once they change (from nothing, the first time);
/// never, when there are none to follow.
async fn next_secret_keys(updates: &mut Option<watch::Receiver<Option<SecretKeys>>>) -> SecretKeys {
    loop {
        let Some(rx) = updates else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            // The sender is gone: the keys in use stay.
            *updates = None;
            continue;
        }
        if let Some(keys) = rx.borrow_and_update().clone() {
            return keys;
        }
    }
}

/// Starts the policy tasks on the current runtime: the ImagePolicy watch that feeds `index`
/// (and through it the shared snapshot and readiness), the status writer, and the policy
/// metrics. They run for the life of the process; abort the returned tasks to stop them.
pub fn start_policies(
    client: Client,
    index: PolicyIndex,
    recorder: Option<Recorder>,
    metrics: Arc<Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let store = index.store();
    let snapshot = index.snapshot();
    let secrets = index.secrets();
    let status_changes = index.subscribe();
    let metric_changes = index.subscribe();
    vec![
        tokio::spawn(run_policy_index(client.clone(), index)),
        tokio::spawn(run_status_writer(
            client,
            store,
            Arc::clone(&snapshot),
            secrets,
            status_changes,
            recorder,
        )),
        tokio::spawn(run_policy_metrics(snapshot, metric_changes, metrics)),
    ]
}

/// Sets the policy metrics (policies in force, policies left out, snapshot time) after every
/// rebuild of the snapshot.
pub async fn run_policy_metrics(
    snapshot: SharedSnapshot,
    mut rebuilt: watch::Receiver<index::Rebuilt>,
    metrics: Arc<Metrics>,
) {
    while rebuilt.changed().await.is_ok() {
        let errors = rebuilt.borrow_and_update().errors;
        let current = snapshot.load();
        metrics.set_policy_count(current.policies().len());
        metrics.set_policy_errors(errors);
        metrics.set_snapshot_created(current.created());
    }
}

/// Writes each policy's status whenever the index changes, and retries failed writes. Policies
/// compile with the key Secrets' contents the index uses.
pub async fn run_status_writer(
    client: Client,
    store: Store<ImagePolicy>,
    snapshot: SharedSnapshot,
    secrets: Arc<ArcSwap<SecretKeys>>,
    mut changed: watch::Receiver<index::Rebuilt>,
    recorder: Option<Recorder>,
) {
    loop {
        let failed_policies = Arc::clone(&changed.borrow_and_update().failed);
        let mut failed = false;
        for policy in store.state() {
            // The snapshot is read per policy, never held across a write: a pass over many
            // policies must not keep a replaced snapshot alive beside the next two.
            let compiled =
                compile_result(&policy, &snapshot.load(), &failed_policies, &secrets.load());
            let result = compiled.as_ref().map(|_| ());
            match status::reconcile(client.clone(), &policy, result, recorder.as_ref()).await {
                Ok(true) => tracing::info!(policy = %policy.name_any(), "status written"),
                Ok(false) => {}
                Err(e) => {
                    failed = true;
                    tracing::warn!(policy = %policy.name_any(), error = %e, "cannot write status");
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_DELAY) => {}
                r = changed.changed() => if r.is_err() { return },
            }
        } else if changed.changed().await.is_err() {
            return;
        }
    }
}

/// What compiling `policy` gives: read from the last rebuild when it compiled this generation
/// (in the snapshot, or among the policies left out), so that a status pass does not compile
/// every policy again; compiled here otherwise (the store is ahead of the rebuild, or the
/// object has no generation).
fn compile_result(
    policy: &ImagePolicy,
    snapshot: &Snapshot,
    failed: &std::collections::HashMap<String, (Option<i64>, crate::policy::CompileError)>,
    secrets: &SecretKeys,
) -> Result<(), crate::policy::CompileError> {
    let generation = policy.metadata.generation;
    if generation.is_some() {
        let name = policy.name_any();
        if snapshot
            .policy(&name)
            .is_some_and(|p| p.generation == generation)
        {
            return Ok(());
        }
        if let Some((g, e)) = failed.get(&name)
            && *g == generation
        {
            return Err(e.clone());
        }
    }
    crate::policy::compile_with(policy, secrets).map(|_| ())
}

/// Keeps `writer` (the namespace store) in step with the cluster's Namespaces.
pub async fn run_namespace_reflector(client: Client, writer: reflector::store::Writer<Namespace>) {
    watch_namespaces(client, writer, watch::channel(0).0).await
}

/// Keeps `writer` (the namespace store) in step with the cluster's Namespaces, and bumps
/// `label_changes` whenever a namespace already known changes its labels (a new namespace has
/// no Pods yet; a deleted one takes its Pods with it).
pub async fn watch_namespaces(
    client: Client,
    writer: reflector::store::Writer<Namespace>,
    label_changes: watch::Sender<u64>,
) {
    let known = writer.as_reader();
    let api: Api<Namespace> = Api::all(client);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim_namespace)
        .inspect(move |event| {
            if let Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns)) = event
                && let Some(before) = known.get(&reflector::ObjectRef::from_obj(ns))
                && before.metadata.labels != ns.metadata.labels
            {
                label_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        })
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "Namespace watch failed; retrying");
        }
    }
}

/// Keeps the webhook configuration in the desired state: on every watch event of the object,
/// every change of the CA bundle, and every [`WEBHOOK_RESYNC`]. Nothing is written before the
/// first CA bundle is known.
pub async fn run_webhook_config(
    client: Client,
    params: webhook_config::WebhookParams,
    owner_cluster_role: Option<String>,
    ca_bundle: watch::Receiver<Option<String>>,
) {
    let name = params.name.clone();
    let api = client.clone();
    let reconcile = move |ca: String| {
        let (client, params, owner) = (client.clone(), params.clone(), owner_cluster_role.clone());
        async move { webhook_config::reconcile(client, &params, &ca, owner.as_deref()).await }
            .boxed()
    };
    keep_reconciled::<ValidatingWebhookConfiguration>(api, &name, ca_bundle, None, reconcile).await
}

/// Keeps the mutating webhook configuration in the desired state: present (and repaired)
/// while some policy of the snapshot in force asks for mutation (`setPullPolicyAlways`,
/// `pinDigests`), deleted while none does. It looks on every watch event of the object, every
/// change of the CA bundle, every rebuild of the snapshot (`rebuilt`), and every
/// [`WEBHOOK_RESYNC`]; nothing is written before the first CA bundle is known, nor before the
/// first complete list of policies (an empty snapshot at start-up must not delete it).
pub async fn run_mutating_webhook_config(
    client: Client,
    params: webhook_config::WebhookParams,
    owner_cluster_role: Option<String>,
    ca_bundle: watch::Receiver<Option<String>>,
    snapshot: SharedSnapshot,
    rebuilt: watch::Receiver<index::Rebuilt>,
) {
    let policies = rebuilt.clone();
    let name = params.name.clone();
    let api = client.clone();
    let reconcile = move |ca: String| {
        // Decided here, from the snapshot in force as the loop wakes up.
        let loaded = policies.borrow().count > 0;
        let wanted = snapshot.load().policies().iter().any(|p| p.mutates());
        let (client, params, owner) = (client.clone(), params.clone(), owner_cluster_role.clone());
        async move {
            if !loaded {
                return Ok(webhook_config::Outcome::UpToDate);
            }
            webhook_config::reconcile_mutating(client, &params, &ca, owner.as_deref(), wanted).await
        }
        .boxed()
    };
    keep_reconciled::<MutatingWebhookConfiguration>(api, &name, ca_bundle, Some(rebuilt), reconcile)
        .await
}

/// The loop of [`run_webhook_config`] and [`run_mutating_webhook_config`]: calls `reconcile`
/// with the CA bundle whenever there is a reason to look at the object of kind `K` named
/// `name` (a watch event, a new CA bundle, a rebuilt snapshot, the resync period), and
/// [`RETRY_DELAY`] after a failure.
async fn keep_reconciled<K>(
    client: Client,
    name: &str,
    mut ca_bundle: watch::Receiver<Option<String>>,
    mut rebuilt: Option<watch::Receiver<index::Rebuilt>>,
    mut reconcile: impl FnMut(
        String,
    ) -> futures::future::BoxFuture<
        'static,
        Result<webhook_config::Outcome, Error>,
    >,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::all(client);
    let fields = format!("metadata.name={name}");
    let mut events = watcher(api, watcher::Config::default().fields(&fields))
        .default_backoff()
        .boxed();
    // The first tick is one period away: the loop reconciles once before waiting anyway.
    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + WEBHOOK_RESYNC, WEBHOOK_RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ca = ca_bundle.borrow_and_update().clone();
        if let Some(r) = rebuilt.as_mut() {
            r.borrow_and_update();
        }
        let mut retry = false;
        if let Some(ca) = ca {
            use webhook_config::Outcome;
            match reconcile(ca).await {
                Ok(Outcome::Applied) => {
                    tracing::info!(%kind, %name, "webhook configuration applied")
                }
                Ok(Outcome::Deleted) => tracing::info!(%kind, %name,
                    "webhook configuration deleted: no policy asks for mutation"),
                Ok(Outcome::Unmanaged) => tracing::debug!(%kind, %name,
                    "webhook configuration is marked {UNMANAGED_ANNOTATION} or not imagegate's; left alone"),
                Ok(Outcome::OwnerGone) => tracing::warn!(%kind, %name,
                    "the owner ClusterRole is gone (uninstalling?); webhook configuration not written"),
                Ok(Outcome::UpToDate | Outcome::Absent) => {}
                Err(e) => {
                    retry = true;
                    tracing::warn!(%kind, %name, error = %e,
                        "cannot reconcile the webhook configuration; retrying")
                }
            }
        }
        // Wait for the next reason to look again.
        loop {
            let policies_changed = async {
                match rebuilt.as_mut() {
                    Some(r) => r.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(RETRY_DELAY), if retry => break,
                r = ca_bundle.changed() => {
                    if r.is_err() { return }
                    break;
                }
                r = policies_changed => {
                    if r.is_err() { return }
                    break;
                }
                _ = resync.tick() => break,
                event = events.try_next() => match event {
                    // Objects of a (re-)list arrive one by one; look once the list is complete.
                    Ok(Some(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Ok(Some(_)) => break,
                    Ok(None) => return,
                    Err(e) => tracing::warn!(%kind, error = %e, "webhook configuration watch failed; retrying"),
                },
            }
        }
    }
}

/// Keeps the TLS Secret valid and serves its certificate: on every watch event of the Secret,
/// every [`CERT_CHECK_INTERVAL`], and [`RETRY_DELAY`] after a failure. A new serving
/// certificate goes into `tls` at once; the CA bundle goes to `ca_bundle` for the webhook
/// configuration. On failure the certificate in use stays.
pub async fn run_certificates(
    client: Client,
    namespace: String,
    secret_name: String,
    params: certificates::CertParams,
    tls: Arc<CertResolver>,
    ca_bundle: watch::Sender<Option<String>>,
    metrics: Option<Arc<Metrics>>,
) {
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let fields = format!("metadata.name={secret_name}");
    let mut events = watcher(api, watcher::Config::default().fields(&fields))
        .default_backoff()
        .boxed();
    // The first tick is one period away: the loop reconciles once before waiting anyway.
    let mut check = tokio::time::interval_at(
        tokio::time::Instant::now() + CERT_CHECK_INTERVAL,
        CERT_CHECK_INTERVAL,
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving: Option<String> = None;
    loop {
        let now = jiff::Timestamp::now();
        let retry = match certificates::ensure(
            client.clone(),
            &namespace,
            &secret_name,
            &params,
            now,
        )
        .await
        {
            Ok(material) => {
                if serving.as_deref() != Some(material.serving.cert_pem.as_str()) {
                    match tls.set_pem(&material.serving.cert_pem, &material.serving.key_pem) {
                        Ok(()) => {
                            tracing::info!(secret = %secret_name, "serving certificate loaded");
                            serving = Some(material.serving.cert_pem.clone());
                            if let Some(m) = &metrics {
                                m.set_cert_not_after(tls.not_after());
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot load the serving certificate")
                        }
                    }
                }
                let bundle = material.ca_bundle();
                ca_bundle.send_if_modified(|current| {
                    if current.as_deref() == Some(bundle.as_str()) {
                        false
                    } else {
                        *current = Some(bundle);
                        true
                    }
                });
                false
            }
            Err(e) => {
                tracing::warn!(secret = %secret_name, error = %e, "cannot reconcile the TLS Secret; retrying");
                true
            }
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_DELAY), if retry => break,
                _ = check.tick() => break,
                event = events.try_next() => match event {
                    Ok(Some(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Ok(Some(_)) => break,
                    Ok(None) => return,
                    Err(e) => tracing::warn!(error = %e, "TLS Secret watch failed; retrying"),
                },
            }
        }
    }
}

/// What the operator needs to know.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The operator's namespace (holds the Secret).
    pub namespace: String,
    /// The TLS Secret's name.
    pub secret_name: String,
    /// The desired webhook configuration.
    pub webhook: webhook_config::WebhookParams,
    /// The certificates' names and validity.
    pub certs: certificates::CertParams,
    /// The chart's ClusterRole that owns the webhook configuration.
    pub owner_cluster_role: Option<String>,
    /// Engine settings for the snapshot.
    pub settings: Settings,
    /// The Secrets in `namespace` that `secretRef` keys may name (`--key-secrets`).
    pub key_secrets: Vec<String>,
    /// The ConfigMaps in `namespace` that keyless entries may name as their trusted root
    /// (`--trusted-root-config-maps`).
    pub trusted_root_config_maps: Vec<String>,
    /// The file of `--sigstore-trusted-root` and the root read from it at start.
    pub sigstore_trusted_root: Option<(std::path::PathBuf, Arc<crate::signature::TrustedRoot>)>,
    /// The audit of running Pods; `None` with `--audit-interval off`.
    pub audit: Option<audit::AuditConfig>,
}

/// What the webhook server reads, kept current by the operator's tasks.
pub struct Running {
    /// The policy snapshot in force.
    pub snapshot: SharedSnapshot,
    /// Readiness (policies loaded, draining).
    pub readiness: Arc<Readiness>,
    /// Namespace labels.
    pub namespaces: Arc<NamespaceCache>,
    /// Break-glass Events.
    pub events: Arc<events::KubeEventSink>,
    /// The operator's tasks; abort them on shutdown.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the operator follows of what policies name outside themselves.
fn key_secrets(config: &OperatorConfig) -> key_secrets::KeySecrets {
    let state = key_secrets::KeySecrets::new(&config.namespace, &config.key_secrets)
        .with_config_maps(&config.trusted_root_config_maps);
    match &config.sigstore_trusted_root {
        Some((file, root)) => state.with_default_root(file.clone(), root.clone()),
        None => state,
    }
}

/// Starts every operator task on the current runtime. The audit gathers signature evidence
/// for what runs from `evidence` (the registry adapter the webhook uses too).
pub fn start(
    client: Client,
    config: OperatorConfig,
    tls: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    evidence: Arc<dyn crate::evidence::Gather>,
) -> Running {
    let snapshot: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty(
        config.settings.clone(),
    )));
    let readiness = Arc::new(Readiness::default());
    let mut index = PolicyIndex::new(
        Arc::clone(&snapshot),
        Arc::clone(&readiness),
        config.settings.clone(),
    );
    let (keys_tx, keys_rx) = watch::channel(None);
    index.follow_secrets(keys_rx);
    let store = index.store();
    let rebuilt = index.subscribe();
    let recorder = Recorder::new(client.clone(), FIELD_MANAGER.into());
    let (ns_store, ns_writer) = reflector::store();
    let namespaces = Arc::new(NamespaceCache::new(ns_store.clone(), client.clone()));
    let (sink, queue) = events::KubeEventSink::new();
    let (ca_tx, ca_rx) = watch::channel(None);
    let (label_changes, namespace_changes) = watch::channel(0);
    let audit_state = audit::AuditState {
        snapshot: index.snapshot(),
        readiness: Arc::clone(&readiness),
        policies: index.store(),
        rebuilt: index.subscribe(),
        namespaces: ns_store,
        namespace_changes,
    };

    let mut tasks = start_policies(client.clone(), index, Some(recorder), Arc::clone(&metrics));
    if let Some(audit_config) = config.audit.clone() {
        tasks.extend(audit::start(
            client.clone(),
            audit_config,
            audit_state,
            Arc::clone(&metrics),
            evidence,
        ));
    }
    tasks.extend([
        tokio::spawn(key_secrets::run_key_secrets(
            client.clone(),
            key_secrets(&config),
            keys_tx,
        )),
        tokio::spawn(watch_namespaces(client.clone(), ns_writer, label_changes)),
        tokio::spawn(events::run_event_publisher(
            client.clone(),
            FIELD_MANAGER.into(),
            store,
            queue,
        )),
        tokio::spawn(run_certificates(
            client.clone(),
            config.namespace.clone(),
            config.secret_name.clone(),
            config.certs.clone(),
            tls,
            ca_tx,
            Some(metrics),
        )),
        tokio::spawn(run_webhook_config(
            client.clone(),
            config.webhook.clone(),
            config.owner_cluster_role.clone(),
            ca_rx.clone(),
        )),
        tokio::spawn(run_mutating_webhook_config(
            client,
            config.webhook.clone(),
            config.owner_cluster_role.clone(),
            ca_rx,
            Arc::clone(&snapshot),
            rebuilt,
        )),
    ]);
    Running {
        snapshot,
        readiness,
        namespaces,
        events: Arc::new(sink),
        tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CompileError, ImagePolicySpec};

    #[test]
    fn stores_keep_neither_managed_fields_nor_the_last_applied_copy() {
        let mut policy: ImagePolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
            "metadata": {
                "name": "p", "generation": 2, "resourceVersion": "7",
                "annotations": {
                    LAST_APPLIED: "{\"apiVersion\":\"imagegate.dev/v1alpha1\"}",
                    "team.example/owner": "platform",
                },
                "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                    "apiVersion": "imagegate.dev/v1alpha1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:spec": {"f:deniedTags": {}}}}],
            },
            "spec": {"deniedTags": ["latest"]},
        }))
        .unwrap();
        let spec = policy.spec.clone();
        trim_policy(&mut policy);
        assert_eq!(policy.metadata.managed_fields, None);
        let annotations = policy.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["team.example/owner"],
            "other annotations stay"
        );
        assert_eq!(
            (policy.metadata.generation, policy.spec),
            (Some(2), spec),
            "what the index compares and compiles stays"
        );
        // With the last-applied copy the only annotation, none are left.
        let mut alone = ImagePolicy::new("q", ImagePolicySpec::default());
        alone.metadata.annotations = Some([(LAST_APPLIED.to_owned(), "{}".to_owned())].into());
        trim_policy(&mut alone);
        assert_eq!(alone.metadata.annotations, None);

        let mut namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"env": "prod"},
                "annotations": {LAST_APPLIED: "{}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "status": {"phase": "Active"},
        }))
        .unwrap();
        trim_namespace(&mut namespace);
        assert_eq!(namespace.metadata.managed_fields, None);
        assert_eq!(namespace.metadata.annotations, None);
        assert_eq!(
            namespace.metadata.labels.unwrap()["env"],
            "prod",
            "labels are what the store is for"
        );
    }

    #[test]
    fn the_status_writer_reads_compile_results_of_the_same_generation() {
        let mut policy = ImagePolicy::new(
            "p",
            ImagePolicySpec {
                allowed_images: Some(vec!["docker.io/**".into()]),
                ..ImagePolicySpec::default()
            },
        );
        policy.metadata.generation = Some(3);
        let recorded = CompileError {
            policy: "p".into(),
            field: "spec".into(),
            message: "as the rebuild found".into(),
        };
        let failed = [("p".to_owned(), (Some(3), recorded.clone()))].into();
        let empty = Snapshot::empty(Settings::default());
        // Read, not compiled again (compiling would say it is fine).
        assert_eq!(
            compile_result(&policy, &empty, &failed, &SecretKeys::default()),
            Err(recorded)
        );
        // Another generation than the rebuild saw: compiled here.
        policy.metadata.generation = Some(4);
        assert_eq!(
            compile_result(&policy, &empty, &failed, &SecretKeys::default()),
            Ok(())
        );
        // In the snapshot at this generation: in force.
        let (snapshot, _) = Snapshot::compile([&policy], Settings::default());
        policy.spec.allowed_images = Some(vec!["not a pattern".into()]);
        assert_eq!(
            compile_result(
                &policy,
                &snapshot,
                &Default::default(),
                &SecretKeys::default()
            ),
            Ok(())
        );
    }
}
