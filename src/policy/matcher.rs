//! The index that matches an image name against every pattern of a snapshot at once.
//!
//! Patterns are anchored at a registry host and made of `/`-separated components, and most of
//! a cluster's patterns start with a few literal components (`registry.corp.example/team-7/…`).
//! The index files each distinct pattern under the hash of its name glob's literal prefix (the
//! components before the first wildcard; see [`literal_prefix`]), so a name only meets the
//! patterns filed under one of its own prefixes: `registry.corp.example/team-7/app` looks up
//! `registry.corp.example`, `registry.corp.example/team-7` and the whole name, and checks the few
//! globs found there with [`name_matches`]. A glob whose host has a wildcard
//! (`*.corp.example/**`) is filed under the host's literal end from its first dot
//! (`.corp.example`), looked up for each dot of the name's host; one with no such end (and
//! `**`, a suffix alone) is filed at the root, which every name looks up.
//!
//! The index holds no pattern text: each distinct pattern (name glob and suffix) is a run of
//! [`Use`]s (policy, list, position), and its text is read from the first one's policy. A
//! pattern written in many policies is one pattern with many uses: its name and suffix are
//! checked once per image, however many policies use it. What the index costs is four flat
//! arrays: per bucket a 4-byte key and a 4-byte start, per pattern a 4-byte start, per use 8
//! bytes (12 while it is built).

use std::hash::BuildHasher;

use super::compile::ListId;
use super::pattern::{literal_prefix, name_matches};

/// What the index reads of a use's pattern: its name glob (`**` for a pattern that is a suffix
/// alone), and the rest of the pattern, which the index does not interpret but files identical
/// patterns by.
pub type PatternKey<'a> = (&'a str, &'a str);

/// One use of a pattern: the policy (its position in the snapshot), the list, and the
/// position of the pattern in that list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    pub policy: u32,
    pub index: u32,
    pub list: ListId,
}

/// How many patterns one list may hold: a use keeps the list in the top 8 bits of a word and
/// the position in the low 24. A policy object is at most 1.5 MiB in etcd, so it cannot hold
/// even a tenth of that.
pub const MAX_PATTERNS_PER_LIST: usize = (1 << 24) - 1;

impl Use {
    /// The use as the index keeps it: policy, then list and position in one word.
    fn pack(self) -> [u32; 2] {
        [
            self.policy,
            (u32::from(self.list.code()) << 24) | (self.index & 0x00ff_ffff),
        ]
    }

    fn unpack([policy, slot]: [u32; 2]) -> Option<Use> {
        Some(Use {
            policy,
            index: slot & 0x00ff_ffff,
            list: ListId::from_code((slot >> 24) as u8)?,
        })
    }
}

/// What a bucket key is made of; part of the hash, so that the three kinds never meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyKind {
    /// Globs whose host has a wildcard and no literal end with a dot.
    Root,
    /// Globs whose host has a wildcard, by the host's literal end from its first dot.
    HostEnd,
    /// Globs by their literal prefix.
    Prefix,
}

/// Every pattern of a snapshot, filed by literal prefix.
#[derive(Debug, Default)]
pub struct Matcher {
    hasher: foldhash::fast::FixedState,
    /// The buckets' keys, sorted (32 bits of the key's hash: two prefixes that share them only
    /// share a bucket, whose patterns are checked one by one anyway).
    keys: Box<[u32]>,
    /// Per bucket, its first pattern; one more at the end.
    buckets: Box<[u32]>,
    /// Per pattern, its first use; one more at the end. The first use names the pattern.
    patterns: Box<[u32]>,
    /// The uses, packed ([`Use::pack`]), two words each.
    uses: Vec<u32>,
}

/// The uses of one pattern that matched a name.
pub struct Found<'m> {
    uses: &'m [[u32; 2]],
}

impl Found<'_> {
    /// The use that names the pattern.
    pub fn first(&self) -> Option<Use> {
        self.uses.first().and_then(|&u| Use::unpack(u))
    }

    /// Every use of the pattern.
    pub fn uses(&self) -> impl Iterator<Item = Use> + '_ {
        self.uses.iter().filter_map(|&u| Use::unpack(u))
    }
}

impl Matcher {
    /// Files `count` uses; `key_of` reads a use's pattern.
    ///
    /// Built to need little memory beyond its own, as it is built while the snapshot in force
    /// still serves: the uses are written once, with their bucket key beside them, sorted
    /// where they are, and the keys then squeezed out in place; the other arrays are counted
    /// before they are filled.
    pub fn build<'a>(
        count: usize,
        uses: impl Iterator<Item = Use>,
        key_of: impl Fn(Use) -> PatternKey<'a>,
    ) -> Matcher {
        let hasher = foldhash::fast::FixedState::default();
        let mut keyed: Vec<u32> = Vec::with_capacity(3 * count);
        for u in uses {
            let [policy, slot] = u.pack();
            keyed.extend([key_of_glob(&hasher, key_of(u).0), policy, slot]);
        }
        let pattern = |[_, policy, slot]: [u32; 3]| Use::unpack([policy, slot]).map(&key_of);
        let (rows, _) = keyed.as_chunks_mut::<3>();
        let n = rows.len();
        // By bucket, then by pattern, so that each pattern's uses are one run.
        rows.sort_unstable_by(|a, b| a[0].cmp(&b[0]).then_with(|| pattern(*a).cmp(&pattern(*b))));

        // Where a new bucket and a new pattern start, counted, then written.
        let starts = |i: usize| {
            let row = rows[i];
            match i.checked_sub(1).map(|j| rows[j]) {
                Some(prev) if prev[0] == row[0] => (false, pattern(prev) != pattern(row)),
                _ => (true, true),
            }
        };
        let (mut n_buckets, mut n_patterns) = (0, 0);
        for i in 0..n {
            let (bucket, pattern) = starts(i);
            n_buckets += usize::from(bucket);
            n_patterns += usize::from(pattern);
        }
        let mut keys = Vec::with_capacity(n_buckets);
        let mut buckets = Vec::with_capacity(n_buckets + 1);
        let mut patterns = Vec::with_capacity(n_patterns + 1);
        for (i, row) in rows.iter().enumerate() {
            let (bucket, pattern) = starts(i);
            if bucket {
                keys.push(row[0]);
                buckets.push(index(patterns.len()));
            }
            if pattern {
                patterns.push(index(i));
            }
        }
        buckets.push(index(patterns.len()));
        patterns.push(index(n));

        // The keys squeezed out: each row's two words of use move to the front.
        for i in 0..n {
            let (policy, slot) = (keyed[3 * i + 1], keyed[3 * i + 2]);
            keyed[2 * i] = policy;
            keyed[2 * i + 1] = slot;
        }
        keyed.truncate(2 * n);
        Matcher {
            hasher,
            keys: keys.into_boxed_slice(),
            buckets: buckets.into_boxed_slice(),
            patterns: patterns.into_boxed_slice(),
            uses: keyed,
        }
    }

    /// Calls `found` once for every pattern whose name glob matches `name`
    /// (`REGISTRY/REPOSITORY`), with its uses; `key_of` reads a use's pattern, as for
    /// [`Matcher::build`]. The suffix is the caller's to check, once per pattern.
    pub fn for_each_match<'a>(
        &self,
        name: &str,
        key_of: impl Fn(Use) -> PatternKey<'a>,
        mut found: impl FnMut(Found<'_>),
    ) {
        if self.keys.is_empty() {
            return;
        }
        // Buckets already visited: two of the name's keys may share one.
        let mut visited: Vec<usize> = Vec::new();
        let mut visit = |key: u32| {
            let Ok(bucket) = self.keys.binary_search(&key) else {
                return;
            };
            if visited.contains(&bucket) {
                return;
            }
            visited.push(bucket);
            // Patterns of one glob with different suffixes are neighbours: the glob is checked
            // once for them.
            let mut last: Option<(&str, bool)> = None;
            for p in self.buckets[bucket] as usize..self.buckets[bucket + 1] as usize {
                let uses = self.uses_of(p);
                let Some(first) = uses.first().and_then(|&u| Use::unpack(u)) else {
                    continue;
                };
                let glob = key_of(first).0;
                let matched = match last {
                    Some((g, m)) if g == glob => m,
                    _ => name_matches(glob, name),
                };
                last = Some((glob, matched));
                if matched {
                    found(Found { uses });
                }
            }
        };
        visit(self.key(KeyKind::Root, ""));
        let host = name.split('/').next().unwrap_or(name);
        for (i, _) in host.match_indices('.') {
            visit(self.key(KeyKind::HostEnd, &host[i..]));
        }
        for (i, _) in name.match_indices('/') {
            visit(self.key(KeyKind::Prefix, &name[..i]));
        }
        visit(self.key(KeyKind::Prefix, name));
    }

    /// The uses of pattern `p`.
    fn uses_of(&self, p: usize) -> &[[u32; 2]] {
        let (start, end) = (self.patterns[p] as usize, self.patterns[p + 1] as usize);
        self.uses[2 * start..2 * end].as_chunks::<2>().0
    }

    /// How many distinct patterns the index holds.
    pub fn patterns(&self) -> usize {
        self.patterns.len().saturating_sub(1)
    }

    /// How many uses of them it holds.
    pub fn uses(&self) -> usize {
        self.uses.len() / 2
    }

    fn key(&self, kind: KeyKind, text: &str) -> u32 {
        hash(&self.hasher, kind, text)
    }
}

/// The bucket key of a glob (see the module's documentation).
fn key_of_glob(hasher: &foldhash::fast::FixedState, glob: &str) -> u32 {
    let prefix = literal_prefix(glob);
    if !prefix.is_empty() {
        return hash(hasher, KeyKind::Prefix, prefix);
    }
    let host = glob.split('/').next().unwrap_or(glob);
    let literal_end = host
        .rfind(['*', '?'])
        .map_or(host, |wildcard| &host[wildcard + 1..]);
    match literal_end.find('.') {
        Some(dot) => hash(hasher, KeyKind::HostEnd, &literal_end[dot..]),
        None => hash(hasher, KeyKind::Root, ""),
    }
}

fn hash(hasher: &foldhash::fast::FixedState, kind: KeyKind, text: &str) -> u32 {
    // The high half: foldhash mixes best there.
    (hasher.hash_one((kind, text)) >> 32) as u32
}

/// A position in one of the index's arrays. Every array is indexed by `u32`: a snapshot holds
/// fewer than 4 billion pattern uses, as each takes at least two bytes of policy text.
fn index(position: usize) -> u32 {
    u32::try_from(position).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matcher of patterns given as (glob, suffix), one policy each.
    fn matcher(
        patterns: &[(&'static str, &'static str)],
    ) -> (Matcher, impl Fn(Use) -> PatternKey<'static> + Copy) {
        let leaked: &'static [(&'static str, &'static str)] =
            Box::leak(patterns.to_vec().into_boxed_slice());
        let key_of = move |u: Use| leaked[u.policy as usize];
        let uses = (0..patterns.len()).map(|i| Use {
            policy: i as u32,
            index: 0,
            list: ListId::Images,
        });
        (Matcher::build(patterns.len(), uses, key_of), key_of)
    }

    fn found(m: &Matcher, key_of: impl Fn(Use) -> PatternKey<'static>, name: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.for_each_match(name, key_of, |f| out.extend(f.uses().map(|u| u.policy)));
        out.sort_unstable();
        out
    }

    #[test]
    fn finds_globs_through_every_kind_of_key() {
        let (m, k) = matcher(&[
            ("registry.corp.example/team/app", ""),   // 0: literal
            ("registry.corp.example/team/*", ""),     // 1: prefix of two components
            ("registry.corp.example/**", ""),         // 2: the host alone
            ("*.corp.example/team/**", ""),           // 3: the host's literal end
            ("regis?ry.corp.example/team/app", ""),   // 4: the host's literal end after `?`
            ("*/team/app", ""),                       // 5: the root
            ("ghcr.io/corp/**", ""),                  // 6: elsewhere
            ("registry.corp.example/team/app/*", ""), // 7: longer than the name
            ("**", ":latest"),                        // 8: a suffix alone, at the root
        ]);
        assert_eq!(
            found(&m, k, "registry.corp.example/team/app"),
            [0, 1, 2, 3, 4, 5, 8]
        );
        assert_eq!(found(&m, k, "a.b.corp.example/team/x/y"), [3, 8]);
        assert_eq!(found(&m, k, "ghcr.io/corp/x"), [6, 8]);
        assert_eq!(found(&m, k, "quay.io/x"), [8]);
    }

    #[test]
    fn identical_patterns_are_one_pattern_with_many_uses() {
        let (m, k) = matcher(&[
            ("docker.io/library/*", ""),
            ("docker.io/library/*", ":1.*"),
            ("docker.io/library/*", ""),
            ("docker.io/library/*", ":1.*"),
            ("docker.io/library/alpine", ""),
        ]);
        assert_eq!((m.patterns(), m.uses()), (3, 5));
        let mut runs = Vec::new();
        m.for_each_match("docker.io/library/alpine", k, |f| {
            let mut policies: Vec<u32> = f.uses().map(|u| u.policy).collect();
            policies.sort_unstable();
            runs.push(policies);
        });
        runs.sort();
        assert_eq!(runs, [vec![0, 2], vec![1, 3], vec![4]]);
    }

    #[test]
    fn an_empty_index_matches_nothing() {
        let (m, k) = matcher(&[]);
        assert_eq!((m.patterns(), m.uses()), (0, 0));
        assert!(found(&m, k, "docker.io/library/alpine").is_empty());
    }
}
