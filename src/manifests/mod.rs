//! Reading Kubernetes manifests from files, folders and standard input: multi-document YAML,
//! JSON, and `kind: List`, with the line and column of every node ([`positions`]). Used by
//! `check` (manifests and policies) and `serve` (policies).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use serde_saphyr::Spanned;

use crate::policy::{CompileError, ImagePolicy, crd::GROUP};

pub mod positions;

pub use positions::{Marks, Position};

/// Standard input, when given as a path; also the file name its positions are shown with
/// (`-:LINE:COLUMN`).
pub const STDIN: &str = "-";

/// The name standard input's documents are shown with in their source (`<stdin>#DOC`).
const STDIN_SOURCE: &str = "<stdin>";

/// File endings read from folders.
const MANIFEST_EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The largest manifest file read, so a stray large file cannot exhaust memory.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The most YAML documents read from one file or stream. serde-saphyr's default (1,024) is
/// below what `helm template` or `kustomize build` prints for a large repository; this bound
/// still stops a stream of empty documents, which is all a larger count could be within
/// [`MAX_FILE_BYTES`] of real objects.
const MAX_DOCUMENTS: usize = 100_000;

/// The most YAML nodes (mappings, sequences, scalars) read from one file. A real manifest
/// spends at least 8 bytes on a node (`- a: b\n` is two nodes in 7), so [`MAX_FILE_BYTES`] of
/// manifests stays under this; serde-saphyr's default (250,000) is a 20 MB rendered stream.
const MAX_NODES: usize = (MAX_FILE_BYTES / 8) as usize;

/// The most parser events read from one file: a node is one event, a collection two.
const MAX_EVENTS: usize = 2 * MAX_NODES;

/// serde-saphyr's limits with the counts above; its alias and depth limits (which stop alias
/// bombs and stack exhaustion) stay as they are.
pub(crate) fn yaml_budget() -> Option<serde_saphyr::Budget> {
    serde_saphyr::budget! {
        max_documents: MAX_DOCUMENTS,
        max_nodes: MAX_NODES,
        max_events: MAX_EVENTS,
    }
}

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from: `FILE#DOC` (the file's non-empty documents, counted from 1),
    /// `FILE#DOC.items[I]` for an item of a `kind: List`, `FILE#DOC[I]` for an element of a
    /// top-level array; `<stdin>` for standard input.
    pub source: String,
    /// The file, as named on the command line or found in a folder; `-` for standard input.
    pub file: String,
    /// The object.
    pub value: Value,
    /// Where each of its nodes is in the file.
    pub marks: Marks,
}

impl Document {
    /// `apiVersion`, or empty.
    pub fn api_version(&self) -> &str {
        self.str_field("apiVersion")
    }
    /// `kind`, or empty.
    pub fn kind(&self) -> &str {
        self.str_field("kind")
    }
    /// `metadata.name`, or empty.
    pub fn name(&self) -> &str {
        self.metadata_str("name")
    }
    /// `metadata.namespace`, or empty.
    pub fn namespace(&self) -> &str {
        self.metadata_str("namespace")
    }
    /// The line where the object starts.
    pub fn line(&self) -> u32 {
        self.marks.position().line
    }
    /// The position of the node at a field path (`spec.containers[0].image`).
    pub fn position_of(&self, field_path: &str) -> Option<Position> {
        self.marks.find(field_path)
    }
    fn str_field(&self, key: &str) -> &str {
        self.value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
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
    #[error("{file}{}: invalid {format}: {message}", at.map(|p| format!(":{p}")).unwrap_or_default())]
    Syntax {
        file: String,
        at: Option<Position>,
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

impl LoadError {
    /// What the error is about: a file, or a document (`FILE#DOC`).
    pub fn source(&self) -> &str {
        match self {
            LoadError::Io { path, .. } | LoadError::TooLarge { path } => path,
            LoadError::Syntax { file, .. } => file,
            LoadError::Invalid { source_name, .. } | LoadError::Policy { source_name, .. } => {
                source_name
            }
        }
    }

    /// Where in the file, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            LoadError::Syntax { at, .. } => *at,
            _ => None,
        }
    }

    /// What went wrong, without the source and position.
    pub fn message(&self) -> String {
        match self {
            LoadError::Io { source, .. } => format!("cannot read: {source}"),
            LoadError::TooLarge { .. } => format!("larger than {MAX_FILE_BYTES} bytes"),
            LoadError::Syntax {
                format, message, ..
            } => format!("invalid {format}: {message}"),
            LoadError::Invalid { message, .. } => message.clone(),
            LoadError::Policy { policy, error, .. } => format!("policy {policy:?}: {error}"),
        }
    }
}

/// Something to read: standard input or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// The name its positions are shown with: `-` for standard input, else the path
    /// without a leading `./` (files found in `.` are `apps/web.yaml`, not `./apps/web.yaml`).
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => STDIN.to_owned(),
            Input::File(path) => path.strip_prefix(".").unwrap_or(path).display().to_string(),
        }
    }
}

/// Everything to read for `paths`, in order: `-` is standard input, a folder stands for its
/// manifest files (recursively, in name order; hidden files and folders are left out), a file
/// for itself. A path that cannot be listed is an error in its place.
pub fn inputs(paths: &[PathBuf]) -> Vec<Result<Input, LoadError>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == STDIN {
            out.push(Ok(Input::Stdin));
        } else {
            files_of(path, &mut out);
        }
    }
    out
}

fn files_of(path: &Path, out: &mut Vec<Result<Input, LoadError>>) {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let listed = std::fs::metadata(path).and_then(|meta| {
        if !meta.is_dir() {
            return Ok(None);
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        Ok(Some(entries))
    });
    let entries = match listed {
        Err(e) => return out.push(Err(io(e))),
        Ok(None) => return out.push(Ok(Input::File(path.to_owned()))),
        Ok(Some(entries)) => entries,
    };
    for entry in entries {
        let hidden = entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            files_of(&entry, out);
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MANIFEST_EXTENSIONS.contains(&e))
        {
            out.push(Ok(Input::File(entry)));
        }
    }
}

/// What one input held: its documents, in order, and the error that ended reading it, if any
/// (the documents before a syntax error are kept).
#[derive(Debug, Default)]
pub struct Parsed {
    pub documents: Vec<Document>,
    pub error: Option<LoadError>,
}

/// Reads and parses one input.
pub fn read_input(input: &Input) -> Parsed {
    let failed = |error| Parsed {
        documents: Vec::new(),
        error: Some(error),
    };
    match input {
        Input::Stdin => {
            let mut text = String::new();
            let read = std::io::stdin()
                .take(MAX_FILE_BYTES + 1)
                .read_to_string(&mut text);
            if let Err(source) = read {
                return failed(LoadError::Io {
                    path: STDIN.into(),
                    source,
                });
            }
            if text.len() as u64 > MAX_FILE_BYTES {
                return failed(LoadError::TooLarge { path: STDIN.into() });
            }
            parse(STDIN_SOURCE, STDIN, &text)
        }
        Input::File(path) => {
            let name = input.name();
            match read_text(path, &name) {
                Ok(text) => parse(&name, &name, &text),
                Err(e) => failed(e),
            }
        }
    }
}

fn read_text(path: &Path, name: &str) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: name.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: name.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Reads every document of every path, in order, stopping at the first error (for policies,
/// which load entirely or not at all). Folders are read recursively, their files in name
/// order; `-` is standard input.
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<Document>, LoadError> {
    let mut out = Vec::new();
    for input in inputs(paths) {
        let parsed = read_input(&input?);
        if let Some(e) = parsed.error {
            return Err(e);
        }
        out.extend(parsed.documents);
    }
    Ok(out)
}

/// Reads one file, stopping at the first error.
pub fn read_file(path: &Path) -> Result<Vec<Document>, LoadError> {
    read_paths(&[path.to_owned()])
}

/// Parses the text of one file, stopping at the first error; see [`parse`].
pub fn parse_documents(name: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    let parsed = parse(name, name, text);
    match parsed.error {
        Some(e) => Err(e),
        None => Ok(parsed.documents),
    }
}

/// Parses the text of one file, named `file` in positions and `source` in sources: JSON when
/// it starts with `{` or `[` (one or more JSON values in a row), YAML otherwise (any number of
/// documents). Empty documents are skipped (and not counted); lists are expanded. A syntax
/// error ends the file; the documents before it are kept.
pub fn parse(source: &str, file: &str, text: &str) -> Parsed {
    let trimmed = text.trim_start();
    let (roots, error) = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json(file, text)
    } else {
        parse_yaml(file, text)
    };
    let mut documents = Vec::new();
    for (i, (value, marks)) in roots.into_iter().enumerate() {
        push_document(
            &mut documents,
            format!("{source}#{}", i + 1),
            file,
            value,
            marks,
        );
    }
    Parsed { documents, error }
}

type Roots = Vec<(Value, Marks)>;

fn parse_json(file: &str, text: &str) -> (Roots, Option<LoadError>) {
    let mut roots = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let (mut start, mut offset) = (0, positions::Offset::default());
    while let Some(next) = stream.next() {
        match next {
            Ok(value) => {
                let end = stream.byte_offset();
                let part = &text[start..end];
                roots.push((value, positions::json_marks(part, offset)));
                offset = offset.after(part);
                start = end;
            }
            Err(e) => {
                let at = (e.line() > 0).then(|| Position {
                    line: u32::try_from(e.line()).unwrap_or(u32::MAX),
                    column: u32::try_from(e.column()).unwrap_or(u32::MAX),
                });
                let message = e.to_string();
                // serde_json ends its message with the position, which is shown already.
                let message = match message.rsplit_once(" at line ") {
                    Some((head, _)) if at.is_some() => head.to_owned(),
                    _ => message,
                };
                let error = LoadError::Syntax {
                    file: file.to_owned(),
                    at,
                    format: "JSON",
                    message,
                };
                return (roots, Some(error));
            }
        }
    }
    (roots, None)
}

fn parse_yaml(file: &str, text: &str) -> (Roots, Option<LoadError>) {
    let options = || {
        serde_saphyr::options! {
            budget: yaml_budget(),
        }
    };
    match serde_saphyr::from_multiple_with_options::<Spanned<positions::Node>>(text, options()) {
        Ok(nodes) => (nodes.into_iter().map(positions::split).collect(), None),
        Err(e) => {
            // Read again document by document, to keep those before the error.
            let mut reader = std::io::Cursor::new(text.as_bytes());
            let roots = serde_saphyr::read_with_options::<_, Spanned<positions::Node>>(
                &mut reader,
                options(),
            )
            .map_while(Result::ok)
            .map(positions::split)
            .collect();
            let bare = e.without_snippet();
            let message = serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::DefaultMessageFormatter,
                bare,
            )
            // It may quote the input; no control character of it reaches a terminal.
            .replace(char::is_control, " ");
            let at = e
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| Position::of(&l));
            let error = LoadError::Syntax {
                file: file.to_owned(),
                at,
                format: "YAML",
                message,
            };
            (roots, Some(error))
        }
    }
}

fn push_document(out: &mut Vec<Document>, source: String, file: &str, value: Value, marks: Marks) {
    match value {
        Value::Null => {}
        // A top-level array of objects stands for its elements (`[{…}, {…}]` in JSON).
        Value::Array(items) if items.iter().all(Value::is_object) => {
            let at = marks.position();
            let mut item_marks = marks.into_items().into_iter();
            for (i, item) in items.into_iter().enumerate() {
                let m = item_marks.next().unwrap_or_else(|| Marks::at(at));
                push_document(out, format!("{source}[{i}]"), file, item, m);
            }
        }
        Value::Object(mut map) if is_list(&map) => {
            let at = marks.position();
            let mut marks = marks;
            let mut item_marks = marks
                .take("items")
                .map(Marks::into_items)
                .unwrap_or_default()
                .into_iter();
            let Some(Value::Array(items)) = map.remove("items") else {
                return;
            };
            for (i, item) in items.into_iter().enumerate() {
                let m = item_marks.next().unwrap_or_else(|| Marks::at(at));
                push_document(out, format!("{source}.items[{i}]"), file, item, m);
            }
        }
        value => out.push(Document {
            source,
            file: file.to_owned(),
            value,
            marks,
        }),
    }
}

/// A `kind: List` (or `PodList`, …) with its `items`.
fn is_list(map: &serde_json::Map<String, Value>) -> bool {
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    kind.ends_with("List") && map.get("items").is_some_and(Value::is_array)
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
    for_each_policy(paths, |source, policy| {
        crate::policy::compile_with(&policy, secrets).map_err(|error| LoadError::Policy {
            source_name: source.to_owned(),
            policy: policy.metadata.name.clone().unwrap_or_default(),
            error,
        })?;
        out.push(LoadedPolicy {
            source: source.to_owned(),
            policy,
        });
        Ok(())
    })?;
    Ok(out)
}

/// Reads the ImagePolicy documents of `paths` as [`load_policies`] does, but hands each policy
/// to `each` (with its `FILE#DOC`) as soon as it is read, holding one file at a time: a policy
/// source with many policies then never holds them all at once. `each` compiles it; its error
/// ends the reading, as does a second policy of a name already read.
pub fn for_each_policy(
    paths: &[PathBuf],
    mut each: impl FnMut(&str, ImagePolicy) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    // Where each name was first seen, for the error on a second policy of the same name.
    let mut seen: HashMap<String, String> = HashMap::new();
    for input in inputs(paths) {
        let parsed = read_input(&input?);
        if let Some(e) = parsed.error {
            return Err(e);
        }
        for doc in parsed.documents {
            let group = doc.api_version().split_once('/').map_or("", |(g, _)| g);
            if group != GROUP {
                continue;
            }
            let policy = policy_from_document(&doc)?;
            // Compiled (by `each`) before the name is checked, so that a policy that does not
            // compile is reported as such wherever it is.
            each(&doc.source, policy)?;
            if let Some(first) = seen.get(doc.name()) {
                return Err(LoadError::Invalid {
                    source_name: doc.source.clone(),
                    message: format!(
                        "a second ImagePolicy named {:?} (the first is at {first}); policy names are unique",
                        doc.name(),
                    ),
                });
            }
            seen.insert(doc.name().to_owned(), doc.source.clone());
        }
    }
    Ok(())
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
        let err = parse_documents("f.json", "{\"kind\": \n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.json:2:0: invalid JSON: EOF while parsing a value"
        );
    }

    #[test]
    fn invalid_yaml_names_the_file_line_and_column() {
        let err = parse_documents("bad.yaml", "kind: Pod\n  metadata: [\n").unwrap_err();
        assert!(
            err.to_string().starts_with("bad.yaml:2:11: invalid YAML: "),
            "{err}"
        );
        assert_eq!(
            err.position(),
            Some(Position {
                line: 2,
                column: 11
            })
        );
    }

    #[test]
    fn documents_before_a_syntax_error_are_kept() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nspec: [\n---\nkind: Pod\n";
        let parsed = parse("f.yaml", "f.yaml", text);
        assert_eq!(parsed.documents.len(), 1);
        assert_eq!(parsed.documents[0].name(), "a");
        let err = parsed.error.unwrap();
        assert_eq!(
            err.to_string(),
            "f.yaml:6:7: invalid YAML: unclosed bracket '['"
        );
    }

    #[test]
    fn non_objects_are_documents_too() {
        // What is not an object is for the reader of documents to judge (`check` skips it).
        let docs = parse_documents("s.yaml", "just a string\n---\n[1, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value, Value::String("just a string".into()));
        assert_eq!(docs[1].source, "s.yaml#2");
    }

    #[test]
    fn objects_know_their_lines_through_lists() {
        let text = "# header\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n  spec:\n    containers:\n    - {name: c, image: nginx}\n";
        let docs = parse_documents("l.yaml", text).unwrap();
        assert_eq!(docs[0].source, "l.yaml#1.items[0]");
        assert_eq!(docs[0].line(), 5);
        assert_eq!(
            docs[0].position_of("spec.containers[0].image"),
            Some(Position {
                line: 10,
                column: 24
            })
        );
        let json =
            "[\n {\"kind\": \"Pod\",\n  \"spec\": {\"containers\": [{\"image\": \"nginx\"}]}}\n]";
        let docs = parse_documents("l.json", json).unwrap();
        assert_eq!(docs[0].source, "l.json#1[0]");
        assert_eq!(docs[0].line(), 2);
        assert_eq!(
            docs[0].position_of("spec.containers[0].image"),
            Some(Position {
                line: 3,
                column: 37
            })
        );
    }

    #[test]
    fn long_streams_are_read_whole() {
        // More documents than serde-saphyr's default budget allows (1,024).
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n".repeat(1500);
        let docs = parse_documents("-", &text).unwrap();
        assert_eq!(docs.len(), 1500);
        assert_eq!(docs[1499].line(), 1499 * 4 + 1);
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
