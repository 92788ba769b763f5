//! `imagegate check`: the engine on manifest files, for CI. Every Kubernetes object is judged
//! as a CREATE by the given requester; what is not an object is skipped with the reason, and an
//! input that cannot be read is reported without stopping the run. The report ([`Report`]) is
//! printed as text, JSON, JUnit XML, SARIF or GitHub workflow commands. Exit 0 when all are
//! admitted, 1 when any is denied, 2 on bad input (and, with `--strict`, on skipped documents).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{EngineArgs, KeySecretDirArgs};
use crate::decision::{self, Input, Requester};
use crate::evidence::{Deadline, Evidence, Gather, Offline};
use crate::gather::Replay;
use crate::manifests::{self, Document, LoadError};
use crate::mutation::{self, Digests};
use crate::namespaces::{self, Labels};
use crate::policy::{Snapshot, compile_with};
use crate::registry::{DockerConfigArgs, Registry, RegistryArgs};
use crate::report::{self, EXIT_BAD_INPUT, InputError, Location, ObjectResult, Report, Skipped};
use crate::verification;
use crate::workload::{Workload, WorkloadKind};

pub mod classify;

use classify::{Class, Scopes};

/// The namespace of a namespaced object that names none, as `kubectl apply` would use.
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

    /// Fail (exit 2) when any document was skipped: not a Kubernetes object, or a Kustomize,
    /// Helm, Flux or Argo CD file whose objects exist only once rendered.
    #[arg(long, env = "IMAGEGATE_CHECK_STRICT")]
    pub strict: bool,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Do not contact registries: images that a signature entry governs get the warning
    /// `signature not verified (offline)` instead of a verdict, and no violation.
    #[arg(long, env = "IMAGEGATE_CHECK_OFFLINE", conflicts_with = "evidence")]
    pub offline: bool,

    /// Replay signature evidence instead of contacting registries: FILE holds decision records
    /// as imagegate logs them (one JSON object per line; the later record of an image counts),
    /// one record, or one evidence object `{"images": …}`.
    #[arg(long, env = "IMAGEGATE_CHECK_EVIDENCE", value_name = "FILE")]
    pub evidence: Option<PathBuf>,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub docker: DockerConfigArgs,

    #[command(flatten)]
    pub keys: KeySecretDirArgs,

    /// Manifest files or folders (multi-document YAML or JSON, `kind: List`), `-` for stdin.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// How `check` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Readable lines, like `kubectl` errors and warnings.
    Text,
    /// One JSON object (`{"results": [...], "skipped": [...], "errors": [...], "summary": {...}}`).
    Json,
    /// JUnit XML: a test suite per file, a test case per object (GitLab, Jenkins).
    Junit,
    /// SARIF 2.1.0: a result per violation at its image's line (GitHub code scanning).
    Sarif,
    /// GitHub Actions workflow commands: an annotation per violation at its image's line.
    Github,
}

/// Parses `--now`.
pub fn parse_now(s: &str) -> Result<jiff::Timestamp, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-01-02T15:04:05Z: {e}"))
}

/// Runs `imagegate check`.
pub fn main(args: CheckArgs) -> ExitCode {
    let (report, judged) = match run(&args) {
        Ok(report) => (report, true),
        // Without policies nothing is judged. The error is the whole report: a CI system that
        // reads the report's file sees the failure there too (the text report stays empty).
        Err(e) => {
            let report = Report {
                errors: vec![input_error(&e)],
                ..Report::default()
            };
            (report, false)
        }
    };
    // Errors go to standard error as well, where a CI log shows them whatever the format.
    for e in &report.errors {
        eprintln!("imagegate check: {e}");
    }
    if !judged && args.output == OutputFormat::Text {
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    print(&report, args.output, args.strict, "check")
}

/// Prints `report` in `output` on standard output and returns its exit code (`strict` as for
/// `check --strict`); `command` names the command in messages. `imagegate audit` prints its
/// report with it too.
pub fn print(report: &Report, output: OutputFormat, strict: bool, command: &str) -> ExitCode {
    let text = match output {
        OutputFormat::Text => Ok(report::text::render(report)),
        OutputFormat::Json => report.to_json().map_err(|e| e.to_string()),
        OutputFormat::Junit => report::junit::render(report).map_err(|e| e.to_string()),
        OutputFormat::Sarif => report::sarif::render(report).map_err(|e| e.to_string()),
        OutputFormat::Github => Ok(report::github::render(report, strict)),
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            eprintln!("imagegate {command}: cannot write the report: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    // A closed pipe (`| head`) is the reader's choice, not an error of ours.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("imagegate {command}: cannot write the report: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    ExitCode::from(report.exit_code(strict))
}

/// Reads policies and manifests and judges every object. Policies that cannot be read are an
/// error (nothing can be judged without them); manifests that cannot be read are reported in
/// [`Report::errors`] and the rest is judged.
pub fn run(args: &CheckArgs) -> Result<Report, LoadError> {
    let secrets = args.keys.secret_keys().map_err(|e| LoadError::Invalid {
        source_name: "the command line".to_owned(),
        message: format!("{e:#}"),
    })?;
    let policies = manifests::load_policies_with(&args.policies, &secrets)?;
    let compiled = policies
        .iter()
        // load_policies_with has compiled each one already; a failure here cannot happen.
        .filter_map(|p| compile_with(&p.policy, &secrets).ok())
        .collect();
    let snapshot = Snapshot::new(compiled, args.engine.settings());
    let requester = (args.user.is_some() || !args.groups.is_empty()).then(|| Requester {
        username: args.user.clone().unwrap_or_default(),
        groups: args.groups.clone(),
    });
    // Evidence only when some policy has signature entries or pins digests: no runtime, no
    // registry client and no file read otherwise.
    let lookups = if snapshot.has_signature_rules() || snapshot.pins_digests() {
        Some(Lookups::new(args)?)
    } else {
        None
    };
    let judge = Judge {
        snapshot: &snapshot,
        requester: requester.as_ref(),
        now: args.now.unwrap_or_else(jiff::Timestamp::now),
        lookups: lookups.as_ref(),
    };

    let mut report = Report::default();
    let (documents, order) = read(&args.paths, &mut report);
    let scopes = Scopes::from_documents(&documents);
    let mut objects = Vec::new();
    let mut namespace_docs = Vec::new();
    for doc in &documents {
        match classify::classify(doc, &scopes) {
            Class::Namespace => namespace_docs.push(doc),
            Class::Object { cluster_scoped } => objects.push((doc, cluster_scoped)),
            Class::Skip { reason, message } => report.skipped.push(Skipped {
                source: doc.source.clone(),
                location: object_location(doc),
                reason,
                message,
            }),
        }
    }
    // Skipped files and documents in input order, as the results are.
    report
        .skipped
        .sort_by_key(|s| order.get(&s.location.file).copied().unwrap_or(usize::MAX));
    let labels = namespace_labels(&namespace_docs, &args.namespace_labels, &mut report);
    for (doc, cluster_scoped) in objects {
        match judge.object(doc, cluster_scoped, &labels) {
            Ok(result) => report.results.push(result),
            Err(e) => report.errors.push(e),
        }
    }
    Ok(report)
}

/// Reads every input; what cannot be read goes into the report, and Helm templates are
/// skipped unread. Also the position of each file among the inputs.
fn read(paths: &[PathBuf], report: &mut Report) -> (Vec<Document>, HashMap<String, usize>) {
    let mut documents = Vec::new();
    let mut order = HashMap::new();
    for input in manifests::inputs(paths) {
        let input = match input {
            Ok(input) => input,
            Err(e) => {
                report.errors.push(input_error(&e));
                continue;
            }
        };
        let n = order.len();
        order.entry(input.name()).or_insert(n);
        if let manifests::Input::File(path) = &input
            && let Some(chart) = classify::helm_chart_of(path)
        {
            let file = input.name();
            report.skipped.push(Skipped {
                source: file.clone(),
                location: Location {
                    file,
                    line: 1,
                    column: None,
                },
                reason: report::SkipReason::HelmTemplate,
                message: classify::helm_template_message(chart),
            });
            continue;
        }
        let parsed = manifests::read_input(&input);
        documents.extend(parsed.documents);
        if let Some(e) = parsed.error {
            report.errors.push(input_error(&e));
        }
    }
    (documents, order)
}

fn input_error(e: &LoadError) -> InputError {
    // A position is only ever known for a syntax error, whose source is its file.
    InputError {
        location: e.position().map(|at| Location {
            file: e.source().to_owned(),
            line: at.line,
            column: Some(at.column),
        }),
        source: e.source().to_owned(),
        message: e.message(),
    }
}

/// Where an object starts.
fn object_location(doc: &Document) -> Location {
    Location {
        file: doc.file.clone(),
        line: doc.line(),
        column: None,
    }
}

/// An error about one document.
fn document_error(doc: &Document, message: String) -> InputError {
    InputError {
        source: doc.source.clone(),
        location: Some(object_location(doc)),
        message,
    }
}

/// Labels per namespace: `--namespace-labels` first, then Namespace objects in the input. A
/// Namespace whose labels cannot be read is an input error.
fn namespace_labels(
    documents: &[&Document],
    flags: &[(String, Labels)],
    report: &mut Report,
) -> HashMap<String, Labels> {
    let mut out = HashMap::new();
    for doc in documents {
        let labels: Labels = match doc.value.pointer("/metadata/labels") {
            None | Some(serde_json::Value::Null) => Labels::new(),
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(labels) => labels,
                Err(e) => {
                    report
                        .errors
                        .push(document_error(doc, format!("metadata.labels: {e}")));
                    continue;
                }
            },
        };
        out.insert(
            doc.name().to_owned(),
            namespaces::with_name_label(doc.name(), labels),
        );
    }
    for (ns, labels) in flags {
        out.insert(ns.clone(), namespaces::with_name_label(ns, labels.clone()));
    }
    out
}

/// The largest `--evidence` file read: a day of decision records of a busy cluster is far less.
const EVIDENCE_FILE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Where signature evidence and the digests to pin come from, and the runtime that waits for
/// them.
struct Lookups {
    source: Box<dyn Gather>,
    runtime: tokio::runtime::Runtime,
    /// How long one object's registry work may take (`--verify-timeout`).
    timeout: std::time::Duration,
    /// `--offline`: no digest is looked up, so pins are reported without one.
    offline: bool,
}

impl Lookups {
    /// Registries (the default), nothing (`--offline`), or a file (`--evidence`).
    fn new(args: &CheckArgs) -> Result<Lookups, LoadError> {
        let invalid = |source_name: &str, message: String| LoadError::Invalid {
            source_name: source_name.to_owned(),
            message,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| invalid("check", format!("cannot start the async runtime: {e}")))?;
        let source: Box<dyn Gather> = if args.offline {
            Box::new(Offline)
        } else if let Some(path) = &args.evidence {
            let name = path.display().to_string();
            let io = |e: std::io::Error| LoadError::Io {
                path: name.clone(),
                source: e,
            };
            if std::fs::metadata(path).map_err(io)?.len() > EVIDENCE_FILE_MAX_BYTES {
                return Err(invalid(
                    &name,
                    format!(
                        "larger than {EVIDENCE_FILE_MAX_BYTES} bytes; give the records of the decisions to replay"
                    ),
                ));
            }
            let text = std::fs::read_to_string(path).map_err(io)?;
            Box::new(Replay::parse(&text, &name).map_err(|e| invalid(&name, e.to_string()))?)
        } else {
            let credentials = args
                .docker
                .credentials()
                .map_err(|e| invalid("--docker-config", format!("{e:#}")))?;
            let config = args
                .registry
                .config(credentials)
                .map_err(|e| invalid("--registry-ca-file", format!("{e:#}")))?;
            let _in_runtime = runtime.enter();
            Box::new(Registry::new(config, None).map_err(|e| invalid("registry client", e))?)
        };
        Ok(Lookups {
            source,
            runtime,
            timeout: args.registry.verify_timeout,
            offline: args.offline,
        })
    }

    /// The evidence `requests` ask for (signatures, digests).
    fn gather(&self, requests: &[crate::evidence::EvidenceRequest]) -> Evidence {
        self.runtime
            .block_on(self.source.gather(requests, Deadline::after(self.timeout)))
    }

    /// The digests `pinDigests` pins the object's images to: looked up as the mutating webhook
    /// does, from the registries or the evidence file; none offline (the pins are reported
    /// without them).
    fn digests(&self, snapshot: &Snapshot, input: &mutation::Input<'_>) -> Digests {
        if self.offline {
            return Digests::new();
        }
        let requests = mutation::digests_needed(snapshot, input);
        if requests.is_empty() {
            return Digests::new();
        }
        mutation::digests_from(&self.gather(&requests))
    }
}

/// What every object is judged with.
struct Judge<'a> {
    snapshot: &'a Snapshot,
    requester: Option<&'a Requester>,
    now: jiff::Timestamp,
    lookups: Option<&'a Lookups>,
}

impl Judge<'_> {
    /// The result for one object; an error when it is a workload whose images cannot be read.
    fn object(
        &self,
        doc: &Document,
        cluster_scoped: bool,
        labels: &HashMap<String, Labels>,
    ) -> Result<ObjectResult, InputError> {
        let namespace = match doc.namespace() {
            _ if cluster_scoped => "",
            "" => DEFAULT_NAMESPACE,
            ns => ns,
        };
        let result = ObjectResult::new(doc.source.clone(), doc.kind(), namespace, doc.name())
            .at(Some(object_location(doc)));
        let Some(kind) = WorkloadKind::from_api_version_kind(doc.api_version(), doc.kind()) else {
            return Ok(result);
        };
        let mut workload = Workload::from_value(kind, &doc.value)
            .map_err(|e| document_error(doc, e.to_string()))?;
        let ns_labels = labels
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| namespaces::with_name_label(namespace, Labels::new()));
        let mut input = mutation::Input {
            object: &workload,
            old_object: None,
            namespace_labels: &ns_labels,
            digests: &Digests::new(),
        };
        let digests = match self.lookups {
            Some(lookups) => lookups.digests(self.snapshot, &input),
            None => Digests::new(),
        };
        input.digests = &digests;
        let plan = mutation::plan(self.snapshot, &input);
        // A Pod is validated as the mutating webhook leaves it, as in the cluster.
        let is_pod = kind == WorkloadKind::Pod;
        if is_pod {
            mutation::apply(&mut workload, &plan);
        }
        let evidence = match self.lookups {
            Some(lookups) => {
                let requests = verification::requests(self.snapshot, &workload, None, &ns_labels);
                (!requests.is_empty()).then(|| lookups.gather(&requests))
            }
            None => None,
        };
        let decision = decision::decide(
            self.snapshot,
            &Input {
                object: &workload,
                old_object: None,
                namespace_labels: &ns_labels,
                requester: self.requester,
                now: self.now,
                evidence: evidence.as_ref(),
            },
        );
        Ok(result
            .decided(&decision, |v| {
                let at = doc.position_of(&v.field_path);
                Some(Location {
                    file: doc.file.clone(),
                    line: at.map_or(doc.line(), |p| p.line),
                    column: at.map(|p| p.column),
                })
            })
            .mutated(plan, is_pod))
    }
}
