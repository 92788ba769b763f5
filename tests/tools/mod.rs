//! The external programs some tests run — `helm` (Helm 4, and Helm 3 as `helm3`), `promtool` and
//! `prometheus` — and rendering the chart with helm.
//!
//! `.ci/run` installs them. Where one is missing, a test that needs it prints `SKIPPED: …` and
//! passes, except in CI (`CI` set), where a missing program is a failure.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const RELEASE: &str = "imagegate";
pub const NAMESPACE: &str = "imagegate-system";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    root().join("charts/imagegate")
}

pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Fails in CI, and says why the test is skipped elsewhere.
fn missing(what: &str, install: &str) {
    assert!(!in_ci(), "{what}; CI must {install} before the tests");
    eprintln!("SKIPPED: {what}; {install} to run this test");
}

fn runs(bin: &Path, version_arg: &str) -> bool {
    Command::new(bin)
        .arg(version_arg)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The helm binaries to test with: `$IMAGEGATE_HELM` or `helm`, and `helm3` when present.
/// `None` (after saying why) when there is none and this is not CI.
pub fn helms() -> Option<Vec<PathBuf>> {
    let primary = std::env::var_os("IMAGEGATE_HELM").unwrap_or_else(|| "helm".into());
    let found: Vec<PathBuf> = [PathBuf::from(primary), PathBuf::from("helm3")]
        .into_iter()
        .filter(|bin| runs(bin, "version"))
        .collect();
    if !found.is_empty() {
        return Some(found);
    }
    missing(
        "helm is not installed (looked for $IMAGEGATE_HELM, helm and helm3 on PATH)",
        "run `bash .ci/install-helm.sh` (or set IMAGEGATE_HELM)",
    );
    None
}

/// One helm binary: enough where the test is about what the chart renders, not about helm.
pub fn one_helm() -> Option<PathBuf> {
    helms().and_then(|h| h.into_iter().next())
}

/// A program of Debian's `prometheus` package (`promtool`, `prometheus`) on PATH. `None` (after
/// saying why) when it is missing and this is not CI.
pub fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let bin = PathBuf::from(name);
    if runs(&bin, "--version") {
        return Some(bin);
    }
    missing(
        &format!("{name} is not installed"),
        "install Debian's `prometheus` package (`apt-get install --no-install-recommends prometheus`, as .ci/run does)",
    );
    None
}

pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn helm(bin: &Path, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .args(args)
        .current_dir(root())
        // No user configuration or repositories may change what is rendered.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("imagegate-helm-config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("imagegate-helm-cache"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("imagegate-helm-data"),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The manifests of `helm template` (hooks included), in order.
pub struct Rendered {
    pub helm: String,
    pub objects: Vec<Value>,
}

/// `helm template` of the chart as release [`RELEASE`] in [`NAMESPACE`], with `extra` flags.
pub fn render(bin: &Path, extra: &[&str]) -> Rendered {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("chart path is UTF-8"),
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let out = helm(bin, &args);
    assert!(
        out.ok,
        "{} template {extra:?} failed:\n{}",
        bin.display(),
        out.stderr
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out.stdout)
        .unwrap_or_else(|e| panic!("helm template output is not YAML: {e}\n{}", out.stdout));
    Rendered {
        helm: bin.display().to_string(),
        objects: docs.into_iter().filter(|d| !d.is_null()).collect(),
    }
}

impl Rendered {
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub fn kinds(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The one object of `kind`, as JSON.
    pub fn only(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(
            found.len(),
            1,
            "[{}] expected one {kind}, rendered {}",
            self.helm,
            found.len()
        );
        found[0]
    }

    pub fn is_hook(object: &Value) -> bool {
        object["metadata"]["annotations"]["helm.sh/hook"].is_string()
    }
}
