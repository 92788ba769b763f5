//! The TLS Secret: a CA and the serving certificate it issues, shared by every replica.
//!
//! [`plan`] is a pure function from the Secret as read (and the time) to what it should hold;
//! [`ensure`] reads the Secret, writes the plan (create, or update guarded by
//! `resourceVersion`) and, when another replica wrote first (409 Conflict), reads the winner
//! and plans again. So replicas converge on one CA and one serving certificate.
//!
//! Rotation: the serving certificate is renewed at 2/3 of its validity. The CA is renewed at
//! 2/3 of its own in two steps, so that no replica is ever untrusted: first the new CA enters
//! the Secret with the old one kept as `ca-previous.crt` (the webhook configuration's
//! `caBundle` carries both) while the serving certificate signed by the old CA stays in use;
//! after [`CA_PROPAGATION_DELAY`] a serving certificate from the new CA replaces it. The old CA
//! leaves the bundle when it expires or when the next CA rotation replaces it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};

use super::Error;
use super::webhook_config::MANAGED_BY_LABEL;
use crate::certs::{self, CertPair};

/// Secret key of the current CA certificate.
pub const CA_CERT: &str = "ca.crt";
/// Secret key of the current CA's private key (needed by every replica to issue serving
/// certificates).
pub const CA_KEY: &str = "ca.key";
/// Secret key of the previous CA certificate, kept in the bundle during a CA rotation.
pub const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
/// Secret key of the serving certificate.
pub const TLS_CERT: &str = "tls.crt";
/// Secret key of the serving certificate's private key.
pub const TLS_KEY: &str = "tls.key";
/// Annotation with the RFC 3339 time the current CA replaced the previous one.
pub const CA_ROTATED_AT: &str = "imagegate.dev/ca-rotated-at";
/// Common name of the CA.
pub const CA_COMMON_NAME: &str = "imagegate-ca";

/// After a CA rotation, how long the serving certificate from the old CA stays in use, so that
/// every replica has applied the bundle with both CAs to the webhook configuration before any
/// replica serves a certificate from the new CA. Replicas pick a Secret change up within
/// seconds (watch); this leaves a wide margin.
pub const CA_PROPAGATION_DELAY: Duration = Duration::from_secs(5 * 60);
/// How many times [`ensure`] re-reads after losing a write race before giving up for this
/// round (the periodic check tries again).
pub const MAX_CONFLICT_RETRIES: usize = 5;

/// The fraction of a certificate's validity after which it is renewed (numerator/denominator):
/// 2/3 leaves a third of the validity to retry through API server outages.
const RENEW_AT: (u32, u32) = (2, 3);

/// What the certificates must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertParams {
    /// The names the serving certificate must cover.
    pub sans: Vec<String>,
    /// Validity of a new serving certificate.
    pub cert_validity: Duration,
    /// Validity of a new CA.
    pub ca_validity: Duration,
}

/// The DNS names of the Service `service` in `namespace`.
pub fn service_sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The contents of the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The current CA (certificate and key).
    pub ca: CertPair,
    /// The previous CA's certificate, during a CA rotation.
    pub previous_ca: Option<String>,
    /// The serving certificate and key.
    pub serving: CertPair,
    /// When the current CA replaced the previous one.
    pub ca_rotated_at: Option<jiff::Timestamp>,
}

impl Material {
    /// The CA bundle for the webhook configuration: the current CA, then the previous one.
    pub fn ca_bundle(&self) -> String {
        let mut bundle = pem_block(&self.ca.cert_pem);
        if let Some(prev) = &self.previous_ca {
            bundle.push_str(&pem_block(prev));
        }
        bundle
    }

    /// Reads the Secret's contents; says what is missing or broken.
    pub fn from_secret(secret: &Secret) -> Result<Material, String> {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let get = |key: &str| -> Result<String, String> {
            let bytes = data
                .get(key)
                .ok_or_else(|| format!("the Secret has no {key}"))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not PEM text"))
        };
        let material = Material {
            ca: CertPair {
                cert_pem: get(CA_CERT)?,
                key_pem: get(CA_KEY)?,
            },
            previous_ca: get(PREVIOUS_CA_CERT).ok().filter(|p| !p.trim().is_empty()),
            serving: CertPair {
                cert_pem: get(TLS_CERT)?,
                key_pem: get(TLS_KEY)?,
            },
            ca_rotated_at: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CA_ROTATED_AT))
                .and_then(|t| t.parse().ok()),
        };
        validity(&material.ca.cert_pem).map_err(|e| format!("{CA_CERT}: {e}"))?;
        validity(&material.serving.cert_pem).map_err(|e| format!("{TLS_CERT}: {e}"))?;
        if !material.serving.key_pem.contains("PRIVATE KEY")
            || !material.ca.key_pem.contains("PRIVATE KEY")
        {
            return Err("a private key is not PEM".to_owned());
        }
        let from_current = issued(&material.serving.cert_pem, &material.ca.cert_pem);
        let from_previous = material
            .previous_ca
            .as_deref()
            .is_some_and(|p| issued(&material.serving.cert_pem, p));
        if !from_current && !from_previous {
            return Err(format!("{TLS_CERT} was not issued by {CA_CERT}"));
        }
        Ok(material)
    }

    /// The Secret data holding this material.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::from([
            (CA_CERT.to_owned(), bytes(&self.ca.cert_pem)),
            (CA_KEY.to_owned(), bytes(&self.ca.key_pem)),
            (TLS_CERT.to_owned(), bytes(&self.serving.cert_pem)),
            (TLS_KEY.to_owned(), bytes(&self.serving.key_pem)),
        ]);
        if let Some(prev) = &self.previous_ca {
            data.insert(PREVIOUS_CA_CERT.to_owned(), bytes(prev));
        }
        data
    }
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

fn pem_block(pem: &str) -> String {
    let mut s = pem.trim_end().to_owned();
    s.push('\n');
    s
}

fn issued(cert: &str, ca: &str) -> bool {
    certs::issued_by(cert, ca).unwrap_or(false)
}

/// The validity period (not before, not after) of the first certificate in `pem`.
pub fn validity(pem: &str) -> Result<(jiff::Timestamp, jiff::Timestamp), String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let ts = |t: i64| jiff::Timestamp::from_second(t).map_err(|e| e.to_string());
    Ok((
        ts(cert.validity().not_before.timestamp())?,
        ts(cert.validity().not_after.timestamp())?,
    ))
}

/// When the certificate in `pem` is due for renewal: at 2/3 of its validity.
pub fn renew_at(pem: &str) -> Result<jiff::Timestamp, String> {
    let (from, to) = validity(pem)?;
    let span = to.as_second() - from.as_second();
    let at = from.as_second() + span * i64::from(RENEW_AT.0) / i64::from(RENEW_AT.1);
    jiff::Timestamp::from_second(at).map_err(|e| e.to_string())
}

fn due(pem: &str, now: jiff::Timestamp) -> bool {
    renew_at(pem).map_or(true, |at| now >= at)
}

fn expired(pem: &str, now: jiff::Timestamp) -> bool {
    validity(pem).map_or(true, |(_, to)| now >= to)
}

/// What the Secret should become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The Secret is valid: serve it as it is.
    Keep(Material),
    /// Write this material, for the reason given.
    Write(Material, &'static str),
}

/// Decides what the Secret should hold at `now`, given what was read (`None`: no Secret).
pub fn plan(
    current: Option<&Secret>,
    params: &CertParams,
    now: jiff::Timestamp,
) -> Result<Plan, certs::CertError> {
    let fresh = |previous_ca: Option<String>, reason| -> Result<Plan, certs::CertError> {
        let ca = certs::generate_ca(CA_COMMON_NAME, params.ca_validity)?;
        let serving = certs::issue_serving(&ca, &params.sans, params.cert_validity)?;
        let rotated = previous_ca.as_ref().map(|_| now);
        Ok(Plan::Write(
            Material {
                ca,
                previous_ca,
                serving,
                ca_rotated_at: rotated,
            },
            reason,
        ))
    };
    let Some(secret) = current else {
        return fresh(None, "the Secret does not exist");
    };
    let mut m = match Material::from_secret(secret) {
        Ok(m) => m,
        Err(why) => {
            tracing::warn!(reason = %why, "the TLS Secret is not usable; replacing its contents");
            // Keep trusting the old CA, if any, while replicas move to the new one.
            let old_ca = secret
                .data
                .as_ref()
                .and_then(|d| d.get(CA_CERT))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|pem| !expired(pem, now));
            return fresh(old_ca, "the Secret's contents are not usable");
        }
    };
    let mut reason = None;
    let mut serving_renewed = false;

    // Step 1 of a CA rotation: a new CA; the old one stays in the bundle.
    if due(&m.ca.cert_pem, now) {
        let old = std::mem::replace(
            &mut m.ca,
            certs::generate_ca(CA_COMMON_NAME, params.ca_validity)?,
        );
        // A serving certificate due at the same moment still comes from the old CA: the new
        // one is not yet in every webhook configuration's bundle.
        if due(&m.serving.cert_pem, now) && !expired(&old.cert_pem, now) {
            m.serving = certs::issue_serving(&old, &params.sans, params.cert_validity)?;
            serving_renewed = true;
        }
        m.previous_ca = Some(old.cert_pem).filter(|pem| !expired(pem, now));
        m.ca_rotated_at = Some(now);
        reason = Some("the CA is due for renewal");
    }
    // The previous CA leaves the bundle once expired and no longer needed.
    if m.previous_ca
        .as_deref()
        .is_some_and(|prev| expired(prev, now))
    {
        m.previous_ca = None;
        reason = reason.or(Some("the previous CA expired"));
    }

    let from_current = issued(&m.serving.cert_pem, &m.ca.cert_pem);
    let propagated = m.ca_rotated_at.is_none_or(|t| {
        now >= t + jiff::SignedDuration::try_from(CA_PROPAGATION_DELAY).unwrap_or_default()
    });
    let from_previous_in_bundle = m
        .previous_ca
        .as_deref()
        .is_some_and(|p| issued(&m.serving.cert_pem, p));
    let serving_reason = if serving_renewed {
        None
    } else if due(&m.serving.cert_pem, now) {
        Some("the serving certificate is due for renewal")
    } else if !certs::covers(&m.serving.cert_pem, &params.sans).unwrap_or(false) {
        Some("the serving certificate does not cover the webhook's names")
    } else if !from_current && !from_previous_in_bundle {
        Some("the serving certificate was not issued by a CA in the bundle")
    } else if !from_current && propagated {
        Some("the CA rotation has propagated; moving to a certificate from the new CA")
    } else {
        None
    };
    if let Some(r) = serving_reason {
        m.serving = certs::issue_serving(&m.ca, &params.sans, params.cert_validity)?;
        reason = reason.or(Some(r));
    }
    Ok(match reason {
        Some(r) => Plan::Write(m, r),
        None => Plan::Keep(m),
    })
}

/// A new Secret holding `material`.
pub fn new_secret(name: &str, namespace: &str, material: &Material) -> Secret {
    let mut secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                "imagegate".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        ..Secret::default()
    };
    set_material(&mut secret, material);
    secret
}

/// Puts `material` into `secret` (data and rotation annotation), keeping everything else,
/// `resourceVersion` included, so that the update fails if the Secret changed meanwhile.
pub fn set_material(secret: &mut Secret, material: &Material) {
    secret.data = Some(material.to_data());
    secret.string_data = None;
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new);
    match material.ca_rotated_at {
        Some(t) => {
            annotations.insert(CA_ROTATED_AT.to_owned(), t.to_string());
        }
        None => {
            annotations.remove(CA_ROTATED_AT);
        }
    }
}

/// Makes the Secret `name` in `namespace` hold a valid CA and serving certificate and returns
/// them: reuses a valid Secret without writing, creates a missing one, updates one that is due
/// (with its `resourceVersion`). A lost race (409 Conflict) re-reads the winner's Secret.
pub async fn ensure(
    client: Client,
    namespace: &str,
    name: &str,
    params: &CertParams,
    now: jiff::Timestamp,
) -> Result<Material, Error> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let post = PostParams {
        dry_run: false,
        field_manager: Some(super::FIELD_MANAGER.to_owned()),
    };
    for _ in 0..MAX_CONFLICT_RETRIES {
        let current = api.get_opt(name).await?;
        let plan = plan(current.as_ref(), params, now)
            .map_err(|e| Error::Invalid(format!("cannot make certificates: {e}")))?;
        let (material, reason) = match plan {
            Plan::Keep(m) => return Ok(m),
            Plan::Write(m, reason) => (m, reason),
        };
        let written = match current {
            None => {
                api.create(&post, &new_secret(name, namespace, &material))
                    .await
            }
            Some(mut secret) => {
                set_material(&mut secret, &material);
                api.replace(name, &post, &secret).await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(secret = %name, namespace = %namespace, reason, "TLS Secret written");
                return Ok(material);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(secret = %name, "another replica wrote the TLS Secret first; reading it");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Invalid(format!(
        "the Secret {namespace}/{name} kept changing while being written; will retry"
    )))
}
