//! What every end-to-end test shares: the settings from the environment, a client of the
//! cluster, names unique to the run, the namespaces of a test, the CRD, the `imagegate run`
//! process, waits on conditions, reading the API server's answers, and a cleanup registry that
//! removes everything a test made, whether it passed or failed.
//!
//! A test is `run(SHORT_NAME, async |e2e| { … })`: the body gets an [`E2e`] for one test, and
//! whatever it creates through the helpers here (policies, cluster-scoped objects, operators,
//! Events about its policies) is removed when the body returns, panics or runs out of time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use imagegate::policy::ImagePolicy;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Limits. Each wait names what it waits for; these bound how long.

/// From starting `imagegate run` until the API server calls it: the operator creates its CA
/// and serving certificate, lists the policies, applies the webhook configuration, and the API
/// server picks the configuration up (its webhook informer, about a second). A slow CI cluster
/// takes tens of seconds; 90 s leaves margin without hiding a hang.
pub const STARTUP: Duration = Duration::from_secs(90);
/// A policy edit, a drift repair, a recreated Secret: DESIGN promises "within seconds"; 30 s
/// is that with room for a loaded test cluster.
pub const CONVERGE: Duration = Duration::from_secs(30);
/// A new CRD becoming `Established` and served, or a deleted one finishing its deletion (the
/// API server removes its objects first). Seconds normally.
pub const CRD_READY: Duration = Duration::from_secs(60);
/// Between two looks at a condition: often enough that a wait ends soon after the condition
/// holds, rarely enough not to load the API server.
pub const POLL: Duration = Duration::from_millis(500);
/// One API request. A dry-run create waits for the webhook (`timeoutSeconds` 10) at most; 30 s
/// means the API server is not answering.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After its webhook configuration is deleted, until the API server stops calling a stopped
/// operator: its webhook configuration cache follows a deletion within a second or so. The
/// next test (or whoever uses the cluster next) must not meet the dead webhook.
pub const UNREGISTER: Duration = Duration::from_secs(20);
/// One whole test, setup and waits included. Beyond it the test fails and cleans up.
pub const TEST_LIMIT: Duration = Duration::from_secs(300);
/// Lines of an operator's log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// The field manager of everything the suite applies.
pub const FIELD_MANAGER: &str = "imagegate-e2e";
/// Label on every object the suite creates itself, with the run id as value, so leftovers of a
/// run that was killed can be found: `kubectl get ns,imagepolicies -l imagegate.dev/e2e`.
pub const RUN_LABEL: &str = "imagegate.dev/e2e";
/// Start of every name the suite gives (namespaces, policies, webhook configurations, RBAC).
pub const NAME_PREFIX: &str = "imagegate-e2e";
/// An image that exists and that no test policy denies unless a test says so.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// One test at a time: each starts an operator whose webhook configuration covers every
/// namespace but the excluded ones, so two at once would answer each other's requests, and
/// stopping one would fail the other's calls.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Settings

/// What the environment says about the cluster.
#[derive(Debug, Clone)]
struct Settings {
    /// `IMAGEGATE_E2E_KUBECONFIG`: a kubeconfig of a disposable cluster, as an administrator.
    kubeconfig: PathBuf,
    /// `IMAGEGATE_E2E_WEBHOOK_HOST`: the address of this machine that the API server calls; the
    /// operator listens there.
    webhook_host: IpAddr,
    /// [`REGISTRY_HOST_VAR`]: the address of this machine where a test's registry
    /// listens, and the registry part of its image references.
    registry_host: Ipv4Addr,
}

/// The variable that opts in.
pub const KUBECONFIG_VAR: &str = "IMAGEGATE_E2E_KUBECONFIG";
/// The variable naming the address the API server calls.
pub const WEBHOOK_HOST_VAR: &str = "IMAGEGATE_E2E_WEBHOOK_HOST";
/// The webhook host when the variable is unset: an API server on this machine.
const DEFAULT_WEBHOOK_HOST: &str = "127.0.0.1";
/// The variable naming the address a test's registry listens on.
pub const REGISTRY_HOST_VAR: &str = "IMAGEGATE_E2E_REGISTRY_HOST";
/// The registry host when the variable is unset: the operator on this machine is the only
/// client (a control plane without nodes never pulls).
const DEFAULT_REGISTRY_HOST: &str = "127.0.0.1";

impl Settings {
    /// The settings, or `None` (after saying why the test is skipped) without a kubeconfig.
    fn from_env(test: &str) -> Option<Settings> {
        let kubeconfig = match std::env::var_os(KUBECONFIG_VAR) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                eprintln!(
                    "SKIPPED: end-to-end test {test:?} needs a disposable cluster: set \
                     {KUBECONFIG_VAR} to its kubeconfig (see docs/operator.md, \"End-to-end tests\")"
                );
                return None;
            }
        };
        let host =
            std::env::var(WEBHOOK_HOST_VAR).unwrap_or_else(|_| DEFAULT_WEBHOOK_HOST.to_owned());
        let webhook_host = host.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{WEBHOOK_HOST_VAR}={host:?} is not an IP address: the operator listens on it and \
                 the API server calls it, so it must be an address of this machine that the API \
                 server reaches (127.0.0.1 for an API server on this machine, the docker bridge \
                 gateway for kind)"
            )
        });
        let host =
            std::env::var(REGISTRY_HOST_VAR).unwrap_or_else(|_| DEFAULT_REGISTRY_HOST.to_owned());
        let registry_host = host.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{REGISTRY_HOST_VAR}={host:?} is not an IPv4 address: a test's registry listens on \
                 it and images are named HOST:PORT/…, so it must be an IPv4 address of this \
                 machine that the operator (and, to pull, the cluster's nodes) reach"
            )
        });
        Some(Settings {
            kubeconfig,
            webhook_host,
            registry_host,
        })
    }
}

/// An id unique to this run of the test binary (its start time), in every name it gives, so a
/// second run on the same cluster never meets the first one's objects.
fn run_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // 40 bits: 10 hex digits, wrapping every 18 minutes; runs are never that close in
        // the same nanosecond.
        format!("{:010x}", nanos % (1 << 40))
    })
}

// ---------------------------------------------------------------------------------------------
// Running a test

/// Runs one end-to-end test: skipped with a message without a cluster; otherwise the body runs
/// (within [`TEST_LIMIT`], one test at a time) against a fresh test namespace and operator
/// namespace, and everything registered for cleanup is removed afterwards, also when the body
/// panicked. `test` is a short name (lowercase letters, digits, `-`) used in the names.
pub async fn run(test: &str, body: impl AsyncFnOnce(E2e)) {
    let Some(settings) = Settings::from_env(test) else {
        return;
    };
    // The Kubernetes client uses rustls; the project's provider is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _serial = SERIAL.lock().await;
    let e2e = E2e::connect(&settings, test).await;
    let outcome = tokio::time::timeout(
        TEST_LIMIT,
        AssertUnwindSafe(async {
            e2e.prepare().await;
            body(e2e.clone()).await;
        })
        .catch_unwind(),
    )
    .await;
    let passed = matches!(outcome, Ok(Ok(())));
    if !passed {
        e2e.report_operators();
    }
    let errors = e2e.clean_up().await;
    let cleanup = if errors.is_empty() {
        String::new()
    } else {
        format!(
            "cleanup of {} left something behind:\n- {}",
            e2e.name(),
            errors.join("\n- ")
        )
    };
    match outcome {
        Ok(Ok(())) => assert!(errors.is_empty(), "{cleanup}"),
        Ok(Err(panic)) => {
            if !errors.is_empty() {
                eprintln!("{cleanup}");
            }
            std::panic::resume_unwind(panic)
        }
        Err(_) => panic!(
            "end-to-end test {test:?} did not finish within {TEST_LIMIT:?}; a request or a wait \
             hung (see the operator log above){}",
            if errors.is_empty() {
                String::new()
            } else {
                format!("\n{cleanup}")
            }
        ),
    }
}

/// One test's view of the cluster. Cheap to clone; clones share the cleanup registry.
#[derive(Clone)]
pub struct E2e(Arc<Inner>);

struct Inner {
    client: Client,
    /// The administrator's client configuration, for impersonating clients.
    config: kube::Config,
    /// The administrator's kubeconfig as read (paths made absolute).
    kubeconfig: Kubeconfig,
    kubeconfig_path: PathBuf,
    webhook_host: IpAddr,
    registry_host: Ipv4Addr,
    /// `imagegate-e2e-<run>-<test>`: the test namespace, the webhook configuration, the base of
    /// every other name.
    name: String,
    /// Operator logs and kubeconfigs; kept (and its path printed) when the test fails.
    dir: Mutex<Option<tempfile::TempDir>>,
    /// What to remove at the end, in the order registered (removed in reverse).
    cleanup: Mutex<Vec<Cleanup>>,
    /// Every operator started; stopped before anything is removed.
    operators: Mutex<Vec<Operator>>,
}

/// Something to remove at the end of a test.
#[derive(Debug, Clone, PartialEq)]
enum Cleanup {
    /// One object; a 404 means it is gone already.
    Delete {
        resource: ApiResource,
        namespace: Option<String>,
        name: String,
    },
    /// The objects a field selector picks in a namespace (Events about a policy).
    DeleteCollection {
        resource: ApiResource,
        namespace: String,
        field_selector: String,
    },
    /// Wait until the API server no longer calls a stopped operator: a dry-run Deployment in
    /// `namespace` is no longer refused with "failed calling webhook".
    UntilUncalled { namespace: String },
}

impl Cleanup {
    /// What is removed, for messages.
    fn describe(&self) -> String {
        match self {
            Cleanup::Delete {
                resource,
                namespace: Some(ns),
                name,
            } => format!("{} {ns}/{name}", resource.kind),
            Cleanup::Delete { resource, name, .. } => format!("{} {name}", resource.kind),
            Cleanup::DeleteCollection {
                resource,
                namespace,
                field_selector,
            } => format!(
                "the {} in {namespace} with {field_selector}",
                resource.plural
            ),
            Cleanup::UntilUncalled { namespace } => {
                format!("the API server to stop calling the stopped operator (for {namespace})")
            }
        }
    }

    /// How long removing it may take.
    fn limit(&self) -> Duration {
        match self {
            Cleanup::UntilUncalled { .. } => UNREGISTER + REQUEST_TIMEOUT,
            _ => REQUEST_TIMEOUT,
        }
    }
}

impl E2e {
    /// A client of the cluster; nothing is created yet.
    async fn connect(settings: &Settings, test: &str) -> E2e {
        let path = &settings.kubeconfig;
        let kubeconfig = Kubeconfig::read_from(path)
            .unwrap_or_else(|e| panic!("{KUBECONFIG_VAR}={}: cannot read it: {e}", path.display()));
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{KUBECONFIG_VAR}={}: not a usable kubeconfig: {e}",
                        path.display()
                    )
                });
        config.connect_timeout = Some(REQUEST_TIMEOUT);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.reset_reader_on_write = true;
        let client = Client::try_from(config.clone())
            .unwrap_or_else(|e| panic!("cannot make a client from {}: {e}", path.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("imagegate-e2e-{test}-"))
            .tempdir()
            .expect("a temporary directory for operator logs");
        E2e(Arc::new(Inner {
            client,
            config,
            kubeconfig,
            kubeconfig_path: path.clone(),
            webhook_host: settings.webhook_host,
            registry_host: settings.registry_host,
            name: format!("{NAME_PREFIX}-{}-{test}", run_id()),
            dir: Mutex::new(Some(dir)),
            cleanup: Mutex::new(Vec::new()),
            operators: Mutex::new(Vec::new()),
        }))
    }

    /// The CRD, the test namespace and the operator namespace.
    async fn prepare(&self) {
        let version = self.client().apiserver_version().await.unwrap_or_else(|e| {
            panic!(
                "cannot reach the API server of {KUBECONFIG_VAR}={}: {e}",
                self.0.kubeconfig_path.display()
            )
        });
        eprintln!(
            "{}: API server {}, run {}",
            self.name(),
            version.git_version,
            run_id()
        );
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/imagepolicy.yaml"),
        )
        .expect("crds/imagepolicy.yaml (generate it with `imagegate crd`)");
        let crd: Value = serde_saphyr::from_str(&yaml).expect("the CRD is YAML");
        self.ensure_crd(
            crd,
            "if it is older than crds/imagepolicy.yaml, apply that first",
        )
        .await;
        self.create_namespace(self.namespace()).await;
        self.create_namespace(&self.operator_namespace()).await;
    }

    /// A client of the cluster as the kubeconfig's user.
    pub fn client(&self) -> Client {
        self.0.client.clone()
    }

    /// A client that impersonates `user` in `groups` (`Impersonate-User`/`Impersonate-Group`);
    /// the kubeconfig's user must be allowed to impersonate (cluster-admin is).
    pub fn client_as(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.0.config.clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| (*g).into()).collect());
        Client::try_from(config).expect("an impersonating client")
    }

    /// `imagegate-e2e-<run>-<test>`: unique to this test in this run.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A cluster-wide unique name for something of this test: `<name>-<suffix>`.
    pub fn named(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.0.name)
    }

    /// The namespace of the test's objects (Pods, workloads). Policies select it.
    pub fn namespace(&self) -> &str {
        &self.0.name
    }

    /// The operator's `--namespace` (its Secret); always excluded from the webhooks, so no
    /// test object lives there.
    pub fn operator_namespace(&self) -> String {
        self.named("op")
    }

    /// The ValidatingWebhookConfiguration the test's operator manages.
    pub fn webhook_config_name(&self) -> &str {
        &self.0.name
    }

    /// The API of a namespaced kind in the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client(), self.namespace())
    }

    /// A directory for files of this test (deleted at the end unless the test fails).
    pub fn dir(&self) -> PathBuf {
        self.0
            .dir
            .lock()
            .expect("the directory lock")
            .as_ref()
            .map(|d| d.path().to_owned())
            .expect("the test directory exists until cleanup")
    }

    /// The administrator's kubeconfig as read from [`KUBECONFIG_VAR`].
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.0.kubeconfig
    }

    /// Where a test's registry listens ([`REGISTRY_HOST_VAR`]).
    pub fn registry_host(&self) -> Ipv4Addr {
        self.0.registry_host
    }

    // -----------------------------------------------------------------------------------------
    // Creating things

    /// Server-side applies `body` (with [`RUN_LABEL`]) through `api`; its name is in `body`.
    pub async fn apply<K>(&self, api: &Api<K>, body: &Value) -> K
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let body = labelled(body);
        let name = body["metadata"]["name"]
            .as_str()
            .expect("the applied object has metadata.name");
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply {} {name}: {e}", kind_of(&body)))
    }

    /// Applies the ImagePolicy `name` with `spec`; unless `spec` has a `namespaceSelector`, it
    /// selects the test namespace only. Registered for removal; apply again to edit it.
    pub async fn apply_policy(&self, name: &str, spec: Value) -> ImagePolicy {
        self.register_delete::<ImagePolicy>(None, name);
        // Events about the policy (break-glass, compile errors) land in `default`.
        self.register(Cleanup::DeleteCollection {
            resource: ApiResource::erase::<Event>(&()),
            namespace: "default".to_owned(),
            field_selector: format!("involvedObject.name={name}"),
        });
        self.apply(
            &Api::<ImagePolicy>::all(self.client()),
            &self.policy_body(name, spec),
        )
        .await
    }

    /// The ImagePolicy object as applied by [`E2e::apply_policy`].
    pub fn policy_body(&self, name: &str, mut spec: Value) -> Value {
        if spec.get("namespaceSelector").is_none() {
            spec["namespaceSelector"] =
                json!({"matchLabels": {"kubernetes.io/metadata.name": self.namespace()}});
        }
        json!({
            "apiVersion": "imagegate.dev/v1alpha1", "kind": "ImagePolicy",
            "metadata": {"name": name},
            "spec": spec
        })
    }

    /// Registers the object for deletion at the end (once, however often it is registered).
    pub fn register_delete<K>(&self, namespace: Option<&str>, name: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.register_delete_of(ApiResource::erase::<K>(&()), namespace, name);
    }

    /// Registers an object of any kind for deletion at the end.
    pub fn register_delete_of(&self, resource: ApiResource, namespace: Option<&str>, name: &str) {
        self.register(Cleanup::Delete {
            resource,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        });
    }

    fn register(&self, item: Cleanup) {
        let mut all = self.0.cleanup.lock().expect("the cleanup lock");
        if !all.contains(&item) {
            all.push(item);
        }
    }

    /// Creates the namespace `name` with its ServiceAccount `default`, registered for removal.
    async fn create_namespace(&self, name: &str) {
        self.register_delete::<Namespace>(None, name);
        let namespaces: Api<Namespace> = Api::all(self.client());
        let ns: Namespace = from_json(labelled(&json!({"metadata": {"name": name}})));
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create the namespace {name}: {e}"));
        // Pods name the ServiceAccount `default`, and the API server refuses them while it is
        // missing. kube-controller-manager creates it in every namespace; a bare control plane
        // has none, so the suite creates it (an AlreadyExists from the controller is fine).
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), name);
        let default: ServiceAccount = from_json(json!({"metadata": {"name": "default"}}));
        match accounts.create(&PostParams::default(), &default).await {
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(409) => {}
            Err(e) => panic!("cannot create the ServiceAccount default in {name}: {e}"),
        }
    }

    /// Another namespace for this test's objects, `<name>-<suffix>`, which no policy selects
    /// unless a test says so (policies select the test namespace by name). Removed at the end.
    pub async fn other_namespace(&self, suffix: &str) -> String {
        let name = self.named(suffix);
        self.create_namespace(&name).await;
        name
    }

    /// Makes sure the CRD `crd` (a CustomResourceDefinition as JSON) is served: the cluster's
    /// own is used as it is (and kept; `note` says what to do if it is outdated); otherwise
    /// `crd` is created, and deleted at the end. Waits for `Established`, then until the API
    /// server answers a list of the new resource (discovery can lag a moment behind
    /// `Established`).
    pub async fn ensure_crd(&self, crd: Value, note: &str) {
        let name = crd["metadata"]["name"]
            .as_str()
            .expect("a CRD has metadata.name")
            .to_owned();
        let resource = served_resource(&crd);
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        // A CRD that an earlier test deleted finishes its deletion first.
        self.eventually(
            &format!("an earlier test's CRD {name} to finish its deletion"),
            CRD_READY,
            async || match crds.get_opt(&name).await {
                Ok(Some(crd)) if crd.metadata.deletion_timestamp.is_some() => {
                    Err("the CRD is still being deleted".to_owned())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(format!("cannot read the CRD: {e}")),
            },
        )
        .await;
        let existing = crds
            .get_opt(&name)
            .await
            .unwrap_or_else(|e| panic!("cannot read the CRD {name}: {e}"));
        if existing.is_some() {
            eprintln!("using the cluster's CRD {name} as it is (it stays); {note}");
        } else {
            let body: CustomResourceDefinition = from_json(labelled(&crd));
            match crds.create(&PostParams::default(), &body).await {
                Ok(_) => self.register_delete::<CustomResourceDefinition>(None, &name),
                // Created meanwhile by someone else: theirs, so it stays.
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => panic!("cannot create the CRD {name}: {e}"),
            }
        }
        self.eventually(
            &format!("the CRD {name} to be Established"),
            CRD_READY,
            async || {
                let crd = crds
                    .get(&name)
                    .await
                    .map_err(|e| format!("cannot read the CRD: {e}"))?;
                let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                match conditions.iter().find(|c| c.type_ == "Established") {
                    Some(c) if c.status == "True" => Ok(()),
                    Some(c) => Err(format!(
                        "Established is {}: {}",
                        c.status,
                        c.message.as_deref().unwrap_or_default()
                    )),
                    None => Err("no Established condition yet".to_owned()),
                }
            },
        )
        .await;
        let objects = Api::<DynamicObject>::all_with(self.client(), &resource);
        self.eventually(
            &format!(
                "the API server to serve {} {}",
                resource.api_version, resource.plural
            ),
            CRD_READY,
            async || {
                objects
                    .list(&ListParams::default().limit(1))
                    .await
                    .map(drop)
                    .map_err(|e| format!("listing {}: {e}", resource.plural))
            },
        )
        .await;
    }

    // -----------------------------------------------------------------------------------------
    // The operator

    /// Starts `imagegate run` with `run.args` (or [`E2e::default_operator_args`]) as the
    /// kubeconfig's user or `run.kubeconfig`. The suite decides where it listens and is called
    /// (`--webhook-url`, `--addr` on [`WEBHOOK_HOST_VAR`] and a free port), its namespace
    /// (`--namespace`), `--metrics-addr off` and `--log-format text`, and drops those flags
    /// from `run.args`. Its webhook configuration is registered for removal; the process is
    /// stopped before anything is removed.
    pub fn start_operator(&self, run: OperatorRun) -> Operator {
        let args = run.args.unwrap_or_else(|| self.default_operator_args());
        let host = self.0.webhook_host;
        let port = std::net::TcpListener::bind((host, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot listen on {host} ({WEBHOOK_HOST_VAR}): {e}; it must be an address \
                     of this machine that the API server can reach"
                )
            });
        let addr = SocketAddr::new(host, port);
        let url = format!("https://{addr}");
        let namespace = self.operator_namespace();
        let ours = [
            format!("--webhook-url={url}"),
            format!("--addr={addr}"),
            "--metrics-addr=off".to_owned(),
            "--log-format=text".to_owned(),
            format!("--namespace={namespace}"),
        ];
        let flag = |arg: &str| arg.split('=').next().unwrap_or_default().to_owned();
        let owned: Vec<String> = ours.iter().map(|a| flag(a)).collect();
        let mut command_line = vec!["run".to_owned()];
        command_line.extend(
            args.into_iter()
                .filter(|a| a != "run" && !owned.contains(&flag(a))),
        );
        command_line.extend(ours);

        // Removed in reverse: the configuration goes, then the API server must stop calling.
        self.register(Cleanup::UntilUncalled {
            namespace: self.namespace().to_owned(),
        });
        self.register_delete::<ValidatingWebhookConfiguration>(None, self.webhook_config_name());
        // The mutating one exists while a policy asks for mutation, under the same name.
        self.register_delete::<MutatingWebhookConfiguration>(None, self.webhook_config_name());
        let index = self.0.operators.lock().expect("the operators lock").len();
        let log_path = self.dir().join(format!("operator-{index}.log"));
        let log = std::fs::File::create(&log_path).expect("the operator's log file");
        let mut command =
            imagegate_command(run.kubeconfig.as_deref().unwrap_or(&self.0.kubeconfig_path));
        command
            .args(&command_line)
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log);
        let child = command.spawn().expect("imagegate run starts");
        let operator = Operator(Arc::new(OperatorInner {
            child: Mutex::new(child),
            log: log_path,
            command_line: command_line.join(" "),
        }));
        self.0
            .operators
            .lock()
            .expect("the operators lock")
            .push(operator.clone());
        operator
    }

    /// The flags of an operator managing this test's webhook configuration, failing closed.
    pub fn default_operator_args(&self) -> Vec<String> {
        vec![
            format!("--webhook-config-name={}", self.webhook_config_name()),
            "--failure-policy=Fail".to_owned(),
        ]
    }

    /// Panics when an operator of this test has exited: nothing it should do will happen.
    fn check_operators(&self, waiting_for: &str) {
        let operators = self.0.operators.lock().expect("the operators lock").clone();
        for op in operators {
            if let Some(status) = op.exited() {
                panic!(
                    "the operator exited ({status}) while waiting for: {waiting_for}\n\
                     command: imagegate {}\nlog ({}):\n{}",
                    op.0.command_line,
                    op.0.log.display(),
                    op.log_tail()
                );
            }
        }
    }

    /// Prints the end of every operator's log and keeps the test directory.
    fn report_operators(&self) {
        let operators = self.0.operators.lock().expect("the operators lock").clone();
        for op in &operators {
            eprintln!(
                "--- operator: imagegate {}\n--- last lines of {}:\n{}",
                op.0.command_line,
                op.0.log.display(),
                op.log_tail()
            );
        }
        let mut dir = self.0.dir.lock().expect("the directory lock");
        let written = dir
            .as_ref()
            .and_then(|d| std::fs::read_dir(d.path()).ok())
            .is_some_and(|mut entries| entries.next().is_some());
        if written && let Some(dir) = dir.take() {
            eprintln!("--- logs and kubeconfigs kept in {}", dir.keep().display());
        }
    }

    // -----------------------------------------------------------------------------------------
    // Waiting

    /// Polls `probe` until it returns `Ok`, for at most `limit`. `Err` says what it saw
    /// instead; the failure message names `what` was waited for and that last observation.
    /// Fails at once when an operator of the test has exited.
    pub async fn eventually<T>(
        &self,
        what: &str,
        limit: Duration,
        mut probe: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.check_operators(what);
            let seen = match tokio::time::timeout(REQUEST_TIMEOUT, probe()).await {
                Ok(Ok(v)) => return v,
                Ok(Err(seen)) => seen,
                Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for: {what}\nlast seen: {seen}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for an Event with `reason` about the ImagePolicy `policy`; returns its message.
    pub async fn until_event(&self, policy: &str, reason: &str) -> String {
        let client = self.client();
        self.eventually(
            &format!("a {reason} Event on ImagePolicy {policy}"),
            CONVERGE,
            async || {
                policy_events(&client, policy, reason)
                    .await?
                    .into_iter()
                    .next()
                    .map(|e| e.message.unwrap_or_default())
                    .ok_or_else(|| format!("no {reason} Event yet"))
            },
        )
        .await
    }

    // -----------------------------------------------------------------------------------------
    // Cleanup

    /// Stops the operators, then removes what was registered, newest first. Returns what could
    /// not be removed.
    async fn clean_up(&self) -> Vec<String> {
        let operators: Vec<Operator> = self
            .0
            .operators
            .lock()
            .expect("the operators lock")
            .drain(..)
            .collect();
        // Stopped first: a running operator would recreate its webhook configuration at once.
        for op in &operators {
            op.stop();
        }
        let items: Vec<Cleanup> = self
            .0
            .cleanup
            .lock()
            .expect("the cleanup lock")
            .drain(..)
            .rev()
            .collect();
        let mut errors = Vec::new();
        for item in items {
            let limit = item.limit();
            match tokio::time::timeout(limit, self.remove(&item)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(format!("{}: not done within {limit:?}", item.describe())),
            }
        }
        errors
    }

    async fn remove(&self, item: &Cleanup) -> Result<(), String> {
        let api = |resource: &ApiResource, namespace: Option<&str>| match namespace {
            Some(ns) => Api::<DynamicObject>::namespaced_with(self.client(), ns, resource),
            None => Api::<DynamicObject>::all_with(self.client(), resource),
        };
        match item {
            Cleanup::Delete {
                resource,
                namespace,
                name,
            } => match api(resource, namespace.as_deref())
                .delete(name, &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if api_code(&e) == Some(404) => Ok(()),
                Err(e) => Err(format!("cannot delete {}: {e}", item.describe())),
            },
            Cleanup::DeleteCollection {
                resource,
                namespace,
                field_selector,
            } => api(resource, Some(namespace))
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().fields(field_selector),
                )
                .await
                .map(drop)
                .map_err(|e| format!("cannot delete {}: {e}", item.describe())),
            Cleanup::UntilUncalled { namespace } => {
                let deployments: Api<Deployment> = Api::namespaced(self.client(), namespace);
                let probe: Deployment = from_json(json!({
                    "metadata": {"name": "cleanup-probe"},
                    "spec": {"selector": {"matchLabels": {"app": "probe"}}, "template": {
                        "metadata": {"labels": {"app": "probe"}},
                        "spec": {"containers": [{"name": "main", "image": PAUSE_IMAGE}]}}}
                }));
                let deadline = tokio::time::Instant::now() + UNREGISTER;
                loop {
                    let seen = match deployments.create(&dry_run(), &probe).await {
                        Err(e) if e.to_string().contains("failed calling webhook") => e.to_string(),
                        _ => return Ok(()),
                    };
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "the API server still calls the stopped operator {UNREGISTER:?} \
                             after its webhook configuration was deleted: {seen}"
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The operator process

/// How to start an operator; the default is the suite's flags as the kubeconfig's user.
#[derive(Debug, Clone, Default)]
pub struct OperatorRun {
    /// Flags of `imagegate run` (`--flag=value`); `None`: [`E2e::default_operator_args`].
    pub args: Option<Vec<String>>,
    /// The kubeconfig it runs with; `None`: the administrator's.
    pub kubeconfig: Option<PathBuf>,
}

/// A running `imagegate run`; killed when the test ends (or the last handle is dropped).
#[derive(Clone)]
pub struct Operator(Arc<OperatorInner>);

struct OperatorInner {
    child: Mutex<Child>,
    log: PathBuf,
    command_line: String,
}

impl Operator {
    /// Its log (stdout and stderr) so far. Lines reach the file within 50 ms.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.0.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn exited(&self) -> Option<ExitStatus> {
        self.0
            .child
            .lock()
            .expect("the operator lock")
            .try_wait()
            .ok()
            .flatten()
    }

    fn stop(&self) {
        self.0.stop();
    }
}

impl OperatorInner {
    fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for OperatorInner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `imagegate` binary of this build, for the cluster of `kubeconfig`: configured only by
/// the arguments the test gives (the caller's `IMAGEGATE_*` variables are removed), with no
/// standard input.
pub fn imagegate_command(kubeconfig: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imagegate"));
    command.env("KUBECONFIG", kubeconfig).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("IMAGEGATE_") {
            command.env_remove(key);
        }
    }
    command
}

/// A client of the cluster as the current context of the kubeconfig at `path` says.
pub async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read the kubeconfig {}: {e}", path.display()));
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{} is not a usable kubeconfig: {e}", path.display()));
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    Client::try_from(config)
        .unwrap_or_else(|e| panic!("cannot make a client from {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Reading the API server's answers

/// The message when the API server refused the request because imagegate's webhook `hook`
/// denied it; otherwise `Err` with what happened instead (admitted, webhook not reachable yet,
/// another error).
pub fn refused_by<T>(hook: &str, result: kube::Result<T>) -> Result<String, String> {
    let denied = format!("admission webhook \"{hook}\" denied the request");
    match result {
        Ok(_) => Err("it was admitted".to_owned()),
        Err(kube::Error::Api(s)) if s.message.contains(&denied) => Ok(s.message.clone()),
        Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => Err(format!(
            "the API server could not call imagegate (yet): {}",
            s.message
        )),
        Err(e) => Err(format!("another error: {e}")),
    }
}

/// The object when the API server accepted the request, otherwise what it answered.
pub fn admitted<T>(result: kube::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("it was refused: {e}"))
}

/// The HTTP status of an API error.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Creates `pod` through `pods` (admission webhooks included) and reads it back as the API
/// server stored it; panics with what the API server answered when it was refused.
pub async fn store(pods: &Api<Pod>, pod: &Pod) -> Pod {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let images: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter_map(|c| c.image.as_deref())
        .collect();
    admitted(pods.create(&PostParams::default(), pod).await)
        .unwrap_or_else(|seen| panic!("the Pod {name} with {images:?} was not stored: {seen}"));
    pods.get(name)
        .await
        .unwrap_or_else(|e| panic!("cannot read the stored Pod {name}: {e}"))
}

/// The Pod `name` with one container running `image`.
pub fn pod(name: &str, image: &str) -> Pod {
    from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}]}
    }))
}

/// Parameters of a dry-run create: decided (webhooks included) but never stored.
pub fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: None,
    }
}

/// `value` as `T`; the suite's own literals, so a failure is a bug in the test.
pub fn from_json<T: DeserializeOwned>(value: Value) -> T {
    let text = value.to_string();
    serde_json::from_value(value).unwrap_or_else(|e| panic!("not a valid object: {e}: {text}"))
}

/// `body` with [`RUN_LABEL`] added to its labels.
fn labelled(body: &Value) -> Value {
    let mut body = body.clone();
    body["metadata"]["labels"][RUN_LABEL] = Value::from(run_id());
    body
}

/// The resource a CRD serves, at its storage version.
fn served_resource(crd: &Value) -> ApiResource {
    let spec = &crd["spec"];
    let text = |v: &Value, what: &str| -> String {
        v.as_str()
            .unwrap_or_else(|| panic!("the CRD has no {what}: {crd}"))
            .to_owned()
    };
    let group = text(&spec["group"], "spec.group");
    let version = spec["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"] == true))
        .map(|v| text(&v["name"], "storage version name"))
        .unwrap_or_else(|| panic!("the CRD has no storage version: {crd}"));
    ApiResource {
        api_version: format!("{group}/{version}"),
        group,
        version,
        kind: text(&spec["names"]["kind"], "spec.names.kind"),
        plural: text(&spec["names"]["plural"], "spec.names.plural"),
    }
}

fn kind_of(body: &Value) -> &str {
    body["kind"].as_str().unwrap_or("object")
}

/// The `ImagePolicy`'s `Ready` condition as (status, reason, message), when its status
/// describes the current generation.
pub fn ready_condition(policy: &ImagePolicy) -> Result<(String, String, String), String> {
    let status = policy
        .status
        .as_ref()
        .ok_or_else(|| "no status yet".to_owned())?;
    let generation = policy.metadata.generation;
    if status.observed_generation != generation {
        return Err(format!(
            "status.observedGeneration is {:?}, metadata.generation is {generation:?}",
            status.observed_generation
        ));
    }
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .ok_or_else(|| "no Ready condition yet".to_owned())
}

/// The Events (core/v1 view) about the ImagePolicy `policy` with `reason`.
async fn policy_events(client: &Client, policy: &str, reason: &str) -> Result<Vec<Event>, String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=ImagePolicy,involvedObject.name={policy}"
        )))
        .await
        .map_err(|e| format!("cannot list Events: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}
