//! The policy index: a reflector store of ImagePolicies, driven by watch events, that rebuilds
//! the [`Snapshot`] and swaps it in on every change (apply, delete, re-list).

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use crate::policy::{CompileError, ImagePolicy, ImagePolicySpec, SecretKeys, Settings, Snapshot};
use crate::state::{Readiness, SharedSnapshot};

/// Holds the store of ImagePolicies and keeps the shared snapshot in step with it.
pub struct PolicyIndex {
    writer: reflector::store::Writer<ImagePolicy>,
    store: Store<ImagePolicy>,
    snapshot: SharedSnapshot,
    readiness: Arc<Readiness>,
    settings: Settings,
    changed: watch::Sender<Rebuilt>,
    /// The name, generation and spec of every policy in the snapshot in force: an event that
    /// changes none of them (a status write, a label edit) needs no rebuild.
    built: HashMap<String, (Option<i64>, ImagePolicySpec)>,
    /// The key Secrets' contents that policies compile with (shared with the status writer);
    /// `waiting` until they have been read once.
    secrets: Arc<ArcSwap<SecretKeys>>,
    waiting_for_secrets: bool,
    secret_updates: Option<watch::Receiver<Option<SecretKeys>>>,
    /// Whether the first full list of policies is in.
    listed: bool,
}

/// What the last rebuild produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Counts rebuilds (wrapping).
    pub count: u64,
    /// How many policies were left out because they do not compile.
    pub errors: usize,
}

impl PolicyIndex {
    /// An empty index that will write into `snapshot` and mark `readiness` after the first
    /// full list.
    pub fn new(snapshot: SharedSnapshot, readiness: Arc<Readiness>, settings: Settings) -> Self {
        let writer = reflector::store::Writer::default();
        let store = writer.as_reader();
        let (changed, _) = watch::channel(Rebuilt::default());
        PolicyIndex {
            writer,
            store,
            snapshot,
            readiness,
            settings,
            changed,
            built: HashMap::new(),
            secrets: Arc::new(ArcSwap::from_pointee(SecretKeys::none(
                "imagegate reads no key Secrets here",
            ))),
            waiting_for_secrets: false,
            secret_updates: None,
            listed: false,
        }
    }

    /// Takes the key Secrets' contents from `updates` (see
    /// [`run_policy_index`](super::run_policy_index)), and holds back the first snapshot until
    /// they have been read: a policy must not be left out only because its key was not read
    /// yet.
    pub fn follow_secrets(&mut self, updates: watch::Receiver<Option<SecretKeys>>) {
        self.waiting_for_secrets = true;
        self.secret_updates = Some(updates);
    }

    /// The receiver given to [`follow_secrets`](Self::follow_secrets), for the task that feeds
    /// the index.
    pub fn take_secret_updates(&mut self) -> Option<watch::Receiver<Option<SecretKeys>>> {
        self.secret_updates.take()
    }

    /// The key Secrets' contents policies compile with (the status writer compiles with them
    /// too).
    pub fn secrets(&self) -> Arc<ArcSwap<SecretKeys>> {
        Arc::clone(&self.secrets)
    }

    /// Uses new key Secrets' contents: rebuilds the snapshot when they differ and the policies
    /// are listed; the errors of the policies left out are returned.
    pub fn set_secrets(&mut self, secrets: SecretKeys) -> Option<Vec<CompileError>> {
        let was_waiting = std::mem::take(&mut self.waiting_for_secrets);
        if !was_waiting && **self.secrets.load() == secrets {
            return None;
        }
        self.secrets.store(Arc::new(secrets));
        if !self.listed {
            return None;
        }
        let errors = self.rebuild();
        self.readiness.set_policies_loaded();
        Some(errors)
    }

    /// A read handle on the store of policies.
    pub fn store(&self) -> Store<ImagePolicy> {
        self.store.clone()
    }

    /// The shared snapshot this index swaps.
    pub fn snapshot(&self) -> SharedSnapshot {
        Arc::clone(&self.snapshot)
    }

    /// A receiver that sees a new value after every rebuild (the status writer waits on it).
    pub fn subscribe(&self) -> watch::Receiver<Rebuilt> {
        self.changed.subscribe()
    }

    /// Applies one watch event. An applied or deleted policy, or the end of a (re-)list,
    /// rebuilds the snapshot from the store and swaps it in; the errors of the policies left
    /// out are returned. The start of a re-list and the objects it delivers only fill a buffer:
    /// until it completes, the previous snapshot stays in force.
    pub fn apply(&mut self, event: &watcher::Event<ImagePolicy>) -> Option<Vec<CompileError>> {
        self.writer.apply_watcher_event(event);
        match event {
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
            watcher::Event::Apply(p) if self.is_built(p) => None,
            watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone => {
                if matches!(event, watcher::Event::InitDone) {
                    self.listed = true;
                }
                if self.waiting_for_secrets {
                    return None;
                }
                let errors = self.rebuild();
                if matches!(event, watcher::Event::InitDone) {
                    self.readiness.set_policies_loaded();
                }
                Some(errors)
            }
        }
    }

    /// Whether the snapshot in force already holds this policy as it is.
    fn is_built(&self, policy: &ImagePolicy) -> bool {
        self.built
            .get(&policy.name_any())
            .is_some_and(|(generation, spec)| {
                *generation == policy.metadata.generation && *spec == policy.spec
            })
    }

    fn rebuild(&mut self) -> Vec<CompileError> {
        let policies: Vec<ImagePolicy> = self
            .store
            .state()
            .iter()
            .map(|p| ImagePolicy::clone(p))
            .collect();
        self.built = policies
            .iter()
            .map(|p| (p.name_any(), (p.metadata.generation, p.spec.clone())))
            .collect();
        let (snapshot, errors) =
            Snapshot::compile_with(&policies, self.settings.clone(), &self.secrets.load());
        self.snapshot.store(Arc::new(snapshot));
        self.changed.send_modify(|r| {
            r.count = r.count.wrapping_add(1);
            r.errors = errors.len();
        });
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ImagePolicySpec;
    use arc_swap::ArcSwap;

    fn policy(name: &str, allowed: &str) -> ImagePolicy {
        ImagePolicy::new(
            name,
            ImagePolicySpec {
                allowed_images: Some(vec![allowed.to_owned()]),
                ..ImagePolicySpec::default()
            },
        )
    }

    fn names(s: &SharedSnapshot) -> Vec<String> {
        s.load().policies().iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn follows_watch_events() {
        let shared: SharedSnapshot =
            Arc::new(ArcSwap::from_pointee(Snapshot::empty(Settings::default())));
        let ready = Arc::new(Readiness::default());
        let mut index = PolicyIndex::new(shared.clone(), ready.clone(), Settings::default());

        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(policy("a", "docker.io/**")));
        assert!(!ready.policies_loaded(), "ready before the first full list");
        assert!(names(&shared).is_empty());
        index.apply(&watcher::Event::InitApply(policy("bad", "not a pattern[")));
        let errors = index.apply(&watcher::Event::InitDone).unwrap();
        assert!(ready.policies_loaded());
        assert_eq!(names(&shared), ["a"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].policy, "bad");

        index.apply(&watcher::Event::Apply(policy("b", "ghcr.io/**")));
        assert_eq!(names(&shared), ["a", "b"]);

        index.apply(&watcher::Event::Delete(policy("a", "docker.io/**")));
        assert_eq!(names(&shared), ["b"]);

        // A status write (same generation and spec) swaps nothing in; a spec change does.
        let before = Arc::as_ptr(&shared.load_full());
        let mut written = policy("b", "ghcr.io/**");
        written.status = Some(Default::default());
        assert!(index.apply(&watcher::Event::Apply(written)).is_none());
        assert_eq!(
            Arc::as_ptr(&shared.load_full()),
            before,
            "rebuilt for a status write"
        );
        assert!(
            index
                .apply(&watcher::Event::Apply(policy("b", "quay.io/**")))
                .is_some()
        );
        assert_ne!(Arc::as_ptr(&shared.load_full()), before);

        // A re-list that no longer contains `b` drops it only once complete.
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(policy("c", "quay.io/**")));
        assert_eq!(names(&shared), ["b"]);
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(&shared), ["c"]);
    }
}
