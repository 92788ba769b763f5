//! `spec.verifySignatures`, compiled: each entry's image patterns and the verifier its
//! signatures must satisfy, with the public keys parsed (from the policy, or from a Secret the
//! caller has read) and the trusted roots read (from a ConfigMap the caller has read, or the
//! one given at start) once per policy version, never per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::compile::PatternList;
use super::crd::{KeyVerifier, KeylessVerifier, SignatureEntry, TransparencyLog};
use crate::evidence::EntryCheck;
use crate::reference::Reference;
use crate::signature::{Match, PublicKey, TrustedRoot, Verifier};

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
    /// Whether this entry is for `reference` (an image its policy governs), matching its
    /// patterns one at a time.
    ///
    /// Decisions do not call this: a snapshot files every entry's patterns in its matcher with
    /// the other lists, and [`ImageMatches::signature_entries`](super::ImageMatches) says which
    /// entries of a policy are for an image, however many entries and policies there are.
    pub fn covers(&self, reference: &Reference) -> bool {
        self.covers_all() || self.images.patterns.iter().any(|p| p.matches(reference))
    }

    /// Whether this entry is for every image its policy governs (`images` unset, or `**`).
    pub fn covers_all(&self) -> bool {
        self.images.patterns.is_empty() || self.images.matches_all()
    }
}

/// Equal when they verify the same images alike: the verifier is compared by what it accepts.
impl PartialEq for SignatureRule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.images == other.images
            && self.check.entry == other.check.entry
            && self.check.verifier == other.check.verifier
            && self.check.transparency_log == other.check.transparency_log
    }
}

/// The keys and verifiers compiled so far: entries that name the same key (one release key
/// across many generated policies) parse it once, and entries whose verifiers accept the same
/// signatures share one verifier instead of holding it once per entry.
#[derive(Debug, Default)]
pub(super) struct Verifiers {
    /// Keys parsed, by their PEM text.
    keys: HashMap<String, PublicKey>,
    /// Verifiers, by what they accept ([`Verifier::id`]).
    by_id: HashMap<String, Arc<Verifier>>,
}

impl Verifiers {
    /// The key of `pem`, parsed once.
    fn key(&mut self, pem: &str) -> Result<PublicKey, String> {
        if let Some(key) = self.keys.get(pem) {
            return Ok(key.clone());
        }
        let key = PublicKey::from_pem(pem).map_err(|e| format!("not a usable public key: {e}"))?;
        self.keys.insert(pem.to_owned(), key.clone());
        Ok(key)
    }

    /// `verifier`, or the one compiled before that accepts exactly the same signatures.
    fn share(&mut self, verifier: Verifier) -> Arc<Verifier> {
        Arc::clone(
            self.by_id
                .entry(verifier.id().to_owned())
                .or_insert_with(|| Arc::new(verifier)),
        )
    }
}

/// What policies refer to outside themselves, as the caller could read it: the Secrets that
/// `secretRef` keys name (the operator reads them from its own namespace, `check` and `serve`
/// from `--key-secret-dir`), and the Sigstore trusted roots ([`TrustedRoots`]). Plain data, so
/// compiling stays a pure function of the policy and this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeys {
    /// Per Secret name, its data (key → UTF-8 text), or why it cannot be had.
    secrets: BTreeMap<String, Result<BTreeMap<String, String>, String>>,
    /// Why a Secret that is not in `secrets` cannot be read.
    unlisted: String,
    /// The trusted roots keyless entries (and key entries with `transparencyLog: Require`)
    /// verify against.
    roots: TrustedRoots,
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
            roots: TrustedRoots::default(),
        }
    }

    /// These Secrets, with `roots` as the trusted roots.
    pub fn with_trusted_roots(mut self, roots: TrustedRoots) -> SecretKeys {
        self.roots = roots;
        self
    }

    /// The trusted roots.
    pub fn trusted_roots(&self) -> &TrustedRoots {
        &self.roots
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

/// One ConfigMap's trusted roots: per key, the root read, or why it does not read.
type RootsByKey = BTreeMap<String, Result<Arc<TrustedRoot>, String>>;

/// The Sigstore trusted roots, as the caller could read them: the ConfigMaps that keyless
/// entries name in `trustedRoot.configMapRef` (the operator reads them from its own namespace,
/// `check` and `serve` from `--trusted-root-dir`), each document read once when it is read,
/// not per policy; and the root of `--sigstore-trusted-root`, for entries that name none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedRoots {
    /// Per ConfigMap name, its roots by key, or why it cannot be had.
    config_maps: BTreeMap<String, Result<RootsByKey, String>>,
    /// Why a ConfigMap that is not in `config_maps` cannot be read.
    unlisted: String,
    /// The root of `--sigstore-trusted-root`, or why there is none.
    default: Result<Arc<TrustedRoot>, String>,
}

impl Default for TrustedRoots {
    fn default() -> Self {
        TrustedRoots::none(
            "this command reads no ConfigMaps from a cluster; give the trusted root with --trusted-root-dir DIR (as the file DIR/CONFIGMAP/KEY)",
            "no trusted root was given at start (--sigstore-trusted-root FILE)",
        )
    }
}

impl TrustedRoots {
    /// No ConfigMap can be read (`unlisted` says why) and no default root is given
    /// (`no_default` says why).
    pub fn none(unlisted: impl Into<String>, no_default: impl Into<String>) -> TrustedRoots {
        TrustedRoots {
            config_maps: BTreeMap::new(),
            unlisted: unlisted.into(),
            default: Err(no_default.into()),
        }
    }

    /// Uses `root` for entries that name no trusted root (`--sigstore-trusted-root`).
    pub fn set_default(&mut self, root: Arc<TrustedRoot>) {
        self.default = Ok(root);
    }

    /// Records a ConfigMap's data (key → text), each key read as a trusted root, or why the
    /// ConfigMap cannot be had.
    pub fn insert(&mut self, name: &str, data: Result<BTreeMap<String, String>, String>) {
        let roots = data.map(|data| {
            data.into_iter()
                .map(|(key, text)| {
                    let root = TrustedRoot::from_json(text.as_bytes())
                        .map(Arc::new)
                        .map_err(|e| e.to_string());
                    (key, root)
                })
                .collect()
        });
        self.config_maps.insert(name.to_owned(), roots);
    }

    /// The trusted root of `--sigstore-trusted-root`, or a sentence saying why there is none.
    pub fn default_root(&self) -> Result<&Arc<TrustedRoot>, &str> {
        self.default.as_ref().map_err(String::as_str)
    }

    /// The trusted root under `key` in the ConfigMap `name`, or a sentence saying why there is
    /// none.
    pub fn get(&self, name: &str, key: &str) -> Result<&Arc<TrustedRoot>, String> {
        match self.config_maps.get(name) {
            None => Err(format!(
                "the ConfigMap {name:?} cannot be read: {}",
                self.unlisted
            )),
            Some(Err(why)) => Err(format!("the ConfigMap {name:?} cannot be read: {why}")),
            Some(Ok(roots)) => match roots.get(key) {
                Some(Ok(root)) => Ok(root),
                Some(Err(why)) => Err(format!("the key {key:?} of the ConfigMap {name:?}: {why}")),
                None => {
                    let keys: Vec<&str> = roots.keys().map(String::as_str).collect();
                    Err(format!(
                        "the ConfigMap {name:?} has no key {key:?} (its keys: {})",
                        if keys.is_empty() {
                            "none".to_owned()
                        } else {
                            keys.join(", ")
                        }
                    ))
                }
            },
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
    verifiers: &mut Verifiers,
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
                let Some(public) = public_key(&at, key, resolve, verifiers)? else {
                    continue;
                };
                match (entry.transparency_log, resolve) {
                    (Some(TransparencyLog::Require), Resolve::Fully(refs)) => {
                        let root = refs.roots.default_root().map_err(|why| {
                            (
                                format!("{at}.transparencyLog"),
                                format!(
                                    "Require verifies the signature's transparency-log entry against the logs of the trusted root of --sigstore-trusted-root, and {why}; give it, or set Skip to verify the signature by the key alone"
                                ),
                            )
                        })?;
                        if root.logs().is_empty() {
                            return Err((
                                format!("{at}.transparencyLog"),
                                format!(
                                    "the trusted root of --sigstore-trusted-root ({}) holds no usable transparency-log key, so no entry could verify",
                                    root.fingerprint()
                                ),
                            ));
                        }
                        Verifier::key_in_log(public, root.clone())
                    }
                    (Some(TransparencyLog::Require), Resolve::Shape) => continue,
                    _ => Verifier::key(public),
                }
            }
            (None, Some(keyless)) => {
                match keyless_verifier(&at, keyless, entry.transparency_log, resolve)? {
                    Some(v) => v,
                    None => continue,
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
                transparency_log: verifier.transparency_log(),
                verifier: verifiers.share(verifier),
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
    PatternList::parse(&format!("{at}.images"), list, "entry")
}

/// The public key of a `key` entry; `None` when it names a Secret and only the shape is checked.
fn public_key(
    at: &str,
    key: &KeyVerifier,
    resolve: Resolve<'_>,
    verifiers: &mut Verifiers,
) -> Result<Option<PublicKey>, (String, String)> {
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
    verifiers.key(pem).map(Some).map_err(|why| (field, why))
}

/// The verifier of a `keyless` entry; `None` when only the shape is checked.
fn keyless_verifier(
    at: &str,
    keyless: &KeylessVerifier,
    transparency_log: Option<TransparencyLog>,
    resolve: Resolve<'_>,
) -> Result<Option<Verifier>, (String, String)> {
    let issuer = identity(at, "issuer", &keyless.issuer, &keyless.issuer_reg_exp)?;
    let subject = identity(at, "subject", &keyless.subject, &keyless.subject_reg_exp)?;
    if let Some(r) = &keyless.trusted_root
        && (r.config_map_ref.name.is_empty() || r.config_map_ref.key.is_empty())
    {
        return Err((
            format!("{at}.keyless.trustedRoot.configMapRef"),
            "name and key must both be set".into(),
        ));
    }
    let Resolve::Fully(refs) = resolve else {
        return Ok(None);
    };
    let (field, root) = match &keyless.trusted_root {
        Some(r) => {
            let field = format!("{at}.keyless.trustedRoot.configMapRef");
            let root = refs
                .roots
                .get(&r.config_map_ref.name, &r.config_map_ref.key)
                .map_err(|why| (field.clone(), why))?;
            (field, root)
        }
        None => {
            let field = format!("{at}.keyless.trustedRoot");
            let root = refs.roots.default_root().map_err(|why| {
                (
                    field.clone(),
                    format!(
                        "a keyless entry needs a Sigstore trusted root, and {why}: name a ConfigMap holding trusted_root.json in trustedRoot.configMapRef, or start imagegate with --sigstore-trusted-root FILE (Sigstore's public instance; Helm value signatures.sigstoreTrustedRoot)"
                    ),
                )
            })?;
            (field, root)
        }
    };
    if root.certificate_authorities().is_empty() {
        return Err((
            field,
            format!(
                "the trusted root {} holds no Fulcio certificate authority, so no keyless signature could verify",
                root.fingerprint()
            ),
        ));
    }
    let transparency_log = transparency_log.unwrap_or(TransparencyLog::Require);
    if transparency_log == TransparencyLog::Require && root.logs().is_empty() {
        return Err((
            format!("{at}.transparencyLog"),
            format!(
                "Require (the default with keyless) needs a transparency log, and the trusted root {} holds no usable log key",
                root.fingerprint()
            ),
        ));
    }
    Ok(Some(Verifier::keyless(
        issuer,
        subject,
        root.clone(),
        transparency_log,
    )))
}

/// The issuer or subject a keyless entry asks for: exactly one of the value and the regex.
fn identity(
    at: &str,
    name: &str,
    exact: &Option<String>,
    regex: &Option<String>,
) -> Result<Match, (String, String)> {
    match (exact, regex) {
        (Some(value), None) => Ok(Match::Exact(value.clone())),
        (None, Some(source)) => Match::regex(source).map_err(|e| {
            (
                format!("{at}.keyless.{name}RegExp"),
                format!(
                    "invalid regular expression {source:?}: {e}; it must match the whole value, e.g. `https://github\\.com/corp/.+`"
                ),
            )
        }),
        _ => Err((
            format!("{at}.keyless"),
            format!("set exactly one of {name} and {name}RegExp"),
        )),
    }
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

    /// The trusted root of the test authorities (`tests/data/sigstore/`).
    const ROOT: &str = include_str!("../../tests/data/sigstore/trusted_root.json");

    fn keyless_entry(extra: &str) -> ImagePolicy {
        policy(&format!(
            "  - name: ci\n    keyless:\n      issuer: https://token.actions.githubusercontent.com\n      subjectRegExp: 'https://github\\.com/corp/.+'\n{extra}"
        ))
    }

    fn roots_with(config_map: Option<(&str, &str, &str)>, default: Option<&str>) -> SecretKeys {
        let mut roots =
            TrustedRoots::none("imagegate may read only the ConfigMaps a, b", "none given");
        if let Some((name, key, text)) = config_map {
            roots.insert(name, Ok([(key.to_owned(), text.to_owned())].into()));
        }
        if let Some(text) = default {
            roots.set_default(Arc::new(TrustedRoot::from_json(text.as_bytes()).unwrap()));
        }
        SecretKeys::none("no Secrets").with_trusted_roots(roots)
    }

    #[test]
    fn keyless_entries_compile_against_a_trusted_root() {
        let from_config_map = keyless_entry(
            "      trustedRoot: {configMapRef: {name: sigstore, key: trusted_root.json}}\n",
        );
        assert!(
            validate(&from_config_map).is_ok(),
            "the ConfigMap is read when put in force"
        );
        let refs = roots_with(Some(("sigstore", "trusted_root.json", ROOT)), None);
        let c = compile_with(&from_config_map, &refs).unwrap();
        let check = &c.signatures[0].check;
        assert_eq!(check.entry, "prod/ci");
        assert_eq!(
            check.transparency_log,
            TransparencyLog::Require,
            "the default with keyless"
        );
        assert_eq!(
            check.verifier.describe(),
            "subject matching /https://github\\.com/corp/.+/ from issuer \"https://token.actions.githubusercontent.com\""
        );

        // Without trustedRoot, the root given at start; the same root makes the same verifier.
        let from_default = compile_with(&keyless_entry(""), &roots_with(None, Some(ROOT))).unwrap();
        assert_eq!(
            from_default.signatures[0].check.verifier.id(),
            check.verifier.id()
        );

        // Skip is kept, and changes what the verifier accepts.
        let skip = compile_with(
            &keyless_entry("    transparencyLog: Skip\n"),
            &roots_with(None, Some(ROOT)),
        )
        .unwrap();
        assert_eq!(
            skip.signatures[0].check.transparency_log,
            TransparencyLog::Skip
        );
        assert_ne!(skip.signatures[0].check.verifier.id(), check.verifier.id());
    }

    #[test]
    fn a_keyless_entry_without_a_usable_trusted_root_says_what_to_provide() {
        let e = compile(&keyless_entry("")).unwrap_err();
        assert_eq!(e.field, "spec.verifySignatures[0].keyless.trustedRoot");
        assert!(
            e.message.contains("trustedRoot.configMapRef")
                && e.message.contains("--sigstore-trusted-root FILE"),
            "{e}"
        );

        let named = keyless_entry(
            "      trustedRoot: {configMapRef: {name: sigstore, key: trusted_root.json}}\n",
        );
        let field = "spec.verifySignatures[0].keyless.trustedRoot.configMapRef";
        let cases = [
            (
                roots_with(None, Some(ROOT)),
                "may read only the ConfigMaps a, b",
            ),
            (
                roots_with(Some(("sigstore", "other.json", ROOT)), None),
                "has no key \"trusted_root.json\" (its keys: other.json)",
            ),
            (
                roots_with(Some(("sigstore", "trusted_root.json", "{}")), None),
                "the trusted root is not usable",
            ),
        ];
        for (refs, says) in cases {
            let e = compile_with(&named, &refs).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.message.contains(says), "{e}");
        }
        let mut unreadable = TrustedRoots::none("-", "-");
        unreadable.insert(
            "sigstore",
            Err("it does not exist in namespace \"gate\"".into()),
        );
        let e = compile_with(
            &named,
            &SecretKeys::none("-").with_trusted_roots(unreadable),
        )
        .unwrap_err();
        assert!(e.message.contains("does not exist"), "{e}");

        // A root without certificate authorities, or without logs while one is required.
        let mut doc: serde_json::Value = serde_json::from_str(ROOT).unwrap();
        doc["certificateAuthorities"] = serde_json::json!([]);
        let no_ca = doc.to_string();
        let e = compile_with(&keyless_entry(""), &roots_with(None, Some(&no_ca))).unwrap_err();
        assert!(e.message.contains("no Fulcio certificate authority"), "{e}");
        let mut doc: serde_json::Value = serde_json::from_str(ROOT).unwrap();
        doc["tlogs"] = serde_json::json!([]);
        let no_log = doc.to_string();
        let e = compile_with(&keyless_entry(""), &roots_with(None, Some(&no_log))).unwrap_err();
        assert_eq!(e.field, "spec.verifySignatures[0].transparencyLog");
        assert!(
            compile_with(
                &keyless_entry("    transparencyLog: Skip\n"),
                &roots_with(None, Some(&no_log))
            )
            .is_ok()
        );
    }

    #[test]
    fn key_entries_requiring_the_log_use_the_root_given_at_start() {
        let require = policy(&format!(
            "{}    transparencyLog: Require\n",
            key_entry("release", P256)
        ));
        assert!(validate(&require).is_ok());
        let e = compile(&require).unwrap_err();
        assert_eq!(e.field, "spec.verifySignatures[0].transparencyLog");
        assert!(e.message.contains("--sigstore-trusted-root"), "{e}");
        let c = compile_with(&require, &roots_with(None, Some(ROOT))).unwrap();
        assert_eq!(
            c.signatures[0].check.transparency_log,
            TransparencyLog::Require
        );
        let plain = compile(&policy(&key_entry("release", P256))).unwrap();
        assert_ne!(
            c.signatures[0].check.verifier.id(),
            plain.signatures[0].check.verifier.id()
        );
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
