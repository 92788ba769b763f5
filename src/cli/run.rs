//! `imagegate run`: the operator and webhook against a cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{EngineArgs, LogFormat, SigstoreArgs};
use crate::evidence::Gather;
use crate::http::{AppState, ServerConfig, run_server};
use crate::metrics::Metrics;
use crate::operator::audit::{AuditConfig, MIN_AUDIT_INTERVAL};
use crate::operator::certificates::{CertParams, service_sans};
use crate::operator::webhook_config::{Endpoint, FailurePolicy, WebhookParams};
use crate::operator::{self, OperatorConfig};
use crate::registry::{Credentials, Registry, RegistryArgs, RegistryCredentialSecretArgs};
use crate::tls::CertResolver;

/// Where Kubernetes mounts the Pod's namespace.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// The namespace when neither `--namespace` nor the Pod's namespace is known.
pub const DEFAULT_NAMESPACE: &str = "imagegate-system";
/// The shortest accepted certificate validity: renewal happens at 2/3 of it and the Secret is
/// checked every minute, so anything shorter would leave no margin.
pub const MIN_VALIDITY: Duration = Duration::from_secs(3600);
/// After SIGTERM, how long `/readyz` answers 503 while requests are still served, so the
/// Service's endpoints drop this Pod before its listener closes.
pub const DRAIN_DELAY: Duration = Duration::from_secs(5);

/// Arguments of `imagegate run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Namespace of the Secret and the Service (default: the Pod's namespace, else
    /// imagegate-system). Always excluded from the webhooks.
    #[arg(long, env = "IMAGEGATE_NAMESPACE")]
    pub namespace: Option<String>,

    /// The Service the API server calls; the serving certificate covers its DNS names.
    #[arg(long, env = "IMAGEGATE_SERVICE", default_value = "imagegate")]
    pub service: String,

    /// Call this URL instead of the Service (https://HOST[:PORT]); the certificate covers HOST.
    #[arg(long, env = "IMAGEGATE_WEBHOOK_URL", value_parser = parse_webhook_url)]
    pub webhook_url: Option<WebhookUrl>,

    /// HTTPS listen address.
    #[arg(long, env = "IMAGEGATE_ADDR", default_value = "0.0.0.0:8443")]
    pub addr: SocketAddr,

    /// Plain-HTTP metrics address, or `off`.
    #[arg(long, env = "IMAGEGATE_METRICS_ADDR", default_value = "0.0.0.0:9090", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,

    /// failurePolicy of the webhooks.
    #[arg(
        long,
        env = "IMAGEGATE_FAILURE_POLICY",
        value_enum,
        default_value = "Fail"
    )]
    pub failure_policy: FailurePolicy,

    /// timeoutSeconds of the webhooks (1 to 30).
    #[arg(long, env = "IMAGEGATE_TIMEOUT_SECONDS", default_value = "10",
          value_parser = clap::value_parser!(i32).range(1..=30))]
    pub timeout_seconds: i32,

    /// Namespaces never sent to the webhooks (comma-separated); --namespace is always added.
    #[arg(
        long,
        env = "IMAGEGATE_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub excluded_namespaces: Vec<String>,

    /// Validity of a new serving certificate (h/m/s), renewed at 2/3 of it.
    #[arg(long, env = "IMAGEGATE_CERT_VALIDITY", default_value = "2160h", value_parser = parse_validity)]
    pub cert_validity: Duration,

    /// Validity of a new CA (h/m/s), rotated at 2/3 of it.
    #[arg(long, env = "IMAGEGATE_CA_VALIDITY", default_value = "87600h", value_parser = parse_validity)]
    pub ca_validity: Duration,

    /// The Secret holding the CA and serving certificate.
    #[arg(long, env = "IMAGEGATE_SECRET_NAME", default_value = "imagegate-tls")]
    pub secret_name: String,

    /// The ValidatingWebhookConfiguration to manage.
    #[arg(
        long,
        env = "IMAGEGATE_WEBHOOK_CONFIG_NAME",
        default_value = "imagegate"
    )]
    pub webhook_config_name: String,

    /// The ClusterRole (from the Helm chart) that owns the webhook configuration, so that
    /// uninstalling the chart deletes it.
    #[arg(long, env = "IMAGEGATE_OWNER_CLUSTER_ROLE")]
    pub owner_cluster_role: Option<String>,

    /// Secrets in --namespace that verifySignatures keys may name (secretRef), comma-separated;
    /// the operator reads and watches exactly these, by name.
    #[arg(
        long,
        env = "IMAGEGATE_KEY_SECRETS",
        value_delimiter = ',',
        value_name = "NAME,…"
    )]
    pub key_secrets: Vec<String>,

    /// ConfigMaps in --namespace that keyless entries may name as their trusted root
    /// (trustedRoot.configMapRef), comma-separated; the operator reads and watches exactly
    /// these, by name.
    #[arg(
        long,
        env = "IMAGEGATE_TRUSTED_ROOT_CONFIG_MAPS",
        value_delimiter = ',',
        value_name = "NAME,…"
    )]
    pub trusted_root_config_maps: Vec<String>,

    #[command(flatten)]
    pub sigstore: SigstoreArgs,

    /// How often the audit re-decides every running Pod even when no policy or namespace
    /// changed (h/m/s, at least 30s), or `off` for no audit (no Pod watch).
    #[arg(long, env = "IMAGEGATE_AUDIT_INTERVAL", default_value = "10m", value_parser = parse_audit_interval)]
    pub audit_interval: AuditInterval,

    /// Write a wgpolicyk8s.io/v1alpha2 PolicyReport named imagegate per namespace with the
    /// audit's results (needs the PolicyReport CRD; nothing is written without it).
    #[arg(
        long,
        env = "IMAGEGATE_POLICY_REPORTS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub policy_reports: bool,

    /// Log format.
    #[arg(long, env = "IMAGEGATE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,

    #[command(flatten)]
    pub registry_credentials: RegistryCredentialSecretArgs,
}

/// A `--webhook-url`: the base URL and its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL without a trailing `/`.
    pub base: String,
    /// The host (DNS name or IP address, without brackets or port).
    pub host: String,
}

/// Parses `https://HOST[:PORT][/PATH]`.
pub fn parse_webhook_url(text: &str) -> Result<WebhookUrl, String> {
    let rest = text.strip_prefix("https://").ok_or_else(|| {
        format!("{text:?}: the webhook URL must start with https:// (the API server only calls webhooks over TLS)")
    })?;
    if rest.contains(['?', '#']) || rest.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?}: the webhook URL may not contain a query, fragment or spaces"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{text:?}: the webhook URL may not contain user information"
        ));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(format!("{text:?}: the webhook URL has no host"));
    }
    if let Some((_, port)) = authority
        .rsplit_once(':')
        .filter(|_| !authority.ends_with(']'))
        && port.parse::<u16>().is_err()
    {
        return Err(format!("{text:?}: {port:?} is not a port"));
    }
    Ok(WebhookUrl {
        base: text.trim_end_matches('/').to_owned(),
        host: host.to_ascii_lowercase(),
    })
}

/// `--metrics-addr`: an address, or `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("{text:?} is not HOST:PORT or off"))
}

/// `--audit-interval`: an interval, or `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditInterval(pub Option<Duration>);

fn parse_audit_interval(text: &str) -> Result<AuditInterval, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(AuditInterval(None));
    }
    let d = crate::policy::parse_duration(text)?;
    if d < MIN_AUDIT_INTERVAL {
        return Err(format!(
            "{text:?} is too short; use at least {}s, or off",
            MIN_AUDIT_INTERVAL.as_secs()
        ));
    }
    Ok(AuditInterval(Some(d)))
}

fn parse_validity(text: &str) -> Result<Duration, String> {
    let d = crate::policy::parse_duration(text)?;
    if d < MIN_VALIDITY {
        return Err(format!("{text:?} is too short; use at least 1h"));
    }
    Ok(d)
}

/// The Pod's namespace, else [`DEFAULT_NAMESPACE`].
pub fn default_namespace() -> String {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

impl RunArgs {
    /// The operator's configuration from these flags.
    pub fn operator_config(&self) -> anyhow::Result<OperatorConfig> {
        if self.cert_validity > self.ca_validity {
            anyhow::bail!(
                "--cert-validity ({:?}) may not exceed --ca-validity ({:?}): a certificate cannot outlive its CA",
                self.cert_validity,
                self.ca_validity
            );
        }
        let namespace = self.namespace.clone().unwrap_or_else(default_namespace);
        let (endpoint, sans) = match &self.webhook_url {
            Some(url) => (Endpoint::Url(url.base.clone()), vec![url.host.clone()]),
            None => (
                Endpoint::Service {
                    namespace: namespace.clone(),
                    name: self.service.clone(),
                },
                service_sans(&self.service, &namespace),
            ),
        };
        Ok(OperatorConfig {
            webhook: WebhookParams {
                name: self.webhook_config_name.clone(),
                endpoint,
                failure_policy: self.failure_policy,
                timeout_seconds: self.timeout_seconds,
                excluded_namespaces: self.excluded_namespaces.clone(),
                namespace: namespace.clone(),
            },
            certs: CertParams {
                sans,
                cert_validity: self.cert_validity,
                ca_validity: self.ca_validity,
            },
            namespace,
            secret_name: self.secret_name.clone(),
            owner_cluster_role: self.owner_cluster_role.clone(),
            settings: self.engine.settings(),
            key_secrets: names(&self.key_secrets),
            trusted_root_config_maps: names(&self.trusted_root_config_maps),
            sigstore_trusted_root: match (
                &self.sigstore.sigstore_trusted_root,
                self.sigstore.trusted_root()?,
            ) {
                (Some(file), Some(root)) => Some((file.clone(), root)),
                _ => None,
            },
            audit: self.audit_interval.0.map(|interval| AuditConfig {
                interval,
                policy_reports: self.policy_reports,
            }),
        })
    }
}

/// Object names from a comma-separated flag, blanks left out.
fn names(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Runs `imagegate run`.
pub async fn main(args: RunArgs) -> anyhow::Result<()> {
    let _telemetry = crate::telemetry::init(args.log_format);
    let config = args.operator_config()?;
    let client = kube::Client::try_default().await.context(
        "cannot configure the Kubernetes client (from KUBECONFIG, ~/.kube/config or the in-cluster service account)",
    )?;
    tracing::info!(
        namespace = %config.namespace,
        secret = %config.secret_name,
        webhook_config = %config.webhook.name,
        sigstore_trusted_root = config
            .sigstore_trusted_root
            .as_ref()
            .map(|(_, root)| root.fingerprint()),
        "starting the operator"
    );
    let tls = CertResolver::new();
    let metrics = Arc::new(Metrics::new());
    // Logins come from the credential Secrets, read at once and every minute by the task below.
    let registry = Registry::new(
        args.registry.config(Credentials::anonymous())?,
        Some(Arc::clone(&metrics)),
    )
    .map_err(|e| anyhow::anyhow!("cannot set up the registry client: {e}"))?;
    let credential_secrets = args
        .registry_credentials
        .registry_credentials_secrets
        .clone();
    let namespace = config.namespace.clone();
    // The webhook and the audit share one adapter: its cache, logins and single flight.
    let evidence: Arc<dyn Gather> = Arc::new(registry.clone());
    let mut running = operator::start(
        client.clone(),
        config,
        Arc::clone(&tls),
        Arc::clone(&metrics),
        Arc::clone(&evidence),
    );
    if !credential_secrets.is_empty() {
        running
            .tasks
            .push(tokio::spawn(registry.clone().refresh_credentials(
                client,
                namespace,
                credential_secrets,
            )));
    }
    let state = AppState {
        snapshot: Arc::clone(&running.snapshot),
        namespaces: running.namespaces.clone(),
        events: running.events.clone(),
        tls,
        readiness: Arc::clone(&running.readiness),
        metrics,
        evidence,
        verify_timeout: args.registry.verify_timeout,
    };
    let mut server = ServerConfig::new(args.addr, args.metrics_addr.0);
    server.drain_delay = DRAIN_DELAY;
    let result = run_server(server, state, super::shutdown_signal()).await;
    for task in &running.tasks {
        task.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls() {
        let u = parse_webhook_url("https://10.0.0.5:8443").unwrap();
        assert_eq!(u.host, "10.0.0.5");
        assert_eq!(u.base, "https://10.0.0.5:8443");
        let u = parse_webhook_url("https://Dev.Example:8443/").unwrap();
        assert_eq!(u.host, "dev.example");
        assert_eq!(u.base, "https://Dev.Example:8443");
        let u = parse_webhook_url("https://[::1]:8443").unwrap();
        assert_eq!(u.host, "::1");
        assert!(parse_webhook_url("http://10.0.0.5:8443").is_err());
        assert!(parse_webhook_url("https://:8443").is_err());
        assert!(parse_webhook_url("https://h:x").is_err());
        assert!(parse_webhook_url("https://h/x?y").is_err());
    }

    #[test]
    fn metrics_addr_off() {
        assert_eq!(parse_metrics_addr("off").unwrap(), MetricsAddr(None));
        assert!(parse_metrics_addr("0.0.0.0:9090").unwrap().0.is_some());
        assert!(parse_metrics_addr("nope").is_err());
    }

    #[test]
    fn audit_flags() {
        use clap::Parser;
        let config = |args: &[&str]| {
            let cli =
                crate::cli::Cli::try_parse_from(["imagegate", "run"].iter().chain(args).copied())?;
            let crate::cli::Command::Run(args) = cli.command else {
                panic!("not run");
            };
            Ok::<_, clap::Error>(args.operator_config().unwrap().audit)
        };
        let on = |minutes: u64, reports| {
            Some(AuditConfig {
                interval: Duration::from_secs(minutes * 60),
                policy_reports: reports,
            })
        };
        assert_eq!(config(&["--audit-interval", "off"]).unwrap(), None);
        assert_eq!(
            config(&["--audit-interval", "1h", "--policy-reports"]).unwrap(),
            on(60, true)
        );
        assert_eq!(config(&["--policy-reports=false"]).unwrap(), on(10, false));
        assert_eq!(config(&["--policy-reports", "true"]).unwrap(), on(10, true));
        assert!(config(&["--audit-interval", "10s"]).is_err());
        assert!(config(&["--audit-interval", "soon"]).is_err());
    }

    #[test]
    fn validity_has_a_floor() {
        assert_eq!(
            parse_validity("2160h").unwrap(),
            Duration::from_secs(2160 * 3600)
        );
        assert!(parse_validity("30m").is_err());
        assert!(parse_validity("x").is_err());
    }

    #[test]
    fn flags_make_the_operator_config() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "imagegate",
            "run",
            "--namespace",
            "gate",
            "--excluded-namespaces",
            "kube-system,monitoring",
        ])
        .unwrap();
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run");
        };
        let config = args.operator_config().unwrap();
        assert_eq!(config.namespace, "gate");
        assert_eq!(config.secret_name, "imagegate-tls");
        assert_eq!(config.webhook.name, "imagegate");
        assert_eq!(config.webhook.timeout_seconds, 10);
        assert_eq!(config.webhook.failure_policy, FailurePolicy::Fail);
        assert_eq!(
            config.webhook.all_excluded(),
            ["gate", "kube-system", "monitoring"]
        );
        assert_eq!(config.certs.sans[3], "imagegate.gate.svc.cluster.local");
        assert_eq!(args.metrics_addr.0.map(|a| a.port()), Some(9090));
        assert_eq!(
            config.audit,
            Some(AuditConfig {
                interval: Duration::from_secs(600),
                policy_reports: false,
            })
        );

        let cli = crate::cli::Cli::try_parse_from([
            "imagegate",
            "run",
            "--webhook-url",
            "https://10.1.2.3:8443",
            "--cert-validity",
            "48h",
            "--ca-validity",
            "24h",
        ])
        .unwrap();
        let crate::cli::Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert!(args.operator_config().is_err(), "certificate outlives CA");
        assert!(
            crate::cli::Cli::try_parse_from(["imagegate", "run", "--timeout-seconds", "31"])
                .is_err()
        );
    }
}
