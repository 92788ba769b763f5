//! What a document of a GitOps repository is, for `check`: a Kubernetes object to judge, a
//! Namespace that supplies labels, or something to skip with the reason and what to do
//! instead (a configuration file, a Kustomization, Helm's chart files, Flux and Argo CD
//! resources that are rendered in the cluster). And whether an object is cluster-scoped.

use std::collections::HashSet;
use std::path::Path;

use k8s_openapi::api::{
    admissionregistration, certificates, core, flowcontrol, networking, node, rbac, resource,
    scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration;
use k8s_openapi::{ClusterResourceScope, Resource};
use serde_json::Value;

use crate::manifests::{Document, STDIN};
use crate::report::SkipReason;

/// `(group, kind)` of a cluster-scoped resource; only a type k8s-openapi knows as
/// cluster-scoped compiles here.
const fn cluster<T: Resource<Scope = ClusterResourceScope>>() -> (&'static str, &'static str) {
    (T::GROUP, T::KIND)
}

/// The cluster-scoped kinds of Kubernetes 1.33 that a repository may hold (requests and
/// reviews, which are never stored, are left out).
const BUILT_IN_CLUSTER_SCOPED: &[(&str, &str)] = &[
    cluster::<core::v1::Namespace>(),
    cluster::<core::v1::Node>(),
    cluster::<core::v1::PersistentVolume>(),
    cluster::<admissionregistration::v1::MutatingWebhookConfiguration>(),
    cluster::<admissionregistration::v1::ValidatingWebhookConfiguration>(),
    cluster::<admissionregistration::v1::ValidatingAdmissionPolicy>(),
    cluster::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(),
    cluster::<admissionregistration::v1alpha1::MutatingAdmissionPolicy>(),
    cluster::<admissionregistration::v1alpha1::MutatingAdmissionPolicyBinding>(),
    cluster::<apiextensions::v1::CustomResourceDefinition>(),
    cluster::<apiregistration::v1::APIService>(),
    cluster::<certificates::v1::CertificateSigningRequest>(),
    cluster::<certificates::v1beta1::ClusterTrustBundle>(),
    cluster::<flowcontrol::v1::FlowSchema>(),
    cluster::<flowcontrol::v1::PriorityLevelConfiguration>(),
    cluster::<networking::v1::IngressClass>(),
    cluster::<networking::v1::IPAddress>(),
    cluster::<networking::v1::ServiceCIDR>(),
    cluster::<node::v1::RuntimeClass>(),
    cluster::<rbac::v1::ClusterRole>(),
    cluster::<rbac::v1::ClusterRoleBinding>(),
    cluster::<resource::v1beta2::DeviceClass>(),
    cluster::<resource::v1beta2::ResourceSlice>(),
    cluster::<scheduling::v1::PriorityClass>(),
    cluster::<storage::v1::CSIDriver>(),
    cluster::<storage::v1::CSINode>(),
    cluster::<storage::v1::StorageClass>(),
    cluster::<storage::v1::VolumeAttachment>(),
    cluster::<storage::v1beta1::VolumeAttributesClass>(),
];

/// Cluster-scoped custom resources common in GitOps repositories, for when their
/// CustomResourceDefinition is not among the inputs.
const KNOWN_CLUSTER_SCOPED_CUSTOM: &[(&str, &str)] = &[
    (crate::policy::crd::GROUP, "ImagePolicy"),
    ("cert-manager.io", "ClusterIssuer"),
    ("kyverno.io", "ClusterPolicy"),
    ("kyverno.io", "ClusterCleanupPolicy"),
    ("templates.gatekeeper.sh", "ConstraintTemplate"),
    ("karpenter.sh", "NodePool"),
];

/// Kustomize's configuration group (`Kustomization`, `Component`).
const KUSTOMIZE_GROUP: &str = "kustomize.config.k8s.io";
/// The suffix of Flux's groups (`kustomize.toolkit.fluxcd.io`, `helm.toolkit.fluxcd.io`, …).
const FLUX_GROUP_SUFFIX: &str = ".toolkit.fluxcd.io";
/// Argo's group, shared by Argo CD, Argo Rollouts and Argo Workflows.
const ARGO_GROUP: &str = "argoproj.io";
/// The Argo CD kinds; Argo's other kinds (a Rollout, a Workflow) are objects like any other.
const ARGO_CD_KINDS: [&str; 3] = ["Application", "ApplicationSet", "AppProject"];
/// The file names Kustomize reads.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];
/// Helm's chart file.
const HELM_CHART_FILE: &str = "Chart.yaml";
/// The folder of a Helm chart's templates.
const HELM_TEMPLATES_DIR: &str = "templates";

/// The kinds whose objects have no namespace: Kubernetes' own, well-known custom ones, and
/// those the CustomResourceDefinitions among the inputs declare `scope: Cluster`.
#[derive(Debug, Default)]
pub struct Scopes {
    custom: HashSet<(String, String)>,
}

impl Scopes {
    /// Reads the CustomResourceDefinitions among `documents`.
    pub fn from_documents(documents: &[Document]) -> Scopes {
        let custom = documents
            .iter()
            .filter(|d| {
                d.kind() == "CustomResourceDefinition"
                    && group_of(d.api_version()) == "apiextensions.k8s.io"
            })
            .filter(|d| d.value.pointer("/spec/scope").and_then(Value::as_str) == Some("Cluster"))
            .filter_map(|d| {
                let group = d.value.pointer("/spec/group")?.as_str()?;
                let kind = d.value.pointer("/spec/names/kind")?.as_str()?;
                Some((group.to_owned(), kind.to_owned()))
            })
            .collect();
        Scopes { custom }
    }

    /// Whether objects of `kind` in the API group `group` are cluster-scoped.
    pub fn is_cluster_scoped(&self, group: &str, kind: &str) -> bool {
        BUILT_IN_CLUSTER_SCOPED
            .iter()
            .chain(KNOWN_CLUSTER_SCOPED_CUSTOM)
            .any(|&(g, k)| g == group && k == kind)
            || self.custom.contains(&(group.to_owned(), kind.to_owned()))
    }
}

/// What a document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A Namespace: it supplies its labels and gets no result of its own.
    Namespace,
    /// A Kubernetes object, judged and reported.
    Object { cluster_scoped: bool },
    /// Not judged: why, and what to do instead.
    Skip { reason: SkipReason, message: String },
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Classifies one document.
pub fn classify(doc: &Document, scopes: &Scopes) -> Class {
    let file = file_name(&doc.file);
    let skip = |reason, message: String| Class::Skip { reason, message };
    let Value::Object(map) = &doc.value else {
        return by_file_name(&doc.file).unwrap_or_else(|| {
            skip(
                SkipReason::NotAnObject,
                format!("not a Kubernetes object ({})", json_type(&doc.value)),
            )
        });
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        if let Some(class) = by_file_name(&doc.file) {
            return class;
        }
        let missing = match (api_version.is_empty(), kind.is_empty()) {
            (true, true) => "no apiVersion and no kind",
            (true, false) => "no apiVersion",
            _ => "no kind",
        };
        return skip(
            SkipReason::NotAnObject,
            format!("not a Kubernetes object (it has {missing})"),
        );
    }
    let group = group_of(api_version);
    if group == KUSTOMIZE_GROUP || (KUSTOMIZATION_FILES.contains(&file) && kind == "Kustomization")
    {
        return skip(
            SkipReason::Kustomization,
            kustomization_hint(&doc.file, kind),
        );
    }
    if group.ends_with(FLUX_GROUP_SUFFIX) {
        return skip(SkipReason::Flux, flux_hint(doc, kind));
    }
    if group == ARGO_GROUP && ARGO_CD_KINDS.contains(&kind) {
        return skip(SkipReason::ArgoCd, argo_cd_hint(doc, kind));
    }
    if kind == "Namespace" && api_version == "v1" {
        return Class::Namespace;
    }
    Class::Object {
        cluster_scoped: scopes.is_cluster_scoped(group, kind),
    }
}

/// The class a file's name gives a document that is no object: Kustomize's and Helm's files.
fn by_file_name(file: &str) -> Option<Class> {
    let name = file_name(file);
    let (reason, message) = if KUSTOMIZATION_FILES.contains(&name) {
        (
            SkipReason::Kustomization,
            kustomization_hint(file, "Kustomization"),
        )
    } else if name == HELM_CHART_FILE {
        (
            SkipReason::HelmChart,
            format!(
                "a Helm chart's Chart.yaml; render the chart and check what it renders: `helm template RELEASE {} | imagegate check --policies … -`",
                folder_of(file)
            ),
        )
    } else if is_values_file(name) {
        (
            SkipReason::HelmValues,
            format!(
                "Helm values, not a Kubernetes object; render the chart with them and check what it renders: `helm template RELEASE CHART -f {file} | imagegate check --policies … -`"
            ),
        )
    } else {
        return None;
    };
    Some(Class::Skip { reason, message })
}

/// `values.yaml`, `values-prod.yaml`, `values.prod.yaml`, `prod-values.yaml`, `prod.values.yml`.
fn is_values_file(name: &str) -> bool {
    let stem = name
        .strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
        .unwrap_or("");
    stem == "values"
        || stem.starts_with("values-")
        || stem.starts_with("values.")
        || stem.ends_with("-values")
        || stem.ends_with(".values")
}

/// The chart whose `templates/` holds `path`, if any: a file under a folder `templates` whose
/// parent has a `Chart.yaml`. Such files are Go templates, YAML only once rendered.
pub fn helm_chart_of(path: &Path) -> Option<&Path> {
    path.ancestors().skip(1).find_map(|dir| {
        let chart = dir.parent()?;
        (dir.file_name()? == HELM_TEMPLATES_DIR && chart.join(HELM_CHART_FILE).is_file())
            .then_some(chart)
    })
}

/// The skip message of a Helm template in `chart`.
pub fn helm_template_message(chart: &Path) -> String {
    let chart = chart.strip_prefix(".").unwrap_or(chart);
    format!(
        "a template of the Helm chart {}, not YAML until rendered; check what it renders: `helm template RELEASE {} | imagegate check --policies … -`",
        chart.display(),
        chart.display()
    )
}

fn kustomization_hint(file: &str, kind: &str) -> String {
    format!(
        "a Kustomize {kind}: the objects it builds exist only once built (its namespace, images and patches applied); check them with `kustomize build {} | imagegate check --policies … -`",
        folder_of(file)
    )
}

fn flux_hint(doc: &Document, kind: &str) -> String {
    match (group_of(doc.api_version()), kind) {
        ("kustomize.toolkit.fluxcd.io", "Kustomization") => {
            let path = doc
                .value
                .pointer("/spec/path")
                .and_then(Value::as_str)
                .unwrap_or("./");
            format!(
                "a Flux Kustomization: Flux builds the path {path:?} of its source in the cluster; check that folder, or `kustomize build` it and pipe that to `imagegate check --policies … -`"
            )
        }
        ("helm.toolkit.fluxcd.io", "HelmRelease") => "a Flux HelmRelease: Flux renders its chart in the cluster; check `helm template` of the chart with the release's values, piped to `imagegate check --policies … -`".to_owned(),
        _ => format!("a Flux {kind}: it runs no image of its own"),
    }
}

fn argo_cd_hint(doc: &Document, kind: &str) -> String {
    match kind {
        "Application" => {
            let path = doc
                .value
                .pointer("/spec/source/path")
                .and_then(Value::as_str);
            let what = path.map_or(String::from("its source"), |p| format!("the path {p:?} of its source"));
            format!(
                "an Argo CD Application: Argo CD renders {what} in the cluster; check those manifests, or their rendered form (`argocd app manifests NAME`), with `imagegate check --policies … -`"
            )
        }
        "ApplicationSet" => "an Argo CD ApplicationSet: it generates Applications; check the manifests they point at".to_owned(),
        _ => format!("an Argo CD {kind}: it runs no image of its own"),
    }
}

/// The last part of a path as written (`-` for standard input).
fn file_name(file: &str) -> &str {
    file.rsplit(['/', '\\']).next().unwrap_or(file)
}

/// The folder of a file as written, for commands in hints: `.` for a bare name or stdin.
fn folder_of(file: &str) -> String {
    if file == STDIN {
        return "DIR".into();
    }
    match Path::new(file).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
        _ => ".".into(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_documents;

    fn class_of(file: &str, text: &str) -> Class {
        let docs = parse_documents(file, text).unwrap();
        classify(&docs[0], &Scopes::from_documents(&docs))
    }

    fn reason_of(file: &str, text: &str) -> Option<SkipReason> {
        match class_of(file, text) {
            Class::Skip { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn documents_of_a_gitops_repository() {
        let cases = [
            (
                "app/config.yaml",
                "server:\n  port: 8080\n",
                Some(SkipReason::NotAnObject),
            ),
            (
                "app/data.yaml",
                "kind: Pod\nmetadata: {name: x}\n",
                Some(SkipReason::NotAnObject),
            ),
            (
                "app/notes.yaml",
                "- one\n- two\n",
                Some(SkipReason::NotAnObject),
            ),
            (
                "charts/web/Chart.yaml",
                "apiVersion: v2\nname: web\nversion: 1.0.0\n",
                Some(SkipReason::HelmChart),
            ),
            (
                "charts/web/values.yaml",
                "image: {repository: nginx}\n",
                Some(SkipReason::HelmValues),
            ),
            (
                "envs/prod/values-prod.yaml",
                "replicas: 3\n",
                Some(SkipReason::HelmValues),
            ),
            (
                "overlays/prod/kustomization.yaml",
                "resources: [../../base]\n",
                Some(SkipReason::Kustomization),
            ),
            (
                "base/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n",
                Some(SkipReason::Kustomization),
            ),
            (
                "c/kustomization.yaml",
                "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n",
                Some(SkipReason::Kustomization),
            ),
            (
                "flux.yaml",
                "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata: {name: apps}\nspec: {path: ./apps/prod}\n",
                Some(SkipReason::Flux),
            ),
            (
                "flux.yaml",
                "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: web}\n",
                Some(SkipReason::Flux),
            ),
            (
                "flux.yaml",
                "apiVersion: source.toolkit.fluxcd.io/v1\nkind: GitRepository\nmetadata: {name: repo}\n",
                Some(SkipReason::Flux),
            ),
            (
                "argo.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec: {source: {path: apps/web}}\n",
                Some(SkipReason::ArgoCd),
            ),
            (
                "argo.yaml",
                "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: web}\n",
                None,
            ),
            (
                "values.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
                None,
            ),
        ];
        for (file, text, want) in cases {
            assert_eq!(reason_of(file, text), want, "{file}: {text}");
        }
    }

    #[test]
    fn hints_name_what_to_run() {
        let Class::Skip { message, .. } = class_of(
            "overlays/prod/kustomization.yaml",
            "resources: [../../base]\n",
        ) else {
            panic!("skipped")
        };
        assert!(
            message.contains("`kustomize build overlays/prod | imagegate check"),
            "{message}"
        );
        let Class::Skip { message, .. } = class_of(
            "argo.yaml",
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec: {source: {path: apps/web}}\n",
        ) else {
            panic!("skipped")
        };
        assert!(message.contains("the path \"apps/web\""), "{message}");
    }

    #[test]
    fn scopes() {
        let scopes = Scopes::default();
        assert!(scopes.is_cluster_scoped("rbac.authorization.k8s.io", "ClusterRole"));
        assert!(scopes.is_cluster_scoped("", "PersistentVolume"));
        assert!(scopes.is_cluster_scoped("imagegate.dev", "ImagePolicy"));
        assert!(!scopes.is_cluster_scoped("", "ConfigMap"));
        assert!(!scopes.is_cluster_scoped("rbac.authorization.k8s.io", "Role"));
        let crd = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: widgets.example.com}\nspec:\n  group: example.com\n  scope: Cluster\n  names: {kind: Widget, plural: widgets}\n";
        let docs = parse_documents("crd.yaml", crd).unwrap();
        let scopes = Scopes::from_documents(&docs);
        assert!(scopes.is_cluster_scoped("example.com", "Widget"));
        assert_eq!(
            classify(&docs[0], &scopes),
            Class::Object {
                cluster_scoped: true
            }
        );
    }

    #[test]
    fn helm_templates_are_found_by_their_chart() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("charts/web");
        std::fs::create_dir_all(chart.join("templates/sub")).unwrap();
        std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: web\n").unwrap();
        let template = chart.join("templates/sub/deployment.yaml");
        assert_eq!(helm_chart_of(&template), Some(chart.as_path()));
        assert_eq!(helm_chart_of(&chart.join("values.yaml")), None);
        let elsewhere = dir.path().join("templates/deployment.yaml");
        assert_eq!(helm_chart_of(&elsewhere), None);
    }
}
