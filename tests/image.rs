//! The container image's `Dockerfile`, read as BuildKit reads it (continuation lines joined,
//! comments dropped), since no Docker engine is here to build it: a pinned official Rust build
//! stage, a distroless runtime stage, a non-root user, the `imagegate` entrypoint with `run` as
//! its default arguments, and a build context that keeps local state out.

use std::path::Path;

/// One instruction: keyword (upper case) and the rest of its line.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    rest: String,
}

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = vec![];
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        // Comments (and parser directives) are whole lines; inside a continued instruction too.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    rest: rest.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continued line"
    );
    out
}

/// The instructions of each stage, in order.
fn stages(all: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(n, _)| n)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| &all[start..starts.get(k + 1).copied().unwrap_or(all.len())])
        .collect()
}

fn exec_form(rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| {
        panic!("`{rest}` is not the JSON exec form ({e}): a shell would wrap the process")
    })
}

fn arg_default(all: &[Instruction], name: &str) -> String {
    all.iter()
        .filter(|i| i.keyword == "ARG")
        .find_map(|i| i.rest.strip_prefix(&format!("{name}=")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no ARG {name} with a default"))
}

fn minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn image_builds_on_official_rust_and_runs_on_distroless_as_non_root() {
    let dockerfile = read("Dockerfile");
    let all = instructions(&dockerfile);
    let stages = stages(&all);
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");

    // Every base image is pinned by a tag (or digest), never implicitly `latest`.
    for stage in &stages {
        let image = stage[0].rest.split_whitespace().next().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or_default();
        assert!(
            last.contains(':') || image.contains('@'),
            "{image} is not pinned"
        );
        assert!(!image.ends_with(":latest"), "{image} is pinned to latest");
    }

    // Build: the official Rust image, at least the crate's rust-version, with Cargo.lock.
    let build = stages[0];
    assert!(
        build[0]
            .rest
            .starts_with("docker.io/library/rust:${RUST_VERSION}-"),
        "build on the official Rust image: {}",
        build[0].rest
    );
    let rust = arg_default(&all, "RUST_VERSION");
    let manifest = read("Cargo.toml");
    let required = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("Cargo.toml has a rust-version");
    assert!(
        minor(&rust) >= minor(&required),
        "the image builds with Rust {rust}, the crate needs {required}"
    );
    let cargo = build
        .iter()
        .find(|i| i.keyword == "RUN" && i.rest.contains("cargo build"))
        .expect("the build stage runs cargo build");
    for flag in ["--release", "--locked", "--bin imagegate"] {
        assert!(cargo.rest.contains(flag), "cargo build without {flag}");
    }

    // Runtime: distroless, non-root, exec-form entrypoint, `run` by default.
    let runtime = stages[1];
    let base = &runtime[0].rest;
    assert!(
        base.starts_with("gcr.io/distroless/") && base.contains(":nonroot"),
        "the runtime image is distroless nonroot: {base}"
    );
    let user = runtime
        .iter()
        .rfind(|i| i.keyword == "USER")
        .map(|i| i.rest.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER {user} must be a numeric non-root uid (runAsNonRoot can only verify a number)"
    );
    let entrypoint = runtime
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .map(|i| exec_form(&i.rest))
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint.len(), 1, "ENTRYPOINT is the binary alone");
    assert!(
        entrypoint[0] == "imagegate" || entrypoint[0].ends_with("/imagegate"),
        "ENTRYPOINT runs imagegate: {entrypoint:?}"
    );
    let cmd = runtime
        .iter()
        .rfind(|i| i.keyword == "CMD")
        .map(|i| exec_form(&i.rest))
        .expect("CMD");
    assert_eq!(cmd, ["run"], "the image runs the operator by default");
    let copy = runtime
        .iter()
        .find(|i| i.keyword == "COPY" && i.rest.starts_with("--from=build"))
        .expect("the runtime copies the binary from the build stage");
    assert!(
        copy.rest.ends_with(&entrypoint[0]),
        "the binary lands where ENTRYPOINT runs it: {}",
        copy.rest
    );
    assert!(
        !runtime.iter().any(|i| i.keyword == "RUN"),
        "the runtime image has no shell to RUN anything"
    );
}

#[test]
fn build_context_keeps_local_state_out_and_sources_in() {
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for excluded in ["target/", ".git/"] {
        assert!(
            patterns.contains(&excluded),
            ".dockerignore lacks {excluded}"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src", "src/", "crds", "crds/"] {
        assert!(
            !patterns.contains(&needed),
            ".dockerignore must not exclude {needed}: the build needs it"
        );
    }
}
