//! The audit of running Pods against a real API server: `status.audit` after a policy is
//! tightened, `runningDigest` from a Pod status written as a kubelet writes it, the field
//! managers of the status, and `imagegate audit` with a candidate policy.
//!
//! No Pod runs: the Pods are stored (and stay Pending without nodes), and what the kubelet would
//! report is written by the test through the `pods/status` subresource.

use std::time::Duration;

use imagegate::operator::FIELD_MANAGER as STATUS_FIELD_MANAGER;
use imagegate::operator::audit::{AUDIT_FIELD_MANAGER, MIN_AUDIT_INTERVAL};
use imagegate::policy::ImagePolicy;
use imagegate::policy::crd::{AuditStatus, AuditViolation};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::{
    CONVERGE, E2e, OperatorRun, client_from, from_json, imagegate_command, pod, run, store,
};
use crate::{ALLOWED_IMAGE, chart, deny_busybox, until_enforced};

/// The repository of the Pod the audit test pins by digest.
const PINNED_REPOSITORY: &str = "registry.k8s.io/pause";
/// The digest that Pod names. No node pulls it: the Pod never leaves its scheduling gate.
const PINNED_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// The digest the Pod's status says runs instead.
const RUNNING_DIGEST: &str =
    "sha256:2222222222222222222222222222222222222222222222222222222222222222";
/// A scheduling gate that keeps the pinned Pod off every node: on kind the scheduler would
/// bind it, and that node's kubelet would overwrite the status the test writes.
pub const HOLD_GATE: &str = "imagegate.dev/e2e-hold";
/// How long `imagegate audit` may take: a few lists of a test namespace.
const AUDIT_COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// The operator's audit interval in this test: the shortest it accepts, so that a Pod change
/// (which starts no pass by itself) is audited within it.
const AUDIT_INTERVAL: Duration = MIN_AUDIT_INTERVAL;

/// The ImagePolicy `name`'s `status.audit`, or what there is instead.
pub async fn audit_of(policies: &Api<ImagePolicy>, name: &str) -> Result<AuditStatus, String> {
    let policy = policies
        .get(name)
        .await
        .map_err(|e| format!("cannot read ImagePolicy {name}: {e}"))?;
    policy
        .status
        .and_then(|s| s.audit)
        .ok_or_else(|| "no status.audit yet".to_owned())
}

/// The violation of `rule` by the Pod `pod` in `audit`.
pub fn violation<'a>(audit: &'a AuditStatus, pod: &str, rule: &str) -> Option<&'a AuditViolation> {
    audit
        .violations
        .iter()
        .find(|v| v.pod == pod && v.rule == rule)
}

/// A summary of `audit` for messages.
pub fn summary(audit: &AuditStatus) -> String {
    let found: Vec<String> = audit
        .violations
        .iter()
        .map(|v| format!("{}/{}: {}", v.pod, v.rule, v.message))
        .collect();
    format!(
        "podsEvaluated {}, violatingPods {}, violations {found:?}",
        audit.pods_evaluated, audit.violating_pods
    )
}

/// The operator audits the Pods it admitted: a Pod pinned by digest whose status (written as a
/// kubelet writes it) reports another digest shows as `runningDigest` within the audit
/// interval, a policy tightened in Audit mode shows the Pods it now forbids within seconds,
/// each part of the status is owned by its own field manager, and `imagegate audit` with a
/// candidate policy prints what it would deny and exits 1, with an identity that may only list.
#[tokio::test]
async fn audit_of_running_pods() {
    run("audit", async |e2e| {
        let enforced = e2e.named("deny");
        e2e.apply_policy(&enforced, deny_busybox()).await;
        let audited = e2e.named("audited");
        e2e.apply_policy(
            &audited,
            json!({"mode": "Audit", "deniedImages": ["docker.io/library/nginx"]}),
        )
        .await;
        let mut args = e2e.default_operator_args();
        args.push(format!("--audit-interval={}s", AUDIT_INTERVAL.as_secs()));
        e2e.start_operator(OperatorRun {
            args: Some(args),
            ..OperatorRun::default()
        });
        until_enforced(&e2e, &enforced).await;

        // Two Pods, admitted: one by tag, one pinned by digest and held off the nodes.
        let pods: Api<Pod> = e2e.api();
        store(&pods, &pod("running", ALLOWED_IMAGE)).await;
        let pinned_image = format!("{PINNED_REPOSITORY}@{PINNED_DIGEST}");
        let pinned: Pod = from_json(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pinned"},
            "spec": {"schedulingGates": [{"name": HOLD_GATE}],
                "containers": [{"name": "main", "image": pinned_image}]}
        }));
        store(&pods, &pinned).await;

        // Its status, as the kubelet reports a started container: the node runs another digest.
        let running_image_id = format!("{PINNED_REPOSITORY}@{RUNNING_DIGEST}");
        let started = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .expect("now in whole seconds");
        let status = json!({"status": {"containerStatuses": [{
            "name": "main", "image": pinned_image, "imageID": running_image_id,
            "ready": true, "started": true, "restartCount": 0,
            "state": {"running": {"startedAt": started.to_string()}}
        }]}});
        let patched = pods
            .patch_status("pinned", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("cannot write the status of Pod pinned: {e}"));
        let reported = patched
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.into_iter().next())
            .map(|c| c.image_id);
        assert_eq!(
            reported.as_deref(),
            Some(running_image_id.as_str()),
            "the stored status"
        );

        // A Pod change starts no pass: the next interval's pass finds it.
        let policies: Api<ImagePolicy> = Api::all(e2e.client());
        let audit = e2e
            .eventually(
                &format!(
                    "status.audit of {audited} to show runningDigest for Pod pinned (audit \
                     interval {AUDIT_INTERVAL:?})"
                ),
                AUDIT_INTERVAL + CONVERGE,
                async || {
                    let audit = audit_of(&policies, &audited).await?;
                    (audit.pods_evaluated == 2
                        && violation(&audit, "pinned", "runningDigest").is_some())
                    .then(|| audit.clone())
                    .ok_or_else(|| summary(&audit))
                },
            )
            .await;
        assert_eq!(audit.violating_pods, 1, "{}", summary(&audit));
        let found = violation(&audit, "pinned", "runningDigest").expect("found above");
        assert_eq!(
            (
                found.namespace.as_str(),
                found.container_type.as_str(),
                found.container.as_str(),
                found.image.as_str()
            ),
            (
                e2e.namespace(),
                "containers",
                "main",
                pinned_image.as_str()
            )
        );
        for digest in [PINNED_DIGEST, RUNNING_DIGEST] {
            assert!(
                found.message.contains(digest),
                "should name {digest}: {}",
                found.message
            );
        }
        assert!(
            violation(&audit, "running", "deniedImages").is_none(),
            "the policy does not deny {ALLOWED_IMAGE} yet: {}",
            summary(&audit)
        );
        // From no violating Pod to one: a Warning Event on the policy.
        e2e.until_event(&audited, "AuditViolations").await;

        // Tightened (still Audit: nothing is denied): the policy change starts a pass.
        e2e.apply_policy(
            &audited,
            json!({"mode": "Audit", "deniedImages": ["registry.k8s.io/**"]}),
        )
        .await;
        e2e.eventually(
            &format!("status.audit of the tightened {audited} to show Pod running"),
            CONVERGE,
            async || {
                let audit = audit_of(&policies, &audited).await?;
                (audit.violating_pods == 2
                    && violation(&audit, "running", "deniedImages").is_some()
                    && violation(&audit, "pinned", "deniedImages").is_some())
                .then_some(())
                .ok_or_else(|| summary(&audit))
            },
        )
        .await;

        // The conditions and the audit are written by their own field managers.
        let policy = policies
            .get(&audited)
            .await
            .unwrap_or_else(|e| panic!("cannot read ImagePolicy {audited}: {e}"));
        let status_fields = |manager: &str| -> Value {
            let entries: Vec<Value> = policy
                .metadata
                .managed_fields
                .iter()
                .flatten()
                .filter(|m| {
                    m.manager.as_deref() == Some(manager)
                        && m.subresource.as_deref() == Some("status")
                        && m.operation.as_deref() == Some("Apply")
                })
                .filter_map(|m| m.fields_v1.as_ref().map(|f| f.0["f:status"].clone()))
                .collect();
            assert_eq!(
                entries.len(),
                1,
                "one status apply by {manager}: {:?}",
                policy.metadata.managed_fields
            );
            entries.into_iter().next().unwrap_or_default()
        };
        for (manager, owns, not) in [
            (STATUS_FIELD_MANAGER, "f:conditions", "f:audit"),
            (AUDIT_FIELD_MANAGER, "f:audit", "f:conditions"),
        ] {
            let fields = status_fields(manager);
            assert!(
                !fields[owns].is_null() && fields[not].is_null(),
                "{manager} should own status.{} and not status.{}: {fields}",
                &owns[2..],
                &not[2..]
            );
        }

        // `imagegate audit` with a candidate policy, as an identity that may only list Pods
        // and Namespaces: the candidate's denials, exit code 1, nothing written.
        let candidate = e2e.named("candidate");
        let file = e2e.dir().join("candidate.yaml");
        std::fs::write(
            &file,
            format!(
                "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: {candidate}\n\
                 spec:\n  namespaceSelector:\n    matchLabels:\n      kubernetes.io/metadata.name: {}\n  \
                 deniedImages: [\"{PINNED_REPOSITORY}\"]\n",
                e2e.namespace()
            ),
        )
        .expect("the candidate policy file");
        let kubeconfig = read_only_kubeconfig(&e2e).await;
        let mut command = tokio::process::Command::from(imagegate_command(&kubeconfig));
        command
            .arg("audit")
            .arg("--policies")
            .arg(&file)
            .args(["--namespace", e2e.namespace(), "--output", "json"])
            .kill_on_drop(true);
        let out = tokio::time::timeout(AUDIT_COMMAND_LIMIT, command.output())
            .await
            .unwrap_or_else(|_| panic!("imagegate audit did not finish within {AUDIT_COMMAND_LIMIT:?}"))
            .expect("imagegate audit runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "imagegate audit --policies {} should exit 1 (running Pods would be denied)\n\
             stdout:\n{stdout}\nstderr:\n{stderr}",
            file.display()
        );
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("imagegate audit --output json printed no JSON: {e}\n{stdout}"));
        for name in ["running", "pinned"] {
            let source = format!("pod/{}/{name}", e2e.namespace());
            let result = report["results"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["source"] == source.as_str())
                .unwrap_or_else(|| panic!("no result for {source}: {stdout}"));
            assert_eq!(result["allowed"], false, "{result}");
            let denied = result["violations"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["policy"] == candidate.as_str() && v["rule"] == "deniedImages");
            assert!(denied, "{source} should violate {candidate}/deniedImages: {result}");
        }
        let stored = policies
            .get_opt(&candidate)
            .await
            .unwrap_or_else(|e| panic!("cannot read ImagePolicy {candidate}: {e}"));
        assert!(stored.is_none(), "the candidate policy was stored in the cluster");
    })
    .await;
}

/// A kubeconfig of a ServiceAccount that may only list Pods and Namespaces (what `imagegate
/// audit --policies` needs), once the API server's RBAC lets it.
async fn read_only_kubeconfig(e2e: &E2e) -> std::path::PathBuf {
    let account = "auditor";
    let namespace = e2e.operator_namespace();
    let role = e2e.named("auditor");
    e2e.apply(
        &Api::<ServiceAccount>::namespaced(e2e.client(), &namespace),
        &json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace}}),
    )
    .await;
    e2e.register_delete::<ClusterRole>(None, &role);
    e2e.apply(
        &Api::<ClusterRole>::all(e2e.client()),
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list"]}]}),
    )
    .await;
    e2e.register_delete::<ClusterRoleBinding>(None, &role);
    e2e.apply(
        &Api::<ClusterRoleBinding>::all(e2e.client()),
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]}),
    )
    .await;
    let kubeconfig = chart::service_account_kubeconfig(e2e, &namespace, account).await;
    // The API server's RBAC follows a new binding within moments.
    let client = client_from(&kubeconfig).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), e2e.namespace());
    let namespaces: Api<Namespace> = Api::all(client);
    e2e.eventually(
        &format!(
            "the ServiceAccount {namespace}/{account} to be allowed to list Pods and Namespaces"
        ),
        CONVERGE,
        async || {
            pods.list(&ListParams::default().limit(1))
                .await
                .map_err(|e| e.to_string())?;
            namespaces
                .list(&ListParams::default().limit(1))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    kubeconfig
}
