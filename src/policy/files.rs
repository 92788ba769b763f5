//! Policies from files: YAML (or JSON) files and folders of them, multi-document, as `serve` and
//! `check` read them. Every error names the file and document.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::crd::{GROUP, ImagePolicy, VERSION};

/// The largest policy file read, so a wrong path (a disk image, a log) fails fast instead of
/// filling memory. Far above any real set of policies.
pub const MAX_POLICY_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The file extensions read when a folder is given (a file given by name is always read).
const POLICY_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Why the policies cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// `FILE` or `FILE#DOC` (documents count from 1).
    pub source: String,
    /// What is wrong.
    pub message: String,
}

impl std::error::Error for LoadError {}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

/// Reads every `ImagePolicy` in `paths` (files, or folders whose `.yaml`, `.yml` and `.json`
/// files are read in name order, recursively). Each policy comes with its source `FILE#DOC`.
/// Empty documents are skipped; `kind: List` and `ImagePolicyList` are unpacked; any other kind,
/// an unreadable document or two policies with the same name is an error.
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<(String, ImagePolicy)>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, true, &mut files)?;
    }
    let mut out = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for file in files {
        for (source, policy) in load_file(&file)? {
            let name = policy.metadata.name.clone().unwrap_or_default();
            if let Some(first) = seen.insert(name.clone(), source.clone()) {
                return Err(LoadError {
                    source,
                    message: format!(
                        "a second ImagePolicy named {name:?} (the first is in {first}); policy names must be unique"
                    ),
                });
            }
            out.push((source, policy));
        }
    }
    Ok(out)
}

/// The files `load_policies` would read for `paths`, for watching them.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, true, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, named: bool, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| LoadError {
        source: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| LoadError {
                source: path.display().to_string(),
                message: format!("cannot list the folder: {e}"),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                // Hidden files are editor swap files and Kubernetes ConfigMap internals
                // (`..data`); never policies.
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, false, out)?;
        }
    } else if named
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| POLICY_EXTENSIONS.contains(&e))
    {
        out.push(path.to_owned());
    }
    Ok(())
}

fn load_file(path: &Path) -> Result<Vec<(String, ImagePolicy)>, LoadError> {
    let file = path.display().to_string();
    let err = |source: &str, message: String| LoadError {
        source: source.to_owned(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| err(&file, format!("cannot read: {e}")))?
        .len();
    if size > MAX_POLICY_FILE_BYTES {
        return Err(err(
            &file,
            format!(
                "{size} bytes is over the limit of {MAX_POLICY_FILE_BYTES} bytes for a policy file"
            ),
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| err(&file, format!("cannot read: {e}")))?;
    let mut out = Vec::new();
    for (i, doc) in split_documents(&text).into_iter().enumerate() {
        let source = format!("{file}#{}", i + 1);
        let doc: serde_json::Value = serde_saphyr::from_str(&doc)
            .map_err(|e| err(&source, format!("not valid YAML: {e}")))?;
        if doc.is_null() {
            continue;
        }
        read_document(&source, doc, &mut out)?;
    }
    Ok(out)
}

/// Splits a YAML stream into its documents, counted as a reader counts them: every `---`
/// starts one (empty ones included), and text before the first `---` is one only if it holds
/// more than comments. Parsing each on its own keeps document numbers exact in messages.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut started = false;
    for line in text.lines() {
        let marker = line
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if let Some(rest) = marker {
            let has_content = current
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            if started || has_content {
                docs.push(std::mem::take(&mut current));
            }
            current.clear();
            current.push_str(rest);
            current.push('\n');
            started = true;
        } else if line == "..." {
            // The end of a document; what follows before the next `---` is not content.
            continue;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    let has_content = current
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if started || has_content {
        docs.push(current);
    }
    docs
}

fn read_document(
    source: &str,
    doc: serde_json::Value,
    out: &mut Vec<(String, ImagePolicy)>,
) -> Result<(), LoadError> {
    let err = |message: String| LoadError {
        source: source.to_owned(),
        message,
    };
    let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    let api_version = doc
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let expected = format!("{GROUP}/{VERSION}");
    match kind {
        "List" | "ImagePolicyList" => {
            let items = match doc.get("items") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                Some(serde_json::Value::Null) | None => Vec::new(),
                Some(_) => return Err(err("items: expected a list".to_owned())),
            };
            for (j, item) in items.into_iter().enumerate() {
                read_document(&format!("{source} items[{j}]"), item, out)?;
            }
            Ok(())
        }
        "ImagePolicy" if api_version == expected => {
            let policy: ImagePolicy = serde_json::from_value(doc)
                .map_err(|e| err(format!("not a valid ImagePolicy: {e}")))?;
            if policy.metadata.name.as_deref().is_none_or(str::is_empty) {
                return Err(err("metadata.name: an ImagePolicy needs a name".to_owned()));
            }
            out.push((source.to_owned(), policy));
            Ok(())
        }
        "ImagePolicy" => Err(err(format!(
            "apiVersion {api_version:?} is not supported; use {expected}"
        ))),
        "" => Err(err(format!(
            "no kind: expected an ImagePolicy (apiVersion: {expected}, kind: ImagePolicy)"
        ))),
        other => Err(err(format!(
            "kind {other:?} is not an ImagePolicy (apiVersion: {expected}, kind: ImagePolicy)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata:\n  name: NAME\nspec:\n  deniedTags: [latest]\n";

    fn policy(name: &str) -> String {
        POLICY.replace("NAME", name)
    }

    #[test]
    fn reads_files_folders_and_documents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("{}---\n---\n{}", policy("one"), policy("two")),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.yml"), policy("three")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), "junk").unwrap();
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            policy("four").replace('\n', "\n  ")
        );
        let single = dir.path().join("list.policy");
        std::fs::write(&single, list).unwrap();

        let loaded = load_policies(&[dir.path().to_owned(), single]).unwrap();
        let names: Vec<_> = loaded
            .iter()
            .map(|(_, p)| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["one", "two", "three", "four"]);
        assert!(loaded[1].0.ends_with("a.yaml#3"), "{}", loaded[1].0);
        assert!(
            loaded[3].0.ends_with("list.policy#1 items[0]"),
            "{}",
            loaded[3].0
        );
    }

    #[test]
    fn errors_name_file_and_document() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let cases = [
            (
                format!("{}---\nkind: ConfigMap\napiVersion: v1\n", policy("a")),
                "p.yaml#2: kind \"ConfigMap\"",
            ),
            (
                policy("a").replace("deniedTags: [latest]", "mode: Sometimes"),
                "p.yaml#1: not a valid ImagePolicy",
            ),
            ("key: [unclosed".to_owned(), "p.yaml#1: not valid YAML"),
            (
                policy("a").replace("v1alpha1", "v9"),
                "p.yaml#1: apiVersion \"imagegate.dev/v9\"",
            ),
            (
                format!("{}---\n{}", policy("a"), policy("a")),
                "p.yaml#2: a second ImagePolicy named \"a\"",
            ),
            (policy(""), "p.yaml#1: metadata.name"),
        ];
        for (text, expected) in cases {
            std::fs::write(&file, &text).unwrap();
            let e = load_policies(std::slice::from_ref(&file)).unwrap_err();
            assert!(
                e.to_string().contains(expected),
                "{e} does not contain {expected}"
            );
        }
        let missing = load_policies(&[dir.path().join("missing.yaml")]).unwrap_err();
        assert!(
            missing.to_string().contains("missing.yaml: cannot read"),
            "{missing}"
        );
    }
}
