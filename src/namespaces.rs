//! Namespace labels for `namespaceSelector`: the interface the webhook reads and its two sources
//! (fixed labels for `serve` and `check`; the operator's reflector for `run`).

use std::collections::{BTreeMap, HashMap};

use futures::future::BoxFuture;

/// Labels of one namespace.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries, set by the API server.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Returns `labels` with `kubernetes.io/metadata.name: <namespace>` added when absent.
pub fn with_name_label(namespace: &str, mut labels: Labels) -> Labels {
    labels
        .entry(NAME_LABEL.to_owned())
        .or_insert_with(|| namespace.to_owned());
    labels
}

/// Where the webhook finds a namespace's labels.
pub trait NamespaceLabels: Send + Sync + 'static {
    /// The labels known without I/O, or `None` when this source does not know the namespace yet.
    fn cached(&self, namespace: &str) -> Option<Labels>;

    /// Looks up a namespace that `cached` does not know (may ask the API server). An error is
    /// a reason to deny: labels are never assumed.
    fn lookup(&self, namespace: &str) -> BoxFuture<'static, Result<Labels, String>>;
}

/// Fixed labels, as given on the command line (`--namespace-labels`). A namespace without an
/// entry has only its name label.
#[derive(Debug, Clone, Default)]
pub struct FixedNamespaces {
    labels: HashMap<String, Labels>,
}

impl FixedNamespaces {
    /// Fixed labels per namespace; each gets its name label.
    pub fn new(labels: HashMap<String, Labels>) -> Self {
        let labels = labels
            .into_iter()
            .map(|(ns, l)| {
                let l = with_name_label(&ns, l);
                (ns, l)
            })
            .collect();
        FixedNamespaces { labels }
    }

    /// The labels of `namespace`: given ones, else only its name label.
    pub fn get(&self, namespace: &str) -> Labels {
        self.labels
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| with_name_label(namespace, Labels::new()))
    }

    /// Adds or replaces the labels of one namespace.
    pub fn insert(&mut self, namespace: &str, labels: Labels) {
        self.labels
            .insert(namespace.to_owned(), with_name_label(namespace, labels));
    }
}

impl NamespaceLabels for FixedNamespaces {
    fn cached(&self, namespace: &str) -> Option<Labels> {
        Some(self.get(namespace))
    }

    fn lookup(&self, namespace: &str) -> BoxFuture<'static, Result<Labels, String>> {
        let labels = self.get(namespace);
        Box::pin(async move { Ok(labels) })
    }
}

/// Parses `NS=K=V[,K=V]…` as given to `--namespace-labels`.
pub fn parse_namespace_labels(arg: &str) -> Result<(String, Labels), String> {
    let (ns, rest) = arg.split_once('=').ok_or_else(|| {
        format!("--namespace-labels {arg:?}: expected NS=KEY=VALUE[,KEY=VALUE…], e.g. prod=env=prod,team=a")
    })?;
    if ns.is_empty() {
        return Err(format!(
            "--namespace-labels {arg:?}: the namespace name is empty"
        ));
    }
    let mut labels = Labels::new();
    for pair in rest.split(',') {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--namespace-labels {arg:?}: {pair:?} is not KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("--namespace-labels {arg:?}: a label key is empty"));
        }
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok((ns.to_owned(), labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_labels() {
        let (ns, labels) = parse_namespace_labels("prod=env=prod,team=a").unwrap();
        assert_eq!(ns, "prod");
        assert_eq!(labels["env"], "prod");
        assert_eq!(labels["team"], "a");
        assert!(parse_namespace_labels("prod").is_err());
        assert!(parse_namespace_labels("prod=env").is_err());
        assert!(parse_namespace_labels("=env=prod").is_err());
    }

    #[test]
    fn unknown_namespace_has_its_name_label() {
        let fixed = FixedNamespaces::default();
        assert_eq!(fixed.get("dev")[NAME_LABEL], "dev");
    }
}
