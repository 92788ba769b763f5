//! The `ValidatingWebhookConfiguration` and the `MutatingWebhookConfiguration`: the desired
//! objects (pure functions of the flags, the CA bundle and the owner), whether an existing
//! object has drifted from them, and the reconcile steps that repair them by server-side apply
//! (and delete the mutating one while no policy asks for mutation).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Error, FIELD_MANAGER, UNMANAGED_ANNOTATION};
use crate::namespaces::NAME_LABEL;

/// Name of the webhook for Pods and `kubectl debug` (ephemeral containers).
pub const PODS_WEBHOOK: &str = "pods.imagegate.dev";
/// Name of the webhook for workloads with a pod template.
pub const WORKLOADS_WEBHOOK: &str = "workloads.imagegate.dev";
/// Name of the webhook that rejects ImagePolicies that do not compile.
pub const POLICIES_WEBHOOK: &str = "policies.imagegate.dev";
/// Name of the mutating webhook for Pods (`setPullPolicyAlways`, `pinDigests`).
pub const MUTATE_WEBHOOK: &str = "mutate.imagegate.dev";
/// The admission path of the webhook server.
pub const VALIDATE_PATH: &str = "/validate";
/// The mutating admission path of the webhook server.
pub const MUTATE_PATH: &str = "/mutate";
/// The Service port the API server calls (the Service maps it to the container's port).
pub const SERVICE_PORT: i32 = 443;
/// Label put on the objects the operator manages, so they can be found with a selector.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// What the webhook configuration calls: the in-cluster Service, or a URL (a workstation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `service {namespace, name, path: /validate, port: 443}` (`/mutate` for the mutating
    /// webhook).
    Service { namespace: String, name: String },
    /// `url: <base>/validate` (`<base>/mutate`); `base` is an `https://HOST[:PORT]` URL
    /// without a trailing `/`.
    Url(String),
}

/// `failurePolicy` of the webhooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// The API server refuses the request when the webhook cannot be reached (fail closed).
    #[default]
    #[value(name = "Fail")]
    Fail,
    /// The API server admits the request when the webhook cannot be reached (fail open).
    #[value(name = "Ignore")]
    Ignore,
}

impl FailurePolicy {
    /// The value as written in the webhook configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
    }
}

/// Everything the desired webhook configuration depends on besides the CA bundle and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookParams {
    /// `metadata.name` of the configuration.
    pub name: String,
    /// Where the API server sends AdmissionReviews.
    pub endpoint: Endpoint,
    /// `failurePolicy` of every webhook.
    pub failure_policy: FailurePolicy,
    /// `timeoutSeconds` of every webhook (1..=30).
    pub timeout_seconds: i32,
    /// Namespaces never sent to the webhook; the operator's own namespace is always added.
    pub excluded_namespaces: Vec<String>,
    /// The operator's own namespace.
    pub namespace: String,
}

impl WebhookParams {
    /// The excluded namespaces, the operator's own included, sorted and without duplicates.
    pub fn all_excluded(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .excluded_namespaces
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        all.push(self.namespace.clone());
        all.sort();
        all.dedup();
        all
    }
}

fn rule(groups: &[&str], resources: &[&str]) -> RuleWithOperations {
    rule_for(&["CREATE", "UPDATE"], groups, resources)
}

fn rule_for(operations: &[&str], groups: &[&str], resources: &[&str]) -> RuleWithOperations {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    RuleWithOperations {
        api_groups: strings(groups),
        api_versions: strings(&["*"]),
        operations: strings(operations),
        resources: strings(resources),
        scope: Some("*".to_owned()),
    }
}

/// How the API server reaches `path` of the webhook server, trusting `ca_bundle`.
fn client_config(params: &WebhookParams, ca_bundle: &str, path: &str) -> WebhookClientConfig {
    let ca_bundle = Some(ByteString(ca_bundle.as_bytes().to_vec()));
    match &params.endpoint {
        Endpoint::Service { namespace, name } => WebhookClientConfig {
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_owned()),
                port: Some(SERVICE_PORT),
            }),
            url: None,
        },
        Endpoint::Url(base) => WebhookClientConfig {
            ca_bundle,
            service: None,
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
        },
    }
}

/// Every namespace but the excluded ones, so the webhooks can never lock imagegate out.
fn namespace_selector(params: &WebhookParams) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: NAME_LABEL.to_owned(),
            operator: "NotIn".to_owned(),
            values: Some(params.all_excluded()),
        }]),
        match_labels: None,
    }
}

/// `metadata` of a managed configuration: its name, the managed-by label, the owner.
fn metadata(params: &WebhookParams, owner: Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(params.name.clone()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_owned(),
            "imagegate".to_owned(),
        )])),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The owner reference to the chart's ClusterRole, so that garbage collection deletes the
/// webhook configuration when the chart is uninstalled.
pub fn owner_reference(role: &ClusterRole) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "rbac.authorization.k8s.io/v1".to_owned(),
        kind: "ClusterRole".to_owned(),
        name: role.metadata.name.clone()?,
        uid: role.metadata.uid.clone()?,
        // blockOwnerDeletion would need `update` on clusterroles/finalizers; not needed for
        // the dependent to be collected.
        block_owner_deletion: None,
        controller: None,
    })
}

/// The full desired webhook configuration.
pub fn desired(
    params: &WebhookParams,
    ca_bundle: &str,
    owner: Option<OwnerReference>,
) -> ValidatingWebhookConfiguration {
    let client_config = client_config(params, ca_bundle, VALIDATE_PATH);
    let namespace_selector = namespace_selector(params);
    let webhook = |name: &str, rules: Vec<RuleWithOperations>| ValidatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config: client_config.clone(),
        failure_policy: Some(params.failure_policy.as_str().to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        namespace_selector: Some(namespace_selector.clone()),
        object_selector: Some(LabelSelector::default()),
        rules: Some(rules),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(params.timeout_seconds),
        match_conditions: None,
    };
    ValidatingWebhookConfiguration {
        metadata: metadata(params, owner),
        webhooks: Some(vec![
            webhook(
                PODS_WEBHOOK,
                vec![rule(&[""], &["pods", "pods/ephemeralcontainers"])],
            ),
            webhook(
                WORKLOADS_WEBHOOK,
                vec![
                    rule(
                        &["apps"],
                        &["deployments", "replicasets", "statefulsets", "daemonsets"],
                    ),
                    rule(&["batch"], &["jobs", "cronjobs"]),
                    rule(&[""], &["replicationcontrollers"]),
                ],
            ),
            webhook(
                POLICIES_WEBHOOK,
                vec![rule(&["imagegate.dev"], &["imagepolicies"])],
            ),
        ]),
    }
}

/// The full desired mutating webhook configuration: named like the validating one, one
/// webhook for Pod CREATE and `pods/ephemeralcontainers` UPDATE, with the same CA bundle,
/// failure policy, timeout and excluded namespaces. `reinvocationPolicy: IfNeeded`: when a
/// later mutating webhook (a sidecar injector) adds containers, the API server calls this one
/// again, so they get the pull policy too.
pub fn desired_mutating(
    params: &WebhookParams,
    ca_bundle: &str,
    owner: Option<OwnerReference>,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: metadata(params, owner),
        webhooks: Some(vec![MutatingWebhook {
            name: MUTATE_WEBHOOK.to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(params, ca_bundle, MUTATE_PATH),
            failure_policy: Some(params.failure_policy.as_str().to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            namespace_selector: Some(namespace_selector(params)),
            object_selector: Some(LabelSelector::default()),
            reinvocation_policy: Some("IfNeeded".to_owned()),
            rules: Some(vec![
                rule_for(&["CREATE"], &[""], &["pods"]),
                rule_for(&["UPDATE"], &[""], &["pods/ephemeralcontainers"]),
            ]),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(params.timeout_seconds),
            match_conditions: None,
        }]),
    }
}

/// Whether the object carries `imagegate.dev/unmanaged: "true"`: then it is left alone.
pub fn is_unmanaged(object: &impl Resource) -> bool {
    object
        .annotations()
        .get(UNMANAGED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whether the object carries the label imagegate puts on what it manages: only such a
/// configuration is ever deleted.
pub fn is_ours(object: &impl Resource) -> bool {
    object
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|v| v == "imagegate")
}

/// Whether `actual` holds everything `desired` sets, with the same values. Fields the API
/// server adds (defaults, managed fields) are ignored; a missing or changed webhook, rule,
/// policy, selector, CA bundle, endpoint or owner reference is drift. Webhooks are compared by
/// name, since server-side apply merges them by name.
pub fn is_up_to_date<K: Serialize>(actual: &K, desired: &K) -> bool {
    let (Ok(a), Ok(d)) = (serde_json::to_value(actual), serde_json::to_value(desired)) else {
        return false;
    };
    if !contains(&a["metadata"]["labels"], &d["metadata"]["labels"])
        || !contains(
            &a["metadata"]["ownerReferences"],
            &d["metadata"]["ownerReferences"],
        )
    {
        return false;
    }
    let by_name = |v: &Value| -> BTreeMap<String, Value> {
        v["webhooks"]
            .as_array()
            .map(|hooks| {
                hooks
                    .iter()
                    .map(|h| (h["name"].as_str().unwrap_or_default().to_owned(), h.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let actual_hooks = by_name(&a);
    by_name(&d).iter().all(|(name, want)| {
        actual_hooks
            .get(name)
            .is_some_and(|have| contains(have, want))
    })
}

/// Whether `have` contains `want`: objects by key (extra keys in `have` allowed), arrays
/// element by element with the same length, other values equal. `null` in `want` is absent.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (_, Value::Null) => true,
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| contains(h.get(k).unwrap_or(&Value::Null), wv)),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| contains(hv, wv))
        }
        (h, w) => h == w,
    }
}

/// What one reconcile of a webhook configuration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object matched the desired state; nothing was written.
    UpToDate,
    /// The object was created or repaired by server-side apply.
    Applied,
    /// The object carries the unmanaged annotation (or, to be deleted, lacks imagegate's
    /// managed-by label); nothing was written.
    Unmanaged,
    /// The owner ClusterRole is gone (the chart is being uninstalled); nothing was written.
    OwnerGone,
    /// The mutating configuration is not needed and was deleted.
    Deleted,
    /// The mutating configuration is not needed and does not exist.
    Absent,
}

/// The owner reference to `owner_cluster_role`: `Ok(None)` when none is configured,
/// `Err(Outcome::OwnerGone)` when it is configured but gone.
async fn owner(
    client: &Client,
    owner_cluster_role: Option<&str>,
) -> Result<Result<Option<OwnerReference>, Outcome>, Error> {
    let Some(role) = owner_cluster_role else {
        return Ok(Ok(None));
    };
    let roles: Api<ClusterRole> = Api::all(client.clone());
    match roles.get_opt(role).await? {
        // Without its owner the object would outlive `helm uninstall`: never write it.
        None => Ok(Err(Outcome::OwnerGone)),
        Some(r) => owner_reference(&r)
            .map(|o| Ok(Some(o)))
            .ok_or_else(|| Error::Invalid(format!("ClusterRole {role} has no name or uid"))),
    }
}

/// Applies `want` (named `name`) with field manager `imagegate` (forced) unless the object is
/// up to date or marked unmanaged.
async fn apply<K>(client: Client, name: &str, want: &K) -> Result<Outcome, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client);
    if let Some(have) = api.get_opt(name).await? {
        if is_unmanaged(&have) {
            return Ok(Outcome::Unmanaged);
        }
        if is_up_to_date(&have, want) {
            return Ok(Outcome::UpToDate);
        }
    }
    let mut body = serde_json::to_value(want).map_err(Error::Json)?;
    body["apiVersion"] = Value::from(K::api_version(&()).into_owned());
    body["kind"] = Value::from(K::kind(&()).into_owned());
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(Outcome::Applied)
}

/// Brings the webhook configuration to the desired state: reads the owner ClusterRole (when
/// one is configured) and the current object, and applies the full desired object with field
/// manager `imagegate` (forced) unless it is up to date or marked unmanaged.
pub async fn reconcile(
    client: Client,
    params: &WebhookParams,
    ca_bundle: &str,
    owner_cluster_role: Option<&str>,
) -> Result<Outcome, Error> {
    let owner = match owner(&client, owner_cluster_role).await? {
        Ok(owner) => owner,
        Err(gone) => return Ok(gone),
    };
    apply(client, &params.name, &desired(params, ca_bundle, owner)).await
}

/// Brings the mutating webhook configuration to the desired state: while `wanted` (some
/// policy in force asks for mutation) exactly as [`reconcile`] does the validating one;
/// otherwise it deletes the object, unless it is marked unmanaged or is not imagegate's
/// (no managed-by label). The delete is conditional on the object read, so a configuration
/// another replica has just re-applied is not deleted on a stale view.
pub async fn reconcile_mutating(
    client: Client,
    params: &WebhookParams,
    ca_bundle: &str,
    owner_cluster_role: Option<&str>,
    wanted: bool,
) -> Result<Outcome, Error> {
    if wanted {
        let owner = match owner(&client, owner_cluster_role).await? {
            Ok(owner) => owner,
            Err(gone) => return Ok(gone),
        };
        let want = desired_mutating(params, ca_bundle, owner);
        return apply(client, &params.name, &want).await;
    }
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let Some(have) = api.get_opt(&params.name).await? else {
        return Ok(Outcome::Absent);
    };
    if is_unmanaged(&have) || !is_ours(&have) {
        return Ok(Outcome::Unmanaged);
    }
    let preconditions = Preconditions {
        resource_version: have.metadata.resource_version.clone(),
        uid: have.metadata.uid.clone(),
    };
    let params = DeleteParams {
        preconditions: Some(preconditions),
        ..DeleteParams::default()
    };
    match api.delete(&have.name_any(), &params).await {
        Ok(_) => Ok(Outcome::Deleted),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Outcome::Absent),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(endpoint: Endpoint) -> WebhookParams {
        WebhookParams {
            name: "imagegate".into(),
            endpoint,
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 10,
            excluded_namespaces: vec!["kube-system".into(), " ".into()],
            namespace: "imagegate-system".into(),
        }
    }

    fn service() -> Endpoint {
        Endpoint::Service {
            namespace: "imagegate-system".into(),
            name: "imagegate".into(),
        }
    }

    #[test]
    fn desired_has_three_webhooks_with_rules() {
        let vwc = desired(&params(service()), "CA", None);
        let v = serde_json::to_value(&vwc).unwrap();
        let hooks = v["webhooks"].as_array().unwrap();
        let names: Vec<_> = hooks.iter().map(|h| h["name"].as_str().unwrap()).collect();
        assert_eq!(names, [PODS_WEBHOOK, WORKLOADS_WEBHOOK, POLICIES_WEBHOOK]);
        assert_eq!(
            hooks[0]["rules"][0]["resources"],
            serde_json::json!(["pods", "pods/ephemeralcontainers"])
        );
        assert_eq!(hooks[1]["rules"].as_array().unwrap().len(), 3);
        assert_eq!(
            hooks[1]["rules"][1]["apiGroups"],
            serde_json::json!(["batch"])
        );
        assert_eq!(
            hooks[2]["rules"][0]["apiGroups"],
            serde_json::json!(["imagegate.dev"])
        );
        for h in hooks {
            assert_eq!(h["matchPolicy"], "Equivalent");
            assert_eq!(h["sideEffects"], "None");
            assert_eq!(h["failurePolicy"], "Fail");
            assert_eq!(h["timeoutSeconds"], 10);
            assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
            assert_eq!(
                h["rules"][0]["operations"],
                serde_json::json!(["CREATE", "UPDATE"])
            );
            assert_eq!(
                h["namespaceSelector"]["matchExpressions"][0],
                serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                    "values": ["imagegate-system", "kube-system"]})
            );
            assert_eq!(
                h["clientConfig"]["service"],
                serde_json::json!({"namespace": "imagegate-system", "name": "imagegate",
                    "path": "/validate", "port": 443})
            );
            // base64 of "CA"
            assert_eq!(h["clientConfig"]["caBundle"], "Q0E=");
        }
    }

    #[test]
    fn desired_mutating_has_one_pod_webhook_reinvoked_if_needed() {
        let mwc = desired_mutating(&params(service()), "CA", None);
        let v = serde_json::to_value(&mwc).unwrap();
        assert_eq!(
            v["metadata"]["name"], "imagegate",
            "named like the validating one"
        );
        assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], "imagegate");
        let hooks = v["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 1);
        let h = &hooks[0];
        assert_eq!(h["name"], MUTATE_WEBHOOK);
        assert_eq!(h["reinvocationPolicy"], "IfNeeded");
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(
            h["rules"],
            serde_json::json!([
                {"apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE"],
                 "resources": ["pods"], "scope": "*"},
                {"apiGroups": [""], "apiVersions": ["*"], "operations": ["UPDATE"],
                 "resources": ["pods/ephemeralcontainers"], "scope": "*"},
            ])
        );
        assert_eq!(
            h["namespaceSelector"]["matchExpressions"][0]["values"],
            serde_json::json!(["imagegate-system", "kube-system"])
        );
        assert_eq!(
            h["clientConfig"]["service"],
            serde_json::json!({"namespace": "imagegate-system", "name": "imagegate",
                "path": "/mutate", "port": 443})
        );
        assert_eq!(h["clientConfig"]["caBundle"], "Q0E=");

        let by_url = desired_mutating(
            &params(Endpoint::Url("https://10.0.0.1:8443".into())),
            "CA",
            None,
        );
        let cc = &by_url.webhooks.unwrap()[0].client_config;
        assert_eq!(cc.url.as_deref(), Some("https://10.0.0.1:8443/mutate"));

        // Drift in the mutating webhook is found as in the validating one.
        let mut drifted = mwc.clone();
        drifted.webhooks.as_mut().unwrap()[0].reinvocation_policy = Some("Never".into());
        assert!(!is_up_to_date(&drifted, &mwc));
        assert!(is_up_to_date(&mwc.clone(), &mwc));
    }

    #[test]
    fn desired_with_url_calls_validate() {
        let vwc = desired(
            &params(Endpoint::Url("https://10.0.0.1:8443/".into())),
            "CA",
            None,
        );
        let cc = &vwc.webhooks.unwrap()[0].client_config;
        assert_eq!(cc.url.as_deref(), Some("https://10.0.0.1:8443/validate"));
        assert!(cc.service.is_none());
    }

    #[test]
    fn desired_carries_owner() {
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some("imagegate".into()),
                uid: Some("uid-1".into()),
                ..ObjectMeta::default()
            },
            ..ClusterRole::default()
        };
        let vwc = desired(&params(service()), "CA", owner_reference(&role));
        let owners = vwc.metadata.owner_references.unwrap();
        assert_eq!(owners[0].kind, "ClusterRole");
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].api_version, "rbac.authorization.k8s.io/v1");
    }

    #[test]
    fn up_to_date_ignores_server_defaults() {
        let want = desired(&params(service()), "CA", None);
        let mut have = want.clone();
        have.metadata.resource_version = Some("7".into());
        have.metadata.uid = Some("u".into());
        assert!(is_up_to_date(&have, &want));
    }

    #[test]
    fn drift_is_detected() {
        let want = desired(&params(service()), "CA", None);
        type Tamper = Box<dyn Fn(&mut ValidatingWebhookConfiguration)>;
        let cases: Vec<(&str, Tamper)> = vec![
            (
                "webhook deleted",
                Box::new(|v| {
                    v.webhooks.as_mut().unwrap().remove(1);
                }),
            ),
            (
                "subresource rule removed",
                Box::new(|v| {
                    v.webhooks.as_mut().unwrap()[0].rules.as_mut().unwrap()[0].resources =
                        Some(vec!["pods".into()]);
                }),
            ),
            (
                "failurePolicy changed",
                Box::new(|v| {
                    v.webhooks.as_mut().unwrap()[2].failure_policy = Some("Ignore".into());
                }),
            ),
            (
                "wrong caBundle",
                Box::new(|v| {
                    v.webhooks.as_mut().unwrap()[0].client_config.ca_bundle =
                        Some(ByteString(b"other".to_vec()));
                }),
            ),
            (
                "selector removed",
                Box::new(|v| {
                    v.webhooks.as_mut().unwrap()[1].namespace_selector = None;
                }),
            ),
        ];
        for (what, tamper) in cases {
            let mut have = want.clone();
            tamper(&mut have);
            assert!(!is_up_to_date(&have, &want), "{what} not detected");
        }
    }

    #[test]
    fn unmanaged_annotation() {
        let mut vwc = desired(&params(service()), "CA", None);
        assert!(!is_unmanaged(&vwc));
        assert!(is_ours(&vwc));
        let mut foreign = vwc.clone();
        foreign.metadata.labels = None;
        assert!(!is_ours(&foreign));
        vwc.metadata.annotations = Some(BTreeMap::from([(
            UNMANAGED_ANNOTATION.into(),
            "true".into(),
        )]));
        assert!(is_unmanaged(&vwc));
    }
}
