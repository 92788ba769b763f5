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
}
