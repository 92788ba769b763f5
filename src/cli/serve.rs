//! `imagegate serve`: the webhook without a cluster. Policies come from YAML files and folders
//! and are reloaded when they change; a certificate is generated into `--cert-dir` (or given
//! with `--tls-cert`/`--tls-key`, reloaded when those files change); namespace labels come
//! from `--namespace-labels`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher as _};

use super::{EngineArgs, KeySecretDirArgs, LogFormat};
use crate::certs::{self, CertPair};
use crate::events::NoEvents;
use crate::http::{AppState, Listeners, ServerConfig};
use crate::manifests::LoadError;
use crate::metrics::Metrics;
use crate::namespaces::{FixedNamespaces, Labels, parse_namespace_labels};
use crate::policy::{Settings, Snapshot, SnapshotBuilder};
use crate::registry::{DockerConfigArgs, Registry, RegistryArgs};
use crate::state::{Readiness, SharedSnapshot};
use crate::tls::CertResolver;

/// How long to wait after a file change for more changes before reloading: editors and
/// `kubectl`-style tools write a file in several steps (truncate, write, rename).
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

/// Validity of a generated CA: long, since users install it in their trust stores once.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Validity of a generated serving certificate: one year, renewed from the same CA.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A generated certificate closer than this to its end is renewed on start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where `--metrics-addr` points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    At(SocketAddr),
}

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr::Off);
    }
    s.parse()
        .map(MetricsAddr::At)
        .map_err(|e| format!("{s:?} is neither HOST:PORT nor `off`: {e}"))
}

/// Arguments of `imagegate serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Policy files or folders (YAML or JSON, multi-document); reloaded when they change.
    /// Repeat the flag or separate with commas.
    #[arg(
        long,
        env = "IMAGEGATE_POLICIES",
        required = true,
        value_delimiter = ','
    )]
    pub policies: Vec<PathBuf>,

    /// The HTTPS address to listen on.
    #[arg(long, env = "IMAGEGATE_ADDR", default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,

    /// The plain-HTTP address for `/metrics`, or `off`.
    #[arg(long, env = "IMAGEGATE_METRICS_ADDR", default_value = "127.0.0.1:9090", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,

    /// Folder for the generated CA (`ca.crt`, `ca.key`) and serving certificate (`tls.crt`,
    /// `tls.key`); reused on the next start while valid.
    #[arg(
        long,
        env = "IMAGEGATE_CERT_DIR",
        default_value = "./imagegate-certs",
        conflicts_with = "tls_cert"
    )]
    pub cert_dir: PathBuf,

    /// A serving certificate chain (PEM) to use instead of generating one; reloaded when it
    /// changes.
    #[arg(long, env = "IMAGEGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "IMAGEGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Labels of a namespace, as NS=KEY=VALUE[,KEY=VALUE…]; repeatable (in the environment,
    /// separate namespaces with `;`). A namespace without an entry has only its name label.
    #[arg(
        long = "namespace-labels",
        env = "IMAGEGATE_NAMESPACE_LABELS",
        value_name = "NS=K=V[,K=V]",
        value_delimiter = ';',
        value_parser = parse_namespace_labels
    )]
    pub namespace_labels: Vec<(String, Labels)>,

    /// Log format.
    #[arg(long, env = "IMAGEGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Seconds that in-flight requests may take to finish on shutdown.
    #[arg(long, env = "IMAGEGATE_SHUTDOWN_TIMEOUT", default_value = "25")]
    pub shutdown_timeout: u64,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub docker: DockerConfigArgs,

    #[command(flatten)]
    pub keys: KeySecretDirArgs,
}

/// A server ready to run: policies loaded, certificate in place, sockets bound.
pub struct Prepared {
    config: ServerConfig,
    listeners: Listeners,
    state: AppState,
    /// Where the CA is, when generated.
    pub ca_path: Option<PathBuf>,
    reload: Reloader,
    _watcher: Option<notify::RecommendedWatcher>,
    changes: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("config", &self.config)
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

/// Reloads policies and a given certificate.
#[derive(Clone)]
struct Reloader {
    policies: Vec<PathBuf>,
    keys: KeySecretDirArgs,
    settings: Settings,
    snapshot: SharedSnapshot,
    metrics: Arc<Metrics>,
    tls: Arc<CertResolver>,
    tls_files: Option<(PathBuf, PathBuf)>,
}

impl Reloader {
    /// Loads and compiles every policy; the snapshot, or why not (naming file and field).
    ///
    /// The policies are read and compiled one file at a time, and every policy that compiles
    /// to what the snapshot in force has is shared with it rather than held twice: while the
    /// new snapshot is built beside the one in force, the process holds one file's documents,
    /// the changed policies and the new matcher on top of what it held before.
    fn load(&self) -> anyhow::Result<Snapshot> {
        let secrets = self.keys.secret_keys()?;
        let in_force = self.snapshot.load_full();
        let mut builder = SnapshotBuilder::new(Some(&in_force), &secrets);
        crate::manifests::for_each_policy(&self.policies, |source, policy| {
            let compiled = builder
                .compile(&policy)
                .map_err(|error| LoadError::Policy {
                    source_name: source.to_owned(),
                    policy: policy.metadata.name.clone().unwrap_or_default(),
                    error,
                })?;
            builder.add_shared(compiled);
            Ok(())
        })?;
        // What reading the files freed goes back to the system before the index is built.
        crate::alloc::release_freed();
        Ok(builder.build(self.settings.clone()))
    }

    fn install(&self, snapshot: Snapshot) {
        let count = snapshot.policies().len();
        tracing::info!(
            count,
            policies = %named(snapshot.policies().iter().map(|p| p.name.as_str()), count),
            "policies loaded"
        );
        self.metrics.set_policy_count(count);
        self.metrics.set_policy_errors(0);
        self.metrics.set_snapshot_created(snapshot.created());
        self.snapshot.store(Arc::new(snapshot));
    }

    fn reload(&self) {
        match self.load() {
            Ok(snapshot) => {
                self.install(snapshot);
                // The snapshot replaced, and the load's own leftovers.
                crate::alloc::release_freed();
            }
            Err(e) => {
                self.metrics.set_policy_errors(1);
                tracing::error!(error = %format!("{e:#}"), "policy reload failed; the last good policies stay in force");
            }
        }
        if let Some((cert, key)) = &self.tls_files {
            match load_tls_files(&self.tls, cert, key) {
                Ok(true) => tracing::info!(cert = %cert.display(), "serving certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "serving certificate reload failed; the current one stays")
                }
            }
        }
    }
}

/// The most policy names the "policies loaded" line lists: enough to see what was loaded in any
/// hand-written set, while 10,000 generated policies do not make a 100 KB log line.
const MAX_LOGGED_NAMES: usize = 20;

/// The first [`MAX_LOGGED_NAMES`] of `count` names, comma-separated, and how many more there are.
fn named<'a>(names: impl Iterator<Item = &'a str>, count: usize) -> String {
    let mut out = names.take(MAX_LOGGED_NAMES).collect::<Vec<_>>().join(",");
    if count > MAX_LOGGED_NAMES {
        out.push_str(&format!(" and {} more", count - MAX_LOGGED_NAMES));
    }
    out
}

/// Loads the given certificate and key into the resolver; `false` when unchanged.
fn load_tls_files(tls: &CertResolver, cert: &Path, key: &Path) -> anyhow::Result<bool> {
    let cert_pem =
        std::fs::read_to_string(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let key_pem =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    if tls.not_after().is_some() && certs::not_after(&cert_pem).ok() == tls.not_after() {
        // Same expiry: most likely the same certificate; a swap would be harmless, but the
        // log line would not be.
        tls.set_pem(&cert_pem, &key_pem)
            .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
        return Ok(false);
    }
    tls.set_pem(&cert_pem, &key_pem)
        .with_context(|| format!("{} and {}", cert.display(), key.display()))?;
    Ok(true)
}

/// The names a generated certificate is for: loopback, and the listen address when specific.
fn local_sans(addr: &SocketAddr) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ip = addr.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        sans.push(ip.to_string());
    }
    sans
}

/// Makes sure `dir` holds a valid CA and a serving certificate for `sans` that is not about to
/// expire, generating what is missing or invalid. Returns the serving certificate.
pub fn ensure_cert_dir(dir: &Path, sans: &[String]) -> anyhow::Result<CertPair> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = |name: &str| dir.join(name);
    let read = |name: &str| std::fs::read_to_string(path(name)).ok();
    let fresh = |pem: &str| {
        certs::not_after(pem).is_ok_and(|end| {
            end > jiff::Timestamp::now()
                + jiff::SignedDuration::try_from(RENEW_BEFORE).unwrap_or_default()
        })
    };

    let existing_ca = match (read("ca.crt"), read("ca.key")) {
        (Some(cert_pem), Some(key_pem)) if fresh(&cert_pem) => Some(CertPair { cert_pem, key_pem }),
        _ => None,
    };
    let ca = match existing_ca {
        Some(ca) => ca,
        None => {
            tracing::info!(dir = %dir.display(), "generating a new CA");
            let ca = certs::generate_ca("imagegate local CA", CA_VALIDITY)?;
            write_file(&path("ca.key"), &ca.key_pem, true)?;
            write_file(&path("ca.crt"), &ca.cert_pem, false)?;
            ca
        }
    };
    if let (Some(cert_pem), Some(key_pem)) = (read("tls.crt"), read("tls.key")) {
        let usable = fresh(&cert_pem)
            && certs::covers(&cert_pem, sans).unwrap_or(false)
            && certs::issued_by(&cert_pem, &ca.cert_pem).unwrap_or(false)
            && CertResolver::new().set_pem(&cert_pem, &key_pem).is_ok();
        if usable {
            return Ok(CertPair { cert_pem, key_pem });
        }
    }
    tracing::info!(dir = %dir.display(), sans = sans.join(","), "issuing a new serving certificate");
    let serving = certs::issue_serving(&ca, sans, SERVING_VALIDITY)?;
    write_file(&path("tls.key"), &serving.key_pem, true)?;
    write_file(&path("tls.crt"), &serving.cert_pem, false)?;
    Ok(serving)
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Loads policies and the certificate, binds the sockets and starts watching the files.
pub fn prepare(args: &ServeArgs) -> anyhow::Result<Prepared> {
    let metrics = Arc::new(Metrics::new());
    let tls = CertResolver::new();
    let settings = args.engine.settings();
    let snapshot: SharedSnapshot =
        Arc::new(ArcSwap::from_pointee(Snapshot::empty(settings.clone())));
    let tls_files = args.tls_cert.clone().zip(args.tls_key.clone());
    let reload = Reloader {
        policies: args.policies.clone(),
        keys: args.keys.clone(),
        settings,
        snapshot: Arc::clone(&snapshot),
        metrics: Arc::clone(&metrics),
        tls: Arc::clone(&tls),
        tls_files: tls_files.clone(),
    };
    reload.install(reload.load().context("cannot load the policies")?);
    let readiness = Arc::new(Readiness::default());
    readiness.set_policies_loaded();

    let ca_path = match &tls_files {
        Some((cert, key)) => {
            load_tls_files(&tls, cert, key)?;
            None
        }
        None => {
            let serving = ensure_cert_dir(&args.cert_dir, &local_sans(&args.addr))?;
            tls.set_pem(&serving.cert_pem, &serving.key_pem)?;
            Some(args.cert_dir.join("ca.crt"))
        }
    };
    metrics.set_cert_not_after(tls.not_after());

    // Lookups run on the runtime `prepare` is called in, so they can outlive a request.
    let credentials = args
        .docker
        .credentials()
        .context("cannot read the registry logins")?;
    let registry = Registry::new(
        args.registry.config(credentials)?,
        Some(Arc::clone(&metrics)),
    )
    .map_err(|e| anyhow::anyhow!("cannot set up the registry client: {e}"))?;

    let namespaces: HashMap<String, Labels> = args.namespace_labels.iter().cloned().collect();
    let state = AppState {
        snapshot,
        namespaces: Arc::new(FixedNamespaces::new(namespaces)),
        events: Arc::new(NoEvents),
        tls,
        readiness,
        metrics,
        evidence: Arc::new(registry),
        verify_timeout: args.registry.verify_timeout,
    };
    let mut config = ServerConfig::new(
        args.addr,
        match args.metrics_addr {
            MetricsAddr::Off => None,
            MetricsAddr::At(a) => Some(a),
        },
    );
    config.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    let listeners = Listeners::bind(&config)?;

    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watched: Vec<PathBuf> = args.policies.clone();
    watched.extend(args.keys.watched().cloned());
    if let Some((cert, key)) = &tls_files {
        watched.push(cert.clone());
        watched.push(key.clone());
    }
    let watcher = watch(&watched, tx)?;
    Ok(Prepared {
        config,
        listeners,
        state,
        ca_path,
        reload,
        _watcher: Some(watcher),
        changes,
    })
}

/// Watches `paths`: folders recursively, files through their folder (editors replace files by
/// renaming, which a watch on the file itself would miss).
fn watch(
    paths: &[PathBuf],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let files: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !p.is_dir())
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let dirs: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let (files_c, dirs_c) = (files.clone(), dirs.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let relevant = event
            .paths
            .iter()
            .any(|p| dirs_c.iter().any(|d| p.starts_with(d)) || files_c.iter().any(|f| f == p));
        if relevant {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the policy files")?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", dir.display()))?;
    }
    let mut parents: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    parents.sort();
    parents.dedup();
    for parent in &parents {
        watcher
            .watch(parent, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", parent.display()))?;
    }
    Ok(watcher)
}

impl Prepared {
    /// The HTTPS address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.local_addr().unwrap_or(self.config.addr)
    }

    /// The metrics address, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listeners.metrics_addr()
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Gathers signature evidence from `evidence` instead of the registry client built from
    /// the flags (for tests and embedding).
    pub fn with_evidence(mut self, evidence: Arc<dyn crate::evidence::Gather>) -> Prepared {
        self.state.evidence = evidence;
        self
    }

    /// Serves until `shutdown` completes, reloading on file changes; returns after draining.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Prepared {
            config,
            listeners,
            state,
            reload,
            _watcher,
            mut changes,
            ..
        } = self;
        let reloader = tokio::spawn(async move {
            // Keep the watcher alive as long as changes are read.
            let _watcher = _watcher;
            while changes.recv().await.is_some() {
                // Debounce: wait until the files have been quiet for a moment.
                loop {
                    match tokio::time::timeout(RELOAD_DEBOUNCE, changes.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let reload = reload.clone();
                // Reading and compiling is blocking work; keep it off the async threads.
                let _ = tokio::task::spawn_blocking(move || reload.reload()).await;
            }
        });
        let result = listeners.serve(&config, state, shutdown).await;
        reloader.abort();
        result
    }
}

/// Runs `imagegate serve`.
pub async fn main(args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init(args.log_format);
    let prepared = prepare(&args)?;
    let addr = prepared.local_addr();
    let host = match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let mut banner = format!("imagegate serve: https://{host}:{}/validate\n", addr.port());
    banner += &format!(
        "imagegate serve: mutating webhook https://{host}:{}/mutate\n",
        addr.port()
    );
    if let Some(ca) = &prepared.ca_path {
        banner += &format!("imagegate serve: CA certificate {}\n", ca.display());
    }
    if let Some(m) = prepared.metrics_addr() {
        banner += &format!("imagegate serve: metrics http://{m}/metrics\n");
    }
    // Where it listens is for the person who started it; a closed stdout (`serve | head -1`, a
    // supervisor that dropped the pipe) must not stop the webhook, as `println!` would by panicking.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(banner.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "could not print where serve listens on stdout");
    }
    drop(out);
    prepared.run(super::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaded_line_names_a_few_policies_and_counts_the_rest() {
        let names: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        let few = named(names.iter().take(3).map(String::as_str), 3);
        assert_eq!(few, "p00,p01,p02");
        let all = named(names.iter().map(String::as_str), names.len());
        assert!(all.starts_with("p00,p01,"), "{all}");
        assert!(all.ends_with(",p19 and 5 more"), "{all}");
    }

    #[test]
    fn a_reload_shares_the_policies_that_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, allowed: &str| {
            std::fs::write(
                dir.path().join(format!("{name}.yaml")),
                format!(
                    "apiVersion: imagegate.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {name}}}\nspec: {{allowedImages: ['{allowed}']}}\n"
                ),
            )
            .unwrap();
        };
        write("a", "registry.corp.example/a/**");
        write("b", "registry.corp.example/b/**");
        let settings = Settings::default();
        let reload = Reloader {
            policies: vec![dir.path().to_owned()],
            keys: KeySecretDirArgs::default(),
            settings: settings.clone(),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::empty(settings))),
            metrics: Arc::new(Metrics::new()),
            tls: CertResolver::new(),
            tls_files: None,
        };
        reload.install(reload.load().unwrap());
        let first = reload.snapshot.load_full();

        write("b", "registry.corp.example/b/*");
        reload.reload();
        let second = reload.snapshot.load_full();
        crate::policy::assert_rebuilt(&first, &second, "a", "b", "registry.corp.example/b/*");
    }

    #[test]
    fn cert_dir_is_generated_then_reused_then_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let sans = local_sans(&"127.0.0.1:8443".parse().unwrap());
        let first = ensure_cert_dir(dir.path(), &sans).unwrap();
        for f in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        assert!(certs::issued_by(&first.cert_pem, &ca).unwrap());

        let second = ensure_cert_dir(dir.path(), &sans).unwrap();
        assert_eq!(first, second, "a valid certificate is reused");

        // A serving certificate for other names is reissued from the same CA.
        let other = ensure_cert_dir(dir.path(), &["example.test".to_owned()]).unwrap();
        assert_ne!(other, first);
        assert!(certs::issued_by(&other.cert_pem, &ca).unwrap());

        // A broken one too.
        std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
        let repaired = ensure_cert_dir(dir.path(), &sans).unwrap();
        assert!(certs::covers(&repaired.cert_pem, &sans).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            ca
        );
    }

    #[test]
    fn metrics_addr_parses() {
        assert_eq!(parse_metrics_addr("off"), Ok(MetricsAddr::Off));
        assert_eq!(
            parse_metrics_addr("127.0.0.1:9090"),
            Ok(MetricsAddr::At("127.0.0.1:9090".parse().unwrap()))
        );
        assert!(parse_metrics_addr("nowhere").is_err());
    }
}
