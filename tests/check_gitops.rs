//! `imagegate check` at the root of a GitOps repository (`tests/gitops/repo`): manifests mixed
//! with Helm charts and values, Kustomizations, Flux and Argo CD resources, CI and application
//! configuration, a templated file that is not YAML, cluster-scoped objects, multi-document
//! files and lists in YAML and JSON. What is reported, skipped and located; every output format
//! against its golden file (`tests/gitops/golden/`) and its schema (`tests/formats/`,
//! `docs/check-report.schema.json`); the pre-commit hooks through pre-commit itself.
//!
//! `IMAGEGATE_BLESS=1 cargo test --test check_gitops` rewrites the golden files.
//! The JUnit schema check needs `xmllint` (Debian's libxml2-utils) and the hook test needs
//! `pre-commit` (PyPI); `.ci/run` installs both. Without them the tests print `SKIPPED: …`
//! and pass, except in CI (`CI` set), where they fail.

mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cli::{stderr, stdout};

use serde_json::Value;

/// The moment of every decision here: the hotfix's break-glass exception holds until
/// 2026-11-23T08:00:00Z.
const NOW: &str = "2026-11-22T12:00:00Z";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gitops/repo")
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/gitops/golden")
        .join(name)
}

/// Runs `imagegate check --policies policies --now NOW ARGS…` in the repository.
fn check(args: &[&str], stdin: Option<&str>) -> Output {
    let mut all = vec!["check", "--policies", "policies", "--now", NOW];
    all.extend_from_slice(args);
    cli::imagegate(&repo(), &all, stdin.unwrap_or_default())
}

fn json(args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = check(&all, None);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    (out.status.code(), report)
}

fn strs<'a>(items: &'a Value, key: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap())
        .collect()
}

#[test]
fn the_whole_repository_reports_its_objects_skips_the_rest_and_fails_on_the_broken_file() {
    let (code, report) = json(&["."]);
    // The templated file is not YAML: exit 2, after everything else was judged.
    assert_eq!(code, Some(2), "{report:#}");

    // Exactly the Kubernetes objects, in input order (folders in name order, list items in
    // place), Namespaces aside; nothing from the hidden .github folder or the .tpl file.
    let results = &report["results"];
    assert_eq!(
        strs(results, "source"),
        [
            "apps/monitoring/agents.yaml#1.items[0]",
            "apps/monitoring/agents.yaml#1.items[1]",
            "apps/payments/debug-pods.json#1.items[0]",
            "apps/payments/debug-pods.json#1.items[1]",
            "apps/payments/hotfix.yaml#1",
            "apps/payments/settlement.yaml#1",
            "apps/shop/base/deployment.yaml#1",
            "apps/shop/base/service.yaml#1",
            "apps/shop/base/service.yaml#2",
            "clusters/prod/crds/widgets.yaml#1",
            "clusters/prod/crds/widgets.yaml#2",
            "clusters/prod/rbac.yaml#1",
            "clusters/prod/rbac.yaml#2",
            "clusters/prod/rbac.yaml#3",
            "policies/digests.yaml#1",
            "policies/digests.yaml#2",
            "policies/production.yaml#1",
        ]
    );
    let by_source = |source: &str| {
        results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"] == source)
            .unwrap()
            .clone()
    };

    // Cluster-scoped objects have no namespace: built-in kinds, imagegate's own policies, and a
    // custom resource whose CustomResourceDefinition in the repository says `scope: Cluster`.
    for source in [
        "clusters/prod/rbac.yaml#1",
        "clusters/prod/rbac.yaml#3",
        "clusters/prod/crds/widgets.yaml#1",
        "clusters/prod/crds/widgets.yaml#2",
        "policies/production.yaml#1",
    ] {
        assert_eq!(by_source(source)["namespace"], "", "{source}");
    }
    assert_eq!(
        by_source("apps/shop/base/service.yaml#2")["namespace"],
        "shop"
    );
    // Kinds without images are admitted and say so.
    assert_eq!(by_source("apps/shop/base/service.yaml#2")["images"], 0);
    assert_eq!(by_source("apps/shop/base/deployment.yaml#1")["images"], 3);

    // Every violation names the file, line and column of its image string.
    let web = by_source("apps/shop/base/deployment.yaml#1");
    assert_eq!(web["allowed"], false);
    assert_eq!(
        (web["file"].as_str(), web["line"].as_u64()),
        (Some("apps/shop/base/deployment.yaml"), Some(1))
    );
    let at = |v: &Value| {
        (
            v["file"].as_str().unwrap().to_owned(),
            v["line"].as_u64().unwrap(),
            v["column"].as_u64().unwrap(),
        )
    };
    let proxy = web["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["container"] == "proxy")
        .unwrap();
    assert_eq!(proxy["rule"], "allowedImages");
    assert_eq!(at(proxy), ("apps/shop/base/deployment.yaml".into(), 29, 18));
    // In a JSON list: the opening quote of the image string.
    let debug = by_source("apps/payments/debug-pods.json#1.items[0]");
    assert_eq!(debug["line"], 5);
    assert_eq!(
        at(&debug["violations"][0]),
        ("apps/payments/debug-pods.json".into(), 11, 38)
    );
    // In a YAML list, and for an Audit-mode violation.
    let cleanup = by_source("apps/monitoring/agents.yaml#1.items[1]");
    assert_eq!(cleanup["allowed"], true);
    assert_eq!(cleanup["violations"][0]["mode"], "Audit");
    assert_eq!(
        at(&cleanup["violations"][0]),
        ("apps/monitoring/agents.yaml".into(), 30, 22)
    );
    // Excused by break-glass: still located.
    let hotfix = by_source("apps/payments/hotfix.yaml#1");
    assert_eq!(hotfix["allowed"], true);
    assert_eq!(hotfix["violations"][0]["excused"], true);
    assert_eq!(
        at(&hotfix["violations"][0]),
        ("apps/payments/hotfix.yaml".into(), 14, 14)
    );

    // Everything else is skipped with its reason.
    let skipped: Vec<(&str, &str)> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["source"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("apps/argo/shop.yaml#1", "argoCd"),
            ("apps/shop/base/kustomization.yaml#1", "kustomization"),
            (
                "apps/shop/overlays/prod/kustomization.yaml#1",
                "kustomization"
            ),
            ("charts/web/Chart.yaml#1", "helmChart"),
            ("charts/web/templates/deployment.yaml", "helmTemplate"),
            ("charts/web/values-prod.yaml#1", "helmValues"),
            ("charts/web/values.yaml#1", "helmValues"),
            ("ci/pipeline.yaml#1", "notAnObject"),
            ("clusters/prod/flux-system.yaml#1", "flux"),
            ("clusters/prod/flux-system.yaml#2", "flux"),
            ("config/app-settings.yaml#1", "notAnObject"),
            ("config/feature-flags.json#1", "notAnObject"),
        ]
    );

    // The broken file is named with the parser's message, line and column.
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["file"], "apps/payments/legacy-worker.yaml");
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[0]["column"].as_u64()),
        (Some(11), Some(2))
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid YAML: "),
        "{errors:?}"
    );

    assert_eq!(
        report["summary"],
        serde_json::json!({
            "objects": 17, "admitted": 15, "denied": 2, "withWarnings": 2,
            "withoutImages": 10, "skipped": 12, "errors": 1
        })
    );
}

#[test]
fn exit_codes_without_the_broken_file_and_with_strict() {
    // The repository less its broken file: denied objects make exit 1.
    let readable = [
        "apps/shop",
        "apps/payments/debug-pods.json",
        "clusters",
        "charts",
        "config",
    ];
    let out = check(&readable, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    // --strict: the skipped documents fail the run.
    let mut strict = vec!["--strict"];
    strict.extend_from_slice(&readable);
    assert_eq!(check(&strict, None).status.code(), Some(2));

    // Configuration alone: nothing judged, nothing denied.
    let out = check(&["config", "ci"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("3 documents skipped: 3 not Kubernetes objects"),
        "{}",
        stdout(&out)
    );
    assert_eq!(check(&["--strict", "config"], None).status.code(), Some(2));
}

#[test]
fn a_missing_path_is_an_error_that_does_not_stop_the_run() {
    let (code, report) = json(&[
        "apps/payments/debug-pods.json",
        "does/not/exist.yaml",
        "clusters",
    ]);
    assert_eq!(code, Some(2));
    assert_eq!(report["errors"][0]["source"], "does/not/exist.yaml");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot read: ")
    );
    assert_eq!(report["summary"]["objects"], 7);
    assert_eq!(report["summary"]["denied"], 1);
}

#[test]
fn policies_that_cannot_be_read_are_the_whole_report() {
    // Nothing is judged; the report a CI system reads says why.
    let args = [
        "check",
        "--policies",
        "policies/missing.yaml",
        "--output",
        "json",
        "apps",
    ];
    let out = cli::imagegate(&repo(), &args, "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("policies/missing.yaml: cannot read"),
        "{}",
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"][0]["source"], "policies/missing.yaml");
    assert_eq!(report["summary"]["objects"], 0);
    // The text report is the message on standard error alone.
    let out = cli::imagegate(
        &repo(),
        &["check", "--policies", "policies/missing.yaml", "apps"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn standard_input_is_located_as_dash_line() {
    let text = std::fs::read_to_string(repo().join("apps/shop/base/deployment.yaml")).unwrap();
    let namespaces = std::fs::read_to_string(repo().join("clusters/prod/namespaces.yaml")).unwrap();
    let stream = format!("{namespaces}---\n{text}");
    let out = check(&["-"], Some(&stream));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The Namespaces take 17 lines and the separator one: the image is on line 29 + 18.
    assert!(
        stdout(&out).contains("  at -:47:18: container \"proxy\": image \"envoyproxy/envoy:v1.31.2\": production/allowedImages\n"),
        "{}",
        stdout(&out)
    );
    let out = check(&["--output", "json", "-"], Some(&text));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &report["results"][0]["violations"];
    assert_eq!(report["results"][0]["source"], "<stdin>#1");
    // Without the Namespace, `shop` has no env=prod label: only the Warn policy applies.
    assert_eq!(
        (v[0]["file"].as_str(), v[0]["line"].as_u64()),
        (Some("-"), Some(24))
    );
    // GitHub annotations name no file for standard input; the position goes in the message.
    let out = check(&["--output", "github", "-"], Some(&text));
    assert!(
        stdout(&out).contains(
            "::warning title=imagegate%3A pinned-digests/requireDigest::-:24:18: Deployment"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_helm_template_named_on_its_own_is_skipped_unread() {
    // As pre-commit passes it when it changed.
    let (code, report) = json(&["charts/web/templates/deployment.yaml"]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["skipped"][0]["reason"], "helmTemplate");
    assert!(
        report["skipped"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`helm template RELEASE charts/web | imagegate check"),
        "{report:#}"
    );
}

// ---- formats: golden files and schemas ----

/// The report of the whole repository in `format`.
fn report(format: &str) -> String {
    let out = check(&["--output", format, "."], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    stdout(&out)
}

/// Compares with the golden file, the version made constant.
fn assert_golden(name: &str, actual: &str) {
    let actual = actual.replace(&format!("\"{}\"", env!("CARGO_PKG_VERSION")), "\"VERSION\"");
    let path = golden(name);
    if std::env::var_os("IMAGEGATE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with IMAGEGATE_BLESS=1", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the output at line {}:\nexpected: {:?}\n  actual: {:?}\n(IMAGEGATE_BLESS=1 rewrites it)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

#[test]
fn text_report_is_as_golden() {
    assert_golden("report.txt", &report("text"));
}

#[test]
fn json_report_is_as_golden_and_follows_its_schema() {
    let text = report("json");
    assert_golden("report.json", &text);
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/check-report.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    validate(&schema, &serde_json::from_str(&text).unwrap());
}

#[test]
fn sarif_report_is_as_golden_and_valid_sarif() {
    let text = report("sarif");
    assert_golden("report.sarif", &text);
    let log: Value = serde_json::from_str(&text).unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats/sarif-2.1.0.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    validate(&schema, &log);

    // What GitHub code scanning reads: rule ids per policy rule, levels by mode, the image's
    // line and column relative to the repository's root, suppressions for what was excused.
    let run = &log["runs"][0];
    let rules = strs(&run["tool"]["driver"]["rules"], "id");
    assert!(rules.contains(&"imagegate/allowedImages"), "{rules:?}");
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in results {
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index], r["ruleId"], "{r:#}");
    }
    let proxy = results
        .iter()
        .find(|r| r["properties"]["container"] == "proxy")
        .unwrap();
    assert_eq!(proxy["level"], "error");
    let physical = &proxy["locations"][0]["physicalLocation"];
    assert_eq!(
        physical["artifactLocation"]["uri"],
        "apps/shop/base/deployment.yaml"
    );
    assert_eq!(physical["artifactLocation"]["uriBaseId"], "%SRCROOT%");
    assert_eq!(
        physical["region"],
        serde_json::json!({"startLine": 29, "startColumn": 18})
    );
    assert_eq!(
        proxy["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
        "shop/Deployment/web"
    );
    let levels: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["properties"]["mode"].as_str().unwrap(),
                r["level"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(levels.contains(&("Warn", "warning")), "{levels:?}");
    assert!(levels.contains(&("Audit", "note")), "{levels:?}");
    let excused = results
        .iter()
        .find(|r| r["properties"]["source"] == "apps/payments/hotfix.yaml#1")
        .unwrap();
    assert_eq!(excused["suppressions"][0]["kind"], "inSource");
    let invocation = &run["invocations"][0];
    assert_eq!(invocation["executionSuccessful"], false);
}

#[test]
fn junit_report_is_as_golden_and_valid_junit() {
    let text = report("junit");
    assert_golden("report.xml", &text);
    let Some(xmllint) = tool(
        "xmllint",
        "the JUnit schema check",
        "apt-get install libxml2-utils",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.xml");
    std::fs::write(&file, &text).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats/junit.xsd");
    let lint = || {
        Command::new(xmllint)
            .arg("--noout")
            .arg("--schema")
            .arg(&schema)
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = lint();
    assert!(out.status.success(), "{}", stderr(&out));

    // And the schema is not a pushover: a test case without a name fails it.
    std::fs::write(
        &file,
        text.replacen("<testcase name=\"node-exporter\"", "<testcase", 1),
    )
    .unwrap();
    assert!(!lint().status.success(), "a nameless test case validated");

    // One suite per file, one case per object or skipped document or unreadable file.
    assert!(text.contains("<testsuites name=\"imagegate check\" tests=\"30\" skipped=\"12\" failures=\"2\" errors=\"1\">"), "{text}");
    assert!(text.contains("<testcase name=\"web\" classname=\"shop.Deployment\" file=\"apps/shop/base/deployment.yaml\" line=\"1\">"), "{text}");
    assert!(text.contains("<failure message=\"Deployment &quot;web&quot; in namespace &quot;shop&quot; violates image policy (1 violation):\" type=\"imagegate/allowedImages\">apps/shop/base/deployment.yaml:29:18: [production/allowedImages]"), "{text}");
}

#[test]
fn github_report_is_as_golden_and_well_formed_workflow_commands() {
    let text = report("github");
    assert_golden("report.github.txt", &text);
    let mut commands = 0;
    for line in text.lines().filter(|l| l.starts_with("::")) {
        commands += 1;
        workflow_command(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert_eq!(commands, 6 + 1 + 12, "{text}");
    assert!(text.contains("::error file=apps/shop/base/deployment.yaml,line=29,col=18,title=imagegate%3A production/allowedImages::Deployment \"web\" in namespace \"shop\": container \"proxy\""), "{text}");
    // An error's message holds a `%`, which is escaped.
    assert!(text.contains("::error file=apps/payments/legacy-worker.yaml,line=11,col=2,title=imagegate%3A input not read::invalid YAML: unexpected character: `%25'"), "{text}");
}

/// Checks one line against the workflow command format of GitHub Actions:
/// `::COMMAND KEY=VALUE,KEY=VALUE::MESSAGE`, values and message escaped as the toolkit does.
fn workflow_command(line: &str) -> Result<(), String> {
    let rest = line.strip_prefix("::").ok_or("no leading ::")?;
    let (head, message) = rest.split_once("::").ok_or("no :: before the message")?;
    let (command, properties) = head.split_once(' ').unwrap_or((head, ""));
    if !["error", "warning", "notice"].contains(&command) {
        return Err(format!("unknown command {command:?}"));
    }
    let mut keys = Vec::new();
    for property in properties.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = property.split_once('=').ok_or("a property without =")?;
        if !["file", "line", "endLine", "col", "endColumn", "title"].contains(&key) {
            return Err(format!("unknown property {key:?}"));
        }
        if ["line", "endLine", "col", "endColumn"].contains(&key) && value.parse::<u32>().is_err() {
            return Err(format!("{key} is not a number: {value:?}"));
        }
        if value.contains([':', ',', '\r', '\n']) {
            return Err(format!("{key} is not escaped: {value:?}"));
        }
        unescaped(value)?;
        keys.push(key);
    }
    if keys.contains(&"line") && !keys.contains(&"file") {
        return Err("a line without a file".into());
    }
    unescaped(message)
}

/// Every `%` starts one of the escapes `%25`, `%0D`, `%0A`, `%3A`, `%2C`.
fn unescaped(s: &str) -> Result<(), String> {
    for (i, _) in s.match_indices('%') {
        let escape = s.get(i..i + 3).unwrap_or_default();
        if !["%25", "%0D", "%0A", "%3A", "%2C"].contains(&escape) {
            return Err(format!("a bare % at {i}"));
        }
    }
    Ok(())
}

fn validate(schema: &Value, instance: &Value) {
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the schema compiles");
    let errors = validator.iter_errors(instance).into_errors();
    assert!(errors.is_empty(), "{errors}");
}

/// A tool the tests run, or `None` after saying why it is missing; in CI a missing tool fails.
fn tool(name: &'static str, what: &str, install: &str) -> Option<&'static str> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(name);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !in_ci,
        "{what} needs {name}, which is not on PATH; .ci/run installs it ({install})"
    );
    eprintln!("SKIPPED: {what} needs {name}, which is not on PATH ({install})");
    None
}

// ---- pre-commit ----

#[test]
fn pre_commit_runs_the_hook_on_changed_manifests() {
    let Some(pre_commit) = tool(
        "pre-commit",
        "the pre-commit hook test",
        "pip install pre-commit",
    ) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hooks: Vec<Value> = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join(".pre-commit-hooks.yaml")).unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = hooks.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["imagegate-check", "imagegate-check-system"]);

    // pre-commit runs hooks at the root of the repository, with paths from there; the
    // `imagegate` it finds is the one just built.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_imagegate")).parent().unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let run = |files: &[&str]| {
        let files: Vec<String> = files
            .iter()
            .map(|f| format!("tests/gitops/repo/{f}"))
            .collect();
        Command::new(pre_commit)
            .args([
                "try-repo",
                ".",
                "imagegate-check-system",
                "--verbose",
                "--files",
            ])
            .args(&files)
            .current_dir(root)
            .env("PATH", &path)
            .env("PRE_COMMIT_HOME", home.path())
            .env("IMAGEGATE_POLICIES", "tests/gitops/repo/policies")
            .env("IMAGEGATE_CHECK_NOW", NOW)
            .output()
            .unwrap()
    };
    // A change to a denied workload (with the Namespaces that give it its labels) fails the
    // commit; the values file and the chart's templates beside it are skipped, the `.tpl` not
    // even passed.
    let out = run(&[
        "clusters/prod/namespaces.yaml",
        "apps/shop/base/deployment.yaml",
        "charts/web/values.yaml",
        "charts/web/templates/deployment.yaml",
        "charts/web/templates/_helpers.tpl",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("- exit code: 1"), "{text}");
    assert!(
        text.contains(
            "DENIED   deployment/web in shop (tests/gitops/repo/apps/shop/base/deployment.yaml#1)"
        ),
        "{text}"
    );
    assert!(
        text.contains("2 documents skipped: 1 Helm values file, 1 Helm template"),
        "{text}"
    );
    assert!(!text.contains("_helpers.tpl"), "{text}");

    // An admitted change passes.
    let out = run(&["apps/payments/settlement.yaml", "config/app-settings.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
