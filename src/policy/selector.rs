//! A compiled `LabelSelector` over namespace labels.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A label selector, checked once at compile time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
