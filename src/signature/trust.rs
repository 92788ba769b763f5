//! The Sigstore trusted root (`trusted_root.json`, media type
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): the Fulcio certificate
//! authorities that issue signing certificates, the Rekor transparency logs' keys, and the
//! timestamp authorities, each with the time range it is trusted for.
//!
//! The document is read once when a policy compiles (or at start, for
//! `--sigstore-trusted-root`); nothing here fetches anything.

use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use super::{PublicKey, hex};

/// The largest trusted root accepted. Sigstore's public one is about 10 KiB; a megabyte leaves
/// room for many authorities while bounding what a ConfigMap can make the operator parse.
pub const TRUSTED_ROOT_MAX_BYTES: usize = 1024 * 1024;
/// What the `mediaType` of a trusted root starts with.
pub const TRUSTED_ROOT_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.trustedroot+json";

/// Why a trusted root cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the trusted root is not usable: {0}")]
pub struct TrustError(pub String);

/// When an authority or key is trusted: from `start` to `end` (Unix seconds), either open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Validity {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl Validity {
    /// Whether `at` (Unix seconds) falls in the range.
    pub fn contains(&self, at: i64) -> bool {
        self.start.is_none_or(|s| s <= at) && self.end.is_none_or(|e| at <= e)
    }
}

impl fmt::Display for Validity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.start, self.end) {
            (Some(s), Some(e)) => write!(f, "from {} to {}", time(s), time(e)),
            (Some(s), None) => write!(f, "from {}", time(s)),
            (None, Some(e)) => write!(f, "until {}", time(e)),
            (None, None) => f.write_str("at any time"),
        }
    }
}

/// A Unix time as RFC 3339, for messages.
pub fn time(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{seconds} (Unix time)"))
}

/// A certificate authority: Fulcio, or a timestamp authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthority {
    /// Where it is served (names it in messages).
    pub uri: String,
    /// Its certificates in DER, the one closest to the certificates it issues first and the
    /// root last (the order of `certChain` in the document).
    pub chain: Vec<Vec<u8>>,
    pub valid: Validity,
}

impl CertificateAuthority {
    /// The root: the trust anchor.
    pub fn root(&self) -> &[u8] {
        self.chain.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// The certificates between the root and what the authority issues.
    pub fn intermediates(&self) -> &[Vec<u8>] {
        &self.chain[..self.chain.len().saturating_sub(1)]
    }
}

/// A transparency log's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    pub base_url: String,
    /// The log id entries name it by: the SHA-256 of the key's DER.
    pub log_id: Vec<u8>,
    pub key: PublicKey,
    pub valid: Validity,
}

/// A parsed trusted root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedRoot {
    fingerprint: String,
    certificate_authorities: Vec<CertificateAuthority>,
    logs: Vec<LogKey>,
    timestamp_authorities: Vec<CertificateAuthority>,
    ignored: Vec<String>,
}

impl TrustedRoot {
    /// Reads a trusted root document. The error says what is wrong and where.
    pub fn from_json(bytes: &[u8]) -> Result<TrustedRoot, TrustError> {
        if bytes.len() > TRUSTED_ROOT_MAX_BYTES {
            return Err(TrustError(format!(
                "it is {} bytes long, more than the {TRUSTED_ROOT_MAX_BYTES} bytes accepted",
                bytes.len()
            )));
        }
        let doc: Document = serde_json::from_slice(bytes)
            .map_err(|e| TrustError(format!("it is not a trusted root document: {e}")))?;
        if !doc.media_type.starts_with(TRUSTED_ROOT_MEDIA_TYPE) {
            return Err(TrustError(format!(
                "its mediaType is {:?}, not {TRUSTED_ROOT_MEDIA_TYPE};version=0.1",
                doc.media_type
            )));
        }
        let certificate_authorities = doc
            .certificate_authorities
            .iter()
            .enumerate()
            .map(|(i, ca)| ca.parse(&format!("certificateAuthorities[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let timestamp_authorities = doc
            .timestamp_authorities
            .iter()
            .enumerate()
            .map(|(i, ca)| ca.parse(&format!("timestampAuthorities[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // A log whose key cannot be used is left out (its entries then verify nothing), so
        // that a new kind of key in Sigstore's root does not stop the rest from working.
        let mut logs = Vec::new();
        let mut ignored = Vec::new();
        for (i, log) in doc.tlogs.iter().enumerate() {
            match log.parse(&format!("tlogs[{i}]")) {
                Ok(log) => logs.push(log),
                Err(TrustError(why)) => ignored.push(why),
            }
        }
        if certificate_authorities.is_empty() && logs.is_empty() {
            return Err(TrustError(
                "it holds no certificate authority and no transparency log".to_owned(),
            ));
        }
        Ok(TrustedRoot {
            fingerprint: format!(
                "sha256:{}",
                hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
            ),
            certificate_authorities,
            logs,
            timestamp_authorities,
            ignored,
        })
    }

    /// Why some of the document's logs were left out (logged when the root is loaded).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// `sha256:<hex>` of the document: names this root in verifier ids and messages.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The Fulcio certificate authorities.
    pub fn certificate_authorities(&self) -> &[CertificateAuthority] {
        &self.certificate_authorities
    }

    /// The transparency logs' keys.
    pub fn logs(&self) -> &[LogKey] {
        &self.logs
    }

    /// The log whose id is `log_id`.
    pub fn log(&self, log_id: &[u8]) -> Option<&LogKey> {
        self.logs.iter().find(|l| l.log_id == log_id)
    }

    /// The timestamp authorities.
    pub fn timestamp_authorities(&self) -> &[CertificateAuthority] {
        &self.timestamp_authorities
    }
}

// The document, as protobuf's JSON mapping writes it (camelCase fields, bytes in base64).

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    tlogs: Vec<LogDoc>,
    #[serde(default)]
    certificate_authorities: Vec<AuthorityDoc>,
    #[serde(default)]
    timestamp_authorities: Vec<AuthorityDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogDoc {
    #[serde(default)]
    base_url: String,
    public_key: KeyDoc,
    log_id: LogIdDoc,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyDoc {
    #[serde(default)]
    raw_bytes: Option<String>,
    #[serde(default)]
    key_details: Option<String>,
    #[serde(default)]
    valid_for: Option<RangeDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogIdDoc {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorityDoc {
    #[serde(default)]
    uri: String,
    cert_chain: ChainDoc,
    #[serde(default)]
    valid_for: Option<RangeDoc>,
}

/// A certificate chain, as trusted roots and bundles write it.
#[derive(Deserialize)]
pub(crate) struct ChainDoc {
    #[serde(default)]
    pub certificates: Vec<RawDoc>,
}

/// A certificate or key in base64 DER.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawDoc {
    pub raw_bytes: String,
}

#[derive(Deserialize)]
struct RangeDoc {
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

fn base64(text: &str, at: &str) -> Result<Vec<u8>, TrustError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| TrustError(format!("{at} is not base64: {e}")))
}

impl RangeDoc {
    fn parse(&self, at: &str) -> Result<Validity, TrustError> {
        let one = |t: &Option<String>, name: &str| {
            t.as_deref()
                .map(|t| {
                    t.parse::<jiff::Timestamp>()
                        .map(|t| t.as_second())
                        .map_err(|e| TrustError(format!("{at}.{name} {t:?} is not a time: {e}")))
                })
                .transpose()
        };
        Ok(Validity {
            start: one(&self.start, "start")?,
            end: one(&self.end, "end")?,
        })
    }
}

fn validity(range: &Option<RangeDoc>, at: &str) -> Result<Validity, TrustError> {
    range
        .as_ref()
        .map(|r| r.parse(&format!("{at}.validFor")))
        .transpose()
        .map(Option::unwrap_or_default)
}

impl AuthorityDoc {
    fn parse(&self, at: &str) -> Result<CertificateAuthority, TrustError> {
        if self.cert_chain.certificates.is_empty() {
            return Err(TrustError(format!("{at}.certChain holds no certificate")));
        }
        let chain = self
            .cert_chain
            .certificates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = format!("{at}.certChain.certificates[{i}]");
                let der = base64(&c.raw_bytes, &at)?;
                x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| TrustError(format!("{at} is not a certificate: {e}")))?;
                Ok(der)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertificateAuthority {
            uri: self.uri.clone(),
            chain,
            valid: validity(&self.valid_for, at)?,
        })
    }
}

impl LogDoc {
    fn parse(&self, at: &str) -> Result<LogKey, TrustError> {
        let raw = self
            .public_key
            .raw_bytes
            .as_deref()
            .ok_or_else(|| TrustError(format!("{at}.publicKey has no rawBytes")))?;
        let der = base64(raw, &format!("{at}.publicKey.rawBytes"))?;
        if let Some(details) = &self.public_key.key_details
            && !details.starts_with("PKIX_")
        {
            return Err(TrustError(format!(
                "{at}.publicKey is a {details} key; keys in PKIX form (SubjectPublicKeyInfo) are supported"
            )));
        }
        let key = PublicKey::from_spki_der(&der)
            .map_err(|e| TrustError(format!("{at}.publicKey: {e}")))?;
        Ok(LogKey {
            base_url: self.base_url.clone(),
            log_id: base64(&self.log_id.key_id, &format!("{at}.logId.keyId"))?,
            key,
            valid: validity(&self.public_key.valid_for, &format!("{at}.publicKey"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = include_str!("../../tests/data/sigstore/trusted_root.json");

    #[test]
    fn reads_the_test_authorities() {
        let root = TrustedRoot::from_json(ROOT.as_bytes()).unwrap();
        assert_eq!(root.certificate_authorities().len(), 1);
        assert_eq!(root.logs().len(), 1);
        assert_eq!(root.timestamp_authorities().len(), 1);
        assert_eq!(root.timestamp_authorities()[0].chain.len(), 2);
        let log = &root.logs()[0];
        assert_eq!(
            log.log_id,
            ring::digest::digest(&ring::digest::SHA256, &spki(ROOT)).as_ref()
        );
        assert!(root.log(&log.log_id).is_some());
        assert!(root.log(b"another").is_none());
        let ca = &root.certificate_authorities()[0];
        let start = ca.valid.start.unwrap();
        assert!(ca.valid.contains(start) && !ca.valid.contains(start - 1));
        assert!(ca.valid.contains(i64::MAX));
        assert!(root.fingerprint().starts_with("sha256:"));
    }

    fn spki(root: &str) -> Vec<u8> {
        let doc: serde_json::Value = serde_json::from_str(root).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(doc["tlogs"][0]["publicKey"]["rawBytes"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn bad_roots_say_why() {
        let doc: serde_json::Value = serde_json::from_str(ROOT).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut d = doc.clone();
            f(&mut d);
            serde_json::to_vec(&d).unwrap()
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "not a trusted root document"),
            (
                with(&|d| d["mediaType"] = "application/json".into()),
                "mediaType",
            ),
            (
                with(&|d| {
                    d["certificateAuthorities"][0]["certChain"]["certificates"][0]["rawBytes"] =
                        "AAAA".into()
                }),
                "certificateAuthorities[0].certChain.certificates[0] is not a certificate",
            ),
            (
                with(&|d| d["certificateAuthorities"][0]["validFor"]["start"] = "yesterday".into()),
                "certificateAuthorities[0].validFor.start \"yesterday\" is not a time",
            ),
            (
                with(&|d| {
                    d["certificateAuthorities"] = serde_json::json!([]);
                    d["tlogs"] = serde_json::json!([]);
                }),
                "no certificate authority",
            ),
            (vec![b' '; TRUSTED_ROOT_MAX_BYTES + 1], "bytes long"),
        ];
        for (bytes, want) in cases {
            let e = TrustedRoot::from_json(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
    }

    #[test]
    fn unusable_logs_are_left_out_with_the_reason() {
        let doc: serde_json::Value = serde_json::from_str(ROOT).unwrap();
        for (change, want) in [
            (
                ("rawBytes", "%%"),
                "tlogs[0].publicKey.rawBytes is not base64",
            ),
            (("keyDetails", "PKCS1_RSA_PKCS1V5"), "PKIX form"),
        ] {
            let mut d = doc.clone();
            d["tlogs"][0]["publicKey"][change.0] = change.1.into();
            let root = TrustedRoot::from_json(&serde_json::to_vec(&d).unwrap()).unwrap();
            assert!(root.logs().is_empty());
            assert!(root.ignored()[0].contains(want), "{:?}", root.ignored());
        }
    }

    /// Sigstore's public trusted root, as the `@sigstore/tuf` npm package ships it.
    #[test]
    fn reads_the_public_instance_root() {
        let root = TrustedRoot::from_json(include_bytes!(
            "../../tests/data/sigstore/public_trusted_root.json"
        ))
        .unwrap();
        assert!(root.ignored().is_empty(), "{:?}", root.ignored());
        assert_eq!(root.logs()[0].base_url, "https://rekor.sigstore.dev");
        let cas = root.certificate_authorities();
        assert_eq!(cas.len(), 2);
        // The first Fulcio root was retired at the end of 2022; the second has an intermediate.
        assert!(cas[0].valid.end.is_some());
        assert_eq!(cas[1].chain.len(), 2);
        assert_eq!(cas[1].intermediates().len(), 1);
    }

    #[test]
    fn validity_ranges() {
        let v = Validity {
            start: Some(10),
            end: Some(20),
        };
        assert!(!v.contains(9) && v.contains(10) && v.contains(20) && !v.contains(21));
        assert_eq!(
            v.to_string(),
            "from 1970-01-01T00:00:10Z to 1970-01-01T00:00:20Z"
        );
        assert!(Validity::default().contains(0));
    }
}
