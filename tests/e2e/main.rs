//! End-to-end tests against a real cluster, opt-in: set `IMAGEGATE_E2E_KUBECONFIG` to a
//! kubeconfig of a disposable cluster (as an administrator) whose API server can reach this
//! machine at `IMAGEGATE_E2E_WEBHOOK_HOST` (default 127.0.0.1). Each test runs `imagegate run
//! --webhook-url https://HOST:PORT` on this machine and checks what the real API server does
//! with its answers. Without the variable every test prints why it is skipped and passes.
//!
//! Nothing here waits for a Pod to run: a control plane without nodes keeps Pods Pending, and
//! what imagegate decides is visible when the API server stores or refuses an object. The
//! tests run one at a time, each in namespaces of its own, and remove what they created (see
//! docs/operator.md, "End-to-end tests", also for how to add a test for a new duty). The tests
//! of a larger duty live in a module of their own (signatures, mutation, audit).

mod audit;
mod chart;
mod harness;
mod mutation;
#[path = "../support/registry.rs"]
mod registry_support;
mod signatures;
#[path = "../support/sigstore_js.rs"]
mod sigstore_js;

use std::collections::BTreeMap;

use harness::{
    CONVERGE, E2e, OperatorRun, STARTUP, admitted, client_from, dry_run, from_json, pod,
    ready_condition, refused_by, run, store,
};
use imagegate::decision::{BREAK_GLASS_ANNOTATION, BREAK_GLASS_UNTIL_ANNOTATION};
use imagegate::operator::audit::MIN_AUDIT_INTERVAL;
use imagegate::operator::policy_reports::{self, PolicyReport};
use imagegate::operator::webhook_config::{PODS_WEBHOOK, POLICIES_WEBHOOK, WORKLOADS_WEBHOOK};
use imagegate::policy::ImagePolicy;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An image no test policy denies until the admission test tightens its policy.
const ALLOWED_IMAGE: &str = harness::PAUSE_IMAGE;
/// The image the test policies deny.
const DENIED_IMAGE: &str = "docker.io/library/busybox:1.36";
/// The policy rule that denies [`DENIED_IMAGE`].
fn deny_busybox() -> Value {
    json!({"deniedImages": ["docker.io/library/busybox"]})
}

/// Waits until the operator answers the API server: a dry-run Pod with [`DENIED_IMAGE`] is
/// refused by `pods.imagegate.dev` for `policy`. Returns the denial message.
async fn until_enforced(e2e: &E2e, policy: &str) -> String {
    let pods: Api<Pod> = e2e.api();
    let probe = pod("probe", DENIED_IMAGE);
    let expected = format!("[{policy}/deniedImages]");
    e2e.eventually(
        &format!(
            "the API server to refuse a Pod with {DENIED_IMAGE} in {} through {PODS_WEBHOOK} \
             (policy {policy})",
            e2e.namespace()
        ),
        STARTUP,
        async || {
            let message = refused_by(PODS_WEBHOOK, pods.create(&dry_run(), &probe).await)?;
            if message.contains(&expected) {
                Ok(message)
            } else {
                Err(format!("refused, but not with {expected}: {message}"))
            }
        },
    )
    .await
}

/// Pods, workloads, `kubectl debug` and policies are checked by the webhooks the operator
/// registers; a policy edit takes effect without a restart; status is written.
#[tokio::test]
async fn admission_of_pods_workloads_and_policies() {
    run("admission", async |e2e| {
        let policy = e2e.named("deny");
        e2e.apply_policy(&policy, deny_busybox()).await;
        e2e.start_operator(OperatorRun::default());

        // A denied Pod is refused, naming the policy, the rule and the image.
        let message = until_enforced(&e2e, &policy).await;
        assert!(message.contains(DENIED_IMAGE), "{message}");

        // An allowed Pod is stored (and stays Pending without nodes: nothing waits for it).
        let pods: Api<Pod> = e2e.api();
        store(&pods, &pod("allowed", ALLOWED_IMAGE)).await;

        // A Deployment whose template has a denied image is refused.
        let deployments: Api<Deployment> = e2e.api();
        let deployment: Deployment = from_json(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "denied"},
            "spec": {"selector": {"matchLabels": {"app": "denied"}}, "template": {
                "metadata": {"labels": {"app": "denied"}},
                "spec": {"containers": [{"name": "main", "image": DENIED_IMAGE}]}}}
        }));
        let message = refused_by(
            WORKLOADS_WEBHOOK,
            deployments.create(&dry_run(), &deployment).await,
        )
        .unwrap_or_else(|seen| panic!("a Deployment with {DENIED_IMAGE}: {seen}"));
        assert!(
            message.contains(&format!("[{policy}/deniedImages]")),
            "{message}"
        );

        // A denied ephemeral container, added as `kubectl debug` adds it, is refused.
        let debug = Patch::Strategic(json!({"spec": {"ephemeralContainers": [
            {"name": "debugger", "image": DENIED_IMAGE, "stdin": true, "tty": true}
        ]}}));
        let message = refused_by(
            PODS_WEBHOOK,
            pods.patch_subresource(
                "ephemeralcontainers",
                "allowed",
                &PatchParams::default().dry_run(),
                &debug,
            )
            .await,
        )
        .unwrap_or_else(|seen| panic!("an ephemeral container with {DENIED_IMAGE}: {seen}"));
        assert!(message.contains("debugger"), "{message}");

        // A policy the schema accepts but that does not compile is refused with its field.
        let policies: Api<ImagePolicy> = Api::all(e2e.client());
        let broken = e2e.policy_body(&e2e.named("broken"), json!({"deniedImages": ["nginx"]}));
        let message = refused_by(
            POLICIES_WEBHOOK,
            policies
                .patch(
                    &e2e.named("broken"),
                    &PatchParams::apply(harness::FIELD_MANAGER).dry_run(),
                    &Patch::Apply(&broken),
                )
                .await,
        )
        .unwrap_or_else(|seen| panic!("an ImagePolicy with the pattern \"nginx\": {seen}"));
        assert!(message.contains("spec.deniedImages[0]"), "{message}");

        // The policy's status says it is in force.
        let (status, reason, _) = e2e
            .eventually(
                &format!("the status of ImagePolicy {policy}"),
                CONVERGE,
                async || ready_condition(&policies.get(&policy).await.map_err(|e| e.to_string())?),
            )
            .await;
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Compiled"));

        // An edit takes effect within seconds, without a restart, and its status follows.
        e2e.apply_policy(&policy, json!({"deniedImages": ["registry.k8s.io/**"]}))
            .await;
        let probe = pod("allowed-2", ALLOWED_IMAGE);
        e2e.eventually(
            &format!("the edited policy {policy} to refuse {ALLOWED_IMAGE}"),
            CONVERGE,
            async || {
                let message = refused_by(PODS_WEBHOOK, pods.create(&dry_run(), &probe).await)?;
                message
                    .contains(&format!("[{policy}/deniedImages]"))
                    .then_some(())
                    .ok_or(message)
            },
        )
        .await;
        e2e.eventually(
            &format!("the status of ImagePolicy {policy} to describe generation 2"),
            CONVERGE,
            async || {
                let p = policies.get(&policy).await.map_err(|e| e.to_string())?;
                let ready = ready_condition(&p)?;
                (p.metadata.generation == Some(2) && ready.0 == "True")
                    .then_some(())
                    .ok_or_else(|| {
                        format!("generation {:?}, Ready {ready:?}", p.metadata.generation)
                    })
            },
        )
        .await;
    })
    .await;
}

/// A break-glass exception is honoured for a requester in an allowed group (reached through
/// impersonation, as the API server reports it in userInfo), refused for everyone else, for a
/// bad ticket and after it expired, and every honoured use is a Kubernetes Event.
#[tokio::test]
async fn break_glass_by_an_allowed_group() {
    run("breakglass", async |e2e| {
        let policy = e2e.named("bg");
        let group = e2e.named("oncall");
        let user = e2e.named("alice");
        let mut spec = deny_busybox();
        spec["breakGlass"] = json!({
            "allowedGroups": [group], "ticketPattern": "INC-[0-9]+", "maxDuration": "1h"
        });
        e2e.apply_policy(&policy, spec).await;
        // The impersonated group may create Pods in the test namespace, nothing else.
        e2e.apply(
            &e2e.api::<Role>(),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "pods", "namespace": e2e.namespace()},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get"]}]
            }),
        )
        .await;
        e2e.apply(
            &e2e.api::<RoleBinding>(),
            &json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "pods", "namespace": e2e.namespace()},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]
            }),
        )
        .await;
        e2e.start_operator(OperatorRun::default());
        until_enforced(&e2e, &policy).await;

        let now = jiff::Timestamp::now();
        let soon = now + jiff::SignedDuration::from_mins(30);
        let past = now - jiff::SignedDuration::from_mins(5);
        let with_break_glass = |name: &str, ticket: &str, until: jiff::Timestamp| -> Pod {
            let mut p = pod(name, DENIED_IMAGE);
            p.metadata.annotations = Some(
                [
                    (BREAK_GLASS_ANNOTATION.to_owned(), ticket.to_owned()),
                    (BREAK_GLASS_UNTIL_ANNOTATION.to_owned(), until.to_string()),
                ]
                .into(),
            );
            p
        };
        let admin: Api<Pod> = e2e.api();
        let oncall: Api<Pod> =
            Api::namespaced(e2e.client_as(&user, &[group.as_str()]), e2e.namespace());
        let refusal = async |who: &Api<Pod>, p: &Pod, what: &str| -> String {
            let message = refused_by(PODS_WEBHOOK, who.create(&dry_run(), p).await)
                .unwrap_or_else(|seen| panic!("{what}: {seen}"));
            assert!(
                message.contains(&format!("[{policy}/breakGlass]")),
                "{what}: not refused for break-glass: {message}"
            );
            message
        };

        // The kubeconfig's user is in none of the allowed groups.
        let message = refusal(
            &admin,
            &with_break_glass("bg-admin", "INC-1", soon),
            "break-glass by a user outside the group",
        )
        .await;
        assert!(message.contains("none of the allowed groups"), "{message}");
        // The group's member with a ticket that does not match, and with an expired exception.
        let message = refusal(
            &oncall,
            &with_break_glass("bg-ticket", "nope", soon),
            "break-glass with a bad ticket",
        )
        .await;
        assert!(message.contains("\"nope\" does not match"), "{message}");
        let message = refusal(
            &oncall,
            &with_break_glass("bg-expired", "INC-1", past),
            "an expired break-glass",
        )
        .await;
        assert!(message.contains("expired"), "{message}");

        // The group's member with a good ticket: stored, and an Event records the use.
        let honoured = with_break_glass("bg-honoured", "INC-4711", soon);
        admitted(oncall.create(&PostParams::default(), &honoured).await).unwrap_or_else(|seen| {
            panic!("break-glass INC-4711 by {user} in {group} was not honoured: {seen}")
        });
        let note = e2e.until_event(&policy, "BreakGlass").await;
        for part in ["INC-4711", "bg-honoured", user.as_str()] {
            assert!(note.contains(part), "the Event should name {part}: {note}");
        }
    })
    .await;
}

/// The operator puts back its ValidatingWebhookConfiguration when it is edited or deleted, and
/// admission works again afterwards.
#[tokio::test]
async fn webhook_configuration_drift_is_repaired() {
    run("drift", async |e2e| {
        let policy = e2e.named("deny");
        e2e.apply_policy(&policy, deny_busybox()).await;
        e2e.start_operator(OperatorRun::default());
        until_enforced(&e2e, &policy).await;

        let (original, want) = webhook_config::<ValidatingWebhookConfiguration>(&e2e).await;
        // It never sends the operator's own namespace (or kube-system) to the webhooks.
        assert_excludes_own_namespaces(&e2e, &want);

        let edit = async |what: &str, ops: Value| {
            tamper::<ValidatingWebhookConfiguration>(&e2e, &want, what, ops).await
        };
        edit(
            "its failurePolicy was set to Ignore",
            json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
        )
        .await;
        edit(
            "a webhook was removed",
            json!([{"op": "remove", "path": "/webhooks/1"}]),
        )
        .await;
        edit(
            "pods/ephemeralcontainers was dropped from its rules",
            json!([{"op": "replace", "path": "/webhooks/0/rules/0/resources", "value": ["pods"]}]),
        )
        .await;
        let recreated = delete_and_wait::<ValidatingWebhookConfiguration>(&e2e, &want).await;
        assert_ne!(recreated.uid(), original.uid(), "it was recreated");
        until_enforced(&e2e, &policy).await;
    })
    .await;
}

/// The webhooks of a webhook configuration by name, as the API server stores them.
fn webhooks<K: Serialize>(config: &K) -> BTreeMap<String, Value> {
    let config = serde_json::to_value(config).expect("a webhook configuration as JSON");
    config["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| (h["name"].as_str().unwrap_or_default().to_owned(), h.clone()))
        .collect()
}

/// The test operator's webhook configuration of kind `K` as it is now, and its webhooks.
async fn webhook_config<K>(e2e: &E2e) -> (K, BTreeMap<String, Value>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = e2e.webhook_config_name();
    let config = Api::<K>::all(e2e.client())
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("the {} {name}: {e}", K::kind(&())));
    let hooks = webhooks(&config);
    (config, hooks)
}

/// Asserts that every webhook leaves out the operator's namespace and `kube-system`, so that it
/// can never lock itself out.
fn assert_excludes_own_namespaces(e2e: &E2e, hooks: &BTreeMap<String, Value>) {
    for hook in hooks.values() {
        let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
        for ns in [e2e.operator_namespace().as_str(), "kube-system"] {
            assert!(
                excluded.as_array().is_some_and(|v| v.contains(&json!(ns))),
                "{} does not exclude {ns}: {excluded}",
                hook["name"]
            );
        }
    }
}

/// Edits the test operator's webhook configuration of kind `K` with the JSON patch `ops`, as
/// an administrator would by hand (`what` says what it did), and waits until the operator has
/// put its webhooks back as `want`.
async fn tamper<K>(e2e: &E2e, want: &BTreeMap<String, Value>, what: &str, ops: Value)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = e2e.webhook_config_name();
    let kind = K::kind(&());
    let patch = serde_json::from_value(ops).expect("a JSON patch");
    Api::<K>::all(e2e.client())
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .unwrap_or_else(|e| panic!("cannot edit the {kind} {name} ({what}): {e}"));
    until_repaired::<K>(e2e, want, what).await;
}

/// Deletes the test operator's webhook configuration of kind `K`, waits until the operator has
/// created it again with the webhooks `want`, and returns the new object.
async fn delete_and_wait<K>(e2e: &E2e, want: &BTreeMap<String, Value>) -> K
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = e2e.webhook_config_name();
    let api = Api::<K>::all(e2e.client());
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete the {} {name}: {e}", K::kind(&())));
    until_repaired::<K>(e2e, want, "it was deleted").await
}

async fn until_repaired<K>(e2e: &E2e, want: &BTreeMap<String, Value>, what: &str) -> K
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = e2e.webhook_config_name();
    let api = Api::<K>::all(e2e.client());
    e2e.eventually(
        &format!(
            "the operator to repair its {} {name} after {what}",
            K::kind(&())
        ),
        CONVERGE,
        async || {
            let have = api
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "it does not exist".to_owned())?;
            let hooks = webhooks(&have);
            if hooks == *want {
                Ok(have)
            } else {
                Err(format!("webhooks now: {}", json!(hooks)))
            }
        },
    )
    .await
}

/// A deleted TLS Secret is recreated with a new CA, the webhook configuration gets the new
/// `caBundle`, and the API server calls the operator again.
#[tokio::test]
async fn tls_secret_is_recreated() {
    run("secret", async |e2e| {
        let policy = e2e.named("deny");
        e2e.apply_policy(&policy, deny_busybox()).await;
        e2e.start_operator(OperatorRun::default());
        until_enforced(&e2e, &policy).await;

        let secret_name = "imagegate-tls";
        let secrets: Api<Secret> = Api::namespaced(e2e.client(), &e2e.operator_namespace());
        let old = secrets
            .get(secret_name)
            .await
            .unwrap_or_else(|e| panic!("the Secret {secret_name}: {e}"));
        secrets
            .delete(secret_name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete the Secret {secret_name}: {e}"));
        let pem = |s: &Secret| {
            s.data
                .as_ref()
                .and_then(|d| d.get("ca.crt"))
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
                .unwrap_or_default()
        };
        let old_ca = pem(&old);
        let new_ca = e2e
            .eventually(
                "the operator to recreate its TLS Secret",
                CONVERGE,
                async || {
                    let s = secrets
                        .get_opt(secret_name)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| "no Secret yet".to_owned())?;
                    (s.uid() != old.uid() && !pem(&s).is_empty())
                        .then(|| pem(&s))
                        .ok_or_else(|| "still the old Secret".to_owned())
                },
            )
            .await;
        assert_ne!(new_ca, old_ca, "a recreated Secret has a new CA");
        let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(e2e.client());
        e2e.eventually(
            "the webhook configuration to carry the new CA only",
            CONVERGE,
            async || {
                let vwc = vwcs
                    .get(e2e.webhook_config_name())
                    .await
                    .map_err(|e| e.to_string())?;
                let bundles: Vec<String> = vwc
                    .webhooks
                    .iter()
                    .flatten()
                    .map(|h| {
                        let b = h.client_config.ca_bundle.as_ref();
                        b.map(|b| String::from_utf8_lossy(&b.0).into_owned())
                            .unwrap_or_default()
                    })
                    .collect();
                bundles
                    .iter()
                    .all(|b| b.contains(&new_ca) && !b.contains(&old_ca))
                    .then_some(())
                    .ok_or_else(|| "the caBundle still holds the old CA".to_owned())
            },
        )
        .await;
        until_enforced(&e2e, &policy).await;
    })
    .await;
}

/// The operator works with nothing but the chart's ServiceAccount and RBAC: rendered by
/// `helm template` with this test's names and every duty on (the audit with PolicyReports, a
/// key Secret), applied, and used through a token of that ServiceAccount, with the chart's own
/// command line. Each duty is seen working, and nothing the operator tried was forbidden.
#[tokio::test]
async fn least_privilege_with_the_charts_rbac() {
    run("rbac", async |e2e| {
        let release = e2e.name().to_owned();
        let key_secret = e2e.named("cosign");
        let interval = format!("{}s", MIN_AUDIT_INTERVAL.as_secs());
        let objects = chart::render(
            &e2e,
            &release,
            &[
                ("webhookConfigurationName", e2e.webhook_config_name()),
                ("audit.interval", &interval),
                ("audit.policyReports", "true"),
                ("signatures.keySecrets", &format!("{{{key_secret}}}")),
            ],
        );
        chart::apply_identity(&e2e, &objects).await;
        let account = chart::the(&objects, "ServiceAccount")["metadata"]["name"]
            .as_str()
            .expect("the ServiceAccount's name")
            .to_owned();
        let namespace = e2e.operator_namespace();
        let kubeconfig = chart::service_account_kubeconfig(&e2e, &namespace, &account).await;

        // RBAC is enforced: the account may not list the Secrets of its own namespace.
        let as_operator = client_from(&kubeconfig).await;
        match Api::<Secret>::namespaced(as_operator, &namespace)
            .list(&ListParams::default())
            .await
        {
            Err(e) if harness::api_code(&e) == Some(403) => {}
            other => panic!(
                "the ServiceAccount {namespace}/{account} could list every Secret of its \
                 namespace ({:?}): the cluster does not enforce RBAC, so least privilege cannot \
                 be tested; use a cluster with --authorization-mode including RBAC",
                other.map(|l| l.items.len())
            ),
        }

        // Where PolicyReports go, before the operator looks for it.
        e2e.ensure_crd(
            policy_report_crd(),
            "imagegate writes wgpolicyk8s.io/v1alpha2 PolicyReports into it",
        )
        .await;
        // A key Secret the chart lists, and a policy whose entry reads it; its entry governs a
        // registry no Pod of the test uses, so no registry is asked.
        e2e.apply(
            &Api::<Secret>::namespaced(e2e.client(), &namespace),
            &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": key_secret, "namespace": namespace},
                "stringData": {"cosign.pub": SIGNING_KEY}}),
        )
        .await;
        let keyed = e2e.named("keyed");
        e2e.apply_policy(
            &keyed,
            json!({"verifySignatures": [{"name": "release", "images": ["registry.invalid/**"],
                "key": {"secretRef": {"name": key_secret, "key": "cosign.pub"}}}]}),
        )
        .await;
        // One policy in force and one that does not compile, applied before the operator (and
        // its policies webhook) exists.
        let policy = e2e.named("deny");
        e2e.apply_policy(&policy, deny_busybox()).await;
        let broken = e2e.named("broken");
        e2e.apply_policy(&broken, json!({"deniedImages": ["nginx"]}))
            .await;

        let operator = e2e.start_operator(OperatorRun {
            args: Some(chart::operator_args(&objects)),
            kubeconfig: Some(kubeconfig),
        });
        // Policies, namespaces, its Secrets, the webhook configuration and its owner.
        until_enforced(&e2e, &policy).await;
        store(&e2e.api(), &pod("allowed", ALLOWED_IMAGE)).await;
        let role = chart::the(&objects, "ClusterRole")["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (vwc, _) = webhook_config::<ValidatingWebhookConfiguration>(&e2e).await;
        assert_eq!(owners(&vwc), [role.as_str()], "owner of {}", vwc.name_any());

        // The mutating configuration, by name, while a policy asks for mutation.
        let always = e2e.named("always");
        e2e.apply_policy(
            &always,
            json!({"images": ["registry.k8s.io/**"], "setPullPolicyAlways": true}),
        )
        .await;
        mutation::until_pull_policy(
            &e2e,
            "Always",
            "the chart's identity manages the mutating configuration",
        )
        .await;
        let (mwc, _) = webhook_config::<MutatingWebhookConfiguration>(&e2e).await;
        assert_eq!(owners(&mwc), [role.as_str()], "owner of {}", mwc.name_any());

        // The audit: Pods listed and watched, status.audit and a PolicyReport written.
        let policies: Api<ImagePolicy> = Api::all(e2e.client());
        e2e.eventually(
            &format!("status.audit of {policy} to count Pod allowed"),
            MIN_AUDIT_INTERVAL + CONVERGE,
            async || {
                let p = policies.get(&policy).await.map_err(|e| e.to_string())?;
                let audit = p.status.and_then(|s| s.audit);
                match &audit {
                    Some(a) if a.pods_evaluated == 1 && a.violating_pods == 0 => Ok(()),
                    _ => Err(format!("status.audit: {audit:?}")),
                }
            },
        )
        .await;
        let reports: Api<PolicyReport> = e2e.api();
        e2e.eventually(
            &format!(
                "a PolicyReport {} in {} with Pod allowed passing {policy}",
                policy_reports::REPORT_NAME,
                e2e.namespace()
            ),
            MIN_AUDIT_INTERVAL + CONVERGE,
            async || {
                let report = reports
                    .get_opt(policy_reports::REPORT_NAME)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| "no PolicyReport yet".to_owned())?;
                report
                    .results
                    .iter()
                    .any(|r| {
                        r.policy == policy
                            && r.result == policy_reports::Outcome::Pass
                            && r.resources
                                .iter()
                                .any(|o| o.name.as_deref() == Some("allowed"))
                    })
                    .then_some(())
                    .ok_or_else(|| format!("results: {:?}", report.results))
            },
        )
        .await;

        // The last mutating policy goes: the configuration is deleted, by name.
        policies
            .delete(&always, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete the policy {always}: {e}"));
        mutation::until_mutating_config_deleted(&e2e).await;

        // Policy status (the key read from its Secret included) and the compile-error Event.
        for (name, want) in [
            (&policy, ("True", "Compiled")),
            (&keyed, ("True", "Compiled")),
            (&broken, ("False", "CompileError")),
        ] {
            let (status, reason, message) = e2e
                .eventually(
                    &format!("the operator to write the status of ImagePolicy {name}"),
                    CONVERGE,
                    async || ready_condition(&policies.get(name).await.map_err(|e| e.to_string())?),
                )
                .await;
            assert_eq!(
                (status.as_str(), reason.as_str()),
                want,
                "{name}: {message}"
            );
        }
        e2e.until_event(&broken, "CompileError").await;

        assert_nothing_forbidden(&operator);
    })
    .await;
}

/// The names of an object's owners.
fn owners<K: ResourceExt>(object: &K) -> Vec<String> {
    object
        .owner_references()
        .iter()
        .map(|o| o.name.clone())
        .collect()
}

/// A stand-in for the PolicyReport CRD (`wgpolicyk8s.io/v1alpha2`, which Policy Reporter's and
/// Kyverno's charts install) for a cluster without one: the same group, version, kind and
/// scope, and a schema that keeps every field, since the test reads the reports back rather
/// than validating them.
fn policy_report_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "policyreports.wgpolicyk8s.io"},
        "spec": {
            "group": policy_reports::GROUP,
            "scope": "Namespaced",
            "names": {"kind": policy_reports::KIND, "listKind": "PolicyReportList",
                "plural": "policyreports", "singular": "policyreport", "shortNames": ["polr"]},
            "versions": [{"name": "v1alpha2", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

/// `verifySignatures` keys kept in Secrets (`secretRef`): with the chart's RBAC, the operator
/// reads the Secrets listed in `signatures.keySecrets` by name, compiles the policies that use
/// them, re-compiles them when a key changes, and reports a policy naming any other Secret.
#[tokio::test]
async fn signature_keys_are_read_from_the_secrets_the_chart_lists() {
    run("keys", async |e2e| {
        let release = e2e.name().to_owned();
        let key_secret = e2e.named("cosign");
        let objects = chart::render(
            &e2e,
            &release,
            &[
                ("webhookConfigurationName", e2e.webhook_config_name()),
                ("signatures.keySecrets", &format!("{{{key_secret}}}")),
            ],
        );
        chart::apply_identity(&e2e, &objects).await;
        let account = chart::the(&objects, "ServiceAccount")["metadata"]["name"]
            .as_str()
            .expect("the ServiceAccount's name")
            .to_owned();
        let namespace = e2e.operator_namespace();
        let kubeconfig = chart::service_account_kubeconfig(&e2e, &namespace, &account).await;

        let secrets: Api<Secret> = Api::namespaced(e2e.client(), &namespace);
        let key_body = |pem: &str| {
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": key_secret, "namespace": namespace},
                "stringData": {"cosign.pub": pem}})
        };
        e2e.apply(&secrets, &key_body(SIGNING_KEY)).await;
        // The entries govern a registry no Pod of the test uses, so no registry is asked; the
        // policy's deniedImages shows when it is in force.
        let entry = |secret: &str| {
            json!([{"name": "release", "images": ["registry.invalid/**"],
                "key": {"secretRef": {"name": secret, "key": "cosign.pub"}}}])
        };
        let signed = e2e.named("signed");
        let mut spec = deny_busybox();
        spec["verifySignatures"] = entry(&key_secret);
        e2e.apply_policy(&signed, spec).await;
        let elsewhere = e2e.named("elsewhere");
        e2e.apply_policy(&elsewhere, json!({"verifySignatures": entry("not-listed")}))
            .await;

        let operator = e2e.start_operator(OperatorRun {
            args: Some(chart::operator_args(&objects)),
            kubeconfig: Some(kubeconfig),
        });
        until_enforced(&e2e, &signed).await;

        let policies: Api<ImagePolicy> = Api::all(e2e.client());
        let status_of = async |name: &str, want: &str, says: &str| {
            e2e.eventually(
                &format!("ImagePolicy {name} Ready={want} saying {says:?}"),
                CONVERGE,
                async || {
                    let (status, _, message) =
                        ready_condition(&policies.get(name).await.map_err(|e| e.to_string())?)?;
                    (status == want && message.contains(says))
                        .then_some(())
                        .ok_or_else(|| format!("Ready={status}: {message}"))
                },
            )
            .await
        };
        status_of(&signed, "True", "").await;
        status_of(
            &elsewhere,
            "False",
            "may read only the Secrets named in --key-secrets",
        )
        .await;

        // A key that stops parsing takes the policy out of force; the good one brings it back.
        e2e.apply(&secrets, &key_body("not a key")).await;
        status_of(&signed, "False", "not a usable public key").await;
        e2e.apply(&secrets, &key_body(SIGNING_KEY)).await;
        status_of(&signed, "True", "").await;
        until_enforced(&e2e, &signed).await;

        assert_nothing_forbidden(&operator);
    })
    .await;
}

/// Asserts that nothing the operator tried was forbidden: the API server's RBAC refusal reads
/// "… is forbidden: User … cannot …" with the reason `Forbidden`, in whatever the operator
/// logs about it (a watch, a write, a read of a key Secret).
fn assert_nothing_forbidden(operator: &harness::Operator) {
    let log = operator.log();
    let forbidden: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the chart's RBAC lacks permissions the operator uses:\n{}",
        forbidden.join("\n")
    );
}

/// A public key for `secretRef` entries (its private half was not kept).
const SIGNING_KEY: &str = include_str!("../data/keys/p256.pub");
