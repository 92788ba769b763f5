//! `ImagePolicy` status: the desired `observedGeneration` and `Ready` condition (pure), and
//! the write by server-side apply on the status subresource, skipped when already up to date.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::{Error, FIELD_MANAGER};
use crate::policy::{CompileError, ImagePolicy, ImagePolicyStatus};

/// The condition type imagegate writes.
pub const READY: &str = "Ready";
/// Reason of `Ready=True`.
pub const REASON_COMPILED: &str = "Compiled";
/// Reason of `Ready=False`.
pub const REASON_COMPILE_ERROR: &str = "CompileError";

/// The status a policy should have, given its compile result. `lastTransitionTime` keeps the
/// previous value while the condition's status does not change, so rewriting is idempotent.
pub fn desired(
    policy: &ImagePolicy,
    result: Result<(), &CompileError>,
    now: jiff::Timestamp,
) -> ImagePolicyStatus {
    let generation = policy.metadata.generation;
    let (status, reason, message) = match result {
        Ok(()) => (
            "True",
            REASON_COMPILED,
            "The policy compiled and is in force.".to_owned(),
        ),
        Err(e) => (
            "False",
            REASON_COMPILE_ERROR,
            format!("The policy is not in force: {e}"),
        ),
    };
    let previous = ready_condition(policy);
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    ImagePolicyStatus {
        observed_generation: generation,
        conditions: vec![Condition {
            type_: READY.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        }],
        // Not this writer's: the audit applies `status.audit` with a field manager of its own,
        // and an apply that leaves it out leaves it alone.
        audit: None,
    }
}

fn ready_condition(policy: &ImagePolicy) -> Option<&Condition> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
}

/// Whether the policy's status already says what `desired` says (generation, and the Ready
/// condition's status, reason, message and generation).
pub fn is_up_to_date(policy: &ImagePolicy, desired: &ImagePolicyStatus) -> bool {
    let Some(status) = policy.status.as_ref() else {
        return false;
    };
    let (Some(have), Some(want)) = (ready_condition(policy), desired.conditions.first()) else {
        return false;
    };
    status.observed_generation == desired.observed_generation
        && have.status == want.status
        && have.reason == want.reason
        && have.message == want.message
        && have.observed_generation == want.observed_generation
}

/// The server-side apply body for the status subresource.
pub fn apply_body(name: &str, status: &ImagePolicyStatus) -> serde_json::Value {
    json!({
        "apiVersion": "imagegate.dev/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": { "name": name },
        "status": status,
    })
}

/// Writes the status of one policy when it is not up to date; returns whether it wrote. A
/// compile failure that is written also gets a Warning Event on the policy (when a recorder is
/// given), so the writer that changed the status is the one that reports it.
pub async fn reconcile(
    client: Client,
    policy: &ImagePolicy,
    result: Result<(), &CompileError>,
    recorder: Option<&Recorder>,
) -> Result<bool, Error> {
    let want = desired(policy, result, jiff::Timestamp::now());
    if is_up_to_date(policy, &want) {
        return Ok(false);
    }
    let name = policy.name_any();
    let api: Api<ImagePolicy> = Api::all(client);
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(apply_body(&name, &want)),
    )
    .await?;
    if let (Err(e), Some(recorder)) = (result, recorder) {
        let event = Event {
            type_: EventType::Warning,
            reason: "CompileError".to_owned(),
            note: Some(truncate(
                &format!("The policy does not compile and is not in force: {e}"),
                EVENT_NOTE_LIMIT,
            )),
            action: "Compile".to_owned(),
            secondary: None,
        };
        if let Err(err) = recorder.publish(&event, &policy.object_ref(&())).await {
            tracing::warn!(policy = %name, error = %err, "cannot publish the compile-error event");
        }
    }
    Ok(true)
}

/// The API server rejects an Event note over 1 KiB.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// Cuts `text` to at most `limit` bytes on a character boundary.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ImagePolicySpec;

    fn policy(generation: i64) -> ImagePolicy {
        let mut p = ImagePolicy::new("prod", ImagePolicySpec::default());
        p.metadata.generation = Some(generation);
        p
    }

    fn err() -> CompileError {
        CompileError {
            policy: "prod".into(),
            field: "spec.allowedImages[0]".into(),
            message: "bad pattern".into(),
        }
    }

    #[test]
    fn ready_true_and_false() {
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let ok = desired(&policy(3), Ok(()), now);
        assert_eq!(ok.observed_generation, Some(3));
        assert_eq!(ok.conditions[0].status, "True");
        assert_eq!(ok.conditions[0].reason, "Compiled");
        let e = err();
        let bad = desired(&policy(3), Err(&e), now);
        assert_eq!(bad.conditions[0].status, "False");
        assert_eq!(bad.conditions[0].reason, "CompileError");
        assert!(
            bad.conditions[0]
                .message
                .contains("spec.allowedImages[0]: bad pattern")
        );
    }

    #[test]
    fn up_to_date_and_transition_time_kept() {
        let t1 = jiff::Timestamp::from_second(1_000).unwrap();
        let t2 = jiff::Timestamp::from_second(2_000).unwrap();
        let mut p = policy(3);
        let first = desired(&p, Ok(()), t1);
        assert!(!is_up_to_date(&p, &first));
        p.status = Some(first.clone());
        let again = desired(&p, Ok(()), t2);
        assert!(is_up_to_date(&p, &again));
        assert_eq!(again.conditions[0].last_transition_time, Time(t1));
        // A new generation needs a write, but the condition did not transition.
        p.metadata.generation = Some(4);
        let next = desired(&p, Ok(()), t2);
        assert!(!is_up_to_date(&p, &next));
        assert_eq!(next.conditions[0].last_transition_time, Time(t1));
        // A compile failure transitions.
        let e = err();
        let failed = desired(&p, Err(&e), t2);
        assert_eq!(failed.conditions[0].last_transition_time, Time(t2));
    }

    #[test]
    fn truncates_on_char_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        let long = "é".repeat(100);
        let t = truncate(&long, 11);
        assert!(t.len() <= 11 && t.ends_with("..."));
    }
}
