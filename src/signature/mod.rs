//! Signatures, without I/O: public keys as policies give them, the verifiers that policies
//! compile into, and the formats that signatures come in ([`cosign`]). Registries are read by
//! the registry adapter; this module only ever sees bytes and says whether they verify.
//!
//! Verification uses `ring`, the crypto library already under the project's TLS stack: it
//! verifies every algorithm cosign keys use (ECDSA P-256/P-384 with ASN.1 DER signatures,
//! Ed25519, RSA PKCS#1 v1.5 and PSS), so no second crypto stack is linked into the binary.
//! Test signatures are made by other implementations (the `sigstore` crate, the Sigstore
//! JavaScript libraries), so every format is checked against a producer imagegate did not write.

use std::fmt;

use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::der_parser::oid::Oid;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

pub mod bundle;
pub mod cosign;
pub mod fulcio;
pub mod keyless;
pub mod rekor;
pub mod timestamp;
pub mod trust;

pub use keyless::{KeylessVerifier, Match};
pub use trust::TrustedRoot;

/// The smallest RSA modulus accepted, in bits: smaller keys are factorable in practice, and
/// `ring` refuses them anyway.
pub const RSA_MIN_BITS: usize = 2048;
/// The largest RSA modulus accepted, in bits: the most `ring` verifies, and bounds the cost of
/// one verification.
pub const RSA_MAX_BITS: usize = 8192;
/// The longest PEM text accepted for a key: an 8192-bit RSA key is under 1.5 KiB.
pub const KEY_PEM_MAX_LEN: usize = 16 * 1024;

/// The algorithm of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa,
}

impl KeyAlgorithm {
    /// The algorithm's name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Rsa => "RSA",
        }
    }

    /// The signature schemes a signature by such a key may use. cosign signs with SHA-256
    /// whatever the key; other Sigstore clients hash P-384 signatures with SHA-384 and may use
    /// RSA-PSS. Accepting each of these for the key's own algorithm lets no one without the
    /// private key make a signature that verifies.
    fn schemes(self) -> &'static [&'static dyn VerificationAlgorithm] {
        match self {
            KeyAlgorithm::EcdsaP256 => P256_SCHEMES,
            KeyAlgorithm::EcdsaP384 => P384_SCHEMES,
            KeyAlgorithm::Ed25519 => ED25519_SCHEMES,
            KeyAlgorithm::Rsa => RSA_SCHEMES,
        }
    }
}

static P256_SCHEMES: &[&dyn VerificationAlgorithm] = &[&sig::ECDSA_P256_SHA256_ASN1];
static P384_SCHEMES: &[&dyn VerificationAlgorithm] =
    &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P384_SHA256_ASN1];
static ED25519_SCHEMES: &[&dyn VerificationAlgorithm] = &[&sig::ED25519];
static RSA_SCHEMES: &[&dyn VerificationAlgorithm] = &[
    &sig::RSA_PKCS1_2048_8192_SHA256,
    &sig::RSA_PKCS1_2048_8192_SHA384,
    &sig::RSA_PKCS1_2048_8192_SHA512,
    &sig::RSA_PSS_2048_8192_SHA256,
    &sig::RSA_PSS_2048_8192_SHA384,
    &sig::RSA_PSS_2048_8192_SHA512,
];

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a public key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, or not one `PUBLIC KEY` block.
    #[error("{0}")]
    Pem(String),
    /// The DER inside is not a SubjectPublicKeyInfo.
    #[error("the key is not a valid PKIX public key: {0}")]
    Der(String),
    /// A valid key of a kind imagegate does not verify with.
    #[error("{0}")]
    Unsupported(String),
}

/// A public key that verifies signatures: ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192
/// bits, read from PEM (`-----BEGIN PUBLIC KEY-----`, PKIX SubjectPublicKeyInfo), as
/// `cosign generate-key-pair` and `openssl pkey -pubout` write it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: KeyAlgorithm,
    /// The key as `ring` takes it: the SubjectPublicKeyInfo's `subjectPublicKey` bits.
    raw: Vec<u8>,
    fingerprint: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Reads a PEM public key. The error says what is wrong and what would be accepted.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        const WANTED: &str = "a PEM public key (-----BEGIN PUBLIC KEY-----) of type ECDSA P-256/P-384, Ed25519 or RSA";
        if pem.len() > KEY_PEM_MAX_LEN {
            return Err(KeyError::Pem(format!(
                "the key is {} bytes long, more than the {KEY_PEM_MAX_LEN} bytes any public key needs; expected {WANTED}",
                pem.len()
            )));
        }
        let blocks =
            pem_blocks(pem).map_err(|e| KeyError::Pem(format!("{e}; expected {WANTED}")))?;
        let der = match blocks.as_slice() {
            [] => {
                return Err(KeyError::Pem(format!(
                    "no PEM block found; expected {WANTED}"
                )));
            }
            [(label, der)] if label == "PUBLIC KEY" => der,
            [(label, _)] if label.contains("PRIVATE KEY") => {
                return Err(KeyError::Pem(format!(
                    "this is a private key ({label}); give the public key only (cosign.pub, or `openssl pkey -pubout`)"
                )));
            }
            [(label, _)] => {
                return Err(KeyError::Pem(format!(
                    "the PEM block is a {label:?}, not a \"PUBLIC KEY\"; expected {WANTED}"
                )));
            }
            _ => {
                return Err(KeyError::Pem(format!(
                    "{} PEM blocks found; give exactly one public key per entry (use two entries for two keys)",
                    blocks.len()
                )));
            }
        };
        Self::from_spki_der(der)
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| KeyError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(KeyError::Der(format!(
                "{} bytes follow the key",
                rest.len()
            )));
        }
        let raw = spki.subject_public_key.data.to_vec();
        let oid = &spki.algorithm.algorithm;
        let algorithm = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve: Option<Oid<'_>> = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let (algorithm, len) = match curve {
                Some(c) if c == OID_EC_P256 => (KeyAlgorithm::EcdsaP256, 65),
                Some(c) if c == OID_NIST_EC_P384 => (KeyAlgorithm::EcdsaP384, 97),
                Some(c) => {
                    return Err(KeyError::Unsupported(format!(
                        "the ECDSA key is on the curve {c}; only P-256 and P-384 are supported"
                    )));
                }
                None => {
                    return Err(KeyError::Der("the ECDSA key names no curve".to_owned()));
                }
            };
            if raw.first() != Some(&0x04) || raw.len() != len {
                return Err(KeyError::Unsupported(format!(
                    "the {algorithm} key is not an uncompressed point of {len} bytes; write it with `openssl pkey -pubout` (uncompressed form)"
                )));
            }
            algorithm
        } else if *oid == OID_SIG_ED25519 {
            if raw.len() != 32 {
                return Err(KeyError::Der(format!(
                    "the Ed25519 key is {} bytes long, not 32",
                    raw.len()
                )));
            }
            KeyAlgorithm::Ed25519
        } else if *oid == OID_PKCS1_RSAENCRYPTION {
            let bits = rsa_modulus_bits(&spki)?;
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(KeyError::Unsupported(format!(
                    "the RSA key has {bits} bits; between {RSA_MIN_BITS} and {RSA_MAX_BITS} are supported"
                )));
            }
            KeyAlgorithm::Rsa
        } else {
            return Err(KeyError::Unsupported(format!(
                "keys of the algorithm {oid} are not supported; use ECDSA P-256/P-384, Ed25519 or RSA"
            )));
        };
        Ok(PublicKey {
            algorithm,
            raw,
            fingerprint: format!(
                "sha256:{}",
                hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
            ),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo: names the key in messages, decision
    /// records and cache keys (the same digest `cosign` and `openssl` tools can compute).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `signature` verifies `message` under this key (for ECDSA, an ASN.1 DER
    /// signature, as cosign makes it).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.algorithm.schemes().iter().any(|&scheme| {
            UnparsedPublicKey::new(scheme, &self.raw)
                .verify(message, signature)
                .is_ok()
        })
    }
}

/// The bit length of an RSA key's modulus.
fn rsa_modulus_bits(spki: &SubjectPublicKeyInfo<'_>) -> Result<usize, KeyError> {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
            let modulus = rsa.modulus;
            let significant = modulus.iter().skip_while(|&&b| b == 0).count();
            let top = modulus.iter().find(|&&b| b != 0).copied().unwrap_or(0);
            Ok(significant.saturating_sub(1) * 8 + (8 - top.leading_zeros() as usize))
        }
        Ok(_) => Err(KeyError::Der("the RSA key cannot be read".to_owned())),
        Err(e) => Err(KeyError::Der(format!("the RSA key cannot be read: {e}"))),
    }
}

/// The PEM blocks of `text`, as (label, DER) pairs. Text outside blocks is ignored, as PEM
/// readers do (files often carry comments).
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        loop {
            match lines.next() {
                Some(l) if l == end => break,
                Some(l) if l.starts_with("-----") => {
                    return Err(format!(
                        "the {label:?} block ends with {l:?} instead of {end:?}"
                    ));
                }
                Some(l) => body.push_str(l),
                None => return Err(format!("the {label:?} block has no {end:?} line")),
            }
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("the {label:?} block is not valid base64: {e}"))?;
        out.push((label.to_owned(), der));
    }
    Ok(out)
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Bytes from lower- or upper-case hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a signature entry requires a transparency-log entry (`spec.verifySignatures[].transparencyLog`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum TransparencyLog {
    /// Do not look for a transparency-log entry (the default with `key`).
    Skip,
    /// A Rekor entry verified against the trusted root's log keys must be present (the default
    /// with `keyless`).
    Require,
}

/// Why one signature does not verify. Each names what failed for this one signature; the
/// registry adapter gathers them into the outcome's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature, or what carries it, is missing, too long or malformed.
    #[error("the signature is unreadable: {0}")]
    Encoding(String),
    /// The signature does not verify over its content under the key or certificate named.
    #[error("the signature does not verify under {0}")]
    Signature(String),
    /// The signed content (verified) is not a document of the expected kind.
    #[error("{0}")]
    Payload(String),
    /// The signed content (verified) names another image.
    #[error("the signature is for {signed}, not for this image's digest")]
    OtherDigest { signed: String },
    /// The certificate is not from the trusted root, or was not valid when the signature was made.
    #[error("{0}")]
    Certificate(String),
    /// The certificate is valid, for another identity than the entry's.
    #[error("signed by {found}, not by {wanted}")]
    Identity { found: String, wanted: String },
    /// The transparency-log entry required is missing, does not verify, or is another
    /// signature's.
    #[error("transparency log: {0}")]
    TransparencyLog(String),
    /// A timestamp the signature carries does not verify.
    #[error("timestamp: {0}")]
    Timestamp(String),
    /// A valid Sigstore document that is not an image signature (an attestation).
    #[error("{0}")]
    NotASignature(String),
}

/// How a signature must verify to satisfy a signature entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verifier {
    /// Under this public key.
    Key(KeyVerifier),
    /// By a Fulcio certificate for this identity.
    Keyless(KeylessVerifier),
}

/// A `key` entry, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVerifier {
    key: PublicKey,
    /// The trusted root whose logs must hold the signature (`transparencyLog: Require`).
    log: Option<std::sync::Arc<TrustedRoot>>,
    id: String,
}

impl Verifier {
    /// A verifier for signatures under `key`, without a transparency log.
    pub fn key(key: PublicKey) -> Verifier {
        Verifier::Key(KeyVerifier {
            id: format!("key:{}", key.fingerprint()),
            key,
            log: None,
        })
    }

    /// A verifier for signatures under `key` that a transparency log of `root` must hold
    /// (`transparencyLog: Require` on a `key` entry).
    pub fn key_in_log(key: PublicKey, root: std::sync::Arc<TrustedRoot>) -> Verifier {
        Verifier::Key(KeyVerifier {
            id: format!(
                "key:{};transparencyLog:{}",
                key.fingerprint(),
                root.fingerprint()
            ),
            key,
            log: Some(root),
        })
    }

    /// A verifier for keyless signatures: a certificate from a Fulcio CA of `root` for an
    /// identity whose OIDC issuer and subject match.
    pub fn keyless(
        issuer: Match,
        subject: Match,
        root: std::sync::Arc<TrustedRoot>,
        transparency_log: TransparencyLog,
    ) -> Verifier {
        Verifier::Keyless(KeylessVerifier::new(
            issuer,
            subject,
            root,
            transparency_log,
        ))
    }

    /// What this verifier accepts, as a stable string: two verifiers with the same id accept
    /// exactly the same signatures, so outcomes may be cached and shared under it. A keyless
    /// id holds the identity wanted, the trusted root's fingerprint and the transparency-log
    /// setting.
    pub fn id(&self) -> &str {
        match self {
            Verifier::Key(k) => &k.id,
            Verifier::Keyless(k) => &k.id,
        }
    }

    /// What this verifier accepts, for people: the key's fingerprint, or the identity wanted.
    /// A verified signature's own signer (the identity found in its certificate) is what the
    /// verification functions return.
    pub fn describe(&self) -> String {
        match self {
            Verifier::Key(k) => k.key.fingerprint().to_owned(),
            Verifier::Keyless(k) => k.wanted(),
        }
    }

    /// The public key, for a `key` verifier.
    pub fn public_key(&self) -> Option<&PublicKey> {
        match self {
            Verifier::Key(k) => Some(&k.key),
            Verifier::Keyless(_) => None,
        }
    }

    /// Whether a transparency-log entry is required.
    pub fn transparency_log(&self) -> TransparencyLog {
        match self {
            Verifier::Key(k) if k.log.is_some() => TransparencyLog::Require,
            Verifier::Key(_) => TransparencyLog::Skip,
            Verifier::Keyless(k) => k.transparency_log,
        }
    }
}

#[cfg(test)]
pub(crate) mod sigstore_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    /// A PEM public key from the raw `subjectPublicKey` bits and the algorithm identifier DER.
    pub(crate) fn pem(algorithm_identifier: &[u8], raw: &[u8]) -> String {
        use base64::Engine as _;
        let mut bits = vec![0x03];
        der_len(&mut bits, raw.len() + 1);
        bits.push(0);
        bits.extend_from_slice(raw);
        let mut spki = vec![0x30];
        der_len(&mut spki, algorithm_identifier.len() + bits.len());
        spki.extend_from_slice(algorithm_identifier);
        spki.extend_from_slice(&bits);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            body.join("\n")
        )
    }

    fn der_len(out: &mut Vec<u8>, len: usize) {
        if len < 128 {
            out.push(len as u8);
        } else if len < 256 {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
    }

    /// AlgorithmIdentifier of id-ecPublicKey with the P-256 curve.
    pub(crate) const P256_ALG: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    /// AlgorithmIdentifier of id-ecPublicKey with the P-384 curve.
    const P384_ALG: &[u8] = &[
        0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81,
        0x04, 0x00, 0x22,
    ];
    /// AlgorithmIdentifier of id-ecPublicKey with the secp256k1 curve (unsupported).
    const K256_ALG: &[u8] = &[
        0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81,
        0x04, 0x00, 0x0a,
    ];
    /// AlgorithmIdentifier of Ed25519.
    const ED25519_ALG: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

    /// A fresh ECDSA P-256 key pair and its PEM public key.
    pub(crate) fn p256() -> (EcdsaKeyPair, String) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        let pem = pem(P256_ALG, pair.public_key().as_ref());
        (pair, pem)
    }

    pub(crate) fn sign(pair: &EcdsaKeyPair, message: &[u8]) -> Vec<u8> {
        pair.sign(&SystemRandom::new(), message)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn ecdsa_p256_verifies_its_own_signatures_only() {
        let (pair, pem) = p256();
        let key = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
        assert!(key.fingerprint().starts_with("sha256:"));
        assert_eq!(key.fingerprint().len(), 7 + 64);
        let signature = sign(&pair, b"payload");
        assert!(key.verify(b"payload", &signature));
        assert!(!key.verify(b"payload!", &signature));
        let mut bent = signature.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(!key.verify(b"payload", &bent));
        assert!(!key.verify(b"payload", b""));

        let (_, other) = p256();
        let other = PublicKey::from_pem(&other).unwrap();
        assert!(!other.verify(b"payload", &signature));
        assert_ne!(other.fingerprint(), key.fingerprint());
    }

    #[test]
    fn ecdsa_p384_with_sha384_or_sha256() {
        let rng = SystemRandom::new();
        let signing = &sig::ECDSA_P384_SHA384_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
        let key = PublicKey::from_pem(&pem(P384_ALG, pair.public_key().as_ref())).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP384);
        let signature = pair.sign(&rng, b"m").unwrap();
        assert!(key.verify(b"m", signature.as_ref()));
        assert!(!key.verify(b"n", signature.as_ref()));

        // cosign hashes with SHA-256 whatever the curve: made with `openssl dgst -sha256 -sign`.
        let key = PublicKey::from_pem(include_str!("../../tests/data/keys/p384.pub")).unwrap();
        let message = include_bytes!("../../tests/data/keys/p384-sha256.msg");
        let signature = include_bytes!("../../tests/data/keys/p384-sha256.sig");
        assert!(key.verify(message, signature));
        assert!(!key.verify(b"another message", signature));
    }

    #[test]
    fn ed25519() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = PublicKey::from_pem(&pem(ED25519_ALG, pair.public_key().as_ref())).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Ed25519);
        let signature = pair.sign(b"m");
        assert!(key.verify(b"m", signature.as_ref()));
        assert!(!key.verify(b"x", signature.as_ref()));
    }

    #[test]
    fn rsa_pkcs1_and_pss() {
        let key = PublicKey::from_pem(include_str!("../../tests/data/keys/rsa-2048.pub")).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rsa);
        let pair =
            sig::RsaKeyPair::from_pkcs8(include_bytes!("../../tests/data/keys/rsa-2048.pk8"))
                .unwrap();
        let rng = SystemRandom::new();
        for padding in [
            &sig::RSA_PKCS1_SHA256 as &dyn sig::RsaEncoding,
            &sig::RSA_PKCS1_SHA512,
            &sig::RSA_PSS_SHA256,
        ] {
            let mut signature = vec![0; pair.public().modulus_len()];
            pair.sign(padding, &rng, b"m", &mut signature).unwrap();
            assert!(key.verify(b"m", &signature));
            assert!(!key.verify(b"n", &signature));
        }
        let small = PublicKey::from_pem(include_str!("../../tests/data/keys/rsa-1024.pub"));
        assert!(
            small.unwrap_err().to_string().contains("1024 bits"),
            "a 1024-bit key is refused"
        );
    }

    #[test]
    fn bad_keys_say_why() {
        let (_, good) = p256();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no PEM block"),
            ("not a key".into(), "no PEM block"),
            (format!("{good}{good}"), "2 PEM blocks"),
            (good.replace("PUBLIC KEY", "EC PRIVATE KEY"), "private key"),
            (good.replace("PUBLIC KEY", "CERTIFICATE"), "\"CERTIFICATE\""),
            (good.replace("-----END PUBLIC KEY-----", ""), "has no"),
            (
                "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n".into(),
                "base64",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
                "not a valid PKIX",
            ),
            (pem(K256_ALG, &[4; 65]), "only P-256 and P-384"),
            (pem(P256_ALG, &[2; 33]), "uncompressed point"),
            (pem(ED25519_ALG, &[1; 31]), "not 32"),
            ("x".repeat(KEY_PEM_MAX_LEN + 1), "bytes long"),
        ];
        for (text, want) in cases {
            let e = PublicKey::from_pem(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e} (wanted {want:?})");
        }
    }

    #[test]
    fn a_key_verifier_is_named_by_its_fingerprint() {
        let (_, pem) = p256();
        let key = PublicKey::from_pem(&pem).unwrap();
        let fp = key.fingerprint().to_owned();
        let v = Verifier::key(key.clone());
        assert_eq!(v.id(), format!("key:{fp}"));
        assert_eq!(v.describe(), fp);
        assert_eq!(Verifier::key(key), v);
    }
}
