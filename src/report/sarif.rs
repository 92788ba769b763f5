//! The report as a SARIF 2.1.0 log (OASIS Static Analysis Results Interchange Format), which
//! GitHub code scanning (`github/codeql-action/upload-sarif`) shows as alerts on the lines of
//! the pull request, as do GitLab, Azure DevOps and SARIF viewers.
//!
//! The mapping:
//!
//! - one run of the tool `imagegate`; its rules are the policy rules, with the ids
//!   `imagegate/allowedImages`, `imagegate/deniedTags`, … (the rule, not the policy: a rule
//!   means the same in every policy, and renaming a policy does not open new alerts; the
//!   policy is in the result's message and properties);
//! - one result per violation: level `error` for `Enforce`, `warning` for `Warn`, `note` for
//!   `Audit`; a violation that a break-glass exception excused carries an `inSource`
//!   suppression (its annotation sits on the object), so it shows as dismissed;
//! - its physical location is the image string (`artifactLocation` relative to the
//!   repository's root, `uriBaseId` `%SRCROOT%`; `region` with `startLine` and `startColumn`,
//!   columns counted in Unicode code points as the run's `columnKind` says); its logical
//!   location is the object (`NAMESPACE/Kind/name`, kind `resource`). Objects read from
//!   standard input have the logical location only;
//! - inputs that could not be read are `error` notifications of the invocation (rule-less
//!   tool problems, as the format intends), which then has `executionSuccessful: false`;
//!   skipped documents are `note` notifications.
//!
//! The serde types below model only the part of SARIF written here; the tests validate the
//! output against a schema of that part written from the specification.

use serde::Serialize;

use super::{Finding, Location, ObjectResult, Report, Severity};
use crate::decision::Rule;

/// The schema a SARIF 2.1.0 log names (SchemaStore's copy of the OASIS schema).
const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
/// The SARIF version written.
const VERSION: &str = "2.1.0";
/// The tool's name in the log.
const TOOL: &str = "imagegate";
/// Where relative artifact paths start: the repository's root.
const SRCROOT: &str = "%SRCROOT%";
/// The notification of an input that could not be read.
const INVALID_INPUT: &str = "imagegate/invalidInput";
/// The notification of a skipped document.
const SKIPPED: &str = "imagegate/skipped";

#[derive(Serialize)]
struct Log {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: Vec<Run>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Run {
    tool: Tool,
    invocations: Vec<Invocation>,
    column_kind: &'static str,
    results: Vec<SarifResult>,
}

#[derive(Serialize)]
struct Tool {
    driver: Driver,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Driver {
    name: &'static str,
    semantic_version: &'static str,
    rules: Vec<Descriptor>,
    notifications: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
    short_description: Message,
    #[serde(skip_serializing_if = "Option::is_none")]
    full_description: Option<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_configuration: Option<Configuration>,
}

#[derive(Serialize)]
struct Configuration {
    level: &'static str,
}

#[derive(Serialize)]
struct Message {
    text: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Invocation {
    execution_successful: bool,
    tool_execution_notifications: Vec<Notification>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    descriptor: Reference,
    level: &'static str,
    message: Message,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    locations: Vec<SarifLocation>,
}

#[derive(Serialize)]
struct Reference {
    id: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: String,
    rule_index: usize,
    level: &'static str,
    message: Message,
    locations: Vec<SarifLocation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    suppressions: Vec<Suppression>,
    properties: Properties,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifLocation {
    #[serde(skip_serializing_if = "Option::is_none")]
    physical_location: Option<PhysicalLocation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logical_locations: Vec<LogicalLocation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: ArtifactLocation,
    region: Region,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactLocation {
    uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri_base_id: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    start_line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_column: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogicalLocation {
    name: String,
    fully_qualified_name: String,
    kind: &'static str,
}

#[derive(Serialize)]
struct Suppression {
    kind: &'static str,
    justification: String,
}

/// The violation's details, for filters and dashboards.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    policy: String,
    mode: &'static str,
    container_type: &'static str,
    container: String,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical: Option<String>,
    source: String,
}

/// What each rule asks, for the rules' descriptions.
fn rule_description(rule: Rule) -> (&'static str, &'static str, &'static str) {
    match rule {
        Rule::Reference => (
            "InvalidReference",
            "The image reference must be valid.",
            "An image that does not parse as a Docker/OCI reference cannot be judged, so every policy that governs the object denies it.",
        ),
        Rule::AllowedImages => (
            "AllowedImages",
            "Images must come from an allowed source.",
            "Each image a policy governs must match at least one of the policy's allowedImages patterns.",
        ),
        Rule::DeniedImages => (
            "DeniedImages",
            "Images must not match a denied pattern.",
            "No image a policy governs may match one of the policy's deniedImages patterns.",
        ),
        Rule::RequireDigest => (
            "RequireDigest",
            "Images must be pinned by digest.",
            "Each image a policy with requireDigest governs must name its digest (@sha256:…).",
        ),
        Rule::DeniedTags => (
            "DeniedTags",
            "Images must not use a denied tag.",
            "No image a policy governs may use one of the policy's deniedTags; no tag and no digest means the tag latest.",
        ),
        Rule::RequirePullPolicyAlways => (
            "RequirePullPolicyAlways",
            "Images not pinned by digest must be pulled Always.",
            "An image not pinned by digest must have the effective imagePullPolicy Always under a policy with requirePullPolicyAlways.",
        ),
        Rule::BreakGlass => (
            "BreakGlass",
            "A break-glass exception must be valid.",
            "An object that asks for a break-glass exception must carry a ticket and an expiry the policy accepts, and come from a requester it allows.",
        ),
        Rule::UnmatchedImages => (
            "UnmatchedImages",
            "Every image must be governed by a policy.",
            "With --unmatched-images deny, an image that no applying policy governs is denied.",
        ),
        Rule::VerifySignatures => (
            "VerifySignatures",
            "Images must carry a valid signature.",
            "Each image a verifySignatures entry governs must carry a cosign signature over its digest that verifies under the key of one of the policy's entries for it.",
        ),
        Rule::RunningDigest => (
            "RunningDigest",
            "A digest-pinned image must run its digest.",
            "The audit of running Pods compares a pinned reference's digest with the digest the node reports the container runs; they must be the same.",
        ),
    }
}

/// The SARIF level of a finding.
fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

/// Renders the report as a SARIF 2.1.0 log.
pub fn render(report: &Report) -> serde_json::Result<String> {
    let rules: Vec<Descriptor> = Rule::ALL
        .iter()
        .map(|&rule| {
            let (name, short, full) = rule_description(rule);
            Descriptor {
                id: rule_id(rule),
                name: Some(name),
                short_description: Message { text: short.into() },
                full_description: Some(Message { text: full.into() }),
                default_configuration: Some(Configuration { level: "error" }),
            }
        })
        .collect();
    let notifications = vec![
        Descriptor {
            id: INVALID_INPUT.into(),
            name: None,
            short_description: Message {
                text: "An input could not be read.".into(),
            },
            full_description: None,
            default_configuration: None,
        },
        Descriptor {
            id: SKIPPED.into(),
            name: None,
            short_description: Message {
                text: "A document is not an object imagegate judges as it stands.".into(),
            },
            full_description: None,
            default_configuration: None,
        },
    ];
    let mut results = Vec::new();
    for r in &report.results {
        for f in &r.violations {
            results.push(result(r, f));
        }
    }
    let mut tool_notifications: Vec<Notification> = report
        .errors
        .iter()
        .map(|e| Notification {
            descriptor: Reference { id: INVALID_INPUT },
            level: "error",
            message: Message {
                text: e.to_string(),
            },
            locations: e.location.as_ref().and_then(physical).into_iter().collect(),
        })
        .collect();
    tool_notifications.extend(report.skipped.iter().map(|s| Notification {
        descriptor: Reference { id: SKIPPED },
        level: "note",
        message: Message {
            text: format!("{}: {}", s.source, s.message),
        },
        locations: physical(&s.location).into_iter().collect(),
    }));
    let log = Log {
        schema: SCHEMA,
        version: VERSION,
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: TOOL,
                    semantic_version: env!("CARGO_PKG_VERSION"),
                    rules,
                    notifications,
                },
            },
            invocations: vec![Invocation {
                execution_successful: report.errors.is_empty(),
                tool_execution_notifications: tool_notifications,
            }],
            column_kind: "unicodeCodePoints",
            results,
        }],
    };
    serde_json::to_string_pretty(&log).map(|json| json + "\n")
}

fn rule_id(rule: Rule) -> String {
    format!("{TOOL}/{rule}")
}

fn result(r: &ObjectResult, f: &Finding) -> SarifResult {
    let v = &f.violation;
    let object = if r.namespace.is_empty() {
        format!("{} {:?}", r.kind, r.name)
    } else {
        format!("{} {:?} in namespace {:?}", r.kind, r.name, r.namespace)
    };
    let mut location = f
        .location
        .as_ref()
        .and_then(physical)
        .unwrap_or(SarifLocation {
            physical_location: None,
            logical_locations: Vec::new(),
        });
    location.logical_locations.push(LogicalLocation {
        name: r.name.clone(),
        fully_qualified_name: if r.namespace.is_empty() {
            format!("{}/{}", r.kind, r.name)
        } else {
            format!("{}/{}/{}", r.namespace, r.kind, r.name)
        },
        kind: "resource",
    });
    SarifResult {
        rule_id: rule_id(v.rule),
        rule_index: Rule::ALL.iter().position(|&x| x == v.rule).unwrap_or(0),
        level: level(f.severity()),
        message: Message {
            text: format!("{object}: {v}"),
        },
        locations: vec![location],
        suppressions: if v.excused {
            vec![Suppression {
                kind: "inSource",
                justification: "excused by a break-glass exception on the object".into(),
            }]
        } else {
            Vec::new()
        },
        properties: Properties {
            policy: v.policy.clone(),
            mode: v.mode.as_str(),
            container_type: v.container_type.as_str(),
            container: v.container.clone(),
            image: v.image.clone(),
            canonical: v.canonical.clone(),
            source: r.source.clone(),
        },
    }
}

/// A physical location; none for standard input.
fn physical(at: &Location) -> Option<SarifLocation> {
    Some(SarifLocation {
        physical_location: Some(PhysicalLocation {
            artifact_location: artifact(&at.file)?,
            region: Region {
                start_line: at.line,
                start_column: at.column,
            },
        }),
        logical_locations: Vec::new(),
    })
}

/// The file as a URI: relative to the repository's root when it lies in it, else a `file:`
/// URI; percent-encoded either way.
fn artifact(file: &str) -> Option<ArtifactLocation> {
    let path = super::repository_path(file)?;
    let relative = !path.starts_with('/') && !path.split('/').any(|part| part == "..");
    if relative {
        // Each segment pushed on its own is percent-encoded, `#` and `?` included.
        let mut uri = url::Url::parse("file:///").ok()?;
        uri.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(path.split('/'));
        return Some(ArtifactLocation {
            uri: uri.path().trim_start_matches('/').to_owned(),
            uri_base_id: Some(SRCROOT),
        });
    }
    let absolute = std::env::current_dir().ok()?.join(&path);
    Some(ArtifactLocation {
        uri: url::Url::from_file_path(absolute).ok()?.to_string(),
        uri_base_id: None,
    })
}
