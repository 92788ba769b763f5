//! Keyless verification: who may sign (an OIDC issuer and subject, exact or by whole-value
//! regex), and the judgement of one signature as a whole — the signature verifies under its
//! certificate's key (or the entry's key), the certificate chains to a Fulcio CA of the trusted
//! root and was valid when the signature was made, the transparency-log entry (when required)
//! is the entry of this very signature, and the certificate's identity is the one wanted.

use std::fmt;
use std::sync::Arc;

use super::fulcio::{Certificate, shown};
use super::rekor::{self, Content, LogEntry, Signer};
use super::trust::{TrustedRoot, time};
use super::{Rejection, TransparencyLog, Verifier, timestamp};

/// The most transparency-log entries and timestamps one signature may carry: Sigstore clients
/// write one of each; a handful more bounds the work a crafted signature can cause.
pub const MAX_PROOFS: usize = 8;
/// The largest compiled size of an `issuerRegExp` or `subjectRegExp`: ample for any identity
/// pattern, and it bounds what a policy can make every replica compile.
pub const REGEX_SIZE_LIMIT: usize = 1024 * 1024;

/// How an issuer or subject must match.
#[derive(Clone)]
pub enum Match {
    /// Exactly this value.
    Exact(String),
    /// A Rust regex that must match the whole value.
    Regex { source: String, regex: regex::Regex },
}

impl Match {
    /// A regex that must match the whole value (it is anchored at both ends).
    pub fn regex(source: &str) -> Result<Match, regex::Error> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Match::Regex {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Match::Exact(v) => v == value,
            Match::Regex { regex, .. } => regex.is_match(value),
        }
    }
}

impl PartialEq for Match {
    fn eq(&self, other: &Match) -> bool {
        match (self, other) {
            (Match::Exact(a), Match::Exact(b)) => a == b,
            (Match::Regex { source: a, .. }, Match::Regex { source: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Match {}

impl fmt::Debug for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Exact(v) => f.write_str(&shown(v)),
            Match::Regex { source, .. } => write!(f, "matching /{source}/"),
        }
    }
}

/// A `keyless` entry, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeylessVerifier {
    pub(super) issuer: Match,
    pub(super) subject: Match,
    pub(super) root: Arc<TrustedRoot>,
    pub(super) transparency_log: TransparencyLog,
    pub(super) id: String,
}

impl KeylessVerifier {
    pub(super) fn new(
        issuer: Match,
        subject: Match,
        root: Arc<TrustedRoot>,
        transparency_log: TransparencyLog,
    ) -> KeylessVerifier {
        let part = |m: &Match| match m {
            Match::Exact(v) => serde_json::json!({ "exact": v }),
            Match::Regex { source, .. } => serde_json::json!({ "regex": source }),
        };
        let id = format!(
            "keyless:{}",
            serde_json::json!({
                "issuer": part(&issuer),
                "subject": part(&subject),
                "root": root.fingerprint(),
                "transparencyLog": transparency_log,
            })
        );
        KeylessVerifier {
            issuer,
            subject,
            root,
            transparency_log,
            id,
        }
    }

    /// The identity wanted, for messages.
    pub fn wanted(&self) -> String {
        format!("subject {} from issuer {}", self.subject, self.issuer)
    }

    /// The trusted root.
    pub fn trusted_root(&self) -> &TrustedRoot {
        &self.root
    }

    /// Whether the certificate's identity is the one wanted: the issuer matches, and one of its
    /// subjects does.
    fn accepts(&self, cert: &Certificate) -> bool {
        let identity = cert.identity();
        identity
            .issuer
            .as_deref()
            .is_some_and(|i| self.issuer.matches(i))
            && identity.subjects.iter().any(|s| self.subject.matches(s))
    }
}

/// One signature, as a format carries it, before any check.
pub(crate) struct Material<'a> {
    /// The exact bytes the signature is over.
    pub signed: &'a [u8],
    pub signature: &'a [u8],
    /// The signing certificate (DER), when the signature came with one.
    pub certificate: Option<Vec<u8>>,
    /// Further certificates it came with (a chain toward the CA).
    pub chain: Vec<Vec<u8>>,
    pub log_entries: Vec<LogEntry>,
    /// RFC 3161 timestamps over the signature.
    pub timestamps: Vec<Vec<u8>>,
    /// What a log entry of this signature records about the content.
    pub content: Content<'a>,
}

/// Judges one signature as a whole under `verifier`, `now` being the current Unix time (used
/// only when nothing proves when a keyless signature was made). Returns who signed.
pub(crate) fn judge(m: &Material<'_>, verifier: &Verifier, now: i64) -> Result<String, Rejection> {
    if m.log_entries.len() > MAX_PROOFS || m.timestamps.len() > MAX_PROOFS {
        return Err(Rejection::Encoding(format!(
            "the signature carries {} log entries and {} timestamps, more than {MAX_PROOFS} of either",
            m.log_entries.len(),
            m.timestamps.len()
        )));
    }
    match verifier {
        Verifier::Key(k) => {
            if !k.key.verify(m.signed, m.signature) {
                return Err(Rejection::Signature(format!(
                    "the key {}",
                    k.key.fingerprint()
                )));
            }
            if let Some(root) = &k.log {
                let signer = Signer {
                    key: &k.key,
                    certificate: None,
                };
                logged(m, root, &signer)?;
            }
            Ok(k.key.fingerprint().to_owned())
        }
        Verifier::Keyless(k) => judge_keyless(m, k, now),
    }
}

fn judge_keyless(m: &Material<'_>, k: &KeylessVerifier, now: i64) -> Result<String, Rejection> {
    let der = m.certificate.clone().ok_or_else(|| {
        Rejection::Certificate(
            "the signature carries no certificate (a keyless entry needs a Fulcio certificate)"
                .to_owned(),
        )
    })?;
    let cert = Certificate::from_der(der).map_err(Rejection::Certificate)?;
    let who = cert.identity().to_string();
    if !cert.allows_signing() {
        return Err(Rejection::Certificate(format!(
            "the certificate of {who} does not allow digital signatures (key usage)"
        )));
    }
    if !cert.key().verify(m.signed, m.signature) {
        return Err(Rejection::Signature(format!("the certificate of {who}")));
    }
    let signer = Signer {
        key: cert.key(),
        certificate: Some(cert.der()),
    };

    // When the signature was made: the log's signed entry timestamps, and timestamps.
    let mut times: Vec<(i64, &str)> = Vec::new();
    if k.transparency_log == TransparencyLog::Require {
        for t in logged(m, &k.root, &signer)? {
            times.push((t, "its transparency-log entry"));
        }
    }
    for ts in &m.timestamps {
        let t = timestamp::verify(ts, m.signature, &k.root)
            .map_err(|e| Rejection::Timestamp(format!("{e} (signed by {who})")))?;
        times.push((t, "its timestamp"));
    }
    if times.is_empty() {
        if k.transparency_log == TransparencyLog::Require {
            return Err(Rejection::TransparencyLog(format!(
                "the transparency-log entry of the signature by {who} proves inclusion but not when it was made (no signed entry timestamp), and no timestamp does"
            )));
        }
        if !cert.valid_at(now) {
            return Err(Rejection::Certificate(format!(
                "the certificate of {who} was valid {}, and nothing proves the signature was made then (no timestamp; the transparency log is not consulted with transparencyLog: Skip)",
                cert.validity()
            )));
        }
        times.push((now, "now"));
    }
    for &(at, by) in &times {
        if !cert.valid_at(at) {
            return Err(Rejection::Certificate(format!(
                "the certificate of {who} was valid {}, but the signature was made at {} ({by})",
                cert.validity(),
                time(at)
            )));
        }
        cert.issuer_at(k.root.certificate_authorities(), &m.chain, at)
            .map_err(|e| Rejection::Certificate(format!("{e} (signed by {who})")))?;
    }
    if !k.accepts(&cert) {
        return Err(Rejection::Identity {
            found: who,
            wanted: k.wanted(),
        });
    }
    Ok(who)
}

/// Verifies that the signature has at least one transparency-log entry and that every entry it
/// carries is a verified entry of this very signature; returns the times the entries prove.
fn logged(
    m: &Material<'_>,
    root: &TrustedRoot,
    signer: &Signer<'_>,
) -> Result<Vec<i64>, Rejection> {
    if m.log_entries.is_empty() {
        return Err(Rejection::TransparencyLog(
            "the signature has no transparency-log entry (transparencyLog: Require)".to_owned(),
        ));
    }
    let mut times = Vec::new();
    for entry in &m.log_entries {
        let proven = rekor::verify(entry, root, m.signature, signer, &m.content).map_err(|e| {
            Rejection::TransparencyLog(format!("log index {}: {e}", entry.log_index))
        })?;
        times.extend(proven.time);
    }
    Ok(times)
}
