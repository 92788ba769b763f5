//! The Secrets that `verifySignatures` keys name (`secretRef`), read from the operator's own
//! namespace. The operator may read only the Secrets it is told to (`--key-secrets`, the Helm
//! value `signatures.keySecrets`, which the chart's Role grants by name): each is watched by
//! name, so a changed key re-compiles the policies that use it within moments, and a policy
//! naming any other Secret is `Ready=False` saying why.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use tokio::sync::watch;

use crate::policy::SecretKeys;

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

/// The Secrets being followed and what is known of each; pure, fed by watch events.
#[derive(Debug, Clone)]
pub struct KeySecrets {
    namespace: String,
    secrets: BTreeMap<String, Known>,
    /// Per Secret, what the (re-)list in progress has delivered.
    listing: BTreeMap<String, Option<Secret>>,
}

impl KeySecrets {
    /// Follows the Secrets `names` in `namespace`; nothing is known yet.
    pub fn new(namespace: &str, names: &[String]) -> KeySecrets {
        KeySecrets {
            namespace: namespace.to_owned(),
            secrets: names.iter().map(|n| (n.clone(), Known::Unknown)).collect(),
            listing: BTreeMap::new(),
        }
    }

    /// Applies one watch event of the Secret `name`.
    pub fn apply(&mut self, name: &str, event: &watcher::Event<Secret>) {
        let known = match event {
            watcher::Event::Init => {
                self.listing.insert(name.to_owned(), None);
                return;
            }
            watcher::Event::InitApply(secret) => {
                self.listing.insert(name.to_owned(), Some(secret.clone()));
                return;
            }
            watcher::Event::InitDone => match self.listing.remove(name).flatten() {
                Some(secret) => data(&secret),
                None => self.absent(),
            },
            watcher::Event::Apply(secret) => data(secret),
            watcher::Event::Delete(_) => self.absent(),
        };
        if let Some(state) = self.secrets.get_mut(name) {
            *state = known;
        }
    }

    /// Records that the Secret `name` cannot be read (the API server refused). A Secret whose
    /// data was read before keeps it: an outage must not take keys away.
    pub fn refused(&mut self, name: &str, why: &str) {
        if let Some(state) = self.secrets.get_mut(name)
            && !matches!(state, Known::Data(_))
        {
            *state = Known::Missing(format!(
                "the API server refused to let imagegate read it ({why}); check that the chart's Role grants get, list and watch on it (Helm value signatures.keySecrets)"
            ));
        }
    }

    fn absent(&self) -> Known {
        Known::Missing(format!(
            "it does not exist in namespace {:?}",
            self.namespace
        ))
    }

    /// The keys, once every Secret has been read (or found missing); `None` before.
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
        Some(keys)
    }
}

/// A Secret's data as text (a value that is not UTF-8 is kept lossily, and then fails as a
/// key with a message saying it is not PEM).
fn data(secret: &Secret) -> Known {
    Known::Data(
        secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect(),
    )
}

/// Watches each of `state`'s Secrets by name and sends the keys whenever they change (the
/// first time once every Secret has been read). Runs for the life of the process.
pub async fn run_key_secrets(
    client: Client,
    mut state: KeySecrets,
    keys: watch::Sender<Option<SecretKeys>>,
) {
    let api: Api<Secret> = Api::namespaced(client, &state.namespace);
    let names: Vec<String> = state.secrets.keys().cloned().collect();
    if names.is_empty() {
        keys.send_replace(state.keys());
        return;
    }
    let streams = names.into_iter().map(|name| {
        let fields = format!("metadata.name={name}");
        watcher(api.clone(), watcher::Config::default().fields(&fields))
            .default_backoff()
            .map(move |event| (name.clone(), event))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    while let Some((name, event)) = events.next().await {
        match event {
            Ok(event) => {
                if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = &event
                    && s.name_any() != name
                {
                    continue;
                }
                state.apply(&name, &event);
            }
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "key Secret watch failed; retrying");
                if is_forbidden(&e) {
                    state.refused(&name, &e.to_string());
                } else {
                    continue;
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

    fn list(state: &mut KeySecrets, name: &str, found: Option<Secret>) {
        state.apply(name, &watcher::Event::Init);
        if let Some(s) = found {
            state.apply(name, &watcher::Event::InitApply(s));
        }
        state.apply(name, &watcher::Event::InitDone);
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
        list(&mut state, "vendor", None);
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
        state.refused("vendor", "forbidden");
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
        state.refused("cosign", "forbidden");
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
}
