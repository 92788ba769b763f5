//! Fulcio signing certificates: the identity they carry, and whether they chain to a
//! certificate authority of the trusted root at a given time.
//!
//! The identity is the certificate's Subject Alternative Name (a URI such as a GitHub Actions
//! workflow reference, or an email address) and the OIDC issuer that vouched for it, from
//! Fulcio's issuer extensions: `1.3.6.1.4.1.57264.1.8` (a DER UTF8String, current) and
//! `1.3.6.1.4.1.57264.1.1` (the raw string, older certificates). The chain is checked by
//! `rustls-webpki` (the X.509 path validation under the project's TLS stack), with the code
//! signing extended key usage, at the time the signature was made.

use std::fmt;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::PublicKey;
use super::trust::{CertificateAuthority, time};

/// Fulcio's OIDC issuer extension, v1: the issuer's URL as raw bytes.
pub const OID_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// Fulcio's OIDC issuer extension, v2: the issuer's URL as a DER UTF8String.
pub const OID_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER contents: the extended key usage of a Fulcio
/// signing certificate.
pub const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// id-kp-timeStamping (1.3.6.1.5.5.7.3.8), DER contents: the extended key usage of a
/// timestamp authority's signing certificate.
pub const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];
/// The longest an issuer or subject is shown in a message before it is cut.
const SHOWN_MAX_LEN: usize = 200;

/// The identity a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The OIDC issuer; `None` when the certificate has no issuer extension.
    pub issuer: Option<String>,
    /// The URIs and email addresses of its Subject Alternative Name.
    pub subjects: Vec<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.subjects.as_slice() {
            [] => f.write_str("a certificate with no URI or email subject")?,
            [one] => write!(f, "subject {}", shown(one))?,
            many => {
                let names: Vec<String> = many.iter().map(|s| shown(s)).collect();
                write!(f, "subjects {}", names.join(", "))?;
            }
        }
        match &self.issuer {
            Some(issuer) => write!(f, " from issuer {}", shown(issuer)),
            None => f.write_str(" with no OIDC issuer extension"),
        }
    }
}

/// A value quoted for a message, cut when very long.
pub(crate) fn shown(value: &str) -> String {
    if value.len() <= SHOWN_MAX_LEN {
        format!("{value:?}")
    } else {
        let mut end = SHOWN_MAX_LEN;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}…", &value[..end])
    }
}

/// A signing certificate, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    key: PublicKey,
    identity: Identity,
    not_before: i64,
    not_after: i64,
    /// Whether its key usage allows digital signatures (true when it has no key usage).
    digital_signature: bool,
}

impl Certificate {
    /// Reads a DER certificate; the error says why it cannot be used.
    pub fn from_der(der: Vec<u8>) -> Result<Certificate, String> {
        let (rest, cert) = X509Certificate::from_der(&der)
            .map_err(|e| format!("the certificate is not valid X.509: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes follow the certificate", rest.len()));
        }
        let key = PublicKey::from_spki_der(cert.public_key().raw)
            .map_err(|e| format!("the certificate's key cannot be used: {e}"))?;
        let mut subjects = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => subjects.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => subjects.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        let mut v1 = None;
        let mut v2 = None;
        for ext in cert.extensions() {
            let oid = ext.oid.to_id_string();
            if oid == OID_ISSUER_V1 {
                v1 = Some(
                    String::from_utf8(ext.value.to_vec())
                        .map_err(|_| "the certificate's issuer extension (v1) is not UTF-8")?,
                );
            } else if oid == OID_ISSUER_V2 {
                let (_, s) = x509_parser::der_parser::parse_der(ext.value).map_err(|e| {
                    format!("the certificate's issuer extension (v2) is not DER: {e}")
                })?;
                let s = s
                    .as_str()
                    .map_err(|_| "the certificate's issuer extension (v2) is not a UTF8String")?;
                v2 = Some(s.to_owned());
            }
        }
        let issuer = match (v1, v2) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "the certificate's two issuer extensions disagree ({} and {})",
                    shown(&a),
                    shown(&b)
                ));
            }
            (a, b) => b.or(a),
        };
        let digital_signature = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.digital_signature(),
            Ok(None) => true,
            Err(e) => return Err(format!("the certificate's key usage is unreadable: {e}")),
        };
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        Ok(Certificate {
            der,
            key,
            identity: Identity { issuer, subjects },
            not_before,
            not_after,
            digital_signature,
        })
    }

    /// Reads the single certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Certificate, String> {
        match super::pem_blocks(pem)?.as_slice() {
            [(label, der)] if label == "CERTIFICATE" => Certificate::from_der(der.clone()),
            [(label, _)] => Err(format!("a {label} block where a CERTIFICATE was expected")),
            blocks => Err(format!(
                "{} PEM blocks where one CERTIFICATE was expected",
                blocks.len()
            )),
        }
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The key the certificate certifies.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the certificate itself was valid at `at` (Unix seconds).
    pub fn valid_at(&self, at: i64) -> bool {
        self.not_before <= at && at <= self.not_after
    }

    /// When the certificate was valid, for messages.
    pub fn validity(&self) -> String {
        format!("from {} to {}", time(self.not_before), time(self.not_after))
    }

    pub(crate) fn allows_signing(&self) -> bool {
        self.digital_signature
    }

    /// The Fulcio authority among `authorities` that issued this certificate, checked at
    /// `at`: the authority must be trusted then, and the whole chain valid then, with the code
    /// signing extended key usage. `extra` are certificates the signature came with (they may
    /// complete a path, never start one).
    pub fn issuer_at<'r>(
        &self,
        authorities: &'r [CertificateAuthority],
        extra: &[Vec<u8>],
        at: i64,
    ) -> Result<&'r CertificateAuthority, String> {
        // The error of the last CA trusted at `at`; none when no CA was trusted then.
        let mut last = None;
        for ca in authorities {
            if !ca.valid.contains(at) {
                continue;
            }
            let intermediates: Vec<&[u8]> = ca
                .intermediates()
                .iter()
                .chain(extra)
                .map(Vec::as_slice)
                .collect();
            match chain_to(&self.der, &intermediates, ca.root(), at, EKU_CODE_SIGNING) {
                Ok(()) => return Ok(ca),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => {
                format!("the certificate does not chain to a Fulcio CA of the trusted root ({e})")
            }
            None if authorities.is_empty() => "the trusted root holds no Fulcio CA".to_owned(),
            None => format!(
                "no Fulcio CA of the trusted root was trusted at {}",
                time(at)
            ),
        })
    }
}

/// Checks that `end_entity` chains, through `intermediates`, to the trust anchor `anchor`,
/// every certificate valid at `at`, with the extended key usage `eku`.
pub(crate) fn chain_to(
    end_entity: &[u8],
    intermediates: &[&[u8]],
    anchor: &[u8],
    at: i64,
    eku: &'static [u8],
) -> Result<(), String> {
    let end_entity = CertificateDer::from(end_entity);
    let end_entity = webpki::EndEntityCert::try_from(&end_entity)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    let anchor = CertificateDer::from(anchor);
    let anchor = webpki::anchor_from_trusted_cert(&anchor)
        .map_err(|e| format!("the trusted root's certificate cannot be read: {e}"))?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(*d))
        .collect();
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).unwrap_or(0)));
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            at,
            webpki::KeyUsage::required(eku),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| match e {
            // An issuer of the same name whose key did not sign it is another CA too.
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                "issued by a CA the trusted root does not hold".to_owned()
            }
            webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
                "a certificate of the chain was not valid at the signing time".to_owned()
            }
            webpki::Error::RequiredEkuNotFoundContext(_) => {
                "the certificate is not for this use (extended key usage)".to_owned()
            }
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    /// A CA and a leaf certificate from it, made with rcgen (an implementation independent of
    /// Fulcio), with the given SANs and raw extensions.
    pub(crate) fn issue(
        sans: Vec<SanType>,
        extensions: Vec<CustomExtension>,
        eku: ExtendedKeyUsagePurpose,
    ) -> (Vec<u8>, Vec<u8>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "test ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::default();
        leaf.subject_alt_names = sans;
        leaf.custom_extensions = extensions;
        leaf.extended_key_usages = vec![eku];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert.der(), ca_key).unwrap();
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (leaf.der().to_vec(), ca_cert.der().to_vec())
    }

    fn utf8_string(s: &str) -> Vec<u8> {
        let mut out = vec![0x0c, s.len() as u8];
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn ext(oid: &[u64], value: Vec<u8>) -> CustomExtension {
        CustomExtension::from_oid_content(oid, value)
    }

    const V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
    const V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

    #[test]
    fn identity_from_email_and_uri_sans_and_either_issuer_extension() {
        let issuer = "https://accounts.example.com";
        let (leaf, _) = issue(
            vec![SanType::Rfc822Name("dev@example.com".try_into().unwrap())],
            vec![ext(V2, utf8_string(issuer))],
            ExtendedKeyUsagePurpose::CodeSigning,
        );
        let cert = Certificate::from_der(leaf).unwrap();
        assert_eq!(
            cert.identity(),
            &Identity {
                issuer: Some(issuer.to_owned()),
                subjects: vec!["dev@example.com".to_owned()],
            }
        );
        assert_eq!(
            cert.identity().to_string(),
            "subject \"dev@example.com\" from issuer \"https://accounts.example.com\""
        );

        let (leaf, _) = issue(
            vec![
                SanType::URI("https://a.example/x".try_into().unwrap()),
                SanType::DnsName("ignored.example".try_into().unwrap()),
            ],
            vec![ext(V1, issuer.as_bytes().to_vec())],
            ExtendedKeyUsagePurpose::CodeSigning,
        );
        let cert = Certificate::from_der(leaf).unwrap();
        assert_eq!(cert.identity().issuer.as_deref(), Some(issuer));
        assert_eq!(cert.identity().subjects, vec!["https://a.example/x"]);
        assert!(cert.allows_signing());

        let (leaf, _) = issue(vec![], vec![], ExtendedKeyUsagePurpose::CodeSigning);
        let cert = Certificate::from_der(leaf).unwrap();
        assert_eq!(
            cert.identity().to_string(),
            "a certificate with no URI or email subject with no OIDC issuer extension"
        );
    }

    #[test]
    fn disagreeing_issuer_extensions_are_refused() {
        let (leaf, _) = issue(
            vec![],
            vec![
                ext(V1, b"https://one.example".to_vec()),
                ext(V2, utf8_string("https://two.example")),
            ],
            ExtendedKeyUsagePurpose::CodeSigning,
        );
        let e = Certificate::from_der(leaf).unwrap_err();
        assert!(e.contains("disagree"), "{e}");
        let (leaf, _) = issue(
            vec![],
            vec![ext(V2, vec![0x04, 0x01, 0x41])],
            ExtendedKeyUsagePurpose::CodeSigning,
        );
        let e = Certificate::from_der(leaf).unwrap_err();
        assert!(e.contains("not a UTF8String"), "{e}");
    }

    #[test]
    fn chains_with_the_code_signing_usage_only() {
        let now = jiff::Timestamp::now().as_second();
        let (leaf, root) = issue(vec![], vec![], ExtendedKeyUsagePurpose::CodeSigning);
        let ca = CertificateAuthority {
            uri: "test".into(),
            chain: vec![root.clone()],
            valid: Default::default(),
        };
        let cert = Certificate::from_der(leaf).unwrap();
        assert!(cert.issuer_at(std::slice::from_ref(&ca), &[], now).is_ok());

        let (other_leaf, _) = issue(vec![], vec![], ExtendedKeyUsagePurpose::CodeSigning);
        let e = Certificate::from_der(other_leaf)
            .unwrap()
            .issuer_at(std::slice::from_ref(&ca), &[], now)
            .unwrap_err();
        assert!(e.contains("a CA the trusted root does not hold"), "{e}");

        let (server, root) = issue(vec![], vec![], ExtendedKeyUsagePurpose::ServerAuth);
        let ca = CertificateAuthority {
            chain: vec![root],
            ..ca
        };
        let e = Certificate::from_der(server)
            .unwrap()
            .issuer_at(std::slice::from_ref(&ca), &[], now)
            .unwrap_err();
        assert!(e.contains("extended key usage"), "{e}");

        let e = cert.issuer_at(&[], &[], now).unwrap_err();
        assert!(e.contains("holds no Fulcio CA"), "{e}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(500);
        let s = shown(&long);
        assert!(s.len() < 220 && s.ends_with('…'), "{s}");
        assert_eq!(shown("a"), "\"a\"");
    }
}
