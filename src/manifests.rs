//! Reading Kubernetes manifests from files, folders and standard input: multi-document YAML,
//! JSON, and `kind: List`. Used by `check` (manifests and policies) and `serve` (policies).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::policy::{CompileError, ImagePolicy, crd::GROUP};

/// Standard input, when given as a path.
pub const STDIN: &str = "-";

/// File endings read from folders.
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The largest manifest file read, so a stray large file cannot exhaust memory.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from: `FILE#DOC` (the file's non-empty documents, counted from 1),
    /// `FILE#DOC.items[I]` for an item
    /// of a `kind: List`.
    pub source: String,
    /// The object.
    pub value: Value,
}

impl Document {
    /// `apiVersion`, or empty.
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
    /// `kind`, or empty.
    pub fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
    /// `metadata.name`, or empty.
    pub fn name(&self) -> &str {
        self.metadata_str("name")
    }
    /// `metadata.namespace`, or empty.
    pub fn namespace(&self) -> &str {
        self.metadata_str("namespace")
    }
    fn metadata_str(&self, key: &str) -> &str {
        self.value
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{source_name}: invalid {format}: {message}")]
    Syntax {
        source_name: String,
        format: &'static str,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: policy {policy:?}: {error}")]
    Policy {
        source_name: String,
        policy: String,
        error: CompileError,
    },
}

/// Reads every document of every path, in order. Folders are read recursively, their files in
/// name order; `-` is standard input.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == STDIN {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_FILE_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|source| LoadError::Io {
                    path: "<stdin>".into(),
                    source,
                })?;
            if text.len() as u64 > MAX_FILE_BYTES {
                return Err(LoadError::TooLarge {
                    path: "<stdin>".into(),
                });
            }
            out.extend(parse_documents("<stdin>", &text)?);
        } else {
            for file in files_of(path)? {
                out.extend(read_file(&file)?);
            }
        }
    }
    Ok(out)
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            files.extend(files_of(&entry)?);
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e))
        {
            files.push(entry);
        }
    }
    Ok(files)
}

/// Reads one file.
pub fn read_file(path: &Path) -> Result<Vec<Document>, LoadError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: name.clone(),
        source,
    })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge { path: name });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: name.clone(),
        source,
    })?;
    parse_documents(&name, &text)
}

/// Parses the text of one file: JSON when it starts with `{` or `[`, YAML otherwise (multiple
/// documents). Empty documents are skipped (and not counted); lists are expanded.
pub fn parse_documents(name: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut docs = Vec::new();
        for v in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            docs.push(v.map_err(|e| LoadError::Syntax {
                source_name: format!("{name}#{}", docs.len() + 1),
                format: "JSON",
                message: e.to_string(),
            })?);
        }
        docs
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| LoadError::Syntax {
            source_name: name.to_owned(),
            format: "YAML",
            message: e.to_string(),
        })?
    };
    let mut out = Vec::new();
    for (i, value) in docs.into_iter().enumerate() {
        let source = format!("{name}#{}", i + 1);
        push_document(&mut out, source, value)?;
    }
    Ok(out)
}

fn push_document(out: &mut Vec<Document>, source: String, value: Value) -> Result<(), LoadError> {
    match value {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                push_document(out, format!("{source}[{i}]"), item)?;
            }
            Ok(())
        }
        Value::Object(ref map) => {
            let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
            if kind.ends_with("List") && map.get("items").is_some_and(Value::is_array) {
                let Some(Value::Array(items)) = value.get("items").cloned() else {
                    return Ok(());
                };
                for (i, item) in items.into_iter().enumerate() {
                    push_document(out, format!("{source}.items[{i}]"), item)?;
                }
                return Ok(());
            }
            out.push(Document { source, value });
            Ok(())
        }
        other => Err(LoadError::Invalid {
            source_name: source,
            message: format!("expected a Kubernetes object, found {}", json_type(&other)),
        }),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A policy read from a file, with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedPolicy {
    /// `FILE#DOC`.
    pub source: String,
    /// The policy.
    pub policy: ImagePolicy,
}

/// Reads the ImagePolicy documents of `paths`. Documents of other API groups are skipped (a
/// policy folder may hold other manifests); an `imagegate.dev` document that is not a valid
/// ImagePolicy, an unknown field, a duplicate name or a policy that does not compile is an
/// error naming the file, document and field.
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<LoadedPolicy>, LoadError> {
    load_policies_with(paths, &crate::policy::SecretKeys::default())
}

/// As [`load_policies`], compiling `secretRef` keys from `secrets`.
pub fn load_policies_with(
    paths: &[PathBuf],
    secrets: &crate::policy::SecretKeys,
) -> Result<Vec<LoadedPolicy>, LoadError> {
    let mut out: Vec<LoadedPolicy> = Vec::new();
    for doc in read_paths(paths)? {
        let group = doc.api_version().split_once('/').map_or("", |(g, _)| g);
        if group != GROUP {
            continue;
        }
        let policy = policy_from_document(&doc)?;
        crate::policy::compile_with(&policy, secrets).map_err(|error| LoadError::Policy {
            source_name: doc.source.clone(),
            policy: policy.metadata.name.clone().unwrap_or_default(),
            error,
        })?;
        if let Some(first) = out
            .iter()
            .find(|p| p.policy.metadata.name == policy.metadata.name)
        {
            return Err(LoadError::Invalid {
                source_name: doc.source.clone(),
                message: format!(
                    "a second ImagePolicy named {:?} (the first is at {}); policy names are unique",
                    doc.name(),
                    first.source
                ),
            });
        }
        out.push(LoadedPolicy {
            source: doc.source,
            policy,
        });
    }
    Ok(out)
}

/// Reads an ImagePolicy from a document, strictly: unknown fields are errors, as with
/// `kubectl apply`'s strict field validation.
pub fn policy_from_document(doc: &Document) -> Result<ImagePolicy, LoadError> {
    let invalid = |message: String| LoadError::Invalid {
        source_name: doc.source.clone(),
        message,
    };
    if doc.kind() != "ImagePolicy" {
        return Err(invalid(format!(
            "kind {:?} is not served by {}; the kind is ImagePolicy",
            doc.kind(),
            doc.api_version()
        )));
    }
    if doc.api_version() != format!("{GROUP}/{}", crate::policy::crd::VERSION) {
        return Err(invalid(format!(
            "apiVersion {:?} is unknown; use {GROUP}/{}",
            doc.api_version(),
            crate::policy::crd::VERSION
        )));
    }
    if doc.name().is_empty() {
        return Err(invalid("metadata.name is missing".into()));
    }
    let mut unknown = Vec::new();
    let policy: ImagePolicy = serde_ignored::deserialize(&doc.value, |path| {
        let path = path.to_string();
        // Only the spec is checked strictly; metadata and status belong to the API server.
        if path.starts_with("spec.") {
            unknown.push(path);
        }
    })
    .map_err(|e| invalid(format!("not a valid ImagePolicy: {e}")))?;
    if let Some(first) = unknown.first() {
        return Err(invalid(format!(
            "unknown field {first}; see `kubectl explain imagepolicy.spec`"
        )));
    }
    Ok(policy)
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_lists_and_empty_documents() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: b}}\n- {apiVersion: v1, kind: Pod, metadata: {name: c}}\n";
        let docs = parse_documents("f.yaml", text).unwrap();
        let names: Vec<_> = docs.iter().map(|d| (d.source.as_str(), d.name())).collect();
        assert_eq!(
            names,
            [
                ("f.yaml#1", "a"),
                ("f.yaml#2.items[0]", "b"),
                ("f.yaml#2.items[1]", "c")
            ]
        );
    }

    #[test]
    fn json_documents() {
        let docs = parse_documents("f.json", r#"{"kind":"Pod","metadata":{"name":"a"}}"#).unwrap();
        assert_eq!(docs[0].name(), "a");
        let err = parse_documents("f.json", r#"{"kind": "#).unwrap_err();
        assert!(
            err.to_string().starts_with("f.json#1: invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn invalid_yaml_names_the_file() {
        let err = parse_documents("bad.yaml", "kind: Pod\n  metadata: [\n").unwrap_err();
        assert!(
            err.to_string().starts_with("bad.yaml: invalid YAML"),
            "{err}"
        );
    }

    #[test]
    fn scalar_documents_are_rejected() {
        let err = parse_documents("s.yaml", "just a string\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("s.yaml#1: expected a Kubernetes object, found a string"),
            "{err}"
        );
    }

    #[test]
    fn strict_policy_fields() {
        let doc = parse_documents(
            "p.yaml",
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec:\n  deniedImage: [docker.io/**]\n",
        )
        .unwrap()
        .remove(0);
        let err = policy_from_document(&doc).unwrap_err().to_string();
        assert!(
            err.contains("p.yaml#1: unknown field spec.deniedImage"),
            "{err}"
        );
    }

    #[test]
    fn wrong_kind_in_group_is_an_error() {
        let doc = parse_documents(
            "p.yaml",
            "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolcy\nmetadata: {name: p}\n",
        )
        .unwrap()
        .remove(0);
        let err = policy_from_document(&doc).unwrap_err().to_string();
        assert!(err.contains("kind \"ImagePolcy\""), "{err}");
    }
}
