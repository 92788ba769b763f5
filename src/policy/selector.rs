//! A compiled `LabelSelector` over namespace labels.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A label selector, checked once at compile time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Compiles a selector; errors carry the field path below `path`.
    pub fn compile(selector: &LabelSelector, path: &str) -> Result<Selector, (String, String)> {
        let mut requirements = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            let values = e.values.clone().unwrap_or_default();
            let needs_values = |op: &str| -> Result<(), (String, String)> {
                if values.is_empty() {
                    Err((
                        format!("{at}.values"),
                        format!("operator {op} needs at least one value"),
                    ))
                } else {
                    Ok(())
                }
            };
            let no_values = |op: &str| -> Result<(), (String, String)> {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err((
                        format!("{at}.values"),
                        format!("operator {op} takes no values"),
                    ))
                }
            };
            let key = e.key.clone();
            requirements.push(match e.operator.as_str() {
                "In" => {
                    needs_values("In")?;
                    Requirement::In(key, values)
                }
                "NotIn" => {
                    needs_values("NotIn")?;
                    Requirement::NotIn(key, values)
                }
                "Exists" => {
                    no_values("Exists")?;
                    Requirement::Exists(key)
                }
                "DoesNotExist" => {
                    no_values("DoesNotExist")?;
                    Requirement::DoesNotExist(key)
                }
                other => {
                    return Err((
                        format!("{at}.operator"),
                        format!(
                            "unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
                        ),
                    ));
                }
            });
        }
        Ok(Selector { requirements })
    }

    /// Whether `labels` satisfy every requirement (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Many selectors, matched at once. Selectors made only of `matchLabels` (the common case) are
/// found through an index on their label pairs, so the cost grows with the namespace's labels
/// and the selectors that match, not with the number of selectors.
#[derive(Debug, Clone, Default)]
pub struct SelectorSet {
    /// Label key → value → equality-only selectors that require that pair.
    by_pair: HashMap<String, HashMap<String, Vec<usize>>>,
    /// For each selector, how many pairs an equality-only selector requires.
    pairs_needed: Vec<usize>,
    /// Selectors without any requirement: they match every namespace.
    always: Vec<usize>,
    /// Selectors with other requirements, evaluated one by one.
    general: Vec<(usize, Selector)>,
}

impl SelectorSet {
    /// Indexes `selectors`; results of [`SelectorSet::matching`] use their positions.
    pub fn new(selectors: &[Selector]) -> SelectorSet {
        let mut set = SelectorSet {
            pairs_needed: vec![0; selectors.len()],
            ..Default::default()
        };
        for (id, selector) in selectors.iter().enumerate() {
            let pairs: Option<Vec<(&String, &String)>> = selector
                .requirements
                .iter()
                .map(|r| match r {
                    Requirement::Equals(k, v) => Some((k, v)),
                    _ => None,
                })
                .collect();
            match pairs {
                Some(pairs) if pairs.is_empty() => set.always.push(id),
                Some(pairs) => {
                    set.pairs_needed[id] = pairs.len();
                    for (k, v) in pairs {
                        set.by_pair
                            .entry(k.clone())
                            .or_default()
                            .entry(v.clone())
                            .or_default()
                            .push(id);
                    }
                }
                None => set.general.push((id, selector.clone())),
            }
        }
        set
    }

    /// The positions of the selectors that `labels` satisfy, ascending. The work follows the
    /// labels and the selectors they touch, not the number of selectors.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let mut out = self.always.clone();
        // Selectors of several pairs, once per pair the labels have: complete when they are
        // there as often as they have pairs (a selector names each key once, as do labels).
        let mut partial = Vec::new();
        for (k, v) in labels {
            for &id in self
                .by_pair
                .get(k)
                .and_then(|values| values.get(v))
                .into_iter()
                .flatten()
            {
                if self.pairs_needed[id] == 1 {
                    out.push(id);
                } else {
                    partial.push(id);
                }
            }
        }
        partial.sort_unstable();
        for run in partial.chunk_by(|a, b| a == b) {
            if run.len() == self.pairs_needed[run[0]] {
                out.push(run[0]);
            }
        }
        for (id, selector) in &self.general {
            if selector.matches(labels) {
                out.push(*id);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> Selector {
        let s: LabelSelector = serde_saphyr::from_str(yaml).unwrap();
        Selector::compile(&s, "spec.namespaceSelector").unwrap()
    }

    #[test]
    fn set_agrees_with_each_selector() {
        let selectors = [
            selector("{}"),
            selector("matchLabels: {env: prod}"),
            selector("matchLabels: {env: prod, team: a}"),
            selector("matchLabels: {team: b}"),
            selector("matchExpressions: [{key: env, operator: In, values: [prod, staging]}]"),
            selector("matchExpressions: [{key: env, operator: NotIn, values: [prod]}]"),
            selector("matchExpressions: [{key: pci, operator: Exists}]"),
            selector("matchExpressions: [{key: pci, operator: DoesNotExist}]"),
            selector(
                "{matchLabels: {env: prod}, matchExpressions: [{key: team, operator: NotIn, values: [a]}]}",
            ),
        ];
        let set = SelectorSet::new(&selectors);
        let label_sets: [&[(&str, &str)]; 5] = [
            &[],
            &[("env", "prod")],
            &[("env", "prod"), ("team", "a")],
            &[("env", "staging"), ("team", "b"), ("pci", "")],
            &[("env", "dev"), ("team", "a")],
        ];
        for labels in label_sets {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let want: Vec<usize> = (0..selectors.len())
                .filter(|&i| selectors[i].matches(&labels))
                .collect();
            assert_eq!(set.matching(&labels), want, "{labels:?}");
        }
        assert_eq!(
            set.matching(
                &[
                    ("env".to_string(), "prod".to_string()),
                    ("team".to_string(), "a".to_string())
                ]
                .into()
            ),
            [0, 1, 2, 4, 7]
        );
    }

    #[test]
    fn invalid_operators_name_the_field() {
        let s: LabelSelector =
            serde_saphyr::from_str("matchExpressions: [{key: a, operator: Equals, values: [b]}]")
                .unwrap();
        let (field, message) = Selector::compile(&s, "spec.namespaceSelector").unwrap_err();
        assert_eq!(field, "spec.namespaceSelector.matchExpressions[0].operator");
        assert!(message.contains("use In, NotIn, Exists or DoesNotExist"));
        let s: LabelSelector =
            serde_saphyr::from_str("matchExpressions: [{key: a, operator: In}]").unwrap();
        assert_eq!(
            Selector::compile(&s, "p").unwrap_err().0,
            "p.matchExpressions[0].values"
        );
    }
}
