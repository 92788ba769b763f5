//! The Sigstore JavaScript producer (`tests/sigstore-js/produce.js`: `@sigstore/sign` against
//! `@sigstore/mock`'s Fulcio, Rekor and timestamp authority), run from Rust tests and
//! benchmarks. Shared by the unit tests of `src/signature/`, `tests/keyless.rs` and
//! `benches/registry.rs`: include it with `#[path = "…/tests/support/sigstore_js.rs"] mod
//! sigstore_js;`.

use std::path::{Path, PathBuf};

/// Runs the producer into `dir` (extra arguments after `--out DIR`). Returns `false` (after
/// printing `SKIPPED`) when Node or the packages of `tests/sigstore-js` are missing outside CI;
/// in CI (`CI` set) their absence fails, since `.ci/run` installs them.
pub fn produce(dir: &Path, extra: &[&str]) -> bool {
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sigstore-js");
    let installed = project.join("node_modules/@sigstore/sign").is_dir();
    let node = std::process::Command::new("node")
        .arg(project.join("produce.js"))
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output();
    match node {
        Ok(out) if out.status.success() => true,
        Ok(out) if installed => panic!(
            "the Sigstore JavaScript producer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        _ if std::env::var_os("CI").is_some() => panic!(
            "node and the packages of tests/sigstore-js are required in CI (`.ci/run` installs them with `npm ci`)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: node or tests/sigstore-js/node_modules missing (run `npm ci` in tests/sigstore-js)"
            );
            false
        }
    }
}
