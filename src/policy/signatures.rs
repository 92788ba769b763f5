//! `spec.verifySignatures`, compiled: each entry's image patterns and the verifier its
//! signatures must satisfy, with the public keys parsed (from the policy, or from a Secret the
//! caller has read) once per policy version, never per request.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::compile::PatternList;
use super::crd::{KeyVerifier, SignatureEntry, TransparencyLog};
use super::pattern::{PATTERN_HELP, Pattern};
use crate::evidence::EntryCheck;
use crate::reference::Reference;
use crate::signature::{PublicKey, Verifier};

/// The most entries in one policy (as the CRD's `maxItems`): key rotation needs two or three.
pub const MAX_ENTRIES: usize = 32;

/// One compiled `verifySignatures` entry.
#[derive(Debug, Clone)]
pub struct SignatureRule {
    /// The entry's name.
    pub name: String,
    /// `images`; empty means every image the policy governs.
    pub images: PatternList,
    /// What to verify, keyed `POLICY/NAME` (the key of its outcome in the evidence).
    pub check: EntryCheck,
}

impl SignatureRule {
    /// Whether this entry is for `reference` (an image its policy governs).
    ///
    /// Entry patterns are matched one at a time here, and only for images that a policy with
    /// signature entries governs: the snapshot's set matcher decides that first, so images
    /// outside such policies never come this far.
    pub fn covers(&self, reference: &Reference) -> bool {
        self.images.patterns.is_empty()
            || self.images.matches_all()
            || self.images.patterns.iter().any(|p| p.matches(reference))
    }
}

/// The Secrets that `secretRef` keys name, as the caller could read them: the operator from its
/// own namespace, `check` and `serve` from `--key-secret-dir`. Plain data, so compiling stays a
/// pure function of the policy and this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeys {
    /// Per Secret name, its data (key → UTF-8 text), or why it cannot be had.
    secrets: BTreeMap<String, Result<BTreeMap<String, String>, String>>,
    /// Why a Secret that is not in `secrets` cannot be read.
    unlisted: String,
}

impl Default for SecretKeys {
    fn default() -> Self {
        SecretKeys::none(
            "this command reads no Secrets from a cluster; give the key with --key-secret-dir DIR (as the file DIR/SECRET/KEY), or write it in publicKey",
        )
    }
}

impl SecretKeys {
    /// No Secret can be read, for the reason given.
    pub fn none(why: impl Into<String>) -> SecretKeys {
        SecretKeys {
            secrets: BTreeMap::new(),
            unlisted: why.into(),
        }
    }

    /// Records a Secret's data, or why it cannot be had (absent, not readable, …).
    pub fn insert(&mut self, name: &str, data: Result<BTreeMap<String, String>, String>) {
        self.secrets.insert(name.to_owned(), data);
    }

    /// The names of the Secrets known, readable or not.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    /// The text under `key` in the Secret `name`, or a sentence saying why there is none.
    pub fn get(&self, name: &str, key: &str) -> Result<&str, String> {
        match self.secrets.get(name) {
            None => Err(format!(
                "the Secret {name:?} cannot be read: {}",
                self.unlisted
            )),
            Some(Err(why)) => Err(format!("the Secret {name:?} cannot be read: {why}")),
            Some(Ok(data)) => data.get(key).map(String::as_str).ok_or_else(|| {
                let keys: Vec<&str> = data.keys().map(String::as_str).collect();
                format!(
                    "the Secret {name:?} has no key {key:?} (its keys: {})",
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    }
                )
            }),
        }
    }
}

/// How far compiling goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Resolve<'a> {
    /// Everything: keys from the policy or from these Secrets; unsupported settings are errors.
    Fully(&'a SecretKeys),
    /// Only what the policy says itself (the admission check of an ImagePolicy): a Secret is
    /// read, and support for keyless entries is judged, when the policy is put in force.
    /// Entries that cannot be resolved here are left out of the result, which is never used.
    Shape,
}

/// Compiles `spec.verifySignatures`; an error is `(field path, message)`.
pub(super) fn compile_entries(
    policy: &str,
    entries: &[SignatureEntry],
    resolve: Resolve<'_>,
) -> Result<Vec<SignatureRule>, (String, String)> {
    if entries.len() > MAX_ENTRIES {
        return Err((
            "spec.verifySignatures".into(),
            format!(
                "{} entries; at most {MAX_ENTRIES} are allowed",
                entries.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("spec.verifySignatures[{i}]");
        let name = &entry.name;
        if !valid_name(name) {
            return Err((
                format!("{at}.name"),
                format!(
                    "{name:?} is not a valid entry name; use 1 to 63 lower-case letters, digits and `-`, e.g. `release`"
                ),
            ));
        }
        if entries[..i].iter().any(|e| e.name == *name) {
            return Err((
                format!("{at}.name"),
                format!("another entry is already named {name:?}; entry names must be unique"),
            ));
        }
        let images = entry_patterns(&at, entry.images.as_deref())?;
        let verifier = match (&entry.key, &entry.keyless) {
            (Some(key), None) => {
                if entry.transparency_log == Some(TransparencyLog::Require)
                    && matches!(resolve, Resolve::Fully(_))
                {
                    return Err((
                        format!("{at}.transparencyLog"),
                        "Require is not supported with key entries by this version of imagegate yet; set Skip (or omit it) to verify the signature by the key alone".into(),
                    ));
                }
                match key_verifier(&at, key, resolve)? {
                    Some(v) => v,
                    None => continue,
                }
            }
            (None, Some(keyless)) => {
                for (field, regex) in [
                    ("issuerRegExp", &keyless.issuer_reg_exp),
                    ("subjectRegExp", &keyless.subject_reg_exp),
                ] {
                    if let Some(source) = regex {
                        anchored_regex(source).map_err(|e| {
                            (
                                format!("{at}.keyless.{field}"),
                                format!("invalid regular expression {source:?}: {e}"),
                            )
                        })?;
                    }
                }
                if keyless.issuer.is_some() == keyless.issuer_reg_exp.is_some() {
                    return Err((
                        format!("{at}.keyless"),
                        "set exactly one of issuer and issuerRegExp".into(),
                    ));
                }
                if keyless.subject.is_some() == keyless.subject_reg_exp.is_some() {
                    return Err((
                        format!("{at}.keyless"),
                        "set exactly one of subject and subjectRegExp".into(),
                    ));
                }
                match resolve {
                    Resolve::Shape => continue,
                    Resolve::Fully(_) => {
                        return Err((
                            format!("{at}.keyless"),
                            "keyless verification is not supported by this version of imagegate yet, so this policy is not put in force (it would otherwise pass unverified images); use a key entry until it is".into(),
                        ));
                    }
                }
            }
            _ => {
                return Err((
                    at,
                    "set exactly one of key and keyless in each entry".into(),
                ));
            }
        };
        out.push(SignatureRule {
            name: name.clone(),
            images,
            check: EntryCheck {
                entry: format!("{policy}/{name}"),
                verifier: Arc::new(verifier),
                transparency_log: entry.transparency_log.unwrap_or(TransparencyLog::Skip),
            },
        });
    }
    Ok(out)
}

/// `[a-z0-9-]{1,63}`, as the CRD says.
fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn entry_patterns(at: &str, list: Option<&[String]>) -> Result<PatternList, (String, String)> {
    let Some(list) = list else {
        return Ok(PatternList::default());
    };
    if list.is_empty() {
        return Err((
            format!("{at}.images"),
            "an empty list would make this entry govern no image; omit images for every image the policy governs".into(),
        ));
    }
    let mut out = PatternList::default();
    for (j, source) in list.iter().enumerate() {
        let p = Pattern::parse(source).map_err(|e| {
            (
                format!("{at}.images[{j}]"),
                format!("invalid pattern {source:?}: {e}; {PATTERN_HELP}"),
            )
        })?;
        out.patterns.push(p);
    }
    Ok(out)
}

/// The verifier of a `key` entry; `None` when it names a Secret and only the shape is checked.
fn key_verifier(
    at: &str,
    key: &KeyVerifier,
    resolve: Resolve<'_>,
) -> Result<Option<Verifier>, (String, String)> {
    let (field, pem) = match (&key.public_key, &key.secret_ref) {
        (Some(pem), None) => (format!("{at}.key.publicKey"), pem.as_str()),
        (None, Some(secret)) => {
            let field = format!("{at}.key.secretRef");
            if secret.name.is_empty() || secret.key.is_empty() {
                return Err((field, "name and key must both be set".into()));
            }
            match resolve {
                Resolve::Shape => return Ok(None),
                Resolve::Fully(secrets) => {
                    let pem = secrets
                        .get(&secret.name, &secret.key)
                        .map_err(|why| (field.clone(), why))?;
                    (field, pem)
                }
            }
        }
        _ => {
            return Err((
                format!("{at}.key"),
                "set exactly one of publicKey and secretRef".into(),
            ));
        }
    };
    let public =
        PublicKey::from_pem(pem).map_err(|e| (field, format!("not a usable public key: {e}")))?;
    Ok(Some(Verifier::key(public)))
}

/// The largest compiled identity regex, as for break-glass tickets.
const IDENTITY_REGEX_SIZE_LIMIT: usize = 64 * 1024;

fn anchored_regex(source: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(IDENTITY_REGEX_SIZE_LIMIT)
        .build()
}

/// Public keys for tests (their private halves were not kept).
#[cfg(test)]
pub(crate) mod test_keys {
    /// ECDSA P-256.
    pub(crate) const P256: &str = include_str!("../../tests/data/keys/p256.pub");
    /// Ed25519.
    pub(crate) const ED25519: &str = include_str!("../../tests/data/keys/ed25519.pub");
}

#[cfg(test)]
mod tests {
    use super::test_keys::{ED25519, P256};
    use super::*;
    use crate::policy::{ImagePolicy, compile, compile_with, validate};

    fn policy(entries: &str) -> ImagePolicy {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: prod}}\nspec:\n  verifySignatures:\n{entries}"
        ))
        .unwrap()
    }

    fn key_entry(name: &str, pem: &str) -> String {
        let pem = pem.replace('\n', "\n          ");
        format!("  - name: {name}\n    key:\n      publicKey: |\n          {pem}\n")
    }

    #[test]
    fn key_entries_compile_with_their_defaults() {
        let p = policy(&format!(
            "{}{}    images: ['registry.corp.example/**']\n",
            key_entry("release", P256),
            key_entry("ed", ED25519)
        ));
        let c = compile(&p).unwrap();
        assert_eq!(c.signatures.len(), 2);
        let release = &c.signatures[0];
        assert_eq!(release.name, "release");
        assert_eq!(release.check.entry, "prod/release");
        assert_eq!(release.check.transparency_log, TransparencyLog::Skip);
        assert!(
            release.images.patterns.is_empty(),
            "default: every governed image"
        );
        let any = Reference::parse("quay.io/x/y:1").unwrap();
        assert!(release.covers(&any));
        let ed = &c.signatures[1];
        assert!(!ed.covers(&any));
        assert!(ed.covers(&Reference::parse("registry.corp.example/team/app:1").unwrap()));
        assert_ne!(release.check.verifier.id(), ed.check.verifier.id());
    }

    #[test]
    fn a_policy_with_only_signature_entries_has_a_rule_and_an_empty_list_does_not() {
        assert!(compile(&policy(&key_entry("release", P256))).is_ok());
        let empty: ImagePolicy =
            serde_saphyr::from_str("metadata: {name: p}\nspec: {verifySignatures: []}").unwrap();
        let e = compile(&empty).unwrap_err();
        assert_eq!(e.field, "spec");
        assert!(e.message.contains("verifySignatures"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad_key = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n";
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("{}{}", key_entry("a", P256), key_entry("b", bad_key)),
                "spec.verifySignatures[1].key.publicKey",
                "not a usable public key",
            ),
            (
                key_entry("a", "hello"),
                "spec.verifySignatures[0].key.publicKey",
                "PUBLIC KEY",
            ),
            (
                format!("{}{}", key_entry("a", P256), key_entry("a", P256)),
                "spec.verifySignatures[1].name",
                "unique",
            ),
            (
                key_entry("Release", P256),
                "spec.verifySignatures[0].name",
                "lower-case",
            ),
            (
                format!("{}    images: []\n", key_entry("a", P256)),
                "spec.verifySignatures[0].images",
                "omit images",
            ),
            (
                format!("{}    images: [nginx]\n", key_entry("a", P256)),
                "spec.verifySignatures[0].images[0]",
                "registry host",
            ),
            (
                "  - name: a\n".to_owned(),
                "spec.verifySignatures[0]",
                "exactly one of key and keyless",
            ),
            (
                "  - name: a\n    key: {}\n".to_owned(),
                "spec.verifySignatures[0].key",
                "exactly one of publicKey and secretRef",
            ),
            (
                "  - name: a\n    keyless: {issuer: https://x, subjectRegExp: '('}\n".to_owned(),
                "spec.verifySignatures[0].keyless.subjectRegExp",
                "invalid regular expression",
            ),
            (
                "  - name: a\n    keyless: {subject: s}\n".to_owned(),
                "spec.verifySignatures[0].keyless",
                "issuer and issuerRegExp",
            ),
        ];
        for (entries, field, says) in cases {
            let p = policy(&entries);
            for e in [compile(&p).unwrap_err(), validate(&p).unwrap_err()] {
                assert_eq!(e.field, field, "{entries}");
                assert!(e.message.contains(says), "{entries}: {e}");
            }
        }
    }

    #[test]
    fn keyless_and_require_are_stored_but_never_put_in_force() {
        let keyless = policy(
            "  - name: ci\n    keyless:\n      issuer: https://token.actions.githubusercontent.com\n      subjectRegExp: '^https://github\\.com/corp/.+$'\n",
        );
        assert!(validate(&keyless).is_ok(), "the API accepts it");
        let e = compile(&keyless).unwrap_err();
        assert_eq!(e.field, "spec.verifySignatures[0].keyless");
        assert!(e.message.contains("not supported"), "{e}");

        let require = policy(&format!(
            "{}    transparencyLog: Require\n",
            key_entry("release", P256)
        ));
        assert!(validate(&require).is_ok());
        let e = compile(&require).unwrap_err();
        assert_eq!(e.field, "spec.verifySignatures[0].transparencyLog");
    }

    #[test]
    fn secret_keys_are_read_from_what_the_caller_read() {
        let p = policy(
            "  - name: release\n    key:\n      secretRef: {name: cosign, key: cosign.pub}\n",
        );
        assert!(validate(&p).is_ok(), "the Secret is read when put in force");
        let e = compile(&p).unwrap_err();
        assert_eq!(e.field, "spec.verifySignatures[0].key.secretRef");
        assert!(e.message.contains("--key-secret-dir"), "{e}");

        let mut secrets = SecretKeys::none("imagegate may read only the Secrets a, b");
        let e = compile_with(&p, &secrets).unwrap_err();
        assert!(
            e.message
                .contains("the Secret \"cosign\" cannot be read: imagegate may read only"),
            "{e}"
        );
        secrets.insert(
            "cosign",
            Err("it does not exist in namespace \"gate\"".into()),
        );
        let e = compile_with(&p, &secrets).unwrap_err();
        assert!(e.message.contains("does not exist"), "{e}");
        secrets.insert("cosign", Ok([("other".to_owned(), P256.to_owned())].into()));
        let e = compile_with(&p, &secrets).unwrap_err();
        assert!(
            e.message
                .contains("has no key \"cosign.pub\" (its keys: other)"),
            "{e}"
        );
        secrets.insert(
            "cosign",
            Ok([("cosign.pub".to_owned(), "junk".to_owned())].into()),
        );
        let e = compile_with(&p, &secrets).unwrap_err();
        assert!(e.message.contains("not a usable public key"), "{e}");
        secrets.insert(
            "cosign",
            Ok([("cosign.pub".to_owned(), P256.to_owned())].into()),
        );
        let c = compile_with(&p, &secrets).unwrap();
        let inline = compile(&policy(&key_entry("release", P256))).unwrap();
        assert_eq!(
            c.signatures[0].check.verifier.id(),
            inline.signatures[0].check.verifier.id(),
            "the same key from a Secret or written in the policy"
        );
    }
}
