//! The policy index: a reflector store of ImagePolicies, driven by watch events, that rebuilds
//! the [`Snapshot`](crate::policy::Snapshot) and swaps it in on every change (apply, delete, re-list).

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use crate::policy::{
    CompileError, CompiledPolicy, ImagePolicy, SecretKeys, Settings, SnapshotBuilder,
};
use crate::state::{Readiness, SharedSnapshot};

/// Holds the store of ImagePolicies and keeps the shared snapshot in step with it.
pub struct PolicyIndex {
    writer: reflector::store::Writer<ImagePolicy>,
    store: Store<ImagePolicy>,
    snapshot: SharedSnapshot,
    readiness: Arc<Readiness>,
    settings: Settings,
    changed: watch::Sender<Rebuilt>,
    /// Every policy in the snapshot in force, by name: the object it was compiled from (the
    /// store's own, not a copy) and what compiling it gave. An event that changes neither its
    /// generation nor its spec (a status write, a label edit) needs no rebuild, and a rebuild
    /// compiles only the policies that changed (all of them when the key Secrets change).
    built: HashMap<String, Built>,
    /// The key Secrets' contents that policies compile with (shared with the status writer);
    /// `waiting` until they have been read once.
    secrets: Arc<ArcSwap<SecretKeys>>,
    waiting_for_secrets: bool,
    secret_updates: Option<watch::Receiver<Option<SecretKeys>>>,
    /// Whether the first full list of policies is in.
    listed: bool,
}

/// One policy as the snapshot in force holds it.
struct Built {
    object: Arc<ImagePolicy>,
    compiled: Result<Arc<CompiledPolicy>, CompileError>,
}

impl Built {
    /// Whether `policy` is what this was compiled from (same generation and spec).
    fn is_of(&self, policy: &ImagePolicy) -> bool {
        self.object.metadata.generation == policy.metadata.generation
            && self.object.spec == policy.spec
    }
}

/// What the last rebuild produced.
#[derive(Debug, Clone, Default)]
pub struct Rebuilt {
    /// Counts rebuilds (wrapping).
    pub count: u64,
    /// How many policies were left out because they do not compile.
    pub errors: usize,
    /// Those policies, by name, with the generation that did not compile and why: with the
    /// snapshot, what the status writer reports without compiling every policy again.
    pub failed: Arc<HashMap<String, (Option<i64>, CompileError)>>,
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
        // What was compiled with the old contents is compiled again.
        self.built.clear();
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
            watcher::Event::Apply(p) if self.is_built(p) => {
                // Hold the store's new object rather than keep the old one alive beside it.
                if let (Some(built), Some(current)) = (
                    self.built.get_mut(&p.name_any()),
                    self.store.get(&ObjectRef::from_obj(p)),
                ) {
                    built.object = current;
                }
                None
            }
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
            .is_some_and(|b| b.is_of(policy))
    }

    /// Builds the snapshot of the store's policies, compiling only those that changed since
    /// the last rebuild and sharing the others with the snapshot in force.
    fn rebuild(&mut self) -> Vec<CompileError> {
        let objects = self.store.state();
        let in_force = self.snapshot.load_full();
        let secrets = self.secrets.load_full();
        let mut builder = SnapshotBuilder::new(Some(&in_force), &secrets);
        let mut built = HashMap::with_capacity(objects.len());
        let mut failed = HashMap::new();
        for object in objects {
            let name = object.name_any();
            let compiled = match self.built.get(&name) {
                Some(b) if b.is_of(&object) => b.compiled.clone(),
                _ => builder.compile(&object),
            };
            match &compiled {
                Ok(c) => builder.add_shared(Arc::clone(c)),
                Err(e) => {
                    failed.insert(name.clone(), (object.metadata.generation, e.clone()));
                }
            }
            built.insert(name, Built { object, compiled });
        }
        self.built = built;
        let snapshot = builder.build(self.settings.clone());
        drop(in_force);
        self.snapshot.store(Arc::new(snapshot));
        // The replaced snapshot and what the rebuild freed go back to the system (a millisecond
        // or two at 10,000 policies, against the rebuild's tens).
        crate::alloc::release_freed();
        let mut errors: Vec<CompileError> = failed.values().map(|(_, e)| e.clone()).collect();
        errors.sort_by(|a, b| a.policy.cmp(&b.policy));
        let failed = Arc::new(failed);
        self.changed.send_modify(|r| {
            r.count = r.count.wrapping_add(1);
            r.errors = errors.len();
            r.failed = failed;
        });
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ImagePolicySpec, Snapshot};
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

    #[test]
    fn a_rebuild_compiles_only_what_changed_and_keeps_no_second_copy() {
        let shared: SharedSnapshot =
            Arc::new(ArcSwap::from_pointee(Snapshot::empty(Settings::default())));
        let ready = Arc::new(Readiness::default());
        let mut index = PolicyIndex::new(shared.clone(), ready, Settings::default());
        let with_generation = |mut p: ImagePolicy, g| {
            p.metadata.generation = Some(g);
            p
        };
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(with_generation(
            policy("a", "docker.io/**"),
            1,
        )));
        index.apply(&watcher::Event::InitApply(with_generation(
            policy("b", "ghcr.io/**"),
            1,
        )));
        index.apply(&watcher::Event::InitApply(with_generation(
            policy("bad", "x["),
            4,
        )));
        index.apply(&watcher::Event::InitDone);
        let compiled = |name: &str| Arc::as_ptr(shared.load().policy(name).unwrap());
        let a = compiled("a");

        index.apply(&watcher::Event::Apply(with_generation(
            policy("b", "quay.io/**"),
            2,
        )));
        assert_eq!(
            compiled("a"),
            a,
            "a did not change: the same compiled policy"
        );
        assert_eq!(shared.load().policy("b").unwrap().generation, Some(2));

        // What the status writer reads instead of compiling again.
        let rebuilt = index.subscribe().borrow().clone();
        assert_eq!(rebuilt.errors, 1);
        assert_eq!(rebuilt.failed["bad"].0, Some(4));
        assert_eq!(rebuilt.failed["bad"].1.field, "spec.allowedImages[0]");

        // A status write swaps in the store's new object, so the old one is not kept alive.
        let mut written = with_generation(policy("a", "docker.io/**"), 1);
        written.status = Some(Default::default());
        assert!(
            index
                .apply(&watcher::Event::Apply(written.clone()))
                .is_none()
        );
        let in_store = index.store.get(&ObjectRef::from_obj(&written)).unwrap();
        assert!(Arc::ptr_eq(&index.built["a"].object, &in_store));
        assert_eq!(compiled("a"), a);
    }
}
