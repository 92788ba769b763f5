//! The command line: `run`, `serve`, `check`, `audit`, `crd`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::policy::{Settings, UnmatchedImages};
use crate::signature::TrustedRoot;

pub mod audit;
pub mod check;
pub mod crd;
pub mod run;
pub mod serve;

/// imagegate: image-policy admission controller for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "imagegate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator and webhook against a cluster (in the cluster or from a workstation).
    Run(run::RunArgs),
    /// Serve the webhook without a cluster, with policies from files.
    Serve(serve::ServeArgs),
    /// Evaluate manifests against policies offline (for CI); exit 0 admitted, 1 denied, 2 bad input.
    Check(check::CheckArgs),
    /// Decide the Pods running in the cluster against its policies, or against candidate
    /// policies from files; exit 0 none denied, 1 some would be denied, 2 bad input or no cluster.
    Audit(audit::AuditArgs),
    /// Print the ImagePolicy CustomResourceDefinition as YAML.
    Crd,
}

/// Engine settings shared by `run`, `serve`, `check` and `audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// What to do with an image that no applying policy governs.
    #[arg(
        long,
        env = "IMAGEGATE_UNMATCHED_IMAGES",
        value_enum,
        default_value = "allow"
    )]
    pub unmatched_images: UnmatchedImages,

    /// Service accounts in these namespaces are trusted workload controllers: break-glass
    /// allowedGroups/allowedUsers are not applied to them (ticket and time still are).
    #[arg(
        long,
        env = "IMAGEGATE_TRUSTED_CONTROLLER_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub trusted_controller_namespaces: Vec<String>,
}

impl EngineArgs {
    /// The engine settings these flags describe.
    pub fn settings(&self) -> Settings {
        Settings {
            unmatched_images: self.unmatched_images,
            trusted_controller_namespaces: self.trusted_controller_namespaces.clone(),
        }
    }
}

/// The Sigstore trusted root given at start (`run`, `serve`, `check`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SigstoreArgs {
    /// A Sigstore trusted root (trusted_root.json, as `cosign initialize` or another TUF client
    /// fetches Sigstore's public one) for keyless entries that name no trustedRoot, and for the
    /// transparency log of key entries with transparencyLog: Require. Read from the file only:
    /// imagegate fetches nothing to start. Without it, such entries do not compile.
    #[arg(long, env = "IMAGEGATE_SIGSTORE_TRUSTED_ROOT", value_name = "FILE")]
    pub sigstore_trusted_root: Option<PathBuf>,
}

impl SigstoreArgs {
    /// The trusted root of `--sigstore-trusted-root`, read now; `None` without the flag.
    pub fn trusted_root(&self) -> anyhow::Result<Option<Arc<TrustedRoot>>> {
        let Some(file) = &self.sigstore_trusted_root else {
            return Ok(None);
        };
        crate::operator::key_secrets::read_trusted_root(file)
            .map(|root| Some(Arc::new(root)))
            .map_err(|e| anyhow::anyhow!("--sigstore-trusted-root: {e}"))
    }
}

/// Where `serve` and `check` read what `verifySignatures` entries name outside their policy,
/// having no cluster: the keys of `secretRef` Secrets and the trusted roots of
/// `trustedRoot.configMapRef` ConfigMaps, as the files of mounted volumes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeySecretDirArgs {
    /// Folder holding the Secrets that verifySignatures secretRef keys name, as
    /// DIR/SECRET/KEY files (the layout of Secrets mounted as volumes). Without it, a policy
    /// with a secretRef key does not compile here.
    #[arg(long, env = "IMAGEGATE_KEY_SECRET_DIR", value_name = "DIR")]
    pub key_secret_dir: Option<PathBuf>,

    /// Folder holding the ConfigMaps that keyless entries name in trustedRoot.configMapRef, as
    /// DIR/CONFIGMAP/KEY files (the layout of ConfigMaps mounted as volumes). Without it, a
    /// policy naming a trusted-root ConfigMap does not compile here.
    #[arg(long, env = "IMAGEGATE_TRUSTED_ROOT_DIR", value_name = "DIR")]
    pub trusted_root_dir: Option<PathBuf>,

    #[command(flatten)]
    pub sigstore: SigstoreArgs,
}

/// The largest file read as a Secret or ConfigMap key: neither object holds more than 1 MiB,
/// and a public key or trusted root far less.
const KEY_FILE_MAX_BYTES: u64 = 1024 * 1024;

impl KeySecretDirArgs {
    /// The Secrets in `--key-secret-dir` (each folder is a Secret, each file in it a key), the
    /// ConfigMaps in `--trusted-root-dir` (the same layout) and the root of
    /// `--sigstore-trusted-root`.
    pub fn secret_keys(&self) -> anyhow::Result<crate::policy::SecretKeys> {
        use crate::policy::{SecretKeys, TrustedRoots};
        use anyhow::Context as _;
        let mut keys = match &self.key_secret_dir {
            None => SecretKeys::default(),
            Some(dir) => {
                let mut keys = SecretKeys::none(format!(
                    "--key-secret-dir {} has no folder of that name (it holds DIR/SECRET/KEY files)",
                    dir.display()
                ));
                for (name, data) in read_mounted(dir).context("--key-secret-dir")? {
                    keys.insert(&name, Ok(data));
                }
                keys
            }
        };
        let mut roots = match &self.trusted_root_dir {
            None => TrustedRoots::default(),
            Some(dir) => {
                let mut roots = TrustedRoots::none(
                    format!(
                        "--trusted-root-dir {} has no folder of that name (it holds DIR/CONFIGMAP/KEY files)",
                        dir.display()
                    ),
                    "no trusted root was given at start (--sigstore-trusted-root FILE)",
                );
                for (name, data) in read_mounted(dir).context("--trusted-root-dir")? {
                    roots.insert(&name, Ok(data));
                }
                roots
            }
        };
        if let Some(root) = self.sigstore.trusted_root()? {
            roots.set_default(root);
        }
        keys = keys.with_trusted_roots(roots);
        Ok(keys)
    }

    /// The files `serve` watches for changes.
    pub fn watched(&self) -> impl Iterator<Item = &PathBuf> {
        self.key_secret_dir
            .iter()
            .chain(&self.trusted_root_dir)
            .chain(&self.sigstore.sigstore_trusted_root)
    }
}

/// Objects mounted as volumes in `dir`: each folder is an object, each file in it a key (names
/// starting with `.` are passed over, as the `..data` links of a mounted volume).
fn read_mounted(
    dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, std::collections::BTreeMap<String, String>)>> {
    use anyhow::Context as _;
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let mut data = std::collections::BTreeMap::new();
        for file in
            std::fs::read_dir(&path).with_context(|| format!("cannot read {}", path.display()))?
        {
            let file = file.with_context(|| format!("cannot read {}", path.display()))?;
            let key = file.file_name().to_string_lossy().into_owned();
            let file = file.path();
            if key.starts_with('.') || !file.is_file() {
                continue;
            }
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size > KEY_FILE_MAX_BYTES {
                anyhow::bail!(
                    "{} is {size} bytes, larger than any Secret or ConfigMap ({KEY_FILE_MAX_BYTES} bytes)",
                    file.display()
                );
            }
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            data.insert(key, String::from_utf8_lossy(&bytes).into_owned());
        }
        out.push((name, data));
    }
    Ok(out)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    #[default]
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// Parses the command line and runs the command; the process exit code.
pub fn main() -> ExitCode {
    // Both the webhook server and the Kubernetes client use rustls; one provider for both.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check::main(args),
        Command::Audit(args) => audit::main(args),
        Command::Crd => crd::main(),
        Command::Serve(args) => run_async(serve::main(args)),
        Command::Run(args) => run_async(run::main(args)),
    }
}

/// Completes on SIGTERM or Ctrl-C: the signal to drain and stop the server.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

fn run_async(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("imagegate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imagegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn key_secret_dirs_are_read_as_mounted_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let cosign = dir.path().join("cosign");
        std::fs::create_dir_all(cosign.join("..2026_11_22")).unwrap();
        std::fs::write(cosign.join("cosign.pub"), "PEM").unwrap();
        std::fs::write(cosign.join("..data"), "ignored").unwrap();
        std::fs::write(dir.path().join("stray-file"), "ignored").unwrap();
        let args = super::KeySecretDirArgs {
            key_secret_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let keys = args.secret_keys().unwrap();
        assert_eq!(keys.get("cosign", "cosign.pub"), Ok("PEM"));
        assert_eq!(keys.names().collect::<Vec<_>>(), ["cosign"]);
        let e = keys.get("vendor", "cosign.pub").unwrap_err();
        assert!(e.contains("has no folder of that name"), "{e}");
        let e = keys.get("cosign", "other").unwrap_err();
        assert!(
            e.contains("has no key \"other\" (its keys: cosign.pub)"),
            "{e}"
        );

        let none = super::KeySecretDirArgs::default().secret_keys().unwrap();
        let e = none.get("cosign", "cosign.pub").unwrap_err();
        assert!(e.contains("--key-secret-dir"), "{e}");
        let missing = super::KeySecretDirArgs {
            key_secret_dir: Some(dir.path().join("nope")),
            ..Default::default()
        };
        assert!(missing.secret_keys().is_err());
    }

    #[test]
    fn trusted_roots_are_read_as_mounted_config_maps_and_from_the_start_up_file() {
        let root = include_str!("../../tests/data/sigstore/trusted_root.json");
        let dir = tempfile::tempdir().unwrap();
        let maps = dir.path().join("maps");
        std::fs::create_dir_all(maps.join("sigstore")).unwrap();
        std::fs::write(maps.join("sigstore/trusted_root.json"), root).unwrap();
        let file = dir.path().join("public.json");
        std::fs::write(&file, root).unwrap();
        let args = super::KeySecretDirArgs {
            trusted_root_dir: Some(maps.clone()),
            sigstore: super::SigstoreArgs {
                sigstore_trusted_root: Some(file.clone()),
            },
            ..Default::default()
        };
        let keys = args.secret_keys().unwrap();
        let roots = keys.trusted_roots();
        let from_dir = roots.get("sigstore", "trusted_root.json").unwrap();
        assert_eq!(roots.default_root().unwrap(), from_dir);
        let e = roots.get("other", "trusted_root.json").unwrap_err();
        assert!(e.contains("--trusted-root-dir"), "{e}");
        assert_eq!(args.watched().count(), 2);

        // Without the flags, each says how to give a root; a bad file is an error naming it.
        let none = super::KeySecretDirArgs::default().secret_keys().unwrap();
        assert!(
            none.trusted_roots()
                .get("sigstore", "k")
                .unwrap_err()
                .contains("--trusted-root-dir DIR")
        );
        assert!(
            none.trusted_roots()
                .default_root()
                .unwrap_err()
                .contains("--sigstore-trusted-root FILE")
        );
        std::fs::write(&file, "{}").unwrap();
        let e = format!("{:#}", args.secret_keys().unwrap_err());
        assert!(
            e.contains("--sigstore-trusted-root") && e.contains("public.json"),
            "{e}"
        );
    }
}
