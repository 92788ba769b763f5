//! Registry credentials: the `auths` of a Docker config file (`serve`, `check`:
//! `--docker-config`) or of `kubernetes.io/dockerconfigjson` Secrets (`run`:
//! `--registry-credentials-secret`), by registry host.
//!
//! An entry gives a user name and password, as `auth` (base64 of `user:password`) or as
//! `username` and `password`. Credential helpers (`credsStore`, `credHelpers`) are not run: a
//! webhook does not start programs named by a file, and in a cluster there are none; their
//! registries are reached anonymously, and a warning says so. Identity tokens are not
//! supported either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use reqwest::header::HeaderValue;
use serde::Deserialize;

/// The Secret type whose `.dockerconfigjson` key holds a Docker config.
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// The key of that Secret's data.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The largest Docker config read: real ones are a few KiB; a Secret is at most 1 MiB.
pub const DOCKER_CONFIG_MAX_BYTES: u64 = 1024 * 1024;
/// How often `run` reads its credential Secrets again: a rotated password is in use within a
/// minute, at the cost of one `get` per Secret per minute (RBAC `get` by name suffices; a watch
/// would need `list` and `watch`).
pub const SECRET_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    username: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Login {
    /// A login from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Login {
        Login {
            username: username.into(),
            password: password.into(),
        }
    }

    /// `Basic base64(user:password)`, marked sensitive.
    pub fn basic_header(&self) -> Result<HeaderValue, String> {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        let mut v = HeaderValue::try_from(format!("Basic {encoded}"))
            .map_err(|_| "the user name or password cannot be sent".to_owned())?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// Logins by registry host (normalised as references are: lower case, Docker Hub as
/// `docker.io`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    logins: BTreeMap<String, Login>,
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the Docker config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Docker config {path} is larger than {DOCKER_CONFIG_MAX_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{source_name} is not a Docker config: {message}")]
    Format {
        source_name: String,
        message: String,
    },
}

/// The part of a Docker config file that matters.
#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The registry host a Docker config key names: `https://index.docker.io/v1/` → `docker.io`,
/// `https://registry.example:5000/v2/` → `registry.example:5000`.
pub fn config_key_host(key: &str) -> String {
    let key = key.trim();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or_default();
    crate::reference::normalize_registry(host)
}

impl Credentials {
    /// No credentials: every registry is reached anonymously.
    pub fn anonymous() -> Credentials {
        Credentials::default()
    }

    /// Credentials with one login (for tests and callers that have them at hand).
    pub fn with_login(mut self, registry: &str, login: Login) -> Credentials {
        self.logins.insert(config_key_host(registry), login);
        self
    }

    /// The login for `registry` (a host as references normalise it), if any.
    pub fn login_for(&self, registry: &str) -> Option<Login> {
        self.logins.get(registry).cloned()
    }

    /// The registries there are logins for.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.logins.keys().map(String::as_str)
    }

    /// Whether there is no login.
    pub fn is_empty(&self) -> bool {
        self.logins.is_empty()
    }

    /// Adds the logins of `other` for registries that have none yet: the first source that
    /// names a registry wins.
    pub fn merge(&mut self, other: Credentials) {
        for (host, login) in other.logins {
            self.logins.entry(host).or_insert(login);
        }
    }

    /// Reads the `auths` of a Docker config (`source_name` names it in messages). Entries
    /// that cannot be used are skipped with a warning; a document that is not a Docker config
    /// is an error.
    pub fn from_docker_config(
        json: &[u8],
        source_name: &str,
    ) -> Result<Credentials, CredentialsError> {
        let config: DockerConfig =
            serde_json::from_slice(json).map_err(|e| CredentialsError::Format {
                source_name: source_name.to_owned(),
                message: e.to_string(),
            })?;
        if let Some(store) = &config.creds_store {
            tracing::warn!(
                source = source_name,
                creds_store = %store,
                "the credential store is not used: imagegate does not run credential helpers; put the registry's login in `auths`"
            );
        }
        for (registry, helper) in &config.cred_helpers {
            tracing::warn!(
                source = source_name,
                registry = %registry,
                helper = %helper,
                "the credential helper is not run: imagegate does not run credential helpers; the registry is reached anonymously unless `auths` has it"
            );
        }
        let mut out = Credentials::default();
        for (key, entry) in config.auths {
            let host = config_key_host(&key);
            match entry.login() {
                Ok(Some(login)) => {
                    out.logins.entry(host).or_insert(login);
                }
                Ok(None) => {
                    if entry.identitytoken.is_some() {
                        tracing::warn!(source = source_name, registry = %key, "identity tokens are not supported; the registry is reached anonymously");
                    }
                }
                Err(message) => {
                    tracing::warn!(source = source_name, registry = %key, "the login is skipped: {message}");
                }
            }
        }
        Ok(out)
    }

    /// Reads a Docker config file.
    pub fn load_docker_config(path: &Path) -> Result<Credentials, CredentialsError> {
        let read = |source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > DOCKER_CONFIG_MAX_BYTES {
            return Err(CredentialsError::TooLarge {
                path: path.to_owned(),
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        Credentials::from_docker_config(&bytes, &path.display().to_string())
    }

    /// Reads a `kubernetes.io/dockerconfigjson` Secret.
    pub fn from_secret(secret: &Secret) -> Result<Credentials, String> {
        let name = secret.metadata.name.as_deref().unwrap_or("?");
        let kind = secret.type_.as_deref().unwrap_or("Opaque");
        if kind != DOCKER_CONFIG_JSON_TYPE {
            return Err(format!(
                "the Secret {name} is of type {kind}, not {DOCKER_CONFIG_JSON_TYPE}"
            ));
        }
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DOCKER_CONFIG_JSON_KEY))
            .ok_or_else(|| format!("the Secret {name} has no {DOCKER_CONFIG_JSON_KEY} key"))?;
        Credentials::from_docker_config(&data.0, &format!("the Secret {name}"))
            .map_err(|e| e.to_string())
    }
}

impl AuthEntry {
    fn login(&self) -> Result<Option<Login>, String> {
        if let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| format!("`auth` is not base64: {e}"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| "`auth` does not decode to text".to_owned())?;
            let (user, password) = text
                .split_once(':')
                .ok_or_else(|| "`auth` does not decode to user:password".to_owned())?;
            return Ok(Some(Login::new(user, password)));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Login::new(u.clone(), p.clone()))),
            (Some(_), None) => Err("`username` without `password`".to_owned()),
            _ => Ok(None),
        }
    }
}

/// Where `serve` and `check` look for a Docker config when `--docker-config` is not given:
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// Reads the named `kubernetes.io/dockerconfigjson` Secrets of `namespace`, in order (the first
/// Secret naming a registry wins). A Secret that is missing or unusable is skipped with a
/// warning: its registries are then reached anonymously, and fail closed if they need a login.
pub async fn read_secrets(client: &kube::Client, namespace: &str, names: &[String]) -> Credentials {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let mut out = Credentials::default();
    for name in names {
        match api.get_opt(name).await {
            Ok(Some(secret)) => match Credentials::from_secret(&secret) {
                Ok(c) => out.merge(c),
                Err(e) => {
                    tracing::warn!(namespace, secret = %name, "registry credentials skipped: {e}")
                }
            },
            Ok(None) => {
                tracing::warn!(namespace, secret = %name, "the registry credentials Secret does not exist")
            }
            Err(e) => {
                tracing::warn!(namespace, secret = %name, error = %e, "cannot read the registry credentials Secret")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn keys_name_hosts_as_references_do() {
        assert_eq!(config_key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(config_key_host("registry-1.docker.io"), "docker.io");
        assert_eq!(config_key_host("docker.io"), "docker.io");
        assert_eq!(
            config_key_host("Registry.Example:5000"),
            "registry.example:5000"
        );
        assert_eq!(
            config_key_host("http://127.0.0.1:5000/v2/"),
            "127.0.0.1:5000"
        );
    }

    #[test]
    fn reads_auth_and_username_password() {
        let json = format!(
            r#"{{"auths":{{
                "https://index.docker.io/v1/":{{"auth":"{}"}},
                "registry.example":{{"username":"u","password":"p:w"}},
                "broken.example":{{"auth":"%%%"}},
                "token.example":{{"identitytoken":"x"}}
            }},"credsStore":"desktop","credHelpers":{{"gcr.io":"gcloud"}}}}"#,
            b64("hub-user:hub:pass")
        );
        let c = Credentials::from_docker_config(json.as_bytes(), "test").unwrap();
        assert_eq!(
            c.login_for("docker.io"),
            Some(Login::new("hub-user", "hub:pass"))
        );
        assert_eq!(
            c.login_for("registry.example"),
            Some(Login::new("u", "p:w"))
        );
        assert_eq!(c.login_for("broken.example"), None);
        assert_eq!(c.login_for("token.example"), None);
        assert_eq!(c.login_for("gcr.io"), None);
        assert_eq!(
            c.registries().collect::<Vec<_>>(),
            ["docker.io", "registry.example"]
        );
    }

    #[test]
    fn a_document_that_is_not_a_docker_config_is_an_error() {
        let e = Credentials::from_docker_config(b"[1,2]", "the file x").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("the file x is not a Docker config"),
            "{e}"
        );
        assert!(
            Credentials::from_docker_config(b"{}", "x")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_first_source_naming_a_registry_wins() {
        let mut a = Credentials::anonymous().with_login("r.example", Login::new("a", "1"));
        a.merge(
            Credentials::anonymous()
                .with_login("r.example", Login::new("b", "2"))
                .with_login("s.example", Login::new("c", "3")),
        );
        assert_eq!(a.login_for("r.example"), Some(Login::new("a", "1")));
        assert_eq!(a.login_for("s.example"), Some(Login::new("c", "3")));
    }

    #[test]
    fn secrets_must_be_dockerconfigjson() {
        let mut secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("pull".into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        assert!(
            Credentials::from_secret(&secret)
                .unwrap_err()
                .contains("type Opaque")
        );
        secret.type_ = Some(DOCKER_CONFIG_JSON_TYPE.into());
        assert!(
            Credentials::from_secret(&secret)
                .unwrap_err()
                .contains("no .dockerconfigjson")
        );
        secret.data = Some(
            [(
                DOCKER_CONFIG_JSON_KEY.to_owned(),
                k8s_openapi::ByteString(
                    format!(r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#, b64("u:p"))
                        .into_bytes(),
                ),
            )]
            .into(),
        );
        assert_eq!(
            Credentials::from_secret(&secret)
                .unwrap()
                .login_for("r.example"),
            Some(Login::new("u", "p"))
        );
    }

    #[test]
    fn the_password_is_not_debug_printed() {
        let text = format!("{:?}", Login::new("u", "secret"));
        assert!(!text.contains("secret"), "{text}");
    }
}
