//! `verifySignatures` end to end against a real registry (Debian's `docker-registry` on
//! 127.0.0.1 over TLS, see `support/registry.rs`), with images signed by the `sigstore` crate's
//! cosign signing: `/validate` and `/imagereview` of a running `serve`, and `imagegate check`
//! online, `--offline`, and `--evidence` replaying the decision records a real `serve` logged.

mod cli;
mod common;
#[path = "support/registry.rs"]
mod registry_support;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{TestServer, pod_review, policy, warnings};
use registry_support::{TestKey, TestRegistry};
use serde_json::{Value, json};

/// The signed world of one test: a registry over TLS with three images, and the files the
/// commands are given.
struct World {
    registry: TestRegistry,
    release: TestKey,
    dir: tempfile::TempDir,
    /// `HOST/team/app:1.0`, signed by `release`.
    signed: String,
    signed_digest: String,
    /// `HOST/team/unsigned:1.0`, not signed.
    unsigned: String,
    unsigned_digest: String,
    /// `HOST/team/other:1.0`, signed by another key.
    other: String,
}

impl World {
    async fn new() -> Option<World> {
        let registry = TestRegistry::tls().await?;
        let release = TestKey::new();
        let stranger = TestKey::new();
        let signed_digest = registry.push_signed("team/app", "1.0", &[&release]).await;
        let unsigned_digest = registry.push_image("team/unsigned", "1.0").await;
        registry
            .push_signed("team/other", "1.0", &[&stranger])
            .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &registry.ca.pair.cert_pem).unwrap();
        std::fs::write(dir.path().join("docker.json"), r#"{"auths": {}}"#).unwrap();
        let host = registry.host.clone();
        Some(World {
            signed: format!("{host}/team/app:1.0"),
            unsigned: format!("{host}/team/unsigned:1.0"),
            other: format!("{host}/team/other:1.0"),
            registry,
            release,
            dir,
            signed_digest,
            unsigned_digest,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A policy `sig` in `mode` whose entry `release` has the release key.
    fn policy(&self, mode: &str) -> String {
        let key: String = self
            .release
            .public_pem
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect();
        policy(
            "sig",
            &format!(
                "mode: {mode}\nimages: ['{}/team/**']\nverifySignatures:\n- name: release\n  key:\n    publicKey: |\n{key}",
                self.registry.host
            ),
        )
    }

    /// The flags that let imagegate reach the test registry, and no other logins.
    fn registry_flags(&self) -> Vec<String> {
        vec![
            "--registry-ca-file".into(),
            self.path("ca.crt").display().to_string(),
            "--docker-config".into(),
            self.path("docker.json").display().to_string(),
        ]
    }
}

fn pod(image: &str) -> Value {
    pod_review(
        "team",
        "alice",
        &["dev"],
        json!({}),
        json!([{"name": "app", "image": image}]),
    )
}

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_webhook_admits_signed_images_and_denies_the_rest() {
    let Some(world) = World::new().await else {
        return;
    };
    let flags = world.registry_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = TestServer::start(&world.policy("Enforce"), &flags).await;

    // Signed by the release key: admitted, through the API server's deadline.
    let (status, out) = server
        .post(
            "/validate?timeout=10s",
            serde_json::to_vec(&pod(&world.signed)).unwrap(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["response"]["allowed"], true, "{out}");

    // Unsigned: denied, naming the entry, with the digest to sign.
    let r = server.review(&pod(&world.unsigned)).await;
    assert_eq!(r["allowed"], false);
    let m = message(&r);
    assert!(
        m.contains(&format!(
            "[sig/verifySignatures] container \"app\": image \"{}\"",
            world.unsigned
        )),
        "{m}"
    );
    assert!(
        m.contains("has no verified signature: release: no signature"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "sign {}/team/unsigned@{} (the digest the tag 1.0 names now) with this entry's key",
            world.registry.host, world.unsigned_digest
        )),
        "{m}"
    );

    // Signed, by another key: denied.
    let r = server.review(&pod(&world.other)).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("release: "), "{}", message(&r));

    // Pinned to the signed digest: admitted; pinned to the unsigned one: denied.
    let pinned = format!("{}/team/app@{}", world.registry.host, world.signed_digest);
    assert_eq!(server.review(&pod(&pinned)).await["allowed"], true);

    // The legacy plugin's ImageReview is verified the same way.
    let review = json!({"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview",
        "spec": {"containers": [{"image": world.signed}, {"image": world.unsigned}], "namespace": "team"}});
    let (status, out) = server
        .post("/imagereview", serde_json::to_vec(&review).unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["status"]["allowed"], false, "{out}");
    let reason = out["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("container \"#1\""), "{reason}");
    assert!(!reason.contains("container \"#0\""), "{reason}");

    // The registry metrics saw it.
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("imagegate_violations_total{rule=\"verifySignatures\",mode=\"Enforce\"}"),
        "{metrics}"
    );
    server.stop().await;

    // Warn mode: admitted, with the violation as a warning.
    let server = TestServer::start(&world.policy("Warn"), &flags).await;
    let r = server.review(&pod(&world.unsigned)).await;
    assert_eq!(r["allowed"], true);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("imagegate: [sig/verifySignatures]"),
        "{w:?}"
    );
    server.stop().await;
}

/// `imagegate check ARGS…` in `dir`.
fn check(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = cli::imagegate(dir, &all, "");
    (
        out.status.code(),
        format!("{}{}", cli::stdout(&out), cli::stderr(&out)),
    )
}

/// A Pod manifest with one container running `image`.
fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: team}}\nspec:\n  containers:\n  - {{name: app, image: '{image}'}}\n"
    )
}

/// A real `imagegate serve` process, whose standard error (the decision records) is kept.
struct Serve {
    child: Child,
    /// Kept open: serve prints more lines, and a closed pipe would stop it.
    _stdout: BufReader<std::process::ChildStdout>,
    url: String,
    ca: String,
}

impl Serve {
    fn start(world: &World) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .arg("serve")
            .args(["--policies", world.path("policy.yaml").to_str().unwrap()])
            .args(["--addr", "127.0.0.1:0", "--metrics-addr", "off"])
            .args(["--cert-dir", world.path("certs").to_str().unwrap()])
            .args(world.registry_flags())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(world.path("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("imagegate serve: ")
            .unwrap_or_else(|| panic!("serve printed {line:?}"))
            .to_owned();
        let ca = std::fs::read_to_string(world.path("certs/ca.crt")).unwrap();
        Serve {
            child,
            _stdout: stdout,
            url,
            ca,
        }
    }

    /// Waits until serve answers `/readyz`: it prints its address once the socket is bound,
    /// a moment before its workers take connections.
    async fn wait_ready(&self, client: &reqwest::Client) {
        let readyz = self.url.replace("/validate", "/readyz");
        let until = std::time::Instant::now() + common::WAIT;
        loop {
            let r = client.get(&readyz).send().await;
            match r {
                Ok(r) if r.status() == 200 => return,
                r if std::time::Instant::now() > until => panic!("serve is not ready: {r:?}"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops serve (SIGTERM: it drains and flushes its log) and returns its decision records.
    fn stop(mut self, world: &World) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(world.path("serve.log"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"target\":\"imagegate::decision\""))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

#[tokio::test]
async fn check_verifies_online_offline_and_from_a_decision_record() {
    let Some(mut world) = World::new().await else {
        return;
    };
    std::fs::write(world.path("policy.yaml"), world.policy("Enforce")).unwrap();
    std::fs::write(world.path("signed.yaml"), manifest("signed", &world.signed)).unwrap();
    std::fs::write(
        world.path("unsigned.yaml"),
        manifest("unsigned", &world.unsigned),
    )
    .unwrap();
    let dir = world.dir.path().to_owned();
    let flags = world.registry_flags();
    let online = |manifest: &str| {
        let mut args = vec!["--policies", "policy.yaml"];
        args.extend(flags.iter().map(String::as_str));
        args.push(manifest);
        check(&dir, &args)
    };

    // Online, the default.
    let (code, out) = online("signed.yaml");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = online("unsigned.yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("[sig/verifySignatures]"), "{out}");
    assert!(out.contains("release: no signature"), "{out}");

    // Offline: a warning, no violation, no registry.
    let (code, out) = check(
        &dir,
        &["--policies", "policy.yaml", "--offline", "unsigned.yaml"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("Warning: imagegate: [sig/verifySignatures] container \"app\"")
            && out.contains("signature not verified (offline)"),
        "{out}"
    );

    // The records of a real serve, replayed without the registry.
    let serve = Serve::start(&world);
    let client = common::client_trusting(&serve.ca);
    serve.wait_ready(&client).await;
    for image in [&world.signed, &world.unsigned] {
        let answer: Value = client
            .post(&serve.url)
            .json(&pod(image))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["response"]["allowed"],
            Value::Bool(image == &world.signed),
            "{answer}"
        );
    }
    let records = serve.stop(&world);
    assert_eq!(records.lines().count(), 2, "{records}");
    let first: Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    let evidence = &first["evidence"]["images"][&world.signed];
    assert_eq!(evidence["digest"], world.signed_digest.as_str(), "{first}");
    assert_eq!(
        evidence["entries"]["sig/release"]["outcome"]["result"],
        "verified"
    );
    std::fs::write(world.path("records.log"), &records).unwrap();
    world.registry.stop();

    let replay = |manifest: &str| {
        check(
            &dir,
            &[
                "--policies",
                "policy.yaml",
                "--evidence",
                "records.log",
                manifest,
            ],
        )
    };
    let (code, out) = replay("signed.yaml");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = replay("unsigned.yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("release: no signature"), "{out}");
    // An image the records hold nothing for fails closed, saying so.
    std::fs::write(world.path("other.yaml"), manifest("other", &world.other)).unwrap();
    let (code, out) = replay("other.yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("records.log holds no"), "{out}");
    // Online again, with the registry gone: unavailable, and denied.
    let (code, out) = online("signed.yaml");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("imagegate fails closed"), "{out}");
    // A file that is not a record is bad input.
    std::fs::write(world.path("bad.log"), "not json\n").unwrap();
    let (code, out) = check(
        &dir,
        &[
            "--policies",
            "policy.yaml",
            "--evidence",
            "bad.log",
            "signed.yaml",
        ],
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("bad.log: line 1: not a JSON decision record"),
        "{out}"
    );
}
