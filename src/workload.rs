//! The images of an object: a Pod, or the pod template of a workload controller. Only what a
//! decision needs is deserialized (names, annotations, images, pull policies), never a full
//! typed Pod.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::skim::{Skim, Skimmed};

/// Where in a pod spec an image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ContainerType {
    /// `spec.containers`
    Containers,
    /// `spec.initContainers` (native sidecars too)
    InitContainers,
    /// `spec.ephemeralContainers` (`kubectl debug`)
    EphemeralContainers,
    /// `spec.volumes[].image.reference`
    ImageVolumes,
}

impl ContainerType {
    /// The field name, as in the pod spec.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerType::Containers => "containers",
            ContainerType::InitContainers => "initContainers",
            ContainerType::EphemeralContainers => "ephemeralContainers",
            ContainerType::ImageVolumes => "imageVolumes",
        }
    }

    /// A short noun for messages: "container", "init container", …
    pub fn noun(self) -> &'static str {
        match self {
            ContainerType::Containers => "container",
            ContainerType::InitContainers => "init container",
            ContainerType::EphemeralContainers => "ephemeral container",
            ContainerType::ImageVolumes => "image volume",
        }
    }
}

impl fmt::Display for ContainerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds whose images imagegate checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    ReplicationController,
}

impl WorkloadKind {
    /// The kind for an API group and kind, or `None` for kinds without images.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<WorkloadKind> {
        Some(match (group, kind) {
            ("", "Pod") => WorkloadKind::Pod,
            ("", "ReplicationController") => WorkloadKind::ReplicationController,
            ("apps", "Deployment") => WorkloadKind::Deployment,
            ("apps", "ReplicaSet") => WorkloadKind::ReplicaSet,
            ("apps", "StatefulSet") => WorkloadKind::StatefulSet,
            ("apps", "DaemonSet") => WorkloadKind::DaemonSet,
            ("batch", "Job") => WorkloadKind::Job,
            ("batch", "CronJob") => WorkloadKind::CronJob,
            _ => return None,
        })
    }

    /// The kind for an `apiVersion` (`apps/v1`) and kind.
    pub fn from_api_version_kind(api_version: &str, kind: &str) -> Option<WorkloadKind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Self::from_group_kind(group, kind)
    }

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::ReplicationController => "ReplicationController",
        }
    }

    /// The path of the pod spec inside the object.
    pub fn pod_spec_path(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "spec",
            WorkloadKind::CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }
}

/// One image an object would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUse {
    /// Where it comes from.
    pub container_type: ContainerType,
    /// The container's name (the volume's name for image volumes).
    pub container: String,
    /// The image as written.
    pub image: String,
    /// `imagePullPolicy` (`pullPolicy` for image volumes) as written, if any.
    pub pull_policy: Option<String>,
    /// The field path of the image, e.g. `spec.containers[0].image`.
    pub field_path: String,
}

impl ImageUse {
    /// Whether the image is in a workload's pod template (a Deployment's, a CronJob's, …)
    /// rather than in a Pod: the Pods made from it are what the mutating webhook changes.
    pub fn in_pod_template(&self) -> bool {
        self.field_path
            .starts_with(WorkloadKind::Deployment.pod_spec_path())
            || self
                .field_path
                .starts_with(WorkloadKind::CronJob.pod_spec_path())
    }

    /// The image's index in its list (`spec.containers[3].image` → 3), read back from
    /// [`ImageUse::field_path`], which this module writes.
    pub fn position(&self) -> Option<usize> {
        let open = self.field_path.rfind('[')?;
        let close = open + self.field_path[open..].find(']')?;
        self.field_path[open + 1..close].parse().ok()
    }
}

/// What a decision needs of an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// The object's name (or `generateName` when it has none yet).
    pub name: String,
    /// The object's namespace, if it says.
    pub namespace: Option<String>,
    /// The annotations that carry break-glass (those under [`ANNOTATION_PREFIX`]): the pod
    /// template's for workloads, the Pod's own for Pods. Other annotations are skipped while
    /// reading, since none of them can change a decision.
    pub annotations: BTreeMap<String, String>,
    /// Every image, in spec order: init containers, containers, ephemeral containers, volumes.
    pub images: Vec<ImageUse>,
}

/// Why an object's images cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {kind} object: {source}")]
pub struct WorkloadError {
    kind: &'static str,
    #[source]
    source: serde_json::Error,
}

impl Workload {
    /// Reads a workload of `kind` from JSON text.
    pub fn from_json(kind: WorkloadKind, json: &str) -> Result<Workload, WorkloadError> {
        let mut de = serde_json::Deserializer::from_str(json);
        Self::from_deserializer(kind, &mut de)
            .and_then(|w| de.end().map(|()| w))
            .map_err(|source| WorkloadError {
                kind: kind.as_str(),
                source,
            })
    }

    /// Reads a workload of `kind` from a JSON value.
    pub fn from_value(
        kind: WorkloadKind,
        value: &serde_json::Value,
    ) -> Result<Workload, WorkloadError> {
        Self::from_deserializer(kind, value).map_err(|source| WorkloadError {
            kind: kind.as_str(),
            source,
        })
    }

    fn from_deserializer<'de, D>(kind: WorkloadKind, de: D) -> Result<Workload, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        Ok(WorkloadObject::deserialize(de)?.into_workload(kind))
    }
}

/// The parts of any checked kind's object that a decision needs, read in one pass: the pod
/// spec fields of a Pod, `spec.template` of the workload controllers and
/// `spec.jobTemplate.spec.template` of a CronJob (the paths never collide, so one shape serves
/// every kind). The webhook reads it straight out of the AdmissionReview body.
#[derive(Debug, Deserialize, Default, PartialEq)]
pub struct WorkloadObject {
    #[serde(default, deserialize_with = "null_default")]
    metadata: Meta,
    #[serde(default, deserialize_with = "null_default")]
    spec: AnySpec,
}

impl WorkloadObject {
    /// The workload, reading the object as `kind`.
    pub fn into_workload(self, kind: WorkloadKind) -> Workload {
        let WorkloadObject {
            metadata: meta,
            spec,
        } = self;
        let (annotations, pod) = match kind {
            WorkloadKind::Pod => {
                let pod = PodSpec {
                    containers: spec.containers,
                    init_containers: spec.init_containers,
                    ephemeral_containers: spec.ephemeral_containers,
                    volumes: spec.volumes,
                };
                (meta.annotations, pod)
            }
            WorkloadKind::CronJob => {
                let t = spec.job_template.unwrap_or_default().spec.template;
                (t.metadata.annotations, t.spec)
            }
            _ => {
                let t = spec.template.unwrap_or_default();
                (t.metadata.annotations, t.spec)
            }
        };
        let name = if meta.name.is_empty() {
            meta.generate_name
        } else {
            meta.name
        };
        Workload {
            name,
            namespace: meta.namespace.filter(|ns| !ns.is_empty()),
            annotations,
            images: pod.images(kind.pod_spec_path()),
        }
    }
}

// The same shapes read with `Skim` (see `crate::skim`): each reader takes the keys its
// struct's serde derive takes, `null` where the derive accepts it, and gives up on a repeated
// key, as the derive refuses one.

impl WorkloadObject {
    /// Reads the object with [`Skim`], jumping over every field a decision does not need:
    /// the same result as deserializing it, or [`Decline`](crate::skim::Decline).
    pub fn skim(s: &mut Skim<'_>) -> Skimmed<WorkloadObject> {
        let mut out = WorkloadObject::default();
        s.fields(&["metadata", "spec"], |s, field| {
            match field {
                0 => out.metadata = s.or_default(Meta::skim)?,
                _ => out.spec = s.or_default(AnySpec::skim)?,
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl Meta {
    fn skim(s: &mut Skim<'_>) -> Skimmed<Meta> {
        let mut out = Meta::default();
        s.fields(
            &["name", "generateName", "namespace", "annotations"],
            |s, field| {
                match field {
                    0 => out.name = s.or_default(Skim::owned_string)?,
                    1 => out.generate_name = s.or_default(Skim::owned_string)?,
                    2 => out.namespace = s.optional(Skim::owned_string)?,
                    _ => out.annotations = s.or_default(skim_imagegate_annotations)?,
                }
                Ok(())
            },
        )?;
        Ok(out)
    }
}

/// [`imagegate_annotations`], skimmed.
fn skim_imagegate_annotations(s: &mut Skim<'_>) -> Skimmed<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    s.object(|s, key| {
        if key.starts_with(ANNOTATION_PREFIX) {
            out.insert(key.to_owned(), s.owned_string()?);
            Ok(())
        } else {
            s.skip()
        }
    })?;
    Ok(out)
}

/// The keys of a pod spec's image lists, in the order [`PodSpec::skim_list`] numbers them.
const POD_LISTS: [&str; 4] = [
    "containers",
    "initContainers",
    "ephemeralContainers",
    "volumes",
];

impl AnySpec {
    fn skim(s: &mut Skim<'_>) -> Skimmed<AnySpec> {
        const KEYS: [&str; 6] = [
            POD_LISTS[0],
            POD_LISTS[1],
            POD_LISTS[2],
            POD_LISTS[3],
            "template",
            "jobTemplate",
        ];
        let mut pod = PodSpec::default();
        let mut out = AnySpec::default();
        s.fields(&KEYS, |s, field| match field {
            0..4 => pod.skim_list(s, field),
            4 => {
                out.template = s.optional(PodTemplate::skim)?.map(Box::new);
                Ok(())
            }
            _ => {
                out.job_template = s.optional(JobTemplate::skim)?.map(Box::new);
                Ok(())
            }
        })?;
        out.containers = pod.containers;
        out.init_containers = pod.init_containers;
        out.ephemeral_containers = pod.ephemeral_containers;
        out.volumes = pod.volumes;
        Ok(out)
    }
}

impl PodTemplate {
    fn skim(s: &mut Skim<'_>) -> Skimmed<PodTemplate> {
        let mut out = PodTemplate::default();
        s.fields(&["metadata", "spec"], |s, field| {
            match field {
                0 => out.metadata = s.or_default(Meta::skim)?,
                _ => out.spec = s.or_default(PodSpec::skim)?,
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl JobTemplate {
    fn skim(s: &mut Skim<'_>) -> Skimmed<JobTemplate> {
        let mut out = JobTemplate::default();
        s.fields(&["spec"], |s, _| {
            out.spec = s.or_default(TemplateSpec::skim)?;
            Ok(())
        })?;
        Ok(out)
    }
}

impl TemplateSpec {
    fn skim(s: &mut Skim<'_>) -> Skimmed<TemplateSpec> {
        let mut out = TemplateSpec::default();
        s.fields(&["template"], |s, _| {
            out.template = s.or_default(PodTemplate::skim)?;
            Ok(())
        })?;
        Ok(out)
    }
}

impl PodSpec {
    fn skim(s: &mut Skim<'_>) -> Skimmed<PodSpec> {
        let mut out = PodSpec::default();
        s.fields(&POD_LISTS, |s, field| out.skim_list(s, field))?;
        Ok(out)
    }

    /// Reads the list named `POD_LISTS[field]`.
    fn skim_list(&mut self, s: &mut Skim<'_>, field: usize) -> Skimmed<()> {
        match field {
            0 => self.containers = s.or_default(|s| s.list(Container::skim))?,
            1 => self.init_containers = s.or_default(|s| s.list(Container::skim))?,
            2 => self.ephemeral_containers = s.or_default(|s| s.list(Container::skim))?,
            _ => self.volumes = s.or_default(|s| s.list(Volume::skim))?,
        }
        Ok(())
    }
}

impl Container {
    fn skim(s: &mut Skim<'_>) -> Skimmed<Container> {
        let mut out = Container::default();
        s.fields(&["name", "image", "imagePullPolicy"], |s, field| {
            match field {
                0 => out.name = s.or_default(Skim::owned_string)?,
                1 => out.image = s.or_default(Skim::owned_string)?,
                _ => out.image_pull_policy = s.optional(Skim::owned_string)?,
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl Volume {
    fn skim(s: &mut Skim<'_>) -> Skimmed<Volume> {
        let mut out = Volume::default();
        s.fields(&["name", "image"], |s, field| {
            match field {
                0 => out.name = s.or_default(Skim::owned_string)?,
                _ => out.image = s.optional(ImageVolumeSource::skim)?,
            }
            Ok(())
        })?;
        Ok(out)
    }
}

impl ImageVolumeSource {
    fn skim(s: &mut Skim<'_>) -> Skimmed<ImageVolumeSource> {
        let mut out = ImageVolumeSource::default();
        s.fields(&["reference", "pullPolicy"], |s, field| {
            match field {
                0 => out.reference = s.or_default(Skim::owned_string)?,
                _ => out.pull_policy = s.optional(Skim::owned_string)?,
            }
            Ok(())
        })?;
        Ok(out)
    }
}

// The minimal wire shapes. `null` is accepted wherever the API server may send it.

#[derive(Debug, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    generate_name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "imagegate_annotations")]
    annotations: BTreeMap<String, String>,
}

/// The annotation prefix imagegate reads; the legacy `ImagePolicyWebhook` plugin forwards keys
/// of this form too.
pub const ANNOTATION_PREFIX: &str = "imagegate.image-policy.k8s.io/";

/// Reads an annotation map keeping only imagegate's keys; other values are skipped unread
/// (`kubectl.kubernetes.io/last-applied-configuration` alone can be most of an object).
pub fn imagegate_annotations<'de, D>(de: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of annotations")
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key.starts_with(ANNOTATION_PREFIX) {
                    out.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }
    de.deserialize_any(Visitor)
}

/// A pod spec's fields and the template fields of the controllers, side by side (spelled out
/// rather than `#[serde(flatten)]`, which would buffer the whole spec).
#[derive(Debug, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct AnySpec {
    #[serde(default, deserialize_with = "null_default")]
    containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_default")]
    init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_default")]
    ephemeral_containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_default")]
    volumes: Vec<Volume>,
    // Boxed, and absent unless the object has them: a Pod has neither, and the two inline
    // made the struct 500 bytes, moved several times while it was read.
    #[serde(default, deserialize_with = "null_default")]
    template: Option<Box<PodTemplate>>,
    #[serde(default, deserialize_with = "null_default")]
    job_template: Option<Box<JobTemplate>>,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
struct TemplateSpec {
    #[serde(default, deserialize_with = "null_default")]
    template: PodTemplate,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
struct PodTemplate {
    #[serde(default, deserialize_with = "null_default")]
    metadata: Meta,
    #[serde(default, deserialize_with = "null_default")]
    spec: PodSpec,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
struct JobTemplate {
    #[serde(default, deserialize_with = "null_default")]
    spec: TemplateSpec,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default, deserialize_with = "null_default")]
    containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_default")]
    init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_default")]
    ephemeral_containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_default")]
    volumes: Vec<Volume>,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    image: String,
    #[serde(default)]
    image_pull_policy: Option<String>,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
struct Volume {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default)]
    image: Option<ImageVolumeSource>,
}

#[derive(Debug, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ImageVolumeSource {
    #[serde(default, deserialize_with = "null_default")]
    reference: String,
    #[serde(default)]
    pull_policy: Option<String>,
}

pub(crate) fn null_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// `{spec}.{list}[{index}].{leaf}`, built without the formatting machinery: it is made for
/// every image of every request.
fn field_path(spec: &str, list: &str, index: usize, leaf: &str) -> String {
    let mut out = String::with_capacity(spec.len() + list.len() + leaf.len() + 8);
    out.push_str(spec);
    out.push('.');
    out.push_str(list);
    out.push('[');
    match u32::try_from(index).ok().filter(|i| *i < 10) {
        Some(digit) => out.push(char::from_digit(digit, 10).unwrap_or('0')),
        None => out.push_str(&index.to_string()),
    }
    out.push_str("].");
    out.push_str(leaf);
    out
}

/// Reads a Pod's `spec` (or `null`) into its images, with field paths under `spec`: for readers
/// of whole Pods other than the webhook's (the audit's Pod index).
pub fn pod_spec_images<'de, D>(de: D) -> Result<Vec<ImageUse>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let spec: PodSpec = null_default(de)?;
    Ok(spec.images(WorkloadKind::Pod.pod_spec_path()))
}

impl PodSpec {
    fn images(self, path: &str) -> Vec<ImageUse> {
        let mut out = Vec::with_capacity(
            self.containers.len() + self.init_containers.len() + self.ephemeral_containers.len(),
        );
        let lists = [
            (ContainerType::InitContainers, self.init_containers),
            (ContainerType::Containers, self.containers),
            (
                ContainerType::EphemeralContainers,
                self.ephemeral_containers,
            ),
        ];
        for (ty, list) in lists {
            for (i, c) in list.into_iter().enumerate() {
                out.push(ImageUse {
                    container_type: ty,
                    container: c.name,
                    image: c.image,
                    pull_policy: c.image_pull_policy,
                    field_path: field_path(path, ty.as_str(), i, "image"),
                });
            }
        }
        for (i, v) in self.volumes.into_iter().enumerate() {
            if let Some(src) = v.image {
                out.push(ImageUse {
                    container_type: ContainerType::ImageVolumes,
                    container: v.name,
                    image: src.reference,
                    pull_policy: src.pull_policy,
                    field_path: field_path(path, "volumes", i, "image.reference"),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_is_found_with_its_field_path_in_every_kind() {
        let containers: Vec<_> = (0..12)
            .map(|i| serde_json::json!({"name": format!("c{i}"), "image": format!("app:{i}")}))
            .collect();
        let pod_spec = serde_json::json!({
            "initContainers": [{"name": "init", "image": "init:1"}],
            "containers": containers,
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            "volumes": [{"name": "plain"}, {"name": "data", "image": {"reference": "data:1"}}],
        });
        let template = serde_json::json!({"template": {"spec": pod_spec}});
        for (kind, object, prefix) in [
            (
                WorkloadKind::Pod,
                serde_json::json!({"spec": pod_spec}),
                "spec",
            ),
            (
                WorkloadKind::Deployment,
                serde_json::json!({"spec": template}),
                "spec.template.spec",
            ),
            (
                WorkloadKind::CronJob,
                serde_json::json!({"spec": {"jobTemplate": {"spec": template}}}),
                "spec.jobTemplate.spec.template.spec",
            ),
        ] {
            let text = object.to_string();
            let read = Workload::from_json(kind, &text).unwrap();
            let mut skim = Skim::new(&text);
            let skimmed = WorkloadObject::skim(&mut skim).unwrap().into_workload(kind);
            assert_eq!(read, skimmed);
            let paths: Vec<_> = read
                .images
                .iter()
                .map(|i| (i.image.as_str(), i.field_path.as_str()))
                .collect();
            assert_eq!(paths.len(), 15, "{paths:?}");
            assert_eq!(
                paths[0],
                ("init:1", &*format!("{prefix}.initContainers[0].image"))
            );
            assert_eq!(
                paths[10],
                ("app:9", &*format!("{prefix}.containers[9].image"))
            );
            assert_eq!(
                paths[12],
                ("app:11", &*format!("{prefix}.containers[11].image"))
            );
            assert_eq!(
                paths[13],
                (
                    "busybox",
                    &*format!("{prefix}.ephemeralContainers[0].image")
                )
            );
            assert_eq!(
                paths[14],
                ("data:1", &*format!("{prefix}.volumes[1].image.reference"))
            );
            assert!(
                read.images
                    .iter()
                    .all(|i| i.in_pod_template() == (kind != WorkloadKind::Pod))
            );
            let positions: Vec<_> = read.images.iter().map(ImageUse::position).collect();
            let mut want = vec![Some(0)];
            want.extend((0..12).map(Some));
            want.extend([Some(0), Some(1)]);
            assert_eq!(positions, want);
        }
    }
}
