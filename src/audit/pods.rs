//! The Pod index: every running Pod of the cluster, holding only what a decision needs, driven
//! by watch events (apply, delete, re-list) like the policy index.
//!
//! A Pod is read from the API server as a [`PodObject`], which keeps only names, owners,
//! imagegate's annotations, images and the container statuses' image IDs (every other field
//! is skipped unread), and is then folded into a compact [`PodShape`]. The replicas of one
//! workload have the same shape, so they share one; the strings shapes are made of (images,
//! container names, owner kinds, digests) are shared too. A Pod costs the index its name and
//! a pointer, plus its shape when it is the only Pod of that shape.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::watcher;
use serde::Deserialize;

use super::running::{ImageId, parse_image_id};
use crate::reference::{Reference, validate_digest};
use crate::workload::{
    ContainerType, ImageUse, imagegate_annotations, null_default, pod_spec_images,
};

/// A Pod as the API server sends it, read for the index: `metadata` keeps name, namespace,
/// uid, resourceVersion, ownerReferences and imagegate's annotations; `spec` only its images;
/// `status` only the phase and the image of each container status. Everything else (managed
/// fields, other annotations, volumes' sources, the rest of the spec) is skipped unread.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodObject {
    #[serde(default, deserialize_with = "slim_metadata")]
    pub metadata: ObjectMeta,
    /// Every image of the spec, as the webhook reads them.
    #[serde(default, rename = "spec", deserialize_with = "pod_spec_images")]
    pub images: Vec<ImageUse>,
    #[serde(default, deserialize_with = "null_default")]
    pub status: PodStatus,
}

impl k8s_openapi::Resource for PodObject {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for PodObject {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The metadata fields the index and the watch need.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
    #[serde(default, deserialize_with = "imagegate_annotations")]
    annotations: BTreeMap<String, String>,
}

fn slim_metadata<'de, D: serde::Deserializer<'de>>(de: D) -> Result<ObjectMeta, D::Error> {
    let Some(m) = Option::<SlimMeta>::deserialize(de)? else {
        return Ok(ObjectMeta::default());
    };
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        owner_references: m.owner_references,
        annotations: (!m.annotations.is_empty()).then_some(m.annotations),
        ..ObjectMeta::default()
    })
}

/// The parts of a Pod's status the index reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    pub ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

/// One container status: its name, the image the kubelet says it runs, and that image's ID.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default, rename = "imageID")]
    pub image_id: Option<String>,
}

impl PodObject {
    /// Whether nothing of the Pod runs any more (phase `Succeeded` or `Failed`): such Pods are
    /// not indexed, since no image of theirs runs.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// The status the kubelet reports for the container of `ty` named `name`.
    fn status_of(&self, ty: ContainerType, name: &str) -> Option<&ContainerStatus> {
        let list = match ty {
            ContainerType::Containers => &self.status.container_statuses,
            ContainerType::InitContainers => &self.status.init_container_statuses,
            ContainerType::EphemeralContainers => &self.status.ephemeral_container_statuses,
            ContainerType::ImageVolumes => return None,
        };
        list.as_deref()?.iter().find(|s| s.name == name)
    }
}

/// What the node reports one image runs as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Running {
    /// Nothing yet (the container has not started), nothing readable, or a status that speaks
    /// of another image than the spec (a Pod whose image was just changed).
    Unreported,
    /// A registry digest (`sha256:…`).
    Digest(Arc<str>),
    /// Only a local image ID (`sha256:…`): an image built or loaded on the node.
    Local(Arc<str>),
}

/// One image of a Pod, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexedImage {
    pub container_type: ContainerType,
    pub container: Arc<str>,
    pub image: Arc<str>,
    pub pull_policy: Option<Arc<str>>,
    pub running: Running,
}

/// The service accounts of the built-in controllers that create Pods, by owner kind: as the
/// kube-controller-manager runs them (`--use-service-account-credentials`, every managed
/// cluster's setting), in `kube-system`.
const POD_CREATORS: [(&str, &str, &str); 5] = [
    ("apps", "ReplicaSet", "replicaset-controller"),
    ("apps", "StatefulSet", "statefulset-controller"),
    ("apps", "DaemonSet", "daemon-set-controller"),
    ("batch", "Job", "job-controller"),
    ("", "ReplicationController", "replication-controller"),
];

/// The namespace of the built-in controllers' service accounts.
pub const CONTROLLER_NAMESPACE: &str = "kube-system";

/// A Pod's owner: its controller when it has one, else its first owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub kind: Arc<str>,
    pub name: Arc<str>,
    /// The service account of the built-in controller that created the Pod (owner is its
    /// controller and of a kind in [`POD_CREATORS`]), e.g. `replicaset-controller`.
    pub creator: Option<&'static str>,
}

impl Owner {
    /// `Kind/name`.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// What a decision needs of a Pod besides its name and namespace. Pods of one workload share
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodShape {
    pub owner: Option<Owner>,
    /// imagegate's annotations (break-glass), sorted by key.
    pub annotations: Box<[(Arc<str>, Arc<str>)]>,
    pub images: Box<[IndexedImage]>,
}

/// One indexed Pod, as an audit pass reads it.
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub shape: Arc<PodShape>,
}

type Pods = BTreeMap<Arc<str>, BTreeMap<Arc<str>, Arc<PodShape>>>;

/// How many Pods may be removed or replaced before the shared strings and shapes that no Pod
/// uses any more are dropped: a sweep costs a pass over the distinct strings and shapes (a few
/// thousand in a large cluster), so doing it every thousand changes keeps it negligible while
/// the garbage it leaves stays a fraction of the index.
pub const PRUNE_AFTER_CHANGES: usize = 1024;

/// The cluster's running Pods, by namespace and name, sorted.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: Pods,
    /// The Pods of a re-list in progress; they replace `pods` once it is complete.
    relist: Option<Pods>,
    strings: HashSet<Arc<str>>,
    shapes: HashSet<Arc<PodShape>>,
    ready: bool,
    changes: usize,
}

impl PodIndex {
    /// An empty index, not ready until its first complete list.
    pub fn new() -> PodIndex {
        PodIndex::default()
    }

    /// Applies one watch event. Until a (re-)list is complete, the Pods it delivers only fill
    /// a buffer, and the previous ones stay.
    pub fn apply(&mut self, event: watcher::Event<PodObject>) {
        match event {
            watcher::Event::Init => self.relist = Some(Pods::new()),
            watcher::Event::InitApply(pod) => {
                let mut target = self.relist.take().unwrap_or_default();
                self.upsert(&mut target, &pod);
                self.relist = Some(target);
            }
            watcher::Event::InitDone => {
                if let Some(pods) = self.relist.take() {
                    self.pods = pods;
                }
                self.ready = true;
                self.prune();
            }
            watcher::Event::Apply(pod) => {
                let mut pods = std::mem::take(&mut self.pods);
                self.upsert(&mut pods, &pod);
                self.pods = pods;
            }
            watcher::Event::Delete(pod) => {
                let mut pods = std::mem::take(&mut self.pods);
                Self::remove(&mut pods, &pod);
                self.pods = pods;
                self.changed();
            }
        }
    }

    /// Whether the first complete list is in.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// How many Pods the index holds.
    pub fn len(&self) -> usize {
        self.pods.values().map(BTreeMap::len).sum()
    }

    /// Whether the index holds no Pod.
    pub fn is_empty(&self) -> bool {
        self.pods.values().all(BTreeMap::is_empty)
    }

    /// Every Pod, sorted by namespace and name: what an audit pass reads, taken out so that
    /// the pass does not hold the index.
    pub fn entries(&self) -> Vec<PodEntry> {
        let mut out = Vec::with_capacity(self.len());
        for (namespace, pods) in &self.pods {
            for (name, shape) in pods {
                out.push(PodEntry {
                    namespace: Arc::clone(namespace),
                    name: Arc::clone(name),
                    shape: Arc::clone(shape),
                });
            }
        }
        out
    }

    /// How many distinct shapes and strings the index shares among its Pods.
    pub fn shared(&self) -> (usize, usize) {
        (self.shapes.len(), self.strings.len())
    }

    fn upsert(&mut self, pods: &mut Pods, pod: &PodObject) {
        if pod.is_finished() {
            Self::remove(pods, pod);
            self.changed();
            return;
        }
        let (Some(namespace), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            return;
        };
        let shape = self.shape_of(pod);
        let namespace = self.intern(namespace);
        let replaced = pods
            .entry(namespace)
            .or_default()
            .insert(Arc::from(name), shape);
        if replaced.is_some() {
            self.changed();
        }
    }

    fn remove(pods: &mut Pods, pod: &PodObject) {
        let (Some(namespace), Some(name)) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref(),
        ) else {
            return;
        };
        if let Some(in_namespace) = pods.get_mut(namespace) {
            in_namespace.remove(name);
            if in_namespace.is_empty() {
                pods.remove(namespace);
            }
        }
    }

    fn changed(&mut self) {
        self.changes += 1;
        if self.changes >= PRUNE_AFTER_CHANGES {
            self.prune();
        }
    }

    /// Drops the shared shapes and strings that no Pod uses any more.
    fn prune(&mut self) {
        self.changes = 0;
        // Shapes first: they hold strings.
        self.shapes.retain(|s| Arc::strong_count(s) > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        intern(&mut self.strings, s)
    }

    /// The Pod's shape, shared with every Pod of the same shape.
    fn shape_of(&mut self, pod: &PodObject) -> Arc<PodShape> {
        let owner = owner_of(pod.metadata.owner_references.as_deref().unwrap_or_default()).map(
            |(o, creator)| Owner {
                kind: self.intern(&o.kind),
                name: self.intern(&o.name),
                creator,
            },
        );
        let annotations = pod
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, v)| (self.intern(k), self.intern(v)))
            .collect();
        let images = pod
            .images
            .iter()
            .map(|use_| IndexedImage {
                container_type: use_.container_type,
                container: self.intern(&use_.container),
                image: self.intern(&use_.image),
                pull_policy: use_.pull_policy.as_deref().map(|p| self.intern(p)),
                running: self.running_of(pod, use_),
            })
            .collect();
        let shape = PodShape {
            owner,
            annotations,
            images,
        };
        match self.shapes.get(&shape) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shape = Arc::new(shape);
                self.shapes.insert(Arc::clone(&shape));
                shape
            }
        }
    }

    fn running_of(&mut self, pod: &PodObject, use_: &ImageUse) -> Running {
        let Some(status) = pod.status_of(use_.container_type, &use_.container) else {
            return Running::Unreported;
        };
        if status
            .image
            .as_deref()
            .is_some_and(|reported| !same_image(reported, &use_.image))
        {
            return Running::Unreported;
        }
        match parse_image_id(status.image_id.as_deref().unwrap_or_default()) {
            ImageId::Digest(d) => Running::Digest(self.intern(d)),
            ImageId::Local(id) => Running::Local(self.intern(id)),
            ImageId::Unknown => Running::Unreported,
        }
    }
}

fn intern(set: &mut HashSet<Arc<str>>, s: &str) -> Arc<str> {
    match set.get(s) {
        Some(shared) => Arc::clone(shared),
        None => {
            let shared: Arc<str> = Arc::from(s);
            set.insert(Arc::clone(&shared));
            shared
        }
    }
}

/// The Pod's controller (else its first owner), and the built-in controller's service account
/// when that controller is one that creates Pods.
fn owner_of(owners: &[OwnerReference]) -> Option<(&OwnerReference, Option<&'static str>)> {
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or(owners.first())?;
    let group = owner.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let creator = (owner.controller == Some(true))
        .then(|| {
            POD_CREATORS
                .iter()
                .find(|(g, k, _)| *g == group && *k == owner.kind)
                .map(|(_, _, sa)| *sa)
        })
        .flatten();
    Some((owner, creator))
}

/// Whether a container status's `image` speaks of the spec's image (same registry and
/// repository), so that its `imageID` is what that image runs. Runtimes write the spec's
/// reference normalised (`nginx` → `docker.io/library/nginx:latest`) or, for some images
/// pulled by digest, only an image ID; a different repository means the status is of the
/// image before an update of the spec.
fn same_image(reported: &str, spec: &str) -> bool {
    let reported = reported.split_once("://").map_or(reported, |(_, r)| r);
    if reported.is_empty() || validate_digest(reported).is_ok() {
        return true;
    }
    match (Reference::parse(reported), Reference::parse(spec)) {
        (Ok(r), Ok(s)) => r.name() == s.name(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn pod(namespace: &str, name: &str, owner: Option<(&str, &str, &str)>) -> serde_json::Value {
        let mut meta = json!({
            "name": name, "namespace": namespace, "uid": format!("{name}-uid"),
            "resourceVersion": "7",
            "annotations": {
                "imagegate.image-policy.k8s.io/break-glass": "INC-1",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"huge\": true}",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        });
        if let Some((api_version, kind, owner)) = owner {
            meta["ownerReferences"] = json!([
                {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n"},
                {"apiVersion": api_version, "kind": kind, "name": owner, "uid": "o", "controller": true},
            ]);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                "containers": [
                    {"name": "app", "image": "nginx:1.25", "imagePullPolicy": "Always",
                     "env": [{"name": "X", "value": "y"}]},
                    {"name": "pinned", "image": format!("ghcr.io/a/b@{A}")},
                ],
                "volumes": [{"name": "cfg", "configMap": {"name": "c"}},
                            {"name": "data", "image": {"reference": "ghcr.io/a/data:1"}}],
                "nodeName": "n1",
            },
            "status": {
                "phase": "Running",
                "initContainerStatuses": [
                    {"name": "init", "image": "docker.io/library/busybox:1.36", "imageID": format!("docker.io/library/busybox@{B}")},
                ],
                "containerStatuses": [
                    {"name": "app", "image": "docker.io/library/nginx:1.25", "imageID": format!("docker-pullable://nginx@{A}")},
                    {"name": "pinned", "image": A, "imageID": A},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        })
    }

    fn read(v: serde_json::Value) -> PodObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reads_only_what_decisions_need() {
        let p = read(pod(
            "shop",
            "web-1",
            Some(("apps/v1", "ReplicaSet", "web-7d")),
        ));
        assert_eq!(p.metadata.name.as_deref(), Some("web-1"));
        assert_eq!(p.metadata.resource_version.as_deref(), Some("7"));
        assert!(p.metadata.managed_fields.is_none());
        let annotations = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 1, "{annotations:?}");
        let images: Vec<_> = p.images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(
            images,
            [
                "busybox:1.36",
                "nginx:1.25",
                &format!("ghcr.io/a/b@{A}"),
                "ghcr.io/a/data:1"
            ]
        );
        // `null` anywhere a whole part may be.
        let p = read(json!({"metadata": null, "spec": null, "status": null}));
        assert!(p.images.is_empty() && p.metadata.name.is_none());
    }

    #[test]
    fn shapes_are_shared_by_replicas_and_hold_what_runs() {
        let mut index = PodIndex::new();
        index.apply(watcher::Event::Init);
        for name in ["web-1", "web-2", "web-3"] {
            let p = pod("shop", name, Some(("apps/v1", "ReplicaSet", "web-7d")));
            index.apply(watcher::Event::InitApply(read(p)));
        }
        assert!(!index.is_ready());
        assert!(index.is_empty(), "Pods of an incomplete list are visible");
        index.apply(watcher::Event::InitDone);
        assert!(index.is_ready());
        let entries = index.entries();
        assert_eq!(entries.len(), 3);
        assert!(Arc::ptr_eq(&entries[0].shape, &entries[2].shape));
        assert_eq!(index.shared().0, 1);

        let shape = &entries[0].shape;
        let owner = shape.owner.as_ref().unwrap();
        assert_eq!(owner.display(), "ReplicaSet/web-7d");
        assert_eq!(owner.creator, Some("replicaset-controller"));
        let running: Vec<_> = shape.images.iter().map(|i| i.running.clone()).collect();
        assert_eq!(
            running,
            [
                Running::Digest(B.into()),
                Running::Digest(A.into()),
                Running::Local(A.into()),
                Running::Unreported,
            ]
        );
        assert_eq!(shape.images[1].pull_policy.as_deref(), Some("Always"));
        assert_eq!(shape.images[3].container_type, ContainerType::ImageVolumes);
    }

    #[test]
    fn owners_that_create_pods_are_known_by_group_and_kind() {
        let cases = [
            (
                Some(("apps/v1", "ReplicaSet", "r")),
                Some("ReplicaSet/r"),
                Some("replicaset-controller"),
            ),
            (
                Some(("batch/v1", "Job", "j")),
                Some("Job/j"),
                Some("job-controller"),
            ),
            (
                Some(("v1", "ReplicationController", "rc")),
                Some("ReplicationController/rc"),
                Some("replication-controller"),
            ),
            // A look-alike of another group creates Pods with its own service account.
            (
                Some(("example.com/v1", "ReplicaSet", "x")),
                Some("ReplicaSet/x"),
                None,
            ),
            (
                Some(("argoproj.io/v1alpha1", "Workflow", "w")),
                Some("Workflow/w"),
                None,
            ),
            (None, None, None),
        ];
        for (owner, display, creator) in cases {
            let mut index = PodIndex::new();
            index.apply(watcher::Event::Apply(read(pod("ns", "p", owner))));
            let shape = &index.entries()[0].shape;
            let got = shape.owner.as_ref();
            assert_eq!(got.map(Owner::display).as_deref(), display, "{owner:?}");
            assert_eq!(got.and_then(|o| o.creator), creator, "{owner:?}");
        }
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let mut index = PodIndex::new();
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(read(pod("a", "p1", None))));
        index.apply(watcher::Event::InitDone);
        index.apply(watcher::Event::Apply(read(pod("b", "p2", None))));
        let names = |i: &PodIndex| -> Vec<String> {
            i.entries()
                .iter()
                .map(|e| format!("{}/{}", e.namespace, e.name))
                .collect()
        };
        assert_eq!(names(&index), ["a/p1", "b/p2"]);

        // A finished Pod leaves the index; so does a deleted one.
        let mut done = pod("a", "p1", None);
        done["status"]["phase"] = json!("Succeeded");
        index.apply(watcher::Event::Apply(read(done)));
        assert_eq!(names(&index), ["b/p2"]);
        index.apply(watcher::Event::Delete(read(pod("b", "p2", None))));
        assert!(index.is_empty());

        // A re-list replaces everything once complete.
        index.apply(watcher::Event::Apply(read(pod("c", "old", None))));
        index.apply(watcher::Event::Init);
        index.apply(watcher::Event::InitApply(read(pod("c", "new", None))));
        assert_eq!(names(&index), ["c/old"]);
        index.apply(watcher::Event::InitDone);
        assert_eq!(names(&index), ["c/new"]);
        // Shapes and strings no Pod uses are dropped with the re-list.
        assert_eq!(index.shared().0, 1);
    }

    #[test]
    fn a_status_of_another_image_is_not_what_runs() {
        let mut p = pod("ns", "p", None);
        // The spec was just changed; the status still speaks of the old image.
        p["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        p["status"]["containerStatuses"][0]["image"] = json!("docker.io/library/httpd:2");
        let mut index = PodIndex::new();
        index.apply(watcher::Event::Apply(read(p)));
        let shape = &index.entries()[0].shape;
        assert_eq!(shape.images[1].running, Running::Unreported);
        assert!(same_image("docker.io/library/nginx:1.25", "nginx:1.27"));
        assert!(same_image(A, "nginx:1.27"));
        assert!(same_image("", "nginx"));
        assert!(!same_image("quay.io/x/y:1", "nginx"));
    }
}
