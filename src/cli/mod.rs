//! The command line: `run`, `serve`, `check`, `audit`, `crd`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::policy::{Settings, UnmatchedImages};

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

/// Where `serve` and `check` read the keys that `secretRef` names, having no cluster.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeySecretDirArgs {
    /// Folder holding the Secrets that verifySignatures secretRef keys name, as
    /// DIR/SECRET/KEY files (the layout of Secrets mounted as volumes). Without it, a policy
    /// with a secretRef key does not compile here.
    #[arg(long, env = "IMAGEGATE_KEY_SECRET_DIR", value_name = "DIR")]
    pub key_secret_dir: Option<std::path::PathBuf>,
}

/// The largest file read as a Secret key from `--key-secret-dir`: a Secret holds at most
/// 1 MiB, and a public key a few KiB.
const KEY_FILE_MAX_BYTES: u64 = 1024 * 1024;

impl KeySecretDirArgs {
    /// The Secrets in `--key-secret-dir`: each folder is a Secret, each file in it a key
    /// (names starting with `.` are passed over, as the `..data` links of a mounted volume).
    pub fn secret_keys(&self) -> anyhow::Result<crate::policy::SecretKeys> {
        use crate::policy::SecretKeys;
        use anyhow::Context as _;
        let Some(dir) = &self.key_secret_dir else {
            return Ok(SecretKeys::default());
        };
        let mut keys = SecretKeys::none(format!(
            "--key-secret-dir {} has no folder of that name (it holds DIR/SECRET/KEY files)",
            dir.display()
        ));
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read --key-secret-dir {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let mut data = std::collections::BTreeMap::new();
            for file in std::fs::read_dir(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
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
                        "{} is {size} bytes, larger than any Secret ({KEY_FILE_MAX_BYTES} bytes)",
                        file.display()
                    );
                }
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                data.insert(key, String::from_utf8_lossy(&bytes).into_owned());
            }
            keys.insert(&name, Ok(data));
        }
        Ok(keys)
    }
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
        };
        assert!(missing.secret_keys().is_err());
    }
}
