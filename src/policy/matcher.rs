//! The index that matches an image name against every pattern of a snapshot at once.
//!
//! Patterns are anchored at a registry host and made of `/`-separated components, and most of
//! a cluster's patterns start with a few literal components (`registry.corp.example/team-7/…`).
//! The index files each distinct name glob under the hash of its literal prefix (the components
//! before the first wildcard; see [`literal_prefix`]), so a name only meets the globs filed
//! under one of its own prefixes: `registry.corp.example/team-7/app` looks up
//! `registry.corp.example`, `registry.corp.example/team-7` and the whole name, and checks the few
//! globs found there with [`name_matches`]. A glob whose host has a wildcard
//! (`*.corp.example/**`) is filed under the host's literal end from its first dot
//! (`.corp.example`), looked up for each dot of the name's host; one with no such end is filed
//! at the root, which every name looks up.
//!
//! The index holds no pattern text: each distinct glob is a run of [`Use`]s (policy, list,
//! position), and its text is read from the first one's policy. Identical globs of many
//! policies are one glob with many uses, checked once per name. What the index costs is four
//! flat arrays: per bucket a 4-byte key and a 4-byte start, per glob a 4-byte start, per use
//! 8 bytes (12 while it is built).

use std::hash::BuildHasher;

use super::compile::ListId;
use super::pattern::{literal_prefix, name_matches};

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

/// Every name glob of a snapshot, filed by literal prefix.
#[derive(Debug, Default)]
pub struct Matcher {
    hasher: foldhash::fast::FixedState,
    /// The buckets' keys, sorted (32 bits of the key's hash: two prefixes that share them only
    /// share a bucket, whose globs are checked one by one anyway).
    keys: Box<[u32]>,
    /// Per bucket, its first glob; one more at the end.
    buckets: Box<[u32]>,
    /// Per glob, its first use; one more at the end. The first use names the glob's text.
    globs: Box<[u32]>,
    /// The uses, packed ([`Use::pack`]), two words each.
    uses: Vec<u32>,
}

impl Matcher {
    /// Files every use under its glob: `count` uses, each with its glob, and `glob_of` to read
    /// a use's glob again.
    ///
    /// Built to need little memory beyond its own, as it is built while the snapshot in force
    /// still serves: the uses are written once, with their bucket key beside them, sorted
    /// where they are, and the keys then squeezed out in place; the other arrays are counted
    /// before they are filled.
    pub fn build<'a>(
        count: usize,
        uses: impl Iterator<Item = (Use, &'a str)>,
        glob_of: impl Fn(Use) -> &'a str,
    ) -> Matcher {
        let hasher = foldhash::fast::FixedState::default();
        let mut keyed: Vec<u32> = Vec::with_capacity(3 * count);
        for (u, glob) in uses {
            let [policy, slot] = u.pack();
            keyed.extend([key_of_glob(&hasher, glob), policy, slot]);
        }
        let text = |[_, policy, slot]: [u32; 3]| Use::unpack([policy, slot]).map_or("", &glob_of);
        let (rows, _) = keyed.as_chunks_mut::<3>();
        let n = rows.len();
        // By bucket, then by glob text, so that each glob's uses are one run.
        rows.sort_unstable_by(|a, b| a[0].cmp(&b[0]).then_with(|| text(*a).cmp(text(*b))));

        // Where a new bucket and a new glob start, counted, then written.
        let starts = |i: usize| {
            let row = rows[i];
            match i.checked_sub(1).map(|j| rows[j]) {
                Some(prev) if prev[0] == row[0] => (false, text(prev) != text(row)),
                _ => (true, true),
            }
        };
        let (mut n_buckets, mut n_globs) = (0, 0);
        for i in 0..n {
            let (bucket, glob) = starts(i);
            n_buckets += usize::from(bucket);
            n_globs += usize::from(glob);
        }
        let mut keys = Vec::with_capacity(n_buckets);
        let mut buckets = Vec::with_capacity(n_buckets + 1);
        let mut globs = Vec::with_capacity(n_globs + 1);
        for (i, row) in rows.iter().enumerate() {
            let (bucket, glob) = starts(i);
            if bucket {
                keys.push(row[0]);
                buckets.push(index(globs.len()));
            }
            if glob {
                globs.push(index(i));
            }
        }
        buckets.push(index(globs.len()));
        globs.push(index(n));

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
            globs: globs.into_boxed_slice(),
            uses: keyed,
        }
    }

    /// Calls `found` with every use of every glob that matches `name` (`REGISTRY/REPOSITORY`),
    /// each once; `glob_of` gives the name glob of a use, as for [`Matcher::build`].
    pub fn for_each_match<'a>(
        &self,
        name: &str,
        glob_of: impl Fn(Use) -> &'a str,
        mut found: impl FnMut(Use),
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
            for g in self.buckets[bucket] as usize..self.buckets[bucket + 1] as usize {
                let first = self.uses_of(g).next();
                if first.is_some_and(|u| name_matches(glob_of(u), name)) {
                    self.uses_of(g).for_each(&mut found);
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

    /// The uses of glob `g`.
    fn uses_of(&self, g: usize) -> impl Iterator<Item = Use> + '_ {
        let (start, end) = (self.globs[g] as usize, self.globs[g + 1] as usize);
        let (pairs, _) = self.uses[2 * start..2 * end].as_chunks::<2>();
        pairs.iter().filter_map(|&pair| Use::unpack(pair))
    }

    /// How many distinct name globs the index holds.
    pub fn globs(&self) -> usize {
        self.globs.len().saturating_sub(1)
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

    fn matcher(globs: &[&'static str]) -> (Matcher, impl Fn(Use) -> &'static str + Copy) {
        let list: Vec<&'static str> = globs.to_vec();
        let uses = (0..globs.len())
            .map(|i| Use {
                policy: i as u32,
                index: 0,
                list: ListId::Images,
            })
            .collect();
        let leaked: &'static [&'static str] = Box::leak(list.into_boxed_slice());
        let glob_of = move |u: Use| leaked[u.policy as usize];
        let uses: Vec<Use> = uses;
        let count = uses.len();
        let matcher = Matcher::build(count, uses.into_iter().map(|u| (u, glob_of(u))), glob_of);
        (matcher, glob_of)
    }

    fn found(m: &Matcher, glob_of: impl Fn(Use) -> &'static str, name: &str) -> Vec<u32> {
        let mut out = Vec::new();
        m.for_each_match(name, glob_of, |u| out.push(u.policy));
        out.sort_unstable();
        out
    }

    #[test]
    fn finds_globs_through_every_kind_of_key() {
        let (m, g) = matcher(&[
            "registry.corp.example/team/app",   // 0: literal
            "registry.corp.example/team/*",     // 1: prefix of two components
            "registry.corp.example/**",         // 2: the host alone
            "*.corp.example/team/**",           // 3: the host's literal end
            "regis?ry.corp.example/team/app",   // 4: the host's literal end after `?`
            "*/team/app",                       // 5: the root
            "ghcr.io/corp/**",                  // 6: elsewhere
            "registry.corp.example/team/app/*", // 7: longer than the name
        ]);
        assert_eq!(
            found(&m, g, "registry.corp.example/team/app"),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(found(&m, g, "a.b.corp.example/team/x/y"), [3]);
        assert_eq!(found(&m, g, "ghcr.io/corp/x"), [6]);
        assert_eq!(found(&m, g, "quay.io/x"), Vec::<u32>::new());
    }

    #[test]
    fn identical_globs_are_one_glob_with_many_uses() {
        let (m, g) = matcher(&[
            "docker.io/library/*",
            "docker.io/library/*",
            "docker.io/library/*",
            "docker.io/library/alpine",
        ]);
        assert_eq!((m.globs(), m.uses()), (2, 4));
        assert_eq!(found(&m, g, "docker.io/library/alpine"), [0, 1, 2, 3]);
    }

    #[test]
    fn an_empty_index_matches_nothing() {
        let (m, g) = matcher(&[]);
        assert_eq!((m.globs(), m.uses()), (0, 0));
        assert!(found(&m, g, "docker.io/library/alpine").is_empty());
    }
}
