//! `run`'s registry logins: `kubernetes.io/dockerconfigjson` Secrets read by name (a mock API
//! server answers), used against a real registry with htpasswd authentication.

#[path = "support/registry.rs"]
mod registry_support;
mod support;

use std::time::Duration;

use http::Method;
use imagegate::evidence::{Deadline, Gather, Outcome};
use imagegate::registry::{Config, Credentials, Login, Registry, credentials};
use registry_support::{Auth, TestKey, TestRegistry, b64, request};
use serde_json::{Value, json};
use support::{join, mock, spawn};

const SECRETS: &str = "/api/v1/namespaces/imagegate-system/secrets";

fn secret(name: &str, kind: &str, config: &Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "imagegate-system", "resourceVersion": "1"},
        "type": kind,
        "data": {".dockerconfigjson": b64(config.to_string().as_bytes())},
    })
}

fn docker_config(host: &str, user: &str, password: &str) -> Value {
    json!({"auths": {host: {"auth": b64(format!("{user}:{password}").as_bytes())}}})
}

#[tokio::test]
async fn secrets_are_read_by_name_in_order_and_bad_ones_skipped() {
    let (client, mut api) = mock();
    let names = ["pull-a", "opaque", "missing", "pull-b"]
        .map(String::from)
        .to_vec();
    let task =
        spawn(async move { credentials::read_secrets(&client, "imagegate-system", &names).await });
    api.next()
        .await
        .expect(Method::GET, &format!("{SECRETS}/pull-a"))
        .ok(secret(
            "pull-a",
            "kubernetes.io/dockerconfigjson",
            &docker_config("registry.corp.example", "a", "1"),
        ));
    api.next()
        .await
        .expect(Method::GET, &format!("{SECRETS}/opaque"))
        .ok(secret(
            "opaque",
            "Opaque",
            &docker_config("opaque.example", "o", "2"),
        ));
    api.next()
        .await
        .expect(Method::GET, &format!("{SECRETS}/missing"))
        .error(404, "NotFound");
    api.next()
        .await
        .expect(Method::GET, &format!("{SECRETS}/pull-b"))
        .ok(secret(
            "pull-b",
            "kubernetes.io/dockerconfigjson",
            &json!({"auths": {
                "registry.corp.example": {"username": "b", "password": "3"},
                "https://index.docker.io/v1/": {"username": "hub", "password": "4"},
            }}),
        ));
    let read = join(task).await;
    api.no_more().await;
    assert_eq!(
        read,
        Credentials::anonymous()
            .with_login("registry.corp.example", Login::new("a", "1"))
            .with_login("docker.io", Login::new("hub", "4"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_from_a_secret_opens_the_registry() {
    let auth = Auth::Htpasswd {
        user: "ci".into(),
        password: "from-secret".into(),
    };
    let Some(reg) = TestRegistry::start(true, auth).await else {
        return;
    };
    let key = TestKey::new();
    let digest = reg.push_signed("team/app", "1.0", &[&key]).await;
    let registry = Registry::new(
        Config {
            client: reg.client_config(),
            ..Config::default()
        },
        None,
    )
    .unwrap();
    let (client, mut api) = mock();
    let refresher = tokio::spawn(registry.clone().refresh_credentials(
        client,
        "imagegate-system".to_owned(),
        vec!["registry-pull".to_owned()],
    ));
    api.next()
        .await
        .expect(Method::GET, &format!("{SECRETS}/registry-pull"))
        .ok(secret(
            "registry-pull",
            "kubernetes.io/dockerconfigjson",
            &docker_config(&reg.host, "ci", "from-secret"),
        ));
    let image = format!("{}/team/app@{digest}", reg.host);
    let v = key.verifier();
    let requests = [request(&image, &[("p/e", &v)])];
    // The login is in place once the answer is read; give the refresher a moment.
    let mut outcome = None;
    for _ in 0..50 {
        let evidence = registry
            .gather(&requests, Deadline::after(Duration::from_secs(10)))
            .await;
        let o = evidence.images[&image].entries["p/e"].outcome.clone();
        if matches!(o, Outcome::Verified { .. }) {
            outcome = Some(o);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(outcome.is_some(), "the Secret's login was not used");
    refresher.abort();
}
