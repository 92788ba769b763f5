//! What judging objects found, as plain data, and the formats it is printed in: readable text,
//! JSON, JUnit XML, SARIF 2.1.0 and GitHub Actions workflow commands.
//!
//! `imagegate check` fills a [`Report`] from files; anything else that judges objects against
//! policies (the cluster audit) fills the same type and gets the same formats. A field added
//! to [`ObjectResult`] or [`Finding`] appears in the JSON report by itself; the other formats
//! show what they name.

use std::fmt;

use serde::Serialize;

use crate::decision::{Decision, Violation};
use crate::mutation::{Mutation, Plan};
use crate::policy::Mode;

pub mod github;
pub mod junit;
pub mod sarif;
pub mod text;

/// Exit code: every object admitted.
pub const EXIT_ADMITTED: u8 = 0;
/// Exit code: at least one object denied.
pub const EXIT_DENIED: u8 = 1;
/// Exit code: bad input (unreadable file, invalid YAML, invalid policy), or, with `--strict`,
/// a document that was skipped.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Everything a run found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    /// One entry per object judged, in input order.
    pub results: Vec<ObjectResult>,
    /// Documents that are not objects to judge, with the reason and what to do instead.
    pub skipped: Vec<Skipped>,
    /// Inputs, or parts of them, that could not be read.
    pub errors: Vec<InputError>,
}

/// A place in a file: `FILE:LINE[:COLUMN]`, both counted from 1, the column in characters.
/// Standard input is the file `-`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        Ok(())
    }
}

/// The result for one object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectResult {
    /// Where the object came from: `FILE#DOC` for `check`.
    pub source: String,
    pub kind: String,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
    /// False exactly when a non-excused violation of an `Enforce` policy exists.
    pub allowed: bool,
    /// What a `kubectl` user would see.
    pub warnings: Vec<String>,
    /// Every violation of every applying policy.
    pub violations: Vec<Finding>,
    /// Where the object starts (`file`, `line`), when it came from a file.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How many images were checked: 0 for kinds that run none.
    pub images: usize,
    /// What the mutating webhook would change (`setPullPolicyAlways`, `pinDigests`): in a Pod,
    /// the Pod itself; in a workload, each Pod made from its template (the template itself is
    /// never changed). Changes made by Enforce policies and those Warn and Audit policies only
    /// report; absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mutations: Vec<Mutation>,
    /// The message a denied `kubectl apply` would print.
    #[serde(skip)]
    pub denial: Option<String>,
}

/// A violation and where its image is written.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub violation: Violation,
    /// The image string's `file`, `line` and `column`, when known.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl ObjectResult {
    /// An admitted object without images; [`ObjectResult::decided`] fills in a decision.
    pub fn new(source: String, kind: &str, namespace: &str, name: &str) -> ObjectResult {
        ObjectResult {
            source,
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            allowed: true,
            warnings: Vec::new(),
            violations: Vec::new(),
            location: None,
            images: 0,
            mutations: Vec::new(),
            denial: None,
        }
    }

    /// Sets where the object is.
    pub fn at(mut self, location: Option<Location>) -> ObjectResult {
        self.location = location;
        self
    }

    /// Takes what the mutating webhook would change. For a Pod its warnings are the `kubectl`
    /// user's too; a workload's Pods are created by its controller, which gets them.
    pub fn mutated(mut self, plan: Plan, is_pod: bool) -> ObjectResult {
        if is_pod {
            self.warnings.extend(plan.warnings);
        }
        self.mutations = plan.mutations;
        self
    }

    /// Takes the outcome of a decision; `locate` says where each violation's image is.
    pub fn decided(
        mut self,
        decision: &Decision,
        locate: impl Fn(&Violation) -> Option<Location>,
    ) -> ObjectResult {
        self.allowed = decision.allowed;
        self.warnings = decision.warnings.clone();
        self.images = decision.images.len();
        self.violations = decision
            .violations
            .iter()
            .map(|v| Finding {
                location: locate(v),
                violation: v.clone(),
            })
            .collect();
        self.denial = (!decision.allowed)
            .then(|| decision.denial_message(&self.kind, &self.name, &self.namespace));
        self
    }

    /// `kind/name`, as `kubectl` names objects (`deployment/web`).
    pub fn object(&self) -> String {
        format!("{}/{}", self.kind.to_lowercase(), self.name)
    }

    /// The violations that deny the object.
    pub fn denials(&self) -> impl Iterator<Item = &Finding> {
        self.violations.iter().filter(|f| f.violation.denies())
    }
}

impl Finding {
    /// How a reader should take it: an error when it denies, a warning for `Warn` policies, a
    /// note for `Audit` policies and for what a break-glass exception excused.
    pub fn severity(&self) -> Severity {
        let v = &self.violation;
        if v.excused {
            return Severity::Note;
        }
        match v.mode {
            Mode::Enforce => Severity::Error,
            Mode::Warn => Severity::Warning,
            Mode::Audit => Severity::Note,
        }
    }
}

/// A finding's weight, as CI systems grade annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Note,
    Warning,
    Error,
}

/// A document that was not judged.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// `FILE#DOC`, or the file when the whole file was skipped.
    pub source: String,
    #[serde(flatten)]
    pub location: Location,
    pub reason: SkipReason,
    /// What it is, and how to check what it stands for.
    pub message: String,
}

/// Why a document was not judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SkipReason {
    /// No `apiVersion` or no `kind`: a configuration file, a fragment, a list of values.
    NotAnObject,
    /// A Kustomize `Kustomization` or `Component`: its objects exist once built.
    Kustomization,
    /// A Helm `Chart.yaml`.
    HelmChart,
    /// A Helm values file.
    HelmValues,
    /// A file under a Helm chart's `templates/`: not YAML until rendered.
    HelmTemplate,
    /// A Flux resource: sources, Kustomizations and HelmReleases are rendered in the cluster.
    Flux,
    /// An Argo CD Application, ApplicationSet or AppProject.
    ArgoCd,
}

impl SkipReason {
    /// Every reason, in the order summaries list them.
    pub const ALL: [SkipReason; 7] = [
        SkipReason::NotAnObject,
        SkipReason::Kustomization,
        SkipReason::HelmChart,
        SkipReason::HelmValues,
        SkipReason::HelmTemplate,
        SkipReason::Flux,
        SkipReason::ArgoCd,
    ];

    /// The reason's name, as in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotAnObject => "notAnObject",
            SkipReason::Kustomization => "kustomization",
            SkipReason::HelmChart => "helmChart",
            SkipReason::HelmValues => "helmValues",
            SkipReason::HelmTemplate => "helmTemplate",
            SkipReason::Flux => "flux",
            SkipReason::ArgoCd => "argoCd",
        }
    }

    /// A count of documents skipped for this reason, for summaries: "2 Helm values files".
    pub fn counted(self, n: usize) -> String {
        let (one, many) = match self {
            SkipReason::NotAnObject => ("not a Kubernetes object", "not Kubernetes objects"),
            SkipReason::Kustomization => ("Kustomization", "Kustomizations"),
            SkipReason::HelmChart => ("Helm Chart.yaml", "Helm Chart.yaml files"),
            SkipReason::HelmValues => ("Helm values file", "Helm values files"),
            SkipReason::HelmTemplate => ("Helm template", "Helm templates"),
            SkipReason::Flux => ("Flux resource", "Flux resources"),
            SkipReason::ArgoCd => ("Argo CD resource", "Argo CD resources"),
        };
        format!("{n} {}", if n == 1 { one } else { many })
    }
}

/// An input, or a part of one, that could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct InputError {
    /// The file, or `FILE#DOC` for one document.
    pub source: String,
    /// Where in the file, when known.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// What went wrong, e.g. `invalid YAML: …`.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(at) if at.file == self.source => write!(f, "{at}: {}", self.message),
            Some(at) => write!(f, "{at}: {}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Counts, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub objects: usize,
    pub admitted: usize,
    pub denied: usize,
    pub with_warnings: usize,
    pub without_images: usize,
    pub skipped: usize,
    pub errors: usize,
}

impl Report {
    /// The counts of this report.
    pub fn summary(&self) -> Summary {
        let denied = self.results.iter().filter(|r| !r.allowed).count();
        Summary {
            objects: self.results.len(),
            admitted: self.results.len() - denied,
            denied,
            with_warnings: self
                .results
                .iter()
                .filter(|r| !r.warnings.is_empty())
                .count(),
            without_images: self.results.iter().filter(|r| r.images == 0).count(),
            skipped: self.skipped.len(),
            errors: self.errors.len(),
        }
    }

    /// The exit code: 2 when an input could not be read (or, when `strict`, a document was
    /// skipped), else 1 when any object is denied, else 0.
    pub fn exit_code(&self, strict: bool) -> u8 {
        if !self.errors.is_empty() || (strict && !self.skipped.is_empty()) {
            EXIT_BAD_INPUT
        } else if self.results.iter().any(|r| !r.allowed) {
            EXIT_DENIED
        } else {
            EXIT_ADMITTED
        }
    }

    /// The skipped documents counted by reason, in [`SkipReason::ALL`]'s order.
    pub fn skipped_by_reason(&self) -> Vec<(SkipReason, usize)> {
        SkipReason::ALL
            .iter()
            .map(|&reason| {
                let n = self.skipped.iter().filter(|s| s.reason == reason).count();
                (reason, n)
            })
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// The JSON report: one object with `results`, `skipped`, `errors` and `summary`.
    pub fn to_json(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            report: &'a Report,
            summary: Summary,
        }
        serde_json::to_string_pretty(&Json {
            report: self,
            summary: self.summary(),
        })
        .map(|json| json + "\n")
    }
}

/// The path a CI system knows a file by: relative to the working directory (the repository's
/// root in CI), with `/` separators and without a leading `./`; `None` for standard input.
pub fn repository_path(file: &str) -> Option<String> {
    if file == crate::manifests::STDIN {
        return None;
    }
    let path = std::path::Path::new(file);
    let relative = match std::env::current_dir() {
        Ok(cwd) if path.is_absolute() => path.strip_prefix(&cwd).unwrap_or(path),
        _ => path,
    };
    let parts: Vec<_> = relative
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy())
        .collect();
    let joined = parts.join("/");
    Some(if relative.is_absolute() {
        // The root component is `/` itself.
        joined.replacen("//", "/", 1)
    } else {
        joined
    })
}
