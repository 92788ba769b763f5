//! What the registry said, kept for a while (DESIGN §2.1): tag resolutions for
//! `--tag-cache-ttl`; signature outcomes per (repository, digest, verifier) for
//! `--signature-cache-ttl` when verified and [`NOT_VERIFIED_TTL`] when not; and the last
//! verification of each, which stays usable for `--signature-stale-ttl` while the registry is
//! unavailable (the known-good). Unavailable outcomes are never kept: the next request asks
//! again.
//!
//! Each map holds at most a fixed number of entries and, when full, forgets the one written
//! longest ago.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::evidence::Outcome;

/// How long a not-verified outcome is kept (DESIGN §2.1): a signature pushed just after a
/// denial is seen within half a minute, while a burst of retries costs one lookup.
pub const NOT_VERIFIED_TTL: Duration = Duration::from_secs(30);
/// Tag resolutions kept: one per image tag in use; 10,000 is far more than a cluster runs,
/// at about 200 bytes each.
pub const TAG_CACHE_CAPACITY: usize = 10_000;
/// Signature outcomes kept: one per (repository, digest, verifier); 20,000 covers every image
/// of a large cluster under two keys, at about 400 bytes each.
pub const OUTCOME_CACHE_CAPACITY: usize = 20_000;

/// The times to live.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    pub verified: Duration,
    pub not_verified: Duration,
    pub stale: Duration,
    pub tag: Duration,
}

/// A cached value and how it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached<T> {
    /// Within its time to live.
    Fresh(T),
    /// Past it, but within `--signature-stale-ttl`: for use while the registry is unavailable.
    Stale(T),
}

struct TagEntry {
    digest: String,
    at: Instant,
}

#[derive(Default)]
struct OutcomeEntry {
    /// The last verified or not-verified outcome, when it was had, and for how long it holds.
    current: Option<(Outcome, Instant, Duration)>,
    /// The last verification and when it was had; cleared by a not-verified outcome.
    verified: Option<(Outcome, Instant)>,
}

/// The caches of one registry adapter.
pub struct Caches {
    ttls: Ttls,
    tags: Mutex<LruCache<String, TagEntry>>,
    outcomes: Mutex<LruCache<String, OutcomeEntry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A cache is consistent whatever panicked while it was held: every update is one call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// The key of a tag resolution: `REGISTRY/REPOSITORY:TAG`.
pub fn tag_key(registry: &str, repository: &str, tag: &str) -> String {
    let mut k = String::with_capacity(registry.len() + repository.len() + tag.len() + 2);
    k.push_str(registry);
    k.push('/');
    k.push_str(repository);
    k.push(':');
    k.push_str(tag);
    k
}

/// The key of a signature outcome: `REGISTRY/REPOSITORY@DIGEST VERIFIER-ID`.
pub fn outcome_key(registry: &str, repository: &str, digest: &str, verifier: &str) -> String {
    let mut k = String::with_capacity(
        registry.len() + repository.len() + digest.len() + verifier.len() + 3,
    );
    k.push_str(registry);
    k.push('/');
    k.push_str(repository);
    k.push('@');
    k.push_str(digest);
    k.push(' ');
    k.push_str(verifier);
    k
}

impl Caches {
    pub fn new(ttls: Ttls) -> Caches {
        Caches::with_capacity(ttls, TAG_CACHE_CAPACITY, OUTCOME_CACHE_CAPACITY)
    }

    pub fn with_capacity(ttls: Ttls, tags: usize, outcomes: usize) -> Caches {
        Caches {
            ttls,
            tags: Mutex::new(LruCache::new(capacity(tags))),
            outcomes: Mutex::new(LruCache::new(capacity(outcomes))),
        }
    }

    pub fn ttls(&self) -> Ttls {
        self.ttls
    }

    /// The digest a tag resolved to, fresh or (within the stale time to live) stale.
    pub fn tag(&self, key: &str, now: Instant) -> Option<Cached<String>> {
        let tags = lock(&self.tags);
        let e = tags.peek(key)?;
        let age = now.saturating_duration_since(e.at);
        if age < self.ttls.tag {
            Some(Cached::Fresh(e.digest.clone()))
        } else if age < self.ttls.stale {
            Some(Cached::Stale(e.digest.clone()))
        } else {
            None
        }
    }

    /// Keeps a tag resolution; the number of resolutions kept.
    pub fn put_tag(&self, key: String, digest: String, now: Instant) -> usize {
        let mut tags = lock(&self.tags);
        tags.put(key, TagEntry { digest, at: now });
        tags.len()
    }

    /// The outcome for `key`: fresh within its time to live; else the last verification, as
    /// stale, within `--signature-stale-ttl` of when it was had.
    pub fn outcome(&self, key: &str, now: Instant) -> Option<Cached<Outcome>> {
        let outcomes = lock(&self.outcomes);
        let e = outcomes.peek(key)?;
        if let Some((o, at, ttl)) = &e.current
            && now.saturating_duration_since(*at) < *ttl
        {
            return Some(Cached::Fresh(o.clone()));
        }
        Self::known_good(e, self.ttls.stale, now).map(Cached::Stale)
    }

    /// The last verification for `key`, if had within `--signature-stale-ttl`: what stands
    /// while the registry is unavailable.
    pub fn stale_verified(&self, key: &str, now: Instant) -> Option<Outcome> {
        let outcomes = lock(&self.outcomes);
        Self::known_good(outcomes.peek(key)?, self.ttls.stale, now)
    }

    fn known_good(e: &OutcomeEntry, stale: Duration, now: Instant) -> Option<Outcome> {
        let (o, at) = e.verified.as_ref()?;
        (now.saturating_duration_since(*at) < stale).then(|| o.clone())
    }

    /// Keeps an outcome the registry gave: verified ones for `--signature-cache-ttl` (and as
    /// the known-good), not-verified ones for [`NOT_VERIFIED_TTL`] (and they void the
    /// known-good: the registry said there is no valid signature now). Unavailable and skipped
    /// outcomes are not kept. Returns the number of outcomes kept.
    pub fn put_outcome(&self, key: &str, outcome: &Outcome, now: Instant) -> usize {
        let mut outcomes = lock(&self.outcomes);
        match outcome {
            Outcome::Verified { .. } => {
                let e = outcomes.get_or_insert_mut(key.to_owned(), OutcomeEntry::default);
                e.current = Some((outcome.clone(), now, self.ttls.verified));
                e.verified = Some((outcome.clone(), now));
            }
            Outcome::NotVerified { .. } => {
                let e = outcomes.get_or_insert_mut(key.to_owned(), OutcomeEntry::default);
                e.current = Some((outcome.clone(), now, self.ttls.not_verified));
                e.verified = None;
            }
            Outcome::Unavailable { .. } | Outcome::Skipped { .. } => {}
        }
        outcomes.len()
    }

    /// (tag resolutions, outcomes) kept.
    pub fn sizes(&self) -> (usize, usize) {
        (lock(&self.tags).len(), lock(&self.outcomes).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::SignatureFormat;

    const S: Duration = Duration::from_secs(1);

    fn ttls() -> Ttls {
        Ttls {
            verified: 10 * S,
            not_verified: 3 * S,
            stale: 100 * S,
            tag: 2 * S,
        }
    }

    fn verified() -> Outcome {
        Outcome::Verified {
            digest: "sha256:aa".into(),
            format: SignatureFormat::CosignTag,
            signer: "k".into(),
        }
    }

    fn not_verified() -> Outcome {
        Outcome::NotVerified {
            reason: "no signature".into(),
        }
    }

    #[test]
    fn tags_are_fresh_then_stale_then_gone() {
        let c = Caches::new(ttls());
        let t0 = Instant::now();
        let k = tag_key("r.example", "team/app", "1.0");
        assert_eq!(k, "r.example/team/app:1.0");
        c.put_tag(k.clone(), "sha256:aa".into(), t0);
        assert_eq!(c.tag(&k, t0 + S), Some(Cached::Fresh("sha256:aa".into())));
        assert_eq!(
            c.tag(&k, t0 + 3 * S),
            Some(Cached::Stale("sha256:aa".into()))
        );
        assert_eq!(c.tag(&k, t0 + 101 * S), None);
        assert_eq!(c.tag("other", t0), None);
    }

    #[test]
    fn verified_outcomes_last_their_ttl_then_stand_as_stale_known_good() {
        let c = Caches::new(ttls());
        let t0 = Instant::now();
        c.put_outcome("k", &verified(), t0);
        assert_eq!(c.outcome("k", t0 + 9 * S), Some(Cached::Fresh(verified())));
        assert_eq!(c.outcome("k", t0 + 11 * S), Some(Cached::Stale(verified())));
        assert_eq!(c.stale_verified("k", t0 + 99 * S), Some(verified()));
        assert_eq!(c.stale_verified("k", t0 + 100 * S), None);
        assert_eq!(c.outcome("k", t0 + 100 * S), None);
    }

    #[test]
    fn not_verified_outcomes_last_thirty_seconds_and_void_the_known_good() {
        let c = Caches::new(ttls());
        let t0 = Instant::now();
        c.put_outcome("k", &verified(), t0);
        c.put_outcome("k", &not_verified(), t0 + S);
        assert_eq!(
            c.outcome("k", t0 + 2 * S),
            Some(Cached::Fresh(not_verified()))
        );
        assert_eq!(c.outcome("k", t0 + 5 * S), None);
        assert_eq!(c.stale_verified("k", t0 + 2 * S), None);
    }

    #[test]
    fn unavailable_outcomes_are_not_kept_and_keep_the_known_good() {
        let c = Caches::new(ttls());
        let t0 = Instant::now();
        c.put_outcome("k", &verified(), t0);
        let n = c.put_outcome(
            "k",
            &Outcome::Unavailable {
                reason: "503".into(),
            },
            t0 + 20 * S,
        );
        assert_eq!(n, 1);
        assert_eq!(c.stale_verified("k", t0 + 21 * S), Some(verified()));
        c.put_outcome(
            "u",
            &Outcome::Unavailable {
                reason: "503".into(),
            },
            t0,
        );
        assert_eq!(c.sizes(), (0, 1));
    }

    #[test]
    fn a_full_cache_forgets_what_was_written_longest_ago() {
        let c = Caches::with_capacity(ttls(), 2, 2);
        let t0 = Instant::now();
        c.put_outcome("a", &verified(), t0);
        c.put_outcome("b", &verified(), t0);
        // Reading does not count as writing.
        assert!(c.outcome("a", t0).is_some());
        c.put_outcome("c", &verified(), t0);
        assert_eq!(c.outcome("a", t0), None);
        assert!(c.outcome("b", t0).is_some());
        assert!(c.outcome("c", t0).is_some());
        for t in ["x", "y", "z"] {
            c.put_tag(t.into(), "sha256:aa".into(), t0);
        }
        assert_eq!(c.tag("x", t0), None);
        assert_eq!(c.sizes(), (2, 2));
    }

    #[test]
    fn keys_name_repository_digest_and_verifier() {
        assert_eq!(
            outcome_key("r.example", "team/app", "sha256:aa", "key:sha256:bb"),
            "r.example/team/app@sha256:aa key:sha256:bb"
        );
    }
}
