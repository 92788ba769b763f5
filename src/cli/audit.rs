//! `imagegate audit`: one audit pass against the cluster of the kubeconfig, with the cluster's
//! policies or candidate policies from files (what would a policy change break?). It only
//! lists Pods, Namespaces and ImagePolicies, and writes nothing. Exit 0 when no running Pod
//! would be denied, 1 when some would, 2 on bad input or no cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, ObjectList};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::audit::{AuditOutcome, PodIndex, PodObject, PodResult, audit_with, evidence_requests};
use crate::cli::check::{self, OutputFormat};
use crate::cli::{EngineArgs, KeySecretDirArgs};
use crate::evidence::{Deadline, Gather, Offline};
use crate::gather::gather_each;
use crate::manifests;
use crate::namespaces::{Labels, with_name_label};
use crate::operator::audit::{AUDIT_EVIDENCE_DEADLINE, AUDIT_LOOKUPS_AT_ONCE};
use crate::operator::namespaces::reason;
use crate::policy::{ImagePolicy, SecretKeys, Snapshot, compile_with};
use crate::registry::{DockerConfigArgs, Registry, RegistryArgs};
use crate::report::{EXIT_BAD_INPUT, ObjectResult, Report};

/// Objects per list request: the API server's own default page size for kubectl, small
/// enough to keep each answer a few megabytes in a large cluster.
const PAGE_SIZE: u32 = 500;

/// Arguments of `imagegate audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Candidate policy files or folders to audit with instead of the cluster's ImagePolicies
    /// (what-if); repeat the flag or separate with commas.
    #[arg(long, env = "IMAGEGATE_POLICIES", value_delimiter = ',')]
    pub policies: Vec<PathBuf>,

    /// Only the Pods of this namespace (default: every namespace).
    #[arg(long, short = 'n', env = "IMAGEGATE_AUDIT_NAMESPACE")]
    pub namespace: Option<String>,

    /// Output format: `imagegate check`'s text or JSON report, a result per Pod.
    #[arg(
        long,
        short = 'o',
        env = "IMAGEGATE_AUDIT_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: AuditOutput,

    /// The moment of the decisions (RFC 3339), e.g. to see which break-glass exceptions will
    /// have expired by then; default now.
    #[arg(long, env = "IMAGEGATE_AUDIT_NOW", value_parser = check::parse_now)]
    pub now: Option<jiff::Timestamp>,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Do not contact registries: running images that a signature entry governs get the
    /// warning `signature not verified (offline)` instead of a verdict, and no violation.
    #[arg(long, env = "IMAGEGATE_AUDIT_OFFLINE")]
    pub offline: bool,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub docker: DockerConfigArgs,

    #[command(flatten)]
    pub keys: KeySecretDirArgs,
}

/// How `audit` prints its results: the formats of `check` that need no file positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditOutput {
    /// Readable lines, like `kubectl` errors and warnings.
    Text,
    /// One JSON object, as `check --output json` prints it.
    Json,
}

impl From<AuditOutput> for OutputFormat {
    fn from(output: AuditOutput) -> OutputFormat {
        match output {
            AuditOutput::Text => OutputFormat::Text,
            AuditOutput::Json => OutputFormat::Json,
        }
    }
}

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No cluster to talk to.
    #[error(
        "cannot configure the Kubernetes client (from KUBECONFIG, ~/.kube/config or the in-cluster service account): {0}"
    )]
    Client(#[source] kube::Error),
    /// A list request failed.
    #[error("cannot list {what}: {reason}")]
    List { what: String, reason: String },
    /// A policy file could not be read or does not compile.
    #[error(transparent)]
    Policies(#[from] manifests::LoadError),
    /// A flag's file (registry CA, Docker config, key folder) cannot be used.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

/// Runs `imagegate audit`.
pub fn main(args: AuditArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imagegate audit: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let result = runtime.block_on(async {
        let client = Client::try_default().await.map_err(AuditError::Client)?;
        run(client, &args).await
    });
    match result {
        Ok(report) => check::print(&report, args.output.into(), false, "audit"),
        Err(e) => {
            eprintln!("imagegate audit: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// The exit code of an audit: 0 when no running Pod would be denied, 1 when some would, 2
/// when it could not run.
pub fn exit_code(result: &Result<Report, AuditError>) -> u8 {
    match result {
        Ok(report) => report.exit_code(false),
        Err(_) => EXIT_BAD_INPUT,
    }
}

/// One pass with `client`: lists what it needs, decides every Pod (its signatures on the
/// digest it runs, looked up in registries as the operator's pass does, unless `--offline`),
/// and reports each one in `check`'s shape (source `pod/NAMESPACE/NAME`).
pub async fn run(client: Client, args: &AuditArgs) -> Result<Report, AuditError> {
    let secrets = args.keys.secret_keys().map_err(|e| AuditError::Flag {
        flag: "--key-secret-dir",
        message: format!("{e:#}"),
    })?;
    let snapshot = policies(&client, args, &secrets).await?;
    let labels = namespaces(&client, args.namespace.as_deref()).await?;
    let pods: Api<PodObject> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut index = PodIndex::new();
    index.apply(kube::runtime::watcher::Event::Init);
    for pod in list_all(&pods, &ListParams::default(), "Pods").await? {
        index.apply(kube::runtime::watcher::Event::InitApply(pod));
    }
    index.apply(kube::runtime::watcher::Event::InitDone);
    let entries = index.entries();
    let labels_of = |ns: &str| labels.get(ns).cloned();
    let evidence = match evidence_source(args, &snapshot)? {
        Some(source) => {
            let requests = evidence_requests(&snapshot, &entries, &labels_of);
            let deadline = Deadline::after(AUDIT_EVIDENCE_DEADLINE);
            Some(gather_each(&*source, &requests, deadline, AUDIT_LOOKUPS_AT_ONCE).await)
        }
        None => None,
    };
    let now = args.now.unwrap_or_else(jiff::Timestamp::now);
    let outcome = audit_with(
        &snapshot,
        &entries,
        &labels_of,
        now,
        true,
        evidence.as_ref(),
    );
    if outcome.signatures_unavailable > 0 {
        eprintln!(
            "imagegate audit: warning: the registry could not answer for the signatures of {} running image(s); they are reported as verifySignatures violations (fail closed)",
            outcome.signatures_unavailable
        );
    }
    Ok(report(&outcome))
}

/// Where the signatures of running images are looked up: the registries (`--registry-ca-file`,
/// `--insecure-registry`, logins from `--docker-config`), or nowhere with `--offline`; `None`
/// when no policy has signature entries.
fn evidence_source(
    args: &AuditArgs,
    snapshot: &Snapshot,
) -> Result<Option<Box<dyn Gather>>, AuditError> {
    if !snapshot.has_signature_rules() {
        return Ok(None);
    }
    if args.offline {
        return Ok(Some(Box::new(Offline)));
    }
    let flag = |flag, e: anyhow::Error| AuditError::Flag {
        flag,
        message: format!("{e:#}"),
    };
    let credentials = args
        .docker
        .credentials()
        .map_err(|e| flag("--docker-config", e))?;
    let config = args
        .registry
        .config(credentials)
        .map_err(|e| flag("--registry-ca-file", e))?;
    let registry = Registry::new(config, None).map_err(|message| AuditError::Flag {
        flag: "registry client",
        message,
    })?;
    Ok(Some(Box::new(registry)))
}

/// The results of a pass in `check`'s shape.
pub fn report(outcome: &AuditOutcome) -> Report {
    Report {
        results: outcome.pods.iter().map(result).collect(),
        ..Report::default()
    }
}

fn result(pod: &PodResult) -> ObjectResult {
    let evaluated = &pod.evaluated;
    let mut result = ObjectResult::new(
        format!("pod/{}/{}", pod.namespace, pod.name),
        "Pod",
        &pod.namespace,
        &pod.name,
    )
    .decided(&evaluated.decision, |_| None);
    result
        .warnings
        .extend(evaluated.notes.iter().map(|n| format!("imagegate: {n}")));
    result
}

/// The cluster's policies, or those of `--policies`. A cluster policy that does not compile
/// is left out, as the operator leaves it out of force, with a warning.
async fn policies(
    client: &Client,
    args: &AuditArgs,
    secrets: &SecretKeys,
) -> Result<Snapshot, AuditError> {
    let settings = args.engine.settings();
    if !args.policies.is_empty() {
        let loaded = manifests::load_policies_with(&args.policies, secrets)?;
        let compiled = loaded
            .iter()
            // load_policies_with has compiled each one already.
            .filter_map(|p| compile_with(&p.policy, secrets).ok())
            .collect();
        return Ok(Snapshot::new(compiled, settings));
    }
    let api: Api<ImagePolicy> = Api::all(client.clone());
    let found = list_all(&api, &ListParams::default(), "ImagePolicies").await?;
    let (snapshot, errors) = Snapshot::compile_with(&found, settings, secrets);
    for e in errors {
        eprintln!(
            "imagegate audit: warning: policy {:?} does not compile and is left out, as in the cluster: {}: {}",
            e.policy, e.field, e.message
        );
    }
    Ok(snapshot)
}

/// The labels of every namespace (or of `only`), with their name labels.
async fn namespaces(
    client: &Client,
    only: Option<&str>,
) -> Result<BTreeMap<String, Labels>, AuditError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let params = match only {
        Some(ns) => ListParams::default().fields(&format!("metadata.name={ns}")),
        None => ListParams::default(),
    };
    let found = list_all(&api, &params, "Namespaces").await?;
    Ok(found
        .into_iter()
        .map(|ns| {
            let name = ns.name_any();
            let labels = with_name_label(&name, ns.metadata.labels.unwrap_or_default());
            (name, labels)
        })
        .collect())
}

/// Every object a list returns, page by page.
async fn list_all<K>(api: &Api<K>, params: &ListParams, what: &str) -> Result<Vec<K>, AuditError>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.clone().limit(PAGE_SIZE);
    loop {
        let page: ObjectList<K> = api.list(&params).await.map_err(|e| AuditError::List {
            what: what.to_owned(),
            reason: reason(&e),
        })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}
