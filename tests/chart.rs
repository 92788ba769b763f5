//! The Helm chart in `charts/imagegate`: rendered by a real `helm` (Helm 4, and Helm 3 as `helm3`
//! when installed), every manifest read into its Kubernetes type, and the promises of the chart
//! checked: a hardened Pod, probes, least-privilege RBAC, the CRD identical to `crds/`, no webhook
//! configuration rendered (the operator owns it), and a values schema that rejects bad values.
//!
//! `.ci/install-helm.sh` installs helm. Without it the helm tests print why they are skipped,
//! except in CI (`CI` set), where a missing helm is a failure. The monitoring parts (the
//! PrometheusRule and the dashboard) are checked here as chart objects; tests/monitoring.rs checks
//! what they say, with promtool and a real Prometheus.

mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tools::{NAMESPACE, RELEASE, Rendered, chart_dir, helm, helms, read, render, root};

const PRODUCTION_VALUES: &str = "tests/data/chart/production-values.yaml";
/// The uid the image runs as (Dockerfile `USER`, distroless `nonroot`).
const NONROOT_UID: i64 = 65532;

impl Rendered {
    /// Every object of `kind`, read into its type.
    fn typed<T: DeserializeOwned + serde::Serialize>(&self, kind: &str) -> Vec<T> {
        self.all(kind).into_iter().map(|v| typed(v)).collect()
    }

    /// The one object of `kind` named `name`, read into its type.
    fn one<T: DeserializeOwned + serde::Serialize>(&self, kind: &str, name: &str) -> T {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|o| o["metadata"]["name"] == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "[{}] expected one {kind} {name}, rendered {}",
            self.helm,
            found.len()
        );
        typed(found[0])
    }
}

/// Reads a manifest into its Kubernetes type and fails on any field the type does not know (a
/// misspelt or misplaced key in a template, which the API server would drop or reject): the
/// typed value, written back, must be the manifest itself.
fn typed<T: DeserializeOwned + serde::Serialize>(manifest: &Value) -> T {
    let name = format!(
        "{} {}",
        manifest["kind"].as_str().unwrap_or("?"),
        manifest["metadata"]["name"].as_str().unwrap_or("?")
    );
    let value: T = serde_json::from_value(manifest.clone())
        .unwrap_or_else(|e| panic!("{name} does not match its Kubernetes type: {e}"));
    let back = serde_json::to_value(&value).expect("a Kubernetes object serializes");
    let (expected, got) = (normalise(manifest.clone()), normalise(back));
    if expected != got {
        panic!(
            "{name} has fields its type does not know or writes differently:\nrendered: {}\ntyped:    {}",
            serde_json::to_string_pretty(&expected).unwrap_or_default(),
            serde_json::to_string_pretty(&got).unwrap_or_default()
        );
    }
    value
}

/// Drops nulls and empty objects/arrays, which the typed side omits.
fn normalise(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalise(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        other => other,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "imagegate".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), RELEASE.to_owned()),
    ])
}

// ---------------------------------------------------------------------------------------------
// The checks shared by every rendering

/// What one rendering is expected to say, from its values.
struct Expect<'a> {
    failure_policy: &'a str,
    timeout_seconds: &'a str,
    excluded_namespaces: &'a str,
    unmatched_images: &'a str,
    trusted_controller_namespaces: &'a str,
    secret_name: &'a str,
    webhook_config_name: &'a str,
    cert_validity: &'a str,
    ca_validity: &'a str,
    log_format: &'a str,
    replicas: i32,
    image: &'a str,
    priority_class: Option<&'a str>,
    verify_timeout: &'a str,
    /// `signatures.cacheTTL`, `staleTTL`, `tagCacheTTL`.
    signature_ttls: [&'a str; 3],
    /// `signatures.keySecrets`.
    key_secrets: &'a [&'a str],
    /// `signatures.trustedRootConfigMaps`.
    trusted_root_config_maps: &'a [&'a str],
    /// `--sigstore-trusted-root` (from `signatures.sigstoreTrustedRoot`), when set, and the
    /// ConfigMap it is mounted from.
    sigstore_trusted_root: Option<(&'a str, &'a str)>,
    /// `registries.credentialsSecrets`.
    credentials_secrets: &'a [&'a str],
    /// `--registry-ca-file` and `--insecure-registry`, when set.
    registry_ca_files: Option<&'a str>,
    insecure_registries: Option<&'a str>,
    audit_interval: &'a str,
    policy_reports: &'a str,
}

const DEFAULTS: Expect<'static> = Expect {
    failure_policy: "Fail",
    timeout_seconds: "10",
    excluded_namespaces: "kube-system",
    unmatched_images: "allow",
    trusted_controller_namespaces: "kube-system",
    secret_name: "imagegate-tls",
    webhook_config_name: "imagegate",
    cert_validity: "2160h",
    ca_validity: "87600h",
    log_format: "json",
    replicas: 3,
    image: "ghcr.io/imagegate/imagegate:0.1.0",
    priority_class: Some("system-cluster-critical"),
    verify_timeout: "8s",
    signature_ttls: ["10m", "24h", "30s"],
    key_secrets: &[],
    trusted_root_config_maps: &[],
    sigstore_trusted_root: None,
    credentials_secrets: &[],
    registry_ca_files: None,
    insecure_registries: None,
    audit_interval: "10m",
    policy_reports: "false",
};

const PRODUCTION: Expect<'static> = Expect {
    failure_policy: "Ignore",
    timeout_seconds: "5",
    excluded_namespaces: "kube-system,monitoring",
    unmatched_images: "deny",
    trusted_controller_namespaces: "kube-system,platform-controllers",
    secret_name: "imagegate-serving",
    webhook_config_name: "imagegate-prod",
    cert_validity: "720h",
    ca_validity: "43800h",
    log_format: "text",
    replicas: 5,
    image: "registry.corp.example/platform/imagegate:0.1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    priority_class: None,
    verify_timeout: "4s",
    signature_ttls: ["5m", "4h", "10s"],
    key_secrets: &["cosign-release", "cosign-vendor"],
    trusted_root_config_maps: &["sigstore-corp-root"],
    sigstore_trusted_root: Some((
        "/etc/imagegate/sigstore/trusted_root.json",
        "sigstore-public-root",
    )),
    credentials_secrets: &["registry-pull"],
    registry_ca_files: Some(
        "/etc/imagegate/registry-ca/0/ca.crt,/etc/imagegate/registry-ca/1/mirror-ca.pem",
    ),
    insecure_registries: Some("mirror.lan:5000"),
    audit_interval: "30m",
    policy_reports: "true",
};

/// The flags `imagegate run` accepts (from its own definition); anything else in the chart's
/// args would stop the Pod.
fn run_flags() -> BTreeSet<String> {
    use clap::CommandFactory as _;
    let cli = imagegate::cli::Cli::command();
    let run = cli.find_subcommand("run").expect("a run command");
    run.get_arguments()
        .filter_map(|a| a.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

fn check_rendering(r: &Rendered, want: &Expect) {
    check_no_webhook_configuration(r);
    check_namespaces(r);
    check_crd(r);
    let deployment: Deployment = r.one("Deployment", RELEASE);
    check_deployment(r, &deployment, want);
    check_service(r, &deployment);
    check_rbac(r, want);
    let pdb: PodDisruptionBudget = r.one("PodDisruptionBudget", RELEASE);
    let spec = pdb.spec.expect("PDB spec");
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        spec.selector.and_then(|s| s.match_labels),
        Some(selector_labels()),
        "the PDB selects the imagegate Pods"
    );
    let _: ServiceAccount = r.one("ServiceAccount", RELEASE);
}

fn check_no_webhook_configuration(r: &Rendered) {
    let kinds = r.kinds();
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        assert!(
            !kinds.contains(kind),
            "[{}] the chart must not render a {kind}: the operator creates and owns it",
            r.helm
        );
    }
    assert!(
        !kinds.contains("Secret"),
        "[{}] the chart renders no Secret: the operator generates its certificates",
        r.helm
    );
}

fn check_namespaces(r: &Rendered) {
    let cluster_scoped = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    ];
    for o in &r.objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        let ns = &o["metadata"]["namespace"];
        if kind == "ConfigMap" && o["metadata"]["name"] == "imagegate-dashboard" {
            // Goes where Grafana's sidecar looks (metrics.grafanaDashboard.namespace).
            assert!(ns.is_string(), "the dashboard ConfigMap has a namespace");
        } else if cluster_scoped.contains(&kind) {
            assert!(ns.is_null(), "{kind} is cluster-scoped but has a namespace");
        } else {
            assert_eq!(
                ns, NAMESPACE,
                "{kind} {} is not in the release namespace",
                o["metadata"]["name"]
            );
        }
    }
}

fn check_crd(r: &Rendered) {
    let crds = r.all("CustomResourceDefinition");
    assert_eq!(crds.len(), 1, "[{}] one CRD in the chart", r.helm);
    let committed: Vec<Value> =
        serde_saphyr::from_multiple(&read(root().join("crds/imagepolicy.yaml")))
            .expect("crds/imagepolicy.yaml is YAML");
    let committed: Vec<&Value> = committed.iter().filter(|d| !d.is_null()).collect();
    assert_eq!(
        committed, crds,
        "the chart's CRD differs from crds/imagepolicy.yaml"
    );
}

fn check_pod_security(spec: &PodSpec, what: &str) {
    let pod = spec
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no pod securityContext"));
    assert_eq!(pod.run_as_non_root, Some(true), "{what}: runAsNonRoot");
    assert_eq!(pod.run_as_user, Some(NONROOT_UID), "{what}: runAsUser");
    assert_eq!(
        pod.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}: pod seccompProfile"
    );
    assert_ne!(spec.host_network, Some(true), "{what}: hostNetwork");
    assert_ne!(spec.host_pid, Some(true), "{what}: hostPID");
    assert_ne!(spec.host_ipc, Some(true), "{what}: hostIPC");
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        check_container_security(c, what);
    }
}

fn check_container_security(c: &Container, what: &str) {
    let name = format!("{what}, container {}", c.name);
    let sc = c
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no securityContext"));
    assert_eq!(sc.run_as_non_root, Some(true), "{name}: runAsNonRoot");
    assert_eq!(sc.run_as_user, Some(NONROOT_UID), "{name}: runAsUser");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{name}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{name}: allowPrivilegeEscalation"
    );
    assert_ne!(sc.privileged, Some(true), "{name}: privileged");
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "{name}: drop ALL");
    assert!(
        caps.add.as_ref().is_none_or(Vec::is_empty),
        "{name}: adds capabilities"
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault"),
        "{name}: seccompProfile"
    );
    let res = c
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no resources"));
    assert!(res.requests.is_some(), "{name}: no resource requests");
    assert!(
        res.limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory")),
        "{name}: no memory limit"
    );
}

fn check_deployment(r: &Rendered, d: &Deployment, want: &Expect) {
    let spec = d.spec.as_ref().expect("Deployment spec");
    assert_eq!(spec.replicas, Some(want.replicas), "replicas");
    assert_eq!(
        spec.selector.match_labels.as_ref(),
        Some(&selector_labels())
    );
    let template = &spec.template;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in selector_labels() {
        assert_eq!(labels.get(&k), Some(&v), "pod template label {k}");
    }
    let pod = template.spec.as_ref().expect("pod spec");
    check_pod_security(pod, "imagegate Deployment");
    assert_eq!(pod.service_account_name.as_deref(), Some(RELEASE));
    assert_eq!(pod.priority_class_name.as_deref(), want.priority_class);
    assert!(
        pod.termination_grace_period_seconds
            .is_some_and(|s| s >= 10),
        "terminationGracePeriodSeconds leaves time to drain"
    );
    let spread: BTreeSet<&str> = pod
        .topology_spread_constraints
        .iter()
        .flatten()
        .map(|t| t.topology_key.as_str())
        .collect();
    assert_eq!(
        spread,
        BTreeSet::from(["topology.kubernetes.io/zone", "kubernetes.io/hostname"]),
        "replicas spread over zones and nodes"
    );

    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(want.image), "[{}] image", r.helm);

    // Probes over HTTPS on the admission port.
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
        (&c.startup_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"), "probe on {path}");
        assert_eq!(get.port, IntOrString::String("https".into()));
    }
    let ports: BTreeMap<String, i32> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("https".to_owned(), 8443), ("metrics".to_owned(), 9090)])
    );

    // The namespace comes from the downward API.
    for var in ["POD_NAMESPACE", "IMAGEGATE_NAMESPACE"] {
        let env = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == var)
            .unwrap_or_else(|| panic!("no {var}"));
        let field = env
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(field, Some("metadata.namespace"), "{var}");
    }

    // The flags of `imagegate run`, from the values.
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let flags: BTreeMap<&str, &str> = args[1..]
        .iter()
        .map(|a| a.split_once('=').unwrap_or((a, "")))
        .collect();
    let known = run_flags();
    for flag in flags.keys() {
        assert!(
            known.contains(*flag),
            "{flag} is not a flag of imagegate run"
        );
    }
    let expected = [
        ("--service", RELEASE),
        ("--addr", "0.0.0.0:8443"),
        ("--metrics-addr", "0.0.0.0:9090"),
        ("--failure-policy", want.failure_policy),
        ("--timeout-seconds", want.timeout_seconds),
        ("--excluded-namespaces", want.excluded_namespaces),
        ("--unmatched-images", want.unmatched_images),
        (
            "--trusted-controller-namespaces",
            want.trusted_controller_namespaces,
        ),
        ("--cert-validity", want.cert_validity),
        ("--ca-validity", want.ca_validity),
        ("--secret-name", want.secret_name),
        ("--webhook-config-name", want.webhook_config_name),
        ("--owner-cluster-role", RELEASE),
        ("--audit-interval", want.audit_interval),
        ("--policy-reports", want.policy_reports),
        ("--log-format", want.log_format),
        ("--verify-timeout", want.verify_timeout),
        ("--signature-cache-ttl", want.signature_ttls[0]),
        ("--signature-stale-ttl", want.signature_ttls[1]),
        ("--tag-cache-ttl", want.signature_ttls[2]),
    ];
    for (flag, value) in expected {
        assert_eq!(flags.get(flag), Some(&value), "[{}] {flag}", r.helm);
    }
    let key_secrets = want.key_secrets.join(",");
    let trusted_roots = want.trusted_root_config_maps.join(",");
    let credentials = want.credentials_secrets.join(",");
    for (flag, value) in [
        ("--key-secrets", Some(key_secrets.as_str())),
        ("--trusted-root-config-maps", Some(trusted_roots.as_str())),
        (
            "--sigstore-trusted-root",
            want.sigstore_trusted_root.map(|(file, _)| file),
        ),
        ("--registry-credentials-secret", Some(credentials.as_str())),
        ("--registry-ca-file", want.registry_ca_files),
        ("--insecure-registry", want.insecure_registries),
    ] {
        assert_eq!(
            flags.get(flag).copied(),
            value.filter(|v| !v.is_empty()),
            "[{}] {flag}",
            r.helm
        );
    }
    // Each registry CA file is a key of a ConfigMap or Secret, mounted read-only where the flag
    // says.
    let mounts: BTreeMap<String, (String, bool)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.clone(),
                (m.mount_path.clone(), m.read_only.unwrap_or(false)),
            )
        })
        .collect();
    for file in want.registry_ca_files.iter().flat_map(|f| f.split(',')) {
        let (dir, key) = file.rsplit_once('/').expect("a path");
        let index = dir.rsplit('/').next().expect("an index");
        let name = format!("registry-ca-{index}");
        assert_eq!(mounts.get(&name), Some(&(dir.to_owned(), true)), "{name}");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let items = volume
            .config_map
            .as_ref()
            .and_then(|c| c.items.clone())
            .or_else(|| volume.secret.as_ref().and_then(|s| s.items.clone()))
            .unwrap_or_default();
        assert_eq!(items.len(), 1, "{name}");
        assert_eq!((items[0].key.as_str(), items[0].path.as_str()), (key, key));
    }
    // The Sigstore trusted root: its ConfigMap's key, mounted read-only where the flag says.
    match want.sigstore_trusted_root {
        None => assert!(!mounts.contains_key("sigstore-trusted-root")),
        Some((file, config_map)) => {
            let (dir, key) = file.rsplit_once('/').expect("a path");
            assert_eq!(
                mounts.get("sigstore-trusted-root"),
                Some(&(dir.to_owned(), true))
            );
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == "sigstore-trusted-root")
                .expect("the trusted root's volume");
            let source = volume.config_map.as_ref().expect("from a ConfigMap");
            assert_eq!(source.name, config_map);
            let items = source.items.clone().unwrap_or_default();
            assert_eq!(items.len(), 1);
            assert_eq!((items[0].key.as_str(), items[0].path.as_str()), (key, key));
        }
    }
}

fn check_service(r: &Rendered, d: &Deployment) {
    let svc: Service = r.one("Service", RELEASE);
    let spec = svc.spec.expect("Service spec");
    assert_eq!(spec.selector, Some(selector_labels()));
    let https = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == 443)
        .expect("the Service listens on 443");
    assert_eq!(https.target_port, Some(IntOrString::String("https".into())));
    let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let named = pod
        .and_then(|p| p.containers[0].ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some("https")))
        .map(|p| p.container_port);
    assert_eq!(named, Some(8443), "443 reaches the container's 8443");
}

/// A permission: API group, resource, verb.
type Grant = (&'static str, &'static str, &'static str);

/// Everything `imagegate run` may do, and where a name limits it (`None`: no name can, as for
/// `create`, or the resource is read as a whole). A permission may be listed once per name.
fn operator_cluster_grants(want: &Expect) -> Vec<(Grant, Option<String>)> {
    let vwc = Some(want.webhook_config_name.to_owned());
    let mut grants = vec![];
    for verb in ["get", "list", "watch"] {
        grants.push((("imagegate.dev", "imagepolicies", verb), None));
        grants.push((("", "namespaces", verb), None));
        grants.push((
            (
                "admissionregistration.k8s.io",
                "validatingwebhookconfigurations",
                verb,
            ),
            vwc.clone(),
        ));
    }
    // The MutatingWebhookConfiguration, same name: also deleted while no policy mutates.
    for verb in ["get", "list", "watch", "patch", "delete"] {
        grants.push((
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                verb,
            ),
            vwc.clone(),
        ));
    }
    grants.push((
        (
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "create",
        ),
        None,
    ));
    // Server-side apply is a patch, both for the status and the webhook configuration.
    grants.push((("imagegate.dev", "imagepolicies/status", "patch"), None));
    grants.push((
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "patch",
        ),
        vwc.clone(),
    ));
    grants.push((
        (
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "create",
        ),
        None,
    ));
    grants.push((
        ("rbac.authorization.k8s.io", "clusterroles", "get"),
        Some(RELEASE.to_owned()),
    ));
    // events.k8s.io/v1 only; the core events resource is not used.
    for verb in ["create", "patch"] {
        grants.push((("events.k8s.io", "events", verb), None));
    }
    // The audit reads Pods, and writes PolicyReports when asked to.
    if want.audit_interval != "off" {
        for verb in ["list", "watch"] {
            grants.push((("", "pods", verb), None));
        }
        if want.policy_reports == "true" {
            for verb in ["list", "create", "patch"] {
                grants.push((("wgpolicyk8s.io", "policyreports", verb), None));
            }
        }
    }
    grants
}

fn operator_namespace_grants(want: &Expect) -> Vec<(Grant, Option<String>)> {
    let secret = Some(want.secret_name.to_owned());
    let mut grants = vec![(("", "secrets", "create"), None)];
    // Rotation is an update with the resourceVersion read (optimistic concurrency), never a patch.
    for verb in ["get", "list", "watch", "update"] {
        grants.push((("", "secrets", verb), secret.clone()));
    }
    // The key Secrets of verifySignatures (secretRef): read and watched by name, never written.
    for name in want.key_secrets {
        for verb in ["get", "list", "watch"] {
            grants.push((("", "secrets", verb), Some((*name).to_owned())));
        }
    }
    // Registry logins: read by name (every minute), never watched or written.
    for name in want.credentials_secrets {
        grants.push((("", "secrets", "get"), Some((*name).to_owned())));
    }
    // The trusted-root ConfigMaps of keyless entries: read and watched by name, never written.
    for name in want.trusted_root_config_maps {
        for verb in ["get", "list", "watch"] {
            grants.push((("", "configmaps", verb), Some((*name).to_owned())));
        }
    }
    grants
}

/// A permission and the name it is limited to (`None`: not limited by name).
type Granted = BTreeSet<((String, String, String), Option<String>)>;

/// The permissions a set of rules grants, each with the name it is limited to; no wildcard, and
/// nothing granted twice (a permission granted without a name and with one would hide the
/// name's limit).
fn granted(rules: &[PolicyRule], what: &str) -> Granted {
    let mut out = Granted::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{what}: non-resource URLs"
        );
        let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
            None | Some([]) => vec![None],
            Some(names) => names.iter().cloned().map(Some).collect(),
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for part in [group, resource, verb] {
                        assert!(!part.contains('*'), "{what}: wildcard in {rule:?}");
                    }
                    let key = (group.clone(), resource.clone(), verb.clone());
                    for name in &names {
                        assert!(
                            out.insert((key.clone(), name.clone())),
                            "{what}: {key:?} granted twice for {name:?}"
                        );
                    }
                }
            }
        }
    }
    for (key, _) in out.iter().filter(|(_, n)| n.is_none()) {
        assert!(
            !out.iter().any(|(k, n)| k == key && n.is_some()),
            "{what}: {key:?} granted for every name and for some"
        );
    }
    out
}

fn as_map(grants: Vec<(Grant, Option<String>)>) -> Granted {
    grants
        .into_iter()
        .map(|((g, r, v), n)| ((g.to_owned(), r.to_owned(), v.to_owned()), n))
        .collect()
}

fn check_rbac(r: &Rendered, want: &Expect) {
    // The operator's own roles are exactly the promised grants: nothing wider, nothing missing.
    let cluster_role: ClusterRole = r.one("ClusterRole", RELEASE);
    let cluster = granted(
        cluster_role.rules.as_deref().unwrap_or_default(),
        "ClusterRole",
    );
    assert_eq!(
        cluster,
        as_map(operator_cluster_grants(want)),
        "ClusterRole grants"
    );
    assert!(
        !cluster.iter().any(|((_, res, _), _)| res == "secrets"),
        "no Secret access at cluster scope"
    );
    let role: Role = r.one("Role", RELEASE);
    let ns = granted(role.rules.as_deref().unwrap_or_default(), "Role");
    assert_eq!(ns, as_map(operator_namespace_grants(want)), "Role grants");

    let crb: ClusterRoleBinding = r.one("ClusterRoleBinding", RELEASE);
    assert_eq!(
        (crb.role_ref.kind.as_str(), crb.role_ref.name.as_str()),
        ("ClusterRole", RELEASE)
    );
    check_subjects(crb.subjects.as_deref(), RELEASE);
    let rb: RoleBinding = r.one("RoleBinding", RELEASE);
    assert_eq!(
        (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
        ("Role", RELEASE)
    );
    check_subjects(rb.subjects.as_deref(), RELEASE);

    // No other role in the chart grants anything but the cleanup hook's.
    let roles = r
        .all("ClusterRole")
        .into_iter()
        .chain(r.all("Role"))
        .filter(|o| o["metadata"]["name"] != RELEASE);
    for o in roles {
        assert!(
            Rendered::is_hook(o),
            "unexpected role {}",
            o["metadata"]["name"]
        );
    }
}

fn check_subjects(subjects: Option<&[k8s_openapi::api::rbac::v1::Subject]>, sa: &str) {
    let subjects = subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1, "one subject");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
}

/// The pre-delete hook: a hardened Job that stops imagegate and deletes the webhook
/// configuration by name, with RBAC for exactly that.
fn check_cleanup_hook(r: &Rendered, want: &Expect, kubectl_image: &str) {
    let name = format!("{RELEASE}-cleanup");
    let hook_objects: Vec<&Value> = r.objects.iter().filter(|o| Rendered::is_hook(o)).collect();
    assert_eq!(
        hook_objects.len(),
        6,
        "SA, ClusterRole(Binding), Role(Binding), Job"
    );
    for o in &hook_objects {
        let ann = &o["metadata"]["annotations"];
        assert_eq!(ann["helm.sh/hook"], "pre-delete");
        assert_eq!(
            ann["helm.sh/hook-delete-policy"],
            "before-hook-creation,hook-succeeded"
        );
        assert_eq!(o["metadata"]["name"], name.as_str());
    }
    let job: Job = r.one("Job", &name);
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("Job pod spec");
    check_pod_security(pod, "cleanup hook");
    assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    let steps: Vec<&Container> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .collect();
    for c in &steps {
        assert_eq!(c.image.as_deref(), Some(kubectl_image));
        assert_eq!(c.command, Some(vec!["kubectl".to_owned()]));
    }
    let last = steps
        .last()
        .and_then(|c| c.args.clone())
        .unwrap_or_default();
    assert_eq!(
        &last[..3],
        [
            "delete",
            "validatingwebhookconfiguration",
            want.webhook_config_name
        ],
        "the last step deletes the webhook configuration"
    );
    assert!(last.iter().any(|a| a == "--ignore-not-found"));
    // Before it, once imagegate is stopped, the mutating one (which may not exist).
    let mutating = steps[steps.len() - 2].args.clone().unwrap_or_default();
    assert_eq!(
        &mutating[..3],
        [
            "delete",
            "mutatingwebhookconfiguration",
            want.webhook_config_name
        ],
        "a step deletes the mutating webhook configuration"
    );
    assert!(mutating.iter().any(|a| a == "--ignore-not-found"));
    assert_eq!(
        steps[0].args.as_ref().map(|a| a[1].as_str()),
        Some("deployment"),
        "imagegate is stopped first"
    );

    let cr: ClusterRole = r.one("ClusterRole", &name);
    let cluster = granted(
        cr.rules.as_deref().unwrap_or_default(),
        "cleanup ClusterRole",
    );
    let vwc = Some(want.webhook_config_name.to_owned());
    let expected: Granted = ["get", "list", "watch", "delete"]
        .into_iter()
        .flat_map(|v| {
            [
                "validatingwebhookconfigurations",
                "mutatingwebhookconfigurations",
            ]
            .map(|resource| {
                (
                    (
                        "admissionregistration.k8s.io".to_owned(),
                        resource.to_owned(),
                        v.to_owned(),
                    ),
                    vwc.clone(),
                )
            })
        })
        .collect();
    assert_eq!(cluster, expected, "cleanup ClusterRole grants");
    let role: Role = r.one("Role", &name);
    let ns = granted(role.rules.as_deref().unwrap_or_default(), "cleanup Role");
    for ((group, resource, _), name) in &ns {
        assert_eq!((group.as_str(), resource.as_str()), ("apps", "deployments"));
        assert_eq!(name.as_deref(), Some(RELEASE), "by name only");
    }
    let crb: ClusterRoleBinding = r.one("ClusterRoleBinding", &name);
    check_subjects(crb.subjects.as_deref(), &name);
    let rb: RoleBinding = r.one("RoleBinding", &name);
    check_subjects(rb.subjects.as_deref(), &name);
    let _: ServiceAccount = r.one("ServiceAccount", &name);
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn crd_is_the_same_in_the_binary_the_repository_and_the_chart() {
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("crd")
        .output()
        .expect("run imagegate crd");
    assert!(out.status.success(), "imagegate crd failed");
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let fix = "regenerate with `cargo run -q -- crd > crds/imagepolicy.yaml` and copy it to \
               charts/imagegate/crds/";
    assert!(
        read(root().join("crds/imagepolicy.yaml")) == generated,
        "crds/imagepolicy.yaml differs from `imagegate crd`: {fix}"
    );
    assert!(
        read(chart_dir().join("crds/imagepolicy.yaml")) == generated,
        "charts/imagegate/crds/imagepolicy.yaml differs from `imagegate crd`: {fix}"
    );
}

#[test]
fn chart_lints_clean() {
    let Some(helms) = helms() else { return };
    let chart = chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    for bin in &helms {
        for extra in [vec![], vec!["--values", PRODUCTION_VALUES]] {
            let mut args = vec!["lint", "--strict", chart, "--namespace", NAMESPACE];
            args.extend(extra.iter().copied());
            let out = helm(bin, &args);
            assert!(
                out.ok,
                "{} lint {extra:?} failed:\n{}{}",
                bin.display(),
                out.stdout,
                out.stderr
            );
        }
    }
}

#[test]
fn default_values_render_a_hardened_least_privilege_install() {
    let Some(helms) = helms() else { return };
    for bin in &helms {
        let r = render(bin, &[]);
        check_rendering(&r, &DEFAULTS);
        check_cleanup_hook(&r, &DEFAULTS, "registry.k8s.io/kubectl:v1.34.0");
        let kinds = r.kinds();
        assert!(!kinds.contains("NetworkPolicy"), "NetworkPolicy is opt-in");
        assert!(
            !kinds.contains("ServiceMonitor"),
            "ServiceMonitor is opt-in"
        );
        // Every typed kind is read strictly, so an unknown field anywhere fails here.
        let _: Vec<Deployment> = r.typed("Deployment");
        let _: Vec<Job> = r.typed("Job");
        let _: Vec<Service> = r.typed("Service");
        let _: Vec<ServiceAccount> = r.typed("ServiceAccount");
        let _: Vec<ClusterRole> = r.typed("ClusterRole");
        let _: Vec<ClusterRoleBinding> = r.typed("ClusterRoleBinding");
        let _: Vec<Role> = r.typed("Role");
        let _: Vec<RoleBinding> = r.typed("RoleBinding");
        let _: Vec<PodDisruptionBudget> = r.typed("PodDisruptionBudget");
        let known = [
            "CustomResourceDefinition",
            "Deployment",
            "Job",
            "Service",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
        ];
        for kind in &kinds {
            assert!(known.contains(&kind.as_str()), "unexpected kind {kind}");
        }
    }
}

#[test]
fn production_values_render_as_configured() {
    let Some(helms) = helms() else { return };
    for bin in &helms {
        let r = render(bin, &["--values", PRODUCTION_VALUES]);
        check_rendering(&r, &PRODUCTION);
        check_cleanup_hook(
            &r,
            &PRODUCTION,
            "registry.corp.example/mirror/kubectl:v1.34.0",
        );
        let d: Deployment = r.one("Deployment", RELEASE);
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod spec");
        assert_eq!(
            pod.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert_eq!(
            pod.image_pull_secrets.unwrap_or_default()[0].name,
            "corp-registry"
        );
        assert!(pod.tolerations.is_some_and(|t| t.len() == 1));

        // NetworkPolicy: the webhook port from anywhere, metrics only from the given peers.
        let np: NetworkPolicy = r.one("NetworkPolicy", RELEASE);
        let spec = np.spec.expect("NetworkPolicy spec");
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(selector_labels())
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
        let rules = spec.ingress.unwrap_or_default();
        assert_eq!(rules.len(), 2);
        let port = |i: usize| rules[i].ports.as_ref().map(|p| p[0].port.clone());
        assert_eq!(port(0), Some(Some(IntOrString::String("https".into()))));
        assert!(
            rules[0].from.is_none(),
            "the API server's address is unknowable"
        );
        assert_eq!(port(1), Some(Some(IntOrString::String("metrics".into()))));
        let from = rules[1].from.clone().unwrap_or_default();
        assert_eq!(from.len(), 1);
        assert!(from[0].namespace_selector.is_some() && from[0].pod_selector.is_some());

        // ServiceMonitor: no Rust type; checked as JSON.
        let sm = r.all("ServiceMonitor");
        assert_eq!(sm.len(), 1);
        let sm = sm[0];
        assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
        assert_eq!(
            sm["spec"]["selector"]["matchLabels"],
            serde_json::to_value(selector_labels()).expect("labels")
        );
        assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"][0], NAMESPACE);
        let endpoint = &sm["spec"]["endpoints"][0];
        assert_eq!(endpoint["port"], "metrics");
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["interval"], "15s");
        let svc: Service = r.one("Service", RELEASE);
        assert!(
            svc.spec
                .and_then(|s| s.ports)
                .unwrap_or_default()
                .iter()
                .any(|p| p.name.as_deref() == Some("metrics") && p.port == 9090),
            "the Service exposes the metrics port the ServiceMonitor scrapes"
        );
    }
}

/// The alerts of the PrometheusRule, by name.
fn alerts(rule: &Value) -> BTreeMap<String, Value> {
    rule["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| (r["alert"].as_str().unwrap_or_default().to_owned(), r))
        .collect()
}

#[test]
fn monitoring_objects_render_only_when_enabled_and_as_configured() {
    let Some(helms) = helms() else { return };
    let dashboard: Value =
        serde_json::from_str(&read(chart_dir().join("dashboards/imagegate.json")))
            .expect("the dashboard is JSON");
    for bin in &helms {
        let off = render(bin, &[]);
        assert!(
            off.all("PrometheusRule").is_empty() && off.all("ConfigMap").is_empty(),
            "[{}] the PrometheusRule and the dashboard are opt-in",
            off.helm
        );

        let r = render(bin, &["--values", PRODUCTION_VALUES]);
        let rule = r.only("PrometheusRule");
        assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(rule["metadata"]["name"], RELEASE);
        assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
        assert_eq!(
            rule["metadata"]["labels"]["release"],
            "kube-prometheus-stack"
        );
        let groups: Vec<&str> = rule["spec"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| g["name"].as_str().expect("group name"))
            .collect();
        assert_eq!(
            groups,
            ["imagegate"],
            "apiServerAlerts: false drops that group"
        );
        let alerts = alerts(rule);
        assert!(
            !alerts.contains_key("ImagegateBreakGlassUsed"),
            "a disabled alert is left out"
        );
        assert!(alerts.len() >= 8, "{:?}", alerts.keys());
        for (name, alert) in &alerts {
            assert_eq!(alert["labels"]["team"], "platform", "{name}: alertLabels");
            assert!(
                ["critical", "warning", "info"]
                    .contains(&alert["labels"]["severity"].as_str().unwrap_or_default()),
                "{name}: its own severity wins over alertLabels"
            );
            assert_eq!(
                alert["annotations"]["runbook_url"],
                format!(
                    "https://docs.corp.example/imagegate/operations.html#{}",
                    name.to_lowercase()
                ),
                "{name}: runbookUrl"
            );
        }
        // The thresholds reach the expressions.
        for (name, threshold) in [
            ("ImagegateWebhookSlow", "> 0.25"),
            ("ImagegateBadRequests", "> 0.01"),
            ("ImagegateDenialsSpike", "> 5 * 60"),
            ("ImagegateDenialsSpike", "> 2"),
            ("ImagegateCertificateExpiresSoon", "< 7 * 86400"),
            ("ImagegateReplicasDown", "< 5"),
        ] {
            let expr = alerts[name]["expr"].as_str().expect("expr");
            let flat = expr.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                flat.contains(threshold),
                "{name}: {threshold} not in {expr}"
            );
        }

        let cm: k8s_openapi::api::core::v1::ConfigMap = r.one("ConfigMap", "imagegate-dashboard");
        assert_eq!(cm.metadata.namespace.as_deref(), Some("monitoring"));
        let labels = cm.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("grafana_dashboard").map(String::as_str),
            Some("imagegate")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("platform"));
        assert_eq!(
            cm.metadata
                .annotations
                .unwrap_or_default()
                .get("grafana_folder")
                .map(String::as_str),
            Some("Platform")
        );
        let data = cm.data.unwrap_or_default();
        assert_eq!(data.len(), 1);
        let shipped: Value = serde_json::from_str(&data["imagegate.json"])
            .expect("the ConfigMap holds the dashboard as JSON");
        assert_eq!(
            shipped, dashboard,
            "the ConfigMap holds dashboards/imagegate.json as it is"
        );

        // The sidecar's defaults, and the release namespace.
        let r = render(bin, &["--set", "metrics.grafanaDashboard.enabled=true"]);
        let cm: k8s_openapi::api::core::v1::ConfigMap = r.one("ConfigMap", "imagegate-dashboard");
        assert_eq!(cm.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(
            cm.metadata
                .labels
                .unwrap_or_default()
                .get("grafana_dashboard")
                .map(String::as_str),
            Some("1")
        );
        assert!(r.all("PrometheusRule").is_empty());
    }
}

#[test]
fn optional_parts_can_be_switched_off() {
    let Some(helms) = helms() else { return };
    for bin in &helms {
        let r = render(
            bin,
            &[
                "--set",
                "cleanupHook.enabled=false",
                "--set",
                "podDisruptionBudget.enabled=false",
                "--set",
                "metrics.enabled=false",
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "preStopSleepSeconds=0",
            ],
        );
        assert!(r.objects.iter().all(|o| !Rendered::is_hook(o)), "no hook");
        let kinds = r.kinds();
        assert!(!kinds.contains("Job") && !kinds.contains("PodDisruptionBudget"));
        let d: Deployment = r.one("Deployment", RELEASE);
        let c = &d
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod")
            .containers[0];
        assert!(c.args.iter().flatten().any(|a| a == "--metrics-addr=off"));
        assert!(c.lifecycle.is_none());
        let np: NetworkPolicy = r.one("NetworkPolicy", RELEASE);
        assert_eq!(
            np.spec.and_then(|s| s.ingress).map(|i| i.len()),
            Some(1),
            "only the webhook port is open without metrics"
        );
    }
}

#[test]
fn audit_off_drops_pod_access() {
    let Some(helms) = helms() else { return };
    for bin in &helms {
        let r = render(
            bin,
            &[
                "--set",
                "audit.interval=off",
                "--set",
                "audit.policyReports=true",
            ],
        );
        let want = Expect {
            audit_interval: "off",
            policy_reports: "true",
            ..DEFAULTS
        };
        check_rbac(&r, &want);
        let deployment: Deployment = r.one("Deployment", RELEASE);
        check_deployment(&r, &deployment, &want);
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    let Some(helms) = helms() else { return };
    let bad = [
        ("failurePolicy=Sometimes", "failurePolicy"),
        ("timeoutSeconds=0", "timeoutSeconds"),
        ("timeoutSeconds=31", "timeoutSeconds"),
        ("unmatchedImages=maybe", "unmatchedImages"),
        ("logFormat=xml", "logFormat"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("image.digest=sha256:abc", "digest"),
        ("certificates.validity=90d", "validity"),
        ("excludedNamespaces[0]=Kube_System", "excludedNamespaces"),
        ("failurPolicy=Ignore", "failurPolicy"),
        ("audit.interval=weekly", "interval"),
        ("audit.policyReports=sometimes", "policyReports"),
        (
            "metrics.prometheusRule.disabledAlerts[0]=ImagegateNoSuchAlert",
            "disabledAlerts",
        ),
        (
            "metrics.prometheusRule.thresholds.badRequestRatio=2",
            "badRequestRatio",
        ),
        (
            "metrics.prometheusRule.thresholds.certificateExpiryDays=0",
            "certificateExpiryDays",
        ),
        (
            "metrics.prometheusRule.runbookUrl=docs/operations.md",
            "runbookUrl",
        ),
        ("metrics.prometheusRule.alertLabel.team=x", "alertLabel"),
        ("metrics.grafanaDashboard.namespace=Monitoring", "namespace"),
        (
            "metrics.grafanaDashboard.labelValue=not a label",
            "labelValue",
        ),
        ("signatures.keySecrets[0]=Cosign_Key", "keySecrets"),
        (
            "signatures.trustedRootConfigMaps[0]=Sigstore Root",
            "trustedRootConfigMaps",
        ),
        (
            "signatures.sigstoreTrustedRoot.configMap=sigstore-root",
            "sigstoreTrustedRoot",
        ),
        ("signatures.verifyTimeout=8", "verifyTimeout"),
        ("signatures.staleTTL=1d", "staleTTL"),
        ("registries.insecure[0]=http://mirror.lan", "insecure"),
        (
            "registries.credentialsSecrets[0]=Pull Secret",
            "credentialsSecrets",
        ),
        ("registries.caCertificates[0].key=ca.crt", "caCertificates"),
        ("registries.caCertificates[0].file=ca.crt", "caCertificates"),
    ];
    let chart = chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    for bin in &helms {
        for (set, key) in bad {
            let out = helm(bin, &["template", RELEASE, chart, "--set", set]);
            assert!(!out.ok, "{} accepted --set {set}", bin.display());
            assert!(
                out.stderr.contains(key),
                "{}: the error for --set {set} does not name {key}:\n{}",
                bin.display(),
                out.stderr
            );
        }
        // The good ends of the ranges pass.
        for set in [
            "timeoutSeconds=1",
            "timeoutSeconds=30",
            "failurePolicy=Ignore",
            "audit.interval=off",
            "audit.interval=1h30m",
        ] {
            let out = helm(bin, &["template", RELEASE, chart, "--set", set]);
            assert!(
                out.ok,
                "{} rejected --set {set}:\n{}",
                bin.display(),
                out.stderr
            );
        }
    }
}

#[test]
fn chart_requires_a_supported_kubernetes() {
    let Some(helms) = helms() else { return };
    let chart = chart_dir();
    let chart = chart.to_str().expect("UTF-8 path");
    for bin in &helms {
        let old = helm(
            bin,
            &["template", RELEASE, chart, "--kube-version", "1.29.0"],
        );
        assert!(!old.ok, "{} rendered for Kubernetes 1.29", bin.display());
        let min = helm(
            bin,
            &["template", RELEASE, chart, "--kube-version", "1.30.0"],
        );
        assert!(min.ok, "{}: {}", bin.display(), min.stderr);
    }
}

#[test]
fn chart_and_image_agree_on_versions_and_user() {
    let chart = read(chart_dir().join("Chart.yaml"));
    let chart: Value = serde_saphyr::from_str(&chart).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "appVersion is the crate's"
    );
    let dockerfile = read(root().join("Dockerfile"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("USER {NONROOT_UID}:{NONROOT_UID}")),
        "the image runs as the uid the chart's securityContext names"
    );
}
