//! `imagegate check`: the engine on manifest files, for CI. Every object is judged as a CREATE
//! by the given requester; exit 0 when all are admitted, 1 when any is denied, 2 on bad input.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::EngineArgs;
use crate::decision::{self, Decision, Input, Requester, Violation};
use crate::manifests::{self, Document, LoadError};
use crate::namespaces::{self, Labels};
use crate::policy::{Mode, Snapshot, compile};
use crate::workload::{Workload, WorkloadKind};

/// Exit code: every object admitted.
const EXIT_ADMITTED: u8 = 0;
/// Exit code: at least one object denied.
const EXIT_DENIED: u8 = 1;
/// Exit code: bad input (unreadable file, invalid YAML, invalid policy).
const EXIT_BAD_INPUT: u8 = 2;

/// The namespace of an object that names none, as `kubectl apply` would use.
const DEFAULT_NAMESPACE: &str = "default";

/// Arguments of `imagegate check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files or folders (YAML or JSON; ImagePolicy documents are read, others skipped);
    /// repeat the flag or separate with commas for several.
    #[arg(
        long,
        env = "IMAGEGATE_POLICIES",
        required = true,
        value_delimiter = ','
    )]
    pub policies: Vec<PathBuf>,

    /// Labels of a namespace, as NS=KEY=VALUE[,KEY=VALUE…]; repeatable (in the environment,
    /// separate namespaces with `;`). Overrides Namespace objects in the input.
    #[arg(
        long = "namespace-labels",
        env = "IMAGEGATE_NAMESPACE_LABELS",
        value_name = "NS=K=V[,K=V]",
        value_delimiter = ';',
        value_parser = namespaces::parse_namespace_labels
    )]
    pub namespace_labels: Vec<(String, Labels)>,

    /// The requester's username (for break-glass allowedUsers); unknown when omitted.
    #[arg(long, env = "IMAGEGATE_CHECK_USER")]
    pub user: Option<String>,

    /// A group of the requester (for break-glass allowedGroups); repeatable, or separated by
    /// commas.
    #[arg(
        long = "group",
        value_name = "G",
        env = "IMAGEGATE_CHECK_GROUPS",
        value_delimiter = ','
    )]
    pub groups: Vec<String>,

    /// The moment of the decision (RFC 3339), e.g. to replay a decision record; default now.
    #[arg(long, env = "IMAGEGATE_CHECK_NOW", value_parser = parse_now)]
    pub now: Option<jiff::Timestamp>,

    /// Output format.
    #[arg(
        long,
        short = 'o',
        env = "IMAGEGATE_CHECK_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: OutputFormat,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Manifest files or folders (multi-document YAML or JSON, `kind: List`), `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// How `check` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Readable lines, like `kubectl` errors and warnings.
    Text,
    /// One JSON object (`{"results": [...]}`).
    Json,
}

/// Parses `--now`.
pub fn parse_now(s: &str) -> Result<jiff::Timestamp, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-01-02T15:04:05Z: {e}"))
}

/// The result for one object.
#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub source: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub allowed: bool,
    pub warnings: Vec<String>,
    pub violations: Vec<Violation>,
    #[serde(skip)]
    denial: Option<String>,
}

impl CheckResult {
    /// The result for an object that `decision` decided.
    pub fn decided(
        source: String,
        kind: &str,
        namespace: &str,
        name: &str,
        decision: &Decision,
    ) -> CheckResult {
        CheckResult {
            source,
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            allowed: decision.allowed,
            warnings: decision.warnings.clone(),
            violations: decision.violations.clone(),
            denial: (!decision.allowed).then(|| decision.denial_message(kind, name, namespace)),
        }
    }
}

/// Everything `check` found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub results: Vec<CheckResult>,
}

impl CheckReport {
    /// The exit code: 1 when any object is denied, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.results.iter().all(|r| r.allowed) {
            EXIT_ADMITTED
        } else {
            EXIT_DENIED
        }
    }
}

/// Runs `imagegate check`.
pub fn main(args: CheckArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            let text = match args.output {
                OutputFormat::Json => match serde_json::to_string_pretty(&report) {
                    Ok(json) => json + "\n",
                    Err(e) => {
                        eprintln!("imagegate check: cannot write JSON: {e}");
                        return ExitCode::from(EXIT_BAD_INPUT);
                    }
                },
                OutputFormat::Text => render_text(&report),
            };
            // A closed pipe (`| head`) is the reader's choice, not an error of ours.
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("imagegate check: cannot write the results: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("imagegate check: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Reads policies and manifests and decides every object.
pub fn run(args: &CheckArgs) -> Result<CheckReport, LoadError> {
    let policies = manifests::load_policies(&args.policies)?;
    let compiled = policies
        .iter()
        // load_policies has compiled each one already; a failure here cannot happen.
        .filter_map(|p| compile(&p.policy).ok())
        .collect();
    let snapshot = Snapshot::new(compiled, args.engine.settings());
    let documents = manifests::read_paths(&args.paths)?;

    let requester = (args.user.is_some() || !args.groups.is_empty()).then(|| Requester {
        username: args.user.clone().unwrap_or_default(),
        groups: args.groups.clone(),
    });
    let now = args.now.unwrap_or_else(jiff::Timestamp::now);
    let labels = namespace_labels(&documents, &args.namespace_labels)?;

    let mut results = Vec::new();
    for doc in documents.iter().filter(|d| !is_namespace(d)) {
        results.push(check_document(
            &snapshot,
            doc,
            &labels,
            requester.as_ref(),
            now,
        )?);
    }
    Ok(CheckReport { results })
}

fn is_namespace(doc: &Document) -> bool {
    doc.kind() == "Namespace" && doc.api_version() == "v1"
}

/// Labels per namespace: `--namespace-labels` first, then Namespace objects in the input.
fn namespace_labels(
    documents: &[Document],
    flags: &[(String, Labels)],
) -> Result<HashMap<String, Labels>, LoadError> {
    let mut out = HashMap::new();
    for doc in documents.iter().filter(|d| is_namespace(d)) {
        let labels: Labels = match doc.value.pointer("/metadata/labels") {
            None | Some(serde_json::Value::Null) => Labels::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| LoadError::Invalid {
                source_name: doc.source.clone(),
                message: format!("metadata.labels: {e}"),
            })?,
        };
        out.insert(
            doc.name().to_owned(),
            namespaces::with_name_label(doc.name(), labels),
        );
    }
    for (ns, labels) in flags {
        out.insert(ns.clone(), namespaces::with_name_label(ns, labels.clone()));
    }
    Ok(out)
}

fn check_document(
    snapshot: &Snapshot,
    doc: &Document,
    labels: &HashMap<String, Labels>,
    requester: Option<&Requester>,
    now: jiff::Timestamp,
) -> Result<CheckResult, LoadError> {
    let namespace = match doc.namespace() {
        "" => DEFAULT_NAMESPACE,
        ns => ns,
    };
    let result = CheckResult {
        source: doc.source.clone(),
        kind: doc.kind().to_owned(),
        namespace: namespace.to_owned(),
        name: doc.name().to_owned(),
        allowed: true,
        warnings: Vec::new(),
        violations: Vec::new(),
        denial: None,
    };
    let Some(kind) = WorkloadKind::from_api_version_kind(doc.api_version(), doc.kind()) else {
        return Ok(result);
    };
    let workload = Workload::from_value(kind, &doc.value).map_err(|e| LoadError::Invalid {
        source_name: doc.source.clone(),
        message: e.to_string(),
    })?;
    let ns_labels = labels
        .get(namespace)
        .cloned()
        .unwrap_or_else(|| namespaces::with_name_label(namespace, Labels::new()));
    let decision = decision::decide(
        snapshot,
        &Input {
            object: &workload,
            old_object: None,
            namespace_labels: &ns_labels,
            requester,
            now,
        },
    );
    Ok(CheckResult::decided(
        result.source,
        kind.as_str(),
        &result.namespace,
        &result.name,
        &decision,
    ))
}

/// The webhook that would answer for a kind, as named in `kubectl` errors.
fn webhook_for(kind: &str) -> &'static str {
    if kind == "Pod" {
        "pods.imagegate.dev"
    } else {
        "workloads.imagegate.dev"
    }
}

/// Renders the report as `kubectl` would show the outcome of applying each object.
pub fn render_text(report: &CheckReport) -> String {
    let mut out = String::new();
    let (mut admitted, mut denied, mut warned) = (0, 0, 0);
    for r in &report.results {
        let object = format!("{}/{}", r.kind.to_lowercase(), r.name);
        if let Some(denial) = &r.denial {
            denied += 1;
            let _ = writeln!(
                out,
                "DENIED   {object} in {} ({})\n  Error from server (Forbidden): admission webhook {:?} denied the request: {}",
                r.namespace,
                r.source,
                webhook_for(&r.kind),
                denial.replace('\n', "\n  ")
            );
        } else {
            admitted += 1;
            let _ = writeln!(out, "ADMITTED {object} in {} ({})", r.namespace, r.source);
        }
        if !r.warnings.is_empty() {
            warned += 1;
        }
        for w in &r.warnings {
            let _ = writeln!(out, "  Warning: {w}");
        }
        for v in r
            .violations
            .iter()
            .filter(|v| v.mode == Mode::Audit && !v.excused)
        {
            let _ = writeln!(out, "  Audit: {v}");
        }
    }
    let _ = writeln!(
        out,
        "\n{} object{} checked: {admitted} admitted, {denied} denied ({warned} with warnings)",
        report.results.len(),
        if report.results.len() == 1 { "" } else { "s" }
    );
    out
}
