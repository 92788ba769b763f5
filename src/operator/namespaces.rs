//! Namespace labels from a reflector, for `namespaceSelector`. The store answers without I/O;
//! a namespace it does not know yet (created a moment ago, or before the first list) is read
//! from the API server, never assumed to have no labels.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::namespaces::{Labels, NamespaceLabels, with_name_label};

/// Namespace labels backed by a reflector store, with a GET for namespaces it does not know.
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<Namespace>,
    api: Api<Namespace>,
}

impl NamespaceCache {
    /// A cache over `store` that looks up unknown namespaces with `client`.
    pub fn new(store: Store<Namespace>, client: Client) -> Self {
        NamespaceCache {
            store,
            api: Api::all(client),
        }
    }
}

fn labels_of(ns: &Namespace, name: &str) -> Labels {
    with_name_label(name, ns.metadata.labels.clone().unwrap_or_default())
}

impl NamespaceLabels for NamespaceCache {
    fn cached(&self, namespace: &str) -> Option<Labels> {
        self.store
            .get(&ObjectRef::new(namespace))
            .map(|ns| labels_of(&ns, namespace))
    }

    fn lookup(&self, namespace: &str) -> BoxFuture<'static, Result<Labels, String>> {
        let api = self.api.clone();
        let name = namespace.to_owned();
        Box::pin(async move {
            match api.get_opt(&name).await {
                Ok(Some(ns)) => Ok(labels_of(&ns, &name)),
                Ok(None) => Err(format!("namespace {name} does not exist")),
                Err(e) => Err(format!(
                    "cannot read the labels of namespace {name} from the API server: {}",
                    reason(&e)
                )),
            }
        })
    }
}

/// Why a request failed, for a message: the API server's own answer (code, reason and
/// message) rather than kube's display of an API error, which appends a debug dump of it.
pub fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "it answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        e => e.to_string(),
    }
}
