//! A private CA and the serving certificates it issues, shared by `serve` (certificates in a
//! folder) and the operator (certificates in a Secret). Keys are ECDSA P-256.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// How far before "now" a new certificate's validity starts, so that a peer whose clock lags a
/// little behind ours still accepts it.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why a certificate cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("the PEM text is not valid: {0}")]
    Pem(String),
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("{0:?} is not a valid DNS name or IP address for a certificate")]
    InvalidSan(String),
    #[error("the validity {0:?} is out of range")]
    Validity(Duration),
}

/// Generates a self-signed CA valid for `validity` from now.
pub fn generate_ca(common_name: &str, validity: Duration) -> Result<CertPair, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving certificate for `sans` (DNS names or IP addresses), signed by `ca`, valid
/// for `validity` from now. The first SAN is also the subject's common name.
pub fn issue_serving(
    ca: &CertPair,
    sans: &[String],
    validity: Duration,
) -> Result<CertPair, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(sans.first().map_or("imagegate", String::as_str));
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The end of the validity of the first certificate in `cert_pem`.
pub fn not_after(cert_pem: &str) -> Result<jiff::Timestamp, CertError> {
    let der = first_der(cert_pem)?;
    let cert = parse(&der)?;
    jiff::Timestamp::from_second(cert.validity().not_after.timestamp())
        .map_err(|e| CertError::Parse(e.to_string()))
}

/// Whether the first certificate in `cert_pem` names every one of `sans` (DNS names compare
/// case-insensitively; IP addresses by value).
pub fn covers(cert_pem: &str, sans: &[String]) -> Result<bool, CertError> {
    let der = first_der(cert_pem)?;
    let cert = parse(&der)?;
    let mut dns: Vec<String> = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        ips.push(IpAddr::from(a));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(sans.iter().all(|s| match s.parse::<IpAddr>() {
        Ok(ip) => ips.contains(&ip),
        Err(_) => dns.contains(&s.to_ascii_lowercase()),
    }))
}

/// Whether the first certificate in `cert_pem` was signed by the CA in `ca_cert_pem` (its
/// signature verifies with the CA's public key and its issuer is the CA's subject).
pub fn issued_by(cert_pem: &str, ca_cert_pem: &str) -> Result<bool, CertError> {
    let der = first_der(cert_pem)?;
    let ca_der = first_der(ca_cert_pem)?;
    let cert = parse(&der)?;
    let ca = parse(&ca_der)?;
    if cert.issuer() != ca.subject() {
        return Ok(false);
    }
    Ok(cert.verify_signature(Some(ca.public_key())).is_ok())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "imagegate");
    dn
}

fn san(s: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    s.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| CertError::InvalidSan(s.to_owned()))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) -> Result<(), CertError> {
    // rcgen speaks `time::OffsetDateTime`; build "now" from the Unix epoch rather than depend on
    // the `time` crate directly.
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let start = since_epoch.saturating_sub(CLOCK_SKEW_ALLOWANCE);
    let end = since_epoch
        .checked_add(validity)
        .filter(|end| end.as_secs() < 253_402_300_799) // 9999-12-31T23:59:59Z, X.509's limit
        .ok_or(CertError::Validity(validity))?;
    params.not_before = epoch + start;
    params.not_after = epoch + end;
    Ok(())
}

fn first_der(pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(CertError::Pem(e.to_string())),
        None => Err(CertError::NoCertificate),
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CertError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn issues_a_serving_certificate_that_chains_to_its_ca() {
        let ca = generate_ca("imagegate-ca", 365 * DAY).unwrap();
        let sans = vec![
            "imagegate.imagegate-system.svc".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let serving = issue_serving(&ca, &sans, 30 * DAY).unwrap();
        assert!(covers(&serving.cert_pem, &sans).unwrap());
        assert!(
            covers(
                &serving.cert_pem,
                &["IMAGEGATE.imagegate-system.svc".to_owned()]
            )
            .unwrap()
        );
        assert!(!covers(&serving.cert_pem, &["other.svc".to_owned()]).unwrap());
        assert!(!covers(&serving.cert_pem, &["::1".to_owned()]).unwrap());
        assert!(issued_by(&serving.cert_pem, &ca.cert_pem).unwrap());
        assert!(issued_by(&ca.cert_pem, &ca.cert_pem).unwrap());

        let other = generate_ca("imagegate-ca", 365 * DAY).unwrap();
        assert!(!issued_by(&serving.cert_pem, &other.cert_pem).unwrap());
    }

    #[test]
    fn not_after_is_validity_from_now() {
        let ca = generate_ca("ca", 10 * DAY).unwrap();
        let end = not_after(&ca.cert_pem).unwrap();
        let expected = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(10 * 86400);
        let diff = (expected.as_second() - end.as_second()).abs();
        assert!(diff < 60, "not_after {end} is not about {expected}");
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(not_after(""), Err(CertError::NoCertificate)));
        assert!(
            not_after("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
        let ca = generate_ca("ca", DAY).unwrap();
        assert!(issue_serving(&ca, &["bäd.example".to_owned()], DAY).is_err());
        assert!(generate_ca("ca", Duration::from_secs(u64::MAX / 2)).is_err());
        let broken = CertPair {
            cert_pem: ca.cert_pem.clone(),
            key_pem: "not a key".to_owned(),
        };
        assert!(issue_serving(&broken, &["a".to_owned()], DAY).is_err());
    }
}
