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
//! 12 bytes.

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
    uses: Box<[Use]>,
}

impl Matcher {
    /// Files every use under its glob; `glob_of` gives the name glob of a use.
    pub fn build<'a>(uses: Vec<Use>, glob_of: impl Fn(Use) -> &'a str) -> Matcher {
        let hasher = foldhash::fast::FixedState::default();
        let mut keyed: Vec<(u32, Use)> = uses
            .into_iter()
            .map(|u| (key_of_glob(&hasher, glob_of(u)), u))
            .collect();
        // By bucket, then by glob text, so that each glob's uses are one run.
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| glob_of(a.1).cmp(glob_of(b.1))));
        let mut keys = Vec::new();
        let mut buckets = Vec::new();
        let mut globs = Vec::new();
        let mut uses = Vec::with_capacity(keyed.len() + 1);
        let mut last: Option<(u32, &str)> = None;
        for (key, u) in keyed {
            let glob = glob_of(u);
            match last {
                Some((k, g)) if k == key && g == glob => {}
                Some((k, _)) if k == key => globs.push(index(uses.len())),
                _ => {
                    keys.push(key);
                    buckets.push(index(globs.len()));
                    globs.push(index(uses.len()));
                }
            }
            last = Some((key, glob));
            uses.push(u);
        }
        buckets.push(index(globs.len()));
        globs.push(index(uses.len()));
        Matcher {
            hasher,
            keys: keys.into_boxed_slice(),
            buckets: buckets.into_boxed_slice(),
            globs: globs.into_boxed_slice(),
            uses: uses.into_boxed_slice(),
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
                let uses = &self.uses[self.globs[g] as usize..self.globs[g + 1] as usize];
                if name_matches(glob_of(uses[0]), name) {
                    uses.iter().copied().for_each(&mut found);
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

    /// How many distinct name globs the index holds.
    pub fn globs(&self) -> usize {
        self.globs.len().saturating_sub(1)
    }

    /// How many uses of them it holds.
    pub fn uses(&self) -> usize {
        self.uses.len()
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
        (Matcher::build(uses, glob_of), glob_of)
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
