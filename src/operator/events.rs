//! Kubernetes Events on the ImagePolicy for every honoured break-glass exception. The request
//! path only queues the event (never blocks, never awaits the API server); a task publishes it.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef as StoreRef, Store};
use kube::{Client, Resource};
use tokio::sync::mpsc;

use super::status::{EVENT_NOTE_LIMIT, truncate};
use crate::decision::BreakGlassUse;
use crate::events::{EventSink, ObjectRef};
use crate::policy::ImagePolicy;

/// How many break-glass events may wait for the API server. A burst beyond it (a Deployment
/// of many replicas under one exception) loses Events, never admissions: the decision record,
/// audit annotation and metric still carry each use.
pub const EVENT_QUEUE: usize = 1024;

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassEvent {
    /// The policy whose violations were excused.
    pub policy: String,
    /// What `kubectl describe imagepolicy` shows.
    pub note: String,
}

/// Queues break-glass events for [`run_event_publisher`].
#[derive(Debug, Clone)]
pub struct KubeEventSink {
    queue: mpsc::Sender<BreakGlassEvent>,
}

impl KubeEventSink {
    /// A sink and the receiver [`run_event_publisher`] drains.
    pub fn new() -> (KubeEventSink, mpsc::Receiver<BreakGlassEvent>) {
        let (queue, rx) = mpsc::channel(EVENT_QUEUE);
        (KubeEventSink { queue }, rx)
    }
}

/// The note of a break-glass event.
pub fn note(object: &ObjectRef, used: &BreakGlassUse) -> String {
    let target = if object.namespace.is_empty() {
        format!("{} {}", object.kind, object.name)
    } else {
        format!("{} {}/{}", object.kind, object.namespace, object.name)
    };
    let requester = used.requester.as_deref().unwrap_or("an unknown requester");
    truncate(
        &format!(
            "Break-glass ticket {} admitted {target} for {requester} despite {} violation(s), until {}.",
            used.ticket, used.excused, used.until
        ),
        EVENT_NOTE_LIMIT,
    )
}

impl EventSink for KubeEventSink {
    fn break_glass(&self, object: &ObjectRef, used: &BreakGlassUse) {
        let event = BreakGlassEvent {
            policy: used.policy.clone(),
            note: note(object, used),
        };
        if self.queue.try_send(event).is_err() {
            tracing::warn!(policy = %used.policy, "break-glass event queue full; Event dropped");
        }
    }
}

/// The reference to the policy named `name`: from the store (with its uid, so `kubectl
/// describe` finds the Event), else by name.
pub fn policy_reference(store: &Store<ImagePolicy>, name: &str) -> ObjectReference {
    match store.get(&StoreRef::new(name)) {
        Some(p) => p.object_ref(&()),
        None => ObjectReference {
            api_version: Some("imagegate.dev/v1alpha1".to_owned()),
            kind: Some("ImagePolicy".to_owned()),
            name: Some(name.to_owned()),
            ..ObjectReference::default()
        },
    }
}

/// Publishes queued break-glass events as Warning Events on their policy until the sink is
/// dropped.
///
/// Each exception becomes an Event of its own. kube's `Recorder` folds events with the same
/// reason, action and object into a series that keeps the note of the first one, so a second
/// exception on the same policy within minutes would only bump a count and lose its ticket,
/// object and requester. Its cache belongs to the recorder, so a fresh recorder per event always
/// creates a new Event.
pub async fn run_event_publisher(
    client: Client,
    reporter: Reporter,
    store: Store<ImagePolicy>,
    mut queue: mpsc::Receiver<BreakGlassEvent>,
) {
    while let Some(e) = queue.recv().await {
        let event = Event {
            type_: EventType::Warning,
            reason: "BreakGlass".to_owned(),
            note: Some(e.note),
            action: "Admit".to_owned(),
            secondary: None,
        };
        let recorder = Recorder::new(client.clone(), reporter.clone());
        if let Err(err) = recorder
            .publish(&event, &policy_reference(&store, &e.policy))
            .await
        {
            tracing::warn!(policy = %e.policy, error = %err, "cannot publish the break-glass event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_without_blocking() {
        let (sink, mut rx) = KubeEventSink::new();
        let used = BreakGlassUse {
            policy: "prod".into(),
            ticket: "INC-1".into(),
            until: jiff::Timestamp::from_second(1_000_000).unwrap(),
            requester: Some("alice".into()),
            excused: 2,
        };
        let object = ObjectRef {
            kind: "Pod".into(),
            namespace: "shop".into(),
            name: "web".into(),
        };
        sink.break_glass(&object, &used);
        let e = rx.try_recv().unwrap();
        assert_eq!(e.policy, "prod");
        assert!(e.note.contains("INC-1") && e.note.contains("Pod shop/web"));
        assert!(e.note.contains("alice") && e.note.contains("2 violation"));
    }
}
