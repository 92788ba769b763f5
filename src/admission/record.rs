//! The decision record: one log event per decision (target `imagegate::decision`) with
//! everything needed to replay it with `imagegate check --user U --group G --now T`: the
//! request, the requester, every image with its canonical form and verdict, each applying
//! policy's name, generation and mode, break-glass use, the violations and the latency.
//!
//! With `--log-format json` each record is one nested JSON object per line, serialised here
//! and handed to the log writer directly; with `--log-format text` it is a short text event.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::decision::{AppliedPolicy, BreakGlassUse, Decision, ImageVerdict, Requester};
use crate::namespaces::Labels;
use crate::telemetry;

/// The log target of decision records.
pub const TARGET: &str = "imagegate::decision";

/// What a record says about the request besides the decision.
#[derive(Debug, Clone, Copy)]
pub struct RecordContext<'a> {
    /// `validate` or `imagereview`.
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
}

/// One decision record, as written.
#[derive(Serialize)]
struct Record<'a> {
    timestamp: jiff::Timestamp,
    level: &'static str,
    target: &'static str,
    message: String,
    endpoint: &'a str,
    uid: &'a str,
    kind: &'a str,
    namespace: &'a str,
    name: &'a str,
    operation: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<&'a [String]>,
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace_labels: Option<&'a Labels>,
    #[serde(skip_serializing_if = "no_annotations")]
    annotations: Option<&'a BTreeMap<String, String>>,
    now: jiff::Timestamp,
    allowed: bool,
    decision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    images: Option<&'a [ImageVerdict]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policies: Option<&'a [AppliedPolicy]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    break_glass_ticket: Option<String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    break_glass: &'a [BreakGlassUse],
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<Vec<ViolationRecord<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    latency_us: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ViolationRecord<'a> {
    policy: &'a str,
    mode: &'a str,
    rule: &'a str,
    container_type: &'a str,
    container: &'a str,
    image: &'a str,
    field: &'a str,
    excused: bool,
    unchanged: bool,
    message: &'a str,
}

impl<'a> Record<'a> {
    fn new(ctx: &RecordContext<'a>, allowed: bool, label: &'a str) -> Record<'a> {
        Record {
            timestamp: jiff::Timestamp::now(),
            level: "INFO",
            target: TARGET,
            message: format!(
                "{} {} {}/{}: {label}",
                ctx.operation, ctx.kind, ctx.namespace, ctx.name
            ),
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
            reason: None,
            latency_us: u64::try_from(ctx.latency.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// The record as one JSON line, newline included.
    fn line(&self) -> Option<Vec<u8>> {
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        serde_json::to_writer(&mut line, self).ok()?;
        line.push(b'\n');
        Some(line)
    }

    /// Writes the record: one JSON line, or a text event with `--log-format text`.
    fn emit(&self) {
        // Records follow the log filter like any event (`RUST_LOG=imagegate::decision=off`).
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        if telemetry::json_records() {
            if let Some(line) = self.line() {
                telemetry::write_record(&line);
            }
        } else {
            tracing::info!(
                target: TARGET,
                uid = self.uid,
                user = self.user,
                allowed = self.allowed,
                violations = self.violations.as_ref().map_or(0, Vec::len),
                reason = self.reason,
                latency_us = self.latency_us,
                "{}",
                self.message
            );
        }
    }
}

fn no_annotations(a: &Option<&BTreeMap<String, String>>) -> bool {
    a.is_none_or(|a| a.is_empty())
}

/// The usual size of a record, so serialising it seldom reallocates.
const LINE_CAPACITY: usize = 2048;

/// Writes the record of a decision.
pub fn decision(ctx: &RecordContext<'_>, decision: &Decision, label: &str) {
    record_of(ctx, decision, label).emit();
}

fn record_of<'a>(ctx: &RecordContext<'a>, decision: &'a Decision, label: &'a str) -> Record<'a> {
    let violations = decision
        .violations
        .iter()
        .map(|v| ViolationRecord {
            policy: &v.policy,
            mode: v.mode.as_str(),
            rule: v.rule.as_str(),
            container_type: v.container_type.as_str(),
            container: &v.container,
            image: &v.image,
            field: &v.field_path,
            excused: v.excused,
            unchanged: v.unchanged,
            message: &v.message,
        })
        .collect();
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
        violations: Some(violations),
        ..Record::new(ctx, decision.allowed, label)
    }
}

/// The JSON line [`decision`] writes (for benchmarks and tests).
pub fn decision_line(ctx: &RecordContext<'_>, decision: &Decision, label: &str) -> Vec<u8> {
    record_of(ctx, decision, label).line().unwrap_or_default()
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
        };
        let line = serde_json::to_value(record_of(&ctx, &d, "denied")).unwrap();
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
    }
}
