//! The audit of running Pods (DESIGN §6.1): memory per indexed Pod (at most 1 KiB on average
//! for typical Pods) and the CPU time of one pass (well under a second at 10,000 Pods), at
//! 1,000, 10,000 and 100,000 synthetic Pods.
//!
//! The Pods are as the API server sends them (managed fields, annotations, env, probes,
//! container statuses) and as clusters run them: most belong to Deployments of a few replicas,
//! some to DaemonSets (one per node), StatefulSets and Jobs, a few are bare; a service-mesh
//! sidecar and a log shipper recur across workloads. The "distinct" variant makes every Pod a
//! bare Pod with images of its own, the worst case for sharing.
//!
//! Memory is counted by a counting allocator around the system one: the bytes the index holds
//! once built, after every transient object is dropped. It is printed before the timings:
//!
//!     cargo bench --bench audit

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use imagegate::audit::{PodEntry, PodIndex, PodObject, audit};
use imagegate::namespaces::{Labels, with_name_label};
use imagegate::policy::{ImagePolicy, Settings, Snapshot, compile};
use kube::runtime::watcher;
use serde_json::{Value, json};

/// Counts the bytes currently allocated.
struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TEAMS: usize = 50;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

fn hex(seed: usize) -> String {
    format!(
        "{:064x}",
        (seed as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    )
}

/// One Pod as the API server lists it.
struct Spec {
    namespace: String,
    name: String,
    owner: Option<(&'static str, &'static str, String)>,
    images: Vec<(String, String)>,
    break_glass: bool,
}

fn pod_json(p: &Spec) -> Value {
    let containers: Vec<Value> = p
        .images
        .iter()
        .enumerate()
        .map(|(i, (image, _))| {
            json!({
                "name": format!("c{i}"), "image": image, "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_IP",
                         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            })
        })
        .collect();
    let statuses: Vec<Value> = p
        .images
        .iter()
        .enumerate()
        .map(|(i, (image, digest))| {
            let repo = image.split([':', '@']).next().unwrap_or_default();
            json!({"name": format!("c{i}"), "image": image, "imageID": format!("{repo}@{digest}"),
                   "ready": true, "restartCount": 0, "started": true,
                   "containerID": format!("containerd://{}", hex(i + 7)),
                   "state": {"running": {"startedAt": "2026-11-20T10:00:00Z"}}})
        })
        .collect();
    let mut annotations = json!({"kubectl.kubernetes.io/restartedAt": "2026-11-20T10:00:00Z",
                                 "prometheus.io/scrape": "true"});
    if p.break_glass {
        annotations["imagegate.image-policy.k8s.io/break-glass"] = json!("INC-1234");
        annotations["imagegate.image-policy.k8s.io/break-glass-until"] =
            json!("2026-11-20T12:00:00Z");
    }
    let mut meta = json!({
        "name": p.name, "namespace": p.namespace, "uid": hex(p.name.len()),
        "resourceVersion": "123456", "creationTimestamp": "2026-11-20T10:00:00Z",
        "labels": {"app": p.name, "pod-template-hash": "7d9f8c6b5"},
        "annotations": annotations,
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                           "apiVersion": "v1", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:containers": {}}}}],
    });
    if let Some((api_version, kind, name)) = &p.owner {
        meta["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": name,
            "uid": hex(name.len()), "controller": true, "blockOwnerDeletion": true}]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"containers": containers, "serviceAccountName": "default", "nodeName": "node-1",
                 "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "containerStatuses": statuses,
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// `n` Pods of a typical cluster, or (with `distinct`) `n` bare Pods with images of their own.
fn pods(n: usize, distinct: bool) -> Vec<Spec> {
    let namespaces = (n / 100).max(10);
    let sidecar = (
        "docker.io/istio/proxyv2:1.24.0".to_owned(),
        format!("sha256:{}", hex(1)),
    );
    let mut out = Vec::with_capacity(n);
    let mut workload = 0;
    while out.len() < n {
        workload += 1;
        let team = workload % TEAMS;
        let namespace = format!("team-{team}-ns-{}", workload % namespaces);
        let app = (
            format!(
                "registry.corp.example/team-{team}/app-{workload}:1.{}",
                workload % 7
            ),
            format!("sha256:{}", hex(workload)),
        );
        let (owner, replicas, images) = if distinct {
            (None, 1, vec![app])
        } else {
            match workload % 20 {
                // DaemonSets: one Pod per node, shared images.
                0 => (
                    Some(("apps/v1", "DaemonSet", format!("agent-{}", workload % 5))),
                    20,
                    vec![(
                        "docker.io/fluent/fluent-bit:3.1".to_owned(),
                        format!("sha256:{}", hex(2)),
                    )],
                ),
                1 => (
                    Some(("apps/v1", "StatefulSet", format!("db-{workload}"))),
                    3,
                    vec![app],
                ),
                2 => (
                    Some(("batch/v1", "Job", format!("job-{workload}"))),
                    1,
                    vec![app],
                ),
                3 => (None, 1, vec![app]),
                _ => (
                    Some(("apps/v1", "ReplicaSet", format!("app-{workload}-7d9f8c6b5"))),
                    2 + workload % 5,
                    vec![app, sidecar.clone()],
                ),
            }
        };
        for r in 0..replicas {
            if out.len() == n {
                break;
            }
            out.push(Spec {
                namespace: namespace.clone(),
                name: format!("app-{workload}-7d9f8c6b5-{r:05}"),
                owner: owner.clone(),
                images: images.clone(),
                break_glass: workload % 97 == 0,
            });
        }
    }
    out
}

fn policies() -> Snapshot {
    let mut policies: Vec<ImagePolicy> = (0..TEAMS)
        .map(|t| {
            serde_saphyr::from_str(&format!(
                "metadata: {{name: team-{t}}}\nspec:\n  namespaceSelector: {{matchLabels: {{team: t{t}}}}}\n  allowedImages: ['registry.corp.example/team-{t}/**', 'docker.io/istio/**']\n  deniedTags: [latest]\n  breakGlass: {{ticketPattern: '^INC-[0-9]+$'}}"
            ))
            .expect("policy")
        })
        .collect();
    policies.push(
        serde_saphyr::from_str(
            "metadata: {name: baseline}\nspec:\n  mode: Warn\n  deniedImages: ['docker.io/library/**']\n  requirePullPolicyAlways: true",
        )
        .expect("policy"),
    );
    let compiled = policies
        .iter()
        .map(|p| compile(p).expect("compiles"))
        .collect();
    Snapshot::new(compiled, Settings::default())
}

fn labels(namespace: &str) -> Option<Labels> {
    let team = namespace
        .strip_prefix("team-")
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_default();
    Some(with_name_label(
        namespace,
        BTreeMap::from([("team".to_owned(), format!("t{team}"))]),
    ))
}

/// The index of `specs`, built from list events as the watch delivers them, and the bytes it
/// holds.
fn index(specs: &[Spec]) -> (PodIndex, isize) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    let mut index = PodIndex::new();
    index.apply(watcher::Event::Init);
    for chunk in specs.chunks(500) {
        // A page of the list, as text, read and applied Pod by Pod.
        let page: Vec<String> = chunk.iter().map(|s| pod_json(s).to_string()).collect();
        for text in page {
            let pod: PodObject = serde_json::from_str(&text).expect("pod");
            index.apply(watcher::Event::InitApply(pod));
        }
    }
    index.apply(watcher::Event::InitDone);
    let bytes = ALLOCATED.load(Ordering::Relaxed) - before;
    (index, bytes)
}

fn report_memory() {
    eprintln!("\nPod index memory (bytes per Pod, after the list):");
    for distinct in [false, true] {
        for n in SIZES {
            let specs = pods(n, distinct);
            let (index, bytes) = index(&specs);
            let (shapes, strings) = index.shared();
            eprintln!(
                "  {:>8} {:>7} Pods: {:>5} bytes/Pod ({} shapes, {} strings)",
                if distinct { "distinct" } else { "typical" },
                n,
                bytes / n as isize,
                shapes,
                strings
            );
            drop(index);
        }
    }
    eprintln!();
}

fn bench_audit(c: &mut Criterion) {
    report_memory();
    let snapshot = policies();
    let now = jiff::Timestamp::now();
    let mut group = c.benchmark_group("audit_pass");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for (variant, distinct) in [("typical", false), ("distinct", true)] {
        for n in SIZES {
            if distinct && n > 10_000 {
                continue;
            }
            let entries: Vec<PodEntry> = index(&pods(n, distinct)).0.entries();
            group.bench_with_input(BenchmarkId::new(variant, n), &entries, |b, entries| {
                b.iter(|| black_box(audit(&snapshot, entries, &labels, now, false)))
            });
        }
    }
    group.finish();

    // Building the index from the list, Pod by Pod (what a start or a re-list costs).
    let mut group = c.benchmark_group("audit_index");
    group.sample_size(10);
    let texts: Vec<String> = pods(10_000, false)
        .iter()
        .map(|s| pod_json(s).to_string())
        .collect();
    group.bench_function("typical/10000", |b| {
        b.iter(|| {
            let mut index = PodIndex::new();
            index.apply(watcher::Event::Init);
            for text in &texts {
                let pod: PodObject = serde_json::from_str(text).expect("pod");
                index.apply(watcher::Event::InitApply(pod));
            }
            index.apply(watcher::Event::InitDone);
            black_box(index.len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench_audit);
criterion_main!(benches);
