//! A real `imagegate serve` on 127.0.0.1 (port 0) with a generated CA, and a client trusting
//! that CA. Each server stops when its test calls `stop` (or when the test process ends).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use imagegate::cli::serve::{ServeArgs, prepare};
use serde_json::Value;

/// How long a test waits for something that should happen (reload, shutdown) before failing.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub policy_file: PathBuf,
    pub client: reqwest::Client,
    pub state: imagegate::http::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A policy document.
pub fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: {name}\nspec:\n{}\n",
        spec.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(WAIT)
        .build()
        .unwrap()
}

impl TestServer {
    /// Starts a server with `policies` (YAML) in one file, plus extra `serve` flags.
    pub async fn start(policies: &str, extra: &[&str]) -> TestServer {
        Self::start_with(policies, extra, None).await
    }

    /// As [`start`](Self::start), with signature evidence from `evidence` instead of a
    /// registry.
    pub async fn start_with(
        policies: &str,
        extra: &[&str],
        evidence: Option<std::sync::Arc<dyn imagegate::evidence::Gather>>,
    ) -> TestServer {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policies.yaml");
        std::fs::write(&policy_file, policies).unwrap();
        let cert_dir = dir.path().join("certs");
        let mut argv: Vec<String> = vec![
            "serve".into(),
            "--policies".into(),
            policy_file.display().to_string(),
            "--addr".into(),
            "127.0.0.1:0".into(),
            "--cert-dir".into(),
            cert_dir.display().to_string(),
            "--shutdown-timeout".into(),
            "2".into(),
        ];
        if !extra.contains(&"--metrics-addr") {
            argv.extend(["--metrics-addr".into(), "127.0.0.1:0".into()]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Args::try_parse_from(argv).unwrap().serve;
        let mut prepared = prepare(&args).unwrap();
        if let Some(evidence) = evidence {
            prepared = prepared.with_evidence(evidence);
        }
        let addr = prepared.local_addr();
        let metrics_addr = prepared.metrics_addr();
        let state = prepared.state().clone();
        let ca = std::fs::read_to_string(cert_dir.join("ca.crt")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            metrics_addr,
            policy_file,
            client: client_trusting(&ca),
            dir,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// POSTs `body` to `path`; the status and the body (JSON when it parses, else a string).
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let res = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// POSTs an AdmissionReview to `/validate`; asserts HTTP 200 and returns `response`.
    pub async fn review(&self, body: &Value) -> Value {
        self.review_at("/validate", body).await
    }

    /// POSTs an AdmissionReview to `path`; asserts HTTP 200, the envelope and the echoed uid,
    /// and returns `response`.
    pub async fn review_at(&self, path: &str, body: &Value) -> Value {
        let (status, out) = self.post(path, serde_json::to_vec(body).unwrap()).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], body["request"]["uid"], "uid echoed");
        out["response"].clone()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let res = self.client.get(self.url(path)).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the server stops within the wait")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A fixture from `tests/data/` as JSON.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// An AdmissionReview for a Pod CREATE in namespace `ns` by `user` in `groups`.
pub fn pod_review(
    ns: &str,
    user: &str,
    groups: &[&str],
    annotations: Value,
    containers: Value,
) -> Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "test-uid",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p",
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": user, "groups": groups},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": ns, "annotations": annotations},
                "spec": {"containers": containers}
            },
            "oldObject": null,
            "dryRun": false
        }
    })
}

/// The causes' `field`s of a denial.
pub fn cause_fields(response: &Value) -> Vec<String> {
    response["status"]["details"]["causes"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}
