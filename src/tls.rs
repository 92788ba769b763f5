//! The serving certificate, swappable at run time: rustls asks [`CertResolver`] for the
//! certificate on every handshake, and [`CertResolver::set_pem`] replaces it atomically. Open
//! connections keep the certificate they were established with; new ones get the new one.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the certificate PEM")]
    NoCertificate,
    #[error("the certificate PEM cannot be read: {0}")]
    CertPem(String),
    #[error("the private key PEM cannot be read: {0}")]
    KeyPem(String),
    #[error("the private key does not fit the certificate: {0}")]
    Key(String),
}

/// The certificate in force and its expiry.
struct Current {
    key: Arc<CertifiedKey>,
    not_after: Option<jiff::Timestamp>,
}

/// Serves the current certificate to every TLS handshake.
pub struct CertResolver {
    current: ArcSwapOption<Current>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("ready", &self.is_ready())
            .field("not_after", &self.not_after())
            .finish()
    }
}

impl CertResolver {
    /// A resolver with no certificate yet (handshakes fail until [`set_pem`](Self::set_pem)).
    pub fn new() -> Arc<CertResolver> {
        Arc::new(CertResolver {
            current: ArcSwapOption::empty(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// Replaces the certificate (chain, leaf first) and key. Nothing changes on error.
    pub fn set_pem(&self, cert_chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::CertPem(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::KeyPem(e.to_string()))?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let not_after = crate::certs::not_after(cert_chain_pem).ok();
        self.current.store(Some(Arc::new(Current {
            key: Arc::new(certified),
            not_after,
        })));
        Ok(())
    }

    /// Whether a certificate is in place.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// When the certificate in force expires.
    pub fn not_after(&self) -> Option<jiff::Timestamp> {
        self.current.load().as_ref().and_then(|c| c.not_after)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| Arc::clone(&c.key))
    }
}

/// A rustls server configuration (TLS 1.2 and 1.3, no client certificates) that serves the
/// resolver's certificate.
pub fn server_config(resolver: Arc<CertResolver>) -> rustls::ServerConfig {
    let provider = Arc::clone(&resolver.provider);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // The ring provider supports both versions, so this cannot fail; should it ever, the
        // safe defaults of the same provider are the fallback.
        .unwrap_or_else(|_| {
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
        })
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::certs::{generate_ca, issue_serving};

    #[test]
    fn swaps_certificates_and_rejects_bad_ones() {
        let resolver = CertResolver::new();
        assert!(!resolver.is_ready());
        assert!(resolver.not_after().is_none());

        let ca = generate_ca("ca", Duration::from_secs(86400)).unwrap();
        let a = issue_serving(&ca, &["localhost".to_owned()], Duration::from_secs(3600)).unwrap();
        resolver.set_pem(&a.cert_pem, &a.key_pem).unwrap();
        assert!(resolver.is_ready());
        let first = resolver.not_after().unwrap();

        // A key that belongs to another certificate is refused and the old one stays.
        let b = issue_serving(&ca, &["localhost".to_owned()], Duration::from_secs(7200)).unwrap();
        assert!(matches!(
            resolver.set_pem(&a.cert_pem, &b.key_pem),
            Err(TlsError::Key(_))
        ));
        assert!(matches!(
            resolver.set_pem("", &b.key_pem),
            Err(TlsError::NoCertificate)
        ));
        assert!(resolver.set_pem(&b.cert_pem, "junk").is_err());
        assert_eq!(resolver.not_after(), Some(first));

        resolver.set_pem(&b.cert_pem, &b.key_pem).unwrap();
        assert!(resolver.not_after().unwrap() > first);
    }

    #[test]
    fn config_offers_tls12_and_tls13_only() {
        let config = server_config(CertResolver::new());
        let versions: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.version().version)
            .collect();
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_3));
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_2));
    }
}
