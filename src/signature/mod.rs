//! Stand-in for the shared signature module until it lands on main (same shapes as agreed);
//! replaced wholesale by the real one on merge.

use x509_parser::prelude::FromDer as _;

/// The algorithm of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

/// Why a PEM text is not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// A public key from PEM (PKIX `PUBLIC KEY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    fingerprint: String,
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY`.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| KeyError(format!("not PEM: {e}")))?;
        if pem.label != "PUBLIC KEY" {
            return Err(KeyError(format!(
                "the PEM block is a {:?}, not a PUBLIC KEY",
                pem.label
            )));
        }
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
            .map_err(|e| KeyError(format!("not a PKIX public key: {e}")))?;
        let algorithm = match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.10045.2.1" => KeyAlgorithm::EcdsaP256,
            "1.3.101.112" => KeyAlgorithm::Ed25519,
            "1.2.840.113549.1.1.1" => KeyAlgorithm::Rsa,
            other => return Err(KeyError(format!("unsupported key algorithm {other}"))),
        };
        let hex = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            pem.contents.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        Ok(PublicKey {
            algorithm,
            fingerprint: format!("sha256:{hex}"),
        })
    }
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    pub fn verify(&self, _message: &[u8], _signature: &[u8]) -> bool {
        false
    }
}

/// How a signature must verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verifier {
    Key(PublicKey),
}

impl Verifier {
    pub fn id(&self) -> &str {
        match self {
            Verifier::Key(k) => k.fingerprint(),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Verifier::Key(k) => format!("key {}", k.fingerprint()),
        }
    }
}
