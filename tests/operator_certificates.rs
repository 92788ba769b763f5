//! The TLS Secret against a mock API server: first start, reuse without a write, a create race
//! between replicas, serving certificate rotation, CA rotation in two steps, repair.

mod support;

use std::time::Duration;

use http::Method;
use imagegate::certs;
use imagegate::operator::certificates::{
    self, CA_CERT, CA_PROPAGATION_DELAY, CA_ROTATED_AT, CertParams, Material, PREVIOUS_CA_CERT,
    TLS_CERT, ensure, new_secret, service_sans,
};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use support::{join, mock, spawn};

const SECRETS: &str = "/api/v1/namespaces/imagegate-system/secrets";
const SECRET: &str = "/api/v1/namespaces/imagegate-system/secrets/imagegate-tls";
const HOUR: u64 = 3600;

fn params() -> CertParams {
    CertParams {
        sans: service_sans("imagegate", "imagegate-system"),
        cert_validity: Duration::from_secs(90 * 24 * HOUR),
        ca_validity: Duration::from_secs(3650 * 24 * HOUR),
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn later(d: Duration) -> jiff::Timestamp {
    now() + jiff::SignedDuration::try_from(d).unwrap()
}

/// A valid Secret as stored by the API server.
fn stored(material: &Material, rv: &str) -> Value {
    let mut v =
        serde_json::to_value(new_secret("imagegate-tls", "imagegate-system", material)).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v["metadata"]["resourceVersion"] = json!(rv);
    v
}

fn material_of(body: &Value) -> Material {
    let secret: Secret = serde_json::from_value(body.clone()).unwrap();
    Material::from_secret(&secret).unwrap()
}

/// Runs `ensure` for the test Secret at `at` in a task, so the test can answer its requests.
fn spawn_ensure(
    client: kube::Client,
    at: jiff::Timestamp,
) -> tokio::task::JoinHandle<Result<Material, imagegate::operator::Error>> {
    spawn(async move { ensure(client, "imagegate-system", "imagegate-tls", &params(), at).await })
}

fn fresh() -> Material {
    match certificates::plan(None, &params(), now()).unwrap() {
        certificates::Plan::Write(m, _) => m,
        certificates::Plan::Keep(_) => unreachable!("no Secret means a write"),
    }
}

#[tokio::test]
async fn first_start_creates_the_secret() {
    let (client, mut api) = mock();
    let task = spawn_ensure(client, now());
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .error(404, "NotFound");
    let create = api.next().await.expect(Method::POST, SECRETS);
    assert!(create.query().contains("fieldManager=imagegate"));
    assert_eq!(create.body["type"], "kubernetes.io/tls");
    assert_eq!(create.body["metadata"]["name"], "imagegate-tls");
    let written = material_of(&create.body);
    assert!(certs::issued_by(&written.serving.cert_pem, &written.ca.cert_pem).unwrap());
    assert!(certs::covers(&written.serving.cert_pem, &params().sans).unwrap());
    assert!(written.previous_ca.is_none());
    create.echo("1");
    let material = join(task).await.unwrap();
    assert_eq!(material, written);
    assert_eq!(material.ca_bundle().trim(), written.ca.cert_pem.trim());
    api.no_more().await;
}

#[tokio::test]
async fn valid_secret_is_reused_without_a_write() {
    let existing = fresh();
    let body = stored(&existing, "7");
    let (client, mut api) = mock();
    let task = spawn_ensure(client, now());
    api.next().await.expect(Method::GET, SECRET).ok(body);
    assert_eq!(join(task).await.unwrap(), existing);
    api.no_more().await;
}

#[tokio::test]
async fn create_conflict_reads_and_serves_the_winner() {
    let winner = fresh();
    let winner_body = stored(&winner, "3");
    let (client, mut api) = mock();
    let task = spawn_ensure(client, now());
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .error(404, "NotFound");
    api.next()
        .await
        .expect(Method::POST, SECRETS)
        .error(409, "AlreadyExists");
    api.next().await.expect(Method::GET, SECRET).ok(winner_body);
    assert_eq!(join(task).await.unwrap(), winner);
    api.no_more().await;
}

#[tokio::test]
async fn update_conflict_rereads() {
    let existing = fresh();
    let (client, mut api) = mock();
    let due = later(Duration::from_secs(61 * 24 * HOUR));
    let task = spawn_ensure(client, due);
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored(&existing, "7"));
    let put = api.next().await.expect(Method::PUT, SECRET);
    assert_eq!(put.body["metadata"]["resourceVersion"], "7");
    put.error(409, "Conflict");
    // Another replica renewed it meanwhile (a certificate not due at `due`): it is read and
    // kept, not overwritten.
    let mut renewed = existing.clone();
    renewed.serving = certs::issue_serving(
        &existing.ca,
        &params().sans,
        Duration::from_secs(180 * 24 * HOUR),
    )
    .unwrap();
    let body = stored(&renewed, "8");
    api.next().await.expect(Method::GET, SECRET).ok(body);
    assert_eq!(join(task).await.unwrap(), renewed);
    api.no_more().await;
}

#[tokio::test]
async fn serving_certificate_is_rotated_at_two_thirds() {
    let existing = fresh();
    // 61 of 90 days: past 2/3 (60 days).
    let due = later(Duration::from_secs(61 * 24 * HOUR));
    let (client, mut api) = mock();
    let task = spawn_ensure(client, due);
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored(&existing, "7"));
    let put = api.next().await.expect(Method::PUT, SECRET);
    assert_eq!(
        put.body["metadata"]["resourceVersion"], "7",
        "optimistic concurrency"
    );
    let written = material_of(&put.body);
    assert_eq!(written.ca, existing.ca, "the CA is kept");
    assert_ne!(
        written.serving, existing.serving,
        "a new serving certificate"
    );
    assert!(certs::issued_by(&written.serving.cert_pem, &existing.ca.cert_pem).unwrap());
    put.echo("8");
    assert_eq!(join(task).await.unwrap(), written);
    api.no_more().await;

    // 59 days: not yet due.
    let (client, mut api) = mock();
    let early = later(Duration::from_secs(59 * 24 * HOUR));
    let task = spawn_ensure(client, early);
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored(&existing, "7"));
    assert_eq!(join(task).await.unwrap(), existing);
    api.no_more().await;
}

#[tokio::test]
async fn ca_rotation_keeps_both_cas_in_the_bundle() {
    // A short-lived CA (30 h) and a serving certificate not due before it (90 h).
    let short = CertParams {
        sans: params().sans,
        cert_validity: Duration::from_secs(90 * HOUR),
        ca_validity: Duration::from_secs(30 * HOUR),
    };
    let existing = match certificates::plan(None, &short, now()).unwrap() {
        certificates::Plan::Write(m, _) => m,
        certificates::Plan::Keep(_) => unreachable!(),
    };
    // New CAs from here on are long-lived, so that only the existing one is due.
    let short = CertParams {
        ca_validity: params().ca_validity,
        ..short
    };
    // Step 1, at 21 h (past 2/3 of the CA's 30 h, long before 2/3 of the serving
    // certificate's 90 h): a new CA, the old one kept, the serving certificate kept.
    let p = short.clone();
    let (client, mut api) = mock();
    let task = spawn(async move {
        ensure(
            client,
            "imagegate-system",
            "imagegate-tls",
            &p,
            later(Duration::from_secs(21 * HOUR)),
        )
        .await
    });
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored(&existing, "7"));
    let put = api.next().await.expect(Method::PUT, SECRET);
    let step1 = material_of(&put.body);
    assert_ne!(step1.ca, existing.ca, "a new CA");
    assert_eq!(
        step1.previous_ca.as_deref(),
        Some(existing.ca.cert_pem.as_str())
    );
    assert_eq!(
        step1.serving, existing.serving,
        "still serving the old CA's certificate"
    );
    assert!(put.body["data"][PREVIOUS_CA_CERT].is_string());
    assert!(put.body["metadata"]["annotations"][CA_ROTATED_AT].is_string());
    let bundle = step1.ca_bundle();
    assert!(bundle.contains(existing.ca.cert_pem.trim()));
    assert!(bundle.contains(step1.ca.cert_pem.trim()));
    let stored_step1 = {
        let mut b = put.body.clone();
        b["metadata"]["resourceVersion"] = json!("8");
        b
    };
    put.echo("8");
    assert_eq!(join(task).await.unwrap(), step1);
    api.no_more().await;

    // Before the propagation delay: nothing changes.
    let rotated_at = step1.ca_rotated_at.unwrap();
    let soon = rotated_at + jiff::SignedDuration::from_secs(60);
    let p = short.clone();
    let (client, mut api) = mock();
    let task =
        spawn(async move { ensure(client, "imagegate-system", "imagegate-tls", &p, soon).await });
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored_step1.clone());
    assert_eq!(join(task).await.unwrap(), step1);
    api.no_more().await;

    // Step 2, after the propagation delay: a serving certificate from the new CA; the bundle
    // still carries both.
    let after = rotated_at
        + jiff::SignedDuration::try_from(CA_PROPAGATION_DELAY).unwrap()
        + jiff::SignedDuration::from_secs(1);
    let p = short.clone();
    let (client, mut api) = mock();
    let task =
        spawn(async move { ensure(client, "imagegate-system", "imagegate-tls", &p, after).await });
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored_step1);
    let put = api.next().await.expect(Method::PUT, SECRET);
    assert_eq!(put.body["metadata"]["resourceVersion"], "8");
    let step2 = material_of(&put.body);
    assert_eq!(step2.ca, step1.ca);
    assert!(certs::issued_by(&step2.serving.cert_pem, &step1.ca.cert_pem).unwrap());
    assert_eq!(step2.previous_ca, step1.previous_ca);
    put.echo("9");
    assert_eq!(join(task).await.unwrap(), step2);
    api.no_more().await;
}

#[tokio::test]
async fn unusable_secret_is_replaced_keeping_the_old_ca_trusted() {
    let existing = fresh();
    let mut body = stored(&existing, "4");
    body["data"].as_object_mut().unwrap().remove(TLS_CERT);
    let (client, mut api) = mock();
    let task = spawn_ensure(client, now());
    api.next().await.expect(Method::GET, SECRET).ok(body);
    let put = api.next().await.expect(Method::PUT, SECRET);
    let written = material_of(&put.body);
    assert_eq!(
        written.previous_ca.as_deref(),
        Some(existing.ca.cert_pem.as_str())
    );
    assert!(put.body["data"][CA_CERT].is_string());
    put.echo("5");
    assert_eq!(join(task).await.unwrap(), written);
    api.no_more().await;
}

#[tokio::test]
async fn serving_certificate_for_other_names_is_reissued() {
    let existing = fresh();
    let other = CertParams {
        sans: vec!["203.0.113.7".into()],
        ..params()
    };
    let (client, mut api) = mock();
    let task =
        spawn(
            async move { ensure(client, "imagegate-system", "imagegate-tls", &other, now()).await },
        );
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .ok(stored(&existing, "2"));
    let put = api.next().await.expect(Method::PUT, SECRET);
    let written = material_of(&put.body);
    assert!(certs::covers(&written.serving.cert_pem, &["203.0.113.7".to_owned()]).unwrap());
    assert_eq!(written.ca, existing.ca);
    put.echo("3");
    join(task).await.unwrap();
}

#[tokio::test]
async fn ca_and_serving_due_together_still_rotate_in_two_steps() {
    let short = CertParams {
        sans: params().sans,
        cert_validity: Duration::from_secs(24 * HOUR),
        ca_validity: Duration::from_secs(24 * HOUR),
    };
    let existing = match certificates::plan(None, &short, now()).unwrap() {
        certificates::Plan::Write(m, _) => m,
        certificates::Plan::Keep(_) => unreachable!(),
    };
    let at = later(Duration::from_secs(17 * HOUR));
    let secret: Secret = serde_json::from_value(stored(&existing, "1")).unwrap();
    let certificates::Plan::Write(step1, _) =
        certificates::plan(Some(&secret), &short, at).unwrap()
    else {
        panic!("both are due");
    };
    assert_ne!(step1.ca, existing.ca);
    assert_ne!(
        step1.serving, existing.serving,
        "the serving certificate was renewed"
    );
    assert!(
        certs::issued_by(&step1.serving.cert_pem, &existing.ca.cert_pem).unwrap(),
        "by the old CA, which every replica's bundle already trusts"
    );
    assert!(step1.ca_bundle().contains(existing.ca.cert_pem.trim()));
}

#[tokio::test]
async fn first_start_puts_the_new_ca_into_the_webhook_configuration() {
    use imagegate::operator::webhook_config::{self, Endpoint, FailurePolicy, WebhookParams};
    let (client, mut api) = mock();
    let task = spawn(async move {
        let material = ensure(
            client.clone(),
            "imagegate-system",
            "imagegate-tls",
            &params(),
            now(),
        )
        .await?;
        let webhook = WebhookParams {
            name: "imagegate".into(),
            endpoint: Endpoint::Service {
                namespace: "imagegate-system".into(),
                name: "imagegate".into(),
            },
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 10,
            excluded_namespaces: vec!["kube-system".into()],
            namespace: "imagegate-system".into(),
        };
        webhook_config::reconcile(client, &webhook, &material.ca_bundle(), None).await?;
        Ok::<_, imagegate::operator::Error>(material)
    });
    api.next()
        .await
        .expect(Method::GET, SECRET)
        .error(404, "NotFound");
    let create = api.next().await.expect(Method::POST, SECRETS);
    let written = material_of(&create.body);
    create.echo("1");
    let vwc = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/imagegate";
    api.next()
        .await
        .expect(Method::GET, vwc)
        .error(404, "NotFound");
    let apply = api.next().await.expect(Method::PATCH, vwc);
    let bundle =
        serde_json::to_value(k8s_openapi::ByteString(written.ca_bundle().into_bytes())).unwrap();
    for hook in apply.body["webhooks"].as_array().unwrap() {
        assert_eq!(hook["clientConfig"]["caBundle"], bundle);
    }
    apply.echo("1");
    assert_eq!(join(task).await.unwrap(), written);
    api.no_more().await;
}
