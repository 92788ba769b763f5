//! `imagegate check` on a large repository: reading manifests with the positions of their
//! nodes against reading the bare values (what the reader did before positions), for YAML and
//! JSON; and a whole run over a generated tree of files.

use std::hint::black_box;
use std::path::Path;

use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imagegate::cli::check::{CheckArgs, run};
use imagegate::manifests;

/// How many objects the benchmark's stream and tree hold: a large GitOps repository.
const OBJECTS: usize = 1_000;

/// A Deployment as Helm charts render them (100 lines), with two images.
fn deployment(i: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web-{i}
  namespace: shop
  labels:
    app.kubernetes.io/name: web
    app.kubernetes.io/instance: shop-{i}
    app.kubernetes.io/version: "3.2.1"
    app.kubernetes.io/managed-by: Helm
  annotations:
    deployment.kubernetes.io/revision: "4"
spec:
  replicas: 3
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      app.kubernetes.io/name: web
      app.kubernetes.io/instance: shop-{i}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 25%, maxUnavailable: 0}}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: web
        app.kubernetes.io/instance: shop-{i}
      annotations:
        checksum/config: 4f8c0f1c7a3e1b2d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d
        prometheus.io/scrape: "true"
        prometheus.io/port: "9090"
    spec:
      serviceAccountName: web
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        fsGroup: 10001
        seccompProfile: {{type: RuntimeDefault}}
      initContainers:
        - name: migrate
          image: registry.corp.example/shop/web:3.2.1
          command: ["/app/web", "migrate", "--wait"]
          envFrom:
            - secretRef: {{name: web-db}}
      containers:
        - name: web
          image: registry.corp.example/shop/web:3.2.1
          imagePullPolicy: IfNotPresent
          args: ["--listen=:8080", "--metrics=:9090", "--log-format=json"]
          ports:
            - {{name: http, containerPort: 8080, protocol: TCP}}
            - {{name: metrics, containerPort: 9090, protocol: TCP}}
          env:
            - name: GOMAXPROCS
              valueFrom: {{resourceFieldRef: {{resource: limits.cpu}}}}
            - name: DB_HOST
              value: postgres.shop.svc.cluster.local
          livenessProbe:
            httpGet: {{path: /healthz, port: http}}
            initialDelaySeconds: 10
          readinessProbe:
            httpGet: {{path: /readyz, port: http}}
          resources:
            requests: {{cpu: 250m, memory: 256Mi}}
            limits: {{cpu: "1", memory: 512Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
          volumeMounts:
            - {{name: tmp, mountPath: /tmp}}
        - name: proxy
          image: docker.io/envoyproxy/envoy:v1.31.2
          args: ["-c", "/etc/envoy/envoy.yaml"]
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
      volumes:
        - name: tmp
          emptyDir: {{}}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
"#
    )
}

const POLICY: &str = "apiVersion: imagegate.dev/v1alpha1
kind: ImagePolicy
metadata: {name: production}
spec:
  allowedImages: ['registry.corp.example/**']
  deniedTags: [latest]
";

fn bench_read(c: &mut Criterion) {
    let yaml: String = (0..OBJECTS)
        .map(|i| deployment(i) + "---\n")
        .collect::<String>();
    let values: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("yaml");
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": values
    }))
    .expect("json");

    let mut group = c.benchmark_group("check_read");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(yaml.len() as u64));
    group.bench_function("yaml_values_only", |b| {
        b.iter(|| {
            let v: Vec<serde_json::Value> =
                serde_saphyr::from_multiple(black_box(&yaml)).expect("yaml");
            v.len()
        })
    });
    group.bench_function("yaml_with_positions", |b| {
        b.iter(|| manifests::parse("-", "-", black_box(&yaml)).documents.len())
    });
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("json_values_only", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_str(black_box(&json)).expect("json");
            v.is_object()
        })
    });
    group.bench_function("json_with_positions", |b| {
        b.iter(|| manifests::parse("-", "-", black_box(&json)).documents.len())
    });
    group.finish();
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    check: CheckArgs,
}

/// A tree of one Deployment and one values file per folder, the way an application repository
/// lays them out.
fn write_tree(root: &Path) {
    std::fs::write(root.join("policy.yaml"), POLICY).expect("policy");
    for i in 0..OBJECTS {
        let dir = root.join(format!("apps/app-{i:04}"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("deployment.yaml"), deployment(i)).expect("file");
        std::fs::write(
            dir.join("values.yaml"),
            "replicas: 3\nimage: {tag: 3.2.1}\n",
        )
        .expect("file");
    }
}

fn bench_run(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tree(dir.path());
    let root = dir.path().display().to_string();
    let args = Args::parse_from([
        "check",
        "--policies",
        &format!("{root}/policy.yaml"),
        &format!("{root}/apps"),
    ])
    .check;
    let mut group = c.benchmark_group("check_run");
    group.sample_size(10);
    group.bench_function("tree_1000_deployments", |b| {
        b.iter(|| {
            let report = run(&args).expect("runs");
            assert_eq!(report.results.len(), OBJECTS);
            report.summary().denied
        })
    });
    group.finish();
}

criterion_group!(benches, bench_read, bench_run);
criterion_main!(benches);
