//! The decision record: one log event per decision (target `imagegate::decision`) with
//! everything needed to replay it with `imagegate check --user U --group G --now T`: the
//! request, the requester, every image with its canonical form and verdict, each applying
//! policy's name, generation and mode, break-glass use, the violations and the latency.
//!
//! With `--log-format json` each record is one nested JSON object per line, serialised here
//! and handed to the log writer directly; with `--log-format text` it is a short text event.

use std::collections::BTreeMap;
use std::time::Duration;

use super::json_line::JsonLine;
use crate::decision::{AppliedPolicy, BreakGlassUse, Decision, ImageVerdict, Requester, Violation};
use crate::evidence::Evidence;
use crate::mutation::{Mutation, Plan};
use crate::namespaces::Labels;
use crate::telemetry;

/// The log target of decision records.
pub const TARGET: &str = "imagegate::decision";

/// What a record says about the request besides the decision.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// `validate`, `mutate` or `imagereview`.
    pub endpoint: &'a str,
    /// Request uid (empty for ImageReview, which has none).
    pub uid: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub operation: &'a str,
    pub requester: Option<&'a Requester>,
    pub dry_run: bool,
    /// The namespace labels the decision used (replay with `--namespace-labels`).
    pub namespace_labels: Option<&'a Labels>,
    /// The object's imagegate annotations (break-glass), as the decision read them.
    pub annotations: Option<&'a BTreeMap<String, String>>,
    /// The moment the decision used as "now" (replay with `--now`).
    pub now: jiff::Timestamp,
    pub latency: Duration,
    /// What the registry adapter found for the images signature entries govern (replay with
    /// `--evidence`); `None` when nothing was gathered.
    pub evidence: Option<&'a Evidence>,
}

/// One decision record, as written.
struct Record<'a> {
    timestamp: jiff::Timestamp,
    level: &'static str,
    target: &'static str,
    endpoint: &'a str,
    uid: &'a str,
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
    operation: &'a str,
    user: Option<&'a str>,
    groups: Option<&'a [String]>,
    dry_run: bool,
    namespace_labels: Option<&'a Labels>,
    annotations: Option<&'a BTreeMap<String, String>>,
    now: jiff::Timestamp,
    allowed: bool,
    decision: &'a str,
    images: Option<&'a [ImageVerdict]>,
    policies: Option<&'a [AppliedPolicy]>,
    break_glass_ticket: Option<String>,
    break_glass: &'a [BreakGlassUse],
    violations: Option<&'a [Violation]>,
    evidence: Option<&'a Evidence>,
    mutations: Option<&'a [Mutation]>,
    reason: Option<&'a str>,
    latency_us: u64,
}

impl<'a> Record<'a> {
    fn new(ctx: &RecordContext<'a>, allowed: bool, label: &'a str) -> Record<'a> {
        Record {
            timestamp: jiff::Timestamp::now(),
            level: "INFO",
            target: TARGET,
            endpoint: ctx.endpoint,
            uid: ctx.uid,
            kind: ctx.kind,
            namespace: ctx.namespace,
            name: ctx.name,
            operation: ctx.operation,
            user: ctx.requester.map(|r| r.username.as_str()),
            groups: ctx.requester.map(|r| r.groups.as_slice()),
            dry_run: ctx.dry_run,
            namespace_labels: ctx.namespace_labels,
            annotations: ctx.annotations,
            now: ctx.now,
            allowed,
            decision: label,
            images: None,
            policies: None,
            break_glass_ticket: None,
            break_glass: &[],
            violations: None,
            evidence: ctx.evidence.filter(|e| !e.images.is_empty()),
            mutations: None,
            reason: None,
            latency_us: u64::try_from(ctx.latency.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// The record as one JSON line, newline included. Absent parts are left out: no
    /// requester, labels, images, policies, ticket or reason; no imagegate annotations, no
    /// break-glass use and no evidence.
    fn line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        self.write_line(&mut line);
        line
    }

    /// Appends [`Record::line`] to `out`, which holds whole lines or nothing.
    fn write_line(&self, out: &mut Vec<u8>) {
        let mut w = JsonLine::after(std::mem::take(out));
        w.begin_object();
        w.key("timestamp");
        w.timestamp(self.timestamp);
        w.string_field("level", self.level);
        w.string_field("target", self.target);
        w.key("message");
        w.string_of(&self.message());
        w.string_field("endpoint", self.endpoint);
        w.string_field("uid", self.uid);
        w.string_field("kind", self.kind);
        w.string_field("namespace", self.namespace);
        w.string_field("name", self.name);
        w.string_field("operation", self.operation);
        if let Some(user) = self.user {
            w.string_field("user", user);
        }
        if let Some(groups) = self.groups {
            w.strings_field("groups", groups.iter().map(String::as_str));
        }
        w.key("dry_run");
        w.bool(self.dry_run);
        if let Some(labels) = self.namespace_labels {
            w.map_field("namespace_labels", labels);
        }
        if let Some(annotations) = self.annotations.filter(|a| !a.is_empty()) {
            w.map_field("annotations", annotations);
        }
        w.key("now");
        w.timestamp(self.now);
        w.key("allowed");
        w.bool(self.allowed);
        w.string_field("decision", self.decision);
        if let Some(images) = self.images {
            w.key("images");
            w.begin_array();
            for image in images {
                w.begin_object();
                w.string_field("containerType", image.container_type.as_str());
                w.string_field("container", &image.container);
                w.string_field("image", &image.image);
                w.optional_string_field("canonical", image.canonical.as_deref());
                if let Some(pull) = &image.pull_policy {
                    w.string_field("pullPolicy", pull);
                }
                w.string_field("verdict", image.verdict.as_str());
                w.end_object();
            }
            w.end_array();
        }
        if let Some(policies) = self.policies {
            w.key("policies");
            w.begin_array();
            for policy in policies {
                w.begin_object();
                w.string_field("name", &policy.name);
                w.key("generation");
                match policy.generation {
                    Some(g) => w.i64(g),
                    None => w.null(),
                }
                w.string_field("mode", policy.mode.as_str());
                w.end_object();
            }
            w.end_array();
        }
        if let Some(tickets) = &self.break_glass_ticket {
            w.string_field("break_glass_ticket", tickets);
        }
        if !self.break_glass.is_empty() {
            w.key("break_glass");
            w.begin_array();
            for used in self.break_glass {
                w.begin_object();
                w.string_field("policy", &used.policy);
                w.string_field("ticket", &used.ticket);
                w.key("until");
                w.timestamp(used.until);
                w.optional_string_field("requester", used.requester.as_deref());
                w.key("excused");
                w.u64(u64::try_from(used.excused).unwrap_or(u64::MAX));
                w.end_object();
            }
            w.end_array();
        }
        if let Some(violations) = self.violations {
            w.key("violations");
            w.begin_array();
            for v in violations {
                w.begin_object();
                w.string_field("policy", &v.policy);
                w.string_field("mode", v.mode.as_str());
                w.string_field("rule", v.rule.as_str());
                w.string_field("containerType", v.container_type.as_str());
                w.string_field("container", &v.container);
                w.string_field("image", &v.image);
                w.string_field("field", &v.field_path);
                w.key("excused");
                w.bool(v.excused);
                w.key("unchanged");
                w.bool(v.unchanged);
                w.string_field("message", &v.message);
                w.end_object();
            }
            w.end_array();
        }
        if let Some(evidence) = self.evidence {
            w.serialized_field("evidence", evidence);
        }
        if let Some(mutations) = self.mutations {
            w.key("mutations");
            w.begin_array();
            for m in mutations {
                w.begin_object();
                w.string_field("change", m.change.as_str());
                w.string_field("containerType", m.container_type.as_str());
                w.string_field("container", &m.container);
                w.string_field("image", &m.image);
                w.optional_string_field("from", m.from.as_deref());
                w.optional_string_field("to", m.to.as_deref());
                w.string_field("policy", &m.policy);
                w.string_field("mode", m.mode.as_str());
                w.key("applied");
                w.bool(m.applied);
                w.string_field("path", &m.path);
                w.end_object();
            }
            w.end_array();
        }
        if let Some(reason) = self.reason {
            w.string_field("reason", reason);
        }
        w.key("latency_us");
        w.u64(self.latency_us);
        w.end_object();
        *out = w.into_bytes();
        out.push(b'\n');
    }

    /// The pieces of the record's message, `OPERATION KIND NAMESPACE/NAME: DECISION`.
    fn message(&self) -> [&str; 9] {
        let (operation, kind, namespace, name) =
            (self.operation, self.kind, self.namespace, self.name);
        [
            operation,
            " ",
            kind,
            " ",
            namespace,
            "/",
            name,
            ": ",
            self.decision,
        ]
    }

    /// Writes the record: one JSON line, or a text event with `--log-format text`.
    fn emit(&self) {
        // Records follow the log filter like any event (`RUST_LOG=imagegate::decision=off`).
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        if telemetry::json_records() {
            telemetry::write_record(LINE_CAPACITY, |batch| self.write_line(batch));
        } else {
            tracing::info!(
                target: TARGET,
                uid = self.uid,
                user = self.user,
                allowed = self.allowed,
                violations = self.violations.map_or(0, <[_]>::len),
                reason = self.reason,
                latency_us = self.latency_us,
                "{}",
                self.message().concat()
            );
        }
    }
}

/// The usual size of a record, so serialising it seldom reallocates.
const LINE_CAPACITY: usize = 2048;

/// Writes the record of a decision.
pub fn decision(ctx: &RecordContext<'_>, decision: &Decision, label: &str) {
    record_of(ctx, decision, label).emit();
}

fn record_of<'a>(ctx: &RecordContext<'a>, decision: &'a Decision, label: &'a str) -> Record<'a> {
    let tickets: Vec<&str> = decision
        .break_glass
        .iter()
        .map(|b| b.ticket.as_str())
        .collect();
    Record {
        images: Some(&decision.images),
        policies: Some(&decision.policies),
        break_glass_ticket: (!tickets.is_empty()).then(|| tickets.join(",")),
        break_glass: &decision.break_glass,
        violations: Some(&decision.violations),
        ..Record::new(ctx, decision.allowed, label)
    }
}

/// The JSON line [`decision`] writes (for benchmarks and tests).
pub fn decision_line(ctx: &RecordContext<'_>, decision: &Decision, label: &str) -> Vec<u8> {
    record_of(ctx, decision, label).line()
}

/// Writes the record of a mutation (endpoint `mutate`): the applying policies that ask for
/// changes, and every change made or only reported. Mutation never denies: `allowed` is true.
pub fn mutation(ctx: &RecordContext<'_>, plan: &Plan, label: &str) {
    mutation_record(ctx, plan, label).emit();
}

/// The JSON line [`mutation`] writes (for benchmarks and tests).
pub fn mutation_line(ctx: &RecordContext<'_>, plan: &Plan, label: &str) -> Vec<u8> {
    mutation_record(ctx, plan, label).line()
}

fn mutation_record<'a>(ctx: &RecordContext<'a>, plan: &'a Plan, label: &'a str) -> Record<'a> {
    Record {
        policies: Some(&plan.policies),
        mutations: Some(&plan.mutations),
        ..Record::new(ctx, true, label)
    }
}

/// Writes the record of a request denied without a decision (unreadable object or namespace)
/// or of a validated ImagePolicy.
pub fn verdict(ctx: &RecordContext<'_>, allowed: bool, label: &str, reason: &str) {
    Record {
        reason: Some(reason),
        ..Record::new(ctx, allowed, label)
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Input, decide};
    use crate::policy::{Settings, Snapshot, compile};
    use crate::workload::{Workload, WorkloadKind};
    use std::str::FromStr;

    #[test]
    fn a_record_is_one_nested_json_object_with_what_replay_needs() {
        let policy = serde_saphyr::from_str(
            "metadata: {name: p, generation: 3}\nspec: {deniedTags: [latest]}",
        )
        .unwrap();
        let snapshot = Snapshot::new(vec![compile(&policy).unwrap()], Settings::default());
        let pod = serde_json::json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "nginx", "imagePullPolicy": "Always"}]}});
        let object = Workload::from_value(WorkloadKind::Pod, &pod).unwrap();
        let requester = Requester {
            username: "alice".into(),
            groups: vec!["dev".into()],
        };
        let labels: Labels = [("env".to_owned(), "prod".to_owned())].into();
        let now: jiff::Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        let d = decide(
            &snapshot,
            &Input {
                object: &object,
                old_object: None,
                namespace_labels: &labels,
                requester: Some(&requester),
                now,
                evidence: None,
            },
        );
        let ctx = RecordContext {
            endpoint: "validate",
            uid: "u-1",
            kind: "Pod",
            namespace: "shop",
            name: "web",
            operation: "CREATE",
            requester: Some(&requester),
            dry_run: false,
            namespace_labels: Some(&labels),
            annotations: Some(&object.annotations),
            now,
            latency: Duration::from_micros(42),
            evidence: None,
        };
        let line: serde_json::Value =
            serde_json::from_slice(&record_of(&ctx, &d, "denied").line()).unwrap();
        assert_eq!(line["target"], TARGET);
        assert_eq!(line["message"], "CREATE Pod shop/web: denied");
        assert_eq!(line["user"], "alice");
        assert_eq!(line["groups"], serde_json::json!(["dev"]));
        assert_eq!(line["now"], "2026-11-22T12:00:00Z");
        assert_eq!(line["allowed"], false);
        assert_eq!(
            line["images"][0]["canonical"],
            "docker.io/library/nginx:latest"
        );
        assert_eq!(line["images"][0]["verdict"], "denied");
        assert_eq!(line["images"][0]["pullPolicy"], "Always");
        assert_eq!(
            line["policies"],
            serde_json::json!([{"name": "p", "generation": 3, "mode": "Enforce"}])
        );
        assert_eq!(line["violations"][0]["rule"], "deniedTags");
        assert_eq!(line["violations"][0]["field"], "spec.containers[0].image");
        assert_eq!(line["latency_us"], 42);
        assert_eq!(line["namespace_labels"], serde_json::json!({"env": "prod"}));
        assert!(
            line.get("annotations").is_none(),
            "no imagegate annotations, no field"
        );
        assert!(line.get("reason").is_none() && line.get("break_glass").is_none());
        assert!(
            line.get("evidence").is_none(),
            "no signature rule, no evidence"
        );
    }

    #[test]
    fn every_part_of_a_full_record_is_written_as_serde_writes_it() {
        use crate::decision::{Rule, Verdict};
        use crate::policy::Mode;
        use crate::workload::ContainerType;

        let until: jiff::Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let odd = "quote \" backslash \\ newline \n tab \t bell \u{7} é 🦀";
        let d = Decision {
            allowed: true,
            violations: vec![Violation {
                policy: "p\"1".into(),
                mode: Mode::Audit,
                rule: Rule::AllowedImages,
                container_type: ContainerType::ImageVolumes,
                container: odd.into(),
                image: "bad image".into(),
                canonical: None,
                message: odd.into(),
                excused: true,
                unchanged: true,
                field_path: "spec.volumes[12].image.reference".into(),
                image_index: 0,
                policy_index: Some(0),
            }],
            warnings: vec![],
            break_glass: vec![BreakGlassUse {
                policy: "p\"1".into(),
                ticket: "INC-1".into(),
                until,
                requester: None,
                excused: 1,
            }],
            images: vec![
                ImageVerdict {
                    container_type: ContainerType::ImageVolumes,
                    container: odd.into(),
                    image: "bad image".into(),
                    canonical: None,
                    pull_policy: None,
                    verdict: Verdict::Excused,
                },
                ImageVerdict {
                    container_type: ContainerType::InitContainers,
                    container: "init".into(),
                    image: "nginx".into(),
                    canonical: Some("docker.io/library/nginx:latest".into()),
                    pull_policy: Some("Always".into()),
                    verdict: Verdict::Audited,
                },
            ],
            policies: vec![
                AppliedPolicy {
                    name: "p\"1".into(),
                    generation: None,
                    mode: Mode::Audit,
                },
                AppliedPolicy {
                    name: "q".into(),
                    generation: Some(-2),
                    mode: Mode::Warn,
                },
            ],
            unverified: vec![],
        };
        let requester = Requester {
            username: odd.into(),
            groups: vec![],
        };
        let labels: Labels = [("a\"b".to_owned(), odd.to_owned())].into();
        let annotations: BTreeMap<String, String> = [(
            "imagegate.image-policy.k8s.io/break-glass".to_owned(),
            "INC-1".to_owned(),
        )]
        .into();
        let now: jiff::Timestamp = "2026-11-22T12:00:00.123456789Z".parse().unwrap();
        let evidence: Evidence = serde_json::from_value(serde_json::json!({"images": {
            "registry.corp.example/app:1": {
                "digest": "sha256:3f4ac9e1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b77e1",
                "digestError": null,
                "digestSource": "stale",
                "entries": {
                    "p/release": {"outcome": {"result": "verified", "digest": "sha256:3f4ac9e1d2b3a4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b77e1", "format": "cosignTag", "signer": "sha256:ab"}, "source": "stale"},
                    "p/other": {"outcome": {"result": "notVerified", "reason": odd}, "source": "fresh"},
                },
            },
        }}))
        .unwrap();
        let ctx = RecordContext {
            endpoint: "validate",
            uid: "u",
            kind: "Pod",
            namespace: odd,
            name: "",
            operation: "UPDATE",
            requester: Some(&requester),
            dry_run: true,
            namespace_labels: Some(&labels),
            annotations: Some(&annotations),
            now,
            latency: Duration::from_secs(u64::MAX),
            evidence: Some(&evidence),
        };
        let bytes = record_of(&ctx, &d, "excused").line();
        assert_eq!(bytes.last(), Some(&b'\n'));
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        let line: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        fn serde(value: &impl serde::Serialize) -> serde_json::Value {
            serde_json::to_value(value).unwrap()
        }
        assert_eq!(line["images"], serde(&d.images));
        assert_eq!(line["policies"], serde(&d.policies));
        assert_eq!(line["break_glass"], serde(&d.break_glass));
        assert_eq!(line["break_glass_ticket"], "INC-1");
        assert_eq!(
            line["violations"],
            serde_json::json!([{
                "policy": "p\"1", "mode": "Audit", "rule": "allowedImages",
                "containerType": "imageVolumes", "container": odd, "image": "bad image",
                "field": "spec.volumes[12].image.reference", "excused": true, "unchanged": true,
                "message": odd,
            }])
        );
        assert_eq!(line["namespace_labels"], serde_json::json!({"a\"b": odd}));
        assert_eq!(line["evidence"], serde(&evidence));
        assert_eq!(
            serde_json::from_value::<Evidence>(line["evidence"].clone()).unwrap(),
            evidence,
            "the evidence reads back as it was"
        );
        assert_eq!(line["annotations"], serde(&annotations));
        assert_eq!(line["user"], odd);
        assert_eq!(line["groups"], serde_json::json!([]));
        assert_eq!(line["namespace"], odd);
        assert_eq!(line["now"], "2026-11-22T12:00:00.123456789Z");
        assert_eq!(line["dry_run"], true);
        assert_eq!(line["latency_us"], u64::MAX);
        assert!(jiff::Timestamp::from_str(line["timestamp"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn a_mutation_record_lists_every_change_as_serde_writes_it() {
        use crate::mutation::Change;
        use crate::policy::Mode;
        use crate::workload::ContainerType;

        let change = |applied, to: Option<&str>| Mutation {
            change: Change::Digest,
            container_type: ContainerType::ImageVolumes,
            container: "data \"x\"".into(),
            image: "quay.io/data/set:v1".into(),
            from: Some("quay.io/data/set:v1".into()),
            to: to.map(str::to_owned),
            policy: "pin".into(),
            mode: if applied { Mode::Enforce } else { Mode::Audit },
            applied,
            path: "/spec/volumes/0/image/reference".into(),
            image_index: 0,
        };
        let plan = Plan {
            mutations: vec![
                change(true, Some("quay.io/data/set:v1@sha256:00")),
                change(false, None),
            ],
            policies: vec![AppliedPolicy {
                name: "pin".into(),
                generation: Some(4),
                mode: Mode::Enforce,
            }],
            ..Plan::default()
        };
        let ctx = RecordContext {
            endpoint: "mutate",
            uid: "u",
            kind: "Pod",
            namespace: "shop",
            name: "web",
            operation: "CREATE",
            requester: None,
            dry_run: false,
            namespace_labels: None,
            annotations: None,
            evidence: None,
            now: jiff::Timestamp::UNIX_EPOCH,
            latency: Duration::from_micros(3),
        };
        let line: serde_json::Value =
            serde_json::from_slice(&mutation_line(&ctx, &plan, "mutated")).unwrap();
        assert_eq!(line["endpoint"], "mutate");
        assert_eq!(line["decision"], "mutated");
        assert_eq!(line["allowed"], true);
        assert_eq!(line["message"], "CREATE Pod shop/web: mutated");
        assert_eq!(
            line["mutations"],
            serde_json::to_value(&plan.mutations).unwrap()
        );
        assert_eq!(
            line["policies"],
            serde_json::to_value(&plan.policies).unwrap()
        );
        assert!(line.get("violations").is_none() && line.get("images").is_none());
    }
}
