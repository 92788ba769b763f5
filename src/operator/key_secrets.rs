//! What `verifySignatures` entries name outside their policy, read from the operator's own
//! namespace: the Secrets of `key.secretRef` and the ConfigMaps of `keyless.trustedRoot`. The
//! operator may read only the Secrets and ConfigMaps it is told to (`--key-secrets` and
//! `--trusted-root-config-maps`, the Helm values `signatures.keySecrets` and
//! `signatures.trustedRootConfigMaps`, which the chart's Role grants by name): each is watched
//! by name, so a changed key or trusted root re-compiles the policies that use it within
//! moments, and a policy naming any other is `Ready=False` saying why. The trusted root of
//! `--sigstore-trusted-root` (a file, mounted from a ConfigMap by the chart) is read again every
//! [`TRUSTED_ROOT_FILE_INTERVAL`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;

use crate::policy::{SecretKeys, TrustedRoots};
use crate::signature::TrustedRoot;

/// How often the file of `--sigstore-trusted-root` is read again. The kubelet updates a mounted
/// ConfigMap about a minute after it changes; a trusted root changes a few times a year.
pub const TRUSTED_ROOT_FILE_INTERVAL: Duration = Duration::from_secs(60);

/// The kinds of object read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
}

/// An object whose data is read as text.
pub trait Data:
    kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static
{
    const KIND: Kind;
    /// Its data, key → text (a value that is not UTF-8 is kept lossily, and then fails to read
    /// as a key or trusted root with a message saying what it is not).
    fn text(&self) -> BTreeMap<String, String>;
    /// Its watch event, among those of other kinds.
    #[doc(hidden)]
    fn any(event: watcher::Event<Self>) -> AnyEvent;
}

impl Data for Secret {
    const KIND: Kind = Kind::Secret;
    fn text(&self) -> BTreeMap<String, String> {
        self.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect()
    }
    fn any(event: watcher::Event<Secret>) -> AnyEvent {
        AnyEvent::Secret(event)
    }
}

impl Data for ConfigMap {
    const KIND: Kind = Kind::ConfigMap;
    fn text(&self) -> BTreeMap<String, String> {
        let binary = self
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()));
        self.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(binary)
            .collect()
    }
    fn any(event: watcher::Event<ConfigMap>) -> AnyEvent {
        AnyEvent::ConfigMap(event)
    }
}

/// What is known of one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// Not read yet.
    Unknown,
    /// Its data, as text.
    Data(BTreeMap<String, String>),
    /// Why it cannot be had: absent, or not readable.
    Missing(String),
}

/// The Secrets and ConfigMaps being followed and what is known of each; pure, fed by watch
/// events.
#[derive(Debug, Clone)]
pub struct KeySecrets {
    namespace: String,
    secrets: BTreeMap<String, Known>,
    config_maps: BTreeMap<String, Known>,
    /// Per object, what the (re-)list in progress has delivered.
    listing: BTreeMap<(Kind, String), Option<BTreeMap<String, String>>>,
    /// `--sigstore-trusted-root`: the file, and the root last read from it.
    default_root: Option<(PathBuf, Arc<TrustedRoot>)>,
}

impl KeySecrets {
    /// Follows the Secrets `names` in `namespace`; nothing is known yet.
    pub fn new(namespace: &str, names: &[String]) -> KeySecrets {
        KeySecrets {
            namespace: namespace.to_owned(),
            secrets: names.iter().map(|n| (n.clone(), Known::Unknown)).collect(),
            config_maps: BTreeMap::new(),
            listing: BTreeMap::new(),
            default_root: None,
        }
    }

    /// Follows the ConfigMaps `names` (trusted roots) as well.
    pub fn with_config_maps(mut self, names: &[String]) -> KeySecrets {
        self.config_maps = names.iter().map(|n| (n.clone(), Known::Unknown)).collect();
        self
    }

    /// Uses `root`, read from `file`, for entries that name no trusted root; the file is read
    /// again every [`TRUSTED_ROOT_FILE_INTERVAL`].
    pub fn with_default_root(mut self, file: PathBuf, root: Arc<TrustedRoot>) -> KeySecrets {
        self.default_root = Some((file, root));
        self
    }

    fn objects(&mut self, kind: Kind) -> &mut BTreeMap<String, Known> {
        match kind {
            Kind::Secret => &mut self.secrets,
            Kind::ConfigMap => &mut self.config_maps,
        }
    }

    /// Applies one watch event of the Secret or ConfigMap `name`.
    pub fn apply<K: Data>(&mut self, name: &str, event: &watcher::Event<K>) {
        let key = (K::KIND, name.to_owned());
        let known = match event {
            watcher::Event::Init => {
                self.listing.insert(key, None);
                return;
            }
            watcher::Event::InitApply(object) => {
                self.listing.insert(key, Some(object.text()));
                return;
            }
            watcher::Event::InitDone => match self.listing.remove(&key).flatten() {
                Some(data) => Known::Data(data),
                None => self.absent(),
            },
            watcher::Event::Apply(object) => Known::Data(object.text()),
            watcher::Event::Delete(_) => self.absent(),
        };
        if let Some(state) = self.objects(K::KIND).get_mut(name) {
            *state = known;
        }
    }

    /// Records that the Secret or ConfigMap `name` cannot be read (the API server refused). An
    /// object whose data was read before keeps it: an outage must not take keys away.
    pub fn refused(&mut self, kind: Kind, name: &str, why: &str) {
        let value = match kind {
            Kind::Secret => "signatures.keySecrets",
            Kind::ConfigMap => "signatures.trustedRootConfigMaps",
        };
        if let Some(state) = self.objects(kind).get_mut(name)
            && !matches!(state, Known::Data(_))
        {
            *state = Known::Missing(format!(
                "the API server refused to let imagegate read it ({why}); check that the chart's Role grants get, list and watch on it (Helm value {value})"
            ));
        }
    }

    /// Replaces the root of `--sigstore-trusted-root` (its file changed); whether it differs.
    pub fn set_default_root(&mut self, root: Arc<TrustedRoot>) -> bool {
        match &mut self.default_root {
            Some((_, current)) if *current != root => {
                *current = root;
                true
            }
            _ => false,
        }
    }

    fn absent(&self) -> Known {
        Known::Missing(format!(
            "it does not exist in namespace {:?}",
            self.namespace
        ))
    }

    /// The keys and trusted roots, once every Secret and ConfigMap has been read (or found
    /// missing); `None` before.
    pub fn keys(&self) -> Option<SecretKeys> {
        let names: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        let mut keys = SecretKeys::none(if names.is_empty() {
            format!(
                "imagegate reads no key Secrets: name the Secret in --key-secrets (Helm value signatures.keySecrets) so that it may read it from namespace {:?}",
                self.namespace
            )
        } else {
            format!(
                "imagegate may read only the Secrets named in --key-secrets (Helm value signatures.keySecrets: {}); add it there",
                names.join(", ")
            )
        });
        for (name, known) in &self.secrets {
            match known {
                Known::Unknown => return None,
                Known::Data(data) => keys.insert(name, Ok(data.clone())),
                Known::Missing(why) => keys.insert(name, Err(why.clone())),
            }
        }
        Some(keys.with_trusted_roots(self.trusted_roots()?))
    }

    /// The trusted roots, once every ConfigMap has been read (or found missing).
    fn trusted_roots(&self) -> Option<TrustedRoots> {
        let names: Vec<&str> = self.config_maps.keys().map(String::as_str).collect();
        let unlisted = if names.is_empty() {
            format!(
                "imagegate reads no trusted-root ConfigMaps: name the ConfigMap in --trusted-root-config-maps (Helm value signatures.trustedRootConfigMaps) so that it may read it from namespace {:?}",
                self.namespace
            )
        } else {
            format!(
                "imagegate may read only the ConfigMaps named in --trusted-root-config-maps (Helm value signatures.trustedRootConfigMaps: {}); add it there",
                names.join(", ")
            )
        };
        let mut roots = TrustedRoots::none(
            unlisted,
            "imagegate was started without --sigstore-trusted-root (Helm value signatures.sigstoreTrustedRoot)",
        );
        for (name, known) in &self.config_maps {
            match known {
                Known::Unknown => return None,
                Known::Data(data) => roots.insert(name, Ok(data.clone())),
                Known::Missing(why) => roots.insert(name, Err(why.clone())),
            }
        }
        if let Some((_, root)) = &self.default_root {
            roots.set_default(root.clone());
        }
        Some(roots)
    }
}

/// Reads the trusted root of `--sigstore-trusted-root`; the error names the file.
pub fn read_trusted_root(file: &std::path::Path) -> Result<TrustedRoot, String> {
    use std::io::Read as _;
    let limit = crate::signature::trust::TRUSTED_ROOT_MAX_BYTES as u64;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the trusted root {}: {e}", file.display()))?;
    let root = TrustedRoot::from_json(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    for why in root.ignored() {
        tracing::warn!(file = %file.display(), reason = %why, "part of the trusted root is not used");
    }
    Ok(root)
}

/// Watches each of `state`'s Secrets and ConfigMaps by name, reads the file of
/// `--sigstore-trusted-root` again every [`TRUSTED_ROOT_FILE_INTERVAL`], and sends the keys and
/// trusted roots whenever they change (the first time once every object has been read). Runs
/// for the life of the process.
pub async fn run_key_secrets(
    client: Client,
    mut state: KeySecrets,
    keys: watch::Sender<Option<SecretKeys>>,
) {
    let root_file = state.default_root.as_ref().map(|(file, _)| file.clone());
    if state.secrets.is_empty() && state.config_maps.is_empty() && root_file.is_none() {
        keys.send_replace(state.keys());
        return;
    }
    let mut events = futures::stream::select_all(
        watches::<Secret>(&client, &state.namespace, state.secrets.keys()).chain(watches::<
            ConfigMap,
        >(
            &client,
            &state.namespace,
            state.config_maps.keys(),
        )),
    );
    // With nothing to watch, the stream ends at once: the file alone is followed then.
    let mut watching = !(state.secrets.is_empty() && state.config_maps.is_empty());
    if !watching {
        keys.send_replace(state.keys());
    }
    let mut reread = tokio::time::interval_at(
        tokio::time::Instant::now() + TRUSTED_ROOT_FILE_INTERVAL,
        TRUSTED_ROOT_FILE_INTERVAL,
    );
    loop {
        tokio::select! {
            event = events.next(), if watching => {
                let Some((kind, name, event)) = event else {
                    watching = false;
                    continue;
                };
                match event {
                    Ok(event) => event.apply(&mut state, &name),
                    Err(e) => {
                        tracing::warn!(kind = ?kind, name = %name, error = %e, "watch of a Secret or ConfigMap that policies name failed; retrying");
                        if is_forbidden(&e) {
                            state.refused(kind, &name, &e.to_string());
                        } else {
                            continue;
                        }
                    }
                }
            }
            _ = reread.tick(), if root_file.is_some() => {
                let Some(file) = &root_file else { continue };
                match read_trusted_root(file) {
                    Ok(root) => {
                        if !state.set_default_root(Arc::new(root)) {
                            continue;
                        }
                        tracing::info!(file = %file.display(), "the trusted root of --sigstore-trusted-root changed");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the trusted root again; the one read before stays in use");
                        continue;
                    }
                }
            }
        }
        if let Some(now) = state.keys() {
            keys.send_if_modified(|current| {
                if current.as_ref() == Some(&now) {
                    false
                } else {
                    *current = Some(now);
                    true
                }
            });
        }
    }
}

/// A watch event of a Secret or a ConfigMap.
#[doc(hidden)]
pub enum AnyEvent {
    Secret(watcher::Event<Secret>),
    ConfigMap(watcher::Event<ConfigMap>),
}

impl AnyEvent {
    fn apply(self, state: &mut KeySecrets, name: &str) {
        match self {
            AnyEvent::Secret(e) => state.apply(name, &e),
            AnyEvent::ConfigMap(e) => state.apply(name, &e),
        }
    }
}

type Watch = futures::stream::BoxStream<'static, (Kind, String, Result<AnyEvent, watcher::Error>)>;

/// One watch per object name, each delivering only its object's events.
fn watches<'a, K>(
    client: &Client,
    namespace: &str,
    names: impl Iterator<Item = &'a String> + 'a,
) -> impl Iterator<Item = Watch> + 'a
where
    K: Data + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    names.map(move |name| {
        let fields = format!("metadata.name={name}");
        let name = name.clone();
        watcher(api.clone(), watcher::Config::default().fields(&fields))
            .default_backoff()
            .filter_map(move |event| {
                let name = name.clone();
                async move {
                    // A watch by field selector delivers only the named object; anything else
                    // is ignored rather than trusted.
                    if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = &event
                        && o.name_any() != name
                    {
                        return None;
                    }
                    Some((K::KIND, name, event.map(K::any)))
                }
            })
            .boxed()
    })
}

/// Whether the API server refused the request (403): no retry will read the Secret until the
/// RBAC changes.
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_forbidden(),
        watcher::Error::WatchError(status) => status.is_forbidden(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(name: &str, pairs: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_owned());
        s.data = Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        s
    }

    fn list<K: Data>(state: &mut KeySecrets, name: &str, found: Option<K>) {
        state.apply(name, &watcher::Event::<K>::Init);
        if let Some(s) = found {
            state.apply(name, &watcher::Event::InitApply(s));
        }
        state.apply(name, &watcher::Event::<K>::InitDone);
    }

    #[test]
    fn keys_once_every_secret_is_read_and_after_every_change() {
        let names = ["cosign".to_owned(), "vendor".to_owned()];
        let mut state = KeySecrets::new("gate", &names);
        assert_eq!(state.keys(), None);
        list(
            &mut state,
            "cosign",
            Some(secret("cosign", &[("cosign.pub", "PEM-1")])),
        );
        assert_eq!(state.keys(), None, "vendor not read yet");
        list::<Secret>(&mut state, "vendor", None);
        let keys = state.keys().unwrap();
        assert_eq!(keys.get("cosign", "cosign.pub"), Ok("PEM-1"));
        let missing = keys.get("vendor", "cosign.pub").unwrap_err();
        assert!(
            missing.contains("does not exist in namespace \"gate\""),
            "{missing}"
        );
        let unlisted = keys.get("other", "k").unwrap_err();
        assert!(
            unlisted.contains("may read only the Secrets named in --key-secrets (Helm value signatures.keySecrets: cosign, vendor)"),
            "{unlisted}"
        );

        // A rotated key, a deleted Secret, a refused one that was never read.
        state.apply(
            "cosign",
            &watcher::Event::Apply(secret("cosign", &[("cosign.pub", "PEM-2")])),
        );
        assert_eq!(
            state.keys().unwrap().get("cosign", "cosign.pub"),
            Ok("PEM-2")
        );
        state.apply("cosign", &watcher::Event::Delete(secret("cosign", &[])));
        assert!(state.keys().unwrap().get("cosign", "cosign.pub").is_err());
        state.refused(Kind::Secret, "vendor", "forbidden");
        let refused = state.keys().unwrap().get("vendor", "k").unwrap_err();
        assert!(
            refused.contains("refused to let imagegate read it (forbidden)"),
            "{refused}"
        );
        // A refusal after a read keeps the key: an outage must not take it away.
        state.apply(
            "cosign",
            &watcher::Event::Apply(secret("cosign", &[("cosign.pub", "PEM-3")])),
        );
        state.refused(Kind::Secret, "cosign", "forbidden");
        assert_eq!(
            state.keys().unwrap().get("cosign", "cosign.pub"),
            Ok("PEM-3")
        );
    }

    #[test]
    fn with_no_key_secrets_every_secret_ref_says_how_to_allow_one() {
        let keys = KeySecrets::new("gate", &[]).keys().unwrap();
        let why = keys.get("cosign", "cosign.pub").unwrap_err();
        assert!(why.contains("name the Secret in --key-secrets"), "{why}");
    }

    const ROOT: &str = include_str!("../../tests/data/sigstore/trusted_root.json");

    fn config_map(name: &str, pairs: &[(&str, &str)]) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.to_owned());
        c.data = Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        c
    }

    #[test]
    fn trusted_roots_once_every_config_map_is_read_and_after_every_change() {
        let root = Arc::new(TrustedRoot::from_json(ROOT.as_bytes()).unwrap());
        let mut state = KeySecrets::new("gate", &[])
            .with_config_maps(&["sigstore".to_owned()])
            .with_default_root(PathBuf::from("/etc/root.json"), root.clone());
        assert_eq!(state.keys(), None, "the ConfigMap is not read yet");
        list(
            &mut state,
            "sigstore",
            Some(config_map("sigstore", &[("trusted_root.json", ROOT)])),
        );
        let keys = state.keys().unwrap();
        let roots = keys.trusted_roots();
        assert_eq!(roots.get("sigstore", "trusted_root.json").unwrap(), &root);
        assert_eq!(roots.default_root().unwrap(), &root);
        let unlisted = roots.get("other", "k").unwrap_err();
        assert!(
            unlisted.contains("may read only the ConfigMaps named in --trusted-root-config-maps (Helm value signatures.trustedRootConfigMaps: sigstore)"),
            "{unlisted}"
        );

        // Changed to something that is not a trusted root, then deleted, then refused.
        state.apply(
            "sigstore",
            &watcher::Event::Apply(config_map("sigstore", &[("trusted_root.json", "{}")])),
        );
        let e = state
            .keys()
            .unwrap()
            .trusted_roots()
            .get("sigstore", "trusted_root.json")
            .unwrap_err();
        assert!(e.contains("not usable"), "{e}");
        state.apply(
            "sigstore",
            &watcher::Event::Delete(config_map("sigstore", &[])),
        );
        let e = state
            .keys()
            .unwrap()
            .trusted_roots()
            .get("sigstore", "trusted_root.json")
            .unwrap_err();
        assert!(e.contains("does not exist in namespace \"gate\""), "{e}");
        state.refused(Kind::ConfigMap, "sigstore", "forbidden");
        let e = state
            .keys()
            .unwrap()
            .trusted_roots()
            .get("sigstore", "trusted_root.json")
            .unwrap_err();
        assert!(
            e.contains("(Helm value signatures.trustedRootConfigMaps)"),
            "{e}"
        );

        // The default root is replaced only by a different one.
        assert!(!state.set_default_root(root.clone()));
        let without = KeySecrets::new("gate", &[]).keys().unwrap();
        let e = without.trusted_roots().default_root().unwrap_err();
        assert!(e.contains("--sigstore-trusted-root"), "{e}");
        let e = without.trusted_roots().get("sigstore", "k").unwrap_err();
        assert!(
            e.contains("name the ConfigMap in --trusted-root-config-maps"),
            "{e}"
        );
    }
}
