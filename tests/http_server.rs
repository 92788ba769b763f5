//! The server itself over real TLS: bad input, hot reload of policy files, certificate swap
//! under an open keep-alive connection, health, readiness and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::{TestServer, WAIT, client_trusting, fixture, install_crypto, pod_review, policy};
use futures::future::BoxFuture;
use imagegate::certs::{generate_ca, issue_serving};
use imagegate::events::NoEvents;
use imagegate::http::{AppState, Listeners, MAX_BODY_BYTES, ServerConfig};
use imagegate::metrics::Metrics;
use imagegate::namespaces::{Labels, NamespaceLabels};
use imagegate::policy::{Settings, Snapshot};
use imagegate::state::Readiness;
use imagegate::tls::CertResolver;
use serde_json::json;

const DENY_LATEST: &str = "deniedTags: [latest]";

fn latest_pod() -> serde_json::Value {
    pod_review(
        "ns",
        "u",
        &[],
        json!({}),
        json!([{"name": "c", "image": "reg.example/a:latest"}]),
    )
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let server = TestServer::start(&policy("p", DENY_LATEST), &[]).await;
    let envelope = |request: serde_json::Value| {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not json", b"hello".to_vec(), 400, "not a valid"),
        ("empty", Vec::new(), 400, "not a valid"),
        (
            "wrong kind",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#.to_vec(),
            400,
            "expected apiVersion",
        ),
        (
            "old version",
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#
                .to_vec(),
            400,
            "expected apiVersion",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
            "no request",
        ),
        (
            "no uid",
            envelope(json!({"kind": {"kind": "Pod"}, "operation": "CREATE"})),
            400,
            "no request.uid",
        ),
        (
            "over the limit",
            vec![b' '; MAX_BODY_BYTES + 1],
            413,
            "larger than the limit",
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).into_bytes(),
            400,
            "not a valid",
        ),
    ];
    for (what, body, status, message) in cases {
        let (got, out) = server.post("/validate", body).await;
        assert_eq!(got, status, "{what}: {out}");
        assert!(
            out.as_str().unwrap_or_default().contains(message),
            "{what}: {out}"
        );
    }

    // A readable review whose object is not: denied with the reason (fail closed).
    let mut null_object = fixture("pod-create.json");
    null_object["request"]["object"] = serde_json::Value::Null;
    let r = server.review(&null_object).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no Pod object"),
        "{r}"
    );

    let mut wrong_shape = fixture("pod-create.json");
    wrong_shape["request"]["object"]["spec"]["containers"] = json!("nginx");
    let r = server.review(&wrong_shape).await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read the Pod"),
        "{r}"
    );

    let mut deep_object = fixture("pod-create.json");
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!([nested]);
    }
    deep_object["request"]["object"]["spec"]["containers"] =
        json!([{"name": "c", "image": nested}]);
    let r = server.review(&deep_object).await;
    assert_eq!(r["allowed"], false, "{r}");

    // Thousands of containers: one denial, with bounded causes, warnings and message.
    let containers: Vec<_> = (0..5000)
        .map(|i| json!({"name": format!("c{i}"), "image": "reg.example/a:latest"}))
        .collect();
    let r = server
        .review(&pod_review("ns", "u", &[], json!({}), json!(containers)))
        .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["details"]["causes"].as_array().unwrap().len(),
        imagegate::admission::MAX_CAUSES
    );
    assert!(
        r["status"]["message"].as_str().unwrap().chars().count()
            <= imagegate::admission::MAX_MESSAGE_CHARS
    );
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("5000 violations")
    );

    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_owned()));
    let r = server.review(&latest_pod()).await;
    assert_eq!(r["allowed"], false);
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics
            .contains("imagegate_admissions_total{endpoint=\"validate\",result=\"bad_request\"} 8"),
        "{metrics}"
    );
    server.stop().await;
}

async fn wait_for_allowed(server: &TestServer, allowed: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = server.review(&latest_pod()).await;
        if r["allowed"] == allowed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the decision did not become allowed={allowed}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn policy_files_are_reloaded_and_a_broken_edit_keeps_the_last_good_set() {
    let server = TestServer::start(&policy("p", DENY_LATEST), &[]).await;
    wait_for_allowed(&server, false).await;

    std::fs::write(&server.policy_file, policy("p", "deniedTags: [\"old-*\"]")).unwrap();
    wait_for_allowed(&server, true).await;

    // Invalid YAML, then a policy that does not compile: the last good set stays.
    for broken in [
        "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: [unclosed\n".to_owned(),
        policy("p", "deniedTags: [latest]\nallowedImages: [\"no-host\"]"),
    ] {
        std::fs::write(&server.policy_file, broken).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = server.review(&latest_pod()).await;
        assert_eq!(r["allowed"], true, "{r}");
        let (_, metrics) = server.get("/metrics").await;
        assert!(metrics.contains("imagegate_policy_errors 1"), "{metrics}");
    }

    // The watch survives broken edits.
    std::fs::write(&server.policy_file, policy("p", DENY_LATEST)).unwrap();
    wait_for_allowed(&server, false).await;
    server.stop().await;
}

#[tokio::test]
async fn certificate_swap_keeps_open_connections_and_serves_new_ones_the_new_certificate() {
    let server = TestServer::start(&policy("p", DENY_LATEST), &[]).await;
    let old_ca = std::fs::read_to_string(server.cert_dir().join("ca.crt")).unwrap();
    // One connection, kept alive by the client's pool.
    let old_client = client_trusting(&old_ca);
    let url = server.url("/healthz");
    assert_eq!(old_client.get(&url).send().await.unwrap().status(), 200);

    let new_ca = generate_ca("another CA", Duration::from_secs(3600)).unwrap();
    let serving = issue_serving(
        &new_ca,
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
    )
    .unwrap();
    server
        .state
        .tls
        .set_pem(&serving.cert_pem, &serving.key_pem)
        .unwrap();

    // The open connection keeps working: a new one would fail, as this client trusts only the
    // old CA.
    for _ in 0..3 {
        assert_eq!(old_client.get(&url).send().await.unwrap().status(), 200);
    }
    // New connections get the new certificate.
    let new_client = client_trusting(&new_ca.cert_pem);
    assert_eq!(new_client.get(&url).send().await.unwrap().status(), 200);
    let err = client_trusting(&old_ca).get(&url).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    let metrics = new_client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expected = imagegate::certs::not_after(&serving.cert_pem)
        .unwrap()
        .as_second();
    assert!(
        metrics.contains(&format!(
            "imagegate_certificate_not_after_timestamp_seconds {expected}"
        )),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_port_can_be_turned_off() {
    let server = TestServer::start(&policy("p", DENY_LATEST), &["--metrics-addr", "off"]).await;
    assert!(server.metrics_addr.is_none());
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("imagegate_policies 1"), "{metrics}");
    assert_eq!(server.get("/readyz").await, (200, "ok\n".to_owned()));
    server.stop().await;
}

/// Namespace labels that take a while to arrive, to keep a request in flight.
struct SlowNamespaces(Duration);

impl NamespaceLabels for SlowNamespaces {
    fn cached(&self, _namespace: &str) -> Option<Labels> {
        None
    }
    fn lookup(&self, namespace: &str) -> BoxFuture<'static, Result<Labels, String>> {
        let delay = self.0;
        let labels = imagegate::namespaces::with_name_label(namespace, Labels::new());
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(labels)
        })
    }
}

#[tokio::test]
async fn shutdown_turns_not_ready_finishes_in_flight_requests_and_exits() {
    install_crypto();
    let ca = generate_ca("ca", Duration::from_secs(3600)).unwrap();
    let serving = issue_serving(&ca, &["127.0.0.1".to_owned()], Duration::from_secs(3600)).unwrap();
    let tls = CertResolver::new();
    tls.set_pem(&serving.cert_pem, &serving.key_pem).unwrap();
    let readiness = Arc::new(Readiness::default());
    let state = AppState {
        snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty(Settings::default()))),
        namespaces: Arc::new(SlowNamespaces(Duration::from_millis(1500))),
        events: Arc::new(NoEvents),
        tls,
        readiness: Arc::clone(&readiness),
        metrics: Arc::new(Metrics::new()),
        evidence: Arc::new(imagegate::gather::NoRegistry),
        verify_timeout: Duration::from_secs(8),
    };
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), None);
    config.workers = Some(1);
    config.drain_delay = Duration::from_millis(1000);
    config.shutdown_timeout = Duration::from_secs(5);
    let listeners = Listeners::bind(&config).unwrap();
    let addr = listeners.local_addr().unwrap();
    let client = client_trusting(&ca.cert_pem);
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", addr.port());

    // Not ready until the policies are loaded.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        listeners
            .serve(&config, state, async move {
                let _ = stopped.await;
            })
            .await
    });
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        503
    );
    assert_eq!(
        client.get(url("/healthz")).send().await.unwrap().status(),
        200
    );
    readiness.set_policies_loaded();
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        200
    );

    let in_flight = {
        let client = client.clone();
        let url = url("/validate");
        tokio::spawn(async move {
            client
                .post(url)
                .body(serde_json::to_vec(&latest_pod()).unwrap())
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let ready = client.get(url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close"),
        "draining answers close their connection"
    );
    assert_eq!(ready.text().await.unwrap(), "shutting down\n");

    let res = in_flight.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["response"]["allowed"], true, "{body}");

    tokio::time::timeout(WAIT, task)
        .await
        .expect("the server exits after draining")
        .unwrap()
        .unwrap();
    let fresh = client_trusting(&ca.cert_pem);
    assert!(
        fresh.get(url("/healthz")).send().await.is_err(),
        "nothing listens any more"
    );
}

/// A body of several hundred kilobytes reaches the server in many chunks, which are read
/// together: the Pod is decided as when it comes in one piece, whichever chunk its image is in.
#[tokio::test]
async fn a_body_in_many_chunks_is_read_whole() {
    let server = TestServer::start(&policy("p", DENY_LATEST), &[]).await;
    let filler = "x".repeat(300_000);
    for (what, annotations) in [
        ("small", json!({})),
        ("before the image", json!({"filler": filler})),
    ] {
        let mut review = latest_pod();
        review["request"]["object"]["metadata"]["annotations"] = annotations;
        let mut body = serde_json::to_vec(&review).unwrap();
        // Whitespace after the document is still one JSON document.
        body.extend(std::iter::repeat_n(b' ', 300_000));
        let (status, out) = server.post("/validate", body).await;
        assert_eq!(status, 200, "{what}: {out}");
        assert_eq!(out["response"]["allowed"], false, "{what}: {out}");
        assert_eq!(out["response"]["status"]["code"], 403, "{what}");
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("reg.example/a:latest"),
            "{what}: {message}"
        );
    }
}

/// `imagegate serve | head -1`, or a supervisor that dropped the pipe: with standard output
/// closed before serve prints where it listens, the webhook still starts and serves.
#[tokio::test]
async fn serve_keeps_serving_when_its_standard_output_is_closed() {
    install_crypto();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let (addr, metrics) = (free(), free());
    let certs = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("serve")
        .arg("--policies")
        .arg(root.join("examples/policies"))
        .args(["--addr", &addr, "--metrics-addr", &metrics])
        .arg("--cert-dir")
        .arg(certs.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("imagegate serve starts");
    // The read end closed before anything is written: every write to stdout fails (EPIPE).
    drop(child.stdout.take());

    let deadline = Instant::now() + WAIT;
    let ca = certs.path().join("ca.crt");
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("serve exited with {status} after its standard output was closed");
        }
        if let Ok(pem) = std::fs::read_to_string(&ca) {
            let client = client_trusting(&pem);
            if let Ok(r) = client.get(format!("https://{addr}/healthz")).send().await {
                answer = Some(r.status().as_u16());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alive = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().ok();
    assert_eq!(answer, Some(200), "serve answered /healthz");
    assert!(alive, "serve still runs after printing to a closed stdout");
}
