//! The registry adapter's flags: [`RegistryArgs`] for `run`, `serve` and `check`;
//! [`DockerConfigArgs`] for `serve` and `check`; [`RegistryCredentialSecretArgs`] for `run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{ClientConfig, Config, Credentials, NOT_VERIFIED_TTL};

/// The shortest `--verify-timeout`: a cold verification takes a few round trips to the
/// registry, which a shorter budget would cut off every time.
pub const MIN_VERIFY_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest `--registry-ca-file` read: a CA bundle of every public root is about 200 KiB.
pub const CA_FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// How registries are reached and their answers cached (`run`, `serve`, `check`).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// How long a verified signature outcome is cached (h/m/s).
    #[arg(long, env = "IMAGEGATE_SIGNATURE_CACHE_TTL", default_value = "10m", value_parser = crate::policy::parse_duration)]
    pub signature_cache_ttl: Duration,

    /// How long a verification stands while its registry is unavailable (h/m/s).
    #[arg(long, env = "IMAGEGATE_SIGNATURE_STALE_TTL", default_value = "24h", value_parser = crate::policy::parse_duration)]
    pub signature_stale_ttl: Duration,

    /// How long a tag's resolution to a digest is cached (h/m/s).
    #[arg(long, env = "IMAGEGATE_TAG_CACHE_TTL", default_value = "30s", value_parser = crate::policy::parse_duration)]
    pub tag_cache_ttl: Duration,

    /// Time for registry work of a request that carries no deadline of its own (ImageReview,
    /// check); AdmissionReview requests use the API server's timeout less a margin (h/m/s, at
    /// least 1s).
    #[arg(long, env = "IMAGEGATE_VERIFY_TIMEOUT", default_value = "8s", value_parser = parse_verify_timeout)]
    pub verify_timeout: Duration,

    /// PEM file of CA certificates trusted for registries, besides the system's (repeatable,
    /// or comma-separated).
    #[arg(
        long = "registry-ca-file",
        env = "IMAGEGATE_REGISTRY_CA_FILE",
        value_delimiter = ','
    )]
    pub registry_ca_files: Vec<PathBuf>,

    /// Registry host (HOST[:PORT]) reached over plain HTTP instead of HTTPS (repeatable, or
    /// comma-separated).
    #[arg(long = "insecure-registry", env = "IMAGEGATE_INSECURE_REGISTRY", value_delimiter = ',', value_parser = parse_insecure_registry)]
    pub insecure_registries: Vec<String>,
}

/// Where `serve` and `check` read registry logins.
#[derive(Debug, Clone, clap::Args)]
pub struct DockerConfigArgs {
    /// Docker config file whose `auths` hold registry logins (default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json, when it exists). Credential
    /// helpers are not run.
    #[arg(long, env = "IMAGEGATE_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
}

/// Where `run` reads registry logins.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryCredentialSecretArgs {
    /// A Secret of type kubernetes.io/dockerconfigjson in imagegate's namespace holding
    /// registry logins (repeatable, or comma-separated; read by name every minute).
    #[arg(
        long = "registry-credentials-secret",
        env = "IMAGEGATE_REGISTRY_CREDENTIALS_SECRET",
        value_delimiter = ','
    )]
    pub registry_credentials_secrets: Vec<String>,
}

fn parse_verify_timeout(text: &str) -> Result<Duration, String> {
    let d = crate::policy::parse_duration(text)?;
    if d < MIN_VERIFY_TIMEOUT {
        return Err(format!("{text:?} is too short; use at least 1s"));
    }
    Ok(d)
}

/// A registry host as references write it: `HOST[:PORT]`, no scheme or path.
fn parse_insecure_registry(text: &str) -> Result<String, String> {
    let host = text.trim();
    if host.is_empty()
        || host.contains("://")
        || host.contains('/')
        || host.contains(char::is_whitespace)
    {
        return Err(format!(
            "{text:?} is not a registry host; write HOST or HOST:PORT, as in image references"
        ));
    }
    Ok(crate::reference::normalize_registry(host))
}

impl RegistryArgs {
    /// The adapter's configuration from these flags, with `credentials`.
    pub fn config(&self, credentials: Credentials) -> anyhow::Result<Config> {
        let mut extra_roots = Vec::new();
        for path in &self.registry_ca_files {
            extra_roots.extend(read_ca_file(path)?);
        }
        Ok(Config {
            signature_cache_ttl: self.signature_cache_ttl,
            signature_stale_ttl: self.signature_stale_ttl,
            tag_cache_ttl: self.tag_cache_ttl,
            not_verified_ttl: NOT_VERIFIED_TTL,
            client: ClientConfig {
                extra_roots,
                insecure: self.insecure_registries.clone(),
            },
            credentials,
        })
    }
}

/// The certificates of a PEM file; a file without any is an error.
pub fn read_ca_file(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read --registry-ca-file {}", path.display()))?;
    if meta.len() > CA_FILE_MAX_BYTES {
        anyhow::bail!(
            "--registry-ca-file {} is larger than {CA_FILE_MAX_BYTES} bytes",
            path.display()
        );
    }
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read --registry-ca-file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--registry-ca-file {} is not PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--registry-ca-file {} holds no certificate (expected PEM blocks `BEGIN CERTIFICATE`)",
            path.display()
        );
    }
    Ok(certs)
}

impl DockerConfigArgs {
    /// The logins of `--docker-config`, else of the default Docker config when it exists, else
    /// none. A file named by the flag must be readable.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        if let Some(path) = &self.docker_config {
            return Ok(Credentials::load_docker_config(path)?);
        }
        match super::credentials::default_docker_config() {
            Some(path) if path.exists() => Ok(Credentials::load_docker_config(&path)?),
            _ => Ok(Credentials::anonymous()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        docker: DockerConfigArgs,
        #[command(flatten)]
        secrets: RegistryCredentialSecretArgs,
    }

    #[test]
    fn defaults() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.registry.signature_cache_ttl, Duration::from_secs(600));
        assert_eq!(
            cli.registry.signature_stale_ttl,
            Duration::from_secs(86_400)
        );
        assert_eq!(cli.registry.tag_cache_ttl, Duration::from_secs(30));
        assert_eq!(cli.registry.verify_timeout, Duration::from_secs(8));
        assert!(cli.registry.registry_ca_files.is_empty());
        assert!(cli.docker.docker_config.is_none());
        assert!(cli.secrets.registry_credentials_secrets.is_empty());
    }

    #[test]
    fn repeatable_flags_and_bad_values() {
        let cli = Cli::try_parse_from([
            "x",
            "--insecure-registry",
            "Localhost:5000",
            "--insecure-registry=mirror.lan,10.0.0.1:5000",
            "--registry-credentials-secret",
            "a,b",
        ])
        .unwrap();
        assert_eq!(
            cli.registry.insecure_registries,
            ["localhost:5000", "mirror.lan", "10.0.0.1:5000"]
        );
        assert_eq!(cli.secrets.registry_credentials_secrets, ["a", "b"]);
        for bad in [
            ["x", "--insecure-registry", "http://mirror.lan"],
            ["x", "--verify-timeout", "0s"],
            ["x", "--tag-cache-ttl", "1d"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = read_ca_file(&empty).unwrap_err().to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        assert!(read_ca_file(&missing).is_err());
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert_eq!(read_ca_file(&good).unwrap().len(), 1);
    }

    #[test]
    fn a_named_docker_config_must_exist() {
        let args = DockerConfigArgs {
            docker_config: Some("/nonexistent/config.json".into()),
        };
        assert!(args.credentials().is_err());
    }
}
