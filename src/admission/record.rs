//! The decision record: one log event per decision (target `imagegate::decision`) with
//! everything needed to replay it with `imagegate check --user U --group G --now T`: the
//! request, the requester, every image with its canonical form and verdict, each applying
//! policy's name, generation and mode, break-glass use, the violations and the latency.
//!
//! Scalar facts are plain fields; lists (`groups`, `images`, `policies`, `violations`,
//! `break_glass`) are compact JSON strings, so the line stays one flat JSON object.

use std::time::Duration;

use serde::Serialize;

use crate::decision::{Decision, Requester};

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
    /// The moment the decision used as "now" (replay with `--now`).
    pub now: jiff::Timestamp,
    pub latency: Duration,
}

fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
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

/// Writes the record of a decision.
pub fn decision(ctx: &RecordContext<'_>, decision: &Decision, label: &str) {
    let violations: Vec<ViolationRecord<'_>> = decision
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
    tracing::info!(
        target: TARGET,
        endpoint = ctx.endpoint,
        uid = ctx.uid,
        kind = ctx.kind,
        namespace = ctx.namespace,
        name = ctx.name,
        operation = ctx.operation,
        user = ctx.requester.map(|r| r.username.as_str()),
        groups = ctx.requester.map(|r| json(&r.groups)),
        dry_run = ctx.dry_run,
        now = %ctx.now,
        allowed = decision.allowed,
        decision = label,
        images = json(&decision.images),
        policies = json(&decision.policies),
        break_glass_ticket = (!tickets.is_empty()).then(|| tickets.join(",")),
        break_glass = (!decision.break_glass.is_empty()).then(|| json(&decision.break_glass)),
        violations = json(&violations),
        latency_us = u64::try_from(ctx.latency.as_micros()).unwrap_or(u64::MAX),
        "{} {} {}/{}: {}",
        ctx.operation,
        ctx.kind,
        ctx.namespace,
        ctx.name,
        label
    );
}

/// Writes the record of a request denied without a decision (unreadable object or namespace)
/// or of a validated ImagePolicy.
pub fn verdict(ctx: &RecordContext<'_>, allowed: bool, label: &str, reason: &str) {
    tracing::info!(
        target: TARGET,
        endpoint = ctx.endpoint,
        uid = ctx.uid,
        kind = ctx.kind,
        namespace = ctx.namespace,
        name = ctx.name,
        operation = ctx.operation,
        user = ctx.requester.map(|r| r.username.as_str()),
        groups = ctx.requester.map(|r| json(&r.groups)),
        dry_run = ctx.dry_run,
        now = %ctx.now,
        allowed,
        decision = label,
        reason,
        latency_us = u64::try_from(ctx.latency.as_micros()).unwrap_or(u64::MAX),
        "{} {} {}/{}: {}",
        ctx.operation,
        ctx.kind,
        ctx.namespace,
        ctx.name,
        label
    );
}
