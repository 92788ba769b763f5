//! The mutating webhook (`setPullPolicyAlways`) against a real API server: what it stores, the
//! MutatingWebhookConfiguration's lifetime, and its drift repair.

use imagegate::operator::webhook_config::MUTATE_WEBHOOK;
use imagegate::policy::ImagePolicy;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;

use crate::harness::{CONVERGE, E2e, OperatorRun, admitted, dry_run, pod, run, store};
use crate::{
    ALLOWED_IMAGE, assert_excludes_own_namespaces, delete_and_wait, deny_busybox, tamper,
    until_enforced, webhook_config,
};

/// The pull policy of a Pod's first container, as the API server answered or stored it.
pub fn pull_policy(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image_pull_policy.clone())
}

/// Waits until a new Pod with [`ALLOWED_IMAGE`] (no pull policy of its own) in the test
/// namespace is answered with the pull policy `want` (the API server's default for a version
/// tag is `IfNotPresent`): the API server calls the mutating webhook, or no longer does.
pub async fn until_pull_policy(e2e: &E2e, want: &str, why: &str) {
    let pods: Api<Pod> = e2e.api();
    let probe = pod("pulled", ALLOWED_IMAGE);
    e2e.eventually(
        &format!(
            "a new Pod with {ALLOWED_IMAGE} in {} to get imagePullPolicy {want} ({why})",
            e2e.namespace()
        ),
        CONVERGE,
        async || {
            let answered = admitted(pods.create(&dry_run(), &probe).await)?;
            let policy = pull_policy(&answered);
            (policy.as_deref() == Some(want))
                .then_some(())
                .ok_or_else(|| format!("answered with imagePullPolicy {policy:?}"))
        },
    )
    .await;
}

/// `setPullPolicyAlways`: while a policy asks for it, the operator registers its mutating
/// webhook, and a Pod created without a pull policy in a namespace the policy selects is stored
/// with `imagePullPolicy: Always` (the API server would default it to `IfNotPresent` for a
/// version tag), while a Pod elsewhere is stored unchanged. The MutatingWebhookConfiguration is
/// repaired when edited or deleted, stays while any policy (of any mode) asks for mutation, and
/// is deleted with the last one.
#[tokio::test]
async fn pull_policy_always_by_policy() {
    run("mutate", async |e2e| {
        let deny = e2e.named("deny");
        e2e.apply_policy(&deny, deny_busybox()).await;
        e2e.start_operator(OperatorRun::default());
        until_enforced(&e2e, &deny).await;
        let mwcs: Api<MutatingWebhookConfiguration> = Api::all(e2e.client());
        let name = e2e.webhook_config_name();
        // The operator has listed the policies (it enforces them), and none asks for mutation.
        let before = mwcs
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("cannot read the MutatingWebhookConfiguration {name}: {e}"));
        assert!(
            before.is_none(),
            "a MutatingWebhookConfiguration exists while no policy asks for mutation"
        );

        let always = e2e.named("always");
        e2e.apply_policy(
            &always,
            json!({"images": ["registry.k8s.io/**"], "setPullPolicyAlways": true}),
        )
        .await;
        until_pull_policy(&e2e, "Always", "the policy's mutating webhook is called").await;

        // Stored, not just answered: read back from the API server.
        let stored = store(&e2e.api(), &pod("stored", ALLOWED_IMAGE)).await;
        assert_eq!(
            pull_policy(&stored).as_deref(),
            Some("Always"),
            "the stored Pod's pull policy"
        );
        // A namespace the policy does not select: called, but nothing changed.
        let elsewhere = e2e.other_namespace("other").await;
        let unchanged = store(
            &Api::namespaced(e2e.client(), &elsewhere),
            &pod("unchanged", ALLOWED_IMAGE),
        )
        .await;
        assert_eq!(
            pull_policy(&unchanged).as_deref(),
            Some("IfNotPresent"),
            "a Pod in {elsewhere}, which no policy selects, keeps the API server's default"
        );

        // The configuration: one webhook, called again after later mutating webhooks, never
        // for the operator's own namespace.
        let (original, want) = webhook_config::<MutatingWebhookConfiguration>(&e2e).await;
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            [MUTATE_WEBHOOK],
            "the mutating webhooks"
        );
        let hook = &want[MUTATE_WEBHOOK];
        assert_eq!(hook["reinvocationPolicy"], "IfNeeded", "{hook}");
        assert!(
            hook["clientConfig"]["url"]
                .as_str()
                .is_some_and(|url| url.ends_with("/mutate")),
            "{hook}"
        );
        assert_excludes_own_namespaces(&e2e, &want);

        // Drift repair, as for the validating configuration.
        let edit = async |what: &str, ops: serde_json::Value| {
            tamper::<MutatingWebhookConfiguration>(&e2e, &want, what, ops).await
        };
        edit(
            "its failurePolicy was set to Ignore",
            json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
        )
        .await;
        edit(
            "its reinvocationPolicy was set to Never",
            json!([{"op": "replace", "path": "/webhooks/0/reinvocationPolicy", "value": "Never"}]),
        )
        .await;
        edit(
            "the pods/ephemeralcontainers rule was removed",
            json!([{"op": "remove", "path": "/webhooks/0/rules/1"}]),
        )
        .await;
        let recreated = delete_and_wait::<MutatingWebhookConfiguration>(&e2e, &want).await;
        assert_ne!(recreated.uid(), original.uid(), "it was recreated");
        until_pull_policy(&e2e, "Always", "the recreated configuration is called").await;

        // A Warn policy that asks for the same keeps the configuration (it reports what it
        // would change); once the Enforce one is gone, Pods are no longer changed.
        let warn = e2e.named("warn");
        e2e.apply_policy(
            &warn,
            json!({"mode": "Warn", "images": ["registry.k8s.io/**"], "setPullPolicyAlways": true}),
        )
        .await;
        let policies: Api<ImagePolicy> = Api::all(e2e.client());
        policies
            .delete(&always, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete the policy {always}: {e}"));
        until_pull_policy(&e2e, "IfNotPresent", "only a Warn policy asks for it").await;
        let kept = mwcs
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("cannot read the MutatingWebhookConfiguration {name}: {e}"));
        assert_eq!(
            kept.map(|k| k.uid()),
            Some(recreated.uid()),
            "the configuration stays while the Warn policy {warn} uses setPullPolicyAlways"
        );

        // The last policy that asks for mutation goes, and so does the configuration.
        policies
            .delete(&warn, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("cannot delete the policy {warn}: {e}"));
        until_mutating_config_deleted(&e2e).await;
    })
    .await;
}

/// Waits until the operator has deleted its MutatingWebhookConfiguration, after the last
/// policy that asked for mutation went.
pub async fn until_mutating_config_deleted(e2e: &E2e) {
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(e2e.client());
    let name = e2e.webhook_config_name();
    e2e.eventually(
        &format!(
            "the operator to delete its MutatingWebhookConfiguration {name} with the last policy \
             that asks for mutation"
        ),
        CONVERGE,
        async || match mwcs.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("it is still there".to_owned()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
}
